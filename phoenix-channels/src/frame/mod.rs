//! The wire formats: V2 JSON text frames `[join_ref, ref, topic, event, payload]`, the binary
//! frame kinds, and the same array in MessagePack (`vsn=3.0.0`); the [`Serializer`] of a
//! socket picks one ([`encode_with`], [`decode_binary_with`]).
//!
//! Decoding never panics, whatever the input; a frame that does not follow the format is a
//! [`DecodeError`]. Payloads are parsed once. A payload of up to [`COPY_LIMIT`] bytes is copied
//! out of the received frame, so that keeping it never keeps the transport's whole read buffer
//! alive (and the buffer can be reused for the next read); a bigger one is a slice of the frame,
//! without a copy.
//!
//! ```
//! use bytes::Bytes;
//! use phoenix_channels::frame::{self, OutFrame};
//! use phoenix_channels::{Inbound, Payload, Ref};
//!
//! let out = frame::encode(Some(&Ref::new(2)), Some(&Ref::new(3)), "echo:1", "echo",
//!     &Payload::from_json_text(r#"{"hello":"world"}"#).unwrap()).unwrap();
//! assert_eq!(out, OutFrame::Text(r#"["2","3","echo:1","echo",{"hello":"world"}]"#.into()));
//!
//! let reply = frame::decode_text(&Bytes::from_static(
//!     br#"["2","3","echo:1","phx_reply",{"response":{"hello":"world"},"status":"ok"}]"#)).unwrap();
//! match reply {
//!     Inbound::Reply(r) => {
//!         assert!(r.reply.is_ok());
//!         assert_eq!(r.msg_ref, Some(Ref::new(3)));
//!         assert_eq!(r.reply.response().as_json(), Some(r#"{"hello":"world"}"#));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

mod binary;
mod encode;
mod msgpack;
mod serializer;
#[cfg(test)]
mod tests;
mod text;

use std::borrow::Cow;

use bytes::Bytes;

use crate::proto::message::{Event, Inbound, Message, Payload, Ref, Reply, ReplyMessage, Topic};
pub(crate) use binary::decode_binary_view;
pub(crate) use encode::check_binary_fields;
pub use encode::encode;
pub(crate) use msgpack::check_value as check_msgpack_value;
pub use serializer::Serializer;
pub(crate) use text::decode_text_view;

/// Binary frame kind of a push (client → server and server → client).
pub const KIND_PUSH: u8 = 0;
/// Binary frame kind of a reply (server → client).
pub const KIND_REPLY: u8 = 1;
/// Binary frame kind of a broadcast (server → client).
pub const KIND_BROADCAST: u8 = 2;

/// An encoded frame, ready to be written to the WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutFrame {
    /// A text frame (V2 JSON array).
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl OutFrame {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(s) => s.as_bytes(),
            Self::Binary(b) => b,
        }
    }
}

/// Why an inbound frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text frame is not a JSON array `[join_ref, ref, topic, event, payload]`.
    #[error("malformed text frame: {0}")]
    Json(String),
    /// A `phx_reply` payload is not an object with a string `status`.
    #[error("malformed phx_reply payload: {0}")]
    Reply(String),
    /// A binary frame with no bytes.
    #[error("empty binary frame")]
    EmptyBinary,
    /// A binary frame of a kind a server does not send.
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// A binary frame shorter than its header says.
    #[error("truncated binary frame")]
    Truncated,
    /// A string field of a binary frame is not UTF-8.
    #[error("binary frame field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    /// A MessagePack frame is not an array `[join_ref, ref, topic, event, payload]` of one
    /// complete value each (payloads nested at most 128 levels deep), with nothing after it.
    #[error("malformed MessagePack frame: {0}")]
    MessagePack(String),
}

/// Why an outbound frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field of a binary frame is longer than the 255 bytes its length byte can say.
    #[error("binary frame field `{field}` is {len} bytes; at most 255 fit")]
    FieldTooLong {
        /// The field (`join_ref`, `ref`, `topic` or `event`).
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A binary push awaiting a reply on a MessagePack (`vsn=3.0.0`) socket: the server reads
    /// a client's binary frame in the layout of its own pushes, which has no ref, so the reply
    /// could never be matched. Cast it instead, or send a MessagePack payload.
    #[error(
        "a binary push cannot get a reply under vsn 3.0.0 (its frame has no ref); cast it, or send MessagePack"
    )]
    BinaryReplyUnsupported,
    /// The payload could not be transcoded to the socket's format (e.g. a MessagePack
    /// extension value, which JSON cannot hold).
    #[error("cannot transcode the payload to the socket's format: {0}")]
    Transcode(String),
}

/// A decoded frame that still borrows its topic and event from the received buffer, so that the
/// protocol core can look the topic up without allocating.
#[derive(Debug)]
pub(crate) struct FrameView<'a> {
    pub(crate) join_ref: Option<Ref>,
    pub(crate) msg_ref: Option<Ref>,
    pub(crate) topic: Cow<'a, str>,
    pub(crate) body: ViewBody<'a>,
}

#[derive(Debug)]
pub(crate) enum ViewBody<'a> {
    Message {
        event: Cow<'a, str>,
        payload: Payload,
    },
    Reply(Reply),
}

impl FrameView<'_> {
    /// The owned frame, with this topic value (an interned copy of `self.topic`).
    pub(crate) fn into_inbound(self, topic: Topic) -> Inbound {
        match self.body {
            ViewBody::Message { event, payload } => Inbound::Message(Message {
                topic,
                event: Event::new(event),
                payload,
                join_ref: self.join_ref,
                msg_ref: self.msg_ref,
            }),
            ViewBody::Reply(reply) => Inbound::Reply(ReplyMessage {
                topic,
                join_ref: self.join_ref,
                msg_ref: self.msg_ref,
                reply,
            }),
        }
    }
}

/// Decodes a text frame.
pub fn decode_text(frame: &Bytes) -> Result<Inbound, DecodeError> {
    let view = decode_text_view(frame, None)?;
    let topic = Topic::new(&view.topic);
    Ok(view.into_inbound(topic))
}

/// Decodes a binary frame received on a socket with this serializer: under
/// [`Serializer::MessagePack`], a frame whose first byte is 0, 1 or 2 is a binary header frame
/// and any other is a MessagePack array; under [`Serializer::Json`], every binary frame is a
/// header frame.
pub fn decode_binary_with(serializer: Serializer, frame: &Bytes) -> Result<Inbound, DecodeError> {
    let view = decode_binary_view_with(serializer, frame)?;
    let topic = Topic::new(&view.topic);
    Ok(view.into_inbound(topic))
}

pub(crate) fn decode_binary_view_with(
    serializer: Serializer,
    frame: &Bytes,
) -> Result<FrameView<'_>, DecodeError> {
    match (serializer, frame.first()) {
        (Serializer::MessagePack, Some(kind)) if *kind > KIND_BROADCAST => {
            msgpack::decode_view(frame)
        }
        _ => decode_binary_view(frame),
    }
}

/// Encodes a client message in this serializer's format: see [`Serializer`]. Under
/// [`Serializer::Json`] it is [`encode`]. Under [`Serializer::MessagePack`], a JSON or
/// MessagePack payload goes in a MessagePack frame, and a binary payload in a binary frame of
/// the server-push layout (kind 0, no ref: `msg_ref` is not sent).
pub fn encode_with(
    serializer: Serializer,
    join_ref: Option<&Ref>,
    msg_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<OutFrame, EncodeError> {
    match serializer {
        Serializer::Json => encode(join_ref, msg_ref, topic, event, payload),
        Serializer::MessagePack if payload.is_binary() => {
            encode::binary_without_ref(join_ref, topic, event, payload.as_bytes())
        }
        Serializer::MessagePack => {
            msgpack::encode(join_ref, msg_ref, topic, event, payload).map(OutFrame::Binary)
        }
    }
}

/// Decodes a binary frame of one of the server kinds (push, reply, broadcast).
pub fn decode_binary(frame: &Bytes) -> Result<Inbound, DecodeError> {
    let view = decode_binary_view(frame)?;
    let topic = Topic::new(&view.topic);
    Ok(view.into_inbound(topic))
}
/// Payloads up to this size are copied out of the frame they arrived in; bigger ones are
/// slices of it.
///
/// A frame is a slice of the transport's read buffer (tungstenite reads up to
/// [`read_buffer_size`] at a time): a payload that stays a slice keeps that whole buffer alive for as long as the
/// application keeps the payload, and while it does the transport cannot reuse the buffer and
/// must allocate one for each frame, reading one frame per system call. Copying costs less
/// than that (memcpy is several times faster than the JSON check every payload gets anyway).
/// Above the limit a retained payload keeps at most about twice its size alive.
///
/// [`read_buffer_size`]: crate::transport::WebSocketSettings::read_buffer_size
pub const COPY_LIMIT: usize = 64 * 1024;

/// `part` of `frame` as `Bytes` of its own: copied if it is at most [`COPY_LIMIT`] bytes, a
/// slice of `frame` otherwise.
fn owned(frame: &Bytes, part: &[u8]) -> Bytes {
    if part.len() <= COPY_LIMIT {
        Bytes::copy_from_slice(part)
    } else {
        frame.slice_ref(part)
    }
}
