//! Every row of the `echo:*` table (PROTOCOL.md §3), over a raw websocket.

mod common;

use std::time::{Duration, Instant};

use common::{Client, ok_reply, reply, server, within};
use serde_json::{Value, json};

#[tokio::test]
async fn join_replies_topic_and_params() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    let r = c.join("2", "echo:1", json!({"a": 1})).await;
    assert_eq!(
        r,
        ok_reply(
            json!("2"),
            json!("2"),
            "echo:1",
            json!({"joined": "echo:1", "params": {"a": 1}})
        )
    );
}

#[tokio::test]
async fn join_with_reject_is_refused_and_not_joined() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    let r = c.join("1", "echo:r", json!({"reject": true})).await;
    assert_eq!(
        r,
        reply(
            json!("1"),
            json!("1"),
            "echo:r",
            "error",
            json!({"reason": "rejected"})
        )
    );
    // Not joined: a push is answered "unmatched topic".
    c.send_json(json!(["1", "2", "echo:r", "echo", {}])).await;
    assert_eq!(
        c.recv_json().await,
        reply(
            Value::Null,
            json!("2"),
            "echo:r",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    assert!(server.control().connections()[0].topics.is_empty());
    assert_eq!(server.control().stats().joins_refused, 1);
}

#[tokio::test]
async fn echo_replies_with_the_payload() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:1").await;
    c.send_json(json!(["2", "3", "echo:1", "echo", {"hello": "world"}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("3"), "echo:1", json!({"hello": "world"}))
    );
}

#[tokio::test]
async fn refs_keep_their_json_type() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.send_json(json!([5, 5, "echo:int", "phx_join", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(
            json!(5),
            json!(5),
            "echo:int",
            json!({"joined": "echo:int", "params": {}})
        )
    );
    c.send_json(json!([5, 6, "echo:int", "echo", {"n": 1}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!(5), json!(6), "echo:int", json!({"n": 1}))
    );
    // Mixed: a string ref on an integer join_ref; the integer 5 and the string "5" differ, so
    // the string join_ref is outdated and dropped; the echo after it proves it.
    c.send_json(json!(["5", "7", "echo:int", "echo", {}])).await;
    c.send_json(json!([5, "8", "echo:int", "echo", {"last": true}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!(5), json!("8"), "echo:int", json!({"last": true}))
    );
}

#[tokio::test]
async fn error_reply_replies_error_with_the_payload() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:e").await;
    c.send_json(json!(["1", "2", "echo:e", "error_reply", {"why": "asked"}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            json!("1"),
            json!("2"),
            "echo:e",
            "error",
            json!({"why": "asked"})
        )
    );
}

#[tokio::test]
async fn noreply_sends_nothing() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:n").await;
    c.send_json(json!(["1", "2", "echo:n", "noreply", {}]))
        .await;
    c.send_json(json!(["1", "3", "echo:n", "echo", {}])).await;
    // Channels handle messages in order: the first frame back answers ref 3.
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("3"), "echo:n", json!({}))
    );
}

#[tokio::test]
async fn slow_replies_later_without_blocking_other_events() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:s").await;
    let start = Instant::now();
    c.send_json(json!(["1", "2", "echo:s", "slow", {"ms": 300, "x": 1}]))
        .await;
    c.send_json(json!(["1", "3", "echo:s", "echo", {"fast": true}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("3"), "echo:s", json!({"fast": true}))
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("2"), "echo:s", json!({"ms": 300, "x": 1}))
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn slow_reply_is_lost_when_the_channel_is_gone() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:s").await;
    c.send_json(json!(["1", "2", "echo:s", "slow", {"ms": 100}]))
        .await;
    c.send_json(json!(["1", "3", "echo:s", "stop", {}])).await;
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:s", "phx_close", {}])
    );
    c.assert_silent().await;
}

#[tokio::test]
async fn broadcast_reaches_every_joiner_then_replies() {
    let server = server().await;
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    let mut other = Client::v2(&server).await;
    a.joined("1", "echo:room").await;
    b.joined("7", "echo:room").await;
    other.joined("1", "echo:elsewhere").await;
    a.send_json(json!(["1", "2", "echo:room", "broadcast", {"b": 1}]))
        .await;
    let broadcasted = json!([null, null, "echo:room", "broadcasted", {"b": 1}]);
    // The sender gets the broadcast too, before the reply.
    assert_eq!(a.recv_json().await, broadcasted);
    assert_eq!(
        a.recv_json().await,
        ok_reply(json!("1"), json!("2"), "echo:room", json!({}))
    );
    assert_eq!(b.recv_json().await, broadcasted);
    // Another topic gets nothing: its next frame answers its own echo.
    other
        .send_json(json!(["1", "2", "echo:elsewhere", "echo", {}]))
        .await;
    assert_eq!(
        other.recv_json().await,
        ok_reply(json!("1"), json!("2"), "echo:elsewhere", json!({}))
    );
}

#[tokio::test]
async fn push_me_pushes_then_replies() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:1").await;
    c.send_json(json!(["2", "4", "echo:1", "push_me", {"p": 1}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["2", null, "echo:1", "pushed", {"p": 1}])
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("4"), "echo:1", json!({}))
    );
}

#[tokio::test]
async fn push_binary_sends_a_binary_push() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:1").await;
    c.send_json(json!(["2", "5", "echo:1", "push_binary", {}]))
        .await;
    // kind 0, join_ref "2", topic "echo:1", event "pushed_binary", payload "hi"
    let mut expected = vec![0, 1, 6, 13];
    expected.extend_from_slice(b"2echo:1pushed_binaryhi");
    assert_eq!(c.recv_binary().await, expected);
}

#[tokio::test]
async fn crash_sends_phx_error_and_no_reply() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("17", "echo:crash").await;
    c.send_json(json!(["17", "18", "echo:crash", "crash", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["17", "17", "echo:crash", "phx_error", {}])
    );
    // The channel is gone.
    c.send_json(json!(["17", "19", "echo:crash", "echo", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            Value::Null,
            json!("19"),
            "echo:crash",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    assert!(server.control().connections()[0].topics.is_empty());
}

#[tokio::test]
async fn stop_sends_phx_close_and_no_reply() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("19", "echo:stop").await;
    c.send_json(json!(["19", "20", "echo:stop", "stop", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["19", "19", "echo:stop", "phx_close", {}])
    );
    c.send_json(json!(["19", "21", "echo:stop", "echo", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            Value::Null,
            json!("21"),
            "echo:stop",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
}

#[tokio::test]
async fn disconnect_me_closes_the_websocket_with_1000() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:d").await;
    c.send_json(json!(["1", "2", "echo:d", "disconnect_me", {}]))
        .await;
    assert_eq!(c.recv_close().await, 1000);
    within(
        "closed",
        control.wait_for_stats(|s| s.open_connections == 0),
    )
    .await;
}

#[tokio::test]
async fn unknown_event_replies_error_with_event_and_payload() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:u").await;
    c.send_json(json!(["1", "2", "echo:u", "what", {"x": [1]}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            json!("1"),
            json!("2"),
            "echo:u",
            "error",
            json!({"reason": "unknown event", "event": "what", "payload": {"x": [1]}})
        )
    );
}

#[tokio::test]
async fn binary_echo_replies_with_a_binary_reply() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:1").await;
    // The bytes of PROTOCOL.md §1.
    let mut push = vec![0x00, 0x01, 0x02, 0x06, 0x04];
    push.extend_from_slice(b"211echo:1echo");
    push.extend_from_slice(&[0x01, 0x02, 0xff]);
    c.send_binary(push).await;
    let mut expected = vec![0x01, 0x01, 0x02, 0x06, 0x02];
    expected.extend_from_slice(b"211echo:1ok");
    expected.extend_from_slice(&[0x01, 0x02, 0xff]);
    assert_eq!(c.recv_binary().await, expected);
}

#[tokio::test]
async fn binary_error_reply_and_broadcast() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:b").await;
    let push = |event: &str, data: &[u8]| {
        let mut f = vec![0, 1, 1, 6, u8::try_from(event.len()).unwrap()];
        f.extend_from_slice(b"29echo:b");
        f.extend_from_slice(event.as_bytes());
        f.extend_from_slice(data);
        f
    };
    c.send_binary(push("error_reply", b"no")).await;
    let mut expected = vec![1, 1, 1, 6, 5];
    expected.extend_from_slice(b"29echo:berrorno");
    assert_eq!(c.recv_binary().await, expected);

    c.send_binary(push("broadcast", b"all")).await;
    let mut expected = vec![2, 6, 11];
    expected.extend_from_slice(b"echo:bbroadcastedall");
    assert_eq!(c.recv_binary().await, expected);
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("9"), "echo:b", json!({}))
    );
}

#[tokio::test]
async fn binary_payload_to_an_unknown_event_crashes_the_channel() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:b").await;
    let mut f = vec![0, 1, 1, 6, 3];
    f.extend_from_slice(b"23echo:bwhat");
    f.push(0);
    c.send_binary(f).await;
    assert_eq!(
        c.recv_json().await,
        json!(["2", "2", "echo:b", "phx_error", {}])
    );
}
