//! What the core says: actions and reports for the driver.

use super::channel::{ChannelId, ChannelState, CloseCause, ErrorCause, RejoinCause};
use super::message::{Inbound, Message, Payload, Ref, Reply, Topic};
use super::push::PushError;
use super::status::SocketStatus;
#[cfg(doc)]
use super::{channel::JoinParams, socket::SocketCore};
use crate::frame::{DecodeError, OutFrame};

/// Something that happened to a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The channel's state changed.
    State(ChannelState),
    /// The channel is about to join and its params are asked for (channels with
    /// [`JoinParams::Ask`]); answer with [`SocketCore::provide_join_params`].
    NeedJoinParams,
    /// The join succeeded: the server's response, and the join ref of this join (pushes can be
    /// pinned to it, see [`SocketCore::push`]).
    Joined {
        /// The server's join response.
        response: Payload,
        /// The join ref of this join.
        join_ref: Ref,
    },
    /// A join attempt failed (rejected or timed out); a rejoin follows unless the policy stops.
    JoinFailed(RejoinCause),
    /// A server push or broadcast on the channel's topic.
    Message(Message),
    /// The channel went into the errored state; it will rejoin.
    Errored(ErrorCause),
    /// The channel closed.
    Closed(CloseCause),
}

/// An action for the driver, or a report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<T> {
    /// Open the transport, then call [`SocketCore::handle_connected`] or
    /// [`SocketCore::handle_disconnected`].
    Connect,
    /// Write this frame.
    Transmit(OutFrame),
    /// Close the transport (with this close code) and drop it. The core already counts it as
    /// gone: do not report its end.
    CloseTransport {
        /// The WebSocket close code to send.
        code: u16,
        /// Why.
        reason: &'static str,
    },
    /// The socket status changed.
    Status(SocketStatus),
    /// Something happened to a channel.
    Channel(ChannelId, ChannelEvent),
    /// A push ended: its reply, or why there is none. Every push with a token ends exactly once.
    PushDone(T, Result<Reply, PushError>),
    /// A copy of a decoded inbound frame (only while the tap is on).
    Tap(Inbound),
    /// An inbound frame could not be decoded; it was dropped.
    Malformed(DecodeError),
}

/// Why a channel could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddChannelError {
    /// Another active channel of the socket uses the topic.
    #[error("another channel of this socket is using topic {0}")]
    TopicTaken(Topic),
    /// The channel id is already in use.
    #[error("channel id {0} is already in use")]
    DuplicateId(ChannelId),
}
