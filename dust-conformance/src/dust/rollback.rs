//! The store channel's `rollback` event (`handle_in("rollback", ...)` of `DustWeb.StoreChannel`
//! over `Dust.Sync.Rollback`).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::state::{AuthError, DustShared, StoreHandle};
use super::store::{self, RollbackError};
use crate::channel::{Broadcaster, Reply};

/// What a rollback push ends in.
pub(super) enum RollbackOutcome {
    Reply(Reply),
    Crash,
}

/// Handles a `rollback` push whose params hold `to_seq` (with `path`: that path; without:
/// the whole store). Runs on its own task, as a write does: once started it completes even
/// if the channel goes away.
pub(super) async fn rollback(
    dust: Arc<DustShared>,
    store: Arc<StoreHandle>,
    token_allows_write: bool,
    params: Map<String, Value>,
    broadcaster: Broadcaster,
) -> RollbackOutcome {
    if !token_allows_write {
        return RollbackOutcome::Reply(Reply::error(
            AuthError::MissingScope("entries:write").reply(),
        ));
    }
    let Some(to_seq) = params.get("to_seq") else {
        return RollbackOutcome::Crash;
    };
    let _gate = dust.gate.read().await;
    let mut data = store.data.lock().await;
    let planned = match params.get("path") {
        Some(path) => data
            .plan_path_rollback(path, to_seq)
            .map(|write| write.into_iter().collect::<Vec<_>>()),
        None => data.plan_store_rollback(to_seq),
    };
    let writes = match planned {
        Ok(writes) => writes,
        Err(RollbackError::Reason(reason)) => {
            return RollbackOutcome::Reply(Reply::error(json!({ "reason": reason })));
        }
        Err(RollbackError::Crash(raised)) => {
            tracing::warn!(raised, "the rollback raised: the channel crashes");
            return RollbackOutcome::Crash;
        }
    };
    if params.contains_key("path") && writes.is_empty() {
        return RollbackOutcome::Reply(Reply::ok(
            json!({"store_seq": data.current_seq(), "noop": true}),
        ));
    }
    let mut last = None;
    for write in &writes {
        let now = dust.now();
        let row = match data.rollback_row(write, to_seq, now) {
            Ok(row) => row,
            Err(RollbackError::Reason(reason)) => {
                return RollbackOutcome::Reply(Reply::error(json!({ "reason": reason })));
            }
            Err(RollbackError::Crash(raised)) => {
                tracing::warn!(raised, "the rollback raised: the channel crashes");
                return RollbackOutcome::Crash;
            }
        };
        let record = super::persist::Record::Op {
            store: store.id.clone(),
            row: row.clone(),
        };
        if let Err(error) = dust.persist(&record).await {
            tracing::error!(%error, "rollback op not persisted");
            // `{:ok, _op} = write_rollback_op(...)` does not match: the channel crashes.
            return RollbackOutcome::Crash;
        }
        let materialized = data.apply(&row, Some(now.mono_ms));
        last = Some((row, materialized));
    }
    if params.contains_key("path") {
        let Some((row, materialized)) = last else {
            return RollbackOutcome::Crash;
        };
        let value = match store::event_value(&row, materialized) {
            Ok(value) => value,
            Err(_) => return RollbackOutcome::Crash,
        };
        broadcaster.broadcast("event", store::live_event(&row, value));
        return RollbackOutcome::Reply(Reply::ok(json!({"store_seq": row.seq})));
    }
    // A store rollback broadcasts nothing.
    RollbackOutcome::Reply(Reply::ok(json!({"ops_written": writes.len()})))
}
