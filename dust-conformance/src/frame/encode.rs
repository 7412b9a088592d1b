//! Encoding server messages: V2 arrays and binary frames, V1 objects.

use bytes::{BufMut, BytesMut};
use serde_json::{Value, json};

use super::*;

/// Encodes a server message with the connection's serializer.
pub(crate) fn encode(protocol: Protocol, message: &Outgoing) -> Result<Wire, EncodeError> {
    match protocol {
        Protocol::V2 => encode_v2(message),
        Protocol::V1 => encode_v1(message),
        Protocol::MessagePack => super::msgpack::encode(message),
    }
}

pub(super) fn encode_v2(message: &Outgoing) -> Result<Wire, EncodeError> {
    match message {
        Outgoing::Message {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } => match payload {
            Payload::Json(p) | Payload::Dual { json: p, .. } => {
                text(&(join_ref, ref_, topic, event, p))
            }
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
            Payload::Json(r) | Payload::Dual { json: r, .. } => text(&(
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
            Payload::Json(p) | Payload::Dual { json: p, .. } => text(&((), (), topic, event, p)),
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
pub(super) fn put_fields(
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
pub(super) fn ref_string(value: &Ref, name: &'static str) -> Result<String, EncodeError> {
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

pub(super) fn encode_v1(message: &Outgoing) -> Result<Wire, EncodeError> {
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

pub(super) fn json_only(payload: &Payload) -> Result<&Value, EncodeError> {
    payload.as_json().ok_or(EncodeError::BinaryOnV1)
}

pub(super) fn text(value: &impl serde::Serialize) -> Result<Wire, EncodeError> {
    serde_json::to_string(value)
        .map(Wire::Text)
        .map_err(|e| EncodeError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
