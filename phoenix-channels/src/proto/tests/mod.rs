//! The core driven with synthetic `now` values: every timer rule without sleeping and without a
//! server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::channel::{
    ChannelId, ChannelOptions, ChannelState, CloseCause, ErrorCause, JoinParams, RejoinCause,
};
use super::message::{Event, Payload, Ref, Reply};
use super::push::{PushError, PushRequest};
use super::{ChannelEvent, CoreConfig, DisconnectReason, Output, SocketCore, SocketStatus};
use crate::backoff::{ReconnectSchedule, RejoinSchedule};
use crate::frame::OutFrame;

const A: ChannelId = ChannelId(1);
const B: ChannelId = ChannelId(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Harness {
    core: SocketCore<u32>,
    now: Instant,
    /// Every output not yet looked at, in order.
    log: Vec<Output<u32>>,
}

impl Harness {
    fn with_config(config: CoreConfig) -> Self {
        let mut h = Self {
            core: SocketCore::new(config),
            now: Instant::now(),
            log: Vec::new(),
        };
        h.core.start(h.now);
        h.drain();
        assert!(matches!(h.log.remove(0), Output::Connect));
        h.core.handle_connected(h.now);
        h.log.clear();
        h
    }

    fn new() -> Self {
        Self::with_config(CoreConfig::default())
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.log.push(o);
        }
    }

    fn take(&mut self) -> Vec<Output<u32>> {
        self.drain();
        std::mem::take(&mut self.log)
    }

    /// The text frames sent since the last look, dropping the other outputs.
    fn sent(&mut self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Transmit(OutFrame::Text(t)) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    fn server(&mut self, text: &str) {
        self.core
            .handle_text(self.now, Bytes::from(text.to_owned()));
    }

    fn add(&mut self, id: ChannelId, topic: &str) {
        self.core
            .add_channel(id, topic.into(), ChannelOptions::default())
            .unwrap();
    }

    /// Adds and joins a channel, answering the join; returns the join ref.
    fn joined(&mut self, id: ChannelId, topic: &str) -> u64 {
        self.joined_with(id, topic, ChannelOptions::default())
    }

    /// [`Harness::joined`] with these channel options.
    fn joined_with(&mut self, id: ChannelId, topic: &str, options: ChannelOptions) -> u64 {
        self.core.add_channel(id, topic.into(), options).unwrap();
        self.core.join(self.now, id);
        let sent = self.sent();
        let join = sent.last().expect("a join frame");
        let r: u64 = join.split('"').nth(1).unwrap().parse().unwrap();
        self.server(&format!(
            r#"["{r}","{r}","{topic}","phx_reply",{{"status":"ok","response":{{}}}}]"#
        ));
        assert_eq!(self.core.channel_state(id), Some(ChannelState::Joined));
        self.take();
        r
    }

    fn push(&mut self, id: ChannelId, event: &str, token: u32) {
        self.core.push(
            self.now,
            id,
            PushRequest::new(Event::from(event), Payload::empty(), ms(10_000)),
            Some(token),
        );
    }

    fn done(&mut self) -> Vec<(u32, Result<Reply, PushError>)> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::PushDone(t, r) => Some((t, r)),
                _ => None,
            })
            .collect()
    }

    fn channel_events(&mut self, id: ChannelId) -> Vec<ChannelEvent> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Channel(c, e) if c == id => Some(e),
                _ => None,
            })
            .collect()
    }

    fn statuses(&mut self) -> Vec<SocketStatus> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Status(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

fn ok_reply(join_ref: u64, r: u64, topic: &str, response: &str) -> String {
    format!(r#"["{join_ref}","{r}","{topic}","phx_reply",{{"status":"ok","response":{response}}}]"#)
}

mod channels;
mod connection;
mod frames;
mod msgpack;
mod pushes;
