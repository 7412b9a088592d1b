//! The replica's reads, subscriptions and optimistic writes: `cargo bench -p dust-connection
//! --bench replica` (`-- --quick` for a short run).
//!
//! - reads of a store of 100,000 entries straight from a `MemoryEngine`'s `Replica`: a leaf,
//!   a subtree of 10 leaves, a page of 100 by glob from a cursor;
//! - events applied per second with no subscriber, with 100 subscribers whose globs do not
//!   match, and with one `**` subscriber;
//! - acknowledged writes per second (one at a time, and 1,000 in flight, against the in-process emulation, into a
//!   store of 100,000 entries) through `Store` and through `SyncedStore` (optimistic: each
//!   applied to the replica at once, then confirmed).
//!
//! Prints one line per measure, and a JSON line each for machines.

#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, Limits, TokenConfig};
use dust_connection::{DustConnection, MemoryEngine, Paging, ServerEvent, SyncEngine};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde_json::json;

const TOKEN: &str = "dust_tok_bench";
const STORE: &str = "bench/replica";

fn report(name: &str, count: usize, elapsed: Duration, unit: &str) {
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{name:<44} {rate:>14.0} {unit}/s ({count} in {elapsed:.2?})");
    println!(
        "{}",
        json!({"bench": "replica", "name": name, "count": count, "seconds": elapsed.as_secs_f64(), "per_second": rate})
    );
}

fn event(seq: u64, path: String, value: serde_json::Value) -> ServerEvent {
    serde_json::from_value(json!({"store_seq": seq, "op": "set", "path": path, "value": value}))
        .unwrap()
}

/// 10,000 users of 10 leaves each.
async fn populated() -> MemoryEngine {
    let engine = MemoryEngine::new();
    for i in 0..10_000_u64 {
        let value: serde_json::Map<_, _> = (0..10).map(|k| (format!("f{k}"), json!(k))).collect();
        engine
            .handle_server_event(STORE, &event(i + 1, format!("users/u{i:05}"), value.into()))
            .await;
    }
    engine
}

async fn reads(quick: bool) {
    let engine = populated().await;
    let replica = engine.replica(STORE);
    let n = if quick { 20_000 } else { 200_000 };
    let start = Instant::now();
    for i in 0..n {
        black_box(
            replica
                .get(format!("users/u{:05}/f3", i % 10_000).as_str())
                .unwrap(),
        );
    }
    report("get a leaf (100k entries)", n, start.elapsed(), "reads");
    let start = Instant::now();
    for i in 0..n / 10 {
        black_box(
            replica
                .get(format!("users/u{:05}", i % 10_000).as_str())
                .unwrap(),
        );
    }
    report(
        "get a subtree of 10 (100k entries)",
        n / 10,
        start.elapsed(),
        "reads",
    );
    let start = Instant::now();
    for i in 0..n / 100 {
        let cursor = format!("users/u{:05}/f2", i % 9_000);
        let page = replica
            .enumerate("users/*/f2", Paging::new().limit(100).after(cursor))
            .unwrap();
        assert_eq!(page.entries.len(), 100);
    }
    report(
        "enumerate a page of 100 by glob",
        n / 100,
        start.elapsed(),
        "pages",
    );
}

async fn events(quick: bool) {
    let n: u64 = if quick { 20_000 } else { 200_000 };
    for (name, subscribers) in [
        ("events, no subscriber", 0),
        ("events, 100 subscribers not matching", 100),
        ("events, one ** subscriber", 1),
    ] {
        let engine = MemoryEngine::new();
        let replica = engine.replica(STORE);
        let subscriptions: Vec<_> = (0..subscribers)
            .map(|i| {
                let glob = if subscribers == 1 {
                    "**".to_owned()
                } else {
                    format!("other/{i}/*")
                };
                replica.on(glob).unwrap()
            })
            .collect();
        let start = Instant::now();
        for seq in 1..=n {
            engine
                .handle_server_event(STORE, &event(seq, format!("k/{}", seq % 1000), json!(seq)))
                .await;
        }
        report(name, n as usize, start.elapsed(), "events");
        drop(subscriptions);
    }
}

async fn writes(quick: bool) {
    let server = dust_conformance::start(
        ServerConfig::default().dust(
            DustConfig::new()
                .token(TokenConfig::new(TOKEN))
                .limits(Limits::team()),
        ),
    )
    .await
    .unwrap();
    let engine = MemoryEngine::new();
    let dust = DustConnection::builder(server.url("/ws/sync"))
        .token(TOKEN)
        .store(STORE)
        .engine(engine.clone())
        .connect()
        .unwrap();
    let store = dust.store(STORE).unwrap();
    // 100,000 entries: 1,000 maps of 100 leaves.
    let mut fill: FuturesUnordered<_> = (0..1_000)
        .map(|i| {
            let value: serde_json::Map<_, _> =
                (0..100).map(|k| (format!("f{k}"), json!(k))).collect();
            store.set(["users".to_owned(), format!("u{i:04}")], value)
        })
        .collect();
    while let Some(ack) = fill.next().await {
        ack.unwrap();
    }
    let synced = engine.replica(STORE).optimistic(&store);
    let n = if quick { 2_000 } else { 20_000 };
    for (window, n) in [(1, n / 10), (1_000, n)] {
        for optimistic in [false, true] {
            let start = Instant::now();
            let mut in_flight = FuturesUnordered::new();
            for i in 0..n {
                let path = ["counters".to_owned(), format!("c{}", i % 100)];
                if optimistic {
                    in_flight.push(futures_util::future::Either::Left(
                        synced.increment(path, 1),
                    ));
                } else {
                    in_flight.push(futures_util::future::Either::Right(
                        store.increment(path, 1),
                    ));
                }
                if in_flight.len() >= window {
                    in_flight.next().await.unwrap().unwrap();
                }
            }
            while let Some(ack) = in_flight.next().await {
                ack.unwrap();
            }
            let kind = if optimistic { "SyncedStore" } else { "Store" };
            report(
                &format!("{kind} increments, {window} in flight"),
                n,
                start.elapsed(),
                "writes",
            );
        }
    }
    dust.disconnect().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reads(quick).await;
        events(quick).await;
        writes(quick).await;
    });
}
