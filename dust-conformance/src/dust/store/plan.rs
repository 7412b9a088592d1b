//! Planning a write: every check and every value the server stamps, without mutation.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{Map, Value, json};

use super::super::path;
use super::super::value::{Raise, is_expandable};
use super::*;

impl StoreData {
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
            super::super::sha256::hex(&super::super::sha256::digest(&content))
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
            "uploaded_at": super::super::clock::iso8601(ctx.now.wall_us, 6),
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
}
