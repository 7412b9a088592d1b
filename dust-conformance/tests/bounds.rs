//! The server's bounds: each connection's outbound queue (a client that never reads, a stalled
//! connection) and the number of open connections.

mod common;

use common::{Client, refused_status, server_with, within};
use dust_conformance::ServerConfig;
use serde_json::json;

const LIMIT: usize = 32 << 10;

fn kib_payload(i: usize) -> serde_json::Value {
    json!({"i": i, "pad": "x".repeat(1024)})
}

/// Broadcasts 1 KiB messages until one does not reach the topic's only joiner; returns how
/// many did.
fn broadcast_until_refused(control: &dust_conformance::Control, topic: &str) -> usize {
    (0..10 * LIMIT / 1024)
        .take_while(|i| control.broadcast(topic, "big", kib_payload(*i)) == 1)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_dropped_as_a_slow_client() {
    let server = server_with(ServerConfig::default().max_outbound_bytes(LIMIT)).await;
    let control = server.control();
    // A small in-memory pipe: the server's writes block as soon as 4 KiB are unread.
    let (client, server_side) = tokio::io::duplex(4096);
    control.serve_stream(server_side).unwrap();
    let (ws, _) = within(
        "connect",
        tokio_tungstenite::client_async("ws://in-memory/socket/websocket?vsn=2.0.0", client),
    )
    .await
    .unwrap();
    let mut c = Client { ws };
    c.joined("1", "echo:slow").await;
    // The client reads nothing from now on.
    let sent = broadcast_until_refused(&control, "echo:slow");
    assert!(sent >= LIMIT / 1100, "only {sent} queued");
    assert!(
        sent < 2 * LIMIT / 1024,
        "{sent} queued: the bound did not hold"
    );
    let stats = within(
        "the drop",
        control.wait_for_stats(|s| s.open_connections == 0),
    )
    .await;
    assert_eq!(stats.slow_clients_dropped, 1);
    // Its channel is gone too: nothing holds its queue any more.
    within(
        "the channel's end",
        control.wait_for_stats(|s| s.draining_channels == 0),
    )
    .await;
    assert_eq!(control.broadcast("echo:slow", "big", kib_payload(0)), 0);
}

#[tokio::test]
async fn a_stalled_connection_is_bounded_too() {
    let server = server_with(ServerConfig::default().max_outbound_bytes(LIMIT)).await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:stalled").await;
    let id = control.connections()[0].id;
    control.stall(id).unwrap();
    let mut sent = 0;
    while control.broadcast("echo:stalled", "big", kib_payload(sent)) == 1 {
        sent += 1;
        let queued = control.connection(id).map_or(0, |c| c.queued_bytes);
        assert!(queued <= LIMIT as u64, "{queued} bytes queued");
        assert!(sent < 2 * LIMIT / 1024, "the bound did not hold");
    }
    let stats = within(
        "the drop",
        control.wait_for_stats(|s| s.open_connections == 0),
    )
    .await;
    assert_eq!(stats.slow_clients_dropped, 1);
    c.expect_dropped().await;
}

#[tokio::test]
async fn a_client_that_reads_is_never_dropped() {
    let server = server_with(ServerConfig::default().max_outbound_bytes(LIMIT)).await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    c.joined("1", "echo:reader").await;
    // Ten times the bound in total, read as it comes.
    for i in 0..10 * LIMIT / 1024 {
        assert_eq!(control.broadcast("echo:reader", "big", kib_payload(i)), 1);
        assert_eq!(c.recv_json().await[4]["i"], i);
    }
    assert_eq!(control.stats().slow_clients_dropped, 0);
}

#[tokio::test]
async fn the_connection_cap_refuses_upgrades_with_503() {
    let server = server_with(ServerConfig::default().max_connections(2)).await;
    let control = server.control();
    let url = server.websocket_url("/socket");
    let a = Client::connect(&url).await;
    let _b = Client::connect(&url).await;
    assert_eq!(refused_status(&url).await, 503);
    assert_eq!(control.stats().connects_over_capacity, 1);
    assert_eq!(control.stats().open_connections, 2);
    drop(a);
    within(
        "a slot",
        control.wait_for_stats(|s| s.open_connections == 1),
    )
    .await;
    let _c = Client::connect(&url).await;
    assert_eq!(control.stats().connects_over_capacity, 1);
}

#[tokio::test]
async fn bound_flags() {
    let mut p = common::process::ServerProcess::start(&[
        "--control-stdin",
        "--max-connections",
        "1",
        "--max-outbound-bytes",
        "20000",
    ])
    .await;
    let url = format!("{}/socket/websocket?vsn=2.0.0", p.base);
    let mut a = Client::connect(&url).await;
    a.joined("1", "echo:flags").await;
    assert_eq!(refused_status(&url).await, 503);
    let connections = p.command(json!({"cmd": "connections"})).await;
    let id = connections["connections"][0]["id"].clone();
    assert_eq!(
        p.command(json!({"cmd": "stall", "id": id})).await,
        json!({"ok": true})
    );
    let mut reached = 0;
    for i in 0..40 {
        let answer = p
            .command(
                json!({"cmd": "broadcast", "topic": "echo:flags", "event": "big",
                "payload": kib_payload(i)}),
            )
            .await;
        reached += answer["count"].as_u64().unwrap();
    }
    assert!(reached < 20, "{reached} queued beyond 20000 bytes");
    let waited = p
        .command(json!({"cmd": "wait", "stat": "slow_clients_dropped", "at_least": 1}))
        .await;
    assert_eq!(waited["ok"], true, "{waited}");
}
