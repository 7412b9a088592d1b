//! The `dust` tool against the embedded Dust emulation, driven in-process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{find, script};
use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use examples::dust::{Options, run};
use serde_json::{Value, json};

async fn dust(url: String, commands: &[Value]) -> Vec<Value> {
    let args = [
        "--url",
        &url,
        "--token",
        "dust_tok_t",
        "--store",
        "acme/app",
        "--store",
        "acme/two",
        "--device-id",
        "dev_tool",
    ];
    let options = Options::parse(args.iter().map(|s| (*s).to_owned())).unwrap();
    script(commands, |input, output| run(options, input, output)).await
}

#[tokio::test]
async fn a_script_writes_and_reports_everything() {
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new("dust_tok_t"))),
    )
    .await
    .unwrap();
    let lines = dust(
        server.url("/ws/sync"),
        &[
            json!({"cmd": "write", "id": 1, "store": "acme/app", "op": "set", "path": ["users", "ada"], "value": {"name": "Ada"}}),
            json!({"cmd": "write", "id": 2, "store": "acme/app", "op": "increment", "path": ["n"], "value": 5}),
            json!({"cmd": "write", "id": 3, "store": "acme/app", "op": "lease", "path": ["lock"], "ttl_ms": 5000, "holder": "me"}),
            json!({"cmd": "wait_acked"}),
            json!({"cmd": "write", "id": 4, "store": "acme/app", "op": "set", "path": ["guarded"], "value": 1, "fence": {"key": ["lock"], "token": 3}}),
            json!({"cmd": "write", "id": 5, "store": "acme/app", "op": "set", "path": ["n"], "value": 0, "if_match": 99}),
            json!({"cmd": "put_file", "id": 6, "store": "acme/two", "path": ["f"], "content_base64": "aGk=", "filename": "hi.txt"}),
            json!({"cmd": "write", "id": 7, "store": "acme/app", "op": "merge", "path": ["m"], "value": 1}),
            json!({"cmd": "write", "id": 8, "store": "nope", "op": "set", "path": ["x"], "value": 1}),
            json!("{broken"),
            json!({"cmd": "wait_acked"}),
            json!({"cmd": "info"}),
        ],
    )
    .await;
    find(
        &lines,
        &json!({"type": "status", "from": "disconnected", "to": "connected"}),
    );
    find(
        &lines,
        &json!({"type": "joined", "store": "acme/app", "store_seq": 0}),
    );
    find(
        &lines,
        &json!({"type": "catch_up_complete", "store": "acme/app", "through_seq": 0}),
    );
    find(
        &lines,
        &json!({"type": "ack", "id": 1, "store": "acme/app", "reply": {"store_seq": 1}}),
    );
    let lease = find(&lines, &json!({"type": "ack", "id": 3}));
    assert_eq!(lease["reply"]["token"], 3);
    assert_eq!(lease["reply"]["holder"], "me");
    find(&lines, &json!({"type": "ack", "id": 4}));
    find(
        &lines,
        &json!({"type": "rejected", "id": 5, "reason": "conflict"}),
    );
    let file = find(
        &lines,
        &json!({"type": "ack", "id": 6, "store": "acme/two"}),
    );
    assert!(
        file["reply"]["hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    find(
        &lines,
        &json!({"type": "rejected", "id": 7, "reason": "merge_requires_map_value"}),
    );
    let event = find(&lines, &json!({"type": "event", "store": "acme/app"}));
    assert_eq!(event["event"]["device_id"], "dev_tool");
    assert_eq!(
        lines.iter().filter(|l| l["type"] == "error").count(),
        2,
        "unknown store and bad JSON"
    );
    assert_eq!(
        lines.iter().filter(|l| l["type"] == "wait_acked").count(),
        2
    );
    let info = find(&lines, &json!({"type": "info", "status": "connected"}));
    assert_eq!(info["joined_stores"], json!(["acme/app", "acme/two"]));
    assert_eq!(info["device_id"], "dev_tool");
    // Every ack came before the second wait_acked line.
    let second_wait = lines
        .iter()
        .rposition(|l| l["type"] == "wait_acked")
        .unwrap();
    assert!(
        lines[..second_wait]
            .iter()
            .filter(|l| l["type"] == "ack" || l["type"] == "rejected")
            .count()
            >= 6
    );
    let info_at = lines.iter().position(|l| l["type"] == "info").unwrap();
    assert!(
        lines[info_at..]
            .iter()
            .any(|l| l["type"] == "status" && l["to"] == "disconnected"),
        "the end of input disconnects"
    );
}

/// When stdout is slower than the events, the output queue stays within `--output-buffer` and
/// the lines that do not fit are reported as dropped, never lost silently.
#[tokio::test]
async fn a_blocked_stdout_keeps_the_output_bounded_and_reports_drops() {
    const WRITES: usize = 500;
    const BOUND: usize = 4096;
    const PIPE: usize = 512;
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new("dust_tok_t"))),
    )
    .await
    .unwrap();
    let url = server.url("/ws/sync");
    let args = [
        "--url",
        &url,
        "--token",
        "dust_tok_t",
        "--store",
        "acme/app",
        "--output-buffer",
        "4096",
    ];
    let options = Options::parse(args.iter().map(|s| (*s).to_owned())).unwrap();
    let mut commands: Vec<Value> = (0..WRITES)
        .map(|i| json!({"cmd": "write", "id": i, "store": "acme/app", "op": "set", "path": ["k", i.to_string()], "value": i}))
        .collect();
    // Every ack is emitted before the `wait_acked` line, before the end of the input.
    commands.push(json!({"cmd": "wait_acked"}));
    let text = common::script_with_blocked_output(
        &commands,
        PIPE,
        |input, output| run(options, input, output),
        async {},
    )
    .await;
    let (lines, dropped) = common::check_bounded_output(&text, PIPE, BOUND);
    let acks = lines.iter().filter(|l| l["type"] == "ack").count();
    assert!(acks < WRITES, "nothing was dropped");
    assert!(
        acks as u64 + dropped >= WRITES as u64,
        "{acks} acks written and {dropped} lines reported dropped: some were lost silently"
    );
}
