//! `dust`: a scriptable Dust client.
//!
//! ```text
//! cargo run -q -p examples --example dust -- --url ws://HOST:PORT/ws/sync --token T \
//!     --store S [--store S2]... [--device-id D] [--heartbeat-ms N]
//! ```
//!
//! Reads one JSON command per line on stdin (`write`, `put_file`, `info`, `wait`, `wait_acked`)
//! and writes one JSON event per line on stdout. Logs go to stderr (`RUST_LOG=debug` for more).

use std::process::ExitCode;

use examples::dust::{Options, run};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    match run(options, stdin, tokio::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dust: {message}");
            ExitCode::FAILURE
        }
    }
}
