// The `reliability` suite, run once per wire format: included by `tests/reliability.rs` (JSON) and
// `tests/reliability_msgpack.rs` (MessagePack), which set `FORMAT`.


use std::future::Future;
use std::pin::Pin;

use common::*;
use std::time::Duration;

use dust_connection::{MemoryEngine, UnknownOutcome, WriteAck, WriteError, WriteRequest};
use futures_util::FutureExt as _;
use futures_util::future::join_all;
use phoenix_channels::backoff::RejoinSchedule;
use serde_json::json;

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send + 'a>>;

/// Polls each future once, in order (as a CLI that fires writes does), then awaits them all.
async fn poll_once_then_await(
    mut futures: Vec<WriteFuture<'_>>,
) -> Vec<Result<WriteAck, WriteError>> {
    let mut early = Vec::new();
    for future in &mut futures {
        early.push((&mut *future).now_or_never());
    }
    let pending = futures
        .into_iter()
        .zip(&early)
        .filter(|(_, early)| early.is_none())
        .map(|(future, _)| future);
    let mut rest = within("writes", join_all(pending)).await.into_iter();
    early
        .into_iter()
        .map(|early| early.or_else(|| rest.next()).expect("one answer per write"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_polled_once_then_awaited_land_in_the_order_they_were_issued() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server).engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let mut issued = Vec::new();
    let mut futures: Vec<WriteFuture<'_>> = Vec::new();
    for i in 0..5000 {
        let request = WriteRequest::set(["k", &(i % 100).to_string()], json!(i));
        issued.push(request.client_op_id.to_string());
        futures.push(Box::pin(app.write(request)));
    }
    let results = poll_once_then_await(futures).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test]
async fn a_file_write_then_a_set_land_in_call_order_even_polled_in_reverse() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let dir = std::env::temp_dir().join(format!("dust-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.txt");
    std::fs::write(&file, b"hello").unwrap();

    let put = WriteRequest::put_file_from(["files", "a"], &file);
    let set = WriteRequest::set(["after"], json!(1));
    let issued = vec![put.client_op_id.to_string(), set.client_op_id.to_string()];
    let put = app.write(put);
    let set = app.write(set);
    // The set is polled first: it still waits for the file write made before it.
    let (set, put) = within("writes", async { tokio::join!(set, put) }).await;
    assert!(put.is_ok() && set.is_ok(), "{put:?} {set:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_dropped_or_invalid_write_never_holds_up_the_writes_made_after_it() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let dropped = app.set(["dropped"], json!(1));
    let invalid = app.write(WriteRequest::put_file_from(["f"], "/definitely/not/here"));
    let kept = WriteRequest::set(["kept"], json!(2));
    let issued = vec![kept.client_op_id.to_string()];
    let kept = app.write(kept);
    drop(dropped);
    let (kept, invalid) = within("writes", async { tokio::join!(kept, invalid) }).await;
    assert!(kept.is_ok(), "{kept:?}");
    assert!(
        matches!(invalid, Err(WriteError::Invalid(_))),
        "{invalid:?}"
    );
    assert_applied_once_in_order(&server, STORE, &issued).await;
    assert_eq!(
        logged_ids(&server, STORE).await.len(),
        1,
        "the dropped write never left"
    );
}

#[tokio::test]
async fn with_a_full_outbox_writes_polled_out_of_order_still_go_out_in_call_order() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .outbox_capacity(1)
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let requests: Vec<WriteRequest> = (0..20)
        .map(|i| WriteRequest::set(["n"], json!(i)))
        .collect();
    let issued: Vec<String> = requests
        .iter()
        .map(|r| r.client_op_id.to_string())
        .collect();
    let mut futures: Vec<WriteFuture<'_>> = requests
        .into_iter()
        .map(|r| Box::pin(app.write(r)) as WriteFuture<'_>)
        .collect();
    futures.reverse();
    let results = poll_once_then_await(futures).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_catching_up_a_backlog_under_live_writes_ends_equal_to_the_server() {
    let server = server().await;
    let writer_engine = MemoryEngine::new();
    let writer = connect(&server, &writer_engine).await;
    let app = writer.store(STORE).unwrap();
    // A backlog of 2,500 ops (900 keys) written while the second device is offline.
    let backlog: Vec<_> = (0..2500)
        .map(|i| app.set(["k".to_owned(), (i % 900).to_string()], json!(i)))
        .collect();
    for result in within("backlog", join_all(backlog)).await {
        result.unwrap();
    }
    // The second device joins from 0 while the first keeps writing, one write at a time, so
    // live events interleave with the catch-up batches.
    let reader_engine = MemoryEngine::new();
    let reader = builder(&server)
        .engine(reader_engine.clone())
        .connect()
        .unwrap();
    for i in 0..300 {
        let key = (i * 7 % 900).to_string();
        within("live write", app.set(["k", key.as_str()], json!(-i)))
            .await
            .unwrap();
    }
    let control = dust(&server);
    let server_seq = control.store_info(STORE).await.unwrap().seq;
    assert_eq!(server_seq, 2800);
    wait_for("the reader reached the server's seq", || {
        reader_engine.seq(STORE) == server_seq
    })
    .await;
    let on_server: std::collections::BTreeMap<String, serde_json::Value> = control
        .entries(STORE)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.value))
        .collect();
    let on_reader = reader_engine.entries(STORE);
    let wrong = on_server
        .iter()
        .filter(|(path, value)| on_reader.get(*path) != Some(value))
        .count();
    assert_eq!(wrong, 0, "{wrong} of {} keys differ", on_server.len());
    assert_eq!(on_reader, on_server);
    drop(reader);
}

/// A rejoin policy that records the attempts it is asked about.
#[derive(Clone, Debug, Default)]
struct Recording(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);

impl phoenix_channels::backoff::RejoinPolicy for Recording {
    fn rejoin_delay(
        &self,
        attempt: u32,
        _cause: &phoenix_channels::RejoinCause,
    ) -> Option<std::time::Duration> {
        self.0.lock().unwrap().push(attempt);
        Some(std::time::Duration::from_millis(20))
    }
}

#[tokio::test]
async fn after_a_server_close_the_store_rejoins_on_the_configured_rejoin_policy() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let policy = Recording::default();
    let connection = builder(&server)
        .engine(engine.clone())
        .rejoin_policy(policy.clone())
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    assert_eq!(server.control().close_channel(&format!("store:{STORE}")), 1);
    wait_for("left", || connection.info().joined_stores.is_empty()).await;
    wait_joined(&connection, STORE).await;
    assert_eq!(
        *policy.0.lock().unwrap(),
        vec![1],
        "the policy decided the rejoin"
    );
    let app = connection.store(STORE).unwrap();
    within("write", app.set(["k"], 1)).await.unwrap();
}

/// Waits until the server's op log of the store holds `n` ops.
async fn wait_for_ops(server: &dust_conformance::Server, n: usize) {
    within("ops on the server", async {
        while logged_ids(server, STORE).await.len() < n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_write_whose_rejection_was_lost_before_a_later_write_landed_fails_as_not_applied() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        // Long enough that only the events can answer the writes within the test's timeout.
        .unknown_outcome_settle(std::time::Duration::from_secs(60))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    within("first", app.set(["x"], 1)).await.unwrap();
    let control = server.control();
    let id = control.connections()[0].id;
    // What the server sends on this connection is held back: replies and events are lost in
    // the cut below.
    control
        .set_delay(id, std::time::Duration::from_secs(30))
        .unwrap();
    // The conflict's rejection is lost too, so nothing of it ever reaches the client.
    dust(&server).drop_next_write_reply();
    let rejected = app.write(WriteRequest::set(["x"], 2).if_match(999));
    let later = WriteRequest::set(["y"], 1);
    let later_id = later.client_op_id.to_string();
    let later = app.write(later);
    let answers = tokio::spawn(async move { tokio::join!(rejected, later) });
    wait_for_ops(&server, 2).await;
    control.drop_all();
    let (rejected, later) = within("answers", answers).await.unwrap();
    assert!(later.unwrap().is_from_event());
    assert!(
        matches!(rejected, Err(WriteError::NotApplied(_))),
        "{rejected:?}"
    );
    let logged = logged_ids(&server, STORE).await;
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1], later_id);
}

#[tokio::test]
async fn at_most_max_in_flight_writes_are_out_at_once_and_a_cut_applies_each_once_in_order() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .max_in_flight(4)
        .unknown_outcome_settle(std::time::Duration::from_secs(60))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    within("first", app.set(["x"], 0)).await.unwrap();
    let control = server.control();
    let id = control.connections()[0].id;
    // Replies and events are held back: the window stays full.
    control
        .set_delay(id, std::time::Duration::from_secs(30))
        .unwrap();
    let writes: Vec<WriteRequest> = (0..20).map(|i| WriteRequest::increment(["n"], i)).collect();
    let issued: Vec<String> = writes.iter().map(|w| w.client_op_id.to_string()).collect();
    let futures: Vec<_> = writes.into_iter().map(|w| app.write(w)).collect();
    let answers = tokio::spawn(join_all(futures));
    wait_for_ops(&server, 1 + 4).await;
    // Give a fifth write every chance to arrive: the server answers nothing meanwhile.
    let probe = within("a ping", dust(&server).store_info(STORE))
        .await
        .unwrap();
    assert_eq!(probe.seq, 5, "more than 4 writes were sent at once");
    control.drop_all();
    let results = within("answers", answers).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

/// Every write was answered; the server applied each at most once; the ones answered `Ok`
/// are in its log in issue order, the ones the server did not apply are not. (A write answered
/// `Indeterminate` may still be applied by its dead connection's channel process after the
/// settle time, so after newer writes: that is what at most once allows, and it is not counted
/// in the order.)
async fn assert_at_most_once_in_issue_order(
    server: &dust_conformance::Server,
    issued: &[String],
    results: &[Result<WriteAck, WriteError>],
) {
    assert_eq!(issued.len(), results.len());
    let position: std::collections::HashMap<&str, usize> = issued
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let logged = logged_ids(server, STORE).await;
    let ours: Vec<usize> = logged
        .iter()
        .filter_map(|id| position.get(id.as_str()).copied())
        .collect();
    let unique: std::collections::HashSet<usize> = ours.iter().copied().collect();
    assert_eq!(unique.len(), ours.len(), "a write was applied twice");
    let acked: Vec<usize> = ours
        .iter()
        .copied()
        .filter(|i| results[*i].is_ok())
        .collect();
    assert!(
        acked.windows(2).all(|pair| pair[0] < pair[1]),
        "acknowledged writes were applied out of issue order: {acked:?}"
    );
    for (i, result) in results.iter().enumerate() {
        let applied = unique.contains(&i);
        match result {
            Ok(_) => assert!(applied, "write {i} was acknowledged but is not in the log"),
            Err(WriteError::Indeterminate(_)) => {}
            Err(WriteError::NotApplied(_) | WriteError::CrashesChannel(_)) => {
                assert!(
                    !applied,
                    "write {i} failed as not applied but is in the log"
                )
            }
            Err(other) => panic!("write {i}: unexpected {other:?}"),
        }
    }
}

fn sets(n: usize) -> Vec<WriteRequest> {
    (0..n)
        .map(|i| WriteRequest::set(["k".to_owned(), i.to_string()], json!(i)))
        .collect()
}

/// Issues the writes, cuts the connection each time the log reaches one of `cuts`, and
/// returns the answers.
async fn write_through_cuts(
    server: &dust_conformance::Server,
    app: &dust_connection::Store,
    writes: &[WriteRequest],
    cuts: &[usize],
) -> Vec<Result<WriteAck, WriteError>> {
    let futures: Vec<_> = writes.iter().cloned().map(|w| app.write(w)).collect();
    let answers = tokio::spawn(join_all(futures));
    for &n in cuts {
        wait_for_ops(server, n).await;
        server.control().drop_all();
    }
    within("answers", answers).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_at_cuts_are_never_applied_twice_by_a_server_that_drains_dead_connections()
{
    let server = server().await;
    dust(&server).set_write_cost(Duration::from_millis(1));
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .unknown_outcome_settle(Duration::from_millis(500))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let writes = sets(700);
    let issued: Vec<String> = writes.iter().map(|w| w.client_op_id.to_string()).collect();
    let results = write_through_cuts(&server, &app, &writes, &[50, 200, 350, 500]).await;
    assert_at_most_once_in_issue_order(&server, &issued, &results).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // Only writes lost in transit at a cut can stay unknown: at most a window per cut.
    assert!(ok >= 700 - 4 * 64, "only {ok} of 700 acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_resends_only_what_did_not_land_after_the_settle_time() {
    let server = server().await;
    dust(&server).set_write_cost(Duration::from_millis(1));
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .unknown_outcome(UnknownOutcome::AtLeastOnce)
        .unknown_outcome_settle(Duration::from_millis(500))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let writes = sets(500);
    let issued: Vec<String> = writes.iter().map(|w| w.client_op_id.to_string()).collect();
    let results = write_through_cuts(&server, &app, &writes, &[50, 200, 350]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test]
async fn a_write_that_crashes_the_channel_twice_fails_and_the_writes_after_it_go_on() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .rejoin_policy(RejoinSchedule::default().with_schedule_ms([20]))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    dust(&server).crash_writes_at(Some("files/b"));
    let before = WriteRequest::set(["a"], 1);
    let bad = WriteRequest::put_file(["files", "b"], "content");
    let after = WriteRequest::set(["c"], 2);
    let ids = vec![
        before.client_op_id.to_string(),
        after.client_op_id.to_string(),
    ];
    let (before, bad, after) = within("answers", async {
        tokio::join!(app.write(before), app.write(bad), app.write(after))
    })
    .await;
    assert!(before.is_ok(), "{before:?}");
    assert_eq!(bad.unwrap_err(), WriteError::CrashesChannel(2));
    assert!(after.is_ok(), "{after:?}");
    let logged = logged_ids(&server, STORE).await;
    assert_eq!(logged, ids);
}

#[tokio::test]
async fn a_write_in_flight_at_a_channel_crash_is_resent_once_with_the_writes_after_it() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .rejoin_policy(RejoinSchedule::default().with_schedule_ms([20]))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    dust(&server).crash_next_write();
    let writes = sets(30);
    let issued: Vec<String> = writes.iter().map(|w| w.client_op_id.to_string()).collect();
    let futures: Vec<_> = writes.into_iter().map(|w| app.write(w)).collect();
    let results = within("answers", join_all(futures)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_dead_connection_never_applied_fail_as_indeterminate_and_newer_writes_go_on_after_the_settle_time()
 {
    let server = server().await;
    let control = server.control();
    dust(&server).set_write_cost(Duration::from_millis(20));
    // A dead connection's channel drops what it had not handled: those writes never land,
    // and nothing can tell the client so.
    control.set_drain_limit(Some(Duration::ZERO));
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .max_in_flight(8)
        .unknown_outcome_settle(Duration::from_millis(300))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let writes = sets(40);
    let issued: Vec<String> = writes.iter().map(|w| w.client_op_id.to_string()).collect();
    let results = write_through_cuts(&server, &app, &writes, &[3]).await;
    assert_at_most_once_in_issue_order(&server, &issued, &results).await;
    let indeterminate = results
        .iter()
        .filter(|r| matches!(r, Err(WriteError::Indeterminate(_))))
        .count();
    assert!(
        (1..=8).contains(&indeterminate),
        "{indeterminate} writes indeterminate: {results:?}"
    );
    let logged = logged_ids(&server, STORE).await.len();
    assert_eq!(logged + indeterminate, 40, "every other write landed once");
}
