//! The binary with the Dust flags: tokens, stores, rate limit, plan, state file and SIGKILL
//! durability, and the Dust control commands on stdin.

mod common;

use std::process::Stdio;

use common::dust::{StoreClient, write};
use common::process::ServerProcess;
use common::{refused_status, within};
use serde_json::json;
use tokio::process::Command;

fn sync_url(p: &ServerProcess, token: &str, device: &str) -> String {
    format!(
        "{}/ws/sync/websocket?vsn=2.0.0&token={token}&device_id={device}&capver=3",
        p.base
    )
}

async fn client(p: &ServerProcess, token: &str, topic: &str) -> StoreClient {
    let c = common::Client::connect(&sync_url(p, token, "dev_cli")).await;
    StoreClient::from_client(c, topic)
}

fn state_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dust-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("state.jsonl")
}

#[tokio::test]
async fn token_flags_scopes_and_access() {
    let p = ServerProcess::start(&[
        "--token",
        "dust_tok_ro:entries:read,stores:read@acme/app",
        "--token",
        "dust_tok_org@acme",
        "--store",
        "other/x",
        "--no-auto-create",
    ])
    .await;
    assert_eq!(
        refused_status(&sync_url(&p, "dust_tok_nope", "d")).await,
        403
    );
    let mut ro = client(&p, "dust_tok_ro", "store:acme/app").await;
    let response = ro.join(json!(0)).await;
    assert_eq!(response["scopes"], json!(["entries:read", "stores:read"]));
    assert_eq!(
        response["permissions"],
        json!({"read": true, "write": false})
    );
    assert_eq!(response["store_access"]["mode"], "selected");
    let mut org = client(&p, "dust_tok_org", "store:other/x").await;
    assert_eq!(
        org.join_with(json!({"last_store_seq": 0})).await["response"]["reason"],
        "store_not_allowed"
    );
    // --no-auto-create: an unknown store of the token's own org is unauthorized.
    org.topic = "store:acme/new".into();
    assert_eq!(
        org.join_with(json!({"last_store_seq": 0})).await["response"]["reason"],
        "unauthorized"
    );
}

#[tokio::test]
async fn bad_dust_flags_exit_2() {
    for args in [
        &["--token", "nope"][..],
        &["--token", "dust_tok_x:entries:reed"],
        &["--token", "dust_tok_x@"],
        &["--rate-limit", "10"],
        &["--rate-limit", "10/hour"],
        &["--plan", "gold"],
        &["--store", "Not A Store"],
    ] {
        let status = within(
            "exit",
            Command::new(env!("CARGO_BIN_EXE_dust-conformance-server"))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await
        .unwrap();
        // A malformed store name is a start failure (1); everything else a usage error (2).
        let expected = if args[0] == "--store" { 1 } else { 2 };
        assert_eq!(status.code(), Some(expected), "{args:?}");
    }
}

#[tokio::test]
async fn rate_limit_and_plan_flags() {
    let p = ServerProcess::start(&[
        "--token",
        "dust_tok_dev",
        "--rate-limit",
        "2/min",
        "--plan",
        "free",
    ])
    .await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    c.join_caught_up(json!(0)).await;
    c.set("a", json!(1), "1").await;
    c.set("b", json!(1), "2").await;
    assert_eq!(
        c.write_err(write("set", &["c"], json!(1), "3")).await,
        json!({"reason": "rate_limited", "retry_after_ms": 60000})
    );
}

#[tokio::test]
async fn dust_control_commands() {
    let mut p = ServerProcess::start(&[
        "--control-stdin",
        "--token",
        "dust_tok_dev",
        "--store",
        "acme/app",
    ])
    .await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    c.join_caught_up(json!(0)).await;
    c.set("k", json!(1), "op_1").await;

    let stores = p.command(json!({"cmd": "stores"})).await;
    assert_eq!(stores["stores"][0]["name"], "acme/app");
    assert_eq!(stores["stores"][0]["seq"], 1);
    let ops = p.command(json!({"cmd": "ops", "store": "acme/app"})).await;
    assert_eq!(
        (
            &ops["ops"][0]["seq"],
            &ops["ops"][0]["client_op_id"],
            &ops["ops"][0]["device_id"]
        ),
        (&json!(1), &json!("op_1"), &json!("dev_cli"))
    );
    let entries = p
        .command(json!({"cmd": "entries", "store": "acme/app"}))
        .await;
    assert_eq!(
        entries["entries"],
        json!([{"path": "k", "value": 1, "type": "integer", "revision": 1}])
    );
    assert_eq!(
        p.command(json!({"cmd": "compact", "store": "acme/app"}))
            .await,
        json!({"ok": true, "snapshot_seq": 1})
    );
    assert_eq!(
        p.command(json!({"cmd": "drop_next_write_reply"})).await,
        json!({"ok": true})
    );
    c.push("write", write("set", &["k"], json!(2), "lost"))
        .await;
    assert_eq!(c.event().await["store_seq"], 2);
    c.c.assert_silent().await;
    let acks = p.command(json!({"cmd": "acks", "store": "acme/app"})).await;
    assert_eq!(acks, json!({"ok": true, "acks": {}}));
    assert_eq!(
        p.command(json!({"cmd": "disconnect_device", "device_id": "dev_cli"}))
            .await,
        json!({"ok": true, "count": 1})
    );
    assert_eq!(c.c.recv_close().await, 1011);
    assert_eq!(
        p.command(json!({"cmd": "reset_store", "store": "acme/app"}))
            .await,
        json!({"ok": true})
    );
    assert_eq!(
        p.command(json!({"cmd": "archive_store", "store": "acme/app"}))
            .await,
        json!({"ok": true, "count": 0})
    );
    let stores = p.command(json!({"cmd": "stores"})).await;
    assert_eq!(
        (
            &stores["stores"][0]["seq"],
            &stores["stores"][0]["archived"]
        ),
        (&json!(0), &json!(true))
    );
    let answer = p.command(json!({"cmd": "ops", "store": "nope/x"})).await;
    assert_eq!(answer["ok"], false);
    assert_eq!(
        p.command(json!({"cmd": "restart", "downtime_ms": 10}))
            .await,
        json!({"ok": true})
    );
    let devices = p.command(json!({"cmd": "devices"})).await;
    assert!(devices["devices"]["dev_cli"].is_string());
    assert_eq!(
        p.command(json!({"cmd": "shutdown"})).await,
        json!({"ok": true})
    );
    let status = within("exit", p.child.wait()).await.unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_write() {
    let state = state_file("sigkill");
    let state_arg = state.to_str().expect("utf-8 path");
    let args = ["--token", "dust_tok_dev", "--state", state_arg];
    let p = ServerProcess::start(&args).await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    c.join_caught_up(json!(0)).await;
    // 300 increments sent at once; SIGKILL as soon as 100 are acknowledged, while the rest
    // are in flight.
    for i in 0..300 {
        c.push(
            "write",
            write("increment", &["n"], json!(1), &format!("op_{i}")),
        )
        .await;
    }
    let mut acked = Vec::new();
    while acked.len() < 100 {
        let frame = c.c.recv_json().await;
        if frame[3] == "phx_reply" {
            assert_eq!(frame[4]["status"], "ok");
            acked.push(frame[4]["response"]["store_seq"].as_u64().expect("a seq"));
        }
    }
    p.kill9().await;

    let p = ServerProcess::start(&args).await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    let seq = c.join(json!(0)).await["store_seq"].as_u64().expect("a seq");
    let (events, _) = c.catch_up().await;
    // Every acknowledged write is there, and what is there is a prefix of what was sent,
    // each applied once, in order.
    assert!(seq >= 100, "only {seq} writes survived");
    eprintln!("{seq} of 300 writes survived the SIGKILL; 100 were acknowledged");
    assert_eq!(acked, (1..=100).collect::<Vec<_>>());
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e[4]["client_op_id"].as_str().unwrap())
        .collect();
    let sent: Vec<String> = (0..seq).map(|i| format!("op_{i}")).collect();
    assert_eq!(ids, sent);
    assert_eq!(events.last().unwrap()[4]["value"], json!(seq));
    // Writes continue from there.
    let (event, _) = c
        .write_ok(write("increment", &["n"], json!(1), "after"))
        .await;
    assert_eq!(event["store_seq"], seq + 1);
    let _ = std::fs::remove_dir_all(state.parent().expect("a dir"));
}

#[tokio::test]
async fn write_cost_and_drain_limit_flags_and_commands() {
    const N: u64 = 30;
    let mut p = ServerProcess::start(&[
        "--control-stdin",
        "--token",
        "dust_tok_dev",
        "--store",
        "acme/app",
        "--write-cost-ms",
        "20",
        "--drain-limit-ms",
        "100",
    ])
    .await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    c.join_caught_up(json!(0)).await;
    for i in 0..N {
        c.push("write", write("set", &["k"], json!(i), &format!("op{i}")))
            .await;
    }
    c.c.send_json(json!([null, "hb", "phoenix", "heartbeat", {}]))
        .await;
    while c.c.recv_json().await[1] != "hb" {}
    let connections = p.command(json!({"cmd": "connections"})).await;
    let id = connections["connections"][0]["id"].clone();
    assert_eq!(
        p.command(json!({"cmd": "drop", "id": id})).await,
        json!({"ok": true})
    );
    // 20 ms a write, cut after 100 ms: most of the backlog is dropped, and counted.
    let waited = p
        .command(json!({"cmd": "wait", "stat": "drain_dropped", "at_least": 1}))
        .await;
    assert_eq!(waited["ok"], true, "{waited}");
    let dropped = waited["stats"]["drain_dropped"].as_u64().unwrap();
    let ops = p.command(json!({"cmd": "ops", "store": "acme/app"})).await;
    let applied = ops["ops"].as_array().unwrap().len() as u64;
    assert!(applied < N, "{applied} applied");
    assert_eq!(applied + dropped, N);
    assert_eq!(
        p.command(json!({"cmd": "write_cost", "ms": 0})).await,
        json!({"ok": true})
    );
    assert_eq!(
        p.command(json!({"cmd": "drain_limit", "ms": null})).await,
        json!({"ok": true})
    );
}

#[tokio::test]
async fn write_cost_and_drain_limit_commands_set_the_controls() {
    let server = common::server_with(
        dust_conformance::ServerConfig::default().dust(dust_conformance::dust::DustConfig::new()),
    )
    .await;
    let control = server.control();
    let dust = server.dust().unwrap();
    let run = |line: &'static str| {
        let control = control.clone();
        async move {
            dust_conformance::command::execute_line(&control, line)
                .await
                .json
        }
    };
    assert_eq!(
        run(r#"{"cmd": "write_cost", "ms": 7}"#).await,
        json!({"ok": true})
    );
    assert_eq!(dust.write_cost(), std::time::Duration::from_millis(7));
    assert_eq!(
        run(r#"{"cmd": "drain_limit", "ms": 250}"#).await,
        json!({"ok": true})
    );
    assert_eq!(
        control.drain_limit(),
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(run(r#"{"cmd": "drain_limit"}"#).await, json!({"ok": true}));
    assert_eq!(control.drain_limit(), None);
}

#[tokio::test]
async fn crash_writes_at_flag() {
    let p = ServerProcess::start(&["--token", "dust_tok_dev", "--crash-writes-at", "files"]).await;
    let mut c = client(&p, "dust_tok_dev", "store:acme/app").await;
    c.join_caught_up(json!(0)).await;
    c.set("other", json!(1), "op1").await;
    c.push("write", write("set", &["files", "a"], json!(1), "crash"))
        .await;
    assert_eq!(
        c.c.recv_json().await,
        json!([c.join_ref, c.join_ref, "store:acme/app", "phx_error", {}])
    );
}
