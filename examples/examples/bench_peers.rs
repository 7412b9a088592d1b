//! `bench_peers`: phoenix-channels side by side with the floor and its peers, in one run.
//!
//! ```text
//! cargo run --release -p examples --example bench_peers -- [--quick] [--clients LIST]
//!     [--workloads LIST] [--payloads LIST] [--runtimes LIST] [--server-bin PATH] [--node PATH]
//!     [--url ws://HOST:PORT/socket] [--callgrind]
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
//! Clients: `floor` (a hand-written WebSocket client, `bench_peers/wire.rs`: pre-encoded V2
//! frames, one write per batch, reused buffers, replies matched by ref in place),
//! `phoenix-channels` (this workspace, public API, `Socket::builder(..).connect()` unless
//! `--ours-driver inline`), `phoenix_channels_client` (0.1.2 from
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
//! `--url ws://HOST:PORT/socket` runs the echo workloads (sequential, pipelined, channels)
//! against an external server with the `echo:*` channel of PROTOCOL.md §3 instead of the
//! spawned emulation (fanout needs the flood server and is left out).
//!
//! `--callgrind` runs each Rust client twice under `valgrind --tool=callgrind`, with N and 2N
//! operations, and reports the instructions per operation, `(I(2N) - I(N)) / N`: connecting,
//! joining and start-up cancel out, and the count is repeatable on a noisy machine.
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
#[path = "bench_peers/procs.rs"]
mod procs;
#[path = "bench_peers/report.rs"]
mod report;
#[path = "bench_peers/spec.rs"]
mod spec;
#[path = "bench_peers/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::process::Command;

use measure::{BenchResult, BoxError};
use procs::{Server, build_server, callgrind, prepare_node, run_child};
use spec::{Flavor, Spec, Workload};

/// The client names, in table order.
const CLIENTS: [&str; 7] = [
    "floor",
    "phoenix-channels",
    "phoenix_channels_client",
    "phoenix.js",
    "floor/msgpack",
    "phoenix-channels/msgpack",
    "phoenix.js/msgpack",
];

/// Whether a client is phoenix.js (over JSON or MessagePack), run under Node.
fn is_js(client: &str) -> bool {
    client.starts_with("phoenix.js")
}

/// The fan-out sources of the flood server (see `bench_peers/flood.rs`).
const SOURCES: [&str; 2] = ["dust-conformance", "batched"];

const USAGE: &str = "usage: bench_peers [--quick] [--clients LIST] [--workloads LIST]
                   [--payloads LIST] [--runtimes LIST] [--fanout-sources LIST]
                   [--repeat N] [--window N] [--channels N] [--ours-queue-capacity N]
                   [--server-bin PATH] [--node PATH] [--url URL] [--callgrind]
                   [--markdown]

  --quick            few operations per run (seconds in all); no timing is asserted
  --clients LIST     floor,phoenix-channels,phoenix_channels_client,phoenix.js,
                     floor/msgpack,phoenix-channels/msgpack,phoenix.js/msgpack (default: all; the /msgpack
                     clients speak MessagePack, vsn=3.0.0, in the sequential, pipelined and
                     dust-conformance fan-out rows, each compared with floor/msgpack)
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
  --url URL          an external echo server, ws://HOST:PORT/socket (a Phoenix app with the
                     echo:* channel of PROTOCOL.md §3); fanout is left out
  --markdown         also print the README's tables (Markdown), from the median runs
  --callgrind        instructions per op from valgrind --tool=callgrind (runs with N and 2N
                     ops; Rust clients only, default clients floor,phoenix-channels)
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
            // On the multi-thread runtime the floor runs on a worker, where the I/O events
            // are polled, rather than on the thread of `block_on`, which a worker must wake
            // for each event (the workloads of the clients under test stay on `block_on`'s
            // thread, as under `#[tokio::main]`).
            "floor" | "floor/msgpack" if spec.flavor == Flavor::MultiThread => {
                let spec = spec.clone();
                tokio::spawn(async move { floor::run(&spec).await }).await?
            }
            "floor" | "floor/msgpack" => floor::run(&spec).await,
            "phoenix-channels" | "phoenix-channels/msgpack" => ours::run(&spec).await,
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
    /// An external echo server instead of the spawned one.
    url: Option<String>,
    /// Instructions per op from callgrind instead of timings.
    callgrind: bool,
    /// Also print the README's tables in Markdown.
    markdown: bool,
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
        url: None,
        callgrind: false,
        markdown: false,
    };
    let (mut clients_given, mut workloads_given) = (false, false);
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
                clients_given = true;
            }
            "--workloads" => {
                workloads_given = true;
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
            "--url" => {
                let url = value()?;
                if !url.starts_with("ws://") && !url.starts_with("wss://") {
                    return Err(format!("--url wants ws://HOST:PORT/socket, not {url:?}").into());
                }
                options.url = Some(url.trim_end_matches('/').to_owned());
            }
            "--callgrind" => options.callgrind = true,
            "--markdown" => options.markdown = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other}\n\n{USAGE}").into()),
        }
    }
    if options.url.is_some() {
        if workloads_given && options.workloads.contains(&Workload::Fanout) {
            return Err("fanout needs the flood server, not an external --url".into());
        }
        options.workloads.retain(|w| *w != Workload::Fanout);
    }
    if options.callgrind {
        if !clients_given {
            options.clients = vec!["floor".to_owned(), "phoenix-channels".to_owned()];
        }
        if options.clients.iter().any(|c| is_js(c)) {
            return Err("--callgrind measures the Rust clients only".into());
        }
    }
    Ok(Some(options))
}

/// Operations per run: a few seconds each in full mode, a fraction of a second in quick mode.
/// phoenix.js gets a quarter of the pipelined operations in full mode (it is ~10× slower
/// there; per-operation figures do not depend on the count).
fn ops_for(options: &Options, client: &str, workload: Workload, payload: usize) -> u64 {
    let large = payload > 1024;
    // Under callgrind (~50× slower) the quick counts; the second run doubles them.
    let quick = options.quick || options.callgrind;
    let ops = match (workload, quick, large) {
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
    if is_js(client) && workload == Workload::Pipelined && !quick {
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
    if options.callgrind {
        report::print_instructions(&results, &options.clients);
    } else {
        report::print(&results, &options.clients, options.repeat);
        if options.markdown {
            report::print_markdown(&results, &options.clients);
        }
    }
    eprintln!(
        "bench_peers: {} runs in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run_all(options: &Options) -> Result<Vec<BenchResult>, BoxError> {
    let server_bin = match (&options.server_bin, &options.url) {
        (_, Some(_)) => None,
        (Some(path), None) => Some(path.clone()),
        (None, None) => Some(build_server().await?),
    };
    let wants_js = options.clients.iter().any(|c| is_js(c));
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    if wants_js {
        prepare_node(&options.node, &bench_dir).await?;
    }
    let (server, echo_url) = match (&server_bin, &options.url) {
        (Some(server_bin), _) => {
            let server = Server::start(Command::new(server_bin).arg("--control-stdin"), 1).await?;
            let echo_url = server.url("")?.to_owned();
            eprintln!(
                "bench_peers: echo server {echo_url} ({})",
                server_bin.display()
            );
            (Some(server), echo_url)
        }
        (None, Some(url)) => {
            eprintln!("bench_peers: external echo server {url}");
            (None, url.clone())
        }
        (None, None) => return Err("no echo server".into()),
    };
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
            if options.callgrind {
                let result = callgrind(&spec, run, source, flooder.as_mut())
                    .await
                    .map_err(|e| {
                        format!("{client} ({}) {workload} {payload} B: {e}", flavor.name())
                    })?;
                println!("{}", serde_json::to_string(&result)?);
                results.push(result);
                continue;
            }
            let mut command = if is_js(client) {
                let mut c = Command::new(&options.node);
                c.arg("--expose-gc").arg(bench_dir.join("runner.mjs"));
                c
            } else {
                Command::new(std::env::current_exe()?)
            };
            command.args(spec.to_args());
            let runtime = if is_js(client) { "node" } else { flavor.name() };
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
    if let Some(server) = server {
        server.stop().await;
    }
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
                    // The MessagePack rows: sequential, pipelined, and the fan-out from the
                    // emulation (the batched source writes JSON text frames only).
                    if client.ends_with("/msgpack")
                        && (workload == Workload::Channels || source == Some("batched"))
                    {
                        continue;
                    }
                    let flavors = if is_js(client) {
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
