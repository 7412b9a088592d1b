//! Inbound frames: decoding, and routing each to its channel, push, join, leave or heartbeat.

use std::time::Instant;

use bytes::Bytes;

use super::channel::{ChannelId, ChannelState, CloseCause, ErrorCause, RejoinCause};
use super::message::{Event, Message, Ref, Reply, Topic};
use super::output::{ChannelEvent, Output};
use super::push::{Pending, PushError};
use super::socket::{PHOENIX_TOPIC, SocketCore};
use super::timer::Timer;
use crate::frame::{self, FrameView, ViewBody};
use crate::transport::Utf8Bytes;

impl<T> SocketCore<T> {
    /// A text frame arrived (its bytes are checked to be UTF-8 here; a transport that checked
    /// them already hands the frame to [`handle_utf8_text`](Self::handle_utf8_text)).
    pub fn handle_text(&mut self, now: Instant, frame: Bytes) {
        match frame::decode_text_view(&frame, None) {
            Ok(view) => self.route(now, view),
            Err(e) => self.out.push_back(Output::Malformed(e)),
        }
    }

    /// A text frame arrived whose bytes are known to be UTF-8 (a WebSocket text frame, which
    /// the transport checked): decoded like [`handle_text`](Self::handle_text) without
    /// checking them again.
    pub fn handle_utf8_text(&mut self, now: Instant, frame: Utf8Bytes) {
        let bytes = Bytes::from(frame.clone());
        match frame::decode_text_view(&bytes, Some(frame.as_str())) {
            Ok(view) => self.route(now, view),
            Err(e) => self.out.push_back(Output::Malformed(e)),
        }
    }

    /// A binary frame arrived.
    pub fn handle_binary(&mut self, now: Instant, frame: Bytes) {
        match frame::decode_binary_view_with(self.config.serializer, &frame) {
            Ok(view) => self.route(now, view),
            Err(e) => self.out.push_back(Output::Malformed(e)),
        }
    }

    pub(super) fn route(&mut self, now: Instant, view: FrameView<'_>) {
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
                let rejoin_after_close = chan.rejoin_after_server_close;
                match event.as_ref() {
                    Event::ERROR => {
                        if matches!(state, ChannelState::Joined | ChannelState::Joining) {
                            self.channel_went_down(
                                now,
                                id,
                                ErrorCause::Crashed,
                                RejoinCause::Crashed,
                            );
                        }
                    }
                    Event::CLOSE => match state {
                        ChannelState::Leaving => self.finish_leave(now, id),
                        ChannelState::Joined | ChannelState::Joining if rejoin_after_close => {
                            self.channel_went_down(
                                now,
                                id,
                                ErrorCause::ServerClosed,
                                RejoinCause::ServerClosed,
                            );
                        }
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

    /// A joined or joining channel's server process ended (it crashed, or closed the channel
    /// on a channel built to rejoin after that): pushes in flight fail, the join in progress
    /// is dropped, and the channel errors and rejoins on its policy.
    fn channel_went_down(
        &mut self,
        now: Instant,
        id: ChannelId,
        error: ErrorCause,
        cause: RejoinCause,
    ) {
        self.fail_in_flight(id, PushError::ChannelErrored);
        if let Some(chan) = self.channels.get_mut(&id)
            && let Some((r, at)) = chan.pending_join.take()
        {
            self.pending.remove(&r);
            self.timers.disarm(Some(at), Timer::JoinTimeout(id));
        }
        self.set_state(id, ChannelState::Errored);
        self.emit_channel(id, ChannelEvent::Errored(error));
        self.schedule_rejoin(now, id, cause);
    }

    pub(super) fn reply(
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
                self.heartbeat.replied(r, &mut self.timers);
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
