//! The stages of the write path, each a tower layer, outermost first:
//!
//! 1. [`TelemetryLayer`]: a span per write, its timing and outcome;
//! 2. the user's layers (retry, timeout, metrics, ...), on [`WriteRequest`](crate::WriteRequest);
//! 3. [`ValidateLayer`]: checks and encodes the write ([`WriteRequest`](crate::WriteRequest) →
//!    [`EncodedWrite`](crate::EncodedWrite)); a bad write fails here, before it is queued;
//! 4. [`OutboxLayer`] / [`Outbox`]: the store's ordered, bounded outbox and its [`Worker`],
//!    which owns resends;
//! 5. [`ChannelService`]: the leaf that pushes on the store's channel
//!    ([`SendWrite`] → the reply).
//!
//! Each stage takes its own request type, so a stack in the wrong order does not compile.
//!
//! [`RetryRateLimited`] is a ready-made user layer policy: `tower::retry` for writes rejected
//! with `rate_limited`, honouring the server's `retry_after_ms`.

mod outbox;
mod push;
mod retry;
mod telemetry;
mod validate;

/// The outbox's crate-internal parts, for the connection.
pub(crate) mod outbox_internal {
    #[cfg(feature = "sqlite")]
    pub(crate) use super::outbox::Recovered;
    pub(crate) use super::outbox::{Journal, Journaled, Order, Spawn, WorkerConfig};
}

pub use outbox::{Outbox, OutboxFuture, OutboxLayer, QueuedWrite, Worker};
pub use push::{ChannelService, SendWrite};
pub use retry::RetryRateLimited;
pub use telemetry::{Telemetry, TelemetryLayer};
pub use validate::{Validate, ValidateLayer};
