//! How an op of the log changes a store's entries, as the server's writer materializes it, and
//! what it changed (for the [`Change`](super::Change) stream and the replica's subscribers).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::codec;
use crate::write::Path;

/// One entry of a replica: the value as the server stores it (in its storage envelope), the
/// type the server records for it, and the seq of the op that last wrote it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stored {
    pub(crate) value: Value,
    pub(crate) kind: String,
    pub(crate) revision: u64,
    /// Written by a pending optimistic write (only in a replica's overlay view).
    pub(crate) pending: bool,
}

impl Stored {
    /// The value as the server lists it (unwrapped from `{"_scalar": v}`).
    pub(crate) fn rendered(&self) -> Value {
        codec::render(&self.value)
    }
}

/// A store's entries by rendered path.
pub(crate) type Entries = BTreeMap<String, Stored>;

/// What an op did to a store's entries: subtrees removed (rendered paths) and the leaf entries
/// removed, then entries set (rendered path, value as [`MemoryEngine::entries`] shows it).
///
/// [`MemoryEngine::entries`]: super::MemoryEngine::entries
#[derive(Debug, Default)]
pub(crate) struct Diff {
    pub(crate) removed: Vec<String>,
    removed_leaves: Vec<String>,
    pub(crate) set: Vec<(String, Value)>,
}

impl Diff {
    /// Each entry that changed, once, as (rendered path, its value or `None` when it is gone):
    /// removals first, then the entries set, in the order the op wrote them.
    pub(crate) fn leaves(&self) -> Vec<(String, Option<Value>)> {
        let set: BTreeSet<&str> = self.set.iter().map(|(path, _)| path.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for path in &self.removed_leaves {
            if !set.contains(path.as_str()) && seen.insert(path.as_str()) {
                out.push((path.clone(), None));
            }
        }
        for (path, value) in &self.set {
            out.push((path.clone(), Some(value.clone())));
        }
        out
    }

    /// Every path whose entry the op removed or wrote (a path may come twice).
    pub(crate) fn touched(&self) -> impl Iterator<Item = &str> {
        self.removed_leaves
            .iter()
            .map(String::as_str)
            .chain(self.set.iter().map(|(path, _)| path.as_str()))
    }

    fn upsert(&mut self, entries: &mut Entries, path: String, value: &Value, kind: &str, seq: u64) {
        let stored = Stored {
            value: codec::wrap(value),
            kind: kind.to_owned(),
            revision: seq,
            pending: false,
        };
        self.set.push((path.clone(), stored.rendered()));
        entries.insert(path, stored);
    }

    /// Removes `path` itself (when `with_path`) and every entry below it.
    fn remove(&mut self, entries: &mut Entries, path: &str, with_path: bool) {
        let prefix = format!("{path}/");
        let below: Vec<String> = entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut removed = !below.is_empty();
        for key in below {
            entries.remove(&key);
            self.removed_leaves.push(key);
        }
        if with_path && entries.remove(path).is_some() {
            removed = true;
            self.removed_leaves.push(path.to_owned());
        }
        if removed {
            self.removed.push(path.to_owned());
        }
    }

    /// `path` replaced by `value`: an expandable map by its leaves, anything else as one entry
    /// of type `kind` (or the type the server detects for it).
    fn replace(
        &mut self,
        entries: &mut Entries,
        path: &Path,
        value: &Value,
        kind: Option<&str>,
        seq: u64,
    ) {
        let rendered = path.render();
        match codec::expandable(value) {
            Some(map) => {
                self.remove(entries, &rendered, true);
                let mut leaves = Vec::new();
                codec::flatten(path, map, &mut leaves);
                for (leaf, value) in leaves {
                    self.upsert(entries, leaf, &value, detect_type(&value), seq);
                }
            }
            None => {
                self.remove(entries, &rendered, false);
                let kind = kind.unwrap_or_else(|| detect_type(value));
                self.upsert(entries, rendered, value, kind, seq);
            }
        }
    }

    /// A snapshot replacing `entries` by `new`: what it removed and what it set or changed.
    pub(crate) fn replace_all(&mut self, entries: &mut Entries, new: Entries) {
        for path in entries.keys() {
            if !new.contains_key(path) {
                self.removed_leaves.push(path.clone());
            }
        }
        for (path, stored) in &new {
            if entries.get(path).map(|old| &old.value) != Some(&stored.value) {
                self.set.push((path.clone(), stored.rendered()));
            }
        }
        *entries = new;
    }

    /// Every entry removed (a server reset).
    pub(crate) fn clear(&mut self, entries: &mut Entries) {
        self.removed_leaves.extend(entries.keys().cloned());
        entries.clear();
    }
}

/// The entry type the server records for a value a `set` or `merge` writes (`map` for a typed
/// value; the server's catch-all gives a list `string`).
pub(crate) fn detect_type(value: &Value) -> &'static str {
    match value {
        Value::Object(map) if map.get("_type").and_then(Value::as_str) == Some("lease") => "lease",
        Value::Object(_) => "map",
        Value::String(_) | Value::Array(_) => "string",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
}

/// Applies the op of seq `seq` to a store's entries as the server's writer materializes it
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
pub(crate) fn materialize(
    entries: &mut Entries,
    path: &Path,
    op: &str,
    value: &Value,
    seq: u64,
    diff: &mut Diff,
) {
    let rendered = path.render();
    match op {
        "set" => diff.replace(entries, path, value, None, seq),
        "put_file" => diff.replace(entries, path, value, Some("file"), seq),
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
                    diff.replace(entries, &child, child_value, None, seq);
                } else {
                    let kind = detect_type(child_value);
                    diff.upsert(entries, child.render(), child_value, kind, seq);
                }
            }
        }
        "delete" => diff.remove(entries, &rendered, true),
        "release" => {
            if entries.remove(&rendered).is_some() {
                diff.removed_leaves.push(rendered.clone());
                diff.removed.push(rendered);
            }
        }
        "increment" => diff.upsert(entries, rendered, value, "counter", seq),
        "add" | "remove" => diff.upsert(entries, rendered, value, "set", seq),
        "lease" | "renew" => diff.upsert(entries, rendered, value, "lease", seq),
        other => tracing::warn!(path = %rendered, op = other, "an event of an unknown op; ignored"),
    }
}

/// Applies an op to `entries` (see [`materialize`]) and returns the rendered paths it set.
pub(crate) fn materialize_into(
    entries: &mut Entries,
    path: &Path,
    op: &str,
    value: &Value,
    seq: u64,
) -> Vec<String> {
    let mut diff = Diff::default();
    materialize(entries, path, op, value, seq, &mut diff);
    diff.set.into_iter().map(|(path, _)| path).collect()
}
