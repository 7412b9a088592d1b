//! `phoenix_channels_client` 0.1.2 from crates.io, the main Rust peer.
//!
//! Its API shapes the workloads a little: pushes take a `serde_json::Value` (cloned per push:
//! the API takes it by value), joins send `{}`, and broadcasts reach handlers through a
//! `tokio::sync::broadcast` channel of capacity 50, so a fast flood loses events (counted as
//! `lost`; the run ends once no event came for [`IDLE`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use phoenix_channels_client::{Channel, Client, Config};
use serde_json::Value;
use tokio::sync::Notify;

use crate::measure::{self, BenchResult, BoxError, Meter};
use crate::spec::{Spec, Workload};

/// The client name in the JSON lines.
const NAME: &str = "phoenix_channels_client";

/// A fanout run ends when no event arrived for this long (the client drops events silently).
const IDLE: Duration = Duration::from_millis(300);

/// Runs one workload.
pub(crate) async fn run(spec: &Spec) -> Result<BenchResult, BoxError> {
    let config = Config::new(format!("{}/websocket", spec.url).as_str())?;
    let mut client = Client::new(config)?;
    client.connect().await?;
    let work = async {
        match spec.workload {
            Workload::Sequential => sequential(spec, &client).await,
            Workload::Pipelined => pipelined(spec, &client).await,
            Workload::Fanout => fanout(spec, &client).await,
            Workload::Channels => channels(spec, &client).await,
        }
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| format!("{NAME} {}: timed out", spec.workload))?
}

fn payload(spec: &Spec) -> Result<Value, BoxError> {
    Ok(serde_json::from_str(&measure::payload_text(spec.payload))?)
}

async fn joined(spec: &Spec, client: &Client) -> Result<Arc<Channel>, BoxError> {
    Ok(client
        .join(&spec.topic, Some(Duration::from_secs(10)))
        .await?)
}

async fn sequential(spec: &Spec, client: &Client) -> Result<BenchResult, BoxError> {
    let channel = joined(spec, client).await?;
    let payload = payload(spec)?;
    let mut latencies = Vec::with_capacity(spec.ops as usize);
    let meter = Meter::start();
    for _ in 0..spec.ops {
        let t = Instant::now();
        channel.send("echo", payload.clone()).await?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let times = meter.stop();
    Ok(result(spec, spec.ops, times).with_latencies(latencies))
}

async fn pipelined(spec: &Spec, client: &Client) -> Result<BenchResult, BoxError> {
    let channel = joined(spec, client).await?;
    let payload = payload(spec)?;
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut done) = (0u64, 0u64);
    let meter = Meter::start();
    while done < spec.ops {
        while sent < spec.ops && in_flight.len() < spec.window {
            in_flight.push(channel.send("echo", payload.clone()));
            sent += 1;
        }
        in_flight.next().await.ok_or("no push in flight")??;
        done += 1;
    }
    let times = meter.stop();
    let mut result = result(spec, spec.ops, times);
    result.window = Some(spec.window as u64);
    Ok(result)
}

async fn fanout(spec: &Spec, client: &Client) -> Result<BenchResult, BoxError> {
    let channel = joined(spec, client).await?;
    let count = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let target = spec.ops;
    {
        let (count, all) = (count.clone(), all.clone());
        channel
            .on("broadcasted", move |_channel, _payload| {
                if count.fetch_add(1, Ordering::Relaxed) + 1 == target {
                    all.notify_one();
                }
            })
            .await?;
    }
    let meter = Meter::start();
    measure::say_ready()?;
    // Wait for every event, or for the flood to stop arriving; the last event time is known
    // to within a poll period.
    let mut last = (0, Instant::now());
    let mut started = false;
    loop {
        tokio::select! {
            () = all.notified() => {
                last = (target, Instant::now());
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                let now = count.load(Ordering::Relaxed);
                if now != last.0 {
                    last = (now, Instant::now());
                    started = true;
                } else if started && last.1.elapsed() >= IDLE {
                    break;
                }
            }
        }
    }
    let (_, cpu) = meter.stop();
    let wall = last.1.saturating_duration_since(meter.started());
    let events = count.load(Ordering::Relaxed);
    let mut result = result(spec, events, (wall, cpu));
    result.sent = Some(spec.ops);
    result.lost = Some(spec.ops.saturating_sub(events));
    Ok(result)
}

async fn channels(spec: &Spec, client: &Client) -> Result<BenchResult, BoxError> {
    let before = measure::status_kib("VmRSS");
    let meter = Meter::start();
    let topics: Vec<String> = (1..=spec.ops)
        .map(|i| format!("{}:{i}", spec.topic))
        .collect();
    let mut joins: FuturesUnordered<_> = topics
        .iter()
        .map(|topic| client.join(topic, Some(Duration::from_secs(30))))
        .collect();
    let mut handles = Vec::with_capacity(spec.ops as usize);
    while let Some(joined) = joins.next().await {
        handles.push(joined?);
    }
    let times = meter.stop();
    let after = measure::status_kib("VmRSS");
    let mut result = result(spec, spec.ops, times);
    result.mem_per_channel_bytes = Some(measure::per_item_bytes(before, after, spec.ops as usize));
    drop(handles);
    Ok(result)
}

fn result(spec: &Spec, ops: u64, times: (Duration, Duration)) -> BenchResult {
    BenchResult::new(
        NAME,
        spec.flavor.name(),
        spec.workload.name(),
        spec.payload,
        ops,
        times,
    )
}
