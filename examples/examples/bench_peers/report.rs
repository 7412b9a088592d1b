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
            && (r.runtime == runtime || r.client.starts_with(JS))
    })
}

/// The floor result to compare `r` with: same runtime; `current_thread` for phoenix.js.
fn floor_of<'a>(results: &'a [BenchResult], r: &BenchResult) -> Option<&'a BenchResult> {
    let runtime = if r.client.starts_with(JS) {
        "current_thread"
    } else {
        r.runtime.as_str()
    };
    // A MessagePack row is compared with the MessagePack floor.
    let floor = if r.client.ends_with("/msgpack") {
        "floor/msgpack"
    } else {
        FLOOR
    };
    find(results, floor, r, runtime)
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

/// Prints the README's tables in Markdown: CPU per op, throughput, sequential p50/p99 and
/// memory, one column per client and runtime (and driver), from the median runs.
pub(crate) fn print_markdown(all: &[BenchResult], clients: &[String]) {
    let results = medians(all);
    fn short(client: &str) -> &str {
        match client {
            OURS => "**ours**",
            PCC => "pcc",
            JS => "phoenix.js",
            other => other,
        }
    }
    // The columns: (client, runtime label), in client order.
    let mut columns: Vec<(String, String)> = Vec::new();
    for client in clients {
        let mut labels: Vec<String> = results
            .iter()
            .filter(|r| r.client == *client)
            .map(runtime_label)
            .collect();
        labels.sort();
        labels.dedup();
        for label in labels {
            columns.push((client.clone(), label));
        }
    }
    let header = |out: &mut String, first: &str| {
        let names: Vec<String> = columns
            .iter()
            .map(|(c, l)| {
                if c == JS {
                    short(c).to_owned()
                } else {
                    let l = l
                        .replace("current_thread", "ct")
                        .replace("multi_thread", "mt")
                        .replace('/', " ");
                    format!("{} {l}", short(c))
                }
            })
            .collect();
        let _ = writeln!(out, "| {first} | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
    };
    // The rows: (workload, payload, source), in table order.
    let mut rows: Vec<(usize, u64, Option<String>, &BenchResult)> = results
        .iter()
        .map(|r| {
            let w = Workload::ALL
                .iter()
                .position(|w| w.name() == r.workload)
                .unwrap_or(9);
            (w, r.payload_bytes, r.source.clone(), r)
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    rows.dedup_by(|a, b| (a.0, a.1, &a.2) == (b.0, b.1, &b.2));
    let cell = |like: &BenchResult, (client, label): &(String, String)| {
        results.iter().find(|r| {
            r.client == *client
                && runtime_label(r) == *label
                && r.workload == like.workload
                && r.payload_bytes == like.payload_bytes
                && r.source == like.source
        })
    };
    let row_label = |r: &BenchResult| {
        let workload = match r.source.as_deref() {
            Some(source) => format!("{} ({source})", r.workload),
            None => r.workload.clone(),
        };
        format!("{workload}, {}", payload_label(r))
    };
    let si = |x: f64| {
        if x >= 1e6 {
            format!("{:.2}M", x / 1e6)
        } else if x >= 1e4 {
            format!("{:.0}k", x / 1e3)
        } else if x >= 1e3 {
            format!("{:.1}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    };
    let mut out = String::new();
    let table = |out: &mut String,
                 title: &str,
                 filter: &dyn Fn(&BenchResult) -> bool,
                 value: &dyn Fn(&BenchResult) -> String| {
        let _ = writeln!(out, "\n{title}\n");
        header(out, "workload");
        for (_, _, _, like) in rows.iter().filter(|row| filter(row.3)) {
            let cells: Vec<String> = columns
                .iter()
                .map(|col| cell(like, col).map_or_else(|| "-".to_owned(), value))
                .collect();
            let _ = writeln!(out, "| {} | {} |", row_label(like), cells.join(" | "));
        }
    };
    table(
        &mut out,
        "CPU per operation, µs (user + sys, client process; lower is better)",
        &|_| true,
        &|r| {
            let mut s = format!("{:.2}", r.cpu_us_per_op);
            if let (Some(lost), Some(sent)) = (r.lost.filter(|l| *l > 0), r.sent) {
                let _ = write!(
                    s,
                    " ({:.0}% lost)",
                    lost as f64 * 100.0 / sent.max(1) as f64
                );
            }
            s
        },
    );
    table(
        &mut out,
        "Throughput, operations (or delivered events, or joins) per second",
        &|_| true,
        &|r| si(r.ops_per_s),
    );
    table(
        &mut out,
        "Sequential round trip p50 / p99, µs",
        &|r| r.workload == Workload::Sequential.name(),
        &|r| format!("{} / {}", show(r.p50_us, 0), show(r.p99_us, 0)),
    );
    table(
        &mut out,
        "Memory: RSS growth per joined idle channel, bytes (peak RSS, MiB)",
        &|r| r.workload == Workload::Channels.name(),
        &|r| {
            format!(
                "{} ({:.1})",
                show(r.mem_per_channel_bytes, 0),
                r.peak_rss_kib as f64 / 1024.0
            )
        },
    );
    print!("{out}");
}

/// Prints the instructions per operation of a `--callgrind` run, with the ratio to the floor
/// on the same runtime.
pub(crate) fn print_instructions(results: &[BenchResult], clients: &[String]) {
    let mut sorted: Vec<&BenchResult> = results.iter().collect();
    sorted.sort_by_key(|r| {
        (
            Workload::ALL
                .iter()
                .position(|w| w.name() == r.workload)
                .unwrap_or(9),
            r.payload_bytes,
            r.source.clone(),
            clients.iter().position(|c| *c == r.client).unwrap_or(9),
            r.runtime.clone(),
            r.driver.clone(),
        )
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ninstructions per op (callgrind; (I(2N) - I(N)) / N, all threads)\n\n{:<24} {:<21} {:<14} {:>7} {:>8} {:>12} {:>7}",
        "client", "runtime", "workload", "payload", "N", "instr/op", "×floor"
    );
    for r in &sorted {
        let floor = floor_of(results, r)
            .and_then(|f| f.instructions_per_op)
            .zip(r.instructions_per_op)
            .and_then(|(f, x)| ratio(x, f));
        let _ = writeln!(
            out,
            "{:<24} {:<21} {:<14} {:>7} {:>8} {:>12} {:>7}",
            r.client,
            runtime_label(r),
            workload_label(r),
            payload_label(r),
            r.ops / 2,
            show(r.instructions_per_op, 0),
            show(floor, 2)
        );
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

    let is = |r: &BenchResult, w: Workload| r.workload == w.name();
    let vs = |r: &BenchResult, other: Option<&BenchResult>| {
        other.and_then(|o| ratio(r.cpu_us_per_op, o.cpu_us_per_op))
    };
    check(
        "the floor is a floor: no client's CPU per op below 0.95× the floor's (every row)",
        results
            .iter()
            .filter(|r| !r.client.starts_with(FLOOR))
            .map(|r| {
                let x = vs(r, floor_of(results, r));
                (
                    format!("{} {}", r.client, label(r)),
                    x.map(|x| x >= 0.95),
                    format!("{}×", show(x, 2)),
                )
            })
            .collect(),
    );
    let round_trips = |r: &&&BenchResult| is(r, Workload::Sequential) || is(r, Workload::Pipelined);
    check(
        "CPU per round trip ≤ 1.2× the floor (sequential, pipelined)",
        ours.iter()
            .filter(round_trips)
            .map(|r| {
                let x = vs(r, floor_of(results, r));
                (label(r), x.map(|x| x <= 1.2), format!("{}×", show(x, 2)))
            })
            .collect(),
    );
    for (workload, peer, bound) in [
        (Workload::Pipelined, PCC, 0.6),
        (Workload::Pipelined, JS, 0.25),
        (Workload::Sequential, PCC, 0.8),
        (Workload::Sequential, JS, 0.8),
        (Workload::Fanout, JS, 0.5),
    ] {
        check(
            &format!("{workload}: CPU per op ≤ {bound}× {peer}'s"),
            ours.iter()
                .filter(|r| is(r, workload))
                .filter(|r| workload != Workload::Fanout || r.source.as_deref() == Some("batched"))
                .map(|r| {
                    let x = vs(r, find(results, peer, r, &r.runtime));
                    (label(r), x.map(|x| x <= bound), format!("{}×", show(x, 2)))
                })
                .collect(),
        );
    }
    check(
        "sequential: p99 within 1.5× the floor's",
        ours.iter()
            .filter(|r| is(r, Workload::Sequential))
            .map(|r| {
                let x = floor_of(results, r)
                    .and_then(|f| f.p99_us)
                    .zip(r.p99_us)
                    .and_then(|(f, p)| ratio(p, f));
                (label(r), x.map(|x| x <= 1.5), format!("{}×", show(x, 2)))
            })
            .collect(),
    );
    check(
        "throughput at or above every peer's (sequential, pipelined)",
        ours.iter()
            .filter(round_trips)
            .map(|r| {
                let worst = [PCC, JS]
                    .iter()
                    .filter_map(|p| find(results, p, r, &r.runtime))
                    .filter_map(|p| ratio(r.ops_per_s, p.ops_per_s))
                    .reduce(f64::min);
                (
                    label(r),
                    worst.map(|x| x >= 1.0),
                    format!("{}× the fastest peer", show(worst, 2)),
                )
            })
            .collect(),
    );
    check(
        "fanout: no event lost (every source)",
        ours.iter()
            .filter(|r| is(r, Workload::Fanout))
            .map(|r| {
                let lost = r.lost.unwrap_or(0);
                (label(r), Some(lost == 0), format!("lost {lost}"))
            })
            .collect(),
    );
    check(
        "channels: CPU per join ≤ 1.5× the floor's",
        ours.iter()
            .filter(|r| is(r, Workload::Channels))
            .map(|r| {
                let x = vs(r, floor_of(results, r));
                (label(r), x.map(|x| x <= 1.5), format!("{}×", show(x, 2)))
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
