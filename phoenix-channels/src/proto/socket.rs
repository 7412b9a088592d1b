//! The socket machine: connection lifecycle, heartbeats, refs, and every channel and push of the
//! socket. It performs no I/O and reads no clock: every input comes with the current time, and
//! every action comes out of [`SocketCore::poll_output`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use phoenix_channels::proto::{ChannelId, ChannelOptions, CoreConfig, Output, SocketCore};
//! use phoenix_channels::frame::OutFrame;
//!
//! let mut core: SocketCore<()> = SocketCore::new(CoreConfig::default());
//! let now = Instant::now();
//! core.start(now);
//! assert!(matches!(core.poll_output(), Some(Output::Connect)));
//! core.handle_connected(now);
//! let chan = ChannelId(1);
//! core.add_channel(chan, "room:1".into(), ChannelOptions::default()).unwrap();
//! core.join(now, chan);
//! let mut sent = Vec::new();
//! while let Some(out) = core.poll_output() {
//!     if let Output::Transmit(OutFrame::Text(text)) = out { sent.push(text) }
//! }
//! assert_eq!(sent, [r#"["1","1","room:1","phx_join",{}]"#]);
//! core.handle_text(now, Bytes::from_static(
//!     br#"["1","1","room:1","phx_reply",{"status":"ok","response":{}}]"#));
//! assert_eq!(core.channel_state(chan), Some(phoenix_channels::ChannelState::Joined));
//! // The connection counts as healthy 10 s after it opened (then the first heartbeat is due,
//! // one interval after it opened).
//! assert_eq!(core.poll_timeout(), Some(now + Duration::from_secs(10)));
//! core.handle_timeout(now + Duration::from_secs(10));
//! assert_eq!(core.poll_timeout(), Some(now + Duration::from_secs(30)));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::backoff::{ReconnectPolicy, ReconnectSchedule, RejoinPolicy, RejoinSchedule};
use super::channel::{
    Chan, ChannelId, ChannelOptions, ChannelState, CloseCause, ErrorCause, JoinParams, RejoinCause,
};
use super::frame::{self, DecodeError, FrameView, OutFrame, ViewBody};
use super::message::{Event, Inbound, Message, Payload, Ref, Reply, Topic};
use super::push::{
    Pending, PendingPush, PushDeadlines, PushError, PushRequest, Timer, Timers, deadline,
};

const PHOENIX_TOPIC: &str = "phoenix";

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

/// The socket-wide settings of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Time between heartbeats (default 30 s).
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may wait for its reply before the connection is considered dead
    /// (default: the interval, as phoenix.js).
    pub heartbeat_timeout: Duration,
    /// Default join (and leave) timeout of channels (default 10 s).
    pub join_timeout: Duration,
    /// Default capacity of a channel's buffer of pushes waiting for the join (default 1024).
    pub push_buffer_capacity: usize,
    /// How long a connection must stay up before it counts as healthy, which resets the
    /// reconnect schedule to its first delay (default 10 s). A heartbeat reply proves it
    /// healthy sooner. Until then, a connection that opens and drops counts as one more
    /// consecutive failure: a server that accepts the upgrade and then closes (or sends a
    /// frame over the size limit) is redialled on the growing schedule, not every 10 ms.
    pub healthy_after: Duration,
    /// When and whether to reconnect.
    pub reconnect: Arc<dyn ReconnectPolicy>,
    /// Default rejoin policy of channels.
    pub rejoin: Arc<dyn RejoinPolicy>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            join_timeout: Duration::from_secs(10),
            push_buffer_capacity: 1024,
            healthy_after: Duration::from_secs(10),
            reconnect: Arc::new(ReconnectSchedule::default()),
            rejoin: Arc::new(RejoinSchedule::default()),
        }
    }
}

/// Something that happened to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The channel's state changed.
    State(ChannelState),
    /// The channel is about to join and its params are asked for (channels with
    /// [`JoinParams::Ask`]); answer with [`SocketCore::provide_join_params`].
    NeedJoinParams,
    /// The join succeeded: the server's response, and the join ref of this join (pushes can be
    /// pinned to it, see [`SocketCore::push`]).
    Joined {
        /// The server's join response.
        response: Payload,
        /// The join ref of this join.
        join_ref: Ref,
    },
    /// A join attempt failed (rejected or timed out); a rejoin follows unless the policy stops.
    JoinFailed(RejoinCause),
    /// A server push or broadcast on the channel's topic.
    Message(Message),
    /// The channel went into the errored state; it will rejoin.
    Errored(ErrorCause),
    /// The channel closed.
    Closed(CloseCause),
}

/// An action for the driver, or a report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<T> {
    /// Open the transport, then call [`SocketCore::handle_connected`] or
    /// [`SocketCore::handle_disconnected`].
    Connect,
    /// Write this frame.
    Transmit(OutFrame),
    /// Close the transport (with this close code) and drop it. The core already counts it as
    /// gone: do not report its end.
    CloseTransport {
        /// The WebSocket close code to send.
        code: u16,
        /// Why.
        reason: &'static str,
    },
    /// The socket status changed.
    Status(SocketStatus),
    /// Something happened to a channel.
    Channel(ChannelId, ChannelEvent),
    /// A push ended: its reply, or why there is none. Every push with a token ends exactly once.
    PushDone(T, Result<Reply, PushError>),
    /// A copy of a decoded inbound frame (only while the tap is on).
    Tap(Inbound),
    /// An inbound frame could not be decoded; it was dropped.
    Malformed(DecodeError),
}

/// Why a channel could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddChannelError {
    /// Another active channel of the socket uses the topic.
    #[error("another channel of this socket is using topic {0}")]
    TopicTaken(Topic),
    /// The channel id is already in use.
    #[error("channel id {0} is already in use")]
    DuplicateId(ChannelId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Idle,
    Connecting,
    Connected,
    Waiting,
    Stopped,
}

/// The sans-io Phoenix Channels client: one socket with its channels and pushes.
///
/// `T` is what the driver attaches to each push that expects a reply (e.g. a oneshot sender);
/// it comes back, exactly once, in [`Output::PushDone`].
pub struct SocketCore<T> {
    config: CoreConfig,
    conn: Conn,
    /// Consecutive failed or lost connections.
    failures: u32,
    next_ref: u64,
    channels: FxHashMap<ChannelId, Chan>,
    topics: FxHashMap<Topic, ChannelId>,
    pending: FxHashMap<u64, Pending<T>>,
    timers: Timers,
    push_deadlines: PushDeadlines,
    out: VecDeque<Output<T>>,
    status: SocketStatus,
    heartbeat_at: Option<Instant>,
    heartbeat_pending: Option<(u64, Instant)>,
    reconnect_at: Option<Instant>,
    /// When the connection counts as healthy (see [`CoreConfig::healthy_after`]).
    healthy_at: Option<Instant>,
    tap: bool,
}

impl<T> fmt::Debug for SocketCore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketCore")
            .field("status", &self.status)
            .field("channels", &self.channels.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<T> SocketCore<T> {
    /// A core in the idle state: nothing happens until [`start`](Self::start).
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            conn: Conn::Idle,
            failures: 0,
            next_ref: 0,
            channels: FxHashMap::default(),
            topics: FxHashMap::default(),
            pending: FxHashMap::default(),
            timers: Timers::default(),
            push_deadlines: PushDeadlines::default(),
            out: VecDeque::new(),
            status: SocketStatus::Disconnected { reason: None },
            heartbeat_at: None,
            heartbeat_pending: None,
            reconnect_at: None,
            healthy_at: None,
            tap: false,
        }
    }

    // ----- inspection -------------------------------------------------------------------------

    /// The current socket status.
    pub fn status(&self) -> &SocketStatus {
        &self.status
    }

    /// The state of a channel, or `None` if there is no such channel.
    pub fn channel_state(&self, id: ChannelId) -> Option<ChannelState> {
        self.channels.get(&id).map(|c| c.state)
    }

    /// How many refs await a reply or a send (pushes, joins, leaves, heartbeat).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// How many timers are armed (push deadlines included, some of which may belong to pushes
    /// that already ended and wait to be dropped).
    pub fn timer_len(&self) -> usize {
        self.timers.len() + self.push_deadlines.len()
    }

    /// How many channels the core holds.
    pub fn channel_len(&self) -> usize {
        self.channels.len()
    }

    /// Turns the tap ([`Output::Tap`] for every decoded inbound frame) on or off.
    pub fn set_tap(&mut self, on: bool) {
        self.tap = on;
    }

    // ----- outputs ----------------------------------------------------------------------------

    /// The next action or report, in order.
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.push_deadlines.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn emit_channel(&mut self, id: ChannelId, event: ChannelEvent) {
        self.out.push_back(Output::Channel(id, event));
    }

    fn set_status(&mut self, status: SocketStatus) {
        if self.status != status {
            self.status = status.clone();
            self.out.push_back(Output::Status(status));
        }
    }

    fn set_state(&mut self, id: ChannelId, state: ChannelState) {
        if let Some(chan) = self.channels.get_mut(&id)
            && chan.state != state
        {
            chan.state = state;
            self.emit_channel(id, ChannelEvent::State(state));
        }
    }

    fn make_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }

    fn transmit(
        &mut self,
        join_ref: Option<u64>,
        msg_ref: u64,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) {
        match frame::encode(
            join_ref.map(Ref::new).as_ref(),
            Some(&Ref::new(msg_ref)),
            topic,
            event,
            payload,
        ) {
            Ok(f) => self.out.push_back(Output::Transmit(f)),
            // Binary pushes are checked before they are accepted, and JSON always encodes; a
            // frame that still cannot be encoded is dropped and its ref times out.
            Err(e) => {
                tracing::warn!(topic, event, error = %e, "dropping a frame that cannot be encoded")
            }
        }
    }

    // ----- connection -------------------------------------------------------------------------

    /// Starts connecting (once; later calls do nothing).
    pub fn start(&mut self, _now: Instant) {
        if self.conn == Conn::Idle {
            self.connect_now();
        }
    }

    fn connect_now(&mut self) {
        self.conn = Conn::Connecting;
        self.out.push_back(Output::Connect);
        self.set_status(SocketStatus::Connecting {
            attempt: self.failures + 1,
        });
    }

    /// The transport asked for by [`Output::Connect`] is open.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.conn != Conn::Connecting {
            return;
        }
        self.conn = Conn::Connected;
        // The failures count on until the connection proves healthy.
        let healthy_at = deadline(now, self.config.healthy_after);
        self.healthy_at = Some(healthy_at);
        self.timers.arm(healthy_at, Timer::Healthy);
        self.set_status(SocketStatus::Connected);
        let at = deadline(now, self.config.heartbeat_interval);
        self.heartbeat_at = Some(at);
        self.timers.arm(at, Timer::Heartbeat);
        let mut rejoining: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.wants_join)
            .map(|(id, _)| *id)
            .collect();
        rejoining.sort_unstable();
        for id in rejoining {
            if let Some(chan) = self.channels.get_mut(&id) {
                chan.rejoin_attempt = 0;
            }
            self.begin_join(now, id);
        }
    }

    /// The transport failed to open, or the open transport ended by itself.
    pub fn handle_disconnected(&mut self, now: Instant, reason: DisconnectReason) {
        if matches!(self.conn, Conn::Connecting | Conn::Connected) {
            self.transport_lost(now, reason);
        }
    }

    fn transport_lost(&mut self, now: Instant, reason: DisconnectReason) {
        self.timers.disarm(self.healthy_at.take(), Timer::Healthy);
        self.timers
            .disarm(self.heartbeat_at.take(), Timer::Heartbeat);
        if let Some((_, at)) = self.heartbeat_pending.take() {
            self.timers.disarm(Some(at), Timer::HeartbeatTimeout);
        }
        // Everything sent is lost; buffered pushes stay for the next connection.
        self.fail_pushes(PushError::Disconnected, |push| push.buffered.is_none());
        self.pending.retain(|_, p| matches!(p, Pending::Push(_)));
        let mut ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(chan) = self.channels.get_mut(&id) else {
                continue;
            };
            if let Some((_, at)) = chan.pending_join.take() {
                self.timers.disarm(Some(at), Timer::JoinTimeout(id));
            }
            self.timers.disarm(chan.rejoin_at.take(), Timer::Rejoin(id));
            match chan.state {
                ChannelState::Joined | ChannelState::Joining => {
                    self.set_state(id, ChannelState::Errored);
                    self.emit_channel(
                        id,
                        ChannelEvent::Errored(ErrorCause::Disconnected(reason.clone())),
                    );
                }
                ChannelState::Leaving => self.finish_leave(now, id),
                ChannelState::Errored | ChannelState::Closed => {}
            }
        }
        self.failures += 1;
        match self
            .config
            .reconnect
            .reconnect_delay(self.failures, &reason)
        {
            Some(delay) => {
                self.conn = Conn::Waiting;
                let at = deadline(now, delay);
                self.reconnect_at = Some(at);
                self.timers.arm(at, Timer::Reconnect);
                self.set_status(SocketStatus::Reconnecting {
                    attempt: self.failures,
                    delay,
                    reason,
                });
            }
            None => self.stop(Some(reason)),
        }
    }

    /// Shuts the socket down for good: closes the transport (code 1000), fails every push with
    /// [`PushError::SocketClosed`] and closes every channel.
    pub fn close(&mut self, _now: Instant) {
        if self.conn == Conn::Stopped {
            return;
        }
        if matches!(self.conn, Conn::Connecting | Conn::Connected) {
            self.out.push_back(Output::CloseTransport {
                code: 1000,
                reason: "client disconnect",
            });
        }
        self.stop(None);
    }

    fn stop(&mut self, reason: Option<DisconnectReason>) {
        self.conn = Conn::Stopped;
        self.timers.clear();
        self.push_deadlines.clear();
        self.heartbeat_at = None;
        self.heartbeat_pending = None;
        self.reconnect_at = None;
        self.healthy_at = None;
        self.fail_pushes(PushError::SocketClosed, |_| true);
        self.pending.clear();
        let mut ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(chan) = self.channels.get_mut(&id) {
                chan.buffer.clear();
                chan.pending_join = None;
                chan.pending_leave = None;
                chan.rejoin_at = None;
                chan.wants_join = false;
                if chan.state != ChannelState::Closed {
                    self.set_state(id, ChannelState::Closed);
                    self.emit_channel(
                        id,
                        ChannelEvent::Closed(CloseCause::SocketClosed(reason.clone())),
                    );
                }
            }
        }
        self.set_status(SocketStatus::Disconnected { reason });
    }

    // ----- timers -----------------------------------------------------------------------------

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let pending = &self.pending;
        let expired = self
            .push_deadlines
            .take_due(now, |r, at| is_fifo_push(pending, r, at));
        for r in expired {
            self.push_timed_out(r);
        }
        for (_, timer) in self.timers.take_due(now) {
            match timer {
                Timer::Heartbeat => self.heartbeat_due(now),
                Timer::Healthy => {
                    self.healthy_at = None;
                    self.failures = 0;
                }
                Timer::HeartbeatTimeout => {
                    self.heartbeat_pending = None;
                    self.out.push_back(Output::CloseTransport {
                        code: 1000,
                        reason: "heartbeat timeout",
                    });
                    self.transport_lost(now, DisconnectReason::HeartbeatTimeout);
                }
                Timer::Reconnect => {
                    self.reconnect_at = None;
                    if self.conn == Conn::Waiting {
                        self.connect_now();
                    }
                }
                Timer::Push(r) => self.push_timed_out(r),
                Timer::JoinTimeout(id) => self.join_timed_out(now, id),
                Timer::LeaveTimeout(id) => {
                    if let Some(chan) = self.channels.get_mut(&id)
                        && let Some((r, _)) = chan.pending_leave.take()
                    {
                        self.pending.remove(&r);
                        self.finish_leave(now, id);
                    }
                }
                Timer::Rejoin(id) => {
                    if let Some(chan) = self.channels.get_mut(&id) {
                        chan.rejoin_at = None;
                        if self.conn == Conn::Connected
                            && chan.wants_join
                            && chan.state == ChannelState::Errored
                        {
                            self.begin_join(now, id);
                        }
                    }
                }
            }
        }
    }

    fn heartbeat_due(&mut self, now: Instant) {
        self.heartbeat_at = None;
        if self.conn != Conn::Connected {
            return;
        }
        if self.heartbeat_pending.is_none() {
            let r = self.make_ref();
            self.transmit(None, r, PHOENIX_TOPIC, Event::HEARTBEAT, &Payload::empty());
            self.pending.insert(r, Pending::Heartbeat);
            let deadline = deadline(now, self.config.heartbeat_timeout);
            self.heartbeat_pending = Some((r, deadline));
            self.timers.arm(deadline, Timer::HeartbeatTimeout);
        }
        let at = deadline(now, self.config.heartbeat_interval);
        self.heartbeat_at = Some(at);
        self.timers.arm(at, Timer::Heartbeat);
    }

    // ----- channels ---------------------------------------------------------------------------

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
            wants_join: false,
            removed: false,
            detached: false,
            joined_once: false,
            join_ref: None,
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

    fn begin_join(&mut self, now: Instant, id: ChannelId) {
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

    fn send_join(&mut self, now: Instant, id: ChannelId, params: &Payload) {
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
        self.transmit(Some(r), r, &topic, Event::JOIN, params);
    }

    fn join_replied(&mut self, now: Instant, id: ChannelId, r: u64, reply: Reply) {
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
            let join_ref = Ref::new(r);
            self.emit_channel(
                id,
                ChannelEvent::Joined {
                    response: reply.into_response(),
                    join_ref,
                },
            );
            self.flush_buffer(id);
        } else {
            let cause = RejoinCause::Rejected(reply.into_response());
            self.set_state(id, ChannelState::Errored);
            self.emit_channel(id, ChannelEvent::JoinFailed(cause.clone()));
            self.schedule_rejoin(now, id, cause);
        }
    }

    fn join_timed_out(&mut self, now: Instant, id: ChannelId) {
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
        self.transmit(Some(r), leave, &topic, Event::LEAVE, &Payload::empty());
        self.set_state(id, ChannelState::Errored);
        self.emit_channel(id, ChannelEvent::JoinFailed(RejoinCause::Timeout));
        self.schedule_rejoin(now, id, RejoinCause::Timeout);
    }

    fn schedule_rejoin(&mut self, now: Instant, id: ChannelId, cause: RejoinCause) {
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
        self.fail_buffered(id, PushError::ChannelClosed);
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
                self.transmit(join_ref, r, &topic, Event::LEAVE, &Payload::empty());
                self.set_state(id, ChannelState::Leaving);
            }
            _ => self.close_channel(id, CloseCause::Left, false),
        }
    }

    fn finish_leave(&mut self, now: Instant, id: ChannelId) {
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
    fn close_channel(&mut self, id: ChannelId, cause: CloseCause, fail_in_flight: bool) {
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
        self.fail_buffered(id, PushError::ChannelClosed);
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

    fn delete_if_removed(&mut self, id: ChannelId) {
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

    /// Forgets a channel whose handle is gone: leaves it if needed, then deletes it.
    pub fn remove_channel(&mut self, now: Instant, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        chan.removed = true;
        if chan.state == ChannelState::Closed {
            self.fail_buffered(id, PushError::ChannelClosed);
            self.delete_if_removed(id);
        } else {
            self.leave(now, id);
        }
    }

    fn fail_buffered(&mut self, id: ChannelId, error: PushError) {
        if let Some(chan) = self.channels.get_mut(&id) {
            chan.buffer.clear();
        }
        self.fail_pushes(error, |push| push.channel == id && push.buffered.is_some());
    }

    fn fail_in_flight(&mut self, id: ChannelId, error: PushError) {
        self.fail_pushes(error, |push| push.channel == id && push.buffered.is_none());
    }

    /// Ends, in ref order, every pending push `which` selects, with `error`.
    fn fail_pushes(&mut self, error: PushError, which: impl Fn(&PendingPush<T>) -> bool) {
        let mut failed: Vec<(u64, Pending<T>)> = self
            .pending
            .extract_if(|_, p| matches!(p, Pending::Push(push) if which(push)))
            .collect();
        failed.sort_unstable_by_key(|(r, _)| *r);
        for (r, p) in failed {
            if let Pending::Push(push) = p {
                self.end_push(r, push, Err(error.clone()));
            }
        }
    }

    /// Ends a push (already out of `pending`): its timer goes, and its waiter (if any) gets the
    /// result.
    fn end_push(&mut self, r: u64, push: PendingPush<T>, result: Result<Reply, PushError>) {
        self.disarm_push(r, &push);
        if let Some(token) = push.token {
            self.out.push_back(Output::PushDone(token, result));
        }
    }

    // ----- pushes -----------------------------------------------------------------------------

    /// Pushes on a channel. With a `token`, the push ends with exactly one
    /// [`Output::PushDone`] carrying it: the reply, or an error (including an immediate one,
    /// such as [`PushError::NotJoined`]). Without a token it is a cast: sent once (after the join
    /// if the channel is joining) and never tracked. See [`PushRequest::pinned`] for pushes that
    /// may go out only under one join.
    pub fn push(&mut self, now: Instant, id: ChannelId, request: PushRequest, token: Option<T>) {
        if let Err((error, Some(token))) = self.try_push(now, id, request, token) {
            self.out.push_back(Output::PushDone(token, Err(error)));
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_push(
        &mut self,
        now: Instant,
        id: ChannelId,
        request: PushRequest,
        token: Option<T>,
    ) -> Result<(), (PushError, Option<T>)> {
        let PushRequest {
            event,
            payload,
            timeout,
            pinned,
        } = request;
        let pinned = pinned.as_ref();
        let Some(chan) = self.channels.get(&id) else {
            return Err((PushError::ChannelClosed, token));
        };
        if let Some(pinned) = pinned
            && (chan.state != ChannelState::Joined
                || chan.join_ref.map(Ref::new).as_ref() != Some(pinned))
        {
            return Err((PushError::Unavailable, token));
        }
        if payload.is_binary()
            && let Err(e) = frame::check_binary_fields(&chan.topic, &event)
        {
            return Err((PushError::Encode(e), token));
        }
        match chan.state {
            ChannelState::Closed if chan.joined_once || chan.detached => {
                Err((PushError::ChannelClosed, token))
            }
            ChannelState::Closed => Err((PushError::NotJoined, token)),
            ChannelState::Leaving => Err((PushError::ChannelClosed, token)),
            ChannelState::Joined => {
                let join_ref = chan.join_ref;
                let topic = chan.topic.clone();
                let r = self.make_ref();
                self.transmit(join_ref, r, &topic, &event, &payload);
                if let Some(token) = token {
                    let deadline = deadline(now, timeout);
                    let in_fifo = self.arm_push(deadline, r);
                    self.pending.insert(
                        r,
                        Pending::Push(PendingPush {
                            channel: id,
                            deadline,
                            token: Some(token),
                            buffered: None,
                            in_fifo,
                        }),
                    );
                }
                Ok(())
            }
            ChannelState::Joining | ChannelState::Errored => {
                if chan.buffer.len() >= chan.buffer_capacity {
                    let capacity = chan.buffer_capacity;
                    return Err((PushError::BufferFull { capacity }, token));
                }
                let r = self.make_ref();
                let deadline = deadline(now, timeout);
                let in_fifo = self.arm_push(deadline, r);
                self.pending.insert(
                    r,
                    Pending::Push(PendingPush {
                        channel: id,
                        deadline,
                        token,
                        buffered: Some((event, payload)),
                        in_fifo,
                    }),
                );
                if let Some(chan) = self.channels.get_mut(&id) {
                    chan.buffer.push_back(r);
                }
                Ok(())
            }
        }
    }

    fn disarm_push(&mut self, r: u64, push: &PendingPush<T>) {
        let pending = &self.pending;
        self.push_deadlines
            .disarm(push.deadline, r, push.in_fifo, &mut self.timers, |r, at| {
                is_fifo_push(pending, r, at)
            });
    }

    fn arm_push(&mut self, at: Instant, r: u64) -> bool {
        self.push_deadlines.arm(at, r, &mut self.timers)
    }

    fn flush_buffer(&mut self, id: ChannelId) {
        let Some(chan) = self.channels.get_mut(&id) else {
            return;
        };
        let buffered = std::mem::take(&mut chan.buffer);
        let join_ref = chan.join_ref;
        let topic = chan.topic.clone();
        for r in buffered {
            let Some(Pending::Push(push)) = self.pending.get_mut(&r) else {
                continue;
            };
            let Some((event, payload)) = push.buffered.take() else {
                continue;
            };
            let is_cast = push.token.is_none();
            self.transmit(join_ref, r, &topic, &event, &payload);
            if is_cast && let Some(Pending::Push(push)) = self.pending.remove(&r) {
                self.disarm_push(r, &push);
            }
        }
    }

    fn push_timed_out(&mut self, r: u64) {
        let Some(Pending::Push(push)) = self.pending.remove(&r) else {
            return;
        };
        if push.buffered.is_some()
            && let Some(chan) = self.channels.get_mut(&push.channel)
            && let Some(pos) = chan.buffer.iter().position(|b| *b == r)
        {
            chan.buffer.remove(pos);
        }
        self.end_push(r, push, Err(PushError::Timeout));
    }

    // ----- inbound ----------------------------------------------------------------------------

    /// A text frame arrived.
    pub fn handle_text(&mut self, now: Instant, frame: Bytes) {
        match frame::decode_text_view(&frame) {
            Ok(view) => self.route(now, view),
            Err(e) => self.out.push_back(Output::Malformed(e)),
        }
    }

    /// A binary frame arrived.
    pub fn handle_binary(&mut self, now: Instant, frame: Bytes) {
        match frame::decode_binary_view(&frame) {
            Ok(view) => self.route(now, view),
            Err(e) => self.out.push_back(Output::Malformed(e)),
        }
    }

    fn route(&mut self, now: Instant, view: FrameView<'_>) {
        let id = self.topics.get(view.topic.as_ref()).copied();
        let topic = match id.and_then(|id| self.channels.get(&id)) {
            Some(chan) => chan.topic.clone(),
            None => Topic::new(&view.topic),
        };
        if self.tap {
            let copy = FrameView {
                join_ref: view.join_ref.clone(),
                msg_ref: view.msg_ref.clone(),
                topic: view.topic.clone(),
                body: match &view.body {
                    ViewBody::Message { event, payload } => ViewBody::Message {
                        event: event.clone(),
                        payload: payload.clone(),
                    },
                    ViewBody::Reply(reply) => ViewBody::Reply(reply.clone()),
                },
            };
            self.out
                .push_back(Output::Tap(copy.into_inbound(topic.clone())));
        }
        match view.body {
            ViewBody::Reply(reply) => {
                let r = view.msg_ref.as_ref().and_then(Ref::as_u64);
                if let Some(r) = r {
                    self.reply(now, r, id, &topic, reply);
                }
            }
            ViewBody::Message { event, payload } => {
                let Some(id) = id else {
                    tracing::debug!(%topic, %event, "dropping a message for a topic with no channel");
                    return;
                };
                let Some(chan) = self.channels.get(&id) else {
                    return;
                };
                if let Some(join_ref) = &view.join_ref
                    && chan.join_ref.map(Ref::new).as_ref() != Some(join_ref)
                {
                    tracing::debug!(%topic, %event, ?join_ref, "dropping an outdated message");
                    return;
                }
                let state = chan.state;
                match event.as_ref() {
                    Event::ERROR => {
                        if matches!(state, ChannelState::Joined | ChannelState::Joining) {
                            self.fail_in_flight(id, PushError::ChannelErrored);
                            if let Some(chan) = self.channels.get_mut(&id)
                                && let Some((r, at)) = chan.pending_join.take()
                            {
                                self.pending.remove(&r);
                                self.timers.disarm(Some(at), Timer::JoinTimeout(id));
                            }
                            self.set_state(id, ChannelState::Errored);
                            self.emit_channel(id, ChannelEvent::Errored(ErrorCause::Crashed));
                            self.schedule_rejoin(now, id, RejoinCause::Crashed);
                        }
                    }
                    Event::CLOSE => match state {
                        ChannelState::Leaving => self.finish_leave(now, id),
                        ChannelState::Joined | ChannelState::Joining => {
                            self.close_channel(id, CloseCause::ServerClosed, true);
                        }
                        _ => {}
                    },
                    _ => {
                        if matches!(
                            state,
                            ChannelState::Joined | ChannelState::Joining | ChannelState::Leaving
                        ) {
                            let message = Message {
                                topic,
                                event: Event::new(&event),
                                payload,
                                join_ref: view.join_ref,
                                msg_ref: view.msg_ref,
                            };
                            self.emit_channel(id, ChannelEvent::Message(message));
                        }
                    }
                }
            }
        }
    }

    fn reply(
        &mut self,
        now: Instant,
        r: u64,
        routed: Option<ChannelId>,
        topic: &Topic,
        reply: Reply,
    ) {
        let Some(pending) = self.pending.remove(&r) else {
            tracing::debug!(%topic, r, "dropping a reply that matches no pending push");
            return;
        };
        // Replies are matched by ref; the topic must still be the one the ref was sent on.
        let sent_on = |id: ChannelId| {
            routed == Some(id) || self.channels.get(&id).is_none_or(|c| &c.topic == topic)
        };
        let matches = match &pending {
            Pending::Heartbeat => topic == PHOENIX_TOPIC,
            Pending::Join(id) | Pending::Leave(id) => sent_on(*id),
            Pending::Push(push) => push.buffered.is_none() && sent_on(push.channel),
        };
        if !matches {
            tracing::debug!(%topic, r, "dropping a reply that does not match its push");
            self.pending.insert(r, pending);
            return;
        }
        match Some(pending) {
            Some(Pending::Heartbeat) => {
                if let Some((pending, at)) = self.heartbeat_pending
                    && pending == r
                {
                    self.heartbeat_pending = None;
                    self.timers.disarm(Some(at), Timer::HeartbeatTimeout);
                }
                // The server answers: the connection is healthy.
                self.timers.disarm(self.healthy_at.take(), Timer::Healthy);
                self.failures = 0;
            }
            Some(Pending::Join(id)) => self.join_replied(now, id, r, reply),
            Some(Pending::Leave(id)) => {
                if let Some(chan) = self.channels.get_mut(&id)
                    && let Some((pending, at)) = chan.pending_leave
                    && pending == r
                {
                    chan.pending_leave = None;
                    self.timers.disarm(Some(at), Timer::LeaveTimeout(id));
                    self.finish_leave(now, id);
                }
            }
            Some(Pending::Push(push)) => self.end_push(r, push, Ok(reply)),
            None => {}
        }
    }
}

/// Whether `r` is a pending push whose deadline `at` is in the FIFO.
fn is_fifo_push<T>(pending: &FxHashMap<u64, Pending<T>>, r: u64, at: Instant) -> bool {
    matches!(pending.get(&r), Some(Pending::Push(push)) if push.in_fifo && push.deadline == at)
}
