//! A dead connection's writes, as on the real server: its channel works through every write
//! it had received (one at a time, at the write cost), committing and broadcasting each one
//! to the topic's joiners (the same device's new connection included), then terminates.
//! These tests run under paused time over in-memory streams.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::dust::{StoreClient, dust, write};
use common::within;
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::time::Instant;

const TOPIC: &str = "store:acme/s";
const STORE: &str = "acme/s";

fn op_id(i: u64) -> String {
    format!("op{i}")
}

/// Connects as `dev_a`, joins, and pushes `n` writes `op0..op{n-1}`; then a heartbeat, whose
/// reply (read past the writes' events and replies) shows every push was read. Returns the
/// client and how long the heartbeat reply took.
async fn push_writes(d: &common::dust::Dust, n: u64) -> (StoreClient<DuplexStream>, Duration) {
    let mut a = StoreClient::over_stream(&d.server, "dust_tok_dev", "dev_a", TOPIC).await;
    a.join_caught_up(json!(0)).await;
    let start = Instant::now();
    for i in 0..n {
        let key = format!("k{i}");
        a.push("write", write("set", &[&key], json!(i), &op_id(i)))
            .await;
    }
    a.c.send_json(json!([null, "hb", "phoenix", "heartbeat", {}]))
        .await;
    loop {
        let frame = a.c.recv_json().await;
        if frame[1] == "hb" {
            assert_eq!(frame[4]["status"], "ok", "{frame}");
            break;
        }
    }
    (a, start.elapsed())
}

/// Drops the only open connection.
fn cut(d: &common::dust::Dust) {
    let control = d.server.control();
    let connections = control.connections();
    assert_eq!(connections.len(), 1);
    control.drop_connection(connections[0].id).expect("drop");
}

/// Waits until the cut connection is gone (its channel then drains, counted as such), then
/// until no channel is draining.
async fn drained(d: &common::dust::Dust) -> dust_conformance::ServerStats {
    let control = d.server.control();
    within(
        "the cut",
        control.wait_for_stats(|s| s.open_connections == 0),
    )
    .await;
    within(
        "the drain",
        control.wait_for_stats(|s| s.draining_channels == 0),
    )
    .await
}

fn expected_ids(n: u64) -> Vec<String> {
    (0..n).map(op_id).collect()
}

#[tokio::test(start_paused = true)]
async fn a_cut_connections_writes_are_committed_once_in_order_and_reach_the_new_join_live() {
    const N: u64 = 1000;
    let d = dust().await;
    d.control.set_write_cost(Duration::from_millis(1));
    let (a, heartbeat) = push_writes(&d, N).await;
    // The socket answers heartbeats at once, however busy the channel is.
    assert!(
        heartbeat < Duration::from_millis(100),
        "the heartbeat waited {heartbeat:?} behind the writes"
    );
    let applied_at_cut = d.control.store_info(STORE).await.unwrap().seq;
    assert!(
        applied_at_cut < N / 2,
        "{applied_at_cut} writes applied before the cut"
    );
    cut(&d);
    drop(a);

    // The same device again, from scratch.
    let mut b = StoreClient::over_stream(&d.server, "dust_tok_dev", "dev_a", TOPIC).await;
    b.join(json!(0)).await;
    let mut before_complete = BTreeSet::new();
    let through = loop {
        let frame = b.c.recv_json().await;
        match frame[3].as_str() {
            Some("catch_up_complete") => break frame[4]["through_seq"].as_u64().unwrap(),
            Some("event") => {
                before_complete.insert(frame[4]["store_seq"].as_u64().unwrap());
            }
            _ => panic!("unexpected frame during the catch-up: {frame}"),
        }
    };
    assert_eq!(
        before_complete,
        (1..=through).collect::<BTreeSet<_>>(),
        "the catch-up covers 1..={through}"
    );
    assert!(through < N, "the catch-up already held every write");
    // The rest of A's writes arrive afterwards, as live events, each once and in order.
    for seq in through + 1..=N {
        let frame = b.c.recv_json().await;
        assert_eq!(
            frame,
            json!([null, null, TOPIC, "event", frame[4]]),
            "a live event"
        );
        let event = &frame[4];
        assert_eq!(event["store_seq"], seq, "{event}");
        assert_eq!(event["client_op_id"], op_id(seq - 1), "{event}");
        assert_eq!(event["device_id"], "dev_a");
    }
    b.c.assert_silent().await;
    let stats = within(
        "the drain",
        d.server
            .control()
            .wait_for_stats(|s| s.draining_channels == 0),
    )
    .await;
    assert_eq!(stats.drain_dropped, 0);
    assert_eq!(
        d.control.client_op_ids(STORE).await.unwrap(),
        expected_ids(N)
    );
}

#[tokio::test(start_paused = true)]
async fn the_drain_limit_drops_the_rest_and_counts_it() {
    const N: u64 = 100;
    let d = dust().await;
    d.control.set_write_cost(Duration::from_millis(10));
    d.control.set_drain_limit(Some(Duration::from_millis(200)));
    let (a, _) = push_writes(&d, N).await;
    cut(&d);
    drop(a);
    let stats = drained(&d).await;
    let applied = d.control.client_op_ids(STORE).await.unwrap();
    let n = applied.len() as u64;
    assert!(n > 0 && n < N, "{n} writes applied");
    assert_eq!(applied, expected_ids(n), "a prefix, in order");
    assert_eq!(
        stats.drain_dropped,
        N - n,
        "every write not applied is counted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_ends_the_drain_at_once() {
    const N: u64 = 100;
    let d = dust().await;
    d.control.set_write_cost(Duration::from_millis(10));
    let (a, _) = push_writes(&d, N).await;
    cut(&d);
    drop(a);
    let control = d.server.control();
    within(
        "the drain",
        control.wait_for_stats(|s| s.open_connections == 0 && s.draining_channels == 1),
    )
    .await;
    within("restart", d.control.restart(Duration::ZERO))
        .await
        .unwrap();
    // The restart returns once the drain has ended.
    let stats = control.stats();
    assert_eq!(stats.draining_channels, 0);
    let n = d.control.client_op_ids(STORE).await.unwrap().len() as u64;
    assert!(n < N, "the drain went on after the restart");
    assert_eq!(stats.drain_dropped, N - n);
    // Nothing more is applied later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        d.control.client_op_ids(STORE).await.unwrap().len() as u64,
        n
    );
}

#[tokio::test(start_paused = true)]
async fn writes_of_one_channel_commit_one_at_a_time_at_the_write_cost() {
    const N: u64 = 20;
    let d = dust().await;
    d.control.set_write_cost(Duration::from_millis(50));
    let mut a = StoreClient::over_stream(&d.server, "dust_tok_dev", "dev_a", TOPIC).await;
    a.join_caught_up(json!(0)).await;
    let start = Instant::now();
    let mut refs = Vec::new();
    for i in 0..N {
        let key = format!("k{i}");
        refs.push(
            a.push("write", write("set", &[&key], json!(i), &op_id(i)))
                .await,
        );
    }
    let mut times = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let event: Value = a.event().await;
        assert_eq!(event["client_op_id"], op_id(i as u64));
        assert_eq!(a.reply_to(r).await["status"], "ok");
        times.push(start.elapsed());
    }
    // Serial: the k-th write is done no earlier than k costs after the pushes.
    for (k, t) in times.iter().enumerate() {
        assert!(
            *t >= Duration::from_millis(50) * (k as u32 + 1),
            "write {k} done at {t:?}"
        );
    }
    assert_eq!(
        d.control.client_op_ids(STORE).await.unwrap(),
        expected_ids(N)
    );
}
