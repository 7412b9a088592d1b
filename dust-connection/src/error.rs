//! Errors of the public API.

use phoenix_channels::PushError;

use crate::write::Rejection;

/// Why a write did not succeed. Cloneable; never a boxed error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The server rejected the write (its reason and payload). Not retried by the outbox.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The write is invalid (bad path, wrong value for the op, impossible precondition): it
    /// failed before anything was queued, with the reason the server would have given.
    #[error("invalid write: {0}")]
    Invalid(Rejection),
    /// The store's outbox is full (only from calls that do not wait, such as `try_write`).
    #[error("the store's outbox is full")]
    OutboxFull,
    /// The store's join was refused for good (`unauthorized`, `store_not_allowed`,
    /// `missing_scope`); the write was not sent. Call `Store::rejoin` to try again.
    #[error("the store's join was refused: {0}")]
    JoinFailed(Rejection),
    /// The write was sent but whether the server applied it cannot be known (for instance its
    /// log was compacted into a snapshot meanwhile, or the connection was shut down before the
    /// outcome could be learned). It was not resent.
    #[error("the outcome of the write is unknown: {0}")]
    Indeterminate(String),
    /// The server processed the write and did not apply it (a later write sent on the same
    /// connection was applied, and a channel handles its writes in order), but its reply, with
    /// the reason, was lost. It was not resent: the server decided.
    #[error("the server did not apply the write, and its reply was lost: {0}")]
    NotApplied(String),
    /// The write made the server's store channel crash (`phx_error`) this many consecutive
    /// times without being applied; it is not sent again, and the writes after it go on.
    #[error("the write crashed the server's store channel {0} times in a row; given up")]
    CrashesChannel(u32),
    /// The connection was shut down before the write was sent.
    #[error("the connection is closed")]
    Closed,
    /// The push failed in transport (from the leaf service). The outbox turns a push that may
    /// have been sent into a resend or another answer. Callers of the whole stack see it for a
    /// write that can never be sent: its payload cannot be encoded
    /// ([`PushError::Encode`], [`PushError::Payload`]) or the socket is shut down
    /// ([`PushError::SocketClosed`]); it stays one variant so that a user layer placed
    /// around the leaf (see [`OutboxLayer`](crate::layer::OutboxLayer)) speaks the same
    /// error type as the rest of the stack.
    #[error("transport: {0}")]
    Transport(PushError),
    /// The durable outbox could not put the write on disk (disk full, I/O error): it was not
    /// queued and not sent.
    #[error("the durable outbox could not keep the write: {0}")]
    Storage(String),
}

impl WriteError {
    /// The rejection, for `Rejected`, `Invalid` and `JoinFailed`.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(r) | Self::Invalid(r) | Self::JoinFailed(r) => Some(r),
            _ => None,
        }
    }
}

/// No store of that name was configured on the connection (a configuration mistake, found
/// when the store is looked up, before any write).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no store `{0}` in this connection")]
pub struct UnknownStore(pub String);

/// Why a connection could not be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The socket could not be built (bad URL, no runtime, bad setting).
    #[error(transparent)]
    Socket(#[from] phoenix_channels::BuildError),
    /// A required setting is missing.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// The same store is configured twice.
    #[error("store `{0}` is configured twice")]
    DuplicateStore(String),
    /// The durable outbox could not be read.
    #[error("durable outbox: {0}")]
    Durable(String),
}
