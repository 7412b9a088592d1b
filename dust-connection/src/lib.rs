//! The Rust connection to [Dust](https://github.com/xlabs-hq/dust): the port of the Elixir
//! SDK's `Dust.Connection`, built on `phoenix-channels`.
//!
//! One socket to the Dust server's `/ws/sync`, one `store:{name}` channel per store, and for each
//! store a write path made of tower layers — telemetry, your layers, validation and encoding,
//! the outbox, and the push on the channel. A [`SyncEngine`] keeps the local state; the
//! [`MemoryEngine`] is included, and its [`Replica`] handles read a store's replica without the
//! network (`get`, `get_many`, `entry`, `enumerate` by [`Glob`], `range`, `status`) and
//! subscribe to its changes by glob (a bounded [`Subscription`] stream, lag reported); a
//! [`SyncedStore`] writes optimistically (applied to the replica at once, reverted if refused).
//!
//! ```no_run
//! use std::time::Duration;
//! use dust_connection::{DustConnection, Fence, MemoryEngine, WriteRequest};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = MemoryEngine::new();
//! let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
//!     .token("dust_tok_dev")
//!     .store("acme/app")
//!     .engine(engine.clone())
//!     .connect()?;
//! let app = dust.store("acme/app")?;
//!
//! app.set(["users", "ada"], json!({"name": "Ada"})).await?;
//! app.increment(["stats", "visits"], 1).await?;
//! let lease = app.lease(["jobs", "nightly"], Duration::from_secs(30), Some("worker-1".into())).await?;
//! app.write(WriteRequest::set(["jobs", "nightly", "state"], "running").fence(&lease)).await?;
//! app.release(&lease).await?;
//!
//! assert_eq!(engine.get("acme/app", "users/ada/name"), Some(json!("Ada")));
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//!
//! The Dust server does not deduplicate `client_op_id`, so a write sent twice is applied twice.
//! The outbox of each store is the only thing that sends or resends writes, and it:
//!
//! - keeps one FIFO per store, bounded ([`DustConnectionBuilder::outbox_capacity`]): when it is
//!   full, `write` waits and `try_write` fails with [`WriteError::OutboxFull`];
//! - keeps **issue order**: a write takes its place when [`Store::write`] (or `set`, `put_file`,
//!   ...) is *called*, not when its future is first polled, and writes enter the outbox, are
//!   sent, and are applied in that order; a write dropped or failed before it is queued gives up
//!   its place without holding up the next ones;
//! - sends only while the store is joined and caught up, and at most
//!   [`DustConnectionBuilder::max_in_flight`] writes at once (default 64): the others wait in
//!   order; this also bounds how many writes can be in doubt after a cut;
//! - pins every push to the join it was sent under, so no write goes out late after a rejoin;
//! - answers a write whose reply was lost from its own `event`;
//! - answers a write `Ok` only once its own `event` is in the engine (the server sends the event
//!   before the reply, but the two reach the store's worker by different paths), so that a
//!   write answered `Ok` reads back from the replica; only if the join ends before the event
//!   arrives is the write answered at once, and the new join's catch-up brings the event;
//! - never retries a rejected write (add a layer for that, e.g. on `rate_limited`);
//! - fails a store's queued writes with the join error when the join is refused for good
//!   (`unauthorized`, `store_not_allowed`, `missing_scope`) and stops rejoining it until
//!   [`Store::rejoin`].
//!
//! **After a join ends with writes unanswered**, the outbox learns their fate from the new
//! join's events before it sends anything (a server channel process handles its writes in
//! order and broadcasts each applied one before the next):
//!
//! - a write whose own event arrives was applied: it is answered from the event;
//! - a write without an event while a *later* write of the same join has one was processed and
//!   not applied (its rejection was lost): it fails with [`WriteError::NotApplied`];
//! - if the old join's channel process ended (it crashed with `phx_error`, was closed, or was
//!   left), the writes without an event after the catch-up did not land: they are resent,
//!   first, in order. A write that is the first unapplied one at
//!   [`DustConnectionBuilder::crash_limit`] consecutive crashes (default 2) fails with
//!   [`WriteError::CrashesChannel`], and the writes after it go on;
//! - if the connection was lost, the old channel process may keep applying what it received:
//!   after the catch-up the store holds those writes, **and every newer one**, for up to
//!   [`DustConnectionBuilder::unknown_outcome_settle`] (default 3 s) while their events may
//!   arrive. The ones still unknown then follow [`UnknownOutcome`]: by default
//!   ([`UnknownOutcome::AtMostOnce`]) they fail with [`WriteError::Indeterminate`] and are
//!   never resent (at most once: such a write may have been applied, or lost, or be applied
//!   by the old process after the settle time, and so after newer writes: issue order holds
//!   for every write answered `Ok`);
//!   [`UnknownOutcome::AtLeastOnce`] resends them instead (at least once: a write the old
//!   process applies after the settle time is applied twice). Then the queue goes on, in
//!   issue order.
//!
//! **The local replica** gets the store's events strictly in seq order with no hole, whatever
//! engine is used: events below the next expected seq are duplicates and dropped, events above
//! it wait in a bounded buffer ([`DustConnectionBuilder::reorder_capacity`]), a snapshot resets
//! the expected seq, and a hole still open at `catch_up_complete`, for longer than
//! [`DustConnectionBuilder::gap_timeout`], or with the buffer full makes the store leave and
//! rejoin from the engine's seq ([`Notice::Resync`]).
//!
//! # Important notes
//!
//! - **Cancel safety**: a write takes its place in the issue order when `write` is called and
//!   is queued when its future is first polled; dropping its future before the write was sent
//!   gives up its place and removes it from the queue; a write already sent stays tracked
//!   (and reaches the engine) until it is answered. A write future that is kept but never
//!   polled holds up the writes made after it (they cannot go out before it): poll or drop it.
//! - **Unknowable outcomes**: a write whose outcome is unknown when its store's log is
//!   compacted into a snapshot, or when the connection is shut down, fails with
//!   [`WriteError::Indeterminate`] rather than risk being applied twice.
//! - **Drop**: the connection runs until [`DustConnection::disconnect`] or until every
//!   [`DustConnection`] and [`Store`] handle is dropped.

mod config;
mod connection;
mod control;
mod device;
#[cfg(feature = "sqlite")]
mod durable;
mod engine;
mod error;
mod file;
mod format;
mod glob;
pub mod layer;
mod notice;
mod replica;
mod single_flight;
mod status;
mod store;
mod write;

pub use config::{DustConnectionBuilder, PERMANENT_JOIN_ERRORS, UnknownOutcome};
pub use connection::DustConnection;
pub use control::{ControlError, PathRollback, StoreReport, StoreRollback};
pub use device::{DeviceId, TokenProvider};
#[cfg(feature = "sqlite")]
pub use durable::{Database, DurableError, SqliteCache};
pub use engine::{
    CATCH_UP_BATCH, Cache, CacheError, CachedEntry, CachedStore, Capabilities, Change, Commit,
    MAX_UNPERSISTED_EVENTS, MemoryCache, MemoryEngine, ServerEvent, Snapshot, SnapshotEntry,
    StoreStatus, SyncEngine, unwrap_stored,
};
pub use error::{BuildError, UnknownStore, WriteError};
pub use file::{
    DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_FILE_SIZE, FileBody, FileClient, FileError, FileRef,
    FileRefError,
};
pub use format::Format;
pub use glob::{Glob, GlobError, IntoGlob};
pub use layer::QueuedWrite;
pub use notice::Notice;
pub use replica::{
    DEFAULT_SUBSCRIBER_CAPACITY, Entry, IntoPath, Lagged, MAX_PAGE, Order, Page, Paging, ReadError,
    Replica, ReplicaStatus, SubscribeOptions, Subscription, SyncedStore, Update, Watch, WatchError,
};
pub use single_flight::{
    DEFAULT_LEASE_TTL, Flight, LOCK_PREFIX, SingleFlight, SingleFlightError, Source,
};
pub use status::{ConnectionStatus, Info, StateChange};
pub use store::{Store, WriteService};
pub use write::{
    ClientOpId, EncodedWrite, Fence, FileContent, IntoSegments, Lease, Path, PathError,
    RejectReason, Rejection, WriteAck, WriteOp, WriteRequest,
};
