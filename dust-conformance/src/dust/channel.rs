//! The `/ws/sync` socket (`DustWeb.StoreSocket`) and the `store:*` channel
//! (`DustWeb.StoreChannel`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::config::TOKEN_PREFIX;
use super::state::{BlobFile, DustShared, ReplyFault, Resolved, StoreHandle, split_name};
use super::store::{self, BatchEnd, OpRow, Plan, Reject, WriteCtx};
use crate::channel::{
    Broadcaster, Channel, ChannelContext, Handled, Info, Reply, ReplyRef, SendError,
};
use crate::frame::{Payload, Protocol};
use crate::socket::{Assigns, ConnectDecision, SocketConfig};

/// The capability version the server speaks and the lowest it accepts.
const CAPVER: u64 = 3;

/// The socket: `connect/3` of `DustWeb.StoreSocket`, the JSON V2 serializer (`~> 2.0.0`) and
/// Dust's MessagePack one (`3.0.0`), socket id `store_socket:{device_id}`.
pub(crate) fn socket(dust: Arc<DustShared>) -> SocketConfig {
    let connect_dust = dust.clone();
    SocketConfig::new(move |request| {
        let (Some(token), Some(device_id)) =
            (request.params.get("token"), request.params.get("device_id"))
        else {
            return ConnectDecision::Refuse;
        };
        if !token.starts_with(TOKEN_PREFIX) || !connect_dust.tokens.contains_key(token) {
            tracing::debug!(device_id, "connect refused: unknown token");
            return ConnectDecision::Refuse;
        }
        let capver = parse_capver(request.params.get("capver").map(String::as_str));
        if capver < i128::from(CAPVER) {
            tracing::debug!(device_id, capver, "connect refused: capver too low");
            return ConnectDecision::Refuse;
        }
        connect_dust.ensure_device(device_id);
        let mut assigns = Assigns::new();
        assigns.insert("token".into(), Value::String(token.clone()));
        assigns.insert("device_id".into(), Value::String(device_id.clone()));
        assigns.insert("capver".into(), json!(capver));
        ConnectDecision::Accept(assigns)
    })
    .protocols([Protocol::V2, Protocol::MessagePack])
    .id(|_, assigns| {
        assigns
            .get("device_id")
            .and_then(Value::as_str)
            .map(|d| format!("store_socket:{d}"))
    })
    .channel("store:*", move |_topic| {
        Box::new(StoreChannel {
            dust: dust.clone(),
            joined: None,
        })
    })
}

/// `parse_capver/1`: absent → 1; `Integer.parse` with nothing left over, else 1.
fn parse_capver(capver: Option<&str>) -> i128 {
    let Some(text) = capver else {
        return 1;
    };
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 1;
    }
    // Longer than any i128: a huge number, far above the minimum either way.
    let magnitude = digits.parse::<i128>().unwrap_or(i128::MAX);
    if negative { -magnitude } else { magnitude }
}

/// A joined store, as the channel's socket assigns hold it.
struct Joined {
    store: Arc<StoreHandle>,
    token: Arc<super::config::TokenConfig>,
    device_id: String,
}

/// The `store:*` channel.
pub(crate) struct StoreChannel {
    dust: Arc<DustShared>,
    joined: Option<Joined>,
}

/// Catch-up steps, sent to the channel itself (`{:catch_up, seq}` and
/// `{:catch_up_after_snapshot, seq}`).
enum CatchUp {
    From(Value),
    AfterSnapshot(u64),
}

/// A reply held back by the delay fault.
struct DelayedReply {
    to: ReplyRef,
    reply: Reply,
}

/// What a write's commit task decided.
enum Outcome {
    Reply(Reply),
    Crash,
}

#[async_trait]
impl Channel for StoreChannel {
    async fn join(&mut self, params: Payload, ctx: &ChannelContext) -> Result<Value, Value> {
        let crashed = || json!({"reason": "join crashed"});
        // join("store:" <> ref, %{"last_store_seq" => seq}, socket): any other shape raises.
        let Some(last_seq) = params
            .as_json()
            .and_then(Value::as_object)
            .and_then(|p| p.get("last_store_seq"))
            .cloned()
        else {
            return Err(crashed());
        };
        let store_ref = ctx.topic().strip_prefix("store:").unwrap_or_default();
        let assigns = ctx.assigns();
        let token = assigns
            .get("token")
            .and_then(Value::as_str)
            .and_then(|t| self.dust.tokens.get(t))
            .cloned()
            .ok_or_else(crashed)?;
        let device_id = assigns
            .get("device_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let store = match self.dust.resolve(store_ref) {
            Resolved::Found(store) => store,
            Resolved::NotAUuid => return Err(crashed()),
            Resolved::NotFound => self.auto_create(store_ref, &token).await?,
        };
        DustShared::authorize(&token, &store, "entries:read").map_err(|e| e.reply())?;
        ctx.send_self(Box::new(CatchUp::From(last_seq)));
        let store_seq = store.data.lock().await.current_seq();
        let allowed = DustShared::token_reaches(&token, &store.org, &store.full_name());
        let reply = json!({
            "store_seq": store_seq,
            "capver": CAPVER,
            "capver_min": CAPVER,
            "permissions": {
                "read": allowed && token.scopes.contains("entries:read"),
                "write": allowed && token.scopes.contains("entries:write"),
            },
            "scopes": token.scopes,
            "store_access": self.dust.store_access(&token),
        });
        tracing::debug!(store = %store.full_name(), device_id, "joined");
        self.joined = Some(Joined {
            store,
            token,
            device_id,
        });
        Ok(reply)
    }

    async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &ChannelContext) -> Handled {
        let Some(joined) = &self.joined else {
            return Handled::Crash;
        };
        match event {
            "write" => {
                if let Err(reply) = self.admit(joined, "entries:write") {
                    return Handled::Reply(reply);
                }
                // `params["op"]` on anything but a map raises.
                let Payload::Json(Value::Object(params)) = payload else {
                    return Handled::Crash;
                };
                let sent = super::msgpack::write_params(ctx, params);
                self.commit(joined, sent.params, sent.as_sent, WriteKind::Write, ctx)
                    .await
            }
            "put_file" => {
                // Only a map with path, content and client_op_id matches the clause.
                let Payload::Json(Value::Object(params)) = payload else {
                    return Handled::Crash;
                };
                if !["path", "content", "client_op_id"]
                    .iter()
                    .all(|k| params.contains_key(*k))
                {
                    return Handled::Crash;
                }
                if let Err(reply) = self.admit(joined, "files:write") {
                    return Handled::Reply(reply);
                }
                self.commit(joined, params, None, WriteKind::PutFile, ctx)
                    .await
            }
            "ack_seq" => {
                let Some(seq) = payload
                    .as_json()
                    .and_then(Value::as_object)
                    .and_then(|p| p.get("seq"))
                else {
                    return Handled::Crash;
                };
                self.dust
                    .record_ack(&joined.store.id, &joined.device_id, seq.clone());
                Handled::Reply(Reply::ok(json!({})))
            }
            "status" => Handled::Reply(Reply::ok(self.status(joined).await)),
            // %{"path" => _, "to_seq" => _} or %{"to_seq" => _}; anything else matches no clause.
            "rollback" => {
                let Payload::Json(Value::Object(params)) = payload else {
                    return Handled::Crash;
                };
                if !params.contains_key("to_seq") {
                    return Handled::Crash;
                }
                let allowed =
                    DustShared::authorize(&joined.token, &joined.store, "entries:write").is_ok();
                let outcome = tokio::spawn(super::rollback::rollback(
                    self.dust.clone(),
                    joined.store.clone(),
                    allowed,
                    params,
                    ctx.broadcaster(),
                ))
                .await;
                match outcome {
                    Ok(super::rollback::RollbackOutcome::Reply(reply)) => Handled::Reply(reply),
                    _ => Handled::Crash,
                }
            }
            // Any other event matches no clause of handle_in/3: the channel crashes.
            _ => Handled::Crash,
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &ChannelContext) -> Handled {
        let info = match info.downcast::<DelayedReply>() {
            Ok(delayed) => {
                let DelayedReply { to, reply } = *delayed;
                return handled_send(ctx.reply(&to, reply));
            }
            Err(other) => other,
        };
        let (Ok(step), Some(joined)) = (info.downcast::<CatchUp>(), &self.joined) else {
            return Handled::NoReply;
        };
        let data = joined.store.data.lock().await;
        let last_seq = match *step {
            CatchUp::From(last_seq) => {
                if let Some((seq, snapshot)) = data.snapshot_for(&last_seq) {
                    drop(data);
                    if crashes(ctx.push("snapshot", snapshot)) {
                        return Handled::Crash;
                    }
                    ctx.send_self(Box::new(CatchUp::AfterSnapshot(seq)));
                    return Handled::NoReply;
                }
                last_seq
            }
            CatchUp::AfterSnapshot(seq) => json!(seq),
        };
        let batch = data.catch_up_batch(&last_seq);
        let (events, end) = match batch {
            Ok((events, end)) => (events, Some(end)),
            Err((events, raised)) => {
                tracing::warn!(raised, "catch-up raised: the channel crashes");
                (events, None)
            }
        };
        let msgpack = ctx.protocol() == Protocol::MessagePack;
        let events: Vec<Payload> = events
            .into_iter()
            .map(|event| {
                if msgpack {
                    super::msgpack::catch_up_event(&data, event)
                } else {
                    Payload::Json(event)
                }
            })
            .collect();
        drop(data);
        for event in events {
            if crashes(ctx.push("event", event)) {
                return Handled::Crash;
            }
        }
        match end {
            Some(BatchEnd::Continue(seq)) => {
                // The BEAM preempts a long batch: what the client sent meanwhile is in the
                // mailbox before the next batch's message. Let the connection deliver it.
                tokio::task::yield_now().await;
                ctx.send_self(Box::new(CatchUp::From(json!(seq))));
                Handled::NoReply
            }
            Some(BatchEnd::Complete(through)) => {
                handled_send(ctx.push("catch_up_complete", json!({"through_seq": through})))
            }
            None => Handled::Crash,
        }
    }
}

impl StoreChannel {
    /// Authorization for the current store, then the rate limit.
    fn admit(&self, joined: &Joined, scope: &'static str) -> Result<(), Reply> {
        DustShared::authorize(&joined.token, &joined.store, scope)
            .map_err(|e| Reply::error(e.reply()))?;
        self.dust.check_rate(&joined.token.token).map_err(|retry| {
            Reply::error(json!({"reason": "rate_limited", "retry_after_ms": retry}))
        })
    }

    /// Joins an unknown `org/name` by creating it, when allowed; `unauthorized` otherwise
    /// (what the real server answers for a store that does not exist).
    async fn auto_create(
        &self,
        store_ref: &str,
        token: &super::config::TokenConfig,
    ) -> Result<Arc<StoreHandle>, Value> {
        let unauthorized = || json!({"reason": "unauthorized"});
        let (org, name) = split_name(store_ref).ok_or_else(unauthorized)?;
        let exists = self.dust.find(store_ref).is_some();
        if !self.dust.auto_create || exists || !DustShared::token_reaches(token, org, store_ref) {
            return Err(unauthorized());
        }
        self.dust.create_store(org, name).await.map_err(|error| {
            tracing::error!(%error, "cannot persist a new store");
            unauthorized()
        })
    }

    /// Commits a write or `put_file` on its own task ([`commit_write`]), then applies the armed
    /// reply fault, if any, to its reply. The channel awaits it: its writes are committed one
    /// at a time, in arrival order, each taking the configured write cost first.
    async fn commit(
        &self,
        joined: &Joined,
        params: Map<String, Value>,
        as_sent: Option<rmpv::Value>,
        kind: WriteKind,
        ctx: &ChannelContext,
    ) -> Handled {
        let cost = self.dust.write_cost();
        if !cost.is_zero() {
            tokio::time::sleep(cost).await;
        }
        let outcome = tokio::spawn(commit_write(
            self.dust.clone(),
            joined.store.clone(),
            params,
            as_sent,
            joined.device_id.clone(),
            ctx.broadcaster(),
            kind,
        ))
        .await;
        let reply = match outcome {
            Ok(Outcome::Reply(reply)) => reply,
            Ok(Outcome::Crash) | Err(_) => return Handled::Crash,
        };
        match self.dust.take_reply_fault() {
            None => Handled::Reply(reply),
            Some(ReplyFault::Drop) => {
                tracing::info!("reply dropped (fault)");
                Handled::NoReply
            }
            Some(ReplyFault::Delay(delay)) => match ctx.reply_ref() {
                Some(to) => {
                    tracing::info!(?delay, "reply delayed (fault)");
                    ctx.send_after(delay, Box::new(DelayedReply { to, reply }));
                    Handled::NoReply
                }
                None => Handled::Reply(reply),
            },
        }
    }

    /// The `status` reply (`build_status/1`).
    async fn status(&self, joined: &Joined) -> Value {
        let data = joined.store.data.lock().await;
        let allowed =
            DustShared::token_reaches(&joined.token, &joined.store.org, &joined.store.full_name());
        let recent: Vec<Value> = data
            .ops
            .values()
            .rev()
            .take(5)
            .map(|op| {
                json!({
                    "store_seq": op.seq,
                    "op": op.op.as_str(),
                    "path": op.path,
                    "inserted_at": op.inserted_at,
                })
            })
            .collect();
        json!({
            "current_seq": data.current_seq(),
            "entry_count": data.entries.len(),
            "op_count": data.op_count,
            // The store row's cached column, which nothing on the real server updates.
            "file_storage_bytes": 0,
            "db_size_bytes": approximate_db_size(&data),
            "expires_at": null,
            "permissions": {
                "read": allowed && joined.token.scopes.contains("entries:read"),
                "write": allowed && joined.token.scopes.contains("entries:write"),
            },
            "scopes": joined.token.scopes,
            "store_access": self.dust.store_access(&joined.token),
            "latest_snapshot_seq": data.snapshot.as_ref().map(|s| s.seq),
            "latest_snapshot_at": data.snapshot.as_ref().map(|s| s.inserted_at.clone()),
            "recent_ops": recent,
        })
    }
}

/// Whether a failed push crashes the channel: an encoding error does (Phoenix raises); a gone
/// connection does not (a draining channel's push to a dead transport is lost, nothing more).
fn crashes(sent: Result<(), SendError>) -> bool {
    matches!(sent, Err(SendError::Encode(_)))
}

/// [`Handled::NoReply`] after a push or reply, unless it [`crashes`].
fn handled_send(sent: Result<(), SendError>) -> Handled {
    if crashes(sent) {
        Handled::Crash
    } else {
        Handled::NoReply
    }
}

/// The real server reports its SQLite file's size; the emulation reports the size of the
/// store's rows as JSON.
fn approximate_db_size(data: &store::StoreData) -> usize {
    let ops: usize = data
        .ops
        .values()
        .map(|op| serde_json::to_vec(op).map_or(0, |v| v.len()))
        .sum();
    let entries: usize = data
        .entries
        .iter()
        .map(|(p, e)| p.len() + e.kind.len() + e.value.to_string().len())
        .sum();
    ops + entries
}

/// The journal record and the stored content of a blob uploaded for the first time (its
/// params were checked by the plan: `content` is valid base64).
fn new_blob(hash: &str, params: &Map<String, Value>) -> (super::persist::Record, BlobFile) {
    use base64::Engine as _;
    // The plan checked `content` with this engine.
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let content_base64 = text("content").unwrap_or_default();
    let content = store::base64_engine()
        .decode(&content_base64)
        .unwrap_or_default();
    let content_type = text("content_type").unwrap_or_else(|| "application/octet-stream".into());
    let filename = text("filename");
    (
        super::persist::Record::Blob {
            hash: hash.to_owned(),
            content_base64,
            content_type: content_type.clone(),
            filename: filename.clone(),
        },
        BlobFile {
            content: content.into(),
            content_type,
            filename,
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Write,
    PutFile,
}

/// Plans, persists, applies and broadcasts one write, under the store's lock. Runs in its own
/// task: once planned, a write completes even if its channel is gone (its reply is lost, as
/// when the real server's channel dies while the writer commits).
async fn commit_write(
    dust: Arc<DustShared>,
    store: Arc<StoreHandle>,
    params: Map<String, Value>,
    as_sent: Option<rmpv::Value>,
    device_id: String,
    broadcaster: Broadcaster,
    kind: WriteKind,
) -> Outcome {
    if dust.take_crash_next() {
        tracing::info!("the write crashes its channel (fault)");
        return Outcome::Crash;
    }
    let _gate = dust.gate.read().await;
    let mut data = store.data.lock().await;
    let now = dust.now();
    let ctx = WriteCtx {
        device_id: &device_id,
        archived: store.archived(),
        limits: dust.limits,
        now,
    };
    let planned = match kind {
        WriteKind::Write => data.plan_write(&params, ctx),
        WriteKind::PutFile => {
            let blobs = crate::shared::lock(&dust.blobs).clone();
            data.plan_put_file(&params, ctx, &blobs)
                .map(|row| Plan::Commit(Box::new(row)))
        }
    };
    let row: OpRow = match planned {
        Ok(Plan::Commit(row)) => *row,
        Ok(Plan::Noop) => return Outcome::Reply(Reply::ok(json!({"released": false}))),
        Err(Reject::Reply(response)) => return Outcome::Reply(Reply::error(response)),
        Err(Reject::Crash(raised)) => {
            tracing::warn!(raised, "the write raised: the channel crashes");
            return Outcome::Crash;
        }
    };
    // The writer cannot encode a string that is not UTF-8: its transaction fails.
    if let Some(response) = as_sent.as_ref().and_then(super::msgpack::invalid_utf8) {
        return Outcome::Reply(Reply::error(response));
    }
    if dust.crashes_at(&row.path) {
        tracing::info!(path = row.path, "the write crashes its channel (fault)");
        return Outcome::Crash;
    }
    // A new blob's content is written before its op, as the real server writes the blob file
    // before the op that references it.
    let new_file = match &row.blob {
        Some((hash, _)) if !crate::shared::lock(&dust.files).contains_key(hash) => {
            Some(new_blob(hash, &params))
        }
        _ => None,
    };
    if let Some((record, _)) = &new_file
        && let Err(error) = dust.persist(record).await
    {
        tracing::error!(%error, "blob not persisted");
        return Outcome::Reply(Reply::error(
            json!({ "reason": format!("persist failed: {error}") }),
        ));
    }
    if let Some((super::persist::Record::Blob { hash, .. }, file)) = new_file {
        crate::shared::lock(&dust.files).entry(hash).or_insert(file);
    }
    let record = super::persist::Record::Op {
        store: store.id.clone(),
        row: row.clone(),
    };
    if let Err(error) = dust.persist(&record).await {
        tracing::error!(%error, "write not persisted");
        return Outcome::Reply(Reply::error(
            json!({ "reason": format!("persist failed: {error}") }),
        ));
    }
    let materialized = data.apply(&row, Some(now.mono_ms));
    if let Some((hash, size)) = &row.blob {
        crate::shared::lock(&dust.blobs).insert(hash.clone(), *size);
    }
    let value = match store::event_value(&row, materialized) {
        Ok(value) => value,
        Err(raised) => {
            tracing::warn!(
                raised = raised.0,
                "formatting the event raised: the channel crashes"
            );
            return Outcome::Crash;
        }
    };
    // Every joiner of the writer's topic, the writer included, before the reply.
    let event = store::live_event(&row, value);
    let event = super::msgpack::live_event(&row, event.clone(), as_sent.as_ref())
        .unwrap_or(Payload::Json(event));
    broadcaster.broadcast("event", event);
    drop(data);
    let mut reply = store::write_reply(&row);
    if kind == WriteKind::PutFile
        && let (Value::Object(map), Some((hash, _))) = (&mut reply, &row.blob)
    {
        map.insert("hash".into(), Value::String(hash.clone()));
    }
    Outcome::Reply(Reply::ok(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capver_parses_like_integer_parse() {
        assert_eq!(parse_capver(None), 1);
        assert_eq!(parse_capver(Some("3")), 3);
        assert_eq!(parse_capver(Some("+4")), 4);
        assert_eq!(parse_capver(Some("3a")), 1);
        assert_eq!(parse_capver(Some(" 3")), 1);
        assert_eq!(parse_capver(Some("-7")), -7);
        assert!(parse_capver(Some(&"9".repeat(60))) > 3);
    }
}
