//! Dust socket connect refusals (403), the join reply, and every join error.

mod common;

use common::dust::{Dust, StoreClient, dust, dust_with, sync_url};
use common::{Client, refused_status, reply};
use dust_conformance::dust::{DustConfig, StoreAccess, TokenConfig};
use serde_json::{Value, json};

fn url(d: &Dust, query: &str) -> String {
    format!("{}&{query}", d.server.websocket_url("/ws/sync"))
}

#[tokio::test]
async fn connect_refusals_are_403() {
    let d = dust_with(
        DustConfig::new()
            // Configured, but without the prefix: never authenticates.
            .token(TokenConfig::new("tok_without_prefix")),
    )
    .await;
    for query in [
        "token=tok_without_prefix&device_id=d&capver=3",
        "token=dust_tok_unknown&device_id=d&capver=3",
        "device_id=d&capver=3",
        "token=dust_tok_dev&capver=3",
        "token=dust_tok_dev&device_id=d",
        "token=dust_tok_dev&device_id=d&capver=2",
        "token=dust_tok_dev&device_id=d&capver=3abc",
        "token=dust_tok_dev&device_id=d&capver=%203",
    ] {
        assert_eq!(refused_status(&url(&d, query)).await, 403, "{query}");
    }
    // No vsn (serializer V1) is not offered on this socket.
    let v1 = format!(
        "{}/websocket?token=dust_tok_dev&device_id=d&capver=3",
        d.server.url("/ws/sync")
    );
    assert_eq!(refused_status(&v1).await, 403);
    assert_eq!(d.server.control().stats().connects_refused, 9);
    // Integer.parse semantics: "+4" and "03" are fine.
    Client::connect(&url(&d, "token=dust_tok_dev&device_id=d1&capver=%2B4")).await;
    Client::connect(&url(&d, "token=dust_tok_dev&device_id=d2&capver=03")).await;
    // The echo socket is still served.
    let mut echo = Client::v2(&d.server).await;
    echo.joined("1", "echo:x").await;
}

#[tokio::test]
async fn device_id_is_recorded_and_names_the_socket() {
    let d = dust().await;
    let _c = Client::connect(&sync_url(&d.server, "dust_tok_dev", "dev_42")).await;
    assert!(d.control.devices().contains_key("dev_42"));
    let conns = d.server.control().connections();
    assert_eq!(conns[0].socket_id.as_deref(), Some("store_socket:dev_42"));
    assert_eq!(conns[0].params["device_id"], "dev_42");
}

#[tokio::test]
async fn join_reply_for_an_all_stores_token() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, "store:acme/app").await;
    let response = c.join(json!(0)).await;
    let scopes: Vec<&str> = dust_conformance::dust::SCOPES.to_vec();
    assert_eq!(
        response,
        json!({
            "store_seq": 0,
            "capver": 3,
            "capver_min": 3,
            "permissions": {"read": true, "write": true},
            "scopes": scopes,
            "store_access": {"mode": "all", "store_ids": []},
        })
    );
    let (pushed, through) = c.catch_up().await;
    assert!(pushed.is_empty());
    assert_eq!(through, 0);
    // store_seq follows the writes.
    c.set("k", json!(1), "op_1").await;
    let mut c2 = StoreClient::dev(&d.server, "store:acme/app").await;
    assert_eq!(c2.join(json!(1)).await["store_seq"], 1);
}

#[tokio::test]
async fn join_reply_for_a_selected_read_only_token() {
    let d = dust_with(
        DustConfig::new().token(
            TokenConfig::new("dust_tok_ro")
                .scopes(["stores:read", "entries:read"])
                .access(StoreAccess::Selected(vec![
                    "acme/one".into(),
                    "acme/two".into(),
                ])),
        ),
    )
    .await;
    let mut ids: Vec<String> = Vec::new();
    for name in ["acme/one", "acme/two"] {
        ids.push(
            common::within("store_info", d.control.store_info(name))
                .await
                .unwrap()
                .id,
        );
    }
    ids.sort();
    let mut c = StoreClient::connect(&d.server, "dust_tok_ro", "dev", "store:acme/two").await;
    assert_eq!(
        c.join(json!(0)).await,
        json!({
            "store_seq": 0,
            "capver": 3,
            "capver_min": 3,
            "permissions": {"read": true, "write": false},
            "scopes": ["entries:read", "stores:read"],
            "store_access": {"mode": "selected", "store_ids": ids},
        })
    );
}

#[tokio::test]
async fn join_errors() {
    let d = dust_with(
        DustConfig::new()
            .store("other/x")
            .token(TokenConfig::new("dust_tok_acme").org("acme"))
            .token(TokenConfig::new("dust_tok_noread").scopes(["entries:write"]))
            .token(
                TokenConfig::new("dust_tok_sel")
                    .access(StoreAccess::Selected(vec!["acme/mine".into()])),
            ),
    )
    .await;
    let not_allowed = json!({
        "status": "error",
        "response": {
            "reason": "store_not_allowed",
            "message": "Token does not have access to this store",
        },
    });
    let unauthorized = json!({"status": "error", "response": {"reason": "unauthorized"}});
    // An org-bound token on another org's existing store.
    let mut c = StoreClient::connect(&d.server, "dust_tok_acme", "d", "store:other/x").await;
    assert_eq!(c.join_with(json!({"last_store_seq": 0})).await, not_allowed);
    // ... and on another org's unknown store: not created, unauthorized.
    c.topic = "store:other/unknown".into();
    assert_eq!(
        c.join_with(json!({"last_store_seq": 0})).await,
        unauthorized
    );
    assert!(
        common::within("store_info", d.control.store_info("other/unknown"))
            .await
            .is_err()
    );
    // A selected token on another store.
    let mut c = StoreClient::connect(&d.server, "dust_tok_sel", "d", "store:other/x").await;
    assert_eq!(c.join_with(json!({"last_store_seq": 0})).await, not_allowed);
    // Missing entries:read.
    let mut c = StoreClient::connect(&d.server, "dust_tok_noread", "d", "store:acme/a").await;
    assert_eq!(
        c.join_with(json!({"last_store_seq": 0})).await,
        json!({
            "status": "error",
            "response": {
                "reason": "missing_scope",
                "scope": "entries:read",
                "message": "Token is missing entries:read scope",
            },
        })
    );
    // Names that cannot be stores.
    let mut c = StoreClient::dev(&d.server, "store:Acme/App").await;
    assert_eq!(
        c.join_with(json!({"last_store_seq": 0})).await,
        unauthorized
    );
    // A UUID that is no store.
    c.topic = "store:00000000-0000-4000-8000-000000000000".into();
    assert_eq!(
        c.join_with(json!({"last_store_seq": 0})).await,
        unauthorized
    );
    // Neither a name nor a UUID: Ecto raises, the join crashes.
    c.topic = "store:notauuid".into();
    let crashed = json!({"status": "error", "response": {"reason": "join crashed"}});
    assert_eq!(c.join_with(json!({"last_store_seq": 0})).await, crashed);
    // Join params without last_store_seq match no join/3 clause.
    c.topic = "store:acme/app".into();
    assert_eq!(c.join_with(json!({"since": 0})).await, crashed);
    assert_eq!(c.join_with(json!([0])).await, crashed);
    // Nothing was joined.
    assert!(
        d.server
            .control()
            .connections()
            .iter()
            .all(|conn| conn.topics.is_empty())
    );
}

#[tokio::test]
async fn unknown_stores_without_auto_create_are_unauthorized() {
    let d = dust_with(DustConfig::new().auto_create(false).store("acme/declared")).await;
    let mut c = StoreClient::dev(&d.server, "store:acme/nope").await;
    assert_eq!(
        c.join_with(json!({"last_store_seq": 0})).await,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );
    c.topic = "store:acme/declared".into();
    c.join(json!(0)).await;
}

#[tokio::test]
async fn a_store_joins_by_uuid_too() {
    let d = dust_with(DustConfig::new().store("acme/app")).await;
    let id = common::within("store_info", d.control.store_info("acme/app"))
        .await
        .unwrap()
        .id;
    let mut c = StoreClient::dev(&d.server, &format!("store:{}", id.to_uppercase())).await;
    let response = c.join(json!(0)).await;
    assert_eq!(response["store_seq"], 0);
    let (_, through) = c.catch_up().await;
    assert_eq!(through, 0);
    // A message to a topic that is not joined: unmatched topic, null join_ref.
    c.c.send_json(json!(["9", "9", "store:acme/other", "write", {}]))
        .await;
    assert_eq!(
        c.c.recv_json().await,
        reply(
            Value::Null,
            json!("9"),
            "store:acme/other",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
}
