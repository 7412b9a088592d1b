//! The extension points a Dust-like `store:*` channel is built on: a second socket path with
//! its own connect check and assigns, pushes after the join reply, `handle_info`, broadcasts,
//! replies with a stop, panics as crashes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use common::{Client, ok_reply, refused_status, reply, server_with};
use dust_conformance::channel::{Channel, ChannelContext, Handled, Info, Reply};
use dust_conformance::{ConnectDecision, Payload, ServerConfig, SocketConfig};
use serde_json::{Value, json};

/// A shared sequence, as a store's op log would be.
#[derive(Debug, Default)]
struct Log {
    seq: AtomicU64,
}

struct Store {
    log: Arc<Log>,
    since: u64,
}

struct CatchUp;

#[async_trait]
impl Channel for Store {
    async fn join(&mut self, params: Payload, ctx: &ChannelContext) -> Result<Value, Value> {
        match ctx.topic() {
            "store:panic" => panic!("join blew up"),
            "store:denied" => return Err(json!({"reason": "store_not_allowed"})),
            _ => {}
        }
        let Some(since) = params.as_json().and_then(|p| p["last_store_seq"].as_u64()) else {
            return Err(json!({"reason": "missing last_store_seq"}));
        };
        self.since = since;
        // Pushed after the join reply, like Phoenix's `send(self(), :after_join)`.
        ctx.send_self(Box::new(CatchUp));
        Ok(json!({
            "store_seq": self.log.seq.load(Ordering::SeqCst),
            "device_id": ctx.assigns()["device_id"],
        }))
    }

    async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &ChannelContext) -> Handled {
        match event {
            "write" => {
                let seq = self.log.seq.fetch_add(1, Ordering::SeqCst) + 1;
                let event = json!({"store_seq": seq, "value": payload.as_json()});
                ctx.broadcast("event", event);
                Handled::Reply(Reply::ok(json!({"store_seq": seq})))
            }
            "bye" => Handled::Stop(Some(Reply::ok(json!({"bye": true})))),
            "panic" => panic!("handle_in blew up"),
            _ => Handled::Reply(Reply::error(json!({"reason": "invalid op"}))),
        }
    }

    async fn handle_info(&mut self, info: Info, ctx: &ChannelContext) -> Handled {
        if info.is::<CatchUp>() {
            let through = self.log.seq.load(Ordering::SeqCst);
            if ctx
                .push(
                    "catch_up_complete",
                    json!({"through_seq": through, "since": self.since}),
                )
                .is_err()
            {
                return Handled::Crash;
            }
        }
        // A reply from handle_info has no push to answer: dropped.
        Handled::Reply(Reply::ok(json!({"ignored": true})))
    }
}

fn store_socket(log: Arc<Log>) -> SocketConfig {
    SocketConfig::new(|request| {
        let token_ok = request
            .params
            .get("token")
            .is_some_and(|t| t.starts_with("dust_tok_"));
        let capver_ok = request
            .params
            .get("capver")
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| c >= 3);
        match (token_ok && capver_ok, request.params.get("device_id")) {
            (true, Some(device)) => {
                let mut assigns = dust_conformance::Assigns::new();
                assigns.insert("device_id".into(), Value::String(device.clone()));
                ConnectDecision::Accept(assigns)
            }
            _ => ConnectDecision::Refuse,
        }
    })
    .channel("store:*", move |_topic| {
        Box::new(Store {
            log: log.clone(),
            since: 0,
        })
    })
}

async fn dust_server() -> dust_conformance::Server {
    let log = Arc::new(Log::default());
    server_with(ServerConfig::default().socket("/ws/sync", store_socket(log))).await
}

fn sync_url(server: &dust_conformance::Server, query: &str) -> String {
    format!("{}&{query}", server.websocket_url("/ws/sync"))
}

#[tokio::test]
async fn second_socket_path_with_its_own_connect_check() {
    let server = dust_server().await;
    assert_eq!(
        refused_status(&sync_url(&server, "token=nope&capver=3&device_id=d")).await,
        403
    );
    assert_eq!(
        refused_status(&sync_url(&server, "token=dust_tok_1&capver=2&device_id=d")).await,
        403
    );
    Client::connect(&sync_url(&server, "token=dust_tok_1&capver=3&device_id=d")).await;
    // The echo socket is still there, and echo topics are not routed on /ws/sync.
    let mut echo = Client::v2(&server).await;
    echo.joined("1", "echo:x").await;
    let mut sync =
        Client::connect(&sync_url(&server, "token=dust_tok_1&capver=3&device_id=d")).await;
    let r = sync.join("1", "echo:x", json!({})).await;
    assert_eq!(
        r,
        reply(
            Value::Null,
            json!("1"),
            "echo:x",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
}

#[tokio::test]
async fn join_reply_then_after_join_pushes_then_broadcasts() {
    let server = dust_server().await;
    let url = sync_url(&server, "token=dust_tok_1&capver=3&device_id=dev_a");
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url.replace("dev_a", "dev_b")).await;
    let r = a
        .join("1", "store:org/s", json!({"last_store_seq": 0}))
        .await;
    assert_eq!(
        r,
        ok_reply(
            json!("1"),
            json!("1"),
            "store:org/s",
            json!({"store_seq": 0, "device_id": "dev_a"})
        )
    );
    assert_eq!(
        a.recv_json().await,
        json!(["1", null, "store:org/s", "catch_up_complete", {"through_seq": 0, "since": 0}])
    );
    let r = b
        .join("3", "store:org/s", json!({"last_store_seq": 0}))
        .await;
    assert_eq!(r[4]["response"]["device_id"], "dev_b");
    b.recv_json().await;

    a.send_json(json!(["1", "2", "store:org/s", "write", {"v": 1}]))
        .await;
    let event = json!([null, null, "store:org/s", "event", {"store_seq": 1, "value": {"v": 1}}]);
    assert_eq!(a.recv_json().await, event);
    assert_eq!(
        a.recv_json().await,
        ok_reply(
            json!("1"),
            json!("2"),
            "store:org/s",
            json!({"store_seq": 1})
        )
    );
    assert_eq!(b.recv_json().await, event);

    // The state is shared by every join: a new join sees the log.
    let mut c = Client::connect(&url).await;
    let r = c
        .join("1", "store:org/s", json!({"last_store_seq": 1}))
        .await;
    assert_eq!(r[4]["response"]["store_seq"], 1);
}

#[tokio::test]
async fn join_errors_and_join_panics() {
    let server = dust_server().await;
    let mut c = Client::connect(&sync_url(&server, "token=dust_tok_1&capver=3&device_id=d")).await;
    let r = c
        .join("1", "store:denied", json!({"last_store_seq": 0}))
        .await;
    assert_eq!(
        r,
        reply(
            json!("1"),
            json!("1"),
            "store:denied",
            "error",
            json!({"reason": "store_not_allowed"})
        )
    );
    let r = c.join("2", "store:x", json!({})).await;
    assert_eq!(
        r,
        reply(
            json!("2"),
            json!("2"),
            "store:x",
            "error",
            json!({"reason": "missing last_store_seq"})
        )
    );
    let r = c
        .join("3", "store:panic", json!({"last_store_seq": 0}))
        .await;
    assert_eq!(
        r,
        reply(
            json!("3"),
            json!("3"),
            "store:panic",
            "error",
            json!({"reason": "join crashed"})
        )
    );
    assert!(
        server
            .control()
            .connections()
            .iter()
            .all(|c| c.topics.is_empty())
    );
    assert_eq!(server.control().stats().joins_refused, 3);
}

#[tokio::test]
async fn stop_with_a_reply_and_panic_as_crash() {
    let server = dust_server().await;
    let mut c = Client::connect(&sync_url(&server, "token=dust_tok_1&capver=3&device_id=d")).await;
    c.join("1", "store:a", json!({"last_store_seq": 0})).await;
    c.recv_json().await;
    c.join("2", "store:b", json!({"last_store_seq": 0})).await;
    c.recv_json().await;
    c.send_json(json!(["1", "3", "store:a", "bye", {}])).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("1"), json!("3"), "store:a", json!({"bye": true}))
    );
    assert_eq!(
        c.recv_json().await,
        json!(["1", "1", "store:a", "phx_close", {}])
    );
    c.send_json(json!(["2", "4", "store:b", "panic", {}])).await;
    assert_eq!(
        c.recv_json().await,
        json!(["2", "2", "store:b", "phx_error", {}])
    );
    // The connection is fine.
    c.send(r#"[null,"5","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("5"), "phoenix", json!({}))
    );
}
