//! One store's data and the write semantics of the real server's `Dust.Sync.Writer`, the
//! write validation of `DustWeb.StoreChannel`, its catch-up, and compaction.
//!
//! A write is planned first ([`StoreData::plan_write`], no mutation: every check and every
//! value the server stamps), then, once the planned row is durable, applied
//! ([`StoreData::apply`], infallible). Replaying the state file applies the same rows, so
//! a restart rebuilds exactly what was acknowledged.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};

use super::config::Limits;
use super::path::{self, descendant_prefix};
use super::value::{
    self, Raise, add, detect_type, is_expandable, unwrap, unwrap_opt, unwrap_set, wrap,
};

/// The size of a catch-up batch.
pub(crate) const CATCH_UP_BATCH: usize = 1000;

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

    fn is_lease(self) -> bool {
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
    fn stored_value(&self) -> Option<Value> {
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
    fn reason(reason: &str) -> Self {
        Self::Reply(json!({ "reason": reason }))
    }

    fn raised(raise: Raise) -> Self {
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
    fn wall_ms(self) -> i64 {
        self.wall_us.div_euclid(1000)
    }

    fn inserted_at(self) -> String {
        super::clock::iso8601(self.wall_us, 3)
    }
}

/// The state of a lease key.
enum LeaseState<'a> {
    Absent,
    Occupied,
    Live(&'a Value),
    Expired(&'a Value),
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
    fn entry_exists(&self, rendered: &str) -> bool {
        self.entries.contains_key(rendered) || self.has_descendants(rendered)
    }

    fn has_descendants(&self, rendered: &str) -> bool {
        let prefix = descendant_prefix(rendered);
        self.entries
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    fn descendants(&self, rendered: &str) -> Vec<String> {
        let prefix = descendant_prefix(rendered);
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn delete_descendants(&mut self, rendered: &str) {
        for key in self.descendants(rendered) {
            self.entries.remove(&key);
        }
    }

    fn upsert(&mut self, path: String, value: Value, kind: &str, seq: u64) {
        self.entries.insert(
            path,
            Entry {
                value,
                kind: kind.to_owned(),
                seq,
            },
        );
    }

    fn read_lease(&self, key: &str, now: Now) -> LeaseState<'_> {
        match self.entries.get(key) {
            None => LeaseState::Absent,
            Some(entry) if entry.kind == "lease" => {
                let expired = match self.lease_deadlines.get(key) {
                    Some(deadline) => (now.mono_ms as f64) >= *deadline,
                    // After a restart: the persisted wall-clock expiry, when it is an integer.
                    None => match entry.value.get("expires_at") {
                        Some(Value::Number(n)) if !n.is_f64() => {
                            n.as_i64().is_some_and(|exp| exp <= now.wall_ms())
                        }
                        _ => false,
                    },
                };
                if expired {
                    LeaseState::Expired(&entry.value)
                } else {
                    LeaseState::Live(&entry.value)
                }
            }
            Some(_) => LeaseState::Occupied,
        }
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

    /// Plans a `write` push (everything after authorization and the rate limit).
    pub(crate) fn plan_write(
        &self,
        params: &Map<String, Value>,
        ctx: WriteCtx<'_>,
    ) -> Result<Plan, Reject> {
        let Some(op) = Op::parse(params.get("op")) else {
            return Err(Reject::reason("invalid op"));
        };
        if ctx.archived {
            return Err(Reject::reason("store_archived"));
        }
        let path = resolve_incoming_path(params).map_err(Reject::reason)?;
        let value = params.get("value").cloned().unwrap_or(Value::Null);
        validate_value(op, &value)?;
        self.check_key_limit(op, &path, params, ctx.limits)?;

        // Dust.Sync.write/2: the transport-agnostic precondition gates.
        let if_match = params.get("if_match").filter(|v| truthy(v));
        let value_expands = is_expandable(&value);
        if if_match.is_some() {
            if !matches!(op, Op::Set | Op::Delete) {
                return Err(Reject::Reply(
                    json!({"reason": "if_match_unsupported_op", "op": params.get("op")}),
                ));
            }
            if op == Op::Set && value_expands {
                return Err(Reject::reason("if_match_multi_leaf"));
            }
        }
        let if_absent = params.get("if_absent") == Some(&Value::Bool(true));
        if if_absent {
            if if_match.is_some() {
                return Err(Reject::reason("invalid_precondition"));
            }
            if op != Op::Set {
                return Err(Reject::Reply(
                    json!({"reason": "if_absent_unsupported_op", "op": params.get("op")}),
                ));
            }
            if value_expands {
                return Err(Reject::reason("if_absent_multi_leaf"));
            }
        }

        // Dust.Sync.Writer: inside the transaction.
        let seq = self.current_seq() + 1;
        let client_op_id = params.get("client_op_id").cloned().unwrap_or(Value::Null);
        let row = |value: Value, ttl_ms: Option<Value>| OpRow {
            seq,
            op,
            path: path.clone(),
            value,
            device_id: ctx.device_id.to_owned(),
            client_op_id: client_op_id.clone(),
            inserted_at: ctx.now.inserted_at(),
            ttl_ms,
            blob: None,
        };
        if op.is_lease() {
            return self.plan_lease(op, &path, params, ctx.now, seq, row);
        }
        if let Some(expected) = if_match {
            let current = self.entries.get(&path).map(|e| e.seq);
            match expected {
                Value::Number(n) if !n.is_f64() => {
                    if n.as_u64() != current {
                        return Err(Reject::reason("conflict"));
                    }
                }
                other => return Err(Reject::raised(Raise::case_clause(other))),
            }
        }
        if if_absent && self.entries.contains_key(&path) {
            return Err(Reject::reason("exists"));
        }
        // Only a fence with a string key and an integer token is considered.
        if let Some(Value::Object(fence)) = params.get("fence")
            && let (Some(Value::String(key)), Some(Value::Number(token))) =
                (fence.get("key"), fence.get("token"))
            && !token.is_f64()
        {
            let held = match self.read_lease(key, ctx.now) {
                LeaseState::Live(envelope) => {
                    envelope.get("token") == Some(&Value::Number(token.clone()))
                }
                _ => false,
            };
            if !held {
                return Err(Reject::reason("fenced"));
            }
        }
        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
        self.check_apply(op, &path, &value)?;
        Ok(Plan::Commit(Box::new(row(value, None))))
    }

    fn plan_lease(
        &self,
        op: Op,
        path: &str,
        params: &Map<String, Value>,
        now: Now,
        seq: u64,
        row: impl Fn(Value, Option<Value>) -> OpRow,
    ) -> Result<Plan, Reject> {
        let ttl = params
            .get("ttl_ms")
            .filter(|v| truthy(v))
            .cloned()
            .unwrap_or_else(|| json!(30_000));
        let token = params.get("token").filter(|v| !v.is_null());
        let client_op_id = params.get("client_op_id").cloned().unwrap_or(Value::Null);
        let expires_at =
            || add(&json!(now.wall_ms()), &ttl).ok_or_else(|| Reject::raised(Raise::arithmetic()));
        let envelope = match op {
            Op::Lease => match self.read_lease(path, now) {
                LeaseState::Absent | LeaseState::Expired(_) => json!({
                    "_type": "lease",
                    "holder": params.get("holder").cloned().unwrap_or(Value::Null),
                    "token": seq,
                    "expires_at": expires_at()?,
                }),
                LeaseState::Live(_) => return Err(Reject::reason("held")),
                LeaseState::Occupied => return Err(Reject::reason("occupied")),
            },
            Op::Renew => {
                let Some(token) = token else {
                    return Err(Reject::reason(":invalid_lease_op"));
                };
                match self.read_lease(path, now) {
                    LeaseState::Live(envelope) if envelope.get("token") == Some(token) => {
                        let mut renewed = envelope.clone();
                        if let Value::Object(map) = &mut renewed {
                            map.insert("expires_at".to_owned(), expires_at()?);
                        }
                        renewed
                    }
                    _ => return Err(Reject::reason("not_held")),
                }
            }
            _ => {
                let Some(token) = token else {
                    return Err(Reject::reason(":invalid_lease_op"));
                };
                match self.read_lease(path, now) {
                    LeaseState::Live(envelope) | LeaseState::Expired(envelope)
                        if envelope.get("token") == Some(token) =>
                    {
                        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
                        return Ok(Plan::Commit(Box::new(row(Value::Null, None))));
                    }
                    _ => return Ok(Plan::Noop),
                }
            }
        };
        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
        Ok(Plan::Commit(Box::new(row(envelope, Some(ttl)))))
    }

    /// The errors `apply_to_entries` raises inside the transaction (rescued into a reason).
    fn check_apply(&self, op: Op, path: &str, value: &Value) -> Result<(), Reject> {
        match op {
            Op::Merge => {
                if let Value::Object(map) = value {
                    let segments = path::parse_rendered(path).unwrap_or_default();
                    for (key, child) in map {
                        if key.is_empty() {
                            return Err(Reject::raised(Raise::empty_segment_match()));
                        }
                        if let Value::Object(inner) = child
                            && is_expandable(child)
                        {
                            let mut child_segments = segments.clone();
                            child_segments.push(key.clone());
                            value::flatten(&child_segments, inner).map_err(Reject::raised)?;
                        }
                    }
                }
                Ok(())
            }
            Op::Increment => {
                let current = match self.entries.get(path) {
                    Some(entry) => unwrap(&entry.value).map_err(Reject::raised)?,
                    None => Value::Null,
                };
                let current = if truthy(&current) { current } else { json!(0) };
                add(&current, value)
                    .map(|_| ())
                    .ok_or_else(|| Reject::raised(Raise::arithmetic()))
            }
            Op::PutFile if !value.is_object() => Err(Reject::raised(Raise::function_clause(
                "Dust.Sync.Writer",
                "apply_to_entries",
                3,
            ))),
            _ => Ok(()),
        }
    }

    /// `check_billing_limits`: the key count a `set`/`merge` would reach.
    fn check_key_limit(
        &self,
        op: Op,
        path: &str,
        params: &Map<String, Value>,
        limits: Limits,
    ) -> Result<(), Reject> {
        let new_keys = match (op, params.get("value")) {
            (Op::Set, Some(value)) => {
                if let Value::Object(map) = value
                    && is_expandable(value)
                {
                    let segments = path::parse_rendered(path).unwrap_or_default();
                    // Raised in the channel process itself: the channel crashes.
                    let leaves = value::flatten(&segments, map).map_err(|r| Reject::Crash(r.0))?;
                    leaves.iter().filter(|(p, _)| !self.entry_exists(p)).count()
                } else {
                    usize::from(!self.entry_exists(path))
                }
            }
            (Op::Merge, Some(Value::Object(map))) => {
                let segments = path::parse_rendered(path).ok();
                map.keys()
                    .filter(|key| {
                        let child = segments.as_ref().and_then(|s| {
                            if key.is_empty() {
                                return None;
                            }
                            let mut child = s.clone();
                            child.push((*key).clone());
                            path::render(&child).ok()
                        });
                        child.is_none_or(|c| !self.entry_exists(&c))
                    })
                    .count()
            }
            _ => 0,
        };
        let new_keys = new_keys as u64;
        let current = self.entries.len() as u64;
        if new_keys > 0 && current.saturating_add(new_keys) > limits.keys_per_store {
            return Err(Reject::Reply(json!({
                "reason": "limit_exceeded",
                "dimension": "keys",
                "current": current,
                "limit": limits.keys_per_store,
            })));
        }
        Ok(())
    }

    /// Plans a `put_file` push (after authorization and the rate limit).
    pub(crate) fn plan_put_file(
        &self,
        params: &Map<String, Value>,
        ctx: WriteCtx<'_>,
        blobs: &HashMap<String, u64>,
    ) -> Result<OpRow, Reject> {
        if ctx.archived {
            return Err(Reject::reason("store_archived"));
        }
        let path = match params.get("path") {
            None | Some(Value::Null) => return Err(Reject::reason("missing_path")),
            Some(Value::String(p)) => {
                path::parse_rendered(p).map_err(|e| Reject::reason(e.reason()))?;
                p.clone()
            }
            Some(_) => return Err(Reject::reason("invalid_path")),
        };
        let Some(Value::String(content)) = params.get("content") else {
            // Base.decode64/1 has no clause for it: the channel crashes.
            return Err(Reject::Crash(
                Raise::function_clause("Base", "decode64", 1).0,
            ));
        };
        let content = base64_engine()
            .decode(content.as_bytes())
            .map_err(|_| Reject::reason("invalid_base64"))?;
        let size = content.len() as u64;
        let current = self.file_usage(blobs);
        if current.saturating_add(size) > ctx.limits.file_storage_bytes {
            return Err(Reject::Reply(json!({
                "reason": "limit_exceeded",
                "dimension": "file_storage",
                "current": current,
                "limit": ctx.limits.file_storage_bytes,
            })));
        }
        let hash = format!(
            "sha256:{}",
            super::sha256::hex(&super::sha256::digest(&content))
        );
        let content_type = params
            .get("content_type")
            .filter(|v| truthy(v))
            .cloned()
            .unwrap_or_else(|| json!("application/octet-stream"));
        let reference = json!({
            "_type": "file",
            "hash": hash,
            "size": size,
            "content_type": content_type,
            "filename": params.get("filename").cloned().unwrap_or(Value::Null),
            "uploaded_at": super::clock::iso8601(ctx.now.wall_us, 6),
        });
        let client_op_id = params.get("client_op_id").cloned().unwrap_or(Value::Null);
        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
        Ok(OpRow {
            seq: self.current_seq() + 1,
            op: Op::PutFile,
            path,
            value: reference,
            device_id: ctx.device_id.to_owned(),
            client_op_id,
            inserted_at: ctx.now.inserted_at(),
            ttl_ms: None,
            blob: Some((hash, size)),
        })
    }

    /// Applies a committed row (`apply_to_entries`); returns the materialized value.
    pub(crate) fn apply(&mut self, row: &OpRow, mono_ms: Option<i64>) -> Value {
        let seq = row.seq;
        let path = row.path.clone();
        let materialized = match row.op {
            Op::Set => {
                self.delete_descendants(&path);
                match &row.value {
                    Value::Object(map) if is_expandable(&row.value) => {
                        let segments = path::parse_rendered(&path).unwrap_or_default();
                        for (leaf, v) in value::flatten(&segments, map).unwrap_or_default() {
                            self.upsert(leaf, wrap(&v), detect_type(&v), seq);
                        }
                        self.entries.remove(&path);
                    }
                    other => self.upsert(path.clone(), wrap(other), detect_type(other), seq),
                }
                row.value.clone()
            }
            Op::Delete => {
                self.entries.remove(&path);
                self.delete_descendants(&path);
                Value::Null
            }
            Op::Merge => {
                if let Value::Object(map) = &row.value {
                    let segments = path::parse_rendered(&path).unwrap_or_default();
                    for (key, v) in map {
                        let mut child_segments = segments.clone();
                        child_segments.push(key.clone());
                        let Ok(child) = path::render(&child_segments) else {
                            continue;
                        };
                        match v {
                            Value::Object(inner) if is_expandable(v) => {
                                self.delete_descendants(&child);
                                self.entries.remove(&child);
                                for (leaf, lv) in
                                    value::flatten(&child_segments, inner).unwrap_or_default()
                                {
                                    self.upsert(leaf, wrap(&lv), detect_type(&lv), seq);
                                }
                            }
                            other => self.upsert(child, wrap(other), detect_type(other), seq),
                        }
                    }
                }
                row.value.clone()
            }
            Op::Increment => {
                let current = self
                    .entries
                    .get(&path)
                    .and_then(|e| unwrap(&e.value).ok())
                    .filter(truthy)
                    .unwrap_or_else(|| json!(0));
                let total = add(&current, &row.value).unwrap_or_else(|| row.value.clone());
                self.upsert(path, wrap(&total), "counter", seq);
                total
            }
            Op::Add | Op::Remove => {
                let current = unwrap_set(self.entries.get(&path).map(|e| &e.value));
                let set = if row.op == Op::Add {
                    uniq_prepend(&row.value, current)
                } else {
                    list_delete(current, &row.value)
                };
                let set = Value::Array(set);
                self.upsert(path, wrap(&set), "set", seq);
                set
            }
            Op::PutFile => {
                self.delete_descendants(&path);
                self.upsert(path, row.value.clone(), "file", seq);
                row.value.clone()
            }
            Op::Lease | Op::Renew => {
                self.upsert(path.clone(), row.value.clone(), "lease", seq);
                if let (Some(mono), Some(ttl)) =
                    (mono_ms, row.ttl_ms.as_ref().and_then(Value::as_f64))
                {
                    self.lease_deadlines.insert(path, mono as f64 + ttl);
                }
                row.value.clone()
            }
            Op::Release => {
                self.entries.remove(&path);
                if mono_ms.is_some() {
                    self.lease_deadlines.remove(&path);
                }
                Value::Null
            }
        };
        self.ops.insert(seq, row.clone());
        self.op_count += 1;
        materialized
    }

    /// Compacts the op log into a snapshot of the entries at the last op's seq; `None` when
    /// there is no op to compact.
    pub(crate) fn compact(&mut self, inserted_at: String) -> Option<u64> {
        let max = *self.ops.keys().next_back()?;
        let data = self
            .entries
            .iter()
            .map(|(path, e)| (path.clone(), json!({"value": e.value, "type": e.kind})))
            .collect();
        self.snapshot = Some(Snapshot {
            seq: max,
            data,
            inserted_at,
        });
        self.ops.clear();
        Some(max)
    }

    /// The `snapshot` push a client behind the latest snapshot gets first, if any.
    pub(crate) fn snapshot_for(&self, last_seq: &Value) -> Option<(u64, Value)> {
        let snapshot = self.snapshot.as_ref()?;
        // Erlang term order: only a number can be below the snapshot's seq.
        let behind = match SeqBound::parse(last_seq) {
            Ok(SeqBound::Number(_, Some(last))) if last_seq.is_number() => {
                i128::from(snapshot.seq) > last
            }
            Ok(SeqBound::Number(last, None)) if last_seq.is_number() => {
                (snapshot.seq as f64) > last
            }
            _ => false,
        };
        behind.then(|| {
            (
                snapshot.seq,
                json!({"snapshot_seq": snapshot.seq, "entries": snapshot.data}),
            )
        })
    }

    /// One catch-up batch after `last_seq` (`do_catch_up`): the events (up to 1000), then
    /// either `Continue(last sent seq)` or `Complete(through_seq)`. `Err` carries the events
    /// pushed before the server would have crashed.
    pub(crate) fn catch_up_batch(
        &self,
        last_seq: &Value,
    ) -> Result<(Vec<Value>, BatchEnd), (Vec<Value>, String)> {
        let bound = SeqBound::parse(last_seq).map_err(|r| (Vec::new(), r.0))?;
        let ops: Vec<&OpRow> = self
            .ops
            .values()
            .filter(|op| bound.below(op.seq))
            .take(CATCH_UP_BATCH)
            .collect();
        if ops.is_empty() {
            return Ok((Vec::new(), BatchEnd::Complete(last_seq.clone())));
        }
        let mut events = Vec::with_capacity(ops.len());
        let mut state = match self.seed_running_state(&bound, &ops) {
            Ok(state) => state,
            Err(raise) => return Err((events, raise.0)),
        };
        for op in &ops {
            match materialize_catch_up_value(op, &mut state) {
                Ok(value) => events.push(json!({
                    "store_seq": op.seq,
                    "op": op.op.as_str(),
                    "path": op.path,
                    "path_segments": path::parse_rendered(&op.path).map_or(Value::Null, |s| json!(s)),
                    "value": value,
                    "device_id": op.device_id,
                    "client_op_id": client_op_id_text(&op.client_op_id).unwrap_or_default(),
                })),
                Err(raise) => return Err((events, raise.0)),
            }
        }
        let last = ops.last().map_or(0, |op| op.seq);
        let end = if ops.len() >= CATCH_UP_BATCH {
            BatchEnd::Continue(last)
        } else {
            BatchEnd::Complete(json!(last))
        };
        Ok((events, end))
    }

    fn seed_running_state(
        &self,
        bound: &SeqBound,
        ops: &[&OpRow],
    ) -> Result<HashMap<String, Value>, Raise> {
        let mut needs: Vec<&str> = ops
            .iter()
            .filter(|op| matches!(op.op, Op::Increment | Op::Add | Op::Remove))
            .map(|op| op.path.as_str())
            .collect();
        needs.sort_unstable();
        needs.dedup();
        if needs.is_empty() {
            return Ok(HashMap::new());
        }
        let state = self.historical_state(bound)?;
        needs
            .into_iter()
            .filter_map(|p| state.get(p).map(|v| (p, v)))
            .map(|(p, v)| Ok((p.to_owned(), unwrap(v)?)))
            .collect()
    }

    /// `Rollback.compute_historical_state/2`: the state at `to_seq`, path → stored value,
    /// replayed with the rollback module's simplified op semantics.
    fn historical_state(&self, to: &SeqBound) -> Result<BTreeMap<String, Value>, Raise> {
        let (mut state, start) = match &self.snapshot {
            Some(snap) if to.at_least(snap.seq) => (
                snap.data
                    .iter()
                    .map(|(p, v)| (p.clone(), v.get("value").cloned().unwrap_or(Value::Null)))
                    .collect(),
                snap.seq,
            ),
            _ => (BTreeMap::new(), 0),
        };
        for op in self.ops.range(start + 1..).map(|(_, op)| op) {
            if !to.at_least(op.seq) {
                break;
            }
            apply_op_to_state(&mut state, op)?;
        }
        Ok(state)
    }
}

/// How a catch-up batch ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BatchEnd {
    /// A full batch: continue after this seq.
    Continue(u64),
    /// `catch_up_complete` with this `through_seq`.
    Complete(Value),
}

/// `last_store_seq` as SQLite compares it with `store_seq` (an INTEGER column) once bound by
/// Exqlite: numbers numerically; text (booleans are bound as `"true"`/`"false"`, lists as
/// iodata) numerically when it looks like a number, else above every integer; `NULL` never.
#[derive(Debug, Clone, PartialEq)]
enum SeqBound {
    Null,
    Number(f64, Option<i128>),
    AboveAll,
}

impl SeqBound {
    fn parse(value: &Value) -> Result<Self, Raise> {
        Ok(match value {
            Value::Null => Self::Null,
            Value::Number(n) => Self::number(n),
            Value::Bool(b) => Self::text(&b.to_string()),
            Value::String(s) => Self::text(s),
            Value::Array(_) => Self::text(&iodata(value)?),
            Value::Object(_) => return Err(unsupported_type(value)),
        })
    }

    fn number(n: &Number) -> Self {
        let exact = if n.is_f64() {
            None
        } else {
            n.as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
        };
        Self::Number(n.as_f64().unwrap_or(0.0), exact)
    }

    fn text(s: &str) -> Self {
        let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
        let numeric = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            && t.bytes().any(|b| b.is_ascii_digit());
        match t.parse::<f64>() {
            Ok(f) if numeric => match t.parse::<i128>() {
                Ok(i) => Self::Number(f, Some(i)),
                Err(_) => Self::Number(f, None),
            },
            _ => Self::AboveAll,
        }
    }

    /// `store_seq > bound`.
    fn below(&self, seq: u64) -> bool {
        match self {
            Self::Null | Self::AboveAll => false,
            Self::Number(_, Some(i)) => i128::from(seq) > *i,
            Self::Number(f, None) => (seq as f64) > *f,
        }
    }

    /// `store_seq <= bound`.
    fn at_least(&self, seq: u64) -> bool {
        match self {
            Self::Null => false,
            Self::AboveAll => true,
            Self::Number(_, Some(i)) => i128::from(seq) <= *i,
            Self::Number(f, None) => (seq as f64) <= *f,
        }
    }
}

/// `IO.iodata_to_binary/1` of a JSON list (bytes and strings, nested), as Exqlite binds it.
fn iodata(value: &Value) -> Result<String, Raise> {
    fn walk(value: &Value, out: &mut Vec<u8>) -> bool {
        match value {
            Value::Array(items) => items.iter().all(|i| walk(i, out)),
            Value::String(s) => {
                out.extend_from_slice(s.as_bytes());
                true
            }
            Value::Number(n) => match n.as_u64().and_then(|b| u8::try_from(b).ok()) {
                Some(b) => {
                    out.push(b);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
    let mut out = Vec::new();
    if walk(value, &mut out) {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(Raise(format!(
            "%ArgumentError{{message: {}}}",
            value::inspect(&json!(
                "errors were found at the given arguments:\n\n  * 1st argument: not an iodata term\n"
            ))
        )))
    }
}

fn unsupported_type(value: &Value) -> Raise {
    let message = format!("unsupported type: {}", value::inspect(value));
    Raise(format!(
        "%ArgumentError{{message: {}}}",
        value::inspect(&json!(message))
    ))
}

/// The `client_op_id` as the TEXT column of `store_ops` keeps it (what catch-up events
/// carry); `Err` where inserting the op fails.
pub(crate) fn client_op_id_text(value: &Value) -> Result<String, Raise> {
    match value {
        Value::Null => Err(Raise(
            r#"%MatchError{term: {:error, "NOT NULL constraint failed: store_ops.client_op_id"}}"#
                .to_owned(),
        )),
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            Ok(if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{f:.1}")
            } else {
                f.to_string()
            })
        }
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(_) => iodata(value),
        Value::Object(_) => Err(unsupported_type(value)),
    }
}

/// Decoded JSON truthiness (`nil` and `false` are falsy).
fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

/// The path of a write: `path_segments` when it is a list, else `path` when it is a string,
/// else `missing_path`. `Err` is the rejection reason.
pub(crate) fn resolve_incoming_path(params: &Map<String, Value>) -> Result<String, &'static str> {
    match (params.get("path_segments"), params.get("path")) {
        (Some(segments @ Value::Array(_)), _) => path::from_segments(segments)
            .and_then(|s| path::render(&s))
            .map_err(path::PathError::reason),
        (_, Some(Value::String(rendered))) => {
            path::parse_rendered(rendered).map_err(path::PathError::reason)?;
            Ok(rendered.clone())
        }
        _ => Err("missing_path"),
    }
}

fn validate_value(op: Op, value: &Value) -> Result<(), Reject> {
    match op {
        Op::Merge if !value.is_object() => Err(Reject::reason("merge_requires_map_value")),
        Op::Increment if !value.is_number() => {
            Err(Reject::reason("increment_requires_number_value"))
        }
        Op::Add if value.is_null() => Err(Reject::reason("add_requires_value")),
        Op::Remove if value.is_null() => Err(Reject::reason("remove_requires_value")),
        _ => Ok(()),
    }
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    // Elixir's Base.decode64/1: padding required, trailing bits ignored.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    )
}

/// `Enum.uniq([member | set])`.
fn uniq_prepend(member: &Value, set: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(set.len() + 1);
    for item in std::iter::once(member.clone()).chain(set) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// `List.delete(set, member)`: the first occurrence only.
fn list_delete(mut set: Vec<Value>, member: &Value) -> Vec<Value> {
    if let Some(i) = set.iter().position(|v| v == member) {
        set.remove(i);
    }
    set
}

fn remove_descendants_from_state(state: &mut BTreeMap<String, Value>, path: &str) {
    let prefix = descendant_prefix(path);
    let keys: Vec<String> = state
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        state.remove(&k);
    }
}

fn put_leaves(
    state: &mut BTreeMap<String, Value>,
    path: &str,
    map: &Map<String, Value>,
) -> Result<(), Raise> {
    let segments = path::parse_rendered(path).unwrap_or_default();
    for (leaf, v) in value::flatten(&segments, map)? {
        state.insert(leaf, wrap(&v));
    }
    Ok(())
}

/// `Rollback.apply_op_to_state/2`.
fn apply_op_to_state(state: &mut BTreeMap<String, Value>, op: &OpRow) -> Result<(), Raise> {
    let stored = op.stored_value();
    match op.op {
        Op::Set => {
            remove_descendants_from_state(state, &op.path);
            let unwrapped = unwrap_opt(stored.as_ref())?;
            match &unwrapped {
                Value::Object(map) if is_expandable(&unwrapped) => {
                    state.remove(&op.path);
                    put_leaves(state, &op.path, map)?;
                }
                _ => {
                    state.insert(op.path.clone(), stored.unwrap_or(Value::Null));
                }
            }
        }
        Op::Delete => {
            state.remove(&op.path);
            remove_descendants_from_state(state, &op.path);
        }
        Op::Merge => {
            if let Some(Value::Object(map)) = &stored {
                let segments = path::parse_rendered(&op.path).unwrap_or_default();
                for (key, v) in map {
                    let mut child_segments = segments.clone();
                    child_segments.push(key.clone());
                    let child =
                        path::render(&child_segments).map_err(|_| Raise::empty_segment_match())?;
                    let unwrapped = unwrap(v)?;
                    match &unwrapped {
                        Value::Object(inner) if is_expandable(&unwrapped) => {
                            remove_descendants_from_state(state, &child);
                            state.remove(&child);
                            put_leaves(state, &child, inner)?;
                        }
                        _ => {
                            state.insert(child, wrap(&unwrapped));
                        }
                    }
                }
            }
        }
        Op::Increment => {
            let current = unwrap_opt(state.get(&op.path))?;
            let current = if truthy(&current) { current } else { json!(0) };
            let delta = unwrap_opt(stored.as_ref())?;
            let delta = if truthy(&delta) { delta } else { json!(0) };
            let total = add(&current, &delta).ok_or_else(Raise::arithmetic)?;
            state.insert(op.path.clone(), wrap(&total));
        }
        Op::Add | Op::Remove => {
            let current = unwrap_set(state.get(&op.path));
            let member = unwrap_opt(stored.as_ref())?;
            let set = if op.op == Op::Add {
                uniq_prepend(&member, current)
            } else {
                list_delete(current, &member)
            };
            state.insert(op.path.clone(), wrap(&Value::Array(set)));
        }
        Op::PutFile | Op::Lease | Op::Renew | Op::Release => {}
    }
    Ok(())
}

/// `materialize_catch_up_value/2`: increments, adds and removes replay on a running state
/// that only they update; everything else is the op's own value.
fn materialize_catch_up_value(
    op: &OpRow,
    state: &mut HashMap<String, Value>,
) -> Result<Value, Raise> {
    let stored = op.stored_value();
    match op.op {
        Op::Increment => {
            let current = state.get(&op.path).cloned().unwrap_or_else(|| json!(0));
            let delta = unwrap_opt(stored.as_ref())?;
            let delta = if truthy(&delta) { delta } else { json!(0) };
            let total = add(&current, &delta).ok_or_else(Raise::arithmetic)?;
            state.insert(op.path.clone(), total.clone());
            Ok(total)
        }
        Op::Add | Op::Remove => {
            let current = match state.get(&op.path) {
                None => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                // Enum.uniq / List.delete on an improper list.
                Some(_) => {
                    return Err(Raise::function_clause(
                        if op.op == Op::Add { "Enum" } else { ":lists" },
                        if op.op == Op::Add {
                            "uniq_list"
                        } else {
                            "delete"
                        },
                        if op.op == Op::Add { 3 } else { 2 },
                    ));
                }
            };
            let member = unwrap_opt(stored.as_ref())?;
            let set = Value::Array(if op.op == Op::Add {
                uniq_prepend(&member, current)
            } else {
                list_delete(current, &member)
            });
            state.insert(op.path.clone(), set.clone());
            Ok(set)
        }
        _ => unwrap_opt(stored.as_ref()),
    }
}

/// The live `event` value (`format_event`): the materialized value, or when that is `nil`
/// the op's own value unwrapped.
pub(crate) fn event_value(row: &OpRow, materialized: Value) -> Result<Value, Raise> {
    if materialized.is_null() {
        unwrap(&wrap(&row.value))
    } else {
        Ok(materialized)
    }
}

/// The live `event` payload.
pub(crate) fn live_event(row: &OpRow, value: Value) -> Value {
    json!({
        "store_seq": row.seq,
        "op": row.op.as_str(),
        "path": row.path,
        "path_segments": path::parse_rendered(&row.path).map_or(Value::Null, |s| json!(s)),
        "value": value,
        "device_id": row.device_id,
        "client_op_id": row.client_op_id,
    })
}

/// The ok reply to a committed write (`lease_aware_reply`).
pub(crate) fn write_reply(row: &OpRow) -> Value {
    match (row.op, &row.value) {
        (Op::Lease | Op::Renew, Value::Object(env)) => json!({
            "store_seq": row.seq,
            "token": env.get("token"),
            "expires_at": env.get("expires_at"),
            "holder": env.get("holder"),
        }),
        _ => json!({ "store_seq": row.seq }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Now {
        Now {
            wall_us: 1_000_000_000,
            mono_ms: 0,
        }
    }

    fn ctx() -> WriteCtx<'static> {
        WriteCtx {
            device_id: "dev",
            archived: false,
            limits: Limits::free(),
            now: now(),
        }
    }

    fn write(data: &mut StoreData, params: Value) -> Result<Value, Reject> {
        let params = params.as_object().cloned().unwrap_or_default();
        match data.plan_write(&params, ctx())? {
            Plan::Commit(row) => {
                let materialized = data.apply(&row, Some(0));
                Ok(event_value(&row, materialized).unwrap_or(Value::Null))
            }
            Plan::Noop => Ok(json!({"released": false})),
        }
    }

    fn stored(data: &StoreData) -> Vec<(String, Value)> {
        data.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn set_flattens_and_replaces_the_subtree_but_not_ancestors() {
        let mut d = StoreData::default();
        write(
            &mut d,
            json!({"op": "set", "path": "a", "value": 1, "client_op_id": "1"}),
        )
        .unwrap();
        write(&mut d, json!({"op": "set", "path": "a/b", "value": {"c": 2, "d": {"e": true}}, "client_op_id": "2"}))
            .unwrap();
        assert_eq!(
            stored(&d),
            vec![
                ("a".into(), json!({"_scalar": 1})),
                ("a/b/c".into(), json!({"_scalar": 2})),
                ("a/b/d/e".into(), json!({"_scalar": true})),
            ]
        );
        write(
            &mut d,
            json!({"op": "delete", "path": "a/b", "value": null, "client_op_id": "3"}),
        )
        .unwrap();
        assert_eq!(stored(&d), vec![("a".into(), json!({"_scalar": 1}))]);
        assert_eq!(d.current_seq(), 3);
    }

    #[test]
    fn catch_up_running_state_ignores_sets() {
        let mut d = StoreData::default();
        for (i, params) in [
            json!({"op": "increment", "path": "n", "value": 1}),
            json!({"op": "set", "path": "n", "value": 10}),
            json!({"op": "increment", "path": "n", "value": 1}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut params = params;
            params["client_op_id"] = json!(i.to_string());
            write(&mut d, params).unwrap();
        }
        assert_eq!(d.entries["n"].value, json!({"_scalar": 11}));
        let (events, end) = d.catch_up_batch(&json!(0)).unwrap();
        let values: Vec<_> = events.iter().map(|e| e["value"].clone()).collect();
        assert_eq!(values, vec![json!(1), json!(10), json!(2)]);
        assert_eq!(end, BatchEnd::Complete(json!(3)));
        // From seq 2 the seed is the real state at 2.
        let (events, _) = d.catch_up_batch(&json!(2)).unwrap();
        assert_eq!(events[0]["value"], json!(11));
    }

    #[test]
    fn seq_bounds_compare_like_sqlite() {
        assert!(SeqBound::parse(&json!("2")).unwrap().below(3));
        assert!(!SeqBound::parse(&json!("abc")).unwrap().below(3));
        assert!(!SeqBound::parse(&Value::Null).unwrap().below(3));
        assert!(SeqBound::parse(&json!(2.5)).unwrap().below(3));
        assert!(SeqBound::parse(&json!({})).is_err());
    }

    #[test]
    fn add_prepends_and_dedups() {
        assert_eq!(
            uniq_prepend(&json!("b"), vec![json!("a")]),
            vec![json!("b"), json!("a")]
        );
        assert_eq!(
            uniq_prepend(&json!("a"), vec![json!("b"), json!("a")]),
            vec![json!("a"), json!("b")]
        );
        assert_eq!(
            list_delete(vec![json!(1), json!(1)], &json!(1)),
            vec![json!(1)]
        );
    }
}
