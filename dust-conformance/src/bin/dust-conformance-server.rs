//! `dust-conformance-server`: the conformance server as a process, for clients in other
//! languages.
//!
//! ```text
//! dust-conformance-server [--listen ADDR] [--idle-timeout-ms MS] [--control-stdin]
//! ```
//!
//! The first stdout line is `listening ws://HOST:PORT/socket`. Logs go to stderr (`RUST_LOG`,
//! default `info`). With `--control-stdin` it reads one JSON command per line from stdin and
//! answers one JSON line each on stdout (see `dust_conformance::command`); it stops when stdin
//! closes. It stops cleanly on Ctrl-C and SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use dust_conformance::{Control, ServerConfig, command};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: dust-conformance-server [--listen ADDR] [--idle-timeout-ms MS] [--control-stdin]

  --listen ADDR          address to bind (default 127.0.0.1:0)
  --idle-timeout-ms MS   close connections idle for MS milliseconds with 1000 (default 60000)
  --control-stdin        read JSON control commands from stdin, one per line; answer on stdout
";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    idle_timeout: Option<Duration>,
    control_stdin: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        idle_timeout: None,
        control_stdin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--idle-timeout-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|e| format!("--idle-timeout-ms {v}: {e}"))?;
                args.idle_timeout = Some(Duration::from_millis(ms));
            }
            "--control-stdin" => args.control_stdin = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "{error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // A blocking read of stdin may still be pending: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "dust-conformance-server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::default().listen(args.listen);
    if let Some(timeout) = args.idle_timeout {
        config = config.idle_timeout(timeout);
    }
    let server = dust_conformance::start(config).await?;

    // Every stdout line goes through one writer task, so lines never interleave; `None` ends it.
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<Option<String>>();
    let stdout_task = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(Some(line)) = lines_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    lines_tx.send(Some(format!("listening {}", server.socket_url())))?;

    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<&'static str>();
    if args.control_stdin {
        tokio::spawn(control_loop(
            server.control(),
            lines_tx.clone(),
            stop_tx.clone(),
        ));
    }
    let reason = tokio::select! {
        reason = stop_rx.recv() => reason.unwrap_or("control loop ended"),
        result = tokio::signal::ctrl_c() => {
            result?;
            "interrupted"
        }
        () = terminated() => "terminated",
    };
    tracing::info!(reason, "shutting down");
    server.shutdown().await;
    // Let the answers already queued reach stdout.
    let _ = lines_tx.send(None);
    let _ = tokio::time::timeout(Duration::from_secs(1), stdout_task).await;
    Ok(())
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            sigterm.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}

/// Reads commands until stdin closes; each runs in its own task (a `wait` does not hold up
/// the others) and its answer is one stdout line.
async fn control_loop(
    control: Control,
    lines: mpsc::UnboundedSender<Option<String>>,
    stop: mpsc::UnboundedSender<&'static str>,
) {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match stdin.next_line().await {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                let control = control.clone();
                let lines = lines.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let answer = command::execute_line(&control, &line).await;
                    let _ = lines.send(Some(answer.json.to_string()));
                    if answer.shutdown {
                        let _ = stop.send("shutdown command");
                    }
                });
            }
            Ok(None) => {
                let _ = stop.send("stdin closed");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read stdin");
                let _ = stop.send("stdin failed");
                return;
            }
        }
    }
}
