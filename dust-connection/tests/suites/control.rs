// The `control` suite, run once per wire format: included by `tests/control.rs` (JSON) and
// `tests/control_msgpack.rs` (MessagePack), which set `FORMAT`.


use common::*;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::{ControlError, MemoryEngine, RejectReason};
use serde_json::json;

/// A connected store on `server`, after these sets, each awaited in order.
async fn store_after(
    server: &dust_conformance::Server,
    sets: &[(&str, serde_json::Value)],
) -> (MemoryEngine, dust_connection::DustConnection, dust_connection::Store) {
    let engine = MemoryEngine::new();
    let connection = connect(server, &engine).await;
    let app = connection.store(STORE).unwrap();
    for (key, value) in sets {
        within("set", app.set([*key], value.clone())).await.unwrap();
    }
    (engine, connection, app)
}

fn reason(error: ControlError) -> RejectReason {
    match error {
        ControlError::Rejected(rejection) => rejection.reason,
        other => panic!("not a rejection: {other:?}"),
    }
}

#[tokio::test]
async fn a_path_rollback_writes_one_op_that_the_replica_applies_and_a_second_is_a_noop() {
    let server = server().await;
    let (engine, _connection, app) =
        store_after(&server, &[("a", json!(1)), ("a", json!(2)), ("b", json!("kept"))]).await;

    let rolled = within("rollback", app.rollback_path(["a"], 1))
        .await
        .unwrap();
    assert_eq!((rolled.store_seq, rolled.noop), (4, false));
    // The rollback's event reaches the replica like any write's.
    wait_engine(&engine, "the rollback in the replica", || {
        engine.get(STORE, "a") == Some(json!(1)) && engine.seq(STORE) == 4
    })
    .await;
    assert_eq!(engine.get(STORE, "b"), Some(json!("kept")));
    let ops = dust(&server).ops(STORE).await.unwrap();
    let last = ops.last().unwrap();
    assert_eq!(last.client_op_id, json!("rollback:1:a"));
    assert_eq!(last.device_id, "system:rollback");

    let again = within("rollback again", app.rollback_path(["a"], 1))
        .await
        .unwrap();
    assert_eq!((again.store_seq, again.noop), (4, true));
    assert_eq!(dust(&server).ops(STORE).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_store_rollback_reports_its_ops_and_the_store_catches_up_to_them() {
    let server = server().await;
    let (engine, _connection, app) =
        store_after(&server, &[("a", json!(1)), ("b", json!(2)), ("a", json!(3))]).await;

    // Back to seq 1: `b` is deleted, then `a` is set to 1.
    let rolled = within("rollback", app.rollback(1)).await.unwrap();
    assert_eq!(rolled.ops_written, 2);
    let ops = dust(&server).ops(STORE).await.unwrap();
    let tail: Vec<(String, String)> = ops[3..]
        .iter()
        .map(|op| (op.op.clone(), op.path.clone()))
        .collect();
    assert_eq!(
        tail,
        [("delete".into(), "b".into()), ("set".into(), "a".into())]
    );

    // The server broadcasts no event for a store rollback: the store catches up again by
    // itself, and the replica ends at the rolled-back state.
    wait_engine(&engine, "the rollback after a catch-up", || {
        engine.seq(STORE) == 5
    })
    .await;
    assert_eq!(engine.get(STORE, "a"), Some(json!(1)));
    assert_eq!(engine.get(STORE, "b"), None);
}

#[tokio::test]
async fn rollbacks_the_server_refuses_fail_with_their_typed_reason() {
    let server = server().await;
    let (_engine, _connection, app) = store_after(&server, &[]).await;
    // An empty store has nothing to roll back.
    assert_eq!(
        reason(within("no ops", app.rollback(1)).await.unwrap_err()),
        RejectReason::NoOps
    );
    within("a", app.set(["a"], 1)).await.unwrap();
    // Seq 0 is before every op the store keeps.
    assert_eq!(
        reason(
            within("to 0", app.rollback_path(["a"], 0))
                .await
                .unwrap_err()
        ),
        RejectReason::BeyondRetention
    );
    assert_eq!(
        reason(within("store to 0", app.rollback(0)).await.unwrap_err()),
        RejectReason::BeyondRetention
    );
    // A bad path is refused before anything is sent.
    assert!(matches!(
        app.rollback_path(["a", ""], 1).await,
        Err(ControlError::InvalidPath(_))
    ));
    assert_eq!(dust(&server).ops(STORE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_token_without_the_write_scope_cannot_roll_back() {
    let server =
        server_with(DustConfig::new().token(TokenConfig::new(TOKEN).scopes(["entries:read"])))
            .await;
    let (_engine, _connection, app) = store_after(&server, &[]).await;
    assert_eq!(
        reason(within("rollback", app.rollback(1)).await.unwrap_err()),
        RejectReason::MissingScope
    );
}

#[tokio::test]
async fn status_reports_the_store_s_seq_and_counts() {
    let server = server().await;
    let (_engine, _connection, app) =
        store_after(&server, &[("a", json!(1)), ("b", json!(2))]).await;
    within("delete a", app.delete(["a"])).await.unwrap();
    let status = within("status", app.status()).await.unwrap();
    assert_eq!(
        (
            status.current_seq,
            status.entry_count,
            status.op_count,
            status.latest_snapshot_seq
        ),
        (3, 1, 3, None)
    );
    assert_eq!(
        status.raw["permissions"],
        json!({"read": true, "write": true})
    );
}
