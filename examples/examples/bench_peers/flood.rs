//! The fan-out sources, in one process (`bench_peers --flood-server`), driven by stdin:
//!
//! ```text
//! flood dust-conformance TOPIC N BYTES   →   flooded REACHED
//! flood batched TOPIC N BYTES            →   flooded REACHED
//! ```
//!
//! - `dust-conformance`: the dust-conformance server (the library, default echo socket at
//!   `/socket`, on a multi-thread runtime like `dust-conformance-server`), flooded through
//!   `Control::broadcast` in a loop: the same path as the binary's `broadcast` command without
//!   its per-event JSON command, task and answer line (which cap it near 100k events/s). Its
//!   writer sends and flushes each frame on its own, so it delivers at most ~200k frames/s
//!   here, one small write per frame: a client that keeps up pays a wake-up and a read per
//!   event.
//! - `batched`: a minimal Phoenix fan-out endpoint (tokio-tungstenite; it answers `phx_join`
//!   and `heartbeat` with ok) that writes N pre-encoded broadcast frames with `feed` and one
//!   `flush`, so the client reads full buffers and the client, not the server, is the limit.
//!
//! The first stdout lines are `listening dust-conformance URL` and `listening batched URL`.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex, PoisonError};

use dust_conformance::ServerConfig;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::measure::{self, BoxError};

/// What a batched connection's writer sends.
enum Out {
    /// One frame, flushed.
    Frame(Utf8Bytes),
    /// The same frame `n` times, fed, then flushed once.
    Blast(Utf8Bytes, u64),
}

/// The dust-conformance source's outbound bound per connection: 1 GiB.
const FLOOD_OUTBOUND_BYTES: usize = 1 << 30;

/// Topic → the writers of the connections that joined it.
type Subscribers = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Out>>>>>;

/// Runs both sources until stdin closes.
pub(crate) fn serve() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The whole flood is queued at once (up to 500,000 events of 100 B, 100,000 of 4 KiB):
    // the outbound bound is raised above it so that a client is never dropped as slow.
    let config = ServerConfig::default().max_outbound_bytes(FLOOD_OUTBOUND_BYTES);
    let server = runtime.block_on(dust_conformance::start(config))?;
    let control = server.control();
    let subscribers: Subscribers = Arc::default();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let batched_url = format!("ws://{}/socket", listener.local_addr()?);
    runtime.spawn(accept(listener, subscribers.clone()));

    let mut out = std::io::stdout().lock();
    writeln!(out, "listening dust-conformance {}", server.socket_url())?;
    writeln!(out, "listening batched {batched_url}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["flood", source, topic, n, bytes] => {
                let n: u64 = n.parse()?;
                let payload = measure::payload_text(bytes.parse()?);
                let reached = match *source {
                    "dust-conformance" => {
                        let payload: Value = serde_json::from_str(&payload)?;
                        let mut reached = 0;
                        for _ in 0..n {
                            reached += control.broadcast(topic, "broadcasted", payload.clone());
                        }
                        reached
                    }
                    "batched" => {
                        let frame = Utf8Bytes::from(format!(
                            "[null,null,{},\"broadcasted\",{payload}]",
                            Value::from(*topic)
                        ));
                        let mut subscribers =
                            subscribers.lock().unwrap_or_else(PoisonError::into_inner);
                        let writers = subscribers.entry((*topic).to_owned()).or_default();
                        writers.retain(|w| w.send(Out::Blast(frame.clone(), n)).is_ok());
                        writers.len() * usize::from(n > 0)
                    }
                    other => return Err(format!("unknown fan-out source {other:?}").into()),
                };
                format!("flooded {reached}")
            }
            [] => continue,
            _ => format!("error: unknown command {line:?}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    runtime.block_on(server.shutdown());
    runtime.shutdown_background();
    Ok(())
}

async fn accept(listener: TcpListener, subscribers: Subscribers) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(stream, subscribers.clone()));
    }
}

/// One batched-source connection: answers joins and heartbeats, registers joiners.
async fn connection(stream: TcpStream, subscribers: Subscribers) -> Result<(), BoxError> {
    let _ = stream.set_nodelay(true);
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let sent = match out {
                Out::Frame(frame) => sink.send(Message::Text(frame)).await,
                Out::Blast(frame, n) => {
                    let mut fed = Ok(());
                    for _ in 0..n {
                        fed = sink.feed(Message::Text(frame.clone())).await;
                        if fed.is_err() {
                            break;
                        }
                    }
                    match fed {
                        Ok(()) => sink.flush().await,
                        Err(e) => Err(e),
                    }
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    while let Some(message) = stream.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let Ok(Value::Array(fields)) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let [join_ref, msg_ref, topic, event, _payload] = fields.as_slice() else {
            continue;
        };
        let reply = |response: Value| {
            Value::Array(vec![
                join_ref.clone(),
                msg_ref.clone(),
                topic.clone(),
                Value::from("phx_reply"),
                serde_json::json!({"status": "ok", "response": response}),
            ])
            .to_string()
        };
        match event.as_str() {
            Some("phx_join") => {
                if let Some(topic) = topic.as_str() {
                    subscribers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(topic.to_owned())
                        .or_default()
                        .push(tx.clone());
                }
                let _ = tx.send(Out::Frame(reply(serde_json::json!({})).into()));
            }
            Some("heartbeat" | "phx_leave") => {
                let _ = tx.send(Out::Frame(reply(serde_json::json!({})).into()));
            }
            _ => {}
        }
    }
    Ok(())
}
