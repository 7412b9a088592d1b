//! A server that accepts the upgrade and then never reads: the client's outgoing buffer stays
//! within its limit; `push` waits for room (and fails when the socket stops), the `try_`
//! methods and `cast` fail with `OutgoingFull`, `cast_payload` counts what it drops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use phoenix_channels::{Payload, PushError, Socket};
use serde_json::json;
use tokio::net::TcpListener;

const LIMIT: usize = 64 << 10;

/// The bound on every wait (real time: these tests use a real TCP socket).
const T: Duration = Duration::from_secs(20);

/// Accepts one connection, answers the join of `topic`, then never reads again (the kernel's
/// buffers fill, then the client's writes stop being taken).
async fn stalling_server(topic: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        use futures_util::SinkExt as _;
        while let Some(Ok(message)) = ws.next().await {
            let text = message.into_text().unwrap();
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            if frame[2] == topic && frame[3] == "phx_join" {
                let reply = json!([frame[0], frame[1], topic, "phx_reply", {"status": "ok", "response": {}}]);
                ws.send(reply.to_string().into()).await.unwrap();
                break;
            }
        }
        // Never read again; keep the connection open.
        std::future::pending::<()>().await;
        drop(ws);
    });
    port
}

#[tokio::test]
async fn a_server_that_stops_reading_never_grows_the_client_past_its_limit() {
    let port = stalling_server("room:1").await;
    let socket = Socket::builder(format!("ws://127.0.0.1:{port}/socket"))
        .outgoing_limit(LIMIT)
        .connect()
        .unwrap();
    let (channel, _messages) = socket.channel("room:1").stream();
    tokio::time::timeout(T, channel.join())
        .await
        .unwrap()
        .unwrap();
    let kib = Payload::json(&"x".repeat(1024)).unwrap();
    // Cast until the connection stops taking them: the kernel's buffers take a few MiB, then
    // the room runs out and stays out, however long the socket task gets to run.
    let (mut sent, mut full_in_a_row) = (0u64, 0u32);
    while full_in_a_row < 2000 {
        match channel.try_cast_payload("flood", kib.clone()) {
            Ok(()) => {
                sent += 1;
                full_in_a_row = 0;
            }
            Err(PushError::OutgoingFull { limit }) => {
                assert_eq!(limit, LIMIT);
                full_in_a_row += 1;
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("{other}"),
        }
        assert!(socket.outgoing_queued() <= LIMIT);
        assert!(
            sent < 200_000,
            "200 MiB accepted: the buffer is not bounded"
        );
    }
    assert!(socket.outgoing_queued() > LIMIT / 2, "the buffer is full");
    // `cast` says so, `cast_payload` drops and counts, `try_push` fails at once.
    assert!(matches!(
        channel.cast("flood", "x"),
        Err(PushError::OutgoingFull { .. })
    ));
    channel.cast_payload("flood", kib.clone());
    channel.cast_payload("flood", kib.clone());
    assert_eq!(socket.dropped_casts(), 2);
    assert!(matches!(
        channel.try_push("p", json!({})),
        Err(PushError::OutgoingFull { .. })
    ));
    // `push` waits for room (its timeout, 10 s by default, runs meanwhile)...
    let mut waiting = channel.push("p", json!({}));
    for _ in 0..100 {
        tokio::task::yield_now().await;
        assert!((&mut waiting).now_or_never().is_none());
    }
    assert!(socket.outgoing_queued() <= LIMIT);
    assert!(socket.status().is_connected());
    // ... and fails when the socket stops.
    socket.disconnect().await;
    assert_eq!(
        tokio::time::timeout(T, waiting).await.unwrap(),
        Err(PushError::SocketClosed)
    );
}

#[tokio::test]
async fn a_push_waiting_for_room_times_out_on_its_own_timeout() {
    let port = stalling_server("room:2").await;
    let socket = Socket::builder(format!("ws://127.0.0.1:{port}/socket"))
        .outgoing_limit(LIMIT)
        .connect()
        .unwrap();
    let (channel, _messages) = socket.channel("room:2").stream();
    tokio::time::timeout(T, channel.join())
        .await
        .unwrap()
        .unwrap();
    let kib = Payload::json(&"x".repeat(1024)).unwrap();
    let mut full_in_a_row = 0;
    while full_in_a_row < 2000 {
        if channel.try_cast_payload("flood", kib.clone()).is_ok() {
            full_in_a_row = 0;
        } else {
            full_in_a_row += 1;
            tokio::task::yield_now().await;
        }
    }
    let push = channel.push_with(
        "p",
        Payload::empty(),
        phoenix_channels::PushOptions::new().timeout(Duration::from_millis(50)),
    );
    assert_eq!(
        tokio::time::timeout(T, push).await.unwrap(),
        Err(PushError::Timeout)
    );
}
