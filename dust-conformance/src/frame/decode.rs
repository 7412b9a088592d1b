//! Decoding client frames: V2 arrays, V1 objects and V2 binary pushes.

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use super::*;

/// Decodes a text frame.
pub(crate) fn decode_text(protocol: Protocol, text: &str) -> Result<Incoming, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match protocol {
        // The MessagePack serializer reads text frames as V2 JSON.
        Protocol::V2 | Protocol::MessagePack => decode_v2_array(value, text),
        Protocol::V1 => decode_v1_object(value, text),
    }
}

/// Whether a ref's value needs its raw text to be echoed exactly.
pub(super) fn inexact(value: &Value) -> bool {
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
        Protocol::MessagePack => super::msgpack::decode_binary(bytes),
    }
}

pub(super) fn decode_v2_array(value: Value, text: &str) -> Result<Incoming, DecodeError> {
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
        msgpack: None,
    })
}

pub(super) fn decode_v1_object(value: Value, text: &str) -> Result<Incoming, DecodeError> {
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
        msgpack: None,
    })
}

pub(super) fn string_field(value: Value, name: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::NotAString(name)),
    }
}

/// The next `len` bytes of a binary frame's header as a UTF-8 field (`name` in the error).
pub(super) fn take_field(
    rest: &mut &[u8],
    len: u8,
    name: &'static str,
) -> Result<String, DecodeError> {
    let len = usize::from(len);
    if rest.len() < len {
        return Err(DecodeError::Truncated);
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(head.to_vec()).map_err(|_| DecodeError::NotUtf8(name))
}

pub(super) fn decode_v2_binary(bytes: &[u8]) -> Result<Incoming, DecodeError> {
    let (&kind, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
    if kind != KIND_PUSH {
        return Err(DecodeError::BinaryKind(kind));
    }
    let [join_ref_len, ref_len, topic_len, event_len, rest @ ..] = rest else {
        return Err(DecodeError::Truncated);
    };
    let mut rest = rest;
    let mut field = |len: u8, name: &'static str| take_field(&mut rest, len, name);
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
        msgpack: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
