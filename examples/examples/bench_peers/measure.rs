//! What every client process measures about itself, and the JSON line it prints.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The error type of the bench: any error, with its message.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// CPU time (user + sys) of this process, all threads, from `CLOCK_PROCESS_CPUTIME_ID`.
pub(crate) fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A field of `/proc/self/status` in KiB (`VmHWM`: peak RSS, `VmRSS`: current RSS).
pub(crate) fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Wall clock and CPU clock, started together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    /// Starts both clocks now.
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    /// Wall and CPU time since `start`.
    pub(crate) fn stop(&self) -> (Duration, Duration) {
        let cpu = process_cpu().saturating_sub(self.cpu);
        (self.wall.elapsed(), cpu)
    }

    /// When the meter started.
    pub(crate) fn started(&self) -> Instant {
        self.wall
    }
}

/// One result: the JSON line of the issue, plus extra fields (never fewer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BenchResult {
    /// `floor`, `phoenix-channels`, `phoenix_channels_client` or `phoenix.js`.
    pub(crate) client: String,
    /// `sequential`, `pipelined`, `fanout` or `channels`.
    pub(crate) workload: String,
    /// The JSON payload size of each push or event (0 for `channels`).
    pub(crate) payload_bytes: u64,
    /// Operations completed: round trips, events delivered, or channels joined.
    pub(crate) ops: u64,
    /// Wall time of the workload.
    pub(crate) wall_s: f64,
    /// CPU time (user + sys, all threads) of the client process during the workload.
    pub(crate) cpu_s: f64,
    /// `ops / wall_s`.
    pub(crate) ops_per_s: f64,
    /// `cpu_s / ops`, in µs.
    pub(crate) cpu_us_per_op: f64,
    /// Median round trip (sequential only).
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile round trip (sequential only).
    pub(crate) p99_us: Option<f64>,
    /// Peak RSS of the client process (`VmHWM`, or Node's `maxRSS`).
    pub(crate) peak_rss_kib: u64,
    /// `current_thread` or `multi_thread` for the Rust clients, `node` for phoenix.js.
    #[serde(default)]
    pub(crate) runtime: String,
    /// phoenix-channels' driver when not spawned: `inline` (awaited on the workload's task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) driver: Option<String>,
    /// The fan-out source (fanout): `dust-conformance` or `batched`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// The repetition this run belongs to (with `--repeat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) repeat: Option<u32>,
    /// phoenix-channels' `queue_capacity` when not the default (fanout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue_capacity: Option<usize>,
    /// Pushes kept in flight (pipelined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) window: Option<u64>,
    /// Events the server sent (fanout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sent: Option<u64>,
    /// Events sent but never delivered to user code (fanout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lost: Option<u64>,
    /// RSS growth per joined idle channel, in bytes (channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mem_per_channel_bytes: Option<f64>,
    /// Instructions per operation, from two callgrind runs (`--callgrind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instructions_per_op: Option<f64>,
}

impl BenchResult {
    /// A result from the measured times; the optional fields start empty.
    pub(crate) fn new(
        client: &str,
        runtime: &str,
        workload: &str,
        payload_bytes: usize,
        ops: u64,
        (wall, cpu): (Duration, Duration),
    ) -> Self {
        let wall_s = wall.as_secs_f64();
        let cpu_s = cpu.as_secs_f64();
        let per = |x: f64| if ops == 0 { 0.0 } else { x / ops as f64 };
        Self {
            client: client.to_owned(),
            workload: workload.to_owned(),
            payload_bytes: payload_bytes as u64,
            ops,
            wall_s,
            cpu_s,
            ops_per_s: if wall_s > 0.0 {
                ops as f64 / wall_s
            } else {
                0.0
            },
            cpu_us_per_op: per(cpu_s * 1e6),
            p50_us: None,
            p99_us: None,
            peak_rss_kib: status_kib("VmHWM"),
            runtime: runtime.to_owned(),
            driver: None,
            source: None,
            repeat: None,
            queue_capacity: None,
            window: None,
            sent: None,
            lost: None,
            mem_per_channel_bytes: None,
            instructions_per_op: None,
        }
    }

    /// Sets p50 and p99 from round-trip times in nanoseconds.
    pub(crate) fn with_latencies(mut self, mut nanos: Vec<u64>) -> Self {
        if nanos.is_empty() {
            return self;
        }
        nanos.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * nanos.len() as f64).ceil() as usize).clamp(1, nanos.len());
            nanos[rank - 1] as f64 / 1e3
        };
        self.p50_us = Some(at(0.50));
        self.p99_us = Some(at(0.99));
        self
    }

    /// Prints the result as one JSON line on stdout (the child's last line).
    pub(crate) fn emit(&self) -> Result<(), BoxError> {
        let line = serde_json::to_string(self)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

/// Tells the orchestrator that the client is joined and measuring (fanout): it then starts
/// the flood.
pub(crate) fn say_ready() -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}

/// The JSON payload of every push and event: `{"body":"xxx…"}`, exactly `bytes` long (at
/// least 12).
pub(crate) fn payload_text(bytes: usize) -> String {
    let fill = bytes.saturating_sub(11).max(1);
    format!("{{\"body\":\"{}\"}}", "x".repeat(fill))
}

/// RSS growth per item between two `VmRSS` readings, in bytes.
pub(crate) fn per_item_bytes(before_kib: u64, after_kib: u64, items: usize) -> f64 {
    if items == 0 {
        return 0.0;
    }
    after_kib.saturating_sub(before_kib) as f64 * 1024.0 / items as f64
}
