//! Every fault control of the control handle, observed from a raw websocket client.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, T, ok_reply, refused_status, reply, server, within};
use dust_conformance::{ConnectionId, ControlError, RawFrame};
use serde_json::{Value, json};

#[tokio::test]
async fn lists_connections_with_params_and_topics() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::connect(&format!("{}&token=a", server.websocket_url("/socket"))).await;
    let _b = Client::v2(&server).await;
    a.joined("1", "echo:x").await;
    a.joined("2", "echo:a").await;
    let conns = control.connections();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].params.get("token").map(String::as_str), Some("a"));
    assert_eq!(conns[0].topics, ["echo:a", "echo:x"]);
    assert!(conns[1].topics.is_empty());
    assert!(!conns[0].stalled);
    assert_eq!(control.connection(conns[1].id), Some(conns[1].clone()));
    assert_eq!(control.stats().open_connections, 2);
    assert_eq!(control.stats().joins, 2);
}

#[tokio::test]
async fn drop_connection_closes_tcp_without_a_close_frame() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    a.joined("1", "echo:d").await;
    let id = control.connections()[0].id;
    control.drop_connection(id).unwrap();
    a.expect_dropped().await;
    within("gone", control.wait_for_stats(|s| s.open_connections == 1)).await;
    // The other connection is untouched.
    b.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        b.recv_json().await,
        ok_reply(Value::Null, json!("1"), "phoenix", json!({}))
    );
    assert_eq!(
        control.drop_connection(id),
        Err(ControlError::NoSuchConnection(id))
    );
    assert_eq!(
        control.drop_connection(ConnectionId::from(999)),
        Err(ControlError::NoSuchConnection(ConnectionId::from(999)))
    );
}

#[tokio::test]
async fn a_dropped_connection_loses_the_frames_a_delay_was_holding() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:held").await;
    let id = control.connections()[0].id;
    control.set_delay(id, Duration::from_secs(30)).unwrap();
    c.send_json(json!(["1", "2", "echo:held", "echo", {"n": 1}]))
        .await;
    c.assert_silent_for(Duration::from_millis(100)).await;
    // Lifting the delay and dropping at once: the held reply must not slip out before the
    // drop, as it could not on a real connection loss.
    control.set_delay(id, Duration::ZERO).unwrap();
    control.drop_connection(id).unwrap();
    c.expect_dropped().await;
}

#[tokio::test]
async fn drop_all_drops_every_connection() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    assert_eq!(control.drop_all(), 2);
    a.expect_dropped().await;
    b.expect_dropped().await;
    within("gone", control.wait_for_stats(|s| s.open_connections == 0)).await;
    // New connections are still accepted.
    Client::v2(&server).await;
}

#[tokio::test]
async fn close_connection_sends_the_code() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    control
        .close_connection(control.connections()[0].id, 1001)
        .unwrap();
    assert_eq!(a.recv_close().await, 1001);
}

#[tokio::test]
async fn stall_stops_answering_until_unstalled() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:st").await;
    let id = control.connections()[0].id;
    control.stall(id).unwrap();
    assert!(control.connection(id).unwrap().stalled);
    // Frames the server had queued wait too.
    assert_eq!(control.broadcast("echo:st", "held", json!({})), 1);
    c.send(r#"[null,"2","phoenix","heartbeat",{}]"#).await;
    c.assert_silent().await;
    assert_eq!(control.stats().heartbeats, 0);
    // Still open: resuming delivers what was held, then reads the heartbeat.
    control.unstall(id).unwrap();
    assert!(!control.connection(id).unwrap().stalled);
    assert_eq!(
        c.recv_json().await,
        json!([null, null, "echo:st", "held", {}])
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("2"), "phoenix", json!({}))
    );
}

#[tokio::test]
async fn stall_all_and_unstall_all() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    assert_eq!(control.stall_all(), 2);
    a.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    b.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    a.assert_silent().await;
    b.assert_silent().await;
    assert!(control.connections().iter().all(|c| c.stalled));
    assert_eq!(control.unstall_all(), 2);
    assert_eq!(
        a.recv_json().await,
        ok_reply(Value::Null, json!("1"), "phoenix", json!({}))
    );
    assert_eq!(
        b.recv_json().await,
        ok_reply(Value::Null, json!("1"), "phoenix", json!({}))
    );
}

#[tokio::test]
async fn stalled_connection_can_be_dropped() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    let id = control.connections()[0].id;
    control.stall(id).unwrap();
    control.drop_connection(id).unwrap();
    c.expect_dropped().await;
}

#[tokio::test]
async fn delay_holds_each_frame_and_keeps_order() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:dl").await;
    let id = control.connections()[0].id;
    let delay = Duration::from_millis(500);
    control.set_delay(id, delay).unwrap();
    assert_eq!(control.connection(id).unwrap().delay, delay);
    let start = Instant::now();
    c.send_json(json!(["1", "2", "echo:dl", "push_me", {"n": 1}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["1", null, "echo:dl", "pushed", {"n": 1}])
    );
    assert!(start.elapsed() >= delay, "{:?}", start.elapsed());
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("2"), "echo:dl", json!({}))
    );
    control.set_delay(id, Duration::ZERO).unwrap();
    let start = Instant::now();
    c.send_json(json!(["1", "3", "echo:dl", "echo", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("3"), "echo:dl", json!({}))
    );
    assert!(start.elapsed() < delay, "{:?}", start.elapsed());
}

#[tokio::test]
async fn delay_all_applies_to_new_connections() {
    let server = server().await;
    let control = server.control();
    assert_eq!(control.set_delay_all(Duration::from_millis(200)), 0);
    let mut c = Client::v2(&server).await;
    assert_eq!(control.connections()[0].delay, Duration::from_millis(200));
    let start = Instant::now();
    c.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    c.recv_json().await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn refuse_connects_answers_403_until_turned_off() {
    let server = server().await;
    let control = server.control();
    let url = server.websocket_url("/socket");
    let open = Client::v2(&server).await;
    control.refuse_connects(true);
    assert_eq!(refused_status(&url).await, 403);
    assert_eq!(refused_status(&url).await, 403);
    assert_eq!(control.stats().connects_refused, 2);
    // Open connections are not affected.
    assert_eq!(control.connections().len(), 1);
    drop(open);
    control.refuse_connects(false);
    Client::connect(&url).await;
    let stats = within(
        "accepted",
        control.wait_for_stats(|s| s.connects_accepted == 2),
    )
    .await;
    assert_eq!(stats.connects_refused, 2);
}

#[tokio::test]
async fn refuse_joins_answers_error_until_turned_off() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    control.refuse_joins(true);
    let r = c.join("1", "echo:j", json!({})).await;
    assert_eq!(
        r,
        reply(
            json!("1"),
            json!("1"),
            "echo:j",
            "error",
            json!({"reason": "refused"})
        )
    );
    control.refuse_joins_with(Some(json!({"reason": "unauthorized"})));
    let r = c.join("2", "echo:j", json!({})).await;
    assert_eq!(
        r,
        reply(
            json!("2"),
            json!("2"),
            "echo:j",
            "error",
            json!({"reason": "unauthorized"})
        )
    );
    assert!(control.connections()[0].topics.is_empty());
    control.refuse_joins(false);
    c.joined("3", "echo:j").await;
    assert_eq!(control.stats().joins_refused, 2);
}

#[tokio::test]
async fn crash_channel_sends_phx_error_to_every_joiner() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    a.joined("1", "echo:boom").await;
    b.joined("6", "echo:boom").await;
    b.joined("7", "echo:safe").await;
    assert_eq!(control.crash_channel("echo:boom"), 2);
    assert_eq!(
        a.recv_json().await,
        json!(["1", "1", "echo:boom", "phx_error", {}])
    );
    assert_eq!(
        b.recv_json().await,
        json!(["6", "6", "echo:boom", "phx_error", {}])
    );
    // The other channel lives on; the crashed one is gone.
    b.send_json(json!(["6", "8", "echo:boom", "echo", {}]))
        .await;
    assert_eq!(
        b.recv_json().await,
        reply(
            Value::Null,
            json!("8"),
            "echo:boom",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    b.send_json(json!(["7", "9", "echo:safe", "echo", {}]))
        .await;
    assert_eq!(
        b.recv_json().await,
        ok_reply(json!("7"), json!("9"), "echo:safe", json!({}))
    );
    assert_eq!(control.crash_channel("echo:boom"), 0);
    assert_eq!(control.broadcast("echo:boom", "x", json!({})), 0);
}

#[tokio::test]
async fn close_channel_sends_phx_close() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    a.joined("3", "echo:bye").await;
    assert_eq!(control.close_channel("echo:bye"), 1);
    assert_eq!(
        a.recv_json().await,
        json!(["3", "3", "echo:bye", "phx_close", {}])
    );
    assert!(control.connections()[0].topics.is_empty());
}

#[tokio::test]
async fn send_raw_text_and_binary() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    let id = control.connections()[0].id;
    control
        .send_raw(id, RawFrame::Text("this is [not json".into()))
        .unwrap();
    control
        .send_raw(id, RawFrame::Binary(Bytes::from_static(&[9, 9, 9])))
        .unwrap();
    match c.recv().await {
        tokio_tungstenite::tungstenite::Message::Text(t) => {
            assert_eq!(t.as_str(), "this is [not json")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv_binary().await, vec![9, 9, 9]);
    assert_eq!(
        control.send_raw(ConnectionId::from(77), RawFrame::Text(String::new())),
        Err(ControlError::NoSuchConnection(ConnectionId::from(77)))
    );
}

#[tokio::test]
async fn idle_timeout_change_applies_to_open_connections() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    c.recv_json().await;
    assert_eq!(control.idle_timeout(), Duration::from_secs(60));
    control.set_idle_timeout(Duration::from_millis(200));
    assert_eq!(c.recv_close().await, 1000);
}

#[tokio::test]
async fn stalled_connection_has_no_idle_timeout() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    control.stall(control.connections()[0].id).unwrap();
    control.set_idle_timeout(Duration::from_millis(100));
    // Five idle timeouts long: a stalled connection does not time out.
    c.assert_silent_for(Duration::from_millis(500)).await;
    assert_eq!(control.stats().open_connections, 1);
    // Resumed: the idle timer starts again.
    control.unstall_all();
    assert_eq!(c.recv_close().await, 1000);
}

#[tokio::test]
async fn server_broadcast_reaches_v1_and_v2_joiners() {
    let server = server().await;
    let control = server.control();
    let mut v2 = Client::v2(&server).await;
    let mut v1 = Client::connect(&format!("{}/websocket", server.socket_url())).await;
    v2.joined("1", "echo:all").await;
    v1.send(r#"{"topic":"echo:all","event":"phx_join","payload":{},"ref":"1"}"#)
        .await;
    v1.recv_json().await;
    assert_eq!(control.broadcast("echo:all", "news", json!({"n": 1})), 2);
    assert_eq!(
        v2.recv_json().await,
        json!([null, null, "echo:all", "news", {"n": 1}])
    );
    assert_eq!(
        v1.recv_json().await,
        json!({"topic": "echo:all", "event": "news", "payload": {"n": 1}, "ref": null})
    );
    // Bytes reach only the V2 joiner.
    assert_eq!(
        control.broadcast("echo:all", "b", Bytes::from_static(b"z")),
        1
    );
}

#[tokio::test]
async fn wait_for_stats_waits_for_refused_connects() {
    let server = server().await;
    let control = server.control();
    control.refuse_connects(true);
    let url = server.websocket_url("/socket");
    let attempts = tokio::spawn(async move {
        for _ in 0..3 {
            refused_status(&url).await;
        }
    });
    let stats = within(
        "refusals",
        control.wait_for_stats(|s| s.connects_refused >= 3),
    )
    .await;
    assert_eq!(stats.connects_refused, 3);
    within("attempts", attempts).await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let server = server().await;
    let url = server.websocket_url("/socket");
    let mut c = Client::v2(&server).await;
    let closing = tokio::spawn(async move { c.recv_close().await });
    within("shutdown", server.shutdown()).await;
    assert_eq!(within("close", closing).await.unwrap(), 1001);
    // Nothing listens any more.
    assert!(
        tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .is_err()
    );
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    drop(server);
    assert_eq!(c.recv_close().await, 1001);
    within("gone", control.wait_for_stats(|s| s.open_connections == 0)).await;
    // The handle outlives the server harmlessly.
    assert_eq!(control.drop_all(), 0);
}

#[tokio::test]
async fn huge_timeouts_and_delays_do_not_overflow() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    control.set_idle_timeout(Duration::MAX);
    let id = control.connections()[0].id;
    control.set_delay(id, Duration::MAX).unwrap();
    c.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    c.assert_silent().await;
    control.set_delay(id, Duration::ZERO).unwrap();
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("1"), "phoenix", json!({}))
    );
    assert_eq!(control.connections()[0].delay, Duration::ZERO);
}

#[tokio::test]
async fn restart_on_the_same_address() {
    let config = dust_conformance::ServerConfig::default();
    let first = common::server_with(config.clone()).await;
    let addr = first.local_addr();
    within("shutdown", first.shutdown()).await;
    let second = common::server_with(config.listen(addr)).await;
    assert_eq!(second.local_addr(), addr);
    let mut c = Client::v2(&second).await;
    c.joined("1", "echo:again").await;
}
