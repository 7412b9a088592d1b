//! Pending pushes by ref, their deadlines, and the timer set of the core.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::channel::ChannelId;
use super::frame::EncodeError;
use super::message::{Event, Payload, Ref};

/// Why a push got no reply.
///
/// Cloneable, so that one failure can be reported to every party waiting on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// No reply came before the push's deadline (counted from the moment of the push, including
    /// any time spent buffered while the channel was joining).
    #[error("no reply before the push timeout")]
    Timeout,
    /// The push had been sent when the connection dropped: the server may or may not have
    /// handled it, and its reply can never arrive.
    #[error("the connection dropped while the push was in flight")]
    Disconnected,
    /// The server's channel process crashed (`phx_error`) while the push was in flight.
    #[error("the channel crashed while the push was in flight")]
    ChannelErrored,
    /// The channel was closed or left before the push could be sent or answered.
    #[error("the channel is closed")]
    ChannelClosed,
    /// The push was pinned to a join of the channel that is not the current one (or the channel
    /// is not joined): it was not sent.
    #[error("the channel is not joined under the join the push was pinned to; not sent")]
    Unavailable,
    /// The channel was never asked to join: call `join` first.
    #[error("the channel has not been joined")]
    NotJoined,
    /// The channel is not joined yet and its buffer of pending pushes is full.
    #[error("the push buffer of the channel is full ({capacity} pushes)")]
    BufferFull {
        /// The buffer's capacity.
        capacity: usize,
    },
    /// The socket's outgoing buffer is full: the bytes of pushes and casts not yet written to
    /// the connection reached its limit (the server reads slower than the client sends, or not
    /// at all). Only the `try_` methods and `cast` fail with it; `push` waits for room.
    #[error("the outgoing buffer is full ({limit} bytes); the server is not reading fast enough")]
    OutgoingFull {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The socket was shut down (by `disconnect`, or because its reconnect policy gave up).
    #[error("the socket is closed")]
    SocketClosed,
    /// The push cannot be encoded (e.g. a binary push on a topic longer than 255 bytes).
    #[error("cannot encode the push: {0}")]
    Encode(#[from] EncodeError),
    /// The payload could not be serialized.
    #[error("cannot serialize the payload: {0}")]
    Payload(String),
}

/// A push for [`SocketCore::push`](super::socket::SocketCore::push): the event, its payload, how
/// long to wait for the reply, and optionally the one join it may be sent under.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PushRequest {
    /// The event.
    pub event: Event,
    /// The payload.
    pub payload: Payload,
    /// How long the push may wait for its reply, counted from the push.
    pub timeout: Duration,
    /// If set, the push is sent only while the channel is joined under the join with this ref
    /// (from [`ChannelEvent::Joined`](super::socket::ChannelEvent::Joined)); otherwise it fails
    /// at once with [`PushError::Unavailable`] and is never sent, not even buffered.
    pub pinned: Option<Ref>,
}

impl PushRequest {
    /// A push of `event` with `payload`, waiting at most `timeout` for its reply.
    pub fn new(event: Event, payload: Payload, timeout: Duration) -> Self {
        Self {
            event,
            payload,
            timeout,
            pinned: None,
        }
    }

    /// The same push, pinned to one join.
    pub fn pinned_to(mut self, join_ref: Ref) -> Self {
        self.pinned = Some(join_ref);
        self
    }
}

/// A push waiting to be sent (buffered) or answered (sent).
#[derive(Debug)]
pub(crate) struct PendingPush<T> {
    pub(crate) channel: ChannelId,
    pub(crate) deadline: Instant,
    /// Who is waiting for the reply; `None` for a cast, which is forgotten once sent.
    pub(crate) token: Option<T>,
    /// The frame content while buffered; `None` once sent.
    pub(crate) buffered: Option<(Event, Payload)>,
    /// Its deadline is in the FIFO of [`PushDeadlines`] (else in the timer set).
    pub(crate) in_fifo: bool,
}

/// The longest wait a deadline is set for: about 30 years, which is "never" for a socket.
/// Longer waits (up to `Duration::MAX`) are cut to it, so that no timeout, interval or
/// backoff delay can overflow an `Instant`.
pub const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + after`, saturated: waits longer than [`NEVER`] are cut to it.
pub(crate) fn deadline(now: Instant, after: Duration) -> Instant {
    let after = after.min(NEVER);
    // `now + NEVER` fits in every platform's `Instant` for any clock reading of this era; should
    // it not, a wait of half as long is the next best "never".
    now.checked_add(after)
        .or_else(|| now.checked_add(after / 2))
        .unwrap_or(now)
}

/// What a ref in flight stands for.
#[derive(Debug)]
pub(crate) enum Pending<T> {
    Push(PendingPush<T>),
    Join(ChannelId),
    Leave(ChannelId),
    Heartbeat,
}

/// The timers of the core, each at most once in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Heartbeat,
    HeartbeatTimeout,
    Healthy,
    Reconnect,
    Push(u64),
    JoinTimeout(ChannelId),
    LeaveTimeout(ChannelId),
    Rejoin(ChannelId),
}

/// Every armed timer, ordered by deadline. Entities remember their own deadline so that a timer
/// can be removed exactly, which keeps the set from growing with stale entries.
#[derive(Debug, Default)]
pub(crate) struct Timers(BTreeSet<(Instant, Timer)>);

impl Timers {
    pub(crate) fn arm(&mut self, at: Instant, timer: Timer) {
        self.0.insert((at, timer));
    }

    pub(crate) fn disarm(&mut self, at: Option<Instant>, timer: Timer) {
        if let Some(at) = at {
            self.0.remove(&(at, timer));
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.first().map(|(at, _)| *at)
    }

    /// Removes and returns the timers due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(Instant, Timer)> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.0.first() {
            if at > now {
                break;
            }
            self.0.pop_first();
            due.push((at, timer));
        }
        due
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The deadlines of pushes. Pushes made with the same timeout have deadlines in push order, so
/// nearly all of them go in a FIFO (constant time both ways); a push whose deadline is earlier
/// than the last one's goes in the ordered timer set instead. Entries of pushes that ended leave
/// the FIFO lazily: from its front as they are passed, and by compaction when dead entries
/// outnumber live ones, so the FIFO stays within a few times the pushes in flight.
#[derive(Debug, Default)]
pub(crate) struct PushDeadlines {
    fifo: VecDeque<(Instant, u64)>,
    live: usize,
}

impl PushDeadlines {
    /// Arms the deadline of push `r`; returns whether it went in the FIFO.
    pub(crate) fn arm(&mut self, at: Instant, r: u64, timers: &mut Timers) -> bool {
        if self.fifo.back().is_none_or(|(last, _)| *last <= at) {
            self.fifo.push_back((at, r));
            self.live += 1;
            true
        } else {
            timers.arm(at, Timer::Push(r));
            false
        }
    }

    /// The push `r` ended (it is no longer live for `is_live`).
    pub(crate) fn disarm(
        &mut self,
        at: Instant,
        r: u64,
        in_fifo: bool,
        timers: &mut Timers,
        is_live: impl Fn(u64, Instant) -> bool,
    ) {
        if !in_fifo {
            timers.disarm(Some(at), Timer::Push(r));
            return;
        }
        self.live = self.live.saturating_sub(1);
        while let Some(&(at, r)) = self.fifo.front() {
            if is_live(r, at) {
                break;
            }
            self.fifo.pop_front();
        }
        if self.fifo.len() > 64 && self.fifo.len() > 4 * self.live {
            self.fifo.retain(|&(at, r)| is_live(r, at));
        }
    }

    /// The earliest deadline in the FIFO (its front is always live).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.fifo.front().map(|(at, _)| *at)
    }

    /// Removes and returns the pushes whose deadline is due at `now`.
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        is_live: impl Fn(u64, Instant) -> bool,
    ) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&(at, r)) = self.fifo.front() {
            if at > now {
                break;
            }
            self.fifo.pop_front();
            if is_live(r, at) {
                due.push(r);
            }
        }
        due
    }

    pub(crate) fn clear(&mut self) {
        self.fifo.clear();
        self.live = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }
}
