//! Offline first: an app writes while the server is unreachable, is killed (`kill -9`) with its
//! writes still queued, is started again, and every write it was told was queued lands once,
//! in order — from the durable outbox in a SQLite file.
//!
//! ```text
//! cargo run -p examples --example offline_first
//! ```
//!
//! The example runs the app as a child process of itself (so that it can really be killed),
//! against a Dust server emulation embedded in the parent.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dust_conformance::ServerConfig;
use dust_conformance::dust::{DustConfig, TokenConfig};
use dust_connection::{Database, DeviceId, DustConnection, MemoryEngine, WriteRequest};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

type Error = Box<dyn std::error::Error + Send + Sync>;

const TOKEN: &str = "dust_tok_offline";
const STORE: &str = "acme/todos";
const DEVICE: &str = "phone-1";
const TODOS: usize = 25;

/// The app: one durable connection. `write` queues the todos (printing each client op id once
/// it is on disk) and then waits forever, to be killed; `sync` answers what was recovered;
/// `read` reads the replica from the file, offline.
async fn app(mode: &str, url: &str, db: &Path) -> Result<(), Error> {
    let database = Database::open(db)?;
    // The replica is in the same file: readable at once, offline.
    let engine = MemoryEngine::open(&database)?;
    let dust = DustConnection::builder(url)
        .token(TOKEN)
        .device_id(DeviceId::new(DEVICE))
        .store(STORE)
        .engine(engine.clone())
        .durable_outbox(database)
        .connect()?;
    let todos = dust.store(STORE)?;
    if mode == "read" {
        let replica = engine.replica(STORE);
        let count = replica
            .get(["todos"])?
            .and_then(|todos| todos.as_object().map(|t| t.len()))
            .unwrap_or(0);
        println!(
            "offline     read {count} todos from the replica on disk (seq {})",
            replica.status().last_seq
        );
        if count != TODOS {
            return Err(format!("the replica on disk has {count} todos, not {TODOS}").into());
        }
        return Ok(());
    }
    if mode == "write" {
        for i in 0..TODOS {
            let write = WriteRequest::set(
                ["todos", &format!("{i:02}")],
                json!({"title": format!("todo {i}")}),
            );
            let queued = todos.queue(write).await?;
            println!("queued {}", queued.client_op_id());
        }
        std::future::pending::<()>().await;
    }
    let recovered = todos.recovered();
    println!("recovered {} writes", recovered.len());
    for write in recovered {
        let id = write.client_op_id().clone();
        let ack = tokio::time::timeout(Duration::from_secs(30), write).await??;
        println!("applied {id} at seq {:?}", ack.store_seq());
    }
    dust.disconnect().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    examples::init_logging();
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, url, db] = args.as_slice() {
        return app(mode, url, Path::new(db)).await;
    }

    // The server's address; nothing listens there yet: every connection attempt is refused.
    let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("ws://{address}/ws/sync");
    let dir = std::env::temp_dir().join(format!("dust-offline-first-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db: PathBuf = dir.join("app.db");
    println!("server      {url} (down)");
    println!("database    {}", db.display());

    // 1. The app writes offline; once every todo is queued (on disk), it is killed.
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["write", &url])
        .arg(&db)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut queued = Vec::new();
    while queued.len() < TODOS {
        let line = lines.next_line().await?.ok_or("the app ended early")?;
        if let Some(id) = line.strip_prefix("queued ") {
            queued.push(id.to_owned());
        }
    }
    child.start_kill()?;
    child.wait().await?;
    println!(
        "killed      the app, with {} writes queued offline",
        queued.len()
    );

    // 2. The server comes up; the app starts again on the same database and device id.
    let server = dust_conformance::start(
        ServerConfig::default()
            .listen(address)
            .dust(DustConfig::new().token(TokenConfig::new(TOKEN))),
    )
    .await?;
    println!("server      up at {}", server.url("/ws/sync"));
    let status = tokio::process::Command::new(std::env::current_exe()?)
        .args(["sync", &url])
        .arg(&db)
        .status()
        .await?;
    if !status.success() {
        return Err("the restarted app failed".into());
    }

    // 3. The proof, from the server's op log: each queued write exactly once, in order.
    let log = server
        .dust()
        .ok_or("no dust socket")?
        .client_op_ids(STORE)
        .await?;
    if log != queued {
        return Err(format!("the server applied {log:?}, not {queued:?}").into());
    }
    println!(
        "verified    all {} offline writes applied exactly once, in order",
        log.len()
    );

    // 4. The server goes away again; the app still reads everything, from its file.
    server.shutdown().await;
    let status = tokio::process::Command::new(std::env::current_exe()?)
        .args(["read", &url])
        .arg(&db)
        .status()
        .await?;
    if !status.success() {
        return Err("the offline read failed".into());
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
