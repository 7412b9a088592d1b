//! A complete Phoenix Channels client.

pub mod proto;

pub use proto::backoff;
pub use proto::frame;
pub use proto::message::{
    Event, Inbound, Message, Payload, PayloadError, Ref, Reply, ReplyMessage, ReplyStatus, Topic,
};
pub use proto::push::PushError;
pub use proto::{
    ChannelState, CloseCause, DisconnectReason, ErrorCause, RejoinCause, SocketStatus,
};
