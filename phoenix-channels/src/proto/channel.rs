//! Channel state: closed / joining / joined / leaving / errored, the join ref of each join, the
//! rejoin schedule and the buffer of pushes made before the channel is joined.
//!
//! The transitions are here too, as methods of [`SocketCore`], which owns the refs, timers and
//! outputs every channel shares.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{Event, Payload, Ref, Reply, Topic};
use super::output::{AddChannelError, ChannelEvent};
use super::push::{Pending, PushError};
use super::socket::{Conn, SocketCore};
use super::status::DisconnectReason;
use super::timer::{Timer, deadline};
use crate::backoff::RejoinPolicy;

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
    /// The server closed the channel (`phx_close`) and the channel was built to rejoin after
    /// that ([`ChannelOptions::rejoin_after_server_close`]).
    ServerClosed,
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
            Self::Timeout | Self::Crashed | Self::ServerClosed => None,
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
            Self::ServerClosed => f.write_str("closed by the server"),
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
    /// The server closed the channel (`phx_close`) and the channel was built to rejoin after
    /// that ([`ChannelOptions::rejoin_after_server_close`]).
    ServerClosed,
}

impl fmt::Display for ErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Crashed => f.write_str("channel crashed"),
            Self::Disconnected(reason) => write!(f, "connection lost: {reason}"),
            Self::ServerClosed => f.write_str("closed by the server"),
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
    /// [`ChannelEvent::NeedJoinParams`] and waits for [`SocketCore::provide_join_params`].
    Ask,
}

/// Per-channel settings; unset ones come from the socket's [`CoreConfig`](super::CoreConfig).
///
/// Start from [`ChannelOptions::default()`] (static empty join params, every other setting
/// from the socket) and change the fields you need; new fields may be added.
///
/// ```
/// use std::time::Duration;
/// use phoenix_channels::proto::{ChannelOptions, JoinParams};
///
/// let mut options = ChannelOptions::default();
/// options.params = JoinParams::Ask;
/// options.join_timeout = Some(Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Where the join params come from.
    pub params: JoinParams,
    /// How long a join (and a leave) may take.
    pub join_timeout: Option<Duration>,
    /// The rejoin policy.
    pub rejoin: Option<Arc<dyn RejoinPolicy>>,
    /// How many pushes may wait for the join.
    pub buffer_capacity: Option<usize>,
    /// Whether a `phx_close` from the server is handled like a crash (the channel errors and
    /// rejoins on its rejoin policy, with [`RejoinCause::ServerClosed`]) instead of closing the
    /// channel for good (the default, as phoenix.js does).
    pub rejoin_after_server_close: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            params: JoinParams::Static(Payload::empty()),
            join_timeout: None,
            rejoin: None,
            buffer_capacity: None,
            rejoin_after_server_close: false,
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
    pub(crate) rejoin_after_server_close: bool,
    /// The user wants the channel joined (join called, not left since).
    pub(crate) wants_join: bool,
    /// The handle was dropped: delete the channel once closed.
    pub(crate) removed: bool,
    /// Another channel took over the topic; this one can no longer join.
    pub(crate) detached: bool,
    pub(crate) joined_once: bool,
    /// The ref of the last join sent: messages with another non-null join ref are stale.
    pub(crate) join_ref: Option<u64>,
    /// The server's response to the current join, while the channel is joined.
    pub(crate) join_response: Option<Payload>,
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

/// The channel transitions of the socket machine: join, rejoin, leave, close and removal. They
/// change the channel's state here and use the socket's refs, timers and pending refs.
impl<T> SocketCore<T> {
    /// The server's response to the channel's current join, while it is joined.
    pub fn join_response(&self, id: ChannelId) -> Option<&Payload> {
        self.channels
            .get(&id)
            .filter(|c| c.state == ChannelState::Joined)
            .and_then(|c| c.join_response.as_ref())
    }

    /// Whether the channel was removed ([`remove_channel`](Self::remove_channel)): it may
    /// still be leaving, or already deleted. An id the core does not hold counts as removed.
    pub fn is_removed(&self, id: ChannelId) -> bool {
        self.channels.get(&id).is_none_or(|c| c.removed)
    }

    /// Adds a channel in the closed state. Fails if another channel that is not closed or
    /// leaving uses the topic; a closed or leaving one is detached and the new one takes over.
    pub fn add_channel(
        &mut self,
        id: ChannelId,
        topic: Topic,
        options: ChannelOptions,
    ) -> Result<(), AddChannelError> {
        if self.channels.contains_key(&id) {
            return Err(AddChannelError::DuplicateId(id));
        }
        if let Some(old) = self.topics.get(&topic).copied()
            && let Some(chan) = self.channels.get_mut(&old)
        {
            if chan.wants_join
                || !matches!(chan.state, ChannelState::Closed | ChannelState::Leaving)
            {
                return Err(AddChannelError::TopicTaken(topic));
            }
            chan.detached = true;
        }
        self.topics.insert(topic.clone(), id);
        let chan = Chan {
            topic,
            state: ChannelState::Closed,
            params: options.params,
            join_timeout: options.join_timeout.unwrap_or(self.config.join_timeout),
            rejoin: options.rejoin.unwrap_or_else(|| self.config.rejoin.clone()),
            buffer_capacity: options
                .buffer_capacity
                .unwrap_or(self.config.push_buffer_capacity),
            rejoin_after_server_close: options.rejoin_after_server_close,
            wants_join: false,
            removed: false,
            detached: false,
            joined_once: false,
            join_ref: None,
            join_response: None,
            pending_join: None,
            params_requested: false,
            rejoin_attempt: 0,
            rejoin_at: None,
            pending_leave: None,
            buffer: VecDeque::new(),
        };
        self.channels.insert(id, chan);
        Ok(())
    }

    /// Joins the channel, and keeps it joined (rejoining after failures and reconnects) until
    /// it is left or closed. Does nothing if it is already joining or joined.
    pub fn join(&mut self, now: Instant, id: ChannelId) {
        let connected = self.conn == Conn::Connected;
        let stopped = self.conn == Conn::Stopped;
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        if chan.detached {
            self.emit_channel(id, ChannelEvent::Closed(CloseCause::TopicTaken));
            return;
        }
        if stopped {
            self.emit_channel(id, ChannelEvent::Closed(CloseCause::SocketClosed(None)));
            return;
        }
        if chan.wants_join && chan.state != ChannelState::Leaving {
            return;
        }
        chan.wants_join = true;
        match chan.state {
            ChannelState::Leaving | ChannelState::Joined | ChannelState::Joining => {}
            ChannelState::Closed | ChannelState::Errored => {
                chan.rejoin_attempt = 0;
                if connected {
                    self.begin_join(now, id);
                } else {
                    self.set_state(id, ChannelState::Joining);
                }
            }
        }
    }

    pub(super) fn begin_join(&mut self, now: Instant, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        self.timers.disarm(chan.rejoin_at.take(), Timer::Rejoin(id));
        let params = match &chan.params {
            JoinParams::Static(p) => Some(p.clone()),
            JoinParams::Ask if chan.params_requested => None,
            JoinParams::Ask => {
                chan.params_requested = true;
                self.emit_channel(id, ChannelEvent::NeedJoinParams);
                None
            }
        };
        self.set_state(id, ChannelState::Joining);
        if let Some(params) = params {
            self.send_join(now, id, &params);
        }
    }

    /// Answers [`ChannelEvent::NeedJoinParams`]. Params that arrive when the channel no longer
    /// waits for them are dropped (they are asked for again at the next join).
    pub fn provide_join_params(&mut self, now: Instant, id: ChannelId, params: Payload) {
        let connected = self.conn == Conn::Connected;
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.params_requested = false;
        if connected
            && chan.wants_join
            && chan.state == ChannelState::Joining
            && chan.pending_join.is_none()
        {
            self.send_join(now, id, &params);
        }
    }

    pub(super) fn send_join(&mut self, now: Instant, id: ChannelId, params: &Payload) {
        let r = self.make_ref();
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        let deadline = deadline(now, chan.join_timeout);
        chan.join_ref = Some(r);
        chan.pending_join = Some((r, deadline));
        let topic = chan.topic.clone();
        self.pending.insert(r, Pending::Join(id));
        self.timers.arm(deadline, Timer::JoinTimeout(id));
        let _ = self.transmit(Some(r), r, &topic, Event::JOIN, params);
    }

    pub(super) fn join_replied(&mut self, now: Instant, id: ChannelId, r: u64, reply: Reply) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        match chan.pending_join {
            Some((pending, at)) if pending == r => {
                chan.pending_join = None;
                self.timers.disarm(Some(at), Timer::JoinTimeout(id));
            }
            _ => return,
        }
        if reply.is_ok() {
            chan.rejoin_attempt = 0;
            chan.joined_once = true;
            self.set_state(id, ChannelState::Joined);
            let response = reply.into_response();
            if let Some(chan) = self.channels.get_mut(&id) {
                chan.join_response = Some(response.clone());
            }
            let join_ref = Ref::new(r);
            self.emit_channel(id, ChannelEvent::Joined { response, join_ref });
            self.flush_buffer(id);
        } else {
            let cause = RejoinCause::Rejected(reply.into_response());
            self.set_state(id, ChannelState::Errored);
            self.emit_channel(id, ChannelEvent::JoinFailed(cause.clone()));
            self.schedule_rejoin(now, id, cause);
        }
    }

    pub(super) fn join_timed_out(&mut self, now: Instant, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        let Some((r, _)) = chan.pending_join.take() else {
            return;
        };
        self.pending.remove(&r);
        let topic = chan.topic.clone();
        // As phoenix.js does: leave, so that a join the server handled late does not linger.
        let leave = self.make_ref();
        let _ = self.transmit(Some(r), leave, &topic, Event::LEAVE, &Payload::empty());
        self.set_state(id, ChannelState::Errored);
        self.emit_channel(id, ChannelEvent::JoinFailed(RejoinCause::Timeout));
        self.schedule_rejoin(now, id, RejoinCause::Timeout);
    }

    pub(super) fn schedule_rejoin(&mut self, now: Instant, id: ChannelId, cause: RejoinCause) {
        let connected = self.conn == Conn::Connected;
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.rejoin_attempt += 1;
        match chan.rejoin.rejoin_delay(chan.rejoin_attempt, &cause) {
            Some(delay) => {
                // While disconnected, the channel rejoins as soon as the socket reconnects.
                if connected {
                    let at = deadline(now, delay);
                    self.timers
                        .disarm(chan.rejoin_at.replace(at), Timer::Rejoin(id));
                    self.timers.arm(at, Timer::Rejoin(id));
                }
            }
            None => self.close_channel(id, CloseCause::RejoinStopped(cause), true),
        }
    }

    /// Leaves the channel: sends `phx_leave` if it is joined or joining, and closes it when the
    /// server answers or the leave times out. Buffered pushes fail with
    /// [`PushError::ChannelClosed`]; pushes in flight keep waiting for their replies.
    pub fn leave(&mut self, now: Instant, id: ChannelId) {
        let connected = self.conn == Conn::Connected;
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.wants_join = false;
        self.timers.disarm(chan.rejoin_at.take(), Timer::Rejoin(id));
        self.fail_buffered_pushes(id);
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        match chan.state {
            ChannelState::Closed => self.delete_if_removed(id),
            ChannelState::Leaving => {}
            ChannelState::Joined | ChannelState::Joining
                if connected
                    && (chan.state == ChannelState::Joined || chan.pending_join.is_some()) =>
            {
                if let Some((r, at)) = chan.pending_join.take() {
                    self.pending.remove(&r);
                    self.timers.disarm(Some(at), Timer::JoinTimeout(id));
                }
                let join_ref = chan.join_ref;
                let topic = chan.topic.clone();
                let deadline = deadline(now, chan.join_timeout);
                let r = self.make_ref();
                if let Some(chan) = self.channels.get_mut(&id) {
                    chan.pending_leave = Some((r, deadline));
                }
                self.pending.insert(r, Pending::Leave(id));
                self.timers.arm(deadline, Timer::LeaveTimeout(id));
                let _ = self.transmit(join_ref, r, &topic, Event::LEAVE, &Payload::empty());
                self.set_state(id, ChannelState::Leaving);
            }
            _ => self.close_channel(id, CloseCause::Left, false),
        }
    }

    pub(super) fn finish_leave(&mut self, now: Instant, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        if let Some((r, at)) = chan.pending_leave.take() {
            self.pending.remove(&r);
            self.timers.disarm(Some(at), Timer::LeaveTimeout(id));
        }
        // A join asked for while leaving starts once the leave is done.
        let rejoin = chan.wants_join && !chan.removed;
        self.close_channel(id, CloseCause::Left, false);
        if rejoin && let Some(chan) = self.channels.get_mut(&id) {
            chan.wants_join = true;
            chan.rejoin_attempt = 0;
            if self.conn == Conn::Connected {
                self.begin_join(now, id);
            } else {
                self.set_state(id, ChannelState::Joining);
            }
        }
    }

    /// Closes a channel: no rejoin; buffered pushes (and, if `fail_in_flight`, pushes in flight)
    /// fail with [`PushError::ChannelClosed`].
    pub(super) fn close_channel(&mut self, id: ChannelId, cause: CloseCause, fail_in_flight: bool) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.wants_join = false;
        chan.params_requested = false;
        self.timers.disarm(chan.rejoin_at.take(), Timer::Rejoin(id));
        if let Some((r, at)) = chan.pending_join.take() {
            self.pending.remove(&r);
            self.timers.disarm(Some(at), Timer::JoinTimeout(id));
        }
        self.fail_buffered_pushes(id);
        if fail_in_flight {
            self.fail_in_flight(id, PushError::ChannelClosed);
        }
        let was_closed = self
            .channels
            .get(&id)
            .is_some_and(|c| c.state == ChannelState::Closed);
        self.set_state(id, ChannelState::Closed);
        if !was_closed {
            self.emit_channel(id, ChannelEvent::Closed(cause));
        }
        self.delete_if_removed(id);
    }

    pub(super) fn delete_if_removed(&mut self, id: ChannelId) {
        if self
            .channels
            .get(&id)
            .is_some_and(|c| c.removed && c.state == ChannelState::Closed)
            && let Some(chan) = self.channels.remove(&id)
            && self.topics.get(&chan.topic) == Some(&id)
        {
            self.topics.remove(&chan.topic);
        }
    }

    /// Fails the channel's buffered pushes with [`PushError::ChannelClosed`]. Every buffered
    /// push is in the channel's buffer, so an empty buffer (the rule when a channel leaves)
    /// spares the scan of every pending ref: leaving many channels at once stays linear.
    fn fail_buffered_pushes(&mut self, id: ChannelId) {
        if self.channels.get(&id).is_some_and(|c| !c.buffer.is_empty()) {
            self.fail_buffered(id, PushError::ChannelClosed);
        }
    }

    /// Forgets a channel whose handle is gone: leaves it if needed, then deletes it.
    pub fn remove_channel(&mut self, now: Instant, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.removed = true;
        if chan.state == ChannelState::Closed {
            self.fail_buffered_pushes(id);
            self.delete_if_removed(id);
        } else {
            self.leave(now, id);
        }
    }
}
