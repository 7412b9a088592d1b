//! The crash faults: a write that crashes its store channel (`phx_error`, no reply, not
//! applied), as the real server's channel crashes on some writes.

mod common;

use common::dust::{StoreClient, dust, write};
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/crash";
const STORE: &str = "acme/crash";

/// The next frame must be the channel's `phx_error`.
async fn expect_phx_error(c: &mut StoreClient) {
    let frame = c.c.recv_json().await;
    assert_eq!(
        frame,
        json!([c.join_ref, c.join_ref, TOPIC, "phx_error", {}]),
        "expected phx_error"
    );
}

fn put(path: &str, op_id: &str) -> Value {
    json!({"path": path, "content": "aGVsbG8=", "client_op_id": op_id})
}

#[tokio::test]
async fn crash_next_write_crashes_the_channel_without_applying_it() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.set("a", json!(1), "op1").await;
    d.control.crash_next_write();
    c.push("write", write("set", &["b"], json!(2), "crashing"))
        .await;
    expect_phx_error(&mut c).await;
    c.c.assert_silent().await;
    assert_eq!(d.control.client_op_ids(STORE).await.unwrap(), ["op1"]);
    // Only that one: a new join writes again.
    c.join_caught_up(json!(1)).await;
    c.set("b", json!(2), "op2").await;
    assert_eq!(
        d.control.client_op_ids(STORE).await.unwrap(),
        ["op1", "op2"]
    );
}

#[tokio::test]
async fn crash_next_write_applies_to_put_file_too() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    d.control.crash_next_write();
    c.push("put_file", put("files/f", "f1")).await;
    expect_phx_error(&mut c).await;
    c.c.assert_silent().await;
    assert!(d.control.ops(STORE).await.unwrap().is_empty());
    assert!(d.control.entries(STORE).await.unwrap().is_empty());
}

#[tokio::test]
async fn crash_writes_at_a_path_and_below_until_cleared() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    d.control.crash_writes_at(Some("files"));
    // Beside the path: applied (a sibling that only shares the prefix too).
    c.write_ok(write("set", &["filesystem"], json!(1), "op1"))
        .await;
    c.write_ok(write("set", &["other", "files"], json!(1), "op2"))
        .await;
    // Below it: every time.
    c.push("put_file", put("files/f", "crash1")).await;
    expect_phx_error(&mut c).await;
    c.join_caught_up(json!(2)).await;
    c.push(
        "write",
        write("set", &["files", "x", "y"], json!(1), "crash2"),
    )
    .await;
    expect_phx_error(&mut c).await;
    // The path itself.
    c.join_caught_up(json!(2)).await;
    c.push("write", write("delete", &["files"], Value::Null, "crash3"))
        .await;
    expect_phx_error(&mut c).await;
    c.c.assert_silent().await;
    d.control.crash_writes_at(None);
    c.join_caught_up(json!(2)).await;
    c.write_ok(write("set", &["files", "x"], json!(1), "op3"))
        .await;
    assert_eq!(
        d.control.client_op_ids(STORE).await.unwrap(),
        ["op1", "op2", "op3"]
    );
}

#[tokio::test]
async fn crash_commands_arm_the_faults() {
    let d = dust().await;
    let control = d.server.control();
    let run = |line: &'static str| {
        let control = control.clone();
        async move {
            dust_conformance::command::execute_line(&control, line)
                .await
                .json
        }
    };
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    assert_eq!(
        run(r#"{"cmd": "crash_writes_at", "path": "p"}"#).await,
        json!({"ok": true})
    );
    c.push("write", write("set", &["p", "q"], json!(1), "crash1"))
        .await;
    expect_phx_error(&mut c).await;
    assert_eq!(
        run(r#"{"cmd": "crash_writes_at", "path": null}"#).await,
        json!({"ok": true})
    );
    assert_eq!(
        run(r#"{"cmd": "crash_next_write"}"#).await,
        json!({"ok": true})
    );
    c.join_caught_up(json!(0)).await;
    c.push("write", write("set", &["p", "q"], json!(1), "crash2"))
        .await;
    expect_phx_error(&mut c).await;
    c.join_caught_up(json!(0)).await;
    c.write_ok(write("set", &["p", "q"], json!(1), "op1")).await;
    assert_eq!(d.control.client_op_ids(STORE).await.unwrap(), ["op1"]);
}
