//! The leaf service: pushes a write on the store's channel and reads the `phx_reply`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use phoenix_channels::{Channel, PushOptions, Ref, Reply};
use serde_json::Value;
use tower::Service;

use crate::error::WriteError;
use crate::format;
use crate::write::{EncodedWrite, Rejection, WriteAck};

/// An encoded write to push on a store's channel, under one join of it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SendWrite {
    /// The store's channel.
    pub channel: Channel,
    /// The write.
    pub write: EncodedWrite,
    /// The join it must go out under: if the channel has rejoined (or is not joined) by the
    /// time the push is processed, it is not sent at all and fails with
    /// [`PushError::Unavailable`](phoenix_channels::PushError::Unavailable).
    pub join_ref: Ref,
}

/// Pushes writes on their store's channel ([`SendWrite::channel`]): an ok reply with a map is `Ok(WriteAck)` with the whole
/// map, an error reply with a reason is `Err(Rejected)`, anything else is an
/// `unexpected_reply` rejection (logged); a push that gets no reply is
/// `Err(WriteError::Transport(..))`.
#[derive(Clone, Debug)]
pub struct ChannelService {
    timeout: Duration,
}

impl ChannelService {
    /// A leaf with this push timeout.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

/// Reads a write's reply as the seed does.
pub(crate) fn read_reply(reply: Reply) -> Result<WriteAck, WriteError> {
    let ok = reply.is_ok();
    let status = reply.status().as_str().to_owned();
    let response = format::value(reply.response()).unwrap_or(Value::Null);
    match (ok, status.as_str(), &response) {
        (true, _, Value::Object(_)) => Ok(WriteAck::from_reply(response)),
        (false, "error", Value::Object(map)) if map.get("reason").is_some_and(Value::is_string) => {
            Err(WriteError::Rejected(Rejection::from_payload(&response)))
        }
        _ => {
            // The payload may carry user data: shown at debug only.
            tracing::warn!(status, "unexpected reply to a write");
            tracing::debug!(status, ?response, "the unexpected reply");
            Err(WriteError::Rejected(Rejection::unexpected(
                &serde_json::json!({"status": status, "response": response}),
            )))
        }
    }
}

impl Service<SendWrite> for ChannelService {
    type Response = WriteAck;
    type Error = WriteError;
    type Future = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SendWrite) -> Self::Future {
        let options = PushOptions::new()
            .timeout(self.timeout)
            .pinned_to(request.join_ref);
        let push = request
            .channel
            .push_with(request.write.event, request.write.params, options);
        Box::pin(async move {
            match push.await {
                Ok(reply) => read_reply(reply),
                Err(error) => Err(WriteError::Transport(error)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_channels::{Payload, ReplyStatus};
    use serde_json::json;

    fn reply(status: ReplyStatus, response: Value) -> Reply {
        Reply::new(status, Payload::from(response))
    }

    #[test]
    fn replies_read_as_the_seed_reads_them() {
        let ack = read_reply(reply(ReplyStatus::Ok, json!({"store_seq": 3}))).unwrap();
        assert_eq!(ack.store_seq(), Some(3));
        let rejected = read_reply(reply(
            ReplyStatus::Error,
            json!({"reason": "conflict", "current": 2}),
        ))
        .unwrap_err();
        let WriteError::Rejected(r) = rejected else {
            panic!()
        };
        assert_eq!(
            (r.reason.as_str(), r.payload["current"].clone()),
            ("conflict", json!(2))
        );
        for odd in [
            reply(ReplyStatus::Ok, json!("done")),
            reply(ReplyStatus::Error, json!("nope")),
            reply(ReplyStatus::Other("weird".into()), json!({})),
        ] {
            let WriteError::Rejected(r) = read_reply(odd).unwrap_err() else {
                panic!()
            };
            assert_eq!(r.reason.as_str(), "unexpected_reply");
        }
    }
}
