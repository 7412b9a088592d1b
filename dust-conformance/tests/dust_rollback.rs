//! The store channel's `rollback` (`Dust.Sync.Rollback`): a path or the whole store back to a
//! seq, with new ops.

mod common;

use common::dust::{Dust, StoreClient, dust, dust_with};
use dust_conformance::dust::{DustConfig, TokenConfig};
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/app";

async fn joined(d: &Dust) -> StoreClient {
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c
}

async fn rollback(c: &mut StoreClient, params: Value) -> Value {
    let r = c.push("rollback", params).await;
    c.reply_to(&r).await
}

/// The op log as `(seq, op, path, value, client_op_id)`.
async fn ops(d: &Dust) -> Vec<(u64, String, String, Value, Value)> {
    common::within("ops", d.control.ops("acme/app"))
        .await
        .expect("the op log")
        .into_iter()
        .map(|o| (o.seq, o.op, o.path, o.value, o.client_op_id))
        .collect()
}

#[tokio::test]
async fn a_path_rollback_writes_one_op_broadcast_as_an_event_then_is_a_noop() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let mut other = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", TOPIC).await;
    other.join_caught_up(json!(0)).await;
    c.set("a", json!(1), "1").await;
    other.event().await;
    c.set("a", json!(2), "2").await;
    other.event().await;

    let r = c.push("rollback", json!({"path": "a", "to_seq": 1})).await;
    let expected = json!({
        "store_seq": 3,
        "op": "set",
        "path": "a",
        "path_segments": ["a"],
        "value": 1,
        "device_id": "system:rollback",
        "client_op_id": "rollback:1:a",
    });
    assert_eq!(c.event().await, expected);
    assert_eq!(
        c.reply_to(&r).await,
        json!({"status": "ok", "response": {"store_seq": 3}})
    );
    assert_eq!(other.event().await, expected);

    // Already at that value: nothing written, nothing broadcast.
    assert_eq!(
        rollback(&mut c, json!({"path": ["a"], "to_seq": 1})).await,
        json!({"status": "ok", "response": {"store_seq": 3, "noop": true}})
    );
    other.c.assert_silent().await;
    assert_eq!(ops(&d).await.len(), 3);
}

#[tokio::test]
async fn a_path_that_did_not_exist_is_deleted_and_a_map_root_is_reassembled() {
    let d = dust().await;
    let mut c = joined(&d).await;
    c.set("x", json!(0), "1").await;
    c.write_ok(common::dust::write(
        "set",
        &["m"],
        json!({"p": 1, "q": {"r": 2}}),
        "2",
    ))
    .await;
    c.set("a", json!(1), "3").await;
    c.write_ok(common::dust::write("set", &["m", "p"], json!(9), "4"))
        .await;

    let r = c.push("rollback", json!({"path": "a", "to_seq": 1})).await;
    let event = c.event().await;
    assert_eq!(
        (&event["op"], &event["value"]),
        (&json!("delete"), &Value::Null)
    );
    assert_eq!(event["client_op_id"], "rollback:1:a");
    assert_eq!(c.reply_to(&r).await["response"], json!({"store_seq": 5}));

    let r = c.push("rollback", json!({"path": "m", "to_seq": 2})).await;
    let event = c.event().await;
    assert_eq!(event["value"], json!({"p": 1, "q": {"r": 2}}));
    assert_eq!(c.reply_to(&r).await["response"], json!({"store_seq": 6}));
    let entries: Vec<(String, Value)> = common::within("entries", d.control.entries("acme/app"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.value))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("m/p".into(), json!(1)),
            ("m/q/r".into(), json!(2)),
            ("x".into(), json!(0)),
        ]
    );
}

#[tokio::test]
async fn a_store_rollback_deletes_then_sets_in_path_order_and_broadcasts_nothing() {
    let d = dust().await;
    let mut c = joined(&d).await;
    let mut other = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", TOPIC).await;
    other.join_caught_up(json!(0)).await;
    for (i, (key, value)) in [("b", 1), ("a", 1), ("b", 2), ("d", 4), ("c", 3), ("a", 5)]
        .into_iter()
        .enumerate()
    {
        c.set(key, json!(value), &i.to_string()).await;
        other.event().await;
    }
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 2})).await,
        json!({"status": "ok", "response": {"ops_written": 4}})
    );
    other.c.assert_silent().await;
    let tail: Vec<_> = ops(&d).await.into_iter().skip(6).collect();
    assert_eq!(
        tail,
        vec![
            (
                7,
                "delete".into(),
                "c".into(),
                Value::Null,
                json!("rollback:2:c")
            ),
            (
                8,
                "delete".into(),
                "d".into(),
                Value::Null,
                json!("rollback:2:d")
            ),
            (9, "set".into(), "a".into(), json!(1), json!("rollback:2:a")),
            (
                10,
                "set".into(),
                "b".into(),
                json!(1),
                json!("rollback:2:b")
            ),
        ]
    );
    // A late joiner catches the rollback ops up like any others.
    let mut late = StoreClient::connect(&d.server, "dust_tok_dev", "dev_c", TOPIC).await;
    let (events, through) = late.join_caught_up(json!(6)).await;
    assert_eq!(through, 10);
    assert_eq!(events[0][4]["device_id"], "system:rollback");
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 2})).await,
        json!({"status": "ok", "response": {"ops_written": 0}})
    );
}

#[tokio::test]
async fn retention_empty_stores_scopes_and_bad_params() {
    let d = dust_with(
        DustConfig::new().token(TokenConfig::new("dust_tok_ro").scopes(["entries:read"])),
    )
    .await;
    let mut c = joined(&d).await;
    let error = |reason: &str| json!({"status": "error", "response": {"reason": reason}});
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 1})).await,
        error("no_ops")
    );
    assert_eq!(
        rollback(&mut c, json!({"path": "a", "to_seq": 1})).await,
        error("no_ops")
    );
    c.set("a", json!(1), "1").await;
    c.set("a", json!(2), "2").await;
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 0})).await,
        error("beyond_retention")
    );
    assert_eq!(
        rollback(&mut c, json!({"path": "a//b", "to_seq": 1})).await,
        error("empty_segment")
    );
    common::within("compact", d.control.compact("acme/app"))
        .await
        .unwrap();
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 1})).await,
        error("beyond_retention")
    );
    assert_eq!(
        rollback(&mut c, json!({"to_seq": 2})).await,
        json!({"status": "ok", "response": {"ops_written": 0}})
    );

    let mut ro = StoreClient::connect(&d.server, "dust_tok_ro", "dev_r", TOPIC).await;
    ro.join_caught_up(json!(0)).await;
    assert_eq!(
        rollback(&mut ro, json!({"path": "a", "to_seq": 1})).await,
        json!({"status": "error", "response": {
            "reason": "missing_scope",
            "scope": "entries:write",
            "message": "Token is missing entries:write scope",
        }})
    );
    // Without to_seq no clause matches: the channel crashes.
    c.push("rollback", json!({"path": "a"})).await;
    assert_eq!(
        c.c.recv_json().await,
        json!([c.join_ref, c.join_ref, TOPIC, "phx_error", {}])
    );
}
