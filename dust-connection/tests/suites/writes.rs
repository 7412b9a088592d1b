// The `writes` suite, run once per wire format: included by `tests/writes.rs` (JSON) and
// `tests/writes_msgpack.rs` (MessagePack), which set `FORMAT`.


use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::{
    ConnectionStatus, DeviceId, DustConnection, Fence, MemoryEngine, RejectReason, StoreStatus,
    WriteError, WriteRequest,
};
use phoenix_channels::transport::{ConnectRequest, StreamConnector};
use serde_json::json;

#[tokio::test]
async fn the_connect_url_is_the_seed_s_and_the_device_id_is_sent() {
    let server = server().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = seen.clone();
    let addr = server.local_addr();
    let connector = StreamConnector::new(move |request: ConnectRequest| {
        recorder.lock().unwrap().push(request.url.to_string());
        async move { tokio::net::TcpStream::connect(addr).await }
    });
    let connection = builder(&server)
        .device_id(DeviceId::new("dev_fixed"))
        .socket(move |s| s.connector(connector))
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let url = seen.lock().unwrap()[0].clone();
    assert_eq!(
        url,
        format!(
            "{}/websocket?capver=3&device_id=dev_fixed&token={TOKEN}&vsn={}",
            server.url("/ws/sync"),
            match FORMAT {
                dust_connection::Format::MessagePack => "3.0.0",
                _ => "2.0.0",
            }
        )
    );
    assert!(dust(&server).devices().contains_key("dev_fixed"));
    let info = connection.info();
    assert_eq!(info.status, ConnectionStatus::Connected);
    assert!(info.url.contains("token=REDACTED") && !info.url.contains(TOKEN));
    assert_eq!(info.device_id, "dev_fixed");
    assert_eq!(info.stores, [STORE]);
    assert_eq!(info.joined_stores, [STORE]);
    assert!(info.connected_at.is_some() && info.uptime.is_some());
    assert!(connection.is_connected());
}

/// Naming a store that was not configured is a lookup error when the store is looked up,
/// before any write, never a write error.
#[tokio::test]
async fn an_unknown_store_is_refused_at_lookup_not_as_a_write_error() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    assert_eq!(
        connection.store("acme/nope").unwrap_err(),
        dust_connection::UnknownStore("acme/nope".into())
    );
    let app = connection.store(STORE).unwrap();
    within("a write", app.set(["k"], 1)).await.unwrap();
}

#[tokio::test]
async fn generated_device_ids_look_like_the_seed_s_and_can_be_kept() {
    let id = DeviceId::generate();
    assert!(
        id.as_str().starts_with("dev_") && id.as_str().len() == 4 + 11,
        "{id}"
    );
    let dir = std::env::temp_dir().join(format!("dust-device-{}", std::process::id()));
    let file = dir.join("id");
    let first = DeviceId::load_or_generate(&file).unwrap();
    assert_eq!(DeviceId::load_or_generate(&file).unwrap(), first);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_token_provider_is_asked_on_every_connect() {
    let server = server().await;
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    let connection = DustConnection::builder(server.url("/ws/sync"))
        .format(FORMAT)
        .token_provider(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(TOKEN.to_owned()) }
        })
        .store(STORE)
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    server.control().drop_all();
    wait_for("reconnected twice", || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    wait_joined(&connection, STORE).await;
}

#[tokio::test]
async fn join_hands_capabilities_and_status_to_the_engine() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let _connection = connect(&server, &engine).await;
    let caps = engine.capabilities(STORE).unwrap();
    assert!(caps.can_read() && caps.can_write());
    assert!(!caps.scopes.is_empty());
    assert_eq!(engine.status(STORE), Some(StoreStatus::Connected));
    wait_for("catch-up complete", || engine.caught_up(STORE).is_some()).await;
    // The ack_seq push after catch_up_complete reaches the server.
    wait_for("ack recorded", || {
        dust(&server).acks(STORE).is_ok_and(|a| !a.is_empty())
    })
    .await;
}

#[tokio::test]
async fn every_op_is_acknowledged_with_its_reply_and_reaches_the_engine() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();

    let set = within(
        "set",
        app.set(["users", "ada"], json!({"name": "Ada", "langs": ["en"]})),
    )
    .await
    .unwrap();
    assert_eq!(set.store_seq(), Some(1));
    let merged = within("merge", app.merge(["users", "ada"], json!({"age": 36})))
        .await
        .unwrap();
    assert_eq!(merged.store_seq(), Some(2));
    within("increment", app.increment(["stats", "visits"], 5))
        .await
        .unwrap();
    within("increment", app.increment(["stats", "visits"], 2))
        .await
        .unwrap();
    within("add", app.add(["tags"], "rust")).await.unwrap();
    within("add", app.add(["tags"], "elixir")).await.unwrap();
    within("remove", app.remove(["tags"], "elixir"))
        .await
        .unwrap();
    let file = within(
        "put_file",
        app.put_file(
            ["files", "a.txt"],
            b"hello".to_vec(),
            Some("a.txt".into()),
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        file.hash(),
        Some("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    let deleted = within("delete", app.delete(["users", "ada", "age"]))
        .await
        .unwrap();
    assert!(deleted.store_seq().is_some());

    wait_for("the engine has every event", || {
        engine.seq(STORE) == deleted.store_seq().unwrap()
    })
    .await;
    assert_eq!(engine.get(STORE, "users/ada/name"), Some(json!("Ada")));
    assert_eq!(engine.get(STORE, "users/ada/age"), None);
    assert_eq!(
        engine.get(STORE, "stats/visits"),
        Some(json!(7)),
        "events carry the total"
    );
    assert_eq!(engine.get(STORE, "tags"), Some(json!(["rust"])));
    assert_eq!(
        engine
            .get(STORE, "files/a.txt")
            .and_then(|f| f.get("_type").cloned()),
        Some(json!("file"))
    );
    assert!(engine.gaps(STORE).is_empty());
}

#[tokio::test]
async fn leases_renew_release_and_fence_writes() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();

    let lease = within(
        "lease",
        app.lease(
            ["jobs", "nightly"],
            Duration::from_secs(30),
            Some("w1".into()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(lease.holder.as_deref(), Some("w1"));
    assert!(lease.token > 0 && !lease.expires_at.is_null());
    let busy = within(
        "lease again",
        app.lease(["jobs", "nightly"], Duration::from_secs(30), None),
    )
    .await;
    assert!(
        matches!(busy, Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::Held),
        "{busy:?}"
    );

    let fenced =
        WriteRequest::set(["jobs", "nightly", "state"], "running").fence(Fence::from(&lease));
    within("fenced write", app.write(fenced)).await.unwrap();
    let stale = WriteRequest::set(["jobs", "nightly", "state"], "stale")
        .fence(Fence::new(["jobs", "nightly"], lease.token + 1000));
    let stale = within("stale fence", app.write(stale)).await;
    assert!(
        matches!(stale, Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::Fenced),
        "{stale:?}"
    );

    let renewed = within("renew", app.renew(&lease, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(renewed.token, lease.token);
    let released = within("release", app.release(&renewed)).await.unwrap();
    assert_ne!(released.released(), Some(false));
    let again = within("release again", app.release(&renewed))
        .await
        .unwrap();
    assert_eq!(again.released(), Some(false), "a release that held nothing");
}

#[tokio::test]
async fn rejections_are_typed_with_their_payload_and_bad_writes_never_leave() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let first = within("set", app.set(["k"], 1)).await.unwrap();

    let conflict = within(
        "if_match",
        app.write(WriteRequest::set(["k"], 2).if_match(first.store_seq().unwrap() + 5)),
    )
    .await;
    assert!(
        matches!(conflict, Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::Conflict),
        "{conflict:?}"
    );
    let matched = within(
        "if_match ok",
        app.write(WriteRequest::set(["k"], 3).if_match(first.store_seq().unwrap())),
    )
    .await;
    assert!(matched.is_ok(), "{matched:?}");
    let exists = within(
        "if_absent",
        app.write(WriteRequest::set(["k"], 4).if_absent()),
    )
    .await;
    assert!(
        matches!(exists, Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::Exists),
        "{exists:?}"
    );

    let before = logged_ids(&server, STORE).await.len();
    for (bad, reason) in [
        (WriteRequest::set(["a", ""], 1), RejectReason::EmptySegment),
        (
            WriteRequest::merge(["a"], 1),
            RejectReason::MergeRequiresMapValue,
        ),
        (
            WriteRequest::increment(["a"], "x"),
            RejectReason::IncrementRequiresNumberValue,
        ),
        (
            WriteRequest::increment(["a"], 1).if_match(1),
            RejectReason::IfMatchUnsupportedOp,
        ),
    ] {
        let result = within("invalid", app.write(bad)).await;
        assert!(
            matches!(result, Err(WriteError::Invalid(ref r)) if r.reason == reason),
            "{result:?}"
        );
    }
    assert_eq!(
        logged_ids(&server, STORE).await.len(),
        before,
        "invalid writes are never sent"
    );
}

#[tokio::test]
async fn a_rate_limited_rejection_carries_retry_after_ms() {
    let server = server_with(
        DustConfig::new()
            .token(TokenConfig::new(TOKEN))
            .rate_limit(dust_conformance::dust::RateLimit::per_minute(2)),
    )
    .await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let mut limited = None;
    for n in 0..5 {
        if let Err(WriteError::Rejected(r)) = within("write", app.set(["n"], n)).await {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the third write is rate limited");
    assert_eq!(limited.reason, RejectReason::RateLimited);
    assert!(limited.retry_after_ms().is_some());
}

#[tokio::test]
async fn catch_up_brings_a_new_device_up_to_date_from_a_snapshot_then_events() {
    let server = server().await;
    let writer_engine = MemoryEngine::new();
    let writer = connect(&server, &writer_engine).await;
    let app = writer.store(STORE).unwrap();
    for n in 0..5 {
        within("set", app.set(["items", format!("i{n}").as_str()], n))
            .await
            .unwrap();
    }
    assert!(dust(&server).compact(STORE).await.unwrap().is_some());
    within("set", app.set(["items", "after"], "snapshot"))
        .await
        .unwrap();

    let reader_engine = MemoryEngine::new();
    let mut changes = reader_engine.subscribe();
    let _reader = connect(&server, &reader_engine).await;
    wait_for("caught up", || reader_engine.caught_up(STORE) == Some(6)).await;
    assert_eq!(
        reader_engine.get(STORE, "items/i3"),
        Some(json!(3)),
        "snapshot values are unwrapped"
    );
    assert_eq!(
        reader_engine.get(STORE, "items/after"),
        Some(json!("snapshot"))
    );
    let mut saw_snapshot = false;
    while let Ok(change) = changes.try_recv() {
        saw_snapshot |= matches!(change, dust_connection::Change::Snapshot { seq: 5, .. });
    }
    assert!(saw_snapshot);
}

#[tokio::test]
async fn state_changes_follow_the_seed_s_states() {
    let server = server().await;
    let connection = builder(&server).manual().connect().unwrap();
    let mut changes = connection.state_changes();
    assert_eq!(connection.info().status, ConnectionStatus::Disconnected);
    assert!(!connection.is_connected());
    assert!(connection.connect());
    let change = within("connected", changes.recv()).await.unwrap();
    assert_eq!(
        (change.from, change.to),
        (
            Some(ConnectionStatus::Disconnected),
            ConnectionStatus::Connected
        )
    );
    assert_eq!(change.stores, [STORE]);
    server.control().drop_all();
    let change = within("reconnecting", changes.recv()).await.unwrap();
    assert_eq!(
        (change.from, change.to),
        (
            Some(ConnectionStatus::Connected),
            ConnectionStatus::Reconnecting
        )
    );
    assert!(change.reason.is_some());
    let change = within("connected again", changes.recv()).await.unwrap();
    assert_eq!(change.to, ConnectionStatus::Connected);
}

/// An engine that records the `last_store_seq` it was asked for, around a `MemoryEngine`.
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryEngine,
    asked: Arc<Mutex<Vec<u64>>>,
}

#[async_trait::async_trait]
impl dust_connection::SyncEngine for Recording {
    async fn last_store_seq(&self, store: &str) -> u64 {
        let seq = self.inner.last_store_seq(store).await;
        self.asked.lock().unwrap().push(seq);
        seq
    }
    async fn handle_server_event(&self, store: &str, event: &dust_connection::ServerEvent) {
        self.inner.handle_server_event(store, event).await;
    }
    async fn handle_snapshot(&self, store: &str, snapshot: &dust_connection::Snapshot) {
        self.inner.handle_snapshot(store, snapshot).await;
    }
    async fn handle_server_reset(&self, store: &str, server_seq: u64) {
        self.inner.handle_server_reset(store, server_seq).await;
    }
}

#[tokio::test]
async fn join_params_come_from_the_engine_on_every_join() {
    use dust_connection::SyncEngine as _;
    let server = server().await;
    let engine = Recording::default();
    let connection = builder(&server).engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    for n in 0..3 {
        within("set", app.set(["k"], n)).await.unwrap();
    }
    wait_for("applied", || engine.inner.seq(STORE) == 3).await;
    server.control().drop_all();
    wait_for("rejoined with the engine's seq", || {
        engine.asked.lock().unwrap().as_slice() == [0, 3]
    })
    .await;
    wait_joined(&connection, STORE).await;
    // Nothing was replayed: the catch-up started after seq 3.
    within("set", app.set(["k"], 9)).await.unwrap();
    wait_for("applied", || engine.inner.seq(STORE) == 4).await;
    assert!(engine.inner.gaps(STORE).is_empty());
    assert_eq!(engine.inner.last_store_seq(STORE).await, 4);
}

#[tokio::test]
async fn put_file_reads_a_file_from_disk() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let file = std::env::temp_dir().join(format!("dust-put-file-{}.txt", std::process::id()));
    std::fs::write(&file, b"from disk").unwrap();
    let ack = within(
        "put_file",
        app.write(WriteRequest::put_file_from(["docs", "a"], &file)),
    )
    .await
    .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(ack.hash().is_some());
    wait_for("event applied", || engine.get(STORE, "docs/a").is_some()).await;
    let stored = engine.get(STORE, "docs/a").unwrap();
    assert_eq!(stored["size"], 9);
    assert_eq!(
        stored["filename"],
        json!(file.file_name().unwrap().to_str().unwrap())
    );
}
