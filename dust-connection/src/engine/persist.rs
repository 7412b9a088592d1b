//! A [`MemoryEngine`] with a [`Cache`]: made from the cache's state, then writing each applied
//! event, snapshot and reset to it, and rewriting a store whole after the cache failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::Change;
use super::cache::{Cache, CacheError, CachedEntry, CachedStore, Commit};
use super::materialize::{Diff, Entries};
use super::memory::{MemoryEngine, StoreState};

/// How many events a store may apply while its cache is behind (failing) before the engine
/// stops trying to catch the cache up, until it is restarted: the `client_op_id`s to retire
/// are kept meanwhile, and this bounds them.
pub const MAX_UNPERSISTED_EVENTS: usize = 65_536;

/// How many events of a catch-up go to the cache in one [`Cache::commit`] (at most).
pub const CATCH_UP_BATCH: usize = 256;

/// Where a store stands with the engine's cache.
#[derive(Debug, Default)]
pub(crate) struct Persisted {
    /// Since the cache failed: it is behind the entries.
    behind: Option<Behind>,
    /// Joined, catch-up not complete: events go to the cache in batches.
    pub(crate) catching_up: bool,
    /// The applied events not in the cache yet (while catching up).
    unflushed: Vec<Commit>,
}

/// A store's cache is behind its entries since a failure.
#[derive(Debug)]
pub(crate) struct Behind {
    /// The `client_op_id`s of the events applied since, to retire with the rewrite.
    retire: Vec<String>,
    /// Events (snapshots, resets) applied since the failure, its own included.
    events: usize,
    /// The rewrite is tried again when `events` reaches this (doubling: a store that keeps
    /// failing is rewritten O(log n) times, not at each event).
    next_try: usize,
    /// Too many events: no more tries until the engine is restarted.
    stalled: bool,
}

impl Behind {
    /// Behind since a step failed, its events carrying `retire`.
    fn new(retire: Vec<String>) -> Self {
        Self {
            retire,
            events: 1,
            next_try: 2,
            stalled: false,
        }
    }

    /// An event (or a snapshot, a reset: `None`) applied while behind; whether to try the
    /// rewrite now, and whether the store just stalled.
    fn record(&mut self, client_op_id: Option<&str>) -> (bool, bool) {
        if self.stalled {
            return (false, false);
        }
        if self.events >= MAX_UNPERSISTED_EVENTS {
            self.stalled = true;
            return (false, true);
        }
        self.events += 1;
        self.retire.extend(client_op_id.map(str::to_owned));
        let now = self.events >= self.next_try;
        if now {
            self.next_try = self.next_try.saturating_mul(2);
        }
        (now, false)
    }
}

/// What the engine just applied to a store, for its cache.
pub(crate) enum Step {
    /// An event (held with the next ones while a catch-up runs).
    Commit(Commit),
    /// The events held go to the cache now (the catch-up completed or the join ended).
    Flush,
    /// A snapshot (the store's entries now).
    Replace,
    /// A server reset.
    Forget,
}

/// Runs `f` on the cache: on Tokio's blocking pool when the cache waits for a disk
/// ([`Cache::blocking`]), so a slow disk delays the store's task and never the runtime's other
/// tasks; in place otherwise, or outside a Tokio runtime.
async fn on_cache(
    cache: &Arc<dyn Cache>,
    f: impl FnOnce(&dyn Cache) -> Result<(), CacheError> + Send + 'static,
) -> Result<(), CacheError> {
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if cache.blocking() => runtime,
        _ => return f(cache.as_ref()),
    };
    let cache = cache.clone();
    runtime
        .spawn_blocking(move || f(cache.as_ref()))
        .await
        .unwrap_or_else(|join| Err(CacheError::Other(join.to_string().into())))
}

/// The commit of an event that changed `diff` in `entries` (now at `seq`).
pub(crate) fn commit_of(
    entries: &Entries,
    seq: u64,
    client_op_id: Option<&str>,
    diff: &Diff,
) -> Commit {
    let mut commit = Commit::new(seq, client_op_id.map(str::to_owned));
    let touched: BTreeSet<&str> = diff.touched().collect();
    for path in touched {
        match entries.get(path) {
            Some(stored) => commit
                .set
                .push((path.to_owned(), CachedEntry::from_stored(stored))),
            None => commit.removed.push(path.to_owned()),
        }
    }
    commit
}

impl MemoryEngine {
    /// An engine that starts from `cache`'s state (every store at once: reads answer from it
    /// before any connection, and [`last_store_seq`](crate::SyncEngine::last_store_seq) is the
    /// cached seq, so the first join catches up from there) and writes to it each event,
    /// snapshot and reset it applies, in the store's task, before the call returns — except
    /// while a store catches up (from its join, [`StoreStatus::Connected`](crate::StoreStatus::Connected), to
    /// `catch_up_complete`): its events then go to the cache together, [`CATCH_UP_BATCH`] at a
    /// time and at the end of the catch-up (or when the join ends), one [`Cache::commit`] each.
    /// Either way the cache only ever holds a state the store was in, so a process that dies
    /// with events not yet written starts from an earlier seq and catches up again. A cache
    /// that waits for a disk ([`Cache::blocking`], e.g. SQLite) is called on Tokio's blocking
    /// pool, awaited by the store's task: a slow disk delays that store, not the runtime.
    ///
    /// **When the cache fails** (disk full, I/O error), nothing panics and nothing is lost
    /// silently: the engine emits [`Change::CacheFailed`] and goes on from memory (reads,
    /// subscriptions and `last_store_seq` follow the events); the cache keeps the state it had
    /// before the failing step, a consistent earlier one. The engine then tries to rewrite the
    /// store whole ([`Cache::replace`], retiring the outbox rows of the writes applied
    /// meanwhile) when the events applied since the failure (its own included) reach 2, 4, 8, ...,
    /// at each snapshot or reset and when a catch-up completes, and emits [`Change::CacheRepaired`] when it succeeds. After
    /// [`MAX_UNPERSISTED_EVENTS`] events without success it stops trying (one more
    /// [`Change::CacheFailed`]) until the process restarts. A process that restarts while the
    /// cache is behind starts from the cached (older) seq and catches up from it.
    ///
    /// ```
    /// use dust_connection::{MemoryCache, MemoryEngine, SyncEngine};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = MemoryEngine::with_cache(MemoryCache::new())?;
    /// assert_eq!(engine.last_store_seq("org/app").await, 0);
    /// # Ok(()) }
    /// ```
    pub fn with_cache(cache: impl Cache) -> Result<Self, CacheError> {
        Self::with_cache_shared(Arc::new(cache))
    }

    /// [`with_cache`](Self::with_cache) with a shared cache.
    pub fn with_cache_shared(cache: Arc<dyn Cache>) -> Result<Self, CacheError> {
        let loaded = cache.load()?;
        Ok(Self::from_loaded(loaded, Some(cache)))
    }

    /// An engine on the durable cache in `db` ([`SqliteCache`](crate::SqliteCache)): see
    /// [`with_cache`](Self::with_cache). A restarted process reads its stores at once, offline,
    /// and joins each from its cached seq.
    ///
    /// ```
    /// use dust_connection::{Database, MemoryEngine, ServerEvent, SyncEngine};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("dust-doc-open-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let db = Database::open(dir.join("app.db"))?;
    /// let engine = MemoryEngine::open(&db)?;
    /// let event: ServerEvent = serde_json::from_value(json!({
    ///     "store_seq": 1, "op": "set", "path": "users/ada", "value": {"name": "Ada"}
    /// }))?;
    /// engine.handle_server_event("org/app", &event).await;
    /// drop((engine, db));
    ///
    /// // The next process: the data is there before any connection.
    /// let db = Database::open(dir.join("app.db"))?;
    /// let engine = MemoryEngine::open(&db)?;
    /// assert_eq!(engine.replica("org/app").get("users/ada/name")?, Some(json!("Ada")));
    /// assert_eq!(engine.last_store_seq("org/app").await, 1);
    /// # drop((engine, db)); std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn open(db: &crate::Database) -> Result<Self, crate::DurableError> {
        let cache = crate::SqliteCache::new(db.clone());
        let loaded = cache.load_stores()?;
        Ok(Self::from_loaded(loaded, Some(Arc::new(cache))))
    }

    fn from_loaded(loaded: BTreeMap<String, CachedStore>, cache: Option<Arc<dyn Cache>>) -> Self {
        let stores: HashMap<String, StoreState> = loaded
            .into_iter()
            .map(|(name, state)| {
                let entries = state
                    .entries
                    .into_iter()
                    .map(|(path, entry)| (path, entry.into_stored()))
                    .collect();
                let mut store = StoreState::default();
                store.entries = entries;
                store.last_seq = state.last_seq;
                (name, store)
            })
            .collect();
        Self {
            stores: Arc::new(Mutex::new(stores)),
            changes: broadcast::channel(super::memory::CHANGES).0,
            cache,
        }
    }

    /// Whether the engine has a cache and the store's state in it is behind the engine's
    /// since a failure (see [`with_cache`](Self::with_cache)).
    pub fn cache_behind(&self, store: &str) -> bool {
        self.cache.is_some() && self.with(store, |s| s.persisted.behind.is_some())
    }

    /// Writes what the engine just applied to `store` to the cache, if it has one: an event at
    /// once, or, while the store catches up, with the next ones (up to [`CATCH_UP_BATCH`]).
    pub(crate) async fn persist(&self, store: &str, step: Step) {
        let Some(cache) = self.cache.as_ref() else {
            return;
        };
        if self.with(store, |s| s.persisted.behind.is_some()) {
            self.persist_behind(store, &step).await;
            return;
        }
        let (batch, step) = match step {
            Step::Commit(commit) => {
                let batch = self.with(store, |s| {
                    s.persisted.unflushed.push(commit);
                    if s.persisted.catching_up && s.persisted.unflushed.len() < CATCH_UP_BATCH {
                        Vec::new()
                    } else {
                        std::mem::take(&mut s.persisted.unflushed)
                    }
                });
                (batch, Step::Flush)
            }
            other => (
                self.with(store, |s| std::mem::take(&mut s.persisted.unflushed)),
                other,
            ),
        };
        if !batch.is_empty() {
            // Kept aside: if the commit fails, the rewrite retires them.
            let retire: Vec<String> = batch
                .iter()
                .filter_map(|c| c.client_op_id.clone())
                .collect();
            let name = store.to_owned();
            let result = on_cache(cache, move |cache| cache.commit(&name, &batch)).await;
            if let Err(error) = result {
                self.with(store, |s| s.persisted.behind = Some(Behind::new(retire)));
                self.cache_failed(store, error.to_string());
                self.persist_behind(store, &step).await;
                return;
            }
        }
        let name = store.to_owned();
        let result = match step {
            Step::Commit(_) | Step::Flush => return,
            Step::Replace => {
                let state = self.with(store, |s| CachedStore::from_entries(s.last_seq, &s.entries));
                on_cache(cache, move |cache| cache.replace(&name, &state, &[])).await
            }
            Step::Forget => on_cache(cache, move |cache| cache.forget(&name)).await,
        };
        if let Err(error) = result {
            self.with(store, |s| {
                s.persisted.behind = Some(Behind::new(Vec::new()))
            });
            self.cache_failed(store, error.to_string());
        }
    }

    /// A step applied while the store's cache is behind: counted, and the store rewritten
    /// when it is time.
    async fn persist_behind(&self, store: &str, step: &Step) {
        let id = match step {
            Step::Flush => return,
            Step::Commit(commit) => commit.client_op_id.as_deref(),
            Step::Replace | Step::Forget => None,
        };
        let (now, stalled) = self.with(store, |s| {
            s.persisted
                .behind
                .as_mut()
                .map_or((false, false), |b| b.record(id))
        });
        if stalled {
            let error = format!(
                "more than {MAX_UNPERSISTED_EVENTS} events not persisted: the cache stays \
                 behind until the engine restarts"
            );
            self.cache_failed(store, error);
        } else if now || !matches!(step, Step::Commit(_)) {
            self.repair(store).await;
        }
    }

    /// Tries to rewrite a store whose cache is behind.
    pub(crate) async fn repair(&self, store: &str) {
        let Some(cache) = self.cache.as_ref() else {
            return;
        };
        let work = self.with(store, |s| {
            let behind = s.persisted.behind.as_ref().filter(|b| !b.stalled)?;
            let state = CachedStore::from_entries(s.last_seq, &s.entries);
            Some((state, behind.retire.clone()))
        });
        let Some((state, retire)) = work else {
            return;
        };
        let seq = state.last_seq;
        let name = store.to_owned();
        match on_cache(cache, move |cache| cache.replace(&name, &state, &retire)).await {
            Ok(()) => {
                self.with(store, |s| s.persisted.behind = None);
                tracing::info!(store, seq, "the cache caught up");
                self.emit(Change::CacheRepaired {
                    store: store.to_owned(),
                    seq,
                });
            }
            Err(error) => self.cache_failed(store, error.to_string()),
        }
    }

    fn cache_failed(&self, store: &str, error: String) {
        let seq = self.seq(store);
        tracing::error!(store, seq, %error, "the cache failed; the engine goes on from memory");
        self.emit(Change::CacheFailed {
            store: store.to_owned(),
            seq,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::{Value, json};

    use super::*;
    use crate::engine::{MemoryCache, ServerEvent, Snapshot, StoreStatus, SyncEngine};

    fn event(seq: u64, op: &str, path: &str, value: Value, id: &str) -> ServerEvent {
        serde_json::from_value(json!({
            "store_seq": seq, "op": op, "path": path, "value": value, "client_op_id": id
        }))
        .unwrap()
    }

    /// A [`MemoryCache`] that fails while `fail` is set, and records what replaces retire.
    #[derive(Clone, Default)]
    struct Flaky {
        inner: MemoryCache,
        fail: Arc<AtomicBool>,
        retired: Arc<Mutex<Vec<String>>>,
        commits: Arc<Mutex<usize>>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), CacheError> {
            if self.fail.load(Ordering::SeqCst) {
                Err(CacheError::Other("disk full".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Cache for Flaky {
        fn load(&self) -> Result<BTreeMap<String, CachedStore>, CacheError> {
            self.inner.load()
        }
        fn commit(&self, store: &str, commits: &[Commit]) -> Result<(), CacheError> {
            self.check()?;
            *self.commits.lock().unwrap() += 1;
            let ids = commits.iter().filter_map(|c| c.client_op_id.clone());
            self.retired.lock().unwrap().extend(ids);
            self.inner.commit(store, commits)
        }
        fn replace(
            &self,
            store: &str,
            state: &CachedStore,
            retire: &[String],
        ) -> Result<(), CacheError> {
            self.check()?;
            self.retired.lock().unwrap().extend_from_slice(retire);
            self.inner.replace(store, state, retire)
        }
        fn forget(&self, store: &str) -> Result<(), CacheError> {
            self.check()?;
            self.inner.forget(store)
        }
    }

    fn cached(engine: &MemoryEngine, store: &str) -> CachedStore {
        engine.with(store, |s| CachedStore::from_entries(s.last_seq, &s.entries))
    }

    #[tokio::test]
    async fn events_snapshots_and_resets_reach_the_cache_and_a_new_engine_starts_from_it() {
        let cache = MemoryCache::new();
        let engine = MemoryEngine::with_cache(cache.clone()).unwrap();
        let ops = [
            ("set", "a", json!({"x": 1, "y": {"z": 2}})),
            ("merge", "a", json!({"y": 3})),
            ("increment", "n", json!(5)),
            ("delete", "a/x", Value::Null),
        ];
        for (i, (op, path, value)) in ops.into_iter().enumerate() {
            let seq = i as u64 + 1;
            engine
                .handle_server_event("s", &event(seq, op, path, value, &format!("op{seq}")))
                .await;
        }
        assert_eq!(cache.load().unwrap()["s"], cached(&engine, "s"));
        let again = MemoryEngine::with_cache(cache.clone()).unwrap();
        assert_eq!(again.entries_with_seq("s"), engine.entries_with_seq("s"));
        assert_eq!(again.last_store_seq("s").await, 4);

        let snapshot: Snapshot = serde_json::from_value(json!({
            "snapshot_seq": 9, "entries": {"k": {"value": {"_scalar": "v"}, "type": "string"}}
        }))
        .unwrap();
        engine.handle_snapshot("s", &snapshot).await;
        assert_eq!(cache.load().unwrap()["s"], cached(&engine, "s"));
        engine.handle_server_reset("s", 0).await;
        assert!(!cache.load().unwrap().contains_key("s"));
        assert!(!engine.cache_behind("s"));
    }

    #[tokio::test]
    async fn a_failing_cache_is_reported_stays_consistent_and_is_rewritten_when_it_works_again() {
        let cache = Flaky::default();
        let engine = MemoryEngine::with_cache(cache.clone()).unwrap();
        let mut changes = engine.subscribe();
        engine
            .handle_server_event("s", &event(1, "set", "a", json!(1), "op1"))
            .await;
        let before = cache.load().unwrap();

        cache.fail.store(true, Ordering::SeqCst);
        engine
            .handle_server_event("s", &event(2, "set", "b", json!(2), "op2"))
            .await;
        engine
            .handle_server_event("s", &event(3, "set", "c", json!(3), "op3"))
            .await;
        assert!(engine.cache_behind("s"));
        assert_eq!(
            cache.load().unwrap(),
            before,
            "the cache keeps its earlier state"
        );
        assert_eq!(
            engine.get("s", "c"),
            Some(json!(3)),
            "reads go on from memory"
        );
        assert_eq!(engine.last_store_seq("s").await, 3);

        cache.fail.store(false, Ordering::SeqCst);
        // Tries when 2, 4, 8, ... events were applied since the failure (event 2): event 3
        // tried (and failed), event 5 tries again.
        engine
            .handle_server_event("s", &event(4, "set", "d", json!(4), "op4"))
            .await;
        assert!(engine.cache_behind("s"));
        engine
            .handle_server_event("s", &event(5, "set", "e", json!(5), "op5"))
            .await;
        assert!(!engine.cache_behind("s"));
        assert_eq!(cache.load().unwrap()["s"], cached(&engine, "s"));
        assert_eq!(
            *cache.retired.lock().unwrap(),
            ["op1", "op2", "op3", "op4", "op5"],
            "every applied write's row is retired, the ones of the failed commits by the rewrite"
        );

        let mut failed = 0;
        let mut repaired = None;
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::CacheFailed { seq, .. } => failed += usize::from(seq >= 2),
                Change::CacheRepaired { seq, .. } => repaired = Some(seq),
                _ => {}
            }
        }
        assert_eq!((failed, repaired), (2, Some(5)));
    }

    #[tokio::test]
    async fn a_catch_up_goes_to_the_cache_in_batches_and_live_events_one_by_one() {
        let cache = Flaky::default();
        let engine = MemoryEngine::with_cache(cache.clone()).unwrap();
        let n = CATCH_UP_BATCH as u64 + 10;
        engine.set_status("s", StoreStatus::Connected).await;
        for seq in 1..=n {
            let id = format!("op{seq}");
            engine
                .handle_server_event("s", &event(seq, "set", "a", json!(seq), &id))
                .await;
        }
        assert_eq!(*cache.commits.lock().unwrap(), 1, "one full batch so far");
        assert_eq!(cache.load().unwrap()["s"].last_seq, CATCH_UP_BATCH as u64);
        engine.set_catch_up_complete("s", n).await;
        assert_eq!(*cache.commits.lock().unwrap(), 2, "the rest at the end");
        assert_eq!(cache.load().unwrap()["s"], cached(&engine, "s"));
        assert_eq!(cache.retired.lock().unwrap().len(), n as usize);

        engine
            .handle_server_event("s", &event(n + 1, "set", "b", json!(1), "live"))
            .await;
        assert_eq!(*cache.commits.lock().unwrap(), 3, "a live event at once");

        // A join that ends mid catch-up writes what it applied.
        engine.set_status("s", StoreStatus::Connected).await;
        engine
            .handle_server_event("s", &event(n + 2, "set", "c", json!(2), "x"))
            .await;
        assert_eq!(cache.load().unwrap()["s"].last_seq, n + 1);
        engine.set_status("s", StoreStatus::Reconnecting).await;
        assert_eq!(cache.load().unwrap()["s"], cached(&engine, "s"));
    }

    #[tokio::test]
    async fn a_cache_that_keeps_failing_stalls_after_the_bound_and_says_so() {
        let cache = Flaky::default();
        cache.fail.store(true, Ordering::SeqCst);
        let engine = MemoryEngine::with_cache(cache.clone()).unwrap();
        let mut changes = engine.subscribe();
        let events = MAX_UNPERSISTED_EVENTS as u64 + 3;
        let mut failures = 0;
        for seq in 1..=events {
            engine
                .handle_server_event("s", &event(seq, "set", "a", json!(seq), "op"))
                .await;
            while let Ok(change) = changes.try_recv() {
                failures += usize::from(matches!(change, Change::CacheFailed { .. }));
            }
        }
        // The first failure, one per try (at 2, 4, ... 65536 events), the stall.
        assert_eq!(failures, 1 + 16 + 1);
        engine.with("s", |s| {
            let behind = s.persisted.behind.as_ref().unwrap();
            assert!(behind.stalled && behind.retire.len() <= MAX_UNPERSISTED_EVENTS);
        });
        cache.fail.store(false, Ordering::SeqCst);
        engine.set_catch_up_complete("s", events).await;
        assert!(engine.cache_behind("s"), "a stalled store is not rewritten");
        assert!(cache.load().unwrap().is_empty());
    }
}
