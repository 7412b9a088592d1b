//! `Control::serve_stream`: any byte stream is served like an accepted TCP connection, and
//! the protocol timers run on tokio's clock (these tests run under paused time).

mod common;

use std::time::Duration;

use common::dust::{StoreClient, dust, write};
use common::{Client, ok_reply, server, within};
use dust_conformance::ControlError;
use serde_json::json;

#[tokio::test(start_paused = true)]
async fn a_stream_is_upgraded_routed_and_served_like_tcp() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::over_stream(&control, "/socket/websocket?vsn=2.0.0&user=ada").await;
    c.joined("1", "echo:stream").await;
    let info = &control.connections()[0];
    assert_eq!(info.topics, ["echo:stream"]);
    assert_eq!(info.params.get("user").map(String::as_str), Some("ada"));
    c.send_json(json!([null, "2", "phoenix", "heartbeat", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!(null), json!("2"), "phoenix", json!({}))
    );
    // Faults apply as to a TCP connection.
    assert_eq!(control.crash_channel("echo:stream"), 1);
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:stream", "phx_error", {}])
    );
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_runs_on_tokio_time() {
    let server = server().await;
    let control = server.control();
    control.set_idle_timeout(Duration::from_secs(3));
    let mut c = Client::over_stream(&control, "/socket/websocket?vsn=2.0.0").await;
    c.joined("1", "echo:idle").await;
    let start = tokio::time::Instant::now();
    // Paused time advances to the idle deadline at once (`recv_close` waits at most 5 s).
    assert_eq!(c.recv_close().await, 1000);
    assert!(start.elapsed() >= Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_path_is_refused_with_404() {
    let server = server().await;
    let (client, server_side) = tokio::io::duplex(4096);
    server.control().serve_stream(server_side).unwrap();
    let result = within(
        "connect",
        tokio_tungstenite::client_async("ws://in-memory/nowhere/websocket", client),
    )
    .await;
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn dust_writes_over_a_stream() {
    let d = dust().await;
    let mut a = StoreClient::over_stream(&d.server, "dust_tok_dev", "dev_a", "store:acme/s").await;
    a.join_caught_up(json!(0)).await;
    let (event, reply) = a.write_ok(write("set", &["k"], json!(1), "op1")).await;
    assert_eq!(event["store_seq"], 1);
    assert_eq!(reply["store_seq"], 1);
    assert_eq!(d.control.client_op_ids("acme/s").await.unwrap(), ["op1"]);
}

#[tokio::test]
async fn a_stopped_server_refuses_streams() {
    let server = server().await;
    let control = server.control();
    server.shutdown().await;
    let (_client, server_side) = tokio::io::duplex(4096);
    assert_eq!(
        control.serve_stream(server_side),
        Err(ControlError::Stopped)
    );
}
