//! Validation: the channel's path and value checks, the billing limits, the errors
//! `apply_to_entries` raises, and the `client_op_id` as its TEXT column keeps it.

use serde_json::{Map, Value, json};

use super::super::config::Limits;
use super::super::path;
use super::super::value::{self, Raise, add, is_expandable, unwrap};
use super::*;

impl StoreData {
    /// The errors `apply_to_entries` raises inside the transaction (rescued into a reason).
    pub(super) fn check_apply(&self, op: Op, path: &str, value: &Value) -> Result<(), Reject> {
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
    pub(super) fn check_key_limit(
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
}

/// `IO.iodata_to_binary/1` of a JSON list (bytes and strings, nested), as Exqlite binds it.
pub(super) fn iodata(value: &Value) -> Result<String, Raise> {
    pub(super) fn walk(value: &Value, out: &mut Vec<u8>) -> bool {
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

pub(super) fn unsupported_type(value: &Value) -> Raise {
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
pub(super) fn truthy(value: &Value) -> bool {
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

pub(super) fn validate_value(op: Op, value: &Value) -> Result<(), Reject> {
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

pub(crate) fn base64_engine() -> base64::engine::GeneralPurpose {
    // Elixir's Base.decode64/1: padding required, trailing bits ignored.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    )
}
