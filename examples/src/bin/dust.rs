//! `dust`: a scriptable Dust client.
//!
//! ```text
//! cargo run -q -p examples --bin dust -- --url ws://HOST:PORT/ws/sync --token T \
//!     --store S [--store S2]... [--device-id D] [--heartbeat-ms N] [--db PATH]
//! ```
//!
//! Reads one JSON command per line on stdin (`write`, `put_file`, `get`, `enum`, `subscribe`,
//! `state`, `info`, `wait`, `wait_acked`, ...) and writes one JSON event per line on stdout
//! (see the README). Logs go to stderr (`RUST_LOG=debug` for more).

use std::process::ExitCode;

use examples::dust::{Options, run};

#[tokio::main]
async fn main() -> ExitCode {
    examples::run_stdio("dust", Options::parse, run).await
}
