//! The [`SyncEngine`] trait (the seed's `Dust.SyncEngine` surface) and [`MemoryEngine`], an
//! in-memory engine for examples, tests and small apps.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use crate::write::{ClientOpId, Rejection, WriteAck};

mod cache;
mod codec;
mod materialize;
mod memory;
mod persist;

pub(crate) use materialize::{Entries, Stored, materialize_into};

pub use cache::{Cache, CacheError, CachedEntry, CachedStore, Commit, MemoryCache};
pub use memory::MemoryEngine;
pub use persist::{CATCH_UP_BATCH, MAX_UNPERSISTED_EVENTS};

/// A store's connection status, as the engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreStatus {
    /// Joined: events flow, writes go out.
    Connected,
    /// Not joined; the connection is working on it.
    Reconnecting,
    /// The join was refused for good (`unauthorized`, `store_not_allowed`, `missing_scope`) or
    /// the connection stopped; nothing happens until asked.
    Failed,
}

impl StoreStatus {
    /// `connected`, `reconnecting` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::Failed => "failed",
        }
    }
}

/// What the join reply says the device may do in the store.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The server's `store_seq` at the join.
    pub store_seq: u64,
    /// `{"read": bool, "write": bool}`.
    pub permissions: Value,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// The token's store access.
    pub store_access: Value,
}

impl Capabilities {
    /// Reads them from a join reply (missing parts are empty, as the seed reads them).
    pub fn from_join_reply(reply: &Value) -> Self {
        Self {
            store_seq: reply.get("store_seq").and_then(Value::as_u64).unwrap_or(0),
            permissions: reply
                .get("permissions")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
            scopes: reply
                .get("scopes")
                .and_then(Value::as_array)
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            store_access: reply
                .get("store_access")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
        }
    }

    /// Whether `permissions.write` is true.
    pub fn can_write(&self) -> bool {
        self.permissions
            .get("write")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether `permissions.read` is true.
    pub fn can_read(&self) -> bool {
        self.permissions
            .get("read")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// One op of a store's log, as the server pushes it (`event`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct ServerEvent {
    /// Its sequence number in the store.
    pub store_seq: u64,
    /// The op (`set`, `delete`, ..., `put_file`).
    pub op: String,
    /// The rendered path.
    pub path: String,
    /// The path's segments.
    #[serde(default)]
    pub path_segments: Option<Vec<String>>,
    /// The materialized value (an increment's new total, a set's whole content, a lease
    /// envelope, a file ref; `null` for delete and release).
    #[serde(default)]
    pub value: Value,
    /// The device that wrote it.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The writer's idempotency key.
    #[serde(default)]
    pub client_op_id: Option<String>,
}

/// A snapshot of a store (`snapshot`), sent in catch-up when the device is behind the latest
/// compaction.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The seq the snapshot is at.
    pub snapshot_seq: u64,
    /// Every entry by rendered path, values in the storage envelope (`{"_scalar": v}`).
    #[serde(default)]
    pub entries: BTreeMap<String, SnapshotEntry>,
}

/// One entry of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct SnapshotEntry {
    /// The stored value, in its envelope.
    pub value: Value,
    /// The value's type (`string`, `integer`, `map`, `lease`, `file`, ...).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// A stored value (a snapshot entry's `value`) as the server lists it: `{"_scalar": v}` → `v`,
/// a `decimal` / `datetime` typed value → the string the server renders it as, maps (file refs,
/// leases, other typed values) as they are. See [`MemoryEngine::entries`].
pub fn unwrap_stored(value: &Value) -> Value {
    codec::render(value)
}

/// What the connection tells the app's local state, per store: the seed's `Dust.SyncEngine`.
///
/// Every call comes from the store's own task, in the order things happened, never from the
/// socket task: a slow engine delays its store, nothing else.
#[async_trait]
pub trait SyncEngine: Send + Sync + 'static {
    /// The last seq the engine has applied (0 if none); sent as `last_store_seq` on every join.
    async fn last_store_seq(&self, store: &str) -> u64;

    /// The store's status changed.
    async fn set_status(&self, _store: &str, _status: StoreStatus) {}

    /// The join reply's capabilities (and the server's `store_seq`).
    async fn set_capabilities(&self, _store: &str, _capabilities: &Capabilities) {}

    /// An op of the store's log.
    async fn handle_server_event(&self, store: &str, event: &ServerEvent);

    /// A snapshot: replaces the store's contents.
    async fn handle_snapshot(&self, store: &str, snapshot: &Snapshot);

    /// Catch-up after a join is complete up to `through_seq`.
    async fn set_catch_up_complete(&self, _store: &str, _through_seq: u64) {}

    /// A write of this device was accepted.
    async fn handle_write_accepted(
        &self,
        _store: &str,
        _client_op_id: &ClientOpId,
        _ack: &WriteAck,
    ) {
    }

    /// A write of this device was rejected.
    async fn handle_write_rejected(
        &self,
        _store: &str,
        _client_op_id: &ClientOpId,
        _rejection: &Rejection,
    ) {
    }

    /// The server's seq went below the engine's (the server was reset): forget the store, so
    /// that `last_store_seq` is 0 and the next join syncs it from scratch.
    async fn handle_server_reset(&self, store: &str, server_seq: u64);
}

/// A change in a [`MemoryEngine`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// A path got a value (as [`MemoryEngine::entries`] shows it).
    Set {
        /// The store.
        store: String,
        /// The rendered path.
        path: String,
        /// The value.
        value: Value,
        /// The seq of the op.
        seq: u64,
    },
    /// The entries at a path and below it were removed (by a `release`: the path's entry
    /// alone). A `set` that replaces a subtree reports this, then the new entries.
    Removed {
        /// The store.
        store: String,
        /// The rendered path.
        path: String,
        /// The seq of the op.
        seq: u64,
    },
    /// The store's contents were replaced by a snapshot.
    Snapshot {
        /// The store.
        store: String,
        /// The snapshot's seq.
        seq: u64,
    },
    /// Events were missing between `expected` and `got`.
    Gap {
        /// The store.
        store: String,
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// The server was reset; the store starts over from 0.
    Reset {
        /// The store.
        store: String,
        /// The server's seq.
        server_seq: u64,
    },
    /// The store's status changed.
    Status {
        /// The store.
        store: String,
        /// The status.
        status: StoreStatus,
    },
    /// The engine's [`Cache`] failed to keep the store's state (see
    /// [`MemoryEngine::with_cache`]): the engine goes on from memory, the cache stays behind at
    /// an earlier consistent state until [`CacheRepaired`](Self::CacheRepaired).
    CacheFailed {
        /// The store.
        store: String,
        /// The engine's seq when it failed.
        seq: u64,
        /// What failed.
        error: String,
    },
    /// The cache holds the store's state again, at `seq`, after a [`CacheFailed`](Self::CacheFailed).
    CacheRepaired {
        /// The store.
        store: String,
        /// The seq the cache is at.
        seq: u64,
    },
    /// Catch-up completed.
    CaughtUp {
        /// The store.
        store: String,
        /// Through this seq.
        through_seq: u64,
    },
}
