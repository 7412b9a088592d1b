//! [`MemoryEngine`]: the in-memory [`SyncEngine`], a replica materialized as the server's
//! writer materializes its ops.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::broadcast;

use super::cache::Cache;
use super::materialize::{Diff, Entries, Stored, detect_type, materialize};
use super::persist::{Persisted, Step, commit_of};
use super::{Capabilities, Change, ServerEvent, Snapshot, StoreStatus, SyncEngine};
use crate::replica::{Overlay, Subscribers};
use crate::write::{ClientOpId, Path, Rejection, WriteAck};

#[derive(Debug, Default)]
pub(crate) struct StoreState {
    /// Rendered path → the entry (its value in the server's storage envelope).
    pub(crate) entries: Entries,
    pub(crate) last_seq: u64,
    pub(crate) status: Option<StoreStatus>,
    pub(crate) capabilities: Option<Capabilities>,
    pub(crate) caught_up: Option<u64>,
    gaps: Vec<(u64, u64)>,
    /// The replica's subscribers ([`Replica::on`](crate::Replica::on)), served under the same
    /// lock as the entries change, so each sees the changes in seq order.
    pub(crate) subscribers: Subscribers,
    /// The pending optimistic writes ([`SyncedStore`](crate::SyncedStore)) over the entries.
    pub(crate) overlay: Overlay,
    /// Where the store stands with the engine's cache ([`MemoryEngine::with_cache`]).
    pub(crate) persisted: Persisted,
}

impl StoreState {
    /// After the entries changed by `diff` at `seq`: the overlay's writes it confirms leave,
    /// and subscribers get what changed for a reader.
    fn publish(
        &mut self,
        seq: u64,
        client_op_id: Option<&str>,
        touched: Option<&Path>,
        diff: &Diff,
    ) {
        if self.overlay.active() {
            let changes = self
                .overlay
                .confirmed(&self.entries, seq, client_op_id, touched);
            self.subscribers.dispatch_visible(seq, changes);
            self.subscribers.dispatch_confirmed(seq, diff.leaves());
        } else {
            self.subscribers.dispatch(seq, diff.leaves());
        }
    }

    /// A pending write left the overlay (confirmed, rejected, failed or dropped).
    fn settle(&mut self, client_op_id: &str) {
        let seq = self.last_seq;
        let changes = self.overlay.settle(client_op_id, &self.entries, seq);
        self.subscribers.dispatch_visible(seq, changes);
    }
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
    pub(super) stores: Arc<Mutex<HashMap<String, StoreState>>>,
    pub(super) changes: broadcast::Sender<Change>,
    /// Where the applied state is kept ([`with_cache`](Self::with_cache)); `None`: memory only.
    pub(super) cache: Option<Arc<dyn Cache>>,
}

/// How many changes the [`MemoryEngine::subscribe`] channel holds for a slow receiver.
pub(super) const CHANGES: usize = 4096;

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
    /// An empty engine, in memory only (nothing is kept when it is dropped; see
    /// [`with_cache`](Self::with_cache) and `open` for engines that start from a cache).
    pub fn new() -> Self {
        Self {
            stores: Arc::default(),
            changes: broadcast::channel(CHANGES).0,
            cache: None,
        }
    }

    pub(crate) fn with<R>(&self, store: &str, f: impl FnOnce(&mut StoreState) -> R) -> R {
        let mut stores = match self.stores.lock() {
            Ok(stores) => stores,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(stores.entry(store.to_owned()).or_default())
    }

    pub(super) fn emit(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The entry at a rendered path, as [`entries`](Self::entries) shows it (`None` when the
    /// store holds no entry there; a path whose value was set to `null` is `Some(Value::Null)`).
    pub fn get(&self, store: &str, path: &str) -> Option<Value> {
        self.with(store, |s| s.entries.get(path).map(Stored::rendered))
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
                .map(|(path, stored)| (path.clone(), stored.rendered()))
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

    /// Takes a pending optimistic write out of a store's overlay.
    pub(crate) fn settle_pending(&self, store: &str, client_op_id: &str) {
        self.with(store, |s| s.settle(client_op_id));
    }

    async fn apply(&self, store: &str, event: &ServerEvent) {
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
            materialize(
                &mut s.entries,
                &path,
                &event.op,
                &event.value,
                seq,
                &mut diff,
            );
            s.publish(seq, event.client_op_id.as_deref(), Some(&path), &diff);
            let commit = self
                .cache
                .is_some()
                .then(|| commit_of(&s.entries, seq, event.client_op_id.as_deref(), &diff));
            Ok((gap, commit))
        });
        match outcome {
            Err(()) => tracing::debug!(store, seq, "duplicate event dropped"),
            Ok((gap, commit)) => {
                if let Some(commit) = commit {
                    self.persist(store, Step::Commit(commit)).await;
                }
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

#[async_trait]
impl SyncEngine for MemoryEngine {
    async fn last_store_seq(&self, store: &str) -> u64 {
        self.seq(store)
    }

    async fn set_status(&self, store: &str, status: StoreStatus) {
        self.with(store, |s| {
            s.status = Some(status);
            s.persisted.catching_up = status == StoreStatus::Connected;
        });
        self.persist(store, Step::Flush).await;
        self.emit(Change::Status {
            store: store.to_owned(),
            status,
        });
    }

    async fn set_capabilities(&self, store: &str, capabilities: &Capabilities) {
        self.with(store, |s| s.capabilities = Some(capabilities.clone()));
    }

    async fn handle_server_event(&self, store: &str, event: &ServerEvent) {
        self.apply(store, event).await;
    }

    async fn handle_snapshot(&self, store: &str, snapshot: &Snapshot) {
        let seq = snapshot.snapshot_seq;
        let entries = snapshot
            .entries
            .iter()
            .map(|(path, entry)| {
                let stored = Stored {
                    value: entry.value.clone(),
                    kind: entry.kind.clone().unwrap_or_else(|| {
                        entry
                            .value
                            .get("_scalar")
                            .map_or("map", detect_type)
                            .to_owned()
                    }),
                    revision: seq,
                    pending: false,
                };
                (path.clone(), stored)
            })
            .collect();
        self.with(store, |s| {
            let mut diff = Diff::default();
            diff.replace_all(&mut s.entries, entries);
            s.last_seq = seq;
            s.publish(seq, None, None, &diff);
        });
        self.persist(store, Step::Replace).await;
        self.emit(Change::Snapshot {
            store: store.to_owned(),
            seq: snapshot.snapshot_seq,
        });
    }

    async fn set_catch_up_complete(&self, store: &str, through_seq: u64) {
        self.with(store, |s| {
            s.caught_up = Some(through_seq);
            s.persisted.catching_up = false;
        });
        self.persist(store, Step::Flush).await;
        self.repair(store).await;
        self.emit(Change::CaughtUp {
            store: store.to_owned(),
            through_seq,
        });
    }

    async fn handle_write_accepted(&self, store: &str, client_op_id: &ClientOpId, ack: &WriteAck) {
        self.with(store, |s| match ack.store_seq() {
            Some(seq) if seq > s.last_seq => s.overlay.acked(client_op_id.as_str(), seq),
            _ => s.settle(client_op_id.as_str()),
        });
    }

    async fn handle_write_rejected(
        &self,
        store: &str,
        client_op_id: &ClientOpId,
        _rejection: &Rejection,
    ) {
        self.settle_pending(store, client_op_id.as_str());
    }

    async fn handle_server_reset(&self, store: &str, server_seq: u64) {
        self.with(store, |s| {
            let mut diff = Diff::default();
            diff.clear(&mut s.entries);
            s.last_seq = 0;
            s.caught_up = None;
            s.publish(0, None, None, &diff);
        });
        self.persist(store, Step::Forget).await;
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
