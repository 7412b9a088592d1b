//! [`Payload`]: the body of a message, JSON text or binary bytes, kept as received.

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
}

/// A message payload: JSON text, or bytes for binary frames.
///
/// JSON payloads are kept as their encoded text: a decoded frame's payload is checked once and
/// kept as received (copied out of the frame up to [`COPY_LIMIT`] bytes, a slice of it beyond),
/// and a payload built with [`Payload::json`] is serialized once, when it is created. Cloning is
/// cheap (reference counted).
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
    Binary(Bytes),
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.is_binary() == other.is_binary() && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Payload {}

impl std::hash::Hash for Payload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.is_binary().hash(state);
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

    /// A binary payload, sent and received as a binary WebSocket frame.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self(PayloadRepr::Binary(bytes.into()))
    }

    /// Whether this is a binary payload.
    pub fn is_binary(&self) -> bool {
        matches!(self.0, PayloadRepr::Binary(_))
    }

    /// The JSON text, or `None` for a binary payload.
    pub fn as_json(&self) -> Option<&str> {
        match &self.0 {
            PayloadRepr::Json(b) => std::str::from_utf8(b).ok(),
            PayloadRepr::JsonText(s) => Some(s),
            PayloadRepr::Binary(_) => None,
        }
    }

    /// The bytes, or `None` for a JSON payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match &self.0 {
            PayloadRepr::Binary(b) => Some(b),
            PayloadRepr::Json(_) | PayloadRepr::JsonText(_) => None,
        }
    }

    /// The raw bytes: the JSON text or the binary content.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            PayloadRepr::Json(b) | PayloadRepr::Binary(b) => b,
            PayloadRepr::JsonText(s) => s.as_bytes(),
        }
    }

    /// Deserializes a JSON payload into `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        match &self.0 {
            PayloadRepr::Json(b) => Ok(serde_json::from_slice(b)?),
            PayloadRepr::JsonText(s) => Ok(serde_json::from_str(s)?),
            PayloadRepr::Binary(_) => Err(PayloadError::Binary),
        }
    }

    /// Parses a JSON payload into a [`serde_json::Value`].
    pub fn to_value(&self) -> Result<serde_json::Value, PayloadError> {
        self.deserialize()
    }

    /// The same payload with a JSON value turned into a `serde_json::Value`, and binary content
    /// as `{"binary_base64": ...}`. Handy for logging and command-line tools.
    pub fn to_display_value(&self) -> serde_json::Value {
        use base64::Engine as _;
        match &self.0 {
            PayloadRepr::Json(_) | PayloadRepr::JsonText(_) => {
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
}
