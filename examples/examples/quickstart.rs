//! The quickstart: a Dust server emulation in-process, a connection with two stores, writes of
//! every kind, events arriving, and a connection dropped on purpose with writes queued — then
//! the proof, from the server's own op log, that every write was applied exactly once, in order.
//!
//! ```text
//! cargo run -p examples --example quickstart
//! ```

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::time::Duration;

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::layer::RetryRateLimited;
use dust_connection::{
    ConnectionStatus, DustConnection, Fence, MemoryEngine, Notice, WriteRequest,
};
use futures_util::future::join_all;
use phoenix_channels::backoff::ReconnectSchedule;
use serde_json::json;
use tower::retry::RetryLayer;

type Error = Box<dyn std::error::Error + Send + Sync>;

const TOKEN: &str = "dust_tok_quickstart";

#[tokio::main]
async fn main() -> Result<(), Error> {
    examples::init_logging();
    let bounded = Duration::from_secs(15);

    // 1. The server: the Dust socket at /ws/sync on a free loopback port.
    let server = dust_conformance::start(
        ServerConfig::default().dust(DustConfig::new().token(TokenConfig::new(TOKEN))),
    )
    .await?;
    let dust = server.dust().ok_or("no dust socket")?;
    println!("server      {}", server.url("/ws/sync"));

    // 2. The connection: two stores, an in-memory engine, and a user layer (retry on
    //    `rate_limited`, honouring `retry_after_ms`) in each store's write path.
    let engine = MemoryEngine::new();
    let connection = DustConnection::builder(server.url("/ws/sync"))
        .token(TOKEN)
        .store("acme/app")
        .store("acme/jobs")
        .engine(engine.clone())
        .layer(RetryLayer::new(RetryRateLimited::new(3)))
        .socket(|s| {
            s.reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 50, 100]))
        })
        .connect()?;
    let mut notices = connection.notices();
    tokio::spawn(async move {
        while let Ok(notice) = notices.recv().await {
            match notice {
                Notice::Joined {
                    store,
                    capabilities,
                } => {
                    println!("joined      {store} at seq {}", capabilities.store_seq)
                }
                Notice::Event { store, event } => {
                    println!(
                        "event       {store} #{} {} {} = {}",
                        event.store_seq, event.op, event.path, event.value
                    )
                }
                Notice::CatchUpComplete { store, through_seq } => {
                    println!("caught up   {store} through seq {through_seq}")
                }
                _ => {}
            }
        }
    });
    let app = connection.store("acme/app")?;
    let jobs = connection.store("acme/jobs")?;
    let mut issued: Vec<(String, String)> = Vec::new();
    let mut write = |store: &dust_connection::Store, request: WriteRequest| {
        issued.push((store.name().to_owned(), request.client_op_id.to_string()));
        let store = store.clone();
        async move { tokio::time::timeout(bounded, store.write(request)).await }
    };

    // 3. Writes of every kind.
    let ack = write(
        &app,
        WriteRequest::set(["users", "ada"], json!({"name": "Ada", "lang": "en"})),
    )
    .await??;
    println!("set         acked at seq {:?}", ack.store_seq());
    write(
        &app,
        WriteRequest::merge(["users", "ada"], json!({"born": 1815})),
    )
    .await??;
    write(&app, WriteRequest::increment(["stats", "visits"], 1)).await??;
    let lease_request = WriteRequest::lease(["nightly"], 30_000, Some("worker-1".into()));
    let lease = write(&jobs, lease_request)
        .await??
        .lease(&dust_connection::Path::new(["nightly"])?)
        .ok_or("no lease")?;
    println!(
        "lease       token {} held by {:?}",
        lease.token, lease.holder
    );
    let fenced = WriteRequest::set(["nightly", "state"], "running").fence(Fence::from(&lease));
    write(&jobs, fenced).await??;
    let file = write(
        &app,
        WriteRequest::put_file(["files", "hello.txt"], b"hello, dust".to_vec()),
    )
    .await??;
    println!("put_file    {:?}", file.hash());

    // 4. The connection drops while writes are queued: they wait, then go out once, in order.
    println!("dropping    the connection, with 20 increments queued");
    let mut changes = connection.state_changes();
    server.control().drop_all();
    // Queued once the client knows the connection is gone (a write sent into a connection as it
    // dies has an unknown outcome: by default it fails as `Indeterminate` rather than risk
    // being applied twice — see `UnknownOutcome`).
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(change) = changes.recv().await {
            if change.to != ConnectionStatus::Connected {
                break;
            }
        }
    })
    .await?;
    let queued: Vec<_> = (0..20)
        .map(|_| write(&app, WriteRequest::increment(["stats", "visits"], 1)))
        .collect();
    for result in join_all(queued).await {
        result??;
    }
    let release = WriteRequest::release(&lease);
    write(&jobs, release).await??;
    println!(
        "reconnected {} (every queued write acknowledged)",
        connection.info().status.as_str()
    );

    // 5. The proof, from the server's op log.
    let mut exactly_once = true;
    for store in ["acme/app", "acme/jobs"] {
        let logged: Vec<String> = dust
            .ops(store)
            .await?
            .into_iter()
            .map(|op| {
                op.client_op_id
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_default()
            })
            .collect();
        let ours: Vec<String> = issued
            .iter()
            .filter(|(s, _)| s == store)
            .map(|(_, id)| id.clone())
            .collect();
        let unique: HashSet<&String> = logged.iter().collect();
        let once_in_order = logged == ours && unique.len() == logged.len();
        exactly_once &= once_in_order;
        println!(
            "op log      {store}: {} writes issued, {} applied, exactly once in order: {once_in_order}",
            ours.len(),
            logged.len()
        );
    }
    // The engine applies the server's events: await the last one (bounded), without guessing
    // how long it takes.
    let visits = || engine.get("acme/app", "stats/visits");
    let mut changes = engine.subscribe();
    let applied = tokio::time::timeout(bounded, async {
        while visits() != Some(json!(21)) {
            // A change, or changes missed (`Lagged`): look again either way.
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changes.recv().await {
                break;
            }
        }
    })
    .await;
    println!("engine      stats/visits = {:?}", visits());
    if applied.is_err() || visits() != Some(json!(21)) {
        exactly_once = false;
    }

    connection.disconnect().await;
    server.shutdown().await;
    if !exactly_once {
        return Err("a write was lost or applied twice".into());
    }
    println!("done        every write was acknowledged and applied exactly once");
    Ok(())
}
