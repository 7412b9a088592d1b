//! The V2 wire format: JSON text frames `[join_ref, ref, topic, event, payload]` and the binary
//! frame kinds.
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

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::message::{
    Event, Inbound, Message, Payload, Ref, Reply, ReplyMessage, ReplyStatus, Topic,
};

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
    let view = decode_text_view(frame)?;
    let topic = Topic::new(&view.topic);
    Ok(view.into_inbound(topic))
}

/// Decodes a binary frame of one of the server kinds (push, reply, broadcast).
pub fn decode_binary(frame: &Bytes) -> Result<Inbound, DecodeError> {
    let view = decode_binary_view(frame)?;
    let topic = Topic::new(&view.topic);
    Ok(view.into_inbound(topic))
}

/// A ref field: string, non-negative integer or null.
struct RefField(Option<Ref>);

impl<'de> Deserialize<'de> for RefField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl Visitor<'_> for RefVisitor {
            type Value = RefField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ref: a string, a non-negative integer or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RefField, E> {
                Ok(RefField(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<RefField, E> {
                Ok(RefField(None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RefField, E> {
                Ok(RefField(Some(Ref::parse(v))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RefField, E> {
                Ok(RefField(Some(Ref::new(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RefField, E> {
                u64::try_from(v)
                    .map(|v| RefField(Some(Ref::new(v))))
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_any(RefVisitor)
    }
}

/// A string borrowed from the frame when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

#[derive(Deserialize)]
struct ReplyPayload<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

enum Body<'a> {
    Payload(&'a RawValue),
    Reply(ReplyPayload<'a>),
}

/// `[join_ref, ref, topic, event, payload]`, read in one pass: a `phx_reply` payload is read as
/// `{status, response}` directly, without parsing the payload a second time.
struct Envelope<'a> {
    join_ref: Option<Ref>,
    msg_ref: Option<Ref>,
    topic: Cow<'a, str>,
    event: Cow<'a, str>,
    body: Body<'a>,
}

/// Reads an [`Envelope`], noting in `in_reply` whether it got as far as a `phx_reply` payload
/// (so that an error there is reported as a malformed reply).
struct EnvelopeSeed<'c> {
    in_reply: &'c Cell<bool>,
}

impl<'de> de::DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array [join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope<'de>, A::Error> {
        let missing = |n| de::Error::invalid_length(n, &"an array of 5 elements");
        let join_ref: RefField = seq.next_element()?.ok_or_else(|| missing(0))?;
        let msg_ref: RefField = seq.next_element()?.ok_or_else(|| missing(1))?;
        let topic: CowStr<'de> = seq.next_element()?.ok_or_else(|| missing(2))?;
        let event: CowStr<'de> = seq.next_element()?.ok_or_else(|| missing(3))?;
        let body = if event.0 == Event::REPLY {
            self.in_reply.set(true);
            let reply = seq.next_element()?.ok_or_else(|| missing(4))?;
            self.in_reply.set(false);
            Body::Reply(reply)
        } else {
            Body::Payload(seq.next_element()?.ok_or_else(|| missing(4))?)
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(missing(6));
        }
        Ok(Envelope {
            join_ref: join_ref.0,
            msg_ref: msg_ref.0,
            topic: topic.0,
            event: event.0,
            body,
        })
    }
}

pub(crate) fn decode_text_view(frame: &Bytes) -> Result<FrameView<'_>, DecodeError> {
    match decode_canonical(frame) {
        Some(view) => Ok(view),
        None => decode_general(frame),
    }
}

/// Reads a frame written the way Phoenix writes them — no whitespace, refs `null`, `"123"` or
/// `123`, topic and event without escapes, and a reply payload `{"response":R,"status":"S"}` —
/// at a fraction of the general decoder's cost. The payload (or the reply's response) is still
/// checked to be valid UTF-8 and one valid JSON value. `None` for anything else, which then goes
/// through the general decoder: both give the same result on every frame this one accepts.
fn decode_canonical(frame: &Bytes) -> Option<FrameView<'_>> {
    let bytes = frame.as_ref();
    let (&b'[', rest) = bytes.split_first()? else {
        return None;
    };
    let (&b']', rest) = rest.split_last()? else {
        return None;
    };
    let (join_ref, rest) = canonical_ref(rest)?;
    let rest = rest.strip_prefix(b",")?;
    let (msg_ref, rest) = canonical_ref(rest)?;
    let rest = rest.strip_prefix(b",")?;
    let (topic, rest) = canonical_str(rest)?;
    let rest = rest.strip_prefix(b",")?;
    let (event, rest) = canonical_str(rest)?;
    let payload = rest.strip_prefix(b",")?;
    let body = if event == Event::REPLY {
        let inner = payload
            .strip_prefix(br#"{"response":"#)?
            .strip_suffix(b"\"}")?;
        let status_at = inner.iter().rposition(|b| *b == b'"')?;
        let (response, status) = (inner.get(..status_at)?, inner.get(status_at + 1..)?);
        let response = response.strip_suffix(br#","status":"#)?;
        let status = std::str::from_utf8(status).ok()?;
        if status.bytes().any(|b| b == b'\\' || b < 0x20) {
            return None;
        }
        let response = owned(frame, checked_json(response)?);
        ViewBody::Reply(Reply::new(
            ReplyStatus::parse(status),
            Payload::from_checked_json(response),
        ))
    } else {
        let payload = owned(frame, checked_json(payload)?);
        ViewBody::Message {
            event: Cow::Borrowed(event),
            payload: Payload::from_checked_json(payload),
        }
    };
    Some(FrameView {
        join_ref,
        msg_ref,
        topic: Cow::Borrowed(topic),
        body,
    })
}

/// `null`, `"123"` or `123` (a u64), and what follows.
fn canonical_ref(bytes: &[u8]) -> Option<(Option<Ref>, &[u8])> {
    if let Some(rest) = bytes.strip_prefix(b"null") {
        return Some((None, rest));
    }
    let (quoted, body) = match bytes.strip_prefix(b"\"") {
        Some(body) => (true, body),
        None => (false, bytes),
    };
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    // A leading zero is not a number's canonical form (`"007"` is a text ref, `007` is not
    // JSON): the general decoder decides.
    if digits == 0 || digits > 19 || (digits > 1 && body.first() == Some(&b'0')) {
        return None;
    }
    let (number, rest) = body.split_at(digits);
    let rest = if quoted {
        rest.strip_prefix(b"\"")?
    } else {
        rest
    };
    let value: u64 = std::str::from_utf8(number).ok()?.parse().ok()?;
    Some((Some(Ref::new(value)), rest))
}

/// A string without escapes or control characters, and what follows.
fn canonical_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let body = bytes.strip_prefix(b"\"")?;
    let end = body
        .iter()
        .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)?;
    if body[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&body[..end]).ok()?, &body[end + 1..]))
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

/// `bytes` if they are UTF-8 and exactly one JSON value.
fn checked_json(bytes: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(bytes).ok()?;
    super::json::is_one_value(text).then_some(bytes)
}

const LONE_SURROGATE: &str = "the payload has a \\u escape of a lone UTF-16 surrogate (\\ud800-\\udfff), which is no character";

fn decode_general(frame: &Bytes) -> Result<FrameView<'_>, DecodeError> {
    let in_reply = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(frame);
    let envelope = de::DeserializeSeed::deserialize(
        EnvelopeSeed {
            in_reply: &in_reply,
        },
        &mut deserializer,
    )
    .and_then(|envelope| deserializer.end().map(|()| envelope))
    .map_err(|e| {
        if in_reply.get() {
            DecodeError::Reply(e.to_string())
        } else {
            DecodeError::Json(e.to_string())
        }
    })?;
    // serde_json skips the inside of a raw value without checking that its `\u` escapes are
    // characters; the payload must be JSON that `Payload::to_value` reads back.
    let strict = |raw: &RawValue| {
        if super::json::is_one_value(raw.get()) {
            Ok(())
        } else {
            Err(DecodeError::Json(LONE_SURROGATE.to_owned()))
        }
    };
    match &envelope.body {
        Body::Payload(raw) => strict(raw)?,
        Body::Reply(ReplyPayload {
            response: Some(raw),
            ..
        }) => strict(raw).map_err(|_| DecodeError::Reply(LONE_SURROGATE.to_owned()))?,
        Body::Reply(_) => {}
    }
    let slice = |raw: &RawValue| Payload::from_checked_json(owned(frame, raw.get().as_bytes()));
    let body = match envelope.body {
        Body::Reply(reply) => {
            let response = reply.response.map_or_else(Payload::null, slice);
            ViewBody::Reply(Reply::new(ReplyStatus::parse(&reply.status), response))
        }
        Body::Payload(raw) => ViewBody::Message {
            event: envelope.event,
            payload: slice(raw),
        },
    };
    Ok(FrameView {
        join_ref: envelope.join_ref,
        msg_ref: envelope.msg_ref,
        topic: envelope.topic,
        body,
    })
}

/// Reads the length-prefixed fields of a binary frame.
struct BinaryReader<'a> {
    frame: &'a Bytes,
    lens: &'a [u8],
    at: usize,
}

impl<'a> BinaryReader<'a> {
    /// `header` is the number of length bytes after the kind byte.
    fn new(frame: &'a Bytes, header: usize) -> Result<Self, DecodeError> {
        let lens = frame.get(1..1 + header).ok_or(DecodeError::Truncated)?;
        Ok(Self {
            frame,
            lens,
            at: 1 + header,
        })
    }

    fn field(&mut self, index: usize, name: &'static str) -> Result<&'a str, DecodeError> {
        let len = usize::from(*self.lens.get(index).ok_or(DecodeError::Truncated)?);
        let bytes = self
            .frame
            .get(self.at..self.at + len)
            .ok_or(DecodeError::Truncated)?;
        self.at += len;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8(name))
    }

    fn rest(&self) -> Bytes {
        owned(self.frame, self.frame.get(self.at..).unwrap_or_default())
    }
}

fn optional_ref(text: &str) -> Option<Ref> {
    (!text.is_empty()).then(|| Ref::parse(text))
}

pub(crate) fn decode_binary_view(frame: &Bytes) -> Result<FrameView<'_>, DecodeError> {
    let kind = *frame.first().ok_or(DecodeError::EmptyBinary)?;
    match kind {
        KIND_PUSH => {
            let mut r = BinaryReader::new(frame, 3)?;
            let join_ref = optional_ref(r.field(0, "join_ref")?);
            let topic = r.field(1, "topic")?;
            let event = r.field(2, "event")?;
            Ok(FrameView {
                join_ref,
                msg_ref: None,
                topic: Cow::Borrowed(topic),
                body: ViewBody::Message {
                    event: Cow::Borrowed(event),
                    payload: Payload::binary(r.rest()),
                },
            })
        }
        KIND_REPLY => {
            let mut r = BinaryReader::new(frame, 4)?;
            let join_ref = optional_ref(r.field(0, "join_ref")?);
            let msg_ref = optional_ref(r.field(1, "ref")?);
            let topic = r.field(2, "topic")?;
            let status = r.field(3, "status")?;
            Ok(FrameView {
                join_ref,
                msg_ref,
                topic: Cow::Borrowed(topic),
                body: ViewBody::Reply(Reply::new(
                    ReplyStatus::parse(status),
                    Payload::binary(r.rest()),
                )),
            })
        }
        KIND_BROADCAST => {
            let mut r = BinaryReader::new(frame, 2)?;
            let topic = r.field(0, "topic")?;
            let event = r.field(1, "event")?;
            Ok(FrameView {
                join_ref: None,
                msg_ref: None,
                topic: Cow::Borrowed(topic),
                body: ViewBody::Message {
                    event: Cow::Borrowed(event),
                    payload: Payload::binary(r.rest()),
                },
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn push_json_str(out: &mut String, s: &str) {
    if needs_escape(s) {
        // Serializing a `&str` cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

fn push_ref(out: &mut String, r: Option<&Ref>) {
    match r {
        None => out.push_str("null"),
        Some(r) => match r.as_u64() {
            Some(n) => {
                out.push('"');
                out.push_str(itoa::Buffer::new().format(n));
                out.push('"');
            }
            None => push_json_str(out, &r.to_string()),
        },
    }
}

fn ref_text(r: Option<&Ref>) -> Cow<'static, str> {
    match r {
        None => Cow::Borrowed(""),
        Some(r) => Cow::Owned(r.to_string()),
    }
}

/// Encodes a client push: a text frame for a JSON payload, a binary frame (kind 0) for a binary
/// payload. Refs are written as strings.
pub fn encode(
    join_ref: Option<&Ref>,
    msg_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<OutFrame, EncodeError> {
    if let Some(json) = payload.as_json() {
        let mut out = String::with_capacity(32 + topic.len() + event.len() + json.len());
        out.push('[');
        push_ref(&mut out, join_ref);
        out.push(',');
        push_ref(&mut out, msg_ref);
        out.push(',');
        push_json_str(&mut out, topic);
        out.push(',');
        push_json_str(&mut out, event);
        out.push(',');
        out.push_str(json);
        out.push(']');
        return Ok(OutFrame::Text(out));
    }
    let join_ref = ref_text(join_ref);
    let msg_ref = ref_text(msg_ref);
    let fields: [(&'static str, &str); 4] = [
        ("join_ref", &join_ref),
        ("ref", &msg_ref),
        ("topic", topic),
        ("event", event),
    ];
    let body = payload.as_bytes();
    let mut out =
        Vec::with_capacity(5 + fields.iter().map(|f| f.1.len()).sum::<usize>() + body.len());
    out.push(KIND_PUSH);
    for (field, value) in fields {
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: value.len(),
        })?;
        out.push(len);
    }
    for (_, value) in fields {
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(body);
    Ok(OutFrame::Binary(Bytes::from(out)))
}

/// Checks that a binary push on this topic and event can be encoded, before it is queued.
pub(crate) fn check_binary_fields(topic: &str, event: &str) -> Result<(), EncodeError> {
    for (field, value) in [("topic", topic), ("event", event)] {
        if value.len() > 255 {
            return Err(EncodeError::FieldTooLong {
                field,
                len: value.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(s: &'static str) -> Result<Inbound, DecodeError> {
        decode_text(&Bytes::from_static(s.as_bytes()))
    }

    fn message(inbound: Inbound) -> Message {
        match inbound {
            Inbound::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn reply(inbound: Inbound) -> ReplyMessage {
        match inbound {
            Inbound::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Whether `part` lies inside `whole`'s memory.
    fn within(whole: &[u8], part: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn small_payloads_are_copied_out_of_the_frame_and_big_ones_are_slices() {
        for (len, sliced) in [
            (10, false),
            (COPY_LIMIT - 20, false),
            (COPY_LIMIT + 1, true),
        ] {
            let body = format!(r#"{{"b":"{}"}}"#, "x".repeat(len));
            for text in [
                format!(r#"[null,null,"t","e",{body}]"#),
                format!(r#"["1","2","t","phx_reply",{{"response":{body},"status":"ok"}}]"#),
                // Not canonical (spaces): the general decoder.
                format!(r#"[null, null, "t", "e", {body}]"#),
            ] {
                let frame = Bytes::from(text);
                let payload = match decode_text(&frame).unwrap() {
                    Inbound::Message(m) => m.payload,
                    Inbound::Reply(r) => r.reply.response().clone(),
                };
                assert_eq!(payload.as_json(), Some(body.as_str()));
                assert_eq!(within(&frame, payload.as_bytes()), sliced, "{len} bytes");
            }
            let mut binary = vec![KIND_BROADCAST, 1, 1];
            binary.extend_from_slice(b"te");
            binary.extend_from_slice(body.as_bytes());
            let frame = Bytes::from(binary);
            let payload = message(decode_binary(&frame).unwrap()).payload;
            assert_eq!(payload.as_binary().map(|b| b.len()), Some(body.len()));
            assert_eq!(
                within(&frame, payload.as_bytes()),
                sliced,
                "binary, {len} bytes"
            );
        }
    }

    #[test]
    fn decodes_every_ref_type() {
        let m = message(text(r#"["2",null,"echo:1","pushed",{"p":1}]"#).unwrap());
        assert_eq!(m.join_ref, Some(Ref::new(2)));
        assert_eq!(m.msg_ref, None);
        assert_eq!(m.payload.as_json(), Some(r#"{"p":1}"#));
        let m = message(text(r#"[5,6,"t","e",null]"#).unwrap());
        assert_eq!(
            (m.join_ref, m.msg_ref),
            (Some(Ref::new(5)), Some(Ref::new(6)))
        );
        let m = message(text(r#"[null,null,"t","e",[1,2]]"#).unwrap());
        assert!(m.is_broadcast());
        let m = message(text(r#"["x","",  "t", "e" , "s"]"#).unwrap());
        assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
        assert_eq!(m.payload.as_json(), Some(r#""s""#));
    }

    #[test]
    fn rejects_bad_refs_and_shapes() {
        for bad in [
            r#"[-1,null,"t","e",{}]"#,
            r#"[1.5,null,"t","e",{}]"#,
            r#"[{},null,"t","e",{}]"#,
            r#"[null,null,"t","e"]"#,
            r#"[null,null,"t","e",{},1]"#,
            r#"[null,null,1,"e",{}]"#,
            r#"{"topic":"t"}"#,
            r#"[null,null,"t","e",{}"#,
            "",
        ] {
            assert!(matches!(text(bad), Err(DecodeError::Json(_))), "{bad}");
        }
    }

    #[test]
    fn decodes_replies_in_one_pass_with_key_order_free() {
        let r = reply(
            text(r#"[null,"14","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#)
                .unwrap(),
        );
        assert_eq!(r.join_ref, None);
        assert_eq!(r.msg_ref, Some(Ref::new(14)));
        assert_eq!(r.reply.status(), &ReplyStatus::Error);
        assert_eq!(r.reply.reason().as_deref(), Some("unmatched topic"));
        let r = reply(
            text(r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#).unwrap(),
        );
        assert!(r.reply.is_ok());
        let r = reply(text(r#"[null,"1","t","phx_reply",{"status":"ok"}]"#).unwrap());
        assert_eq!(r.reply.response(), &Payload::null());
        for bad in [
            r#"[null,"1","t","phx_reply",{"response":{}}]"#,
            r#"[null,"1","t","phx_reply",[]]"#,
            r#"[null,"1","t","phx_reply",{"status":1}]"#,
        ] {
            assert!(matches!(text(bad), Err(DecodeError::Reply(_))), "{bad}");
        }
    }

    #[test]
    fn escaped_topics_and_events_decode() {
        let m = message(text(r#"[null,null,"a\"b","\u00e9v",{}]"#).unwrap());
        assert_eq!(m.topic, "a\"b");
        assert_eq!(m.event, "év");
    }

    #[test]
    fn encodes_text_frames_as_phoenix_expects() {
        let out = encode(
            None,
            Some(&Ref::new(1)),
            "phoenix",
            "heartbeat",
            &Payload::empty(),
        )
        .unwrap();
        assert_eq!(
            out,
            OutFrame::Text(r#"[null,"1","phoenix","heartbeat",{}]"#.into())
        );
        let out = encode(
            Some(&Ref::new(2)),
            Some(&Ref::new(2)),
            "a\"b",
            "e\n",
            &Payload::null(),
        )
        .unwrap();
        assert_eq!(out, OutFrame::Text(r#"["2","2","a\"b","e\n",null]"#.into()));
    }

    #[test]
    fn binary_push_matches_the_wire_capture() {
        // >> 00 01 02 06 04 "2" "11" "echo:1" "echo" 01 02 ff
        let out = encode(
            Some(&Ref::new(2)),
            Some(&Ref::new(11)),
            "echo:1",
            "echo",
            &Payload::binary(vec![1u8, 2, 0xff]),
        )
        .unwrap();
        let mut expected = vec![0u8, 1, 2, 6, 4];
        expected.extend_from_slice(b"211echo:1echo");
        expected.extend_from_slice(&[1, 2, 0xff]);
        assert_eq!(out.as_bytes(), &expected[..]);
        let long = "t".repeat(256);
        assert_eq!(
            encode(None, None, &long, "e", &Payload::binary(vec![])),
            Err(EncodeError::FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert!(check_binary_fields(&long, "e").is_err());
        assert!(check_binary_fields("t", "e").is_ok());
    }

    #[test]
    fn decodes_the_three_server_binary_kinds() {
        // << 01 01 02 06 02 "2" "11" "echo:1" "ok" 01 02 ff
        let mut frame = vec![1u8, 1, 2, 6, 2];
        frame.extend_from_slice(b"211echo:1ok");
        frame.extend_from_slice(&[1, 2, 0xff]);
        let r = reply(decode_binary(&Bytes::from(frame)).unwrap());
        assert_eq!(
            (r.join_ref, r.msg_ref),
            (Some(Ref::new(2)), Some(Ref::new(11)))
        );
        assert_eq!(r.topic, "echo:1");
        assert!(r.reply.is_ok());
        assert_eq!(r.reply.response().as_bytes(), &[1, 2, 0xff]);

        let mut frame = vec![0u8, 1, 6, 13];
        frame.extend_from_slice(b"2echo:1pushed_binaryhi");
        let m = message(decode_binary(&Bytes::from(frame)).unwrap());
        assert_eq!(m.join_ref, Some(Ref::new(2)));
        assert_eq!(m.event, "pushed_binary");
        assert_eq!(m.payload.as_binary().map(|b| &b[..]), Some(&b"hi"[..]));

        let mut frame = vec![2u8, 1, 1];
        frame.extend_from_slice(b"te");
        let m = message(decode_binary(&Bytes::from(frame)).unwrap());
        assert!(m.is_broadcast());
        assert!(m.payload.as_binary().is_some_and(|b| b.is_empty()));

        let mut frame = vec![0u8, 0, 1, 1];
        frame.extend_from_slice(b"te");
        assert_eq!(
            message(decode_binary(&Bytes::from(frame)).unwrap()).join_ref,
            None
        );
    }

    #[test]
    fn binary_errors() {
        let d = |v: Vec<u8>| decode_binary(&Bytes::from(v));
        assert_eq!(d(vec![]), Err(DecodeError::EmptyBinary));
        assert_eq!(d(vec![9, 0, 0]), Err(DecodeError::UnknownKind(9)));
        assert_eq!(d(vec![2, 5]), Err(DecodeError::Truncated));
        assert_eq!(d(vec![2, 5, 0, b'a']), Err(DecodeError::Truncated));
        assert_eq!(d(vec![2, 1, 0, 0xff]), Err(DecodeError::NotUtf8("topic")));
    }

    fn same(a: &FrameView<'_>, b: &FrameView<'_>) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn the_canonical_path_takes_phoenix_frames_and_leaves_the_rest() {
        for canonical in [
            r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["2","3","echo:1","phx_reply",{"response":{"a":[1,"x"]},"status":"error"}]"#,
            r#"[2,3,"echo:1","new_msg",{"body":"é"}]"#,
            r#"[null,null,"t","e",null]"#,
        ] {
            let frame = Bytes::from_static(canonical.as_bytes());
            let fast = decode_canonical(&frame).expect(canonical);
            assert!(same(&fast, &decode_general(&frame).unwrap()), "{canonical}");
        }
        for other in [
            r#"[ null,"1","t","e",{}]"#,
            r#"[null,"1","t\u0041","e",{}]"#,
            r#"[null,"x","t","e",{}]"#,
            r#"[null,-1,"t","e",{}]"#,
            r#"[null,"1","t","phx_reply",{"status":"ok","response":{}}]"#,
            r#"[null,"1","t","phx_reply",{"response":1,"x":2,"status":"ok"}]"#,
            r#"[null,"1","t","e",{]"#,
            r#"[null,"1","t","e",{}] "#,
            r#"[null,"99999999999999999999","t","e",{}]"#,
        ] {
            let frame = Bytes::from_static(other.as_bytes());
            assert!(decode_canonical(&frame).is_none(), "{other}");
        }
    }

    #[test]
    fn refs_read_back_as_written_and_payloads_that_to_value_refuses_are_refused() {
        // A leading zero is not a number: `"007"` is a text ref, and never matches ref 7.
        let m = message(text(r#"["007","0","t","e",{}]"#).unwrap());
        assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
        assert_eq!(m.join_ref.map(|r| r.to_string()).as_deref(), Some("007"));
        assert_eq!(m.msg_ref, Some(Ref::new(0)));
        let r =
            reply(text(r#"[null,"01","t","phx_reply",{"response":{},"status":"ok"}]"#).unwrap());
        assert_eq!(r.msg_ref.as_ref().and_then(Ref::as_u64), None);
        let mut binary = vec![0u8, 2, 1, 1];
        binary.extend_from_slice(b"07te");
        let m = message(decode_binary(&Bytes::from(binary)).unwrap());
        assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
        // Unquoted, it is not JSON.
        assert!(matches!(
            text(r#"[007,null,"t","e",{}]"#),
            Err(DecodeError::Json(_))
        ));
        // A lone surrogate escape is no character: `to_value` could not read it back.
        for bad in [
            r#"[null,null,"t","e","\ud800"]"#,
            r#"[null,null,"t","e",{"a":["\udc00"]}]"#,
            r#"[null,null,"t","e",{"\ud800x":1}]"#,
        ] {
            let error = text(bad).unwrap_err();
            assert!(
                matches!(&error, DecodeError::Json(e) if e.contains("surrogate")),
                "{bad}: {error}"
            );
        }
        assert!(matches!(
            text(r#"[null,"1","t","phx_reply",{"response":"\ud800","status":"ok"}]"#),
            Err(DecodeError::Reply(_))
        ));
        let m = message(text(r#"[null,null,"t","e","\ud83d\ude00"]"#).unwrap());
        assert_eq!(m.payload.to_value().unwrap(), "😀");
    }

    proptest! {
        /// Whatever the decoder accepts, its refs are written back as they were read and its
        /// payload reads back with `to_value`.
        #[test]
        fn decoded_refs_round_trip_and_payloads_read_back(
            join in "(null|\"[0-9]{1,3}\"|[0-9]{1,3})", r in "(null|\"0*[0-9]{1,3}\"|0*[0-9]{1,3})",
            reply in any::<bool>(),
            body in "(\\{|\\}|\\[|\\]|\"a\"|:|,|1|\"\\\\u[dD][0-9a-fA-F]{3}\"|\"\\\\ud83d\\\\ude00\")*",
        ) {
            let text = if reply {
                format!(r#"[{join},{r},"t","phx_reply",{{"response":{body},"status":"ok"}}]"#)
            } else {
                format!(r#"[{join},{r},"t","ev",{body}]"#)
            };
            let Ok(inbound) = decode_text(&Bytes::from(text.clone())) else {
                return Ok(());
            };
            let (join_ref, msg_ref, payload) = match inbound {
                Inbound::Message(m) => (m.join_ref, m.msg_ref, m.payload),
                Inbound::Reply(r) => (r.join_ref, r.msg_ref, r.reply.into_response()),
            };
            let written = |v: Option<Ref>| v.map_or("null".to_owned(), |r| r.to_string());
            prop_assert_eq!(written(join_ref), join.trim_matches('"'), "{}", text);
            prop_assert_eq!(written(msg_ref), r.trim_matches('"'), "{}", text);
            prop_assert!(payload.to_value().is_ok(), "{}", text);
        }

        #[test]
        fn both_paths_agree_on_every_frame_the_canonical_one_takes(
            join in proptest::option::of(0u64..1000), r in proptest::option::of(0u64..1000),
            quoted in any::<bool>(), topic in "[a-z:\\\\\"é]{0,8}", reply in any::<bool>(),
            status in "(ok|error|[a-z\\\\\"]{0,4})", body in "(\\{|\\}|\\[|\\]|\"a\"|:|,|1|null|\"é\\\\n\")*",
        ) {
            let refs = |v: Option<u64>| v.map_or("null".to_owned(), |n| if quoted { format!("\"{n}\"") } else { n.to_string() });
            let text = if reply {
                format!(r#"[{},{},"{topic}","phx_reply",{{"response":{body},"status":"{status}"}}]"#, refs(join), refs(r))
            } else {
                format!(r#"[{},{},"{topic}","ev",{body}]"#, refs(join), refs(r))
            };
            let frame = Bytes::from(text);
            if let Some(fast) = decode_canonical(&frame) {
                let general = decode_general(&frame);
                prop_assert!(general.as_ref().is_ok_and(|g| same(&fast, g)), "{:?} vs {:?}", fast, general);
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_text(&bytes);
            let _ = decode_binary(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_near_valid_frames(
            prefix in "\\[(null|\"[0-9]{0,3}\"|[0-9]{1,3}|-1),(null|\"[0-9a-z]{0,3}\"|[0-9]{1,3}),\"[a-z:\\\\\"]{0,6}\",\"(phx_reply|ev)\",",
            tail in "(\\{|\\}|\\[|\\]|\"status\"|\"response\"|:|,|\"ok\"|1|null|\\\\u00){0,8}",
        ) {
            let bytes = Bytes::from(format!("{prefix}{tail}"));
            let _ = decode_text(&bytes);
        }

        #[test]
        fn binary_kinds_never_panic(kind in 0u8..3, lens in proptest::collection::vec(any::<u8>(), 0..5),
                                    body in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut frame = vec![kind];
            frame.extend(lens);
            frame.extend(body);
            let _ = decode_binary(&Bytes::from(frame));
        }

        #[test]
        fn text_encode_decode_round_trip(join in proptest::option::of(any::<u64>()), r in proptest::option::of(any::<u64>()),
                                         topic in ".{0,20}", event in "[^\u{0}]{0,12}", n in any::<i64>()) {
            prop_assume!(event != Event::REPLY);
            let payload = Payload::json(&serde_json::json!({"n": n, "s": topic})).unwrap();
            let join = join.map(Ref::new);
            let r = r.map(Ref::new);
            let out = encode(join.as_ref(), r.as_ref(), &topic, &event, &payload).unwrap();
            let OutFrame::Text(s) = out else { panic!("expected text") };
            let m = message(decode_text(&Bytes::from(s)).unwrap());
            prop_assert_eq!(m.join_ref, join);
            prop_assert_eq!(m.msg_ref, r);
            prop_assert_eq!(m.topic.as_str(), topic.as_str());
            prop_assert_eq!(m.event.as_str(), event.as_str());
            prop_assert_eq!(m.payload.to_value().unwrap(), payload.to_value().unwrap());
        }
    }
}
