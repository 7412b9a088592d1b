//! The server's own frame codec: Phoenix serializers V1 (JSON objects) and V2 (JSON arrays and
//! binary frames), on `serde_json::Value`.
//!
//! It is deliberately independent from the client crate's codec, so that a bug there cannot
//! hide behind the same bug here. Refs are kept as JSON values so that the type a client sent
//! (string, integer, null) is echoed back unchanged; a number a `Value` would not keep exactly
//! (an integer beyond 64 bits, a float) is echoed as the text the client sent.

mod decode;
mod encode;
pub(crate) mod msgpack;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

/// The serializer a connection negotiated with its `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum Protocol {
    /// `vsn` absent or `1.0.x`: JSON objects `{"topic","event","payload","ref"}`, no binary.
    #[serde(rename = "1.0.0")]
    V1,
    /// `vsn=2.0.x`: JSON arrays `[join_ref, ref, topic, event, payload]` and binary frames.
    #[serde(rename = "2.0.0")]
    V2,
    /// `vsn=3.0.0` exactly: Dust's MessagePack serializer (`DustWeb.MsgpackSerializer`): map
    /// payloads as binary frames holding a MessagePack array, binary payloads in the V2 binary
    /// frames, text frames read as V2 JSON.
    #[serde(rename = "3.0.0")]
    MessagePack,
}

impl Protocol {
    /// Picks the serializer for a `vsn` query value the way Phoenix does (`~> 1.0.0`,
    /// `~> 2.0.0`, or exactly `3.0.0` as Dust's endpoint registers its MessagePack serializer;
    /// no `vsn` means `1.0.0`). `None` means the version is refused (HTTP 403).
    pub fn negotiate(vsn: Option<&str>) -> Option<Self> {
        let vsn = vsn.unwrap_or("1.0.0");
        let mut parts = vsn.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !(numeric(major) && numeric(minor) && numeric(patch)) {
            return None;
        }
        match (
            major.parse::<u64>().ok()?,
            minor.parse::<u64>().ok()?,
            patch.parse::<u64>().ok()?,
        ) {
            (1, 0, _) => Some(Self::V1),
            (2, 0, _) => Some(Self::V2),
            (3, 0, 0) => Some(Self::MessagePack),
            _ => None,
        }
    }
}

/// A message payload: JSON, or raw bytes carried by a binary frame (V2 only).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// A JSON payload (text frames).
    Json(Value),
    /// A binary payload (binary frames).
    Binary(Bytes),
    /// A payload with a rendering of its own for MessagePack connections: JSON connections
    /// get `json`, MessagePack ones `msgpack` (one encoded MessagePack value), e.g. an event
    /// that echoes integer map keys or a timestamp as a MessagePack client sent them. Only
    /// for what the server sends; a client's payload never arrives as one.
    Dual {
        /// What JSON connections get.
        json: Value,
        /// What MessagePack connections get: one MessagePack value.
        msgpack: Bytes,
    },
}

impl Payload {
    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Self::Json(v) | Self::Dual { json: v, .. } => Some(v),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, if this is a binary payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Self::Binary(b) => Some(b),
            Self::Json(_) | Self::Dual { .. } => None,
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::Json(value)
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

/// Why a client frame could not be decoded. Phoenix answers all of these by closing the socket
/// with code 1011.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("a V2 text frame must be a JSON array of at least 5 elements")]
    NotAnArray,
    #[error("a V1 text frame must be a JSON object")]
    NotAnObject,
    #[error("missing key {0:?}")]
    MissingKey(&'static str),
    #[error("{0} must be a string")]
    NotAString(&'static str),
    #[error("binary frame of kind {0}: clients may only send kind 0 (push)")]
    BinaryKind(u8),
    #[error("binary frame truncated")]
    Truncated,
    #[error("binary frame field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("invalid MessagePack: {0}")]
    MessagePack(String),
}

/// Why a server message could not be encoded. Phoenix raises in the process that encodes, which
/// for a channel push or reply is the channel: it crashes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The V1 serializer has no binary frames.
    #[error("the V1 serializer cannot encode a binary payload")]
    BinaryOnV1,
    /// A field of a binary frame is longer than its one-byte length.
    #[error("{field} is {len} bytes, binary frames allow at most 255")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A ref of a binary frame is not a string, a number, a boolean or null.
    #[error("{0} cannot be written as a string in a binary frame")]
    RefNotScalar(&'static str),
    /// The JSON serializer failed (not expected: every key is a string).
    #[error("cannot serialize the message: {0}")]
    Json(String),
    /// The MessagePack serializer takes only map payloads for messages and broadcasts.
    #[error("the MessagePack serializer encodes only map payloads (or binary ones)")]
    NotAMap,
    /// The MessagePack serializer failed.
    #[error("cannot serialize the message as MessagePack: {0}")]
    MessagePack(String),
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub(crate) join_ref: Ref,
    pub(crate) ref_: Ref,
    pub(crate) topic: String,
    pub(crate) event: String,
    pub(crate) payload: Payload,
    /// Under MessagePack, the payload as the server would pack it back (its
    /// [`msgpack::normalize`]d value, encoded), for channels that echo what a client sent.
    pub(crate) msgpack: Option<Bytes>,
}

/// A join_ref or ref as the client sent it: its JSON value, and, for a number that a `Value`
/// does not keep exactly (an integer beyond 64 bits, a float), its text, echoed as is.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Ref {
    value: Value,
    raw: Option<Arc<str>>,
}

impl Ref {
    /// `null`.
    pub(crate) fn null() -> Self {
        Self::default()
    }

    /// The JSON value (a float approximation for a huge integer).
    pub(crate) fn value(&self) -> &Value {
        &self.value
    }

    pub(crate) fn is_null(&self) -> bool {
        self.value.is_null()
    }

    /// A decoded ref, with its raw text when the value does not keep it exactly.
    fn decoded(value: Value, raw: Option<&RawValue>) -> Self {
        let raw = match (&value, raw) {
            (Value::Number(n), Some(raw)) if n.is_f64() => Some(Arc::from(raw.get().trim())),
            _ => None,
        };
        Self { value, raw }
    }
}

impl From<Value> for Ref {
    fn from(value: Value) -> Self {
        Self { value, raw: None }
    }
}

impl serde::Serialize for Ref {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self
            .raw
            .as_deref()
            .map(|raw| RawValue::from_string(raw.to_owned()))
        {
            Some(Ok(raw)) => raw.serialize(serializer),
            _ => self.value.serialize(serializer),
        }
    }
}

/// A server message before encoding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    /// A message to one client: channel push, `phx_close`, `phx_error`.
    Message {
        join_ref: Ref,
        ref_: Ref,
        topic: String,
        event: String,
        payload: Payload,
    },
    /// `phx_reply`.
    Reply {
        join_ref: Ref,
        ref_: Ref,
        topic: String,
        status: String,
        response: Payload,
    },
    /// A broadcast: no join_ref, no ref.
    Broadcast {
        topic: String,
        event: String,
        payload: Payload,
    },
}

/// An encoded frame, text or binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire {
    Text(String),
    Binary(Bytes),
}

/// Runs one client frame through the decoder, as the connection does, and, when it decodes,
/// encodes the reply the server would echo (its join_ref, ref and topic): for the fuzz target
/// and its corpus replay. `data[0]` picks the case (bit 0: binary frame, bit 1: V1, bit 2: MessagePack), the rest
/// is the frame. Returns whether it decoded. It must never panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) -> bool {
    let Some((selector, frame)) = data.split_first() else {
        return false;
    };
    let protocol = if selector & 4 != 0 {
        Protocol::MessagePack
    } else if selector & 2 == 0 {
        Protocol::V2
    } else {
        Protocol::V1
    };
    let decoded = if selector & 1 == 1 {
        decode_binary(protocol, frame)
    } else {
        match std::str::from_utf8(frame) {
            Ok(text) => decode_text(protocol, text),
            Err(_) => return false,
        }
    };
    let Ok(incoming) = decoded else {
        return false;
    };
    let reply = Outgoing::Reply {
        join_ref: incoming.join_ref,
        ref_: incoming.ref_,
        topic: incoming.topic,
        status: "ok".to_owned(),
        response: incoming.payload,
    };
    // Encoding may refuse (e.g. a binary payload for V1), never panic.
    let _ = encode(protocol, &reply);
    true
}

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

pub(crate) use decode::{decode_binary, decode_text};
pub(crate) use encode::encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_phoenix() {
        assert_eq!(Protocol::negotiate(None), Some(Protocol::V1));
        assert_eq!(Protocol::negotiate(Some("1.0.0")), Some(Protocol::V1));
        assert_eq!(Protocol::negotiate(Some("2.0.0")), Some(Protocol::V2));
        assert_eq!(Protocol::negotiate(Some("2.0.7")), Some(Protocol::V2));
        assert_eq!(Protocol::negotiate(Some("2.1.0")), None);
        assert_eq!(
            Protocol::negotiate(Some("3.0.0")),
            Some(Protocol::MessagePack)
        );
        assert_eq!(Protocol::negotiate(Some("3.0.1")), None);
        assert_eq!(Protocol::negotiate(Some("3.1.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0.5")), Some(Protocol::V2));
        assert_eq!(Protocol::negotiate(Some("2.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0.0.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0.x")), None);
        assert_eq!(Protocol::negotiate(Some("")), None);
    }
}
