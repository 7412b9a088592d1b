//! End to end: our client, `phoenix-channels`, against the emulation over a real websocket —
//! every `echo:*` row and the faults a client must survive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use dust_conformance::{Control, RawFrame, Server, ServerConfig};
use futures_util::StreamExt;
use phoenix_channels::backoff::{ReconnectSchedule, RejoinSchedule};
use phoenix_channels::{
    Channel, ChannelState, CloseCause, DisconnectReason, JoinError, Message, Messages, Payload,
    PushError, ReplyStatus, Socket, SocketStatus,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(T, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn server() -> Server {
    within("start", dust_conformance::start(ServerConfig::default()))
        .await
        .unwrap()
}

/// A socket with short schedules so that fault tests take milliseconds.
fn socket(server: &Server) -> Socket {
    socket_builder(server).connect().unwrap()
}

fn socket_builder(server: &Server) -> phoenix_channels::SocketBuilder {
    Socket::builder(server.socket_url())
        .push_timeout(Duration::from_secs(5))
        .rejoin_policy(RejoinSchedule::default().with_schedule_ms([20]))
        .reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 20]))
}

async fn joined(socket: &Socket, topic: &str) -> (Channel, Messages) {
    let (channel, messages) = socket.channel(topic).params(json!({"a": 1})).stream();
    let reply = within("join", channel.join()).await.unwrap();
    assert_eq!(
        reply.to_value().unwrap(),
        json!({"joined": topic, "params": {"a": 1}})
    );
    (channel, messages)
}

async fn next_message(messages: &mut Messages) -> Message {
    within("a message", messages.next())
        .await
        .expect("stream ended")
        .expect("lagged")
}

async fn wait_state(channel: &Channel, state: ChannelState) {
    let mut watch = channel.state_watch();
    within("channel state", watch.wait_for(|s| *s == state))
        .await
        .unwrap();
}

async fn wait_connections(control: &Control, n: usize) {
    let n = n as u64;
    within(
        "connections",
        control.wait_for_stats(|s| s.open_connections == n),
    )
    .await;
    assert_eq!(control.connections().len() as u64, n);
}

fn value(payload: &Payload) -> Value {
    payload.to_value().unwrap()
}

#[tokio::test]
async fn echo_replies_ok_with_the_payload() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let reply = within("echo", channel.push("echo", json!({"hello": "world"})))
        .await
        .unwrap();
    assert_eq!(reply.status(), &ReplyStatus::Ok);
    assert_eq!(value(reply.response()), json!({"hello": "world"}));
}

#[tokio::test]
async fn error_reply_replies_error_with_the_payload() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let reply = within(
        "error_reply",
        channel.push("error_reply", json!({"why": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), &ReplyStatus::Error);
    assert_eq!(value(reply.response()), json!({"why": "x"}));
}

#[tokio::test]
async fn noreply_times_out() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let push = channel.push_with_timeout("noreply", Payload::empty(), Duration::from_millis(200));
    assert_eq!(
        within("noreply", push).await.unwrap_err(),
        PushError::Timeout
    );
}

#[tokio::test]
async fn slow_replies_later_without_blocking_other_events() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let slow = tokio::spawn(channel.push("slow", json!({"ms": 300})));
    let echo = channel.push("echo", json!({"n": 1}));
    within("echo", echo).await.unwrap();
    assert!(!slow.is_finished(), "the echo overtook the slow push");
    let reply = within("slow", slow).await.unwrap().unwrap();
    assert_eq!(value(reply.response()), json!({"ms": 300}));
}

#[tokio::test]
async fn broadcast_reaches_every_joiner_then_replies_ok() {
    let server = server().await;
    let (a, b) = (socket(&server), socket(&server));
    let (channel_a, mut messages_a) = joined(&a, "echo:room").await;
    let (_channel_b, mut messages_b) = joined(&b, "echo:room").await;
    let reply = within("broadcast", channel_a.push("broadcast", json!({"b": 1})))
        .await
        .unwrap();
    assert!(reply.is_ok());
    assert_eq!(value(reply.response()), json!({}));
    for messages in [&mut messages_a, &mut messages_b] {
        let message = next_message(messages).await;
        assert_eq!(message.event, "broadcasted");
        assert!(message.is_broadcast());
        assert_eq!(value(&message.payload), json!({"b": 1}));
    }
}

#[tokio::test]
async fn push_me_pushes_to_this_client_then_replies_ok() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, mut messages) = joined(&socket, "echo:1").await;
    let reply = within("push_me", channel.push("push_me", json!({"p": 1})))
        .await
        .unwrap();
    assert!(reply.is_ok());
    let message = next_message(&mut messages).await;
    assert_eq!(message.event, "pushed");
    assert!(
        !message.is_broadcast(),
        "a channel push carries the join ref"
    );
    assert_eq!(value(&message.payload), json!({"p": 1}));
}

#[tokio::test]
async fn push_binary_and_binary_echo() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, mut messages) = joined(&socket, "echo:1").await;
    channel.cast("push_binary", json!({})).unwrap();
    let message = next_message(&mut messages).await;
    assert_eq!(message.event, "pushed_binary");
    assert_eq!(
        message.payload.as_binary().map(|b| b.to_vec()),
        Some(b"hi".to_vec())
    );

    let reply = within(
        "binary echo",
        channel.push_payload("echo", Payload::binary(vec![1u8, 2, 255])),
    )
    .await
    .unwrap();
    assert!(reply.is_ok());
    assert_eq!(
        reply.response().as_binary().map(|b| b.to_vec()),
        Some(vec![1, 2, 255])
    );
}

#[tokio::test]
async fn crash_errors_the_channel_fails_the_push_and_rejoins() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let mut states = channel.state_watch();
    let crash = channel.push("crash", json!({}));
    assert_eq!(
        within("crash", crash).await.unwrap_err(),
        PushError::ChannelErrored
    );
    within("errored", states.wait_for(|s| *s == ChannelState::Errored))
        .await
        .unwrap();
    within("rejoined", states.wait_for(|s| *s == ChannelState::Joined))
        .await
        .unwrap();
    within("echo after rejoin", channel.push("echo", json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_closes_the_channel_without_rejoin() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let stop = channel.push("stop", json!({}));
    assert_eq!(
        within("stop", stop).await.unwrap_err(),
        PushError::ChannelClosed
    );
    assert_eq!(channel.state(), ChannelState::Closed);
    let mut states = channel.state_watch();
    let left_closed = tokio::time::timeout(
        Duration::from_millis(200),
        states.wait_for(|s| *s != ChannelState::Closed),
    )
    .await;
    assert!(left_closed.is_err(), "no rejoin after phx_close");
    assert!(server.control().connections()[0].topics.is_empty());
}

#[tokio::test]
async fn disconnect_me_closes_with_1000_and_the_client_reconnects_and_rejoins() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let mut status = socket.status_watch();
    channel.cast("disconnect_me", json!({})).unwrap();
    let seen = within(
        "reconnecting",
        status.wait_for(|s| matches!(s, SocketStatus::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .clone();
    assert!(matches!(
        seen,
        SocketStatus::Reconnecting {
            reason: DisconnectReason::Closed { code: 1000, .. },
            ..
        }
    ));
    within("connected", status.wait_for(SocketStatus::is_connected))
        .await
        .unwrap();
    wait_state(&channel, ChannelState::Joined).await;
}

#[tokio::test]
async fn unknown_events_get_the_unknown_event_error() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let reply = within("unknown", channel.push("what", json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(reply.status(), &ReplyStatus::Error);
    assert_eq!(
        value(reply.response()),
        json!({"reason": "unknown event", "event": "what", "payload": {"x": 1}})
    );
}

#[tokio::test]
async fn a_rejected_join_reports_the_reason_and_the_policy_can_stop() {
    let server = server().await;
    let socket = socket_builder(&server)
        .rejoin_policy(RejoinSchedule::default().stop_on_reasons(["rejected"]))
        .connect()
        .unwrap();
    let (channel, _m) = socket
        .channel("echo:1")
        .params(json!({"reject": true}))
        .stream();
    let error = within("join", channel.join()).await.unwrap_err();
    assert_eq!(error.reason().as_deref(), Some("rejected"));
    wait_state(&channel, ChannelState::Closed).await;
    let again = within("join again", channel.join()).await.unwrap_err();
    assert_eq!(again.reason().as_deref(), Some("rejected"));
}

#[tokio::test]
async fn an_unmatched_topic_fails_the_join_at_once() {
    let server = server().await;
    let socket = socket(&server);
    let (channel, _m) = socket.channel("nope:1").stream();
    let started = std::time::Instant::now();
    let error = within("join", channel.join()).await.unwrap_err();
    assert!(matches!(error, JoinError::Rejected(_)));
    assert_eq!(error.reason().as_deref(), Some("unmatched topic"));
    assert!(started.elapsed() < Duration::from_secs(5), "not a timeout");
}

#[tokio::test]
async fn a_dropped_connection_fails_in_flight_pushes_then_reconnects_and_rejoins() {
    let server = server().await;
    let control = server.control();
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let slow = channel.push("slow", json!({"ms": 2000}));
    // The channel handles its messages in order: once the next one is answered, the slow
    // push is in flight on the server.
    within("echo", channel.push("echo", json!({})))
        .await
        .unwrap();
    assert_eq!(control.drop_all(), 1);
    assert_eq!(
        within("slow", slow).await.unwrap_err(),
        PushError::Disconnected
    );
    wait_state(&channel, ChannelState::Errored).await;
    wait_state(&channel, ChannelState::Joined).await;
    within("echo", channel.push("echo", json!({})))
        .await
        .unwrap();
    wait_connections(&control, 1).await;
}

#[tokio::test]
async fn a_stalled_connection_is_detected_by_the_heartbeat_and_replaced() {
    let server = server().await;
    let control = server.control();
    let socket = socket_builder(&server)
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(100))
        .connect()
        .unwrap();
    let (channel, _m) = joined(&socket, "echo:1").await;
    let first = control.connections()[0].id;
    assert_eq!(control.stall_all(), 1);
    let mut status = socket.status_watch();
    let seen = within(
        "reconnecting",
        status.wait_for(|s| matches!(s, SocketStatus::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .clone();
    assert!(matches!(
        seen,
        SocketStatus::Reconnecting {
            reason: DisconnectReason::HeartbeatTimeout,
            ..
        }
    ));
    within("connected", status.wait_for(SocketStatus::is_connected))
        .await
        .unwrap();
    wait_state(&channel, ChannelState::Joined).await;
    assert!(
        control
            .connections()
            .iter()
            .any(|c| c.id != first && c.topics == ["echo:1"])
    );
}

#[tokio::test]
async fn a_refused_connect_is_reported_as_403_and_not_retried() {
    let server = server().await;
    server.control().refuse_connects(true);
    let socket = socket(&server);
    let error = within("connected", socket.connected()).await.unwrap_err();
    assert_eq!(error.reason, Some(DisconnectReason::Http { status: 403 }));
    let bad = Socket::builder(server.socket_url())
        .param("token", "bad")
        .connect()
        .unwrap();
    server.control().refuse_connects(false);
    let error = within("connected", bad.connected()).await.unwrap_err();
    assert_eq!(error.reason, Some(DisconnectReason::Http { status: 403 }));
}

#[tokio::test]
async fn pushes_made_while_joining_are_flushed_after_the_join() {
    let server = server().await;
    let control = server.control();
    control.refuse_joins(true);
    let socket = socket(&server);
    let (channel, _m) = socket.channel("echo:1").stream();
    let first = channel.join();
    let pushes: Vec<_> = (0..5)
        .map(|n| channel.push("echo", json!({ "n": n })))
        .collect();
    assert!(matches!(
        within("refused join", first).await,
        Err(JoinError::Rejected(_))
    ));
    control.refuse_joins(false);
    for (n, push) in pushes.into_iter().enumerate() {
        let reply = within("buffered push", push).await.unwrap();
        assert_eq!(value(reply.response()), json!({ "n": n }));
    }
}

#[tokio::test]
async fn server_side_crash_and_close_controls() {
    let server = server().await;
    let control = server.control();
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    let mut states = channel.state_watch();
    assert_eq!(control.crash_channel("echo:1"), 1);
    within("errored", states.wait_for(|s| *s == ChannelState::Errored))
        .await
        .unwrap();
    within("rejoined", states.wait_for(|s| *s == ChannelState::Joined))
        .await
        .unwrap();
    assert_eq!(control.close_channel("echo:1"), 1);
    within("closed", states.wait_for(|s| *s == ChannelState::Closed))
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_and_stray_frames_from_the_server_are_survived() {
    let server = server().await;
    let control = server.control();
    let socket = socket(&server);
    let (channel, mut messages) = joined(&socket, "echo:1").await;
    let id = control.connections()[0].id;
    for raw in [
        RawFrame::Text("not json".into()),
        RawFrame::Text("[1,2]".into()),
        RawFrame::Text(r#"[null,"999","echo:1","phx_reply",{"status":"ok","response":{}}]"#.into()),
        RawFrame::Text(r#"["999",null,"echo:1","stale",{}]"#.into()),
        RawFrame::Binary(vec![7u8, 1, 2].into()),
        RawFrame::Text(r#"[null,null,"echo:1","fine",{"ok":true}]"#.into()),
    ] {
        control.send_raw(id, raw).unwrap();
    }
    let message = next_message(&mut messages).await;
    assert_eq!(
        message.event, "fine",
        "the stale message was dropped and the valid one delivered"
    );
    within("echo", channel.push("echo", json!({})))
        .await
        .unwrap();
    assert!(socket.status().is_connected());
}

#[tokio::test]
async fn leave_then_the_server_forgets_the_topic() {
    let server = server().await;
    let control = server.control();
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    within("leave", channel.leave()).await;
    assert_eq!(channel.state(), ChannelState::Closed);
    // The server forgets the topic before it replies to the leave, which `leave` awaited.
    assert!(control.connections()[0].topics.is_empty());
    assert_eq!(
        within("push", channel.push("echo", json!({})))
            .await
            .unwrap_err(),
        PushError::ChannelClosed
    );
    let closed = within("join after leave", channel.join()).await;
    assert!(closed.is_ok(), "a left channel can join again: {closed:?}");
}

#[tokio::test]
async fn disconnect_closes_everything() {
    let server = server().await;
    let control = server.control();
    let socket = socket(&server);
    let (channel, _m) = joined(&socket, "echo:1").await;
    within("disconnect", socket.disconnect()).await;
    assert_eq!(channel.state(), ChannelState::Closed);
    assert_eq!(
        within("join", channel.join()).await.unwrap_err(),
        JoinError::Closed(CloseCause::SocketClosed(None))
    );
    wait_connections(&control, 0).await;
}

/// The MessagePack serializer (`vsn=3.0.0`) against the emulation's echo channel: pushes in
/// either payload format get their replies, a broadcast reaches a JSON and a MessagePack joiner
/// alike, a binary cast travels in the server-push layout, a server's binary push arrives, and
/// a binary push awaiting a reply is refused before it is sent.
#[tokio::test]
async fn the_messagepack_serializer_speaks_to_the_echo_channel() {
    use phoenix_channels::Serializer;
    use phoenix_channels::frame::EncodeError;
    let server = server().await;
    let packed = socket_builder(&server)
        .serializer(Serializer::MessagePack)
        .connect()
        .unwrap();
    let plain = socket(&server);
    let (channel, mut messages) = joined(&packed, "echo:room").await;
    let (_plain_channel, mut plain_messages) = joined(&plain, "echo:room").await;

    let reply = within("echo json", channel.push("echo", json!({"hello": "world"})))
        .await
        .unwrap();
    assert!(reply.response().is_msgpack());
    assert_eq!(value(reply.response()), json!({"hello": "world"}));
    let payload = Payload::msgpack(&json!({"n": [1, 2]})).unwrap();
    let reply = within("echo msgpack", channel.push_payload("echo", payload))
        .await
        .unwrap();
    assert_eq!(value(reply.response()), json!({"n": [1, 2]}));

    within("broadcast", channel.push("broadcast", json!({"b": 1})))
        .await
        .unwrap();
    for messages in [&mut messages, &mut plain_messages] {
        let message = next_message(messages).await;
        assert_eq!(message.event.as_str(), "broadcasted");
        assert_eq!(value(&message.payload), json!({"b": 1}));
    }

    channel.cast_payload("broadcast", Payload::binary(&b"\x00\x01"[..]));
    for messages in [&mut messages, &mut plain_messages] {
        let message = next_message(messages).await;
        assert_eq!(message.event.as_str(), "broadcasted");
        assert_eq!(
            message.payload.as_binary().map(|b| b.as_ref()),
            Some(&b"\x00\x01"[..])
        );
    }

    channel.cast_payload("push_binary", Payload::empty());
    let message = next_message(&mut messages).await;
    assert_eq!(message.event.as_str(), "pushed_binary");
    assert_eq!(
        message.payload.as_binary().map(|b| b.as_ref()),
        Some(&b"hi"[..])
    );

    let refused = channel.push_payload("echo", Payload::binary(&b"x"[..]));
    assert_eq!(
        within("binary push", refused).await.unwrap_err(),
        PushError::Encode(EncodeError::BinaryReplyUnsupported)
    );
}
