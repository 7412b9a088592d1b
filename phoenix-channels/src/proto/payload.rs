//! [`Payload`]: the body of a message, JSON text or binary bytes, kept as received.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a payload could not be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value could not be serialized to JSON, or the JSON could not be deserialized into
    /// the requested type.
    #[error("payload JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON was requested from a binary payload.
    #[error("the payload is binary, not JSON")]
    Binary,
    /// The value could not be serialized to MessagePack, the bytes are not one MessagePack
    /// value (at most 128 levels deep), or the MessagePack could not be deserialized into the
    /// requested type.
    #[error("payload MessagePack: {0}")]
    MessagePack(String),
}

/// A message payload: JSON text, MessagePack, or bytes for binary frames.
///
/// A payload is sent in the socket's [`Serializer`](crate::Serializer): a JSON payload on a
/// MessagePack socket (or a MessagePack payload on a JSON socket) is transcoded when its frame
/// is written, so [`Payload::json`] and [`Payload::msgpack`] both work on either socket, and
/// [`deserialize`](Self::deserialize) reads either format straight into your type. A
/// MessagePack value without a JSON equivalent (a timestamp or other extension type) cannot be
/// sent on a JSON socket: its push fails with [`PushError::Encode`](crate::PushError::Encode).
///
/// Payloads are kept as their encoded bytes: a decoded frame's payload is checked once and
/// kept as received (copied out of the frame up to [`COPY_LIMIT`] bytes, a slice of it beyond),
/// and a payload built with [`Payload::json`] or [`Payload::msgpack`] is serialized once, when
/// it is created. Cloning is cheap (reference counted). Two payloads are equal when they have
/// the same format and the same bytes (a JSON and a MessagePack payload of one value differ).
///
/// [`COPY_LIMIT`]: crate::frame::COPY_LIMIT
///
/// ```
/// use phoenix_channels::Payload;
/// use serde_json::json;
///
/// let payload = Payload::json(&json!({"body": "hi"})).unwrap();
/// assert_eq!(payload.as_json(), Some(r#"{"body":"hi"}"#));
/// let value: serde_json::Value = payload.deserialize().unwrap();
/// assert_eq!(value["body"], "hi");
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Note { body: String }
/// let packed = Payload::msgpack(&Note { body: "hi".into() }).unwrap();
/// assert!(packed.is_msgpack());
/// assert_eq!(packed.deserialize::<Note>().unwrap(), Note { body: "hi".into() });
/// assert_eq!(packed.to_value().unwrap(), json!({"body": "hi"}));
///
/// let bytes = Payload::binary(vec![1u8, 2, 255]);
/// assert_eq!(bytes.as_binary().map(|b| b.as_ref()), Some(&[1u8, 2, 255][..]));
/// ```
#[derive(Clone)]
pub struct Payload(PayloadRepr);

#[derive(Clone)]
enum PayloadRepr {
    /// Valid JSON text received in a frame (a slice of it).
    Json(Bytes),
    /// Valid JSON text built here: sent without checking its UTF-8 again.
    JsonText(Arc<str>),
    /// One MessagePack value, checked (received) or encoded here.
    MsgPack(Bytes),
    Binary(Bytes),
}

impl PayloadRepr {
    /// 0 for JSON, 1 for binary, 2 for MessagePack: payloads of different kinds differ.
    fn kind(&self) -> u8 {
        match self {
            Self::Json(_) | Self::JsonText(_) => 0,
            Self::Binary(_) => 1,
            Self::MsgPack(_) => 2,
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Payload {}

impl std::hash::Hash for Payload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.kind().hash(state);
        self.as_bytes().hash(state);
    }
}

impl Payload {
    /// The empty JSON object `{}`.
    pub const fn empty() -> Self {
        Self(PayloadRepr::Json(Bytes::from_static(b"{}")))
    }

    /// JSON `null`.
    pub const fn null() -> Self {
        Self(PayloadRepr::Json(Bytes::from_static(b"null")))
    }

    /// Serializes a value to a JSON payload.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        let text = serde_json::to_string(value)?;
        Ok(Self(PayloadRepr::JsonText(Arc::from(text))))
    }

    /// A JSON payload from JSON text, which is checked to be one valid JSON value.
    pub fn from_json_text(text: impl Into<String>) -> Result<Self, PayloadError> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Self(PayloadRepr::JsonText(Arc::from(text))))
    }

    /// A JSON payload from bytes of JSON text, which are checked to be UTF-8 and one valid
    /// JSON value.
    pub fn from_json_bytes(bytes: impl Into<Bytes>) -> Result<Self, PayloadError> {
        let bytes = bytes.into();
        // A borrowed `RawValue` is one JSON value whose text is checked to be UTF-8 (with
        // `IgnoredAny`, serde_json skips strings without checking their UTF-8).
        serde_json::from_slice::<&serde_json::value::RawValue>(&bytes)?;
        Ok(Self(PayloadRepr::Json(bytes)))
    }

    /// A JSON payload from text the caller knows to be valid JSON (a slice of a checked frame).
    pub(crate) fn from_checked_json(text: Bytes) -> Self {
        Self(PayloadRepr::Json(text))
    }

    /// Serializes a value to a MessagePack payload (structs as maps with their field names,
    /// as JSON has them), without going through JSON.
    pub fn msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        let bytes =
            rmp_serde::to_vec_named(value).map_err(|e| PayloadError::MessagePack(e.to_string()))?;
        Ok(Self(PayloadRepr::MsgPack(Bytes::from(bytes))))
    }

    /// A MessagePack payload from its bytes, which are checked to be exactly one MessagePack
    /// value, nested at most 128 levels deep.
    pub fn from_msgpack_bytes(bytes: impl Into<Bytes>) -> Result<Self, PayloadError> {
        let bytes = bytes.into();
        crate::frame::check_msgpack_value(&bytes)
            .map_err(|e| PayloadError::MessagePack(e.to_string()))?;
        Ok(Self(PayloadRepr::MsgPack(bytes)))
    }

    /// A MessagePack payload from bytes the caller checked (a slice of a checked frame).
    pub(crate) fn from_checked_msgpack(bytes: Bytes) -> Self {
        Self(PayloadRepr::MsgPack(bytes))
    }

    /// The empty MessagePack map.
    pub(crate) const fn msgpack_empty_map() -> Self {
        Self(PayloadRepr::MsgPack(Bytes::from_static(&[0x80])))
    }

    /// Whether this is a MessagePack payload.
    pub fn is_msgpack(&self) -> bool {
        matches!(self.0, PayloadRepr::MsgPack(_))
    }

    /// The MessagePack bytes, or `None` for a JSON or binary payload.
    pub fn as_msgpack(&self) -> Option<&[u8]> {
        match &self.0 {
            PayloadRepr::MsgPack(b) => Some(b),
            _ => None,
        }
    }

    /// This payload as MessagePack bytes: a JSON one transcoded, a MessagePack one copied.
    pub(crate) fn to_msgpack_bytes(&self) -> Result<Vec<u8>, String> {
        match &self.0 {
            PayloadRepr::MsgPack(b) => Ok(b.to_vec()),
            PayloadRepr::Json(_) | PayloadRepr::JsonText(_) => {
                let mut out = Vec::with_capacity(self.as_bytes().len());
                let mut from = serde_json::Deserializer::from_slice(self.as_bytes());
                let mut to = rmp_serde::Serializer::new(&mut out);
                serde_transcode::transcode(&mut from, &mut to).map_err(|e| e.to_string())?;
                Ok(out)
            }
            PayloadRepr::Binary(_) => Err("a binary payload has no MessagePack form".into()),
        }
    }

    /// This payload as JSON text: a MessagePack one transcoded (a value JSON cannot hold,
    /// such as an extension type, is an error), a JSON one as it is.
    pub(crate) fn to_json_text(&self) -> Result<Cow<'_, str>, String> {
        match &self.0 {
            PayloadRepr::MsgPack(b) => {
                let mut out = Vec::with_capacity(b.len() + b.len() / 2);
                let mut from = rmp_serde::Deserializer::from_read_ref(b.as_ref());
                let mut to = serde_json::Serializer::new(&mut out);
                serde_transcode::transcode(&mut from, &mut to).map_err(|e| e.to_string())?;
                String::from_utf8(out)
                    .map(Cow::Owned)
                    .map_err(|e| e.to_string())
            }
            _ => self
                .as_json()
                .map(Cow::Borrowed)
                .ok_or_else(|| "a binary payload has no JSON form".to_owned()),
        }
    }

    /// A binary payload, sent and received as a binary WebSocket frame.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self(PayloadRepr::Binary(bytes.into()))
    }

    /// Whether this is a binary payload.
    pub fn is_binary(&self) -> bool {
        matches!(self.0, PayloadRepr::Binary(_))
    }

    /// The JSON text, or `None` for a binary or MessagePack payload.
    pub fn as_json(&self) -> Option<&str> {
        match &self.0 {
            PayloadRepr::Json(b) => std::str::from_utf8(b).ok(),
            PayloadRepr::JsonText(s) => Some(s),
            PayloadRepr::MsgPack(_) | PayloadRepr::Binary(_) => None,
        }
    }

    /// The bytes, or `None` for a JSON or MessagePack payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match &self.0 {
            PayloadRepr::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// The raw bytes: the JSON text, the MessagePack value or the binary content.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            PayloadRepr::Json(b) | PayloadRepr::MsgPack(b) | PayloadRepr::Binary(b) => b,
            PayloadRepr::JsonText(s) => s.as_bytes(),
        }
    }

    /// Deserializes a JSON or MessagePack payload into `T` (MessagePack straight, with
    /// `rmp-serde`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        match &self.0 {
            PayloadRepr::Json(b) => Ok(serde_json::from_slice(b)?),
            PayloadRepr::JsonText(s) => Ok(serde_json::from_str(s)?),
            PayloadRepr::MsgPack(b) => {
                rmp_serde::from_slice(b).map_err(|e| PayloadError::MessagePack(e.to_string()))
            }
            PayloadRepr::Binary(_) => Err(PayloadError::Binary),
        }
    }

    /// Parses a JSON or MessagePack payload into a [`serde_json::Value`].
    pub fn to_value(&self) -> Result<serde_json::Value, PayloadError> {
        self.deserialize()
    }

    /// The same payload with a JSON value turned into a `serde_json::Value`, and binary content
    /// as `{"binary_base64": ...}`. Handy for logging and command-line tools.
    pub fn to_display_value(&self) -> serde_json::Value {
        use base64::Engine as _;
        match &self.0 {
            PayloadRepr::Json(_) | PayloadRepr::JsonText(_) | PayloadRepr::MsgPack(_) => {
                self.deserialize().unwrap_or(serde_json::Value::Null)
            }
            PayloadRepr::Binary(b) => serde_json::json!({
                "binary_base64": base64::engine::general_purpose::STANDARD.encode(b)
            }),
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are strings.
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        Self(PayloadRepr::JsonText(Arc::from(text)))
    }
}

impl From<Bytes> for Payload {
    fn from(value: Bytes) -> Self {
        Self::binary(value)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PayloadRepr::Json(_) | PayloadRepr::JsonText(_) => {
                match std::str::from_utf8(self.as_bytes()) {
                    Ok(s) if s.len() <= 256 => write!(f, "Json({s})"),
                    Ok(s) => {
                        let mut end = 256;
                        while !s.is_char_boundary(end) {
                            end -= 1;
                        }
                        write!(f, "Json({}… {} bytes)", &s[..end], s.len())
                    }
                    Err(_) => write!(f, "Json({} bytes)", self.as_bytes().len()),
                }
            }
            PayloadRepr::MsgPack(b) => write!(f, "MessagePack({} bytes)", b.len()),
            PayloadRepr::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_json_round_trip_and_binary_errors() {
        let p = Payload::from_json_text("[1,2]").unwrap();
        assert_eq!(p.deserialize::<Vec<u8>>().unwrap(), vec![1, 2]);
        assert!(Payload::from_json_text("{").is_err());
        assert!(matches!(
            Payload::binary(vec![1u8]).deserialize::<serde_json::Value>(),
            Err(PayloadError::Binary)
        ));
        assert_eq!(
            Payload::binary(vec![104u8, 105]).to_display_value(),
            serde_json::json!({"binary_base64": "aGk="})
        );
    }

    #[test]
    fn payloads_compare_by_content_whatever_they_were_built_from() {
        let text = Payload::from_json_text(r#"{"a":1}"#).unwrap();
        let bytes = Payload::from_json_bytes(Bytes::from_static(br#"{"a":1}"#)).unwrap();
        let value = Payload::from(serde_json::json!({"a": 1}));
        assert_eq!(text, bytes);
        assert_eq!(text, value);
        assert_ne!(text, Payload::binary(Bytes::from_static(br#"{"a":1}"#)));
        assert_eq!(bytes.as_json(), Some(r#"{"a":1}"#));
        assert!(Payload::from_json_bytes(vec![0xffu8]).is_err());
        assert!(Payload::from_json_text("{").is_err());
    }

    #[test]
    fn json_bytes_with_invalid_utf8_inside_a_string_are_refused() {
        // Every accepted JSON payload has JSON text; this one would have none.
        assert!(Payload::from_json_bytes(vec![b'"', 0xff, b'"']).is_err());
        assert!(Payload::from_json_bytes(vec![b'[', b'"', 0xc3, b'"', b']']).is_err());
        let ok = Payload::from_json_bytes("[\"é\"]".as_bytes().to_vec()).unwrap();
        assert_eq!(ok.as_json(), Some("[\"é\"]"));
    }

    #[test]
    fn long_json_debug_is_truncated_on_char_boundary() {
        let text = format!("\"{}\"", "é".repeat(300));
        let p = Payload::from_json_text(text).unwrap();
        let shown = format!("{p:?}");
        assert!(shown.contains("bytes)"));
    }

    #[test]
    fn msgpack_payloads_encode_from_and_decode_into_your_types() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Note {
            id: u32,
            tags: Vec<String>,
        }
        let note = Note {
            id: 1,
            tags: vec!["a".into()],
        };
        let packed = Payload::msgpack(&note).unwrap();
        assert!(packed.is_msgpack() && !packed.is_binary() && packed.as_json().is_none());
        assert_eq!(packed.deserialize::<Note>().unwrap(), note);
        assert_eq!(
            packed.to_value().unwrap(),
            serde_json::json!({"id": 1, "tags": ["a"]})
        );
        let bytes = packed.as_msgpack().unwrap().to_vec();
        assert_eq!(Payload::from_msgpack_bytes(bytes).unwrap(), packed);
        assert!(matches!(
            packed.deserialize::<Vec<u8>>(),
            Err(PayloadError::MessagePack(_))
        ));
        assert!(matches!(
            Payload::from_msgpack_bytes(vec![0x92, 0x01]),
            Err(PayloadError::MessagePack(_))
        ));
        // The same value in JSON is another payload, and each transcodes to the other.
        let json = Payload::json(&note).unwrap();
        assert_ne!(json, packed);
        assert_eq!(json.to_msgpack_bytes().unwrap(), packed.as_bytes());
        assert_eq!(packed.to_json_text().unwrap(), json.as_json().unwrap());
        assert!(Payload::binary(vec![1u8]).to_msgpack_bytes().is_err());
        assert!(format!("{packed:?}").starts_with("MessagePack("));
    }
}
