//! The `dust-conformance-server` binary and its stdin control protocol.

mod common;

use std::process::Stdio;

use common::process::ServerProcess;
use common::{Client, ok_reply, refused_status, within};
use serde_json::{Value, json};
use tokio::process::Command;

/// The echo socket's websocket URL of a running server.
fn websocket_url(p: &ServerProcess) -> String {
    format!("{}/websocket?vsn=2.0.0", p.socket_url())
}

#[tokio::test]
async fn prints_the_url_and_answers_control_commands() {
    let mut p = ServerProcess::start(&["--control-stdin"]).await;
    let mut c = Client::connect(&format!("{}&token=x", websocket_url(&p))).await;
    c.joined("1", "echo:cli").await;

    let answer = p.command(json!({"tag": 1, "cmd": "connections"})).await;
    assert_eq!(answer["tag"], 1);
    assert_eq!(answer["ok"], true);
    let conns = answer["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["params"]["token"], "x");
    assert_eq!(conns[0]["topics"], json!(["echo:cli"]));
    assert_eq!(conns[0]["protocol"], "2.0.0");
    let id = conns[0]["id"].clone();

    let answer = p.command(json!({"tag": "b", "cmd": "broadcast", "topic": "echo:cli", "event": "ev", "payload": {"k": 1}})).await;
    assert_eq!(answer, json!({"tag": "b", "ok": true, "count": 1}));
    assert_eq!(
        c.recv_json().await,
        json!([null, null, "echo:cli", "ev", {"k": 1}])
    );

    let answer = p
        .command(json!({"cmd": "send_raw", "id": id, "binary_base64": "AQID"}))
        .await;
    assert_eq!(answer, json!({"ok": true}));
    assert_eq!(c.recv_binary().await, vec![1, 2, 3]);

    let answer = p
        .command(json!({"cmd": "crash", "topic": "echo:cli"}))
        .await;
    assert_eq!(answer, json!({"ok": true, "count": 1}));
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "echo:cli", "phx_error", {}])
    );

    let answer = p.command(json!({"cmd": "stall", "id": id})).await;
    assert_eq!(answer, json!({"ok": true}));
    c.send(r#"[null,"2","phoenix","heartbeat",{}]"#).await;
    c.assert_silent().await;
    assert_eq!(
        p.command(json!({"cmd": "unstall_all"})).await,
        json!({"ok": true, "count": 1})
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("2"), "phoenix", json!({}))
    );

    let answer = p
        .command(json!({"cmd": "refuse_connects", "on": true}))
        .await;
    assert_eq!(answer, json!({"ok": true}));
    assert_eq!(refused_status(&websocket_url(&p)).await, 403);
    let answer = p
        .command(
            json!({"cmd": "wait", "stat": "connects_refused", "at_least": 1, "timeout_ms": 2000}),
        )
        .await;
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["stats"]["connects_refused"], 1);
    p.command(json!({"cmd": "refuse_connects", "on": false}))
        .await;

    let answer = p.command(json!({"cmd": "drop_all"})).await;
    assert_eq!(answer, json!({"ok": true, "count": 1}));
    c.expect_dropped().await;

    let answer = p.command(json!({"tag": 9, "cmd": "drop", "id": 9})).await;
    assert_eq!(answer["tag"], 9);
    assert_eq!(answer["ok"], false, "{answer}");
    let answer = p.command(json!({"tag": [1], "cmd": "nope"})).await;
    assert_eq!(answer["tag"], json!([1]));
    assert_eq!(answer["ok"], false);
    let answer = p
        .command(json!({"cmd": "wait", "stat": "nope", "at_least": 1}))
        .await;
    assert_eq!(answer["ok"], false);
    let answer = p
        .command(json!({"cmd": "wait", "stat": "joins", "at_least": 99, "timeout_ms": 50}))
        .await;
    assert_eq!(answer["ok"], false);
    assert!(answer["error"].as_str().unwrap().contains("timed out"));

    let answer = p.command(json!({"cmd": "shutdown"})).await;
    assert_eq!(answer, json!({"ok": true}));
    let status = within("exit", p.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn stops_when_stdin_closes() {
    let mut p = ServerProcess::start(&["--control-stdin", "--listen", "127.0.0.1:0"]).await;
    let mut c = Client::connect(&websocket_url(&p)).await;
    p.close_stdin();
    // Shutting down closes connections with 1001.
    assert_eq!(c.recv_close().await, 1001);
    let status = within("exit", p.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn idle_timeout_flag() {
    let p = ServerProcess::start(&["--idle-timeout-ms", "200"]).await;
    let mut c = Client::connect(&websocket_url(&p)).await;
    assert_eq!(c.recv_close().await, 1000);
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let status = within(
        "exit",
        Command::new(env!("CARGO_BIN_EXE_dust-conformance-server"))
            .arg("--listen")
            .arg("not-an-address")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
    )
    .await
    .unwrap();
    assert_eq!(status.code(), Some(2));
}
