//! The connection: heartbeats, reconnects and their schedule, and closing.

use super::*;

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

impl crate::backoff::ReconnectPolicy for WaitForever {
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
