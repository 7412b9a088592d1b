//! What the devices write: random ops on a small key space, issued in bursts, each recorded
//! with its issue position and its answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use dust_connection::{Store, WriteAck, WriteError, WriteRequest};
use futures_util::future::join_all;
use rand::rngs::SmallRng;
use rand::{Rng, RngExt};
use serde_json::{Value, json};

use super::lock;

/// One write a device issued.
#[derive(Debug)]
pub struct Issued {
    pub device: usize,
    pub store: usize,
    /// Its position among the device's writes to that store, in issue order.
    pub order: usize,
    pub id: String,
    /// The op, for reports.
    pub what: String,
    /// Its answer; `None` while unanswered.
    pub outcome: Option<Result<WriteAck, WriteError>>,
    /// How many times an answer came (must end at 1).
    pub answers: usize,
}

/// Every write of the run, shared by the device tasks.
pub type Journal = Arc<Mutex<Vec<Issued>>>;

/// A random client_op_id in the client's own format, from the seeded generator.
fn op_id(rng: &mut SmallRng) -> String {
    let mut bytes = [0u8; 12];
    rng.fill_bytes(&mut bytes);
    format!(
        "op_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn scalar(rng: &mut SmallRng) -> Value {
    match rng.random_range(0..4) {
        0 => json!(rng.random_range(0..100)),
        1 => json!(format!("v{}", rng.random_range(0..100))),
        2 => json!(f64::from(rng.random_range(0..100)) + 0.5),
        _ => json!(rng.random_bool(0.5)),
    }
}

/// A random op on the key space: leaves `k*`, maps `m*` (set, merge, nested leaves),
/// counters `c*`, sets `s*`; deletes of any of them.
pub fn random_op(rng: &mut SmallRng) -> WriteRequest {
    let n = rng.random_range(0..3);
    match rng.random_range(0..12) {
        0 | 1 => WriteRequest::set([format!("k{n}")], scalar(rng)),
        2 => WriteRequest::set(
            [format!("m{n}")],
            json!({"a": rng.random_range(0..10), "b": {"c": scalar(rng)}}),
        ),
        3 => WriteRequest::merge(
            [format!("m{n}")],
            json!({"a": scalar(rng), "d": {"e": rng.random_range(0..10)}}),
        ),
        4 => WriteRequest::set([format!("m{n}"), "b".into(), "c".into()], scalar(rng)),
        5..=7 => WriteRequest::increment([format!("c{n}")], rng.random_range(1..5)),
        8 => WriteRequest::add([format!("s{n}")], format!("x{}", rng.random_range(0..4))),
        9 => WriteRequest::remove([format!("s{n}")], format!("x{}", rng.random_range(0..4))),
        // Counters and sets are never deleted: the real server's catch-up re-materializes an
        // increment/add/remove that follows a set or delete of its path from the total before
        // it (PROTOCOL.md §6 (a), emulated faithfully), a divergence no client can see and out
        // of scope for the replica check.
        10 => {
            let family = ["k", "m"][rng.random_range(0..2)];
            WriteRequest::delete([format!("{family}{n}")])
        }
        _ => WriteRequest::delete([format!("m{n}"), "a".into()]),
    }
}

fn describe(write: &WriteRequest) -> String {
    format!("{:?}", write.op)
}

/// How a device issues its writes.
#[derive(Clone, Debug)]
pub struct DevicePlan {
    pub device: usize,
    pub bursts: usize,
    pub max_burst: usize,
    /// The mean pause between bursts.
    pub mean_pause: Duration,
    /// Sabotage (to check that the checks fail): the device's write at this position is
    /// also written once more, by a separate call with the same `client_op_id`, before it.
    pub send_twice: Option<usize>,
    pub seed: u64,
}

/// Issues the device's bursts: each to a random store, some awaited one by one, some fired
/// together and awaited together; paused-time pauses between them.
pub async fn run_device(
    plan: DevicePlan,
    stores: Vec<Store>,
    journal: Journal,
    meter: OutboxMeter,
) {
    use rand::SeedableRng as _;
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let mut next_order = vec![0usize; stores.len()];
    let mut issued = 0usize;
    for _ in 0..plan.bursts {
        let pause = rng.random_range(0..=2 * plan.mean_pause.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let s = rng.random_range(0..stores.len());
        let n = rng.random_range(1..=plan.max_burst);
        let one_by_one = rng.random_bool(0.4);
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            let write = random_op(&mut rng).with_client_op_id(op_id(&mut rng));
            let slot = {
                let mut journal = lock(&journal);
                journal.push(Issued {
                    device: plan.device,
                    store: s,
                    order: next_order[s],
                    id: write.client_op_id.to_string(),
                    what: describe(&write),
                    outcome: None,
                    answers: 0,
                });
                journal.len() - 1
            };
            next_order[s] += 1;
            let twice = plan.send_twice == Some(issued);
            issued += 1;
            writes.push((slot, write, twice));
        }
        let answer = |(slot, write, twice): (usize, WriteRequest, bool),
                      store: Store,
                      journal: Journal| {
            let meter = meter.clone();
            async move {
                if twice {
                    let _ = store.write(write.clone()).await;
                }
                let id = write.client_op_id.to_string();
                tracing::debug!(target: "sim", store = store.name(), id, op = ?write.op, "write");
                let result = meter.write(&store, write).await;
                tracing::debug!(target: "sim", id, ?result, "answered");
                // The journal is taken for the checks once the device tasks are done or aborted.
                if let Some(entry) = lock(&journal).get_mut(slot) {
                    entry.answers += 1;
                    entry.outcome = Some(result);
                }
            }
        };
        if one_by_one {
            for write in writes {
                answer(write, stores[s].clone(), journal.clone()).await;
            }
        } else {
            // Queued in this order: each write is queued on its first poll, and `join_all`
            // polls them first in order.
            join_all(
                writes
                    .into_iter()
                    .map(|write| answer(write, stores[s].clone(), journal.clone())),
            )
            .await;
        }
    }
}

/// The highest number of writes any store's outbox held ([`Store::outbox_len`]), sampled
/// every time a write future of the workload is polled and when it is answered.
#[derive(Clone, Default)]
pub struct OutboxMeter {
    peak: Arc<AtomicUsize>,
}

impl OutboxMeter {
    /// The highest sample.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn sample(&self, store: &Store) {
        self.peak.fetch_max(store.outbox_len(), Ordering::Relaxed);
    }

    /// `write` on `store`, sampling the outbox at every poll.
    async fn write(&self, store: &Store, write: WriteRequest) -> Result<WriteAck, WriteError> {
        let mut future = std::pin::pin!(store.write(write));
        let result = std::future::poll_fn(|cx| {
            self.sample(store);
            future.as_mut().poll(cx)
        })
        .await;
        self.sample(store);
        result
    }
}
