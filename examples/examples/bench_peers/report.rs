//! The table, the ratios and the target check, all computed from one run's results.

use std::fmt::Write as _;

use crate::measure::BenchResult;
use crate::spec::Workload;

const OURS: &str = "phoenix-channels";
const FLOOR: &str = "floor";
const PCC: &str = "phoenix_channels_client";
const JS: &str = "phoenix.js";

/// For each (client, runtime, workload, payload, source), the run with the median CPU per
/// operation (the lower median for an even count).
fn medians(all: &[BenchResult]) -> Vec<BenchResult> {
    let key = |r: &BenchResult| {
        (
            r.client.clone(),
            r.runtime.clone(),
            r.driver.clone(),
            r.workload.clone(),
            r.payload_bytes,
            r.source.clone(),
        )
    };
    let mut groups: Vec<Vec<&BenchResult>> = Vec::new();
    for r in all {
        match groups.iter_mut().find(|g| key(g[0]) == key(r)) {
            Some(group) => group.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut group| {
            group.sort_by(|a, b| a.cpu_us_per_op.total_cmp(&b.cpu_us_per_op));
            group[(group.len() - 1) / 2].clone()
        })
        .collect()
}

/// The result of `client` for the same workload and payload as `like`, on `runtime` (the
/// phoenix.js result has runtime `node` and matches any).
fn find<'a>(
    results: &'a [BenchResult],
    client: &str,
    like: &BenchResult,
    runtime: &str,
) -> Option<&'a BenchResult> {
    results.iter().find(|r| {
        r.client == client
            && r.workload == like.workload
            && r.payload_bytes == like.payload_bytes
            && r.source == like.source
            && (r.runtime == runtime || r.client == JS)
    })
}

/// The floor result to compare `r` with: same runtime; `current_thread` for phoenix.js.
fn floor_of<'a>(results: &'a [BenchResult], r: &BenchResult) -> Option<&'a BenchResult> {
    let runtime = if r.client == JS {
        "current_thread"
    } else {
        r.runtime.as_str()
    };
    find(results, FLOOR, r, runtime)
}

/// The runtime, with `/inline` for phoenix-channels awaiting its driver inline.
fn runtime_label(r: &BenchResult) -> String {
    match &r.driver {
        Some(driver) => format!("{}/{driver}", r.runtime),
        None => r.runtime.clone(),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn show(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The workload, with the fan-out source: `fanout/dust`, `fanout/batched`.
fn workload_label(r: &BenchResult) -> String {
    match r.source.as_deref() {
        Some("dust-conformance") => format!("{}/dust", r.workload),
        Some(source) => format!("{}/{source}", r.workload),
        None => r.workload.clone(),
    }
}

fn payload_label(r: &BenchResult) -> String {
    if r.workload == Workload::Channels.name() {
        "-".to_owned()
    } else if r.payload_bytes >= 1024 && r.payload_bytes.is_multiple_of(1024) {
        format!("{} KiB", r.payload_bytes / 1024)
    } else {
        format!("{} B", r.payload_bytes)
    }
}

/// Prints the result table, the comparison of phoenix-channels with the floor and the peers,
/// and which targets of the issue this run meets.
pub(crate) fn print(all: &[BenchResult], clients: &[String], repeat: u32) {
    let medians = medians(all);
    let results = medians.as_slice();
    if repeat > 1 {
        println!(
            "\n{repeat} repetitions: each row is the run with the median CPU per op of its {repeat}"
        );
    }
    let order = |r: &BenchResult| {
        let workload = Workload::ALL
            .iter()
            .position(|w| w.name() == r.workload)
            .unwrap_or(9);
        let client = clients.iter().position(|c| *c == r.client).unwrap_or(9);
        (
            workload,
            r.payload_bytes,
            r.source.clone(),
            client,
            r.runtime.clone(),
            r.driver.clone(),
        )
    };
    let mut sorted: Vec<&BenchResult> = results.iter().collect();
    sorted.sort_by_key(|r| order(r));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<24} {:<21} {:<14} {:>7} {:>8} {:>7} {:>10} {:>9} {:>8} {:>8} {:>7} {:>7}  notes",
        "client",
        "runtime",
        "workload",
        "payload",
        "ops",
        "wall_s",
        "ops/s",
        "cpu_us/op",
        "p50_us",
        "p99_us",
        "rss_MiB",
        "cpu/flr"
    );
    for r in &sorted {
        let vs_floor = floor_of(results, r).and_then(|f| ratio(r.cpu_us_per_op, f.cpu_us_per_op));
        let mut notes = Vec::new();
        if let Some(lost) = r.lost.filter(|l| *l > 0) {
            notes.push(format!("lost {lost} of {}", r.sent.unwrap_or(0)));
        }
        if let Some(bytes) = r.mem_per_channel_bytes {
            notes.push(format!("{bytes:.0} B/channel"));
        }
        if let Some(capacity) = r.queue_capacity {
            notes.push(format!("queue_capacity {capacity}"));
        }
        let _ = writeln!(
            out,
            "{:<24} {:<21} {:<14} {:>7} {:>8} {:>7.3} {:>10.0} {:>9.2} {:>8} {:>8} {:>7.1} {:>7}  {}",
            r.client,
            runtime_label(r),
            workload_label(r),
            payload_label(r),
            r.ops,
            r.wall_s,
            r.ops_per_s,
            r.cpu_us_per_op,
            show(r.p50_us, 1),
            show(r.p99_us, 1),
            r.peak_rss_kib as f64 / 1024.0,
            show(vs_floor, 2),
            notes.join(", ")
        );
    }

    let ours: Vec<&BenchResult> = sorted
        .iter()
        .copied()
        .filter(|r| r.client == OURS)
        .collect();
    if !ours.is_empty() {
        let _ = writeln!(
            out,
            "\nphoenix-channels against the floor and the peers, same run \
             (CPU per op: ours / theirs, lower is better; throughput: ours / theirs, higher is better)\n"
        );
        let _ = writeln!(
            out,
            "{:<14} {:>7} {:<21} {:>9} {:>7} {:>7} {:>7} | {:>10} {:>7} {:>7} {:>7}",
            "workload",
            "payload",
            "runtime",
            "cpu_us/op",
            "×floor",
            "×pcc",
            "×js",
            "ops/s",
            "÷floor",
            "÷pcc",
            "÷js"
        );
        for r in &ours {
            let floor = floor_of(results, r);
            let pcc = find(results, PCC, r, &r.runtime);
            let js = find(results, JS, r, &r.runtime);
            let cpu =
                |o: Option<&BenchResult>| o.and_then(|o| ratio(r.cpu_us_per_op, o.cpu_us_per_op));
            let thr = |o: Option<&BenchResult>| o.and_then(|o| ratio(r.ops_per_s, o.ops_per_s));
            let _ = writeln!(
                out,
                "{:<14} {:>7} {:<21} {:>9.2} {:>7} {:>7} {:>7} | {:>10.0} {:>7} {:>7} {:>7}",
                workload_label(r),
                payload_label(r),
                runtime_label(r),
                r.cpu_us_per_op,
                show(cpu(floor), 2),
                show(cpu(pcc), 2),
                show(cpu(js), 2),
                r.ops_per_s,
                show(thr(floor), 2),
                show(thr(pcc), 2),
                show(thr(js), 2)
            );
        }
        targets(&mut out, results, &ours);
    }
    print!("{out}");
}

/// One line per target of the issue: met or missed in this run, with the misses named.
fn targets(out: &mut String, results: &[BenchResult], ours: &[&BenchResult]) {
    let _ = writeln!(out, "\ntargets (informative; nothing is asserted):");
    let label = |r: &BenchResult| {
        format!(
            "{} {} {}",
            workload_label(r),
            payload_label(r),
            runtime_label(r)
        )
    };
    let mut check = |name: &str, rows: Vec<(String, Option<bool>, String)>| {
        let judged: Vec<_> = rows.iter().filter(|(_, ok, _)| ok.is_some()).collect();
        if judged.is_empty() {
            let _ = writeln!(out, "  [ n/a ] {name}");
            return;
        }
        let missed: Vec<String> = judged
            .iter()
            .filter(|(_, ok, _)| *ok == Some(false))
            .map(|(what, _, value)| format!("{what} ({value})"))
            .collect();
        let verdict = if missed.is_empty() {
            "  met "
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "  [{verdict}] {name}: {} of {} rows{}",
            judged.len() - missed.len(),
            judged.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!("; missed: {}", missed.join("; "))
            }
        );
    };

    let round_trips = |r: &&&BenchResult| {
        r.workload == Workload::Sequential.name() || r.workload == Workload::Pipelined.name()
    };
    check(
        "CPU per round trip within 1.3× the floor (sequential, pipelined)",
        ours.iter()
            .filter(round_trips)
            .map(|r| {
                let x = floor_of(results, r).and_then(|f| ratio(r.cpu_us_per_op, f.cpu_us_per_op));
                (label(r), x.map(|x| x <= 1.3), format!("{}×", show(x, 2)))
            })
            .collect(),
    );
    for (peer, bound) in [(PCC, 0.7), (JS, 0.25)] {
        check(
            &format!("CPU per op at most {bound}× {peer}'s (every workload)"),
            ours.iter()
                .map(|r| {
                    let x = find(results, peer, r, &r.runtime)
                        .and_then(|p| ratio(r.cpu_us_per_op, p.cpu_us_per_op));
                    (label(r), x.map(|x| x <= bound), format!("{}×", show(x, 2)))
                })
                .collect(),
        );
    }
    check(
        "throughput never below a peer's",
        ours.iter()
            .map(|r| {
                let worst = [PCC, JS]
                    .iter()
                    .filter_map(|p| find(results, p, r, &r.runtime))
                    .filter_map(|p| ratio(r.ops_per_s, p.ops_per_s))
                    .reduce(f64::min);
                (
                    label(r),
                    worst.map(|x| x >= 1.0),
                    format!("{}× the slowest-beaten peer", show(worst, 2)),
                )
            })
            .collect(),
    );
    check(
        "throughput within 10% of the floor (pipelined, fanout/batched)",
        ours.iter()
            .filter(|r| {
                r.workload == Workload::Pipelined.name()
                    || (r.workload == Workload::Fanout.name()
                        && r.source.as_deref() == Some("batched"))
            })
            .map(|r| {
                let x = floor_of(results, r).and_then(|f| ratio(r.ops_per_s, f.ops_per_s));
                (label(r), x.map(|x| x >= 0.9), format!("{}×", show(x, 2)))
            })
            .collect(),
    );
    check(
        "≥ 500,000 inbound events/s on one core, 100 B, batched source (CPU ≤ 2 µs per delivered event, none lost)",
        ours.iter()
            .filter(|r| {
                r.workload == Workload::Fanout.name()
                    && r.payload_bytes <= 128
                    && r.source.as_deref() == Some("batched")
            })
            .map(|r| {
                let per_core = if r.cpu_us_per_op > 0.0 {
                    1e6 / r.cpu_us_per_op
                } else {
                    0.0
                };
                (
                    label(r),
                    Some(r.cpu_us_per_op <= 2.0 && r.lost.unwrap_or(0) == 0),
                    format!(
                        "{per_core:.0} events per CPU-second, {:.0} events/s wall",
                        r.ops_per_s
                    ),
                )
            })
            .collect(),
    );
    check(
        "≤ 4 KiB of client memory per joined idle channel",
        ours.iter()
            .filter(|r| r.workload == Workload::Channels.name())
            .map(|r| {
                let bytes = r.mem_per_channel_bytes;
                (
                    label(r),
                    bytes.map(|b| b <= 4096.0),
                    format!("{} B", show(bytes, 0)),
                )
            })
            .collect(),
    );
}
