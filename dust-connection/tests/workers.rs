//! The outbox worker as a tower citizen: the caller's span travels with a write into the
//! worker, and the worker can be run on an executor the user chooses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format of this suite's connections (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::*;
use dust_connection::MemoryEngine;
use dust_connection::layer::Worker;
use serde_json::json;
use tracing::Instrument as _;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// A span's name and the names of its ancestors, nearest first.
type Lineage = (String, Vec<String>);

/// Records every span's lineage.
#[derive(Clone, Default)]
struct Ancestry(Arc<Mutex<Vec<Lineage>>>);

impl<S> tracing_subscriber::Layer<S> for Ancestry
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ancestors = span.scope().skip(1).map(|s| s.name().to_owned()).collect();
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), ancestors));
    }
}

impl Ancestry {
    fn of(&self, name: &str) -> Vec<Vec<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

// One thread: the worker and the server run where the subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn the_caller_s_span_is_the_parent_of_the_worker_s_send() {
    let ancestry = Ancestry::default();
    let subscriber = tracing_subscriber::registry().with(ancestry.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let store = connection.store(STORE).unwrap();

    let caller = tracing::info_span!("caller");
    within(
        "write",
        store.set(["a"], json!(1)).instrument(caller.clone()),
    )
    .await
    .unwrap();

    let sends = ancestry.of("dust_outbox_send");
    assert_eq!(sends.len(), 1, "one send: {sends:?}");
    assert_eq!(
        sends[0],
        ["dust_write", "caller"],
        "the send runs in the write's span, inside the caller's"
    );
}

#[tokio::test]
async fn workers_can_be_run_on_an_executor_of_the_user_s_choice() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let handed: Arc<Mutex<Vec<Worker>>> = Arc::default();
    let sink = handed.clone();
    let connection = builder(&server)
        .store("acme/two")
        .engine(engine.clone())
        .spawn_workers_with(move |worker| sink.lock().unwrap().push(worker))
        .connect()
        .unwrap();

    let workers: Vec<Worker> = std::mem::take(&mut *handed.lock().unwrap());
    let stores: BTreeSet<&str> = workers.iter().map(Worker::store).collect();
    assert_eq!(
        workers.len(),
        2,
        "one worker per store, handed over, not spawned"
    );
    assert_eq!(stores, BTreeSet::from([STORE, "acme/two"]));

    // Our own executor: a second runtime, on its own thread.
    let executor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for worker in workers {
        executor.spawn(worker);
    }
    wait_joined(&connection, STORE).await;
    let store = connection.store(STORE).unwrap();
    let ack = within("write", store.set(["a"], json!(1))).await.unwrap();
    assert_eq!(ack.store_seq(), Some(1));
    connection.disconnect().await;
    executor.shutdown_background();
}
