//! [`MemoryEngine`]: the in-memory [`SyncEngine`], a replica materialized as the server's
//! writer materializes its ops.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Capabilities, Change, ServerEvent, Snapshot, StoreStatus, SyncEngine, codec};
use crate::write::Path;

#[derive(Debug, Default)]
struct StoreState {
    /// Rendered path → the value as the server stores it (in its storage envelope).
    entries: BTreeMap<String, Value>,
    last_seq: u64,
    status: Option<StoreStatus>,
    capabilities: Option<Capabilities>,
    caught_up: Option<u64>,
    gaps: Vec<(u64, u64)>,
}

/// An in-memory [`SyncEngine`]: a replica of each store's entries, materialized from the
/// events as the server's writer materializes its ops (so it equals what the server holds,
/// see [`entries`](MemoryEngine::entries)), events applied in seq order (duplicates dropped,
/// gaps reported), snapshots replacing the contents, server resets detected, and a stream of
/// changes.
///
/// ```
/// use dust_connection::{MemoryEngine, ServerEvent, SyncEngine};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = MemoryEngine::new();
/// let event: ServerEvent = serde_json::from_value(json!({
///     "store_seq": 1, "op": "set", "path": "users/ada", "value": {"name": "Ada", "age": 36}
/// })).unwrap();
/// engine.handle_server_event("org/app", &event).await;
/// assert_eq!(engine.get("org/app", "users/ada/name"), Some(json!("Ada")));
/// assert_eq!(engine.last_store_seq("org/app").await, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryEngine {
    stores: Arc<Mutex<HashMap<String, StoreState>>>,
    changes: broadcast::Sender<Change>,
}

impl fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self {
            stores: Arc::default(),
            changes: broadcast::channel(4096).0,
        }
    }

    fn with<R>(&self, store: &str, f: impl FnOnce(&mut StoreState) -> R) -> R {
        let mut stores = match self.stores.lock() {
            Ok(stores) => stores,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(stores.entry(store.to_owned()).or_default())
    }

    fn emit(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The entry at a rendered path, as [`entries`](Self::entries) shows it (`None` when the
    /// store holds no entry there; a path whose value was set to `null` is `Some(Value::Null)`).
    pub fn get(&self, store: &str, path: &str) -> Option<Value> {
        self.with(store, |s| s.entries.get(path).map(codec::render))
    }

    /// The replica of a store in the server's `entries` form: what the server holds, entry by
    /// entry, by rendered path (RFC 6901 escapes, `/`-joined), each value as the server lists
    /// it:
    ///
    /// - a map written with `set` / `merge` is one entry per leaf (`users/ada/name`), an empty
    ///   map none;
    /// - a file ref, a lease envelope, and any map holding both `_typed` and `_type` are one
    ///   entry holding that object, except that a `decimal` typed value is listed as the string
    ///   the server renders it as (`{"_type": "decimal", "_typed": "1.50"}` → `"1.50"`) and a
    ///   `datetime` as its ISO 8601 form in UTC;
    /// - a `null` that was set is an entry holding `null`; a counter its total, a set its
    ///   members as a list.
    ///
    /// Events and snapshots give the same replica. This is what `DustControl::entries` of
    /// `dust-conformance` (and the server's HTTP entries) hold once the engine has applied the
    /// store's log up to the server's seq ([`seq`](Self::seq)).
    ///
    /// ```
    /// use dust_connection::{MemoryEngine, ServerEvent, SyncEngine};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let engine = MemoryEngine::new();
    /// for (seq, op, value) in [
    ///     (1, "set", json!({"name": "Ada", "price": {"_type": "decimal", "_typed": "1.50"}})),
    ///     (2, "merge", json!({"name": null})),
    /// ] {
    ///     let event: ServerEvent = serde_json::from_value(json!({
    ///         "store_seq": seq, "op": op, "path": "item", "value": value
    ///     })).unwrap();
    ///     engine.handle_server_event("org/app", &event).await;
    /// }
    /// assert_eq!(
    ///     serde_json::to_value(engine.entries("org/app")).unwrap(),
    ///     json!({"item/name": null, "item/price": "1.50"})
    /// );
    /// # }
    /// ```
    pub fn entries(&self, store: &str) -> BTreeMap<String, Value> {
        self.entries_with_seq(store).1
    }

    /// The last applied seq and [`entries`](Self::entries), read together (consistent with
    /// each other while events keep arriving): what a `state` dump prints.
    pub fn entries_with_seq(&self, store: &str) -> (u64, BTreeMap<String, Value>) {
        self.with(store, |s| {
            let entries = s
                .entries
                .iter()
                .map(|(path, stored)| (path.clone(), codec::render(stored)))
                .collect();
            (s.last_seq, entries)
        })
    }

    /// The last applied seq of a store.
    pub fn seq(&self, store: &str) -> u64 {
        self.with(store, |s| s.last_seq)
    }

    /// The store's status, once the connection has set one.
    pub fn status(&self, store: &str) -> Option<StoreStatus> {
        self.with(store, |s| s.status)
    }

    /// The capabilities of the last join.
    pub fn capabilities(&self, store: &str) -> Option<Capabilities> {
        self.with(store, |s| s.capabilities.clone())
    }

    /// The `through_seq` of the last completed catch-up.
    pub fn caught_up(&self, store: &str) -> Option<u64> {
        self.with(store, |s| s.caught_up)
    }

    /// The gaps seen: (expected seq, seq that came).
    pub fn gaps(&self, store: &str) -> Vec<(u64, u64)> {
        self.with(store, |s| s.gaps.clone())
    }

    fn apply(&self, store: &str, event: &ServerEvent) {
        let path = event
            .path_segments
            .clone()
            .map(Path::new)
            .unwrap_or_else(|| Path::parse(&event.path));
        let Ok(path) = path else {
            tracing::warn!(store, path = %event.path, "event with an invalid path; ignored");
            return;
        };
        let seq = event.store_seq;
        let mut diff = Diff::default();
        let outcome = self.with(store, |s| {
            if seq <= s.last_seq {
                return Err(());
            }
            let gap = (seq != s.last_seq + 1).then_some((s.last_seq + 1, seq));
            if let Some(gap) = gap {
                s.gaps.push(gap);
            }
            s.last_seq = seq;
            materialize(&mut s.entries, &path, &event.op, &event.value, &mut diff);
            Ok(gap)
        });
        match outcome {
            Err(()) => tracing::debug!(store, seq, "duplicate event dropped"),
            Ok(gap) => {
                if let Some((expected, got)) = gap {
                    tracing::warn!(store, expected, got, "gap in the store's events");
                    self.emit(Change::Gap {
                        store: store.to_owned(),
                        expected,
                        got,
                    });
                }
                for path in diff.removed {
                    self.emit(Change::Removed {
                        store: store.to_owned(),
                        path,
                        seq,
                    });
                }
                for (path, value) in diff.set {
                    self.emit(Change::Set {
                        store: store.to_owned(),
                        path,
                        value,
                        seq,
                    });
                }
            }
        }
    }
}

/// What an op did to a store's entries: subtrees removed (rendered paths), then entries set
/// (rendered path, value as [`MemoryEngine::entries`] shows it).
#[derive(Debug, Default)]
struct Diff {
    removed: Vec<String>,
    set: Vec<(String, Value)>,
}

impl Diff {
    fn upsert(&mut self, entries: &mut BTreeMap<String, Value>, path: String, value: &Value) {
        let stored = codec::wrap(value);
        self.set.push((path.clone(), codec::render(&stored)));
        entries.insert(path, stored);
    }

    /// Removes `path` itself (when `with_path`) and every entry below it.
    fn remove(&mut self, entries: &mut BTreeMap<String, Value>, path: &str, with_path: bool) {
        let prefix = format!("{path}/");
        let below: Vec<String> = entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut removed = !below.is_empty();
        for key in below {
            entries.remove(&key);
        }
        if with_path {
            removed |= entries.remove(path).is_some();
        }
        if removed {
            self.removed.push(path.to_owned());
        }
    }

    /// `path` replaced by `value`: an expandable map by its leaves, anything else as one entry.
    fn replace(&mut self, entries: &mut BTreeMap<String, Value>, path: &Path, value: &Value) {
        let rendered = path.render();
        match codec::expandable(value) {
            Some(map) => {
                self.remove(entries, &rendered, true);
                let mut leaves = Vec::new();
                codec::flatten(path, map, &mut leaves);
                for (leaf, value) in leaves {
                    self.upsert(entries, leaf, &value);
                }
            }
            None => {
                self.remove(entries, &rendered, false);
                self.upsert(entries, rendered, value);
            }
        }
    }
}

/// Applies one op of the log to a store's entries as the server's writer materializes it
/// (`value` is the event's: a set's or merge's own value, an increment's new total, a set's
/// whole members, a lease envelope, a file ref):
///
/// - `set`: the path's subtree is replaced; a map (not a typed value) becomes its leaves, an
///   empty map nothing; anything else, `null` included, one entry;
/// - `merge`: each key of the map is `set` under the path, except that a key whose value is
///   not a map keeps the entries below it;
/// - `delete`: the path and its subtree go; `release`: the path alone goes;
/// - `put_file`: the path's subtree is replaced by the file ref;
/// - `increment`, `add`, `remove`, `lease`, `renew`: the path's entry becomes the value, the
///   entries below it stay.
fn materialize(
    entries: &mut BTreeMap<String, Value>,
    path: &Path,
    op: &str,
    value: &Value,
    diff: &mut Diff,
) {
    let rendered = path.render();
    match op {
        "set" | "put_file" => diff.replace(entries, path, value),
        "merge" => {
            let Value::Object(map) = value else {
                tracing::warn!(path = %rendered, "a merge event without a map value; ignored");
                return;
            };
            for (key, child_value) in map {
                let Ok(child) = path.child(key.as_str()) else {
                    tracing::warn!(path = %rendered, "a merge with an empty key; skipped");
                    continue;
                };
                if codec::expandable(child_value).is_some() {
                    diff.replace(entries, &child, child_value);
                } else {
                    diff.upsert(entries, child.render(), child_value);
                }
            }
        }
        "delete" => diff.remove(entries, &rendered, true),
        "release" => {
            if entries.remove(&rendered).is_some() {
                diff.removed.push(rendered);
            }
        }
        "increment" | "add" | "remove" | "lease" | "renew" => {
            diff.upsert(entries, rendered, value);
        }
        other => tracing::warn!(path = %rendered, op = other, "an event of an unknown op; ignored"),
    }
}

#[async_trait]
impl SyncEngine for MemoryEngine {
    async fn last_store_seq(&self, store: &str) -> u64 {
        self.seq(store)
    }

    async fn set_status(&self, store: &str, status: StoreStatus) {
        self.with(store, |s| s.status = Some(status));
        self.emit(Change::Status {
            store: store.to_owned(),
            status,
        });
    }

    async fn set_capabilities(&self, store: &str, capabilities: &Capabilities) {
        self.with(store, |s| s.capabilities = Some(capabilities.clone()));
    }

    async fn handle_server_event(&self, store: &str, event: &ServerEvent) {
        self.apply(store, event);
    }

    async fn handle_snapshot(&self, store: &str, snapshot: &Snapshot) {
        self.with(store, |s| {
            s.entries = snapshot
                .entries
                .iter()
                .map(|(p, e)| (p.clone(), e.value.clone()))
                .collect();
            s.last_seq = snapshot.snapshot_seq;
        });
        self.emit(Change::Snapshot {
            store: store.to_owned(),
            seq: snapshot.snapshot_seq,
        });
    }

    async fn set_catch_up_complete(&self, store: &str, through_seq: u64) {
        self.with(store, |s| s.caught_up = Some(through_seq));
        self.emit(Change::CaughtUp {
            store: store.to_owned(),
            through_seq,
        });
    }

    async fn handle_server_reset(&self, store: &str, server_seq: u64) {
        self.with(store, |s| {
            s.entries.clear();
            s.last_seq = 0;
            s.caught_up = None;
        });
        self.emit(Change::Reset {
            store: store.to_owned(),
            server_seq,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, op: &str, path: &str, value: Value) -> ServerEvent {
        serde_json::from_value(json!({"store_seq": seq, "op": op, "path": path, "value": value}))
            .unwrap()
    }

    #[tokio::test]
    async fn events_apply_in_order_with_duplicates_dropped_and_gaps_reported() {
        let engine = MemoryEngine::new();
        let mut changes = engine.subscribe();
        engine
            .handle_server_event("s", &event(1, "set", "a", json!({"x": 1, "y": {"z": 2}})))
            .await;
        assert_eq!(
            engine.entries("s"),
            BTreeMap::from([("a/x".into(), json!(1)), ("a/y/z".into(), json!(2))])
        );
        engine
            .handle_server_event("s", &event(1, "set", "a", json!(9)))
            .await;
        assert_eq!(engine.get("s", "a/x"), Some(json!(1)), "duplicate dropped");
        engine
            .handle_server_event("s", &event(4, "merge", "a", json!({"w": 3})))
            .await;
        assert_eq!(engine.gaps("s"), [(2, 4)]);
        assert_eq!(engine.get("s", "a/w"), Some(json!(3)));
        assert_eq!(
            engine.get("s", "a/x"),
            Some(json!(1)),
            "merge keeps siblings"
        );
        engine
            .handle_server_event("s", &event(5, "delete", "a", Value::Null))
            .await;
        assert!(engine.entries("s").is_empty());
        engine
            .handle_server_event(
                "s",
                &event(6, "lease", "lock", json!({"_type": "lease", "token": 6})),
            )
            .await;
        assert_eq!(
            engine.get("s", "lock"),
            Some(json!({"_type": "lease", "token": 6}))
        );
        engine
            .handle_server_event("s", &event(7, "release", "lock", Value::Null))
            .await;
        assert_eq!(engine.get("s", "lock"), None);
        let mut gap_seen = false;
        while let Ok(change) = changes.try_recv() {
            gap_seen |= matches!(
                change,
                Change::Gap {
                    expected: 2,
                    got: 4,
                    ..
                }
            );
        }
        assert!(gap_seen);
    }

    #[tokio::test]
    async fn snapshots_unwrap_and_replace_and_resets_start_over() {
        let engine = MemoryEngine::new();
        engine
            .handle_server_event("s", &event(1, "set", "stale", json!(1)))
            .await;
        let snapshot: Snapshot = serde_json::from_value(json!({
            "snapshot_seq": 10,
            "entries": {"a": {"value": {"_scalar": 5}, "type": "integer"}, "m/k": {"value": {"_scalar": "v"}, "type": "string"}}
        }))
        .unwrap();
        engine.handle_snapshot("s", &snapshot).await;
        assert_eq!(
            engine.entries("s"),
            BTreeMap::from([("a".into(), json!(5)), ("m/k".into(), json!("v"))])
        );
        assert_eq!(engine.last_store_seq("s").await, 10);
        engine.handle_server_reset("s", 3).await;
        assert_eq!(engine.last_store_seq("s").await, 0);
        assert!(engine.entries("s").is_empty());
    }

    async fn replay(engine: &MemoryEngine, ops: &[(&str, &str, Value)]) {
        for (i, (op, path, value)) in ops.iter().enumerate() {
            engine
                .handle_server_event("s", &event(i as u64 + 1, op, path, value.clone()))
                .await;
        }
    }

    #[tokio::test]
    async fn ops_materialize_as_the_server_writer_does() {
        let engine = MemoryEngine::new();
        replay(
            &engine,
            &[
                ("set", "n", json!({"a": 1, "b": {"c": 2}})),
                ("set", "n", Value::Null),
                (
                    "set",
                    "m",
                    json!({"x": {"old": 1, "keep": 2}, "y": {"deep": 3}}),
                ),
                ("merge", "m", json!({"x": {"new": 4}, "y": 5, "z": null})),
                ("set", "t", json!({"_type": "decimal", "_typed": "1.50"})),
                (
                    "set",
                    "d",
                    json!({"at": {"_type": "datetime", "_typed": "2024-01-01T01:00:00+01:00"}}),
                ),
                ("set", "e", json!({})),
                ("set", "c/below", json!(1)),
                ("increment", "c", json!(7)),
                ("set", "l/below", json!(1)),
                (
                    "lease",
                    "l",
                    json!({"_type": "lease", "token": 12, "holder": null, "expires_at": 5}),
                ),
                ("release", "l", Value::Null),
                ("set", "f/below", json!(1)),
                (
                    "put_file",
                    "f",
                    json!({"_type": "file", "hash": "sha256:00"}),
                ),
            ],
        )
        .await;
        assert_eq!(
            serde_json::to_value(engine.entries("s")).unwrap(),
            json!({
                "n": null,
                "m/x/new": 4,
                "m/y": 5,
                "m/y/deep": 3,
                "m/z": null,
                "t": "1.50",
                "d/at": "2024-01-01T00:00:00Z",
                "c": 7,
                "c/below": 1,
                "l/below": 1,
                "f": {"_type": "file", "hash": "sha256:00"},
            })
        );
        assert_eq!(engine.get("s", "n"), Some(Value::Null));
        assert_eq!(engine.get("s", "e"), None);
        assert_eq!(engine.entries_with_seq("s"), (14, engine.entries("s")));
    }

    #[tokio::test]
    async fn a_snapshot_of_the_server_s_entries_gives_the_same_replica_as_the_events() {
        let live = MemoryEngine::new();
        replay(
            &live,
            &[
                (
                    "set",
                    "a",
                    json!({"b": null, "t": {"_type": "decimal", "_typed": "2"}}),
                ),
                ("add", "tags", json!(["x"])),
                ("set", "lock", json!({"_type": "lease", "token": 3})),
            ],
        )
        .await;
        let snapshot: Snapshot = serde_json::from_value(json!({
            "snapshot_seq": 3,
            "entries": {
                "a/b": {"value": {"_scalar": null}, "type": "null"},
                "a/t": {"value": {"_type": "decimal", "_typed": "2"}, "type": "map"},
                "tags": {"value": {"_scalar": ["x"]}, "type": "set"},
                "lock": {"value": {"_type": "lease", "token": 3}, "type": "lease"},
            }
        }))
        .unwrap();
        let from_snapshot = MemoryEngine::new();
        from_snapshot.handle_snapshot("s", &snapshot).await;
        assert_eq!(from_snapshot.entries("s"), live.entries("s"));
        assert_eq!(live.get("s", "a/t"), Some(json!("2")));
        assert_eq!(live.get("s", "a/b"), Some(Value::Null));
    }

    #[test]
    fn capabilities_from_a_join_reply() {
        let caps = Capabilities::from_join_reply(&json!({
            "store_seq": 4, "permissions": {"read": true, "write": false}, "scopes": ["entries:read"], "store_access": {"all": true}
        }));
        assert_eq!(caps.store_seq, 4);
        assert!(caps.can_read() && !caps.can_write());
        assert_eq!(caps.scopes, ["entries:read"]);
    }
}
