//! The binary frame decoder (kinds push, reply and broadcast).

use std::borrow::Cow;

use bytes::Bytes;

use super::{DecodeError, FrameView, KIND_BROADCAST, KIND_PUSH, KIND_REPLY, ViewBody, owned};
use crate::proto::message::{Payload, Ref, Reply, ReplyStatus};

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
