//! `wss://` against a local TLS server with a self-signed certificate: an untrusted
//! certificate is a typed, final error (no retry loop); with the certificate as a custom root,
//! the socket connects.

#![cfg(any(feature = "rustls-ring", feature = "native-tls"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use phoenix_channels::transport::TlsConfigError;
use phoenix_channels::{BuildError, DisconnectReason, Socket, SocketStatus};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CERT: &[u8] = include_bytes!("fixtures/localhost.crt");
const KEY: &[u8] = include_bytes!("fixtures/localhost.key");

/// The bound on every wait (real time: these tests use a real TCP socket).
const T: Duration = Duration::from_secs(20);

/// A TLS WebSocket server on 127.0.0.1 with the self-signed `localhost` certificate; counts
/// the TCP connections it accepts, and keeps the WebSockets open.
async fn tls_server() -> (u16, Arc<AtomicUsize>) {
    let certs = vec![CertificateDer::from_pem_slice(CERT).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await {
                    use futures_util::StreamExt as _;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_typed_final_error() {
    let (port, accepted) = tls_server().await;
    let socket = Socket::builder(format!("wss://localhost:{port}/socket"))
        .connect()
        .unwrap();
    let mut status = socket.status_watch();
    let stopped = tokio::time::timeout(
        T,
        status.wait_for(|s| matches!(s, SocketStatus::Disconnected { .. })),
    )
    .await
    .expect("the socket stops")
    .unwrap()
    .clone();
    let SocketStatus::Disconnected {
        reason: Some(DisconnectReason::Tls(message)),
    } = &stopped
    else {
        panic!("expected a TLS error, got {stopped:?}");
    };
    assert!(message.contains("certificate"), "{message}");
    // One attempt, no retry loop.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        socket.connected().await.unwrap_err().reason,
        Some(DisconnectReason::Tls(message.clone()))
    );
}

#[tokio::test]
async fn a_custom_root_certificate_is_trusted() {
    let (port, accepted) = tls_server().await;
    let socket = Socket::builder(format!("wss://localhost:{port}/socket"))
        .root_certificates_pem(CERT)
        .connect()
        .unwrap();
    tokio::time::timeout(T, socket.connected())
        .await
        .expect("connects")
        .expect("connected");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    socket.disconnect().await;
}

#[tokio::test]
async fn unusable_root_certificates_fail_the_build() {
    let built = Socket::builder("wss://localhost/socket")
        .root_certificates_pem("not a certificate")
        .build();
    assert!(matches!(
        built,
        Err(BuildError::Tls(TlsConfigError::NoCertificates))
    ));
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let built = Socket::builder("wss://localhost/socket")
        .root_certificates_pem(broken)
        .build();
    assert!(
        matches!(
            built,
            Err(BuildError::Tls(TlsConfigError::InvalidCertificate(_)))
        ),
        "{built:?}"
    );
}

#[tokio::test]
async fn the_socket_s_connector_opens_tls_streams_for_https_with_its_roots() {
    use tokio::io::AsyncWriteExt as _;
    let (port, accepted) = tls_server().await;
    let url = url::Url::parse(&format!("https://localhost:{port}/api/files/x")).unwrap();
    // The socket's connector, with the custom root: the TLS handshake completes.
    let socket = Socket::builder(format!("wss://localhost:{port}/socket"))
        .root_certificates_pem(CERT)
        .build()
        .unwrap()
        .0;
    let mut stream = tokio::time::timeout(T, socket.connector().open_stream(&url))
        .await
        .expect("opens")
        .expect("trusted");
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The default roots do not trust it: a TLS error.
    let untrusted = Socket::builder(format!("wss://localhost:{port}/socket"))
        .build()
        .unwrap()
        .0;
    let refused = tokio::time::timeout(T, untrusted.connector().open_stream(&url))
        .await
        .expect("answers")
        .err();
    assert!(
        matches!(refused, Some(DisconnectReason::Tls(_))),
        "{refused:?}"
    );
}
