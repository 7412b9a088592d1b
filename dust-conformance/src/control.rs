//! The fault-injection and inspection handle of a running server.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::channel::Exit;
use crate::frame::{Payload, Protocol, Wire};
use crate::shared::{ConnEntry, ConnEvent, ListenerCmd, Shared, lock};

/// A connection's id, unique for the server's lifetime (counts from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ConnectionId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A snapshot of one open connection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Its id.
    pub id: ConnectionId,
    /// The socket path it connected to (e.g. `/socket`).
    pub path: String,
    /// Its socket id (see [`SocketConfig::id`](crate::SocketConfig::id)), e.g.
    /// `store_socket:dev_1` on the Dust socket.
    pub socket_id: Option<String>,
    /// Its connect params (the upgrade's query).
    pub params: BTreeMap<String, String>,
    /// Its serializer.
    pub protocol: Protocol,
    /// The topics it has joined, sorted.
    pub topics: Vec<String>,
    /// Whether it is stalled.
    pub stalled: bool,
    /// The delay added to each of its outbound frames.
    #[serde(serialize_with = "millis")]
    pub delay: Duration,
    /// The bytes queued for it and not yet written (at most
    /// [`ServerConfig::max_outbound_bytes`](crate::ServerConfig::max_outbound_bytes)).
    pub queued_bytes: u64,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ServerStats {
    /// Websocket upgrades accepted.
    pub connects_accepted: u64,
    /// Upgrades answered with 403 (connect callback, bad `vsn` or the refuse-connects fault).
    pub connects_refused: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Successful joins.
    pub joins: u64,
    /// Joins answered with an error (refused by the channel or by the refuse-joins fault).
    pub joins_refused: u64,
    /// Heartbeats answered.
    pub heartbeats: u64,
    /// Restarts ([`Control::restart`]) completed.
    pub restarts: u64,
    /// Channels of dead connections still working through the messages they had received
    /// (see [`Control::set_drain_limit`]).
    pub draining_channels: u64,
    /// Connections dropped because their outbound queue crossed its bound
    /// ([`ServerConfig::max_outbound_bytes`](crate::ServerConfig::max_outbound_bytes)).
    pub slow_clients_dropped: u64,
    /// Upgrades refused with 503 because the server had
    /// [`ServerConfig::max_connections`](crate::ServerConfig::max_connections) open.
    pub connects_over_capacity: u64,
    /// Received messages a drain did not handle: cut short by its limit, a restart or the
    /// shutdown.
    pub drain_dropped: u64,
}

/// A frame to send as is, valid or not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// Why a control command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No open connection has this id.
    #[error("no connection {0}")]
    NoSuchConnection(ConnectionId),
    /// The server has stopped.
    #[error("the server has stopped")]
    Stopped,
    /// A restart could not listen on the same address again.
    #[error("cannot listen on {addr} again: {reason}")]
    Rebind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// A restart could not reload the Dust state from its file.
    #[error("cannot reload the Dust state: {0}")]
    State(String),
}

/// The control handle: inspect connections and inject faults. Cheap to clone; every method
/// acts at once (commands to a connection are handled before it reads its next frame).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// The open connections, by id.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut list: Vec<_> = lock(&self.shared.connections)
            .iter()
            .map(|(id, entry)| entry.info(*id))
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// One connection.
    pub fn connection(&self, id: ConnectionId) -> Option<ConnectionInfo> {
        lock(&self.shared.connections)
            .get(&id)
            .map(|entry| entry.info(id))
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.borrow().clone()
    }

    /// Waits until the counters satisfy `predicate` (at once if they already do) and returns
    /// them. Wrap it in a timeout.
    pub async fn wait_for_stats(
        &self,
        mut predicate: impl FnMut(&ServerStats) -> bool,
    ) -> ServerStats {
        let mut rx = self.shared.stats.subscribe();
        match rx.wait_for(|s| predicate(s)).await {
            Ok(stats) => stats.clone(),
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => self.stats(),
        }
    }

    /// Drops a connection abruptly: the TCP connection is closed without a close frame, and
    /// frames not yet written (queued, or held back by a delay) are lost.
    ///
    /// As on a real Phoenix server, its channels outlive it: each one still handles, in order,
    /// every message it had received (a write is still committed and broadcast to the
    /// topic's other joiners; replies and pushes to the dead connection are lost), then
    /// terminates. This holds however a connection ends (client gone, dropped, closed),
    /// except on a restart or the shutdown, which end everything at once. See
    /// [`Control::set_drain_limit`].
    pub fn drop_connection(&self, id: ConnectionId) -> Result<(), ControlError> {
        self.to(id, |_| ConnEvent::Drop)
    }

    /// Drops every connection abruptly (as [`Control::drop_connection`]); returns how many.
    pub fn drop_all(&self) -> usize {
        self.shared.send_to_all(|_| ConnEvent::Drop)
    }

    /// Closes a connection with a websocket close frame carrying this code.
    pub fn close_connection(&self, id: ConnectionId, code: u16) -> Result<(), ControlError> {
        self.to(id, |_| ConnEvent::CloseSocket {
            code,
            reason: String::new(),
        })
    }

    /// Stalls a connection: it stops reading (so heartbeats go unanswered) and stops writing
    /// (frames queue up, up to [`ServerConfig::max_outbound_bytes`](crate::ServerConfig),
    /// beyond which it is dropped as a slow client), without closing. Its idle timeout does
    /// not run meanwhile.
    pub fn stall(&self, id: ConnectionId) -> Result<(), ControlError> {
        self.to(id, stall(true))
    }

    /// Stalls every open connection; returns how many.
    pub fn stall_all(&self) -> usize {
        self.shared.send_to_all(stall(true))
    }

    /// Resumes a stalled connection: what it had queued is written, what the client sent is read.
    pub fn unstall(&self, id: ConnectionId) -> Result<(), ControlError> {
        self.to(id, stall(false))
    }

    /// Resumes every connection; returns how many.
    pub fn unstall_all(&self) -> usize {
        self.shared.send_to_all(stall(false))
    }

    /// Delays each outbound frame of a connection by `delay` (from when it was queued; order is
    /// kept). `Duration::ZERO` removes the delay.
    pub fn set_delay(&self, id: ConnectionId, delay: Duration) -> Result<(), ControlError> {
        self.to(id, set_delay(delay))
    }

    /// Delays the outbound frames of every open connection and of those made from now on.
    pub fn set_delay_all(&self, delay: Duration) -> usize {
        lock(&self.shared.settings).default_delay = delay;
        self.shared.send_to_all(set_delay(delay))
    }

    /// Bounds how long the channels of a dead connection keep handling the messages they had
    /// received (see [`Control::drop_connection`]): `None` (the default) drains everything,
    /// `Some(limit)` drops what is left after `limit` (counted in
    /// [`ServerStats::drain_dropped`]). Applies to connections that end from now on.
    pub fn set_drain_limit(&self, limit: Option<Duration>) {
        lock(&self.shared.settings).drain_limit = limit;
    }

    /// The drain limit (see [`Control::set_drain_limit`]).
    pub fn drain_limit(&self) -> Option<Duration> {
        lock(&self.shared.settings).drain_limit
    }

    /// Refuses (or accepts again) every websocket upgrade with HTTP 403.
    pub fn refuse_connects(&self, on: bool) {
        lock(&self.shared.settings).refuse_connects = on;
    }

    /// Refuses (or accepts again) every join with the error reply `{"reason": "refused"}`.
    pub fn refuse_joins(&self, on: bool) {
        self.refuse_joins_with(on.then(|| json!({"reason": "refused"})));
    }

    /// Refuses every join with this error response (`Some`), or stops refusing (`None`).
    pub fn refuse_joins_with(&self, response: Option<Value>) {
        lock(&self.shared.settings).refuse_joins = response;
    }

    /// Crashes the channel joined on `topic` on every connection: each joiner gets `phx_error`
    /// (`[join_ref, join_ref, topic, "phx_error", {}]`). Returns how many connections had it.
    pub fn crash_channel(&self, topic: &str) -> usize {
        self.end_channel(topic, Exit::Crashed)
    }

    /// Stops the channel joined on `topic` on every connection: each joiner gets `phx_close`.
    /// Returns how many connections had it.
    pub fn close_channel(&self, topic: &str) -> usize {
        self.end_channel(topic, Exit::Closed)
    }

    /// Sends a frame as is (malformed ones too) to a connection, after its queued frames.
    pub fn send_raw(&self, id: ConnectionId, frame: RawFrame) -> Result<(), ControlError> {
        let wire = match frame {
            RawFrame::Text(text) => Wire::Text(text),
            RawFrame::Binary(bytes) => Wire::Binary(bytes),
        };
        self.to(id, |_| ConnEvent::Raw(wire))
    }

    /// Broadcasts from the server to every joiner of `topic`; returns how many it reached.
    pub fn broadcast(&self, topic: &str, event: &str, payload: impl Into<Payload>) -> usize {
        self.shared.broadcast(topic, event, payload.into())
    }

    /// Changes the idle timeout (nothing received for this long → close 1000), for open
    /// connections too: each one's deadline becomes its last receipt plus the new timeout.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.shared.idle_timeout.send_replace(timeout);
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        *self.shared.idle_timeout.borrow()
    }

    /// Closes every connection whose socket id is `socket_id` (see
    /// [`SocketConfig::id`](crate::SocketConfig::id)), as Phoenix does on a `"disconnect"`
    /// broadcast to that id: Phoenix 1.8 on Bandit stops the socket with
    /// `{:shutdown, :disconnected}`, which Bandit sends as close code 1011. Returns how many.
    pub fn disconnect_socket(&self, socket_id: &str) -> usize {
        lock(&self.shared.connections)
            .values()
            .filter(|c| c.socket_id.as_deref() == Some(socket_id))
            .filter(|c| {
                c.events
                    .send(ConnEvent::CloseSocket {
                        code: 1011,
                        reason: String::new(),
                    })
                    .is_ok()
            })
            .count()
    }

    /// Restarts the server the way a deployment or a crash does: the listener closes, every
    /// connection is dropped (no close frame), the port stays closed for `downtime`
    /// (connects are refused), then a new listener binds the same address. State is kept:
    /// the Dust stores survive (reloaded from their file when one is configured; lease
    /// deadlines and rate-limit counters are lost, as the real server's in-memory ones are).
    /// Returns once the new listener accepts.
    pub async fn restart(&self, downtime: Duration) -> Result<(), ControlError> {
        self.suspend().await?;
        let reloaded = match &self.shared.dust {
            Some(dust) => dust.after_restart().await,
            None => Ok(()),
        };
        tokio::time::sleep(downtime).await;
        self.resume().await?;
        reloaded.map_err(ControlError::State)?;
        self.shared.update_stats(|s| s.restarts += 1);
        Ok(())
    }

    /// Closes the listener and drops every connection; returns when they are gone.
    async fn suspend(&self) -> Result<(), ControlError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .listener
            .send(ListenerCmd::Suspend(tx))
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)
    }

    /// Listens again on the same address.
    async fn resume(&self) -> Result<(), ControlError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .listener
            .send(ListenerCmd::Resume(tx))
            .map_err(|_| ControlError::Stopped)?;
        let addr = self.shared.local_addr;
        rx.await
            .map_err(|_| ControlError::Stopped)?
            .map_err(|reason| ControlError::Rebind { addr, reason })
    }

    /// Serves a byte stream exactly like an accepted TCP connection: the HTTP upgrade
    /// (`GET {socket path}/websocket?...`), the socket routing, the connect params and the
    /// connection loop, with every fault and timer of a TCP connection. For in-memory
    /// networks (e.g. a simulation under paused tokio time); the stream's other end speaks
    /// the client side (e.g. `tokio_tungstenite::client_async`).
    ///
    /// While a [`Control::restart`] keeps the server down, the stream is dropped at once (its
    /// peer sees it closed, as a refused TCP connect). Fails with [`ControlError::Stopped`]
    /// once the server has stopped (the stream is dropped).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use dust_conformance::ServerConfig;
    /// use futures_util::{SinkExt, StreamExt};
    /// use tokio_tungstenite::tungstenite::Message;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = dust_conformance::start(ServerConfig::default()).await?;
    /// let (client, server_side) = tokio::io::duplex(64 * 1024);
    /// server.control().serve_stream(server_side)?;
    /// let url = "ws://in-memory/socket/websocket?vsn=2.0.0";
    /// let (mut ws, _) = tokio_tungstenite::client_async(url, client).await?;
    /// ws.send(Message::text(r#"["1","1","echo:demo","phx_join",{}]"#)).await?;
    /// let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
    /// assert!(reply.ok_or("closed")??.to_text()?.contains(r#""status":"ok""#));
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve_stream<S>(&self, stream: S) -> Result<(), ControlError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if *self.shared.shutdown.borrow() {
            return Err(ControlError::Stopped);
        }
        self.shared
            .listener
            .send(ListenerCmd::Serve(Box::new(stream)))
            .map_err(|_| ControlError::Stopped)
    }

    /// The Dust store emulation's handle, when the server mounts one
    /// ([`ServerConfig::dust`](crate::ServerConfig::dust)).
    pub fn dust(&self) -> Option<crate::dust::DustControl> {
        self.shared
            .dust
            .as_ref()
            .map(|dust| crate::dust::DustControl::new(dust.clone(), self.clone()))
    }

    fn end_channel(&self, topic: &str, exit: Exit) -> usize {
        lock(&self.shared.connections)
            .values()
            .filter(|c| c.topics.contains(topic))
            .filter(|c| {
                c.events
                    .send(ConnEvent::EndChannel {
                        topic: topic.to_owned(),
                        exit,
                    })
                    .is_ok()
            })
            .count()
    }

    fn to(
        &self,
        id: ConnectionId,
        make: impl FnOnce(&mut ConnEntry) -> ConnEvent,
    ) -> Result<(), ControlError> {
        if self.shared.send_to(id, make) {
            Ok(())
        } else {
            Err(ControlError::NoSuchConnection(id))
        }
    }
}

fn stall(on: bool) -> impl Fn(&mut ConnEntry) -> ConnEvent + Copy {
    move |entry| {
        entry.stalled = on;
        ConnEvent::Stall(on)
    }
}

fn set_delay(delay: Duration) -> impl Fn(&mut ConnEntry) -> ConnEvent + Copy {
    move |entry| {
        entry.delay = delay;
        ConnEvent::Delay(delay)
    }
}
