//! What the devices write: random ops on a small key space, issued in bursts, each recorded
//! with its issue position and its answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use dust_connection::{Store, WriteAck, WriteError, WriteRequest, WriteService};
use futures_util::future::{BoxFuture, join_all};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use tower::{Layer, Service};

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
        10 => {
            let family = ["k", "m", "c", "s"][rng.random_range(0..4)];
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
pub async fn run_device(plan: DevicePlan, stores: Vec<Store>, journal: Journal) {
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
                      journal: Journal| async move {
            if twice {
                let _ = store.write(write.clone()).await;
            }
            let id = write.client_op_id.to_string();
            tracing::debug!(target: "sim", store = store.name(), id, op = ?write.op, "write");
            let result = store.write(write).await;
            tracing::debug!(target: "sim", id, ?result, "answered");
            // The journal is taken for the checks once the device tasks are done or aborted.
            if let Some(entry) = lock(&journal).get_mut(slot) {
                entry.answers += 1;
                entry.outcome = Some(result);
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

/// Counts a store's writes between the outbox's admission (the service was ready, so the
/// outbox gave the write a slot, and was called) and their answer; keeps the peak.
///
/// The count is exact for this workload: a device has one burst at a time, a write waiting
/// for a slot was issued after every write holding one (the slots are handed out in FIFO
/// order), and `join_all` (at most 30 futures: it polls them all, in order, on each wake)
/// polls an answered write, which leaves the count, before the later write that got its slot.
#[derive(Clone, Default)]
pub struct OutboxMeter {
    /// One (in flight, peak) pair per store the layer was applied to.
    pub stores: Arc<Mutex<Vec<Arc<[AtomicUsize; 2]>>>>,
}

impl OutboxMeter {
    /// The highest peak over the stores.
    pub fn peak(&self) -> usize {
        lock(&self.stores)
            .iter()
            .map(|c| c[1].load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

impl Layer<WriteService> for OutboxMeter {
    type Service = Metered;

    fn layer(&self, inner: WriteService) -> Metered {
        let counters: Arc<[AtomicUsize; 2]> = Arc::default();
        lock(&self.stores).push(counters.clone());
        Metered { inner, counters }
    }
}

/// The service of [`OutboxMeter`].
#[derive(Clone)]
pub struct Metered {
    inner: WriteService,
    counters: Arc<[AtomicUsize; 2]>,
}

struct Leave(Arc<[AtomicUsize; 2]>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0[0].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<WriteRequest> for Metered {
    type Response = WriteAck;
    type Error = WriteError;
    type Future = BoxFuture<'static, Result<WriteAck, WriteError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: WriteRequest) -> Self::Future {
        let now = self.counters[0].fetch_add(1, Ordering::Relaxed) + 1;
        self.counters[1].fetch_max(now, Ordering::Relaxed);
        let leave = Leave(self.counters.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            drop(leave);
            result
        })
    }
}
