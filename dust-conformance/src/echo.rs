//! The `echo:*` reference channel of PROTOCOL.md §3, identical to the one the reference Phoenix
//! server runs.
//!
//! | event | behaviour |
//! |---|---|
//! | `echo` | reply ok with the payload (a binary payload gets a binary reply) |
//! | `error_reply` | reply error with the payload |
//! | `noreply` | no reply ever |
//! | `slow` | reply ok with the payload after `payload.ms` milliseconds (missing: 0), without blocking other events |
//! | `broadcast` | broadcast `broadcasted` with the payload to every joiner of the topic, then reply ok `{}` |
//! | `push_me` | push `pushed` with the payload to this client, then reply ok `{}` |
//! | `push_binary` | push a binary frame, event `pushed_binary`, payload bytes `hi`; no reply |
//! | `crash` | `phx_error`, no reply |
//! | `stop` | `phx_close`, no reply |
//! | `disconnect_me` | close the whole websocket with code 1000 |
//! | anything else | reply error `{"reason": "unknown event", "event", "payload"}` |
//!
//! Joins reply `{"joined": topic, "params": params}`; params `{"reject": true}` get the error
//! `{"reason": "rejected"}`. Connect param `token=bad` (or the auth token `bad`) is refused (403).
//!
//! Where Phoenix would raise, the channel crashes (`phx_error`): a push that the connection's
//! serializer cannot encode (binary on V1), an unknown event with a binary payload (bytes cannot
//! go inside a JSON reply), `slow` with a binary payload.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::channel::{Channel, ChannelContext, Handled, Info, Reply, ReplyRef, SendError};
use crate::frame::Payload;
use crate::presence::PresenceChannel;
use crate::socket::{ConnectDecision, SocketConfig};

/// The echo socket: refuses `token=bad`, routes `echo:*` to [`EchoChannel`] and `presence:*`
/// to [`PresenceChannel`].
pub fn socket() -> SocketConfig {
    SocketConfig::new(|request| {
        let bad = request.params.get("token").is_some_and(|t| t == "bad")
            || request.auth_token.as_deref() == Some("bad");
        if bad {
            ConnectDecision::Refuse
        } else {
            ConnectDecision::Accept(Default::default())
        }
    })
    .channel("echo:*", |_topic| Box::new(EchoChannel::default()))
    .channel("presence:*", |_topic| Box::new(PresenceChannel::default()))
}

/// The `echo:*` channel (see the module docs).
#[derive(Debug, Default)]
pub struct EchoChannel {
    _private: (),
}

/// The delayed reply of `slow`.
struct SlowReply {
    to: ReplyRef,
    payload: Value,
}

#[async_trait]
impl Channel for EchoChannel {
    async fn join(&mut self, params: Payload, ctx: &ChannelContext) -> Result<Value, Value> {
        let params = params.as_json().cloned().unwrap_or(Value::Null);
        if params.get("reject") == Some(&Value::Bool(true)) {
            return Err(json!({"reason": "rejected"}));
        }
        Ok(json!({"joined": ctx.topic(), "params": params}))
    }

    async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &ChannelContext) -> Handled {
        match event {
            "echo" => Handled::Reply(Reply::ok(ctx.as_sent(payload))),
            "error_reply" => Handled::Reply(Reply::error(ctx.as_sent(payload))),
            "noreply" => Handled::NoReply,
            "slow" => {
                let (Payload::Json(payload), Some(to)) = (payload, ctx.reply_ref()) else {
                    return Handled::Crash;
                };
                let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(0);
                ctx.send_after(
                    Duration::from_millis(ms),
                    Box::new(SlowReply { to, payload }),
                );
                Handled::NoReply
            }
            "broadcast" => {
                ctx.broadcast("broadcasted", ctx.as_sent(payload));
                Handled::Reply(Reply::ok(json!({})))
            }
            // Pushes to a gone connection (a draining channel) are lost, nothing more.
            "push_me" => match ctx.push("pushed", ctx.as_sent(payload)) {
                Ok(()) | Err(SendError::Disconnected) => Handled::Reply(Reply::ok(json!({}))),
                Err(_) => Handled::Crash,
            },
            "push_binary" => match ctx.push("pushed_binary", Bytes::from_static(b"hi")) {
                Ok(()) | Err(SendError::Disconnected) => Handled::NoReply,
                Err(_) => Handled::Crash,
            },
            "crash" => Handled::Crash,
            "stop" => Handled::Stop(None),
            "disconnect_me" => {
                ctx.close_socket(1000);
                Handled::NoReply
            }
            other => match payload {
                Payload::Json(payload) => Handled::Reply(Reply::error(json!({
                    "reason": "unknown event",
                    "event": other,
                    "payload": payload,
                }))),
                _ => Handled::Crash,
            },
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &ChannelContext) -> Handled {
        match info.downcast::<SlowReply>() {
            Ok(slow) => {
                let SlowReply { to, payload } = *slow;
                match ctx.reply(&to, Reply::ok(payload)) {
                    Ok(()) | Err(SendError::Disconnected) => Handled::NoReply,
                    Err(_) => Handled::Crash,
                }
            }
            Err(_) => Handled::NoReply,
        }
    }
}
