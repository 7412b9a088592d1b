//! A seeded simulation of the whole Dust stack under faults.
//!
//! Each seed runs, on its own single-threaded tokio runtime with paused time, the server
//! emulation (`dust-conformance`) and 2–4 devices, each a real [`DustConnection`] with its own
//! `MemoryEngine`, connected through an in-memory network ([`sim::net`]) that cuts, stalls
//! and delays connections and refuses connects. The devices issue random writes (set, nested
//! maps, merge, increment, add, remove, delete) to 1–2 stores in bursts, some awaited one by
//! one, some fired together; meanwhile faults come on a random schedule: cuts (one device or
//! all), stalls, delays, partitions, lost and late write replies, compactions, server
//! restarts, `drop_all`, server-side socket closes, channel crashes and writes that crash
//! their channel, with a per-write cost on the server so that writes are in flight
//! at a cut and land late. Then everything heals, every write is awaited, the replicas catch
//! up, and [`sim::check`] checks:
//!
//! - every issued write was answered exactly once, with an ack or a typed error that can
//!   happen in this setting (rejected, invalid, indeterminate);
//! - the server's op log holds every acked write exactly once, at the seq its ack names, on
//!   its store and device; no write twice; a rejected write never; an indeterminate one at
//!   most once; per device and store the writes landed in issue order;
//! - every device's replica (entries and seq) equals the server's (numbers compared by value);
//! - the outboxes never held more than their capacity; the network's held bytes and open
//!   connections stayed bounded, and after quiescing each device has exactly one connection.
//!
//! All randomness of a run comes from its seed (`SmallRng::seed_from_u64`), and time is
//! simulated, so a seed replays the same scenario (up to the hash-map orders inside the
//! libraries).
//!
//! - `cargo nextest run -p dust-connection --test simulation` runs the fixed CI seeds
//!   ([`CI_SEEDS`]);
//! - `SIM_SEED=N` runs (replays) seed N only;
//! - `SIM_SEEDS=A..B` runs seeds A to B-1 (the long mode: thousands; run it with
//!   `cargo test -p dust-connection --test simulation` and `-- --nocapture`, as nextest
//!   stops a test after 2 minutes);
//! - `SIM_VERBOSE=1` prints every run's summary;
//! - `SIM_LOG=FILTER` (e.g. `dust_connection=debug,dust_conformance=debug`) prints the
//!   libraries' logs, with the simulated time, to follow a failing seed.
//!
//! A failing run prints `SIM_SEED=N` with the invariants it broke; the test fails after all
//! seeds ran, listing every failing seed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    dead_code
)]

mod sim;

use std::ops::Range;
use std::panic::AssertUnwindSafe;

#[cfg(doc)]
use dust_connection::DustConnection;

/// The seeds CI runs.
const CI_SEEDS: Range<u64> = 0..24;

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![
            seed.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SIM_SEED={seed} is not a number")),
        ];
    }
    if let Ok(range) = std::env::var("SIM_SEEDS") {
        let (a, b) = range
            .split_once("..")
            .unwrap_or_else(|| panic!("SIM_SEEDS={range}: expected A..B"));
        let a: u64 = a.trim().parse().expect("SIM_SEEDS start");
        let b: u64 = b.trim().parse().expect("SIM_SEEDS end");
        return (a..b).collect();
    }
    CI_SEEDS.collect()
}

/// Runs one seed on a fresh single-threaded runtime with paused time.
fn run_seed(seed: u64) -> Result<sim::Summary, String> {
    run_seed_with(seed, sim::Sabotage::None)
}

fn run_seed_with(seed: u64, sabotage: sim::Sabotage) -> Result<sim::Summary, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(sim::run_with(seed, sabotage))
    }));
    drop(runtime);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("panicked: {message}"))
        }
    }
}

/// Logs with the simulated time since the run started.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match tokio::runtime::Handle::try_current() {
            Ok(_) => write!(w, "{:>10.3?}", sim::elapsed()),
            Err(_) => write!(w, "{:>10}", "-"),
        }
    }
}

fn init_log() {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
}

#[test]
fn seeded_simulation_keeps_every_invariant_under_faults() {
    init_log();
    let verbose = std::env::var_os("SIM_VERBOSE").is_some();
    let mut failed = Vec::new();
    let seeds = seeds();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(summary) => {
                if verbose {
                    eprintln!("SIM_SEED={seed} ok: {summary:?}");
                }
            }
            Err(report) => {
                eprintln!("SIM_SEED={seed} FAILED: {report}");
                failed.push(seed);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {}",
        failed.len(),
        seeds.len(),
        failed
            .iter()
            .map(|s| format!("SIM_SEED={s}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The checks are not vacuous: a write sent twice (two calls with one `client_op_id`, which
/// the server applies twice) fails the run, naming the write.
#[test]
fn the_simulation_reports_a_write_applied_twice() {
    let report = run_seed_with(1, sim::Sabotage::SendTwice).expect_err("the run must fail");
    assert!(
        report.contains("writes applied more than once (1): device 0 "),
        "{report}"
    );
}

/// The checks are not vacuous: a replica that differs from the server fails the run.
#[test]
fn the_simulation_reports_a_replica_that_differs_from_the_server() {
    let report = run_seed_with(1, sim::Sabotage::TamperReplica).expect_err("the run must fail");
    assert!(
        report.contains("sabotage: 1 (not on the server)"),
        "{report}"
    );
    assert!(report.contains("device 0 "), "{report}");
}
