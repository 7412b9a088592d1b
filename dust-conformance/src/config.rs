//! Server configuration.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::dust::DustConfig;
use crate::echo;
use crate::socket::SocketConfig;

/// The default bound of a connection's outbound queue: 16 MiB.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 16 << 20;
/// The default maximum number of open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The default read buffer of a connection's websocket: 4 KiB (tungstenite's default is
/// 128 KiB, allocated eagerly for every connection).
pub const DEFAULT_READ_BUFFER_SIZE: usize = 4 << 10;

/// The per-connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_outbound_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) read_buffer_size: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
        }
    }
}

/// What to serve and where.
///
/// The default binds `127.0.0.1:0`, closes connections idle for 60 s, and mounts the `echo:*`
/// reference socket, with the `presence:*` channel, at `/socket` ([`echo::socket`]). It
/// bounds each connection's outbound queue to [`DEFAULT_MAX_OUTBOUND_BYTES`] and the open
/// connections to [`DEFAULT_MAX_CONNECTIONS`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) idle_timeout: Duration,
    pub(crate) sockets: BTreeMap<String, SocketConfig>,
    pub(crate) dust: Option<DustConfig>,
    pub(crate) limits: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::empty().socket("/socket", echo::socket())
    }
}

impl ServerConfig {
    /// The default configuration (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Like the default, without any socket mounted.
    pub fn empty() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            idle_timeout: Duration::from_secs(60),
            sockets: BTreeMap::new(),
            dust: None,
            limits: ConnectionLimits::default(),
        }
    }

    /// Bounds each connection's outbound queue: the bytes of the frames queued for it and not
    /// yet handed to its websocket (a client that does not read, or a stalled connection).
    /// A frame that would cross it is not queued, and the connection is dropped as a slow
    /// client (counted in [`ServerStats::slow_clients_dropped`](crate::ServerStats)); its
    /// queue is freed. Default [`DEFAULT_MAX_OUTBOUND_BYTES`].
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_outbound_bytes = bytes;
        self
    }

    /// At most this many open connections: beyond it an upgrade is refused with HTTP 503
    /// (counted in [`ServerStats::connects_over_capacity`](crate::ServerStats)). Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// The read buffer of each connection's websocket, allocated when it opens (what an idle
    /// connection costs, mostly). Default [`DEFAULT_READ_BUFFER_SIZE`]; larger ones read
    /// big frames in fewer calls.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.limits.read_buffer_size = bytes;
        self
    }

    /// The address to bind (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Closes (code 1000) a connection from which nothing was received for this long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Mounts a socket at `path` (e.g. `/socket`; clients connect to `{path}/websocket`; `/`
    /// mounts it at the root), replacing any socket mounted there.
    pub fn socket(mut self, path: impl AsRef<str>, socket: SocketConfig) -> Self {
        let path = path.as_ref().trim_end_matches('/');
        let path = if path.is_empty() || path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        self.sockets.insert(path, socket);
        self
    }

    /// Mounts the Dust `store:*` emulation ([`crate::dust`]) at its path (by default
    /// `/ws/sync`), next to the other sockets. [`start`](crate::start) loads its state file,
    /// if any; [`Server::dust`](crate::Server::dust) gives its control handle.
    pub fn dust(mut self, config: DustConfig) -> Self {
        self.dust = Some(config);
        self
    }
}
