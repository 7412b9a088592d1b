//! `SingleFlight` across devices: separate `DustConnection`s (each its own device id and
//! replica) on one in-process emulation whose clock is manual, so a lease expires only when a
//! test advances the server's time. The computation runs once when every device stays up; a
//! leader that dies mid-computation is taken over after its lease expires; the heartbeat keeps
//! a lease past its TTL; a failed or dropped leader releases at once; a leader that lost its
//! lease takes the new holder's result.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this test binary speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use common::{STORE, TOKEN, connect, dust, server_with, within};
use dust_conformance::Server;
use dust_conformance::dust::{Clock, DustConfig, TokenConfig};
use dust_connection::{
    DustConnection, Flight, MemoryEngine, SingleFlight, SingleFlightError, Source, SubscribeOptions,
};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

const TTL: Duration = Duration::from_millis(300);
const KEY: &str = "reports/daily";
const LOCK: &str = "_dust:sf/reports/daily";

/// An emulation whose clock stands still until the test advances it.
async fn server() -> (Server, Clock) {
    let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let server = server_with(
        DustConfig::new()
            .token(TokenConfig::new(TOKEN))
            .clock(clock.clone()),
    )
    .await;
    (server, clock)
}

/// A device: its connection, its engine, and single flights on its store.
struct Device {
    connection: DustConnection,
    engine: MemoryEngine,
    flights: SingleFlight,
}

async fn device(server: &Server) -> Device {
    let engine = MemoryEngine::new();
    let connection = connect(server, &engine).await;
    let flights = SingleFlight::new(connection.store(STORE).unwrap(), engine.replica(STORE))
        .lease_ttl(TTL)
        .wait_timeout(Duration::from_secs(10));
    Device {
        connection,
        engine,
        flights,
    }
}

type Outcome = Result<Flight<String>, SingleFlightError<String>>;

#[tokio::test]
async fn the_computation_runs_once_and_every_device_gets_its_value() {
    let (server, _clock) = server().await;
    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(device(&server).await);
    }
    let ids: std::collections::HashSet<String> = devices
        .iter()
        .map(|d| d.connection.device_id().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "four devices");
    let runs = Arc::new(AtomicUsize::new(0));
    let (go, gate) = tokio::sync::watch::channel(false);
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let flights = d.flights.clone();
        let runs = runs.clone();
        let mut gate = gate.clone();
        let entered = entered_tx.clone();
        tasks.push(tokio::spawn(async move {
            // Sent in the same poll as `run`'s first one, which reads the replica: once all
            // four are in, a value published later is one they all waited for.
            entered.send(()).unwrap();
            let outcome: Outcome = flights
                .run(KEY, |_lease| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.wait_for(|go| *go).await.unwrap();
                    Ok(format!("s3://reports/daily-by-{i}"))
                })
                .await;
            outcome
        }));
    }
    for _ in 0..4 {
        within("every device in", entered.recv()).await.unwrap();
    }
    go.send(true).unwrap();
    let mut flights = Vec::new();
    for task in tasks {
        flights.push(within("a flight", task).await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "computed more than once");
    let value = &flights[0].value;
    assert!(flights.iter().all(|f| &f.value == value), "{flights:?}");
    let computed = flights
        .iter()
        .filter(|f| f.source == Source::Computed)
        .count();
    let awaited = flights
        .iter()
        .filter(|f| f.source == Source::Awaited)
        .count();
    assert_eq!((computed, awaited), (1, 3), "{flights:?}");
    // Published once, as JSON text (the Elixir and TS SDKs' encoding), and the lease released.
    let ops = dust(&server).ops(STORE).await.unwrap();
    let sets: Vec<_> = ops
        .iter()
        .filter(|op| op.op == "set" && op.path == KEY)
        .collect();
    assert_eq!(sets.len(), 1, "{ops:?}");
    assert_eq!(
        sets[0].value,
        serde_json::Value::String(serde_json::to_string(value).unwrap())
    );
    assert_eq!(dust(&server).entry(STORE, LOCK).await.unwrap(), None);
    // A later call reads the published value, without a lease.
    let later = devices[0]
        .flights
        .run(KEY, |_lease| async {
            Err::<String, _>("must not run".to_owned())
        })
        .await
        .unwrap();
    assert_eq!((&later.value, later.source), (value, Source::Cached));
}

/// Starts a leader on `d` whose computation says it started, then never ends.
fn stuck_leader(d: &Device) -> (tokio::task::JoinHandle<Outcome>, oneshot::Receiver<()>) {
    let flights = d.flights.clone();
    let (started, started_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                let _ = started.send(());
                std::future::pending::<Result<String, String>>().await
            })
            .await
    });
    (task, started_rx)
}

/// Starts a follower on `d` whose computation counts its runs and returns `value`.
fn follower(d: &Device, runs: &Arc<AtomicUsize>, value: &str) -> tokio::task::JoinHandle<Outcome> {
    let flights = d.flights.clone();
    let runs = runs.clone();
    let value = value.to_owned();
    tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(value)
            })
            .await
    })
}

#[tokio::test]
async fn a_leader_that_dies_mid_computation_is_taken_over_after_its_lease_expires() {
    let (server, clock) = server().await;
    let (a, b, c) = (
        device(&server).await,
        device(&server).await,
        device(&server).await,
    );
    let (leader, started) = stuck_leader(&a);
    within("the leader computes", started).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let b_run = follower(&b, &runs, "from-b");
    let c_run = follower(&c, &runs, "from-c");
    // The leader's device dies: its connection is gone, then its task (its release cannot
    // be sent). The lease stays on the server until it expires.
    a.connection.disconnect().await;
    leader.abort();
    assert!(within("the leader's end", leader).await.is_err());
    let lease = dust(&server).entry(STORE, LOCK).await.unwrap();
    assert_eq!(lease.map(|e| e.kind), Some("lease".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "taken over before expiry");
    // The server's time passes the TTL: the next try of a follower gets the lease.
    clock.advance(TTL * 2);
    let b_flight = within("b", b_run).await.unwrap().unwrap();
    let c_flight = within("c", c_run).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{b_flight:?} {c_flight:?}");
    assert_eq!(b_flight.value, c_flight.value);
    let mut sources = [b_flight.source, c_flight.source];
    sources.sort_by_key(|s| *s == Source::Awaited);
    assert_eq!(sources, [Source::Computed, Source::Awaited]);
    // And a device that comes back reads it.
    let a2 = device(&server).await;
    let again = a2
        .flights
        .run(KEY, |_lease| async {
            Err::<String, _>("must not run".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.source),
        (b_flight.value, Source::Cached)
    );
}

#[tokio::test]
async fn the_heartbeat_keeps_the_lease_past_its_ttl() {
    let (server, clock) = server().await;
    let (a, b) = (device(&server).await, device(&server).await);
    let (go, gate) = oneshot::channel::<()>();
    let flights = a.flights.clone();
    let (started, started_rx) = oneshot::channel();
    let leader = tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                let _ = started.send(());
                gate.await.unwrap();
                Ok::<_, String>("from-a".to_owned())
            })
            .await
    });
    within("the leader computes", started_rx).await.unwrap();
    let mut lock = b
        .engine
        .replica(STORE)
        .on_with(LOCK, SubscribeOptions::new().with_current(true))
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let b_run = follower(&b, &runs, "from-b");
    // Three times: the lease is written (acquired, then renewed) at the server's current
    // time, as the follower's replica shows, and the server's time moves two thirds of the
    // TTL on. Without renewals, the lease would expire on the second move and no write
    // would come.
    let ttl_ms = TTL.as_millis() as i64;
    for round in 0..3 {
        let now_ms = clock.now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        loop {
            let update = within(&format!("a renewal ({round})"), lock.next())
                .await
                .unwrap()
                .unwrap();
            let expires_at = update
                .value
                .as_ref()
                .and_then(|lease| lease["expires_at"].as_i64())
                .unwrap_or_else(|| panic!("not a lease: {update:?}"));
            if expires_at >= now_ms + ttl_ms {
                break;
            }
        }
        clock.advance(TTL * 2 / 3);
    }
    go.send(()).unwrap();
    let a_flight = within("a", leader).await.unwrap().unwrap();
    let b_flight = within("b", b_run).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the follower took over");
    assert_eq!(
        (a_flight.source, b_flight.source),
        (Source::Computed, Source::Awaited)
    );
    assert_eq!(b_flight.value, "from-a");
    let renewals = dust(&server)
        .ops(STORE)
        .await
        .unwrap()
        .into_iter()
        .filter(|op| op.op == "renew")
        .count();
    assert!(renewals >= 2, "{renewals} renewals");
}

#[tokio::test]
async fn a_failed_or_dropped_leader_releases_its_lease_at_once() {
    let (server, _clock) = server().await;
    let (a, b) = (device(&server).await, device(&server).await);
    // A computation that fails: the caller gets its error, the lease is released.
    let failed: Outcome = a
        .flights
        .run(KEY, |_lease| async { Err("no data yet".to_owned()) })
        .await;
    assert!(
        matches!(&failed, Err(SingleFlightError::Aborted(reason)) if reason == "no data yet"),
        "{failed:?}"
    );
    // A leader dropped mid-computation, its connection up: the lease is released, and a
    // follower takes over although the server's time stands still.
    let (leader, started) = stuck_leader(&a);
    within("the leader computes", started).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let b_run = follower(&b, &runs, "from-b");
    leader.abort();
    let b_flight = within("b", b_run).await.unwrap().unwrap();
    assert_eq!(
        (b_flight.value.as_str(), b_flight.source),
        ("from-b", Source::Computed)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_leader_that_lost_its_lease_takes_the_new_holder_s_result() {
    let (server, clock) = server().await;
    let (a, b) = (device(&server).await, device(&server).await);
    let (a_go, a_gate) = oneshot::channel::<()>();
    let (a_started, a_started_rx) = oneshot::channel();
    let flights = a.flights.clone();
    let leader = tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                let _ = a_started.send(());
                a_gate.await.unwrap();
                Ok::<_, String>("from-a".to_owned())
            })
            .await
    });
    within("a computes", a_started_rx).await.unwrap();
    // A stalls past its TTL (the server's time jumps): b takes the lease and computes.
    clock.advance(TTL * 3);
    let (b_go, b_gate) = oneshot::channel::<()>();
    let (b_started, b_started_rx) = oneshot::channel();
    let flights = b.flights.clone();
    let second = tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                let _ = b_started.send(());
                b_gate.await.unwrap();
                Ok::<_, String>("from-b".to_owned())
            })
            .await
    });
    within("b computes", b_started_rx).await.unwrap();
    // A finishes first: its publish is fenced; it waits for b's result instead of failing.
    a_go.send(()).unwrap();
    b_go.send(()).unwrap();
    let b_flight = within("b", second).await.unwrap().unwrap();
    let a_flight = within("a", leader).await.unwrap().unwrap();
    assert_eq!(
        (b_flight.value.as_str(), b_flight.source),
        ("from-b", Source::Computed)
    );
    assert_eq!(
        (a_flight.value.as_str(), a_flight.source),
        ("from-b", Source::Awaited)
    );
    let values: Vec<_> = dust(&server)
        .ops(STORE)
        .await
        .unwrap()
        .into_iter()
        .filter(|op| op.op == "set" && op.path == KEY)
        .map(|op| op.value)
        .collect();
    assert_eq!(values, vec![serde_json::json!("\"from-b\"")]);
}

#[tokio::test]
async fn a_value_that_is_not_a_result_and_a_foreign_replica_are_errors() {
    let (server, _clock) = server().await;
    let a = device(&server).await;
    within(
        "set",
        a.connection
            .store(STORE)
            .unwrap()
            .set(["reports", "raw"], 5),
    )
    .await
    .unwrap();
    let replica = a.engine.replica(STORE);
    common::wait_engine(&a.engine, "the write", || {
        replica.get("reports/raw").unwrap().is_some()
    })
    .await;
    let outcome: Outcome = a
        .flights
        .run("reports/raw", |_lease| async { Ok("x".to_owned()) })
        .await;
    assert!(
        matches!(outcome, Err(SingleFlightError::Decode(_))),
        "{outcome:?}"
    );
    let mismatched = SingleFlight::new(
        a.connection.store(STORE).unwrap(),
        a.engine.replica("acme/other"),
    );
    let outcome: Outcome = mismatched
        .run(KEY, |_lease| async { Ok("x".to_owned()) })
        .await;
    assert!(
        matches!(outcome, Err(SingleFlightError::StoreMismatch { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_stale_value_is_computed_again_and_served_stale_when_no_fresh_one_comes() {
    let (server, _clock) = server().await;
    let (a, b) = (device(&server).await, device(&server).await);
    let first: Outcome = a
        .flights
        .run(KEY, |_lease| async { Ok("v1".to_owned()) })
        .await;
    assert_eq!(first.unwrap().source, Source::Computed);
    // v1 is not fresh for b: b computes again and overwrites it.
    let wants = |wanted: &'static str| move |value: &serde_json::Value| value == wanted;
    let second: Outcome = b
        .flights
        .clone()
        .fresh(wants("v2"))
        .run(KEY, |_lease| async { Ok("v2".to_owned()) })
        .await;
    let second = second.unwrap();
    assert_eq!(
        (second.value.as_str(), second.source, second.stale),
        ("v2", Source::Computed, false)
    );
    // Only v3 is fresh, and its leader never finishes: a follower serves v2, marked stale,
    // at its wait timeout.
    let flights = a.flights.clone().fresh(wants("v3"));
    let (started, started_rx) = oneshot::channel();
    let _leader = tokio::spawn(async move {
        flights
            .run(KEY, |_lease| async move {
                let _ = started.send(());
                std::future::pending::<Result<String, String>>().await
            })
            .await
    });
    within("the leader computes", started_rx).await.unwrap();
    let waited: Outcome = b
        .flights
        .clone()
        .fresh(wants("v3"))
        .wait_timeout(TTL)
        .run(KEY, |_lease| async { Ok("never".to_owned()) })
        .await;
    let waited = waited.unwrap();
    assert_eq!(
        (waited.value.as_str(), waited.source, waited.stale),
        ("v2", Source::Cached, true)
    );
    // Without a last value, the same wait is a timeout.
    let flights = a.flights.clone();
    let (started, started_rx) = oneshot::channel();
    let _other = tokio::spawn(async move {
        flights
            .run("reports/other", |_lease| async move {
                let _ = started.send(());
                std::future::pending::<Result<String, String>>().await
            })
            .await
    });
    within("the other leader computes", started_rx)
        .await
        .unwrap();
    let timed_out: Outcome = b
        .flights
        .clone()
        .fresh(wants("v3"))
        .wait_timeout(TTL)
        .run("reports/other", |_lease| async { Ok("never".to_owned()) })
        .await;
    assert!(
        matches!(timed_out, Err(SingleFlightError::Timeout(t)) if t == TTL),
        "{timed_out:?}"
    );
}
