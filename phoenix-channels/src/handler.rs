//! The [`ChannelHandler`] trait: the extension point for code that reacts to a channel.

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::channel::PushOptions;
use crate::channel::{Channel, Push, WeakChannel};
use crate::driver::Command;
use crate::driver::queue::{Delivery, Item, QueueRx};
use crate::error::PushError;
use crate::proto::channel::{ChannelId, CloseCause, ErrorCause, RejoinCause};
use crate::proto::message::{Event, Message, Payload, Ref, Topic};
use crate::proto::{DisconnectReason, SocketStatus};

/// Reacts to what happens on a channel: Slipstream's callbacks, made Rust.
///
/// Every method has a default that does nothing, so a handler implements only what it needs.
/// The methods run on the channel's own task, one at a time and in order, never on the socket
/// task: a slow handler delays its own channel's messages but never heartbeats, replies or other
/// channels. If it falls [`queue_capacity`](crate::ChannelBuilder::queue_capacity) messages
/// behind, further messages are dropped and [`on_overflow`](Self::on_overflow) says how many.
///
/// ```
/// use async_trait::async_trait;
/// use phoenix_channels::{ChannelContext, ChannelHandler, Message, Payload};
///
/// struct Counter { last_seen: u64 }
///
/// #[async_trait]
/// impl ChannelHandler for Counter {
///     // Asked on every join and rejoin: resume from what we have seen.
///     async fn join_params(&mut self, _ctx: &ChannelContext) -> Option<Payload> {
///         Payload::json(&serde_json::json!({"after": self.last_seen})).ok()
///     }
///
///     async fn on_message(&mut self, ctx: &ChannelContext, message: Message) {
///         if message.event == "tick" {
///             self.last_seen += 1;
///             // Pushing from a handler is fine; the reply is awaited on this task only.
///             let _ = ctx.cast("ack", serde_json::json!({"seen": self.last_seen}));
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait ChannelHandler: Send + 'static {
    /// The params of the next join, asked on every join and rejoin; `None` uses the params given
    /// to the [`ChannelBuilder`](crate::ChannelBuilder) (`{}` by default).
    async fn join_params(&mut self, _ctx: &ChannelContext) -> Option<Payload> {
        None
    }

    /// The channel joined (or rejoined): the server's join response and this join's ref.
    async fn on_joined(&mut self, _ctx: &ChannelContext, _joined: Joined) {}

    /// A join attempt failed; the channel rejoins on its schedule unless its policy stops.
    async fn on_join_error(&mut self, _ctx: &ChannelContext, _cause: RejoinCause) {}

    /// A server push (with the channel's join ref) or a broadcast on the topic.
    async fn on_message(&mut self, _ctx: &ChannelContext, _message: Message) {}

    /// The channel crashed or lost its connection; it will rejoin.
    async fn on_error(&mut self, _ctx: &ChannelContext, _cause: ErrorCause) {}

    /// The channel closed and will not rejoin by itself.
    async fn on_close(&mut self, _ctx: &ChannelContext, _cause: CloseCause) {}

    /// The socket connected. Socket notices are coalesced: a drop and reconnect faster than the
    /// handler runs may be seen as nothing (the channel's own notices are never coalesced).
    async fn on_socket_connected(&mut self, _ctx: &ChannelContext) {}

    /// The socket lost its connection (`reason` is `None` when the user disconnected it).
    async fn on_socket_disconnected(
        &mut self,
        _ctx: &ChannelContext,
        _reason: Option<DisconnectReason>,
    ) {
    }

    /// `dropped` messages were dropped because the handler fell behind.
    async fn on_overflow(&mut self, _ctx: &ChannelContext, dropped: u64) {
        tracing::warn!(dropped, "channel handler overflow: messages dropped");
    }
}

/// A join that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Joined {
    /// The server's join response.
    pub response: Payload,
    /// The join ref of this join: pushes pinned to it with [`PushOptions::pinned_to`] are sent
    /// only while the channel is still joined under this join.
    pub join_ref: Ref,
}

/// What a handler can do with its channel: read its topic, push and cast.
///
/// It does not keep the channel alive: once every [`Channel`] handle is dropped, pushes fail
/// with [`PushError::ChannelClosed`].
#[derive(Clone, Debug)]
pub struct ChannelContext {
    pub(crate) topic: Topic,
    pub(crate) channel: WeakChannel,
}

impl ChannelContext {
    /// The channel's topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// A handle to the channel, while one still exists.
    pub fn channel(&self) -> Option<Channel> {
        self.channel.upgrade()
    }

    /// Pushes an event and waits for the reply; see [`Channel::push`].
    pub fn push(&self, event: impl Into<Event>, payload: impl Serialize) -> Push {
        match self.channel() {
            Some(channel) => channel.push(event, payload),
            None => Push::failed(PushError::ChannelClosed),
        }
    }

    /// Pushes a prepared payload (JSON or binary); see [`Channel::push_payload`].
    pub fn push_payload(&self, event: impl Into<Event>, payload: Payload) -> Push {
        match self.channel() {
            Some(channel) => channel.push_payload(event, payload),
            None => Push::failed(PushError::ChannelClosed),
        }
    }

    /// Pushes with options (timeout, join pinning); see [`Channel::push_with`].
    pub fn push_with(
        &self,
        event: impl Into<Event>,
        payload: Payload,
        options: PushOptions,
    ) -> Push {
        match self.channel() {
            Some(channel) => channel.push_with(event, payload, options),
            None => Push::failed(PushError::ChannelClosed),
        }
    }

    /// Sends an event without waiting for a reply; see [`Channel::cast`].
    pub fn cast(&self, event: impl Into<Event>, payload: impl Serialize) -> Result<(), PushError> {
        match self.channel() {
            Some(channel) => channel.cast(event, payload),
            None => Err(PushError::ChannelClosed),
        }
    }
}

/// Everything a handler task needs.
pub(crate) struct HandlerTask<H> {
    pub(crate) handler: H,
    pub(crate) queue: QueueRx,
    pub(crate) ctx: ChannelContext,
    pub(crate) default_params: Payload,
    pub(crate) socket_status: watch::Receiver<SocketStatus>,
    pub(crate) commands: mpsc::WeakUnboundedSender<Command>,
    pub(crate) id: ChannelId,
}

impl<H: ChannelHandler> HandlerTask<H> {
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("phoenix_channel", topic = %self.ctx.topic);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let ctx = self.ctx.clone();
        let mut connected = self.socket_status.borrow_and_update().is_connected();
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                item = self.queue.recv() => match item {
                    None => break,
                    Some(Item::Overflow(n)) => self.handler.on_overflow(&ctx, n).await,
                    Some(Item::Delivery(delivery)) => self.deliver(&ctx, delivery).await,
                },
                changed = self.socket_status.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let status = self.socket_status.borrow_and_update().clone();
                    if status.is_connected() == connected {
                        continue;
                    }
                    connected = status.is_connected();
                    match status {
                        SocketStatus::Connected => self.handler.on_socket_connected(&ctx).await,
                        SocketStatus::Reconnecting { reason, .. } => {
                            self.handler.on_socket_disconnected(&ctx, Some(reason)).await;
                        }
                        SocketStatus::Disconnected { reason } => {
                            self.handler.on_socket_disconnected(&ctx, reason).await;
                        }
                        SocketStatus::Connecting { .. } => {
                            self.handler.on_socket_disconnected(&ctx, None).await;
                        }
                    }
                }
            }
        }
    }

    async fn deliver(&mut self, ctx: &ChannelContext, delivery: Delivery) {
        match delivery {
            Delivery::JoinParams => {
                let params = self
                    .handler
                    .join_params(ctx)
                    .await
                    .unwrap_or_else(|| self.default_params.clone());
                if let Some(commands) = self.commands.upgrade() {
                    let _ = commands.send(Command::JoinParams {
                        id: self.id,
                        params,
                    });
                }
            }
            Delivery::Joined(joined) => self.handler.on_joined(ctx, *joined).await,
            Delivery::JoinFailed(cause) => self.handler.on_join_error(ctx, *cause).await,
            Delivery::Message(message) => self.handler.on_message(ctx, *message).await,
            Delivery::Errored(cause) => self.handler.on_error(ctx, *cause).await,
            Delivery::Closed(cause) => self.handler.on_close(ctx, *cause).await,
            // Turned into `Item::Overflow` by the queue.
            Delivery::Overflow => {}
        }
    }
}
