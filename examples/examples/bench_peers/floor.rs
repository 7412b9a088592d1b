//! The floor: a minimal tokio-tungstenite client that writes pre-encoded V2 frames and matches
//! replies by their ref alone. No channel machinery: what the transport alone costs.

use std::time::Instant;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::measure::{self, BenchResult, BoxError, Meter};
use crate::spec::{Spec, Workload};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The join ref of every floor push.
const HEAD: &str = "[\"1\",\"";

/// Runs one workload.
pub(crate) async fn run(spec: &Spec) -> Result<BenchResult, BoxError> {
    let url = format!("{}/websocket?vsn=2.0.0", spec.url);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    if spec.workload == Workload::Channels {
        return channels(spec, ws).await;
    }
    ws.send(Message::text(format!(
        "[\"1\",\"1\",\"{}\",\"phx_join\",{{}}]",
        spec.topic
    )))
    .await?;
    while reply_ref(&next(&mut ws).await?) != Some(1) {}

    // Everything after the ref: `","TOPIC","echo",PAYLOAD]`.
    let tail = format!(
        "\",\"{}\",\"echo\",{}]",
        spec.topic,
        measure::payload_text(spec.payload)
    );
    let frame = |r: u64| {
        let mut s = String::with_capacity(HEAD.len() + 20 + tail.len());
        s.push_str(HEAD);
        s.push_str(itoa::Buffer::new().format(r));
        s.push_str(&tail);
        Message::text(s)
    };
    let work = async {
        match spec.workload {
            Workload::Sequential => sequential(spec, &mut ws, frame).await,
            Workload::Pipelined => pipelined(spec, &mut ws, frame).await,
            Workload::Fanout => fanout(spec, &mut ws).await,
            Workload::Channels => Err("unreachable".into()),
        }
    };
    tokio::time::timeout(spec.timeout, work)
        .await
        .map_err(|_| format!("floor {}: timed out", spec.workload))?
}

async fn sequential(
    spec: &Spec,
    ws: &mut Ws,
    frame: impl Fn(u64) -> Message,
) -> Result<BenchResult, BoxError> {
    let mut latencies = Vec::with_capacity(spec.ops as usize);
    let meter = Meter::start();
    for i in 0..spec.ops {
        let r = i + 2;
        let t = Instant::now();
        ws.send(frame(r)).await?;
        while reply_ref(&next(ws).await?) != Some(r) {}
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let times = meter.stop();
    Ok(result(spec, spec.ops, times).with_latencies(latencies))
}

async fn pipelined(
    spec: &Spec,
    ws: &mut Ws,
    frame: impl Fn(u64) -> Message,
) -> Result<BenchResult, BoxError> {
    let window = spec.window as u64;
    let (mut sent, mut done) = (0u64, 0u64);
    let meter = Meter::start();
    while done < spec.ops {
        // Refill the window, then one flush for the whole batch.
        let batch = sent < spec.ops && sent - done < window;
        while sent < spec.ops && sent - done < window {
            ws.feed(frame(sent + 2)).await?;
            sent += 1;
        }
        if batch {
            ws.flush().await?;
        }
        // Wait for one reply, then take every reply already read.
        if reply_ref(&next(ws).await?).is_some() {
            done += 1;
        }
        while let Some(message) = ws.next().now_or_never() {
            let message = message.ok_or("connection closed")??;
            if reply_ref(&message).is_some() {
                done += 1;
            }
        }
    }
    let times = meter.stop();
    let mut result = result(spec, spec.ops, times);
    result.window = Some(window);
    Ok(result)
}

async fn fanout(spec: &Spec, ws: &mut Ws) -> Result<BenchResult, BoxError> {
    let meter = Meter::start();
    measure::say_ready()?;
    let mut events = 0;
    while events < spec.ops {
        if let Message::Text(text) = next(ws).await?
            && text.as_str().starts_with("[null,null,")
        {
            events += 1;
        }
    }
    let times = meter.stop();
    let mut result = result(spec, events, times);
    result.sent = Some(spec.ops);
    result.lost = Some(0);
    Ok(result)
}

async fn channels(spec: &Spec, mut ws: Ws) -> Result<BenchResult, BoxError> {
    let before = measure::status_kib("VmRSS");
    let meter = Meter::start();
    let work = async {
        for i in 1..=spec.ops {
            let r = itoa::Buffer::new().format(i).to_owned();
            let join = format!("[\"{r}\",\"{r}\",\"{}:{r}\",\"phx_join\",{{}}]", spec.topic);
            ws.feed(Message::text(join)).await?;
        }
        ws.flush().await?;
        let mut joined = 0;
        while joined < spec.ops {
            if reply_ref(&next(&mut ws).await?).is_some() {
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

async fn next(ws: &mut Ws) -> Result<Message, BoxError> {
    Ok(ws.next().await.ok_or("connection closed")??)
}

/// The ref of a reply frame `["JOIN_REF","REF",...` when it is a number; `None` for anything
/// else (broadcasts have `null` refs).
fn reply_ref(message: &Message) -> Option<u64> {
    let Message::Text(text) = message else {
        return None;
    };
    let rest = text.as_str().strip_prefix('[')?;
    let rest = rest.strip_prefix('"')?;
    let rest = &rest[rest.find('"')? + 1..];
    let rest = rest.strip_prefix(",\"")?;
    let end = rest.find('"')?;
    rest[..end].parse().ok()
}
