//! Catch-up replay: the events after a client's `last_store_seq`, in batches, with the
//! running state of increments, adds and removes.

use std::collections::HashMap;

use serde_json::{Number, Value, json};

use super::super::value::{Raise, add, unwrap, unwrap_opt};
use super::*;

/// The size of a catch-up batch.
pub(crate) const CATCH_UP_BATCH: usize = 1000;

impl StoreData {
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
                Ok(value) => events.push(wire::catch_up_event(op, value)),
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
pub(super) enum SeqBound {
    Null,
    Number(f64, Option<i128>),
    AboveAll,
}

impl SeqBound {
    pub(super) fn parse(value: &Value) -> Result<Self, Raise> {
        Ok(match value {
            Value::Null => Self::Null,
            Value::Number(n) => Self::number(n),
            Value::Bool(b) => Self::text(&b.to_string()),
            Value::String(s) => Self::text(s),
            Value::Array(_) => Self::text(&iodata(value)?),
            Value::Object(_) => return Err(unsupported_type(value)),
        })
    }

    pub(super) fn number(n: &Number) -> Self {
        let exact = if n.is_f64() {
            None
        } else {
            n.as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
        };
        Self::Number(n.as_f64().unwrap_or(0.0), exact)
    }

    pub(super) fn text(s: &str) -> Self {
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
    pub(super) fn below(&self, seq: u64) -> bool {
        match self {
            Self::Null | Self::AboveAll => false,
            Self::Number(_, Some(i)) => i128::from(seq) > *i,
            Self::Number(f, None) => (seq as f64) > *f,
        }
    }

    /// `store_seq <= bound`.
    pub(super) fn at_least(&self, seq: u64) -> bool {
        match self {
            Self::Null => false,
            Self::AboveAll => true,
            Self::Number(_, Some(i)) => i128::from(seq) <= *i,
            Self::Number(f, None) => (seq as f64) <= *f,
        }
    }
}

/// `materialize_catch_up_value/2`: increments, adds and removes replay on a running state
/// that only they update; everything else is the op's own value.
pub(super) fn materialize_catch_up_value(
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

#[cfg(test)]
mod tests {
    use super::super::test_support::write;
    use super::*;

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
}
