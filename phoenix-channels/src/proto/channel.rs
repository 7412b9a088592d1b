//! Channel state: closed / joining / joined / leaving / errored, the join ref of each join, the
//! rejoin schedule and the buffer of pushes made before the channel is joined.
//!
//! The transitions themselves live in [`SocketCore`](super::socket::SocketCore), which owns the
//! refs, timers and outputs every channel shares.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::RejoinPolicy;
use super::message::{Payload, Topic};
use super::socket::DisconnectReason;

/// Identifies a channel within one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The state of a channel, as phoenix.js names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelState {
    /// Not joined: never joined, left, or closed by the server.
    Closed,
    /// A join is under way (or waits for the socket to connect).
    Joining,
    /// Joined: pushes go out at once.
    Joined,
    /// A leave is under way.
    Leaving,
    /// The join failed, the channel crashed or the connection dropped; a rejoin is scheduled.
    Errored,
}

impl ChannelState {
    /// The lower-case name (`"joined"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Joining => "joining",
            Self::Joined => "joined",
            Self::Leaving => "leaving",
            Self::Errored => "errored",
        }
    }
}

impl fmt::Display for ChannelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a join attempt failed or a joined channel went down; what a [`RejoinPolicy`] decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejoinCause {
    /// The server answered the join with an error (the response, e.g. `{"reason": ...}`);
    /// this includes the "unmatched topic" reply.
    Rejected(Payload),
    /// No answer to the join within the join timeout.
    Timeout,
    /// The server's channel process crashed (`phx_error`).
    Crashed,
}

impl RejoinCause {
    /// The `reason` of a rejection, if its response has one.
    pub fn reason(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Reason {
            reason: String,
        }
        match self {
            Self::Rejected(p) => p.deserialize::<Reason>().ok().map(|r| r.reason),
            Self::Timeout | Self::Crashed => None,
        }
    }
}

impl fmt::Display for RejoinCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(p) => match self.reason() {
                Some(reason) => write!(f, "join rejected: {reason}"),
                // The response may hold anything: show its size, not its content.
                None => write!(
                    f,
                    "join rejected ({} byte response, no reason)",
                    p.as_bytes().len()
                ),
            },
            Self::Timeout => f.write_str("join timed out"),
            Self::Crashed => f.write_str("channel crashed"),
        }
    }
}

/// Why a channel went into the errored state (it will rejoin).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCause {
    /// The server's channel process crashed (`phx_error`).
    Crashed,
    /// The connection dropped; the channel rejoins once the socket reconnects.
    Disconnected(DisconnectReason),
}

impl fmt::Display for ErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Crashed => f.write_str("channel crashed"),
            Self::Disconnected(reason) => write!(f, "connection lost: {reason}"),
        }
    }
}

/// Why a channel closed (it will not rejoin by itself).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The client left.
    Left,
    /// The server closed the channel (`phx_close`).
    ServerClosed,
    /// The rejoin policy gave up after this failure.
    RejoinStopped(RejoinCause),
    /// The socket was shut down; the reason is `None` when the user disconnected it.
    SocketClosed(Option<DisconnectReason>),
    /// Another channel of this socket already uses the topic.
    TopicTaken,
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Left => f.write_str("left"),
            Self::ServerClosed => f.write_str("closed by the server"),
            Self::RejoinStopped(cause) => write!(f, "gave up rejoining after: {cause}"),
            Self::SocketClosed(None) => f.write_str("socket disconnected"),
            Self::SocketClosed(Some(reason)) => write!(f, "socket stopped: {reason}"),
            Self::TopicTaken => f.write_str("another channel of this socket uses the topic"),
        }
    }
}

/// Where a channel's join params come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JoinParams {
    /// The same params on every join.
    Static(Payload),
    /// Asked on every join and rejoin: the core emits
    /// [`ChannelEvent::NeedJoinParams`](super::socket::ChannelEvent::NeedJoinParams) and waits for
    /// [`SocketCore::provide_join_params`](super::socket::SocketCore::provide_join_params).
    Ask,
}

/// Per-channel settings; unset ones come from the socket's [`CoreConfig`](super::socket::CoreConfig).
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Where the join params come from.
    pub params: JoinParams,
    /// How long a join (and a leave) may take.
    pub join_timeout: Option<Duration>,
    /// The rejoin policy.
    pub rejoin: Option<Arc<dyn RejoinPolicy>>,
    /// How many pushes may wait for the join.
    pub buffer_capacity: Option<usize>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            params: JoinParams::Static(Payload::empty()),
            join_timeout: None,
            rejoin: None,
            buffer_capacity: None,
        }
    }
}

/// One channel's state inside the core.
#[derive(Debug)]
pub(crate) struct Chan {
    pub(crate) topic: Topic,
    pub(crate) state: ChannelState,
    pub(crate) params: JoinParams,
    pub(crate) join_timeout: Duration,
    pub(crate) rejoin: Arc<dyn RejoinPolicy>,
    pub(crate) buffer_capacity: usize,
    /// The user wants the channel joined (join called, not left since).
    pub(crate) wants_join: bool,
    /// The handle was dropped: delete the channel once closed.
    pub(crate) removed: bool,
    /// Another channel took over the topic; this one can no longer join.
    pub(crate) detached: bool,
    pub(crate) joined_once: bool,
    /// The ref of the last join sent: messages with another non-null join ref are stale.
    pub(crate) join_ref: Option<u64>,
    /// The join awaiting its reply, and its deadline.
    pub(crate) pending_join: Option<(u64, Instant)>,
    /// Join params were asked for and not answered yet.
    pub(crate) params_requested: bool,
    pub(crate) rejoin_attempt: u32,
    pub(crate) rejoin_at: Option<Instant>,
    /// The leave awaiting its reply, and its deadline.
    pub(crate) pending_leave: Option<(u64, Instant)>,
    /// Refs of buffered pushes, in push order.
    pub(crate) buffer: VecDeque<u64>,
}
