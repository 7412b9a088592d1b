//! The configuration of a connection: [`DustConnectionBuilder`], its settings and policies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_channels::backoff::{RejoinPolicy, RejoinSchedule};
use phoenix_channels::{ConnectParams, Socket, SocketBuilder};
use tokio::sync::broadcast;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::connection::{ConnInner, DustConnection};
use crate::device::{DeviceId, TokenProvider, TokenSource};
use crate::engine::{MemoryEngine, SyncEngine};
use crate::error::{BuildError, WriteError};
use crate::file::FileToken;
use crate::format::Format;
#[cfg(feature = "sqlite")]
use crate::layer::outbox_internal::Recovered;
use crate::layer::outbox_internal::{Journal, Journaled};
use crate::layer::outbox_internal::{Spawn, WorkerConfig};
use crate::layer::{ChannelService, OutboxLayer, TelemetryLayer, ValidateLayer, Worker};
use crate::status::{ConnectionStatus, Reported, shown_url, watch_status};
use crate::store::{Store, WriteService};
use crate::write::{WriteAck, WriteRequest};

type LayerFn = Arc<dyn Fn(WriteService) -> WriteService + Send + Sync>;
type SocketFn = Box<dyn FnOnce(SocketBuilder) -> SocketBuilder + Send>;

/// Join errors after which a store stops rejoining until asked.
pub const PERMANENT_JOIN_ERRORS: [&str; 3] = ["unauthorized", "store_not_allowed", "missing_scope"];

/// What the outbox does with writes whose outcome stays unknown: writes that were in flight
/// on a connection that was lost, whose old channel process may still have applied them, and
/// whose own `event` did not arrive within [`unknown_outcome_settle`] after the new join's
/// catch-up.
///
/// [`unknown_outcome_settle`]: crate::DustConnectionBuilder::unknown_outcome_settle
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownOutcome {
    /// Fail them with [`WriteError::Indeterminate`]; never resend (a write is applied at most
    /// once, and may be lost). The default.
    #[default]
    AtMostOnce,
    /// Resend them (a write is applied at least once, and may be applied twice if its old
    /// channel process applied it after the settle time).
    AtLeastOnce,
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
    spawn: Option<Spawn>,
    format: Format,
    #[cfg(feature = "sqlite")]
    durable_outbox: Option<crate::Database>,
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
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
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
            spawn: None,
            #[cfg(feature = "sqlite")]
            durable_outbox: None,
            unknown_outcome: UnknownOutcome::AtMostOnce,
            reorder_capacity: 10_000,
            gap_timeout: Duration::from_secs(5),
            crash_limit: 2,
            rejoin_policy: None,
            format: Format::Json,
        }
    }

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

    /// The wire format (default [`Format::Json`]; [`Format::MessagePack`] is Dust's
    /// `vsn=3.0.0`). Every guarantee holds in both, and the replica is the same.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The rejoin policy of every store's channel, which also governs the rejoin after the
    /// server closes a store's channel (default: [`RejoinSchedule::default`], stopping on
    /// [`PERMANENT_JOIN_ERRORS`]).
    pub fn rejoin_policy(mut self, policy: impl RejoinPolicy + 'static) -> Self {
        self.rejoin_policy = Some(Arc::new(policy));
        self
    }

    /// Runs each store's outbox [`Worker`] with `spawn` instead of spawning it on the tokio
    /// runtime `connect` is called in (the default), to choose its executor, name its task, or
    /// count it. A worker needs a tokio reactor for its timers; until it runs, its store's
    /// writes wait.
    ///
    /// ```no_run
    /// use dust_connection::DustConnection;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let writes = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    /// let handle = writes.handle().clone();
    /// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
    ///     .token("dust_tok_dev")
    ///     .store("acme/app")
    ///     .spawn_workers_with(move |worker| {
    ///         handle.spawn(worker);
    ///     })
    ///     .connect()?;
    /// # drop((dust, writes)); Ok(()) }
    /// ```
    pub fn spawn_workers_with(mut self, spawn: impl Fn(Worker) + Send + Sync + 'static) -> Self {
        self.spawn = Some(Arc::new(spawn));
        self
    }

    /// Builds without connecting (the seed's test mode): stores and writes work, writes wait,
    /// until [`DustConnection::connect`].
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Keeps each store's outbox on disk in `database`: a write is on disk, in order, before
    /// it counts as queued ([`Store::queue`](crate::Store::queue)) and before it is sent, and
    /// stays there until it is answered. The writes the database holds when the connection is
    /// built are recovered ([`Store::recovered`](crate::Store::recovered)): each one whose own
    /// event shows up in the store's catch-up is answered from it and never resent; the others
    /// are sent once, first, in their issue order (a write the crashed process had sent is
    /// waited for during [`unknown_outcome_settle`](Self::unknown_outcome_settle) first, in
    /// case its old connection's channel process still applies it).
    ///
    /// Recovered writes hold slots of the outbox's capacity (beyond it if they must: new writes
    /// then wait until enough of them are answered).
    ///
    /// A write that fails because the connection shut down ([`WriteError::Closed`]) stays in
    /// the database and goes out on the next start. Disk syncs are grouped: the writes that
    /// arrive together share one transaction.
    ///
    /// Use the same device id ([`device_id`](Self::device_id)) across restarts, and a
    /// [`MemoryEngine::open`](crate::MemoryEngine) on the same database, so that the catch-up
    /// starts from the replica's seq and the writes it confirms leave the outbox atomically.
    ///
    /// [`WriteError::Closed`]: crate::WriteError::Closed
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use dust_connection::{Database, DeviceId, DustConnection};
    ///
    /// let db = Database::open("app.db")?;
    /// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
    ///     .token("dust_tok_dev")
    ///     .device_id(DeviceId::new("laptop-1"))
    ///     .store("acme/app")
    ///     .durable_outbox(db)
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn durable_outbox(mut self, database: crate::Database) -> Self {
        self.durable_outbox = Some(database);
        self
    }

    /// Builds the connection and (unless manual) starts connecting. Must be called inside a
    /// tokio runtime.
    pub fn connect(mut self) -> Result<DustConnection, BuildError> {
        let token = self.token.take().ok_or(BuildError::Missing("token"))?;
        if self.stores.is_empty() {
            return Err(BuildError::Missing("store"));
        }
        let mut seen = BTreeSet::new();
        for store in &self.stores {
            if !seen.insert(store.clone()) {
                return Err(BuildError::DuplicateStore(store.clone()));
            }
        }
        let mut journals = Vec::with_capacity(self.stores.len());
        for name in &self.stores {
            journals.push(self.journal(&Arc::from(name.as_str()))?);
        }
        let mut journals = journals.into_iter();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BuildError::Socket(phoenix_channels::BuildError::NoRuntime))?;
        let device_id = self.device_id.unwrap_or_else(DeviceId::generate);
        let engine = self.engine.unwrap_or_else(|| Arc::new(MemoryEngine::new()));

        // The seed's query: capver, device_id, token (alphabetical, as Elixir encodes its map),
        // then vsn, which phoenix-channels appends.
        let mut builder = Socket::builder(&self.url);
        let file_token = match &token {
            TokenSource::Fixed(token) => FileToken::Fixed(token.clone()),
            TokenSource::Provider(provider) => FileToken::Provider(provider.clone()),
        };
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
        // The format decides the serializer, whatever a socket closure set.
        builder = builder.serializer(self.format.serializer());
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
            rejoin_policy,
            outbox_capacity: self.outbox_capacity,
        };
        let spawn: Spawn = self.spawn.unwrap_or_else(|| {
            let runtime = runtime.clone();
            Arc::new(move |worker: Worker| {
                runtime.spawn(worker);
            })
        });
        let (notices, _) = broadcast::channel(4096);
        let mut stores = BTreeMap::new();
        for name in &self.stores {
            let store: Arc<str> = Arc::from(name.as_str());
            let journaled = journals.next().unwrap_or_else(|| Journaled {
                journal: Journal::none(store.clone()),
                recovered: Vec::new(),
            });
            let outbox = OutboxLayer::new(
                socket.clone(),
                store.clone(),
                engine.clone(),
                notices.clone(),
                config.clone(),
                spawn.clone(),
                journaled,
            )
            .layer(ChannelService::new(self.write_timeout));
            let mut service: WriteService =
                BoxCloneSyncService::new(ValidateLayer::new(self.format).layer(outbox.clone()));
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
        let inner = Arc::new(ConnInner {
            socket: socket.clone(),
            driver: Mutex::new(Some(driver)),
            stores,
            store_names: self.stores.clone(),
            url,
            endpoint: self.url.clone(),
            file_token,
            device_id,
            reported: Mutex::new(Reported {
                status: ConnectionStatus::Disconnected,
                connected_at: None,
            }),
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

impl DustConnectionBuilder {
    /// A store's outbox journal, and the writes it holds.
    fn journal(&self, store: &Arc<str>) -> Result<Journaled, BuildError> {
        #[cfg(feature = "sqlite")]
        if let Some(database) = &self.durable_outbox {
            let recovered = crate::durable::outbox::pending(database, store)
                .map_err(|error| BuildError::Durable(error.to_string()))?
                .into_iter()
                .map(|pending| Recovered {
                    write: pending.write,
                    sent: pending.sent,
                })
                .collect();
            return Ok(Journaled {
                journal: Journal::durable(store.clone(), database.clone()),
                recovered,
            });
        }
        Ok(Journaled {
            journal: Journal::none(store.clone()),
            recovered: Vec::new(),
        })
    }
}
