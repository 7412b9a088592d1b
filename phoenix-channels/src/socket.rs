//! The socket handle and its builder.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use url::Url;

use crate::channel::ChannelBuilder;
use crate::driver::transport::{ConnectRequest, Connector, WebSocketConnector};
use crate::driver::{Command, Driver, SocketDriver};
use crate::error::{BuildError, SocketClosed};
use crate::proto::backoff::{ReconnectPolicy, RejoinPolicy};
use crate::proto::channel::ChannelId;
use crate::proto::message::{Inbound, Topic};
use crate::proto::socket::{CoreConfig, DisconnectReason, SocketStatus};

/// An error from a [`ConnectParamsProvider`].
pub type ProviderError = Box<dyn std::error::Error + Send + Sync>;

/// The connect params, headers and auth token of one connect attempt.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectParams {
    /// Query params of the connect URL (the socket's `connect/3` params).
    pub params: Vec<(String, String)>,
    /// HTTP headers of the upgrade request.
    pub headers: Vec<(String, String)>,
    /// A token sent in the `Sec-WebSocket-Protocol` header (Phoenix ≥ 1.8 `auth_token`).
    pub auth_token: Option<String>,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Params and headers often carry credentials: show names only.
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("ConnectParams")
            .field("params", &names(&self.params))
            .field("headers", &names(&self.headers))
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl ConnectParams {
    /// No params.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a query param.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the auth token.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }
}

/// Provides fresh connect params on every connect attempt (e.g. a token that expires).
///
/// Any `Fn() -> impl Future<Output = Result<ConnectParams, ProviderError>>` is a provider:
///
/// ```
/// use phoenix_channels::{ConnectParams, Socket};
///
/// # async fn fetch_token() -> Result<String, std::io::Error> { Ok("t".into()) }
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let builder = Socket::builder("wss://example.com/socket").params_provider(|| async {
///     let token = fetch_token().await?;
///     Ok(ConnectParams::new().param("token", token))
/// });
/// # Ok(()) }
/// ```
#[async_trait]
pub trait ConnectParamsProvider: Send + Sync + 'static {
    /// The params of the next connect attempt. An error fails the attempt, which counts as a
    /// failed connect ([`DisconnectReason::Provider`]) for the reconnect policy.
    async fn connect_params(&self) -> Result<ConnectParams, ProviderError>;
}

#[async_trait]
impl<F, Fut> ConnectParamsProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ConnectParams, ProviderError>> + Send,
{
    async fn connect_params(&self) -> Result<ConnectParams, ProviderError> {
        (self)().await
    }
}

/// How each connect attempt's request is made: the fixed parts, plus the provider's.
pub(crate) struct ConnectSetup {
    url: Url,
    fixed: ConnectParams,
    provider: Option<Arc<dyn ConnectParamsProvider>>,
}

impl ConnectSetup {
    pub(crate) async fn request(&self) -> Result<ConnectRequest, DisconnectReason> {
        let dynamic = match &self.provider {
            Some(p) => p
                .connect_params()
                .await
                .map_err(|e| DisconnectReason::Provider(e.to_string()))?,
            None => ConnectParams::default(),
        };
        let mut url = self.url.clone();
        {
            let params: Vec<&(String, String)> = self
                .fixed
                .params
                .iter()
                .chain(dynamic.params.iter())
                .collect();
            let mut query = url.query_pairs_mut();
            for (name, value) in &params {
                query.append_pair(name, value);
            }
            if !params.iter().any(|(name, _)| name == "vsn") {
                query.append_pair("vsn", "2.0.0");
            }
        }
        let mut request = ConnectRequest::new(url);
        request.headers = self
            .fixed
            .headers
            .iter()
            .chain(dynamic.headers.iter())
            .cloned()
            .collect();
        if let Some(token) = dynamic.auth_token.or_else(|| self.fixed.auth_token.clone()) {
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
            request.protocols = vec!["phoenix".into(), format!("base64url.bearer.phx.{encoded}")];
        }
        Ok(request)
    }
}

/// `endpoint` with the scheme mapped to `ws`/`wss` and `/websocket` appended to the path.
fn websocket_url(endpoint: &str) -> Result<Url, BuildError> {
    let mut url =
        Url::parse(endpoint).map_err(|e| BuildError::InvalidUrl(format!("{endpoint}: {e}")))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(BuildError::InvalidUrl(format!(
                "unsupported scheme `{other}`"
            )));
        }
    };
    if url.set_scheme(scheme).is_err() || url.host_str().is_none() {
        return Err(BuildError::InvalidUrl(format!("{endpoint}: no host")));
    }
    if !url.path().ends_with("/websocket") {
        let path = format!("{}/websocket", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// Query params whose values are shown in logs and `Debug` output; every other param's value
/// is redacted, since any name (`token`, `sig`, `jwt`, `session`, ...) may carry a credential.
pub const SHOWN_PARAMS: [&str; 1] = ["vsn"];

/// What stands for a hidden value in logs and `Debug` output.
const REDACTED: &str = "REDACTED";

/// The URL for logs and `Debug`: user name and password replaced, and every query value but
/// those of [`SHOWN_PARAMS`] replaced.
///
/// ```
/// use phoenix_channels::socket::redact_url;
/// let url = url::Url::parse("wss://ada:pw@h/socket/websocket?sig=abc&vsn=2.0.0").unwrap();
/// assert_eq!(redact_url(&url), "wss://REDACTED:REDACTED@h/socket/websocket?sig=REDACTED&vsn=2.0.0");
/// ```
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() {
        let _ = shown.set_username(REDACTED);
    }
    if url.password().is_some() {
        let _ = shown.set_password(Some(REDACTED));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if SHOWN_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    REDACTED.to_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if url.fragment().is_some() {
        shown.set_fragment(Some(REDACTED));
    }
    shown.to_string()
}

/// An endpoint as given to the builder, for `Debug`: redacted like [`redact_url`], and not
/// shown at all if it is not a URL (it could be anything).
fn redact_endpoint(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(url) => redact_url(&url),
        Err(_) => format!("<not a URL, {} bytes>", endpoint.len()),
    }
}

/// The default [`SocketBuilder::outgoing_limit`]: 4 MiB.
pub const DEFAULT_OUTGOING_LIMIT: usize = 4 << 20;

/// Waits for room in the outgoing buffer.
pub(crate) type RoomWait = Pin<
    Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send + Sync>,
>;

/// The outcome of [`Socket::reserve`].
pub(crate) enum Room {
    /// Reserved: this many bytes.
    Now(usize),
    /// Queued for room: this many bytes once the wait ends.
    Later(RoomWait, usize),
    /// No room, and not waiting.
    Full,
    /// The socket task is gone.
    Closed,
}

/// Defaults that channels take from their socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelDefaults {
    pub(crate) push_timeout: Duration,
    pub(crate) queue_capacity: usize,
}

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
    fn new(endpoint: String) -> Self {
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

    /// Time between heartbeats (default 30 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.core.heartbeat_interval = interval;
        self
    }

    /// How long a heartbeat may wait for its reply before the connection is dropped and
    /// reopened (default: the heartbeat interval).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.core.heartbeat_timeout = timeout;
        self
    }

    /// Sets the interval and, to the same value, the timeout of heartbeats.
    pub fn heartbeat(self, interval: Duration) -> Self {
        self.heartbeat_interval(interval)
            .heartbeat_timeout(interval)
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
    /// bytes; one bigger than the limit takes all of it, and goes alone.
    pub fn outgoing_limit(mut self, bytes: usize) -> Self {
        self.outgoing_limit = bytes;
        self
    }

    /// How long a connection must stay up (or until a heartbeat is answered) before it counts
    /// as healthy and the reconnect schedule starts over from its first delay (default 10 s).
    /// Until then, a drop counts as one more consecutive failure, so a server that accepts
    /// and then closes is redialled on the growing schedule.
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
        if self.core.heartbeat_interval.is_zero() || self.core.heartbeat_timeout.is_zero() {
            return Err(BuildError::InvalidConfig(
                "heartbeat interval and timeout must be positive",
            ));
        }
        if self.outgoing_limit == 0 || u32::try_from(self.outgoing_limit).is_err() {
            return Err(BuildError::InvalidConfig(
                "the outgoing limit must be between 1 byte and 4 GiB",
            ));
        }
        if self.core.join_timeout.is_zero() || self.connect_timeout.is_zero() {
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
        };
        let driver = Driver::new(
            self.core,
            setup,
            self.connector,
            self.connect_timeout,
            cmd_rx,
            status_tx,
            tap_tx.clone(),
            outgoing.clone(),
            &shown,
        );
        let shared = Arc::new(Shared {
            commands: cmd_tx,
            status: status_rx,
            tap: tap_tx,
            next_channel: AtomicU64::new(1),
            runtime,
            url: shown,
            defaults: self.defaults,
            outgoing,
            outgoing_limit: self.outgoing_limit,
            dropped_casts: AtomicU64::new(0),
        });
        Ok((Socket { shared }, SocketDriver::new(driver)))
    }
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<SocketStatus>,
    tap: broadcast::Sender<Inbound>,
    next_channel: AtomicU64,
    runtime: tokio::runtime::Handle,
    url: String,
    defaults: ChannelDefaults,
    /// Bytes of room for pushes and casts (see [`SocketBuilder::outgoing_limit`]).
    outgoing: Arc<Semaphore>,
    outgoing_limit: usize,
    dropped_casts: AtomicU64,
}

/// A Phoenix socket: a cheap `Clone` handle to the task that owns the connection.
///
/// The task connects, sends heartbeats, reconnects on the reconnect policy's schedule and
/// rejoins every joined channel after a reconnect. It stops on [`disconnect`](Self::disconnect),
/// when the reconnect policy gives up, or when the last handle (including every
/// [`Channel`](crate::Channel)) is dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use phoenix_channels::Socket;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = Socket::builder("ws://localhost:4000/socket")
///     .param("token", "secret")
///     .heartbeat(Duration::from_secs(30))
///     .connect()?;
/// socket.connected().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Socket {
    shared: Arc<Shared>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("url", &self.shared.url)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Socket {
    /// A builder for a socket at `endpoint`, e.g. `ws://localhost:4000/socket` (the path of
    /// the `socket` in the Phoenix endpoint; `/websocket` and `vsn=2.0.0` are added).
    pub fn builder(endpoint: impl Into<String>) -> SocketBuilder {
        SocketBuilder::new(endpoint.into())
    }

    /// A builder for a channel on `topic`.
    pub fn channel(&self, topic: impl Into<Topic>) -> ChannelBuilder<'_> {
        ChannelBuilder::new(self, topic.into())
    }

    /// The connect URL, without params, with credentials redacted.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The current status.
    pub fn status(&self) -> SocketStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver of the status, to await changes.
    pub fn status_watch(&self) -> watch::Receiver<SocketStatus> {
        self.shared.status.clone()
    }

    /// Waits until the socket is connected; fails if it stops first.
    pub async fn connected(&self) -> Result<(), SocketClosed> {
        let mut status = self.shared.status.clone();
        let result = status
            .wait_for(|s| {
                matches!(
                    s,
                    SocketStatus::Connected | SocketStatus::Disconnected { .. }
                )
            })
            .await
            .map(|s| s.clone());
        match result {
            Ok(SocketStatus::Connected) => Ok(()),
            Ok(SocketStatus::Disconnected { reason }) => Err(SocketClosed { reason }),
            _ => Err(SocketClosed { reason: None }),
        }
    }

    /// A receiver of every decoded inbound frame (replies, pushes, broadcasts, on every topic),
    /// for debugging and telemetry. It lags (and says so) rather than slowing the socket.
    pub fn tap(&self) -> broadcast::Receiver<Inbound> {
        let rx = self.shared.tap.subscribe();
        self.send(Command::Tap);
        rx
    }

    /// Closes the connection for good: pushes waiting for replies fail with
    /// [`PushError::SocketClosed`](crate::PushError::SocketClosed), channels close, and the
    /// task ends. Waits until that is done.
    pub async fn disconnect(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Disconnect { done: tx });
        let _ = rx.await;
    }

    pub(crate) fn send(&self, command: Command) {
        // If the task is gone, the command's reply sender is dropped with it, which its waiter
        // reads as "socket closed".
        let _ = self.shared.commands.send(command);
    }

    /// How many bytes of pushes and casts wait to be written to the connection (at most the
    /// [`outgoing_limit`](SocketBuilder::outgoing_limit)).
    pub fn outgoing_queued(&self) -> usize {
        self.shared
            .outgoing_limit
            .saturating_sub(self.shared.outgoing.available_permits())
    }

    /// How many casts [`Channel::cast_payload`](crate::Channel::cast_payload) dropped because
    /// the outgoing buffer was full.
    pub fn dropped_casts(&self) -> u64 {
        self.shared.dropped_casts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_dropped_cast(&self) {
        self.shared.dropped_casts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outgoing_limit(&self) -> usize {
        self.shared.outgoing_limit
    }

    /// Reserves `cost` bytes of the outgoing buffer (at most all of it). With `wait`, a
    /// reservation that cannot be made now joins the queue of those waiting for room (first
    /// come, first served, so pushes keep their call order).
    pub(crate) fn reserve(&self, cost: usize, wait: bool) -> Room {
        let cost = u32::try_from(cost.clamp(1, self.shared.outgoing_limit)).unwrap_or(u32::MAX);
        match self.shared.outgoing.clone().try_acquire_many_owned(cost) {
            Ok(permit) => {
                permit.forget();
                return Room::Now(cost as usize);
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Room::Closed,
            Err(tokio::sync::TryAcquireError::NoPermits) if !wait => return Room::Full,
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let mut acquire: RoomWait = Box::pin(self.shared.outgoing.clone().acquire_many_owned(cost));
        // Polled once now, to take its place in the queue.
        match acquire
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(Ok(permit)) => {
                permit.forget();
                Room::Now(cost as usize)
            }
            Poll::Ready(Err(_)) => Room::Closed,
            Poll::Pending => Room::Later(acquire, cost as usize),
        }
    }

    pub(crate) fn weak_commands(&self) -> mpsc::WeakUnboundedSender<Command> {
        self.shared.commands.downgrade()
    }

    pub(crate) fn next_channel_id(&self) -> ChannelId {
        ChannelId(self.shared.next_channel.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn defaults(&self) -> ChannelDefaults {
        self.shared.defaults
    }

    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.shared.runtime.spawn(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_get_websocket_and_ws_schemes() {
        let url = |e: &str| websocket_url(e).map(|u| u.to_string());
        assert_eq!(
            url("ws://h:4000/socket").unwrap(),
            "ws://h:4000/socket/websocket"
        );
        assert_eq!(
            url("https://h/socket/").unwrap(),
            "wss://h/socket/websocket"
        );
        assert_eq!(
            url("ws://h/socket/websocket").unwrap(),
            "ws://h/socket/websocket"
        );
        assert!(matches!(
            websocket_url("ftp://h/x"),
            Err(BuildError::InvalidUrl(_))
        ));
        assert!(matches!(
            websocket_url("not a url"),
            Err(BuildError::InvalidUrl(_))
        ));
    }

    #[tokio::test]
    async fn requests_carry_params_vsn_headers_and_the_token_subprotocol() {
        let setup = ConnectSetup {
            url: websocket_url("ws://h/socket").unwrap(),
            fixed: ConnectParams::new().param("a", "1").header("x-app", "demo"),
            provider: Some(Arc::new(|| async {
                Ok(ConnectParams::new()
                    .param("token", "t o")
                    .auth_token("abc?"))
            })),
        };
        let request = setup.request().await.unwrap();
        assert_eq!(
            request.url.as_str(),
            "ws://h/socket/websocket?a=1&token=t+o&vsn=2.0.0"
        );
        assert_eq!(request.headers, [("x-app".to_owned(), "demo".to_owned())]);
        // Standard alphabet, no padding ("abc?" → "YWJjPw").
        assert_eq!(
            request.protocols,
            ["phoenix", "base64url.bearer.phx.YWJjPw"]
        );
        assert_eq!(
            redact_url(&request.url),
            "ws://h/socket/websocket?a=REDACTED&token=REDACTED&vsn=2.0.0"
        );
    }

    #[test]
    fn every_query_value_but_the_allowed_ones_and_every_password_are_redacted() {
        let url = Url::parse(
            "ws://user:pa55@h:4000/socket/websocket?sig=s1&jwt=j2&session=s3&Token=t4&x=y5&vsn=2.0.0#f6",
        )
        .unwrap();
        let shown = redact_url(&url);
        for secret in ["user", "pa55", "s1", "j2", "s3", "t4", "y5", "f6"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            shown,
            "ws://REDACTED:REDACTED@h:4000/socket/websocket?sig=REDACTED&jwt=REDACTED&session=REDACTED&Token=REDACTED&x=REDACTED&vsn=2.0.0#REDACTED"
        );
        assert_eq!(
            redact_url(&Url::parse("ws://h/socket").unwrap()),
            "ws://h/socket"
        );
    }

    #[test]
    fn builder_debug_never_shows_the_endpoint_credentials() {
        let builder = Socket::builder("wss://ada:s3cret@h/socket?sig=abc123&vsn=2.0.0")
            .param("token", "t0ken")
            .auth_token("b3arer");
        let shown = format!("{builder:?}");
        for secret in ["ada", "s3cret", "abc123", "t0ken", "b3arer"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let shown = format!("{:?}", Socket::builder("ws//token=s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn a_failing_provider_fails_the_attempt_with_its_message() {
        let setup = ConnectSetup {
            url: websocket_url("ws://h/socket").unwrap(),
            fixed: ConnectParams::new(),
            provider: Some(Arc::new(|| async {
                Err::<ConnectParams, ProviderError>("no token".into())
            })),
        };
        assert_eq!(
            setup.request().await.unwrap_err(),
            DisconnectReason::Provider("no token".into())
        );
    }
}
