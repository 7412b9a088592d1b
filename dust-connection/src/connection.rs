//! The connection: its builder, its handle, its stores, and its status.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use futures_util::FutureExt as _;
use phoenix_channels::backoff::{RejoinPolicy, RejoinSchedule};
use phoenix_channels::{
    ConnectParams, ProviderError, Socket, SocketBuilder, SocketDriver, SocketStatus,
};
use rand::Rng as _;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt as _};

use crate::engine::{MemoryEngine, SyncEngine};
use crate::error::{BuildError, WriteError};
use crate::layer::{ChannelService, Outbox, TelemetryLayer, ValidateLayer};
use crate::store::{
    INPUT_CAPACITY, Notice, SharedRejoinPolicy, StoreHandler, UnknownOutcome, Worker, WorkerConfig,
    WorkerParts, default_join_params,
};
use crate::write::{IntoSegments, Lease, WriteAck, WriteRequest};

/// The write path of a store, as one boxed service (telemetry, the user's layers, validation,
/// outbox, push).
pub type WriteService = BoxCloneSyncService<WriteRequest, WriteAck, WriteError>;

type LayerFn = Arc<dyn Fn(WriteService) -> WriteService + Send + Sync>;
type SocketFn = Box<dyn FnOnce(SocketBuilder) -> SocketBuilder + Send>;

/// Join errors after which a store stops rejoining until asked.
pub const PERMANENT_JOIN_ERRORS: [&str; 3] = ["unauthorized", "store_not_allowed", "missing_scope"];

/// A device id: `dev_` + base64url of 8 random bytes, unless chosen.
///
/// ```no_run
/// use dust_connection::DeviceId;
/// // The same id across restarts of the app:
/// let id = DeviceId::load_or_generate("./.dust-device-id")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "dev_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// This id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id stored in `file`, or a new one written there (so a device keeps its id).
    pub fn load_or_generate(file: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let file = file.as_ref();
        match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => Ok(Self(text.trim().to_owned())),
            Ok(_) => Self::write_new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::write_new(file),
            Err(e) => Err(e),
        }
    }

    fn write_new(file: &std::path::Path) -> std::io::Result<Self> {
        let id = Self::generate();
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, &id.0)?;
        Ok(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Provides the token on every connect attempt (e.g. a token that rotates).
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// The token for the next connect attempt.
    async fn token(&self) -> Result<String, ProviderError>;
}

#[async_trait]
impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, ProviderError>> + Send,
{
    async fn token(&self) -> Result<String, ProviderError> {
        (self)().await
    }
}

enum TokenSource {
    Fixed(String),
    Provider(Arc<dyn TokenProvider>),
}

/// The connection's status, as the seed names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Not connected: not started yet, connecting for the first time, or stopped.
    Disconnected,
    /// Connected.
    Connected,
    /// The connection dropped; reconnecting with backoff.
    Reconnecting,
}

impl ConnectionStatus {
    /// `disconnected`, `connected` or `reconnecting`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
        }
    }
}

/// A change of the connection's status (the seed's `[:dustlayer, :connection, :state_change]`
/// telemetry event; also logged as a `tracing` event with target `dustlayer::connection`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateChange {
    /// The previous status (`None` for the first one).
    pub from: Option<ConnectionStatus>,
    /// The new status.
    pub to: ConnectionStatus,
    /// The connect URL, token redacted.
    pub url: String,
    /// The device id.
    pub device_id: String,
    /// The configured stores.
    pub stores: Vec<String>,
    /// Why, on a disconnect.
    pub reason: Option<String>,
}

/// A snapshot of the connection, as the seed's `info/1`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Info {
    /// The status.
    pub status: ConnectionStatus,
    /// The connect URL, token redacted.
    pub url: String,
    /// The device id.
    pub device_id: String,
    /// When the connection was (last) established.
    pub connected_at: Option<SystemTime>,
    /// Time since `connected_at`.
    pub uptime: Option<Duration>,
    /// The configured stores.
    pub stores: Vec<String>,
    /// The stores joined right now.
    pub joined_stores: Vec<String>,
}

impl Info {
    /// As JSON (for tools): `uptime_seconds` and `connected_at` in seconds since the epoch.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "status": self.status.as_str(),
            "url": self.url,
            "device_id": self.device_id,
            "connected_at": self.connected_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            "uptime_seconds": self.uptime.map(|d| d.as_secs()),
            "stores": self.stores,
            "joined_stores": self.joined_stores,
        })
    }
}

/// The connect URL as [`Info`] and [`StateChange`] show it: the socket's URL redacted as
/// phoenix-channels redacts it (user info and every query value but `vsn`), with the seed's
/// params appended as the socket sends them (`capver`, `device_id`, `token` redacted, `vsn`).
fn shown_url(socket_url: &str, device_id: &str) -> String {
    // The socket's own URL with every credential redacted (user info, every query value but
    // `vsn`), then the seed's params, whose values are known: only the token is hidden.
    let redacted = url::Url::parse(socket_url)
        .map(|url| phoenix_channels::socket::redact_url(&url))
        .and_then(|shown| url::Url::parse(&shown));
    let Ok(mut url) = redacted else {
        // The socket was built from a parsed URL, so this does not happen; never show more.
        return "(unparsable url)".to_owned();
    };
    url.query_pairs_mut()
        .append_pair("capver", "3")
        .append_pair("device_id", device_id)
        .append_pair("token", "REDACTED")
        .append_pair("vsn", "2.0.0");
    url.to_string()
}

#[cfg(test)]
mod shown_url_tests {
    use super::*;

    #[test]
    fn the_seed_params_join_an_existing_query_and_every_secret_is_redacted() {
        assert_eq!(
            shown_url("ws://h:4000/ws/sync/websocket", "dev_a"),
            "ws://h:4000/ws/sync/websocket?capver=3&device_id=dev_a&token=REDACTED&vsn=2.0.0"
        );
        assert_eq!(
            shown_url(
                "wss://user:pw@h/ws/sync/websocket?tenant=t&api_key=k&auth_token=x",
                "dev_b"
            ),
            "wss://REDACTED:REDACTED@h/ws/sync/websocket?tenant=REDACTED&api_key=REDACTED\
             &auth_token=REDACTED&capver=3&device_id=dev_b&token=REDACTED&vsn=2.0.0"
        );
    }

    #[tokio::test]
    async fn info_shows_an_endpoint_with_a_query_as_one_well_formed_url() {
        let connection = DustConnection::builder("ws://127.0.0.1:9/ws/sync?tenant=t&secret=s")
            .token("dust_tok_hidden")
            .device_id(DeviceId::new("dev_x"))
            .store("o/s")
            .manual()
            .connect()
            .unwrap();
        let url = connection.info().url;
        assert_eq!(
            url,
            "ws://127.0.0.1:9/ws/sync/websocket?tenant=REDACTED&secret=REDACTED\
             &capver=3&device_id=dev_x&token=REDACTED&vsn=2.0.0"
        );
        assert!(!url.contains("dust_tok_hidden") && url.matches('?').count() == 1);
    }
}

/// Configures a [`DustConnection`]; from [`DustConnection::builder`].
#[must_use = "a builder does nothing until `connect` is called"]
pub struct DustConnectionBuilder {
    url: String,
    token: Option<TokenSource>,
    device_id: Option<DeviceId>,
    stores: Vec<String>,
    engine: Option<Arc<dyn SyncEngine>>,
    layers: Vec<LayerFn>,
    socket: Vec<SocketFn>,
    outbox_capacity: usize,
    write_timeout: Duration,
    manual: bool,
    max_in_flight: usize,
    unknown_outcome_settle: Duration,
    unknown_outcome: UnknownOutcome,
    reorder_capacity: usize,
    gap_timeout: Duration,
    crash_limit: u32,
    rejoin_policy: Option<Arc<dyn RejoinPolicy>>,
}

impl fmt::Debug for DustConnectionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DustConnectionBuilder")
            .field("url", &phoenix_channels::socket::redact_endpoint(&self.url))
            .field("stores", &self.stores)
            .field("outbox_capacity", &self.outbox_capacity)
            .finish_non_exhaustive()
    }
}

impl DustConnectionBuilder {
    /// The token (must start with `dust_tok_`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Fixed(token.into()));
        self
    }

    /// A token asked on every connect attempt.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token = Some(TokenSource::Provider(Arc::new(provider)));
        self
    }

    /// The device id (default: a new one; see [`DeviceId::load_or_generate`] to keep one).
    pub fn device_id(mut self, id: DeviceId) -> Self {
        self.device_id = Some(id);
        self
    }

    /// Adds a store (`org/name` or a store UUID).
    pub fn store(mut self, name: impl Into<String>) -> Self {
        self.stores.push(name.into());
        self
    }

    /// The engine that keeps the stores' local state (default: a [`MemoryEngine`]).
    pub fn engine(mut self, engine: impl SyncEngine) -> Self {
        self.engine = Some(Arc::new(engine));
        self
    }

    /// A shared engine.
    pub fn engine_shared(mut self, engine: Arc<dyn SyncEngine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Adds a tower layer to every store's write path, inside telemetry and outside
    /// validation (the first added is the outermost). It sees each [`WriteRequest`] with its
    /// `client_op_id` already set, so a retry resends the same write.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<WriteService> + Send + Sync + 'static,
        L::Service: Service<WriteRequest, Response = WriteAck, Error = WriteError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<WriteRequest>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner))
        }));
        self
    }

    /// Adjusts the phoenix-channels socket (heartbeat, reconnect policy, connector, ...).
    pub fn socket(
        mut self,
        configure: impl FnOnce(SocketBuilder) -> SocketBuilder + Send + 'static,
    ) -> Self {
        self.socket.push(Box::new(configure));
        self
    }

    /// How many writes a store's outbox holds, queued or in flight (default 1024).
    pub fn outbox_capacity(mut self, capacity: usize) -> Self {
        self.outbox_capacity = capacity;
        self
    }

    /// How long a sent write waits for its reply before the store resynchronizes to learn its
    /// outcome (default 30 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// At most this many writes of a store are sent and unanswered at once; the others wait in
    /// the outbox, in order (default 64). It also bounds how many writes can be in doubt when
    /// a connection is lost.
    pub fn max_in_flight(mut self, writes: usize) -> Self {
        self.max_in_flight = writes;
        self
    }

    /// After a lost connection, the old connection's channel process may still apply the
    /// writes it received, and their events then arrive on the new join. After the new join's
    /// catch-up, a store whose writes were in flight holds them, and every newer write, for
    /// up to this long while their events may still arrive (default 3 s: the real server
    /// drains a dead connection's writes within a few seconds, and the in-flight window keeps
    /// that short). What is still unknown then is handled per [`unknown_outcome`](Self::unknown_outcome).
    pub fn unknown_outcome_settle(mut self, settle: Duration) -> Self {
        self.unknown_outcome_settle = settle;
        self
    }

    /// What to do with writes whose outcome is still unknown after the settle time (default
    /// [`UnknownOutcome::AtMostOnce`]: they fail with [`WriteError::Indeterminate`]).
    pub fn unknown_outcome(mut self, policy: UnknownOutcome) -> Self {
        self.unknown_outcome = policy;
        self
    }

    /// How many events a store holds while a hole below them is open (live events that
    /// overtook the catch-up, or a lost event), before it resynchronizes (default 10 000).
    pub fn reorder_capacity(mut self, events: usize) -> Self {
        self.reorder_capacity = events;
        self
    }

    /// How long a hole in a store's live events may stay open before the store resynchronizes
    /// (default 5 s).
    pub fn gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// A write that is the first unapplied write at this many consecutive crashes of its
    /// store's channel fails with [`WriteError::CrashesChannel`] (default 2), so the writes
    /// after it go on.
    pub fn crash_limit(mut self, crashes: u32) -> Self {
        self.crash_limit = crashes;
        self
    }

    /// The rejoin policy of every store's channel, which also governs the rejoin after the
    /// server closes a store's channel (default: [`RejoinSchedule::default`], stopping on
    /// [`PERMANENT_JOIN_ERRORS`]).
    pub fn rejoin_policy(mut self, policy: impl RejoinPolicy + 'static) -> Self {
        self.rejoin_policy = Some(Arc::new(policy));
        self
    }

    /// Builds without connecting (the seed's test mode): stores and writes work, writes wait,
    /// until [`DustConnection::connect`].
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Builds the connection and (unless manual) starts connecting. Must be called inside a
    /// tokio runtime.
    pub fn connect(self) -> Result<DustConnection, BuildError> {
        let token = self.token.ok_or(BuildError::Missing("token"))?;
        if self.stores.is_empty() {
            return Err(BuildError::Missing("store"));
        }
        let mut seen = BTreeSet::new();
        for store in &self.stores {
            if !seen.insert(store.clone()) {
                return Err(BuildError::DuplicateStore(store.clone()));
            }
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BuildError::Socket(phoenix_channels::BuildError::NoRuntime))?;
        let device_id = self.device_id.unwrap_or_else(DeviceId::generate);
        let engine = self.engine.unwrap_or_else(|| Arc::new(MemoryEngine::new()));

        // The seed's query: capver, device_id, token (alphabetical, as Elixir encodes its map),
        // then vsn, which phoenix-channels appends.
        let mut builder = Socket::builder(&self.url);
        match token {
            TokenSource::Fixed(token) => {
                builder = builder
                    .param("capver", "3")
                    .param("device_id", device_id.as_str())
                    .param("token", token);
            }
            TokenSource::Provider(provider) => {
                let device = device_id.as_str().to_owned();
                builder = builder.params_provider(move || {
                    let provider = provider.clone();
                    let device = device.clone();
                    async move {
                        let token = provider.token().await?;
                        Ok(ConnectParams::new()
                            .param("capver", "3")
                            .param("device_id", device)
                            .param("token", token))
                    }
                });
            }
        }
        for configure in self.socket {
            builder = configure(builder);
        }
        let (socket, driver) = builder.build()?;
        let url = shown_url(socket.url(), device_id.as_str());

        let rejoin_policy: Arc<dyn RejoinPolicy> = self.rejoin_policy.unwrap_or_else(|| {
            Arc::new(RejoinSchedule::default().stop_on_reasons(PERMANENT_JOIN_ERRORS))
        });
        let config = WorkerConfig {
            max_in_flight: self.max_in_flight,
            unknown_outcome_settle: self.unknown_outcome_settle,
            unknown_outcome: self.unknown_outcome,
            reorder_capacity: self.reorder_capacity,
            gap_timeout: self.gap_timeout,
            crash_limit: self.crash_limit,
            rejoin_policy: rejoin_policy.clone(),
        };
        let joined = Arc::new(Mutex::new(BTreeSet::new()));
        let (notices, _) = broadcast::channel(4096);
        let mut stores = BTreeMap::new();
        for name in &self.stores {
            let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_CAPACITY);
            let channel = socket
                .channel(format!("store:{name}"))
                .params(default_join_params())
                .rejoin_policy(SharedRejoinPolicy(rejoin_policy.clone()))
                .handler(StoreHandler { inputs: inputs_tx });
            drop(channel.join());
            let (submissions_tx, submissions_rx) = mpsc::unbounded_channel();
            let outbox = Outbox::new(submissions_tx, self.outbox_capacity);
            let store: Arc<str> = Arc::from(name.as_str());
            let worker = Worker::new(WorkerParts {
                store: store.clone(),
                leaf: ChannelService::new(channel.clone(), self.write_timeout),
                channel,
                engine: engine.clone(),
                inputs: inputs_rx,
                submissions: submissions_rx,
                joined_stores: joined.clone(),
                notices: notices.clone(),
                config: config.clone(),
            });
            runtime.spawn(worker.run());

            let mut service: WriteService =
                BoxCloneSyncService::new(ValidateLayer.layer(outbox.clone()));
            for layer in self.layers.iter().rev() {
                service = layer(service);
            }
            let service =
                BoxCloneSyncService::new(TelemetryLayer::new(store.clone()).layer(service));
            stores.insert(
                name.clone(),
                Store {
                    name: store,
                    service,
                    outbox,
                },
            );
        }

        let (changes, _) = broadcast::channel(256);
        let state = Arc::new(Mutex::new(ConnState {
            status: ConnectionStatus::Disconnected,
            connected_at: None,
        }));
        let inner = Arc::new(ConnInner {
            socket: socket.clone(),
            driver: Mutex::new(Some(driver)),
            stores,
            store_names: self.stores.clone(),
            url,
            device_id,
            state,
            joined,
            changes,
            notices,
            runtime,
        });
        let connection = DustConnection { inner };
        connection.emit_change(None, ConnectionStatus::Disconnected, None);
        connection.inner.runtime.spawn(watch_status(
            Arc::downgrade(&connection.inner),
            socket.status_watch(),
        ));
        if !self.manual {
            connection.connect();
        }
        Ok(connection)
    }
}

struct ConnState {
    status: ConnectionStatus,
    connected_at: Option<SystemTime>,
}

struct ConnInner {
    socket: Socket,
    driver: Mutex<Option<SocketDriver>>,
    stores: BTreeMap<String, Store>,
    store_names: Vec<String>,
    url: String,
    device_id: DeviceId,
    state: Arc<Mutex<ConnState>>,
    joined: Arc<Mutex<BTreeSet<String>>>,
    changes: broadcast::Sender<StateChange>,
    notices: broadcast::Sender<Notice>,
    runtime: tokio::runtime::Handle,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Follows the socket's status and turns it into the seed's connection states.
async fn watch_status(
    inner: std::sync::Weak<ConnInner>,
    mut status: tokio::sync::watch::Receiver<SocketStatus>,
) {
    let mut ever_connected = false;
    while status.changed().await.is_ok() {
        let current = status.borrow_and_update().clone();
        let Some(inner) = inner.upgrade() else { return };
        let connection = DustConnection { inner };
        let (to, reason) = match &current {
            SocketStatus::Connected => {
                ever_connected = true;
                (ConnectionStatus::Connected, None)
            }
            SocketStatus::Reconnecting { reason, .. } => {
                (ConnectionStatus::Reconnecting, Some(reason.to_string()))
            }
            SocketStatus::Connecting { .. } if ever_connected => {
                (ConnectionStatus::Reconnecting, None)
            }
            SocketStatus::Disconnected { reason } => (
                ConnectionStatus::Disconnected,
                reason.as_ref().map(ToString::to_string),
            ),
            _ => (ConnectionStatus::Disconnected, None),
        };
        let from = {
            let mut state = lock(&connection.inner.state);
            if state.status == to {
                continue;
            }
            if to == ConnectionStatus::Connected {
                state.connected_at = Some(SystemTime::now());
            }
            std::mem::replace(&mut state.status, to)
        };
        connection.emit_change(Some(from), to, reason);
    }
}

/// A connection to Dust: one socket, one channel per store, and a write path per store. A
/// cheap `Clone` handle.
///
/// ```no_run
/// use dust_connection::{DustConnection, MemoryEngine};
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev")
///     .store("acme/app")
///     .engine(engine.clone())
///     .connect()?;
/// let app = dust.store("acme/app")?;
/// let ack = app.set(["users", "ada"], json!({"name": "Ada"})).await?;
/// println!("applied at seq {:?}", ack.store_seq());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DustConnection {
    inner: Arc<ConnInner>,
}

impl fmt::Debug for DustConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DustConnection")
            .field("url", &self.inner.url)
            .field("stores", &self.inner.store_names)
            .finish_non_exhaustive()
    }
}

impl DustConnection {
    /// A builder for a connection to the Dust socket at `url`, e.g.
    /// `wss://dust.example.com/ws/sync` (`/websocket` and the params are added).
    pub fn builder(url: impl Into<String>) -> DustConnectionBuilder {
        DustConnectionBuilder {
            url: url.into(),
            token: None,
            device_id: None,
            stores: Vec::new(),
            engine: None,
            layers: Vec::new(),
            socket: Vec::new(),
            outbox_capacity: 1024,
            write_timeout: Duration::from_secs(30),
            manual: false,
            max_in_flight: 64,
            unknown_outcome_settle: Duration::from_secs(3),
            unknown_outcome: UnknownOutcome::AtMostOnce,
            reorder_capacity: 10_000,
            gap_timeout: Duration::from_secs(5),
            crash_limit: 2,
            rejoin_policy: None,
        }
    }

    fn emit_change(
        &self,
        from: Option<ConnectionStatus>,
        to: ConnectionStatus,
        reason: Option<String>,
    ) {
        let change = StateChange {
            from,
            to,
            url: self.inner.url.clone(),
            device_id: self.inner.device_id.to_string(),
            stores: self.inner.store_names.clone(),
            reason,
        };
        tracing::info!(
            target: "dustlayer::connection",
            from = from.map(|s| s.as_str()),
            to = to.as_str(),
            url = %change.url,
            device_id = %change.device_id,
            stores = ?change.stores,
            reason = change.reason.as_deref(),
            "state_change"
        );
        let _ = self.inner.changes.send(change);
    }

    /// Starts connecting a connection built with [`DustConnectionBuilder::manual`]; returns
    /// whether it started now (false if it was already started).
    pub fn connect(&self) -> bool {
        match lock(&self.inner.driver).take() {
            Some(driver) => {
                self.inner.runtime.spawn(driver);
                true
            }
            None => false,
        }
    }

    /// A configured store.
    pub fn store(&self, name: &str) -> Result<Store, WriteError> {
        self.inner
            .stores
            .get(name)
            .cloned()
            .ok_or_else(|| WriteError::UnknownStore(name.to_owned()))
    }

    /// The configured stores.
    pub fn stores(&self) -> &[String] {
        &self.inner.store_names
    }

    /// The device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The status, URL, device, uptime and stores.
    pub fn info(&self) -> Info {
        let (status, connected_at) = {
            let state = lock(&self.inner.state);
            (state.status, state.connected_at)
        };
        Info {
            status,
            url: self.inner.url.clone(),
            device_id: self.inner.device_id.to_string(),
            connected_at,
            uptime: connected_at.and_then(|t| SystemTime::now().duration_since(t).ok()),
            stores: self.inner.store_names.clone(),
            joined_stores: lock(&self.inner.joined).iter().cloned().collect(),
        }
    }

    /// Whether the connection is up (false while connecting, reconnecting, or stopped).
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.state).status == ConnectionStatus::Connected
    }

    /// The status changes from now on.
    pub fn state_changes(&self) -> broadcast::Receiver<StateChange> {
        self.inner.changes.subscribe()
    }

    /// What happens on the stores (joins, events, snapshots, catch-ups, status) from now on.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// The underlying socket.
    pub fn socket(&self) -> &Socket {
        &self.inner.socket
    }

    /// Closes the connection for good; writes not answered yet fail. The state change to
    /// `Disconnected` is emitted before this returns.
    pub async fn disconnect(&self) {
        self.connect();
        self.inner.socket.disconnect().await;
        let from = {
            let mut state = lock(&self.inner.state);
            (state.status != ConnectionStatus::Disconnected)
                .then(|| std::mem::replace(&mut state.status, ConnectionStatus::Disconnected))
        };
        if let Some(from) = from {
            self.emit_change(Some(from), ConnectionStatus::Disconnected, None);
        }
    }
}

/// A store of a connection: its write path. A cheap `Clone` handle.
///
/// Every write returns the server's acknowledgement ([`WriteAck`]) or why it was not applied
/// ([`WriteError`]). Writes go out in the order they are made, after the store has joined and
/// caught up; a write is answered exactly once, and never applied twice by a resend (unless
/// [`UnknownOutcome::AtLeastOnce`](crate::UnknownOutcome::AtLeastOnce) is chosen).
#[derive(Clone)]
pub struct Store {
    name: Arc<str>,
    service: WriteService,
    outbox: Outbox,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole write path as a tower service, to compose further.
    pub fn service(&self) -> WriteService {
        self.service.clone()
    }

    /// How many writes this store's outbox holds right now, queued or in flight: never more
    /// than [`DustConnectionBuilder::outbox_capacity`] (writes waiting for room are not in it).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Writes, waiting for its turn and for room in the outbox if it is full.
    ///
    /// The write takes its place in the store's issue order when this is called, not when the
    /// future is first polled: writes made one after the other are sent (and applied) in that
    /// order, however their futures are polled. Dropping the future gives up the place (and
    /// takes the write out of the outbox if it was not sent yet).
    pub fn write(
        &self,
        mut request: WriteRequest,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        request.order = self.outbox.order(true);
        self.service.clone().oneshot(request)
    }

    /// Writes without waiting for its turn or for room: fails with
    /// [`WriteError::OutboxFull`] if the outbox is full, if earlier writes of this store are
    /// still on their way to it, or if a layer is not ready.
    pub fn try_write(
        &self,
        mut request: WriteRequest,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        request.order = self.outbox.order(false);
        let mut service = self.service.clone();
        async move {
            match service.ready().now_or_never() {
                Some(Ok(ready)) => ready.call(request).await,
                Some(Err(error)) => Err(error),
                None => Err(WriteError::OutboxFull),
            }
        }
    }

    /// Sets `value` at `path`.
    pub fn set(
        &self,
        path: impl IntoSegments,
        value: impl Into<Value>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::set(path, value))
    }

    /// Deletes `path` and everything below it.
    pub fn delete(
        &self,
        path: impl IntoSegments,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::delete(path))
    }

    /// Merges the map `value` into `path`.
    pub fn merge(
        &self,
        path: impl IntoSegments,
        value: impl Into<Value>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::merge(path, value))
    }

    /// Adds `by` to the counter at `path`; the ack's `store_seq` is the op's seq.
    pub fn increment(
        &self,
        path: impl IntoSegments,
        by: impl Into<Value>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::increment(path, by))
    }

    /// Adds `member` to the set at `path`.
    pub fn add(
        &self,
        path: impl IntoSegments,
        member: impl Into<Value>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::add(path, member))
    }

    /// Removes `member` from the set at `path`.
    pub fn remove(
        &self,
        path: impl IntoSegments,
        member: impl Into<Value>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::remove(path, member))
    }

    /// Acquires a lease on `key` for `ttl`; the lease carries the token for renew, release and
    /// fences.
    pub fn lease(
        &self,
        key: impl IntoSegments,
        ttl: Duration,
        holder: Option<String>,
    ) -> impl Future<Output = Result<Lease, WriteError>> + Send + 'static {
        let request = WriteRequest::lease(key, ttl.as_millis() as u64, holder);
        let key = crate::write::Path::new(request.op.path().to_vec()).ok();
        let write = self.write(request);
        async move {
            let ack = write.await?;
            key.and_then(|key| ack.lease(&key)).ok_or_else(|| {
                WriteError::Rejected(crate::write::Rejection::unexpected(&Value::Object(
                    ack.reply().clone(),
                )))
            })
        }
    }

    /// Renews a lease for `ttl`.
    pub fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, WriteError>> + Send + 'static {
        let write = self.write(WriteRequest::renew(lease, ttl.as_millis() as u64));
        let key = lease.key.clone();
        async move {
            let ack = write.await?;
            ack.lease(&key).ok_or_else(|| {
                WriteError::Rejected(crate::write::Rejection::unexpected(&Value::Object(
                    ack.reply().clone(),
                )))
            })
        }
    }

    /// Releases a lease (`released() == Some(false)` in the ack when it was not held).
    pub fn release(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::release(lease))
    }

    /// Stores `content` as a file at `path`.
    pub fn put_file(
        &self,
        path: impl IntoSegments,
        content: impl Into<bytes::Bytes>,
        filename: Option<String>,
        content_type: Option<String>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::put_file(path, content).file_meta(filename, content_type))
    }

    /// Asks a store whose join was refused for good to try again.
    pub fn rejoin(&self) {
        self.outbox.rejoin();
    }
}
