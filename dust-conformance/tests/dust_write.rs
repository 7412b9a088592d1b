//! `write`: every op with its materialized event value, every validation error, the
//! preconditions, no seq consumed by a rejection, broadcast before the reply, no dedup.

mod common;

use common::dust::{Dust, StoreClient, dust, dust_with, with, write};
use dust_conformance::dust::{DustConfig, Limits, TokenConfig};
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/app";

async fn joined(d: &Dust) -> StoreClient {
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c
}

/// The store's entries as `(path, value, type, revision)`.
async fn entries(d: &Dust) -> Vec<(String, Value, String, u64)> {
    common::within("entries", d.control.entries("acme/app"))
        .await
        .expect("entries")
        .into_iter()
        .map(|e| (e.path, e.value, e.kind, e.revision))
        .collect()
}

fn entry(path: &str, value: Value, kind: &str, rev: u64) -> (String, Value, String, u64) {
    (path.to_owned(), value, kind.to_owned(), rev)
}

#[tokio::test]
async fn set_leaf_and_map_values() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let (event, reply) = c
        .write_ok(write("set", &["posts", "hello.world"], json!("hi"), "op_1"))
        .await;
    assert_eq!(
        event,
        json!({
            "store_seq": 1,
            "op": "set",
            "path": "posts/hello.world",
            "path_segments": ["posts", "hello.world"],
            "value": "hi",
            "device_id": "dev_a",
            "client_op_id": "op_1",
        })
    );
    assert_eq!(reply, json!({"store_seq": 1}));
    // A map is flattened into leaf entries; the event carries the map.
    let value = json!({"title": "T", "meta": {"tags": ["a"], "n": 1.5, "ok": true, "none": null}, "empty": {}});
    let (event, _) = c
        .write_ok(write("set", &["posts", "a/b"], value.clone(), "op_2"))
        .await;
    assert_eq!(event["value"], value);
    assert_eq!(event["path"], "posts/a~1b");
    assert_eq!(
        entries(&d).await,
        vec![
            entry("posts/a~1b/meta/n", json!(1.5), "float", 2),
            entry("posts/a~1b/meta/none", Value::Null, "null", 2),
            entry("posts/a~1b/meta/ok", json!(true), "boolean", 2),
            // Lists fall through to the "string" type, as on the real server.
            entry("posts/a~1b/meta/tags", json!(["a"]), "string", 2),
            entry("posts/a~1b/title", json!("T"), "string", 2),
            entry("posts/hello.world", json!("hi"), "string", 1),
        ]
    );
    // A set replaces the subtree under its path, but not its ancestors.
    c.write_ok(write("set", &["posts"], json!(7), "op_3")).await;
    c.write_ok(write("set", &["posts", "x"], json!(8), "op_4"))
        .await;
    assert_eq!(
        entries(&d).await,
        vec![
            entry("posts", json!(7), "integer", 3),
            entry("posts/x", json!(8), "integer", 4)
        ]
    );
}

#[tokio::test]
async fn delete_removes_the_subtree() {
    let d = dust().await;
    let mut c = joined(&d).await;
    c.write_ok(write("set", &["a"], json!({"b": 1, "c": {"d": 2}}), "1"))
        .await;
    c.write_ok(write("set", &["ab"], json!(3), "2")).await;
    let (event, reply) = c.write_ok(write("delete", &["a"], Value::Null, "3")).await;
    assert_eq!(event["value"], Value::Null);
    assert_eq!(event["op"], "delete");
    assert_eq!(reply, json!({"store_seq": 3}));
    assert_eq!(entries(&d).await, vec![entry("ab", json!(3), "integer", 2)]);
    // Deleting nothing still commits an op; a value sent with a delete is echoed.
    let (event, reply) = c.write_ok(write("delete", &["zz"], json!("x"), "4")).await;
    assert_eq!(
        (event["value"].clone(), reply),
        (json!("x"), json!({"store_seq": 4}))
    );
}

#[tokio::test]
async fn merge_updates_named_children_only() {
    let d = dust().await;
    let mut c = joined(&d).await;
    c.write_ok(write(
        "set",
        &["u"],
        json!({"name": "a", "age": 1, "addr": {"city": "x", "zip": "1"}}),
        "1",
    ))
    .await;
    let value = json!({"age": 2, "addr": {"city": "y"}, "new/key": true});
    let (event, _) = c.write_ok(write("merge", &["u"], value.clone(), "2")).await;
    assert_eq!(event["value"], value);
    assert_eq!(
        entries(&d).await,
        vec![
            entry("u/addr/city", json!("y"), "string", 2),
            entry("u/age", json!(2), "integer", 2),
            entry("u/name", json!("a"), "string", 1),
            entry("u/new~1key", json!(true), "boolean", 2),
        ]
    );
    // An empty key deep in a merge raises in the writer: the reason is the inspected error.
    assert_eq!(
        c.write_err(write("merge", &["u"], json!({"addr": {"": 1}}), "3"))
            .await,
        json!({"reason": "%MatchError{term: {:error, :empty_segment}}"})
    );
}

#[tokio::test]
async fn increment_carries_the_total() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let (event, _) = c.write_ok(write("increment", &["n"], json!(5), "1")).await;
    assert_eq!(event["value"], 5);
    let (event, _) = c.write_ok(write("increment", &["n"], json!(-2), "2")).await;
    assert_eq!(event["value"], 3);
    let (event, _) = c
        .write_ok(write("increment", &["n"], json!(0.5), "3"))
        .await;
    assert_eq!(event["value"], 3.5);
    assert_eq!(
        entries(&d).await,
        vec![entry("n", json!(3.5), "counter", 3)]
    );
    // A null entry counts as 0; a string cannot be added to.
    c.write_ok(write("set", &["z"], Value::Null, "4")).await;
    let (event, _) = c.write_ok(write("increment", &["z"], json!(1), "5")).await;
    assert_eq!(event["value"], 1);
    c.write_ok(write("set", &["s"], json!("x"), "6")).await;
    assert_eq!(
        c.write_err(write("increment", &["s"], json!(1), "7")).await,
        json!({"reason": "%ArithmeticError{message: \"bad argument in arithmetic expression\"}"})
    );
}

#[tokio::test]
async fn add_and_remove_carry_the_whole_set() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let (event, _) = c.write_ok(write("add", &["tags"], json!("a"), "1")).await;
    assert_eq!(event["value"], json!(["a"]));
    // New members go first (Enum.uniq([member | set])); re-adding moves one to the front.
    let (event, _) = c.write_ok(write("add", &["tags"], json!("b"), "2")).await;
    assert_eq!(event["value"], json!(["b", "a"]));
    let (event, _) = c.write_ok(write("add", &["tags"], json!("a"), "3")).await;
    assert_eq!(event["value"], json!(["a", "b"]));
    let (event, _) = c
        .write_ok(write("remove", &["tags"], json!("a"), "4"))
        .await;
    assert_eq!(event["value"], json!(["b"]));
    let (event, _) = c.write_ok(write("remove", &["other"], json!(1), "5")).await;
    assert_eq!(event["value"], json!([]));
    assert_eq!(
        entries(&d).await,
        vec![
            entry("other", json!([]), "set", 5),
            entry("tags", json!(["b"]), "set", 4)
        ]
    );
}

#[tokio::test]
async fn validation_errors_in_the_server_order() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let reason = |r: &str| json!({ "reason": r });
    let cases = [
        (
            json!({"op": "upsert", "path": "a", "value": 1, "client_op_id": "x"}),
            reason("invalid op"),
        ),
        (json!({"op": null, "path": ""}), reason("invalid op")),
        (
            json!({"op": "set", "value": 1, "client_op_id": "x"}),
            reason("missing_path"),
        ),
        (
            json!({"op": "set", "path": 5, "value": 1, "client_op_id": "x"}),
            reason("missing_path"),
        ),
        (
            json!({"op": "set", "path": "", "value": 1, "client_op_id": "x"}),
            reason("empty_path"),
        ),
        (
            json!({"op": "set", "path_segments": [], "path": "a", "value": 1, "client_op_id": "x"}),
            reason("empty_path"),
        ),
        (
            json!({"op": "set", "path": "a//b", "value": 1, "client_op_id": "x"}),
            reason("empty_segment"),
        ),
        (
            json!({"op": "set", "path_segments": ["a", ""], "value": 1, "client_op_id": "x"}),
            reason("empty_segment"),
        ),
        (
            json!({"op": "set", "path": "a~2", "value": 1, "client_op_id": "x"}),
            reason("invalid_escape"),
        ),
        (
            json!({"op": "set", "path_segments": ["a", 1], "value": 1, "client_op_id": "x"}),
            reason("not_a_string"),
        ),
        (
            json!({"op": "merge", "path": "a", "value": [1], "client_op_id": "x"}),
            reason("merge_requires_map_value"),
        ),
        (
            json!({"op": "increment", "path": "a", "value": "1", "client_op_id": "x"}),
            reason("increment_requires_number_value"),
        ),
        (
            json!({"op": "add", "path": "a", "value": null, "client_op_id": "x"}),
            reason("add_requires_value"),
        ),
        (
            json!({"op": "remove", "path": "a", "client_op_id": "x"}),
            reason("remove_requires_value"),
        ),
        // The op row's client_op_id column is NOT NULL.
        (
            json!({"op": "set", "path": "a", "value": 1}),
            reason(
                r#"%MatchError{term: {:error, "NOT NULL constraint failed: store_ops.client_op_id"}}"#,
            ),
        ),
        (
            json!({"op": "set", "path": "a", "value": 1, "client_op_id": {"a": 1}}),
            reason(r#"%ArgumentError{message: "unsupported type: %{\"a\" => 1}"}"#),
        ),
    ];
    for (payload, expected) in cases {
        assert_eq!(c.write_err(payload.clone()).await, expected, "{payload}");
    }
    // Path checks come before value checks.
    assert_eq!(
        c.write_err(json!({"op": "merge", "path": "", "value": 1}))
            .await,
        reason("empty_path")
    );
    // A path_segments that is not a list falls back to path (not_a_list never reaches the
    // wire); segments win over path when both are there.
    let (event, _) = c
        .write_ok(json!({"op": "set", "path_segments": "x/y", "path": "a~1b", "value": 1, "client_op_id": "1"}))
        .await;
    assert_eq!(event["path_segments"], json!(["a/b"]));
    let (event, _) = c
        .write_ok(json!({"op": "set", "path_segments": ["p", "q"], "path": "ignored", "value": 1, "client_op_id": "2"}))
        .await;
    assert_eq!(event["path"], "p/q");
    // None of the rejections consumed a seq.
    assert_eq!(event["store_seq"], 2);
}

#[tokio::test]
async fn key_limit() {
    let d = dust_with(DustConfig::new().limits(Limits::new(3, 1_000))).await;
    let mut c = joined(&d).await;
    c.write_ok(write("set", &["a"], json!({"x": 1, "y": 2}), "1"))
        .await;
    let exceeded =
        json!({"reason": "limit_exceeded", "dimension": "keys", "current": 2, "limit": 3});
    assert_eq!(
        c.write_err(write("set", &["b"], json!({"x": 1, "y": 2}), "2"))
            .await,
        exceeded
    );
    assert_eq!(
        c.write_err(write("merge", &["c"], json!({"x": 1, "y": 2}), "3"))
            .await,
        exceeded
    );
    // Overwriting existing keys adds none; one more key fits.
    c.write_ok(write("set", &["a", "x"], json!(5), "4")).await;
    c.write_ok(write("set", &["b"], json!(1), "5")).await;
    assert_eq!(
        c.write_err(write("set", &["c"], json!(1), "6")).await,
        json!({"reason": "limit_exceeded", "dimension": "keys", "current": 3, "limit": 3})
    );
    // Increments do not count against the limit.
    c.write_ok(write("increment", &["n"], json!(1), "7")).await;
}

#[tokio::test]
async fn if_match_and_if_absent() {
    let d = dust().await;
    let mut c = joined(&d).await;
    c.set("k", json!(1), "1").await;
    let conflict = json!({"reason": "conflict"});
    assert_eq!(
        c.write_err(with(
            write("set", &["k"], json!(2), "2"),
            json!({"if_match": 9})
        ))
        .await,
        conflict
    );
    // A missing entry is a conflict too.
    assert_eq!(
        c.write_err(with(
            write("set", &["nope"], json!(2), "3"),
            json!({"if_match": 1})
        ))
        .await,
        conflict
    );
    let (_, reply) = c
        .write_ok(with(
            write("set", &["k"], json!(2), "4"),
            json!({"if_match": 1}),
        ))
        .await;
    assert_eq!(reply, json!({"store_seq": 2}));
    // Allowed on delete as well.
    c.write_ok(with(
        write("delete", &["k"], Value::Null, "5"),
        json!({"if_match": 2}),
    ))
    .await;
    assert_eq!(
        c.write_err(with(
            write("increment", &["k"], json!(1), "6"),
            json!({"if_match": 1})
        ))
        .await,
        json!({"reason": "if_match_unsupported_op", "op": "increment"})
    );
    assert_eq!(
        c.write_err(with(
            write("set", &["k"], json!({"a": 1}), "7"),
            json!({"if_match": 1})
        ))
        .await,
        json!({"reason": "if_match_multi_leaf"})
    );
    // A non-integer if_match raises in the writer.
    assert_eq!(
        c.write_err(with(
            write("set", &["k"], json!(1), "8"),
            json!({"if_match": "3"})
        ))
        .await,
        json!({"reason": "%CaseClauseError{term: \"3\"}"})
    );
    // null and false mean no precondition.
    c.write_ok(with(
        write("set", &["k"], json!(3), "9"),
        json!({"if_match": false}),
    ))
    .await;

    let (_, reply) = c
        .write_ok(with(
            write("set", &["fresh"], json!(1), "10"),
            json!({"if_absent": true}),
        ))
        .await;
    assert_eq!(reply, json!({"store_seq": 5}));
    assert_eq!(
        c.write_err(with(
            write("set", &["fresh"], json!(2), "11"),
            json!({"if_absent": true})
        ))
        .await,
        json!({"reason": "exists"})
    );
    assert_eq!(
        c.write_err(with(
            write("merge", &["m"], json!({"a": 1}), "12"),
            json!({"if_absent": true})
        ))
        .await,
        json!({"reason": "if_absent_unsupported_op", "op": "merge"})
    );
    assert_eq!(
        c.write_err(with(
            write("set", &["m"], json!({"a": 1}), "13"),
            json!({"if_absent": true})
        ))
        .await,
        json!({"reason": "if_absent_multi_leaf"})
    );
    assert_eq!(
        c.write_err(with(
            write("set", &["m"], json!(1), "14"),
            json!({"if_absent": true, "if_match": 1})
        ))
        .await,
        json!({"reason": "invalid_precondition"})
    );
    // Only `true` turns if_absent on.
    c.write_ok(with(
        write("set", &["fresh"], json!(3), "15"),
        json!({"if_absent": "yes"}),
    ))
    .await;
    assert_eq!(
        common::within("store_info", d.control.store_info("acme/app"))
            .await
            .unwrap()
            .seq,
        6
    );
}

#[tokio::test]
async fn broadcast_reaches_every_joiner_before_the_reply() {
    let d = dust().await;
    let mut a = joined(&d).await;
    let mut b = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", TOPIC).await;
    b.join_caught_up(json!(0)).await;
    // A joiner through the UUID topic is on another topic: it gets no live event (the
    // real server broadcasts on the writer's topic only).
    let id = common::within("store_info", d.control.store_info("acme/app"))
        .await
        .unwrap()
        .id;
    let mut by_id = StoreClient::dev(&d.server, &format!("store:{id}")).await;
    by_id.join_caught_up(json!(0)).await;

    let (event, reply) = a.write_ok(write("set", &["k"], json!(1), "op_1")).await;
    assert_eq!(reply, json!({"store_seq": 1}));
    assert_eq!(b.event().await, event);
    by_id.c.assert_silent().await;
    // B's writes reach A, and B's own echo precedes B's reply.
    let (event, _) = b.write_ok(write("set", &["k"], json!(2), "op_2")).await;
    assert_eq!(event["device_id"], "dev_b");
    assert_eq!(a.event().await, event);
}

#[tokio::test]
async fn client_op_ids_are_not_deduplicated() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let payload = write("increment", &["n"], json!(1), "op_same");
    c.write_ok(payload.clone()).await;
    // The resend of a write whose reply was lost is applied again.
    let (event, _) = c.write_ok(payload).await;
    assert_eq!(event["value"], 2);
    c.write_ok(write("set", &["k"], json!(1), "op_other")).await;
    let ops = common::within("ops", d.control.ops("acme/app"))
        .await
        .unwrap();
    let listed: Vec<(u64, &str, &str, &Value, &str)> = ops
        .iter()
        .map(|o| {
            (
                o.seq,
                o.op.as_str(),
                o.path.as_str(),
                &o.client_op_id,
                o.device_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (1, "increment", "n", &json!("op_same"), "dev_a"),
            (2, "increment", "n", &json!("op_same"), "dev_a"),
            (3, "set", "k", &json!("op_other"), "dev_a"),
        ]
    );
    assert_eq!(
        common::within("client_op_ids", d.control.client_op_ids("acme/app"))
            .await
            .unwrap(),
        ["op_same", "op_same", "op_other"]
    );
}

#[tokio::test]
async fn write_needs_entries_write_and_bad_events_crash() {
    let d = dust_with(
        DustConfig::new().token(TokenConfig::new("dust_tok_ro").scopes(["entries:read"])),
    )
    .await;
    let mut c = StoreClient::connect(&d.server, "dust_tok_ro", "dev", TOPIC).await;
    c.join_caught_up(json!(0)).await;
    assert_eq!(
        c.write_err(write("set", &["k"], json!(1), "1")).await,
        json!({
            "reason": "missing_scope",
            "scope": "entries:write",
            "message": "Token is missing entries:write scope",
        })
    );
    // ack_seq needs no scope.
    let r = c.push("ack_seq", json!({"seq": 0})).await;
    assert_eq!(
        c.reply_to(&r).await,
        json!({"status": "ok", "response": {}})
    );
    // An event no handle_in/3 clause matches crashes the channel.
    c.push("nope", json!({})).await;
    assert_eq!(
        c.c.recv_json().await,
        json!([c.join_ref, c.join_ref, TOPIC, "phx_error", {}])
    );
    // So does a write whose payload is not a map (after authorization).
    let mut w = StoreClient::dev(&d.server, TOPIC).await;
    w.join_caught_up(json!(0)).await;
    w.push("write", json!(["set"])).await;
    assert_eq!(
        w.c.recv_json().await,
        json!([w.join_ref, w.join_ref, TOPIC, "phx_error", {}])
    );
    assert_eq!(
        common::within("store_info", d.control.store_info("acme/app"))
            .await
            .unwrap()
            .seq,
        0
    );
}

#[tokio::test]
async fn status_reports_the_store() {
    let d = dust().await;
    let mut c = joined(&d).await;
    for i in 0..7 {
        c.set(&format!("k{}", i % 3), json!(i), &i.to_string())
            .await;
    }
    common::within("compact", d.control.compact("acme/app"))
        .await
        .unwrap();
    c.set("k9", json!(9), "9").await;
    let r = c.push("status", json!({})).await;
    let reply = c.reply_to(&r).await;
    assert_eq!(reply["status"], "ok");
    let status = &reply["response"];
    assert_eq!(status["current_seq"], 8);
    assert_eq!(status["entry_count"], 4);
    // The op count of the store row counts every op ever written.
    assert_eq!(status["op_count"], 8);
    assert_eq!(status["latest_snapshot_seq"], 7);
    assert_eq!(status["latest_snapshot_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(status["permissions"], json!({"read": true, "write": true}));
    assert_eq!(status["store_access"]["mode"], "all");
    // Only the ops still in the log: the one after the compaction.
    assert_eq!(
        status["recent_ops"],
        json!([{"store_seq": 8, "op": "set", "path": "k9", "inserted_at": "2023-11-14T22:13:20.000Z"}])
    );
    assert!(status["db_size_bytes"].as_u64().unwrap() > 0);
}
