//! The floor: the fastest client this harness can have for each workload, written by hand for
//! it. A raw WebSocket over one TCP stream (`bench_peers/wire.rs`): pre-encoded V2 frames
//! masked in place into one reused buffer, every push of a batch in one write, replies parsed
//! in place out of one reused read buffer and matched by their ref alone, no allocation per
//! message. No channel machinery: what the transport alone costs.

use std::time::{Duration, Instant};

use crate::measure::{self, BenchResult, BoxError, Meter};
use crate::spec::{Spec, Workload};
use crate::wire::{Wire, reply_ref};

/// The join ref of every floor push, and the opening of its ref.
const HEAD: &[u8] = b"[\"1\",\"";

/// Runs one workload.
pub(crate) async fn run(spec: &Spec) -> Result<BenchResult, BoxError> {
    let url = format!("{}/websocket?vsn=2.0.0", spec.url);
    let mut ws = Wire::connect(url.as_str()).await?;
    if spec.workload == Workload::Channels {
        return channels(spec, ws).await;
    }
    let join = format!("[\"1\",\"1\",\"{}\",\"phx_join\",{{}}]", spec.topic);
    ws.text(&[join.as_bytes()]);
    ws.flush().await?;
    loop {
        let frame = ws.next().await?;
        if reply_ref(ws.payload(frame)) == Some(1) {
            break;
        }
    }

    // Everything after the ref: `","TOPIC","echo",PAYLOAD]`.
    let tail = format!(
        "\",\"{}\",\"echo\",{}]",
        spec.topic,
        measure::payload_text(spec.payload)
    );
    let push = Push {
        tail: tail.into_bytes(),
    };
    let work = async {
        match spec.workload {
            Workload::Sequential => sequential(spec, &mut ws, &push).await,
            Workload::Pipelined => pipelined(spec, &mut ws, &push).await,
            Workload::Fanout => fanout(spec, &mut ws).await,
            Workload::Channels => Err("unreachable".into()),
        }
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| format!("floor {}: timed out", spec.workload))?
}

/// The pre-encoded push: `HEAD`, the ref's digits, `tail`.
struct Push {
    tail: Vec<u8>,
}

impl Push {
    fn append(&self, ws: &mut Wire, r: u64) {
        let mut digits = itoa::Buffer::new();
        ws.text(&[HEAD, digits.format(r).as_bytes(), &self.tail]);
    }
}

async fn sequential(spec: &Spec, ws: &mut Wire, push: &Push) -> Result<BenchResult, BoxError> {
    let mut latencies = Vec::with_capacity(spec.ops as usize);
    let meter = Meter::start();
    for i in 0..spec.ops {
        let r = i + 2;
        let t = Instant::now();
        push.append(ws, r);
        ws.flush().await?;
        loop {
            let frame = ws.next().await?;
            if reply_ref(ws.payload(frame)) == Some(r) {
                break;
            }
        }
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let times = meter.stop();
    Ok(result(spec, spec.ops, times).with_latencies(latencies))
}

async fn pipelined(spec: &Spec, ws: &mut Wire, push: &Push) -> Result<BenchResult, BoxError> {
    let window = spec.window as u64;
    let (mut sent, mut done) = (0u64, 0u64);
    let meter = Meter::start();
    while done < spec.ops {
        // Refill the window, then one write for the whole batch.
        if sent < spec.ops && sent - done < window {
            while sent < spec.ops && sent - done < window {
                push.append(ws, sent + 2);
                sent += 1;
            }
            ws.flush().await?;
        }
        // Wait for one reply, then take every reply already read.
        let frame = ws.next().await?;
        if reply_ref(ws.payload(frame)).is_some() {
            done += 1;
        }
        while let Some(frame) = ws.buffered()? {
            if reply_ref(ws.payload(frame)).is_some() {
                done += 1;
            }
        }
    }
    let times = meter.stop();
    let mut result = result(spec, spec.ops, times);
    result.window = Some(window);
    Ok(result)
}

/// A read shorter than this in the fan-out makes the floor wait [`BATCH_WAIT`] before the
/// next read.
const SHORT_READ: usize = 16 * 1024;

/// How long the floor lets events pile up after a short read in the fan-out.
const BATCH_WAIT: Duration = Duration::from_millis(1);

/// Takes the events in batches: after a short read it waits a moment before reading again,
/// so that a source writing one frame at a time costs one read per batch, not per event
/// (what the fan-out measures is CPU per delivered event; the source sets the rate).
async fn fanout(spec: &Spec, ws: &mut Wire) -> Result<BenchResult, BoxError> {
    let meter = Meter::start();
    measure::say_ready()?;
    let mut events = 0;
    loop {
        while let Some(frame) = ws.buffered()? {
            if ws.payload(frame).starts_with(b"[null,null,") {
                events += 1;
            }
        }
        if events >= spec.ops {
            break;
        }
        if ws.fill().await? < SHORT_READ {
            tokio::time::sleep(BATCH_WAIT).await;
        }
    }
    let times = meter.stop();
    let mut result = result(spec, events, times);
    result.sent = Some(spec.ops);
    result.lost = Some(0);
    Ok(result)
}

async fn channels(spec: &Spec, mut ws: Wire) -> Result<BenchResult, BoxError> {
    let before = measure::status_kib("VmRSS");
    let meter = Meter::start();
    let topic = spec.topic.as_bytes();
    let work = async {
        for i in 1..=spec.ops {
            let mut digits = itoa::Buffer::new();
            let r = digits.format(i).as_bytes();
            let parts: [&[u8]; 9] = [
                b"[\"",
                r,
                b"\",\"",
                r,
                b"\",\"",
                topic,
                b":",
                r,
                b"\",\"phx_join\",{}]",
            ];
            ws.text(&parts);
        }
        ws.flush().await?;
        let mut joined = 0;
        while joined < spec.ops {
            let frame = ws.next().await?;
            if reply_ref(ws.payload(frame)).is_some() {
                joined += 1;
            }
        }
        Ok::<_, BoxError>(())
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| "floor channels: timed out")??;
    let times = meter.stop();
    let after = measure::status_kib("VmRSS");
    let mut result = result(spec, spec.ops, times);
    result.mem_per_channel_bytes = Some(measure::per_item_bytes(before, after, spec.ops as usize));
    Ok(result)
}

fn result(spec: &Spec, ops: u64, times: (std::time::Duration, std::time::Duration)) -> BenchResult {
    BenchResult::new(
        "floor",
        spec.flavor.name(),
        spec.workload.name(),
        spec.payload,
        ops,
        times,
    )
}
