//! `bench_peers`: phoenix-channels side by side with the floor and its peers, in one run.
//!
//! ```text
//! cargo run --release -p examples --example bench_peers -- [--quick] [--clients LIST]
//!     [--workloads LIST] [--payloads LIST] [--runtimes LIST] [--server-bin PATH] [--node PATH]
//! ```
//!
//! It builds and starts one `dust-conformance-server` (its own process), plus, for the fanout
//! workload, a flood server (`bench_peers --flood-server`: the same dust-conformance emulation
//! with a cheap "broadcast N events" command, which the binary lacks). Then it runs every
//! client on every workload, one child process per run, so that each child measures its own
//! CPU time (user + sys, all threads) and peak RSS from after connect/join to the end of the
//! workload. Each child prints one JSON line; the orchestrator prints them as they come, then
//! a table with the ratios to the floor and to the peers, all from the same run.
//!
//! Clients: `floor` (tokio-tungstenite, pre-encoded V2 frames, replies matched by ref),
//! `phoenix-channels` (this workspace, public API), `phoenix_channels_client` (0.1.2 from
//! crates.io) — each on tokio's `current_thread` and `multi_thread` runtimes — and
//! `phoenix.js` (npm `phoenix` 1.8.16 with `ws`, under Node ≥ 20; `examples/bench`).
//!
//! Workloads: `sequential` (push `echo`, await, repeat: p50/p99), `pipelined` (1,000 pushes in
//! flight), `fanout` (the server floods one joined channel), `channels` (join 1,000 channels
//! on one socket; RSS growth per channel). Payloads: 100 bytes and 4 KiB of JSON.
//!
//! `--quick` runs everything with few operations (seconds) and asserts nothing about timings;
//! the exit code is non-zero only if a client or a server fails.
//!
//! Internal modes: `--client NAME ...` (one run, see `bench_peers/spec.rs`) and
//! `--flood-server`.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool: the JSON lines and the table are its output"
)]
#![allow(
    clippy::print_stderr,
    reason = "a command-line tool: progress and errors go to stderr"
)]
#![allow(
    clippy::cast_precision_loss,
    reason = "operation counts and byte sizes far below 2^52 are shown as f64"
)]

#[path = "bench_peers/flood.rs"]
mod flood;
#[path = "bench_peers/floor.rs"]
mod floor;
#[path = "bench_peers/measure.rs"]
mod measure;
#[path = "bench_peers/ours.rs"]
mod ours;
#[path = "bench_peers/pcc.rs"]
mod pcc;
#[path = "bench_peers/report.rs"]
mod report;
#[path = "bench_peers/spec.rs"]
mod spec;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use measure::{BenchResult, BoxError};
use spec::{Flavor, Spec, Workload};

/// The client names, in table order.
const CLIENTS: [&str; 4] = [
    "floor",
    "phoenix-channels",
    "phoenix_channels_client",
    "phoenix.js",
];

/// The fan-out sources of the flood server (see `bench_peers/flood.rs`).
const SOURCES: [&str; 2] = ["dust-conformance", "batched"];

const USAGE: &str = "usage: bench_peers [--quick] [--clients LIST] [--workloads LIST]
                   [--payloads LIST] [--runtimes LIST] [--fanout-sources LIST]
                   [--repeat N] [--window N] [--channels N] [--ours-queue-capacity N]
                   [--server-bin PATH] [--node PATH]

  --quick            few operations per run (seconds in all); no timing is asserted
  --clients LIST     floor,phoenix-channels,phoenix_channels_client,phoenix.js (default: all)
  --workloads LIST   sequential,pipelined,fanout,channels (default: all)
  --payloads LIST    JSON payload sizes in bytes (default: 100,4096)
  --runtimes LIST    current_thread,multi_thread (default: both; Rust clients only)
  --fanout-sources LIST
                     dust-conformance,batched (default: both): the dust-conformance server
                     flooded through Control::broadcast (one write per frame), or a minimal
                     endpoint that writes the flood in large batches (client-bound)
  --repeat N         run everything N times (interleaved); the table shows, for each
                     row, the run with the median CPU per op (default: 1)
  --window N         pushes in flight in the pipelined workload (default: 1000)
  --channels N       channels joined in the channels workload (default: 1000)
  --ours-driver LIST  spawned,inline: how phoenix-channels runs its socket driver (default:
                     spawned, as `Socket::connect` does; inline awaits it on the
                     workload's own task, `SocketBuilder::build`)
  --ours-queue-capacity N
                     phoenix-channels' queue_capacity (default: the library's); a diagnostic
                     for the fanout drops, not a default
  --server-bin PATH  use this dust-conformance-server instead of building it
  --node PATH        the Node.js binary (default: node)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("--flood-server") {
        flood::serve()
    } else if args.iter().any(|a| a == "--client") {
        child(&args)
    } else {
        orchestrate(&args)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_peers: {error}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------ child

/// One run in this process: connect, join, measure, print one JSON line.
fn child(args: &[String]) -> Result<(), BoxError> {
    let spec = Spec::from_args(args)?;
    let runtime = spec.flavor.runtime()?;
    let result = runtime.block_on(async {
        match spec.client.as_str() {
            "floor" => floor::run(&spec).await,
            "phoenix-channels" => ours::run(&spec).await,
            "phoenix_channels_client" => pcc::run(&spec).await,
            other => Err(format!("unknown client {other:?}").into()),
        }
    })?;
    result.emit()?;
    // Do not wait for the clients' background tasks to wind down.
    std::process::exit(0)
}

// ------------------------------------------------------------------------ orchestrator

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    quick: bool,
    clients: Vec<String>,
    workloads: Vec<Workload>,
    payloads: Vec<usize>,
    flavors: Vec<Flavor>,
    sources: Vec<String>,
    repeat: u32,
    ours_queue_capacity: Option<usize>,
    /// For phoenix-channels: `false` spawns the socket's driver, `true` awaits it inline.
    ours_drivers: Vec<bool>,
    window: usize,
    channels: u64,
    server_bin: Option<PathBuf>,
    node: String,
}

fn parse_options(args: &[String]) -> Result<Option<Options>, BoxError> {
    let mut options = Options {
        quick: false,
        clients: CLIENTS.iter().map(|c| (*c).to_owned()).collect(),
        workloads: Workload::ALL.to_vec(),
        payloads: vec![100, 4096],
        flavors: vec![Flavor::CurrentThread, Flavor::MultiThread],
        sources: SOURCES.iter().map(|s| (*s).to_owned()).collect(),
        repeat: 1,
        ours_queue_capacity: None,
        ours_drivers: vec![false],
        window: 1000,
        channels: 1000,
        server_bin: None,
        node: "node".to_owned(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--clients" => {
                let clients = list(value()?);
                if let Some(bad) = clients.iter().find(|c| !CLIENTS.contains(&c.as_str())) {
                    return Err(format!("unknown client {bad:?}").into());
                }
                options.clients = clients;
            }
            "--workloads" => {
                options.workloads = list(value()?)
                    .iter()
                    .map(|w| w.parse())
                    .collect::<Result<_, _>>()?;
            }
            "--payloads" => {
                options.payloads = list(value()?)
                    .iter()
                    .map(|p| p.parse::<usize>().map(|p| p.max(12)))
                    .collect::<Result<_, _>>()?;
            }
            "--runtimes" => {
                options.flavors = list(value()?)
                    .iter()
                    .map(|r| r.parse())
                    .collect::<Result<_, _>>()?;
            }
            "--fanout-sources" => {
                let sources = list(value()?);
                if let Some(bad) = sources.iter().find(|s| !SOURCES.contains(&s.as_str())) {
                    return Err(format!("unknown fan-out source {bad:?}").into());
                }
                options.sources = sources;
            }
            "--repeat" => options.repeat = value()?.parse::<u32>()?.max(1),
            "--ours-queue-capacity" => options.ours_queue_capacity = Some(value()?.parse()?),
            "--ours-driver" => {
                options.ours_drivers = list(value()?)
                    .iter()
                    .map(|d| match d.as_str() {
                        "spawned" => Ok(false),
                        "inline" => Ok(true),
                        other => Err(format!("unknown driver {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--window" => options.window = value()?.parse()?,
            "--channels" => options.channels = value()?.parse()?,
            "--server-bin" => options.server_bin = Some(value()?.into()),
            "--node" => options.node = value()?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other}\n\n{USAGE}").into()),
        }
    }
    Ok(Some(options))
}

/// Operations per run: a few seconds each in full mode, a fraction of a second in quick mode.
/// phoenix.js gets a quarter of the pipelined operations in full mode (it is ~10× slower
/// there; per-operation figures do not depend on the count).
fn ops_for(options: &Options, client: &str, workload: Workload, payload: usize) -> u64 {
    let large = payload > 1024;
    let ops = match (workload, options.quick, large) {
        (Workload::Sequential, false, false) => 30_000,
        (Workload::Sequential, false, true) => 20_000,
        (Workload::Sequential, true, _) => 300,
        (Workload::Pipelined, false, false) => 300_000,
        (Workload::Pipelined, false, true) => 60_000,
        (Workload::Pipelined, true, false) => 5_000,
        (Workload::Pipelined, true, true) => 2_000,
        (Workload::Fanout, false, false) => 500_000,
        (Workload::Fanout, false, true) => 100_000,
        (Workload::Fanout, true, false) => 5_000,
        (Workload::Fanout, true, true) => 2_000,
        (Workload::Channels, _, _) => options.channels,
    };
    if client == "phoenix.js" && workload == Workload::Pipelined && !options.quick {
        ops / 4
    } else {
        ops
    }
}

fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let Some(options) = parse_options(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(run_all(&options))?;
    report::print(&results, &options.clients, options.repeat);
    eprintln!(
        "bench_peers: {} runs in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The workspace root (this example lives in `examples/`).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

async fn run_all(options: &Options) -> Result<Vec<BenchResult>, BoxError> {
    let server_bin = match &options.server_bin {
        Some(path) => path.clone(),
        None => build_server().await?,
    };
    let wants_js = options.clients.iter().any(|c| c == "phoenix.js");
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    if wants_js {
        prepare_node(&options.node, &bench_dir).await?;
    }
    let server = Server::start(Command::new(&server_bin).arg("--control-stdin"), 1).await?;
    let echo_url = server.url("")?.to_owned();
    eprintln!(
        "bench_peers: echo server {echo_url} ({})",
        server_bin.display()
    );
    let mut flooder = if options.workloads.contains(&Workload::Fanout) {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.arg("--flood-server");
        let flooder = Server::start(&mut command, SOURCES.len()).await?;
        for source in SOURCES {
            eprintln!(
                "bench_peers: fan-out source {source} {}",
                flooder.url(source)?
            );
        }
        Some(flooder)
    } else {
        None
    };

    let timeout = Duration::from_secs(if options.quick { 60 } else { 300 });
    let plans = plan(options);
    let mut results = Vec::new();
    let mut run = 0u32;
    for repeat in 0..options.repeat {
        for &(workload, payload, source, client, flavor, inline_driver) in &plans {
            run += 1;
            let target = match (source, flooder.as_ref()) {
                (Some(source), Some(flooder)) => flooder.url(source)?,
                _ => echo_url.as_str(),
            };
            let spec = Spec {
                client: client.to_owned(),
                flavor,
                workload,
                payload,
                ops: ops_for(options, client, workload, payload),
                window: options.window,
                url: target.to_owned(),
                topic: match workload {
                    Workload::Channels => format!("echo:ch{run}"),
                    _ => format!("echo:bench{run}"),
                },
                timeout,
                queue_capacity: options.ours_queue_capacity,
                inline_driver,
            };
            let mut command = if client == "phoenix.js" {
                let mut c = Command::new(&options.node);
                c.arg("--expose-gc").arg(bench_dir.join("runner.mjs"));
                c
            } else {
                Command::new(std::env::current_exe()?)
            };
            command.args(spec.to_args());
            let runtime = if client == "phoenix.js" {
                "node"
            } else {
                flavor.name()
            };
            let mut result = run_child(command, &spec, source, flooder.as_mut())
                .await
                .map_err(|e| {
                    let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
                    format!("{client} ({runtime}) {workload} {payload} B{from} failed: {e}")
                })?;
            result.source = source.map(str::to_owned);
            if options.repeat > 1 {
                result.repeat = Some(repeat);
            }
            println!("{}", serde_json::to_string(&result)?);
            results.push(result);
        }
    }
    server.stop().await;
    if let Some(flooder) = flooder {
        flooder.stop().await;
    }
    Ok(results)
}

/// One run: workload, payload, fan-out source, client, runtime flavour, inline driver.
type Plan<'a> = (Workload, usize, Option<&'a str>, &'a str, Flavor, bool);

/// Every run of one repetition, in table order: workload, payload, source, client, runtime,
/// driver.
fn plan(options: &Options) -> Vec<Plan<'_>> {
    let mut plans = Vec::new();
    for &workload in &options.workloads {
        let payloads = if workload == Workload::Channels {
            vec![0]
        } else {
            options.payloads.clone()
        };
        let sources: Vec<Option<&str>> = if workload == Workload::Fanout {
            options.sources.iter().map(|s| Some(s.as_str())).collect()
        } else {
            vec![None]
        };
        for &payload in &payloads {
            for &source in &sources {
                for client in &options.clients {
                    let flavors = if client == "phoenix.js" {
                        vec![Flavor::CurrentThread]
                    } else {
                        options.flavors.clone()
                    };
                    let drivers = if client == "phoenix-channels" {
                        options.ours_drivers.clone()
                    } else {
                        vec![false]
                    };
                    for flavor in flavors {
                        for &inline in &drivers {
                            plans.push((
                                workload,
                                payload,
                                source,
                                client.as_str(),
                                flavor,
                                inline,
                            ));
                        }
                    }
                }
            }
        }
    }
    plans
}

/// Builds `dust-conformance-server` (release when this harness is a release build) and
/// returns the executable's path as cargo reports it (so `CARGO_TARGET_DIR` is honoured).
async fn build_server() -> Result<PathBuf, BoxError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "dust-conformance",
            "--features",
            "server-bin",
            "--bin",
            "dust-conformance-server",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("bench_peers: building dust-conformance-server");
    let output = command.output().await?;
    if !output.status.success() {
        return Err(format!("cargo build of dust-conformance-server: {}", output.status).into());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == "dust-conformance-server")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no dust-conformance-server executable".into())
}

/// Checks Node ≥ 20 and installs the runner's npm packages from the lock file when missing.
async fn prepare_node(node: &str, bench_dir: &Path) -> Result<(), BoxError> {
    let version = Command::new(node)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("phoenix.js needs Node.js >= 20 ({node}: {e})"))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!("phoenix.js needs Node.js >= 20, found {version:?}").into());
    }
    if !bench_dir.join("node_modules").join("phoenix").exists()
        || !bench_dir.join("node_modules").join("ws").exists()
    {
        eprintln!("bench_peers: npm ci in {}", bench_dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(bench_dir)
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            return Err(format!("npm ci in {}: {status}", bench_dir.display()).into());
        }
    }
    Ok(())
}

/// A server child process: its URLs, and its stdin/stdout for commands.
struct Server {
    child: Child,
    /// `(name, url)` from its `listening [NAME] URL` lines (name empty when absent).
    urls: Vec<(String, String)>,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Starts it and waits for its first `lines` lines, `listening [NAME] URL` each.
    async fn start(command: &mut Command, lines: usize) -> Result<Self, BoxError> {
        let mut child = command
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no server stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no server stdout")?).lines();
        let mut urls = Vec::new();
        for _ in 0..lines {
            let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
                .await
                .map_err(|_| "the server did not start within 30 s")??
                .ok_or("the server exited before listening")?;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["listening", url] => urls.push((String::new(), (*url).to_owned())),
                ["listening", name, url] => urls.push(((*name).to_owned(), (*url).to_owned())),
                _ => return Err(format!("unexpected server line {line:?}").into()),
            }
        }
        Ok(Self {
            child,
            urls,
            stdin,
            stdout,
        })
    }

    /// The URL announced under `name` (`""`: the first one).
    fn url(&self, name: &str) -> Result<&str, BoxError> {
        self.urls
            .iter()
            .find(|(n, _)| name.is_empty() || n == name)
            .map(|(_, url)| url.as_str())
            .ok_or_else(|| format!("the server announced no {name} URL").into())
    }

    /// Asks the flood server to broadcast `n` events of `bytes` to `topic` from `source`.
    async fn flood(
        &mut self,
        source: &str,
        topic: &str,
        n: u64,
        bytes: usize,
    ) -> Result<(), BoxError> {
        let line = format!("flood {source} {topic} {n} {}\n", bytes.max(12));
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Reads the flood server's answer.
    async fn flooded(&mut self) -> Result<u64, BoxError> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .map_err(|_| "the flood server did not answer")??
            .ok_or("the flood server exited")?;
        line.strip_prefix("flooded ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("flood server: {line}").into())
    }

    /// Closes stdin (the servers stop on that) and waits a little, then kills.
    async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs one child and returns its JSON line. For fanout, the child's `ready` line starts the
/// flood.
async fn run_child(
    mut command: Command,
    spec: &Spec,
    source: Option<&str>,
    mut flooder: Option<&mut Server>,
) -> Result<BenchResult, BoxError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let mut result = None;
    let mut flooded = false;
    let deadline = spec.timeout + Duration::from_secs(30);
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if line == "ready" {
                let (Some(flooder), Some(source)) = (flooder.as_deref_mut(), source) else {
                    return Err("a ready line, but no flood server".into());
                };
                flooder
                    .flood(source, &spec.topic, spec.ops, spec.payload)
                    .await?;
                flooded = true;
            } else if line.starts_with('{') {
                result = Some(serde_json::from_str::<BenchResult>(&line)?);
            } else if !line.trim().is_empty() {
                eprintln!("{}: {line}", spec.client);
            }
        }
        Ok::<_, BoxError>(())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| format!("no result within {} s", deadline.as_secs()))??;
    let status = child.wait().await?;
    if flooded && let Some(flooder) = flooder {
        let reached = flooder.flooded().await?;
        if reached == 0 {
            return Err("the flood reached no subscriber".into());
        }
    }
    if !status.success() {
        return Err(format!("exited with {status}").into());
    }
    result.ok_or_else(|| "no JSON result line".into())
}
