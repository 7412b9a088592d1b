//! The sans-io protocol core: no tokio, no sockets, no clock reads, no randomness.
//!
//! [`SocketCore`] takes every input with the current time (`handle_connected`, `handle_text`,
//! `handle_timeout`, `join`, `push`, ...) and says what to do through
//! [`SocketCore::poll_output`] and when to wake it through [`SocketCore::poll_timeout`], the way
//! `quinn-proto` does. The tokio driver of this crate is one user of it; a test, a simulator or
//! another runtime can drive it the same way. The wire format is [`frame`](crate::frame), the
//! reconnect and rejoin schedules are [`backoff`](crate::backoff).
//!
//! # Call order
//!
//! 1. Feed one input: a `handle_*` call (`handle_connected`, `handle_disconnected`,
//!    `handle_text`, `handle_binary`, `handle_timeout`) or a command (`start`, `join`, `push`,
//!    `leave`, `remove_channel`, `close`, ...), each with the current time `now`.
//! 2. Drain [`SocketCore::poll_output`] until it returns `None`, and carry the actions out
//!    (outputs are in order; a later input may depend on an earlier output having been acted on,
//!    e.g. [`Output::Connect`] before `handle_connected`).
//! 3. Ask [`SocketCore::poll_timeout`] when to wake up, and call `handle_timeout` then (or
//!    earlier: it fires only what is due).
//!
//! `now` must be monotonic: never earlier than the `now` of a previous call (a
//! [`std::time::Instant`] read from one clock is). The core never reads a clock itself.
//!
//! # Layout
//!
//! [`socket`] is the machine that orchestrates: the connection, refs and timers. The channel
//! transitions live with the channel type ([`channel`]), the pending pushes and their deadlines
//! with the push type ([`push`]); the heartbeat, the timer set and inbound routing are private
//! units of their own.

pub mod channel;
mod config;
mod heartbeat;
mod inbound;
pub(crate) mod json;
pub mod message;
mod output;
mod payload;
pub mod push;
pub mod socket;
mod status;
mod timer;

#[cfg(test)]
mod tests;

pub use channel::{
    ChannelId, ChannelOptions, ChannelState, CloseCause, ErrorCause, JoinParams, RejoinCause,
};
pub use config::CoreConfig;
pub use output::{AddChannelError, ChannelEvent, Output};
pub use push::PushRequest;
pub use socket::SocketCore;
pub use status::{DisconnectReason, SocketStatus};
