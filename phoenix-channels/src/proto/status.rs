//! The connection's status, and why a connection ended.

use std::fmt;
use std::time::Duration;

#[cfg(doc)]
use crate::backoff::ReconnectSchedule;

/// Why the connection ended or could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server answered the WebSocket upgrade with this HTTP status (e.g. 403 when the
    /// socket's `connect/3` refused the params).
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The server closed the WebSocket with this close code and reason.
    Closed {
        /// The close code (1000 normal, 1001 going away, 1011 server error, ...).
        code: u16,
        /// The close reason text.
        reason: String,
    },
    /// The connection ended without a close frame.
    Eof,
    /// An I/O or WebSocket protocol error.
    Io(String),
    /// The TLS handshake failed: the server's certificate is not trusted (unknown issuer,
    /// expired, issued for another name), or no TLS version or cipher is common. Retrying does
    /// not fix it, so the default reconnect policy stops on it
    /// ([`ReconnectSchedule::stop_on_tls_error`]).
    Tls(String),
    /// Opening the connection took longer than the connect timeout.
    ConnectTimeout,
    /// No reply to a heartbeat within the heartbeat timeout.
    HeartbeatTimeout,
    /// The connect params or headers provider failed.
    Provider(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { status } => write!(f, "HTTP {status} on upgrade"),
            Self::Closed { code, reason } if reason.is_empty() => write!(f, "closed ({code})"),
            Self::Closed { code, reason } => write!(f, "closed ({code}: {reason})"),
            Self::Eof => f.write_str("connection ended"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Tls(e) => write!(f, "TLS error: {e}"),
            Self::ConnectTimeout => f.write_str("connect timeout"),
            Self::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            Self::Provider(e) => write!(f, "connect params provider failed: {e}"),
        }
    }
}

/// The socket's connection status.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketStatus {
    /// Opening the connection.
    Connecting {
        /// 1 for the first attempt, then counting consecutive failures + 1.
        attempt: u32,
    },
    /// Connected.
    Connected,
    /// The connection failed or dropped; the next attempt starts after `delay`.
    Reconnecting {
        /// The number of consecutive failures so far.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Why the last attempt failed or the connection dropped.
        reason: DisconnectReason,
    },
    /// Not connected and not trying: not started yet, disconnected by the user (`reason` is
    /// `None`), or stopped by the reconnect policy (with the reason it stopped on).
    Disconnected {
        /// Why the socket stopped, if it was not the user's choice.
        reason: Option<DisconnectReason>,
    },
}

impl SocketStatus {
    /// The lower-case name: `connecting`, `connected`, `reconnecting` or `disconnected`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connecting { .. } => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Disconnected { .. } => "disconnected",
        }
    }

    /// Whether the socket is connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }
}

impl std::error::Error for DisconnectReason {}
