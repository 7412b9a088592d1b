//! The JSON text frame decoder: a fast path for frames written the way Phoenix writes them,
//! and a general serde decoder for everything else.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::{DecodeError, FrameView, ViewBody, owned};
use crate::proto::message::{Event, Payload, Ref, Reply, ReplyStatus};

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

/// Decodes a text frame; `text` is the frame as text when the caller knows it to be UTF-8
/// (a WebSocket text frame the transport checked): it is then not checked again.
pub(crate) fn decode_text_view<'a>(
    frame: &'a Bytes,
    text: Option<&'a str>,
) -> Result<FrameView<'a>, DecodeError> {
    match decode_canonical_with(frame, text) {
        Some(view) => Ok(view),
        None => decode_general(frame),
    }
}

/// The frame being decoded, and its text when known to be UTF-8.
#[derive(Clone, Copy)]
struct Source<'a> {
    bytes: &'a [u8],
    text: Option<&'a str>,
}

impl<'a> Source<'a> {
    fn new(bytes: &'a [u8], text: Option<&'a str>) -> Self {
        // Only the frame's own text counts as known.
        let text = text.filter(|t| t.as_ptr() == bytes.as_ptr() && t.len() == bytes.len());
        Self { bytes, text }
    }

    /// `part` (a slice of the frame) as text: checked as UTF-8 unless the frame's text is known.
    fn text_of(self, part: &'a [u8]) -> Option<&'a str> {
        match self.text {
            Some(text) => {
                let start = (part.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize)?;
                text.get(start..start.checked_add(part.len())?)
            }
            None => std::str::from_utf8(part).ok(),
        }
    }
}

/// Reads a frame written the way Phoenix writes them — no whitespace, refs `null`, `"123"` or
/// `123`, topic and event without escapes, and a reply payload `{"response":R,"status":"S"}` —
/// at a fraction of the general decoder's cost. The payload (or the reply's response) is still
/// checked to be valid UTF-8 and one valid JSON value. `None` for anything else, which then goes
/// through the general decoder: both give the same result on every frame this one accepts.
#[cfg(test)]
pub(super) fn decode_canonical(frame: &Bytes) -> Option<FrameView<'_>> {
    decode_canonical_with(frame, None)
}

fn decode_canonical_with<'a>(frame: &'a Bytes, text: Option<&'a str>) -> Option<FrameView<'a>> {
    let bytes = frame.as_ref();
    let source = Source::new(bytes, text);
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
    let (topic, rest) = canonical_str(source, rest)?;
    let rest = rest.strip_prefix(b",")?;
    let (event, rest) = canonical_str(source, rest)?;
    let payload = rest.strip_prefix(b",")?;
    let body = if event == Event::REPLY {
        let inner = payload
            .strip_prefix(br#"{"response":"#)?
            .strip_suffix(b"\"}")?;
        let status_at = inner.iter().rposition(|b| *b == b'"')?;
        let (response, status) = (inner.get(..status_at)?, inner.get(status_at + 1..)?);
        let response = response.strip_suffix(br#","status":"#)?;
        let status = source.text_of(status)?;
        if status.bytes().any(|b| b == b'\\' || b < 0x20) {
            return None;
        }
        let response = owned(frame, checked_json(source, response)?);
        ViewBody::Reply(Reply::new(
            ReplyStatus::parse(status),
            Payload::from_checked_json(response),
        ))
    } else {
        let payload = owned(frame, checked_json(source, payload)?);
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
    // At most 19 digits: below u64::MAX.
    let value = number
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    Some((Some(Ref::new(value)), rest))
}

/// A string without escapes or control characters, and what follows.
fn canonical_str<'a>(source: Source<'a>, bytes: &'a [u8]) -> Option<(&'a str, &'a [u8])> {
    let body = bytes.strip_prefix(b"\"")?;
    let end = crate::proto::json::plain_len(body);
    if body.get(end) != Some(&b'"') {
        return None;
    }
    Some((source.text_of(&body[..end])?, &body[end + 1..]))
}
/// `bytes` if they are UTF-8 and exactly one JSON value with no whitespace around it (a
/// payload with whitespace around it goes through the general decoder, which leaves it out, so
/// both decoders give the same payload).
fn checked_json<'a>(source: Source<'a>, bytes: &'a [u8]) -> Option<&'a [u8]> {
    let json_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if bytes.first().is_some_and(json_space) || bytes.last().is_some_and(json_space) {
        return None;
    }
    let text = source.text_of(bytes)?;
    crate::proto::json::is_one_value(text).then_some(bytes)
}

const LONE_SURROGATE: &str = "the payload has a \\u escape of a lone UTF-16 surrogate (\\ud800-\\udfff), which is no character";

pub(super) fn decode_general(frame: &Bytes) -> Result<FrameView<'_>, DecodeError> {
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
        if crate::proto::json::is_one_value(raw.get()) {
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
