//! `dust-conformance-server`: the conformance server as a process, for clients in other
//! languages.
//!
//! ```text
//! dust-conformance-server [--listen ADDR] [--idle-timeout-ms MS] [--control-stdin]
//!     [--token TOKEN[:SCOPES][@ACCESS]]... [--store ORG/NAME]... [--rate-limit N/min]
//!     [--state FILE] [--plan free|pro|team] [--no-auto-create]
//!     [--write-cost-ms N] [--drain-limit-ms N] [--crash-writes-at PATH]
//!     [--max-connections N] [--max-outbound-bytes N]
//! ```
//!
//! The first stdout line is `listening ws://HOST:PORT/socket` (the echo socket, with the
//! `echo:*` and `presence:*` channels), the second
//! `listening ws://HOST:PORT/ws/sync` (the Dust socket). Logs go to stderr (`RUST_LOG`,
//! default `info`). With `--control-stdin` it reads one JSON command per line from stdin and
//! answers one JSON line each on stdout (see `dust_conformance::command`); it stops when stdin
//! closes. It stops cleanly on Ctrl-C and SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use dust_conformance::dust::{self, DustConfig, Limits, RateLimit, StoreAccess, TokenConfig};
use dust_conformance::{Control, ServerConfig, command};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: dust-conformance-server [--listen ADDR] [--idle-timeout-ms MS] [--control-stdin]
           [--token TOKEN[:SCOPES][@ACCESS]]... [--store ORG/NAME]... [--rate-limit N/min]
           [--state FILE] [--plan free|pro|team] [--no-auto-create]
           [--write-cost-ms N] [--drain-limit-ms N] [--crash-writes-at PATH]
           [--max-connections N] [--max-outbound-bytes N]

Serves the echo socket at /socket (echo:* and presence:* channels) and the Dust store
socket at /ws/sync.

  --listen ADDR          address to bind (default 127.0.0.1:0)
  --idle-timeout-ms MS   close connections idle for MS milliseconds with 1000 (default 60000)
  --control-stdin        read JSON control commands from stdin, one per line; answer on stdout
  --token SPEC           a Dust token the /ws/sync socket accepts (repeatable). SPEC is
                         TOKEN[:SCOPES][@ACCESS]: TOKEN starts with dust_tok_; SCOPES is a
                         comma-separated list (default: every scope), e.g.
                         dust_tok_ro:entries:read; ACCESS is an org (the token reaches only
                         that org's stores) or a comma-separated list of org/name stores
                         (default: every store of every org)
  --store ORG/NAME       create this store at start (repeatable; stores are also created on
                         first join unless --no-auto-create)
  --rate-limit N/UNIT    at most N writes per token per minute (UNIT min) or second (UNIT s)
  --state FILE           keep the stores in FILE (an fsynced append-only journal): every
                         acknowledged write survives a crash or kill -9
  --plan PLAN            key and file limits of the real plans: free (default), pro, team
  --no-auto-create       joining an unknown store is refused (unauthorized), as on the real
                         server
  --write-cost-ms N      each write/put_file takes N ms to commit (the real server's database
                         commit; a channel commits one write at a time). Default 0
  --drain-limit-ms N     the channels of a dead connection still handle what they had
                         received (writes committed and broadcast, replies lost), as on a
                         real Phoenix server; stop them after N ms. Default: no limit
  --crash-writes-at PATH every write/put_file at the rendered PATH or below it crashes its
                         store channel (phx_error, no reply, not applied)
  --max-connections N    refuse upgrades with 503 while N connections are open
                         (default 10000)
  --max-outbound-bytes N drop a connection (a slow client) whose queued outbound frames
                         would exceed N bytes (default 16777216)
";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    idle_timeout: Option<Duration>,
    control_stdin: bool,
    dust: DustConfig,
    tokens: usize,
    write_cost: Duration,
    drain_limit: Option<Duration>,
    crash_writes_at: Option<String>,
    max_connections: Option<usize>,
    max_outbound_bytes: Option<usize>,
}

/// Parses a flag's count.
fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    value.parse().map_err(|e| format!("{flag} {value}: {e}"))
}

/// Parses a flag's milliseconds.
fn parse_ms(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("{flag} {value}: {e}"))
}

/// Parses `TOKEN[:SCOPES][@ACCESS]`.
fn parse_token(spec: &str) -> Result<TokenConfig, String> {
    let (left, access) = match spec.split_once('@') {
        Some((left, access)) => (left, Some(access)),
        None => (spec, None),
    };
    let (token, scopes) = match left.split_once(':') {
        Some((token, scopes)) => (token, Some(scopes)),
        None => (left, None),
    };
    if !token.starts_with(dust::TOKEN_PREFIX) || token.len() == dust::TOKEN_PREFIX.len() {
        return Err(format!(
            "--token: a Dust token starts with {}",
            dust::TOKEN_PREFIX
        ));
    }
    let mut config = TokenConfig::new(token);
    if let Some(scopes) = scopes {
        let list: Vec<&str> = scopes.split(',').filter(|s| !s.is_empty()).collect();
        if let Some(bad) = list.iter().find(|s| !dust::SCOPES.contains(s)) {
            return Err(format!(
                "--token: unknown scope {bad:?} (known: {})",
                dust::SCOPES.join(", ")
            ));
        }
        config = config.scopes(list);
    }
    match access {
        None => {}
        Some(access) if access.contains('/') => {
            let stores: Vec<String> = access.split(',').map(str::to_owned).collect();
            config = config.access(StoreAccess::Selected(stores));
        }
        Some(org) if !org.is_empty() => config = config.org(org),
        Some(_) => return Err("--token: empty access after @".to_owned()),
    }
    Ok(config)
}

/// Parses `N/min` or `N/s`.
fn parse_rate(spec: &str) -> Result<RateLimit, String> {
    let (n, unit) = spec
        .split_once('/')
        .ok_or_else(|| format!("--rate-limit {spec}: expected N/min or N/s"))?;
    let n: u64 = n.parse().map_err(|e| format!("--rate-limit {spec}: {e}"))?;
    match unit {
        "min" | "m" => Ok(RateLimit::per_minute(n)),
        "s" | "sec" => Ok(RateLimit::new(n, Duration::from_secs(1))),
        _ => Err(format!("--rate-limit {spec}: the unit is min or s")),
    }
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        idle_timeout: None,
        control_stdin: false,
        dust: DustConfig::new(),
        tokens: 0,
        write_cost: Duration::ZERO,
        drain_limit: None,
        crash_writes_at: None,
        max_connections: None,
        max_outbound_bytes: None,
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
            "--token" => {
                let token = parse_token(&value()?)?;
                args.dust = args.dust.token(token);
                args.tokens += 1;
            }
            "--store" => {
                let store = value()?;
                args.dust = args.dust.store(store);
            }
            "--rate-limit" => {
                let rate = parse_rate(&value()?)?;
                args.dust = args.dust.rate_limit(rate);
            }
            "--state" => {
                let path = value()?;
                args.dust = args.dust.state_file(path);
            }
            "--plan" => {
                let limits = match value()?.as_str() {
                    "free" => Limits::free(),
                    "pro" => Limits::pro(),
                    "team" => Limits::team(),
                    other => return Err(format!("--plan {other}: free, pro or team")),
                };
                args.dust = args.dust.limits(limits);
            }
            "--no-auto-create" => args.dust = args.dust.auto_create(false),
            "--write-cost-ms" => args.write_cost = parse_ms("--write-cost-ms", &value()?)?,
            "--crash-writes-at" => args.crash_writes_at = Some(value()?),
            "--max-connections" => {
                args.max_connections = Some(parse_count("--max-connections", &value()?)?);
            }
            "--max-outbound-bytes" => {
                args.max_outbound_bytes = Some(parse_count("--max-outbound-bytes", &value()?)?);
            }
            "--drain-limit-ms" => {
                args.drain_limit = Some(parse_ms("--drain-limit-ms", &value()?)?);
            }
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
    if args.tokens == 0 {
        tracing::warn!("no --token: every connect to /ws/sync is refused");
    }
    let mut config = ServerConfig::default().listen(args.listen).dust(args.dust);
    if let Some(timeout) = args.idle_timeout {
        config = config.idle_timeout(timeout);
    }
    if let Some(max) = args.max_connections {
        config = config.max_connections(max);
    }
    if let Some(bytes) = args.max_outbound_bytes {
        config = config.max_outbound_bytes(bytes);
    }
    let server = dust_conformance::start(config).await?;
    server.control().set_drain_limit(args.drain_limit);
    if let Some(dust) = server.dust() {
        dust.set_write_cost(args.write_cost);
        dust.crash_writes_at(args.crash_writes_at.as_deref());
    }

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
    lines_tx.send(Some(format!("listening {}", server.url("/ws/sync"))))?;

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
