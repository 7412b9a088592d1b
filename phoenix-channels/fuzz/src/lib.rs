//! The checks the fuzz targets run on each input, kept in a library so that
//! `phoenix-channels/tests/fuzz_corpus.rs` replays the committed corpus through the same code on
//! stable Rust.
//!
//! Each check panics (which the fuzzer reports as a crash) when a decoder panics or breaks one
//! of these invariants:
//!
//! - a text frame decodes the same with and without leading whitespace (whitespace sends it
//!   through the general decoder instead of the fast path for canonical frames, and the two must
//!   agree on every frame);
//! - a decoded frame, encoded again, decodes to the same message;
//! - a JSON payload of a decoded frame deserializes into a `serde_json::Value`, unless it is
//!   deeper than serde_json's recursion limit, holds a number out of `f64`'s range or a lone
//!   surrogate escape (all valid JSON that the payload check accepts, as `IgnoredAny` does); a
//!   binary payload is never read as JSON, and displays as its base64;
//! - on a MessagePack (`vsn=3.0.0`) socket, a binary frame starting with 0, 1 or 2 decodes as a
//!   header frame does, any other decoded frame re-encodes and decodes to the same message, and
//!   its MessagePack payload passes the public check again, reads as a `serde_json::Value` or
//!   fails with a MessagePack error, and transcodes to a JSON frame or fails cleanly.

use bytes::Bytes;
use phoenix_channels::frame::{self, EncodeError, KIND_BROADCAST, KIND_PUSH, KIND_REPLY, OutFrame};
use phoenix_channels::{Event, Inbound, Payload, PayloadError, Ref, Serializer};

/// Decodes `data` as a text frame and checks the invariants.
pub fn check_text_frame(data: &[u8]) {
    let decoded = frame::decode_text(&Bytes::copy_from_slice(data));

    let mut spaced = Vec::with_capacity(data.len() + 1);
    spaced.push(b' ');
    spaced.extend_from_slice(data);
    let general = frame::decode_text(&Bytes::from(spaced));
    match (&decoded, &general) {
        (Ok(fast), Ok(general)) => assert!(
            same_frame(fast, general),
            "the two text decoders disagree: {fast:?} / with whitespace {general:?}"
        ),
        (Err(_), Err(_)) => {}
        (fast, general) => panic!(
            "one text decoder accepts the frame, the other not: {fast:?} / with whitespace \
             {general:?}"
        ),
    }

    let Ok(inbound) = decoded else { return };
    let again = match &inbound {
        Inbound::Message(message) => {
            assert_ne!(message.event.as_str(), Event::REPLY);
            check_payload(&message.payload, false);
            encode_text(
                message.join_ref.as_ref(),
                message.msg_ref.as_ref(),
                message.topic.as_str(),
                message.event.as_str(),
                &message.payload,
            )
        }
        Inbound::Reply(reply) => {
            check_payload(reply.reply.response(), false);
            let Some(response) = reply.reply.response().as_json() else {
                panic!("a text frame gave a binary response")
            };
            let status = quoted(reply.reply.status().as_str());
            let payload = match Payload::from_json_text(format!(
                r#"{{"status":{status},"response":{response}}}"#
            )) {
                Ok(payload) => payload,
                Err(e) => panic!("the reply of a decoded frame is not JSON again: {e}"),
            };
            encode_text(
                reply.join_ref.as_ref(),
                reply.msg_ref.as_ref(),
                reply.topic.as_str(),
                Event::REPLY,
                &payload,
            )
        }
        _ => return,
    };
    match frame::decode_text(&Bytes::from(again.clone())) {
        Ok(round_trip) => assert_eq!(round_trip, inbound, "re-encoded as {again}"),
        Err(e) => panic!("a decoded frame, encoded again as {again}, does not decode: {e}"),
    }
}

/// Decodes `data` as a binary frame and checks the invariants.
pub fn check_binary_frame(data: &[u8]) {
    let Ok(inbound) = frame::decode_binary(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = match &inbound {
        Inbound::Message(message) => {
            check_payload(&message.payload, true);
            assert_eq!(
                message.msg_ref, None,
                "a binary push or broadcast has no ref"
            );
            match &message.join_ref {
                None if data.first() == Some(&KIND_BROADCAST) => binary(
                    KIND_BROADCAST,
                    &[message.topic.as_str(), message.event.as_str()],
                    &message.payload,
                ),
                join_ref => binary(
                    KIND_PUSH,
                    &[
                        &ref_text(join_ref.as_ref()),
                        message.topic.as_str(),
                        message.event.as_str(),
                    ],
                    &message.payload,
                ),
            }
        }
        Inbound::Reply(reply) => {
            check_payload(reply.reply.response(), true);
            binary(
                KIND_REPLY,
                &[
                    &ref_text(reply.join_ref.as_ref()),
                    &ref_text(reply.msg_ref.as_ref()),
                    reply.topic.as_str(),
                    reply.reply.status().as_str(),
                ],
                reply.reply.response(),
            )
        }
        _ => return,
    };
    match frame::decode_binary(&Bytes::from(again.clone())) {
        Ok(round_trip) => assert_eq!(round_trip, inbound, "re-encoded as {again:?}"),
        Err(e) => panic!("a decoded frame, encoded again as {again:?}, does not decode: {e}"),
    }
}

/// Whether the fast and the general text decoder read the same frame, payloads byte for byte
/// (corpus input `text_frame/crash-lone-low-surrogate-payload` once showed the fast path keeping
/// the whitespace around a payload).
fn same_frame(fast: &Inbound, general: &Inbound) -> bool {
    match (fast, general) {
        (Inbound::Message(a), Inbound::Message(b)) => {
            a.topic == b.topic
                && a.event == b.event
                && a.join_ref == b.join_ref
                && a.msg_ref == b.msg_ref
                && a.payload.as_json() == b.payload.as_json()
        }
        (Inbound::Reply(a), Inbound::Reply(b)) => {
            a.topic == b.topic
                && a.join_ref == b.join_ref
                && a.msg_ref == b.msg_ref
                && a.reply.status() == b.reply.status()
                && a.reply.response().as_json() == b.reply.response().as_json()
        }
        _ => false,
    }
}

/// The payload of a decoded frame reads as what it is.
fn check_payload(payload: &Payload, binary: bool) {
    assert_eq!(payload.is_binary(), binary);
    let display = payload.to_display_value();
    if binary {
        assert!(matches!(payload.to_value(), Err(PayloadError::Binary)));
        assert!(matches!(
            payload.deserialize::<serde_json::Value>(),
            Err(PayloadError::Binary)
        ));
        assert!(display["binary_base64"].is_string(), "{display}");
        return;
    }
    let Some(text) = payload.as_json() else {
        panic!("a JSON payload that is not UTF-8")
    };
    match payload.to_value() {
        Ok(value) => {
            assert_eq!(display, value);
            // What `to_value` read is what the text says.
            let direct: Result<serde_json::Value, _> = serde_json::from_str(text);
            assert!(matches!(direct, Ok(ref direct) if *direct == value));
        }
        Err(PayloadError::Json(e)) => {
            let message = e.to_string();
            assert!(
                message.contains("recursion limit exceeded")
                    || message.contains("number out of range")
                    || message.contains("surrogate")
                    || message.contains("hex escape")
                    || message.contains("unicode code point"),
                "a checked JSON payload does not deserialize: {message}: {text:.200}"
            );
            assert_eq!(display, serde_json::Value::Null);
        }
        Err(e) => panic!("a JSON payload does not deserialize: {e}"),
    }
    // Typed deserialization fails cleanly too.
    let _ = payload.deserialize::<Vec<u64>>();
}

/// A client-style text frame (the way `frame::encode` writes it).
fn encode_text(
    join_ref: Option<&Ref>,
    msg_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> String {
    match frame::encode(join_ref, msg_ref, topic, event, payload) {
        Ok(OutFrame::Text(text)) => text,
        other => panic!("a JSON payload did not encode as a text frame: {other:?}"),
    }
}

/// A server binary frame of this kind: the kind byte, one length byte per field, the fields,
/// the payload.
fn binary(kind: u8, fields: &[&str], payload: &Payload) -> Vec<u8> {
    let mut out = vec![kind];
    for field in fields {
        match u8::try_from(field.len()) {
            Ok(len) => out.push(len),
            Err(_) => panic!("a decoded binary field is longer than 255 bytes: {field:?}"),
        }
    }
    for field in fields {
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

fn ref_text(r: Option<&Ref>) -> String {
    r.map(Ref::to_string).unwrap_or_default()
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Decodes `data` as a binary frame of a MessagePack (`vsn=3.0.0`) socket and checks the
/// invariants: a frame whose first byte is 0, 1 or 2 decodes as a binary header frame does;
/// a MessagePack frame, encoded again, decodes to the same message; its payload passes
/// `Payload::from_msgpack_bytes` too, and reads into a `serde_json::Value` or fails with a
/// MessagePack error; transcoding it to a JSON frame fails cleanly or gives a JSON frame.
pub fn check_msgpack_frame(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let decoded = frame::decode_binary_with(Serializer::MessagePack, &bytes);
    if matches!(
        data.first(),
        Some(&(KIND_PUSH | KIND_REPLY | KIND_BROADCAST))
    ) {
        assert_eq!(decoded, frame::decode_binary(&bytes));
        return;
    }
    // Any bytes: a payload is accepted or refused, never a panic.
    if let Ok(payload) = Payload::from_msgpack_bytes(bytes.clone()) {
        check_msgpack_payload(&payload);
    }
    let Ok(inbound) = decoded else { return };
    let again = match &inbound {
        Inbound::Message(message) => {
            assert_ne!(message.event.as_str(), Event::REPLY);
            check_msgpack_payload(&message.payload);
            encode_msgpack(
                message.join_ref.as_ref(),
                message.msg_ref.as_ref(),
                message.topic.as_str(),
                message.event.as_str(),
                &message.payload,
            )
        }
        Inbound::Reply(reply) => {
            let response = reply.reply.response();
            check_msgpack_payload(response);
            // `{"status": status, "response": response}`
            let mut map = vec![0x82];
            map.extend_from_slice(&msgpack_str("status"));
            map.extend_from_slice(&msgpack_str(reply.reply.status().as_str()));
            map.extend_from_slice(&msgpack_str("response"));
            map.extend_from_slice(response.as_bytes());
            let payload = match Payload::from_msgpack_bytes(map) {
                Ok(payload) => payload,
                Err(e) => panic!("the reply of a decoded frame is not MessagePack again: {e}"),
            };
            encode_msgpack(
                reply.join_ref.as_ref(),
                reply.msg_ref.as_ref(),
                reply.topic.as_str(),
                Event::REPLY,
                &payload,
            )
        }
        _ => return,
    };
    match frame::decode_binary_with(Serializer::MessagePack, &Bytes::from(again.clone())) {
        Ok(round_trip) => assert_eq!(round_trip, inbound, "re-encoded as {again:?}"),
        Err(e) => panic!("a decoded frame, encoded again as {again:?}, does not decode: {e}"),
    }
}

/// A MessagePack payload reads as what it is, in every way a user can read it.
fn check_msgpack_payload(payload: &Payload) {
    assert!(payload.is_msgpack() && !payload.is_binary() && payload.as_json().is_none());
    let Some(bytes) = payload.as_msgpack() else {
        panic!("a MessagePack payload without MessagePack bytes")
    };
    if let Err(e) = Payload::from_msgpack_bytes(bytes.to_vec()) {
        panic!("a checked MessagePack payload fails the public check: {e}");
    }
    match payload.to_value() {
        Ok(value) => assert_eq!(payload.to_display_value(), value),
        Err(PayloadError::MessagePack(_)) => {}
        Err(e) => panic!("a MessagePack payload fails with a non-MessagePack error: {e}"),
    }
    let _ = payload.deserialize::<Vec<u64>>();
    // On a JSON socket it is transcoded to a JSON frame, or refused with a clear error.
    match frame::encode(None, None, "t", "e", payload) {
        Ok(OutFrame::Text(text)) => {
            // Nested as deep as the MessagePack limit allows, inside the frame's array it may
            // pass JSON's recursion limit.
            if let Err(e) = frame::decode_text(&Bytes::from(text.clone()))
                && !e.to_string().contains("recursion limit")
            {
                panic!("a transcoded payload is not a JSON frame: {e}: {text:.200}");
            }
        }
        Ok(other) => panic!("a MessagePack payload encoded for a JSON socket as {other:?}"),
        Err(EncodeError::Transcode(_)) => {}
        Err(e) => panic!("a MessagePack payload fails to transcode with {e}"),
    }
}

/// A frame the way a `vsn=3.0.0` client writes it.
fn encode_msgpack(
    join_ref: Option<&Ref>,
    msg_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Vec<u8> {
    match frame::encode_with(
        Serializer::MessagePack,
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    ) {
        Ok(OutFrame::Binary(bytes)) => bytes.to_vec(),
        other => panic!("a MessagePack payload did not encode as a binary frame: {other:?}"),
    }
}

/// A MessagePack string (fixstr, str8, str16 or str32 by its length).
fn msgpack_str(s: &str) -> Vec<u8> {
    let len = s.len();
    let mut out = match (u8::try_from(len), u16::try_from(len), u32::try_from(len)) {
        (Ok(n), _, _) if n < 32 => vec![0xa0 | n],
        (Ok(n), _, _) => vec![0xd9, n],
        (_, Ok(n), _) => [&[0xda][..], &n.to_be_bytes()].concat(),
        (_, _, Ok(n)) => [&[0xdb][..], &n.to_be_bytes()].concat(),
        _ => panic!("a decoded string longer than 4 GiB"),
    };
    out.extend_from_slice(s.as_bytes());
    out
}
