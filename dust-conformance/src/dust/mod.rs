//! The Dust `store:*` server emulation: the real server's `/ws/sync` socket
//! (`DustWeb.StoreSocket`, `DustWeb.StoreChannel`, `Dust.Sync.Writer`) on the Phoenix layer.
//!
//! ```
//! use std::time::Duration;
//!
//! use dust_conformance::ServerConfig;
//! use dust_conformance::dust::{DustConfig, TokenConfig};
//! use futures_util::{SinkExt, Stream, StreamExt};
//! use serde_json::{Value, json};
//! use tokio_tungstenite::tungstenite::{Error, Message};
//!
//! /// The next frame as JSON, within 5 s.
//! async fn next(
//!     ws: &mut (impl Stream<Item = Result<Message, Error>> + Unpin),
//! ) -> Result<Value, Box<dyn std::error::Error>> {
//!     let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
//!     Ok(serde_json::from_str(frame.ok_or("closed")??.to_text()?)?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = DustConfig::new().token(TokenConfig::new("dust_tok_dev"));
//! let server = dust_conformance::start(ServerConfig::default().dust(config)).await?;
//! let url = format!(
//!     "{}&token=dust_tok_dev&device_id=dev_1&capver=3",
//!     server.websocket_url("/ws/sync")
//! );
//! let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
//! let join = json!(["1", "1", "store:acme/app", "phx_join", {"last_store_seq": 0}]);
//! ws.send(Message::text(join.to_string())).await?;
//! assert_eq!(next(&mut ws).await?[4]["response"]["store_seq"], 0);
//! assert_eq!(next(&mut ws).await?[3], "catch_up_complete");
//!
//! let write = json!(["1", "2", "store:acme/app", "write", {
//!     "op": "set", "path": "a/b", "path_segments": ["a", "b"], "value": 1,
//!     "client_op_id": "op_1"
//! }]);
//! ws.send(Message::text(write.to_string())).await?;
//! let event = next(&mut ws).await?; // the broadcast echo comes before the reply
//! assert_eq!((&event[3], &event[4]["value"]), (&json!("event"), &json!(1)));
//! assert_eq!(next(&mut ws).await?[4]["response"], json!({"store_seq": 1}));
//!
//! let dust = server.dust().ok_or("no dust")?;
//! assert_eq!(dust.ops("acme/app").await?[0].client_op_id, "op_1");
//! # Ok(())
//! # }
//! ```
//!
//! # What it emulates
//!
//! - **Connect** (`/ws/sync/websocket?token=…&device_id=…&capver=3&vsn=2.0.0`): the token
//!   must start with `dust_tok_` and be configured ([`TokenConfig`]); `capver` is parsed as
//!   Elixir's `Integer.parse` does (missing or malformed counts as 1) and must be ≥ 3; a
//!   refusal is HTTP 403. Two serializers, as the real endpoint: V2 JSON (`vsn=2.0.x`) and Dust's
//!   MessagePack (`vsn=3.0.0` exactly; see [`crate::Protocol::MessagePack`] and "MessagePack
//!   values" below). The socket id is `store_socket:{device_id}`.
//! - **Join** `store:{org/name}` or `store:{uuid}` with `{"last_store_seq": N}`: the reply
//!   `{store_seq, capver: 3, capver_min: 3, permissions, scopes, store_access}`; errors
//!   `unauthorized` (unknown store, archived store joined by name), `store_not_allowed` and
//!   `missing_scope` (`entries:read`) with their `message`; `join crashed` for params without
//!   `last_store_seq` or a topic that is neither a name nor a UUID. Unknown `org/name` stores
//!   are created on first use when the token reaches them ([`DustConfig::auto_create`]).
//! - **Catch-up** after the join reply: a `snapshot` (entries in their storage envelope) when
//!   the client is behind the latest snapshot, then `event`s in batches of 1000 (each batch a
//!   message the channel sends itself, so other traffic interleaves), then
//!   `catch_up_complete` with `through_seq` = the last seq sent, or the client's own
//!   `last_store_seq` when there was nothing to send. Increments, adds and removes are
//!   replayed from the state at the batch start, on a running state that only they update
//!   (so an increment after a `set` of the same path replays from the earlier total, as on
//!   the real server).
//! - **`write`** with every op, in the real order of checks: scope `entries:write`, rate
//!   limit, `invalid op`, `store_archived`, path (`path_segments` first, then `path`),
//!   value requirements, key limit, `if_match` / `if_absent` gates, then in the writer lease
//!   rules, `conflict`, `exists`, `fenced`. A rejected write consumes no seq. The `event` is
//!   broadcast to every joiner of the writer's topic before the reply. `client_op_id` is not
//!   deduplicated.
//! - **`put_file`** (`files:write`), **`ack_seq`** (recorded, reply `{}`), **`status`**.
//! - **`rollback`** (`entries:write`, else `missing_scope`), as `Dust.Sync.Rollback`: with
//!   `path` + `to_seq`, one op (a `set` of the path's value at `to_seq`, or a `delete` when it
//!   had none) by device `system:rollback` with client_op_id `rollback:<to_seq>:<path>`,
//!   broadcast as an `event`, reply `{store_seq}`; `{store_seq, noop: true}` when the path
//!   already holds that value. With `to_seq` only, the whole store: a `delete` for every entry
//!   absent at `to_seq`, then a `set` for every path whose value differs, each in path order,
//!   broadcast to nobody, reply `{ops_written}`. Refused with `beyond_retention` (`to_seq`
//!   below the earliest op, or below the latest snapshot) and `no_ops` (an empty store).
//!   Any other event crashes the channel (`phx_error`), as an unmatched `handle_in/3` does.
//!
//! # MessagePack values
//!
//! Over `vsn=3.0.0`, as measured on the real server: a `bin` value is a string (one that is
//! not UTF-8 gets an error reply and uses no seq); integer and boolean map keys come back as
//! sent in the live `event` to MessagePack joiners, as strings to JSON joiners and in every
//! catch-up; a timestamp (ext -1) written as the value itself is stored as a `datetime` (its
//! envelope), and MessagePack clients get a timestamp back (truncated to microseconds), live
//! and in catch-up, JSON clients its ISO-8601 text; nested in a map or list, it is stored as
//! that text (as Jason writes the op). Known difference: a map's timestamp leaf becomes a
//! string entry here, a `datetime` entry on the real server (seen in snapshots).
//!
//! Faults and inspection are on [`DustControl`] (lost or late replies, crashing writes,
//! disconnects, archive, reset, restart, the write cost); durability with
//! [`DustConfig::state_file`].
//!
//! # Important notes
//!
//! - **Ordering**: writes to one store are serialized, and each event is broadcast before
//!   the next write commits, so every joiner sees a store's live events in seq order.
//! - **Cancellation**: a write that has been planned completes even if its channel or
//!   connection goes away; only its reply is lost.
//! - **Dead connections**: as on the real server, a channel whose connection died still
//!   commits, in order and one at a time ([`DustControl::set_write_cost`] each), every write
//!   it had received, broadcasting each to the topic's joiners (the same device's new
//!   connection included): a client's writes in flight at a cut are applied after the cut,
//!   possibly after its new join's catch-up. [`DustControl::set_drain_limit`] bounds it.
//! - **Durability**: with a state file, a write's reply is sent only after its journal line
//!   is fsynced; a process killed at any moment restarts with every acknowledged write.

mod channel;
mod clock;
mod config;
mod control;
pub(crate) mod files;
mod msgpack;
mod persist;
mod rollback;
mod sha256;
mod state;
mod store;
mod value;

pub mod path;

pub use clock::Clock;
pub(crate) use clock::iso8601;
pub use config::{DustConfig, Limits, RateLimit, SCOPES, StoreAccess, TOKEN_PREFIX, TokenConfig};
pub use control::{DustControl, DustError, EntryInfo, OpInfo, StoreInfo};

pub(crate) use channel::socket;
pub(crate) use state::DustShared;
