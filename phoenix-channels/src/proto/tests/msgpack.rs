//! The MessagePack serializer (`vsn=3.0.0`) in the core: frames out and in, transcoding, and
//! binary payloads in the layout the server reads.

use serde_json::{Value, json};

use super::*;
use crate::frame::{EncodeError, Serializer};
use crate::proto::message::Message;

fn msgpack_harness() -> Harness {
    Harness::with_config(CoreConfig {
        serializer: Serializer::MessagePack,
        ..CoreConfig::default()
    })
}

/// The binary frames sent since the last look.
fn sent_binary(h: &mut Harness) -> Vec<Bytes> {
    h.take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Transmit(OutFrame::Binary(b)) => Some(b),
            Output::Transmit(OutFrame::Text(t)) => {
                panic!("a text frame on a MessagePack socket: {t}")
            }
            _ => None,
        })
        .collect()
}

/// A MessagePack frame as JSON, for comparing.
fn as_json(frame: &[u8]) -> Value {
    rmp_serde::from_slice(frame).unwrap()
}

fn server_msgpack(h: &mut Harness, frame: &Value) {
    let bytes = rmp_serde::to_vec(frame).unwrap();
    h.core.handle_binary(h.now, Bytes::from(bytes));
}

/// Adds and joins channel `A` on topic `t` over MessagePack; returns the join ref.
fn joined_msgpack(h: &mut Harness) -> u64 {
    h.add(A, "t");
    h.core.join(h.now, A);
    let sent = sent_binary(h);
    assert_eq!(sent.len(), 1);
    let join = as_json(&sent[0]);
    assert_eq!(join, json!(["1", "1", "t", "phx_join", {}]));
    server_msgpack(
        h,
        &json!(["1", "1", "t", "phx_reply", {"status": "ok", "response": {"hi": 1}}]),
    );
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
    assert_eq!(
        h.core.join_response(A).map(|p| p.to_value().unwrap()),
        Some(json!({"hi": 1}))
    );
    h.take();
    1
}

#[test]
fn joins_pushes_and_replies_travel_as_messagepack_arrays() {
    let mut h = msgpack_harness();
    joined_msgpack(&mut h);
    // A JSON payload is transcoded; a MessagePack one goes as it is.
    h.core.push(
        h.now,
        A,
        PushRequest::new(
            "json".into(),
            Payload::json(&json!({"n": [1, 2]})).unwrap(),
            ms(1000),
        ),
        Some(7),
    );
    h.core.push(
        h.now,
        A,
        PushRequest::new(
            "packed".into(),
            Payload::msgpack(&json!({"m": true})).unwrap(),
            ms(1000),
        ),
        Some(8),
    );
    let sent: Vec<Value> = sent_binary(&mut h).iter().map(|f| as_json(f)).collect();
    assert_eq!(
        sent,
        [
            json!(["1", "2", "t", "json", {"n": [1, 2]}]),
            json!(["1", "3", "t", "packed", {"m": true}]),
        ]
    );
    // Refs may come back as integers, the join ref as nil.
    server_msgpack(
        &mut h,
        &json!([null, 2, "t", "phx_reply", {"response": {"ok": 1}, "status": "ok"}]),
    );
    server_msgpack(
        &mut h,
        &json!(["1", "3", "t", "phx_reply", {"status": "error", "response": {}}]),
    );
    let done = h.done();
    assert_eq!(done.len(), 2);
    let (token, Ok(reply)) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(*token, 7);
    assert!(reply.response().is_msgpack());
    assert_eq!(reply.response().to_value().unwrap(), json!({"ok": 1}));
    let (8, Ok(reply)) = &done[1] else {
        panic!("{done:?}")
    };
    assert!(!reply.is_ok());
}

#[test]
fn broadcasts_header_frames_and_text_frames_are_all_read() {
    let mut h = msgpack_harness();
    joined_msgpack(&mut h);
    server_msgpack(&mut h, &json!([null, null, "t", "news", {"a": 1}]));
    // A binary broadcast (kind 2) and a server push (kind 0) keep their header frames.
    let mut broadcast = vec![2u8, 1, 3];
    broadcast.extend_from_slice(b"tbin\x00\xff");
    h.core.handle_binary(h.now, Bytes::from(broadcast));
    let mut push = vec![0u8, 1, 1, 3];
    push.extend_from_slice(b"1tbin\x01");
    h.core.handle_binary(h.now, Bytes::from(push));
    // A text frame is still JSON.
    h.server(r#"[null,null,"t","text",{"b":2}]"#);
    let messages: Vec<Message> = h
        .channel_events(A)
        .into_iter()
        .filter_map(|e| match e {
            ChannelEvent::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(messages[0].payload.is_msgpack());
    assert_eq!(messages[0].payload.to_value().unwrap(), json!({"a": 1}));
    assert_eq!(
        messages[1].payload.as_binary().map(|b| b.as_ref()),
        Some(&b"\x00\xff"[..])
    );
    assert_eq!(
        messages[2].payload.as_binary().map(|b| b.as_ref()),
        Some(&b"\x01"[..])
    );
    assert_eq!(messages[3].payload.as_json(), Some(r#"{"b":2}"#));
}

#[test]
fn a_binary_cast_goes_in_the_server_push_layout_and_a_binary_push_is_refused() {
    let mut h = msgpack_harness();
    joined_msgpack(&mut h);
    let request =
        |event: &str| PushRequest::new(event.into(), Payload::binary(&b"\x01\x02"[..]), ms(1000));
    h.core.push(h.now, A, request("up"), None);
    let sent = sent_binary(&mut h);
    // kind 0, join ref "1", topic "t", event "up", then the bytes: no ref.
    assert_eq!(sent, [Bytes::from_static(b"\x00\x01\x01\x021tup\x01\x02")]);
    h.core.push(h.now, A, request("up"), Some(3));
    let done = h.done();
    assert!(
        matches!(
            done.as_slice(),
            [(
                3,
                Err(PushError::Encode(EncodeError::BinaryReplyUnsupported))
            )]
        ),
        "{done:?}"
    );
    assert_eq!(h.core.pending_len(), 0);
}

#[test]
fn a_messagepack_payload_on_a_json_socket_is_transcoded_or_refused() {
    let mut h = Harness::new();
    let r = h.joined(A, "t");
    h.core.push(
        h.now,
        A,
        PushRequest::new(
            "e".into(),
            Payload::msgpack(&json!({"x": [1, "y"]})).unwrap(),
            ms(1000),
        ),
        Some(1),
    );
    assert_eq!(
        h.sent(),
        [format!(r#"["{r}","2","t","e",{{"x":[1,"y"]}}]"#)]
    );
    // A map keyed by an array, `{[1]: 2}`, has no JSON form.
    let array_key = Payload::from_msgpack_bytes(vec![0x81, 0x91, 0x01, 0x02]).unwrap();
    h.core.push(
        h.now,
        A,
        PushRequest::new("e".into(), array_key, ms(1000)),
        Some(2),
    );
    let done = h.done();
    assert!(
        matches!(
            done.as_slice(),
            [(2, Err(PushError::Encode(EncodeError::Transcode(_))))]
        ),
        "{done:?}"
    );
}

#[test]
fn malformed_messagepack_frames_are_reported_and_change_nothing() {
    let mut h = msgpack_harness();
    joined_msgpack(&mut h);
    for frame in [
        &[0x93, 0xc0, 0xc0, 0xa1][..], // not 5 elements, truncated
        &[0x95, 0xc0, 0xc0, 0xa1, b't', 0xa1, b'e'], // no payload
        &[0x95, 0xc0, 0xc0, 0x01, 0xa1, b'e', 0x80], // topic not a string
        &[0x95, 0xc0, 0xc0, 0xa1, b't', 0xa1, b'e', 0x80, 0x80], // trailing bytes
        &[0xc1],                       // never used marker
    ] {
        h.core.handle_binary(h.now, Bytes::copy_from_slice(frame));
    }
    let outputs = h.take();
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    assert!(
        outputs.iter().all(|o| matches!(o, Output::Malformed(_))),
        "{outputs:?}"
    );
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
}

#[test]
fn nesting_past_the_limit_is_refused() {
    let deep = |levels: usize| {
        let mut frame = vec![0x95, 0xc0, 0xc0, 0xa1, b't', 0xa1, b'e'];
        frame.extend(std::iter::repeat_n(0x91u8, levels));
        frame.push(0xc0);
        Bytes::from(frame)
    };
    assert!(crate::frame::decode_binary_with(Serializer::MessagePack, &deep(100)).is_ok());
    assert!(crate::frame::decode_binary_with(Serializer::MessagePack, &deep(100_000)).is_err());
}
