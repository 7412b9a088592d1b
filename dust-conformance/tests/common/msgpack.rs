//! MessagePack (vsn 3.0.0) helpers: frames built and read with `rmpv`, never with the server's
//! own codec.

use dust_conformance::Server;
use rmpv::Value as Mp;
use serde_json::{Map, Value};

use super::{Client, Tcp};

/// `ws://…{path}/websocket?vsn=3.0.0` plus `query` (e.g. `&token=…`).
pub fn url(server: &Server, path: &str, query: &str) -> String {
    let url = server.websocket_url(path).replace("vsn=2.0.0", "vsn=3.0.0");
    format!("{url}{query}")
}

/// `ws://…/ws/sync/websocket?vsn=3.0.0&token=…&device_id=…&capver=3`.
pub fn sync_url(server: &Server, token: &str, device: &str) -> String {
    url(
        server,
        "/ws/sync",
        &format!("&token={token}&device_id={device}&capver=3"),
    )
}

pub fn pack(value: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("pack");
    out
}

pub fn unpack(bytes: &[u8]) -> Mp {
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader).expect("one MessagePack value");
    assert!(reader.is_empty(), "trailing bytes after {value}");
    value
}

/// `[join_ref, ref, topic, event, payload]` packed.
pub fn frame(join_ref: Mp, ref_: Mp, topic: &str, event: &str, payload: Mp) -> Vec<u8> {
    pack(&Mp::Array(vec![
        join_ref,
        ref_,
        Mp::from(topic),
        Mp::from(event),
        payload,
    ]))
}

/// A map with string keys.
pub fn map(entries: &[(&str, Mp)]) -> Mp {
    Mp::Map(
        entries
            .iter()
            .map(|(k, v)| (Mp::from(*k), v.clone()))
            .collect(),
    )
}

/// A value as JSON for assertions: map keys through their text, bins and strings as text.
pub fn json(value: &Mp) -> Value {
    match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => i
            .as_u64()
            .map(Value::from)
            .or_else(|| i.as_i64().map(Value::from))
            .unwrap_or(Value::Null),
        Mp::F32(f) => Value::from(f64::from(*f)),
        Mp::F64(f) => Value::from(*f),
        Mp::String(s) => Value::String(s.as_str().expect("UTF-8").to_owned()),
        Mp::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(items) => Value::Array(items.iter().map(json).collect()),
        Mp::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Mp::String(s) => s.as_str().expect("UTF-8").to_owned(),
                        other => other.to_string(),
                    };
                    (key, json(v))
                })
                .collect::<Map<_, _>>(),
        ),
        Mp::Ext(kind, data) => panic!("ext {kind} {data:?} in a frame"),
    }
}

/// The value under `key` in a MessagePack map.
pub fn get<'a>(value: &'a Mp, key: &str) -> &'a Mp {
    let Mp::Map(entries) = value else {
        panic!("not a map: {value}")
    };
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

impl Client<Tcp> {
    pub async fn send_mp(&mut self, frame: Vec<u8>) {
        self.send_binary(frame).await;
    }

    /// The next frame, which must be a binary MessagePack array of 5.
    pub async fn recv_mp(&mut self) -> Vec<Mp> {
        let bytes = self.recv_binary().await;
        match unpack(&bytes) {
            Mp::Array(items) if items.len() == 5 => items,
            other => panic!("expected a 5-array, got {other}"),
        }
    }
}
