//! State shared by the accept loop, the connections, the channels and the control handle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::channel::{Exit, SendError};
use crate::control::{ConnectionId, ConnectionInfo, ServerStats};
use crate::frame::{self, EncodeError, Outgoing, Payload, Protocol, Wire};
use crate::socket::{Assigns, SocketConfig};

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frame (or the close) queued for a connection's writer.
#[derive(Debug)]
pub(crate) struct Outbound {
    /// When it was queued: a configured delay counts from here.
    pub(crate) at: Instant,
    pub(crate) item: OutItem,
}

#[derive(Debug)]
pub(crate) enum OutItem {
    Frame(Wire),
    Close { code: u16, reason: String },
}

impl Outbound {
    pub(crate) fn frame(wire: Wire) -> Self {
        Self {
            at: Instant::now(),
            item: OutItem::Frame(wire),
        }
    }
}

impl Outbound {
    /// What it counts against the connection's outbound bound: its payload's bytes.
    fn size(&self) -> usize {
        match &self.item {
            OutItem::Frame(Wire::Text(text)) => text.len(),
            OutItem::Frame(Wire::Binary(bytes)) => bytes.len(),
            OutItem::Close { reason, .. } => reason.len(),
        }
    }
}

/// A connection's outbound queue accounting: the bytes queued and not yet handed to the
/// websocket, against the configured bound.
#[derive(Debug)]
pub(crate) struct OutQueue {
    bytes: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// Told once when the bound is crossed: the connection drops itself as a slow client.
    events: mpsc::UnboundedSender<ConnEvent>,
}

impl OutQueue {
    pub(crate) fn new(limit: usize, events: mpsc::UnboundedSender<ConnEvent>) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            events,
        }
    }

    /// The bytes queued now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// The writer took a frame off the queue.
    pub(crate) fn taken(&self, out: &Outbound) {
        let size = out.size();
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(size))
            });
    }

    /// Counts `size` more bytes, unless that crosses the bound: then nothing is counted, and
    /// the connection is told (once) that its client is too slow.
    fn admit(&self, size: usize) -> bool {
        let admitted = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(size).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !admitted && !self.overflowed.swap(true, Ordering::AcqRel) {
            let _ = self.events.send(ConnEvent::SlowClient);
        }
        admitted
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// The connection is gone.
    Closed,
    /// The bound is crossed: the connection is being dropped as a slow client.
    Full,
}

/// The sending side of a connection's outbound queue, bounded in bytes ([`OutQueue`]).
#[derive(Debug, Clone)]
pub(crate) struct OutTx {
    tx: mpsc::UnboundedSender<Outbound>,
    queue: Arc<OutQueue>,
}

impl OutTx {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Outbound>, queue: Arc<OutQueue>) -> Self {
        Self { tx, queue }
    }

    /// Queues a frame within the bound.
    pub(crate) fn send(&self, out: Outbound) -> Result<(), QueueError> {
        if self.tx.is_closed() {
            return Err(QueueError::Closed);
        }
        let size = out.size();
        if !self.queue.admit(size) {
            return Err(QueueError::Full);
        }
        self.tx.send(out).map_err(|_| {
            self.queue.bytes.fetch_sub(size, Ordering::AcqRel);
            QueueError::Closed
        })
    }

    /// Queues the close frame, whatever the bound (it ends the queue).
    pub(crate) fn send_close(&self, code: u16, reason: String) {
        let _ = self.tx.send(Outbound {
            at: Instant::now(),
            item: OutItem::Close { code, reason },
        });
    }
}

/// Commands and notifications a connection task handles besides its websocket.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A channel task ended by itself.
    ChannelExit {
        topic: String,
        instance: u64,
        exit: Exit,
    },
    /// Close the websocket with this code (after the queued frames).
    CloseSocket { code: u16, reason: String },
    /// Drop the TCP connection without a close frame; its channels drain their mailbox.
    Drop,
    /// Drop it and end its channels at once (a restart).
    Kill,
    /// Stop (or resume) reading and writing.
    Stall(bool),
    /// Crash (`phx_error`) or close (`phx_close`) the channel joined on this topic.
    EndChannel { topic: String, exit: Exit },
    /// Send these bytes as they are.
    Raw(Wire),
    /// Delay every outbound frame by this much.
    Delay(Duration),
    /// The outbound queue crossed its bound: drop the connection as a slow client.
    SlowClient,
}

/// What a channel task knows of its connection.
#[derive(Debug)]
pub(crate) struct ConnLink {
    pub(crate) id: ConnectionId,
    pub(crate) protocol: Protocol,
    pub(crate) path: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) assigns: Assigns,
    pub(crate) out: OutTx,
    pub(crate) events: mpsc::UnboundedSender<ConnEvent>,
    /// Set when the connection ends: what its channels send from then on is dropped.
    pub(crate) closed: AtomicBool,
}

impl ConnLink {
    /// Encodes and queues a message.
    pub(crate) fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Disconnected);
        }
        let wire = frame::encode(self.protocol, message)?;
        self.out
            .send(Outbound::frame(wire))
            .map_err(|_| SendError::Disconnected)
    }

    /// The connection is ending: [`ConnLink::send`] fails from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A broadcast subscriber: one joined channel.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) out: OutTx,
    pub(crate) protocol: Protocol,
}

/// A connection as the registry sees it.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) path: String,
    /// The socket's id for this connection (Phoenix's `id/1`), if any.
    pub(crate) socket_id: Option<String>,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) protocol: Protocol,
    pub(crate) topics: BTreeSet<String>,
    pub(crate) stalled: bool,
    pub(crate) delay: Duration,
    pub(crate) events: mpsc::UnboundedSender<ConnEvent>,
    pub(crate) queue: Arc<OutQueue>,
}

impl ConnEntry {
    pub(crate) fn info(&self, id: ConnectionId) -> ConnectionInfo {
        ConnectionInfo {
            id,
            path: self.path.clone(),
            socket_id: self.socket_id.clone(),
            params: self.params.clone(),
            protocol: self.protocol,
            topics: self.topics.iter().cloned().collect(),
            stalled: self.stalled,
            delay: self.delay,
            queued_bytes: u64::try_from(self.queue.bytes()).unwrap_or(u64::MAX),
        }
    }
}

/// Server-wide fault switches.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub(crate) refuse_connects: bool,
    /// When set, every join is refused with this error response.
    pub(crate) refuse_joins: Option<Value>,
    /// The outbound delay of connections made from now on.
    pub(crate) default_delay: Duration,
    /// How long the channels of a dead connection may drain their mailbox (`None`: all of it).
    pub(crate) drain_limit: Option<Duration>,
}

type SubKey = (ConnectionId, u64);

/// Requests to the accept loop.
pub(crate) enum ListenerCmd {
    /// Close the listener and drop every connection; answer when they are gone.
    Suspend(oneshot::Sender<()>),
    /// Bind the same address again; answer with the outcome.
    Resume(oneshot::Sender<Result<(), String>>),
    /// Serve a byte stream as an accepted connection (dropped while suspended).
    Serve(BoxedIo),
}

impl std::fmt::Debug for ListenerCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Suspend(_) => "Suspend",
            Self::Resume(_) => "Resume",
            Self::Serve(_) => "Serve",
        })
    }
}

/// A byte stream the server can serve: a TCP connection or any other transport.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`]: the connection code is written once for every transport.
pub(crate) type BoxedIo = Box<dyn Io>;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sockets: BTreeMap<String, SocketConfig>,
    pub(crate) settings: Mutex<Settings>,
    pub(crate) idle_timeout: watch::Sender<Duration>,
    pub(crate) connections: Mutex<HashMap<ConnectionId, ConnEntry>>,
    subscriptions: Mutex<HashMap<String, HashMap<SubKey, Subscriber>>>,
    pub(crate) stats: watch::Sender<ServerStats>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Bumped by a restart and the shutdown: draining channels end at once.
    pub(crate) drain_cancel: watch::Sender<u64>,
    pub(crate) listener: mpsc::UnboundedSender<ListenerCmd>,
    /// The bound address (kept across restarts).
    pub(crate) local_addr: std::net::SocketAddr,
    /// The Dust store emulation, when one is mounted.
    pub(crate) dust: Option<Arc<crate::dust::DustShared>>,
    /// The presence maps of the `presence:*` channels.
    pub(crate) presences: crate::presence::Presences,
    /// The connection bounds.
    pub(crate) limits: crate::config::ConnectionLimits,
    next_id: AtomicU64,
    next_instance: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        sockets: BTreeMap<String, SocketConfig>,
        idle_timeout: Duration,
        listener: mpsc::UnboundedSender<ListenerCmd>,
        local_addr: std::net::SocketAddr,
        dust: Option<Arc<crate::dust::DustShared>>,
        limits: crate::config::ConnectionLimits,
    ) -> Self {
        Self {
            limits,
            listener,
            local_addr,
            dust,
            presences: Default::default(),
            sockets,
            settings: Mutex::default(),
            idle_timeout: watch::Sender::new(idle_timeout),
            connections: Mutex::default(),
            subscriptions: Mutex::default(),
            stats: watch::Sender::new(ServerStats::default()),
            shutdown: watch::Sender::new(false),
            drain_cancel: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            next_instance: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_instance(&self) -> u64 {
        self.next_instance.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends an event to one connection; `make` may also update its registry entry, so that
    /// what the control handle reports changes at once.
    pub(crate) fn send_to(
        &self,
        id: ConnectionId,
        make: impl FnOnce(&mut ConnEntry) -> ConnEvent,
    ) -> bool {
        lock(&self.connections).get_mut(&id).is_some_and(|c| {
            let event = make(c);
            c.events.send(event).is_ok()
        })
    }

    /// Sends an event (made per connection, as above) to every connection; returns how many.
    pub(crate) fn send_to_all(&self, mut make: impl FnMut(&mut ConnEntry) -> ConnEvent) -> usize {
        lock(&self.connections)
            .values_mut()
            .filter_map(|c| {
                let event = make(c);
                c.events.send(event).ok()
            })
            .count()
    }

    pub(crate) fn update_connection(&self, id: ConnectionId, f: impl FnOnce(&mut ConnEntry)) {
        if let Some(entry) = lock(&self.connections).get_mut(&id) {
            f(entry);
        }
    }

    pub(crate) fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        key: SubKey,
        subscriber: Subscriber,
    ) -> Subscription {
        lock(&self.subscriptions)
            .entry(topic.to_owned())
            .or_default()
            .insert(key, subscriber);
        Subscription {
            shared: self.clone(),
            topic: topic.to_owned(),
            key,
        }
    }

    /// Sends a broadcast to every subscriber of the topic; returns how many it reached.
    pub(crate) fn broadcast(&self, topic: &str, event: &str, payload: Payload) -> usize {
        let subscribers: Vec<(OutTx, Protocol)> = lock(&self.subscriptions)
            .get(topic)
            .map(|subs| subs.values().map(|s| (s.out.clone(), s.protocol)).collect())
            .unwrap_or_default();
        if subscribers.is_empty() {
            return 0;
        }
        let message = Outgoing::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        };
        // Encoded once per serializer, as Phoenix's fastlane does.
        let mut encoded: HashMap<Protocol, Result<Wire, EncodeError>> = HashMap::new();
        let mut reached = 0;
        for (out, protocol) in subscribers {
            let wire = encoded
                .entry(protocol)
                .or_insert_with(|| frame::encode(protocol, &message));
            match wire {
                Ok(wire) => {
                    if out.send(Outbound::frame(wire.clone())).is_ok() {
                        reached += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, topic, event, "broadcast not sent to a subscriber")
                }
            }
        }
        reached
    }

    pub(crate) fn update_stats(&self, f: impl FnOnce(&mut ServerStats)) {
        self.stats.send_modify(f);
    }
}

/// Removes a subscription when dropped (also when its channel task is aborted).
#[derive(Debug)]
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    topic: String,
    key: SubKey,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscriptions = lock(&self.shared.subscriptions);
        if let Some(subs) = subscriptions.get_mut(&self.topic) {
            subs.remove(&self.key);
            if subs.is_empty() {
                subscriptions.remove(&self.topic);
            }
        }
    }
}
