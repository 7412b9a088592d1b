//! The store channel's control calls: `rollback` (a path, or the whole store, to a seq) and
//! `status`, answered by the server with typed replies.

use phoenix_channels::{Channel, PushError, Reply};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::store::Store;
use crate::write::{IntoSegments, Path, PathError, Rejection};

/// Why a control call ([`Store::rollback_path`], [`Store::rollback`], [`Store::status`])
/// failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The server refused it, with its reason: for a rollback
    /// [`RejectReason::BeyondRetention`](crate::RejectReason::BeyondRetention) (the seq is
    /// before the oldest op or snapshot the store keeps, or 0),
    /// [`RejectReason::NoOps`](crate::RejectReason::NoOps) (the store has no ops),
    /// [`RejectReason::MissingScope`](crate::RejectReason::MissingScope), or a path error.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The path is invalid; nothing was sent.
    #[error("invalid path: {0}")]
    InvalidPath(PathError),
    /// No reply came (the connection dropped or was shut down, or the call timed out). A
    /// rollback whose reply is lost may have been applied.
    #[error("no reply: {0}")]
    Transport(PushError),
    /// The server answered with a reply of another shape than documented.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

/// The answer to [`Store::rollback_path`]: `{store_seq}`, or `{store_seq, noop: true}` when
/// the path already held its value at `to_seq` (nothing was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PathRollback {
    /// The seq of the rollback's op, or the store's current seq for a no-op.
    pub store_seq: u64,
    /// Whether nothing was written.
    #[serde(default)]
    pub noop: bool,
}

/// The answer to [`Store::rollback`]: `{ops_written}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct StoreRollback {
    /// How many ops the rollback wrote (the deletes of entries that did not exist at
    /// `to_seq`, then the sets of entries that differ).
    pub ops_written: u64,
}

/// The answer to [`Store::status`]: the server's report on the store. The fields the
/// server may leave out are `Option`s or default to 0; the whole reply is in `raw`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct StoreReport {
    /// The store's current seq.
    pub current_seq: u64,
    /// How many entries the store holds.
    #[serde(default)]
    pub entry_count: u64,
    /// How many ops the store's log holds.
    #[serde(default)]
    pub op_count: u64,
    /// The seq of the latest snapshot, if any.
    #[serde(default)]
    pub latest_snapshot_seq: Option<u64>,
    /// The whole reply, with the fields not modelled here (permissions, recent ops, sizes).
    #[serde(skip)]
    pub raw: Map<String, Value>,
}

/// Reads a control reply: ok with a map of shape `T`, or error with a reason.
fn read<T: DeserializeOwned>(reply: Result<Reply, PushError>) -> Result<T, ControlError> {
    let reply = reply.map_err(ControlError::Transport)?;
    let ok = reply.is_ok();
    let response = crate::format::value(reply.response())
        .map_err(|e| ControlError::UnexpectedReply(e.to_string()))?;
    match (ok, &response) {
        (true, Value::Object(_)) => serde_json::from_value(response.clone())
            .map_err(|e| ControlError::UnexpectedReply(format!("{e}: {response}"))),
        (false, Value::Object(map)) if map.get("reason").is_some_and(Value::is_string) => {
            Err(ControlError::Rejected(Rejection::from_payload(&response)))
        }
        _ => Err(ControlError::UnexpectedReply(response.to_string())),
    }
}

/// A status reply as a [`StoreReport`], the whole reply kept in `raw`.
fn report(raw: Map<String, Value>) -> Result<StoreReport, ControlError> {
    let mut report: StoreReport = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| ControlError::UnexpectedReply(format!("status: {e}")))?;
    report.raw = raw;
    Ok(report)
}

async fn call<T: DeserializeOwned>(
    channel: &Channel,
    event: &'static str,
    payload: Value,
) -> Result<T, ControlError> {
    read(channel.push(event, payload).await)
}

impl Store {
    /// Rolls the entries at `path` (and below it) back to what they were at `to_seq`, as one
    /// new op of the store's log (broadcast as an `event`, device `system:rollback`). Sent on
    /// the store's channel when it is joined, outside the outbox's write order.
    pub async fn rollback_path(
        &self,
        path: impl IntoSegments,
        to_seq: u64,
    ) -> Result<PathRollback, ControlError> {
        let path = Path::new(path.into_segments()).map_err(ControlError::InvalidPath)?;
        // As segments, the wire's authoritative path shape.
        call(
            self.outbox.channel(),
            "rollback",
            json!({"path": path.segments(), "to_seq": to_seq}),
        )
        .await
    }

    /// Rolls the whole store back to what it was at `to_seq`, as new ops (deletes of the
    /// entries made since, then sets of the entries that changed, each in path order).
    ///
    /// The server broadcasts no event for these ops, so when it wrote any the store catches
    /// up again (it leaves and rejoins from the engine's seq, [`Notice::Resync`](crate::Notice::Resync)):
    /// the replica holds the rolled-back state after that catch-up. Other clients learn it at
    /// their next join.
    pub async fn rollback(&self, to_seq: u64) -> Result<StoreRollback, ControlError> {
        let rolled: StoreRollback =
            call(self.outbox.channel(), "rollback", json!({"to_seq": to_seq})).await?;
        if rolled.ops_written > 0 {
            self.outbox
                .resync("a store rollback wrote ops the server does not broadcast");
        }
        Ok(rolled)
    }

    /// The server's report on the store (its seq, counts, latest snapshot).
    pub async fn status(&self) -> Result<StoreReport, ControlError> {
        report(call(self.outbox.channel(), "status", json!({})).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RejectReason;
    use phoenix_channels::{Payload, ReplyStatus};

    fn reply(status: ReplyStatus, response: Value) -> Result<Reply, PushError> {
        Ok(Reply::new(status, Payload::from(response)))
    }

    #[test]
    fn rollback_replies_read_as_typed_answers() {
        let applied: PathRollback = read(reply(ReplyStatus::Ok, json!({"store_seq": 7}))).unwrap();
        assert_eq!((applied.store_seq, applied.noop), (7, false));
        let noop: PathRollback = read(reply(
            ReplyStatus::Ok,
            json!({"store_seq": 7, "noop": true}),
        ))
        .unwrap();
        assert_eq!((noop.store_seq, noop.noop), (7, true));
        let store: StoreRollback = read(reply(ReplyStatus::Ok, json!({"ops_written": 3}))).unwrap();
        assert_eq!(store.ops_written, 3);
    }

    #[test]
    fn rejections_carry_their_typed_reason_and_odd_replies_are_unexpected() {
        for (reason, typed) in [
            ("beyond_retention", RejectReason::BeyondRetention),
            ("no_ops", RejectReason::NoOps),
            ("missing_scope", RejectReason::MissingScope),
        ] {
            let error = read::<StoreRollback>(reply(ReplyStatus::Error, json!({"reason": reason})))
                .unwrap_err();
            let ControlError::Rejected(rejection) = error else {
                panic!("{error:?}")
            };
            assert_eq!(rejection.reason, typed);
        }
        for odd in [
            reply(ReplyStatus::Ok, json!({"ops": 1})),
            reply(ReplyStatus::Ok, json!("done")),
            reply(ReplyStatus::Error, json!("nope")),
        ] {
            assert!(matches!(
                read::<StoreRollback>(odd),
                Err(ControlError::UnexpectedReply(_))
            ));
        }
        assert_eq!(
            read::<StoreRollback>(Err(PushError::Timeout)),
            Err(ControlError::Transport(PushError::Timeout))
        );
    }

    #[test]
    fn a_status_reply_keeps_what_is_not_modelled() {
        let raw = json!({"current_seq": 4, "entry_count": 2, "op_count": 4,
            "latest_snapshot_seq": null, "recent_ops": [{"store_seq": 4}]});
        let map: Map<String, Value> = read(reply(ReplyStatus::Ok, raw)).unwrap();
        let status = report(map).unwrap();
        assert_eq!(
            (
                status.current_seq,
                status.entry_count,
                status.op_count,
                status.latest_snapshot_seq
            ),
            (4, 2, 4, None)
        );
        assert_eq!(status.raw["recent_ops"][0]["store_seq"], 4);
        let missing = Map::from_iter([("entry_count".to_owned(), json!(1))]);
        assert!(matches!(
            report(missing),
            Err(ControlError::UnexpectedReply(_))
        ));
    }
}
