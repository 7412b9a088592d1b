// The `replica` suite, run once per wire format: included by `tests/replica.rs` (JSON) and
// `tests/replica_msgpack.rs` (MessagePack), which set `FORMAT`.


use std::collections::BTreeMap;

use common::*;
use dust_connection::{Change, DustConnection, Lease, MemoryEngine, Store, WriteRequest};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};

/// Two JSON values are the same entry value: numbers compare as numbers (1 equals 1.0;
/// integers exactly), everything else structurally. Over MessagePack a datetime arrives as a
/// timestamp, which carries no precision: its ISO-8601 text has six decimals where a JSON
/// client gets the precision it was written with, so datetimes compare as instants.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y))
            if FORMAT == dust_connection::Format::MessagePack && x != y =>
        {
            match (humantime::parse_rfc3339(x), humantime::parse_rfc3339(y)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                x.as_f64() == y.as_f64()
            } else {
                x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn assert_same_entries(
    what: &str,
    replica: &BTreeMap<String, Value>,
    server: &BTreeMap<String, Value>,
) {
    let replica_paths: Vec<&String> = replica.keys().collect();
    let server_paths: Vec<&String> = server.keys().collect();
    assert_eq!(replica_paths, server_paths, "{what}: the paths differ");
    for (path, value) in server {
        assert!(
            same(&replica[path], value),
            "{what}: {path} is {} locally, {value} on the server",
            replica[path]
        );
    }
}

/// Waits (on the engine's changes, not by polling) until the engine has applied `seq`.
async fn wait_seq(engine: &MemoryEngine, seq: u64) {
    let mut changes = engine.subscribe();
    within("the engine reaches the server's seq", async {
        while engine.seq(STORE) < seq {
            match changes.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("engine changes closed: {e}"),
            }
        }
    })
    .await;
}

const KEYS: [&str; 5] = ["a", "b", "c/d", "e~f", "n"];

fn key(rng: &mut SmallRng) -> &'static str {
    KEYS[rng.random_range(0..KEYS.len())]
}

fn doc_path(rng: &mut SmallRng) -> Vec<String> {
    let depth = rng.random_range(1..=3);
    std::iter::once("doc".to_owned())
        .chain((0..depth).map(|_| key(rng).to_owned()))
        .collect()
}

fn scalar(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..12) {
        0 => json!(rng.random_range(-5..50)),
        1 => json!(9_007_199_254_740_993_u64),
        2 => json!(1.5),
        3 => json!(["x", 2, null]),
        4 => json!("text/with~chars"),
        5 => json!(""),
        6 => json!(rng.random_bool(0.5)),
        7 => Value::Null,
        8 => {
            let typed = ["1.50", "1e3", "-0.001", "007"][rng.random_range(0..4)];
            json!({"_type": "decimal", "_typed": typed})
        }
        9 => json!({"_type": "datetime", "_typed": "2024-01-01T01:30:00.25+01:00"}),
        10 => json!({"_type": "decimal", "_typed": 42}),
        _ => json!(-7),
    }
}

fn map(rng: &mut SmallRng, depth: u32) -> Value {
    let mut out = Map::new();
    for _ in 0..rng.random_range(0..=3) {
        let value = if depth > 0 && rng.random_bool(0.4) {
            map(rng, depth - 1)
        } else {
            scalar(rng)
        };
        out.insert(key(rng).to_owned(), value);
    }
    Value::Object(out)
}

fn value(rng: &mut SmallRng) -> Value {
    if rng.random_bool(0.5) {
        map(rng, 2)
    } else {
        scalar(rng)
    }
}

/// Writes `n` random ops (every op the client has); rejected ones are fine (a lease held, a
/// release of a stolen lease, a lease on a value), what matters is what the server holds.
async fn random_writes(app: &Store, rng: &mut SmallRng, leases: &mut Vec<Lease>, n: usize) {
    for _ in 0..n {
        let request = match rng.random_range(0..11) {
            0..=2 => WriteRequest::set(doc_path(rng), value(rng)),
            3 | 4 => WriteRequest::merge(doc_path(rng), map(rng, 2)),
            5 => WriteRequest::delete(doc_path(rng)),
            // Counters and sets live apart from the rest: the server's catch-up replays an
            // increment / add / remove after a set of the same path from the value before the
            // set (PROTOCOL.md §6, out of scope here).
            6 => WriteRequest::increment(
                ["ctr", key(rng)],
                [
                    json!(1),
                    json!(-3),
                    json!(2.5),
                    json!(9_007_199_254_740_993_u64),
                ][rng.random_range(0..4)]
                .clone(),
            ),
            7 => {
                let member = [json!("x"), json!("y"), json!(1)][rng.random_range(0..3)].clone();
                if rng.random_bool(0.6) {
                    WriteRequest::add(["tags", key(rng)], member)
                } else {
                    WriteRequest::remove(["tags", key(rng)], member)
                }
            }
            8 => {
                let key = if rng.random_bool(0.5) {
                    vec!["locks".to_owned(), key(rng).to_owned()]
                } else {
                    doc_path(rng)
                };
                WriteRequest::lease(key, 600_000, Some("w".to_owned()))
            }
            9 if !leases.is_empty() => {
                let at = rng.random_range(0..leases.len());
                if rng.random_bool(0.2) {
                    WriteRequest::renew(&leases[at], 600_000)
                } else {
                    WriteRequest::release(&leases.remove(at))
                }
            }
            _ => {
                let content: Vec<u8> = (0..rng.random_range(0..8)).map(|_| rng.random()).collect();
                WriteRequest::put_file(doc_path(rng), content)
                    .file_meta(Some("f.bin".to_owned()), None)
            }
        };
        let is_lease = request.op.name() == "lease";
        let path = request.op.path().to_vec();
        if let Ok(ack) = within("a write", app.write(request)).await
            && is_lease
        {
            leases.push(
                ack.lease(&dust_connection::Path::new(path).unwrap())
                    .unwrap(),
            );
        }
    }
}

async fn joined_device(server: &dust_conformance::Server) -> (DustConnection, MemoryEngine) {
    let engine = MemoryEngine::new();
    let connection = connect(server, &engine).await;
    (connection, engine)
}

#[tokio::test]
async fn live_catch_up_and_snapshot_replicas_all_equal_the_server_s_entries() {
    for seed in [1_u64, 7, 42] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let server = server().await;
        let (writer, live) = joined_device(&server).await;
        let app = writer.store(STORE).unwrap();
        let mut leases = Vec::new();
        random_writes(&app, &mut rng, &mut leases, 120).await;

        let seq = dust(&server).store_info(STORE).await.unwrap().seq;
        let entries = server_entries(&server).await;
        assert!(entries.len() > 5, "seed {seed}: too few entries to compare");
        let applied: std::collections::BTreeSet<String> = dust(&server)
            .ops(STORE)
            .await
            .unwrap()
            .into_iter()
            .map(|op| op.op)
            .collect();
        for op in [
            "set",
            "merge",
            "delete",
            "increment",
            "add",
            "remove",
            "lease",
            "release",
            "put_file",
        ] {
            assert!(applied.contains(op), "seed {seed}: no {op} was applied");
        }
        wait_seq(&live, seq).await;
        assert_same_entries(
            &format!("seed {seed}: live"),
            &live.entries(STORE),
            &entries,
        );

        let (_from_zero, caught_up) = joined_device(&server).await;
        wait_seq(&caught_up, seq).await;
        assert_same_entries(
            &format!("seed {seed}: joined from 0"),
            &caught_up.entries(STORE),
            &entries,
        );

        // Compacted, then more ops: a new device gets the snapshot and the ops after it.
        assert_eq!(dust(&server).compact(STORE).await.unwrap(), Some(seq));
        random_writes(&app, &mut rng, &mut leases, 30).await;
        let seq = dust(&server).store_info(STORE).await.unwrap().seq;
        let entries = server_entries(&server).await;
        let snapshot_engine = MemoryEngine::new();
        let mut changes = snapshot_engine.subscribe();
        let _from_snapshot = connect(&server, &snapshot_engine).await;
        wait_seq(&snapshot_engine, seq).await;
        let mut snapshot_seen = false;
        while let Ok(change) = changes.try_recv() {
            snapshot_seen |= matches!(change, Change::Snapshot { .. });
        }
        assert!(
            snapshot_seen,
            "seed {seed}: the third device got a snapshot"
        );
        for (what, engine) in [
            ("after the snapshot", &snapshot_engine),
            ("live", &live),
            ("joined from 0", &caught_up),
        ] {
            wait_seq(engine, seq).await;
            assert_same_entries(
                &format!("seed {seed}: {what}"),
                &engine.entries(STORE),
                &entries,
            );
        }
    }
}

#[tokio::test]
async fn a_null_set_a_nested_merge_and_typed_values_replicate_as_the_server_holds_them() {
    let server = server().await;
    let (writer, live) = joined_device(&server).await;
    let app = writer.store(STORE).unwrap();
    for request in [
        WriteRequest::set(["gone"], json!({"a": 1})),
        WriteRequest::set(["gone"], Value::Null),
        WriteRequest::set(["m"], json!({"x": {"old": 1}, "y": {"deep": 2}})),
        WriteRequest::merge(["m"], json!({"x": {"new": 3}, "y": 4})),
        WriteRequest::set(["price"], json!({"_type": "decimal", "_typed": "1.50"})),
        WriteRequest::set(
            ["at"],
            json!({"_type": "datetime", "_typed": "2024-01-01T01:30:00+01:00"}),
        ),
    ] {
        within("write", app.write(request)).await.unwrap();
    }
    let seq = dust(&server).store_info(STORE).await.unwrap().seq;
    wait_seq(&live, seq).await;
    let expected = json!({
        "gone": null,
        "m/x/new": 3,
        "m/y": 4,
        "m/y/deep": 2,
        "price": "1.50",
        "at": "2024-01-01T00:30:00Z",
    });
    let server_entries = server_entries(&server).await;
    assert_eq!(serde_json::to_value(&server_entries).unwrap(), expected);
    assert_eq!(serde_json::to_value(live.entries(STORE)).unwrap(), expected);
    dust(&server).compact(STORE).await.unwrap();
    let (_reader, snapshot) = joined_device(&server).await;
    wait_seq(&snapshot, seq).await;
    assert_eq!(
        serde_json::to_value(snapshot.entries(STORE)).unwrap(),
        expected
    );
}

#[tokio::test]
async fn an_ack_answered_from_the_write_s_event_carries_only_what_the_reply_would() {
    let server = server().await;
    // A reply lost on a live connection is given up on after the write timeout, then the
    // write is answered from its own event.
    let connection = builder(&server)
        .write_timeout(std::time::Duration::from_millis(200))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();

    dust(&server).drop_next_write_reply();
    let ack = within(
        "set",
        app.set(
            ["flag"],
            json!({"released": false, "token": 5, "hash": "h"}),
        ),
    )
    .await
    .unwrap();
    assert!(ack.is_from_event());
    assert_eq!(
        (ack.store_seq(), ack.released(), ack.token(), ack.hash()),
        (Some(1), None, None, None)
    );

    dust(&server).drop_next_write_reply();
    let ack = within(
        "lease",
        app.write(WriteRequest::lease(["job"], 60_000, Some("w1".into()))),
    )
    .await
    .unwrap();
    assert!(ack.is_from_event());
    assert_eq!(
        (ack.store_seq(), ack.token(), ack.holder()),
        (Some(2), Some(2), Some("w1"))
    );
    assert!(ack.expires_at().is_some_and(Value::is_number));

    dust(&server).drop_next_write_reply();
    let ack = within("put_file", app.put_file(["doc"], &b"hi"[..], None, None))
        .await
        .unwrap();
    assert!(ack.is_from_event());
    assert_eq!(ack.store_seq(), Some(3));
    assert!(ack.hash().is_some_and(|h| h.starts_with("sha256:")));
    assert_eq!(ack.reply().len(), 2, "{:?}", ack.reply());
}

#[test]
fn numbers_compare_as_json_numbers() {
    assert!(same(&json!(1), &json!(1.0)));
    assert!(!same(
        &json!(9_007_199_254_740_993_u64),
        &json!(9_007_199_254_740_992_u64)
    ));
    assert!(same(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
}

/// A write answered `Ok` is in the replica at that moment: its own event, which the server
/// sends before the reply, is applied first, however the reply was read (a push that is
/// awaited reads its own reply, and the frames before it, while the socket task does not run).
async fn each_ok_write_is_in_the_replica_when_answered() {
    let server = server().await;
    let (connection, engine) = joined_device(&server).await;
    let app = connection.store(STORE).unwrap();
    for i in 0..300_u64 {
        let ack = within("set", app.set(["items", &format!("{i:03}")], json!(i)))
            .await
            .unwrap();
        let seq = ack.store_seq().unwrap();
        let (applied, entries) = engine.entries_with_seq(STORE);
        assert!(
            applied >= seq,
            "write {i} was answered Ok at seq {seq}, but the replica is at seq {applied}"
        );
        assert_eq!(entries.get(&format!("items/{i:03}")), Some(&json!(i)));
    }
}

/// The same with 300 writes issued at once, more than the in-flight window (8 here): each is in
/// the replica when its answer is taken, whichever order the answers are taken in.
async fn each_ok_write_of_a_burst_is_in_the_replica_when_answered() {
    use futures_util::StreamExt as _;
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .max_in_flight(8)
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let mut answers: futures_util::stream::FuturesUnordered<_> = (0..300_u64)
        .map(|i| {
            let write = app.set(["burst".to_owned(), format!("{i:03}")], json!(i));
            async move { (i, write.await) }
        })
        .collect();
    let mut answered = 0;
    while let Some((i, ack)) = within("an answer", answers.next()).await {
        let seq = ack.unwrap().store_seq().unwrap();
        let (applied, entries) = engine.entries_with_seq(STORE);
        assert!(
            applied >= seq,
            "write {i} was answered Ok at seq {seq}, but the replica is at seq {applied}"
        );
        assert_eq!(entries.get(&format!("burst/{i:03}")), Some(&json!(i)));
        answered += 1;
    }
    assert_eq!(answered, 300);
}

#[tokio::test]
async fn a_burst_of_writes_answered_ok_is_in_the_replica_on_the_current_thread_runtime() {
    each_ok_write_of_a_burst_is_in_the_replica_when_answered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_answered_ok_is_in_the_replica_on_the_multi_thread_runtime() {
    each_ok_write_of_a_burst_is_in_the_replica_when_answered().await;
}

#[tokio::test]
async fn a_write_answered_ok_is_in_the_replica_on_the_current_thread_runtime() {
    each_ok_write_is_in_the_replica_when_answered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_ok_is_in_the_replica_on_the_multi_thread_runtime() {
    each_ok_write_is_in_the_replica_when_answered().await;
}
