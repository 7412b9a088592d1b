//! `dust --db`: the durable outbox through a real crash. The tool runs as a child process, is
//! killed with SIGKILL while writes stream in, and is started again on the same database and
//! device id: every write that printed `queued` is applied exactly once, in issue order, and
//! the restarted replica matches the server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const STORE: &str = "acme/app";
const WRITES: usize = 400;
/// The child is killed once this many writes printed `queued`.
const KILL_AFTER: usize = 120;
const T: Duration = Duration::from_secs(60);

fn tool(url: &str, db: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dust"))
        .args(["--url", url, "--token", "dust_tok_t", "--store", STORE])
        .args(["--device-id", "dev_crash", "--db"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the dust tool starts")
}

/// Runs the tool on `commands` to the end of its input; its lines.
async fn run_to_end(url: &str, db: &Path, commands: &[Value]) -> Vec<Value> {
    let mut child = tool(url, db);
    let mut stdin = child.stdin.take().unwrap();
    for command in commands {
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
    }
    drop(stdin);
    let mut out = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(serde_json::from_str::<Value>(&line).unwrap());
        }
    })
    .await
    .expect("the tool ends");
    assert!(child.wait().await.unwrap().success());
    out
}

fn write(i: usize) -> Value {
    if i.is_multiple_of(2) {
        json!({"cmd": "write", "id": i, "store": STORE, "op": "increment", "path": ["counter"], "value": 1})
    } else {
        json!({"cmd": "write", "id": i, "store": STORE, "op": "set", "path": ["items", format!("{i:04}")], "value": i})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_that_printed_queued_lands_exactly_once_in_order_through_a_kill_9() {
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new("dust_tok_t"))),
    )
    .await
    .unwrap();
    let control = server.dust().unwrap();
    // Each write takes the server a while: writes are queued, in flight and unsent at the kill.
    control.set_write_cost(Duration::from_millis(2));
    let url = server.url("/ws/sync");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dust_crash");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join(format!("tool-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    // First run: killed mid-stream.
    let mut first = tool(&url, &db);
    let mut stdin = first.stdin.take().unwrap();
    let feeder = tokio::spawn(async move {
        for i in 0..WRITES {
            let line = format!("{}\n", write(i));
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return; // killed
            }
        }
        // Keep stdin open: the tool must not reach its end of input before the kill.
        std::future::pending::<()>().await;
    });
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let mut queued: Vec<(u64, String)> = Vec::new();
    tokio::time::timeout(T, async {
        while queued.len() < KILL_AFTER {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the tool ended early");
            let line: Value = serde_json::from_str(&line).unwrap();
            if line["type"] == "queued" {
                queued.push((
                    line["id"].as_u64().unwrap(),
                    line["client_op_id"].as_str().unwrap().to_owned(),
                ));
            }
        }
    })
    .await
    .expect("writes were queued");
    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    feeder.abort();
    // What it printed after the count but before dying also counts.
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(line) = serde_json::from_str::<Value>(&line)
            && line["type"] == "queued"
        {
            queued.push((
                line["id"].as_u64().unwrap(),
                line["client_op_id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    // Issue order is command order (the lines themselves may come in any order).
    queued.sort();

    // Second run: the same database and device id; it answers the recovered writes.
    let out = run_to_end(
        &url,
        &db,
        &[
            json!({"cmd": "wait_acked"}),
            json!({"cmd": "get", "store": STORE, "path": ["counter"]}),
            json!({"cmd": "state", "store": STORE}),
        ],
    )
    .await;

    // The server's log: nothing applied twice; every queued write once, in issue order.
    let log = control.client_op_ids(STORE).await.unwrap();
    let unique: HashSet<&String> = log.iter().collect();
    assert_eq!(unique.len(), log.len(), "a write was applied twice");
    let queued_ids: Vec<&String> = queued.iter().map(|(_, op)| op).collect();
    let wanted: HashSet<&String> = queued_ids.iter().copied().collect();
    let landed: Vec<&String> = log.iter().filter(|op| wanted.contains(op)).collect();
    assert_eq!(
        landed, queued_ids,
        "every queued write applied once, in issue order"
    );
    // Recovered writes were answered (their ack lines carry their client_op_id).
    let acked: HashSet<&str> = out
        .iter()
        .filter(|l| l["type"] == "ack")
        .filter_map(|l| l["client_op_id"].as_str())
        .collect();
    assert!(
        out.iter()
            .any(|l| l["type"] == "wait_acked" && l["outstanding"] == 0)
    );
    let unanswered_at_kill = queued.iter().filter(|(_, op)| acked.contains(op.as_str()));
    assert!(unanswered_at_kill.count() > 0, "some writes were recovered");
    // The restarted replica is the server's.
    let counter = control.entry(STORE, "counter").await.unwrap();
    let get = out.iter().find(|l| l["type"] == "get").unwrap();
    assert_eq!(
        get["value"],
        counter.map(|e| e.value).unwrap_or(Value::Null)
    );
    let state = out.iter().find(|l| l["type"] == "state").unwrap();
    let server_entries = control.entries(STORE).await.unwrap();
    let items = server_entries
        .iter()
        .filter(|e| e.path.starts_with("items/"))
        .count();
    assert_eq!(
        state["entries"].as_object().unwrap().len(),
        server_entries.len()
    );
    for entry in server_entries {
        assert_eq!(
            state["entries"][&entry.path], entry.value,
            "{} differs",
            entry.path
        );
    }

    // Third run, the server gone: the replica is read from the file, before any connection.
    server.shutdown().await;
    let offline = run_to_end(
        &url,
        &db,
        &[
            json!({"cmd": "get", "store": STORE, "path": ["counter"]}),
            json!({"cmd": "enum", "store": STORE, "pattern": "items/*", "limit": 1000}),
        ],
    )
    .await;
    let get = offline.iter().find(|l| l["type"] == "get").unwrap();
    assert_eq!(get["value"], state["entries"]["counter"]);
    let listed = offline.iter().find(|l| l["type"] == "enum").unwrap();
    assert_eq!(listed["entries"].as_array().unwrap().len(), items);
}
