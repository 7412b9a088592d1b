//! The channel extension point: Phoenix's `Phoenix.Channel` behaviour made Rust.
//!
//! Each join of a topic runs its own [`Channel`] instance in its own task (as Phoenix runs a
//! process per join): messages to one channel are handled in order, channels of one connection
//! run concurrently. A channel that returns [`Handled::Crash`] or panics crashes: its joiner gets
//! `phx_error`. One that returns [`Handled::Stop`] stops normally: `phx_close`. However a joined
//! channel ends, its [`Channel::terminate`] runs once, with the [`TerminateReason`].

mod task;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::control::ConnectionId;
use crate::frame::{EncodeError, Outgoing, Payload, Protocol, Ref};
use crate::shared::{ConnEvent, ConnLink, Shared};
use crate::socket::Assigns;

pub(crate) use task::{ChannelHandle, ChannelSpawn, Exit, JoinOutcome, spawn_channel};
/// A message a channel sends to itself ([`ChannelContext::send_self`],
/// [`ChannelContext::send_after`]), delivered to [`Channel::handle_info`]. Downcast it to the
/// type you sent.
pub type Info = Box<dyn Any + Send>;

/// A reply to a client push: `phx_reply` with `{"status", "response"}`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Reply {
    /// The status, usually `"ok"` or `"error"`.
    pub status: String,
    /// The response.
    pub response: Payload,
}

impl Reply {
    /// A reply with any status.
    pub fn new(status: impl Into<String>, response: impl Into<Payload>) -> Self {
        Self {
            status: status.into(),
            response: response.into(),
        }
    }

    /// `{"status": "ok", "response": response}`.
    pub fn ok(response: impl Into<Payload>) -> Self {
        Self::new("ok", response)
    }

    /// `{"status": "error", "response": response}`.
    pub fn error(response: impl Into<Payload>) -> Self {
        Self::new("error", response)
    }
}

/// What a channel does after handling a message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Handled {
    /// Reply to the push being handled (ignored, with a warning, in `handle_info`).
    Reply(Reply),
    /// Send nothing (Phoenix's `{:noreply, socket}`).
    NoReply,
    /// Stop normally, after an optional reply: the client gets `phx_close`.
    Stop(Option<Reply>),
    /// Crash: the client gets `phx_error` and no reply.
    Crash,
}

/// The ref of a client push, kept to reply later (Phoenix's `socket_ref/1` + `reply/2`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRef {
    ref_: Ref,
}

/// Why a channel could not send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message cannot be encoded with the connection's serializer (Phoenix would raise, and
    /// the channel would crash: return [`Handled::Crash`]).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The connection is gone. A channel still handling the messages it received before its
    /// connection died gets this for its pushes and replies: they are lost, as Phoenix's sends
    /// to a dead transport are; it is no reason to crash.
    #[error("the connection is closed")]
    Disconnected,
}

/// How long [`Channel::terminate`] may run before it is abandoned (Phoenix's 5 s shutdown
/// timeout of a channel process).
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a joined channel ended, as [`Channel::terminate`] is told (Phoenix's `terminate/2`
/// reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TerminateReason {
    /// The client left the topic (`phx_leave`; Phoenix: `{:shutdown, :left}`).
    Left,
    /// The channel stopped normally: it returned [`Handled::Stop`], or
    /// [`Control::close_channel`](crate::Control::close_channel) closed it (`phx_close`).
    Stopped,
    /// The channel crashed: it returned [`Handled::Crash`], panicked, returned a reply the
    /// connection's serializer cannot encode, or
    /// [`Control::crash_channel`](crate::Control::crash_channel) crashed it (`phx_error`).
    Crashed,
    /// Its connection closed, was dropped, or the server is stopping (Phoenix:
    /// `{:shutdown, :closed}`). Unless the server is stopping or restarting, the channel first
    /// handled every message it had received (see
    /// [`Control::drop_connection`](crate::Control::drop_connection)).
    SocketClosed,
    /// The client joined the same topic again on the same connection, which replaced this
    /// channel (Phoenix: `{:shutdown, :duplicate_join}`).
    DuplicateJoin,
}

/// A channel: one instance per join of a topic.
///
/// ```
/// use async_trait::async_trait;
/// use dust_conformance::channel::{Channel, ChannelContext, Handled, Reply};
/// use dust_conformance::Payload;
/// use serde_json::{Value, json};
///
/// #[derive(Debug, Default)]
/// struct Counter {
///     count: u64,
/// }
///
/// #[async_trait]
/// impl Channel for Counter {
///     async fn join(&mut self, _params: Payload, _ctx: &ChannelContext) -> Result<Value, Value> {
///         Ok(json!({"count": self.count}))
///     }
///
///     async fn handle_in(&mut self, event: &str, _payload: Payload, ctx: &ChannelContext) -> Handled {
///         match event {
///             "inc" => {
///                 self.count += 1;
///                 if ctx.broadcast("count", json!({"count": self.count})) == 0 {
///                     return Handled::Crash;
///                 }
///                 Handled::Reply(Reply::ok(json!({})))
///             }
///             _ => Handled::Reply(Reply::error(json!({"reason": "unknown event"}))),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Channel: Send + 'static {
    /// Handles `phx_join`: `Ok(response)` joins (reply ok), `Err(response)` refuses (reply
    /// error, no channel). Messages sent with [`ChannelContext::send_self`] here are handled
    /// after the join reply went out (Phoenix's `send(self(), :after_join)`).
    async fn join(&mut self, params: Payload, ctx: &ChannelContext) -> Result<Value, Value>;

    /// Handles a client push (any event but `phx_join`/`phx_leave`).
    async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &ChannelContext) -> Handled;

    /// Handles a message the channel sent itself.
    async fn handle_info(&mut self, info: Info, ctx: &ChannelContext) -> Handled {
        let _ = (info, ctx);
        Handled::NoReply
    }

    /// Called exactly once when a joined channel ends, whatever the reason (a refused or
    /// crashed join never made a channel: no call). A callback still running when the channel
    /// is ended from outside (crash or close control, duplicate join, restart, shutdown) is
    /// cancelled first; messages still queued are dropped. When its connection ends, the
    /// channel first handles, in order, every message it had received (its pushes and
    /// replies are lost, its broadcasts go out), then this runs with
    /// [`TerminateReason::SocketClosed`].
    ///
    /// By then the channel no longer receives its topic's broadcasts, so a
    /// [`ChannelContext::broadcast`] from here reaches the topic's other joiners only (as a
    /// message from a Phoenix channel that has exited). The connection's `phx_close` or
    /// `phx_error` goes out after it returns; when the connection is gone, what it pushes is
    /// dropped. It may run at most [`TERMINATE_TIMEOUT`]; a panic in it is logged. It does not
    /// run when the tokio runtime itself shuts down.
    async fn terminate(&mut self, reason: TerminateReason, ctx: &ChannelContext) {
        let _ = (reason, ctx);
    }
}

/// Messages from the connection (and the channel itself) to a channel task.
pub(crate) enum ChannelMsg {
    In {
        event: String,
        payload: Payload,
        ref_: Ref,
        msgpack: Option<Bytes>,
    },
    Leave {
        ref_: Ref,
    },
    Info(Info),
}

/// What a joined channel's context gives access to.
pub struct ChannelContext {
    topic: String,
    join_ref: Ref,
    link: Arc<ConnLink>,
    shared: Arc<Shared>,
    inbox: mpsc::WeakUnboundedSender<ChannelMsg>,
    current_ref: Option<Ref>,
    /// Under MessagePack, the push being handled's payload as the server would pack it back.
    current_msgpack: Option<Bytes>,
}

impl fmt::Debug for ChannelContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelContext")
            .field("topic", &self.topic)
            .field("join_ref", &self.join_ref)
            .field("connection", &self.link.id)
            .finish_non_exhaustive()
    }
}

impl ChannelContext {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The join_ref this channel's pushes and replies carry (the join's join_ref, or its ref
    /// when the client sent none).
    pub fn join_ref(&self) -> &Value {
        self.join_ref.value()
    }

    /// The connection this channel belongs to.
    pub fn connection_id(&self) -> ConnectionId {
        self.link.id
    }

    /// The connection's serializer.
    pub fn protocol(&self) -> Protocol {
        self.link.protocol
    }

    /// The socket path the connection came in on.
    pub fn socket_path(&self) -> &str {
        &self.link.path
    }

    /// The connection's query parameters.
    pub fn params(&self) -> &std::collections::BTreeMap<String, String> {
        &self.link.params
    }

    /// What the socket's connect callback assigned.
    pub fn assigns(&self) -> &Assigns {
        &self.link.assigns
    }

    /// The server's state.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Pushes an event to this client: `[join_ref, null, topic, event, payload]`.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) -> Result<(), SendError> {
        self.link.send(&Outgoing::Message {
            join_ref: self.join_ref.clone(),
            ref_: Ref::null(),
            topic: self.topic.clone(),
            event: event.to_owned(),
            payload: payload.into(),
        })
    }

    /// The ref of the push being handled, to reply later with [`ChannelContext::reply`]
    /// (`None` outside `handle_in`).
    pub fn reply_ref(&self) -> Option<ReplyRef> {
        self.current_ref.clone().map(|ref_| ReplyRef { ref_ })
    }

    /// The payload of the push being handled as its client sent it: over MessagePack, a
    /// [`Payload::Dual`] whose MessagePack rendering keeps what JSON cannot (integer map keys,
    /// timestamps); otherwise `payload` itself. Use it to echo a payload back.
    pub fn as_sent(&self, payload: Payload) -> Payload {
        match (payload, &self.current_msgpack) {
            (Payload::Json(json), Some(msgpack)) => Payload::Dual {
                json,
                msgpack: msgpack.clone(),
            },
            (payload, _) => payload,
        }
    }

    /// The MessagePack payload of the push being handled, as the server would pack it back.
    pub(crate) fn msgpack_payload(&self) -> Option<&Bytes> {
        self.current_msgpack.as_ref()
    }

    /// Replies to an earlier push.
    pub fn reply(&self, to: &ReplyRef, reply: Reply) -> Result<(), SendError> {
        self.link.send(&self.reply_message(to.ref_.clone(), reply))
    }

    /// Broadcasts to every joiner of this topic, on every connection, this one included:
    /// `[null, null, topic, event, payload]` (binary kind 2 for bytes). Returns how many
    /// joiners it reached (a binary payload does not reach V1 joiners).
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) -> usize {
        self.shared.broadcast(&self.topic, event, payload.into())
    }

    /// A handle that broadcasts to this topic from anywhere (a spawned task, say), like
    /// [`ChannelContext::broadcast`]; it outlives the channel.
    pub fn broadcaster(&self) -> Broadcaster {
        Broadcaster {
            shared: self.shared.clone(),
            topic: self.topic.clone(),
        }
    }

    /// Sends this channel a message, handled by [`Channel::handle_info`] after the messages
    /// already queued.
    pub fn send_self(&self, info: Info) {
        if let Some(inbox) = self.inbox.upgrade() {
            let _ = inbox.send(ChannelMsg::Info(info));
        }
    }

    /// Sends this channel a message after a delay (Phoenix's `Process.send_after/3`). Nothing is
    /// delivered if the channel is gone by then.
    pub fn send_after(&self, delay: Duration, info: Info) {
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox.send(ChannelMsg::Info(info));
            }
        });
    }

    /// Closes the whole websocket with this close code, after the frames already queued.
    pub fn close_socket(&self, code: u16) {
        let _ = self.link.events.send(ConnEvent::CloseSocket {
            code,
            reason: String::new(),
        });
    }

    fn reply_message(&self, ref_: Ref, reply: Reply) -> Outgoing {
        Outgoing::Reply {
            join_ref: self.join_ref.clone(),
            ref_,
            topic: self.topic.clone(),
            status: reply.status,
            response: reply.response,
        }
    }
}

/// Broadcasts to one topic (see [`ChannelContext::broadcaster`]). Cheap to clone.
#[derive(Clone)]
pub struct Broadcaster {
    shared: Arc<Shared>,
    topic: String,
}

impl fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcaster")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Broadcaster {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Broadcasts to every joiner of the topic, on every connection; returns how many it
    /// reached.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) -> usize {
        self.shared.broadcast(&self.topic, event, payload.into())
    }
}
