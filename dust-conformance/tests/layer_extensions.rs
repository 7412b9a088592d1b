//! The generic Phoenix-layer hooks the Dust emulation needed: restart on the same port,
//! socket ids and their disconnect, a serializer filter per socket, broadcasting from a task.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::{Client, ok_reply, refused_status, server, server_with, within};
use dust_conformance::channel::{Channel, ChannelContext, Handled, Reply};
use dust_conformance::{ConnectDecision, Payload, Protocol, ServerConfig, SocketConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn restart_keeps_the_port_and_drops_connections() {
    let server = server().await;
    let control = server.control();
    let mut a = Client::v2(&server).await;
    a.joined("1", "echo:r").await;
    within("restart", control.restart(Duration::ZERO))
        .await
        .unwrap();
    a.expect_dropped().await;
    assert_eq!(control.stats().restarts, 1);
    assert_eq!(control.stats().open_connections, 0);
    let mut b = Client::v2(&server).await;
    b.joined("1", "echo:r").await;
    assert_eq!(control.connections().len(), 1);
}

/// A channel that broadcasts from a spawned task, then replies.
struct Spawner;

#[async_trait]
impl Channel for Spawner {
    async fn join(&mut self, _params: Payload, _ctx: &ChannelContext) -> Result<Value, Value> {
        Ok(json!({}))
    }

    async fn handle_in(&mut self, _event: &str, payload: Payload, ctx: &ChannelContext) -> Handled {
        let broadcaster = ctx.broadcaster();
        assert_eq!(broadcaster.topic(), ctx.topic());
        let reached = tokio::spawn(async move { broadcaster.broadcast("from_task", payload) })
            .await
            .unwrap_or(0);
        Handled::Reply(Reply::ok(json!({"reached": reached})))
    }
}

fn spawner_socket() -> SocketConfig {
    SocketConfig::new(|request| match request.params.get("user") {
        Some(user) => {
            let mut assigns = dust_conformance::Assigns::new();
            assigns.insert("user".into(), Value::String(user.clone()));
            ConnectDecision::Accept(assigns)
        }
        None => ConnectDecision::Refuse,
    })
    .protocols([Protocol::V2])
    .id(|_, assigns| assigns["user"].as_str().map(|u| format!("user:{u}")))
    .channel("room:*", |_| Box::new(Spawner))
}

#[tokio::test]
async fn socket_ids_serializer_filter_and_task_broadcasts() {
    let server = server_with(ServerConfig::default().socket("/app", spawner_socket())).await;
    let control = server.control();
    let v2 = |user: &str| format!("{}&user={user}", server.websocket_url("/app"));
    // V1 (no vsn) is not offered here.
    let v1 = format!("{}/websocket?user=u", server.url("/app"));
    assert_eq!(refused_status(&v1).await, 403);

    let mut u1 = Client::connect(&v2("u1")).await;
    let mut u1b = Client::connect(&v2("u1")).await;
    let mut u2 = Client::connect(&v2("u2")).await;
    assert_eq!(
        control.connections()[0].socket_id.as_deref(),
        Some("user:u1")
    );
    u2.send_json(json!(["1", "1", "room:a", "phx_join", {}]))
        .await;
    assert_eq!(
        u2.recv_json().await,
        ok_reply(json!("1"), json!("1"), "room:a", json!({}))
    );
    u2.send_json(json!(["1", "2", "room:a", "go", {"x": 1}]))
        .await;
    assert_eq!(
        u2.recv_json().await,
        json!([null, null, "room:a", "from_task", {"x": 1}])
    );
    assert_eq!(
        u2.recv_json().await,
        ok_reply(json!("1"), json!("2"), "room:a", json!({"reached": 1}))
    );

    assert_eq!(control.disconnect_socket("user:u1"), 2);
    assert_eq!(u1.recv_close().await, 1011);
    assert_eq!(u1b.recv_close().await, 1011);
    assert_eq!(control.disconnect_socket("user:nobody"), 0);
    u2.send(r#"[null,"3","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        u2.recv_json().await,
        ok_reply(Value::Null, json!("3"), "phoenix", json!({}))
    );
}
