//! The MessagePack (`vsn=3.0.0`) frame codec: `[join_ref, ref, topic, event, payload]` as one
//! MessagePack array in a binary frame.

use std::borrow::Cow;

use bytes::Bytes;
use rmpv::ValueRef;

use super::{DecodeError, EncodeError, FrameView, ViewBody, owned};
use crate::proto::message::{Event, Payload, Ref, Reply, ReplyStatus};

/// The deepest nesting accepted in a MessagePack payload: the recursion limit of the JSON
/// decoder (serde_json's 128), so that both formats bound the work of one frame alike.
pub(crate) const MAX_DEPTH: usize = 128;

/// [`MAX_DEPTH`] as rmpv counts it: two levels for each array or map (the value, then its
/// data), and up to two more for the innermost value (a string's data counts too).
const RMPV_DEPTH: usize = 2 * MAX_DEPTH + 2;

fn malformed(what: impl std::fmt::Display) -> DecodeError {
    DecodeError::MessagePack(what.to_string())
}

/// One complete MessagePack value at the start of `rd` (at most [`MAX_DEPTH`] deep), which
/// `rd` then skips.
fn value<'a>(rd: &mut &'a [u8]) -> Result<ValueRef<'a>, DecodeError> {
    rmpv::decode::read_value_ref_with_max_depth(rd, RMPV_DEPTH).map_err(malformed)
}

/// The bytes of one complete MessagePack value at the start of `rd`, which `rd` then skips.
fn value_bytes<'a>(rd: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let start = *rd;
    value(rd)?;
    Ok(&start[..start.len() - rd.len()])
}

/// Checks that `bytes` are exactly one MessagePack value, at most [`MAX_DEPTH`] deep.
pub(crate) fn check_value(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut rd = bytes;
    value(&mut rd)?;
    if rd.is_empty() {
        Ok(())
    } else {
        Err(malformed(format!("{} bytes after the value", rd.len())))
    }
}

fn read_ref(rd: &mut &[u8], field: &'static str) -> Result<Option<Ref>, DecodeError> {
    match value(rd)? {
        ValueRef::Nil => Ok(None),
        ValueRef::String(s) => match s.as_str() {
            Some(text) => Ok(Some(Ref::parse(text))),
            None => Err(DecodeError::NotUtf8(field)),
        },
        ValueRef::Integer(n) => match n.as_u64() {
            Some(n) => Ok(Some(Ref::new(n))),
            None => Err(malformed(format!("`{field}` is a negative integer"))),
        },
        _ => Err(malformed(format!(
            "`{field}` is not nil, a string or an integer"
        ))),
    }
}

fn read_str<'a>(rd: &mut &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    match rmp::decode::read_str_from_slice(*rd) {
        Ok((text, rest)) => {
            *rd = rest;
            Ok(text)
        }
        Err(rmp::decode::DecodeStringError::InvalidUtf8(..)) => Err(DecodeError::NotUtf8(field)),
        Err(_) => Err(malformed(format!("`{field}` is not a string"))),
    }
}

/// Decodes a MessagePack frame.
pub(crate) fn decode_view(frame: &Bytes) -> Result<FrameView<'_>, DecodeError> {
    let mut rd: &[u8] = frame;
    let len = rmp::decode::read_array_len(&mut rd)
        .map_err(|_| malformed("not an array [join_ref, ref, topic, event, payload]"))?;
    if len != 5 {
        return Err(malformed(format!("an array of {len} elements, not 5")));
    }
    let join_ref = read_ref(&mut rd, "join_ref")?;
    let msg_ref = read_ref(&mut rd, "ref")?;
    let topic = read_str(&mut rd, "topic")?;
    let event = read_str(&mut rd, "event")?;
    let body = if event == Event::REPLY {
        ViewBody::Reply(read_reply(frame, &mut rd)?)
    } else {
        let payload = value_bytes(&mut rd)?;
        ViewBody::Message {
            event: Cow::Borrowed(event),
            payload: Payload::from_checked_msgpack(owned(frame, payload)),
        }
    };
    if !rd.is_empty() {
        return Err(malformed(format!("{} bytes after the frame", rd.len())));
    }
    Ok(FrameView {
        join_ref,
        msg_ref,
        topic: Cow::Borrowed(topic),
        body,
    })
}

/// Reads a reply payload `{status, response}` (in any key order; other keys are skipped).
fn read_reply(frame: &Bytes, rd: &mut &[u8]) -> Result<Reply, DecodeError> {
    let reply_error = |what: &str| DecodeError::Reply(what.to_owned());
    let len = rmp::decode::read_map_len(rd).map_err(|_| reply_error("not a map"))?;
    let mut status = None;
    let mut response = None;
    for _ in 0..len {
        match read_str(rd, "reply key") {
            Ok("status") => status = Some(read_str(rd, "status")?),
            Ok("response") => response = Some(value_bytes(rd)?),
            Ok(_) => {
                value(rd)?;
            }
            Err(_) => {
                // A key of another type: skip it and its value.
                value(rd)?;
                value(rd)?;
            }
        }
    }
    let status = status.ok_or_else(|| reply_error("no string `status`"))?;
    let response = match response {
        Some(bytes) => Payload::from_checked_msgpack(owned(frame, bytes)),
        None => Payload::msgpack_empty_map(),
    };
    Ok(Reply::new(ReplyStatus::parse(status), response))
}

fn write_ref(out: &mut Vec<u8>, r: Option<&Ref>) {
    // Writing to a `Vec` cannot fail.
    let _ = match r {
        None => rmp::encode::write_nil(out).map_err(|_| ()),
        Some(r) => match r.as_u64() {
            Some(n) => rmp::encode::write_str(out, itoa::Buffer::new().format(n)).map_err(|_| ()),
            None => rmp::encode::write_str(out, &r.to_string()).map_err(|_| ()),
        },
    };
}

/// Encodes a message with a MessagePack (or JSON, transcoded) payload as a MessagePack frame.
pub(crate) fn encode(
    join_ref: Option<&Ref>,
    msg_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Bytes, EncodeError> {
    let body: Cow<'_, [u8]> = match payload.as_msgpack() {
        Some(bytes) => Cow::Borrowed(bytes),
        None => Cow::Owned(payload.to_msgpack_bytes().map_err(EncodeError::Transcode)?),
    };
    let mut out = Vec::with_capacity(16 + topic.len() + event.len() + body.len());
    // Writing to a `Vec` cannot fail.
    let _ = rmp::encode::write_array_len(&mut out, 5);
    write_ref(&mut out, join_ref);
    write_ref(&mut out, msg_ref);
    let _ = rmp::encode::write_str(&mut out, topic);
    let _ = rmp::encode::write_str(&mut out, event);
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::frame::{OutFrame, Serializer, decode_binary_with, encode_with};
    use crate::proto::message::Inbound;

    /// JSON values without floats (which MessagePack and JSON both hold exactly).
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn payload_checks_refuse_what_is_not_one_bounded_value() {
        assert!(check_value(&[0x80]).is_ok());
        assert!(check_value(&[]).is_err());
        assert!(check_value(&[0x80, 0x80]).is_err(), "trailing bytes");
        assert!(check_value(&[0x92, 0x01]).is_err(), "truncated");
        assert!(
            check_value(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "a huge array, no elements"
        );
        let deep = |levels: usize| [vec![0x91u8; levels], vec![0xc0]].concat();
        assert!(check_value(&deep(MAX_DEPTH)).is_ok());
        assert!(check_value(&deep(MAX_DEPTH + 2)).is_err());
        assert!(check_value(&deep(100_000)).is_err());
    }

    proptest! {
        #[test]
        fn msgpack_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_view(&bytes);
            let _ = decode_binary_with(Serializer::MessagePack, &bytes);
            let _ = Payload::from_msgpack_bytes(bytes);
        }

        #[test]
        fn msgpack_decoder_never_panics_on_near_valid_frames(
            refs in proptest::collection::vec(prop_oneof![Just(vec![0xc0u8]), Just(vec![0xa1, b'1']), Just(vec![0x05]), Just(vec![0xff])], 2),
            event in prop_oneof![Just(b"\xa9phx_reply".to_vec()), Just(b"\xa2ev".to_vec())],
            tail in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut frame = vec![0x95];
            frame.extend(refs.concat());
            frame.extend_from_slice(b"\xa1t");
            frame.extend(event);
            frame.extend(tail);
            let _ = decode_view(&Bytes::from(frame));
        }

        #[test]
        fn frames_and_payloads_round_trip(
            join in proptest::option::of(any::<u64>()), r in proptest::option::of(any::<u64>()),
            topic in ".{0,20}", event in ".{0,12}", body in json_value(),
        ) {
            prop_assume!(event != Event::REPLY);
            let join = join.map(Ref::new);
            let r = r.map(Ref::new);
            // From a `Serialize` value straight to MessagePack, and from JSON transcoded.
            for payload in [Payload::msgpack(&body).unwrap(), Payload::json(&body).unwrap()] {
                let out = encode_with(Serializer::MessagePack, join.as_ref(), r.as_ref(), &topic, &event, &payload).unwrap();
                let OutFrame::Binary(bytes) = out else { panic!("expected binary") };
                let Ok(Inbound::Message(m)) = decode_binary_with(Serializer::MessagePack, &bytes) else {
                    panic!("does not decode")
                };
                prop_assert_eq!(&m.join_ref, &join);
                prop_assert_eq!(&m.msg_ref, &r);
                prop_assert_eq!(m.topic.as_str(), topic.as_str());
                prop_assert_eq!(m.event.as_str(), event.as_str());
                prop_assert!(m.payload.is_msgpack());
                prop_assert_eq!(m.payload.to_value().unwrap(), body.clone());
                prop_assert_eq!(m.payload.deserialize::<Value>().unwrap(), body.clone());
                // And back to JSON for a JSON socket.
                let text = m.payload.to_json_text().unwrap();
                prop_assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), body.clone());
            }
        }
    }

    #[test]
    fn replies_read_status_and_response_in_any_order_and_skip_other_keys() {
        let frame = |v: Value| Bytes::from(rmp_serde::to_vec(&v).unwrap());
        for reply in [
            json!(["1", "2", "t", "phx_reply", {"status": "ok", "response": {"a": 1}}]),
            json!([1, 2, "t", "phx_reply", {"response": {"a": 1}, "x": [1], "status": "ok"}]),
        ] {
            let Ok(Inbound::Reply(r)) = decode_binary_with(Serializer::MessagePack, &frame(reply))
            else {
                panic!("not a reply")
            };
            assert_eq!(r.msg_ref, Some(Ref::new(2)));
            assert!(r.reply.is_ok());
            assert_eq!(r.reply.response().to_value().unwrap(), json!({"a": 1}));
        }
        let no_status = frame(json!(["1", "2", "t", "phx_reply", {"response": {}}]));
        assert!(matches!(
            decode_binary_with(Serializer::MessagePack, &no_status),
            Err(DecodeError::Reply(_))
        ));
        let negative_ref = frame(json!([-1, "2", "t", "ev", {}]));
        assert!(decode_binary_with(Serializer::MessagePack, &negative_ref).is_err());
    }
}
