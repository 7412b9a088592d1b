//! Acknowledged writes per second through the whole stack (telemetry, validation, outbox,
//! push, the server's apply and reply, and the answer back), against the in-process Dust
//! emulation: `cargo bench -p dust-connection`, in both wire formats (JSON, MessagePack).
//!
//! Prints one line per format and workload, and a JSON line each for machines.

#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::{DustConnection, Format, MemoryEngine, WriteRequest};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

async fn run(quick: bool, format: Format) {
    let name = match format {
        Format::MessagePack => "msgpack",
        _ => "json",
    };
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new("dust_tok_bench"))),
    )
    .await
    .unwrap();
    let engine = MemoryEngine::new();
    let connection = DustConnection::builder(server.url("/ws/sync"))
        .token("dust_tok_bench")
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
    let n = if quick { 2_000 } else { 20_000 };

    let started = Instant::now();
    for _ in 0..n {
        store
            .write(WriteRequest::increment(["seq"], 1))
            .await
            .unwrap();
    }
    report(name, "sequential", n, started.elapsed());

    for window in [100usize, 1000] {
        let started = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let mut issued = 0;
        let mut done = 0;
        while done < n {
            while issued < n && in_flight.len() < window {
                let store = store.clone();
                in_flight.push(async move {
                    store
                        .write(WriteRequest::set(["k", "v"], issued as u64))
                        .await
                });
                issued += 1;
            }
            in_flight.next().await.unwrap().unwrap();
            done += 1;
        }
        report(name, &format!("pipelined_{window}"), n, started.elapsed());
    }
    connection.disconnect().await;
}

fn report(format: &str, workload: &str, n: usize, elapsed: Duration) {
    let per_s = n as f64 / elapsed.as_secs_f64();
    let us = elapsed.as_secs_f64() * 1e6 / n as f64;
    println!(
        "dust-connection {format:>7} {workload:>14}: {n} acknowledged writes in {:.2?} = {per_s:.0} writes/s ({us:.1} µs each)",
        elapsed
    );
    println!(
        "{{\"bench\":\"dust_writes\",\"format\":\"{format}\",\"workload\":\"{workload}\",\"writes\":{n},\"wall_s\":{:.4},\"writes_per_s\":{per_s:.0}}}",
        elapsed.as_secs_f64()
    );
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
}
