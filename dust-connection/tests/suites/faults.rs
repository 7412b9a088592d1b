// The `faults` suite, run once per wire format: included by `tests/faults.rs` (JSON) and
// `tests/faults_msgpack.rs` (MessagePack), which set `FORMAT`.


/// A store `dust_tok_other` may use (and `dust_tok_test` too).
const OTHER: &str = "acme/other";

use std::time::Duration;

use common::*;
use dust_connection::{
    Change, DustConnection, MemoryEngine, RejectReason, StoreStatus, WriteError, WriteRequest,
};
use futures_util::FutureExt as _;
use futures_util::future::join_all;
use phoenix_channels::backoff::ReconnectSchedule;
use serde_json::json;

fn increments(n: usize) -> Vec<WriteRequest> {
    (0..n)
        .map(|_| WriteRequest::increment(["counter"], 1))
        .collect()
}

fn ids(writes: &[WriteRequest]) -> Vec<String> {
    writes.iter().map(|w| w.client_op_id.to_string()).collect()
}

/// Issues the writes in order (each is queued on its first poll) and waits for all.
async fn write_all(
    store: &dust_connection::Store,
    writes: &[WriteRequest],
) -> Vec<Result<dust_connection::WriteAck, WriteError>> {
    within(
        "writes",
        join_all(writes.iter().cloned().map(|w| store.write(w))),
    )
    .await
}

#[tokio::test]
async fn writes_made_while_disconnected_go_out_once_in_order_after_the_reconnect() {
    let server = server().await;
    let engine = MemoryEngine::new();
    // Keep retrying through the refused (403) connects this test uses to stay disconnected.
    let connection = builder(&server)
        .engine(engine.clone())
        .socket(|s| {
            s.reconnect_policy(
                phoenix_channels::backoff::ReconnectSchedule::default()
                    .with_schedule_ms([10, 20])
                    .stop_on_http_client_error(false),
            )
        })
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let control = server.control();
    control.refuse_connects(true);
    control.drop_all();
    wait_connection(&connection, "disconnected", || !connection.is_connected()).await;

    let writes = increments(50);
    // Every write is queued on its first poll.
    let mut all = Box::pin(join_all(writes.iter().cloned().map(|w| app.write(w))));
    assert!(poll_once(&mut all).await.is_pending());
    // Two reconnect attempts refused after the writes were queued: the client had its
    // chances to send them.
    let refused = control.stats().connects_refused;
    within(
        "two refused reconnects",
        control.wait_for_stats(|s| s.connects_refused >= refused + 2),
    )
    .await;
    assert!(
        logged_ids(&server, STORE).await.is_empty(),
        "nothing goes out while disconnected"
    );
    control.refuse_connects(false);
    let results = within("all acked", all).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &ids(&writes)).await;
    wait_engine(&engine, "engine total", || {
        engine.get(STORE, "counter") == Some(json!(50))
    })
    .await;
}

#[tokio::test]
async fn manual_mode_queues_until_connect_and_dropped_writes_never_leave() {
    let server = server().await;
    dust(&server).create_store(STORE).await.unwrap();
    let connection = builder(&server).manual().connect().unwrap();
    let app = connection.store(STORE).unwrap();
    let kept = WriteRequest::set(["kept"], 1);
    let dropped = WriteRequest::set(["dropped"], 1);
    let mut pending = Box::pin(app.write(kept.clone()));
    assert!(poll_once(&mut pending).await.is_pending(), "queued");
    // Queued (on its first poll), then its caller gives up before it is sent.
    assert!(app.write(dropped.clone()).now_or_never().is_none());
    assert_eq!(
        server.control().stats().connects_accepted,
        0,
        "manual mode does not connect"
    );
    assert!(logged_ids(&server, STORE).await.is_empty());
    connection.connect();
    within("kept write", pending).await.unwrap();
    let logged = logged_ids(&server, STORE).await;
    assert_eq!(
        logged,
        [kept.client_op_id.to_string()],
        "the dropped write never left"
    );
}

#[tokio::test]
async fn replies_lost_in_a_disconnect_are_answered_from_the_catch_up_not_resent() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let control = server.control();
    // Another device, whose frames are not held back, sees the server apply the writes.
    let observer = MemoryEngine::new();
    let observing = connect(&server, &observer).await;
    let device = connection.device_id().to_string();
    let ours = control
        .connections()
        .into_iter()
        .find(|c| {
            c.socket_id
                .as_deref()
                .is_some_and(|id| id.ends_with(&device))
        })
        .expect("our connection")
        .id;
    // The server applies the writes, but its frames to us are held back; then the connection
    // drops: the writes were in flight, applied, and their replies are lost.
    control.set_delay(ours, Duration::from_secs(30)).unwrap();
    let writes = increments(20);
    let all = tokio::spawn({
        let app = app.clone();
        let writes = writes.clone();
        async move { write_all(&app, &writes).await }
    });
    wait_engine(&observer, "applied on the server", || {
        observer.seq(STORE) >= 20
    })
    .await;
    assert_eq!(logged_ids(&server, STORE).await.len(), 20);
    control.set_delay_all(Duration::ZERO);
    control.drop_connection(ours).unwrap();
    drop(observing);
    let results = within("answers", all).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_ok_and(|a| a.is_from_event())),
        "answered from the catch-up"
    );
    assert_applied_once_in_order(&server, STORE, &ids(&writes)).await;
    wait_engine(&engine, "engine total", || {
        engine.get(STORE, "counter") == Some(json!(20))
    })
    .await;
}

#[tokio::test]
async fn writes_in_flight_that_never_reached_the_server_are_resent_once() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let (builder, sent) = counting_writes(builder_resending(&server));
    let connection = builder.engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let control = server.control();
    // The server stops reading: our writes sit unread in its socket, then the connection drops.
    control.stall_all();
    let writes = increments(20);
    let all = tokio::spawn({
        let app = app.clone();
        let writes = writes.clone();
        async move { write_all(&app, &writes).await }
    });
    // All 20 are on the wire, unread by the stalled server.
    wait_sent(&sent, 20).await;
    control.drop_all();
    let results = within("answers", all).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &ids(&writes)).await;
    wait_engine(&engine, "engine total", || {
        engine.get(STORE, "counter") == Some(json!(20))
    })
    .await;
}

#[tokio::test]
async fn a_lost_reply_on_a_live_connection_is_answered_from_the_write_s_own_event() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .write_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    dust(&server).drop_next_write_reply();
    let write = WriteRequest::increment(["counter"], 1);
    let ack = within("answer", app.write(write.clone())).await.unwrap();
    assert!(ack.is_from_event());
    assert_eq!(ack.store_seq(), Some(1));
    let next = WriteRequest::increment(["counter"], 1);
    within("next", app.write(next.clone())).await.unwrap();
    assert_applied_once_in_order(
        &server,
        STORE,
        &[
            write.client_op_id.to_string(),
            next.client_op_id.to_string(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_server_restart_loses_nothing_and_applies_nothing_twice() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect_resending(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let writes = increments(60);
    let all = tokio::spawn({
        let app = app.clone();
        let writes = writes.clone();
        async move { write_all(&app, &writes).await }
    });
    within("restart", dust(&server).restart(Duration::from_millis(100)))
        .await
        .unwrap();
    let results = within("answers", all).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &ids(&writes)).await;
}

#[tokio::test]
async fn repeated_drops_under_load_still_apply_everything_once_in_order() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let (builder, sent) = counting_writes(builder_resending(&server));
    let connection = builder.engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let control = server.control();
    let writes = increments(300);
    let mut all = tokio::spawn({
        let app = app.clone();
        let writes = writes.clone();
        async move { write_all(&app, &writes).await }
    });
    // Six drops, each once 25 more writes went out (fewer if all are answered before).
    let mut results = None;
    for _ in 0..6 {
        let target = *sent.borrow() + 25;
        tokio::select! {
            done = &mut all => {
                results = Some(done.unwrap());
                break;
            }
            () = wait_sent(&sent, target) => {
                control.drop_all();
            }
        }
    }
    let results = match results {
        Some(results) => results,
        None => within("answers", all).await.unwrap(),
    };
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &ids(&writes)).await;
    wait_engine(&engine, "engine total", || {
        engine.get(STORE, "counter") == Some(json!(300))
    })
    .await;
}

#[tokio::test]
async fn a_permanent_join_failure_fails_queued_writes_and_stops_rejoining() {
    let server = server().await;
    dust(&server).create_store(STORE).await.unwrap();
    let engine = MemoryEngine::new();
    // The token may use OTHER but not STORE.
    let connection = DustConnection::builder(server.url("/ws/sync"))
        .token("dust_tok_other")
        .format(FORMAT)
        .store(STORE)
        .store(OTHER)
        .engine(engine.clone())
        .socket(|s| s.reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 20])))
        .manual()
        .connect()
        .unwrap();
    let app = connection.store(STORE).unwrap();
    let mut queued = Box::pin(app.set(["k"], 1));
    assert!(poll_once(&mut queued).await.is_pending(), "queued");
    connection.connect();
    let error = within("queued write", queued).await.unwrap_err();
    assert!(
        matches!(error, WriteError::JoinFailed(ref r) if r.reason == RejectReason::StoreNotAllowed),
        "{error:?}"
    );
    assert_eq!(engine.status(STORE), Some(StoreStatus::Failed));
    let later = within("later write", app.set(["k"], 2)).await.unwrap_err();
    assert!(matches!(later, WriteError::JoinFailed(_)));
    // A socket reconnect rejoins at once every channel that has a rejoin pending; a write on
    // the other store then proves the server handled every frame sent before it.
    let control = server.control();
    let before = control.stats();
    control.drop_all();
    within(
        "reconnected",
        control.wait_for_stats(|s| s.connects_accepted > before.connects_accepted),
    )
    .await;
    let other = connection.store(OTHER).unwrap();
    within("a write on the other store", other.set(["ping"], 1))
        .await
        .unwrap();
    assert_eq!(
        control.stats().joins_refused,
        before.joins_refused,
        "no rejoin after a permanent failure"
    );
    assert!(
        control
            .connections()
            .iter()
            .all(|c| !c.topics.contains(&format!("store:{STORE}"))),
        "no rejoin after a permanent failure"
    );
    assert_eq!(engine.status(STORE), Some(StoreStatus::Failed));
}

#[tokio::test]
async fn a_full_outbox_pushes_back_and_a_non_waiting_write_says_so() {
    let server = server().await;
    let connection = builder(&server)
        .manual()
        .outbox_capacity(2)
        .connect()
        .unwrap();
    let app = connection.store(STORE).unwrap();
    let mut first = Box::pin(app.set(["a"], 1));
    let mut second = Box::pin(app.set(["b"], 2));
    assert!(poll_once(&mut first).await.is_pending() && poll_once(&mut second).await.is_pending());
    let full = within("try_write", app.try_write(WriteRequest::set(["c"], 3))).await;
    assert_eq!(full.unwrap_err(), WriteError::OutboxFull);
    let mut waiting = Box::pin(app.set(["d"], 4));
    assert!(
        poll_once(&mut waiting).await.is_pending(),
        "a waiting write waits for room"
    );
    connection.connect();
    for write in [first, second, waiting] {
        within("drained", write).await.unwrap();
    }
    assert_eq!(logged_ids(&server, STORE).await.len(), 3);
}

#[tokio::test]
async fn an_archived_store_closes_its_channel_and_its_writes_fail_clearly() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let mut changes = engine.subscribe();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    within("set", app.set(["k"], 1)).await.unwrap();
    assert!(
        within("archive", dust(&server).archive(STORE))
            .await
            .unwrap()
            > 0
    );
    // phx_close: the store goes reconnecting and rejoins with backoff, as the seed does; the
    // server refuses the join of an archived store (`unauthorized`), which is final.
    within("reconnecting, then failed", async {
        for expected in [StoreStatus::Reconnecting, StoreStatus::Failed] {
            while !matches!(changes.recv().await, Ok(Change::Status { status, .. }) if status == expected)
            {}
        }
    })
    .await;
    let rejected = within("write to archived", app.set(["k"], 2)).await;
    assert!(
        matches!(rejected, Err(WriteError::JoinFailed(ref r)) if r.reason == RejectReason::Unauthorized),
        "{rejected:?}"
    );
    assert_eq!(logged_ids(&server, STORE).await.len(), 1);
}

#[tokio::test]
async fn a_server_reset_is_noticed_and_the_store_resyncs_from_zero() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let mut changes = engine.subscribe();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    for n in 0..3 {
        within("set", app.set(["old", format!("k{n}").as_str()], n))
            .await
            .unwrap();
    }
    wait_engine(&engine, "applied", || engine.seq(STORE) == 3).await;
    within("reset", dust(&server).reset(STORE)).await.unwrap();
    server.control().drop_all();
    within("reset noticed", async {
        loop {
            if let Ok(Change::Reset { server_seq: 0, .. }) = changes.recv().await {
                return;
            }
        }
    })
    .await;
    let ack = within("write after reset", app.set(["new"], 1))
        .await
        .unwrap();
    assert_eq!(ack.store_seq(), Some(1));
    wait_engine(&engine, "engine follows the server", || {
        engine.seq(STORE) == 1
    })
    .await;
    assert_eq!(engine.get(STORE, "old/k0"), None);
    assert_eq!(engine.get(STORE, "new"), Some(json!(1)));
}

#[tokio::test]
async fn disconnecting_the_device_reconnects_it() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect_resending(&server, &engine).await;
    let device = connection.device_id().to_string();
    let before = server.control().stats();
    assert_eq!(dust(&server).disconnect_device(&device), 1);
    within(
        "reconnected",
        server.control().wait_for_stats(|s| {
            s.connects_accepted > before.connects_accepted && s.open_connections == 1
        }),
    )
    .await;
    wait_connection(&connection, "connected", || connection.is_connected()).await;
    let app = connection.store(STORE).unwrap();
    within("write", app.set(["k"], 1)).await.unwrap();
}

#[tokio::test]
async fn disconnect_fails_what_is_left() {
    let server = server().await;
    let connection = builder(&server).manual().connect().unwrap();
    let app = connection.store(STORE).unwrap();
    let mut queued = Box::pin(app.set(["k"], 1));
    assert!(poll_once(&mut queued).await.is_pending(), "queued");
    within("disconnect", connection.disconnect()).await;
    let result = within("queued", queued).await;
    assert!(matches!(result, Err(WriteError::Closed)), "{result:?}");
    assert!(matches!(
        within("after", app.set(["k"], 2)).await,
        Err(WriteError::Closed)
    ));
}
