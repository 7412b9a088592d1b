//! The logic of the command-line tools of this workspace, kept in a library so that tests can
//! drive it in-process. The runnable programs are in `examples/examples/`.

use std::future::Future;
use std::process::ExitCode;

use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, Stdin, Stdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod dust;
pub mod phx;

/// Logs to stderr: `RUST_LOG`, default `warn`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Where a tool's output goes: JSON objects, one per line, in the order they are emitted, each
/// line flushed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JsonLines(mpsc::UnboundedSender<Value>);

impl JsonLines {
    /// The emitter, and the task that writes to `output`; the task ends once every emitter is
    /// dropped and the lines are written.
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(mut output: W) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut text = line.to_string();
                text.push('\n');
                if output.write_all(text.as_bytes()).await.is_err() || output.flush().await.is_err()
                {
                    break;
                }
            }
        });
        (Self(tx), writer)
    }

    /// Writes one line.
    pub fn emit(&self, line: Value) {
        let _ = self.0.send(line);
    }
}

/// Runs a line-oriented tool on this process: logs to stderr (`RUST_LOG`, default `warn`),
/// arguments parsed by `parse` (a usage error exits with code 2), then `run` on stdin and
/// stdout (an error exits with code 1).
pub async fn run_stdio<O, Fut>(
    name: &str,
    parse: impl FnOnce(Vec<String>) -> Result<O, String>,
    run: impl FnOnce(O, BufReader<Stdin>, Stdout) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), String>>,
{
    init_logging();
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(
        options,
        BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        }
    }
}
