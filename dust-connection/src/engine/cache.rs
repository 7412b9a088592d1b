//! [`Cache`]: where a [`MemoryEngine`](super::MemoryEngine) keeps the state it applied, so that
//! a new engine starts from it — [`MemoryCache`] in memory, `SqliteCache` on disk (feature
//! `sqlite`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::materialize::{Entries, Stored};

/// One entry of a cached store: the value as the server stores it (in its storage envelope,
/// `{"_scalar": v}` for a non-map), the type the server records, and the seq that last wrote
/// it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CachedEntry {
    /// The stored value, in its envelope.
    pub value: Value,
    /// The entry's type (`string`, `integer`, `map`, `counter`, `lease`, `file`, ...).
    pub kind: String,
    /// The seq of the op that last wrote it.
    pub revision: u64,
}

impl CachedEntry {
    /// An entry.
    pub fn new(value: Value, kind: impl Into<String>, revision: u64) -> Self {
        Self {
            value,
            kind: kind.into(),
            revision,
        }
    }

    pub(crate) fn from_stored(stored: &Stored) -> Self {
        Self::new(stored.value.clone(), stored.kind.clone(), stored.revision)
    }

    pub(crate) fn into_stored(self) -> Stored {
        Stored {
            value: self.value,
            kind: self.kind,
            revision: self.revision,
            pending: false,
        }
    }
}

/// A store's applied state: its last seq and its entries by rendered path.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CachedStore {
    /// The seq the entries are at (0: nothing applied).
    pub last_seq: u64,
    /// The entries by rendered path.
    pub entries: BTreeMap<String, CachedEntry>,
}

impl CachedStore {
    /// A store's state.
    pub fn new(last_seq: u64, entries: BTreeMap<String, CachedEntry>) -> Self {
        Self { last_seq, entries }
    }

    pub(crate) fn from_entries(last_seq: u64, entries: &Entries) -> Self {
        let entries = entries
            .iter()
            .map(|(path, stored)| (path.clone(), CachedEntry::from_stored(stored)))
            .collect();
        Self { last_seq, entries }
    }
}

/// What one applied event changed in a store: the entries it wrote and the ones it removed,
/// the seq the store is at after it, and the event's `client_op_id` (the write it confirms,
/// whose outbox row a durable cache retires in the same transaction).
///
/// ```
/// use dust_connection::{Cache, CachedEntry, Commit, MemoryCache};
/// use serde_json::json;
///
/// let cache = MemoryCache::new();
/// let mut commit = Commit::new(1, Some("op_1".into()));
/// commit.set.push(("users/ada/name".into(), CachedEntry::new(json!({"_scalar": "Ada"}), "string", 1)));
/// cache.commit("org/app", &[commit])?;
///
/// let stores = cache.load()?;
/// assert_eq!(stores["org/app"].last_seq, 1);
/// assert_eq!(stores["org/app"].entries["users/ada/name"].kind, "string");
/// # Ok::<(), dust_connection::CacheError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Commit {
    /// The event's seq: the store's last seq after it.
    pub seq: u64,
    /// The writer's idempotency key, if the event carries one.
    pub client_op_id: Option<String>,
    /// Entries written (rendered path → entry).
    pub set: Vec<(String, CachedEntry)>,
    /// Entries removed (rendered paths of leaf entries).
    pub removed: Vec<String>,
}

impl Commit {
    /// A commit of the event of seq `seq`, changing nothing yet.
    pub fn new(seq: u64, client_op_id: Option<String>) -> Self {
        Self {
            seq,
            client_op_id,
            set: Vec::new(),
            removed: Vec::new(),
        }
    }
}

/// Why a [`Cache`] could not load or keep a store's state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The SQLite file failed (I/O error, disk full, ...).
    #[cfg(feature = "sqlite")]
    #[error(transparent)]
    Durable(#[from] crate::DurableError),
    /// Another cache implementation failed.
    #[error("cache: {0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Where a [`MemoryEngine`](super::MemoryEngine) keeps the state it applied: each store's last
/// seq and entries, changed one applied event at a time. The engine reads from memory; a cache
/// is written, and read only when an engine starts ([`load`](Self::load)), so a new engine (a
/// restarted process, with a durable cache) reads its data at once and joins from its own seq.
///
/// Each method is one atomic step: after it fails, the cache holds the state from before the
/// call (the engine then reports [`Change::CacheFailed`](super::Change::CacheFailed) and rewrites
/// the store whole later, see [`MemoryEngine::with_cache`](super::MemoryEngine::with_cache)).
/// Calls for one store come in the order the engine applied them.
///
/// ```
/// use dust_connection::{Cache, MemoryCache, MemoryEngine, ServerEvent, SyncEngine};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = MemoryCache::new();
/// let engine = MemoryEngine::with_cache(cache.clone())?;
/// let event: ServerEvent = serde_json::from_value(json!({
///     "store_seq": 1, "op": "set", "path": "users/ada", "value": {"name": "Ada"}
/// }))?;
/// engine.handle_server_event("org/app", &event).await;
///
/// assert_eq!(cache.load()?["org/app"].last_seq, 1);
/// let again = MemoryEngine::with_cache(cache)?;
/// assert_eq!(again.get("org/app", "users/ada/name"), Some(json!("Ada")));
/// # Ok(()) }
/// ```
pub trait Cache: Send + Sync + 'static {
    /// Every store's state.
    fn load(&self) -> Result<BTreeMap<String, CachedStore>, CacheError>;

    /// Applies consecutive events' changes to `store`, in order, and sets its last seq to the
    /// last one's, all at once (a durable cache also retires the outbox rows of their
    /// `client_op_id`s in the same step). One event, or a run of a catch-up's.
    fn commit(&self, store: &str, commits: &[Commit]) -> Result<(), CacheError>;

    /// Replaces `store`'s state by `state` (a snapshot, or the engine rewriting a store it
    /// failed to keep), at once; `retire` lists the `client_op_id`s of events the new state
    /// includes that were not committed one by one (a durable cache retires their outbox rows
    /// in the same step).
    fn replace(
        &self,
        store: &str,
        state: &CachedStore,
        retire: &[String],
    ) -> Result<(), CacheError>;

    /// Forgets `store` (the server was reset): its last seq is 0 and it holds nothing.
    fn forget(&self, store: &str) -> Result<(), CacheError>;

    /// Whether the calls wait for a disk (or anything slow): the engine then makes them on
    /// Tokio's blocking pool, awaited by the store's task. `true` unless overridden.
    fn blocking(&self) -> bool {
        true
    }
}

/// A [`Cache`] in memory: what a [`MemoryEngine`](super::MemoryEngine) applied, kept for the
/// next engine made from a clone of it in this process (e.g. an engine rebuilt after a
/// connection is torn down). Nothing survives the process; [`MemoryEngine::new`] needs no cache
/// at all.
///
/// ```
/// use dust_connection::{MemoryCache, MemoryEngine, ServerEvent, SyncEngine};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = MemoryCache::new();
/// let first = MemoryEngine::with_cache(cache.clone())?;
/// let event: ServerEvent = serde_json::from_value(json!({"store_seq": 3, "op": "set", "path": "k", "value": 1}))?;
/// first.handle_server_event("org/app", &event).await;
/// drop(first);
/// // A new engine (e.g. for a new connection) starts where the first one was.
/// let second = MemoryEngine::with_cache(cache)?;
/// assert_eq!((second.seq("org/app"), second.get("org/app", "k")), (3, Some(json!(1))));
/// # Ok(()) }
/// ```
///
/// [`MemoryEngine::new`]: super::MemoryEngine::new
#[derive(Clone, Default)]
pub struct MemoryCache {
    stores: Arc<Mutex<HashMap<String, CachedStore>>>,
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache").finish_non_exhaustive()
    }
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, CachedStore>) -> R) -> R {
        let mut stores = match self.stores.lock() {
            Ok(stores) => stores,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut stores)
    }
}

impl Cache for MemoryCache {
    fn load(&self) -> Result<BTreeMap<String, CachedStore>, CacheError> {
        Ok(self.with(|stores| {
            stores
                .iter()
                .map(|(name, state)| (name.clone(), state.clone()))
                .collect()
        }))
    }

    fn commit(&self, store: &str, commits: &[Commit]) -> Result<(), CacheError> {
        self.with(|stores| {
            let state = stores.entry(store.to_owned()).or_default();
            for commit in commits {
                for path in &commit.removed {
                    state.entries.remove(path);
                }
                for (path, entry) in &commit.set {
                    state.entries.insert(path.clone(), entry.clone());
                }
                state.last_seq = commit.seq;
            }
        });
        Ok(())
    }

    fn replace(
        &self,
        store: &str,
        state: &CachedStore,
        _retire: &[String],
    ) -> Result<(), CacheError> {
        self.with(|stores| stores.insert(store.to_owned(), state.clone()));
        Ok(())
    }

    fn forget(&self, store: &str) -> Result<(), CacheError> {
        self.with(|stores| stores.remove(store));
        Ok(())
    }

    fn blocking(&self) -> bool {
        false
    }
}
