//! [`SingleFlight`]: compute a value once across a fleet over a Dust lease, the others
//! awaiting the published result.
//!
//! The port of the Elixir SDK's `Dust.SingleFlight` (and the TS SDK's `singleFlight`), on the
//! same keys and encoding, so Rust, Elixir and TS callers of one store share a flight: the
//! lock is a lease on `_dust:sf/<key>`, the result a JSON text stored at `<key>` by a write
//! fenced with that lease. Where it differs from them:
//!
//! - a leader whose fenced publish is refused (it lost its lease) does not fail: it awaits the
//!   new holder's result, and publishes its own value if it gets the lease back, without
//!   computing again (Elixir and TS return `fenced` to the caller);
//! - after acquiring the lease, the replica is brought up to the lease's seq and the result
//!   key read again, so a caller that missed a result published just before its lease does not
//!   compute it a second time;
//! - a value at the key that is not a published result is an error
//!   ([`SingleFlightError::Decode`]), never a crash (Elixir's `Jason.decode!`);
//! - the heartbeat runs in the caller's task: a computation that panics or is dropped stops
//!   it, and a dropped leader releases its lease at once, so the others take over without
//!   waiting for the lease to expire;
//! - every wait and every write is bounded by the wait timeout; no degraded uncoordinated run
//!   (`on_unavailable: :run_local`): while Dust is unreachable, callers get
//!   [`SingleFlightError::Timeout`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use rand::RngExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::WriteError;
use crate::glob::{Glob, GlobError};
use crate::replica::{IntoPath, Replica, Subscription};
use crate::store::Store;
use crate::write::{Lease, Path, PathError, RejectReason, WriteRequest};

/// The default [`SingleFlight::lease_ttl`]: 30 s (as the Elixir and TS SDKs).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The first segment of every lock key: the lock of `reports/daily` is
/// `_dust:sf/reports/daily`.
pub const LOCK_PREFIX: &str = "_dust:sf";

/// The longest pause before trying the lease again after it was released or may have
/// expired (a random pause, so waiters do not all ask at once).
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Where a [`Flight`]'s value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// Already published when the call started.
    Cached,
    /// Computed by this call, which held the lease, and published.
    Computed,
    /// Published by another caller while this one waited.
    Awaited,
}

/// The result of a [`SingleFlight::run`]: the value every caller gets, and where it came
/// from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Flight<T> {
    /// The published value (as it reads back from its JSON, for the caller that computed it
    /// too).
    pub value: T,
    /// Where it comes from.
    pub source: Source,
    /// Whether it is a value the [`fresh`](SingleFlight::fresh) test refused, served because
    /// no fresh one came within the wait timeout.
    pub stale: bool,
}

impl<T> Flight<T> {
    fn new(value: T, source: Source) -> Self {
        Self {
            value,
            source,
            stale: false,
        }
    }
}

/// Why a [`SingleFlight::run`] gave no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SingleFlightError<E> {
    /// This caller held the lease and its computation failed; the lease was released so
    /// another caller may try.
    #[error("the computation failed: {0}")]
    Aborted(E),
    /// No result within the wait timeout ([`SingleFlight::wait_timeout`]): no lease could be
    /// had and no result was published (the holder is slow, or Dust is unreachable); or the
    /// publish of a computed value was not answered in that time.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// A write (lease, publish) failed for a reason other than a held lease or a lost fence.
    #[error("write failed: {0}")]
    Write(WriteError),
    /// The key is not a valid path.
    #[error("invalid key: {0}")]
    Path(#[from] PathError),
    /// The key cannot be watched.
    #[error("invalid key: {0}")]
    Glob(#[from] GlobError),
    /// The value at the key is not a published result that reads as the expected type, or a
    /// computed value cannot be written as JSON.
    #[error("the value at the key is not a single_flight result of this type: {0}")]
    Decode(String),
    /// The replica and the store are not the same store.
    #[error("the replica is of store `{replica}`, the writes go to store `{store}`")]
    StoreMismatch {
        /// The replica's store.
        replica: String,
        /// The write path's store.
        store: String,
    },
}

/// Computes a value once across a fleet: the caller that gets the lease on the key's lock
/// computes it (renewing the lease while it works) and publishes it with a write fenced by
/// the lease; every other caller awaits the published value on its replica, and takes over
/// if the lease expires without a result. A cheap `Clone`.
///
/// **At least once, while Dust is reachable — not exactly once.** A leader that loses its
/// connection or stalls past the lease's TTL while computing, or crashes before publishing,
/// lets another caller compute again. The computation must be idempotent, and the value
/// small (a pointer to the bytes, not the bytes). Once a value is published it is the key's
/// value for every later call (delete the key to compute again).
///
/// ```no_run
/// use std::time::Duration;
/// use dust_connection::{DustConnection, MemoryEngine, SingleFlight, Source};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev")
///     .store("acme/app")
///     .engine(engine.clone())
///     .connect()?;
/// let flights = SingleFlight::new(dust.store("acme/app")?, engine.replica("acme/app"))
///     .lease_ttl(Duration::from_secs(10));
/// let report = flights
///     .run("reports/2026-01", |_lease| async {
///         // Runs on one caller of the fleet at a time.
///         Ok::<_, std::io::Error>(format!("s3://reports/2026-01.pdf"))
///     })
///     .await?;
/// println!("{} ({:?})", report.value, report.source);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SingleFlight {
    store: Store,
    replica: Replica,
    lease_ttl: Duration,
    wait_timeout: Option<Duration>,
    holder: Option<String>,
    fresh: Option<Fresh>,
}

/// The freshness test of published values.
#[derive(Clone)]
struct Fresh(Arc<dyn Fn(&Value) -> bool + Send + Sync>);

impl fmt::Debug for Fresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fresh(..)")
    }
}

/// What a round of trying the lease found.
enum Step<T> {
    /// The lease, acquired.
    Lease(Lease),
    /// The published value.
    Value(T),
}

impl SingleFlight {
    /// Single flights writing through `store` and reading `replica`, which must be that
    /// store's replica in the connection's engine (checked by [`run`](Self::run)).
    pub fn new(store: Store, replica: Replica) -> Self {
        Self {
            store,
            replica,
            lease_ttl: DEFAULT_LEASE_TTL,
            wait_timeout: None,
            holder: None,
            fresh: None,
        }
    }

    /// The lease's TTL (default [`DEFAULT_LEASE_TTL`], at least 1 ms): the leader renews it
    /// every third of it while computing; a leader gone silent is taken over after it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How long a call waits for a lease or a result, and then for its publish (default: the
    /// lease's TTL + 5 s); then [`SingleFlightError::Timeout`]. The computation itself is
    /// not bounded by it (bound it inside the closure if needed).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// The holder named in the lease (default none).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Only published values that pass `fresh` (seen as JSON) count: one that does not is
    /// computed again, and overwritten (the Elixir SDK's `fresh?`). If no fresh value comes
    /// within the wait timeout, the last one is served with [`Flight::stale`] set rather than
    /// [`SingleFlightError::Timeout`].
    ///
    /// ```
    /// # fn demo(flights: dust_connection::SingleFlight) {
    /// let now = 1_767_225_600;
    /// let flights = flights.fresh(move |value| value["at"].as_u64().is_some_and(|at| at + 3600 > now));
    /// # }
    /// ```
    pub fn fresh(mut self, fresh: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        self.fresh = Some(Fresh(Arc::new(fresh)));
        self
    }

    fn wait(&self) -> Duration {
        self.wait_timeout
            .unwrap_or(self.lease_ttl + Duration::from_secs(5))
    }

    /// The value of `key`: the published one if there is one; else computed by `compute` if
    /// this call gets the lease (`compute` gets the lease, to fence its own writes with); else
    /// the one another caller publishes. `compute` runs at most once per call. See
    /// [`SingleFlight`] for the guarantees.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: impl IntoPath,
        compute: F,
    ) -> Result<Flight<T>, SingleFlightError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.replica.store() != self.store.name() {
            return Err(SingleFlightError::StoreMismatch {
                replica: self.replica.store().to_owned(),
                store: self.store.name().to_owned(),
            });
        }
        let key = key.into_path()?;
        let lock = Path::new(
            std::iter::once(LOCK_PREFIX.to_owned()).chain(key.segments().iter().cloned()),
        )?;
        let flight = Keys {
            key,
            lock,
            marker: PhantomData,
        };
        if let Some(value) = self.cached(&flight)? {
            return Ok(Flight::new(value, Source::Cached));
        }
        let deadline = Instant::now() + self.wait();
        let lease = match self.acquire_or_await(&flight, deadline).await {
            Ok(Step::Value(value)) => return Ok(Flight::new(value, Source::Awaited)),
            Ok(Step::Lease(lease)) => lease,
            Err(SingleFlightError::Timeout(waited)) => {
                // With a freshness test, the last value rather than nothing.
                return match self.read(&flight)? {
                    Some((value, _)) if self.fresh.is_some() => Ok(Flight {
                        value,
                        source: Source::Cached,
                        stale: true,
                    }),
                    _ => Err(SingleFlightError::Timeout(waited)),
                };
            }
            Err(error) => return Err(error),
        };
        let mut held = Held::new(&self.store, lease.clone());
        let value = match self.compute(&lease, compute).await {
            Ok(value) => value,
            Err(error) => {
                held.release(self.wait()).await;
                return Err(SingleFlightError::Aborted(error));
            }
        };
        let encoded =
            serde_json::to_string(&value).map_err(|e| SingleFlightError::Decode(e.to_string()))?;
        let value: T =
            serde_json::from_str(&encoded).map_err(|e| SingleFlightError::Decode(e.to_string()))?;
        // Publish under the lease; if it was lost, await the new holder's value, or publish
        // this one under a new lease.
        let mut lease = lease;
        loop {
            if self.publish(&flight, &lease, &encoded).await? {
                held.release(self.wait()).await;
                return Ok(Flight::new(value, Source::Computed));
            }
            held.disarm();
            let deadline = Instant::now() + self.wait();
            match self.acquire_or_await(&flight, deadline).await? {
                Step::Value(published) => return Ok(Flight::new(published, Source::Awaited)),
                Step::Lease(again) => {
                    held = Held::new(&self.store, again.clone());
                    lease = again;
                }
            }
        }
    }

    /// The published value at the key, if there is one that is fresh.
    fn cached<T: DeserializeOwned, E>(
        &self,
        flight: &Keys<T>,
    ) -> Result<Option<T>, SingleFlightError<E>> {
        Ok(self
            .read(flight)?
            .and_then(|(value, fresh)| fresh.then_some(value)))
    }

    /// The published value at the key, if there is one (confirmed, not a pending local
    /// write), and whether it passes the freshness test.
    fn read<T: DeserializeOwned, E>(
        &self,
        flight: &Keys<T>,
    ) -> Result<Option<(T, bool)>, SingleFlightError<E>> {
        let Some(entry) = self.replica.entry(&flight.key)? else {
            return Ok(None);
        };
        if entry.pending {
            return Ok(None);
        }
        let Some(text) = entry.value.as_str() else {
            return Err(SingleFlightError::Decode(format!(
                "a `{}` entry, not a JSON text",
                entry.kind
            )));
        };
        let decode = |e: serde_json::Error| SingleFlightError::Decode(e.to_string());
        let json: Value = serde_json::from_str(text).map_err(decode)?;
        let fresh = self.fresh.as_ref().is_none_or(|fresh| (fresh.0)(&json));
        let value = serde_json::from_value(json).map_err(decode)?;
        Ok(Some((value, fresh)))
    }

    /// Tries the lease until it is acquired or a value is published, waiting for the holder's
    /// result or release (or at most a TTL) between tries; bounded by `deadline`.
    async fn acquire_or_await<T: DeserializeOwned, E>(
        &self,
        flight: &Keys<T>,
        deadline: Instant,
    ) -> Result<Step<T>, SingleFlightError<E>> {
        let timeout = || SingleFlightError::Timeout(self.wait());
        loop {
            if let Some(value) = self.cached(flight)? {
                return Ok(Step::Value(value));
            }
            // Watched before the lease is asked, so no event after its answer is missed.
            let mut on_key = self.replica.on(exact(&flight.key)?)?;
            let mut on_lock = self.replica.on(exact(&flight.lock)?)?;
            let request = WriteRequest::lease(
                flight.lock.clone(),
                self.lease_ttl.as_millis() as u64,
                self.holder.clone(),
            );
            let answer = tokio::time::timeout_at(deadline, self.store.write(request))
                .await
                .map_err(|_| timeout())?;
            match answer {
                Ok(ack) => {
                    let Some(lease) = ack.lease(&flight.lock) else {
                        return Err(SingleFlightError::Write(WriteError::Rejected(
                            crate::write::Rejection::unexpected(&serde_json::Value::Object(
                                ack.reply().clone(),
                            )),
                        )));
                    };
                    // Everything before the lease, a result published just before it
                    // included, reaches the replica before the lease's own event.
                    let seq = ack.store_seq().unwrap_or(0);
                    while self.replica.status().last_seq < seq {
                        match tokio::time::timeout_at(deadline, on_lock.next()).await {
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        }
                    }
                    if let Some(value) = self.cached(flight)? {
                        Held::new(&self.store, lease).release(self.wait()).await;
                        return Ok(Step::Value(value));
                    }
                    return Ok(Step::Lease(lease));
                }
                Err(WriteError::Rejected(rejection)) if rejection.reason == RejectReason::Held => {}
                Err(error) => return Err(SingleFlightError::Write(error)),
            }
            if let Some(value) = self
                .await_holder(flight, &mut on_key, &mut on_lock, deadline)
                .await?
            {
                return Ok(Step::Value(value));
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            let pause = rand::rng()
                .random_range(1..=MAX_BACKOFF.min(self.lease_ttl / 3).as_millis().max(1) as u64);
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(pause)))
                .await;
        }
    }

    /// Waits for the holder's result (`Some`), or for its release, or for a TTL to pass
    /// (`None`: try the lease again), bounded by `deadline`.
    async fn await_holder<T: DeserializeOwned, E>(
        &self,
        flight: &Keys<T>,
        on_key: &mut Subscription,
        on_lock: &mut Subscription,
        deadline: Instant,
    ) -> Result<Option<T>, SingleFlightError<E>> {
        if let Some(value) = self.cached(flight)? {
            return Ok(Some(value));
        }
        let until = deadline.min(Instant::now() + self.lease_ttl);
        let expired = tokio::time::sleep_until(until);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                () = &mut expired => return Ok(None),
                item = on_key.next() => {
                    if item.is_none() {
                        return Ok(None);
                    }
                    if let Some(value) = self.cached(flight)? {
                        return Ok(Some(value));
                    }
                }
                item = on_lock.next() => match item {
                    // Released: the holder is done (its result, if any, came before).
                    Some(Ok(update)) if update.path == flight.lock && update.value.is_none() => {
                        return self.cached(flight);
                    }
                    None => return Ok(None),
                    // Acquired, renewed or stolen: a holder is at work.
                    Some(_) => {}
                },
            }
        }
    }

    /// Runs the computation while renewing the lease every third of its TTL. If a renewal is
    /// refused (the lease was lost), the computation goes on; the fenced publish decides.
    async fn compute<T, E, F, Fut>(&self, lease: &Lease, compute: F) -> Result<T, E>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let work = compute(lease.clone());
        tokio::pin!(work);
        let heartbeat = heartbeat(self.store.clone(), lease.clone(), self.lease_ttl);
        tokio::pin!(heartbeat);
        tokio::select! {
            biased;
            done = &mut work => done,
            () = &mut heartbeat => work.await,
        }
    }

    /// Writes the result under the lease: `true` once applied, `false` if the fence refused
    /// it (the lease was lost).
    async fn publish<T, E>(
        &self,
        flight: &Keys<T>,
        lease: &Lease,
        encoded: &str,
    ) -> Result<bool, SingleFlightError<E>> {
        let write = self
            .store
            .write(WriteRequest::set(flight.key.clone(), encoded).fence(lease));
        match tokio::time::timeout(self.wait(), write).await {
            Err(_) => Err(SingleFlightError::Timeout(self.wait())),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(WriteError::Rejected(rejection)))
                if rejection.reason == RejectReason::Fenced =>
            {
                Ok(false)
            }
            Ok(Err(error)) => Err(SingleFlightError::Write(error)),
        }
    }
}

/// The result key and the lock key of one flight, for values of type `T`.
struct Keys<T> {
    key: Path,
    lock: Path,
    marker: PhantomData<fn() -> T>,
}

/// A glob matching exactly `path` (a segment `*` or `**` taken literally).
fn exact(path: &Path) -> Result<Glob, GlobError> {
    Glob::from_segments(
        path.segments()
            .iter()
            .map(|segment| match segment.as_str() {
                "*" => "\\*".to_owned(),
                "**" => "\\**".to_owned(),
                other => other.to_owned(),
            }),
    )
}

/// Renews `lease` every third of `ttl`, until a renewal is refused (the lease is lost). A
/// renewal not answered within a third of the TTL is given up and the next one tried.
async fn heartbeat(store: Store, lease: Lease, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(every).await;
        // A renewal refused means the lease is lost; one unanswered in time is left, and
        // the next one tried.
        if let Ok(Err(WriteError::Rejected(rejection))) =
            tokio::time::timeout(every, store.renew(&lease, ttl)).await
        {
            tracing::warn!(
                key = %lease.key.render(),
                reason = rejection.reason.as_str(),
                "single_flight lease lost"
            );
            return;
        }
    }
}

/// A held lease, released when dropped unless disarmed (a leader dropped mid-computation lets
/// the others take over at once).
struct Held {
    store: Store,
    lease: Option<Lease>,
}

impl Held {
    fn new(store: &Store, lease: Lease) -> Self {
        Self {
            store: store.clone(),
            lease: Some(lease),
        }
    }

    /// Forgets the lease (lost: nothing to release).
    fn disarm(&mut self) {
        self.lease = None;
    }

    /// Releases the lease, waiting at most `wait` for the answer (an unanswered release
    /// leaves the lease to expire).
    async fn release(mut self, wait: Duration) {
        if let Some(lease) = self.lease.take() {
            let _ = tokio::time::timeout(wait, self.store.release(&lease)).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let release = self.store.release(&lease);
            runtime.spawn(async move {
                let _ = release.await;
            });
        }
    }
}
