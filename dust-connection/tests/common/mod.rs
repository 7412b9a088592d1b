//! A Dust server emulation per test, and the assertions every fault test makes.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashSet;
use std::time::Duration;

use dust_conformance::dust::{DustConfig, DustControl, StoreAccess, TokenConfig};
use dust_conformance::{Server, ServerConfig};
use dust_connection::{DustConnection, DustConnectionBuilder, MemoryEngine};
use phoenix_channels::backoff::ReconnectSchedule;

pub const T: Duration = Duration::from_secs(15);
pub const TOKEN: &str = "dust_tok_test";
pub const STORE: &str = "acme/app";

pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(T, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub async fn server() -> Server {
    server_with(DustConfig::new().token(TokenConfig::new(TOKEN))).await
}

pub async fn server_with(config: DustConfig) -> Server {
    let config = config.token(
        TokenConfig::new("dust_tok_other").access(StoreAccess::Selected(vec!["acme/other".into()])),
    );
    within(
        "start",
        dust_conformance::start(ServerConfig::default().dust(config)),
    )
    .await
    .unwrap()
}

pub fn dust(server: &Server) -> DustControl {
    server.dust().expect("the dust socket is mounted")
}

/// A builder with fast reconnects.
pub fn builder(server: &Server) -> DustConnectionBuilder {
    DustConnection::builder(server.url("/ws/sync"))
        .token(TOKEN)
        .store(STORE)
        .socket(|s| s.reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 20, 50])))
}

pub async fn connect(server: &Server, engine: &MemoryEngine) -> DustConnection {
    let connection = builder(server).engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    connection
}

pub async fn wait_joined(connection: &DustConnection, store: &str) {
    within("store joined", async {
        while !connection.info().joined_stores.iter().any(|s| s == store) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The op log's client_op_ids.
pub async fn logged_ids(server: &Server, store: &str) -> Vec<String> {
    dust(server)
        .ops(store)
        .await
        .unwrap()
        .into_iter()
        .map(|op| {
            op.client_op_id
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| op.client_op_id.to_string())
        })
        .collect()
}

/// Every id in `issued` was applied exactly once, and in issue order.
pub async fn assert_applied_once_in_order(server: &Server, store: &str, issued: &[String]) {
    let logged = logged_ids(server, store).await;
    let ours: Vec<&String> = logged.iter().filter(|id| issued.contains(id)).collect();
    let unique: HashSet<&&String> = ours.iter().collect();
    assert_eq!(
        unique.len(),
        ours.len(),
        "a write was applied twice: {ours:?}"
    );
    assert_eq!(
        ours.len(),
        issued.len(),
        "a write was lost: issued {issued:?}, applied {ours:?}"
    );
    let issued_refs: Vec<&String> = issued.iter().collect();
    assert_eq!(ours, issued_refs, "writes were applied out of order");
}

/// A builder whose writes of unknown outcome after a lost connection are resent once the
/// settle time is over (`UnknownOutcome::AtLeastOnce`), for tests that cut connections with
/// writes in flight and expect every write to be answered `Ok`.
pub fn builder_resending(server: &Server) -> DustConnectionBuilder {
    builder(server)
        .unknown_outcome(dust_connection::UnknownOutcome::AtLeastOnce)
        .unknown_outcome_settle(Duration::from_millis(500))
}

/// [`connect`] with [`builder_resending`].
pub async fn connect_resending(server: &Server, engine: &MemoryEngine) -> DustConnection {
    let connection = builder_resending(server)
        .engine(engine.clone())
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    connection
}
