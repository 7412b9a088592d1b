//! The orchestrator's child processes: the servers, the clients' runs (plain or under
//! callgrind), and building or preparing what they need.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::measure::{BenchResult, BoxError};
use crate::spec::Spec;

/// The workspace root (this example lives in `examples/`).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Set (to anything) to keep the callgrind profiles in the temporary directory, for
/// `callgrind_annotate` (their paths are printed).
const KEEP_PROFILES: &str = "BENCH_PEERS_KEEP_CALLGRIND";

/// Runs `spec` under callgrind with `spec.ops` and twice as many operations (fresh topics) and
/// returns the second run's result with the instructions per operation of the difference.
pub(crate) async fn callgrind(
    spec: &Spec,
    run: u32,
    source: Option<&str>,
    mut flooder: Option<&mut Server>,
) -> Result<BenchResult, BoxError> {
    let mut totals = Vec::new();
    let mut last = None;
    for (i, ops) in [spec.ops, 2 * spec.ops].into_iter().enumerate() {
        let mut spec = spec.clone();
        spec.ops = ops;
        spec.topic = format!("{}x{i}", spec.topic);
        let out = std::env::temp_dir().join(format!(
            "bench_peers.{}.{run}.{i}.callgrind",
            std::process::id()
        ));
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg("-q")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(std::env::current_exe()?)
            .args(spec.to_args());
        let result = run_child(command, &spec, source, flooder.as_deref_mut()).await?;
        let text = tokio::fs::read_to_string(&out).await;
        if std::env::var_os(KEEP_PROFILES).is_some() {
            eprintln!(
                "bench_peers: kept {} ({} {} {} ops)",
                out.display(),
                spec.client,
                spec.workload,
                ops
            );
        } else {
            let _ = tokio::fs::remove_file(&out).await;
        }
        let text = text.map_err(|e| format!("callgrind wrote no {}: {e}", out.display()))?;
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or("no totals line in the callgrind output")?;
        totals.push((ops, total));
        last = Some(result);
    }
    let mut result = last.ok_or("no callgrind run")?;
    let [(n1, i1), (n2, i2)] = totals[..] else {
        return Err("two callgrind runs expected".into());
    };
    result.instructions_per_op = Some(i2.saturating_sub(i1) as f64 / (n2 - n1).max(1) as f64);
    Ok(result)
}

/// Builds `dust-conformance-server` (release when this harness is a release build) and
/// returns the executable's path as cargo reports it (so `CARGO_TARGET_DIR` is honoured).
pub(crate) async fn build_server() -> Result<PathBuf, BoxError> {
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
pub(crate) async fn prepare_node(node: &str, bench_dir: &Path) -> Result<(), BoxError> {
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
        || !bench_dir.join("node_modules").join("msgpackr").exists()
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
pub(crate) struct Server {
    child: Child,
    /// `(name, url)` from its `listening [NAME] URL` lines (name empty when absent).
    urls: Vec<(String, String)>,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Starts it and waits for its first `lines` lines, `listening [NAME] URL` each.
    pub(crate) async fn start(command: &mut Command, lines: usize) -> Result<Self, BoxError> {
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
    pub(crate) fn url(&self, name: &str) -> Result<&str, BoxError> {
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
    pub(crate) async fn stop(mut self) {
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
pub(crate) async fn run_child(
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
