//! [`SocketBuilder`]: the settings of a socket, checked when it is built.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use super::connect::{ConnectSetup, redact_endpoint, redact_url, websocket_url};
use super::{
    ChannelDefaults, ConnectParams, ConnectParamsProvider, DEFAULT_OUTGOING_LIMIT, Shared, Socket,
};
use crate::backoff::{ReconnectPolicy, RejoinPolicy};
use crate::driver::{Driver, SocketDriver};
use crate::error::BuildError;
use crate::frame::Serializer;
use crate::proto::{CoreConfig, SocketStatus};
use crate::transport::{Connector, WebSocketConnector};

/// Configures a [`Socket`]; from [`Socket::builder`].
#[must_use = "a builder does nothing until `connect` or `build` is called"]
pub struct SocketBuilder {
    endpoint: String,
    fixed: ConnectParams,
    provider: Option<Arc<dyn ConnectParamsProvider>>,
    core: CoreConfig,
    defaults: ChannelDefaults,
    connect_timeout: Duration,
    connector: Arc<dyn Connector>,
    outgoing_limit: usize,
    /// Set by `heartbeat_timeout`; otherwise the timeout is the interval.
    heartbeat_timeout: Option<Duration>,
    /// A setting that failed, reported by `build`.
    invalid: Option<BuildError>,
}

impl fmt::Debug for SocketBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketBuilder")
            .field("endpoint", &redact_endpoint(&self.endpoint))
            .field("fixed", &self.fixed)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl SocketBuilder {
    pub(super) fn new(endpoint: String) -> Self {
        Self {
            endpoint,
            fixed: ConnectParams::default(),
            provider: None,
            core: CoreConfig::default(),
            defaults: ChannelDefaults {
                push_timeout: Duration::from_secs(10),
                queue_capacity: 1024,
            },
            connect_timeout: Duration::from_secs(10),
            connector: Arc::new(WebSocketConnector::default()),
            outgoing_limit: DEFAULT_OUTGOING_LIMIT,
            heartbeat_timeout: None,
            invalid: None,
        }
    }

    /// Adds a connect param, sent on every connect attempt.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fixed.params.push((name.into(), value.into()));
        self
    }

    /// Adds an HTTP header to the upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fixed.headers.push((name.into(), value.into()));
        self
    }

    /// Sends this token in the `Sec-WebSocket-Protocol` header (Phoenix ≥ 1.8 `auth_token`).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.fixed.auth_token = Some(token.into());
        self
    }

    /// Asks `provider` for params, headers and token on every connect attempt; they are added
    /// to the fixed ones (its token wins over a fixed one).
    pub fn params_provider(mut self, provider: impl ConnectParamsProvider) -> Self {
        self.provider = Some(Arc::new(provider));
        self
    }

    /// Time between heartbeats (default 30 s). Unless
    /// [`heartbeat_timeout`](Self::heartbeat_timeout) is set, it is also the timeout.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.core.heartbeat_interval = interval;
        self
    }

    /// How long a heartbeat may wait for its reply before the connection is dropped and
    /// reopened (default: the heartbeat interval, as phoenix.js).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// The wire format: [`Serializer::Json`] (`vsn=2.0.0`, the default) or
    /// [`Serializer::MessagePack`] (`vsn=3.0.0`). The connect URL's `vsn` follows it (a `vsn`
    /// param set with [`param`](Self::param) is replaced).
    ///
    /// ```no_run
    /// use phoenix_channels::{Serializer, Socket};
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let socket = Socket::builder("ws://localhost:4000/ws")
    ///     .serializer(Serializer::MessagePack)
    ///     .connect()?;
    /// # Ok(()) }
    /// ```
    pub fn serializer(mut self, serializer: Serializer) -> Self {
        self.core.serializer = serializer;
        self
    }

    /// Default join and leave timeout of channels (default 10 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.core.join_timeout = timeout;
        self
    }

    /// Default push timeout of channels (default 10 s).
    pub fn push_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.push_timeout = timeout;
        self
    }

    /// How long one connect attempt (params provider, TCP, TLS, upgrade) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// When and whether to reconnect (default [`ReconnectSchedule`](crate::backoff::ReconnectSchedule)).
    pub fn reconnect_policy(mut self, policy: impl ReconnectPolicy + 'static) -> Self {
        self.core.reconnect = Arc::new(policy);
        self
    }

    /// Default rejoin policy of channels (default [`RejoinSchedule`](crate::backoff::RejoinSchedule)).
    pub fn rejoin_policy(mut self, policy: impl RejoinPolicy + 'static) -> Self {
        self.core.rejoin = Arc::new(policy);
        self
    }

    /// How many bytes of pushes and casts may wait to be written to the connection (default
    /// 4 MiB, at most 4 GiB): those sent by the handles and not yet taken by the socket task,
    /// and the frames the task holds for a connection that does not take them (a server that
    /// reads slowly or not at all). At the limit, [`Channel::push`](crate::Channel::push)
    /// waits for room, the `try_` methods and [`Channel::cast`](crate::Channel::cast) fail
    /// with [`PushError::OutgoingFull`](crate::PushError::OutgoingFull), and
    /// [`Channel::cast_payload`](crate::Channel::cast_payload) drops the cast and counts it
    /// ([`Socket::dropped_casts`]). A push is counted as its payload, topic and event plus 64
    /// bytes; one bigger than the limit takes all of it, and goes alone. Beyond this limit,
    /// what the client holds for a connection is tungstenite's write buffer (128 KiB and one
    /// frame) and the kernel's socket buffer.
    pub fn outgoing_limit(mut self, bytes: usize) -> Self {
        self.outgoing_limit = bytes;
        self
    }

    /// How long a connection must stay up (or until a heartbeat is answered) before it counts
    /// as healthy and the reconnect schedule starts over from its first delay (default 10 s).
    /// Until then, a drop counts as one more consecutive failure, so a server that accepts
    /// and then closes is redialled on the growing schedule. Zero resets it on every open (as
    /// phoenix.js does).
    pub fn healthy_after(mut self, after: Duration) -> Self {
        self.core.healthy_after = after;
        self
    }

    /// Default capacity of a channel's buffer of pushes waiting for the join (default 1024).
    pub fn push_buffer(mut self, capacity: usize) -> Self {
        self.core.push_buffer_capacity = capacity;
        self
    }

    /// Default number of messages that may wait for a channel's consumer (default 1024).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.defaults.queue_capacity = capacity;
        self
    }

    /// Trusts the root certificates in `pem` (one or more `CERTIFICATE` blocks) for `wss://`,
    /// besides the default roots, with whichever TLS feature is on (`rustls-ring` or
    /// `native-tls`): for a server with a private CA or a self-signed certificate. This sets
    /// the connector to a [`WebSocketConnector`] with these roots (replacing one set before);
    /// unusable PEM makes [`build`](Self::build) and [`connect`](Self::connect) fail with
    /// [`BuildError::Tls`].
    pub fn root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        match WebSocketConnector::new().with_root_certificates_pem(pem.as_ref()) {
            Ok(connector) => self.connector = Arc::new(connector),
            Err(e) => self.invalid = Some(BuildError::Tls(e)),
        }
        self
    }

    /// Opens connections with this connector instead of the default [`WebSocketConnector`].
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Arc::new(connector);
        self
    }

    /// Builds the socket and spawns its driver on the current tokio runtime. It starts
    /// connecting at once.
    pub fn connect(self) -> Result<Socket, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let (socket, driver) = self.build_with(runtime.clone())?;
        runtime.spawn(driver);
        Ok(socket)
    }

    /// Builds the socket and returns its driver, a future to spawn or await yourself (it ends
    /// when the socket is disconnected or every handle is dropped). Channel handlers are still
    /// spawned on the current runtime, so this too must be called inside one.
    ///
    /// Awaiting the driver on the task that pushes (with `select!` or `join!`) is the
    /// lowest-latency way to run a socket: a push and its reply then never cross between tasks
    /// (on tokio's multi-thread runtime, each crossing can wake another worker thread). The
    /// `bench_peers` example measures it: about a third less CPU per sequential round trip on
    /// the multi-thread runtime, and half the CPU per inbound event.
    ///
    /// ```no_run
    /// use phoenix_channels::Socket;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let (socket, driver) = Socket::builder("ws://localhost:4000/socket").build()?;
    /// let work = async {
    ///     let channel = socket.channel("room:lobby").stream().0;
    ///     channel.join().await?;
    ///     for i in 0..100 {
    ///         channel.push("ping", serde_json::json!({ "n": i })).await?;
    ///     }
    ///     Ok::<_, Box<dyn std::error::Error>>(())
    /// };
    /// tokio::select! {
    ///     outcome = work => outcome?,
    ///     () = driver => return Err("the socket stopped".into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<(Socket, SocketDriver), BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        self.build_with(runtime)
    }

    fn build_with(
        self,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Socket, SocketDriver), BuildError> {
        if let Some(invalid) = self.invalid {
            return Err(invalid);
        }
        let mut core = self.core;
        core.heartbeat_timeout = self.heartbeat_timeout.unwrap_or(core.heartbeat_interval);
        if core.heartbeat_interval.is_zero() || core.heartbeat_timeout.is_zero() {
            return Err(BuildError::InvalidConfig(
                "heartbeat interval and timeout must be positive",
            ));
        }
        if self.outgoing_limit == 0 || u32::try_from(self.outgoing_limit).is_err() {
            return Err(BuildError::InvalidConfig(
                "the outgoing limit must be between 1 byte and 4 GiB",
            ));
        }
        if core.join_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(BuildError::InvalidConfig(
                "join and connect timeouts must be positive",
            ));
        }
        let url = websocket_url(&self.endpoint)?;
        let shown = redact_url(&url);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        // The driver starts connecting as soon as it runs.
        let (status_tx, status_rx) = watch::channel(SocketStatus::Connecting { attempt: 1 });
        let (tap_tx, _) = broadcast::channel(1024);
        let outgoing = Arc::new(Semaphore::new(self.outgoing_limit));
        let setup = ConnectSetup {
            url,
            fixed: self.fixed,
            provider: self.provider,
            vsn: core.serializer.vsn(),
        };
        let driver = Driver::new(
            core,
            setup,
            self.connector.clone(),
            self.connect_timeout,
            cmd_rx,
            status_tx,
            tap_tx.clone(),
            outgoing.clone(),
            &shown,
        );
        let driver = SocketDriver::new(driver);
        let shared = Arc::new(Shared {
            commands: cmd_tx,
            driver: driver.shared(),
            io: driver.io(),
            status: status_rx,
            tap: tap_tx,
            next_channel: AtomicU64::new(1),
            runtime,
            url: shown,
            defaults: self.defaults,
            outgoing,
            outgoing_limit: self.outgoing_limit,
            dropped_casts: AtomicU64::new(0),
            connector: self.connector,
        });
        Ok((Socket { shared }, driver))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::mpsc;

    use crate::proto::DisconnectReason;
    use crate::transport::{BoxTransport, ConnectRequest, Connector};
    use crate::{Serializer, Socket};

    /// Reports the URL of each connect attempt, and fails it.
    #[derive(Debug)]
    struct UrlProbe(mpsc::UnboundedSender<String>);

    #[async_trait]
    impl Connector for UrlProbe {
        async fn connect(
            &self,
            request: &ConnectRequest,
        ) -> Result<BoxTransport, DisconnectReason> {
            let _ = self.0.send(request.url.to_string());
            Err(DisconnectReason::Http { status: 403 })
        }
    }

    async fn first_url(builder: crate::SocketBuilder) -> String {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let socket = builder.connector(UrlProbe(tx)).connect().unwrap();
        let url = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        socket.disconnect().await;
        url
    }

    #[tokio::test]
    async fn the_urls_vsn_follows_the_serializer() {
        let json = first_url(Socket::builder("ws://h/socket")).await;
        assert_eq!(json, "ws://h/socket/websocket?vsn=2.0.0");
        let msgpack = Socket::builder("ws://h/socket")
            .param("vsn", "2.0.0")
            .param("a", "1")
            .serializer(Serializer::MessagePack);
        assert_eq!(
            first_url(msgpack).await,
            "ws://h/socket/websocket?a=1&vsn=3.0.0"
        );
    }
}
