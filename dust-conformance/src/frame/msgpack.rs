//! Dust's MessagePack serializer (`DustWeb.MsgpackSerializer`, `vsn=3.0.0`), on `rmpv`.
//!
//! - Map payloads travel as binary frames holding a MessagePack array `[join_ref, ref, topic,
//!   event, payload]`; replies `[join_ref, ref, topic, "phx_reply", {status, response}]`;
//!   broadcasts `[nil, nil, topic, event, payload]`. A message or broadcast payload that is not
//!   a map cannot be encoded (the real serializer raises): [`EncodeError::NotAMap`].
//! - Binary payloads keep the V2 binary frames (kinds 0, 1, 2).
//! - A client binary frame whose first byte is 0 is a push read in the **server-push layout**
//!   (`join_ref`, `topic`, `event`; no ref: the message's ref is `nil`), so a frame in the V2
//!   client layout is misread one byte off; a first byte of 1 or 2 is refused (no clause);
//!   anything else is MessagePack, which must be one array of at least 5 elements with string
//!   topic and event and nothing after it. Text frames are V2 JSON.
//!
//! Decoded values are what Msgpax hands the server: a `bin` is a string, an `f32` a float, a
//! timestamp (ext -1) a UTC `DateTime` (microseconds). Channels see the payload as JSON would
//! render it ([`json_view`]: map keys as strings, a timestamp as its ISO-8601 text), and the
//! connection keeps the payload as the server would pack it back ([`normalize`]) for channels
//! that answer MessagePack clients with what they sent ([`crate::channel::ChannelContext`]).

use bytes::Bytes;
use rmpv::{Integer, Utf8String, Value as Mp};
use serde_json::{Map, Number, Value};

use super::encode::encode_v2;
use super::*;

/// The deepest nesting a MessagePack frame may have (as the JSON decoder's recursion limit).
const MAX_DEPTH: usize = 128;

/// Decodes a binary frame under 3.0.0.
pub(super) fn decode_binary(bytes: &[u8]) -> Result<Incoming, DecodeError> {
    match bytes.first() {
        Some(&KIND_PUSH) => decode_header_push(bytes),
        Some(&kind @ (KIND_REPLY | KIND_BROADCAST)) => Err(DecodeError::BinaryKind(kind)),
        _ => decode_msgpack(bytes),
    }
}

/// `<<0, join_ref_size, topic_size, event_size, join_ref, topic, event, data>>`.
fn decode_header_push(bytes: &[u8]) -> Result<Incoming, DecodeError> {
    let [_, join_ref_len, topic_len, event_len, rest @ ..] = bytes else {
        return Err(DecodeError::Truncated);
    };
    let mut rest = rest;
    let mut field = |len: u8, name: &'static str| super::decode::take_field(&mut rest, len, name);
    let join_ref = field(*join_ref_len, "join_ref")?;
    let topic = field(*topic_len, "topic")?;
    let event = field(*event_len, "event")?;
    Ok(Incoming {
        join_ref: Value::String(join_ref).into(),
        ref_: Ref::null(),
        topic,
        event,
        payload: Payload::Binary(Bytes::copy_from_slice(rest)),
        msgpack: None,
    })
}

fn decode_msgpack(bytes: &[u8]) -> Result<Incoming, DecodeError> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|e| DecodeError::MessagePack(e.to_string()))?;
    if !reader.is_empty() {
        return Err(DecodeError::MessagePack(format!(
            "{} excess bytes",
            reader.len()
        )));
    }
    let Mp::Array(items) = value else {
        return Err(DecodeError::NotAnArray);
    };
    let mut items = items.into_iter();
    let (Some(join_ref), Some(ref_), Some(topic), Some(event), Some(payload)) = (
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
    ) else {
        return Err(DecodeError::NotAnArray);
    };
    let text = |value: Mp, name: &'static str| match normalize(value)? {
        Mp::String(s) => s.into_str().ok_or(DecodeError::NotUtf8(name)),
        _ => Err(DecodeError::NotAString(name)),
    };
    let topic = text(topic, "topic")?;
    let event = text(event, "event")?;
    let payload = normalize(payload)?;
    let mut raw = Vec::new();
    rmpv::encode::write_value(&mut raw, &payload)
        .map_err(|e| DecodeError::MessagePack(e.to_string()))?;
    Ok(Incoming {
        join_ref: json_view(&normalize(join_ref)?).into(),
        ref_: json_view(&normalize(ref_)?).into(),
        topic,
        event,
        payload: Payload::Json(json_view(&payload)),
        msgpack: Some(Bytes::from(raw)),
    })
}

/// A decoded value as the server holds it and would pack it back (Msgpax): a `bin` becomes a
/// string (its bytes as they are, UTF-8 or not), an `f32` an `f64`, a timestamp the
/// microsecond `DateTime` it unpacks to (packed back in the shortest timestamp form); a map
/// keeps the last of duplicate keys. An out-of-range timestamp or another ext type is refused
/// (the real server cannot unpack it).
pub(crate) fn normalize(value: Mp) -> Result<Mp, DecodeError> {
    Ok(match value {
        Mp::Binary(bytes) => bin_to_string(bytes),
        Mp::F32(f) => Mp::F64(f64::from(f)),
        Mp::Ext(-1, data) => {
            let us = timestamp_micros(&data)?;
            Mp::Ext(-1, pack_timestamp(us))
        }
        Mp::Ext(kind, _) => {
            return Err(DecodeError::MessagePack(format!(
                "unsupported ext type {kind}"
            )));
        }
        Mp::Array(items) => Mp::Array(items.into_iter().map(normalize).collect::<Result<_, _>>()?),
        Mp::Map(entries) => {
            let mut out: Vec<(Mp, Mp)> = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let (key, value) = (normalize(key)?, normalize(value)?);
                match out.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => out.push((key, value)),
                }
            }
            Mp::Map(out)
        }
        Mp::F64(f) if !f.is_finite() => {
            return Err(DecodeError::MessagePack("a non-finite float".to_owned()));
        }
        other => other,
    })
}

/// `bin` bytes as the MessagePack string Msgpax would pack them into, valid UTF-8 or not.
fn bin_to_string(bytes: Vec<u8>) -> Mp {
    match String::from_utf8(bytes) {
        Ok(s) => Mp::String(Utf8String::from(s)),
        Err(e) => {
            // `Utf8String` keeps invalid bytes only when decoded: write a `str` header.
            let bytes = e.into_bytes();
            let len = bytes.len();
            let mut buf = Vec::with_capacity(len + 5);
            if len < 32 {
                buf.push(0xa0 | len as u8);
            } else if len < 1 << 8 {
                buf.extend_from_slice(&[0xd9, len as u8]);
            } else if len < 1 << 16 {
                buf.push(0xda);
                buf.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                buf.push(0xdb);
                buf.extend_from_slice(&(len as u32).to_be_bytes());
            }
            buf.extend_from_slice(&bytes);
            rmpv::decode::read_value(&mut &buf[..]).unwrap_or(Mp::Binary(bytes))
        }
    }
}

/// Microseconds since the epoch of a timestamp ext (-1), as Msgpax's `DateTime.from_unix`
/// truncates it.
pub(crate) fn timestamp_micros(data: &[u8]) -> Result<i64, DecodeError> {
    let invalid = || DecodeError::MessagePack("an invalid timestamp".to_owned());
    let (seconds, nanos): (i64, i64) = match data.len() {
        4 => (
            i64::from(u32::from_be_bytes(data.try_into().map_err(|_| invalid())?)),
            0,
        ),
        8 => {
            let word = u64::from_be_bytes(data.try_into().map_err(|_| invalid())?);
            ((word & 0x3_ffff_ffff) as i64, (word >> 34) as i64)
        }
        12 => {
            let nanos = u32::from_be_bytes(data[..4].try_into().map_err(|_| invalid())?);
            let seconds = i64::from_be_bytes(data[4..].try_into().map_err(|_| invalid())?);
            // Years 0000 to 9999, as Elixir's DateTime.
            if !(-62_167_219_200..=253_402_300_799).contains(&seconds) {
                return Err(invalid());
            }
            (seconds, i64::from(nanos))
        }
        _ => return Err(invalid()),
    };
    if nanos > 999_999_999 {
        return Err(invalid());
    }
    Ok(seconds * 1_000_000 + nanos / 1000)
}

/// The timestamp ext data Msgpax packs a `DateTime` into: 32, 64 or 96 bits.
pub(crate) fn pack_timestamp(us: i64) -> Vec<u8> {
    let seconds = us.div_euclid(1_000_000);
    let nanos = us.rem_euclid(1_000_000) * 1000;
    if (0..1 << 34).contains(&seconds) {
        let content = ((nanos as u64) << 34) | seconds as u64;
        if content >> 32 == 0 {
            (content as u32).to_be_bytes().to_vec()
        } else {
            content.to_be_bytes().to_vec()
        }
    } else {
        let mut out = (nanos as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&seconds.to_be_bytes());
        out
    }
}

/// A normalized value as Jason renders the term: map keys as strings (`1`, `true`, `nil`), a
/// timestamp as its ISO-8601 text (`…T…Z`, six decimals unless it was a 32-bit timestamp), a
/// string that is not UTF-8 as its lossy text.
pub(crate) fn json_view(value: &Mp) -> Value {
    match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => integer(*i),
        Mp::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Mp::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(lossy(s)),
        Mp::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(items) => Value::Array(items.iter().map(json_view).collect()),
        Mp::Map(entries) => {
            let map: Map<String, Value> = entries
                .iter()
                .map(|(k, v)| (key_text(k), json_view(v)))
                .collect();
            Value::Object(map)
        }
        Mp::Ext(-1, data) => match timestamp_micros(data) {
            Ok(us) => Value::String(crate::dust::iso8601(
                us,
                if data.len() == 4 { 0 } else { 6 },
            )),
            Err(_) => Value::Null,
        },
        Mp::Ext(_, _) => Value::Null,
    }
}

fn integer(i: Integer) -> Value {
    match (i.as_u64(), i.as_i64()) {
        (Some(u), _) => Value::from(u),
        (None, Some(s)) => Value::from(s),
        (None, None) => Value::Null,
    }
}

fn lossy(s: &Utf8String) -> String {
    s.as_str().map_or_else(
        || String::from_utf8_lossy(s.as_bytes()).into_owned(),
        str::to_owned,
    )
}

/// A map key as `Jason` writes it: a string as is, anything else through `to_string/1`.
pub(crate) fn key_text(key: &Mp) -> String {
    match key {
        Mp::String(s) => lossy(s),
        Mp::Nil => "nil".to_owned(),
        Mp::Boolean(b) => b.to_string(),
        Mp::Integer(i) => i.to_string(),
        Mp::F64(f) => f.to_string(),
        other => json_view(other).to_string(),
    }
}

/// Whether a normalized value holds a string that is not UTF-8 (Jason refuses to encode it).
pub(crate) fn has_invalid_utf8(value: &Mp) -> bool {
    match value {
        Mp::String(s) => s.as_str().is_none(),
        Mp::Binary(_) => true,
        Mp::Array(items) => items.iter().any(has_invalid_utf8),
        Mp::Map(entries) => entries
            .iter()
            .any(|(k, v)| has_invalid_utf8(k) || has_invalid_utf8(v)),
        _ => false,
    }
}

/// A JSON value as MessagePack (integers in their shortest form, floats as `f64`).
pub(crate) fn from_json(value: &Value) -> Mp {
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Mp::from(u),
            (None, Some(i), _) => Mp::from(i),
            (None, None, f) => Mp::F64(f.unwrap_or(0.0)),
        },
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => Mp::Map(
            map.iter()
                .map(|(k, v)| (Mp::from(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}

/// A payload as MessagePack: a JSON one converted, a [`Payload::Dual`] one as given.
fn payload_value(payload: &Payload) -> Result<Mp, EncodeError> {
    match payload {
        Payload::Json(value) => Ok(from_json(value)),
        Payload::Dual { msgpack, .. } => {
            let mut reader = &msgpack[..];
            rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
                .map_err(|e| EncodeError::MessagePack(e.to_string()))
        }
        Payload::Binary(_) => Err(EncodeError::MessagePack("a binary payload".to_owned())),
    }
}

fn ref_value(value: &Ref) -> Mp {
    from_json(value.value())
}

fn is_map(value: &Mp) -> bool {
    matches!(value, Mp::Map(_))
}

fn frame(items: Vec<Mp>) -> Result<Wire, EncodeError> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Mp::Array(items))
        .map_err(|e| EncodeError::MessagePack(e.to_string()))?;
    Ok(Wire::Binary(Bytes::from(out)))
}

/// Encodes a server message under 3.0.0.
pub(super) fn encode(message: &Outgoing) -> Result<Wire, EncodeError> {
    let payload = match message {
        Outgoing::Message { payload, .. } | Outgoing::Broadcast { payload, .. } => payload,
        Outgoing::Reply { response, .. } => response,
    };
    if let Payload::Binary(_) = payload {
        // The same header frames as V2.
        return encode_v2(message);
    }
    let payload = payload_value(payload)?;
    match message {
        Outgoing::Message {
            join_ref,
            ref_,
            topic,
            event,
            ..
        } => {
            if !is_map(&payload) {
                return Err(EncodeError::NotAMap);
            }
            frame(vec![
                ref_value(join_ref),
                ref_value(ref_),
                Mp::from(topic.as_str()),
                Mp::from(event.as_str()),
                payload,
            ])
        }
        Outgoing::Reply {
            join_ref,
            ref_,
            topic,
            status,
            ..
        } => frame(vec![
            ref_value(join_ref),
            ref_value(ref_),
            Mp::from(topic.as_str()),
            Mp::from("phx_reply"),
            Mp::Map(vec![
                (Mp::from("status"), Mp::from(status.as_str())),
                (Mp::from("response"), payload),
            ]),
        ]),
        Outgoing::Broadcast { topic, event, .. } => {
            if !is_map(&payload) {
                return Err(EncodeError::NotAMap);
            }
            frame(vec![
                Mp::Nil,
                Mp::Nil,
                Mp::from(topic.as_str()),
                Mp::from(event.as_str()),
                payload,
            ])
        }
    }
}

/// Writes a V2-layout header frame: used by the tests to build what a V2 client would send.
#[cfg(test)]
fn v2_client_push(join_ref: &str, ref_: &str, topic: &str, event: &str, data: &[u8]) -> Bytes {
    use bytes::BufMut;
    let mut buf = bytes::BytesMut::new();
    buf.put_u8(KIND_PUSH);
    let fields = [
        ("join_ref", join_ref.as_bytes()),
        ("ref", ref_.as_bytes()),
        ("topic", topic.as_bytes()),
        ("event", event.as_bytes()),
    ];
    super::encode::put_fields(&mut buf, &fields, data).expect("short fields");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pack(value: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    #[test]
    fn a_msgpack_push_decodes_with_its_refs_and_a_json_view() {
        let frame = pack(&Mp::Array(vec![
            Mp::from("1"),
            Mp::from(7),
            Mp::from("room:a"),
            Mp::from("new"),
            Mp::Map(vec![
                (Mp::from(1), Mp::Binary(b"bin".to_vec())),
                (Mp::Boolean(true), Mp::F32(0.5)),
            ]),
        ]));
        let m = decode_binary(&frame).unwrap();
        assert_eq!(*m.join_ref.value(), json!("1"));
        assert_eq!(*m.ref_.value(), json!(7));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("room:a", "new"));
        assert_eq!(m.payload, Payload::Json(json!({"1": "bin", "true": 0.5})));
        // As the server would pack it back: the keys as sent, the bin a string, the f32 an f64.
        let raw = m.msgpack.unwrap();
        let back = rmpv::decode::read_value(&mut &raw[..]).unwrap();
        assert_eq!(
            back,
            Mp::Map(vec![
                (Mp::from(1), Mp::from("bin")),
                (Mp::Boolean(true), Mp::F64(0.5)),
            ])
        );
    }

    #[test]
    fn malformed_msgpack_frames_are_refused() {
        let short = pack(&Mp::Array(vec![
            Mp::Nil,
            Mp::Nil,
            Mp::from("t"),
            Mp::from("e"),
        ]));
        let mut trailing = pack(&Mp::Array(vec![
            Mp::Nil,
            Mp::Nil,
            Mp::from("t"),
            Mp::from("e"),
            Mp::Map(vec![]),
        ]));
        trailing.push(0xc0);
        let topic_int = pack(&Mp::Array(vec![
            Mp::Nil,
            Mp::Nil,
            Mp::from(5),
            Mp::from("e"),
            Mp::Map(vec![]),
        ]));
        let mut deep = vec![0x91; 1000];
        deep.push(0xc0);
        for bad in [
            &[][..],
            &[0x93, 1, 2],
            &short,
            &trailing,
            &topic_int,
            &deep,
            &[1, 0, 0, 0, 0],
            &[2, 0, 0],
            &[0xc1],
        ] {
            assert!(decode_binary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_v2_layout_client_push_is_read_one_byte_off_without_a_ref() {
        // [0, 1, 1, 1, 1, "1", "2", "t", "e", data] read as [0, join_ref_size 1, topic_size 1,
        // event_size 1, ...]: the V2 event size (1) becomes the join_ref, "1" the topic, "2"
        // the event, and the data starts at "t".
        let frame = v2_client_push("1", "2", "t", "e", b"xyz");
        let m = decode_binary(&frame).unwrap();
        assert_eq!(*m.join_ref.value(), json!("\u{1}"));
        assert!(m.ref_.is_null());
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("1", "2"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(b"texyz")));
    }

    #[test]
    fn timestamps_truncate_to_microseconds_and_pack_back_shortest() {
        // 64-bit form: 1_700_000_000 s + 123_456_789 ns.
        let word: u64 = (123_456_789u64 << 34) | 1_700_000_000;
        let us = timestamp_micros(&word.to_be_bytes()).unwrap();
        assert_eq!(us, 1_700_000_000_123_456);
        let packed = pack_timestamp(us);
        assert_eq!(packed.len(), 8);
        assert_eq!(timestamp_micros(&packed).unwrap(), us);
        assert_eq!(pack_timestamp(1_000_000), 1u32.to_be_bytes().to_vec());
        assert_eq!(pack_timestamp(-1_000_000).len(), 12);
        assert_eq!(
            json_view(&Mp::Ext(-1, word.to_be_bytes().to_vec())),
            json!("2023-11-14T22:13:20.123456Z")
        );
        assert_eq!(
            json_view(&Mp::Ext(-1, 1_700_000_000u32.to_be_bytes().to_vec())),
            json!("2023-11-14T22:13:20Z")
        );
        let mut far = 0u32.to_be_bytes().to_vec();
        far.extend_from_slice(&i64::MAX.to_be_bytes());
        assert!(timestamp_micros(&far).is_err());
    }

    #[test]
    fn encodes_arrays_replies_broadcasts_and_refuses_non_map_pushes() {
        let reply = Outgoing::Reply {
            join_ref: json!("1").into(),
            ref_: json!(2).into(),
            topic: "t".into(),
            status: "ok".into(),
            response: Payload::Json(json!({"a": 1})),
        };
        let Wire::Binary(bytes) = encode(&reply).unwrap() else {
            panic!("binary expected")
        };
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(
            json_view(&value),
            json!(["1", 2, "t", "phx_reply", {"status": "ok", "response": {"a": 1}}])
        );
        let broadcast = Outgoing::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Dual {
                json: json!({"1": 2}),
                msgpack: Bytes::from(pack(&Mp::Map(vec![(Mp::from(1), Mp::from(2))]))),
            },
        };
        let Wire::Binary(bytes) = encode(&broadcast).unwrap() else {
            panic!("binary expected")
        };
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(
            value,
            Mp::Array(vec![
                Mp::Nil,
                Mp::Nil,
                Mp::from("t"),
                Mp::from("e"),
                Mp::Map(vec![(Mp::from(1), Mp::from(2))])
            ])
        );
        let push = Outgoing::Message {
            join_ref: json!("1").into(),
            ref_: Ref::null(),
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(json!([1])),
        };
        assert_eq!(encode(&push), Err(EncodeError::NotAMap));
        let binary = Outgoing::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Binary(Bytes::from_static(b"x")),
        };
        assert_eq!(
            encode(&binary).unwrap(),
            Wire::Binary(Bytes::from_static(&[2, 1, 1, b't', b'e', b'x']))
        );
    }
}
