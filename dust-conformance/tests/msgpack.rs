//! The MessagePack serializer (vsn 3.0.0) on the Phoenix layer, with the echo channel: what
//! `DustWeb.MsgpackSerializer` does, read from raw frames.

mod common;

use common::msgpack::{frame, get, json, map, pack, url};
use common::{Client, refused_status, server};
use dust_conformance::Protocol;
use rmpv::Value as Mp;
use serde_json::json;

#[tokio::test]
async fn only_vsn_3_0_0_selects_messagepack() {
    let server = server().await;
    for vsn in ["3.0.1", "3.1.0", "2.1.0", "03.0.0x"] {
        let url = format!("{}/websocket?vsn={vsn}", server.socket_url());
        assert_eq!(refused_status(&url).await, 403, "vsn {vsn}");
    }
    let _c = Client::connect(&url(&server, "/socket", "")).await;
    let conns = server.control().connections();
    assert_eq!(conns[0].protocol, Protocol::MessagePack);
}

#[tokio::test]
async fn echo_replies_and_broadcasts_are_binary_arrays_keeping_what_was_sent() {
    let server = server().await;
    let mut c = Client::connect(&url(&server, "/socket", "")).await;
    c.send_mp(frame(
        Mp::from("1"),
        Mp::from(1),
        "echo:a",
        "phx_join",
        map(&[]),
    ))
    .await;
    let reply = c.recv_mp().await;
    assert_eq!(
        json(&Mp::Array(reply)),
        json!(["1", 1, "echo:a", "phx_reply", {"status": "ok", "response": {"joined": "echo:a", "params": {}}}])
    );
    // Integer keys, a bin and an f32 come back as the server holds them: keys as sent, the bin
    // a string, the f32 an f64.
    let payload = Mp::Map(vec![
        (Mp::from(7), Mp::Binary(b"bin".to_vec())),
        (Mp::from("f"), Mp::F32(0.5)),
    ]);
    c.send_mp(frame(
        Mp::from("1"),
        Mp::from("2"),
        "echo:a",
        "echo",
        payload,
    ))
    .await;
    let reply = c.recv_mp().await;
    assert_eq!(reply[1], Mp::from("2"));
    assert_eq!(
        *get(&reply[4], "response"),
        Mp::Map(vec![
            (Mp::from(7), Mp::from("bin")),
            (Mp::from("f"), Mp::F64(0.5)),
        ])
    );
    c.send_mp(frame(
        Mp::from("1"),
        Mp::from("3"),
        "echo:a",
        "broadcast",
        map(&[("x", Mp::from(1))]),
    ))
    .await;
    let broadcast = c.recv_mp().await;
    assert_eq!(
        json(&Mp::Array(broadcast)),
        json!([null, null, "echo:a", "broadcasted", {"x": 1}])
    );
    assert_eq!(c.recv_mp().await[1], Mp::from("3"));
}

#[tokio::test]
async fn text_frames_are_read_as_json_and_answered_in_messagepack() {
    let server = server().await;
    let mut c = Client::connect(&url(&server, "/socket", "")).await;
    c.send(r#"["1","1","echo:a","phx_join",{}]"#).await;
    let reply = c.recv_mp().await;
    assert_eq!(reply[3], Mp::from("phx_reply"));
    c.send(r#"[null,"9","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        json(&Mp::Array(c.recv_mp().await)),
        json!([null, "9", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // A malformed text frame closes the socket with 1011.
    c.send("not json").await;
    assert_eq!(c.recv_close().await, 1011);
}

#[tokio::test]
async fn malformed_binary_frames_close_with_1011() {
    let server = server().await;
    let short = pack(&Mp::Array(vec![Mp::Nil, Mp::Nil, Mp::from("t")]));
    let mut trailing = frame(Mp::Nil, Mp::Nil, "t", "e", map(&[]));
    trailing.push(0xc0);
    for bad in [
        short,
        trailing,
        vec![1, 0, 0, 0, 0, 0],
        vec![2, 0, 0],
        vec![0xc1],
    ] {
        let mut c = Client::connect(&url(&server, "/socket", "")).await;
        c.send_binary(bad.clone()).await;
        assert_eq!(c.recv_close().await, 1011, "{bad:?}");
    }
}

#[tokio::test]
async fn a_binary_push_is_read_in_the_server_push_layout_without_a_ref() {
    let server = server().await;
    let mut c = Client::connect(&url(&server, "/socket", "")).await;
    c.send_mp(frame(
        Mp::from("1"),
        Mp::from("1"),
        "echo:a",
        "phx_join",
        map(&[]),
    ))
    .await;
    c.recv_mp().await;
    // The server-push layout: join_ref, topic, event, data. Its reply has no ref.
    let mut push = vec![0, 1, 6, 4];
    push.extend_from_slice(b"1echo:aechodata");
    c.send_binary(push).await;
    let mut expected = vec![1, 1, 0, 6, 2];
    expected.extend_from_slice(b"1echo:aokdata");
    assert_eq!(c.recv_binary().await, expected);
    // The V2 client layout (with a ref) is misread one byte off: join_ref "\u{4}", topic "1",
    // event "7echo:", and the ref "7" is never answered: the reply (unmatched topic) has none.
    let mut v2 = vec![0, 1, 1, 6, 4];
    v2.extend_from_slice(b"17echo:aechodata");
    c.send_binary(v2).await;
    let reply = c.recv_mp().await;
    assert_eq!(
        json(&Mp::Array(reply)),
        json!([null, null, "1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
}
