//! Measures what an idle WebSocket connection costs the server: opens N idle connections
//! (joined to one echo topic) and reports the process's resident memory growth per
//! connection. The clients use a 4 KiB read buffer, so that what changes between runs is
//! the server's side.
//!
//! ```text
//! cargo run --release -p dust-conformance --example idle_footprint -- [N] [READ_BUFFER_BYTES]
//! ```
//!
//! READ_BUFFER_BYTES defaults to the server's default (`DEFAULT_READ_BUFFER_SIZE`); pass
//! 131072 for tungstenite's own default. Linux only (reads `/proc/self/statm`).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use dust_conformance::{DEFAULT_READ_BUFFER_SIZE, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Resident memory in bytes.
fn rss() -> Result<u64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("statm has no resident field")?
        .parse()?;
    Ok(pages * 4096)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let read_buffer: usize = args
        .next()
        .map_or(Ok(DEFAULT_READ_BUFFER_SIZE), |a| a.parse())?;
    let server = dust_conformance::start(
        ServerConfig::default()
            .read_buffer_size(read_buffer)
            .max_connections(n + 1),
    )
    .await?;
    let url = server.websocket_url("/socket");
    let client_config = WebSocketConfig::default().read_buffer_size(4096);
    // One connection first, so that one-time allocations are not counted.
    let (mut warm, _) =
        tokio_tungstenite::connect_async_with_config(&url, Some(client_config), false).await?;
    warm.send(Message::text(r#"["0","0","echo:idle","phx_join",{}]"#))
        .await?;
    tokio::time::timeout(Duration::from_secs(5), warm.next()).await?;
    let before = rss()?;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(&url, Some(client_config), false).await?;
        ws.send(Message::text(format!(
            r#"["{i}","{i}","echo:idle","phx_join",{{}}]"#
        )))
        .await?;
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await?
            .ok_or("closed")??;
        clients.push(ws);
    }
    let after = rss()?;
    let per = (after.saturating_sub(before)) / n as u64;
    println!(
        "{n} idle connections, server read buffer {read_buffer} B: {} KiB resident growth, \
         {:.1} KiB per connection (server and client side together)",
        after.saturating_sub(before) / 1024,
        per as f64 / 1024.0
    );
    drop(clients);
    server.shutdown().await;
    Ok(())
}
