//! The simulation of one seed: the server emulation and 2–4 devices (each a real
//! `DustConnection` with its own `MemoryEngine`) over the simulated network of [`net`], random
//! writes from every device, random faults, then heal, quiesce and check the invariants.

pub mod check;
pub mod net;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dust_conformance::dust::{DustConfig, DustControl, OpInfo, TokenConfig};
use dust_conformance::{Control, ServerConfig};
use dust_connection::{DeviceId, DustConnection, Format, MemoryEngine};
use phoenix_channels::backoff::ReconnectSchedule;
use phoenix_channels::transport::{ConnectRequest, StreamConnector};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use net::Net;
use workload::{DevicePlan, Journal, OutboxMeter};

pub const TOKEN: &str = "dust_tok_sim";

/// How long (simulated) the devices get to have every write answered after the faults end,
/// and then how long the replicas get to catch up.
const SETTLE: Duration = Duration::from_secs(600);

thread_local! {
    static STARTED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The simulated time since this thread's run started (for the logs).
pub fn elapsed() -> Duration {
    STARTED.with(|s| s.get().map(|t| t.elapsed()).unwrap_or_default())
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shape of one run, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Params {
    pub devices: usize,
    pub stores: Vec<String>,
    pub outbox_capacity: usize,
    pub write_cost: Duration,
    pub bursts: usize,
    pub max_burst: usize,
    pub fault_window: Duration,
    pub heartbeat: Duration,
    pub write_timeout: Duration,
    /// Each device's wire format: device 0 speaks JSON, device 1 MessagePack, the others
    /// either, so that every run mixes both against one server.
    pub formats: Vec<Format>,
}

impl Params {
    fn draw(rng: &mut SmallRng) -> Self {
        let devices = rng.random_range(2..=4);
        let stores = (0..rng.random_range(1..=2))
            .map(|i| format!("acme/s{i}"))
            .collect();
        let outbox_capacity = [4, 8, 16, 1024][rng.random_range(0..4)];
        let write_cost = if rng.random_bool(0.2) {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.random_range(1..=6))
        };
        Self {
            devices,
            stores,
            outbox_capacity,
            write_cost,
            bursts: rng.random_range(4..=16),
            max_burst: rng.random_range(1..=24),
            fault_window: Duration::from_millis(rng.random_range(2_000..=30_000)),
            heartbeat: Duration::from_secs(rng.random_range(2..=10)),
            write_timeout: Duration::from_secs(rng.random_range(2..=30)),
            formats: (0..devices)
                .map(|d| match d {
                    0 => Format::Json,
                    1 => Format::MessagePack,
                    _ if rng.random_bool(0.5) => Format::Json,
                    _ => Format::MessagePack,
                })
                .collect(),
        }
    }
}

/// The server's op log as seen by the harness: compaction removes ops from the server's log,
/// so the harness reads the log just before each compaction.
#[derive(Default)]
pub struct ObservedLog {
    /// Per store: seq → op.
    pub ops: Vec<BTreeMap<u64, OpInfo>>,
    /// Per store: seqs compacted before the harness could read them (a write committed
    /// between the read and the compaction).
    pub unobserved: Vec<Vec<u64>>,
}

impl ObservedLog {
    async fn capture(&mut self, dust: &DustControl, stores: &[String]) {
        for (i, store) in stores.iter().enumerate() {
            if let Ok(ops) = dust.ops(store).await {
                for op in ops {
                    self.ops[i].insert(op.seq, op);
                }
            }
        }
    }
}

/// What a passing run reports.
#[derive(Debug)]
pub struct Summary {
    pub params: Params,
    pub writes: usize,
    pub acked: usize,
    pub errors: BTreeMap<String, usize>,
    pub faults: BTreeMap<&'static str, usize>,
    pub connects: u64,
    pub cuts: u64,
    pub unobserved: usize,
    pub outbox_peak: usize,
    pub peak_links: usize,
    pub peak_held_bytes: usize,
    pub simulated: Duration,
}

/// Deliberate faults of the harness's own making, to check that the checks fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Nothing: the real run.
    None,
    /// Device 0 writes its third write twice (two calls, one `client_op_id`).
    SendTwice,
    /// Device 0's replica of the first store gets an event the server never sent.
    TamperReplica,
}

/// Runs one seed. `Err` holds the report of every invariant that failed.
pub async fn run(seed: u64) -> Result<Summary, String> {
    run_with(seed, Sabotage::None).await
}

/// Runs one seed with a sabotage.
pub async fn run_with(seed: u64, sabotage: Sabotage) -> Result<Summary, String> {
    let started = Instant::now();
    STARTED.with(|s| s.set(Some(started)));
    let mut rng = SmallRng::seed_from_u64(seed);
    let params = Params::draw(&mut rng);

    let mut config = DustConfig::new().token(TokenConfig::new(TOKEN));
    for store in &params.stores {
        config = config.store(store.clone());
    }
    let server = dust_conformance::start(ServerConfig::default().dust(config))
        .await
        .map_err(|e| format!("the emulation did not start: {e}"))?;
    let control = server.control();
    let dust = server
        .dust()
        .ok_or_else(|| "the emulation has no dust socket".to_owned())?;
    // The real server takes a few ms per write: writes queue up in a channel and keep
    // landing after their connection is gone.
    dust.set_write_cost(params.write_cost);
    let net = Net::new({
        let control = control.clone();
        move |stream| {
            // Fails only once the server has stopped; the stream is dropped then, and the
            // client sees its connection closed.
            let _ = control.serve_stream(stream);
        }
    });

    let journal: Journal = Arc::default();
    let meter = OutboxMeter::default();
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for d in 0..params.devices {
        let device_id = format!("dev_sim{seed}n{d}");
        let engine = MemoryEngine::new();
        let connector = {
            let net = net.clone();
            StreamConnector::new(move |request: ConnectRequest| {
                let opened = net.open(&request);
                async move { opened }
            })
        };
        let heartbeat = params.heartbeat;
        let mut builder = DustConnection::builder(server.url("/ws/sync"))
            .token(TOKEN)
            .device_id(DeviceId::new(device_id.clone()))
            .engine(engine.clone())
            .outbox_capacity(params.outbox_capacity)
            .write_timeout(params.write_timeout)
            .format(params.formats[d])
            .socket(move |s| {
                s.connector(connector)
                    .heartbeat_interval(heartbeat)
                    .reconnect_policy(
                        ReconnectSchedule::default().with_schedule_ms([10, 50, 200, 500, 1000]),
                    )
            });
        for store in &params.stores {
            builder = builder.store(store.clone());
        }
        let connection = builder
            .connect()
            .map_err(|e| format!("device {d} did not build: {e}"))?;
        let stores = params
            .stores
            .iter()
            .map(|s| connection.store(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("device {d}: {e}"))?;
        let plan = DevicePlan {
            device: d,
            bursts: params.bursts,
            max_burst: params.max_burst,
            // Spread over the fault window (some bursts come after it).
            mean_pause: params.fault_window / params.bursts as u32,
            send_twice: (sabotage == Sabotage::SendTwice && d == 0).then_some(2),
            seed: rng.random(),
        };
        tasks.push(tokio::spawn(workload::run_device(
            plan,
            stores,
            journal.clone(),
            meter.clone(),
        )));
        devices.push((device_id, connection, engine));
    }

    // Faults, on a random schedule, for the fault window; then everything heals.
    let mut log = ObservedLog {
        ops: vec![BTreeMap::new(); params.stores.len()],
        unobserved: vec![Vec::new(); params.stores.len()],
    };
    let device_ids: Vec<String> = devices.iter().map(|(id, _, _)| id.clone()).collect();
    let faults = faults::inject(
        &mut rng,
        &params,
        &net,
        &control,
        &dust,
        &device_ids,
        &mut log,
    )
    .await;
    net.heal();
    dust.clear_write_reply_fault();

    let mut problems = Vec::new();
    // Every write answered.
    let aborts: Vec<_> = tasks
        .iter()
        .map(tokio::task::JoinHandle::abort_handle)
        .collect();
    let all_answered = tokio::time::timeout(SETTLE, futures_util::future::join_all(tasks)).await;
    match all_answered {
        Err(_) => {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            problems.push(format!(
                "not every write was answered {} s (simulated) after the faults ended",
                SETTLE.as_secs()
            ));
        }
        Ok(results) => {
            for (d, result) in results.into_iter().enumerate() {
                if let Err(e) = result {
                    problems.push(format!("device {d}'s task failed: {e}"));
                }
            }
        }
    }
    // Quiet: the server's seq no longer moves and every replica holds it.
    if let Err(state) = quiesce(&dust, &params.stores, &devices).await {
        problems.push(format!(
            "the replicas did not catch up with the server within {} s (simulated): {state}",
            SETTLE.as_secs()
        ));
    }
    if sabotage == Sabotage::TamperReplica {
        let (_, _, engine) = &devices[0];
        let store = &params.stores[0];
        let event = serde_json::from_value(serde_json::json!({
            "store_seq": engine.seq(store) + 1, "op": "set", "path": "sabotage", "value": 1
        }))
        .map_err(|e| format!("the sabotage event: {e}"))?;
        dust_connection::SyncEngine::handle_server_event(engine, store, &event).await;
    }
    log.capture(&dust, &params.stores).await;
    // The device tasks are done (or aborted): nothing writes to the journal any more.
    let journal = std::mem::take(&mut *lock(&journal));

    let report = check::Checker {
        params: &params,
        journal: &journal,
        log: &log,
        dust: &dust,
        devices: &devices,
        meter: &meter,
        net: &net,
    }
    .run()
    .await;
    problems.extend(report);

    let summary = {
        let mut errors = BTreeMap::new();
        for issued in journal.iter() {
            if let Some(Err(e)) = &issued.outcome {
                let kind = format!("{e:?}");
                let kind = kind.split('(').next().unwrap_or_default().to_owned();
                *errors.entry(kind).or_default() += 1;
            }
        }
        Summary {
            params: params.clone(),
            writes: journal.len(),
            acked: journal
                .iter()
                .filter(|i| matches!(i.outcome, Some(Ok(_))))
                .count(),
            errors,
            faults,
            connects: net.stats().connects.load(Ordering::Relaxed),
            cuts: net.stats().cuts.load(Ordering::Relaxed),
            unobserved: log.unobserved.iter().map(Vec::len).sum(),
            outbox_peak: meter.peak(),
            peak_links: net.stats().peak_live_links.load(Ordering::Relaxed),
            peak_held_bytes: net.stats().peak_held.load(Ordering::Relaxed),
            simulated: started.elapsed(),
        }
    };
    for (_, connection, _) in &devices {
        connection.disconnect().await;
    }
    server.shutdown().await;
    if problems.is_empty() {
        Ok(summary)
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "{summary:?}");
        for p in problems {
            let _ = writeln!(out, "  - {p}");
        }
        Err(out)
    }
}

/// Waits until every device's replica of every store is connected and at the server's seq,
/// and stays so for a while (writes of cut connections may still land late).
async fn quiesce(
    dust: &DustControl,
    stores: &[String],
    devices: &[(String, DustConnection, MemoryEngine)],
) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE;
    let mut stable_since: Option<(Instant, Vec<u64>)> = None;
    loop {
        let mut server_seqs = Vec::new();
        for store in stores {
            server_seqs.push(dust.store_info(store).await.map(|i| i.seq).unwrap_or(0));
        }
        let lagging: Vec<String> = devices
            .iter()
            .flat_map(|(id, _, engine)| {
                stores
                    .iter()
                    .zip(&server_seqs)
                    .filter_map(move |(s, &seq)| {
                        let (have, status) = (engine.seq(s), engine.status(s));
                        (have != seq || status != Some(dust_connection::StoreStatus::Connected))
                            .then(|| format!("{id} {s}: seq {have}/{seq} {status:?}"))
                    })
            })
            .collect();
        let now = Instant::now();
        if lagging.is_empty() {
            match &stable_since {
                Some((since, seqs)) if *seqs == server_seqs => {
                    if now - *since >= Duration::from_secs(5) {
                        return Ok(());
                    }
                }
                _ => stable_since = Some((now, server_seqs)),
            }
        } else {
            stable_since = None;
            if now >= deadline {
                return Err(lagging.join("; "));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod faults {
    //! The fault schedule.

    use super::*;

    /// Injects random faults until the fault window ends; returns how many of each.
    pub async fn inject(
        rng: &mut SmallRng,
        params: &Params,
        net: &Net,
        control: &Control,
        dust: &DustControl,
        devices: &[String],
        log: &mut ObservedLog,
    ) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        let end = Instant::now() + params.fault_window;
        // Some seeds run with few faults, some with many.
        let mean_gap = rng.random_range(100..=2_000);
        while Instant::now() < end {
            let gap = rng.random_range(0..=2 * mean_gap);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            let device = &devices[rng.random_range(0..devices.len())];
            let kind = match rng.random_range(0..100) {
                0..=17 => {
                    net.cut(Some(device));
                    "cut"
                }
                18..=21 => {
                    net.cut(None);
                    "cut all"
                }
                22..=31 => {
                    let device = device.clone();
                    let net2 = net.clone();
                    let hold = Duration::from_millis(rng.random_range(50..=15_000));
                    net.stall(&device, true);
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        net2.stall(&device, false);
                    });
                    "stall"
                }
                32..=40 => {
                    let to_client = Duration::from_millis(rng.random_range(0..=400));
                    let to_server = Duration::from_millis(rng.random_range(0..=400));
                    net.delay(device, to_client, to_server);
                    "delay"
                }
                41..=45 => {
                    let device = device.clone();
                    let net2 = net.clone();
                    let hold = Duration::from_millis(rng.random_range(50..=5_000));
                    net.partition(&device, true);
                    net.cut(Some(&device));
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        net2.partition(&device, false);
                    });
                    "partition"
                }
                46..=59 => {
                    dust.drop_next_write_reply();
                    "lost reply"
                }
                60..=64 => {
                    dust.delay_next_write_reply(Duration::from_millis(rng.random_range(0..=3_000)));
                    "late reply"
                }
                65..=74 => {
                    let s = rng.random_range(0..params.stores.len());
                    compact(dust, params, s, log).await;
                    "compaction"
                }
                75..=81 => {
                    let downtime = Duration::from_millis(rng.random_range(0..=2_000));
                    net.set_down(true);
                    let _ = control.restart(downtime).await;
                    net.set_down(false);
                    "restart"
                }
                82..=87 => {
                    control.drop_all();
                    "drop_all"
                }
                88..=93 => {
                    // The server closes the device's socket (close code 1011).
                    dust.disconnect_device(device);
                    "disconnect device"
                }
                94..=96 => {
                    // The next write crashes its channel: not applied, no reply.
                    dust.crash_next_write();
                    "crashing write"
                }
                _ => {
                    // The store's channel process crashes (`phx_error` to its joiners).
                    let s = rng.random_range(0..params.stores.len());
                    control.crash_channel(&format!("store:{}", params.stores[s]));
                    "channel crash"
                }
            };
            tracing::info!(target: "sim", fault = kind, device = %device);
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }

    /// Reads the store's log, then compacts it, without yielding in between when the locks
    /// are free; a write that still committed in between is recorded as unobserved.
    async fn compact(dust: &DustControl, params: &Params, s: usize, log: &mut ObservedLog) {
        let store = &params.stores[s];
        let (ops, compacted) = tokio::task::unconstrained(async {
            let ops = dust.ops(store).await;
            (ops, dust.compact(store).await)
        })
        .await;
        if let Ok(ops) = ops {
            for op in ops {
                log.ops[s].insert(op.seq, op);
            }
        }
        if let Ok(Some(through)) = compacted {
            let seen = &log.ops[s];
            let missing: Vec<u64> = (1..=through).filter(|q| !seen.contains_key(q)).collect();
            for q in missing {
                if !log.unobserved[s].contains(&q) {
                    log.unobserved[s].push(q);
                }
            }
        }
    }
}
