//! Phoenix socket semantics over a raw websocket: upgrade, heartbeat, idle close, join / leave /
//! duplicate join / unmatched topic / outdated join_ref, V1 fallback, malformed frames.

mod common;

use std::time::Duration;

use common::{
    Client, connect_with_protocols, ok_reply, refused_status, reply, server, server_with, within,
};
use dust_conformance::{Protocol, ServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn heartbeat_is_answered_with_a_null_join_ref() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("1"), "phoenix", json!({}))
    );
    // An integer ref comes back an integer; a join_ref does not matter.
    c.send(r#"["9",2,"phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!(2), "phoenix", json!({}))
    );
    assert_eq!(server.control().stats().heartbeats, 2);
}

#[tokio::test]
async fn unknown_path_is_404() {
    let server = server().await;
    assert_eq!(refused_status(&server.websocket_url("/nope")).await, 404);
    assert_eq!(refused_status(&server.url("/socket")).await, 404);
    assert_eq!(refused_status(&server.url("/socket/longpoll")).await, 404);
}

#[tokio::test]
async fn bad_token_is_403() {
    let server = server().await;
    let url = format!("{}&token=bad", server.websocket_url("/socket"));
    assert_eq!(refused_status(&url).await, 403);
    assert_eq!(server.control().stats().connects_refused, 1);
    assert!(server.control().connections().is_empty());
    let url = format!("{}&token=good", server.websocket_url("/socket"));
    Client::connect(&url).await;
}

#[tokio::test]
async fn unsupported_vsn_is_403() {
    let server = server().await;
    for vsn in ["3.0.1", "2.1.0", "abc"] {
        let url = format!("{}/websocket?vsn={vsn}", server.socket_url());
        assert_eq!(refused_status(&url).await, 403, "vsn {vsn}");
    }
}

#[tokio::test]
async fn connect_params_come_from_the_query() {
    let server = server().await;
    let url = format!(
        "{}&token=t%20ok&device_id=d1&x=1&x=2",
        server.websocket_url("/socket")
    );
    let _c = Client::connect(&url).await;
    let conns = server.control().connections();
    assert_eq!(conns.len(), 1);
    let params = &conns[0].params;
    assert_eq!(params["token"], "t ok");
    assert_eq!(params["device_id"], "d1");
    assert_eq!(params["vsn"], "2.0.0");
    assert_eq!(params["x"], "2");
    assert_eq!(conns[0].protocol, Protocol::V2);
    assert_eq!(conns[0].path, "/socket");
}

#[tokio::test]
async fn auth_token_subprotocol() {
    let server = server().await;
    let url = server.websocket_url("/socket");
    // "bad" in standard base64 without padding: "YmFk".
    let (_c, picked) = connect_with_protocols(&url, "phoenix, base64url.bearer.phx.Z29vZA").await;
    assert_eq!(picked.as_deref(), Some("phoenix"));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "phoenix, base64url.bearer.phx.YmFk".parse().unwrap(),
    );
    match within("connect", tokio_tungstenite::connect_async(request)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
}

// Paused time over an in-memory stream: the heartbeats' pacing and the idle timer run on the
// virtual clock, deterministically.
#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_with_1000() {
    let idle = Duration::from_millis(600);
    let server = server_with(ServerConfig::default().idle_timeout(idle)).await;
    let mut c = Client::over_stream(&server.control(), "/socket/websocket?vsn=2.0.0").await;
    c.joined("1", "echo:idle").await;
    // Activity keeps it open: a heartbeat every third of the timeout, three times.
    for i in 0..3 {
        tokio::time::sleep(idle / 3).await;
        c.send_json(json!([null, i, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(
            c.recv_json().await,
            ok_reply(Value::Null, json!(i), "phoenix", json!({}))
        );
    }
    let start = tokio::time::Instant::now();
    assert_eq!(c.recv_close().await, 1000);
    assert!(start.elapsed() >= idle, "{:?}", start.elapsed());
}

#[tokio::test]
async fn push_to_an_unjoined_topic_is_unmatched_with_a_null_join_ref() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.send_json(json!(["3", "14", "nope:1", "phx_join", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            Value::Null,
            json!("14"),
            "nope:1",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    c.send_json(json!(["3", "15", "echo:never", "echo", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            Value::Null,
            json!("15"),
            "echo:never",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
}

#[tokio::test]
async fn leave_replies_then_closes() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("4", "echo:l").await;
    c.send_json(json!(["4", "5", "echo:l", "phx_leave", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("4"), json!("5"), "echo:l", json!({}))
    );
    assert_eq!(
        c.recv_json().await,
        json!(["4", "4", "echo:l", "phx_close", {}])
    );
    assert!(server.control().connections()[0].topics.is_empty());
}

#[tokio::test]
async fn leave_of_an_unjoined_topic_replies_ok_with_the_clients_join_ref() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.send_json(json!(["8", "9", "echo:x", "phx_leave", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("8"), json!("9"), "echo:x", json!({}))
    );
}

#[tokio::test]
async fn leave_with_an_outdated_join_ref_is_ignored() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("4", "echo:l").await;
    c.send_json(json!(["3", "5", "echo:l", "phx_leave", {}]))
        .await;
    c.send_json(json!(["4", "6", "echo:l", "echo", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("4"), json!("6"), "echo:l", json!({}))
    );
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_with_the_old_join_ref() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:dup").await;
    c.send_json(json!(["5", "5", "echo:dup", "phx_join", {"second": true}]))
        .await;
    // As Phoenix does: the new join's reply, then the close of the old channel.
    assert_eq!(
        c.recv_json().await,
        ok_reply(
            json!("5"),
            json!("5"),
            "echo:dup",
            json!({"joined": "echo:dup", "params": {"second": true}})
        )
    );
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:dup", "phx_close", {}])
    );
    // The new join is the current one; the old join_ref is outdated.
    c.send_json(json!(["1", "6", "echo:dup", "echo", {"old": true}]))
        .await;
    c.send_json(json!(["5", "7", "echo:dup", "echo", {"new": true}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("5"), json!("7"), "echo:dup", json!({"new": true}))
    );
    assert_eq!(server.control().connections()[0].topics, ["echo:dup"]);
}

#[tokio::test]
async fn rejected_duplicate_join_still_closes_the_old_channel() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:dup").await;
    let r = c.join("2", "echo:dup", json!({"reject": true})).await;
    assert_eq!(
        r,
        reply(
            json!("2"),
            json!("2"),
            "echo:dup",
            "error",
            json!({"reason": "rejected"})
        )
    );
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:dup", "phx_close", {}])
    );
    assert!(server.control().connections()[0].topics.is_empty());
}

#[tokio::test]
async fn outdated_join_ref_is_dropped_and_null_join_ref_accepted() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("10", "echo:s").await;
    c.send_json(json!(["9", "11", "echo:s", "echo", {"stale": true}]))
        .await;
    c.send_json(json!([null, "12", "echo:s", "echo", {"null": true}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("10"), json!("12"), "echo:s", json!({"null": true}))
    );
}

#[tokio::test]
async fn join_without_join_ref_uses_its_ref_for_pushes() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.send_json(json!([null, "3", "echo:nj", "phx_join", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(
            Value::Null,
            json!("3"),
            "echo:nj",
            json!({"joined": "echo:nj", "params": {}})
        )
    );
    c.send_json(json!([null, "4", "echo:nj", "push_me", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!(["3", null, "echo:nj", "pushed", {}])
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("3"), json!("4"), "echo:nj", json!({}))
    );
    // phx_close carries the join message's join_ref: null.
    c.send_json(json!([null, "5", "echo:nj", "stop", {}])).await;
    assert_eq!(
        c.recv_json().await,
        json!([null, null, "echo:nj", "phx_close", {}])
    );
}

#[tokio::test]
async fn binary_push_with_an_empty_join_ref_is_outdated_on_a_joined_topic() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("2", "echo:1").await;
    let mut f = vec![0, 0, 1, 6, 4];
    f.extend_from_slice(b"7echo:1echoX");
    c.send_binary(f).await;
    c.send_json(json!(["2", "8", "echo:1", "echo", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("8"), "echo:1", json!({}))
    );
}

#[tokio::test]
async fn v1_fallback_without_vsn() {
    let server = server().await;
    let url = format!("{}/websocket", server.socket_url());
    let mut c = Client::connect(&url).await;
    assert_eq!(server.control().connections()[0].protocol, Protocol::V1);
    c.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "phoenix", "event": "phx_reply", "ref": "1", "payload": {"status": "ok", "response": {}}})
    );
    c.send(r#"{"topic":"echo:v1","event":"phx_join","payload":{"a":1},"ref":"2","join_ref":"2"}"#)
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "echo:v1", "event": "phx_reply", "ref": "2",
               "payload": {"status": "ok", "response": {"joined": "echo:v1", "params": {"a": 1}}}})
    );
    c.send(r#"{"topic":"echo:v1","event":"push_me","payload":{"p":1},"ref":"3"}"#)
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "echo:v1", "event": "pushed", "ref": null, "payload": {"p": 1}})
    );
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "echo:v1", "event": "phx_reply", "ref": "3", "payload": {"status": "ok", "response": {}}})
    );
    // No binary frames in V1: push_binary crashes the channel, as Phoenix's encoder raises.
    c.send(r#"{"topic":"echo:v1","event":"push_binary","payload":{},"ref":"4"}"#)
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"topic": "echo:v1", "event": "phx_error", "ref": "2", "payload": {}})
    );
    // A V2 frame is malformed for V1.
    c.send(r#"[null,"5","phoenix","heartbeat",{}]"#).await;
    assert_eq!(c.recv_close().await, 1011);
}

async fn assert_malformed(frame: tokio_tungstenite::tungstenite::Message) {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:m").await;
    within(
        "send",
        futures_util::SinkExt::send(&mut c.ws, frame.clone()),
    )
    .await
    .expect("send");
    assert_eq!(c.recv_close().await, 1011, "{frame:?}");
    within(
        "gone",
        server.control().wait_for_stats(|s| s.open_connections == 0),
    )
    .await;
}

#[tokio::test]
async fn malformed_frames_close_with_1011() {
    use tokio_tungstenite::tungstenite::Message;
    for text in [
        "not json",
        "{}",
        r#"[null,"1","phoenix"]"#,
        r#"[null,"1",7,"heartbeat",{}]"#,
        r#"[null,"1","echo:m",null,{}]"#,
        "42",
    ] {
        assert_malformed(Message::text(text)).await;
    }
    for bytes in [
        vec![],
        vec![1, 0, 0, 0, 0],
        vec![2, 0, 0],
        vec![0, 9, 1, 1, 1, b'x'],
        vec![0, 1, 1, 1],
    ] {
        assert_malformed(Message::binary(bytes)).await;
    }
}

#[tokio::test]
async fn client_close_removes_the_connection() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:c").await;
    within("close", c.ws.close(None)).await.unwrap();
    within("gone", control.wait_for_stats(|s| s.open_connections == 0)).await;
    assert!(control.connections().is_empty());
    // Its channel is gone from broadcasts too.
    assert_eq!(control.broadcast("echo:c", "x", json!({})), 0);
}

#[tokio::test]
async fn channels_run_independently() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:a").await;
    c.joined("2", "echo:b").await;
    c.send_json(json!(["1", "3", "echo:a", "crash", {}])).await;
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:a", "phx_error", {}])
    );
    c.send_json(json!(["2", "4", "echo:b", "echo", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("4"), "echo:b", json!({}))
    );
    // And the crashed topic can be joined again.
    c.joined("5", "echo:a").await;
}

#[tokio::test]
async fn sockets_mount_at_normalized_paths() {
    let config = ServerConfig::empty()
        .socket("/", dust_conformance::echo::socket())
        .socket("nested/path/", dust_conformance::echo::socket());
    let server = server_with(config).await;
    Client::connect(&server.websocket_url("")).await;
    Client::connect(&server.websocket_url("/nested/path")).await;
    assert_eq!(refused_status(&server.websocket_url("/socket")).await, 404);
}

#[tokio::test]
async fn huge_integer_refs_are_echoed_exactly_as_sent() {
    const HUGE: &str = "123456789012345678901234567890";
    const OTHER: &str = "98765432109876543210987654321";
    let server = server().await;
    let mut c = Client::v2(&server).await;
    // The socket's own reply (heartbeat), the join reply, and a channel's reply.
    c.send(&format!(r#"[null,{HUGE},"phoenix","heartbeat",{{}}]"#))
        .await;
    let text = |m: Message| m.into_text().expect("a text frame").to_string();
    assert_eq!(
        text(c.recv().await),
        format!(r#"[null,{HUGE},"phoenix","phx_reply",{{"response":{{}},"status":"ok"}}]"#)
    );
    c.send(&format!(r#"[{HUGE},{HUGE},"echo:big","phx_join",{{}}]"#))
        .await;
    let joined = text(c.recv().await);
    assert!(
        joined.starts_with(&format!(r#"[{HUGE},{HUGE},"echo:big","phx_reply","#)),
        "{joined}"
    );
    c.send(&format!(r#"[{HUGE},{OTHER},"echo:big","echo",{{"a":1}}]"#))
        .await;
    assert_eq!(
        text(c.recv().await),
        format!(
            r#"[{HUGE},{OTHER},"echo:big","phx_reply",{{"response":{{"a":1}},"status":"ok"}}]"#
        )
    );
}
