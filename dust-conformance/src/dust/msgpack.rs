//! Writes from MessagePack clients (vsn 3.0.0), with the value semantics measured on the real
//! server:
//!
//! - a `bin` value is a string; one that is not UTF-8 is refused when the writer encodes the
//!   op (an error reply, no seq used);
//! - integer and boolean map keys reach MessagePack joiners of the live `event` as sent, JSON
//!   joiners as strings, and every catch-up as strings (the op is stored as JSON);
//! - a timestamp is a `DateTime` (microseconds): stored in its `datetime` envelope where the
//!   real `ValueCodec.wrap/1` puts one (the value itself, or a map's leaf), as its ISO-8601
//!   text inside a list; the live `event` gives MessagePack joiners a timestamp, JSON joiners
//!   the ISO-8601 text.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{Map, Value, json};

use super::clock::days_from_civil;
use super::store::{Op, OpRow, StoreData};
use super::value;
use crate::channel::ChannelContext;
use crate::frame::Payload;
use crate::frame::msgpack::{
    from_json, has_invalid_utf8, json_view, key_text, pack_timestamp, timestamp_micros,
};

/// A write's params as the emulation's value model holds them, and its `value` as sent.
pub(super) struct WriteParams {
    pub(super) params: Map<String, Value>,
    pub(super) as_sent: Option<Mp>,
}

/// The params of the write being handled: from its MessagePack payload when it came over
/// MessagePack (`json` otherwise).
pub(super) fn write_params(ctx: &ChannelContext, json: Map<String, Value>) -> WriteParams {
    let Some(Mp::Map(entries)) = ctx
        .msgpack_payload()
        .and_then(|raw| rmpv::decode::read_value(&mut &raw[..]).ok())
    else {
        return WriteParams {
            params: json,
            as_sent: None,
        };
    };
    let mut params = Map::new();
    let mut as_sent = None;
    for (key, value) in entries {
        let key = key_text(&key);
        let view = if key == "value" {
            stored_view(&value)
        } else {
            json_view(&value)
        };
        params.insert(key.clone(), view);
        if key == "value" {
            as_sent = Some(value);
        }
    }
    WriteParams { params, as_sent }
}

/// The value as the store keeps it: [`json_view`], but a timestamp given as the value itself
/// is the `datetime` envelope `ValueCodec.wrap/1` stores (nested, Jason writes its ISO-8601
/// text into the op).
fn stored_view(value: &Mp) -> Value {
    match value {
        Mp::Ext(-1, data) => match timestamp_micros(data) {
            Ok(_) => json!({"_typed": json_view(value), "_type": "datetime"}),
            Err(_) => Value::Null,
        },
        other => json_view(other),
    }
}

/// The writer's refusal of a value holding a string that is not UTF-8: Jason's error, as the
/// writer's transaction returns it.
pub(super) fn invalid_utf8(as_sent: &Mp) -> Option<Value> {
    if !has_invalid_utf8(as_sent) {
        return None;
    }
    let bytes = first_invalid(as_sent).unwrap_or_default();
    let byte = std::str::from_utf8(&bytes)
        .err()
        .and_then(|e| bytes.get(e.valid_up_to()).copied())
        .unwrap_or(0);
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    let message = format!("invalid byte 0x{byte:02X} in <<{}>>", list.join(", "));
    Some(json!({
        "reason": format!(
            "%Jason.EncodeError{{message: {}}}",
            value::inspect(&Value::String(message))
        )
    }))
}

fn first_invalid(value: &Mp) -> Option<Vec<u8>> {
    match value {
        Mp::String(s) if s.as_str().is_none() => Some(s.as_bytes().to_vec()),
        Mp::Binary(b) => Some(b.clone()),
        Mp::Array(items) => items.iter().find_map(first_invalid),
        Mp::Map(entries) => entries
            .iter()
            .find_map(|(k, v)| first_invalid(k).or_else(|| first_invalid(v))),
        _ => None,
    }
}

/// The live `event` of a `set` or `merge` sent over MessagePack: JSON joiners get the value as
/// JSON renders what was sent, MessagePack joiners what was sent. `None` for other ops (their
/// event value is computed by the server).
pub(super) fn live_event(row: &OpRow, event: Value, as_sent: Option<&Mp>) -> Option<Payload> {
    let as_sent = as_sent.filter(|_| matches!(row.op, Op::Set | Op::Merge))?;
    let mut json = event;
    if let Value::Object(map) = &mut json {
        map.insert("value".to_owned(), json_view(as_sent));
    }
    let Mp::Map(mut entries) = from_json(&json) else {
        return None;
    };
    for (key, value) in &mut entries {
        if key.as_str() == Some("value") {
            *value = as_sent.clone();
        }
    }
    let mut msgpack = Vec::new();
    rmpv::encode::write_value(&mut msgpack, &Mp::Map(entries)).ok()?;
    Some(Payload::Dual {
        json,
        msgpack: Bytes::from(msgpack),
    })
}

/// A catch-up `event` for a MessagePack joiner: a `set` whose stored value is a `datetime`
/// envelope comes back as a timestamp (`ValueCodec.unwrap/1` hands the serializer a
/// `DateTime`); anything else as JSON renders it.
pub(super) fn catch_up_event(data: &StoreData, event: Value) -> Payload {
    let envelope = event
        .get("store_seq")
        .and_then(Value::as_u64)
        .and_then(|seq| data.ops.get(&seq))
        .filter(|row| row.op == Op::Set)
        .and_then(|row| row.value.as_object())
        .filter(|map| map.get("_type").and_then(Value::as_str) == Some("datetime"));
    let Some(us) = envelope
        .and_then(|map| map.get("_typed"))
        .and_then(Value::as_str)
        .and_then(iso_micros)
    else {
        return Payload::Json(event);
    };
    let timestamp = Mp::Ext(-1, pack_timestamp(us));
    let Mp::Map(mut entries) = from_json(&event) else {
        return Payload::Json(event);
    };
    for (key, value) in &mut entries {
        if key.as_str() == Some("value") {
            *value = timestamp.clone();
        }
    }
    let mut msgpack = Vec::new();
    if rmpv::encode::write_value(&mut msgpack, &Mp::Map(entries)).is_err() {
        return Payload::Json(event);
    }
    Payload::Dual {
        json: event,
        msgpack: Bytes::from(msgpack),
    }
}

/// Microseconds since the epoch of an ISO-8601 date-time as `DateTime.from_iso8601/1` reads it.
fn iso_micros(text: &str) -> Option<i64> {
    // Normalized to `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` in UTC.
    let utc = value::parse_datetime(text)?;
    let num = |range: std::ops::Range<usize>| utc.get(range)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let seconds = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let fraction = utc.get(19..utc.len() - 1).unwrap_or("");
    let micros = match fraction.strip_prefix('.') {
        Some(digits) => format!("{digits:0<6}").parse::<i64>().ok()?,
        None => 0,
    };
    Some(seconds * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_texts_read_back_to_microseconds() {
        assert_eq!(
            iso_micros("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(
            iso_micros("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(
            iso_micros("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500_000)
        );
        assert_eq!(iso_micros("not a date"), None);
    }
}
