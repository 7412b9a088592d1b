//! The real tokio driver over an in-memory transport: reconnect, heartbeat timeout, rejoin,
//! buffering, handlers and backpressure through the public API, without a network. Time is
//! paused, so the 30 s heartbeats and 10 s timeouts cost nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Answer, fake_server, within};
use futures_util::StreamExt;
use phoenix_channels::{
    ChannelContext, ChannelHandler, ChannelState, CloseCause, ConnectParams, DisconnectReason,
    ErrorCause, Inbound, JoinError, Joined, Message, Payload, PushError, RejoinCause, Socket,
    SocketStatus,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn socket_with(connector: common::Connector) -> Socket {
    Socket::builder("ws://phoenix.test/socket")
        .connector(connector)
        .connect()
        .unwrap()
}

async fn wait_status(socket: &Socket, what: impl Fn(&SocketStatus) -> bool) -> SocketStatus {
    let mut watch = socket.status_watch();
    within("a socket status", watch.wait_for(|s| what(s)))
        .await
        .unwrap()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn join_push_reply_and_messages_through_the_public_api() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, mut messages) = socket.channel("room:1").params(json!({"a": 1})).stream();
    let mut conn = server.accept().await;
    assert!(
        conn.uri.starts_with("/socket/websocket?vsn=2.0.0"),
        "{}",
        conn.uri
    );

    let join = tokio::spawn({
        let channel = channel.clone();
        async move { channel.join().await }
    });
    let frame = conn.accept_join("room:1", json!({"welcome": true})).await;
    assert_eq!(frame[4], json!({"a": 1}));
    let joined = within("join", join).await.unwrap().unwrap();
    assert_eq!(joined.to_value().unwrap(), json!({"welcome": true}));
    assert_eq!(channel.state(), ChannelState::Joined);

    let push = channel.push("echo", json!({"n": 1}));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(
        frame,
        json!([frame[0], frame[1], "room:1", "echo", {"n": 1}])
    );
    assert_eq!(frame[0], json!("1"));
    conn.reply(&frame, "ok", json!({"n": 1})).await;
    let reply = within("reply", push).await.unwrap();
    assert!(reply.is_ok());
    assert_eq!(reply.response().to_value().unwrap(), json!({"n": 1}));

    conn.send(json!(["1", null, "room:1", "pushed", {"p": 1}]))
        .await;
    conn.send(json!([null, null, "room:1", "broadcasted", {"b": 1}]))
        .await;
    let first = within("message", messages.next()).await.unwrap().unwrap();
    let second = within("message", messages.next()).await.unwrap().unwrap();
    assert_eq!(
        (first.event.as_str(), first.is_broadcast()),
        ("pushed", false)
    );
    assert_eq!(
        (second.event.as_str(), second.is_broadcast()),
        ("broadcasted", true)
    );
}

#[tokio::test(start_paused = true)]
async fn connect_params_come_fresh_from_the_provider_on_every_attempt() {
    let (connector, mut server) = fake_server();
    let counter = Arc::new(AtomicU32::new(0));
    let provider_counter = counter.clone();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .param("app", "demo")
        .header("x-trace", "abc")
        .params_provider(move || {
            let n = provider_counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(ConnectParams::new().param("token", format!("t{n}"))) }
        })
        .connector(connector)
        .connect()
        .unwrap();
    let mut conn = server.accept().await;
    assert_eq!(conn.uri, "/socket/websocket?app=demo&token=t1&vsn=2.0.0");
    assert_eq!(conn.headers, [("x-trace".to_owned(), "abc".to_owned())]);
    conn.close(1011).await;
    let conn = server.accept().await;
    assert_eq!(conn.uri, "/socket/websocket?app=demo&token=t2&vsn=2.0.0");
    assert!(
        !format!("{socket:?}").contains("t2"),
        "tokens are never shown"
    );
}

#[tokio::test(start_paused = true)]
async fn the_auth_token_travels_as_a_subprotocol() {
    let (connector, mut server) = fake_server();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .auth_token("s3cret")
        .connector(connector)
        .connect()
        .unwrap();
    let conn = server.accept().await;
    assert_eq!(
        conn.protocols.as_deref(),
        Some("phoenix, base64url.bearer.phx.czNjcmV0")
    );
    wait_status(&socket, SocketStatus::is_connected).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_upgrade_is_reported_with_its_status_and_stops_retrying() {
    let (connector, mut server) = fake_server();
    server.answer(&[Answer::Refuse(403)]);
    let socket = socket_with(connector);
    let error = within("connected", socket.connected()).await.unwrap_err();
    assert_eq!(error.reason, Some(DisconnectReason::Http { status: 403 }));
    assert!(server.try_accept(Duration::from_secs(60)).await.is_none());
    assert_eq!(server.attempts.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_on_upgrade_are_retried_on_the_schedule() {
    let (connector, mut server) = fake_server();
    server.answer(&[Answer::Refuse(503), Answer::Refuse(503)]);
    let socket = socket_with(connector);
    let start = tokio::time::Instant::now();
    let _conn = server.accept().await;
    // 10 ms, then 50 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    wait_status(&socket, SocketStatus::is_connected).await;
}

#[tokio::test(start_paused = true)]
async fn in_flight_pushes_fail_at_once_on_a_drop_and_the_channel_rejoins() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    let join = tokio::spawn({
        let c = channel.clone();
        async move { c.join().await }
    });
    let first_join = conn.accept_join("room:1", json!({})).await;
    within("join", join).await.unwrap().unwrap();

    let push = channel.push("slow", json!({}));
    conn.recv_skipping_heartbeats().await.unwrap();
    drop(conn);
    assert_eq!(
        within("push", push).await.unwrap_err(),
        PushError::Disconnected
    );

    let mut conn = server.accept().await;
    let rejoin = conn.accept_join("room:1", json!({})).await;
    assert_ne!(rejoin[0], first_join[0], "a new join_ref for every join");
    let mut state = channel.state_watch();
    within("rejoined", state.wait_for(|s| *s == ChannelState::Joined))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_missed_heartbeat_reply_reconnects_and_rejoins() {
    let (connector, mut server) = fake_server();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .heartbeat_interval(Duration::from_secs(30))
        .heartbeat_timeout(Duration::from_secs(5))
        .connector(connector)
        .connect()
        .unwrap();
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    let join = channel.join();
    let (_, joined) = tokio::join!(conn.accept_join("room:1", json!({})), join);
    joined.unwrap();
    let start = tokio::time::Instant::now();
    let heartbeat = conn.recv().await.unwrap();
    assert_eq!(heartbeat[3], "heartbeat");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    // No reply: after 5 s the client gives up on this connection.
    let status = wait_status(&socket, |s| matches!(s, SocketStatus::Reconnecting { .. })).await;
    assert!(matches!(
        status,
        SocketStatus::Reconnecting {
            reason: DisconnectReason::HeartbeatTimeout,
            ..
        }
    ));
    assert_eq!(start.elapsed(), Duration::from_secs(35));
    let mut conn = server.accept().await;
    conn.accept_join("room:1", json!({})).await;
}

#[tokio::test(start_paused = true)]
async fn answered_heartbeats_keep_the_connection() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let mut conn = server.accept().await;
    for _ in 0..5 {
        let beat = conn.recv().await.unwrap();
        assert_eq!(beat[2], "phoenix");
        conn.send(json!([null, beat[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
    }
    assert!(socket.status().is_connected());
    assert!(server.try_accept(Duration::from_secs(1)).await.is_none());
}

/// A handler that records what happens and computes params from a counter.
struct Recorder {
    joins: u32,
    events: mpsc::UnboundedSender<String>,
    stall_on: Option<&'static str>,
}

#[async_trait]
impl ChannelHandler for Recorder {
    async fn join_params(&mut self, _ctx: &ChannelContext) -> Option<Payload> {
        self.joins += 1;
        Payload::json(&json!({"attempt": self.joins})).ok()
    }
    async fn on_joined(&mut self, _ctx: &ChannelContext, joined: Joined) {
        let _ = self.events.send(format!(
            "joined {}",
            joined.response.as_json().unwrap_or("")
        ));
    }
    async fn on_join_error(&mut self, _ctx: &ChannelContext, cause: RejoinCause) {
        let _ = self.events.send(format!("join_error {cause}"));
    }
    async fn on_message(&mut self, _ctx: &ChannelContext, message: Message) {
        if Some(message.event.as_str()) == self.stall_on {
            let _ = self.events.send("stalling".into());
            tokio::time::sleep(Duration::from_secs(100)).await;
        }
        let _ = self.events.send(format!("message {}", message.event));
    }
    async fn on_error(&mut self, _ctx: &ChannelContext, cause: ErrorCause) {
        let _ = self.events.send(format!("error {cause}"));
    }
    async fn on_close(&mut self, _ctx: &ChannelContext, cause: CloseCause) {
        let _ = self.events.send(format!("close {cause}"));
    }
    async fn on_socket_connected(&mut self, _ctx: &ChannelContext) {
        let _ = self.events.send("socket connected".into());
    }
    async fn on_socket_disconnected(
        &mut self,
        _ctx: &ChannelContext,
        _reason: Option<DisconnectReason>,
    ) {
        let _ = self.events.send("socket disconnected".into());
    }
    async fn on_overflow(&mut self, _ctx: &ChannelContext, dropped: u64) {
        let _ = self.events.send(format!("overflow {dropped}"));
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<String>) -> String {
    within("a handler event", events.recv()).await.unwrap()
}

async fn expect_event(events: &mut mpsc::UnboundedReceiver<String>, wanted: &str) {
    loop {
        let event = next_event(events).await;
        if event == wanted {
            return;
        }
        assert!(!event.starts_with("overflow"), "unexpected {event}");
    }
}

#[tokio::test(start_paused = true)]
async fn handlers_are_asked_for_fresh_join_params_on_every_join() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (tx, mut events) = mpsc::unbounded_channel();
    let channel = socket.channel("room:1").handler(Recorder {
        joins: 0,
        events: tx,
        stall_on: None,
    });
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("room:1", json!({"ok": 1})).await;
    assert_eq!(join[4], json!({"attempt": 1}));
    expect_event(&mut events, r#"joined {"ok":1}"#).await;

    conn.send(json!([join[0], join[1], "room:1", "phx_error", {}]))
        .await;
    expect_event(&mut events, "error channel crashed").await;
    let rejoin = conn.accept_join("room:1", json!({"ok": 2})).await;
    assert_eq!(rejoin[4], json!({"attempt": 2}));
    expect_event(&mut events, r#"joined {"ok":2}"#).await;

    drop(conn);
    expect_event(&mut events, "error connection lost: connection ended").await;
    let mut conn = server.accept().await;
    let rejoin = conn.accept_join("room:1", json!({})).await;
    assert_eq!(rejoin[4], json!({"attempt": 3}));
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_never_stalls_heartbeats() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (tx, mut events) = mpsc::unbounded_channel();
    let channel = socket.channel("room:1").handler(Recorder {
        joins: 0,
        events: tx,
        stall_on: Some("slow"),
    });
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("room:1", json!({})).await;
    expect_event(&mut events, "joined {}").await;
    conn.send(json!([join[0], null, "room:1", "slow", {}]))
        .await;
    // The handler sleeps 100 s; heartbeats go on every 30 s and are answered meanwhile.
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        let beat = conn.recv().await.unwrap();
        assert_eq!(beat[3], "heartbeat");
        conn.send(json!([null, beat[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
    }
    assert!(start.elapsed() < Duration::from_secs(100));
    assert!(socket.status().is_connected());
    assert_eq!(channel.state(), ChannelState::Joined);
    expect_event(&mut events, "message slow").await;
}

#[tokio::test(start_paused = true)]
async fn a_full_handler_queue_is_reported_not_silently_dropped() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (tx, mut events) = mpsc::unbounded_channel();
    let channel = socket
        .channel("room:1")
        .queue_capacity(3)
        .handler(Recorder {
            joins: 0,
            events: tx,
            stall_on: Some("slow"),
        });
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("room:1", json!({})).await;
    expect_event(&mut events, "joined {}").await;
    conn.send(json!([join[0], null, "room:1", "slow", {}]))
        .await;
    expect_event(&mut events, "stalling").await;
    for n in 0..10 {
        conn.send(json!([join[0], null, "room:1", format!("m{n}"), {}]))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(next_event(&mut events).await);
    }
    // The slow one and 3 queued behind it get through; the other 7 are counted.
    assert_eq!(
        seen[..4],
        ["message slow", "message m0", "message m1", "message m2"]
    );
    assert_eq!(seen[4], "overflow 7");
}

#[tokio::test(start_paused = true)]
async fn a_lagging_message_stream_says_how_many_it_missed() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, mut messages) = socket.channel("room:1").queue_capacity(2).stream();
    let mut conn = server.accept().await;
    let join = tokio::spawn({
        let c = channel.clone();
        async move { c.join().await }
    });
    conn.accept_join("room:1", json!({})).await;
    within("join", join).await.unwrap().unwrap();
    for n in 0..6 {
        conn.send(json!([null, null, "room:1", format!("m{n}"), {}]))
            .await;
    }
    let push = channel.push("sync", json!({}));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    conn.reply(&frame, "ok", json!({})).await;
    within("sync", push).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match within("message", messages.next()).await.unwrap() {
            Ok(m) => m.event.to_string(),
            Err(lagged) => format!("lagged {}", lagged.0),
        });
    }
    assert_eq!(seen, ["m0", "m1", "lagged 4"]);
}

#[tokio::test(start_paused = true)]
async fn crash_rejoins_and_close_does_not() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("echo:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("echo:1", json!({})).await;
    let start = tokio::time::Instant::now();
    conn.send(json!([join[0], join[1], "echo:1", "phx_error", {}]))
        .await;
    let rejoin = conn.accept_join("echo:1", json!({})).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "first rejoin after 1 s"
    );
    let mut state = channel.state_watch();
    within("joined", state.wait_for(|s| *s == ChannelState::Joined))
        .await
        .unwrap();
    conn.send(json!([rejoin[0], rejoin[0], "echo:1", "phx_close", {}]))
        .await;
    within("closed", state.wait_for(|s| *s == ChannelState::Closed))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(60), conn.recv_skipping_heartbeats()).await;
    assert!(next.is_err(), "no rejoin after phx_close: {next:?}");
    assert_eq!(
        channel.push("x", json!({})).await.unwrap_err(),
        PushError::ChannelClosed
    );
}

#[tokio::test(start_paused = true)]
async fn the_unmatched_topic_reply_fails_the_join_at_once() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("nope:1").stream();
    let mut conn = server.accept().await;
    let start = tokio::time::Instant::now();
    let join = tokio::spawn({
        let c = channel.clone();
        async move { c.join().await }
    });
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    conn.send(json!([null, frame[1], "nope:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]))
        .await;
    let error = within("join", join).await.unwrap().unwrap_err();
    assert_eq!(error.reason().as_deref(), Some("unmatched topic"));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_join_timeout_leaves_and_retries() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    let join = tokio::spawn({
        let c = channel.clone();
        async move { c.join().await }
    });
    let first = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(
        within("join", join).await.unwrap().unwrap_err(),
        JoinError::Timeout
    );
    let leave = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(
        (leave[0].clone(), leave[3].clone()),
        (first[0].clone(), json!("phx_leave"))
    );
    conn.accept_join("room:1", json!({})).await;
    let mut state = channel.state_watch();
    within("joined", state.wait_for(|s| *s == ChannelState::Joined))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn pushes_made_while_joining_go_out_after_the_join() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    drop(channel.join());
    let first = channel.push("first", json!({"n": 1}));
    let second = channel.push("second", json!({"n": 2}));
    let mut conn = server.accept().await;
    let join = conn.accept_join("room:1", json!({})).await;
    for (n, push) in [(1, first), (2, second)] {
        let frame = conn.recv_skipping_heartbeats().await.unwrap();
        assert_eq!(frame[0], join[0]);
        assert_eq!(frame[4], json!({ "n": n }));
        conn.reply(&frame, "ok", json!({})).await;
        within("reply", push).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn binary_pushes_and_replies() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, mut messages) = socket.channel("echo:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("echo:1", json!({})).await;
    let push = channel.push_payload("echo", Payload::binary(vec![1u8, 2, 255]));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    let bytes: Vec<u8> = serde_json::from_value(frame["binary"].clone()).unwrap();
    let mut expected = vec![0u8, 1, 1, 6, 4];
    expected.extend_from_slice(b"12echo:1echo");
    expected.extend_from_slice(&[1, 2, 255]);
    assert_eq!(bytes, expected);
    let mut reply = vec![1u8, 1, 1, 6, 2];
    reply.extend_from_slice(b"12echo:1ok");
    reply.extend_from_slice(&[1, 2, 255]);
    conn.send_binary(reply).await;
    let reply = within("reply", push).await.unwrap();
    assert_eq!(
        reply.response().as_binary().map(|b| b.to_vec()),
        Some(vec![1, 2, 255])
    );
    let mut pushed = vec![0u8, 1, 6, 13];
    pushed.extend_from_slice(b"1echo:1pushed_binaryhi");
    conn.send_binary(pushed).await;
    let message = within("message", messages.next()).await.unwrap().unwrap();
    assert_eq!(
        message.payload.as_binary().map(|b| b.to_vec()),
        Some(b"hi".to_vec())
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_are_survived() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("room:1", json!({})).await;
    for bad in [
        "",
        "[",
        "{}",
        "[1,2,3]",
        r#"[null,"5","room:1","phx_reply",[]]"#,
        "\u{0}",
    ] {
        conn.send_text(bad).await;
    }
    conn.send_binary(vec![]).await;
    conn.send_binary(vec![9, 9, 9]).await;
    let push = channel.push("still_alive", json!({}));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(frame[0], join[0]);
    conn.reply(&frame, "ok", json!({})).await;
    within("reply", push).await.unwrap();
    assert!(socket.status().is_connected());
}

#[tokio::test(start_paused = true)]
async fn the_tap_sees_every_decoded_frame() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let mut tap = socket.tap();
    let mut conn = server.accept().await;
    conn.send(json!([null, null, "anything", "hello", {"x": 1}]))
        .await;
    conn.send(json!([null, "77", "anything", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    match within("tap", tap.recv()).await.unwrap() {
        Inbound::Message(m) => assert_eq!(m.event, "hello"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        within("tap", tap.recv()).await.unwrap(),
        Inbound::Reply(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_normal_close_from_the_server_is_reported_then_reconnects() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let mut conn = server.accept().await;
    conn.close(1000).await;
    let status = wait_status(&socket, |s| matches!(s, SocketStatus::Reconnecting { .. })).await;
    assert!(matches!(
        status,
        SocketStatus::Reconnecting {
            reason: DisconnectReason::Closed { code: 1000, .. },
            ..
        }
    ));
    server.accept().await;
}

#[tokio::test(start_paused = true)]
async fn disconnect_fails_pending_pushes_and_closes_channels() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, mut messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    let push = channel.push("never_answered", json!({}));
    conn.recv_skipping_heartbeats().await.unwrap();
    within("disconnect", socket.disconnect()).await;
    assert_eq!(
        within("push", push).await.unwrap_err(),
        PushError::SocketClosed
    );
    assert_eq!(channel.state(), ChannelState::Closed);
    assert_eq!(socket.status(), SocketStatus::Disconnected { reason: None });
    assert!(within("stream end", messages.next()).await.is_none());
    assert_eq!(conn.recv().await, None, "the server sees the close");
    assert_eq!(
        channel.join().await.unwrap_err(),
        JoinError::Closed(CloseCause::SocketClosed(None))
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_leaves_and_closes() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    let join = conn.accept_join("room:1", json!({})).await;
    drop((socket, channel, messages));
    let leave = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(
        (leave[0].clone(), leave[3].clone()),
        (join[0].clone(), json!("phx_leave"))
    );
    assert_eq!(conn.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn leave_resolves_on_the_reply_and_buffered_pushes_fail() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    let leave = tokio::spawn({
        let c = channel.clone();
        async move { c.leave().await }
    });
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    assert_eq!(frame[3], "phx_leave");
    conn.reply(&frame, "ok", json!({})).await;
    within("leave", leave).await.unwrap();
    assert_eq!(channel.state(), ChannelState::Closed);
}

#[tokio::test(start_paused = true)]
async fn one_channel_per_topic() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (first, _m1) = socket.channel("room:1").stream();
    drop(first.join());
    let (second, _m2) = socket.channel("room:1").stream();
    assert_eq!(
        within("join", second.join()).await.unwrap_err(),
        JoinError::Closed(CloseCause::TopicTaken)
    );
    let mut conn = server.accept().await;
    conn.accept_join("room:1", json!({})).await;
}

#[tokio::test]
async fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let result = std::thread::spawn(|| Socket::builder("ws://h/socket").connect().map(|_| ()))
        .join()
        .unwrap();
    assert_eq!(result.unwrap_err(), phoenix_channels::BuildError::NoRuntime);
    let bad = Socket::builder("mailto:x").connect().map(|_| ());
    assert!(matches!(
        bad,
        Err(phoenix_channels::BuildError::InvalidUrl(_))
    ));
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Socket>();
    is::<phoenix_channels::Channel>();
    is::<phoenix_channels::Push>();
    let _ = Value::Null;
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_keeps_up_loses_nothing_even_in_a_burst() {
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, mut messages) = socket.channel("room:1").queue_capacity(8).stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    // 500 messages in one burst, more than 60 times the queue's capacity: reading pauses while
    // the consumer is behind instead of dropping what it would read.
    let burst = tokio::spawn(async move {
        for n in 0..500 {
            conn.send(json!([null, null, "room:1", "m", { "n": n }]))
                .await;
        }
        conn
    });
    for n in 0..500 {
        let message = within("message", messages.next())
            .await
            .unwrap()
            .expect("nothing lost");
        assert_eq!(message.payload.to_value().unwrap(), json!({ "n": n }));
    }
    drop(within("burst", burst).await.unwrap());
}

/// A `tracing` writer that keeps every line.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_are_logged_a_few_times_then_counted() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (connector, mut server) = fake_server();
    let socket = socket_with(connector);
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    for _ in 0..1000 {
        conn.send_text("garbage").await;
    }
    // A reply proves that every frame before it was read.
    let push = channel.push("ping", json!({}));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    conn.reply(&frame, "ok", json!({})).await;
    within("reply", push).await.unwrap();
    let malformed = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("malformed"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let lines = malformed(&captured.lines());
    assert_eq!(lines.len(), 6, "five frames and a notice: {lines:#?}");
    // A minute later, the next one brings the count of those not logged.
    tokio::time::advance(Duration::from_secs(61)).await;
    conn.send_text("garbage").await;
    let push = channel.push("ping", json!({}));
    let frame = conn.recv_skipping_heartbeats().await.unwrap();
    conn.reply(&frame, "ok", json!({})).await;
    within("reply", push).await.unwrap();
    let lines = malformed(&captured.lines());
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert!(lines[6].contains("dropped=995"), "{}", lines[6]);
    assert!(socket.status().is_connected());
}

/// A server that accepts the upgrade and closes at once is redialled on the growing schedule,
/// not every 10 ms: the schedule starts over only after a healthy connection.
#[tokio::test(start_paused = true)]
async fn a_server_that_accepts_then_closes_is_redialled_on_the_growing_schedule() {
    let (connector, mut server) = fake_server();
    let _socket = socket_with(connector);
    let mut accepted = Vec::new();
    for _ in 0..7 {
        let mut conn = server.accept().await;
        accepted.push(tokio::time::Instant::now());
        conn.close(1011).await;
    }
    let gaps: Vec<u128> = accepted
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [10, 50, 100, 150, 200, 250], "{gaps:?}");
}

/// A consumer slower than the inbound rate, for several heartbeat intervals: the connection
/// stays up (heartbeats are answered in time), and every message is either received or
/// reported dropped.
#[tokio::test(start_paused = true)]
async fn a_slow_consumer_keeps_the_connection_and_every_drop_is_reported() {
    use futures_util::{FutureExt as _, SinkExt as _};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    const TOTAL: u64 = 8000;
    let (connector, mut server) = fake_server();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .connector(connector)
        .heartbeat_interval(Duration::from_secs(1))
        .connect()
        .unwrap();
    let (channel, mut messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    let mut status = socket.status_watch();
    let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let left_connected = left.clone();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            if !status.borrow().is_connected() {
                left_connected.store(true, Ordering::SeqCst);
            }
        }
    });
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let beats = Arc::new(AtomicU32::new(0));
    let answered = beats.clone();
    let server_task = tokio::spawn(async move {
        let answer = |frame: WsMessage, replies: &mut Vec<String>| {
            if let WsMessage::Text(text) = frame {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame[3] == "heartbeat" {
                    answered.fetch_add(1, Ordering::SeqCst);
                    replies.push(
                        json!([null, frame[1], "phoenix", "phx_reply", {"status": "ok", "response": {}}])
                            .to_string(),
                    );
                }
            }
        };
        // 1000 messages a second for 8 s (eight heartbeat intervals).
        let mut sent = 0;
        while sent < TOTAL {
            let mut replies = Vec::new();
            while let Some(Some(Ok(frame))) = conn.ws.next().now_or_never() {
                answer(frame, &mut replies);
            }
            for reply in replies {
                conn.ws.feed(WsMessage::text(reply)).await.unwrap();
            }
            for _ in 0..10 {
                let message = json!([null, null, "room:1", "m", {"n": sent}]);
                conn.ws
                    .feed(WsMessage::text(message.to_string()))
                    .await
                    .unwrap();
                sent += 1;
            }
            conn.ws.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Then only answer heartbeats, until the consumer is done.
        loop {
            tokio::select! {
                _ = &mut stopped => return conn,
                frame = conn.ws.next() => {
                    let mut replies = Vec::new();
                    answer(frame.unwrap().unwrap(), &mut replies);
                    for reply in replies {
                        conn.ws.send(WsMessage::text(reply)).await.unwrap();
                    }
                }
            }
        }
    });
    // The consumer takes 400 messages a second: slower than the 1000 coming in, but fast
    // enough to drain a quarter of its queue (256) within a second.
    let (mut received, mut dropped) = (0u64, 0u64);
    while received + dropped < TOTAL {
        match within("a message", messages.next()).await {
            Some(Ok(_)) => received += 1,
            Some(Err(lagged)) => dropped += lagged.0,
            None => panic!("the stream ended after {received} + {dropped}"),
        }
        tokio::time::sleep(Duration::from_micros(2500)).await;
    }
    assert_eq!(received + dropped, TOTAL);
    assert!(dropped > 0 && received > 1000, "{received} + {dropped}");
    assert!(beats.load(Ordering::SeqCst) >= 8);
    assert!(socket.status().is_connected());
    assert!(!left.load(Ordering::SeqCst), "the socket reconnected");
    assert!(server.try_accept(Duration::ZERO).await.is_none());
    stop.send(()).unwrap();
    let _conn = server_task.await.unwrap();
}

/// `Duration::MAX` timeouts and intervals mean "never": the socket task goes on.
#[tokio::test(start_paused = true)]
async fn huge_timeouts_do_not_kill_the_socket_task() {
    let (connector, mut server) = fake_server();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .connector(connector)
        .heartbeat_interval(Duration::MAX)
        .join_timeout(Duration::MAX)
        .push_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .healthy_after(Duration::MAX)
        .connect()
        .unwrap();
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    let joined = channel.join();
    conn.accept_join("room:1", json!({})).await;
    within("join", joined).await.unwrap();
    let push = channel.push("p", json!({}));
    let frame = conn.recv().await.unwrap();
    conn.reply(&frame, "ok", json!({"n": 1})).await;
    assert!(within("reply", push).await.unwrap().is_ok());
    let waiting = channel.push_with(
        "q",
        Payload::empty(),
        phoenix_channels::PushOptions::new().timeout(Duration::MAX),
    );
    let frame = conn.recv().await.unwrap();
    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    conn.reply(&frame, "ok", json!({})).await;
    assert!(within("reply", waiting).await.unwrap().is_ok());
    assert!(socket.status().is_connected());
}
