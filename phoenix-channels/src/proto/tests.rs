//! The core driven with synthetic `now` values: every timer rule without sleeping and without a
//! server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backoff::{ReconnectSchedule, RejoinSchedule};
use super::channel::{
    ChannelId, ChannelOptions, ChannelState, CloseCause, ErrorCause, JoinParams, RejoinCause,
};
use super::frame::OutFrame;
use super::message::{Event, Payload, Ref, Reply};
use super::push::{PushError, PushRequest};
use super::socket::{ChannelEvent, CoreConfig, DisconnectReason, Output, SocketCore, SocketStatus};

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
        self.add(id, topic);
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

#[test]
fn join_uses_its_own_ref_as_join_ref_and_pushes_carry_it() {
    let mut h = Harness::new();
    h.add(A, "echo:1");
    h.core.join(h.now, A);
    assert_eq!(h.sent(), [r#"["1","1","echo:1","phx_join",{}]"#]);
    h.server(&ok_reply(1, 1, "echo:1", r#"{"joined":"echo:1"}"#));
    let events = h.channel_events(A);
    assert!(events.contains(&ChannelEvent::State(ChannelState::Joined)));
    assert!(events.contains(&ChannelEvent::Joined {
        response: Payload::from_json_text(r#"{"joined":"echo:1"}"#).unwrap(),
        join_ref: Ref::new(1),
    }));
    h.core.push(
        h.now,
        A,
        PushRequest::new(
            "echo".into(),
            Payload::from_json_text(r#"{"hello":"world"}"#).unwrap(),
            ms(10_000),
        ),
        Some(7),
    );
    assert_eq!(h.sent(), [r#"["1","2","echo:1","echo",{"hello":"world"}]"#]);
    h.server(&ok_reply(1, 2, "echo:1", r#"{"hello":"world"}"#));
    let done = h.done();
    assert_eq!(done.len(), 1);
    let (token, reply) = &done[0];
    assert_eq!(*token, 7);
    assert_eq!(
        reply.as_ref().unwrap().response().as_json(),
        Some(r#"{"hello":"world"}"#)
    );
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn replies_of_other_statuses_resolve_the_push() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "e", 1);
    h.push(A, "e", 2);
    h.sent();
    h.server(r#"["1","2","t","phx_reply",{"status":"error","response":{"reason":"nope"}}]"#);
    h.server(r#"["1","3","t","phx_reply",{"status":"weird","response":null}]"#);
    let done = h.done();
    assert_eq!(
        done[0].1.as_ref().unwrap().reason().as_deref(),
        Some("nope")
    );
    assert_eq!(done[1].1.as_ref().unwrap().status().as_str(), "weird");
}

#[test]
fn reply_on_another_topic_or_unknown_ref_is_dropped() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "e", 1);
    h.sent();
    h.server(&ok_reply(1, 2, "other", "{}"));
    h.server(&ok_reply(1, 99, "t", "{}"));
    assert!(h.done().is_empty());
    assert_eq!(h.core.pending_len(), 1);
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert_eq!(h.done().len(), 1);
}

#[test]
fn pushes_before_the_join_are_buffered_then_sent_in_order() {
    let mut h = Harness::new();
    h.add(A, "t");
    h.core.join(h.now, A);
    h.sent();
    h.push(A, "first", 1);
    h.core.push(
        h.now,
        A,
        PushRequest::new("cast".into(), Payload::empty(), ms(10_000)),
        None,
    );
    h.push(A, "second", 2);
    assert!(
        h.sent().is_empty(),
        "nothing goes out before the join reply"
    );
    h.advance(ms(100));
    h.server(&ok_reply(1, 1, "t", "{}"));
    assert_eq!(
        h.sent(),
        [
            r#"["1","2","t","first",{}]"#,
            r#"["1","3","t","cast",{}]"#,
            r#"["1","4","t","second",{}]"#
        ]
    );
    // The cast is not tracked; the two pushes are.
    assert_eq!(h.core.pending_len(), 2);
    // Their deadline runs from the push, not from the send.
    h.advance(ms(9_899));
    assert!(h.done().is_empty());
    h.advance(ms(1));
    assert_eq!(h.done().iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn a_buffered_push_that_expires_is_never_sent() {
    let mut h = Harness::new();
    h.add(A, "t");
    h.core.join(h.now, A);
    h.sent();
    h.core.push(
        h.now,
        A,
        PushRequest::new("late".into(), Payload::empty(), ms(500)),
        Some(1),
    );
    h.push(A, "kept", 2);
    h.advance(ms(500));
    assert_eq!(h.done(), [(1, Err(PushError::Timeout))]);
    h.server(&ok_reply(1, 1, "t", "{}"));
    assert_eq!(h.sent(), [r#"["1","3","t","kept",{}]"#]);
}

#[test]
fn the_push_buffer_is_bounded() {
    let mut h = Harness::new();
    let options = ChannelOptions {
        buffer_capacity: Some(2),
        ..ChannelOptions::default()
    };
    h.core.add_channel(A, "t".into(), options).unwrap();
    h.core.join(h.now, A);
    for token in 1..=3 {
        h.push(A, "e", token);
    }
    assert_eq!(h.done(), [(3, Err(PushError::BufferFull { capacity: 2 }))]);
}

#[test]
fn pushing_on_a_channel_never_joined_or_left_fails_at_once() {
    let mut h = Harness::new();
    h.add(A, "t");
    h.push(A, "e", 1);
    assert_eq!(h.done(), [(1, Err(PushError::NotJoined))]);
    h.core.join(h.now, A);
    h.server(&ok_reply(1, 1, "t", "{}"));
    h.core.leave(h.now, A);
    h.push(A, "e", 2);
    assert_eq!(h.done(), [(2, Err(PushError::ChannelClosed))]);
    h.push(ChannelId(42), "e", 3);
    assert_eq!(h.done(), [(3, Err(PushError::ChannelClosed))]);
}

#[test]
fn binary_pushes_are_checked_before_they_are_accepted() {
    let mut h = Harness::new();
    let topic = "t".repeat(300);
    h.joined(A, &topic);
    h.core.push(
        h.now,
        A,
        PushRequest::new("e".into(), Payload::binary(vec![1u8]), ms(1000)),
        Some(1),
    );
    let done = h.done();
    assert!(matches!(done[0].1, Err(PushError::Encode(_))));
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn heartbeat_every_interval_and_only_its_reply_counts() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.advance(Duration::from_secs(30));
    assert_eq!(h.sent(), [r#"[null,"2","phoenix","heartbeat",{}]"#]);
    h.server(r#"[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]"#);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.sent(), [r#"[null,"3","phoenix","heartbeat",{}]"#]);
    // Other traffic does not count as a heartbeat reply.
    h.advance(Duration::from_secs(29));
    h.server(r#"[null,null,"t","news",{}]"#);
    h.server(r#"[null,"3","t","phx_reply",{"status":"ok","response":{}}]"#);
    h.take();
    h.advance(Duration::from_secs(1));
    let out = h.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::CloseTransport {
            reason: "heartbeat timeout",
            ..
        }
    )));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Status(SocketStatus::Reconnecting {
            reason: DisconnectReason::HeartbeatTimeout,
            attempt: 1,
            ..
        })
    )));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Errored));
}

#[test]
fn heartbeat_timeout_is_configurable_apart_from_the_interval() {
    let config = CoreConfig {
        heartbeat_interval: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(5),
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.advance(Duration::from_secs(30));
    assert_eq!(h.sent().len(), 1);
    h.advance(Duration::from_millis(4_999));
    assert!(h.core.status().is_connected());
    h.advance(Duration::from_millis(1));
    assert!(matches!(h.core.status(), SocketStatus::Reconnecting { .. }));
}

#[test]
fn a_timeout_longer_than_the_interval_skips_beats_instead_of_stacking_them() {
    let config = CoreConfig {
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(25),
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.advance(Duration::from_secs(10));
    h.advance(Duration::from_secs(10));
    h.advance(Duration::from_secs(10));
    assert_eq!(h.sent().len(), 1, "one heartbeat in flight at a time");
    h.advance(Duration::from_secs(5));
    assert!(matches!(h.core.status(), SocketStatus::Reconnecting { .. }));
}

#[test]
fn reconnect_follows_the_schedule_and_resets_after_a_healthy_connection() {
    let mut h = Harness::new();
    let mut delays = Vec::new();
    for _ in 0..11 {
        h.core
            .handle_disconnected(h.now, DisconnectReason::Io("refused".into()));
        let status = h.statuses();
        let Some(SocketStatus::Reconnecting { delay, .. }) = status.last() else {
            panic!("{status:?}")
        };
        delays.push(delay.as_millis() as u64);
        h.advance(*delay - ms(1));
        assert!(!h.take().iter().any(|o| matches!(o, Output::Connect)));
        h.advance(ms(1));
        assert!(h.take().iter().any(|o| matches!(o, Output::Connect)));
    }
    assert_eq!(
        delays,
        [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000]
    );
    h.core.handle_connected(h.now);
    h.advance(Duration::from_secs(10));
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    assert!(
        matches!(h.statuses().last(), Some(SocketStatus::Reconnecting { delay, attempt: 1, .. }) if *delay == ms(10))
    );
}

#[test]
fn a_refused_upgrade_stops_with_its_status_and_fails_what_waits() {
    let mut h = Harness::new();
    h.add(A, "t");
    h.core.join(h.now, A);
    h.core
        .handle_disconnected(h.now, DisconnectReason::Io("reset".into()));
    h.push(A, "e", 1);
    h.advance(ms(10));
    h.take();
    h.core
        .handle_disconnected(h.now, DisconnectReason::Http { status: 403 });
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::SocketClosed))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(
            A,
            ChannelEvent::Closed(CloseCause::SocketClosed(Some(DisconnectReason::Http {
                status: 403
            })))
        )
    )));
    assert_eq!(
        h.core.status(),
        &SocketStatus::Disconnected {
            reason: Some(DisconnectReason::Http { status: 403 })
        }
    );
    assert_eq!(h.core.poll_timeout(), None);
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn a_normal_close_from_the_server_reconnects_by_default_and_can_be_made_final() {
    let mut h = Harness::new();
    let normal = DisconnectReason::Closed {
        code: 1000,
        reason: String::new(),
    };
    h.core.handle_disconnected(h.now, normal.clone());
    assert!(
        matches!(h.core.status(), SocketStatus::Reconnecting { reason, .. } if *reason == normal)
    );

    let config = CoreConfig {
        reconnect: Arc::new(ReconnectSchedule::default().stop_on_normal_close(true)),
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.core.handle_disconnected(h.now, normal.clone());
    assert_eq!(
        h.core.status(),
        &SocketStatus::Disconnected {
            reason: Some(normal)
        }
    );
}

#[test]
fn in_flight_pushes_fail_at_once_on_disconnect_and_buffered_ones_survive() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "in_flight", 1);
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::Disconnected))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(
            A,
            ChannelEvent::Errored(ErrorCause::Disconnected(DisconnectReason::Eof))
        )
    )));
    h.push(A, "buffered", 2);
    assert!(h.done().is_empty());
    h.advance(ms(10));
    h.core.handle_connected(h.now);
    // The channel rejoins at once, with a new join ref, and then flushes the buffer.
    assert_eq!(h.sent(), [r#"["4","4","t","phx_join",{}]"#]);
    h.server(&ok_reply(4, 4, "t", "{}"));
    assert_eq!(h.sent(), [r#"["4","3","t","buffered",{}]"#]);
    h.server(&ok_reply(4, 3, "t", "{}"));
    assert!(h.done()[0].1.is_ok());
}

#[test]
fn every_joined_channel_rejoins_after_a_reconnect() {
    let mut h = Harness::new();
    h.joined(A, "a");
    h.joined(B, "b");
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    h.advance(ms(10));
    h.core.handle_connected(h.now);
    let sent = h.sent();
    assert_eq!(
        sent,
        [
            r#"["3","3","a","phx_join",{}]"#,
            r#"["4","4","b","phx_join",{}]"#
        ]
    );
}

#[test]
fn join_timeout_leaves_then_rejoins_on_the_schedule() {
    let config = CoreConfig {
        heartbeat_interval: Duration::from_secs(3600),
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.add(A, "t");
    h.core.join(h.now, A);
    assert_eq!(h.sent(), [r#"["1","1","t","phx_join",{}]"#]);
    let mut joins = Vec::new();
    for _ in 0..5 {
        let before = h.now;
        loop {
            h.advance(ms(100));
            let sent = h.sent();
            assert!(
                h.now - before < Duration::from_secs(60),
                "no rejoin: {sent:?}"
            );
            if let Some(join) = sent.iter().find(|s| s.contains("phx_join")) {
                joins.push((h.now - before).as_millis() as u64);
                assert!(!join.is_empty());
                break;
            }
            if let Some(leave) = sent.iter().find(|s| s.contains("phx_leave")) {
                // The leave after a timeout carries the timed-out join's ref.
                assert!(leave.starts_with(r#"[""#));
            }
        }
    }
    // Each cycle: 10 s join timeout, then the rejoin delay.
    assert_eq!(joins, [11_000, 12_000, 15_000, 20_000, 20_000]);
}

#[test]
fn a_timed_out_join_sends_phx_leave_with_its_join_ref() {
    let mut h = Harness::new();
    h.add(A, "t");
    h.core.join(h.now, A);
    h.sent();
    h.advance(Duration::from_secs(10));
    let out = h.take();
    assert!(out.iter().any(|o| matches!(o, Output::Transmit(OutFrame::Text(t)) if t == r#"["1","2","t","phx_leave",{}]"#)));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(A, ChannelEvent::JoinFailed(RejoinCause::Timeout))
    )));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Errored));
    // A late reply to the timed-out join is ignored.
    h.server(&ok_reply(1, 1, "t", "{}"));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Errored));
}

#[test]
fn error_reply_rejoins_and_the_policy_can_stop_on_a_reason() {
    let mut h = Harness::new();
    let policy = RejoinSchedule::default().stop_on_reasons(["unauthorized"]);
    let options = ChannelOptions {
        rejoin: Some(Arc::new(policy)),
        ..ChannelOptions::default()
    };
    h.core.add_channel(A, "t".into(), options).unwrap();
    h.core.join(h.now, A);
    h.sent();
    h.server(r#"["1","1","t","phx_reply",{"status":"error","response":{"reason":"busy"}}]"#);
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Errored));
    h.advance(ms(999));
    assert!(h.sent().is_empty());
    h.advance(ms(1));
    assert_eq!(h.sent(), [r#"["2","2","t","phx_join",{}]"#]);
    h.push(A, "buffered", 9);
    h.server(
        r#"["2","2","t","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#,
    );
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(9, Err(PushError::ChannelClosed))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(
            A,
            ChannelEvent::Closed(CloseCause::RejoinStopped(RejoinCause::Rejected(_)))
        )
    )));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Closed));
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now + Duration::from_secs(10) - ms(1000)),
        "only the connection's timers are left (its healthy mark, then the heartbeat)"
    );
}

#[test]
fn unmatched_topic_reply_fails_the_join_at_once() {
    let mut h = Harness::new();
    h.add(A, "nope:1");
    h.core.join(h.now, A);
    h.sent();
    h.server(r#"[null,"1","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#);
    let events = h.channel_events(A);
    let failed = events.iter().find_map(|e| match e {
        ChannelEvent::JoinFailed(cause) => Some(cause.clone()),
        _ => None,
    });
    assert_eq!(
        failed.and_then(|c| c.reason()).as_deref(),
        Some("unmatched topic")
    );
}

#[test]
fn phx_error_fails_in_flight_pushes_and_rejoins() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "crash", 1);
    h.sent();
    h.server(r#"["1","1","t","phx_error",{}]"#);
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::ChannelErrored))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(A, ChannelEvent::Errored(ErrorCause::Crashed))
    )));
    h.advance(ms(1000));
    assert_eq!(h.sent(), [r#"["3","3","t","phx_join",{}]"#]);
}

#[test]
fn phx_close_closes_without_rejoin() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "stop", 1);
    h.server(r#"["1","1","t","phx_close",{}]"#);
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::ChannelClosed))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(A, ChannelEvent::Closed(CloseCause::ServerClosed))
    )));
    h.advance(Duration::from_secs(20));
    assert!(!h.sent().iter().any(|s| s.contains("phx_join")));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Closed));
}

#[test]
fn stale_join_ref_messages_and_the_duplicate_join_close_are_dropped() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.server(r#"["1","1","t","phx_error",{}]"#);
    h.advance(ms(1000));
    h.sent();
    h.server(&ok_reply(2, 2, "t", "{}"));
    h.take();
    // The server closes the old channel instance: phx_close with the old join ref.
    h.server(r#"["1","1","t","phx_close",{}]"#);
    h.server(r#"["1",null,"t","old_push",{}]"#);
    h.server(r#"["2",null,"t","new_push",{}]"#);
    h.server(r#"[null,null,"t","broadcast",{}]"#);
    h.server(r#"["x",null,"t","garbage_ref",{}]"#);
    let events: Vec<String> = h
        .channel_events(A)
        .into_iter()
        .filter_map(|e| match e {
            ChannelEvent::Message(m) => Some(m.event.to_string()),
            ChannelEvent::Closed(_) => Some("closed".into()),
            _ => None,
        })
        .collect();
    assert_eq!(events, ["new_push", "broadcast"]);
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
}

#[test]
fn leave_completes_on_the_reply_or_its_timeout() {
    let mut h = Harness::new();
    h.joined(A, "a");
    h.joined(B, "b");
    h.core.leave(h.now, A);
    assert_eq!(h.sent(), [r#"["1","3","a","phx_leave",{}]"#]);
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Leaving));
    h.server(&ok_reply(1, 3, "a", "{}"));
    assert!(
        h.channel_events(A)
            .contains(&ChannelEvent::Closed(CloseCause::Left))
    );
    // The phx_close that follows the leave reply is ignored.
    h.server(r#"["1","1","a","phx_close",{}]"#);
    assert!(h.channel_events(A).is_empty());

    h.core.leave(h.now, B);
    h.sent();
    h.advance(ms(9_999));
    assert_eq!(h.core.channel_state(B), Some(ChannelState::Leaving));
    h.advance(ms(1));
    assert_eq!(h.core.channel_state(B), Some(ChannelState::Closed));
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn in_flight_pushes_still_get_their_replies_after_a_leave() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "e", 1);
    h.core.leave(h.now, A);
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert!(h.done()[0].1.is_ok());
}

#[test]
fn join_params_are_asked_on_every_join_and_requests_coalesce() {
    let mut h = Harness::new();
    let options = ChannelOptions {
        params: JoinParams::Ask,
        ..ChannelOptions::default()
    };
    h.core.add_channel(A, "t".into(), options).unwrap();
    h.core.join(h.now, A);
    assert!(h.channel_events(A).contains(&ChannelEvent::NeedJoinParams));
    h.core
        .provide_join_params(h.now, A, Payload::from_json_text(r#"{"seq":1}"#).unwrap());
    assert_eq!(h.sent(), [r#"["1","1","t","phx_join",{"seq":1}]"#]);
    h.server(&ok_reply(1, 1, "t", "{}"));

    // Disconnected: the request made for the next join is answered late, after a reconnect.
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    h.advance(ms(10));
    h.core.handle_connected(h.now);
    assert!(h.channel_events(A).contains(&ChannelEvent::NeedJoinParams));
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    // The second failure in a row: the schedule's second delay.
    h.advance(ms(50));
    h.core.handle_connected(h.now);
    assert!(
        !h.channel_events(A).contains(&ChannelEvent::NeedJoinParams),
        "one request at a time"
    );
    h.core
        .provide_join_params(h.now, A, Payload::from_json_text(r#"{"seq":5}"#).unwrap());
    assert_eq!(h.sent(), [r#"["2","2","t","phx_join",{"seq":5}]"#]);
    // Params that nobody waits for are dropped.
    h.core.provide_join_params(h.now, A, Payload::empty());
    assert!(h.sent().is_empty());
}

#[test]
fn many_timed_out_pushes_leave_nothing_behind() {
    let mut h = Harness::new();
    h.joined(A, "t");
    let base_timers = h.core.timer_len();
    for round in 0..100u32 {
        for i in 0..1_000u32 {
            h.core.push(
                h.now,
                A,
                PushRequest::new("noreply".into(), Payload::empty(), ms(50)),
                Some(round * 1000 + i),
            );
        }
        h.advance(ms(50));
        h.server(r#"[null,"999999","t","phx_reply",{"status":"ok","response":{}}]"#);
        let done = h.done();
        assert_eq!(done.len(), 1_000);
        assert!(done.iter().all(|d| d.1 == Err(PushError::Timeout)));
        assert_eq!(h.core.pending_len(), 1.min(h.core.pending_len()));
    }
    assert!(h.core.pending_len() <= 1, "at most the heartbeat");
    assert!(h.core.timer_len() <= base_timers + 1);
}

#[test]
fn close_fails_everything_and_closes_the_transport() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "e", 1);
    h.take();
    h.core.close(h.now);
    let out = h.take();
    assert!(matches!(
        out.first(),
        Some(Output::CloseTransport { code: 1000, .. })
    ));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::SocketClosed))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(A, ChannelEvent::Closed(CloseCause::SocketClosed(None)))
    )));
    assert_eq!(
        h.core.status(),
        &SocketStatus::Disconnected { reason: None }
    );
    assert_eq!(h.core.poll_timeout(), None);
    // Nothing after a close changes it.
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    h.core.join(h.now, A);
    assert!(h.sent().is_empty());
}

#[test]
fn one_active_channel_per_topic() {
    let mut h = Harness::new();
    h.joined(A, "t");
    assert!(
        h.core
            .add_channel(B, "t".into(), ChannelOptions::default())
            .is_err()
    );
    h.core.leave(h.now, A);
    // A leaving channel hands the topic over.
    h.core
        .add_channel(B, "t".into(), ChannelOptions::default())
        .unwrap();
    h.core.join(h.now, A);
    assert!(
        h.channel_events(A)
            .contains(&ChannelEvent::Closed(CloseCause::TopicTaken))
    );
    h.core.join(h.now, B);
    let sent = h.sent();
    assert_eq!(
        sent.last().map(String::as_str),
        Some(r#"["3","3","t","phx_join",{}]"#)
    );
    // The old instance's leave reply still completes its leave.
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Closed));
    assert_eq!(h.core.channel_state(B), Some(ChannelState::Joining));
}

#[test]
fn removing_a_channel_leaves_and_deletes_it() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.core.remove_channel(h.now, A);
    assert_eq!(h.sent(), [r#"["1","2","t","phx_leave",{}]"#]);
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert_eq!(h.core.channel_state(A), None);
    assert_eq!(h.core.channel_len(), 0);
    h.core
        .add_channel(B, "t".into(), ChannelOptions::default())
        .unwrap();
}

#[test]
fn malformed_frames_are_reported_and_change_nothing() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.server("not json");
    h.core.handle_binary(h.now, Bytes::from_static(&[7, 0]));
    let out = h.take();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Malformed(_)))
            .count(),
        2
    );
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
}

#[test]
fn binary_replies_and_pushes_reach_the_channel() {
    let mut h = Harness::new();
    h.joined(A, "echo:1");
    h.core.push(
        h.now,
        A,
        PushRequest::new("echo".into(), Payload::binary(vec![1u8, 2, 255]), ms(1000)),
        Some(1),
    );
    let out = h.take();
    let Some(Output::Transmit(OutFrame::Binary(frame))) = out.first() else {
        panic!("{out:?}")
    };
    let mut expected = vec![0u8, 1, 1, 6, 4];
    expected.extend_from_slice(b"12echo:1echo");
    expected.extend_from_slice(&[1, 2, 255]);
    assert_eq!(&frame[..], &expected[..]);
    let mut reply = vec![1u8, 1, 1, 6, 2];
    reply.extend_from_slice(b"12echo:1ok");
    reply.extend_from_slice(&[1, 2, 255]);
    h.core.handle_binary(h.now, Bytes::from(reply));
    let done = h.done();
    assert_eq!(
        done[0]
            .1
            .as_ref()
            .unwrap()
            .response()
            .as_binary()
            .map(|b| b.to_vec()),
        Some(vec![1, 2, 255])
    );
    let mut push = vec![0u8, 1, 6, 13];
    push.extend_from_slice(b"1echo:1pushed_binaryhi");
    h.core.handle_binary(h.now, Bytes::from(push));
    let events = h.channel_events(A);
    assert!(
        matches!(&events[..], [ChannelEvent::Message(m)] if m.payload.as_binary().is_some_and(|b| &b[..] == b"hi"))
    );
}

#[test]
fn the_tap_sees_every_decoded_frame() {
    let mut h = Harness::new();
    h.core.set_tap(true);
    h.server(r#"[null,null,"nobody","hello",{}]"#);
    h.server(&ok_reply(1, 77, "nobody", "{}"));
    let taps = h
        .take()
        .into_iter()
        .filter(|o| matches!(o, Output::Tap(_)))
        .count();
    assert_eq!(taps, 2);
}

#[test]
fn joining_while_disconnected_waits_for_the_connection() {
    let mut h = Harness::new();
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    h.add(A, "t");
    h.core.join(h.now, A);
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joining));
    assert!(h.sent().is_empty());
    h.advance(ms(10));
    h.core.handle_connected(h.now);
    assert_eq!(h.sent(), [r#"["1","1","t","phx_join",{}]"#]);
}

#[test]
fn a_join_asked_while_leaving_starts_after_the_leave() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.core.leave(h.now, A);
    h.core.join(h.now, A);
    assert_eq!(h.sent(), [r#"["1","2","t","phx_leave",{}]"#]);
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert_eq!(h.sent(), [r#"["3","3","t","phx_join",{}]"#]);
}

#[test]
fn pinned_pushes_go_out_only_under_their_join() {
    let mut h = Harness::new();
    let first = h.joined(A, "t");
    h.core.push(
        h.now,
        A,
        PushRequest::new("ok".into(), Payload::empty(), ms(1000)).pinned_to(Ref::new(first)),
        Some(1),
    );
    assert_eq!(h.sent(), [r#"["1","2","t","ok",{}]"#]);
    h.server(r#"["1","1","t","phx_error",{}]"#);
    h.take();
    // Errored (and later joining): a pinned push is neither sent nor buffered.
    h.core.push(
        h.now,
        A,
        PushRequest::new("late".into(), Payload::empty(), ms(1000)).pinned_to(Ref::new(first)),
        Some(2),
    );
    assert_eq!(h.done(), [(2, Err(PushError::Unavailable))]);
    h.advance(ms(1000));
    let rejoin = h.sent();
    assert_eq!(rejoin, [r#"["3","3","t","phx_join",{}]"#]);
    h.server(&ok_reply(3, 3, "t", "{}"));
    h.take();
    // Joined again, but under another join: still refused.
    h.core.push(
        h.now,
        A,
        PushRequest::new("stale".into(), Payload::empty(), ms(1000)).pinned_to(Ref::new(first)),
        Some(3),
    );
    assert_eq!(h.done(), [(3, Err(PushError::Unavailable))]);
    h.core.push(
        h.now,
        A,
        PushRequest::new("fresh".into(), Payload::empty(), ms(1000)).pinned_to(Ref::new(3)),
        Some(4),
    );
    assert_eq!(h.sent(), [r#"["3","4","t","fresh",{}]"#]);
}

#[test]
fn pushes_with_mixed_timeouts_expire_each_at_its_own_deadline() {
    let mut h = Harness::new();
    h.joined(A, "t");
    let start = h.now;
    for (token, timeout) in [(1u32, 500u64), (2, 100), (3, 300), (4, 300)] {
        h.core.push(
            h.now,
            A,
            PushRequest::new("e".into(), Payload::empty(), ms(timeout)),
            Some(token),
        );
    }
    h.take();
    let mut expired = Vec::new();
    for _ in 0..6 {
        h.advance(ms(100));
        for (token, result) in h.done() {
            assert_eq!(result, Err(PushError::Timeout));
            expired.push((token, (h.now - start).as_millis()));
        }
    }
    assert_eq!(expired, [(2, 100), (3, 300), (4, 300), (1, 500)]);
}

#[test]
fn one_stuck_push_does_not_let_finished_deadlines_pile_up() {
    let mut h = Harness::new();
    h.joined(A, "t");
    // The first push never gets a reply; thousands after it do, out of its order.
    h.core.push(
        h.now,
        A,
        PushRequest::new("stuck".into(), Payload::empty(), ms(10_000)),
        Some(0),
    );
    for n in 1..=5_000u32 {
        h.core.push(
            h.now,
            A,
            PushRequest::new("e".into(), Payload::empty(), ms(10_000)),
            Some(n),
        );
        let r = u64::from(n) + 2;
        h.server(&ok_reply(1, r, "t", "{}"));
    }
    assert_eq!(h.done().len(), 5_000);
    assert!(
        h.core.timer_len() < 100,
        "{} deadlines kept for 1 push in flight",
        h.core.timer_len()
    );
    h.advance(ms(10_000));
    assert_eq!(h.done(), [(0, Err(PushError::Timeout))]);
}

/// `Duration::MAX` (or any huge) timeout, interval or backoff delay is "never", not an
/// overflow of `Instant` that panics.
#[test]
fn huge_timeouts_and_intervals_mean_never_instead_of_overflowing() {
    let mut h = Harness::with_config(CoreConfig {
        heartbeat_interval: Duration::MAX,
        heartbeat_timeout: Duration::MAX,
        join_timeout: Duration::MAX,
        ..CoreConfig::default()
    });
    h.add(A, "room:a");
    h.core.join(h.now, A);
    let join = h.sent();
    assert_eq!(join.len(), 1);
    let r: u64 = join[0].split('"').nth(1).unwrap().parse().unwrap();
    h.server(&format!(
        r#"["{r}","{r}","room:a","phx_reply",{{"status":"ok","response":{{}}}}]"#
    ));
    h.core.push(
        h.now,
        A,
        PushRequest::new(Event::from("e"), Payload::empty(), Duration::MAX),
        Some(1),
    );
    h.take();
    // Twenty years later: nothing has timed out, nothing is due.
    h.advance(Duration::from_secs(20 * 365 * 24 * 3600));
    assert!(h.done().is_empty());
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
    assert!(h.core.poll_timeout().is_some_and(|at| at > h.now));
    // A reconnect policy answering `Duration::MAX` is "never reconnect", without panicking.
    let mut h = Harness::with_config(CoreConfig {
        reconnect: Arc::new(WaitForever),
        ..CoreConfig::default()
    });
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    assert!(matches!(
        h.statuses().last(),
        Some(SocketStatus::Reconnecting { .. })
    ));
}

#[derive(Debug)]
struct WaitForever;

impl super::backoff::ReconnectPolicy for WaitForever {
    fn reconnect_delay(&self, _attempt: u32, _reason: &DisconnectReason) -> Option<Duration> {
        Some(Duration::MAX)
    }
}

/// The reconnect schedule starts over only once a connection proves healthy: a server that
/// accepts and drops at once is redialled on the growing schedule.
#[test]
fn the_reconnect_schedule_resets_only_after_a_healthy_connection() {
    let mut h = Harness::new();
    let mut delays = Vec::new();
    for _ in 0..5 {
        // Up for a moment, then dropped.
        h.advance(ms(1));
        h.core.handle_disconnected(h.now, DisconnectReason::Eof);
        let Some(SocketStatus::Reconnecting { delay, .. }) = h.statuses().pop() else {
            panic!("reconnecting");
        };
        delays.push(delay);
        h.advance(delay);
        assert!(matches!(h.take().first(), Some(Output::Connect)));
        h.core.handle_connected(h.now);
    }
    assert_eq!(delays, [ms(10), ms(50), ms(100), ms(150), ms(200)]);
    // Up for `healthy_after` (10 s): healthy; the next drop starts the schedule over.
    h.advance(Duration::from_secs(10));
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    assert!(matches!(
        h.statuses().pop(),
        Some(SocketStatus::Reconnecting { attempt: 1, delay, .. }) if delay == ms(10)
    ));
    h.advance(ms(10));
    h.take();
    h.core.handle_connected(h.now);
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    assert!(matches!(
        h.statuses().pop(),
        Some(SocketStatus::Reconnecting { attempt: 2, .. })
    ));
    // A heartbeat reply proves it healthy sooner.
    let mut h = Harness::with_config(CoreConfig {
        heartbeat_interval: Duration::from_secs(1),
        ..CoreConfig::default()
    });
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    h.advance(ms(10));
    h.take();
    h.core.handle_connected(h.now);
    h.advance(Duration::from_secs(1));
    let heartbeat = h.sent().pop().expect("a heartbeat");
    let r: u64 = heartbeat.split('"').nth(1).unwrap().parse().unwrap();
    h.server(&format!(
        r#"[null,"{r}","phoenix","phx_reply",{{"status":"ok","response":{{}}}}]"#
    ));
    h.core.handle_disconnected(h.now, DisconnectReason::Eof);
    assert!(matches!(
        h.statuses().pop(),
        Some(SocketStatus::Reconnecting { attempt: 1, .. })
    ));
}
