//! A raw websocket client for the integration tests: frames are written and read as JSON or
//! bytes, never through our own client crate.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use dust_conformance::{Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The bound on every await of the tests.
pub const T: Duration = Duration::from_secs(5);

/// How long a test listens to assert that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

pub async fn server() -> Server {
    server_with(ServerConfig::default()).await
}

pub async fn server_with(config: ServerConfig) -> Server {
    tokio::time::timeout(T, dust_conformance::start(config))
        .await
        .expect("start timed out")
        .expect("start failed")
}

/// A bounded await.
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(T, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The byte stream of a TCP client.
pub type Tcp = MaybeTlsStream<TcpStream>;

pub struct Client<S = Tcp> {
    pub ws: WebSocketStream<S>,
}

impl Client<tokio::io::DuplexStream> {
    /// Connects over an in-memory stream served by [`dust_conformance::Control::serve_stream`];
    /// `path_and_query` is e.g. `/socket/websocket?vsn=2.0.0`.
    pub async fn over_stream(control: &dust_conformance::Control, path_and_query: &str) -> Self {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        control.serve_stream(server_side).expect("serve_stream");
        let url = format!("ws://in-memory{path_and_query}");
        let (ws, response) = within("connect", tokio_tungstenite::client_async(url, client))
            .await
            .unwrap_or_else(|e| panic!("connect {path_and_query}: {e}"));
        assert_eq!(response.status(), 101);
        Client { ws }
    }
}

impl Client {
    /// Connects to the echo socket with `vsn=2.0.0`.
    pub async fn v2(server: &Server) -> Client {
        Client::connect(&server.websocket_url("/socket")).await
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, response) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        assert_eq!(response.status(), 101);
        Client { ws }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, text: &str) {
        within("send", self.ws.send(Message::text(text.to_owned())))
            .await
            .expect("send failed");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(&value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("send", self.ws.send(Message::binary(bytes)))
            .await
            .expect("send failed");
    }

    /// The next data or close frame.
    pub async fn recv(&mut self) -> Message {
        loop {
            let message = within("recv", self.ws.next())
                .await
                .expect("stream ended")
                .expect("websocket error");
            match message {
                Message::Ping(_) | Message::Pong(_) => {}
                other => return other,
            }
        }
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Message::Text(text) => serde_json::from_str(text.as_str()).expect("invalid JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be binary.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Message::Binary(bytes) => bytes.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next frame must be a close frame; returns its code. Then the stream ends.
    pub async fn recv_close(&mut self) -> u16 {
        match self.recv().await {
            Message::Close(Some(frame)) => {
                let code = u16::from(frame.code);
                // Completes the closing handshake.
                while let Some(Ok(_)) = within("close", self.ws.next()).await {}
                code
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// The connection must end without a close frame (an abrupt drop).
    pub async fn expect_dropped(&mut self) {
        loop {
            match within("drop", self.ws.next()).await {
                None => return,
                Some(Err(WsError::Protocol(_) | WsError::Io(_) | WsError::ConnectionClosed)) => {
                    return;
                }
                Some(Err(other)) => panic!("unexpected error {other:?}"),
                Some(Ok(Message::Close(frame))) => panic!("got a close frame {frame:?}"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Nothing arrives for `QUIET`.
    pub async fn assert_silent(&mut self) {
        self.assert_silent_for(QUIET).await;
    }

    /// Nothing arrives for this long.
    pub async fn assert_silent_for(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.ws.next()).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Joins and returns the reply.
    pub async fn join(&mut self, join_ref: &str, topic: &str, params: Value) -> Value {
        self.send_json(json!([join_ref, join_ref, topic, "phx_join", params]))
            .await;
        self.recv_json().await
    }

    /// Joins and asserts success.
    pub async fn joined(&mut self, join_ref: &str, topic: &str) {
        let reply = self.join(join_ref, topic, json!({})).await;
        assert_eq!(
            reply,
            ok_reply(
                json!(join_ref),
                json!(join_ref),
                topic,
                json!({"joined": topic, "params": {}})
            )
        );
    }
}

pub fn reply(join_ref: Value, ref_: Value, topic: &str, status: &str, response: Value) -> Value {
    json!([join_ref, ref_, topic, "phx_reply", {"status": status, "response": response}])
}

pub fn ok_reply(join_ref: Value, ref_: Value, topic: &str, response: Value) -> Value {
    reply(join_ref, ref_, topic, "ok", response)
}

/// The HTTP status an upgrade is answered with when it is refused.
pub async fn refused_status(url: &str) -> u16 {
    match within("connect", tokio_tungstenite::connect_async(url)).await {
        Ok(_) => panic!("the upgrade to {url} was accepted"),
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Connects with extra `Sec-WebSocket-Protocol` values; returns the client and the protocol
/// the server picked.
pub async fn connect_with_protocols(url: &str, protocols: &str) -> (Client, Option<String>) {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.parse().expect("header value"),
    );
    let (ws, response) = within("connect", tokio_tungstenite::connect_async(request))
        .await
        .expect("connect failed");
    let picked = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (Client { ws }, picked)
}

pub mod dust;
pub mod msgpack;
pub mod process;
