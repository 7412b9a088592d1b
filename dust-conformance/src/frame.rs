//! The server's own frame codec: Phoenix serializers V1 (JSON objects) and V2 (JSON arrays and
//! binary frames), on `serde_json::Value`.
//!
//! It is deliberately independent from the client crate's codec, so that a bug there cannot
//! hide behind the same bug here. Refs are kept as JSON values so that the type a client sent
//! (string, integer, null) is echoed back unchanged; a number a `Value` would not keep exactly
//! (an integer beyond 64 bits, a float) is echoed as the text the client sent.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::{Value, json};

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
}

impl Protocol {
    /// Picks the serializer for a `vsn` query value the way Phoenix does (`~> 1.0.0` or
    /// `~> 2.0.0`; no `vsn` means `1.0.0`). `None` means the version is refused (HTTP 403).
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
        match (major.parse::<u64>().ok()?, minor.parse::<u64>().ok()?) {
            (1, 0) => Some(Self::V1),
            (2, 0) => Some(Self::V2),
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
}

impl Payload {
    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Self::Json(v) => Some(v),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, if this is a binary payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Self::Binary(b) => Some(b),
            Self::Json(_) => None,
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
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub(crate) join_ref: Ref,
    pub(crate) ref_: Ref,
    pub(crate) topic: String,
    pub(crate) event: String,
    pub(crate) payload: Payload,
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

/// Decodes a text frame.
pub(crate) fn decode_text(protocol: Protocol, text: &str) -> Result<Incoming, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match protocol {
        Protocol::V2 => decode_v2_array(value, text),
        Protocol::V1 => decode_v1_object(value, text),
    }
}

/// Whether a ref's value needs its raw text to be echoed exactly.
fn inexact(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.is_f64())
}

/// Decodes a binary frame. V1 has no binary frames; like Phoenix's V1 serializer, it reads the
/// bytes as a JSON text.
pub(crate) fn decode_binary(protocol: Protocol, bytes: &[u8]) -> Result<Incoming, DecodeError> {
    match protocol {
        Protocol::V1 => {
            let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8("frame"))?;
            decode_text(Protocol::V1, text)
        }
        Protocol::V2 => decode_v2_binary(bytes),
    }
}

/// Runs one client frame through the decoder, as the connection does, and, when it decodes,
/// encodes the reply the server would echo (its join_ref, ref and topic): for the fuzz target
/// and its corpus replay. `data[0]` picks the case (bit 0: binary frame, bit 1: V1), the rest
/// is the frame. Returns whether it decoded. It must never panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) -> bool {
    let Some((selector, frame)) = data.split_first() else {
        return false;
    };
    let protocol = if selector & 2 == 0 {
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

fn decode_v2_array(value: Value, text: &str) -> Result<Incoming, DecodeError> {
    let Value::Array(items) = value else {
        return Err(DecodeError::NotAnArray);
    };
    if items.len() < 5 {
        return Err(DecodeError::NotAnArray);
    }
    // Extra trailing elements are ignored, as Phoenix does.
    let mut items = items.into_iter();
    let mut next = || items.next().unwrap_or(Value::Null);
    let join_ref = next();
    let ref_ = next();
    let topic = string_field(next(), "topic")?;
    let event = string_field(next(), "event")?;
    let payload = next();
    // Only for a number a `Value` does not keep exactly: the raw texts of the refs.
    let raw: Vec<&RawValue> = if inexact(&join_ref) || inexact(&ref_) {
        serde_json::from_str(text).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Incoming {
        join_ref: Ref::decoded(join_ref, raw.first().copied()),
        ref_: Ref::decoded(ref_, raw.get(1).copied()),
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

fn decode_v1_object(value: Value, text: &str) -> Result<Incoming, DecodeError> {
    let Value::Object(mut map) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let mut take = |key: &'static str| map.remove(key).ok_or(DecodeError::MissingKey(key));
    let topic = string_field(take("topic")?, "topic")?;
    let event = string_field(take("event")?, "event")?;
    let payload = take("payload")?;
    let ref_ = take("ref")?;
    let join_ref = map.remove("join_ref").unwrap_or(Value::Null);
    let raw: HashMap<String, &RawValue> = if inexact(&join_ref) || inexact(&ref_) {
        serde_json::from_str(text).unwrap_or_default()
    } else {
        HashMap::new()
    };
    Ok(Incoming {
        join_ref: Ref::decoded(join_ref, raw.get("join_ref").copied()),
        ref_: Ref::decoded(ref_, raw.get("ref").copied()),
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

fn string_field(value: Value, name: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::NotAString(name)),
    }
}

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

fn decode_v2_binary(bytes: &[u8]) -> Result<Incoming, DecodeError> {
    let (&kind, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
    if kind != KIND_PUSH {
        return Err(DecodeError::BinaryKind(kind));
    }
    let [join_ref_len, ref_len, topic_len, event_len, rest @ ..] = rest else {
        return Err(DecodeError::Truncated);
    };
    let mut rest = rest;
    let mut field = |len: u8, name: &'static str| -> Result<String, DecodeError> {
        let len = usize::from(len);
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = rest.split_at(len);
        rest = tail;
        String::from_utf8(head.to_vec()).map_err(|_| DecodeError::NotUtf8(name))
    };
    // An empty join_ref stays an empty string: Phoenix compares it with the channel's join_ref
    // like any other value, so a push with an empty join_ref to a joined topic is outdated.
    let join_ref = field(*join_ref_len, "join_ref")?;
    let ref_ = field(*ref_len, "ref")?;
    let topic = field(*topic_len, "topic")?;
    let event = field(*event_len, "event")?;
    Ok(Incoming {
        join_ref: Value::String(join_ref).into(),
        ref_: Value::String(ref_).into(),
        topic,
        event,
        payload: Payload::Binary(Bytes::copy_from_slice(rest)),
    })
}

/// Encodes a server message with the connection's serializer.
pub(crate) fn encode(protocol: Protocol, message: &Outgoing) -> Result<Wire, EncodeError> {
    match protocol {
        Protocol::V2 => encode_v2(message),
        Protocol::V1 => encode_v1(message),
    }
}

fn encode_v2(message: &Outgoing) -> Result<Wire, EncodeError> {
    match message {
        Outgoing::Message {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } => match payload {
            Payload::Json(p) => text(&(join_ref, ref_, topic, event, p)),
            Payload::Binary(data) => {
                let join_ref = ref_string(join_ref, "join_ref")?;
                let mut buf = BytesMut::new();
                buf.put_u8(KIND_PUSH);
                let fields = [
                    ("join_ref", join_ref.as_bytes()),
                    ("topic", topic.as_bytes()),
                    ("event", event.as_bytes()),
                ];
                put_fields(&mut buf, &fields, data)?;
                Ok(Wire::Binary(buf.freeze()))
            }
        },
        Outgoing::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response,
        } => match response {
            Payload::Json(r) => text(&(
                join_ref,
                ref_,
                topic,
                "phx_reply",
                json!({"status": status, "response": r}),
            )),
            Payload::Binary(data) => {
                let join_ref = ref_string(join_ref, "join_ref")?;
                let ref_ = ref_string(ref_, "ref")?;
                let mut buf = BytesMut::new();
                buf.put_u8(KIND_REPLY);
                let fields = [
                    ("join_ref", join_ref.as_bytes()),
                    ("ref", ref_.as_bytes()),
                    ("topic", topic.as_bytes()),
                    ("status", status.as_bytes()),
                ];
                put_fields(&mut buf, &fields, data)?;
                Ok(Wire::Binary(buf.freeze()))
            }
        },
        Outgoing::Broadcast {
            topic,
            event,
            payload,
        } => match payload {
            Payload::Json(p) => text(&((), (), topic, event, p)),
            Payload::Binary(data) => {
                let mut buf = BytesMut::new();
                buf.put_u8(KIND_BROADCAST);
                let fields = [("topic", topic.as_bytes()), ("event", event.as_bytes())];
                put_fields(&mut buf, &fields, data)?;
                Ok(Wire::Binary(buf.freeze()))
            }
        },
    }
}

/// Writes the one-byte lengths, then the fields, then the data.
fn put_fields(
    buf: &mut BytesMut,
    fields: &[(&'static str, &[u8])],
    data: &[u8],
) -> Result<(), EncodeError> {
    for (field, bytes) in fields {
        let len = u8::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: bytes.len(),
        })?;
        buf.put_u8(len);
    }
    for (_, bytes) in fields {
        buf.put_slice(bytes);
    }
    buf.put_slice(data);
    Ok(())
}

/// A ref as Elixir's `to_string/1` writes it into a binary frame (`nil` is empty).
fn ref_string(value: &Ref, name: &'static str) -> Result<String, EncodeError> {
    if let Some(raw) = &value.raw {
        return Ok(raw.to_string());
    }
    match &value.value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Array(_) | Value::Object(_) => Err(EncodeError::RefNotScalar(name)),
    }
}

/// A V1 frame (keys in the order the former map wrote them: sorted).
#[derive(serde::Serialize)]
struct V1Frame<'a> {
    event: &'a str,
    payload: &'a Value,
    #[serde(rename = "ref")]
    ref_: &'a Ref,
    topic: &'a str,
}

fn encode_v1(message: &Outgoing) -> Result<Wire, EncodeError> {
    // V1 writes only topic, event, payload and ref; never join_ref.
    let null = Ref::null();
    let reply;
    let (topic, event, payload, ref_) = match message {
        Outgoing::Message {
            ref_,
            topic,
            event,
            payload,
            ..
        } => (topic, event.as_str(), json_only(payload)?, ref_),
        Outgoing::Reply {
            ref_,
            topic,
            status,
            response,
            ..
        } => {
            reply = json!({"status": status, "response": json_only(response)?});
            (topic, "phx_reply", &reply, ref_)
        }
        Outgoing::Broadcast {
            topic,
            event,
            payload,
        } => (topic, event.as_str(), json_only(payload)?, &null),
    };
    text(&V1Frame {
        event,
        payload,
        ref_,
        topic,
    })
}

fn json_only(payload: &Payload) -> Result<&Value, EncodeError> {
    payload.as_json().ok_or(EncodeError::BinaryOnV1)
}

fn text(value: &impl serde::Serialize) -> Result<Wire, EncodeError> {
    serde_json::to_string(value)
        .map(Wire::Text)
        .map_err(|e| EncodeError::Json(e.to_string()))
}

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
        assert_eq!(Protocol::negotiate(Some("3.0.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0.0.0")), None);
        assert_eq!(Protocol::negotiate(Some("2.0.x")), None);
        assert_eq!(Protocol::negotiate(Some("")), None);
    }

    #[test]
    fn v2_text_keeps_ref_types() {
        let m = decode_text(Protocol::V2, r#"[null, 7, "phoenix", "heartbeat", {}]"#).unwrap();
        assert_eq!(*m.join_ref.value(), Value::Null);
        assert_eq!(*m.ref_.value(), json!(7));
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "heartbeat");
        let m = decode_text(Protocol::V2, r#"["2", "3", "t", "e", [1], "extra"]"#).unwrap();
        assert_eq!(*m.join_ref.value(), json!("2"));
        assert_eq!(m.payload, Payload::Json(json!([1])));
    }

    #[test]
    fn huge_and_float_refs_are_echoed_as_sent() {
        const HUGE: &str = "123456789012345678901234567890";
        let text = format!(r#"[{HUGE}, 1e2, "t", "e", {{}}]"#);
        let m = decode_text(Protocol::V2, &text).unwrap();
        let reply = Outgoing::Reply {
            join_ref: m.join_ref.clone(),
            ref_: m.ref_.clone(),
            topic: m.topic.clone(),
            status: "ok".into(),
            response: Payload::Json(json!({})),
        };
        let Wire::Text(v2) = encode(Protocol::V2, &reply).unwrap() else {
            panic!("text expected")
        };
        assert!(
            v2.starts_with(&format!(r#"[{HUGE},1e2,"t","phx_reply","#)),
            "{v2}"
        );
        let v1_text = format!(r#"{{"topic":"t","event":"e","payload":{{}},"ref":{HUGE}}}"#);
        let m = decode_text(Protocol::V1, &v1_text).unwrap();
        let reply = Outgoing::Reply {
            join_ref: m.join_ref,
            ref_: m.ref_,
            topic: m.topic,
            status: "ok".into(),
            response: Payload::Json(json!({})),
        };
        let Wire::Text(v1) = encode(Protocol::V1, &reply).unwrap() else {
            panic!("text expected")
        };
        assert!(v1.contains(&format!(r#""ref":{HUGE}"#)), "{v1}");
        // Refs a `Value` keeps exactly are written by it, as before.
        let m = decode_text(
            Protocol::V2,
            r#"[ "1" , 18446744073709551615, "t", "e", {}]"#,
        )
        .unwrap();
        let reply = Outgoing::Message {
            join_ref: m.join_ref,
            ref_: m.ref_,
            topic: m.topic,
            event: "e".into(),
            payload: Payload::Json(json!(null)),
        };
        assert_eq!(
            encode(Protocol::V2, &reply).unwrap(),
            Wire::Text(r#"["1",18446744073709551615,"t","e",null]"#.into())
        );
    }

    #[test]
    fn v2_text_rejects_malformed() {
        for bad in [
            "",
            "not json",
            "{}",
            "[1,2,3,4]",
            r#"[null,"1",5,"e",{}]"#,
            r#"[null,"1","t",null,{}]"#,
            "\"str\"",
        ] {
            assert!(decode_text(Protocol::V2, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn v1_object() {
        let m = decode_text(
            Protocol::V1,
            r#"{"topic":"t","event":"e","payload":{"a":1},"ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(*m.join_ref.value(), Value::Null);
        assert_eq!(*m.ref_.value(), json!("1"));
        assert_eq!(
            decode_text(Protocol::V1, r#"{"topic":"t","event":"e","payload":{}}"#),
            Err(DecodeError::MissingKey("ref"))
        );
        assert_eq!(
            decode_text(Protocol::V1, r#"[null,"1","t","e",{}]"#),
            Err(DecodeError::NotAnObject)
        );
        let wire = encode(
            Protocol::V1,
            &Outgoing::Reply {
                join_ref: json!("9").into(),
                ref_: json!("1").into(),
                topic: "t".into(),
                status: "ok".into(),
                response: Payload::Json(json!({})),
            },
        )
        .unwrap();
        let Wire::Text(t) = wire else { panic!() };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"topic":"t","event":"phx_reply","ref":"1","payload":{"status":"ok","response":{}}})
        );
        let binary = Outgoing::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Binary(Bytes::from_static(b"x")),
        };
        assert_eq!(encode(Protocol::V1, &binary), Err(EncodeError::BinaryOnV1));
    }

    #[test]
    fn binary_push_from_protocol_md() {
        let mut frame = vec![0, 1, 2, 6, 4];
        frame.extend_from_slice(b"211echo:1echo");
        frame.extend_from_slice(&[1, 2, 0xff]);
        let m = decode_binary(Protocol::V2, &frame).unwrap();
        assert_eq!(*m.join_ref.value(), json!("2"));
        assert_eq!(*m.ref_.value(), json!("11"));
        assert_eq!(m.topic, "echo:1");
        assert_eq!(m.event, "echo");
        assert_eq!(
            m.payload,
            Payload::Binary(Bytes::from_static(&[1, 2, 0xff]))
        );

        let reply = Outgoing::Reply {
            join_ref: json!("2").into(),
            ref_: json!("11").into(),
            topic: "echo:1".into(),
            status: "ok".into(),
            response: m.payload,
        };
        let mut expected = vec![1, 1, 2, 6, 2];
        expected.extend_from_slice(b"211echo:1ok");
        expected.extend_from_slice(&[1, 2, 0xff]);
        assert_eq!(
            encode(Protocol::V2, &reply).unwrap(),
            Wire::Binary(expected.into())
        );
    }

    #[test]
    fn binary_rejects_malformed() {
        for bad in [
            &[][..],
            &[0],
            &[0, 1, 1, 1],
            &[0, 5, 0, 0, 0, b'a'],
            &[1, 0, 0, 0, 0],
            &[2, 0, 0],
            &[0, 0, 0, 1, 0, 0xff],
        ] {
            assert!(decode_binary(Protocol::V2, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binary_push_and_broadcast_layouts() {
        let push = Outgoing::Message {
            join_ref: json!(3).into(),
            ref_: Value::Null.into(),
            topic: "t".into(),
            event: "ev".into(),
            payload: Payload::Binary(Bytes::from_static(b"hi")),
        };
        assert_eq!(
            encode(Protocol::V2, &push).unwrap(),
            Wire::Binary(Bytes::from_static(b"\x00\x01\x01\x023tevhi"))
        );
        let broadcast = Outgoing::Broadcast {
            topic: "t".into(),
            event: "ev".into(),
            payload: Payload::Binary(Bytes::from_static(b"hi")),
        };
        assert_eq!(
            encode(Protocol::V2, &broadcast).unwrap(),
            Wire::Binary(Bytes::from_static(b"\x02\x01\x02tevhi"))
        );
        let long = Outgoing::Broadcast {
            topic: "t".repeat(256),
            event: "ev".into(),
            payload: Payload::Binary(Bytes::new()),
        };
        assert!(matches!(
            encode(Protocol::V2, &long),
            Err(EncodeError::FieldTooLong { field: "topic", .. })
        ));
    }
}
