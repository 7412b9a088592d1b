//! Catch-up after the join reply: the snapshot envelope, events in batches of 1000 with other
//! traffic between batches, `catch_up_complete` and its `through_seq` rule.

mod common;

use common::dust::{Dust, StoreClient, dust, write};
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/app";

/// `n` increments of `n`, pipelined (sent without waiting), then all their frames read.
async fn increments(c: &mut StoreClient, n: u64) {
    for i in 0..n {
        c.push(
            "write",
            write("increment", &["n"], json!(1), &format!("op_{i}")),
        )
        .await;
    }
    for _ in 0..2 * n {
        c.c.recv_json().await;
    }
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f[4]["store_seq"].as_u64().expect("an event"))
        .collect()
}

async fn writer(d: &Dust) -> StoreClient {
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c
}

#[tokio::test]
async fn through_seq_is_the_clients_own_when_nothing_is_sent() {
    let d = dust().await;
    let mut w = writer(&d).await;
    for i in 0..3 {
        w.set("k", json!(i), &format!("op_{i}")).await;
    }
    for (from, expected_events, through) in [
        (json!(3), 0, json!(3)),
        // A client ahead of the server (e.g. after a reset) gets its own seq back.
        (json!(10), 0, json!(10)),
        (json!(1), 2, json!(3)),
        // Anything that is not a number is bound as SQL would: no rows, the value echoed.
        (Value::Null, 0, Value::Null),
        (json!("abc"), 0, json!("abc")),
        // A numeric string compares as a number.
        (json!("2"), 1, json!(3)),
    ] {
        let mut c = StoreClient::dev(&d.server, TOPIC).await;
        let (events, got) = c.join_caught_up(from.clone()).await;
        assert_eq!(
            (events.len(), got),
            (expected_events, through),
            "from {from}"
        );
    }
}

#[tokio::test]
async fn events_after_the_clients_seq_with_catch_up_values() {
    let d = dust().await;
    let mut w = writer(&d).await;
    w.write_ok(write("set", &["a", "b"], json!({"x": 1}), "1"))
        .await;
    w.write_ok(write("increment", &["n"], json!(2), "2")).await;
    w.write_ok(write("add", &["s"], json!("m"), "3")).await;
    w.write_ok(write("delete", &["a"], Value::Null, "4")).await;
    w.write_ok(json!({"op": "set", "path": "num", "value": 1, "client_op_id": 77}))
        .await;

    let mut c = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", TOPIC).await;
    let (events, through) = c.join_caught_up(json!(0)).await;
    assert_eq!(through, 5);
    assert_eq!(
        events[0],
        json!([c.join_ref, null, TOPIC, "event", {
            "store_seq": 1, "op": "set", "path": "a/b", "path_segments": ["a", "b"],
            "value": {"x": 1}, "device_id": "dev_a", "client_op_id": "1",
        }])
    );
    let values: Vec<&Value> = events.iter().map(|e| &e[4]["value"]).collect();
    assert_eq!(
        values,
        [
            &json!({"x": 1}),
            &json!(2),
            &json!(["m"]),
            &Value::Null,
            &json!(1)
        ]
    );
    // The client_op_id comes back as the text the op log's TEXT column holds.
    assert_eq!(events[4][4]["client_op_id"], "77");
    // The client acknowledges through_seq; the server records it.
    let r = c.push("ack_seq", json!({"seq": 5})).await;
    assert_eq!(
        c.reply_to(&r).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(d.control.acks("acme/app").unwrap()["dev_b"], 5);
}

#[tokio::test]
async fn incremental_values_replay_on_a_running_state() {
    let d = dust().await;
    let mut w = writer(&d).await;
    w.write_ok(write("increment", &["n"], json!(1), "1")).await;
    w.write_ok(write("set", &["n"], json!(10), "2")).await;
    let (live, _) = w.write_ok(write("increment", &["n"], json!(1), "3")).await;
    assert_eq!(live["value"], 11);
    w.write_ok(write("add", &["s"], json!("a"), "4")).await;
    w.write_ok(write("set", &["s"], json!(["z"]), "5")).await;
    let (live, _) = w.write_ok(write("add", &["s"], json!("b"), "6")).await;
    assert_eq!(live["value"], json!(["b", "z"]));

    // From 0, the running state only sees increments and adds: 1 then 2, not 11.
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let (events, _) = c.join_caught_up(json!(0)).await;
    let values: Vec<&Value> = events.iter().map(|e| &e[4]["value"]).collect();
    assert_eq!(
        values,
        [
            &json!(1),
            &json!(10),
            &json!(2),
            &json!(["a"]),
            &json!(["z"]),
            &json!(["b", "a"])
        ]
    );
    // From 2, the seed is the real state at 2.
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let (events, _) = c.join_caught_up(json!(2)).await;
    assert_eq!(events[0][4]["value"], 11);
}

#[tokio::test]
async fn batches_of_1000_with_other_traffic_between() {
    let d = dust().await;
    let mut w = writer(&d).await;
    increments(&mut w, 2500).await;

    let mut c = StoreClient::connect(&d.server, "dust_tok_dev", "dev_b", TOPIC).await;
    // The join and a write sent at once: the write is handled after the first batch and
    // before the second.
    c.join_ref = "j".into();
    c.c.send_json(json!(["j", "j", TOPIC, "phx_join", {"last_store_seq": 0}]))
        .await;
    let r = c
        .push("write", write("set", &["k"], json!(1), "late"))
        .await;
    assert_eq!(c.reply_to("j").await["status"], "ok");
    let mut first = Vec::new();
    for _ in 0..1000 {
        first.push(c.c.recv_json().await);
    }
    assert_eq!(seqs(&first), (1..=1000).collect::<Vec<_>>());
    assert_eq!(first[999][4]["value"], 1000);
    let live = c.event().await;
    assert_eq!(live["store_seq"], 2501);
    assert_eq!(c.reply_to(&r).await["response"], json!({"store_seq": 2501}));
    // Later batches read the log as it is then: the live write is caught up too.
    let (rest, through) = c.catch_up().await;
    assert_eq!(seqs(&rest), (1001..=2501).collect::<Vec<_>>());
    assert_eq!(rest[1499][4]["value"], 2500);
    assert_eq!(through, 2501);

    // Exactly 1000 to send: a full batch, then an empty one; through_seq is the last sent.
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let (events, through) = c.join_caught_up(json!(1501)).await;
    assert_eq!(seqs(&events), (1502..=2501).collect::<Vec<_>>());
    assert_eq!(through, 2501);
}

#[tokio::test]
async fn snapshot_first_when_the_client_is_behind_it() {
    let d = dust().await;
    let mut w = writer(&d).await;
    w.write_ok(write("set", &["a"], json!({"b": "x", "c": 1}), "1"))
        .await;
    w.write_ok(write("increment", &["n"], json!(5), "2")).await;
    w.write_ok(write("add", &["s"], json!(true), "3")).await;
    assert_eq!(
        common::within("compact", d.control.compact("acme/app"))
            .await
            .unwrap(),
        Some(3)
    );
    // Nothing left to compact.
    assert_eq!(
        common::within("compact", d.control.compact("acme/app"))
            .await
            .unwrap(),
        None
    );
    w.write_ok(write("increment", &["n"], json!(1), "4")).await;

    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let response = c.join(json!(1)).await;
    assert_eq!(response["store_seq"], 4);
    let (pushed, through) = c.catch_up().await;
    assert_eq!(
        pushed[0],
        json!([c.join_ref, null, TOPIC, "snapshot", {
            "snapshot_seq": 3,
            "entries": {
                "a/b": {"value": {"_scalar": "x"}, "type": "string"},
                "a/c": {"value": {"_scalar": 1}, "type": "integer"},
                "n": {"value": {"_scalar": 5}, "type": "counter"},
                "s": {"value": {"_scalar": [true]}, "type": "set"},
            },
        }])
    );
    // Then the ops after the snapshot, seeded from it.
    assert_eq!(pushed.len(), 2);
    assert_eq!(pushed[1][4]["store_seq"], 4);
    assert_eq!(pushed[1][4]["value"], 6);
    assert_eq!(through, 4);
    // At or past the snapshot: no snapshot.
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let (pushed, through) = c.join_caught_up(json!(3)).await;
    assert_eq!((seqs(&pushed), through), (vec![4], json!(4)));
    // After a compaction with nothing after it, a client behind gets the snapshot and
    // through_seq = the snapshot's seq.
    common::within("compact", d.control.compact("acme/app"))
        .await
        .unwrap();
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    let (pushed, through) = c.join_caught_up(json!(0)).await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0][3], "snapshot");
    assert_eq!(pushed[0][4]["snapshot_seq"], 4);
    assert_eq!(through, 4);
    let info = common::within("store_info", d.control.store_info("acme/app"))
        .await
        .unwrap();
    assert_eq!((info.seq, info.ops, info.snapshot_seq), (4, 0, Some(4)));
}
