//! Server configuration.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::dust::DustConfig;
use crate::echo;
use crate::socket::SocketConfig;

/// What to serve and where.
///
/// The default binds `127.0.0.1:0`, closes connections idle for 60 s, and mounts the `echo:*`
/// reference socket, with the `presence:*` channel, at `/socket` ([`echo::socket`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) idle_timeout: Duration,
    pub(crate) sockets: BTreeMap<String, SocketConfig>,
    pub(crate) dust: Option<DustConfig>,
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
        }
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
