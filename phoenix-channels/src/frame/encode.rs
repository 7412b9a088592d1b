//! The frame encoder: a JSON text frame, or a binary push frame.

use std::borrow::Cow;

use bytes::Bytes;

use super::{EncodeError, KIND_PUSH, OutFrame};
use crate::proto::message::{Payload, Ref};

fn needs_escape(s: &str) -> bool {
    crate::proto::json::plain_len(s.as_bytes()) < s.len()
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
    if !payload.is_binary() {
        let json = payload.to_json_text().map_err(EncodeError::Transcode)?;
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
        out.push_str(&json);
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
    binary_frame(&fields, payload.as_bytes())
}

/// A kind 0 binary frame: the length byte of each field, the fields, then the body.
fn binary_frame(fields: &[(&'static str, &str)], body: &[u8]) -> Result<OutFrame, EncodeError> {
    let mut out = Vec::with_capacity(
        1 + fields.len() + fields.iter().map(|f| f.1.len()).sum::<usize>() + body.len(),
    );
    out.push(KIND_PUSH);
    for &(field, value) in fields {
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

/// A binary push frame in the layout the server uses for its own pushes (kind 0 with
/// `join_ref`, `topic` and `event`, no ref), which is how a `vsn=3.0.0` server reads a
/// client's binary frame.
pub(super) fn binary_without_ref(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    body: &[u8],
) -> Result<OutFrame, EncodeError> {
    let join_ref = ref_text(join_ref);
    let fields: [(&'static str, &str); 3] =
        [("join_ref", &join_ref), ("topic", topic), ("event", event)];
    binary_frame(&fields, body)
}
