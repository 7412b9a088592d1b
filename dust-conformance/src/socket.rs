//! Sockets: what a socket path accepts (Phoenix's `connect/3`) and which channel serves which
//! topic (Phoenix's `channel "topic:*", Module`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::channel::Channel;
use crate::frame::Protocol;

/// Values a socket's connect callback keeps for its channels (Phoenix's socket assigns).
pub type Assigns = Map<String, Value>;

/// A websocket upgrade request, as the connect callback sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The socket path, e.g. `/socket` (without the `/websocket` transport suffix).
    pub path: String,
    /// The query parameters (connect params), `vsn` included. A repeated key keeps its last value.
    pub params: BTreeMap<String, String>,
    /// The token sent in the `Sec-WebSocket-Protocol` header as
    /// `base64url.bearer.phx.<base64>` (Phoenix ≥ 1.8 `auth_token`), decoded.
    pub auth_token: Option<String>,
    /// The negotiated serializer.
    pub protocol: Protocol,
}

/// What a connect callback decides.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectDecision {
    /// Accept the connection; the assigns are visible to its channels.
    Accept(Assigns),
    /// Refuse it: the upgrade is answered with HTTP 403, as Phoenix does for `:error`.
    Refuse,
}

type ConnectFn = dyn Fn(&ConnectRequest) -> ConnectDecision + Send + Sync;
type ChannelFactory = dyn Fn(&str) -> Box<dyn Channel> + Send + Sync;
type SocketIdFn = dyn Fn(&ConnectRequest, &Assigns) -> Option<String> + Send + Sync;

/// A socket mounted at a path: its connect callback and its channel routes.
///
/// ```
/// use dust_conformance::{ConnectDecision, SocketConfig, echo::EchoChannel};
///
/// let socket = SocketConfig::new(|request| {
///     if request.params.get("token").is_some_and(|t| t.starts_with("ok_")) {
///         ConnectDecision::Accept(Default::default())
///     } else {
///         ConnectDecision::Refuse
///     }
/// })
/// .channel("room:*", |_topic| Box::new(EchoChannel::default()));
/// assert!(socket.route("room:1"));
/// assert!(!socket.route("other"));
/// ```
#[derive(Clone)]
pub struct SocketConfig {
    connect: Arc<ConnectFn>,
    routes: Vec<(String, Arc<ChannelFactory>)>,
    id: Option<Arc<SocketIdFn>>,
    protocols: Option<Vec<Protocol>>,
}

impl fmt::Debug for SocketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketConfig")
            .field(
                "routes",
                &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

impl SocketConfig {
    /// A socket with this connect callback and no channels yet.
    pub fn new(
        connect: impl Fn(&ConnectRequest) -> ConnectDecision + Send + Sync + 'static,
    ) -> Self {
        Self {
            connect: Arc::new(connect),
            routes: Vec::new(),
            id: None,
            protocols: None,
        }
    }

    /// Names each accepted connection (Phoenix's `id/1`, e.g. `"user_socket:42"`), so that
    /// [`Control::disconnect_socket`](crate::Control::disconnect_socket) can close every
    /// connection with that id at once, as a `"disconnect"` broadcast to the id does in
    /// Phoenix. `None` leaves the connection anonymous (Phoenix's `nil`).
    pub fn id(
        mut self,
        id: impl Fn(&ConnectRequest, &Assigns) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.id = Some(Arc::new(id));
        self
    }

    /// Accepts only these serializers (Phoenix's `serializer:` option of a socket); an
    /// upgrade whose `vsn` negotiates another one is refused with 403. By default both V1
    /// and V2 are accepted.
    ///
    /// ```
    /// use dust_conformance::{ConnectDecision, Protocol, SocketConfig};
    ///
    /// let v2_only = SocketConfig::new(|_| ConnectDecision::Accept(Default::default()))
    ///     .protocols([Protocol::V2]);
    /// assert!(v2_only.accepts(Protocol::V2));
    /// assert!(!v2_only.accepts(Protocol::V1));
    /// ```
    pub fn protocols(mut self, protocols: impl IntoIterator<Item = Protocol>) -> Self {
        self.protocols = Some(protocols.into_iter().collect());
        self
    }

    /// Whether a connection with this serializer is accepted.
    pub fn accepts(&self, protocol: Protocol) -> bool {
        self.protocols
            .as_ref()
            .is_none_or(|list| list.contains(&protocol))
    }

    /// Routes topics to a channel. A pattern ending in `*` matches every topic with that prefix
    /// (`"echo:*"`); any other pattern matches only itself. The first matching route wins, as
    /// in Phoenix. The factory makes one channel instance per join (its state lives as long as
    /// that join).
    pub fn channel(
        mut self,
        pattern: impl Into<String>,
        factory: impl Fn(&str) -> Box<dyn Channel> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push((pattern.into(), Arc::new(factory)));
        self
    }

    /// Whether some route matches the topic.
    pub fn route(&self, topic: &str) -> bool {
        self.find(topic).is_some()
    }

    pub(crate) fn connect(&self, request: &ConnectRequest) -> ConnectDecision {
        (self.connect)(request)
    }

    pub(crate) fn socket_id(&self, request: &ConnectRequest, assigns: &Assigns) -> Option<String> {
        self.id.as_ref().and_then(|id| id(request, assigns))
    }

    pub(crate) fn find(&self, topic: &str) -> Option<&Arc<ChannelFactory>> {
        self.routes
            .iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == pattern,
            })
            .map(|(_, factory)| factory)
    }
}
