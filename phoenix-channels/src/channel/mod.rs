//! Channel handles: join, leave, push, cast, state, and the stream of messages.

mod shared;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::backoff::RejoinPolicy;
use crate::driver::queue::{self, Delivery, Item, QueueRx};
use crate::driver::{Command, ReplyReader};
use crate::error::{JoinError, Lagged, PushError};
use crate::handler::{ChannelContext, ChannelHandler, HandlerTask};
use crate::proto::channel::{ChannelOptions, ChannelState, CloseCause, JoinParams};
use crate::proto::message::{Event, Message, Payload, Ref, Reply, Topic};
use crate::proto::push::PushRequest;
use crate::socket::{Room, RoomWait, Socket};
pub(crate) use shared::{ChannelShared, WeakChannel};

/// Configures a channel before it is created; from [`Socket::channel`].
///
/// Finish with [`stream`](Self::stream) (messages as a stream) or [`handler`](Self::handler)
/// (messages to a [`ChannelHandler`]). Creating a channel does not join it: call
/// [`Channel::join`].
#[must_use = "a channel builder does nothing until `stream` or `handler` is called"]
pub struct ChannelBuilder<'a> {
    socket: &'a Socket,
    topic: Topic,
    params: Payload,
    options: ChannelOptions,
    queue_capacity: usize,
    push_timeout: Duration,
}

impl fmt::Debug for ChannelBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<'a> ChannelBuilder<'a> {
    pub(crate) fn new(socket: &'a Socket, topic: Topic) -> Self {
        let defaults = socket.defaults();
        Self {
            socket,
            topic,
            params: Payload::empty(),
            options: ChannelOptions::default(),
            queue_capacity: defaults.queue_capacity,
            push_timeout: defaults.push_timeout,
        }
    }

    /// The join params (default `{}`), sent on every join and rejoin. A handler can compute
    /// fresh ones instead with [`ChannelHandler::join_params`].
    pub fn params(mut self, params: impl Into<Payload>) -> Self {
        self.params = params.into();
        self
    }

    /// How long a join (and a leave) may wait for its reply (default: the socket's, 10 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.options.join_timeout = Some(timeout);
        self
    }

    /// When and whether to rejoin after a failed join or a crash (default: the socket's).
    pub fn rejoin_policy(mut self, policy: impl RejoinPolicy + 'static) -> Self {
        self.options.rejoin = Some(Arc::new(policy));
        self
    }

    /// Rejoin after the server closes the channel (`phx_close`), as after a crash: the
    /// handler sees [`ErrorCause::ServerClosed`](crate::ErrorCause::ServerClosed) and the
    /// channel rejoins when its rejoin policy says (the policy is asked with
    /// [`RejoinCause::ServerClosed`](crate::RejoinCause::ServerClosed) and may stop). By
    /// default a server close ends the channel for good, as in phoenix.js.
    pub fn rejoin_after_server_close(mut self, rejoin: bool) -> Self {
        self.options.rejoin_after_server_close = rejoin;
        self
    }

    /// How many pushes may wait for the join before further pushes fail with
    /// [`PushError::BufferFull`] (default: the socket's, 1024).
    pub fn push_buffer(mut self, capacity: usize) -> Self {
        self.options.buffer_capacity = Some(capacity);
        self
    }

    /// How many messages may wait for the consumer before further ones are dropped and
    /// reported (default: the socket's, 1024).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// The default timeout of this channel's pushes (default: the socket's, 10 s).
    pub fn push_timeout(mut self, timeout: Duration) -> Self {
        self.push_timeout = timeout;
        self
    }

    /// Creates the channel, with its messages delivered as a stream.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use phoenix_channels::Socket;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let socket = Socket::builder("ws://localhost:4000/socket").connect()?;
    /// let (channel, mut messages) = socket.channel("room:lobby").stream();
    /// channel.join().await?;
    /// while let Some(Ok(message)) = messages.next().await {
    ///     println!("{} {:?}", message.event, message.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(mut self) -> (Channel, Messages) {
        self.options.params = JoinParams::Static(self.params.clone());
        let (channel, rx) = self.register();
        (channel, Messages { queue: rx })
    }

    /// Creates the channel, with everything that happens on it delivered to `handler` on the
    /// channel's own task.
    pub fn handler<H: ChannelHandler>(mut self, handler: H) -> Channel {
        self.options.params = JoinParams::Ask;
        let default_params = self.params.clone();
        let socket = self.socket.clone();
        let (channel, rx) = self.register();
        let task = HandlerTask {
            handler,
            queue: rx,
            ctx: channel.context(),
            default_params,
            socket_status: socket.status_watch(),
            commands: socket.weak_commands(),
            id: channel.inner.id,
        };
        socket.spawn(task.run());
        channel
    }

    /// Creates the channel: one allocation holds its identity, queue and state.
    fn register(self) -> (Channel, QueueRx) {
        let id = self.socket.next_channel_id();
        let shared = Arc::new(ChannelShared::new(
            id,
            self.topic.clone(),
            self.push_timeout,
        ));
        let (tx, rx) = queue::queue(shared.clone(), self.queue_capacity);
        self.socket.send(Command::AddChannel {
            id,
            topic: self.topic,
            options: self.options,
            queue: tx,
        });
        (Channel::first_handle(shared, self.socket.clone()), rx)
    }
}

/// A channel of a [`Socket`]: a cheap `Clone` handle.
///
/// Once joined, the channel stays joined across reconnects and crashes (it rejoins on its
/// schedule) until it is left, closed by the server, or its rejoin policy gives up. When the
/// last handle is dropped, the channel is left and forgotten.
///
/// ```no_run
/// use phoenix_channels::Socket;
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = Socket::builder("ws://localhost:4000/socket").connect()?;
/// let (channel, _messages) = socket.channel("room:lobby").params(json!({"name": "ada"})).stream();
/// let joined = channel.join().await?;
/// let reply = channel.push("new_msg", json!({"body": "hi"})).await?;
/// assert!(reply.is_ok());
/// channel.leave().await;
/// # Ok(()) }
/// ```
pub struct Channel {
    inner: Arc<ChannelShared>,
    socket: Socket,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("topic", &self.inner.topic)
            .field("state", &self.inner.queue.current_state())
            .finish()
    }
}

impl Channel {
    pub(crate) fn context(&self) -> ChannelContext {
        ChannelContext {
            topic: self.inner.topic.clone(),
            channel: WeakChannel::new(self),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.inner.topic
    }

    /// The current state.
    pub fn state(&self) -> ChannelState {
        self.inner.queue.current_state()
    }

    /// A receiver of the state, to await changes (the current state counts as seen). Its
    /// sender is dropped when the channel is forgotten or the socket stops.
    pub fn state_watch(&self) -> watch::Receiver<ChannelState> {
        self.inner.queue.watch_state()
    }

    /// Joins the channel and waits for the first outcome: the server's join response, or why
    /// the attempt failed. Joining again while joined returns the last join response.
    ///
    /// The join starts when this is called, not when the future is first polled; the channel
    /// stays joined (rejoining when needed) until [`leave`](Self::leave), even if the future is
    /// dropped or the first attempt fails.
    pub fn join(&self) -> impl Future<Output = Result<Payload, JoinError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.socket.send(Command::Join {
            id: self.inner.id,
            done: Some(tx),
        });
        // Outside tokio's cooperative budget, like a push's reply: a task awaiting a thousand
        // joins at once would otherwise see every answer past the budget's end refused, and
        // its join polled again for nothing.
        async move {
            tokio::task::coop::unconstrained(rx)
                .await
                .unwrap_or(Err(JoinError::Closed(CloseCause::SocketClosed(None))))
        }
    }

    /// Leaves the channel (at once, when called) and waits until it is closed (on the server's reply or the leave
    /// timeout). Pushes still waiting for the join fail with [`PushError::ChannelClosed`];
    /// pushes already sent keep waiting for their replies.
    pub fn leave(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.socket.send(Command::Leave {
            id: self.inner.id,
            done: Some(tx),
        });
        async move {
            let _ = tokio::task::coop::unconstrained(rx).await;
        }
    }

    /// Pushes `event` with `payload` serialized to JSON, and waits for the reply (any status)
    /// or the push timeout.
    ///
    /// The push is sent (or buffered, while the channel is joining) when this is called, not
    /// when the future is first polled, so pushes go out in call order; dropping the future only
    /// discards the reply. When the socket's outgoing buffer is full, it waits (in call order)
    /// for room instead, with its timeout running; see [`push_with`](Self::push_with).
    pub fn push(&self, event: impl Into<Event>, payload: impl Serialize) -> Push {
        match Payload::json(&payload) {
            Ok(payload) => self.push_with_timeout(event, payload, self.inner.push_timeout),
            Err(e) => Push::failed(PushError::Payload(e.to_string())),
        }
    }

    /// Pushes a prepared payload: JSON, or binary (sent as a binary frame).
    pub fn push_payload(&self, event: impl Into<Event>, payload: Payload) -> Push {
        self.push_with_timeout(event, payload, self.inner.push_timeout)
    }

    /// Pushes a prepared payload with its own timeout.
    pub fn push_with_timeout(
        &self,
        event: impl Into<Event>,
        payload: Payload,
        timeout: Duration,
    ) -> Push {
        self.push_with(event, payload, PushOptions::new().timeout(timeout))
    }

    /// Pushes a prepared payload with options: a timeout, and optionally a pin to one join of
    /// the channel (sent only while the channel is joined under that join, never buffered).
    ///
    /// When the socket's outgoing buffer is full ([`SocketBuilder::outgoing_limit`]), the push
    /// waits for room, in call order, before it is sent; its timeout runs meanwhile, and
    /// dropping the future then withdraws it. [`try_push_with`](Self::try_push_with) fails
    /// at once instead.
    ///
    /// [`SocketBuilder::outgoing_limit`]: crate::SocketBuilder::outgoing_limit
    pub fn push_with(
        &self,
        event: impl Into<Event>,
        payload: Payload,
        options: PushOptions,
    ) -> Push {
        let (request, timeout) = self.request(event.into(), payload, &options);
        let cost = self.cost(&request);
        match self.socket.reserve(cost, true) {
            Room::Now(cost) => self.send_push(request, cost),
            Room::Later(wait, cost) => Push(PushState::Room(Box::new(WaitingForRoom {
                wait,
                cost,
                channel: self.clone(),
                request: Some(request),
                deadline: Box::pin(tokio::time::sleep(timeout)),
            }))),
            Room::Full => Push::failed(self.full()),
            Room::Closed => Push::failed(PushError::SocketClosed),
        }
    }

    /// [`push`](Self::push) that fails at once with [`PushError::OutgoingFull`] when the
    /// socket's outgoing buffer is full, instead of waiting for room.
    pub fn try_push(
        &self,
        event: impl Into<Event>,
        payload: impl Serialize,
    ) -> Result<Push, PushError> {
        let payload = Payload::json(&payload).map_err(|e| PushError::Payload(e.to_string()))?;
        self.try_push_with(event, payload, PushOptions::new())
    }

    /// [`push_with`](Self::push_with) that fails at once with [`PushError::OutgoingFull`]
    /// when the socket's outgoing buffer is full, instead of waiting for room.
    pub fn try_push_with(
        &self,
        event: impl Into<Event>,
        payload: Payload,
        options: PushOptions,
    ) -> Result<Push, PushError> {
        let (request, _) = self.request(event.into(), payload, &options);
        match self.socket.reserve(self.cost(&request), false) {
            Room::Now(cost) => Ok(self.send_push(request, cost)),
            Room::Closed => Err(PushError::SocketClosed),
            Room::Full | Room::Later(..) => Err(self.full()),
        }
    }

    fn request(
        &self,
        event: Event,
        payload: Payload,
        options: &PushOptions,
    ) -> (PushRequest, Duration) {
        let timeout = options.timeout.unwrap_or(self.inner.push_timeout);
        let request = PushRequest {
            pinned: options.pinned.clone(),
            ..PushRequest::new(event, payload, timeout)
        };
        (request, timeout)
    }

    /// What a push counts against the outgoing limit: its frame's size, over-estimated.
    fn cost(&self, request: &PushRequest) -> usize {
        request.payload.as_bytes().len() + request.event.len() + self.inner.topic.len() + 64
    }

    fn full(&self) -> PushError {
        PushError::OutgoingFull {
            limit: self.socket.outgoing_limit(),
        }
    }

    /// Sends a push whose room is reserved.
    fn send_push(&self, request: PushRequest, cost: usize) -> Push {
        let (tx, rx) = oneshot::channel();
        let reader = self.socket.reply_reader();
        self.socket.send_push(
            Command::Push {
                id: self.inner.id,
                request,
                reply: Some(tx),
                cost,
            },
            Some(&reader),
        );
        Push(PushState::Waiting(rx, reader))
    }

    /// Sends `event` without waiting for a reply, for events the server never answers. Sent
    /// after the join if the channel is joining; dropped (with a debug log) if the channel is
    /// closed. Fails at once if the payload cannot be serialized, or with
    /// [`PushError::OutgoingFull`] if the socket's outgoing buffer is full (nothing is sent).
    pub fn cast(&self, event: impl Into<Event>, payload: impl Serialize) -> Result<(), PushError> {
        let payload = Payload::json(&payload).map_err(|e| PushError::Payload(e.to_string()))?;
        self.try_cast_payload(event, payload)
    }

    /// [`cast`](Self::cast) with a prepared payload (JSON or binary). It cannot wait and
    /// returns nothing: when the socket's outgoing buffer is full, the cast is dropped and
    /// counted in [`Socket::dropped_casts`](crate::Socket::dropped_casts) (and logged at debug
    /// level). Use [`try_cast_payload`](Self::try_cast_payload) to be told.
    pub fn cast_payload(&self, event: impl Into<Event>, payload: Payload) {
        if let Err(error) = self.try_cast_payload(event, payload) {
            if matches!(error, PushError::OutgoingFull { .. }) {
                self.socket.count_dropped_cast();
            }
            tracing::debug!(topic = %self.inner.topic, %error, "cast dropped");
        }
    }

    /// [`cast`](Self::cast) with a prepared payload: fails with [`PushError::OutgoingFull`]
    /// (nothing is sent) when the socket's outgoing buffer is full.
    pub fn try_cast_payload(
        &self,
        event: impl Into<Event>,
        payload: Payload,
    ) -> Result<(), PushError> {
        let request = PushRequest::new(event.into(), payload, self.inner.push_timeout);
        match self.socket.reserve(self.cost(&request), false) {
            Room::Now(cost) => {
                self.socket.send_push(
                    Command::Push {
                        id: self.inner.id,
                        request,
                        reply: None,
                        cost,
                    },
                    None,
                );
                Ok(())
            }
            Room::Closed => Err(PushError::SocketClosed),
            Room::Full | Room::Later(..) => Err(self.full()),
        }
    }
}

/// Options of [`Channel::push_with`].
///
/// ```
/// use std::time::Duration;
/// use phoenix_channels::PushOptions;
/// let options = PushOptions::new().timeout(Duration::from_secs(30));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    timeout: Option<Duration>,
    pinned: Option<Ref>,
}

impl PushOptions {
    /// The channel's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// This push's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the push only if the channel is joined under the join with this ref (from
    /// [`Joined::join_ref`](crate::Joined)); otherwise it fails at once with
    /// [`PushError::Unavailable`] and is never sent, not even after a rejoin. This is how a
    /// consumer that resends after a rejoin makes sure nothing it sent earlier goes out late.
    pub fn pinned_to(mut self, join_ref: Ref) -> Self {
        self.pinned = Some(join_ref);
        self
    }
}

enum PushState {
    Failed(Option<PushError>),
    /// Waiting for room in the outgoing buffer.
    Room(Box<WaitingForRoom>),
    /// Waiting for the reply, which this push's task may read itself.
    Waiting(oneshot::Receiver<Result<Reply, PushError>>, ReplyReader),
}

impl fmt::Debug for PushState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
            Self::Room(_) => f.write_str("WaitingForRoom"),
            Self::Waiting(..) => f.write_str("WaitingForReply"),
        }
    }
}

/// A push waiting for room in the outgoing buffer, and for at most its timeout.
struct WaitingForRoom {
    wait: RoomWait,
    cost: usize,
    channel: Channel,
    request: Option<PushRequest>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The reply of a push: resolves to the server's [`Reply`] (whatever its status) or a
/// [`PushError`].
#[derive(Debug)]
#[must_use = "the push is sent either way; await this to get its reply"]
pub struct Push(PushState);

impl Push {
    pub(crate) fn failed(error: PushError) -> Self {
        Self(PushState::Failed(Some(error)))
    }
}

impl Future for Push {
    type Output = Result<Reply, PushError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            return match &mut self.0 {
                PushState::Failed(error) => {
                    Poll::Ready(Err(error.take().unwrap_or(PushError::SocketClosed)))
                }
                PushState::Room(room) => match room.wait.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        permit.forget();
                        let Some(request) = room.request.take() else {
                            return Poll::Ready(Err(PushError::SocketClosed));
                        };
                        let sent = room.channel.send_push(request, room.cost);
                        self.0 = sent.0;
                        continue;
                    }
                    Poll::Ready(Err(_)) => Poll::Ready(Err(PushError::SocketClosed)),
                    Poll::Pending => match room.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(PushError::Timeout)),
                        Poll::Pending => Poll::Pending,
                    },
                },
                PushState::Waiting(rx, reader) => reader.poll_reply(rx, cx),
            };
        }
    }
}

/// The messages of a channel created with [`ChannelBuilder::stream`]: server pushes and
/// broadcasts, in order, with `Err(Lagged(n))` where `n` messages were dropped because the
/// stream was not read fast enough. Ends when the channel is forgotten or the socket stops.
pub struct Messages {
    queue: QueueRx,
}

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages").finish_non_exhaustive()
    }
}

impl Stream for Messages {
    type Item = Result<Message, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.queue.poll_recv(cx) {
                Poll::Ready(Some(Item::Delivery(Delivery::Message(m)))) => {
                    Poll::Ready(Some(Ok(*m)))
                }
                Poll::Ready(Some(Item::Overflow(n))) => Poll::Ready(Some(Err(Lagged(n)))),
                // A stream channel gets no control notices; skip any.
                Poll::Ready(Some(Item::Delivery(_))) => continue,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
