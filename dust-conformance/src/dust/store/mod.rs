//! One store's data and the write semantics of the real server's `Dust.Sync.Writer`, the
//! write validation of `DustWeb.StoreChannel`, its catch-up, and compaction.
//!
//! A write is planned first ([`StoreData::plan_write`], no mutation: every check and every
//! value the server stamps), then, once the planned row is durable, applied
//! ([`StoreData::apply`], infallible). Replaying the state file applies the same rows, so
//! a restart rebuilds exactly what was acknowledged.

mod apply;
mod compact;
mod history;
mod lease;
mod plan;
mod replay;
mod rollback;
mod validate;
mod wire;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::config::Limits;
use super::path::descendant_prefix;
use super::value::{Raise, wrap};

use apply::{list_delete, uniq_prepend};
use lease::LeaseState;
use replay::SeqBound;
use validate::{iodata, truthy, unsupported_type, validate_value};

pub(crate) use replay::BatchEnd;
pub(crate) use rollback::RollbackError;
pub(crate) use validate::{base64_engine, client_op_id_text, resolve_incoming_path};
pub(crate) use wire::{event_value, live_event, write_reply};

/// An op kind, as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Set,
    Delete,
    Merge,
    Increment,
    Add,
    Remove,
    PutFile,
    Lease,
    Renew,
    Release,
}

impl Op {
    /// The real server's `@valid_ops` (note: `put_file` is a valid `write` op too).
    pub(crate) fn parse(value: Option<&Value>) -> Option<Self> {
        Some(match value?.as_str()? {
            "set" => Self::Set,
            "delete" => Self::Delete,
            "merge" => Self::Merge,
            "increment" => Self::Increment,
            "add" => Self::Add,
            "remove" => Self::Remove,
            "put_file" => Self::PutFile,
            "lease" => Self::Lease,
            "renew" => Self::Renew,
            "release" => Self::Release,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Increment => "increment",
            Self::Add => "add",
            Self::Remove => "remove",
            Self::PutFile => "put_file",
            Self::Lease => "lease",
            Self::Renew => "renew",
            Self::Release => "release",
        }
    }

    pub(super) fn is_lease(self) -> bool {
        matches!(self, Self::Lease | Self::Renew | Self::Release)
    }
}

/// A committed op: a row of the real server's `store_ops`, with the value as the writer saw
/// it (after stamping: the lease envelope, the file ref).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpRow {
    pub(crate) seq: u64,
    pub(crate) op: Op,
    pub(crate) path: String,
    /// The op's value (`null` when it had none).
    pub(crate) value: Value,
    pub(crate) device_id: String,
    /// As the client sent it (the live event echoes it as is).
    pub(crate) client_op_id: Value,
    pub(crate) inserted_at: String,
    /// The TTL of a lease/renew (for the in-memory monotonic deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ttl_ms: Option<Value>,
    /// The blob size of a `put_file` upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) blob: Option<(String, u64)>,
}

impl OpRow {
    /// The op's value as stored (`encode_value`): `NULL` for null, else wrapped.
    pub(super) fn stored_value(&self) -> Option<Value> {
        (!self.value.is_null()).then(|| wrap(&self.value))
    }
}

/// A materialized entry (a row of `store_entries`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The stored (wrapped) value.
    pub(crate) value: Value,
    pub(crate) kind: String,
    /// The seq of the op that last wrote it (its revision).
    pub(crate) seq: u64,
}

/// The latest snapshot (older ones are deleted by compaction).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) seq: u64,
    /// path → `{"value": stored value, "type": type}`.
    pub(crate) data: Map<String, Value>,
    pub(crate) inserted_at: String,
}

/// A rejected write: the error reply, or a channel crash.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reject {
    Reply(Value),
    Crash(String),
}

impl Reject {
    pub(super) fn reason(reason: &str) -> Self {
        Self::Reply(json!({ "reason": reason }))
    }

    pub(super) fn raised(raise: Raise) -> Self {
        Self::Reply(json!({ "reason": raise.0 }))
    }
}

/// What a planned write does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Commit this row.
    Commit(Box<OpRow>),
    /// A release that matched nothing: reply `{"released": false}`, nothing committed.
    Noop,
}

/// The clock readings of one write (captured once, as the writer does).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) wall_us: i64,
    pub(crate) mono_ms: i64,
}

impl Now {
    pub(super) fn wall_ms(self) -> i64 {
        self.wall_us.div_euclid(1000)
    }

    pub(super) fn inserted_at(self) -> String {
        super::clock::iso8601(self.wall_us, 3)
    }
}

/// One store's data.
#[derive(Debug, Default)]
pub(crate) struct StoreData {
    pub(crate) ops: BTreeMap<u64, OpRow>,
    pub(crate) entries: BTreeMap<String, Entry>,
    pub(crate) snapshot: Option<Snapshot>,
    /// path → monotonic deadline (ms) of the leases acquired or renewed since the last
    /// restart; not persisted, like the writer's in-memory map.
    pub(crate) lease_deadlines: HashMap<String, f64>,
    /// Ops ever committed (the `op_count` of the store row; compaction does not lower it).
    pub(crate) op_count: u64,
}

/// The parameters of a write the channel hands over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCtx<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) archived: bool,
    pub(crate) limits: Limits,
    pub(crate) now: Now,
}

impl StoreData {
    /// `max(store_seq)` over ops and snapshots.
    pub(crate) fn current_seq(&self) -> u64 {
        let ops = self.ops.keys().next_back().copied().unwrap_or(0);
        let snap = self.snapshot.as_ref().map_or(0, |s| s.seq);
        ops.max(snap)
    }

    /// Whether `get_entry` finds something: the exact path or any descendant.
    pub(super) fn entry_exists(&self, rendered: &str) -> bool {
        self.entries.contains_key(rendered) || self.has_descendants(rendered)
    }

    pub(super) fn has_descendants(&self, rendered: &str) -> bool {
        let prefix = descendant_prefix(rendered);
        self.entries
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    pub(super) fn descendants(&self, rendered: &str) -> Vec<String> {
        let prefix = descendant_prefix(rendered);
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(super) fn delete_descendants(&mut self, rendered: &str) {
        for key in self.descendants(rendered) {
            self.entries.remove(&key);
        }
    }

    pub(super) fn upsert(&mut self, path: String, value: Value, kind: &str, seq: u64) {
        self.entries.insert(
            path,
            Entry {
                value,
                kind: kind.to_owned(),
                seq,
            },
        );
    }

    /// Files referenced by this store's entries: hash → size of the uploaded blob.
    pub(crate) fn file_usage(&self, blobs: &HashMap<String, u64>) -> u64 {
        let mut hashes: Vec<&str> = self
            .entries
            .values()
            .filter(|e| e.kind == "file")
            .filter_map(|e| e.value.get("hash").and_then(Value::as_str))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes
            .iter()
            .filter_map(|h| blobs.get(*h))
            .fold(0u64, |sum, size| sum.saturating_add(*size))
    }
}

#[cfg(test)]
pub(super) mod test_support {
    //! Writes through plan and apply, for the unit tests of the store's concerns.

    use super::*;

    pub(super) fn now() -> Now {
        Now {
            wall_us: 1_000_000_000,
            mono_ms: 0,
        }
    }

    pub(super) fn ctx() -> WriteCtx<'static> {
        WriteCtx {
            device_id: "dev",
            archived: false,
            limits: Limits::free(),
            now: now(),
        }
    }

    pub(super) fn write(data: &mut StoreData, params: Value) -> Result<Value, Reject> {
        let params = params.as_object().cloned().unwrap_or_default();
        match data.plan_write(&params, ctx())? {
            Plan::Commit(row) => {
                let materialized = data.apply(&row, Some(0));
                Ok(event_value(&row, materialized).unwrap_or(Value::Null))
            }
            Plan::Noop => Ok(json!({"released": false})),
        }
    }

    pub(super) fn stored(data: &StoreData) -> Vec<(String, Value)> {
        data.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }
}
