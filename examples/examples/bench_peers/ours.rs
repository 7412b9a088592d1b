//! phoenix-channels, through its public API.

use std::time::Instant;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use phoenix_channels::{Channel, Payload, Serializer, Socket};

use crate::measure::{self, BenchResult, BoxError, Meter};
use crate::spec::{Spec, Workload};

/// The client name in error messages.
const NAME: &str = "phoenix-channels";

/// Runs one workload (`phoenix-channels/msgpack`: over MessagePack, `vsn=3.0.0`).
pub(crate) async fn run(spec: &Spec) -> Result<BenchResult, BoxError> {
    let mut builder = Socket::builder(spec.url.as_str());
    if msgpack(spec) {
        builder = builder.serializer(Serializer::MessagePack);
    }
    if let Some(capacity) = spec.queue_capacity {
        builder = builder.queue_capacity(capacity);
    }
    let work = async |socket: &Socket| {
        socket.connected().await?;
        match spec.workload {
            Workload::Sequential => sequential(spec, socket).await,
            Workload::Pipelined => pipelined(spec, socket).await,
            Workload::Fanout => fanout(spec, socket).await,
            Workload::Channels => channels(spec, socket).await,
        }
    };
    let inline = spec.inline_driver;
    let mut result = if inline {
        // `build` returns the driver; this task awaits it alongside the workload, so pushes
        // and replies never cross between tasks.
        let (socket, driver) = builder.build()?;
        tokio::select! {
            biased;
            outcome = tokio::time::timeout(spec.timeout, work(&socket)) => {
                outcome.map_err(|_| format!("{NAME} {}: timed out", spec.workload))??
            }
            () = driver => return Err(format!("{NAME}: the socket driver ended").into()),
        }
    } else {
        // What a user writes: `connect` spawns the driver on the current runtime.
        let socket = builder.connect()?;
        tokio::time::timeout(spec.timeout, work(&socket))
            .await
            .map_err(|_| format!("{NAME} {}: timed out", spec.workload))??
    };
    if inline {
        result.driver = Some("inline".to_owned());
    }
    Ok(result)
}

/// Whether this run speaks MessagePack.
fn msgpack(spec: &Spec) -> bool {
    spec.client.ends_with("/msgpack")
}

/// The echo payload, serialized once in the run's format (a `Payload` is reference-counted).
fn payload(spec: &Spec) -> Result<Payload, BoxError> {
    let text = measure::payload_text(spec.payload);
    Ok(if msgpack(spec) {
        Payload::msgpack(&serde_json::from_str::<serde_json::Value>(&text)?)?
    } else {
        Payload::from_json_text(text)?
    })
}

async fn joined(spec: &Spec, socket: &Socket) -> Result<Channel, BoxError> {
    let (channel, _messages) = socket.channel(spec.topic.as_str()).stream();
    channel.join().await?;
    Ok(channel)
}

async fn sequential(spec: &Spec, socket: &Socket) -> Result<BenchResult, BoxError> {
    let channel = joined(spec, socket).await?;
    let payload = payload(spec)?;
    let mut latencies = Vec::with_capacity(spec.ops as usize);
    let meter = Meter::start();
    for _ in 0..spec.ops {
        let t = Instant::now();
        let reply = channel.push_payload("echo", payload.clone()).await?;
        if !reply.is_ok() {
            return Err(format!("echo replied {:?}", reply.status()).into());
        }
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let times = meter.stop();
    Ok(result(spec, spec.ops, times).with_latencies(latencies))
}

async fn pipelined(spec: &Spec, socket: &Socket) -> Result<BenchResult, BoxError> {
    let channel = joined(spec, socket).await?;
    let payload = payload(spec)?;
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut done) = (0u64, 0u64);
    let meter = Meter::start();
    while done < spec.ops {
        while sent < spec.ops && in_flight.len() < spec.window {
            in_flight.push(channel.push_payload("echo", payload.clone()));
            sent += 1;
        }
        let reply = in_flight.next().await.ok_or("no push in flight")??;
        if !reply.is_ok() {
            return Err(format!("echo replied {:?}", reply.status()).into());
        }
        done += 1;
    }
    let times = meter.stop();
    let mut result = result(spec, spec.ops, times);
    result.window = Some(spec.window as u64);
    Ok(result)
}

async fn fanout(spec: &Spec, socket: &Socket) -> Result<BenchResult, BoxError> {
    let (channel, mut messages) = socket.channel(spec.topic.as_str()).stream();
    channel.join().await?;
    let meter = Meter::start();
    measure::say_ready()?;
    let (mut events, mut lost) = (0u64, 0u64);
    while events + lost < spec.ops {
        match messages.next().await.ok_or("message stream ended")? {
            Ok(message) if message.event.as_str() == "broadcasted" => events += 1,
            Ok(_) => {}
            Err(lagged) => lost += lagged.0,
        }
    }
    let times = meter.stop();
    let mut result = result(spec, events, times);
    result.sent = Some(spec.ops);
    result.lost = Some(lost);
    result.queue_capacity = spec.queue_capacity;
    Ok(result)
}

async fn channels(spec: &Spec, socket: &Socket) -> Result<BenchResult, BoxError> {
    let before = measure::status_kib("VmRSS");
    let meter = Meter::start();
    let mut handles = Vec::with_capacity(spec.ops as usize);
    let mut joins = FuturesUnordered::new();
    for i in 1..=spec.ops {
        let (channel, messages) = socket.channel(format!("{}:{i}", spec.topic)).stream();
        joins.push(channel.join());
        handles.push((channel, messages));
    }
    while let Some(joined) = joins.next().await {
        joined?;
    }
    let times = meter.stop();
    let after = measure::status_kib("VmRSS");
    let mut result = result(spec, spec.ops, times);
    result.mem_per_channel_bytes = Some(measure::per_item_bytes(before, after, spec.ops as usize));
    // Kept to the process's end: dropped here, they would send 1,000 leaves that the socket
    // task processes or not before the process exits (on the multi-thread runtime a part of
    // them, a different part each run), and `--callgrind`, which counts the whole process,
    // would charge a varying share of leaves to the joins.
    std::mem::forget(handles);
    Ok(result)
}

fn result(spec: &Spec, ops: u64, times: (std::time::Duration, std::time::Duration)) -> BenchResult {
    BenchResult::new(
        &spec.client,
        spec.flavor.name(),
        spec.workload.name(),
        spec.payload,
        ops,
        times,
    )
}
