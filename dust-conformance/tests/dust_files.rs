//! `put_file`: base64 content, the `sha256:<hex>` hash, the file-ref event value, its errors.

mod common;

use common::dust::{StoreClient, dust, dust_with, write};
use dust_conformance::dust::{DustConfig, Limits, TokenConfig};
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/files";
/// sha256("hello")
const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn put(path: Value, content: &str, op_id: &str) -> Value {
    json!({
        "path": path,
        "path_segments": ["ignored"],
        "content": content,
        "filename": "hello.txt",
        "content_type": "text/plain",
        "client_op_id": op_id,
    })
}

#[tokio::test]
async fn put_file_stores_a_file_ref() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.write_ok(write("set", &["docs", "a"], json!({"old": 1}), "0"))
        .await;
    let r = c
        .push("put_file", put(json!("docs/a"), "aGVsbG8=", "1"))
        .await;
    let event = c.event().await;
    assert_eq!(
        c.reply_to(&r).await,
        json!({"status": "ok", "response": {"store_seq": 2, "hash": HELLO}})
    );
    let uploaded_at = event["value"]["uploaded_at"].as_str().unwrap().to_owned();
    assert_eq!(uploaded_at, "2023-11-14T22:13:20.000000Z");
    assert_eq!(
        event,
        json!({
            "store_seq": 2,
            "op": "put_file",
            // The server takes `path`, not `path_segments`, for put_file.
            "path": "docs/a",
            "path_segments": ["docs", "a"],
            "value": {
                "_type": "file",
                "hash": HELLO,
                "size": 5,
                "content_type": "text/plain",
                "filename": "hello.txt",
                "uploaded_at": uploaded_at,
            },
            "device_id": "dev_a",
            "client_op_id": "1",
        })
    );
    // It replaced the subtree.
    let entries = common::within("entries", d.control.entries("acme/files"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].path.as_str(), entries[0].kind.as_str()),
        ("docs/a", "file")
    );
    // Defaults: application/octet-stream, filename null.
    let r = c
        .push(
            "put_file",
            json!({"path": "b", "content": "", "client_op_id": "2"}),
        )
        .await;
    let event = c.event().await;
    assert_eq!(event["value"]["content_type"], "application/octet-stream");
    assert_eq!(event["value"]["filename"], Value::Null);
    assert_eq!(event["value"]["size"], 0);
    assert_eq!(c.reply_to(&r).await["status"], "ok");
}

async fn error(c: &mut StoreClient, payload: Value) -> Value {
    let r = c.push("put_file", payload).await;
    let reply = c.reply_to(&r).await;
    assert_eq!(reply["status"], "error", "{reply}");
    reply["response"].clone()
}

#[tokio::test]
async fn put_file_errors() {
    let d = dust_with(
        DustConfig::new()
            .limits(Limits::new(1_000, 8))
            .token(TokenConfig::new("dust_tok_nofiles").scopes(["entries:read", "entries:write"])),
    )
    .await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    for (content, reason) in [
        ("aGVsbG8", "invalid_base64"),
        ("aGVs bG8=", "invalid_base64"),
        ("aGVsbG8-", "invalid_base64"),
    ] {
        assert_eq!(
            error(&mut c, put(json!("f"), content, "x")).await,
            json!({ "reason": reason })
        );
    }
    assert_eq!(
        error(&mut c, put(Value::Null, "aGVsbG8=", "x")).await,
        json!({"reason": "missing_path"})
    );
    assert_eq!(
        error(&mut c, put(json!(5), "aGVsbG8=", "x")).await,
        json!({"reason": "invalid_path"})
    );
    assert_eq!(
        error(&mut c, put(json!("a//b"), "aGVsbG8=", "x")).await,
        json!({"reason": "empty_segment"})
    );
    // 5 bytes fit in 8; 5 more do not (the same blob counts once).
    let r = c.push("put_file", put(json!("f1"), "aGVsbG8=", "1")).await;
    c.event().await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    assert_eq!(
        error(&mut c, put(json!("f2"), "d29ybGQ=", "2")).await,
        json!({"reason": "limit_exceeded", "dimension": "file_storage", "current": 5, "limit": 8})
    );
    // Missing files:write.
    let mut n = StoreClient::connect(&d.server, "dust_tok_nofiles", "dev", TOPIC).await;
    n.join_caught_up(json!(1)).await;
    assert_eq!(
        error(&mut n, put(json!("g"), "aGVsbG8=", "3")).await,
        json!({
            "reason": "missing_scope",
            "scope": "files:write",
            "message": "Token is missing files:write scope",
        })
    );
    // Without content (or any required key) no clause matches: the channel crashes.
    n.push("put_file", json!({"path": "g", "client_op_id": "4"}))
        .await;
    assert_eq!(
        n.c.recv_json().await,
        json!([n.join_ref, n.join_ref, TOPIC, "phx_error", {}])
    );
    assert_eq!(
        common::within("store_info", d.control.store_info("acme/files"))
            .await
            .unwrap()
            .seq,
        1
    );
}
