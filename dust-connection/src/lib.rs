//! The Rust connection to [Dust](https://github.com/xlabs-hq/dust): the port of the Elixir
//! SDK's `Dust.Connection`, built on `phoenix-channels`.
//!
//! One socket to the Dust server's `/ws/sync`, one `store:{name}` channel per store, and for each
//! store a write path made of tower layers — telemetry, your layers, validation and encoding,
//! the outbox, and the push on the channel. A [`SyncEngine`] keeps the local state; the
//! [`MemoryEngine`] is included.
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
//! - sends only while the store is joined and caught up, in issue order; writes made meanwhile
//!   wait;
//! - pins every push to the join it was sent under, so no write goes out late after a rejoin;
//! - after a rejoin, waits for `catch_up_complete`: a write that was in flight and whose
//!   `client_op_id` shows up in the catch-up is answered from that event; the others are resent
//!   with the same `client_op_id`, then the queued ones, in issue order;
//! - answers a write whose reply was lost from its own `event`;
//! - never retries a rejected write (add a layer for that, e.g. on `rate_limited`);
//! - fails a store's queued writes with the join error when the join is refused for good
//!   (`unauthorized`, `store_not_allowed`, `missing_scope`) and stops rejoining it until
//!   [`Store::rejoin`].
//!
//! # Important notes
//!
//! - **Cancel safety**: a write is queued when `write` is first polled; dropping its future
//!   before the write was sent removes it from the queue; a write already sent stays tracked
//!   (and reaches the engine) until it is answered.
//! - **Unknowable outcomes**: a write whose outcome is unknown when its store's log is
//!   compacted into a snapshot, or when the connection is shut down, fails with
//!   [`WriteError::Indeterminate`] rather than risk being applied twice.
//! - **Drop**: the connection runs until [`DustConnection::disconnect`] or until every
//!   [`DustConnection`] and [`Store`] handle is dropped.

mod connection;
pub mod engine;
mod error;
pub mod layer;
pub mod store;
pub mod write;

pub use connection::{
    ConnectionStatus, DeviceId, DustConnection, DustConnectionBuilder, Info, PERMANENT_JOIN_ERRORS,
    StateChange, Store, TokenProvider, WriteService,
};
pub use engine::{
    Capabilities, Change, MemoryEngine, ServerEvent, Snapshot, SnapshotEntry, StoreStatus,
    SyncEngine,
};
pub use error::{BuildError, WriteError};
pub use store::Notice;
pub use write::{
    ClientOpId, EncodedWrite, Fence, FileContent, IntoSegments, Lease, Path, PathError,
    RejectReason, Rejection, WriteAck, WriteOp, WriteRequest,
};
