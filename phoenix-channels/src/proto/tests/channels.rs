//! Channels: joins, rejoins, leaves, join params and one channel per topic.

use super::*;

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
fn phx_close_errors_and_rejoins_on_the_policy_when_the_channel_asks_for_it() {
    let mut h = Harness::new();
    let options = ChannelOptions {
        rejoin_after_server_close: true,
        ..ChannelOptions::default()
    };
    h.joined_with(A, "t", options);
    h.push(A, "stop", 1);
    h.sent();
    h.server(r#"["1","1","t","phx_close",{}]"#);
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PushDone(1, Err(PushError::ChannelErrored))))
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Channel(A, ChannelEvent::Errored(ErrorCause::ServerClosed))
    )));
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Errored));
    // The default schedule's first delay is 1 s: no join before it, one join at it.
    h.advance(ms(999));
    assert!(!h.sent().iter().any(|s| s.contains("phx_join")));
    h.advance(ms(1));
    assert_eq!(h.sent(), [r#"["3","3","t","phx_join",{}]"#]);
}

#[test]
fn a_rejoin_policy_that_stops_after_a_server_close_closes_the_channel() {
    #[derive(Debug)]
    struct NoRejoinAfterClose;
    impl crate::backoff::RejoinPolicy for NoRejoinAfterClose {
        fn rejoin_delay(&self, _attempt: u32, cause: &RejoinCause) -> Option<Duration> {
            (*cause != RejoinCause::ServerClosed).then(|| Duration::from_secs(1))
        }
    }
    let mut h = Harness::new();
    let options = ChannelOptions {
        rejoin_after_server_close: true,
        rejoin: Some(Arc::new(NoRejoinAfterClose)),
        ..ChannelOptions::default()
    };
    h.joined_with(A, "t", options);
    h.server(r#"["1","1","t","phx_close",{}]"#);
    let events = h.channel_events(A);
    assert!(events.iter().any(|e| matches!(
        e,
        ChannelEvent::Closed(CloseCause::RejoinStopped(RejoinCause::ServerClosed))
    )));
    h.advance(Duration::from_secs(20));
    assert!(!h.sent().iter().any(|s| s.contains("phx_join")));
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
