//! A server that speaks real Phoenix Channels, for tests: the `echo:*` reference channel, the
//! `presence:*` channel (Phoenix.Presence, [`presence`]), fault injection, the extension
//! points, and on them the Dust `store:*` server emulation ([`dust`]).
//!
//! ```
//! use std::time::Duration;
//!
//! use dust_conformance::ServerConfig;
//! use futures_util::{SinkExt, StreamExt};
//! use tokio_tungstenite::tungstenite::Message;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Binds 127.0.0.1 on a free port; the echo socket is mounted at /socket.
//! let server = dust_conformance::start(ServerConfig::default()).await?;
//! let control = server.control();
//!
//! // Any websocket client: ws://127.0.0.1:PORT/socket/websocket?vsn=2.0.0
//! let (mut ws, _) = tokio_tungstenite::connect_async(server.websocket_url("/socket")).await?;
//! ws.send(Message::text(r#"["1","1","echo:demo","phx_join",{"a":1}]"#)).await?;
//! let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
//! let reply: serde_json::Value = serde_json::from_str(reply.ok_or("closed")??.to_text()?)?;
//! assert_eq!(
//!     reply,
//!     serde_json::json!(["1", "1", "echo:demo", "phx_reply",
//!         {"status": "ok", "response": {"joined": "echo:demo", "params": {"a": 1}}}])
//! );
//! assert_eq!(control.connections()[0].topics, ["echo:demo"]);
//!
//! // Faults: stall, drop, refuse connects or joins, crash or close a channel, raw frames...
//! assert_eq!(control.crash_channel("echo:demo"), 1);
//! let error = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
//! assert_eq!(error.ok_or("closed")??.to_text()?, r#"["1","1","echo:demo","phx_error",{}]"#);
//!
//! drop(ws);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # What it emulates
//!
//! Phoenix 1.7's `Phoenix.Socket` and `Phoenix.Transports.WebSocket`: the upgrade at
//! `{socket path}/websocket` (404 elsewhere, 403 for a refused connect or `vsn`; the Dust
//! emulation's `GET /api/files/:hash` is plain HTTP beside it), connect params
//! from the query, serializer V2 (`vsn=2.0.0`: arrays and binary frames) or V1 (no `vsn`:
//! objects), heartbeats, the idle close (1000), join / leave / duplicate join / "unmatched
//! topic" / outdated join_ref handling, `phx_reply` / `phx_close` / `phx_error`, broadcasts
//! across connections, and close 1011 on a malformed frame. Refs are echoed with the JSON type
//! the client used, numbers exactly as written (an integer beyond 64 bits too, as Jason does).
//!
//! Its fidelity is checked from outside with the official phoenix.js client:
//! `dust-conformance/crosscheck/run.sh` drives the `dust-conformance-server` binary through
//! every scenario (see [`command`] for the control protocol the script uses).
//!
//! # The presence channel
//!
//! The `/socket` socket also routes `presence:*` to [`presence::PresenceChannel`], which
//! behaves like a Phoenix channel using `Phoenix.Presence`: join with `{"user": KEY, ...meta}`
//! (without `user`, the key is the connection id); after the join reply the joiner gets
//! `presence_state` (`{KEY: {"metas": [{...meta, "phx_ref"}]}}`, the topic's whole map, shared
//! by every connection) and every joiner of the topic, the new one included, gets a
//! `presence_diff` with the join. When the channel ends for any reason (leave, crash, stop,
//! duplicate join, socket closed or dropped), the other joiners get a `presence_diff` with the
//! leave. A key joined from two connections has two metas. Events: `presence_list` (reply ok
//! with the map), `update` (replace this meta, as `Presence.update`), `crash`.
//!
//! ```
//! use std::time::Duration;
//!
//! use dust_conformance::ServerConfig;
//! use futures_util::{SinkExt, StreamExt};
//! use serde_json::{Value, json};
//! use tokio_tungstenite::tungstenite::Message;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = dust_conformance::start(ServerConfig::default()).await?;
//! let (mut ws, _) = tokio_tungstenite::connect_async(server.websocket_url("/socket")).await?;
//! ws.send(Message::text(r#"["1","1","presence:lobby","phx_join",{"user":"ada","away":false}]"#))
//!     .await?;
//! let mut next = async || -> Result<Value, Box<dyn std::error::Error>> {
//!     let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
//!     Ok(serde_json::from_str(frame.ok_or("closed")??.to_text()?)?)
//! };
//! let reply = next().await?;
//! let phx_ref = reply[4]["response"]["phx_ref"].clone();
//! assert_eq!(reply[4]["response"]["key"], "ada");
//! let meta = json!({"away": false, "phx_ref": phx_ref});
//! assert_eq!(
//!     next().await?,
//!     json!(["1", null, "presence:lobby", "presence_state", {"ada": {"metas": [meta]}}])
//! );
//! assert_eq!(
//!     next().await?,
//!     json!([null, null, "presence:lobby", "presence_diff",
//!         {"joins": {"ada": {"metas": [meta]}}, "leaves": {}}])
//! );
//! # Ok(())
//! # }
//! ```
//!
//! It rests on [`channel::Channel::terminate`], which runs exactly once however a joined
//! channel ends.
//!
//! # The Dust emulation
//!
//! [`ServerConfig::dust`] mounts the real Dust server's `/ws/sync` socket: tokens, stores,
//! catch-up, every write op with its rejections, leases, files, rate limit, a durable state
//! file, and its faults on [`dust::DustControl`]. See [`dust`].
//!
//! # Extending it
//!
//! A [`SocketConfig`] is a connect callback plus channel routes by topic pattern; mount it at a
//! path with [`ServerConfig::socket`]. A route's factory makes one [`channel::Channel`] per join,
//! run in its own task (pushes, replies later, broadcasts, timers through
//! [`channel::ChannelContext`]). A socket can restrict its serializers
//! ([`SocketConfig::protocols`]) and name its connections ([`SocketConfig::id`], closed
//! together by [`Control::disconnect_socket`]); [`Control::restart`] restarts the server on
//! the same port with its state.
//!
//! # Important notes
//!
//! - **Drop**: dropping the [`Server`] stops it (connections get close 1001 while the runtime
//!   runs); [`Server::shutdown`] also waits for them. [`Control`] handles outlive it harmlessly.
//! - **Ordering**: every frame of a connection goes through one FIFO queue, so a channel's reply
//!   precedes its `phx_close`, and a configured delay keeps the order.
//! - **Dead connections**: as on a real Phoenix server, the channels of a connection that
//!   ends (client gone, dropped, closed) outlive it: each one still handles, in order, every
//!   message it had received (writes are committed and broadcast; replies are lost), then
//!   terminates ([`Control::drop_connection`], [`Control::set_drain_limit`],
//!   [`ServerStats::draining_channels`]). A restart or the shutdown ends them at once.
//! - **Blocking joins**: like Phoenix, a connection waits for a channel's `join` before it reads
//!   its next frame; a join that never returns stalls its connection.
//! - **Memory**: each connection's outbound queue is bounded in bytes
//!   ([`ServerConfig::max_outbound_bytes`]): a client that does not read (or a stalled
//!   connection) that crosses it is dropped as a slow client, and its queue freed. The open
//!   connections are bounded too ([`ServerConfig::max_connections`]: 503 beyond), and an idle
//!   connection holds a small read buffer ([`ServerConfig::read_buffer_size`]). This is a
//!   test server all the same; do not expose it.
//! - **Panics**: a channel callback that panics crashes its channel (`phx_error`), nothing else.

mod config;
mod connection;
mod error;
mod frame;
mod http;
mod server;
mod shared;
mod socket;

pub mod channel;
pub mod command;
mod control;
pub mod dust;
pub mod echo;
pub mod presence;

pub use config::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_OUTBOUND_BYTES, DEFAULT_READ_BUFFER_SIZE, ServerConfig,
};
pub use control::{ConnectionId, ConnectionInfo, Control, ControlError, RawFrame, ServerStats};
pub use error::StartError;
pub use frame::{EncodeError, Payload, Protocol, fuzz_decode};
pub use server::{Server, start};
pub use socket::{Assigns, ConnectDecision, ConnectRequest, SocketConfig};
