//! Rollback (`Dust.Sync.Rollback`): new ops, written by device `system:rollback`, that bring a
//! path or the whole store back to what it was at a seq. The op log is never rewritten.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::super::path;
use super::super::value::{Raise, unwrap, wrap};
use super::replay::SeqBound;
use super::validate::client_op_id_text;
use super::{Now, Op, OpRow, StoreData};

/// The device id of every rollback op.
pub(crate) const ROLLBACK_DEVICE: &str = "system:rollback";

/// Why a rollback is refused before it writes anything.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RollbackError {
    /// `{:error, reason}`: the reply `{"reason": reason}`.
    Reason(&'static str),
    /// What raises in the channel process: the channel crashes.
    Crash(String),
}

impl From<Raise> for RollbackError {
    fn from(raise: Raise) -> Self {
        Self::Crash(raise.0)
    }
}

/// One write of a rollback: `None` deletes the path, `Some` sets it to the (stored) value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RollbackWrite {
    pub(crate) path: String,
    pub(crate) value: Option<Value>,
}

impl StoreData {
    /// `validate_retention/2`: `to_seq` compared with the earliest op and the latest snapshot in
    /// Erlang term order (a number is below anything that is not a number).
    pub(crate) fn validate_retention(&self, to_seq: &Value) -> Result<(), RollbackError> {
        let below = |seq: u64| match to_seq {
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i128::from(i) < i128::from(seq),
                (None, Some(u), _) => u < seq,
                (None, None, f) => f.unwrap_or(0.0) < seq as f64,
            },
            _ => false,
        };
        match (&self.snapshot, self.ops.keys().next()) {
            (Some(snapshot), _) if below(snapshot.seq) => {
                Err(RollbackError::Reason("beyond_retention"))
            }
            (Some(_), _) => Ok(()),
            (None, None) => Err(RollbackError::Reason("no_ops")),
            (None, Some(&earliest)) if below(earliest) => {
                Err(RollbackError::Reason("beyond_retention"))
            }
            (None, Some(_)) => Ok(()),
        }
    }

    /// `rollback_path/3` up to the write: the path (normalized) and its write, or `None` when
    /// the path already holds its value at `to_seq` (a no-op).
    pub(crate) fn plan_path_rollback(
        &self,
        path: &Value,
        to_seq: &Value,
    ) -> Result<Option<RollbackWrite>, RollbackError> {
        let path = normalize_path(path)?;
        self.validate_retention(to_seq)?;
        let bound = SeqBound::parse(to_seq)?;
        let state = self.historical_state(&bound)?;
        let historical = match state.get(&path) {
            Some(value) => Some(value.clone()),
            None => assemble_subtree(&state, &path)?,
        };
        let current = self.current_path_value(&path)?;
        if historical == current {
            return Ok(None);
        }
        Ok(Some(RollbackWrite {
            path,
            value: historical,
        }))
    }

    /// `rollback_store/2` up to the writes: first a delete for every current entry absent at
    /// `to_seq`, then a set for every path whose value differs, each in path order.
    pub(crate) fn plan_store_rollback(
        &self,
        to_seq: &Value,
    ) -> Result<Vec<RollbackWrite>, RollbackError> {
        self.validate_retention(to_seq)?;
        let bound = SeqBound::parse(to_seq)?;
        let historical = self.historical_state(&bound)?;
        let deletes = self
            .entries
            .keys()
            .filter(|path| !historical.contains_key(*path))
            .map(|path| RollbackWrite {
                path: path.clone(),
                value: None,
            });
        let sets = historical
            .iter()
            .filter(|(path, value)| self.entries.get(*path).map(|e| &e.value) != Some(*value))
            .map(|(path, value)| RollbackWrite {
                path: path.clone(),
                value: Some(value.clone()),
            });
        Ok(deletes.chain(sets).collect())
    }

    /// The op row of one rollback write, at the next seq: a `delete`, or a `set` of the
    /// unwrapped value, with client_op_id `rollback:<to_seq>:<path>`.
    pub(crate) fn rollback_row(
        &self,
        write: &RollbackWrite,
        to_seq: &Value,
        now: Now,
    ) -> Result<OpRow, RollbackError> {
        let (op, value) = match &write.value {
            None => (Op::Delete, Value::Null),
            Some(stored) => (Op::Set, unwrap(stored)?),
        };
        let to_seq = match to_seq {
            // "#{nil}" is empty.
            Value::Null => String::new(),
            other => client_op_id_text(other)?,
        };
        Ok(OpRow {
            seq: self.current_seq() + 1,
            op,
            path: write.path.clone(),
            value,
            device_id: ROLLBACK_DEVICE.to_owned(),
            client_op_id: Value::String(format!("rollback:{to_seq}:{}", write.path)),
            inserted_at: now.inserted_at(),
            ttl_ms: None,
            blob: None,
        })
    }

    /// `current_path_value/2`: the entry's stored value, or its subtree assembled from the
    /// descendants (`Sync.get_entry`), wrapped; `None` when there is neither.
    fn current_path_value(&self, path: &str) -> Result<Option<Value>, Raise> {
        if let Some(entry) = self.entries.get(path) {
            return Ok(Some(wrap(&unwrap(&entry.value)?)));
        }
        let leaves: BTreeMap<String, Value> = self
            .entries
            .range(path::descendant_prefix(path)..)
            .take_while(|(k, _)| k.starts_with(&path::descendant_prefix(path)))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        assemble_subtree(&leaves, path)
    }
}

/// `Sync.normalize_path/1`: a segment list rendered, a string parsed and rendered back; any
/// other term matches no clause.
fn normalize_path(path: &Value) -> Result<String, RollbackError> {
    let reason = |e: path::PathError| RollbackError::Reason(e.reason());
    match path {
        Value::Array(_) => path::from_segments(path)
            .and_then(|s| path::render(&s))
            .map_err(reason),
        Value::String(rendered) => path::parse_rendered(rendered)
            .and_then(|s| path::render(&s))
            .map_err(reason),
        other => Err(RollbackError::Crash(
            Raise::function_clause("Dust.Sync", "normalize_path", 1).0 + &format!(" ({other})"),
        )),
    }
}

/// `assemble_subtree_from_state/2`: the descendants of `path` in `state` as one wrapped map
/// (their values unwrapped), or `None` without descendants.
fn assemble_subtree(state: &BTreeMap<String, Value>, path: &str) -> Result<Option<Value>, Raise> {
    let prefix_segments = path::parse_rendered(path).unwrap_or_default();
    let prefix = path::descendant_prefix(path);
    let mut map = Map::new();
    let mut found = false;
    for (entry_path, stored) in state.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let segments = path::parse_rendered(entry_path).unwrap_or_default();
        let keys = segments.get(prefix_segments.len()..).unwrap_or_default();
        put_nested(&mut map, keys, unwrap(stored)?);
        found = true;
    }
    Ok(found.then(|| wrap(&Value::Object(map))))
}

/// `put_nested/3`: a child that is not a map is replaced by one.
fn put_nested(map: &mut Map<String, Value>, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [key] => {
            map.insert(key.clone(), value);
        }
        [key, rest @ ..] => {
            let child = map
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(inner) = child {
                put_nested(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{now, write};
    use super::*;

    fn apply_all(data: &mut StoreData, writes: &[RollbackWrite], to_seq: &Value) -> Vec<OpRow> {
        writes
            .iter()
            .map(|w| {
                let row = data.rollback_row(w, to_seq, now()).unwrap();
                data.apply(&row, Some(0));
                row
            })
            .collect()
    }

    #[test]
    fn a_path_rolls_back_to_its_value_then_is_a_noop() {
        let mut d = StoreData::default();
        write(
            &mut d,
            json!({"op": "set", "path": "a", "value": 1, "client_op_id": "1"}),
        )
        .unwrap();
        write(
            &mut d,
            json!({"op": "set", "path": "a", "value": 2, "client_op_id": "2"}),
        )
        .unwrap();
        let w = d
            .plan_path_rollback(&json!("a"), &json!(1))
            .unwrap()
            .unwrap();
        assert_eq!(w.value, Some(json!({"_scalar": 1})));
        let rows = apply_all(&mut d, &[w], &json!(1));
        assert_eq!(rows[0].client_op_id, json!("rollback:1:a"));
        assert_eq!(rows[0].device_id, "system:rollback");
        assert_eq!((rows[0].seq, rows[0].op), (3, Op::Set));
        assert_eq!(d.entries["a"].value, json!({"_scalar": 1}));
        assert_eq!(d.plan_path_rollback(&json!("a"), &json!(1)), Ok(None));
        // Before the path existed: a delete.
        let w = d.plan_path_rollback(&json!(["a"]), &json!(0));
        assert_eq!(w, Err(RollbackError::Reason("beyond_retention")));
    }

    #[test]
    fn a_map_root_is_assembled_from_its_leaves() {
        let mut d = StoreData::default();
        write(&mut d, json!({"op": "set", "path": "m", "value": {"x": 1, "y": {"z": 2}}, "client_op_id": "1"})).unwrap();
        write(
            &mut d,
            json!({"op": "set", "path": "m/x", "value": 5, "client_op_id": "2"}),
        )
        .unwrap();
        let w = d
            .plan_path_rollback(&json!("m"), &json!(1))
            .unwrap()
            .unwrap();
        assert_eq!(w.value, Some(json!({"x": 1, "y": {"z": 2}})));
        apply_all(&mut d, &[w], &json!(1));
        assert_eq!(d.entries["m/x"].value, json!({"_scalar": 1}));
        assert_eq!(d.plan_path_rollback(&json!("m"), &json!(1)), Ok(None));
    }

    #[test]
    fn a_store_rolls_back_deletes_first_then_sets_in_path_order() {
        let mut d = StoreData::default();
        for (i, (path, value)) in [("b", 1), ("a", 1), ("b", 2), ("c", 3), ("a", 9)]
            .into_iter()
            .enumerate()
        {
            write(
                &mut d,
                json!({"op": "set", "path": path, "value": value, "client_op_id": i.to_string()}),
            )
            .unwrap();
        }
        let writes = d.plan_store_rollback(&json!(2)).unwrap();
        let summary: Vec<_> = writes
            .iter()
            .map(|w| (w.path.as_str(), w.value.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("c", None),
                ("a", Some(json!({"_scalar": 1}))),
                ("b", Some(json!({"_scalar": 1}))),
            ]
        );
        apply_all(&mut d, &writes, &json!(2));
        assert_eq!(d.plan_store_rollback(&json!(2)), Ok(Vec::new()));
        assert_eq!(d.current_seq(), 8);
    }

    #[test]
    fn retention_and_empty_stores_are_refused() {
        let mut d = StoreData::default();
        assert_eq!(
            d.plan_store_rollback(&json!(1)),
            Err(RollbackError::Reason("no_ops"))
        );
        write(
            &mut d,
            json!({"op": "set", "path": "a", "value": 1, "client_op_id": "1"}),
        )
        .unwrap();
        assert_eq!(
            d.plan_store_rollback(&json!(0)),
            Err(RollbackError::Reason("beyond_retention"))
        );
        // Not a number: above every integer in term order, so retention passes.
        assert!(d.plan_store_rollback(&json!("x")).is_ok());
        d.compact("2026-01-01T00:00:00.000Z".into());
        assert_eq!(
            d.plan_store_rollback(&json!(0)),
            Err(RollbackError::Reason("beyond_retention"))
        );
        assert_eq!(d.plan_store_rollback(&json!(1)), Ok(Vec::new()));
        assert_eq!(
            d.plan_path_rollback(&json!("a//b"), &json!(1)),
            Err(RollbackError::Reason("empty_segment"))
        );
    }
}
