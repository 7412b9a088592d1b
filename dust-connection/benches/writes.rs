//! Acknowledged writes per second through the whole stack (telemetry, validation, outbox,
//! push, the server's apply and reply, and the answer back), against the in-process Dust
//! emulation: `cargo bench -p dust-connection`, in both wire formats (JSON, MessagePack).
//!
//! Beside each row, the raw push rate of the same run: the same writes pushed straight on a
//! `phoenix-channels` channel of the store (no tower stack, no outbox, no engine), with the
//! same number in flight. The ratio `stack / raw` is what the stack costs (issue 13's goal:
//! at least 50%).
//!
//! Then the durable outbox ([`DustConnectionBuilder::durable_outbox`], a SQLite file; its
//! disk syncs grouped per batch of writes that arrive together) beside the in-memory outbox,
//! same server, same workloads (JSON).
//!
//! Prints one line per format and workload, and a JSON line each for machines.
//!
//! [`DustConnectionBuilder::durable_outbox`]: dust_connection::DustConnectionBuilder::durable_outbox

#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::{Database, DustConnection, Format, MemoryEngine, WriteRequest};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use phoenix_channels::{Channel, Payload, Serializer, Socket};
use serde_json::json;

const TOKEN: &str = "dust_tok_bench";

/// How many writes are in flight at once, by workload.
const WORKLOADS: [(&str, usize); 3] = [
    ("sequential", 1),
    ("pipelined_100", 100),
    ("pipelined_1000", 1000),
];

async fn run(quick: bool, format: Format) {
    let name = match format {
        Format::MessagePack => "msgpack",
        _ => "json",
    };
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new(TOKEN))),
    )
    .await
    .unwrap();
    let engine = MemoryEngine::new();
    let connection = DustConnection::builder(server.url("/ws/sync"))
        .token(TOKEN)
        .store("bench/s")
        .engine(engine)
        .format(format)
        .outbox_capacity(4096)
        .connect()
        .unwrap();
    let store = connection.store("bench/s").unwrap();
    // Warm up (and wait for the join and catch-up).
    for _ in 0..200 {
        store
            .write(WriteRequest::increment(["warm"], 1))
            .await
            .unwrap();
    }
    let raw = raw_channel(&server, format).await;
    let n = if quick { 2_000 } else { 20_000 };

    for (workload, window) in WORKLOADS {
        let stack = windowed(n, window, |i| set(&store, i)).await;
        let pushed = windowed(n, window, |i| {
            let params = match format {
                Format::MessagePack => Payload::msgpack(&write_params(i)),
                _ => Payload::json(&write_params(i)),
            };
            let push = raw.push_payload("write", params.unwrap());
            async move {
                match push.await {
                    Ok(reply) if reply.is_ok() => Ok(()),
                    Ok(reply) => Err(format!("{:?}", reply.response())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        report(name, workload, n, stack, pushed);
    }
    connection.disconnect().await;
}

/// A plain phoenix-channels channel on another store of the same server, joined.
async fn raw_channel(server: &dust_conformance::Server, format: Format) -> Channel {
    let serializer = match format {
        Format::MessagePack => Serializer::MessagePack,
        _ => Serializer::Json,
    };
    let socket = Socket::builder(server.url("/ws/sync"))
        .param("capver", "3")
        .param("device_id", "dev_raw")
        .param("token", TOKEN)
        .serializer(serializer)
        .connect()
        .unwrap();
    let (channel, messages) = socket
        .channel("store:bench/raw")
        .params(Payload::from(json!({"last_store_seq": 0})))
        .stream();
    // The store's events are read and dropped, as an app with no replica would.
    tokio::spawn(messages.for_each(|_| async {}));
    channel.join().await.unwrap();
    channel
}

/// The params the stack sends for `set k/v = i` (a fresh `client_op_id` each).
fn write_params(i: usize) -> serde_json::Value {
    json!({
        "client_op_id": format!("op_raw_{i}"),
        "op": "set",
        "path": "k/v",
        "path_segments": ["k", "v"],
        "value": i,
    })
}

/// The bench's write: `set k/v = i` through the whole stack.
fn set(
    store: &dust_connection::Store,
    i: usize,
) -> impl std::future::Future<Output = Result<(), String>> + use<> {
    let store = store.clone();
    async move {
        let write = store.write(WriteRequest::set(["k", "v"], i as u64));
        write.await.map(drop).map_err(|e| e.to_string())
    }
}

/// Runs `n` operations with at most `window` in flight; the elapsed time.
async fn windowed<F, Fut>(n: usize, window: usize, mut op: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0;
    let mut done = 0;
    while done < n {
        while issued < n && in_flight.len() < window {
            in_flight.push(op(issued));
            issued += 1;
        }
        in_flight.next().await.unwrap().unwrap();
        done += 1;
    }
    started.elapsed()
}

fn report(format: &str, workload: &str, n: usize, stack: Duration, raw: Duration) {
    let per_s = |d: Duration| n as f64 / d.as_secs_f64();
    let (stack_s, raw_s) = (per_s(stack), per_s(raw));
    let us = stack.as_secs_f64() * 1e6 / n as f64;
    println!(
        "dust-connection {format:>7} {workload:>14}: {n} acknowledged writes in {stack:.2?} = {stack_s:.0} writes/s ({us:.1} µs each); raw pushes {raw_s:.0}/s; stack/raw {:.2}",
        stack_s / raw_s
    );
    println!(
        "{{\"bench\":\"dust_writes\",\"format\":\"{format}\",\"workload\":\"{workload}\",\"writes\":{n},\"wall_s\":{:.4},\"writes_per_s\":{stack_s:.0},\"raw_pushes_per_s\":{raw_s:.0},\"stack_over_raw\":{:.3}}}",
        stack.as_secs_f64(),
        stack_s / raw_s
    );
}

/// The durable outbox beside the in-memory one, on one server.
async fn durable(quick: bool) {
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new(TOKEN))),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("dust-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let connect = |store: &str, database: Option<Database>| {
        let mut builder = DustConnection::builder(server.url("/ws/sync"))
            .token(TOKEN)
            .store(store)
            .engine(MemoryEngine::new())
            .outbox_capacity(4096);
        if let Some(database) = database {
            builder = builder.durable_outbox(database);
        }
        builder.connect().unwrap()
    };
    let memory = connect("bench/memory", None);
    let disk = connect(
        "bench/durable",
        Some(Database::open(dir.join("outbox.db")).unwrap()),
    );
    let stores = [
        memory.store("bench/memory").unwrap(),
        disk.store("bench/durable").unwrap(),
    ];
    for store in &stores {
        for _ in 0..200 {
            store
                .write(WriteRequest::increment(["warm"], 1))
                .await
                .unwrap();
        }
    }
    let n = if quick { 1_000 } else { 10_000 };
    for (workload, window) in WORKLOADS {
        let mut rates = Vec::new();
        for store in &stores {
            let elapsed = windowed(n, window, |i| set(store, i)).await;
            rates.push(n as f64 / elapsed.as_secs_f64());
        }
        let (memory_s, durable_s) = (rates[0], rates[1]);
        println!(
            "dust-connection durable outbox {workload:>14}: {durable_s:.0} writes/s; in-memory outbox {memory_s:.0}/s; durable/memory {:.2}",
            durable_s / memory_s
        );
        println!(
            "{{\"bench\":\"dust_durable_writes\",\"workload\":\"{workload}\",\"writes\":{n},\"durable_per_s\":{durable_s:.0},\"memory_per_s\":{memory_s:.0},\"durable_over_memory\":{:.3}}}",
            durable_s / memory_s
        );
    }
    memory.disconnect().await;
    disk.disconnect().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; `--quick` (or `cargo test --benches`) runs a short version.
    let quick = std::env::args().any(|a| a == "--quick" || a == "--test");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for format in [Format::Json, Format::MessagePack] {
        runtime.block_on(run(quick, format));
    }
    runtime.block_on(durable(quick));
}
