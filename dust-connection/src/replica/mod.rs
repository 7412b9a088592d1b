//! [`Replica`]: reads of one store's local replica (never the network) and subscriptions to
//! its changes.

use std::fmt;
use std::ops::Bound;

use serde_json::{Map, Value};

use crate::engine::{Entries, MemoryEngine, Stored};
use crate::glob::{Glob, GlobError, IntoGlob};
use crate::store::Store;
use crate::write::{Path, PathError};

mod optimistic;
mod subscribe;
mod types;

pub(crate) use optimistic::Overlay;
pub use optimistic::SyncedStore;
pub(crate) use subscribe::Subscribers;
pub use subscribe::{
    DEFAULT_SUBSCRIBER_CAPACITY, Lagged, SubscribeOptions, Subscription, Update, Watch, WatchError,
};
pub use types::{Entry, IntoPath, MAX_PAGE, Order, Page, Paging, ReadError, ReplicaStatus};

/// Reads of one store's local replica in a [`MemoryEngine`], and subscriptions to its
/// changes: every call answers from memory, never from the network, whether the connection
/// is up or not. A cheap `Clone` handle.
///
/// Values are unwrapped as the server lists them (never `{"_scalar": …}`), and a map that was
/// written is read at its leaves as well as whole: after `set(["users", "ada"], {"name":
/// "Ada"})`, `get("users/ada/name")` is `"Ada"` and `get("users/ada")` is `{"name": "Ada"}`.
///
/// ```
/// use dust_connection::{MemoryEngine, Paging, ServerEvent, SyncEngine};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let event: ServerEvent = serde_json::from_value(json!({
///     "store_seq": 1, "op": "set", "path": "users/ada", "value": {"name": "Ada", "age": 36}
/// }))?;
/// engine.handle_server_event("org/app", &event).await;
///
/// let app = engine.replica("org/app");
/// assert_eq!(app.get("users/ada/name")?, Some(json!("Ada")));
/// assert_eq!(app.get(["users", "ada"])?, Some(json!({"name": "Ada", "age": 36})));
/// assert_eq!(app.entry("users/ada/age")?.map(|e| (e.kind, e.revision)), Some(("integer".into(), 1)));
/// let page = app.enumerate("users/*/*", Paging::new().limit(1))?;
/// assert_eq!(page.entries[0].path, "users/ada/age");
/// assert_eq!(page.next_cursor.as_deref(), Some("users/ada/age"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Replica {
    engine: MemoryEngine,
    store: String,
    writes: Option<Store>,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// The replica of `store` (full name, `org/store`), for reads and subscriptions.
    pub fn replica(&self, store: &str) -> Replica {
        Replica {
            engine: self.clone(),
            store: store.to_owned(),
            writes: None,
        }
    }
}

/// A rendered path, or why it is invalid.
fn render(path: impl IntoPath) -> Result<String, PathError> {
    Ok(path.into_path()?.render())
}

impl Replica {
    /// The same replica, reporting the pending writes of `store` (its write path on a
    /// connection using this engine) in [`status`](Self::status).
    pub fn with_writes(mut self, store: &Store) -> Self {
        self.writes = Some(store.clone());
        self
    }

    /// The store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    fn read<R>(&self, f: impl FnOnce(&Entries) -> R) -> R {
        self.engine
            .with(&self.store, |s| f(s.overlay.view(&s.entries)))
    }

    /// The value at `path` ([`IntoPath`]: a rendered path or segments): its entry's value, or, when there
    /// is no entry there, the entries below it assembled into a map; `None` when there is
    /// neither. Where an entry has entries below it too (a counter incremented at a map's
    /// key), the entry's own value is read, at that path and inside an assembled map.
    pub fn get(&self, path: impl IntoPath) -> Result<Option<Value>, PathError> {
        let path = render(path)?;
        Ok(self.read(|entries| lookup(entries, &path).map(|entry| entry.value)))
    }

    /// The values of several paths, read together (consistent with each other), in the order
    /// asked.
    pub fn get_many<I, P>(&self, paths: I) -> Result<Vec<Option<Value>>, PathError>
    where
        I: IntoIterator<Item = P>,
        P: IntoPath,
    {
        let paths = paths
            .into_iter()
            .map(render)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.read(|entries| {
            paths
                .iter()
                .map(|path| lookup(entries, path).map(|entry| entry.value))
                .collect()
        }))
    }

    /// The entry at `path` with its type and revision, or the subtree below it as a `map`
    /// entry (see [`get`](Self::get)); `None` when there is neither.
    pub fn entry(&self, path: impl IntoPath) -> Result<Option<Entry>, PathError> {
        let path = render(path)?;
        Ok(self.read(|entries| lookup(entries, &path)))
    }

    /// A page of the entries whose path matches `pattern` ([`Glob`]), ordered by rendered
    /// path. Pass the page's [`Page::next_cursor`] to [`Paging::after`] for the next one.
    pub fn enumerate(&self, pattern: impl IntoGlob, paging: Paging) -> Result<Page, ReadError> {
        let glob = pattern.into_glob()?;
        let (lower, upper) = prefix_bounds(&glob);
        self.page(lower, upper, &paging, |path| glob.matches_rendered(path))
    }

    /// A page of the entries whose rendered path is in `from..to` (`from` included, `to`
    /// excluded), ordered by rendered path.
    pub fn range(&self, from: &str, to: &str, paging: Paging) -> Result<Page, ReadError> {
        let lower = Bound::Included(from.to_owned());
        let upper = Bound::Excluded(to.to_owned());
        self.page(lower, upper, &paging, |_| true)
    }

    fn page(
        &self,
        lower: Bound<String>,
        upper: Bound<String>,
        paging: &Paging,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Page, ReadError> {
        if paging.limit == 0 || paging.limit > MAX_PAGE {
            return Err(ReadError::Limit(paging.limit));
        }
        let (lower, upper) = match (&paging.after, paging.order) {
            (None, _) => (lower, upper),
            (Some(cursor), Order::Asc) => (tighter_lower(lower, cursor), upper),
            (Some(cursor), Order::Desc) => (lower, tighter_upper(upper, cursor)),
        };
        if empty(&lower, &upper) {
            return Ok(Page::default());
        }
        Ok(self.read(|entries| {
            let range = entries.range((lower, upper));
            let matching = |(path, _): &(&String, &Stored)| keep(path);
            let mut page: Vec<Entry> = match paging.order {
                Order::Asc => range
                    .filter(matching)
                    .take(paging.limit + 1)
                    .map(|(path, stored)| Entry::leaf(path, stored))
                    .collect(),
                Order::Desc => range
                    .rev()
                    .filter(matching)
                    .take(paging.limit + 1)
                    .map(|(path, stored)| Entry::leaf(path, stored))
                    .collect(),
            };
            let more = page.len() > paging.limit;
            page.truncate(paging.limit);
            let next_cursor = more
                .then(|| page.last().map(|entry| entry.path.clone()))
                .flatten();
            Page {
                entries: page,
                next_cursor,
            }
        }))
    }

    /// The store's status as the replica sees it.
    pub fn status(&self) -> ReplicaStatus {
        let pending_ops = self.writes.as_ref().map(Store::outbox_len);
        self.engine.with(&self.store, |s| ReplicaStatus {
            connection: s.status,
            last_seq: s.last_seq,
            caught_up_through: s.caught_up,
            pending_ops,
            entry_count: s.overlay.view(&s.entries).len(),
            optimistic: s.overlay.len(),
            capabilities: s.capabilities.clone(),
            subscriptions: s.subscribers.len(),
        })
    }

    /// The changes of the entries matching `pattern`, from now on, as a [`Stream`] with the
    /// default options (see [`on_with`](Self::on_with)).
    ///
    /// [`Stream`]: futures_util::Stream
    pub fn on(&self, pattern: impl IntoGlob) -> Result<Subscription, GlobError> {
        self.on_with(pattern, SubscribeOptions::new())
    }

    /// The changes of the entries matching `pattern`, passed to `callback` one by one (the
    /// callback form of [`on_with`](Self::on_with), same items, same bounds): a task on the
    /// current Tokio runtime feeds it until the returned [`Watch`] is dropped. A slow callback
    /// holds up only its own subscription, which then reports [`Lagged`].
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use dust_connection::{MemoryEngine, SubscribeOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = MemoryEngine::new();
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let watch = engine.replica("org/app").on_each("users/**", SubscribeOptions::new(), move |item| {
    ///     if let Ok(update) = item {
    ///         log.lock().unwrap().push(update.path.render());
    ///     }
    /// })?;
    /// drop(watch); // unsubscribes
    /// # Ok(()) }
    /// ```
    pub fn on_each(
        &self,
        pattern: impl IntoGlob,
        options: SubscribeOptions,
        callback: impl FnMut(Result<Update, Lagged>) + Send + 'static,
    ) -> Result<Watch, WatchError> {
        let subscription = self.on_with(pattern, options)?;
        Watch::spawn(subscription, callback)
    }

    /// The changes of the entries matching `pattern` as a [`Stream`] of
    /// `Result<Update, Lagged>`, bounded by the options' capacity, optionally starting with
    /// the entries that match now. Dropping the subscription unsubscribes.
    ///
    /// ```
    /// use dust_connection::{MemoryEngine, ServerEvent, SubscribeOptions, SyncEngine};
    /// use futures_util::StreamExt as _;
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = MemoryEngine::new();
    /// let users = engine.replica("org/app").on_with("users/*/name", SubscribeOptions::new().capacity(16))?;
    /// let event: ServerEvent = serde_json::from_value(json!({
    ///     "store_seq": 1, "op": "set", "path": "users/ada", "value": {"name": "Ada", "age": 36}
    /// }))?;
    /// engine.handle_server_event("org/app", &event).await;
    /// let mut users = users;
    /// let update = users.next().await.expect("a subscription never ends")?;
    /// assert_eq!((update.path.render(), update.value, update.seq), ("users/ada/name".into(), Some(json!("Ada")), 1));
    /// # Ok(()) }
    /// ```
    ///
    /// [`Stream`]: futures_util::Stream
    pub fn on_with(
        &self,
        pattern: impl IntoGlob,
        options: SubscribeOptions,
    ) -> Result<Subscription, GlobError> {
        let glob = pattern.into_glob()?;
        Ok(Subscription::start(
            &self.engine,
            &self.store,
            glob,
            options,
        ))
    }
}

/// The entry at `path`, or the subtree below it assembled into a `map` entry.
fn lookup(entries: &Entries, path: &str) -> Option<Entry> {
    if let Some(stored) = entries.get(path) {
        return Some(Entry::leaf(path, stored));
    }
    let prefix = format!("{path}/");
    let mut map = Map::new();
    let mut revision = 0;
    let mut found = false;
    let mut pending = false;
    for (key, stored) in entries
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
    {
        let Ok(relative) = Path::parse(&key[prefix.len()..]) else {
            continue;
        };
        found = true;
        revision = revision.max(stored.revision);
        pending |= stored.pending;
        insert(&mut map, relative.segments(), stored.rendered());
    }
    found.then(|| Entry {
        path: path.to_owned(),
        value: Value::Object(map),
        kind: "map".to_owned(),
        revision,
        pending,
    })
}

/// Puts `value` at `segments` in nested maps; a value already on the way wins (entries come
/// in path order, so a path's own entry comes before the entries below it).
fn insert(map: &mut Map<String, Value>, segments: &[String], value: Value) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.entry(first.clone()).or_insert(value);
        return;
    }
    let child = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(child) = child {
        insert(child, rest, value);
    }
}

/// The range of rendered paths a glob's matches lie in: those starting with its literal
/// prefix.
fn prefix_bounds(glob: &Glob) -> (Bound<String>, Bound<String>) {
    let prefix = glob.literal_prefix();
    if prefix.is_empty() {
        (Bound::Unbounded, Bound::Unbounded)
    } else if let Some(stem) = prefix.strip_suffix('/') {
        // Every key starting with `stem/` sorts before `stem0` (`0` follows `/`).
        (
            Bound::Included(prefix.clone()),
            Bound::Excluded(format!("{stem}0")),
        )
    } else {
        (Bound::Included(prefix.clone()), Bound::Included(prefix))
    }
}

fn tighter_lower(lower: Bound<String>, cursor: &str) -> Bound<String> {
    match &lower {
        Bound::Included(l) | Bound::Excluded(l) if l.as_str() > cursor => lower,
        _ => Bound::Excluded(cursor.to_owned()),
    }
}

fn tighter_upper(upper: Bound<String>, cursor: &str) -> Bound<String> {
    match &upper {
        Bound::Included(u) | Bound::Excluded(u) if u.as_str() < cursor => upper,
        _ => Bound::Excluded(cursor.to_owned()),
    }
}

/// Whether a range holds nothing (`BTreeMap::range` panics on such bounds).
fn empty(lower: &Bound<String>, upper: &Bound<String>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn empty_ranges_are_detected_before_they_reach_the_map() {
        let b = |s: &str| s.to_owned();
        assert!(empty(&Bound::Included(b("b")), &Bound::Excluded(b("a"))));
        assert!(empty(&Bound::Included(b("a")), &Bound::Excluded(b("a"))));
        assert!(empty(&Bound::Excluded(b("a")), &Bound::Included(b("a"))));
        assert!(!empty(&Bound::Included(b("a")), &Bound::Included(b("a"))));
        assert!(!empty(&Bound::Unbounded, &Bound::Excluded(b("a"))));
        assert_eq!(
            tighter_lower(Bound::Included(b("users/")), "a"),
            Bound::Included(b("users/"))
        );
        assert_eq!(
            tighter_lower(Bound::Included(b("users/")), "users/b"),
            Bound::Excluded(b("users/b"))
        );
        assert_eq!(
            tighter_upper(Bound::Excluded(b("users0")), "users/b"),
            Bound::Excluded(b("users/b"))
        );
    }

    #[test]
    fn subtrees_assemble_with_an_entry_s_own_value_winning() {
        let stored = |value: Value, revision| Stored {
            value: serde_json::json!({"_scalar": value}),
            kind: "integer".into(),
            revision,
            pending: false,
        };
        let entries: Entries = BTreeMap::from([
            ("m/y".to_owned(), stored(5.into(), 3)),
            ("m/y/deep".to_owned(), stored(3.into(), 2)),
            ("m/a~1b".to_owned(), stored(1.into(), 1)),
        ]);
        let entry = lookup(&entries, "m").unwrap();
        assert_eq!(entry.value, serde_json::json!({"y": 5, "a/b": 1}));
        assert_eq!((entry.kind.as_str(), entry.revision), ("map", 3));
        assert_eq!(lookup(&entries, "m/y").unwrap().value, 5);
        assert_eq!(lookup(&entries, "n"), None);
    }
}
