//! The errors of the public API.

use std::fmt;

use crate::proto::DisconnectReason;
use crate::proto::channel::{CloseCause, RejoinCause};
use crate::proto::message::Payload;

pub use crate::proto::push::PushError;

/// Why [`Channel::join`](crate::Channel::join) did not succeed.
///
/// A rejected or timed-out join is not final: the channel keeps rejoining on its schedule
/// unless its rejoin policy stops, which closes it ([`JoinError::Closed`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The server answered the join with an error; its response.
    #[error("{}", RejoinCause::Rejected(.0.clone()))]
    Rejected(Payload),
    /// No answer within the join timeout.
    #[error("join timed out")]
    Timeout,
    /// The channel closed before it joined.
    #[error("channel closed: {0}")]
    Closed(CloseCause),
}

impl JoinError {
    /// The `reason` of a rejection (`{"reason": "unauthorized"}` → `"unauthorized"`), or of the
    /// rejection that made the rejoin policy stop.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Rejected(p) => RejoinCause::Rejected(p.clone()).reason(),
            Self::Closed(CloseCause::RejoinStopped(cause)) => cause.reason(),
            _ => None,
        }
    }
}

impl From<RejoinCause> for JoinError {
    fn from(cause: RejoinCause) -> Self {
        match cause {
            RejoinCause::Rejected(p) => Self::Rejected(p),
            RejoinCause::Timeout => Self::Timeout,
            cause @ (RejoinCause::Crashed | RejoinCause::ServerClosed) => {
                Self::Closed(CloseCause::RejoinStopped(cause))
            }
        }
    }
}

/// Why a socket could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not a `ws://`, `wss://`, `http://` or `https://` URL.
    #[error("invalid endpoint URL: {0}")]
    InvalidUrl(String),
    /// `connect` was called outside a tokio runtime; use `build` and run the driver yourself.
    #[error(
        "no tokio runtime: call `connect` inside a runtime, or use `build` and spawn the driver"
    )]
    NoRuntime,
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    InvalidConfig(&'static str),
    /// The custom TLS root certificates could not be used.
    #[error("TLS roots: {0}")]
    Tls(#[from] crate::transport::TlsConfigError),
}

/// The socket stopped for good (disconnected by the user, or its reconnect policy gave up).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct SocketClosed {
    /// Why, when it was not the user's choice.
    pub reason: Option<DisconnectReason>,
}

impl fmt::Display for SocketClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Some(reason) => write!(f, "the socket stopped: {reason}"),
            None => f.write_str("the socket was disconnected"),
        }
    }
}

/// Messages were dropped because the consumer fell `capacity` messages behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} messages were dropped because the consumer fell behind")]
pub struct Lagged(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_shows_its_reason_but_never_its_payload() {
        let secret = Payload::json(&serde_json::json!({"token": "s3cret"})).unwrap();
        let shown = JoinError::Rejected(secret.clone()).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("join rejected"), "{shown}");
        let shown = CloseCause::RejoinStopped(RejoinCause::Rejected(secret)).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        let reason = Payload::json(&serde_json::json!({"reason": "unauthorized"})).unwrap();
        assert_eq!(
            JoinError::Rejected(reason).to_string(),
            "join rejected: unauthorized"
        );
    }
}
