//! The durable cache: `cargo bench -p dust-connection --bench cache` (`-- --quick` for a short
//! run).
//!
//! - events applied per second (a `set` of a one-leaf map each, carrying a `client_op_id`) by
//!   a `MemoryEngine` with no cache, with a `MemoryCache`, and with the `SqliteCache` on a file
//!   (WAL, `synchronous=NORMAL`): live (each event one transaction) and during a catch-up
//!   (`CATCH_UP_BATCH` events a transaction);
//! - the time to open an engine on a file holding 100,000 entries (the full run) (a restart: every store
//!   loaded before the first read).
//!
//! Prints one line per measure, and a JSON line each for machines.

#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dust_connection::{Database, MemoryCache, MemoryEngine, ServerEvent, StoreStatus, SyncEngine};
use serde_json::json;

const STORE: &str = "bench/cache";
const LEAVES: u64 = 1;

fn report(name: &str, count: usize, elapsed: Duration, unit: &str) {
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{name:<44} {rate:>14.0} {unit}/s ({count} in {elapsed:.2?})");
    println!(
        "{}",
        json!({"bench": "cache", "name": name, "count": count, "seconds": elapsed.as_secs_f64(), "per_second": rate})
    );
}

fn event(seq: u64) -> ServerEvent {
    let value: serde_json::Map<_, _> = (0..LEAVES).map(|k| (format!("f{k}"), json!(seq))).collect();
    serde_json::from_value(json!({
        "store_seq": seq, "op": "set", "path": format!("users/u{:06}", seq % 100_000),
        "value": value, "client_op_id": format!("op_{seq}"),
    }))
    .unwrap()
}

async fn events(name: &str, engine: &MemoryEngine, n: u64, catch_up: bool) {
    let from = engine.seq(STORE);
    let start = Instant::now();
    if catch_up {
        engine.set_status(STORE, StoreStatus::Connected).await;
    }
    for seq in from + 1..=from + n {
        engine.handle_server_event(STORE, &event(seq)).await;
    }
    if catch_up {
        engine.set_catch_up_complete(STORE, from + n).await;
    }
    report(name, n as usize, start.elapsed(), "events");
    assert_eq!(engine.seq(STORE), from + n);
    assert!(!engine.cache_behind(STORE));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 5_000 } else { 50_000 };
    let dir = std::env::temp_dir().join(format!("dust-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bench.db");

    events("events, no cache", &MemoryEngine::new(), n, false).await;
    let memory = MemoryEngine::with_cache(MemoryCache::new()).unwrap();
    events("events, MemoryCache", &memory, n, false).await;
    let db = Database::open(&file).unwrap();
    let durable = MemoryEngine::open(&db).unwrap();
    events(
        "events live, SqliteCache (a transaction each)",
        &durable,
        n,
        false,
    )
    .await;
    events(
        "events of a catch-up, SqliteCache (batched)",
        &durable,
        n,
        true,
    )
    .await;
    drop((durable, db));

    let start = Instant::now();
    let db = Database::open(&file).unwrap();
    let reopened = MemoryEngine::open(&db).unwrap();
    let entries = reopened.entries(STORE).len();
    report(
        "open an engine (entries loaded)",
        entries,
        start.elapsed(),
        "entries",
    );
    drop((reopened, db));
    std::fs::remove_dir_all(&dir).unwrap();
}
