//! The outbox stage: a handle service in front of the store's worker, in the manner of
//! `tower::buffer`. The worker ([`Worker`]) owns the store's ordered queue of writes,
//! sends them through the leaf service, and answers each caller exactly once.
//!
//! **Issue order.** Every write takes an order ticket when it is made: [`Store::write`]
//! (and `set`, `put_file`, ...) takes it synchronously, at the call, so the order of the calls
//! is the order of the writes whatever the order in which their futures are polled; a write
//! that reaches this service without one (through [`Store::service`]) takes it here, at `call`.
//! Writes are admitted into the outbox strictly in ticket order: a write whose turn has not
//! come yet (an earlier one is still reading its file, waiting in a layer, or waiting for room)
//! waits. A ticket whose write is dropped or fails before it reaches the outbox is skipped, so
//! it never blocks the later ones.
//!
//! **Capacity.** Each admitted write holds one of the outbox's slots until it is answered; a
//! write waits for its turn and a free slot (backpressure), and a write made with
//! [`Store::try_write`] fails with [`WriteError::OutboxFull`] instead of waiting.
//!
//! [`Store::write`]: crate::Store::write
//! [`Store::service`]: crate::Store::service
//! [`Store::try_write`]: crate::Store::try_write
//!
//! The stage is a tower citizen in the manner of `tower::buffer`: [`OutboxLayer`] wraps the
//! leaf service and spawns the worker; [`OutboxLayer::pair`] gives the worker back to spawn on the
//! executor of your choice. The caller's `tracing` span travels with each write into the
//! worker, which enters it while it handles the write.

mod future;
mod gate;
mod journal;
mod layer;
mod queued;
mod service;
mod worker;

pub use future::OutboxFuture;
pub use layer::OutboxLayer;
pub use queued::QueuedWrite;
pub use service::Outbox;
pub use worker::Worker;

pub(crate) use gate::Order;
#[cfg(feature = "sqlite")]
pub(crate) use journal::Recovered;
pub(crate) use journal::{Journal, Journaled};
pub(crate) use layer::Spawn;
pub(crate) use worker::WorkerConfig;
