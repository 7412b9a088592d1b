//! The listener: HTTP upgrade, routing by socket path, connect params, 403/404.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

use crate::channel::TERMINATE_TIMEOUT;
use crate::config::ServerConfig;
use crate::connection::{CLOSE_WAIT, ConnSetup, run_connection};
use crate::control::{ConnectionId, Control};
use crate::error::StartError;
use crate::frame::Protocol;
use crate::shared::{BoxedIo, ConnEntry, ConnEvent, ListenerCmd, OutQueue, Shared, lock};
use crate::socket::{Assigns, ConnectDecision, ConnectRequest, SocketConfig};

/// How long a client may take to send its upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The subprotocol prefix of Phoenix's `auth_token` (Phoenix ≥ 1.8).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// Starts a server: binds the configured address (by default `127.0.0.1:0`) and serves until
/// the returned [`Server`] is dropped or shut down.
pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
    let ServerConfig {
        listen,
        idle_timeout,
        mut sockets,
        dust,
        limits,
    } = config;
    // The Dust state is loaded before the port opens: a client never sees a half-loaded store.
    let dust = match dust {
        Some(config) => {
            let (path, dust) = crate::dust::DustShared::open(config).await?;
            sockets.insert(path, crate::dust::socket(dust.clone()));
            Some(dust)
        }
        None => None,
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let (listener_tx, listener_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(
        sockets,
        idle_timeout,
        listener_tx,
        local_addr,
        dust,
        limits,
    ));
    let span = tracing::info_span!("dust_conformance", %local_addr);
    let task = tokio::spawn(accept_loop(listener, shared.clone(), listener_rx).instrument(span));
    tracing::info!(%local_addr, "dust-conformance listening");
    Ok(Server {
        local_addr,
        control: Control { shared },
        task: Some(task),
    })
}

/// A running server. It stops when dropped (connections get a close frame 1001 when the runtime
/// is still running) or with [`Server::shutdown`], which waits until they are closed.
pub struct Server {
    local_addr: SocketAddr,
    control: Control,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://HOST:PORT` followed by `path` (e.g. `url("/ws/sync")`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.local_addr, path)
    }

    /// The echo socket's endpoint, `ws://HOST:PORT/socket`, as Phoenix clients take it.
    pub fn socket_url(&self) -> String {
        self.url("/socket")
    }

    /// The full websocket URL of a socket path with `vsn=2.0.0`, for raw websocket clients:
    /// `ws://HOST:PORT{path}/websocket?vsn=2.0.0`.
    pub fn websocket_url(&self, path: &str) -> String {
        format!("{}/websocket?vsn=2.0.0", self.url(path))
    }

    /// The control handle.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The Dust emulation's control handle, when the server mounts it
    /// ([`ServerConfig::dust`]).
    pub fn dust(&self) -> Option<crate::dust::DustControl> {
        self.control.dust()
    }

    /// Stops accepting, closes every connection with code 1001 and waits until they are gone
    /// (at most a few seconds for clients that do not answer the close).
    pub async fn shutdown(mut self) {
        self.control.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.control.shared.shutdown.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<ListenerCmd>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut connections = JoinSet::new();
    let mut listener = Some(listener);
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            Some(command) = commands.recv() => match command {
                ListenerCmd::Suspend(done) => {
                    listener = None;
                    drop_connections(&shared, &mut connections).await;
                    tracing::info!("listener closed, connections dropped");
                    let _ = done.send(());
                }
                ListenerCmd::Resume(done) => {
                    let result = match listener {
                        Some(_) => Ok(()),
                        None => match TcpListener::bind(shared.local_addr).await {
                            Ok(bound) => {
                                listener = Some(bound);
                                tracing::info!("listening again");
                                Ok(())
                            }
                            Err(error) => Err(error.to_string()),
                        },
                    };
                    let _ = done.send(result);
                }
                ListenerCmd::Serve(stream) => {
                    if listener.is_some() {
                        let span = tracing::debug_span!("connection", peer = "stream");
                        connections.spawn(handle_stream(stream, shared.clone()).instrument(span));
                    } else {
                        // Suspended (a restart's downtime): refused, as a TCP connect would be.
                        tracing::debug!("stream refused: the server is restarting");
                    }
                }
            },
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::debug_span!("connection", %peer);
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handle_stream(Box::new(stream), shared.clone()).instrument(span));
                }
                Err(error) => {
                    // E.g. too many open files: back off a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // The connections saw the shutdown too and are closing.
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    // Connections still in their handshake when aborted were registered.
    lock(&shared.connections).clear();
    shared.update_stats(|s| s.open_connections = 0);
    end_drains(&shared).await;
    tracing::info!("dust-conformance stopped");
}

/// Accepts on the listener, or waits forever while there is none (suspended).
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Drops every connection without a close frame and waits until their tasks are gone.
async fn drop_connections(shared: &Shared, connections: &mut JoinSet<()>) {
    shared.send_to_all(|_| ConnEvent::Kill);
    // Registered connections end at once; one still in its handshake is aborted.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    lock(&shared.connections).clear();
    shared.update_stats(|s| s.open_connections = 0);
    end_drains(shared).await;
}

/// Ends the channels still draining a dead connection's mailbox (a restart or the shutdown
/// ends everything at once) and waits until they have terminated.
async fn end_drains(shared: &Shared) {
    shared.drain_cancel.send_modify(|epoch| *epoch += 1);
    let mut stats = shared.stats.subscribe();
    let drained = stats.wait_for(|s| s.draining_channels == 0);
    if tokio::time::timeout(TERMINATE_TIMEOUT + Duration::from_secs(1), drained)
        .await
        .is_err()
    {
        tracing::warn!("draining channels did not end in time");
    }
}

/// An upgrade the handshake callback accepted.
struct Accepted {
    path: String,
    socket_id: Option<String>,
    params: BTreeMap<String, String>,
    protocol: Protocol,
    assigns: Assigns,
    socket: SocketConfig,
    delay: Duration,
}

/// Serves one accepted byte stream: the HTTP upgrade, then the connection loop.
async fn handle_stream(stream: BoxedIo, shared: Arc<Shared>) {
    // A plain HTTP request the emulation serves is answered here; the rest is an upgrade.
    let stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::http::route(stream, &shared)).await {
            Ok(Ok(crate::http::Routed::Upgrade(stream))) => stream,
            Ok(Ok(crate::http::Routed::Answered)) => return,
            Ok(Err(error)) => {
                tracing::debug!(%error, "request head not read");
                return;
            }
            Err(_) => {
                tracing::debug!("request head timed out");
                return;
            }
        };
    let id = shared.next_connection_id();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let queue = Arc::new(OutQueue::new(
        shared.limits.max_outbound_bytes,
        events_tx.clone(),
    ));
    let mut accepted = None;
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let result = upgrade(&shared, request, response);
        match result {
            Ok((response, ok)) => {
                // Registered before the 101 goes out, so a client that sees itself connected
                // also finds itself in `Control::connections`.
                register(&shared, id, &ok, &events_tx, &queue);
                accepted = Some(ok);
                Ok(response)
            }
            Err(status) => {
                if status == StatusCode::FORBIDDEN {
                    shared.update_stats(|s| s.connects_refused += 1);
                } else if status == StatusCode::SERVICE_UNAVAILABLE {
                    shared.update_stats(|s| s.connects_over_capacity += 1);
                }
                tracing::debug!(%status, path = request.uri().path(), "upgrade refused");
                Err(error_response(status))
            }
        }
    };
    let websocket = WebSocketConfig::default()
        .read_buffer_size(shared.limits.read_buffer_size)
        .write_buffer_size(0);
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            tracing::debug!(%error, "handshake ended");
            unregister(&shared, id);
            return;
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            unregister(&shared, id);
            return;
        }
    };
    let Some(accepted) = accepted else {
        return;
    };
    let span = tracing::debug_span!("socket", id = %id, path = accepted.path);
    let setup = ConnSetup {
        id,
        path: accepted.path,
        params: accepted.params,
        protocol: accepted.protocol,
        assigns: accepted.assigns,
        socket: accepted.socket,
        shared,
        delay: accepted.delay,
        events_tx,
        events_rx,
        queue,
    };
    run_connection(ws, setup).instrument(span).await;
}

fn register(
    shared: &Shared,
    id: ConnectionId,
    accepted: &Accepted,
    events: &mpsc::UnboundedSender<ConnEvent>,
    queue: &Arc<OutQueue>,
) {
    lock(&shared.connections).insert(
        id,
        ConnEntry {
            path: accepted.path.clone(),
            socket_id: accepted.socket_id.clone(),
            params: accepted.params.clone(),
            protocol: accepted.protocol,
            topics: Default::default(),
            stalled: false,
            delay: accepted.delay,
            events: events.clone(),
            queue: queue.clone(),
        },
    );
    shared.update_stats(|s| {
        s.connects_accepted += 1;
        s.open_connections += 1;
    });
}

fn unregister(shared: &Shared, id: ConnectionId) {
    if lock(&shared.connections).remove(&id).is_some() {
        shared.update_stats(|s| s.open_connections = s.open_connections.saturating_sub(1));
    }
}

/// Decides an upgrade the way Phoenix's endpoint and `Phoenix.Transports.WebSocket` do.
fn upgrade(
    shared: &Shared,
    request: &Request,
    mut response: Response,
) -> Result<(Response, Accepted), StatusCode> {
    let path = request.uri().path();
    let socket_path = path
        .strip_suffix("/websocket")
        .ok_or(StatusCode::NOT_FOUND)?;
    let socket = shared
        .sockets
        .get(socket_path)
        .ok_or(StatusCode::NOT_FOUND)?;
    let (refuse, delay) = {
        let settings = lock(&shared.settings);
        (settings.refuse_connects, settings.default_delay)
    };
    if refuse {
        return Err(StatusCode::FORBIDDEN);
    }
    if lock(&shared.connections).len() >= shared.limits.max_connections {
        tracing::warn!(
            max = shared.limits.max_connections,
            "connection refused: too many connections"
        );
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let params: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let protocol = Protocol::negotiate(params.get("vsn").map(String::as_str))
        .filter(|protocol| socket.accepts(*protocol))
        .ok_or(StatusCode::FORBIDDEN)?;
    let offered = subprotocols(request);
    let auth_token = match offered
        .iter()
        .find_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX))
    {
        Some(encoded) => Some(decode_token(encoded).ok_or(StatusCode::FORBIDDEN)?),
        None => None,
    };
    let connect = ConnectRequest {
        path: socket_path.to_owned(),
        params,
        auth_token,
        protocol,
    };
    let assigns = match socket.connect(&connect) {
        ConnectDecision::Accept(assigns) => assigns,
        ConnectDecision::Refuse => return Err(StatusCode::FORBIDDEN),
    };
    let socket_id = socket.socket_id(&connect, &assigns);
    if offered.iter().any(|p| p == "phoenix") {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("phoenix"),
        );
    }
    Ok((
        response,
        Accepted {
            path: connect.path,
            socket_id,
            params: connect.params,
            protocol,
            assigns,
            socket: socket.clone(),
            delay,
        },
    ))
}

fn subprotocols(request: &Request) -> Vec<String> {
    request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token is in the standard base64 alphabet without padding, despite the prefix.
fn decode_token(encoded: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn error_response(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-length", HeaderValue::from_static("0"));
    headers.insert("connection", HeaderValue::from_static("close"));
    response
}
