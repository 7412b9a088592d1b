//! The socket machine: it owns the connection lifecycle, the refs and the timers, and
//! orchestrates the rest — each channel's transitions live with the channel type
//! ([`channel`](super::channel)), pending pushes and their deadlines with the push type
//! ([`push`](super::push)), the heartbeat in its own unit, the routing of inbound frames in
//! `inbound`. It performs no I/O and reads no clock: every input comes with the current time,
//! and every action comes out of [`SocketCore::poll_output`].
//!
//! The call-order contract is the one of the [module](super): call a `handle_*` (or a command
//! such as [`join`](SocketCore::join)) with `now`, then drain [`poll_output`](SocketCore::poll_output)
//! and ask [`poll_timeout`](SocketCore::poll_timeout) for the next wake-up; `now` never goes back.
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

use rustc_hash::FxHashMap;

use super::channel::{Chan, ChannelId, ChannelState, CloseCause, ErrorCause};
use super::config::CoreConfig;
use super::heartbeat::Heartbeat;
use super::message::{Event, Payload, Ref, Topic};
use super::output::{ChannelEvent, Output};
use super::push::{Pending, PushDeadlines, PushError, is_fifo_push};
use super::status::{DisconnectReason, SocketStatus};
use super::timer::{Timer, Timers, deadline};
use crate::frame;
use std::time::Instant;

/// The topic of socket-wide messages (the heartbeat).
pub(super) const PHOENIX_TOPIC: &str = "phoenix";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conn {
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
    pub(super) config: CoreConfig,
    pub(super) conn: Conn,
    /// Consecutive failed or lost connections.
    pub(super) failures: u32,
    pub(super) next_ref: u64,
    pub(super) channels: FxHashMap<ChannelId, Chan>,
    pub(super) topics: FxHashMap<Topic, ChannelId>,
    pub(super) pending: FxHashMap<u64, Pending<T>>,
    pub(super) timers: Timers,
    pub(super) push_deadlines: PushDeadlines,
    pub(super) out: VecDeque<Output<T>>,
    pub(super) status: SocketStatus,
    pub(super) heartbeat: Heartbeat,
    pub(super) reconnect_at: Option<Instant>,
    /// When the connection counts as healthy (see [`CoreConfig::healthy_after`]).
    pub(super) healthy_at: Option<Instant>,
    pub(super) tap: bool,
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
        let heartbeat = Heartbeat::new(config.heartbeat_interval, config.heartbeat_timeout);
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
            heartbeat,
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

    pub(super) fn emit_channel(&mut self, id: ChannelId, event: ChannelEvent) {
        self.out.push_back(Output::Channel(id, event));
    }

    pub(super) fn set_status(&mut self, status: SocketStatus) {
        if self.status != status {
            self.status = status.clone();
            self.out.push_back(Output::Status(status));
        }
    }

    pub(super) fn set_state(&mut self, id: ChannelId, state: ChannelState) {
        if let Some(chan) = self.channels.get_mut(&id)
            && chan.state != state
        {
            chan.state = state;
            if state != ChannelState::Joined {
                chan.join_response = None;
            }
            self.emit_channel(id, ChannelEvent::State(state));
        }
    }

    pub(super) fn make_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }

    pub(super) fn transmit(
        &mut self,
        join_ref: Option<u64>,
        msg_ref: u64,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<(), frame::EncodeError> {
        match frame::encode_with(
            self.config.serializer,
            join_ref.map(Ref::new).as_ref(),
            Some(&Ref::new(msg_ref)),
            topic,
            event,
            payload,
        ) {
            Ok(f) => {
                self.out.push_back(Output::Transmit(f));
                Ok(())
            }
            // Binary pushes are checked before they are accepted; a payload that cannot be
            // transcoded to the socket's format is not sent (a push fails with the error, a
            // join or leave times out).
            Err(e) => {
                tracing::warn!(topic, event, error = %e, "dropping a frame that cannot be encoded");
                Err(e)
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

    pub(super) fn connect_now(&mut self) {
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
        self.heartbeat.start(now, &mut self.timers);
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

    pub(super) fn transport_lost(&mut self, now: Instant, reason: DisconnectReason) {
        self.timers.disarm(self.healthy_at.take(), Timer::Healthy);
        self.heartbeat.stop(&mut self.timers);
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

    pub(super) fn stop(&mut self, reason: Option<DisconnectReason>) {
        self.conn = Conn::Stopped;
        self.timers.clear();
        self.push_deadlines.clear();
        self.heartbeat.clear();
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
                    self.heartbeat.timed_out();
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

    pub(super) fn heartbeat_due(&mut self, now: Instant) {
        let connected = self.conn == Conn::Connected;
        let next_ref = &mut self.next_ref;
        let sent = self.heartbeat.due(now, connected, &mut self.timers, || {
            *next_ref += 1;
            *next_ref
        });
        if let Some(r) = sent {
            let _ = self.transmit(None, r, PHOENIX_TOPIC, Event::HEARTBEAT, &Payload::empty());
            self.pending.insert(r, Pending::Heartbeat);
        }
    }
}
