//! The invariants checked after each run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use dust_conformance::dust::DustControl;
use dust_connection::{DustConnection, MemoryEngine, WriteError};
use serde_json::Value;

use super::net::{HOLD_CAP, Net};
use super::workload::{Issued, OutboxMeter};
use super::{ObservedLog, Params};

/// At most this many live links per device at any time: the one in use, one the client
/// is closing and one it is opening.
const LINKS_PER_DEVICE: usize = 3;
/// How many problems of one kind a report lists before it only counts them.
const LIST: usize = 8;

pub struct Checker<'a> {
    pub params: &'a Params,
    pub journal: &'a [Issued],
    pub log: &'a ObservedLog,
    pub dust: &'a DustControl,
    pub devices: &'a [(String, DustConnection, MemoryEngine)],
    pub meter: &'a OutboxMeter,
    pub net: &'a Net,
}

/// Collects problems of one kind, listing the first few.
struct Problems {
    what: &'static str,
    listed: Vec<String>,
    count: usize,
}

impl Problems {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            listed: Vec::new(),
            count: 0,
        }
    }

    fn add(&mut self, problem: String) {
        self.count += 1;
        if self.listed.len() < LIST {
            self.listed.push(problem);
        }
    }

    fn into_report(self, out: &mut Vec<String>) {
        if self.count > 0 {
            out.push(format!(
                "{} ({}): {}{}",
                self.what,
                self.count,
                self.listed.join("; "),
                if self.count > self.listed.len() {
                    "; ..."
                } else {
                    ""
                }
            ));
        }
    }
}

/// Whether two JSON values are equal, numbers compared by value (1 equals 1.0).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn kind(error: &WriteError) -> &'static str {
    match error {
        WriteError::Rejected(_) => "rejected",
        WriteError::Invalid(_) => "invalid",
        WriteError::Indeterminate(_) => "indeterminate",
        WriteError::NotApplied(_) => "not applied",
        WriteError::CrashesChannel(_) => "crashes its channel",
        WriteError::OutboxFull => "outbox full",
        WriteError::JoinFailed(_) => "join failed",
        WriteError::Closed => "closed",
        WriteError::Transport(_) => "transport",
        _ => "other",
    }
}

impl Checker<'_> {
    pub async fn run(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.writes(&mut out);
        self.replicas(&mut out).await;
        self.bounds(&mut out);
        out
    }

    fn device_id(&self, d: usize) -> &str {
        &self.devices[d].0
    }

    /// Every write answered once; acked ones applied once, at the seq of their ack; rejected
    /// ones never; indeterminate ones at most once; per device and store in issue order.
    fn writes(&self, out: &mut Vec<String>) {
        // client_op_id → (store, seq, device) of every application in the observed log.
        let mut applied: HashMap<&str, Vec<(usize, u64, &str)>> = HashMap::new();
        let mut foreign = Problems::new("ops in the log that no device issued");
        for (s, ops) in self.log.ops.iter().enumerate() {
            for op in ops.values() {
                match op.client_op_id.as_str() {
                    Some(id) => {
                        applied
                            .entry(id)
                            .or_default()
                            .push((s, op.seq, op.device_id.as_str()))
                    }
                    None => foreign.add(format!("seq {} {:?}", op.seq, op.client_op_id)),
                }
            }
        }
        let mut unanswered = Problems::new("writes never answered");
        let mut answered_twice = Problems::new("writes answered more than once");
        let mut unexpected = Problems::new("writes answered with an error that cannot happen here");
        let mut lost = Problems::new("acked writes missing from the server's op log");
        let mut twice = Problems::new("writes applied more than once");
        let mut wrong_seq =
            Problems::new("acks whose store_seq is not where the write was applied");
        let mut wrong_place = Problems::new("writes applied to another store or by another device");
        let mut rejected_applied = Problems::new("rejected writes that were applied");
        let mut issued_ids = HashMap::new();
        for issued in self.journal {
            issued_ids.insert(issued.id.as_str(), ());
            let label = format!(
                "device {} store {} #{} {} {}",
                issued.device, issued.store, issued.order, issued.id, issued.what
            );
            let apps = applied
                .get(issued.id.as_str())
                .map_or(&[][..], Vec::as_slice);
            if apps.len() > 1 {
                let seqs: Vec<u64> = apps.iter().map(|a| a.1).collect();
                twice.add(format!(
                    "{label} at seqs {seqs:?} (answered {:?})",
                    issued.outcome
                ));
            }
            for &(s, seq, device) in apps {
                if s != issued.store || device != self.device_id(issued.device) {
                    wrong_place.add(format!("{label} at store {s} seq {seq} by {device}"));
                }
            }
            if issued.answers > 1 {
                answered_twice.add(format!("{label}: {} answers", issued.answers));
            }
            match &issued.outcome {
                None => unanswered.add(label),
                Some(Ok(ack)) => {
                    let unobserved = ack
                        .store_seq()
                        .is_some_and(|q| self.log.unobserved[issued.store].contains(&q));
                    if apps.is_empty() && !unobserved {
                        lost.add(format!("{label} (ack {:?})", ack.reply()));
                    }
                    if let (Some(q), [(_, seq, _)]) = (ack.store_seq(), apps)
                        && q != *seq
                    {
                        wrong_seq.add(format!("{label}: ack says {q}, applied at {seq}"));
                    }
                }
                Some(Err(e)) => match e {
                    // Not applied: rejected, a rejection whose reply was lost (the server
                    // processed a later write of the same connection), or a write that crashed
                    // its channel at every try (the simulation injects crashing writes).
                    WriteError::Rejected(_)
                    | WriteError::Invalid(_)
                    | WriteError::NotApplied(_)
                    | WriteError::CrashesChannel(_) => {
                        if !apps.is_empty() {
                            rejected_applied.add(format!("{label}: {e}"));
                        }
                    }
                    // Outcome unknown: applied at most once (checked above).
                    WriteError::Indeterminate(_) => {}
                    other => unexpected.add(format!("{label}: {} ({other})", kind(other))),
                },
            }
        }
        for (id, apps) in &applied {
            if !issued_ids.contains_key(id) {
                foreign.add(format!("{id} at {apps:?}"));
            }
        }
        // Issue order: per device and store, the applied writes' seqs rise with issue order.
        let mut order = Problems::new("writes applied out of issue order");
        let mut by_stream: BTreeMap<(usize, usize), Vec<&Issued>> = BTreeMap::new();
        for issued in self.journal {
            by_stream
                .entry((issued.device, issued.store))
                .or_default()
                .push(issued);
        }
        for ((d, s), mut writes) in by_stream {
            writes.sort_by_key(|w| w.order);
            let mut highest: Option<(u64, &Issued)> = None;
            for w in writes {
                let Some(first) = applied
                    .get(w.id.as_str())
                    .and_then(|apps| apps.iter().map(|a| a.1).min())
                else {
                    continue;
                };
                match highest {
                    Some((seq, prev)) if first < seq => order.add(format!(
                        "device {d} store {s}: #{} {} (seq {first}) landed before #{} {} (seq {seq})",
                        w.order, w.id, prev.order, prev.id
                    )),
                    _ => highest = Some((first, w)),
                }
            }
        }
        for p in [
            unanswered,
            answered_twice,
            unexpected,
            lost,
            twice,
            wrong_seq,
            wrong_place,
            rejected_applied,
            order,
            foreign,
        ] {
            p.into_report(out);
        }
        // The observed log must cover every seq (except what a compaction race hid).
        for (s, ops) in self.log.ops.iter().enumerate() {
            let top = ops.keys().next_back().copied().unwrap_or(0);
            let holes: Vec<u64> = (1..=top)
                .filter(|q| !ops.contains_key(q) && !self.log.unobserved[s].contains(q))
                .take(LIST)
                .collect();
            if !holes.is_empty() {
                out.push(format!(
                    "store {s}: the server's log has no op at seqs {holes:?}"
                ));
            }
        }
    }

    /// The last ops of the observed log on a path, its ancestors or descendants.
    fn history(&self, s: usize, path: &str) -> String {
        let related = |other: &str| {
            other == path
                || path.starts_with(&format!("{other}/"))
                || other.starts_with(&format!("{path}/"))
        };
        let ops: Vec<String> = self.log.ops[s]
            .values()
            .filter(|op| related(&op.path))
            .map(|op| {
                let device = self
                    .devices
                    .iter()
                    .position(|(id, _, _)| *id == op.device_id)
                    .map_or_else(|| op.device_id.clone(), |d| format!("device {d}"));
                format!("{} {} {} {} by {device}", op.seq, op.op, op.path, op.value)
            })
            .collect();
        let skip = ops.len().saturating_sub(LIST);
        // The real server's catch-up replays increments, adds and removes on a running state
        // that sets and deletes do not reset (PROTOCOL.md §6 (a)); name the pattern.
        let mut reset = false;
        let mut replayed_after_reset = false;
        for op in self.log.ops[s].values().filter(|op| related(&op.path)) {
            match op.op.as_str() {
                "set" | "delete" | "merge" => reset = true,
                "increment" | "add" | "remove" if reset => replayed_after_reset = true,
                _ => {}
            }
        }
        format!(
            " [log: {}]{}",
            ops[skip..].join(", "),
            if replayed_after_reset {
                " (an increment/add/remove after a set/delete: the catch-up re-materialization \
                 of PROTOCOL.md §6 (a) gives a wrong total)"
            } else {
                ""
            }
        )
    }

    /// Every replica equals the server's entries, at the server's seq.
    async fn replicas(&self, out: &mut Vec<String>) {
        for (s, store) in self.params.stores.iter().enumerate() {
            let server: BTreeMap<String, Value> = match self.dust.entries(store).await {
                Ok(entries) => entries.into_iter().map(|e| (e.path, e.value)).collect(),
                Err(e) => {
                    out.push(format!("store {s}: the server has no entries: {e}"));
                    continue;
                }
            };
            let server_seq = self
                .dust
                .store_info(store)
                .await
                .map(|i| i.seq)
                .unwrap_or(0);
            for (d, (id, _, engine)) in self.devices.iter().enumerate() {
                let seq = engine.seq(store);
                if seq != server_seq {
                    out.push(format!(
                        "device {d} ({id}) store {s}: replica at seq {seq}, server at {server_seq}"
                    ));
                }
                let replica = engine.entries(store);
                let mut diff = Problems::new("replica differs from the server");
                for (path, value) in &server {
                    match replica.get(path) {
                        None => diff.add(format!(
                            "{path}: missing (server {value}){}",
                            self.history(s, path)
                        )),
                        Some(mine) if !same(mine, value) => {
                            diff.add(format!(
                                "{path}: {mine} (server {value}){}",
                                self.history(s, path)
                            ));
                        }
                        Some(_) => {}
                    }
                }
                for (path, value) in &replica {
                    if !server.contains_key(path) {
                        diff.add(format!(
                            "{path}: {value} (not on the server){}",
                            self.history(s, path)
                        ));
                    }
                }
                let mut lines = Vec::new();
                diff.into_report(&mut lines);
                let gaps = engine.gaps(store);
                for line in lines {
                    out.push(format!(
                        "device {d} ({id}) store {s}: {line} (the engine's gaps: {gaps:?})"
                    ));
                }
            }
        }
    }

    /// The outbox never held more than its capacity; the network stayed bounded and no
    /// connection leaked.
    fn bounds(&self, out: &mut Vec<String>) {
        let peak = self.meter.peak();
        if peak > self.params.outbox_capacity {
            out.push(format!(
                "an outbox held {peak} writes, over its capacity {}",
                self.params.outbox_capacity
            ));
        }
        let stats = self.net.stats();
        let links_bound = LINKS_PER_DEVICE * self.params.devices;
        let peak_links = stats.peak_live_links.load(Ordering::Relaxed);
        if peak_links > links_bound {
            out.push(format!(
                "{peak_links} connections were open at once (bound {links_bound})"
            ));
        }
        let peak_held = stats.peak_held.load(Ordering::Relaxed);
        let held_bound = 2 * HOLD_CAP * links_bound;
        if peak_held > held_bound {
            out.push(format!(
                "the network held {peak_held} bytes at once (bound {held_bound})"
            ));
        }
        let live = self.net.live_links();
        if live.len() != self.params.devices {
            out.push(format!(
                "after quiescing, {} connections are open for {} devices: {live:?}",
                live.len(),
                self.params.devices
            ));
        }
    }
}
