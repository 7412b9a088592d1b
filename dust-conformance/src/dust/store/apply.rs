//! Applying a committed row to the entries (`apply_to_entries`).

use serde_json::{Value, json};

use super::super::path;
use super::super::value::{self, add, detect_type, is_expandable, unwrap, unwrap_set, wrap};
use super::*;

impl StoreData {
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
}

/// `Enum.uniq([member | set])`.
pub(super) fn uniq_prepend(member: &Value, set: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(set.len() + 1);
    for item in std::iter::once(member.clone()).chain(set) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// `List.delete(set, member)`: the first occurrence only.
pub(super) fn list_delete(mut set: Vec<Value>, member: &Value) -> Vec<Value> {
    if let Some(i) = set.iter().position(|v| v == member) {
        set.remove(i);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{stored, write};
    use super::*;

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
