//! Measures the write rate the Dust emulation sustains with a durable state file (every reply
//! waits for its journal line to be fsynced), over real websockets.
//!
//! ```text
//! cargo run --release -p dust-conformance --example dust_write_bench -- [STATE_DIR] [WRITES]
//! ```
//!
//! Runs one client writing sequentially (each write waits for its reply), then 8 clients on
//! 8 stores at once (the journal syncs their concurrent writes together), then the same
//! sequential run in memory, and prints writes per second for each.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, Limits, TokenConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, joins `store`, then does `writes` sequential increments; returns when the last
/// reply is in.
async fn client(url: String, store: String, writes: u64) -> Result<(), Error> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let topic = format!("store:{store}");
    let join = json!(["1", "1", topic, "phx_join", {"last_store_seq": 0}]);
    ws.send(Message::text(join.to_string())).await?;
    // The join reply and catch_up_complete.
    for _ in 0..2 {
        tokio::time::timeout(TIMEOUT, ws.next()).await?;
    }
    for i in 0..writes {
        let r = (i + 2).to_string();
        let write = json!(["1", r, topic, "write", {
            "op": "increment", "path": "n", "path_segments": ["n"], "value": 1,
            "client_op_id": format!("op_{i}"),
        }]);
        ws.send(Message::text(write.to_string())).await?;
        loop {
            let frame = tokio::time::timeout(TIMEOUT, ws.next())
                .await?
                .ok_or("closed")??;
            let frame: Value = serde_json::from_str(frame.to_text()?)?;
            if frame[3] == "phx_reply" && frame[1] == json!(r) {
                if frame[4]["status"] != "ok" {
                    return Err(format!("write rejected: {frame}").into());
                }
                break;
            }
        }
    }
    Ok(())
}

async fn run(state: Option<PathBuf>, clients: u64, writes: u64) -> Result<f64, Error> {
    let mut config = DustConfig::new()
        .token(TokenConfig::new("dust_tok_bench"))
        .limits(Limits::team());
    if let Some(state) = &state {
        let _ = std::fs::remove_file(state);
        config = config.state_file(state);
    }
    let server = dust_conformance::start(ServerConfig::default().dust(config)).await?;
    let url = format!(
        "{}&token=dust_tok_bench&device_id=bench&capver=3",
        server.websocket_url("/ws/sync")
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(url.clone(), format!("bench/s{n}"), writes)))
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    server.shutdown().await;
    if let Some(state) = &state {
        let _ = std::fs::remove_file(state);
    }
    Ok((clients * writes) as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let writes: u64 = args.next().map_or(Ok(2_000), |n| n.parse())?;
    let state = dir.join(format!("dust-bench-{}.jsonl", std::process::id()));
    println!(
        "state file: {} ({writes} writes per client)",
        state.display()
    );
    let one = run(Some(state.clone()), 1, writes).await?;
    println!("durable, 1 client, sequential:   {one:>8.0} writes/s");
    let eight = run(Some(state), 8, writes / 4).await?;
    println!("durable, 8 clients on 8 stores:  {eight:>8.0} writes/s");
    let memory = run(None, 1, writes).await?;
    println!("in memory, 1 client, sequential: {memory:>8.0} writes/s");
    Ok(())
}
