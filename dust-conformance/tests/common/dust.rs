//! Helpers for the Dust tests: a server with the emulation mounted and a raw store client.

use std::time::{Duration, UNIX_EPOCH};

use dust_conformance::dust::{Clock, DustConfig, DustControl, TokenConfig};
use dust_conformance::{Server, ServerConfig};
use serde_json::{Value, json};

use super::{Client, server_with};

/// The wall time of the tests' manual clocks (ms since the epoch).
pub const START_MS: i64 = 1_700_000_000_000;

pub struct Dust {
    pub server: Server,
    pub control: DustControl,
    pub clock: Clock,
}

/// A manual clock at `START_MS`.
pub fn manual_clock() -> Clock {
    Clock::manual(UNIX_EPOCH + Duration::from_millis(START_MS as u64))
}

/// A server with the echo socket and the Dust emulation (token `dust_tok_dev` with every
/// scope, plus whatever `config` adds), on a manual clock.
pub async fn dust_with(config: DustConfig) -> Dust {
    let clock = manual_clock();
    let config = config
        .token(TokenConfig::new("dust_tok_dev"))
        .clock(clock.clone());
    let server = server_with(ServerConfig::default().dust(config)).await;
    let control = server.dust().expect("dust mounted");
    Dust {
        server,
        control,
        clock,
    }
}

pub async fn dust() -> Dust {
    dust_with(DustConfig::new()).await
}

/// `ws://…/ws/sync/websocket?vsn=2.0.0&token=…&device_id=…&capver=3`.
pub fn sync_url(server: &Server, token: &str, device: &str) -> String {
    format!(
        "{}&token={token}&device_id={device}&capver=3",
        server.websocket_url("/ws/sync")
    )
}

/// A raw client joined (or joining) one store topic.
pub struct StoreClient<S = super::Tcp> {
    pub c: Client<S>,
    pub topic: String,
    pub join_ref: String,
    next_ref: u64,
}

impl StoreClient {
    pub async fn connect(server: &Server, token: &str, device: &str, topic: &str) -> StoreClient {
        StoreClient {
            c: Client::connect(&sync_url(server, token, device)).await,
            topic: topic.to_owned(),
            join_ref: String::new(),
            next_ref: 0,
        }
    }

    /// Connects as `dust_tok_dev` / `dev_a`.
    pub async fn dev(server: &Server, topic: &str) -> StoreClient {
        StoreClient::connect(server, "dust_tok_dev", "dev_a", topic).await
    }
}

impl StoreClient<tokio::io::DuplexStream> {
    /// Connects over an in-memory stream ([`dust_conformance::Control::serve_stream`]).
    pub async fn over_stream(server: &Server, token: &str, device: &str, topic: &str) -> Self {
        let path =
            format!("/ws/sync/websocket?vsn=2.0.0&token={token}&device_id={device}&capver=3");
        StoreClient::from_client(Client::over_stream(&server.control(), &path).await, topic)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> StoreClient<S> {
    /// Wraps a connected client.
    pub fn from_client(c: Client<S>, topic: &str) -> Self {
        StoreClient {
            c,
            topic: topic.to_owned(),
            join_ref: String::new(),
            next_ref: 0,
        }
    }

    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends `phx_join` with these params; returns the reply's `{status, response}`.
    pub async fn join_with(&mut self, params: Value) -> Value {
        let r = self.next_ref();
        self.join_ref = r.clone();
        self.c
            .send_json(json!([r, r, self.topic, "phx_join", params]))
            .await;
        let reply = self.c.recv_json().await;
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[1], json!(r), "{reply}");
        reply[4].clone()
    }

    /// Joins with `last_store_seq`, asserts ok; returns the response. The catch-up follows.
    pub async fn join(&mut self, last_seq: Value) -> Value {
        let reply = self.join_with(json!({"last_store_seq": last_seq})).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        reply["response"].clone()
    }

    /// Joins and consumes the catch-up up to `catch_up_complete`; returns the pushed frames
    /// (events, snapshot) and the `through_seq`.
    pub async fn join_caught_up(&mut self, last_seq: Value) -> (Vec<Value>, Value) {
        self.join(last_seq).await;
        self.catch_up().await
    }

    /// Reads channel pushes until `catch_up_complete`.
    pub async fn catch_up(&mut self) -> (Vec<Value>, Value) {
        let mut pushed = Vec::new();
        loop {
            let frame = self.c.recv_json().await;
            assert_eq!(frame[0], json!(self.join_ref), "a channel push: {frame}");
            if frame[3] == "catch_up_complete" {
                return (pushed, frame[4]["through_seq"].clone());
            }
            pushed.push(frame);
        }
    }

    /// Sends a push; returns its ref.
    pub async fn push(&mut self, event: &str, payload: Value) -> String {
        let r = self.next_ref();
        self.c
            .send_json(json!([self.join_ref, r, self.topic, event, payload]))
            .await;
        r
    }

    /// The next frame, which must be the reply to `r`; returns `{status, response}`.
    pub async fn reply_to(&mut self, r: &str) -> Value {
        let frame = self.c.recv_json().await;
        assert_eq!(
            (&frame[1], &frame[3]),
            (&json!(r), &json!("phx_reply")),
            "expected the reply to {r}: {frame}"
        );
        assert_eq!(frame[0], json!(self.join_ref));
        frame[4].clone()
    }

    /// The next frame, which must be a live `event` broadcast; returns its payload.
    pub async fn event(&mut self) -> Value {
        let frame = self.c.recv_json().await;
        assert_eq!(
            frame,
            json!([null, null, self.topic, "event", frame[4]]),
            "expected an event"
        );
        frame[4].clone()
    }

    /// A write that must succeed: the echo event first, then the ok reply. Returns both.
    pub async fn write_ok(&mut self, payload: Value) -> (Value, Value) {
        let r = self.push("write", payload).await;
        let event = self.event().await;
        let reply = self.reply_to(&r).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        (event, reply["response"].clone())
    }

    /// A write that must be rejected without an event: returns the error response.
    pub async fn write_err(&mut self, payload: Value) -> Value {
        let r = self.push("write", payload).await;
        let reply = self.reply_to(&r).await;
        assert_eq!(reply["status"], "error", "{reply}");
        reply["response"].clone()
    }

    /// `set` of a leaf at a one-segment path.
    pub async fn set(&mut self, key: &str, value: Value, op_id: &str) -> (Value, Value) {
        self.write_ok(write("set", &[key], value, op_id)).await
    }
}

/// A `write` payload as our clients send it: op, path, path_segments, value, client_op_id.
pub fn write(op: &str, segments: &[&str], value: Value, op_id: &str) -> Value {
    let rendered = dust_conformance::dust::path::render(segments).expect("valid path");
    json!({
        "op": op,
        "path": rendered,
        "path_segments": segments,
        "value": value,
        "client_op_id": op_id,
    })
}

/// Adds fields to a JSON object.
pub fn with(mut payload: Value, extra: Value) -> Value {
    if let (Value::Object(map), Value::Object(more)) = (&mut payload, extra) {
        map.extend(more);
    }
    payload
}
