//! The historical state at a seq (`Rollback.compute_historical_state/2`), replayed with the
//! rollback module's simplified op semantics.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::super::path::{self, descendant_prefix};
use super::super::value::{self, Raise, add, is_expandable, unwrap, unwrap_opt, unwrap_set, wrap};
use super::*;

impl StoreData {
    /// `Rollback.compute_historical_state/2`: the state at `to_seq`, path → stored value,
    /// replayed with the rollback module's simplified op semantics.
    pub(super) fn historical_state(&self, to: &SeqBound) -> Result<BTreeMap<String, Value>, Raise> {
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

pub(super) fn remove_descendants_from_state(state: &mut BTreeMap<String, Value>, path: &str) {
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

pub(super) fn put_leaves(
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
pub(super) fn apply_op_to_state(
    state: &mut BTreeMap<String, Value>,
    op: &OpRow,
) -> Result<(), Raise> {
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
