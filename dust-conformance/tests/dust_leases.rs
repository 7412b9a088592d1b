//! Leases: acquire / renew / release with tokens = store_seq and expiry on a manual clock,
//! `{"released": false}`, fences.

mod common;

use std::time::Duration;

use common::dust::{START_MS, StoreClient, dust, dust_with, with, write};
use dust_conformance::dust::DustConfig;
use serde_json::{Value, json};

const TOPIC: &str = "store:acme/locks";

fn lease(key: &str, ttl: Value, holder: Value, op_id: &str) -> Value {
    with(
        write("lease", &[key], Value::Null, op_id),
        json!({"ttl_ms": ttl, "holder": holder}),
    )
}

fn renew(key: &str, token: Value, ttl: u64, op_id: &str) -> Value {
    with(
        write("renew", &[key], Value::Null, op_id),
        json!({"token": token, "ttl_ms": ttl}),
    )
}

fn release(key: &str, token: Value, op_id: &str) -> Value {
    with(
        write("release", &[key], Value::Null, op_id),
        json!({"token": token}),
    )
}

#[tokio::test]
async fn acquire_renew_release() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.set("other", json!(1), "0").await;

    let (event, reply) = c
        .write_ok(lease("job", json!(1000), json!("w1"), "1"))
        .await;
    let envelope = json!({
        "_type": "lease",
        "holder": "w1",
        "token": 2,
        "expires_at": START_MS + 1000,
    });
    assert_eq!(
        reply,
        json!({"store_seq": 2, "token": 2, "expires_at": START_MS + 1000, "holder": "w1"})
    );
    assert_eq!(event["value"], envelope);
    assert_eq!(event["op"], "lease");
    // Held by someone: held; a non-lease value: occupied.
    assert_eq!(
        c.write_err(lease("job", json!(1000), json!("w2"), "2"))
            .await,
        json!({"reason": "held"})
    );
    assert_eq!(
        c.write_err(lease("other", json!(1000), json!("w2"), "3"))
            .await,
        json!({"reason": "occupied"})
    );

    // Renew keeps the token, moves expires_at from now.
    d.clock.advance(Duration::from_millis(600));
    let (event, reply) = c.write_ok(renew("job", json!(2), 1000, "4")).await;
    assert_eq!(
        reply,
        json!({"store_seq": 3, "token": 2, "expires_at": START_MS + 1600, "holder": "w1"})
    );
    assert_eq!(event["value"]["expires_at"], START_MS + 1600);
    assert_eq!(
        c.write_err(renew("job", json!(99), 1000, "5")).await,
        json!({"reason": "not_held"})
    );
    // The token is compared strictly: 2.0 is not 2.
    assert_eq!(
        c.write_err(renew("job", json!(2.0), 1000, "6")).await,
        json!({"reason": "not_held"})
    );
    assert_eq!(
        c.write_err(with(
            write("renew", &["job"], Value::Null, "7"),
            json!({"ttl_ms": 5})
        ))
        .await,
        json!({"reason": ":invalid_lease_op"})
    );

    // A release with the wrong token is an idempotent no-op: no event, no seq.
    let r = c.push("write", release("job", json!(5), "8")).await;
    assert_eq!(
        c.reply_to(&r).await,
        json!({"status": "ok", "response": {"released": false}})
    );
    let (event, reply) = c.write_ok(release("job", json!(2), "9")).await;
    assert_eq!(reply, json!({"store_seq": 4}));
    assert_eq!(
        (event["op"].clone(), event["value"].clone()),
        (json!("release"), Value::Null)
    );
    assert!(
        common::within("entry", d.control.entry("acme/locks", "job"))
            .await
            .unwrap()
            .is_none()
    );
    // Released twice: nothing left to release.
    let r = c.push("write", release("job", json!(2), "10")).await;
    assert_eq!(c.reply_to(&r).await["response"], json!({"released": false}));
    assert_eq!(
        c.write_err(with(
            write("release", &["job"], Value::Null, "11"),
            json!({})
        ))
        .await,
        json!({"reason": ":invalid_lease_op"})
    );
    assert_eq!(
        common::within("store_info", d.control.store_info("acme/locks"))
            .await
            .unwrap()
            .seq,
        4
    );
}

#[tokio::test]
async fn expiry_lets_another_holder_steal() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    // No ttl_ms: 30 s; no holder: null.
    let (_, reply) = c
        .write_ok(with(write("lease", &["job"], Value::Null, "1"), json!({})))
        .await;
    assert_eq!(
        reply,
        json!({"store_seq": 1, "token": 1, "expires_at": START_MS + 30_000, "holder": null})
    );
    d.clock.advance(Duration::from_millis(29_999));
    assert_eq!(
        c.write_err(lease("job", json!(100), json!("b"), "2")).await,
        json!({"reason": "held"})
    );
    d.clock.advance(Duration::from_millis(1));
    // Expired: renew fails, a new acquire steals with a new token.
    assert_eq!(
        c.write_err(renew("job", json!(1), 100, "3")).await,
        json!({"reason": "not_held"})
    );
    let (_, reply) = c.write_ok(lease("job", json!(100), json!("b"), "4")).await;
    assert_eq!(reply["token"], 2);
    assert_eq!(reply["holder"], "b");
    // The old holder's release no longer matches.
    let r = c.push("write", release("job", json!(1), "5")).await;
    assert_eq!(c.reply_to(&r).await["response"], json!({"released": false}));
    // An expired lease can still be released by its own token.
    d.clock.advance(Duration::from_millis(100));
    let (event, _) = c.write_ok(release("job", json!(2), "6")).await;
    assert_eq!(event["store_seq"], 3);
    // A ttl that is not a number raises in the writer.
    assert_eq!(
        c.write_err(lease("job", json!("10"), json!("c"), "7"))
            .await,
        json!({"reason": "%ArithmeticError{message: \"bad argument in arithmetic expression\"}"})
    );
}

#[tokio::test]
async fn fences() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.write_ok(lease("job", json!(1000), json!("w"), "1")).await;
    let fenced = |token: Value| {
        with(
            write("set", &["out"], json!("x"), "f"),
            json!({"fence": {"key": "job", "token": token}}),
        )
    };
    c.write_ok(fenced(json!(1))).await;
    assert_eq!(
        c.write_err(fenced(json!(7))).await,
        json!({"reason": "fenced"})
    );
    // A fence on a key holding no lease.
    assert_eq!(
        c.write_err(with(
            write("set", &["out"], json!(1), "g"),
            json!({"fence": {"key": "nothing", "token": 1}})
        ))
        .await,
        json!({"reason": "fenced"})
    );
    // A fence whose token is not an integer is ignored, as the server ignores it.
    c.write_ok(with(
        write("set", &["out"], json!(2), "h"),
        json!({"fence": {"key": "nothing", "token": "1"}}),
    ))
    .await;
    // Once the lease expires, writes fenced by it fail.
    d.clock.advance(Duration::from_millis(1000));
    assert_eq!(
        c.write_err(fenced(json!(1))).await,
        json!({"reason": "fenced"})
    );
}

#[tokio::test]
async fn leases_survive_a_restart_on_their_wall_clock_expiry() {
    let d = dust_with(DustConfig::new()).await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    c.write_ok(lease("job", json!(1000), json!("w"), "1")).await;
    common::within("restart", d.control.restart(Duration::ZERO))
        .await
        .unwrap();
    c.c.expect_dropped().await;
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(1)).await;
    assert_eq!(
        c.write_err(lease("job", json!(1000), json!("x"), "2"))
            .await,
        json!({"reason": "held"})
    );
    // After a restart, the persisted expires_at decides.
    d.clock.advance(Duration::from_millis(1000));
    let (_, reply) = c.write_ok(lease("job", json!(1000), json!("x"), "3")).await;
    assert_eq!(reply["token"], 2);
}
