//! The floor: the fastest client this harness can have for each workload, written by hand for
//! it. A raw WebSocket over one TCP stream (`bench_peers/wire.rs`): pre-encoded V2 frames
//! masked in place into one reused buffer, every push of a batch in one write, replies parsed
//! in place out of one reused read buffer and matched by their ref alone, no allocation per
//! message. No channel machinery: what the transport alone costs. Where many frames are in
//! flight (pipelined, fan-out) it polls the socket instead of waking per TCP segment: one
//! read takes every frame queued, one write refills the window.

use std::time::{Duration, Instant};

use phoenix_channels::Payload;
use serde_json::{Value, json};

use crate::measure::{self, BenchResult, BoxError, Meter};
use crate::spec::{Spec, Workload};
use crate::wire::{Wire, msgpack_reply_ref, reply_ref};

/// The join ref of every floor push, and the opening of its ref.
const HEAD: &[u8] = b"[\"1\",\"";

/// The same in MessagePack: a fixarray of 5 and the fixstr `"1"`.
const MSGPACK_HEAD: &[u8] = &[0x95, 0xa1, b'1'];

/// The floor's wire format: V2 JSON text frames, or MessagePack binary frames
/// (`floor/msgpack`, `vsn=3.0.0`).
#[derive(Clone, Copy)]
struct Codec {
    msgpack: bool,
}

impl Codec {
    fn send(self, ws: &mut Wire, parts: &[&[u8]]) {
        if self.msgpack {
            ws.binary(parts);
        } else {
            ws.text(parts);
        }
    }

    fn reply_ref(self, frame: &[u8]) -> Option<u64> {
        if self.msgpack {
            msgpack_reply_ref(frame)
        } else {
            reply_ref(frame)
        }
    }

    fn is_broadcast(self, frame: &[u8]) -> bool {
        if self.msgpack {
            frame.starts_with(&[0x95, 0xc0, 0xc0])
        } else {
            frame.starts_with(b"[null,null,")
        }
    }

    /// `values` encoded.
    fn encode(self, values: &Value) -> Result<Vec<u8>, BoxError> {
        Ok(if self.msgpack {
            Payload::msgpack(values)?
                .as_msgpack()
                .ok_or("not MessagePack")?
                .to_vec()
        } else {
            serde_json::to_vec(values)?
        })
    }
}

/// Runs one workload.
pub(crate) async fn run(spec: &Spec) -> Result<BenchResult, BoxError> {
    let codec = Codec {
        msgpack: spec.client.ends_with("/msgpack"),
    };
    let vsn = if codec.msgpack { "3.0.0" } else { "2.0.0" };
    let url = format!("{}/websocket?vsn={vsn}", spec.url);
    let mut ws = Wire::connect(url.as_str()).await?;
    if spec.workload == Workload::Channels {
        return channels(spec, ws).await;
    }
    let join = codec.encode(&json!(["1", "1", spec.topic, "phx_join", {}]))?;
    codec.send(&mut ws, &[&join]);
    ws.flush().await?;
    loop {
        let frame = ws.next().await?;
        if codec.reply_ref(ws.payload(frame)) == Some(1) {
            break;
        }
    }

    let payload = measure::payload_text(spec.payload);
    let push = if codec.msgpack {
        // Everything after the ref: `TOPIC, "echo", PAYLOAD` (an array of 3 without its
        // header byte).
        let value: Value = serde_json::from_str(&payload)?;
        let tail = codec.encode(&json!([spec.topic, "echo", value]))?;
        Push {
            codec,
            tail: tail[1..].to_vec(),
        }
    } else {
        // Everything after the ref: `","TOPIC","echo",PAYLOAD]`.
        let tail = format!("\",\"{}\",\"echo\",{payload}]", spec.topic);
        Push {
            codec,
            tail: tail.into_bytes(),
        }
    };
    let work = async move {
        match spec.workload {
            Workload::Sequential => sequential(spec, &mut ws, &push).await,
            Workload::Pipelined => pipelined(spec, ws, &push).await,
            Workload::Fanout => fanout(spec, ws, codec).await,
            Workload::Channels => Err("unreachable".into()),
        }
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| format!("floor {}: timed out", spec.workload))?
}

/// The pre-encoded push: `HEAD`, the ref's digits, `tail` (MessagePack: `MSGPACK_HEAD`, the
/// ref as a fixstr, `tail`).
struct Push {
    codec: Codec,
    tail: Vec<u8>,
}

impl Push {
    fn append<S>(&self, ws: &mut Wire<S>, r: u64) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(r).as_bytes();
        if self.codec.msgpack {
            // At most 20 digits: a fixstr.
            let header = [0xa0 | digits.len() as u8];
            ws.binary(&[MSGPACK_HEAD, &header, digits, &self.tail]);
        } else {
            ws.text(&[HEAD, digits, &self.tail]);
        }
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
            if push.codec.reply_ref(ws.payload(frame)) == Some(r) {
                break;
            }
        }
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let times = meter.stop();
    Ok(result(spec, spec.ops, times).with_latencies(latencies))
}

/// Keeps the window full, polling: the connection leaves the runtime's epoll set (the echo
/// server writes each reply in its own TCP segment, and a client woken per segment pays a
/// wake-up and a read for a few replies), and the floor reads every reply queued, refills
/// the window with one write, and reads again at once after a long read, or after
/// [`POLL_INTERVAL`] after a short one: one read and one write per batch of replies.
async fn pipelined(spec: &Spec, ws: Wire, push: &Push) -> Result<BenchResult, BoxError> {
    let mut ws = ws.into_polled()?;
    let window = spec.window as u64;
    let (mut sent, mut done) = (0u64, 0u64);
    let meter = Meter::start();
    while done < spec.ops {
        while sent < spec.ops && sent - done < window {
            push.append(&mut ws, sent + 2);
            sent += 1;
        }
        ws.flush_now()?;
        let read = ws.fill_now()?;
        while let Some(frame) = ws.buffered()? {
            if push.codec.reply_ref(ws.payload(frame)).is_some() {
                done += 1;
            }
        }
        if read < SHORT_READ {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    let times = meter.stop();
    let mut result = result(spec, spec.ops, times);
    result.window = Some(window);
    Ok(result)
}

/// A read shorter than this (pipelined, fan-out) makes the floor wait [`POLL_INTERVAL`]
/// before the next read; after a longer one it reads again at once.
const SHORT_READ: usize = 16 * 1024;

/// How long the floor lets replies or events pile up in the socket after a short read (the
/// runtime's timer granularity).
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Takes the events in batches, polling: the connection leaves the runtime's epoll set (so
/// that a source writing one frame per TCP segment does not wake the floor per segment), and
/// the floor reads whatever is queued, at once again after a long read, or after
/// [`POLL_INTERVAL`] after a short one: one read per batch, not per event (what the fan-out
/// measures is CPU per delivered event; the source sets the rate). Nothing is lost: the
/// kernel holds what arrives between reads (TCP flow control slows the source when full).
async fn fanout(spec: &Spec, ws: Wire, codec: Codec) -> Result<BenchResult, BoxError> {
    let mut ws = ws.into_polled()?;
    let meter = Meter::start();
    measure::say_ready()?;
    let mut events = 0;
    loop {
        while let Some(frame) = ws.buffered()? {
            if codec.is_broadcast(ws.payload(frame)) {
                events += 1;
            }
        }
        if events >= spec.ops {
            break;
        }
        // Pongs, if the source pinged.
        ws.flush_now()?;
        if ws.fill_now()? < SHORT_READ {
            tokio::time::sleep(POLL_INTERVAL).await;
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
        &spec.client,
        spec.flavor.name(),
        spec.workload.name(),
        spec.payload,
        ops,
        times,
    )
}
