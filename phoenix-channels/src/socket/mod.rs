//! The socket handle and its builder.

mod builder;
mod connect;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

use crate::channel::ChannelBuilder;
use crate::driver::{Command, Driver, IoWake, ReplyReader};
use crate::error::SocketClosed;
use crate::proto::SocketStatus;
use crate::proto::channel::ChannelId;
use crate::proto::message::{Inbound, Topic};
pub use builder::SocketBuilder;
pub(crate) use connect::ConnectSetup;
pub use connect::{
    ConnectParams, ConnectParamsProvider, ProviderError, SHOWN_PARAMS, redact_endpoint, redact_url,
};

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

pub(super) struct Shared {
    pub(super) commands: mpsc::UnboundedSender<Command>,
    /// The socket task's state, for pushes written without crossing to the task.
    pub(super) driver: Weak<Mutex<Driver>>,
    /// What the connection wakes, for pushes that read their own replies.
    pub(super) io: Arc<IoWake>,
    pub(super) status: watch::Receiver<SocketStatus>,
    pub(super) tap: broadcast::Sender<Inbound>,
    pub(super) next_channel: AtomicU64,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) url: String,
    pub(super) defaults: ChannelDefaults,
    /// Bytes of room for pushes and casts (see [`SocketBuilder::outgoing_limit`]).
    pub(super) outgoing: Arc<Semaphore>,
    pub(super) outgoing_limit: usize,
    pub(super) dropped_casts: AtomicU64,
    /// The connector the driver opens connections with.
    pub(super) connector: Arc<dyn crate::transport::Connector>,
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
///     .heartbeat_interval(Duration::from_secs(30))
///     .connect()?;
/// socket.connected().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Socket {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("url", &self.shared.url)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

/// A handle that does not keep the socket's task alive.
#[derive(Clone, Debug)]
pub(crate) struct WeakSocket(Weak<Shared>);

impl WeakSocket {
    /// The socket, while a handle to it still exists.
    pub(crate) fn upgrade(&self) -> Option<Socket> {
        self.0.upgrade().map(|shared| Socket { shared })
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

    /// The connector this socket opens its connections with: to open other streams to the same
    /// server with the same settings ([`Connector::open_stream`]).
    ///
    /// [`Connector::open_stream`]: crate::transport::Connector::open_stream
    pub fn connector(&self) -> Arc<dyn crate::transport::Connector> {
        self.shared.connector.clone()
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

    /// Sends a push or cast command: a lone request is carried out at once on this thread when
    /// the socket task is idle (written straight to the connection); anything else is queued
    /// for the task.
    /// A push written this way takes the connection's readiness for its `reader` at once, so
    /// that a quick reply does not go to the socket task before the push is first polled.
    pub(crate) fn send_push(&self, command: Command, reader: Option<&ReplyReader>) {
        if let Some(driver) = self.shared.driver.upgrade()
            && let Ok(mut driver) = driver.try_lock()
            && driver.takes_now(&command)
        {
            driver.push_now(command, reader);
            return;
        }
        self.send(command);
    }

    /// What lets a push's task read the reply itself while the socket task is idle.
    pub(crate) fn reply_reader(&self) -> ReplyReader {
        ReplyReader::new(self.shared.driver.clone(), self.shared.io.clone())
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
        match self.shared.outgoing.try_acquire_many(cost) {
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

    pub(crate) fn downgrade(&self) -> WeakSocket {
        WeakSocket(Arc::downgrade(&self.shared))
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
