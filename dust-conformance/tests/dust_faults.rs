//! The Dust faults and controls: rate limit, lost or late write replies, device disconnect,
//! archive, reset, restart with state kept (in memory and from the state file).

mod common;

use std::time::{Duration, Instant};

use common::dust::{StoreClient, dust, dust_with, sync_url, write};
use common::{Client, QUIET};
use dust_conformance::dust::{DustConfig, RateLimit};
use serde_json::json;

const TOPIC: &str = "store:acme/app";

#[tokio::test]
async fn rate_limit_per_token_in_fixed_windows() {
    let d =
        dust_with(DustConfig::new().rate_limit(RateLimit::new(2, Duration::from_secs(60)))).await;
    let mut a = StoreClient::dev(&d.server, TOPIC).await;
    a.join_caught_up(json!(0)).await;
    let mut b = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", "store:acme/other").await;
    b.join_caught_up(json!(0)).await;
    a.set("k", json!(1), "1").await;
    // The window is per token, across connections and stores.
    b.set("k", json!(1), "2").await;
    let limited = json!({"reason": "rate_limited", "retry_after_ms": 60_000});
    assert_eq!(
        a.write_err(write("set", &["k"], json!(2), "3")).await,
        limited
    );
    let r = b
        .push(
            "put_file",
            json!({"path": "f", "content": "", "client_op_id": "4"}),
        )
        .await;
    assert_eq!(b.reply_to(&r).await["response"], limited);
    // A new window.
    d.clock.advance(Duration::from_secs(60));
    let (event, _) = a.set("k", json!(3), "5").await;
    assert_eq!(event["store_seq"], 2);
}

#[tokio::test]
async fn rate_limit_is_off_by_default() {
    let d = dust().await;
    let mut a = StoreClient::dev(&d.server, TOPIC).await;
    a.join_caught_up(json!(0)).await;
    for i in 0..150 {
        a.set("k", json!(i), &i.to_string()).await;
    }
}

#[tokio::test]
async fn the_next_write_reply_can_be_dropped() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    d.control.drop_next_write_reply();
    c.push("write", write("increment", &["n"], json!(1), "lost"))
        .await;
    // Applied and broadcast, but never acknowledged.
    assert_eq!(c.event().await["client_op_id"], "lost");
    c.c.assert_silent().await;
    assert_eq!(
        common::within("ops", d.control.ops("acme/app"))
            .await
            .unwrap()
            .len(),
        1
    );
    // Only that one.
    let (event, reply) = c
        .write_ok(write("increment", &["n"], json!(1), "next"))
        .await;
    assert_eq!(
        (event["value"].clone(), reply),
        (json!(2), json!({"store_seq": 2}))
    );
}

#[tokio::test]
async fn the_next_write_reply_can_be_delayed() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    d.control.delay_next_write_reply(Duration::from_millis(300));
    let started = Instant::now();
    let slow = c
        .push("write", write("set", &["a"], json!(1), "slow"))
        .await;
    assert_eq!(c.event().await["store_seq"], 1);
    // Other traffic is not held back: the next write is answered first.
    let (event, reply) = c.write_ok(write("set", &["b"], json!(1), "fast")).await;
    assert_eq!(
        (event["store_seq"].clone(), reply),
        (json!(2), json!({"store_seq": 2}))
    );
    assert_eq!(
        c.reply_to(&slow).await,
        json!({"status": "ok", "response": {"store_seq": 1}})
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn disconnect_every_socket_of_a_device() {
    let d = dust().await;
    let url = |device| sync_url(&d.server, "dust_tok_dev", device);
    let mut a1 = Client::connect(&url("dev_a")).await;
    let mut a2 = Client::connect(&url("dev_a")).await;
    let mut b = Client::connect(&url("dev_b")).await;
    assert_eq!(d.control.disconnect_device("dev_a"), 2);
    // Phoenix stops the socket with {:shutdown, :disconnected}: Bandit closes with 1011.
    assert_eq!(a1.recv_close().await, 1011);
    assert_eq!(a2.recv_close().await, 1011);
    b.send(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(b.recv_json().await[4]["status"], "ok");
    assert_eq!(d.control.disconnect_device("dev_nobody"), 0);
}

#[tokio::test]
async fn archive_closes_the_topics_and_refuses_writes() {
    let d = dust_with(DustConfig::new().store("acme/app")).await;
    let id = common::within("store_info", d.control.store_info("acme/app"))
        .await
        .unwrap()
        .id;
    let mut by_name = StoreClient::dev(&d.server, TOPIC).await;
    by_name.join_caught_up(json!(0)).await;
    let by_id_topic = format!("store:{id}");
    let mut by_id = StoreClient::dev(&d.server, &by_id_topic).await;
    by_id.join_caught_up(json!(0)).await;
    by_name.set("k", json!(1), "1").await;

    assert_eq!(
        common::within("archive", d.control.archive("acme/app"))
            .await
            .unwrap(),
        2
    );
    // A broadcast phx_close (null join_ref) on both topics; the server keeps the channels.
    assert_eq!(
        by_name.c.recv_json().await,
        json!([null, null, TOPIC, "phx_close", {}])
    );
    assert_eq!(
        by_id.c.recv_json().await,
        json!([null, null, by_id_topic, "phx_close", {}])
    );
    assert_eq!(
        by_name.write_err(write("set", &["k"], json!(2), "2")).await,
        json!({"reason": "store_archived"})
    );
    let r = by_id
        .push(
            "put_file",
            json!({"path": "f", "content": "", "client_op_id": "3"}),
        )
        .await;
    assert_eq!(
        by_id.reply_to(&r).await["response"],
        json!({"reason": "store_archived"})
    );
    // Joins by name: unauthorized (only active stores resolve by name); by UUID: still ok.
    let mut again = StoreClient::dev(&d.server, TOPIC).await;
    assert_eq!(
        again.join_with(json!({"last_store_seq": 0})).await,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );
    let mut again = StoreClient::dev(&d.server, &by_id_topic).await;
    let (events, through) = again.join_caught_up(json!(0)).await;
    assert_eq!((events.len(), through), (1, json!(1)));
    assert!(
        common::within("store_info", d.control.store_info("acme/app"))
            .await
            .unwrap()
            .archived
    );
}

#[tokio::test]
async fn reset_sends_the_seq_back_to_zero() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    for i in 0..3 {
        c.set("k", json!(i), &i.to_string()).await;
    }
    common::within("reset", d.control.reset("acme/app"))
        .await
        .unwrap();
    // The joined channel stays; the next write is seq 1 again.
    let (event, _) = c.set("k", json!(9), "after").await;
    assert_eq!(event["store_seq"], 1);
    // A client that knew seq 3 sees a store_seq below its own, and its own seq back.
    let mut late = StoreClient::dev(&d.server, TOPIC).await;
    assert_eq!(late.join(json!(3)).await["store_seq"], 1);
    let (events, through) = late.catch_up().await;
    assert_eq!((events.len(), through), (0, json!(3)));
    let ops = common::within("ops", d.control.ops("acme/app"))
        .await
        .unwrap();
    assert_eq!(ops.len(), 1);
}

#[tokio::test]
async fn restart_drops_connections_keeps_state_and_the_port() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.set("k", json!(1), "1").await;
    let port = d.server.local_addr().port();
    let restart = tokio::spawn({
        let control = d.control.clone();
        async move { control.restart(Duration::from_millis(300)).await }
    });
    c.c.expect_dropped().await;
    // During the downtime the port refuses connections.
    let refused = common::within(
        "connect",
        tokio::net::TcpStream::connect(d.server.local_addr()),
    )
    .await;
    assert!(refused.is_err(), "connected during the downtime");
    common::within("restart", restart).await.unwrap().unwrap();
    assert_eq!(d.server.local_addr().port(), port);
    assert_eq!(d.server.control().stats().restarts, 1);
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let response = c.join(json!(0)).await;
    assert_eq!(response["store_seq"], 1);
    let (events, _) = c.catch_up().await;
    assert_eq!(events[0][4]["client_op_id"], "1");
    // Writes go on from there.
    let (event, _) = c.set("k", json!(2), "2").await;
    assert_eq!(event["store_seq"], 2);
    c.c.assert_silent_for(QUIET / 3).await;
}

#[tokio::test]
async fn restart_reloads_the_state_file() {
    let dir = tempdir("restart");
    let state = dir.join("state.jsonl");
    let d = dust_with(DustConfig::new().state_file(&state)).await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.write_ok(write("set", &["a"], json!({"b": 1}), "1")).await;
    c.write_ok(write("increment", &["n"], json!(2), "2")).await;
    common::within("compact", d.control.compact("acme/app"))
        .await
        .unwrap();
    c.write_ok(write("add", &["s"], json!("x"), "3")).await;
    let before = common::within("entries", d.control.entries("acme/app"))
        .await
        .unwrap();
    common::within("restart", d.control.restart(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        common::within("entries", d.control.entries("acme/app"))
            .await
            .unwrap(),
        before
    );
    let info = common::within("store_info", d.control.store_info("acme/app"))
        .await
        .unwrap();
    assert_eq!((info.seq, info.ops, info.snapshot_seq), (3, 1, Some(2)));
    // A second server on the same file sees the same.
    drop(c);
    common::within("shutdown", d.server.shutdown()).await;
    let d2 = dust_with(DustConfig::new().state_file(&state)).await;
    assert_eq!(
        common::within("entries", d2.control.entries("acme/app"))
            .await
            .unwrap(),
        before
    );
    let mut c = StoreClient::dev(&d2.server, TOPIC).await;
    let (pushed, through) = c.join_caught_up(json!(0)).await;
    assert_eq!(pushed[0][3], "snapshot");
    assert_eq!(pushed[1][4]["value"], json!(["x"]));
    assert_eq!(through, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system temp dir.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dust-conformance-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn a_corrupt_state_file_is_a_start_error() {
    let dir = tempdir("corrupt");
    let state = dir.join("state.jsonl");
    std::fs::write(&state, "not a journal\n").expect("write");
    let config =
        dust_conformance::ServerConfig::default().dust(DustConfig::new().state_file(&state));
    let error = common::within("start", dust_conformance::start(config))
        .await
        .expect_err("a corrupt journal");
    assert!(
        matches!(&error, dust_conformance::StartError::State { path, .. } if path == &state),
        "{error}"
    );
    let config =
        dust_conformance::ServerConfig::default().dust(DustConfig::new().store("no-slash"));
    let error = common::within("start", dust_conformance::start(config))
        .await
        .expect_err("a bad store name");
    assert!(
        matches!(error, dust_conformance::StartError::Config(_)),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
