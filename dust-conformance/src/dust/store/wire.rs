//! Wire payloads: the live `event`, its value, and the write reply.

use serde_json::{Value, json};

use super::super::path;
use super::super::value::{Raise, unwrap, wrap};
use super::*;

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

/// A catch-up `event` payload: as the live one, but with the `client_op_id` as its TEXT
/// column keeps it.
pub(crate) fn catch_up_event(op: &OpRow, value: Value) -> Value {
    json!({
        "store_seq": op.seq,
        "op": op.op.as_str(),
        "path": op.path,
        "path_segments": path::parse_rendered(&op.path).map_or(Value::Null, |s| json!(s)),
        "value": value,
        "device_id": op.device_id,
        "client_op_id": client_op_id_text(&op.client_op_id).unwrap_or_default(),
    })
}
