//! Pushes: the request, the pending pushes by ref and their deadlines, and the push transitions
//! of the socket machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::channel::{ChannelId, ChannelState};
use super::message::{Event, Payload, Ref, Reply};
use super::output::Output;
use super::socket::SocketCore;
use super::timer::{Timer, Timers, deadline};
use crate::frame::{self, EncodeError, Serializer};

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
    /// (from [`ChannelEvent::Joined`](super::ChannelEvent::Joined)); otherwise it fails
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

/// What a ref in flight stands for.
#[derive(Debug)]
pub(crate) enum Pending<T> {
    Push(PendingPush<T>),
    Join(ChannelId),
    Leave(ChannelId),
    Heartbeat,
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

/// The push transitions of the socket machine: sending or buffering a push, flushing the buffer
/// after a join, deadlines, and ending pushes with their reply or error.
impl<T> SocketCore<T> {
    pub(super) fn fail_buffered(&mut self, id: ChannelId, error: PushError) {
        if let Some(chan) = self.channels.get_mut(&id) {
            chan.buffer.clear();
        }
        self.fail_pushes(error, |push| push.channel == id && push.buffered.is_some());
    }

    pub(super) fn fail_in_flight(&mut self, id: ChannelId, error: PushError) {
        self.fail_pushes(error, |push| push.channel == id && push.buffered.is_none());
    }

    /// Ends, in ref order, every pending push `which` selects, with `error`.
    pub(super) fn fail_pushes(
        &mut self,
        error: PushError,
        which: impl Fn(&PendingPush<T>) -> bool,
    ) {
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
    pub(super) fn end_push(
        &mut self,
        r: u64,
        push: PendingPush<T>,
        result: Result<Reply, PushError>,
    ) {
        self.disarm_push(r, &push);
        if let Some(token) = push.token {
            self.out.push_back(Output::PushDone(token, result));
        }
    }

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
    pub(super) fn try_push(
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
        if payload.is_binary()
            && token.is_some()
            && self.config.serializer == Serializer::MessagePack
        {
            return Err((
                PushError::Encode(EncodeError::BinaryReplyUnsupported),
                token,
            ));
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
                if let Err(e) = self.transmit(join_ref, r, &topic, &event, &payload) {
                    return Err((PushError::Encode(e), token));
                }
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

    pub(super) fn disarm_push(&mut self, r: u64, push: &PendingPush<T>) {
        let pending = &self.pending;
        self.push_deadlines
            .disarm(push.deadline, r, push.in_fifo, &mut self.timers, |r, at| {
                is_fifo_push(pending, r, at)
            });
    }

    pub(super) fn arm_push(&mut self, at: Instant, r: u64) -> bool {
        self.push_deadlines.arm(at, r, &mut self.timers)
    }

    pub(super) fn flush_buffer(&mut self, id: ChannelId) {
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
            let sent = self.transmit(join_ref, r, &topic, &event, &payload);
            if let Err(e) = sent {
                if let Some(Pending::Push(push)) = self.pending.remove(&r) {
                    self.end_push(r, push, Err(PushError::Encode(e)));
                }
            } else if is_cast && let Some(Pending::Push(push)) = self.pending.remove(&r) {
                self.disarm_push(r, &push);
            }
        }
    }

    pub(super) fn push_timed_out(&mut self, r: u64) {
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
}

/// Whether `r` is a pending push whose deadline `at` is in the FIFO.
pub(super) fn is_fifo_push<T>(pending: &FxHashMap<u64, Pending<T>>, r: u64, at: Instant) -> bool {
    matches!(pending.get(&r), Some(Pending::Push(push)) if push.in_fifo && push.deadline == at)
}
