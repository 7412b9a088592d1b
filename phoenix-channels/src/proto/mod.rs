//! The sans-io protocol core: no tokio, no sockets, no clock reads, no randomness.
//!
//! [`SocketCore`] takes every input with the current time (`handle_connected`, `handle_text`,
//! `handle_timeout`, `join`, `push`, ...) and says what to do through
//! [`SocketCore::poll_output`] and when to wake it through [`SocketCore::poll_timeout`], the way
//! `quinn-proto` does. The tokio driver of this crate is one user of it; a test, a simulator or
//! another runtime can drive it the same way.

pub mod backoff;
pub mod channel;
pub mod frame;
mod json;
pub mod message;
pub mod push;
pub mod socket;

#[cfg(test)]
mod tests;

pub use channel::{
    ChannelId, ChannelOptions, ChannelState, CloseCause, ErrorCause, JoinParams, RejoinCause,
};
pub use push::PushRequest;
pub use socket::{
    AddChannelError, ChannelEvent, CoreConfig, DisconnectReason, Output, SocketCore, SocketStatus,
};
