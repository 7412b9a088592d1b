//! The durable outbox: writes on disk before they count as queued, recovered after a restart
//! (a crash, or a shutdown with writes unanswered), answered from the catch-up when they were
//! applied, sent once, in issue order, when they were not.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this test binary speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use dust_connection::{
    Database, DeviceId, MemoryEngine, Notice, QueuedWrite, WriteError, WriteRequest,
};
use serde_json::json;

/// A fresh database file for one test.
fn database(name: &str) -> (Database, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("durable_outbox");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    (Database::open(&path).unwrap(), path)
}

fn write(i: usize) -> WriteRequest {
    WriteRequest::set(["items", &format!("{i:03}")], json!(i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_offline_survive_a_restart_and_land_once_in_issue_order() {
    let server = server().await;
    let (db, _) = database("offline");
    let device = DeviceId::new("laptop-1");

    // Offline: the connection never connects; every write is on disk when `queue` returns.
    let offline = builder(&server)
        .manual()
        .device_id(device.clone())
        .durable_outbox(db.clone())
        .connect()
        .unwrap();
    let app = offline.store(STORE).unwrap();
    let mut issued = Vec::new();
    let mut answers = Vec::new();
    for i in 0..40 {
        let queued = within("queued", app.queue(write(i))).await.unwrap();
        issued.push(queued.client_op_id().as_str().to_owned());
        answers.push(queued);
    }
    offline.disconnect().await;
    for answer in answers {
        assert_eq!(within("closed", answer).await, Err(WriteError::Closed));
    }
    let nothing_sent = dust(&server)
        .ops(STORE)
        .await
        .map_or(true, |ops| ops.is_empty());
    assert!(nothing_sent, "an offline write reached the server");
    drop((app, offline));

    // The next start recovers them; writes made now go after them.
    let engine = MemoryEngine::new();
    let workers = Workers::default();
    let spawned = workers.clone();
    let online = builder(&server)
        .device_id(device)
        .durable_outbox(db.clone())
        .engine(engine.clone())
        .spawn_workers_with(move |worker| spawned.lock().unwrap().push(tokio::spawn(worker)))
        .connect()
        .unwrap();
    let app = online.store(STORE).unwrap();
    let recovered = app.recovered();
    assert_eq!(
        recovered
            .iter()
            .map(|q| q.client_op_id().as_str().to_owned())
            .collect::<Vec<_>>(),
        issued
    );
    assert!(app.recovered().is_empty(), "taken once");
    let mut later = Vec::new();
    for i in 40..50 {
        let queued = within("queued", app.queue(write(i))).await.unwrap();
        issued.push(queued.client_op_id().as_str().to_owned());
        later.push(queued);
    }
    for answer in recovered.into_iter().chain(later) {
        within("applied", answer).await.unwrap();
    }
    assert_applied_once_in_order(&server, STORE, &issued).await;
    wait_engine(&engine, "the replica has every write", || {
        engine.get(STORE, "items/049") == Some(json!(49))
    })
    .await;
    assert_eq!(engine.get(STORE, "items/000"), Some(json!(0)));
    online.disconnect().await;
    drop(app);
    drop(online);
    // The workers end once every handle is gone.
    let handles: Vec<_> = workers.lock().unwrap().drain(..).collect();
    for handle in handles {
        within("the worker ends", handle).await.unwrap();
    }
    // Every answered write left the disk.
    let again = builder(&server)
        .manual()
        .durable_outbox(db)
        .connect()
        .unwrap();
    assert!(again.store(STORE).unwrap().recovered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_applied_before_a_cut_are_answered_from_the_catch_up_and_never_resent() {
    let server = server().await;
    let (db, _) = database("applied");
    let device = DeviceId::new("laptop-2");
    // The workers run where the test can kill them: a crash, with nothing done on the way out.
    let workers = Workers::default();
    let spawned = workers.clone();
    let first = builder(&server)
        .device_id(device.clone())
        .durable_outbox(db.clone())
        .write_timeout(Duration::from_secs(600))
        .spawn_workers_with(move |worker| spawned.lock().unwrap().push(tokio::spawn(worker)))
        .connect()
        .unwrap();
    wait_joined(&first, STORE).await;
    let app = first.store(STORE).unwrap();
    let mut notices = first.notices();
    // Applied by the server, their replies lost: the process stops before it learns.
    let mut issued = Vec::new();
    let mut pending: Vec<QueuedWrite> = Vec::new();
    for i in 0..5 {
        dust(&server).drop_next_write_reply();
        let queued = within("queued", app.queue(write(i))).await.unwrap();
        let id = queued.client_op_id().as_str().to_owned();
        wait_for_event(&mut notices, &id).await;
        issued.push(id);
        pending.push(queued);
    }
    crash(&workers).await;
    first.disconnect().await;
    drop((app, first, pending));

    let engine = MemoryEngine::new();
    let second = builder(&server)
        .device_id(device)
        .durable_outbox(db)
        .engine(engine.clone())
        // Were they resent, the settle time would pass first; it must not matter.
        .unknown_outcome_settle(Duration::from_secs(600))
        .connect()
        .unwrap();
    let app = second.store(STORE).unwrap();
    let recovered = app.recovered();
    assert_eq!(recovered.len(), 5);
    for answer in recovered {
        let ack = within("answered from its event", answer).await.unwrap();
        assert!(ack.is_from_event());
    }
    // And the store goes live at once: a new write is applied after them.
    let next = within("queued", app.queue(write(5))).await.unwrap();
    issued.push(next.client_op_id().as_str().to_owned());
    within("applied", next).await.unwrap();
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_but_never_received_are_sent_again_once_after_a_crash() {
    let server = server().await;
    let (db, _) = database("unreceived");
    let device = DeviceId::new("laptop-3");
    let workers = Workers::default();
    let spawned = workers.clone();
    let (first, sent) = counting_writes(
        builder(&server)
            .device_id(device.clone())
            .durable_outbox(db.clone())
            .spawn_workers_with(move |worker| spawned.lock().unwrap().push(tokio::spawn(worker))),
    );
    let first = first.connect().unwrap();
    wait_joined(&first, STORE).await;
    let app = first.store(STORE).unwrap();
    let before = within("queued", app.queue(write(0))).await.unwrap();
    let mut issued = vec![before.client_op_id().as_str().to_owned()];
    within("applied", before).await.unwrap();
    // The server stops reading: the next writes leave the client and never arrive.
    server.control().stall_all();
    let mut pending = Vec::new();
    for i in 1..4 {
        let queued = within("queued", app.queue(write(i))).await.unwrap();
        issued.push(queued.client_op_id().as_str().to_owned());
        pending.push(queued);
    }
    wait_sent(&sent, 4).await;
    crash(&workers).await;
    server.control().drop_all();
    first.disconnect().await;
    drop((app, first, pending));

    let second = builder(&server)
        .device_id(device)
        .durable_outbox(db)
        .unknown_outcome_settle(Duration::from_millis(300))
        .connect()
        .unwrap();
    let app = second.store(STORE).unwrap();
    let recovered = app.recovered();
    assert_eq!(recovered.len(), 3);
    for answer in recovered {
        let ack = within("resent and applied", answer).await.unwrap();
        assert!(!ack.is_from_event(), "answered by its own reply");
    }
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_writes_hold_outbox_slots_even_beyond_the_capacity() {
    let server = server().await;
    let (db, _) = database("capacity");
    let device = DeviceId::new("laptop-4");
    let offline = builder(&server)
        .manual()
        .device_id(device.clone())
        .durable_outbox(db.clone())
        .outbox_capacity(16)
        .connect()
        .unwrap();
    let app = offline.store(STORE).unwrap();
    let mut issued = Vec::new();
    for i in 0..10 {
        let queued = within("queued", app.queue(write(i))).await.unwrap();
        issued.push(queued.client_op_id().as_str().to_owned());
    }
    offline.disconnect().await;
    drop((app, offline));

    // Restarted with room for 4: the 10 recovered writes fill it and more.
    let restarted = builder(&server)
        .manual()
        .device_id(device)
        .durable_outbox(db)
        .outbox_capacity(4)
        .connect()
        .unwrap();
    let app = restarted.store(STORE).unwrap();
    assert_eq!(app.outbox_len(), 10);
    assert_eq!(
        within("full", app.try_write(write(10))).await,
        Err(WriteError::OutboxFull)
    );
    // A write that waits for room goes out after them.
    let later = app.queue(write(11));
    restarted.connect();
    for answer in app.recovered() {
        within("applied", answer).await.unwrap();
    }
    let later = within("queued once there is room", later).await.unwrap();
    issued.push(later.client_op_id().as_str().to_owned());
    within("applied", later).await.unwrap();
    assert_applied_once_in_order(&server, STORE, &issued).await;
    assert_eq!(app.outbox_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_resolves_when_the_write_is_queued_before_its_answer() {
    let server = server().await;
    for durable in [false, true] {
        let (db, _) = database(&format!("queue-{durable}"));
        let mut b = builder(&server).manual();
        if durable {
            b = b.durable_outbox(db);
        }
        let connection = b.connect().unwrap();
        let app = connection.store(STORE).unwrap();
        // Not connected: the write cannot be answered, but it is queued.
        let queued = within("queued", app.queue(write(1))).await.unwrap();
        assert!(queued.client_op_id().as_str().starts_with("op_"));
        connection.connect();
        within("applied", queued).await.unwrap();
        connection.disconnect().await;
    }
}

#[tokio::test]
async fn a_database_is_held_by_one_opener_at_a_time() {
    let (db, path) = database("exclusive");
    assert!(matches!(
        Database::open(&path),
        Err(dust_connection::DurableError::Busy(_))
    ));
    drop(db);
    Database::open(&path).unwrap();
}

/// Waits for the event of the write `id` (it was applied).
async fn wait_for_event(notices: &mut tokio::sync::broadcast::Receiver<Notice>, id: &str) {
    within("applied on the server", async {
        loop {
            if let Notice::Event { event, .. } = notices.recv().await.unwrap()
                && event.client_op_id.as_deref() == Some(id)
            {
                return;
            }
        }
    })
    .await;
}

type Workers = std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// Kills the workers where they stand (a crash: nothing is done on the way out), and waits
/// until they are gone.
async fn crash(workers: &Workers) {
    let handles: Vec<_> = workers.lock().unwrap().drain(..).collect();
    for handle in handles {
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    }
}
