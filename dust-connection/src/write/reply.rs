//! What the server answers to a write: an acknowledgement carrying the whole reply map, or a
//! rejection with its reason.

use std::fmt;

use serde_json::{Map, Value};

use super::path::Path;
use crate::engine::ServerEvent;

/// An accepted write: the server's whole reply map, with typed accessors.
///
/// Every write's reply has `store_seq`; a lease or renew adds `token`, `expires_at` and
/// `holder`; a release that held nothing is `{"released": false}`; a `put_file` adds `hash`.
///
/// ```
/// use dust_connection::WriteAck;
/// use serde_json::json;
///
/// let ack = WriteAck::from_reply(json!({"store_seq": 7, "token": 7, "expires_at": 1700000000000u64, "holder": "w1"}));
/// assert_eq!(ack.store_seq(), Some(7));
/// assert_eq!(ack.token(), Some(7));
/// assert_eq!(ack.holder(), Some("w1"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WriteAck {
    reply: Map<String, Value>,
    from_event: bool,
}

impl WriteAck {
    /// An acknowledgement from a reply map (a non-object is kept under `"reply"`).
    pub fn from_reply(reply: Value) -> Self {
        let reply = match reply {
            Value::Object(map) => map,
            other => Map::from_iter([("reply".to_owned(), other)]),
        };
        Self {
            reply,
            from_event: false,
        }
    }

    /// An acknowledgement built from the write's own `event` (when its reply was lost): what
    /// the server's reply to that op carries, read from the event — `store_seq`; for a `lease`
    /// or `renew` the lease envelope's `token`, `expires_at` and `holder`; for a `put_file` the
    /// file ref's `hash`. Nothing of the written value itself.
    pub fn from_event(event: &ServerEvent) -> Self {
        let mut reply = Map::from_iter([("store_seq".to_owned(), Value::from(event.store_seq))]);
        let copy = |reply: &mut Map<String, Value>, keys: &[&str]| {
            for key in keys {
                reply.insert(
                    (*key).to_owned(),
                    event.value.get(*key).cloned().unwrap_or(Value::Null),
                );
            }
        };
        match event.op.as_str() {
            "lease" | "renew" => copy(&mut reply, &["token", "expires_at", "holder"]),
            "put_file" => copy(&mut reply, &["hash"]),
            _ => {}
        }
        Self {
            reply,
            from_event: true,
        }
    }

    /// Whether the write was answered from its event rather than its reply.
    pub fn is_from_event(&self) -> bool {
        self.from_event
    }

    /// The whole reply map.
    pub fn reply(&self) -> &Map<String, Value> {
        &self.reply
    }

    /// The sequence number the write got (absent for a no-op release).
    pub fn store_seq(&self) -> Option<u64> {
        self.reply.get("store_seq").and_then(Value::as_u64)
    }

    /// A lease's token (its acquisition's `store_seq`).
    pub fn token(&self) -> Option<u64> {
        self.reply.get("token").and_then(Value::as_u64)
    }

    /// A lease's expiry (milliseconds since the epoch, as the server sends it).
    pub fn expires_at(&self) -> Option<&Value> {
        self.reply.get("expires_at")
    }

    /// A lease's holder.
    pub fn holder(&self) -> Option<&str> {
        self.reply.get("holder").and_then(Value::as_str)
    }

    /// `Some(false)` for a release that held nothing.
    pub fn released(&self) -> Option<bool> {
        self.reply.get("released").and_then(Value::as_bool)
    }

    /// A file's content hash (`sha256:<hex>`).
    pub fn hash(&self) -> Option<&str> {
        self.reply.get("hash").and_then(Value::as_str)
    }

    /// The lease this acknowledges, for a lease or renew of `key`.
    pub fn lease(&self, key: &Path) -> Option<Lease> {
        Some(Lease {
            key: key.clone(),
            token: self.token()?,
            expires_at: self.expires_at().cloned().unwrap_or(Value::Null),
            holder: self.holder().map(str::to_owned),
        })
    }
}

/// A held lease: what renew, release and fences need.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Lease {
    /// The leased key.
    pub key: Path,
    /// Its token.
    pub token: u64,
    /// Its expiry, as the server sent it.
    pub expires_at: Value,
    /// Its holder.
    pub holder: Option<String>,
}

macro_rules! reasons {
    ($($variant:ident => $text:literal),* $(,)?) => {
        /// A rejection reason: every reason the Dust server sends, and any other string kept.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RejectReason {
            $(
                #[doc = concat!("`", $text, "`")]
                $variant,
            )*
            /// A reason this client does not know.
            Other(String),
        }

        impl RejectReason {
            /// Parses a reason string.
            pub fn parse(reason: &str) -> Self {
                match reason {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }

            /// The reason string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(other) => other,
                }
            }
        }
    };
}

reasons! {
    Unauthorized => "unauthorized",
    StoreNotAllowed => "store_not_allowed",
    MissingScope => "missing_scope",
    RateLimited => "rate_limited",
    InvalidOp => "invalid op",
    StoreArchived => "store_archived",
    MissingPath => "missing_path",
    EmptyPath => "empty_path",
    EmptySegment => "empty_segment",
    InvalidEscape => "invalid_escape",
    NotAString => "not_a_string",
    NotAList => "not_a_list",
    MergeRequiresMapValue => "merge_requires_map_value",
    IncrementRequiresNumberValue => "increment_requires_number_value",
    AddRequiresValue => "add_requires_value",
    RemoveRequiresValue => "remove_requires_value",
    LimitExceeded => "limit_exceeded",
    Conflict => "conflict",
    BeyondRetention => "beyond_retention",
    NoOps => "no_ops",
    Exists => "exists",
    InvalidPrecondition => "invalid_precondition",
    IfMatchUnsupportedOp => "if_match_unsupported_op",
    IfMatchMultiLeaf => "if_match_multi_leaf",
    IfAbsentUnsupportedOp => "if_absent_unsupported_op",
    IfAbsentMultiLeaf => "if_absent_multi_leaf",
    Held => "held",
    Occupied => "occupied",
    NotHeld => "not_held",
    Fenced => "fenced",
    InvalidBase64 => "invalid_base64",
    UnexpectedReply => "unexpected_reply",
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected write (or join): the reason and the whole error payload (extra fields such as
/// `retry_after_ms`, `dimension`, `limit`, `scope`, `message` are kept).
///
/// ```
/// use dust_connection::{RejectReason, Rejection};
/// use serde_json::json;
///
/// let r = Rejection::from_payload(&json!({"reason": "rate_limited", "retry_after_ms": 250}));
/// assert_eq!(r.reason, RejectReason::RateLimited);
/// assert_eq!(r.retry_after_ms(), Some(250));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Rejection {
    /// The reason.
    pub reason: RejectReason,
    /// The whole error payload.
    pub payload: Map<String, Value>,
}

impl Rejection {
    /// A rejection from an error payload; a payload without a string `reason` is an
    /// `unexpected_reply`.
    pub fn from_payload(payload: &Value) -> Self {
        match payload {
            Value::Object(map) => match map.get("reason").and_then(Value::as_str) {
                Some(reason) => Self {
                    reason: RejectReason::parse(reason),
                    payload: map.clone(),
                },
                None => Self::unexpected(payload),
            },
            other => Self::unexpected(other),
        }
    }

    /// An `unexpected_reply` rejection that keeps what came under `"reply"`.
    pub fn unexpected(reply: &Value) -> Self {
        let payload = Map::from_iter([
            ("reason".to_owned(), Value::from("unexpected_reply")),
            ("reply".to_owned(), reply.clone()),
        ]);
        Self {
            reason: RejectReason::UnexpectedReply,
            payload,
        }
    }

    /// `retry_after_ms` of a `rate_limited` rejection.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.payload.get("retry_after_ms").and_then(Value::as_u64)
    }

    /// The `message` field, when the server gave one.
    pub fn message(&self) -> Option<&str> {
        self.payload.get("message").and_then(Value::as_str)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => write!(f, "{} ({message})", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_reason_round_trips_and_unknown_ones_are_kept() {
        for text in [
            "invalid op",
            "limit_exceeded",
            "fenced",
            "unexpected_reply",
            "held",
        ] {
            assert_eq!(RejectReason::parse(text).as_str(), text);
            assert!(!matches!(RejectReason::parse(text), RejectReason::Other(_)));
        }
        assert_eq!(
            RejectReason::parse("brand_new"),
            RejectReason::Other("brand_new".into())
        );
        let r = Rejection::from_payload(
            &json!({"reason": "limit_exceeded", "dimension": "keys", "current": 10, "limit": 10}),
        );
        assert_eq!(r.payload["dimension"], "keys");
        assert_eq!(
            Rejection::from_payload(&json!("nope")).reason,
            RejectReason::UnexpectedReply
        );
        assert_eq!(
            Rejection::from_payload(&json!({"no": "reason"})).reason,
            RejectReason::UnexpectedReply
        );
    }

    fn event(op: &str, seq: u64, value: Value) -> ServerEvent {
        serde_json::from_value(json!({"store_seq": seq, "op": op, "path": "p", "value": value}))
            .unwrap()
    }

    #[test]
    fn acks_from_events_carry_what_the_reply_would() {
        let lease = json!({"_type": "lease", "holder": "w", "token": 5, "expires_at": 99});
        for op in ["lease", "renew"] {
            let ack = WriteAck::from_event(&event(op, 5, lease.clone()));
            assert_eq!(
                ack.reply(),
                json!({"store_seq": 5, "token": 5, "expires_at": 99, "holder": "w"})
                    .as_object()
                    .unwrap()
            );
            assert!(ack.is_from_event());
        }
        let file = json!({"_type": "file", "hash": "sha256:ab", "size": 1, "filename": "f"});
        let ack = WriteAck::from_event(&event("put_file", 9, file));
        assert_eq!(
            ack.reply(),
            json!({"store_seq": 9, "hash": "sha256:ab"})
                .as_object()
                .unwrap()
        );
        assert_eq!(ack.hash(), Some("sha256:ab"));
        // The user's own map is never read as reply fields.
        for op in ["set", "merge"] {
            let ack = WriteAck::from_event(&event(
                op,
                8,
                json!({"released": false, "token": 5, "hash": "h", "_type": "lease"}),
            ));
            assert_eq!(
                ack.reply(),
                &Map::from_iter([("store_seq".to_owned(), json!(8))]),
                "{op}"
            );
            assert_eq!(
                (ack.released(), ack.token(), ack.hash()),
                (None, None, None)
            );
        }
        let ack = WriteAck::from_event(&event("increment", 3, json!(3)));
        assert_eq!(ack.store_seq(), Some(3));
        assert_eq!(
            WriteAck::from_reply(json!({"released": false})).released(),
            Some(false)
        );
    }
}
