//! An in-memory stand-in for a Phoenix server: the client connects through a
//! [`StreamConnector`] over a `tokio::io::duplex` pipe, and the test plays the server side of
//! each connection frame by frame.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity,
    clippy::result_large_err
)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use phoenix_channels::transport::{ConnectRequest, StreamConnector};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The bound on every await of these tests (virtual time in paused tests).
pub const T: Duration = Duration::from_secs(120);

pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(T, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// How the fake server answers the next upgrade.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Accept,
    Refuse(u16),
}

/// One accepted connection, seen from the server side.
pub struct Conn {
    pub ws: WebSocketStream<DuplexStream>,
    /// The request line's path and query.
    pub uri: String,
    /// The `Sec-WebSocket-Protocol` header of the upgrade, if any.
    pub protocols: Option<String>,
    /// Other headers of interest.
    pub headers: Vec<(String, String)>,
}

pub struct FakeServer {
    conns: mpsc::UnboundedReceiver<Conn>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    pub attempts: Arc<Mutex<Vec<String>>>,
}

impl FakeServer {
    /// Answers the next upgrades in this order (then accepts).
    pub fn answer(&self, answers: &[Answer]) {
        self.answers.lock().unwrap().extend(answers.iter().copied());
    }

    pub async fn accept(&mut self) -> Conn {
        within("a connection", self.conns.recv())
            .await
            .expect("connector dropped")
    }

    /// Whether a connection arrives within `wait` (virtual time).
    pub async fn try_accept(&mut self, wait: Duration) -> Option<Conn> {
        tokio::time::timeout(wait, self.conns.recv())
            .await
            .ok()
            .flatten()
    }
}

pub type Connector = StreamConnector<
    Box<
        dyn Fn(
                ConnectRequest,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<DuplexStream>> + Send>,
            > + Send
            + Sync,
    >,
>;

pub fn fake_server() -> (Connector, FakeServer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
    let attempts: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = FakeServer {
        conns: rx,
        answers: answers.clone(),
        attempts: attempts.clone(),
    };
    let open: Box<
        dyn Fn(
                ConnectRequest,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<DuplexStream>> + Send>,
            > + Send
            + Sync,
    > = Box::new(move |request: ConnectRequest| {
        let tx = tx.clone();
        let answer = answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Accept);
        attempts.lock().unwrap().push(request.url.to_string());
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            tokio::spawn(async move {
                let seen: Arc<Mutex<(String, Option<String>, Vec<(String, String)>)>> =
                    Arc::default();
                let seen2 = seen.clone();
                let callback = move |req: &Request,
                                     mut resp: Response|
                      -> Result<Response, ErrorResponse> {
                    let protocols = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let headers = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| k.as_str().starts_with("x-"))
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    *seen2.lock().unwrap() = (req.uri().to_string(), protocols.clone(), headers);
                    if let Answer::Refuse(status) = answer {
                        let mut refused = ErrorResponse::new(None);
                        *refused.status_mut() = StatusCode::from_u16(status).unwrap();
                        return Err(refused);
                    }
                    if protocols.is_some() {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "phoenix".parse().unwrap());
                    }
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(server, callback).await {
                    let (uri, protocols, headers) = seen.lock().unwrap().clone();
                    let _ = tx.send(Conn {
                        ws,
                        uri,
                        protocols,
                        headers,
                    });
                }
            });
            Ok(client)
        })
    });
    (StreamConnector::new(open), server)
}

impl Conn {
    /// The next frame, as JSON for text frames (binary ones as `{"binary": [bytes]}`); `None`
    /// when the client closed the connection.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            match within("a frame from the client", self.ws.next()).await {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Binary(bytes))) => return Some(json!({"binary": bytes.to_vec()})),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame that is not a heartbeat (heartbeats are answered).
    pub async fn recv_skipping_heartbeats(&mut self) -> Option<Value> {
        loop {
            let frame = self.recv().await?;
            if frame[2] == "phoenix" && frame[3] == "heartbeat" {
                let r = frame[1].clone();
                self.send(
                    json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
                )
                .await;
                continue;
            }
            return Some(frame);
        }
    }

    pub async fn send(&mut self, frame: Value) {
        within("send", self.ws.send(Message::text(frame.to_string())))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        within("send", self.ws.send(Message::text(text.to_owned())))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("send", self.ws.send(Message::binary(bytes)))
            .await
            .expect("send");
    }

    pub async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = within("close", self.ws.send(Message::Close(Some(frame)))).await;
    }

    /// Expects a join on `topic`; answers ok with `response`; returns the join frame.
    pub async fn accept_join(&mut self, topic: &str, response: Value) -> Value {
        let join = self.recv_skipping_heartbeats().await.expect("a join");
        assert_eq!(join[2], topic, "{join}");
        assert_eq!(join[3], "phx_join", "{join}");
        assert_eq!(join[0], join[1], "join_ref is the join's own ref: {join}");
        self.reply(&join, "ok", response).await;
        join
    }

    /// Replies to `push` with this status and response.
    pub async fn reply(&mut self, push: &Value, status: &str, response: Value) {
        self.send(json!([push[0], push[1], push[2], "phx_reply", {"status": status, "response": response}]))
            .await;
    }
}

/// A socket with its driver not spawned (the test polls it), a channel on `room:1` joined, its
/// messages, and the server's side.
pub async fn joined() -> (
    phoenix_channels::Socket,
    phoenix_channels::SocketDriver,
    phoenix_channels::Channel,
    phoenix_channels::Messages,
    Conn,
) {
    let (connector, mut server) = fake_server();
    let (socket, mut driver) = phoenix_channels::Socket::builder("ws://phoenix.test/socket")
        .connector(connector)
        .build()
        .unwrap();
    let (channel, messages) = socket.channel("room:1").stream();
    let join = channel.join();
    let serve = async {
        let mut conn = server.accept().await;
        conn.accept_join("room:1", json!({})).await;
        within("join", join).await.unwrap();
        conn
    };
    let conn = tokio::select! {
        conn = serve => conn,
        () = &mut driver => panic!("the driver ended"),
    };
    (socket, driver, channel, messages, conn)
}
