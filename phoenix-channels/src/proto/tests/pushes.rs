//! Pushes: refs, replies, the buffer before the join, deadlines and pinning.

use super::*;

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
fn in_flight_pushes_still_get_their_replies_after_a_leave() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.push(A, "e", 1);
    h.core.leave(h.now, A);
    h.server(&ok_reply(1, 2, "t", "{}"));
    assert!(h.done()[0].1.is_ok());
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
