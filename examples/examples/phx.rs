//! `phx`: a scriptable Phoenix Channels client.
//!
//! ```text
//! cargo run -q -p examples --example phx -- --url ws://HOST:PORT/socket [--param k=v]... \
//!     [--heartbeat-ms N] [--timeout-ms N]
//! ```
//!
//! Reads one JSON command per line on stdin (`join`, `push`, `cast`, `leave`, `wait`) and writes
//! one JSON event per line on stdout. Logs go to stderr (`RUST_LOG=debug` for more).

use std::process::ExitCode;

use examples::phx::{Options, run};

#[tokio::main]
async fn main() -> ExitCode {
    examples::run_stdio("phx", Options::parse, run).await
}
