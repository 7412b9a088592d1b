//! The `presence:*` channel: Phoenix.Presence on one server, for testing presence clients
//! (phoenix.js's `Presence`, `phoenix_channels::presence::Presence`).
//!
//! Joining `presence:ROOM` with params `{"user": KEY, ...meta}` tracks the joiner under `KEY` (a
//! string, or a number taken as its decimal text; without `user`, the connection id, e.g.
//! `"3"`) with the meta `{...params without user, "phx_ref": REF}`, `REF` a unique string the
//! server makes (shaped like Phoenix's, e.g. `"GIiWGhK2mPD0Tj2b"`). The presence map is the
//! server's, per topic, shared by every connection and socket (a [`Control::restart`] drops
//! every connection, so every presence leaves).
//!
//! | when | what |
//! |---|---|
//! | join | reply ok `{"key": KEY, "phx_ref": REF}`; then, after the reply, push `presence_state` (the whole map) to the joiner and broadcast `presence_diff` `{"joins": {KEY: {"metas": [meta]}}, "leaves": {}}` to every joiner of the topic, the new one included |
//! | the channel ends (leave, stop, crash, duplicate join, connection closed or dropped) | its meta is removed; `presence_diff` `{"joins": {}, "leaves": {KEY: {"metas": [meta]}}}` to the topic's other joiners |
//! | event `presence_list` | reply ok with the map |
//! | event `update`, payload `{...meta}` | the meta becomes `{...payload without user, "phx_ref": NEW, "phx_ref_prev": REF}`; `presence_diff` with the new meta in `joins` and the old one in `leaves` of the same key (Phoenix's `Presence.update`); reply ok `{"phx_ref": NEW}` |
//! | event `crash` | the channel crashes (`phx_error`; its presence leaves) |
//! | any other event | reply error `{"reason": "unknown event", "event"}` |
//!
//! The map is `{KEY: {"metas": [meta, ...]}}`: a key joined from two connections has two metas,
//! in the order they were tracked (one connection joins a topic once: a second join replaces
//! the first, whose meta leaves). A join whose params are neither an object nor `null` is
//! refused with `{"reason": "params must be an object"}`, one whose `user` is neither a string
//! nor a number with `{"reason": "user must be a string or a number"}`.
//!
//! Every change to a topic's map is made, and its `presence_state` or `presence_diff` queued,
//! under one lock: each connection receives a topic's presence messages in the order of the
//! changes; a joiner's `presence_state` contains every change whose diff reached it before the
//! state, and the diffs of all later changes follow it. A joiner may get diffs between its join
//! reply and its `presence_state`; clients hold those until the state, as Phoenix's do.
//!
//! [`Control::restart`]: crate::Control::restart

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::channel::{Channel, ChannelContext, Handled, Info, Reply, TerminateReason};
use crate::frame::Payload;
use crate::shared::lock;

/// One tracked presence: a meta, with its `phx_ref`.
type Meta = Map<String, Value>;

/// The presence maps of a server, by topic: key → metas in tracking order.
#[derive(Debug)]
pub(crate) struct Presences {
    topics: Mutex<HashMap<String, BTreeMap<String, Vec<Meta>>>>,
    next_ref: AtomicU64,
    /// Makes this server's refs differ from another's.
    seed: u32,
}

impl Default for Presences {
    fn default() -> Self {
        Self {
            topics: Mutex::default(),
            next_ref: AtomicU64::new(0),
            // 32 bits from the process's random hash keys.
            seed: std::collections::hash_map::RandomState::new().hash_one("phx_ref") as u32,
        }
    }
}

impl Presences {
    /// A new `phx_ref` in the shape of Phoenix.Tracker's (12 bytes, URL-safe base64: 16
    /// characters): the wall clock in nanoseconds, then a scrambled counter. The counter part
    /// is a bijection of the counter, so a server never makes the same ref twice (for 2^32
    /// refs), whatever the clock does.
    fn next_ref(&self) -> String {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        // The low 32 bits of the counter: the bijection is of u32.
        let counter = n as u32;
        bytes[8..].copy_from_slice(&scramble(counter ^ self.seed).to_be_bytes());
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    }

    /// The map of a topic, as `presence_state` and `presence_list` carry it.
    fn list(&self, topic: &str) -> Value {
        state_json(lock(&self.topics).get(topic))
    }

    /// Adds a meta to `key`; then, still under the lock, `announce` gets the topic's whole map
    /// and the diff.
    fn track(&self, topic: &str, key: &str, meta: Meta, announce: impl FnOnce(Value, Value)) {
        let mut topics = lock(&self.topics);
        let presences = topics.entry(topic.to_owned()).or_default();
        presences
            .entry(key.to_owned())
            .or_default()
            .push(meta.clone());
        let state = state_json(Some(presences));
        announce(state, diff(Some((key, meta)), None));
    }

    /// Replaces the meta whose `phx_ref` is `old_ref` with `meta`; `announce` gets the diff
    /// (under the lock). False when there is no such meta.
    fn update(
        &self,
        topic: &str,
        key: &str,
        old_ref: &str,
        meta: Meta,
        announce: impl FnOnce(Value),
    ) -> bool {
        let mut topics = lock(&self.topics);
        let Some(slot) = topics
            .get_mut(topic)
            .and_then(|p| p.get_mut(key))
            .and_then(|metas| metas.iter_mut().find(|m| has_ref(m, old_ref)))
        else {
            return false;
        };
        let old = std::mem::replace(slot, meta.clone());
        announce(diff(Some((key, meta)), Some((key, old))));
        true
    }

    /// Removes the meta whose `phx_ref` is `phx_ref`; `announce` gets the diff (under the
    /// lock). Nothing happens when there is no such meta.
    fn untrack(&self, topic: &str, key: &str, phx_ref: &str, announce: impl FnOnce(Value)) {
        let mut topics = lock(&self.topics);
        let Some(presences) = topics.get_mut(topic) else {
            return;
        };
        let Some(metas) = presences.get_mut(key) else {
            return;
        };
        let Some(index) = metas.iter().position(|m| has_ref(m, phx_ref)) else {
            return;
        };
        let old = metas.remove(index);
        if metas.is_empty() {
            presences.remove(key);
        }
        if presences.is_empty() {
            topics.remove(topic);
        }
        announce(diff(None, Some((key, old))));
    }
}

/// A bijection of u32 (xor-shifts and odd multipliers, each invertible), so distinct inputs
/// give distinct outputs that look random.
fn scramble(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

fn has_ref(meta: &Meta, phx_ref: &str) -> bool {
    meta.get("phx_ref").and_then(Value::as_str) == Some(phx_ref)
}

fn state_json(presences: Option<&BTreeMap<String, Vec<Meta>>>) -> Value {
    let map: Map<String, Value> = presences
        .into_iter()
        .flatten()
        .map(|(key, metas)| (key.clone(), json!({ "metas": metas })))
        .collect();
    Value::Object(map)
}

fn diff(join: Option<(&str, Meta)>, leave: Option<(&str, Meta)>) -> Value {
    let entry = |side: Option<(&str, Meta)>| -> Value {
        let map: Map<String, Value> = side
            .map(|(key, meta)| (key.to_owned(), json!({ "metas": [meta] })))
            .into_iter()
            .collect();
        Value::Object(map)
    };
    json!({ "joins": entry(join), "leaves": entry(leave) })
}

/// The `presence:*` channel (see the module docs). The echo socket ([`crate::echo::socket`])
/// routes `presence:*` to it; mount it on another socket with
/// [`SocketConfig::channel`](crate::SocketConfig::channel). Presences are per server, shared by
/// all its sockets.
#[derive(Debug, Default)]
pub struct PresenceChannel {
    /// The key and meta chosen at join, tracked after the join reply.
    presence: Option<(String, Meta)>,
}

/// Tracks the joiner after its join reply (Phoenix's `send(self(), :after_join)`).
struct AfterJoin;

impl PresenceChannel {
    /// The `phx_ref` of this channel's meta.
    fn phx_ref(&self) -> Option<&str> {
        self.presence
            .as_ref()
            .and_then(|(_, meta)| meta.get("phx_ref"))
            .and_then(Value::as_str)
    }
}

#[async_trait]
impl Channel for PresenceChannel {
    async fn join(&mut self, params: Payload, ctx: &ChannelContext) -> Result<Value, Value> {
        let mut meta = match params {
            Payload::Json(Value::Object(map)) => map,
            Payload::Json(Value::Null) => Map::new(),
            _ => return Err(json!({"reason": "params must be an object"})),
        };
        let key = match meta.remove("user") {
            None | Some(Value::Null) => ctx.connection_id().to_string(),
            Some(Value::String(user)) => user,
            Some(Value::Number(user)) => user.to_string(),
            Some(_) => return Err(json!({"reason": "user must be a string or a number"})),
        };
        let phx_ref = ctx.shared().presences.next_ref();
        meta.insert("phx_ref".into(), Value::String(phx_ref.clone()));
        self.presence = Some((key.clone(), meta));
        ctx.send_self(Box::new(AfterJoin));
        Ok(json!({"key": key, "phx_ref": phx_ref}))
    }

    async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &ChannelContext) -> Handled {
        let presences = &ctx.shared().presences;
        match event {
            "presence_list" => Handled::Reply(Reply::ok(presences.list(ctx.topic()))),
            "update" => {
                let Payload::Json(Value::Object(mut meta)) = payload else {
                    return Handled::Reply(Reply::error(
                        json!({"reason": "the meta must be an object"}),
                    ));
                };
                let (Some((key, _)), Some(old_ref)) = (&self.presence, self.phx_ref()) else {
                    return Handled::Reply(Reply::error(json!({"reason": "not tracked"})));
                };
                let (key, old_ref) = (key.clone(), old_ref.to_owned());
                meta.remove("user");
                let new_ref = presences.next_ref();
                meta.insert("phx_ref".into(), Value::String(new_ref.clone()));
                meta.insert("phx_ref_prev".into(), Value::String(old_ref.clone()));
                let updated = presences.update(ctx.topic(), &key, &old_ref, meta.clone(), |diff| {
                    ctx.broadcast("presence_diff", diff);
                });
                if !updated {
                    return Handled::Reply(Reply::error(json!({"reason": "not tracked"})));
                }
                self.presence = Some((key, meta));
                Handled::Reply(Reply::ok(json!({"phx_ref": new_ref})))
            }
            "crash" => Handled::Crash,
            other => Handled::Reply(Reply::error(
                json!({"reason": "unknown event", "event": other}),
            )),
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &ChannelContext) -> Handled {
        if !info.is::<AfterJoin>() {
            return Handled::NoReply;
        }
        let Some((key, meta)) = &self.presence else {
            return Handled::NoReply;
        };
        let mut pushed = Ok(());
        ctx.shared()
            .presences
            .track(ctx.topic(), key, meta.clone(), |state, diff| {
                pushed = ctx.push("presence_state", state);
                ctx.broadcast("presence_diff", diff);
            });
        match pushed {
            Ok(()) => Handled::NoReply,
            // Phoenix's `push` to a dead transport: the channel goes too.
            Err(_) => Handled::Crash,
        }
    }

    async fn terminate(&mut self, _reason: TerminateReason, ctx: &ChannelContext) {
        let Some((key, meta)) = self.presence.take() else {
            return;
        };
        let Some(phx_ref) = meta.get("phx_ref").and_then(Value::as_str) else {
            return;
        };
        ctx.shared()
            .presences
            .untrack(ctx.topic(), &key, phx_ref, |diff| {
                ctx.broadcast("presence_diff", diff);
            });
    }
}
