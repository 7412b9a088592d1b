//! The values carried by Phoenix Channels frames: topics, events, refs, payloads, messages and
//! replies.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use smol_str::SmolStr;

pub use super::payload::{Payload, PayloadError};

/// Defines a cheap-to-clone string newtype (inline up to 23 bytes, shared beyond).
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(SmolStr);

        impl $name {
            /// Creates a value from any string.
            pub fn new(value: impl AsRef<str>) -> Self {
                Self(SmolStr::new(value.as_ref()))
            }

            /// Creates a value from a string literal, without allocating.
            pub const fn from_static(value: &'static str) -> Self {
                Self(SmolStr::new_static(value))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.0.as_str(), f)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(SmolStr::new(value))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(SmolStr::from(value))
            }
        }

        impl From<&String> for $name {
            fn from(value: &String) -> Self {
                Self(SmolStr::new(value))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0.as_str() == *other
            }
        }
    };
}

name_type!(
    /// A channel topic such as `"room:lobby"`.
    ///
    /// Cloning is cheap (no allocation), so the client hands the same topic to every message of
    /// a channel instead of allocating one per frame.
    ///
    /// ```
    /// use phoenix_channels::Topic;
    /// let topic = Topic::from("room:lobby");
    /// assert_eq!(topic, "room:lobby");
    /// ```
    Topic
);

name_type!(
    /// An event name such as `"new_msg"` or `"phx_reply"`.
    ///
    /// ```
    /// use phoenix_channels::Event;
    /// assert_eq!(Event::from("new_msg").as_str(), "new_msg");
    /// ```
    Event
);

impl Event {
    /// `phx_join`: the client joins a topic.
    pub const JOIN: &'static str = "phx_join";
    /// `phx_leave`: the client leaves a topic.
    pub const LEAVE: &'static str = "phx_leave";
    /// `phx_reply`: the server answers a push.
    pub const REPLY: &'static str = "phx_reply";
    /// `phx_close`: the server closed the channel normally.
    pub const CLOSE: &'static str = "phx_close";
    /// `phx_error`: the server's channel process crashed.
    pub const ERROR: &'static str = "phx_error";
    /// `heartbeat`: the socket heartbeat, on topic `phoenix`.
    pub const HEARTBEAT: &'static str = "heartbeat";
}

/// A message reference (`ref` or `join_ref`).
///
/// This client sends refs as strings of an increasing integer. A server echoes the JSON type it
/// received, and a hostile one may send anything, so a decoded ref is either a number or some
/// other text, which never matches a ref of ours.
///
/// ```
/// use phoenix_channels::Ref;
/// assert_eq!(Ref::new(7).as_u64(), Some(7));
/// assert_eq!(Ref::new(7).to_string(), "7");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ref(RefRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum RefRepr {
    Num(u64),
    Text(SmolStr),
}

impl Ref {
    /// A numeric ref, the kind this client generates.
    pub const fn new(value: u64) -> Self {
        Self(RefRepr::Num(value))
    }

    /// Parses a ref from its text form: a decimal number in its canonical form (no sign, no
    /// leading zero) becomes a numeric ref; anything else, such as `"007"`, stays text, so that
    /// every ref is written back exactly as it was read and `"007"` never matches ref 7.
    ///
    /// ```
    /// use phoenix_channels::Ref;
    /// assert_eq!(Ref::parse("7"), Ref::new(7));
    /// assert_eq!(Ref::parse("007").as_u64(), None);
    /// assert_eq!(Ref::parse("007").to_string(), "007");
    /// ```
    pub fn parse(text: &str) -> Self {
        let canonical = !text.starts_with('+') && (text.len() == 1 || !text.starts_with('0'));
        match text.parse::<u64>() {
            Ok(n) if canonical => Self(RefRepr::Num(n)),
            _ => Self(RefRepr::Text(SmolStr::new(text))),
        }
    }

    /// The numeric value, if the ref is a number (as every ref of this client is).
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            RefRepr::Num(n) => Some(n),
            RefRepr::Text(_) => None,
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RefRepr::Num(n) => write!(f, "{n}"),
            RefRepr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RefRepr::Num(n) => write!(f, "Ref({n})"),
            RefRepr::Text(t) => write!(f, "Ref({t:?})"),
        }
    }
}

impl From<u64> for Ref {
    fn from(value: u64) -> Self {
        Self::new(value)
    }
}

/// The status of a reply: `"ok"`, `"error"` or any other string a server chose.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyStatus {
    /// `"ok"`
    Ok,
    /// `"error"`
    Error,
    /// Any other status.
    Other(SmolStr),
}

impl ReplyStatus {
    /// Parses a status string.
    pub fn parse(status: &str) -> Self {
        match status {
            "ok" => Self::Ok,
            "error" => Self::Error,
            other => Self::Other(SmolStr::new(other)),
        }
    }

    /// The status as the server wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ReplyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server's reply to a push: its status and its response.
///
/// ```
/// use phoenix_channels::{Payload, Reply, ReplyStatus};
/// let reply = Reply::new(ReplyStatus::Ok, Payload::empty());
/// assert!(reply.is_ok());
/// assert_eq!(reply.response().as_json(), Some("{}"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    status: ReplyStatus,
    response: Payload,
}

impl Reply {
    /// A reply with this status and response.
    pub fn new(status: ReplyStatus, response: Payload) -> Self {
        Self { status, response }
    }

    /// The status.
    pub fn status(&self) -> &ReplyStatus {
        &self.status
    }

    /// Whether the status is `"ok"`.
    pub fn is_ok(&self) -> bool {
        self.status == ReplyStatus::Ok
    }

    /// The response payload.
    pub fn response(&self) -> &Payload {
        &self.response
    }

    /// Takes the response payload.
    pub fn into_response(self) -> Payload {
        self.response
    }

    /// `Ok(response)` for an `"ok"` reply, `Err(self)` otherwise.
    pub fn into_result(self) -> Result<Payload, Reply> {
        if self.is_ok() {
            Ok(self.response)
        } else {
            Err(self)
        }
    }

    /// The `reason` string of an error response such as `{"reason": "unauthorized"}`.
    pub fn reason(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Reason {
            reason: String,
        }
        self.response.deserialize::<Reason>().ok().map(|r| r.reason)
    }
}

/// A message pushed by the server on a topic: a channel push (with a `join_ref`) or a
/// broadcast (without), or a reserved event such as `phx_close`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: Event,
    /// The payload.
    pub payload: Payload,
    /// The join ref of the channel instance the message belongs to (`None` for broadcasts).
    pub join_ref: Option<Ref>,
    /// The message ref (`None` for server pushes and broadcasts).
    pub msg_ref: Option<Ref>,
}

impl Message {
    /// A message with no refs.
    pub fn new(topic: impl Into<Topic>, event: impl Into<Event>, payload: Payload) -> Self {
        Self {
            topic: topic.into(),
            event: event.into(),
            payload,
            join_ref: None,
            msg_ref: None,
        }
    }

    /// The same message with these refs.
    pub fn with_refs(mut self, join_ref: Option<Ref>, msg_ref: Option<Ref>) -> Self {
        self.join_ref = join_ref;
        self.msg_ref = msg_ref;
        self
    }

    /// Whether the message is a broadcast (no join ref) rather than a push to this channel.
    pub fn is_broadcast(&self) -> bool {
        self.join_ref.is_none()
    }
}

/// A reply frame: the answer to the push whose ref it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplyMessage {
    /// The topic.
    pub topic: Topic,
    /// The join ref (`None`, e.g., in the "unmatched topic" reply).
    pub join_ref: Option<Ref>,
    /// The ref of the push this answers.
    pub msg_ref: Option<Ref>,
    /// Status and response.
    pub reply: Reply,
}

/// One decoded inbound frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A server push, broadcast or reserved event.
    Message(Message),
    /// A `phx_reply`.
    Reply(ReplyMessage),
}

impl Inbound {
    /// The topic of the frame.
    pub fn topic(&self) -> &Topic {
        match self {
            Self::Message(m) => &m.topic,
            Self::Reply(r) => &r.topic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_parse_numbers_and_keep_other_text() {
        assert_eq!(Ref::parse("12"), Ref::new(12));
        assert_eq!(Ref::parse("+12").as_u64(), None);
        assert_eq!(Ref::parse("abc").to_string(), "abc");
        assert_eq!(Ref::parse("").as_u64(), None);
    }

    #[test]
    fn reply_reason() {
        let r = Reply::new(
            ReplyStatus::Error,
            Payload::from_json_text(r#"{"reason":"unmatched topic"}"#).unwrap(),
        );
        assert_eq!(r.reason().as_deref(), Some("unmatched topic"));
        assert!(r.clone().into_result().is_err());
        assert_eq!(ReplyStatus::parse("weird").as_str(), "weird");
    }
}
