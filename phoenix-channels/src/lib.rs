//! A complete [Phoenix Channels](https://hexdocs.pm/phoenix/channels.html) client.
//!
//! A sans-io protocol core ([`proto`]) holds every rule of the protocol — refs and join refs,
//! heartbeats, push replies and timeouts, the channel states, the reconnect and rejoin
//! schedules — and a tokio task drives it over a WebSocket. You talk to that task through cheap
//! handles: a [`Socket`] and its [`Channel`]s.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use phoenix_channels::Socket;
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let socket = Socket::builder("ws://localhost:4000/socket")
//!         .param("token", "secret") // or `.params_provider(...)` for a fresh token per connect
//!         .connect()?;
//!
//!     let (room, mut messages) = socket.channel("room:lobby").params(json!({"nick": "ada"})).stream();
//!     let joined = room.join().await?;
//!     println!("joined: {joined:?}");
//!
//!     let reply = room.push("new_msg", json!({"body": "hello"})).await?;
//!     println!("reply: {} {:?}", reply.status(), reply.response());
//!
//!     while let Some(Ok(message)) = messages.next().await {
//!         println!("{}: {:?}", message.event, message.payload);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! For code that reacts to a channel (and computes fresh join params on every rejoin), implement
//! [`ChannelHandler`] and create the channel with
//! [`socket.channel(topic).handler(h)`](ChannelBuilder::handler).
//!
//! # What it does for you
//!
//! - **Reconnects** on the phoenix.js schedule (10, 50, 100, 150, 200, 250, 500, 1000, 2000, then
//!   5000 ms; optional jitter), and stops with a clear reason when retrying cannot help (an HTTP
//!   4xx answer to the upgrade, such as 403, or a TLS certificate it does not trust): see
//!   [`backoff::ReconnectSchedule`]. The schedule starts over only once a connection has
//!   proven healthy — up for 10 s ([`SocketBuilder::healthy_after`]) or a heartbeat answered
//!   — so a server that accepts and then drops the connection is redialled on the growing
//!   schedule, not every 10 ms. The connect params can come from an async provider called on
//!   every attempt.
//! - **Rejoins** every joined channel after a reconnect, and after a failed join or a crash on
//!   the schedule 1000, 2000, 5000, then 10000 ms, with a policy that can stop on chosen reasons
//!   ([`backoff::RejoinSchedule`]). Every join uses a new join ref; messages of an outdated join
//!   are dropped.
//! - **Heartbeats** every 30 s, with a separately configurable reply timeout; a missed reply
//!   drops the connection and reconnects.
//! - **Pushes** resolve to the reply or a timeout. Pushes made while the channel is joining wait
//!   in a bounded buffer (their timeout runs meanwhile). Pushes in flight when the connection
//!   drops fail at once with [`PushError::Disconnected`] instead of waiting for their timeout.
//! - **Binary** payloads in both directions ([`Payload::binary`]).
//! - **Serializers** per socket ([`SocketBuilder::serializer`]): Phoenix's V2 JSON (the
//!   default) or MessagePack (`vsn=3.0.0`, as Dust speaks it). [`Payload::json`] and
//!   [`Payload::msgpack`] encode from your `Serialize` type and [`Payload::deserialize`] reads
//!   either format into your type; a payload of the other format is transcoded when sent (see
//!   [`Serializer`] for the one limit: a binary push awaiting a reply under `3.0.0`).
//! - **Presence**: [`presence::Presence`] keeps a channel's presence list in sync from
//!   `presence_state` and `presence_diff`, with the joins and leaves of each.
//!
//! # Important notes
//!
//! - **Cancel safety.** `push` sends when it is called (unless the outgoing buffer is full,
//!   see below: then it waits for room, and dropping it before that withdraws it); dropping
//!   the returned future only drops the reply. `join` and `leave` act when called too; dropping their futures only stops the
//!   wait. The socket task is a single non-blocking poll loop: no user code runs on it.
//! - **Outgoing backpressure.** The bytes of pushes and casts not yet written to the
//!   connection are bounded ([`SocketBuilder::outgoing_limit`], default 4 MiB): a server that
//!   reads slowly or not at all never grows the client. At the limit,
//!   [`Channel::push`] (and `push_with`, ...) waits for room, in call order, with its timeout
//!   running (dropping it withdraws the push); [`Channel::try_push`],
//!   [`Channel::try_push_with`], [`Channel::try_cast_payload`] and [`Channel::cast`] fail at
//!   once with [`PushError::OutgoingFull`]; [`Channel::cast_payload`], which can neither wait
//!   nor return an error, drops the cast and counts it ([`Socket::dropped_casts`]).
//!   [`Socket::outgoing_queued`] tells how full the buffer is. A server that stops reading
//!   also stops answering heartbeats, so the connection is dropped and reopened after the
//!   heartbeat timeout, which frees the buffer (pushes in flight fail with
//!   [`PushError::Disconnected`]).
//! - **Inbound backpressure.** Each channel's consumer (its message stream or handler) may
//!   fall `queue_capacity` messages behind (default 1024); beyond that, messages are dropped
//!   and every drop is reported, with its count ([`Lagged`],
//!   [`ChannelHandler::on_overflow`]): received + reported dropped = sent. When a consumer is
//!   three quarters behind, the socket stops reading (the server's TCP window fills) until it
//!   drains to half, so that one that lags only in a burst loses nothing. Such pauses are
//!   budgeted: at most one tenth of the time, at most 1 s (or a quarter of the heartbeat
//!   timeout) at once. A consumer that stays slower than the inbound rate therefore never
//!   holds reading back for long: heartbeat replies and other channels' messages are not
//!   stuck behind a backlog, the connection stays up, and the consumer's overflow is dropped
//!   and reported rather than lost with a reconnect. Pushes waiting for a join are bounded by
//!   `push_buffer` ([`PushError::BufferFull`]).
//! - **Drop.** The socket task ends when [`Socket::disconnect`] is called or when every
//!   [`Socket`] and [`Channel`] handle is dropped. Dropping the last handle of a channel leaves
//!   it.
//! - **TLS.** `wss://` works with the default `rustls-ring` feature (rustls, `ring`, webpki
//!   roots); `native-tls` is the alternative.
//! - **Logs.** `tracing`, with one span per socket and per channel. In this crate's logs and
//!   `Debug` output, a URL's user name, password and every query value except `vsn`
//!   ([`socket::SHOWN_PARAMS`]) are redacted, headers and auth tokens are never shown, and
//!   payloads never appear above debug level (a rejected join shows its `reason`, not its
//!   response). Malformed frames from the server are logged at warn five times a minute at
//!   most; the others are counted and reported in one line a minute later (or when the
//!   connection ends).
//!
//!   tungstenite, which does the WebSocket handshake, logs the whole upgrade request (query
//!   and headers) at trace level through the `log` crate. The connectors of this crate
//!   ([`transport::WebSocketConnector`], [`transport::StreamConnector`]) hand it the request
//!   with placeholders for every query value but `vsn`, every header value and the auth token,
//!   and put the real values back into the bytes on their way to the connection: its log
//!   shows the placeholders. A custom [`transport::Connector`] that calls tungstenite itself
//!   does not get this.

pub mod backoff;
pub mod channel;
pub mod driver;
pub mod error;
pub mod frame;
pub mod handler;
pub mod presence;
pub mod proto;
pub mod socket;
pub mod transport;

pub use channel::{Channel, ChannelBuilder, Messages, Push, PushOptions};
pub use driver::SocketDriver;
pub use error::{BuildError, JoinError, Lagged, PushError, SocketClosed};
pub use frame::Serializer;
pub use handler::{ChannelContext, ChannelHandler, Joined};
pub use proto::message::{
    Event, Inbound, Message, Payload, PayloadError, Ref, Reply, ReplyMessage, ReplyStatus, Topic,
};
pub use proto::{
    ChannelState, CloseCause, DisconnectReason, ErrorCause, RejoinCause, SocketStatus,
};
pub use socket::{ConnectParams, ConnectParamsProvider, ProviderError, Socket, SocketBuilder};
