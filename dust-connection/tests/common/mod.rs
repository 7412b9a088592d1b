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

/// A builder with fast reconnects, speaking the test binary's `FORMAT`.
pub fn builder(server: &Server) -> DustConnectionBuilder {
    DustConnection::builder(server.url("/ws/sync"))
        .format(crate::FORMAT)
        .token(TOKEN)
        .store(STORE)
        .socket(|s| s.reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 20, 50])))
}

pub async fn connect(server: &Server, engine: &MemoryEngine) -> DustConnection {
    let connection = builder(server).engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    connection
}

/// Waits until the store is joined, re-checking on the connection's events.
pub async fn wait_joined(connection: &DustConnection, store: &str) {
    wait_connection(connection, "store joined", || {
        connection.info().joined_stores.iter().any(|s| s == store)
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

/// The server's entries of `STORE`, by rendered path (values unwrapped).
pub async fn server_entries(
    server: &Server,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    dust(server)
        .entries(STORE)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.value))
        .collect()
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

/// Waits until `condition` holds, re-checking it on every change of the engine (no polling).
pub async fn wait_engine(engine: &MemoryEngine, what: &str, mut condition: impl FnMut() -> bool) {
    let mut changes = engine.subscribe();
    within(what, async {
        while !condition() {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changes.recv().await {
                panic!("{what}: the engine's changes ended");
            }
        }
    })
    .await;
}

/// Waits until `condition` holds, re-checking it on every notice and state change of the
/// connection (no polling).
pub async fn wait_connection(
    connection: &DustConnection,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut notices = connection.notices();
    let mut states = connection.state_changes();
    within(what, async {
        while !condition() {
            let closed = tokio::select! {
                n = notices.recv() => matches!(n, Err(RecvError::Closed)),
                s = states.recv() => matches!(s, Err(RecvError::Closed)),
            };
            assert!(!closed, "{what}: the connection's events ended");
        }
    })
    .await;
}

/// The number of `write` pushes a connection made through [`counting_writes`] has sent.
pub type SentWrites = std::sync::Arc<tokio::sync::watch::Sender<u64>>;

/// The builder with a connector that counts the `write` pushes it sends (the real WebSocket
/// connector underneath), to wait for "the client has sent N writes".
pub fn counting_writes(builder: DustConnectionBuilder) -> (DustConnectionBuilder, SentWrites) {
    let sent: SentWrites = std::sync::Arc::new(tokio::sync::watch::channel(0).0);
    let connector = CountingConnector {
        inner: phoenix_channels::transport::WebSocketConnector::new(),
        sent: sent.clone(),
    };
    (builder.socket(move |s| s.connector(connector)), sent)
}

/// Waits until at least `n` writes were sent in all.
pub async fn wait_sent(sent: &SentWrites, n: u64) {
    let mut rx = sent.subscribe();
    within("writes sent", rx.wait_for(|sent| *sent >= n))
        .await
        .unwrap();
}

#[derive(Debug)]
struct CountingConnector {
    inner: phoenix_channels::transport::WebSocketConnector,
    sent: SentWrites,
}

#[async_trait::async_trait]
impl phoenix_channels::transport::Connector for CountingConnector {
    async fn connect(
        &self,
        request: &phoenix_channels::transport::ConnectRequest,
    ) -> Result<phoenix_channels::transport::BoxTransport, phoenix_channels::DisconnectReason> {
        let inner = self.inner.connect(request).await?;
        Ok(Box::new(Counting {
            inner,
            sent: self.sent.clone(),
        }))
    }
}

struct Counting {
    inner: phoenix_channels::transport::BoxTransport,
    sent: SentWrites,
}

impl futures_util::Stream for Counting {
    type Item = Result<phoenix_channels::transport::Received, phoenix_channels::DisconnectReason>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl futures_util::Sink<phoenix_channels::transport::Outgoing> for Counting {
    type Error = phoenix_channels::DisconnectReason;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut *self.inner).poll_ready(cx)
    }

    fn start_send(
        mut self: std::pin::Pin<&mut Self>,
        item: phoenix_channels::transport::Outgoing,
    ) -> Result<(), Self::Error> {
        use phoenix_channels::frame::OutFrame;
        use phoenix_channels::transport::Outgoing;
        let is_write = match &item {
            Outgoing::Frame(OutFrame::Text(text)) => text.contains(r#","write","#),
            // A MessagePack frame: `[join_ref, ref, topic, event, payload]`.
            Outgoing::Frame(OutFrame::Binary(bytes)) => {
                match rmpv::decode::read_value(&mut &bytes[..]) {
                    Ok(rmpv::Value::Array(fields)) => {
                        fields.get(3).and_then(rmpv::Value::as_str) == Some("write")
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if is_write {
            self.sent.send_modify(|n| *n += 1);
        }
        std::pin::Pin::new(&mut *self.inner).start_send(item)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut *self.inner).poll_close(cx)
    }
}

/// Polls a future once (a write is queued on its first poll) and says whether it finished.
pub async fn poll_once<F: std::future::Future + Unpin>(
    future: &mut F,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx)))
        .await
}
