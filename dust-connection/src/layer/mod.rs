//! The stages of the write path, each a tower layer, outermost first:
//!
//! 1. [`TelemetryLayer`]: a span per write, its timing and outcome;
//! 2. the user's layers (retry, timeout, metrics, ...), on [`WriteRequest`](crate::WriteRequest);
//! 3. [`ValidateLayer`]: checks and encodes the write ([`WriteRequest`](crate::WriteRequest) →
//!    [`EncodedWrite`](crate::EncodedWrite)); a bad write fails here, before it is queued;
//! 4. [`Outbox`]: the store's ordered, bounded outbox and its worker, which owns resends;
//! 5. [`ChannelService`]: the leaf that pushes on the store's channel
//!    ([`SendWrite`] → the reply).
//!
//! Each stage takes its own request type, so a stack in the wrong order does not compile.
//!
//! [`RetryRateLimited`] is a ready-made user layer policy: `tower::retry` for writes rejected
//! with `rate_limited`, honouring the server's `retry_after_ms`.

mod push;
mod retry;
mod telemetry;
mod validate;

pub mod outbox;

pub use outbox::Outbox;
pub use push::{ChannelService, SendWrite};
pub use retry::RetryRateLimited;
pub use telemetry::{Telemetry, TelemetryLayer};
pub use validate::{Validate, ValidateLayer};
