//! Credentials never reach a log, even tungstenite's trace of the upgrade request, while the
//! server still gets them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_channels::Socket;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tracing_subscriber::util::SubscriberInitExt as _;

/// A `tracing` writer that keeps every line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn credentials_reach_the_server_but_no_log_not_even_tungstenites_trace() {
    // Every record at every level, `log` records (tungstenite's) included.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Option<(String, String, String)>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let callback =
            move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                *record.lock().unwrap() = Some((
                    req.uri().to_string(),
                    header("authorization"),
                    header("sec-websocket-protocol"),
                ));
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "phoenix".parse().unwrap());
                Ok(resp)
            };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        use futures_util::StreamExt as _;
        while let Some(Ok(_)) = ws.next().await {}
    });

    let socket = Socket::builder(format!("ws://127.0.0.1:{port}/socket"))
        .param("token", "t0k3n-value")
        .param("sig", "s1g-value")
        .header("authorization", "Bearer h3ader-value")
        .auth_token("b3arer")
        .connect()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), socket.connected())
        .await
        .unwrap()
        .unwrap();
    let (uri, authorization, protocols) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        uri,
        "/socket/websocket?token=t0k3n-value&sig=s1g-value&vsn=2.0.0"
    );
    assert_eq!(authorization, "Bearer h3ader-value");
    // "b3arer", base64 without padding.
    assert_eq!(protocols, "phoenix, base64url.bearer.phx.YjNhcmVy");
    socket.disconnect().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("Request:"),
        "tungstenite's trace of the request is captured"
    );
    for secret in ["t0k3n-value", "s1g-value", "h3ader-value", "YjNhcmVy"] {
        assert!(!logs.contains(secret), "{secret} is in the logs:\n{logs}");
    }
    assert!(logs.contains("vsn=2.0.0"), "harmless params are shown");
}
