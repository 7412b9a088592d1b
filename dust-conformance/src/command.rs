//! The line protocol of `dust-conformance-server --control-stdin`: one JSON command per line
//! in, one JSON answer per line out, so that a script in any language can drive faults.
//!
//! A command is an object with `"cmd"` and its fields (`id` is always a connection id, as
//! listed by `connections`); an optional `"tag"` (any JSON) is copied into the answer, so
//! answers can be matched when several commands are in flight (commands run concurrently;
//! `wait` answers when its condition holds). Answers are `{"tag": .., "ok": true, ...}` or
//! `{"tag": .., "ok": false, "error": "..."}`.
//!
//! | `cmd` | fields | answer fields |
//! |---|---|---|
//! | `connections` | | `connections`: `[{id, path, socket_id, params, protocol, topics, stalled, delay, queued_bytes}]` |
//! | `stats` | | `stats`: `{connects_accepted, connects_refused, open_connections, joins, joins_refused, heartbeats, restarts, draining_channels, slow_clients_dropped, connects_over_capacity, drain_dropped}` |
//! | `wait` | `stat`, `at_least`, `timeout_ms` (default 5000) | `stats` (error on timeout) |
//! | `drop` | `id` | |
//! | `drop_all` | | `count` |
//! | `close_connection` | `id`, `code` | |
//! | `stall` / `unstall` | `id` | |
//! | `stall_all` / `unstall_all` | | `count` |
//! | `delay` | `ms`, `id` (absent: every connection, and new ones) | |
//! | `refuse_connects` | `on` | |
//! | `refuse_joins` | `on`, `reply` (optional error response) | |
//! | `crash` / `close` | `topic` | `count` |
//! | `send_raw` | `id`, and `text` or `binary_base64` | |
//! | `idle_timeout` | `ms` | |
//! | `drain_limit` | `ms` (absent or null: drain everything) | |
//! | `broadcast` | `topic`, `event`, `payload` | `count` |
//! | `disconnect_socket` | `socket_id` | `count` |
//! | `restart` | `downtime_ms` (default 0) | (answers once listening again) |
//! | `shutdown` | | (the server stops after answering) |
//!
//! With the Dust emulation mounted ([`crate::dust`]); `store` is `org/name` or a UUID:
//!
//! | `cmd` | fields | answer fields |
//! |---|---|---|
//! | `stores` | | `stores`: `[{name, id, archived, seq, entries, ops, snapshot_seq}]` |
//! | `create_store` | `store` | `store` |
//! | `ops` | `store` | `ops`: `[{seq, op, path, client_op_id, device_id, value, inserted_at}]` |
//! | `entries` | `store` | `entries`: `[{path, value, type, revision}]` |
//! | `archive_store` | `store` | `count` (joiners sent `phx_close`) |
//! | `reset_store` | `store` | |
//! | `compact` | `store` | `snapshot_seq` (null when there was no op) |
//! | `drop_next_write_reply` | | |
//! | `delay_next_write_reply` | `ms` | |
//! | `crash_next_write` | | |
//! | `crash_writes_at` | `path` (absent or null: clear) | |
//! | `write_cost` | `ms` (each write/put_file takes this long to commit; 0: at once) | |
//! | `disconnect_device` | `device_id` | `count` |
//! | `acks` | `store` | `acks`: `{device_id: seq}` |
//! | `devices` | | `devices`: `{device_id: last connect}` |

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::control::{ConnectionId, Control, RawFrame};

/// One command (see the module docs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Command {
    /// List the open connections.
    Connections,
    /// The counters.
    Stats,
    /// Wait until a counter reaches a value.
    Wait {
        /// A [`ServerStats`](crate::ServerStats) field name.
        stat: String,
        /// The value to reach.
        at_least: u64,
        /// How long to wait (default 5000).
        timeout_ms: Option<u64>,
    },
    /// Drop one connection.
    Drop {
        /// The connection.
        id: u64,
    },
    /// Drop every connection.
    DropAll,
    /// Close one connection with a close frame.
    CloseConnection {
        /// The connection.
        id: u64,
        /// The close code.
        code: u16,
    },
    /// Stall one connection.
    Stall {
        /// The connection.
        id: u64,
    },
    /// Stall every connection.
    StallAll,
    /// Resume one connection.
    Unstall {
        /// The connection.
        id: u64,
    },
    /// Resume every connection.
    UnstallAll,
    /// Delay outbound frames.
    Delay {
        /// The connection (absent: all, and new ones).
        id: Option<u64>,
        /// The delay.
        ms: u64,
    },
    /// Refuse connects (403).
    RefuseConnects {
        /// On or off.
        on: bool,
    },
    /// Refuse joins.
    RefuseJoins {
        /// On or off.
        on: bool,
        /// The error response (default `{"reason": "refused"}`).
        reply: Option<Value>,
    },
    /// Crash a channel on every connection.
    Crash {
        /// The topic.
        topic: String,
    },
    /// Close a channel on every connection.
    Close {
        /// The topic.
        topic: String,
    },
    /// Send a raw frame.
    SendRaw {
        /// The connection.
        id: u64,
        /// A text frame.
        text: Option<String>,
        /// A binary frame, base64 (standard alphabet, padding optional).
        binary_base64: Option<String>,
    },
    /// Change the idle timeout.
    IdleTimeout {
        /// The timeout.
        ms: u64,
    },
    /// Bound the drain of a dead connection's channels
    /// ([`Control::set_drain_limit`](crate::Control::set_drain_limit)).
    DrainLimit {
        /// The limit (absent or null: drain everything).
        ms: Option<u64>,
    },
    /// Broadcast from the server.
    Broadcast {
        /// The topic.
        topic: String,
        /// The event.
        event: String,
        /// The JSON payload.
        payload: Value,
    },
    /// Close every connection with this socket id (code 1011).
    DisconnectSocket {
        /// The socket id, e.g. `store_socket:dev_1`.
        socket_id: String,
    },
    /// Restart the server on the same port, state kept.
    Restart {
        /// How long the port stays closed (default 0).
        downtime_ms: Option<u64>,
    },
    /// Stop the server.
    Shutdown,
    /// List the Dust stores.
    Stores,
    /// Create a Dust store.
    CreateStore {
        /// `org/name`.
        store: String,
    },
    /// A store's op log.
    Ops {
        /// The store.
        store: String,
    },
    /// A store's entries.
    Entries {
        /// The store.
        store: String,
    },
    /// Archive a store.
    ArchiveStore {
        /// The store.
        store: String,
    },
    /// Reset a store to seq 0.
    ResetStore {
        /// The store.
        store: String,
    },
    /// Compact a store's op log into a snapshot.
    Compact {
        /// The store.
        store: String,
    },
    /// Drop the reply of the next write.
    DropNextWriteReply,
    /// Delay the reply of the next write.
    DelayNextWriteReply {
        /// The delay.
        ms: u64,
    },
    /// Crash the channel of the next write
    /// ([`DustControl::crash_next_write`](crate::dust::DustControl::crash_next_write)).
    CrashNextWrite,
    /// Crash the channel of every write at or below a path
    /// ([`DustControl::crash_writes_at`](crate::dust::DustControl::crash_writes_at)).
    CrashWritesAt {
        /// The rendered path (absent or null: clear).
        path: Option<String>,
    },
    /// Set the commit cost of each write
    /// ([`DustControl::set_write_cost`](crate::dust::DustControl::set_write_cost)).
    WriteCost {
        /// The cost.
        ms: u64,
    },
    /// Close every socket of a device.
    DisconnectDevice {
        /// The device id.
        device_id: String,
    },
    /// The last `ack_seq` of each device on a store.
    Acks {
        /// The store.
        store: String,
    },
    /// The devices seen.
    Devices,
}

/// An answer: the JSON line, and whether the server should stop after writing it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Answer {
    /// The answer line's JSON.
    pub json: Value,
    /// The command was `shutdown`.
    pub shutdown: bool,
}

/// Parses and runs one command line.
pub async fn execute_line(control: &Control, line: &str) -> Answer {
    let parsed: Result<Value, _> = serde_json::from_str(line);
    let (tag, command) = match parsed {
        Ok(Value::Object(mut map)) => {
            let tag = map.remove("tag");
            (tag, serde_json::from_value::<Command>(Value::Object(map)))
        }
        Ok(_) => return answer(None, Err("a command must be a JSON object".into())),
        Err(error) => return answer(None, Err(format!("invalid JSON: {error}"))),
    };
    match command {
        Ok(command) => {
            let shutdown = command == Command::Shutdown;
            let mut reply = answer(tag, execute(control, command).await);
            reply.shutdown = shutdown;
            reply
        }
        Err(error) => answer(tag, Err(format!("invalid command: {error}"))),
    }
}

fn answer(tag: Option<Value>, result: Result<Map<String, Value>, String>) -> Answer {
    let mut json = Map::new();
    if let Some(tag) = tag {
        json.insert("tag".into(), tag);
    }
    match result {
        Ok(fields) => {
            json.insert("ok".into(), Value::Bool(true));
            json.extend(fields);
        }
        Err(error) => {
            json.insert("ok".into(), Value::Bool(false));
            json.insert("error".into(), Value::String(error));
        }
    }
    Answer {
        json: Value::Object(json),
        shutdown: false,
    }
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Runs one command; `Ok` holds the answer's extra fields.
pub async fn execute(control: &Control, command: Command) -> Result<Map<String, Value>, String> {
    let none = || Ok(Map::new());
    let count = |n: usize| Ok(fields(json!({ "count": n })));
    let id = ConnectionId::from;
    match command {
        Command::Connections => Ok(fields(json!({
            "connections": to_json(&control.connections())
        }))),
        Command::Stats => Ok(fields(json!({ "stats": to_json(&control.stats()) }))),
        Command::Wait {
            stat,
            at_least,
            timeout_ms,
        } => {
            let read =
                |stats: &crate::ServerStats| to_json(stats).get(&stat).and_then(Value::as_u64);
            if read(&control.stats()).is_none() {
                return Err(format!("unknown stat {stat:?}"));
            }
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(5000));
            let wait = control.wait_for_stats(|s| read(s).is_some_and(|v| v >= at_least));
            match tokio::time::timeout(timeout, wait).await {
                Ok(stats) => Ok(fields(json!({ "stats": to_json(&stats) }))),
                Err(_) => Err(format!(
                    "timed out waiting for {stat} >= {at_least}; stats: {}",
                    to_json(&control.stats())
                )),
            }
        }
        Command::Drop { id: n } => control
            .drop_connection(id(n))
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::DropAll => count(control.drop_all()),
        Command::CloseConnection { id: n, code } => control
            .close_connection(id(n), code)
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::Stall { id: n } => control
            .stall(id(n))
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::StallAll => count(control.stall_all()),
        Command::Unstall { id: n } => control
            .unstall(id(n))
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::UnstallAll => count(control.unstall_all()),
        Command::Delay { id: Some(n), ms } => control
            .set_delay(id(n), Duration::from_millis(ms))
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::Delay { id: None, ms } => count(control.set_delay_all(Duration::from_millis(ms))),
        Command::RefuseConnects { on } => {
            control.refuse_connects(on);
            none()
        }
        Command::RefuseJoins { on, reply } => {
            match (on, reply) {
                (true, Some(reply)) => control.refuse_joins_with(Some(reply)),
                (on, _) => control.refuse_joins(on),
            }
            none()
        }
        Command::Crash { topic } => count(control.crash_channel(&topic)),
        Command::Close { topic } => count(control.close_channel(&topic)),
        Command::SendRaw {
            id: n,
            text,
            binary_base64,
        } => {
            let frame = match (text, binary_base64) {
                (Some(text), None) => RawFrame::Text(text),
                (None, Some(b64)) => {
                    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(b64.trim_end_matches('='))
                        .map_err(|e| format!("invalid base64: {e}"))?;
                    RawFrame::Binary(Bytes::from(bytes))
                }
                _ => return Err("send_raw needs exactly one of text, binary_base64".into()),
            };
            control
                .send_raw(id(n), frame)
                .map_err(|e| e.to_string())
                .and_then(|()| none())
        }
        Command::IdleTimeout { ms } => {
            control.set_idle_timeout(Duration::from_millis(ms));
            none()
        }
        Command::DrainLimit { ms } => {
            control.set_drain_limit(ms.map(Duration::from_millis));
            none()
        }
        Command::Broadcast {
            topic,
            event,
            payload,
        } => count(control.broadcast(&topic, &event, payload)),
        Command::DisconnectSocket { socket_id } => count(control.disconnect_socket(&socket_id)),
        Command::Restart { downtime_ms } => control
            .restart(Duration::from_millis(downtime_ms.unwrap_or(0)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|()| none()),
        Command::Shutdown => none(),
        dust_command => execute_dust(control, dust_command).await,
    }
}

async fn execute_dust(control: &Control, command: Command) -> Result<Map<String, Value>, String> {
    let dust = control
        .dust()
        .ok_or_else(|| "no Dust emulation is mounted".to_owned())?;
    let err = |e: crate::dust::DustError| e.to_string();
    Ok(match command {
        Command::Stores => fields(json!({ "stores": to_json(&dust.stores().await) })),
        Command::CreateStore { store } => {
            fields(json!({ "store": to_json(&dust.create_store(&store).await.map_err(err)?) }))
        }
        Command::Ops { store } => {
            fields(json!({ "ops": to_json(&dust.ops(&store).await.map_err(err)?) }))
        }
        Command::Entries { store } => {
            fields(json!({ "entries": to_json(&dust.entries(&store).await.map_err(err)?) }))
        }
        Command::ArchiveStore { store } => {
            fields(json!({ "count": dust.archive(&store).await.map_err(err)? }))
        }
        Command::ResetStore { store } => {
            dust.reset(&store).await.map_err(err)?;
            Map::new()
        }
        Command::Compact { store } => {
            fields(json!({ "snapshot_seq": dust.compact(&store).await.map_err(err)? }))
        }
        Command::DropNextWriteReply => {
            dust.drop_next_write_reply();
            Map::new()
        }
        Command::DelayNextWriteReply { ms } => {
            dust.delay_next_write_reply(Duration::from_millis(ms));
            Map::new()
        }
        Command::CrashNextWrite => {
            dust.crash_next_write();
            Map::new()
        }
        Command::CrashWritesAt { path } => {
            dust.crash_writes_at(path.as_deref());
            Map::new()
        }
        Command::WriteCost { ms } => {
            dust.set_write_cost(Duration::from_millis(ms));
            Map::new()
        }
        Command::DisconnectDevice { device_id } => {
            fields(json!({ "count": dust.disconnect_device(&device_id) }))
        }
        Command::Acks { store } => fields(json!({ "acks": dust.acks(&store).map_err(err)? })),
        Command::Devices => fields(json!({ "devices": dust.devices() })),
        other => return Err(format!("unexpected command {other:?}")),
    })
}
