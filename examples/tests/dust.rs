//! The `dust` tool against the embedded Dust emulation, driven in-process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Interactive, find, script};
use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use examples::dust::{Options, run};
use serde_json::{Value, json};

async fn dust(url: String, commands: &[Value]) -> Vec<Value> {
    let options = options(url);
    script(commands, |input, output| run(options, input, output)).await
}

fn options(url: String) -> Options {
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
    Options::parse(args.iter().map(|s| (*s).to_owned())).unwrap()
}

/// The Dust emulation with the tool's token.
async fn emulation() -> dust_conformance::Server {
    dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new("dust_tok_t"))),
    )
    .await
    .unwrap()
}

/// The tool, run in-process with `options`, driven one command at a time.
fn interactive(options: Options) -> Interactive {
    Interactive::start(|input, output| run(options, input, output))
}

#[tokio::test]
async fn a_script_writes_and_reports_everything() {
    let server = emulation().await;
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

/// `--format msgpack` speaks `vsn=3.0.0`; `rollback` (a path, the whole store) and `status`
/// answer with the server's typed replies, and the replica follows.
#[tokio::test]
async fn over_messagepack_rollbacks_and_status_answer_and_the_replica_follows() {
    let server = emulation().await;
    let mut options = options(server.url("/ws/sync"));
    options.format = dust_connection::Format::MessagePack;
    let mut tool = interactive(options);
    for command in [
        json!({"cmd": "write", "id": 1, "store": "acme/app", "op": "set", "path": ["a"], "value": 1}),
        json!({"cmd": "write", "id": 2, "store": "acme/app", "op": "set", "path": ["a"], "value": 2}),
        json!({"cmd": "write", "id": 3, "store": "acme/app", "op": "set", "path": ["b"], "value": 3}),
        json!({"cmd": "wait_acked"}),
        json!({"cmd": "rollback", "id": 4, "store": "acme/app", "path": ["a"], "to_seq": 1}),
        json!({"cmd": "rollback", "id": 5, "store": "acme/app", "path": ["a"], "to_seq": 1}),
        json!({"cmd": "rollback", "id": 6, "store": "acme/app", "to_seq": 0}),
        json!({"cmd": "rollback", "id": 7, "store": "acme/app", "to_seq": 1}),
        json!({"cmd": "status", "id": 8, "store": "acme/app"}),
        json!({"cmd": "rollback", "id": 9, "store": "acme/app"}),
        // Sent once the store caught up again after the store rollback.
        json!({"cmd": "write", "id": 10, "store": "acme/app", "op": "set", "path": ["c"], "value": 1}),
    ] {
        tool.send(command).await;
    }
    // An `event` line is printed once the replica applied it: seqs 1–3, the path rollback's 4,
    // the store rollback's 5 (from the catch-up) and the last write's 6.
    let last = tool
        .wait_for_nth(&json!({"type": "event", "store": "acme/app"}), 6)
        .await;
    assert_eq!(last["event"]["store_seq"], 6);
    tool.send(json!({"cmd": "state", "store": "acme/app"}))
        .await;
    let lines = tool.finish().await;
    find(
        &lines,
        &json!({"type": "rollback", "id": 4, "reply": {"store_seq": 4, "noop": false}}),
    );
    find(
        &lines,
        &json!({"type": "rollback", "id": 5, "reply": {"store_seq": 4, "noop": true}}),
    );
    find(
        &lines,
        &json!({"type": "rejected", "id": 6, "reason": "beyond_retention"}),
    );
    // Back to seq 1: `b` deleted (`a` is 1 again already).
    find(
        &lines,
        &json!({"type": "rollback", "id": 7, "reply": {"ops_written": 1}}),
    );
    let status = find(&lines, &json!({"type": "status", "id": 8}));
    assert_eq!(status["reply"]["current_seq"], 5);
    assert_eq!(status["reply"]["entry_count"], 1);
    find(&lines, &json!({"type": "error", "id": 9}));
    find(&lines, &json!({"type": "resync", "store": "acme/app"}));
    find(
        &lines,
        &json!({"type": "ack", "id": 10, "reply": {"store_seq": 6}}),
    );
    let state = find(&lines, &json!({"type": "state", "store": "acme/app"}));
    assert_eq!(state["entries"], json!({"a": 1, "c": 1}));
    assert_eq!(state["last_seq"], 6);
}

/// `get`, `enum` and `subscribe` read the local replica: an entry with its type and
/// revision, a page of a glob, and every change under a glob in seq order.
#[tokio::test]
async fn reads_and_subscriptions_come_from_the_replica() {
    let server = emulation().await;
    let mut tool = interactive(options(server.url("/ws/sync")));
    // An `event` line is printed once the replica has applied it: each wait below leaves the
    // replica holding every write so far.
    tool.send(json!({"cmd": "write", "id": 1, "store": "acme/app", "op": "set", "path": ["users", "ada"], "value": {"name": "Ada"}}))
        .await;
    tool.wait_for(&json!({"type": "event", "store": "acme/app"}))
        .await;
    for command in [
        json!({"cmd": "subscribe", "id": 2, "store": "acme/app", "pattern": "users/*/name", "current": true}),
        json!({"cmd": "write", "id": 3, "store": "acme/app", "op": "set", "path": ["users", "bob", "name"], "value": "Bob"}),
        json!({"cmd": "write", "id": 4, "store": "acme/app", "op": "set", "path": ["other"], "value": 1}),
        json!({"cmd": "write", "id": 5, "store": "acme/app", "op": "delete", "path": ["users", "ada"]}),
    ] {
        tool.send(command).await;
    }
    tool.wait_for_nth(&json!({"type": "event", "store": "acme/app"}), 4)
        .await;
    for command in [
        json!({"cmd": "get", "id": 6, "store": "acme/app", "path": ["users", "bob", "name"]}),
        json!({"cmd": "get", "id": 7, "store": "acme/app", "path": ["users", "ada", "name"]}),
        json!({"cmd": "enum", "id": 8, "store": "acme/app", "pattern": "**", "limit": 1, "order": "desc"}),
        json!({"cmd": "enum", "id": 9, "store": "acme/app", "pattern": "users/**/x/**"}),
        json!({"cmd": "get", "id": 10, "store": "nope", "path": ["a"]}),
        json!({"cmd": "get", "id": 11, "store": "acme/app", "path": ["users"]}),
    ] {
        tool.send(command).await;
    }
    let lines = tool.finish().await;
    find(
        &lines,
        &json!({"type": "get", "id": 6, "store": "acme/app", "path": ["users", "bob", "name"], "value": "Bob", "kind": "string", "revision": 2, "pending": false}),
    );
    find(
        &lines,
        &json!({"type": "get", "id": 7, "path": ["users", "ada", "name"], "value": null}),
    );
    // A subtree reads back as a map.
    find(
        &lines,
        &json!({"type": "get", "id": 11, "path": ["users"], "value": {"bob": {"name": "Bob"}}}),
    );
    let page = find(&lines, &json!({"type": "enum", "id": 8}));
    assert_eq!(
        page["entries"],
        json!([{"path": "users/bob/name", "value": "Bob", "kind": "string", "revision": 2}])
    );
    assert!(page["next_cursor"].is_string());
    let bad = find(&lines, &json!({"type": "error", "id": 9}));
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("wildcard_many_not_tail"),
        "{bad}"
    );
    find(
        &lines,
        &json!({"type": "error", "message": "unknown store `nope`"}),
    );
    let updates: Vec<(String, Value, u64, bool)> = lines
        .iter()
        .filter(|l| l["type"] == "change" && l["id"] == 2)
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_owned(),
                l["value"].clone(),
                l["seq"].as_u64().unwrap(),
                l["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        updates,
        [
            ("users/ada/name".to_owned(), json!("Ada"), 1, true),
            ("users/bob/name".to_owned(), json!("Bob"), 2, false),
            ("users/ada/name".to_owned(), Value::Null, 4, false),
        ]
    );
}

/// When stdout is slower than the events, the output queue stays within `--output-buffer` and
/// the lines that do not fit are reported as dropped, never lost silently.
#[tokio::test]
async fn a_blocked_stdout_keeps_the_output_bounded_and_reports_drops() {
    const WRITES: usize = 500;
    const BOUND: usize = 4096;
    const PIPE: usize = 512;
    let server = emulation().await;
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

/// Whether two JSON values are equal, numbers compared as numbers: `1` equals `1.0`, integers
/// with their full precision.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn numbers_compare_as_numbers() {
    assert!(same_json(&json!({"a": [1]}), &json!({"a": [1.0]})));
    assert!(!same_json(
        &json!(9_007_199_254_740_993_u64),
        &json!(9_007_199_254_740_992_u64)
    ));
    assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
}

/// `state` prints the local replica the way the server holds it: the entries, by path rendered
/// as the emulation renders them, and the last server seq applied.
#[tokio::test]
async fn state_prints_the_replica_as_the_server_holds_it() {
    let server = emulation().await;
    let mut tool = interactive(options(server.url("/ws/sync")));
    for command in [
        json!({"cmd": "write", "id": 1, "store": "acme/app", "op": "set", "path": ["users", "ada"], "value": {"name": "Ada", "age": 36, "big": 9_007_199_254_740_993_u64}}),
        json!({"cmd": "write", "id": 2, "store": "acme/app", "op": "merge", "path": ["users", "ada"], "value": {"age": 37, "x": 1.5}}),
        json!({"cmd": "write", "id": 3, "store": "acme/app", "op": "increment", "path": ["n"], "value": 5}),
        json!({"cmd": "write", "id": 4, "store": "acme/app", "op": "increment", "path": ["n"], "value": 2}),
        json!({"cmd": "write", "id": 5, "store": "acme/app", "op": "add", "path": ["tags"], "value": "red"}),
        json!({"cmd": "write", "id": 6, "store": "acme/app", "op": "set", "path": ["gone"], "value": "soon"}),
        json!({"cmd": "write", "id": 7, "store": "acme/app", "op": "delete", "path": ["gone"]}),
        json!({"cmd": "write", "id": 8, "store": "acme/app", "op": "set", "path": ["nothing"], "value": null}),
        json!({"cmd": "write", "id": 9, "store": "acme/app", "op": "merge", "path": ["users", "ada"], "value": {"address": {"city": "London"}}}),
        json!({"cmd": "write", "id": 10, "store": "acme/app", "op": "lease", "path": ["jobs", "nightly"], "ttl_ms": 60000, "holder": "w1"}),
    ] {
        tool.send(command).await;
    }
    // An `event` line is printed once the replica has applied it: after the last one, the
    // replica has every write.
    let last = tool
        .wait_for_nth(&json!({"type": "event", "store": "acme/app"}), 10)
        .await;
    assert_eq!(last["event"]["store_seq"], 10);
    assert_eq!(last["event"]["op"], "lease");
    for command in [
        json!({"cmd": "state", "store": "acme/app"}),
        json!({"cmd": "state", "store": "acme/nope"}),
        json!({"cmd": "state"}),
    ] {
        tool.send(command).await;
    }
    let lines = tool.finish().await;
    let dust = server.dust().unwrap();
    let expected: serde_json::Map<String, Value> = dust
        .entries("acme/app")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.value))
        .collect();
    assert!(expected.contains_key("users/ada/name"), "{expected:?}");
    assert!(!expected.contains_key("gone"), "{expected:?}");
    assert_eq!(
        expected.get("nothing"),
        Some(&Value::Null),
        "a null set is an entry"
    );
    assert!(
        expected["jobs/nightly"].is_object(),
        "a lease is one entry: {expected:?}"
    );
    let state = find(&lines, &json!({"type": "state", "store": "acme/app"}));
    assert!(
        same_json(&state["entries"], &Value::Object(expected.clone())),
        "the replica {} is not what the server holds {}",
        state["entries"],
        Value::Object(expected)
    );
    let server_seq = dust.store_info("acme/app").await.unwrap().seq;
    assert_eq!(state["last_seq"], json!(server_seq));
    assert_eq!(server_seq, 10);
    let error = find(&lines, &json!({"type": "error"}));
    assert!(
        error["message"].as_str().unwrap().contains("acme/nope"),
        "{error}"
    );
    // Without a store: one line per store, in the order of the options.
    let at = lines
        .iter()
        .position(|l| {
            l["type"] == "error" && l["line"].as_str().is_some_and(|l| l.contains("state"))
        })
        .unwrap();
    let all: Vec<&Value> = lines[at..]
        .iter()
        .filter(|l| l["type"] == "state")
        .collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0]["store"], "acme/app");
    assert_eq!(all[1]["store"], "acme/two");
    assert_eq!(all[1]["entries"], json!({}));
    assert_eq!(all[1]["last_seq"], 0);
}

/// `state` answers in command order, at once, while writes wait for their replies.
#[tokio::test]
async fn state_answers_while_writes_are_outstanding() {
    let server = emulation().await;
    server
        .dust()
        .unwrap()
        .delay_next_write_reply(std::time::Duration::from_secs(2));
    let lines = dust(
        server.url("/ws/sync"),
        &[
            json!({"cmd": "write", "id": 1, "store": "acme/app", "op": "set", "path": ["a"], "value": 1}),
            json!({"cmd": "state", "store": "acme/app"}),
            json!({"cmd": "info"}),
        ],
    )
    .await;
    let state = lines.iter().position(|l| l["type"] == "state").unwrap();
    let info = lines.iter().position(|l| l["type"] == "info").unwrap();
    let ack = lines
        .iter()
        .position(|l| l["type"] == "ack" && l["id"] == 1)
        .unwrap();
    assert!(
        state < info && info < ack,
        "state and info are answered in order, before the delayed reply: {lines:#?}"
    );
    assert!(lines[state]["last_seq"].as_u64().unwrap() <= 1);
}

/// A `get` right after a `write`, before the server answers it, sees the optimistic value
/// (marked pending); a `subscribe` shows it only once the server confirms it.
#[tokio::test]
async fn a_get_right_after_a_write_sees_it_before_its_ack() {
    let server = emulation().await;
    let control = server.dust().unwrap();
    let mut tool = interactive(options(server.url("/ws/sync")));
    tool.send(json!({"cmd": "subscribe", "id": 1, "store": "acme/app", "pattern": "todo/*"}))
        .await;
    tool.wait_for(&json!({"type": "catch_up_complete", "store": "acme/app"}))
        .await;
    // The server takes its time over the write: its answer comes well after the `get`.
    control.set_write_cost(std::time::Duration::from_millis(500));
    for command in [
        json!({"cmd": "write", "id": 2, "store": "acme/app", "op": "set", "path": ["todo", "milk"], "value": "buy"}),
        json!({"cmd": "get", "id": 3, "store": "acme/app", "path": ["todo", "milk"]}),
    ] {
        tool.send(command).await;
    }
    let get = tool.wait_for(&json!({"type": "get", "id": 3})).await;
    assert_eq!(
        (&get["value"], &get["pending"]),
        (&json!("buy"), &json!(true))
    );
    tool.wait_for(&json!({"type": "ack", "id": 2})).await;
    let lines = tool.finish().await;
    let changes: Vec<&Value> = lines.iter().filter(|l| l["type"] == "change").collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (
            &changes[0]["path"],
            &changes[0]["value"],
            &changes[0]["seq"]
        ),
        (&json!("todo/milk"), &json!("buy"), &json!(1))
    );
    // The ack came after the get.
    let position = |wanted: &str, id: u64| {
        lines
            .iter()
            .position(|l| l["type"] == wanted && l["id"] == id)
            .unwrap()
    };
    assert!(position("get", 3) < position("ack", 2));
}
