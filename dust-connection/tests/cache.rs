//! The durable cache: the same random op sequences applied to an in-memory engine and to an
//! engine on SQLite read the same (and again after the file is reopened in a new engine), a
//! restarted engine reads offline and keeps its seq, and against the emulation a new engine on
//! the same file joins from its persisted seq and catches up to the server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format of the connection tests (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use dust_connection::{
    Cache, Capabilities, ClientOpId, Database, MemoryCache, MemoryEngine, Order, Paging, Rejection,
    Replica, ServerEvent, Snapshot, SqliteCache, StoreStatus, SyncEngine, WriteAck,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};

/// A fresh directory for one test's database, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dust-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("app.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the random op sequences ----------------------------------------------------------------

const SEGMENTS: &[&str] = &["a", "b", "c", "x/y", "é"];

fn segment(rng: &mut SmallRng) -> String {
    SEGMENTS[rng.random_range(0..SEGMENTS.len())].to_owned()
}

fn path(rng: &mut SmallRng) -> Vec<String> {
    (0..rng.random_range(1..=3)).map(|_| segment(rng)).collect()
}

fn render(segments: &[String]) -> String {
    dust_connection::Path::new(segments.to_vec())
        .unwrap()
        .render()
}

fn scalar(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..7) {
        0 => json!(rng.random_range(-1000..1000)),
        1 => json!(f64::from(rng.random_range(-1000..1000)) / 7.0),
        2 => json!(format!("s{}", rng.random_range(0..100))),
        3 => json!(rng.random_bool(0.5)),
        4 => Value::Null,
        5 => json!({"_type": "decimal", "_typed": format!("{}.50", rng.random_range(0..99))}),
        _ => json!(["m", rng.random_range(0..5)]),
    }
}

fn map(rng: &mut SmallRng, depth: u32) -> Value {
    let mut out = Map::new();
    for _ in 0..rng.random_range(0..4) {
        let value = if depth > 0 && rng.random_bool(0.3) {
            map(rng, depth - 1)
        } else {
            scalar(rng)
        };
        out.insert(segment(rng), value);
    }
    Value::Object(out)
}

/// One step of a random sequence, fed to both engines.
enum Step {
    Event(ServerEvent),
    Snapshot(Snapshot),
    Reset(u64),
    /// A join: the events that follow are a catch-up (batched into the cache)...
    Joined,
    /// ...until it completes.
    CaughtUp,
}

fn event(seq: u64, op: &str, segments: &[String], value: Value, id: u64) -> ServerEvent {
    serde_json::from_value(json!({
        "store_seq": seq, "op": op, "path": render(segments), "path_segments": segments,
        "value": value, "client_op_id": format!("op_{id}"), "device_id": "d",
    }))
    .unwrap()
}

/// A random sequence of `len` steps for store `STORE`: every op, snapshots, resets, and
/// duplicate and gapped events.
fn steps(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seq = 0;
    let mut sent: Vec<ServerEvent> = Vec::new();
    let mut out = Vec::new();
    for id in 0..len as u64 {
        let roll = rng.random_range(0..100);
        if roll < 3 {
            let mut entries = Map::new();
            for _ in 0..rng.random_range(0..6) {
                let value = scalar(&mut rng);
                let kind = if value.get("_type").is_some() {
                    "map"
                } else {
                    "string"
                };
                let stored = if value.is_object() {
                    value
                } else {
                    json!({"_scalar": value})
                };
                entries.insert(
                    render(&path(&mut rng)),
                    json!({"value": stored, "type": kind}),
                );
            }
            seq += rng.random_range(0..3);
            let snapshot = json!({"snapshot_seq": seq, "entries": entries});
            out.push(Step::Snapshot(serde_json::from_value(snapshot).unwrap()));
            continue;
        }
        if (5..7).contains(&roll) {
            out.push(if roll == 5 {
                Step::Joined
            } else {
                Step::CaughtUp
            });
            continue;
        }
        if roll < 5 {
            seq = 0;
            out.push(Step::Reset(rng.random_range(0..3)));
            continue;
        }
        if roll < 12 && !sent.is_empty() {
            let again = sent[rng.random_range(0..sent.len())].clone();
            out.push(Step::Event(again));
            continue;
        }
        seq += if roll < 16 { rng.random_range(2..4) } else { 1 };
        let at = path(&mut rng);
        let (op, value) = match rng.random_range(0..11) {
            0..=2 => ("set", map(&mut rng, 2)),
            3 => ("set", scalar(&mut rng)),
            4 => ("merge", map(&mut rng, 1)),
            5 => ("increment", json!(rng.random_range(-50..50))),
            6 => ("add", json!(["x", rng.random_range(0..3)])),
            7 => ("remove", json!([])),
            8 => ("delete", Value::Null),
            9 => match rng.random_range(0..3) {
                0 => (
                    "lease",
                    json!({"_type": "lease", "token": seq, "holder": "w"}),
                ),
                1 => (
                    "renew",
                    json!({"_type": "lease", "token": seq, "expires_at": 9}),
                ),
                _ => ("release", Value::Null),
            },
            _ => (
                "put_file",
                json!({"_type": "file", "hash": format!("sha256:{seq:02x}"), "size": 3}),
            ),
        };
        let event = event(seq, op, &at, value, id);
        sent.push(event.clone());
        out.push(Step::Event(event));
    }
    // The join ends (a catch-up still running writes what it applied).
    out.push(Step::CaughtUp);
    out
}

async fn apply(engine: &MemoryEngine, step: &Step) {
    match step {
        Step::Event(event) => engine.handle_server_event(STORE, event).await,
        Step::Snapshot(snapshot) => engine.handle_snapshot(STORE, snapshot).await,
        Step::Reset(server_seq) => engine.handle_server_reset(STORE, *server_seq).await,
        Step::Joined => engine.set_status(STORE, StoreStatus::Connected).await,
        Step::CaughtUp => {
            let seq = engine.seq(STORE);
            engine.set_catch_up_complete(STORE, seq).await;
        }
    }
}

// ---- the reads --------------------------------------------------------------------------

/// Every page of `pattern` (or of the range `from..to`), walking the cursors.
fn pages(
    replica: &Replica,
    pattern: Option<&str>,
    range: (&str, &str),
    paging: &Paging,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut paging = paging.clone();
    loop {
        let page = match pattern {
            Some(pattern) => replica.enumerate(pattern, paging.clone()).unwrap(),
            None => replica.range(range.0, range.1, paging.clone()).unwrap(),
        };
        out.push(json!(
            page.entries
                .iter()
                .map(|e| json!([e.path, e.value, e.kind, e.revision, e.pending]))
                .collect::<Vec<_>>()
        ));
        match page.next_cursor {
            Some(cursor) => paging = paging.after(cursor),
            None => return out,
        }
    }
}

/// What a reader sees of `engine`'s replica, through every read: `get` of leaves and
/// subtrees, `get_many`, `entry`, `enumerate` and `range` with paging, `status`.
fn reads(engine: &MemoryEngine) -> Value {
    let replica = engine.replica(STORE);
    let mut paths: Vec<Vec<String>> = Vec::new();
    for a in SEGMENTS {
        paths.push(vec![a.to_string()]);
        for b in SEGMENTS {
            paths.push(vec![a.to_string(), b.to_string()]);
            paths.push(vec![a.to_string(), b.to_string(), "c".into()]);
        }
    }
    let gets: Vec<Value> = paths
        .iter()
        .map(|p| json!(replica.get(p.clone()).unwrap()))
        .collect();
    let many = replica.get_many(paths.clone()).unwrap();
    let entries: Vec<Value> = paths
        .iter()
        .map(|p| {
            json!(
                replica
                    .entry(p.clone())
                    .unwrap()
                    .map(|e| json!([e.path, e.value, e.kind, e.revision, e.pending]))
            )
        })
        .collect();
    let mut listed = Vec::new();
    for pattern in ["**", "a/**", "a/*", "*/b", "*/*/c", "x~1y/**"] {
        for (limit, order) in [(1, Order::Asc), (3, Order::Desc), (100, Order::Asc)] {
            let paging = Paging::new().limit(limit).order(order);
            listed.push(json!([
                pattern,
                pages(&replica, Some(pattern), ("", ""), &paging)
            ]));
        }
    }
    for (from, to) in [("a", "b"), ("", "~"), ("b/", "c")] {
        let paging = Paging::new().limit(2);
        listed.push(json!([
            from,
            to,
            pages(&replica, None, (from, to), &paging)
        ]));
    }
    let status = replica.status();
    json!({
        "gets": gets,
        "many": many,
        "entries": entries,
        "listed": listed,
        "status": [status.last_seq, status.entry_count, status.optimistic, status.pending_ops],
        "all": engine.entries_with_seq(STORE),
    })
}

#[tokio::test]
async fn the_memory_and_the_sqlite_engines_read_the_same_and_so_does_the_reopened_file() {
    for seed in 0..12 {
        let dir = TempDir::new(&format!("differential-{seed}"));
        // The reference (no cache), the in-memory cache, the SQLite one.
        let plain = MemoryEngine::new();
        let memory_cache = MemoryCache::new();
        let memory = MemoryEngine::with_cache(memory_cache.clone()).unwrap();
        let db = Database::open(dir.db()).unwrap();
        let durable = MemoryEngine::open(&db).unwrap();
        let steps = steps(seed, 300);
        for (i, step) in steps.iter().enumerate() {
            for engine in [&plain, &memory, &durable] {
                apply(engine, step).await;
            }
            if i % 50 == 0 {
                let expected = reads(&plain);
                assert_eq!(expected, reads(&memory), "seed {seed}, step {i}: memory");
                assert_eq!(expected, reads(&durable), "seed {seed}, step {i}: sqlite");
            }
        }
        let expected = reads(&plain);
        assert_eq!(expected, reads(&memory), "seed {seed}: memory, live");
        assert_eq!(expected, reads(&durable), "seed {seed}: sqlite, live");
        assert!(!durable.cache_behind(STORE) && !memory.cache_behind(STORE));
        drop((durable, db));

        // What the two caches hold is the same, and engines made from them read the same.
        let db = Database::open(dir.db()).unwrap();
        let sqlite_cache = SqliteCache::new(db.clone());
        assert_eq!(
            sqlite_cache.load().unwrap(),
            memory_cache.load().unwrap(),
            "seed {seed}"
        );
        let reopened = MemoryEngine::open(&db).unwrap();
        assert_eq!(expected, reads(&reopened), "seed {seed}: sqlite, reopened");
        let rebuilt = MemoryEngine::with_cache(memory_cache).unwrap();
        assert_eq!(expected, reads(&rebuilt), "seed {seed}: memory, rebuilt");
        assert_eq!(
            reopened.last_store_seq(STORE).await,
            plain.last_store_seq(STORE).await
        );
    }
}

#[tokio::test]
async fn a_restarted_engine_reads_offline_at_once_and_keeps_its_seq_per_store()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new("restart");
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    let at = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    engine
        .handle_server_event(
            STORE,
            &event(1, "set", &at(&["users", "ada"]), json!({"name": "Ada"}), 1),
        )
        .await;
    engine
        .handle_server_event(STORE, &event(2, "increment", &at(&["visits"]), json!(3), 2))
        .await;
    engine
        .handle_server_event("acme/other", &event(7, "set", &at(&["k"]), json!("v"), 3))
        .await;
    drop((engine, db));

    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    let app = engine.replica(STORE);
    assert_eq!(app.get("users/ada")?, Some(json!({"name": "Ada"})));
    assert_eq!(app.get(["visits"])?, Some(json!(3)));
    assert_eq!(
        app.entry("visits")?.map(|e| (e.kind, e.revision)),
        Some(("counter".into(), 2))
    );
    assert_eq!(engine.last_store_seq(STORE).await, 2);
    assert_eq!(engine.last_store_seq("acme/other").await, 7);
    assert_eq!(engine.get("acme/other", "k"), Some(json!("v")));
    assert_eq!(app.status().connection, None, "nothing connected yet");
    Ok(())
}

/// A [`SyncEngine`] over a [`MemoryEngine`] that records what the joins asked for and the
/// seqs of the events the connection delivered, and tells when its last clone is gone (the
/// connection's tasks let go of the engine, and so of the database file).
#[derive(Clone)]
struct Recording {
    engine: MemoryEngine,
    asked: Arc<Mutex<Vec<u64>>>,
    delivered: Arc<Mutex<Vec<u64>>>,
    _gone: Arc<Gone>,
}

struct Gone(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Gone {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Recording {
    fn new(engine: MemoryEngine) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let recording = Self {
            engine,
            asked: Arc::default(),
            delivered: Arc::default(),
            _gone: Arc::new(Gone(Some(tx))),
        };
        (recording, rx)
    }
}

#[async_trait]
impl SyncEngine for Recording {
    async fn last_store_seq(&self, store: &str) -> u64 {
        let seq = self.engine.last_store_seq(store).await;
        self.asked.lock().unwrap().push(seq);
        seq
    }
    async fn set_status(&self, store: &str, status: StoreStatus) {
        self.engine.set_status(store, status).await;
    }
    async fn set_capabilities(&self, store: &str, capabilities: &Capabilities) {
        self.engine.set_capabilities(store, capabilities).await;
    }
    async fn handle_server_event(&self, store: &str, event: &ServerEvent) {
        self.delivered.lock().unwrap().push(event.store_seq);
        self.engine.handle_server_event(store, event).await;
    }
    async fn handle_snapshot(&self, store: &str, snapshot: &Snapshot) {
        self.engine.handle_snapshot(store, snapshot).await;
    }
    async fn set_catch_up_complete(&self, store: &str, through_seq: u64) {
        self.engine.set_catch_up_complete(store, through_seq).await;
    }
    async fn handle_write_accepted(&self, store: &str, id: &ClientOpId, ack: &WriteAck) {
        self.engine.handle_write_accepted(store, id, ack).await;
    }
    async fn handle_write_rejected(&self, store: &str, id: &ClientOpId, rejection: &Rejection) {
        self.engine
            .handle_write_rejected(store, id, rejection)
            .await;
    }
    async fn handle_server_reset(&self, store: &str, server_seq: u64) {
        self.engine.handle_server_reset(store, server_seq).await;
    }
}

async fn server_seq(server: &dust_conformance::Server) -> u64 {
    dust(server).store_info(STORE).await.unwrap().seq
}

#[tokio::test]
async fn a_new_engine_on_the_same_file_joins_from_the_persisted_seq_and_catches_up() {
    let server = server().await;
    let dir = TempDir::new("rejoin");

    // A session on the durable engine: writes, all applied, then the process goes.
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    let (first, first_gone) = Recording::new(engine.clone());
    let connection = builder(&server).engine(first.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    within("writes", async {
        app.set(["users", "ada"], json!({"name": "Ada", "age": 36}))
            .await
            .unwrap();
        app.increment(["visits"], 2).await.unwrap();
        app.merge(["users", "ada"], json!({"age": 37}))
            .await
            .unwrap();
    })
    .await;
    let persisted = server_seq(&server).await;
    wait_engine(&engine, "the engine applies its writes", || {
        engine.seq(STORE) == persisted
    })
    .await;
    assert_eq!(
        *first.asked.lock().unwrap(),
        [0],
        "the first join starts from 0"
    );
    connection.disconnect().await;
    drop((connection, app, first, engine, db));
    within("the connection lets go of the engine", first_gone)
        .await
        .unwrap();

    // Meanwhile another device writes.
    let other = MemoryEngine::new();
    let writer = connect(&server, &other).await;
    let store = writer.store(STORE).unwrap();
    within("other writes", async {
        store.increment(["visits"], 5).await.unwrap();
        store
            .set(["users", "bob"], json!({"name": "Bob"}))
            .await
            .unwrap();
        store.delete(["users", "ada", "age"]).await.unwrap();
    })
    .await;
    writer.disconnect().await;
    let target = server_seq(&server).await;
    assert!(target > persisted);

    // The restarted process: its data is there offline, and its join asks from its seq.
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    assert_eq!(
        engine.replica(STORE).get("users/ada/age").unwrap(),
        Some(json!(37))
    );
    assert_eq!(engine.last_store_seq(STORE).await, persisted);
    let (second, second_gone) = Recording::new(engine.clone());
    let connection = builder(&server).engine(second.clone()).connect().unwrap();
    wait_engine(&engine, "the engine catches up", || {
        engine.seq(STORE) == target
    })
    .await;
    assert_eq!(
        second.asked.lock().unwrap().first(),
        Some(&persisted),
        "the join sent the persisted seq"
    );
    let delivered = second.delivered.lock().unwrap().clone();
    assert_eq!(
        delivered,
        (persisted + 1..=target).collect::<Vec<_>>(),
        "only the events after it"
    );
    assert_eq!(engine.entries(STORE), server_entries(&server).await);
    connection.disconnect().await;
    drop((connection, second, engine, db));
    within("the connection lets go of the engine", second_gone)
        .await
        .unwrap();

    // The file holds the caught-up state.
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    assert_eq!(engine.seq(STORE), target);
    assert_eq!(engine.entries(STORE), server_entries(&server).await);
    drop((engine, db));

    // More writes, then the server compacts its log: the next join, from below the snapshot,
    // gets the snapshot, and the file holds it.
    let writer = connect(&server, &other).await;
    let store = writer.store(STORE).unwrap();
    within("writes before the compaction", async {
        store
            .set(["users", "ada"], json!({"name": "Ada L."}))
            .await
            .unwrap();
        store.increment(["visits"], 1).await.unwrap();
    })
    .await;
    writer.disconnect().await;
    let snapshot_seq = dust(&server).compact(STORE).await.unwrap().unwrap();
    assert!(snapshot_seq > target);
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    let mut changes = engine.subscribe();
    let (third, third_gone) = Recording::new(engine.clone());
    let connection = builder(&server).engine(third.clone()).connect().unwrap();
    let taken = within("the engine takes the snapshot", async {
        loop {
            match changes.recv().await {
                Ok(dust_connection::Change::Snapshot { seq, .. }) => break seq,
                Ok(_) => {}
                Err(error) => panic!("the engine's changes: {error}"),
            }
        }
    })
    .await;
    assert_eq!(taken, snapshot_seq);
    assert_eq!(engine.seq(STORE), snapshot_seq);
    assert_eq!(third.asked.lock().unwrap().first(), Some(&target));
    assert!(
        third.delivered.lock().unwrap().is_empty(),
        "the catch-up was the snapshot alone"
    );
    assert_eq!(engine.entries(STORE), server_entries(&server).await);
    connection.disconnect().await;
    drop((connection, third, engine, db));
    within("the connection lets go of the engine", third_gone)
        .await
        .unwrap();
    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    assert_eq!(engine.seq(STORE), snapshot_seq);
    assert_eq!(engine.entries(STORE), server_entries(&server).await);
}

#[tokio::test]
async fn the_cache_and_the_durable_outbox_share_one_database() {
    let server = server().await;
    let dir = TempDir::new("with-outbox");
    let device = || dust_connection::DeviceId::new("device-cache-outbox");

    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    let (recording, gone) = Recording::new(engine.clone());
    let connection = builder(&server)
        .device_id(device())
        .engine(recording.clone())
        .durable_outbox(db.clone())
        .connect()
        .unwrap();
    let app = connection.store(STORE).unwrap();
    let queued = within("queued", async {
        let mut queued = Vec::new();
        for i in 0..20 {
            let write = dust_connection::WriteRequest::set(["items", &format!("i{i:02}")], i);
            queued.push(app.queue(write).await.unwrap());
        }
        queued
    })
    .await;
    within("acked", async {
        for write in queued {
            write.await.unwrap();
        }
    })
    .await;
    let seq = server_seq(&server).await;
    wait_engine(&engine, "the engine applies the writes", || {
        engine.seq(STORE) == seq
    })
    .await;
    connection.disconnect().await;
    drop((connection, app, recording, engine, db));
    within("the connection lets go of the engine", gone)
        .await
        .unwrap();

    let db = Database::open(dir.db()).unwrap();
    let engine = MemoryEngine::open(&db).unwrap();
    assert_eq!(engine.seq(STORE), seq);
    assert_eq!(engine.entries(STORE), server_entries(&server).await);
    let connection = builder(&server)
        .device_id(device())
        .engine(engine.clone())
        .durable_outbox(db.clone())
        .connect()
        .unwrap();
    let app = connection.store(STORE).unwrap();
    assert!(
        app.recovered().is_empty(),
        "every answered write left the outbox"
    );
    wait_joined(&connection, STORE).await;
    within("a write after the restart", app.set(["after"], true))
        .await
        .unwrap();
    let logged = logged_ids(&server, STORE).await;
    assert_eq!(logged.len(), 21, "each write applied once, none resent");
    assert_applied_once_in_order(&server, STORE, &logged).await;
    connection.disconnect().await;
}

#[tokio::test]
async fn a_process_that_dies_mid_catch_up_restarts_from_a_state_the_store_was_in() {
    let dir = TempDir::new("mid-catch-up");
    let plain = MemoryEngine::new();
    let db = Database::open(dir.db()).unwrap();
    let durable = MemoryEngine::open(&db).unwrap();
    let batch = dust_connection::CATCH_UP_BATCH;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut at_batch = None;
    for engine in [&plain, &durable] {
        engine.set_status(STORE, StoreStatus::Connected).await;
    }
    for seq in 1..=(batch + 10) as u64 {
        let event = event(seq, "set", &path(&mut rng), map(&mut rng, 1), seq);
        for engine in [&plain, &durable] {
            engine.handle_server_event(STORE, &event).await;
        }
        if seq == batch as u64 {
            at_batch = Some(reads(&plain));
        }
    }
    // Killed before `catch_up_complete`: the last 10 events never reached the file.
    drop((durable, db));
    let db = Database::open(dir.db()).unwrap();
    let reopened = MemoryEngine::open(&db).unwrap();
    assert_eq!(reopened.last_store_seq(STORE).await, batch as u64);
    assert_eq!(Some(reads(&reopened)), at_batch);
}
