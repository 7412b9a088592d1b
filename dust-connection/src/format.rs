//! The wire format of the connection: Dust's V2 JSON (`vsn=2.0.0`) or MessagePack
//! (`vsn=3.0.0`), and how a payload of either reads as the JSON value the rest of the crate
//! works with.

use std::time::{Duration, SystemTime};

use phoenix_channels::{Payload, PayloadError, Serializer};
use rmpv::Value as Mp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// The serializer the connection's socket speaks.
///
/// Both carry the same data and every guarantee of the crate holds in both; the replica is
/// the same whichever is chosen: a value another client wrote over MessagePack reads as what a
/// JSON client gets for it (a timestamp as its ISO-8601 text, integer and boolean map keys as
/// strings).
///
/// ```no_run
/// use dust_connection::{DustConnection, Format};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev")
///     .store("acme/app")
///     .format(Format::MessagePack)
///     .connect()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// V2 JSON text frames (`vsn=2.0.0`), the default, as in Dust's TypeScript SDK: the
    /// format every Dust server and tool reads, and the faster one for small writes (see the
    /// README's write benchmark).
    #[default]
    Json,
    /// MessagePack binary frames (`vsn=3.0.0`, the server's `DustWeb.MsgpackSerializer`):
    /// smaller frames, and cheaper to encode for large values.
    MessagePack,
}

impl Format {
    /// The `phoenix-channels` serializer of this format.
    pub fn serializer(self) -> Serializer {
        match self {
            Self::Json => Serializer::Json,
            Self::MessagePack => Serializer::MessagePack,
        }
    }

    /// `value` encoded in this format, once (no transcoding at send).
    pub(crate) fn payload<T: Serialize + ?Sized>(self, value: &T) -> Result<Payload, PayloadError> {
        match self {
            Self::Json => Payload::json(value),
            Self::MessagePack => Payload::msgpack(value),
        }
    }
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("MessagePack: {0}")]
    MessagePack(String),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// A payload of either format as `T`. A JSON payload is read straight into `T`; a MessagePack
/// one through its JSON view ([`value`]), so that both give the same `T`.
pub(crate) fn read<T: DeserializeOwned>(payload: &Payload) -> Result<T, ReadError> {
    if payload.is_msgpack() {
        Ok(serde_json::from_value(value(payload)?)?)
    } else {
        Ok(payload.deserialize()?)
    }
}

/// A payload of either format as the JSON value a JSON client gets for it: for MessagePack,
/// map keys as text (`1`, `true`), a timestamp as its ISO-8601 text (six decimals; none for a
/// 32-bit timestamp), a `bin` as its (lossy) text, as the Dust server renders them in JSON.
pub(crate) fn value(payload: &Payload) -> Result<Value, ReadError> {
    match payload.as_msgpack() {
        Some(mut bytes) => {
            let mp = rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DEPTH)
                .map_err(|e| ReadError::MessagePack(e.to_string()))?;
            json_view(&mp)
        }
        None => Ok(payload.to_value()?),
    }
}

/// The deepest MessagePack nesting read (as phoenix-channels bounds its frames).
const MAX_DEPTH: usize = 128;

fn json_view(value: &Mp) -> Result<Value, ReadError> {
    Ok(match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            (None, None) => return Err(ReadError::MessagePack("an integer out of range".into())),
        },
        Mp::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Mp::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Mp::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(items) => Value::Array(items.iter().map(json_view).collect::<Result<_, _>>()?),
        Mp::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, value) in entries {
                map.insert(key_text(key)?, json_view(value)?);
            }
            Value::Object(map)
        }
        Mp::Ext(-1, data) => Value::String(timestamp_text(data)?),
        Mp::Ext(kind, _) => {
            return Err(ReadError::MessagePack(format!(
                "an extension value of type {kind}"
            )));
        }
    })
}

/// A map key as JSON text: a string as it is, a number or boolean as its text, `nil` as
/// `"nil"` (as Jason renders Elixir's atom).
fn key_text(key: &Mp) -> Result<String, ReadError> {
    Ok(match key {
        Mp::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Mp::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        Mp::Integer(i) => i.to_string(),
        Mp::Boolean(b) => b.to_string(),
        Mp::Nil => "nil".to_owned(),
        other => {
            return Err(ReadError::MessagePack(format!(
                "a map key that is not text: {other}"
            )));
        }
    })
}

/// The latest instant Elixir's `DateTime` (and ISO-8601's four-digit years) can show:
/// 9999-12-31T23:59:59Z.
const LAST_SECOND: u64 = 253_402_300_799;

/// A MessagePack timestamp (extension -1) as the ISO-8601 text the server gives JSON clients.
fn timestamp_text(data: &[u8]) -> Result<String, ReadError> {
    let invalid = |why: &str| ReadError::MessagePack(format!("an invalid timestamp: {why}"));
    let (seconds, nanos, whole_seconds) = match *data {
        [a, b, c, d] => (i64::from(u32::from_be_bytes([a, b, c, d])), 0, true),
        [a, b, c, d, e, f, g, h] => {
            let word = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
            ((word & 0x3_ffff_ffff) as i64, (word >> 34) as u32, false)
        }
        [a, b, c, d, ref rest @ ..] if rest.len() == 8 => {
            let mut secs = [0; 8];
            secs.copy_from_slice(rest);
            (
                i64::from_be_bytes(secs),
                u32::from_be_bytes([a, b, c, d]),
                false,
            )
        }
        _ => return Err(invalid("its length is not 4, 8 or 12")),
    };
    if nanos > 999_999_999 {
        return Err(invalid("nanoseconds above 999,999,999"));
    }
    let seconds = u64::try_from(seconds)
        .ok()
        .filter(|s| *s <= LAST_SECOND)
        .ok_or_else(|| invalid("outside 1970 to 9999"))?;
    let at = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
    Ok(if whole_seconds {
        humantime::format_rfc3339_seconds(at).to_string()
    } else {
        // Microseconds, as the server stores a datetime.
        humantime::format_rfc3339_micros(at).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packed(value: &Mp) -> Payload {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        Payload::from_msgpack_bytes(bytes).unwrap()
    }

    #[test]
    fn a_messagepack_payload_reads_as_the_json_a_json_client_gets() {
        let ts64 = {
            // 2021-01-01T00:00:00.123456789Z as a 64-bit timestamp.
            let word = (123_456_789u64 << 34) | 1_609_459_200;
            Mp::Ext(-1, word.to_be_bytes().to_vec())
        };
        let value = Mp::Map(vec![
            (Mp::from("s"), Mp::from("text")),
            (Mp::from(1), Mp::from(true)),
            (Mp::Boolean(false), Mp::Nil),
            (Mp::from("bin"), Mp::Binary(b"bytes".to_vec())),
            (
                Mp::from("ts32"),
                Mp::Ext(-1, 1_609_459_200u32.to_be_bytes().to_vec()),
            ),
            (Mp::from("ts64"), ts64),
            (Mp::from("n"), Mp::from(-3)),
            (Mp::from("big"), Mp::from(u64::MAX)),
            (Mp::from("f"), Mp::F64(1.5)),
            (
                Mp::from("list"),
                Mp::Array(vec![Mp::from(1), Mp::from("a")]),
            ),
        ]);
        assert_eq!(
            super::value(&packed(&value)).unwrap(),
            json!({"s": "text", "1": true, "false": null, "bin": "bytes",
                "ts32": "2021-01-01T00:00:00Z", "ts64": "2021-01-01T00:00:00.123456Z",
                "n": -3, "big": u64::MAX, "f": 1.5, "list": [1, "a"]})
        );
    }

    #[test]
    fn both_formats_read_into_the_same_type() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Event {
            store_seq: u64,
            path: String,
        }
        let json = Format::Json
            .payload(&json!({"store_seq": 3, "path": "a/b"}))
            .unwrap();
        let mp = Format::MessagePack
            .payload(&json!({"store_seq": 3, "path": "a/b"}))
            .unwrap();
        assert!(mp.is_msgpack() && !json.is_msgpack());
        assert_eq!(read::<Event>(&json).unwrap(), read::<Event>(&mp).unwrap());
    }

    #[test]
    fn odd_messagepack_is_an_error_not_a_panic() {
        for value in [
            Mp::Ext(-1, vec![0; 5]),
            Mp::Ext(-1, {
                let mut v = (1_000_000_000u32).to_be_bytes().to_vec();
                v.extend_from_slice(&0i64.to_be_bytes());
                v
            }),
            Mp::Ext(-1, {
                let mut v = 0u32.to_be_bytes().to_vec();
                v.extend_from_slice(&(-1i64).to_be_bytes());
                v
            }),
            Mp::Ext(-1, {
                let mut v = 0u32.to_be_bytes().to_vec();
                v.extend_from_slice(&i64::MAX.to_be_bytes());
                v
            }),
            Mp::Ext(7, vec![1]),
            Mp::Map(vec![(Mp::Array(vec![]), Mp::Nil)]),
        ] {
            assert!(super::value(&packed(&value)).is_err(), "{value}");
        }
    }
}
