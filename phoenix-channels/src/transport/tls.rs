//! TLS for `wss://`: the root certificates, and the TLS layer of [`WebSocketConnector`] with
//! rustls (default) or native-tls.

#[cfg(feature = "rustls-ring")]
use std::io;
#[cfg(feature = "rustls-ring")]
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::websocket::WebSocketConnector;
#[cfg(feature = "rustls-ring")]
use super::websocket::is_tls_error;
#[cfg(not(any(feature = "rustls-ring", feature = "native-tls")))]
use super::websocket::ws_error;
use crate::proto::DisconnectReason;
#[cfg(not(any(feature = "rustls-ring", feature = "native-tls")))]
use tokio_tungstenite::tungstenite;

/// Why custom root certificates could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The PEM text holds no `CERTIFICATE` block.
    #[error("no certificate found in the PEM text")]
    NoCertificates,
    /// A certificate could not be read or used.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The TLS library could not be set up with them.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The crate was built without TLS (neither `rustls-ring` nor `native-tls`).
    #[error("no TLS support: enable the `rustls-ring` (default) or `native-tls` feature")]
    NoTls,
}

/// The `CERTIFICATE` blocks of PEM text, each with its armour.
pub(super) fn pem_certificates(pem: &[u8]) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(rest[start..end].to_owned());
        rest = &rest[end..];
    }
    blocks
}

#[cfg(feature = "rustls-ring")]
fn rustls_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

#[cfg(feature = "rustls-ring")]
fn rustls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| e.to_string())
}

#[cfg(feature = "rustls-ring")]
pub(super) fn rustls_config_with(
    blocks: &[String],
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls_roots();
    for block in blocks {
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| TlsConfigError::InvalidCertificate(e.to_string()))?;
        roots
            .add(der)
            .map_err(|e| TlsConfigError::InvalidCertificate(e.to_string()))?;
    }
    rustls_config(roots).map_err(TlsConfigError::Setup)
}

#[cfg(feature = "rustls-ring")]
fn default_rustls_config() -> Result<Arc<rustls::ClientConfig>, DisconnectReason> {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| rustls_config(rustls_roots()))
        .clone()
        .map_err(|e| DisconnectReason::Tls(format!("TLS configuration: {e}")))
}

/// A byte stream: TCP, TLS over TCP, or whatever a connector opens
/// ([`Connector::open_stream`](super::Connector::open_stream)). Anything `AsyncRead +
/// AsyncWrite + Send + Unpin + 'static` is one.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

pub(super) use ByteStream as Io;

impl WebSocketConnector {
    /// TLS over `tcp` to `host`.
    #[cfg(feature = "rustls-ring")]
    pub(super) async fn tls(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Box<dyn Io>, DisconnectReason> {
        let config = match &self.rustls {
            Some(config) => config.clone(),
            None => default_rustls_config()?,
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| DisconnectReason::Tls(format!("invalid server name `{host}`: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                if is_tls_error(&e) {
                    DisconnectReason::Tls(e.to_string())
                } else if e.kind() == io::ErrorKind::UnexpectedEof {
                    DisconnectReason::Eof
                } else {
                    DisconnectReason::Io(e.to_string())
                }
            })?;
        Ok(Box::new(stream))
    }

    /// TLS over `tcp` to `host`.
    #[cfg(all(feature = "native-tls", not(feature = "rustls-ring")))]
    pub(super) async fn tls(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Box<dyn Io>, DisconnectReason> {
        let connector = match &self.native {
            Some(connector) => connector.clone(),
            None => native_tls::TlsConnector::new()
                .map_err(|e| DisconnectReason::Tls(format!("TLS configuration: {e}")))?,
        };
        let stream = tokio_native_tls::TlsConnector::from(connector)
            .connect(host, tcp)
            .await
            .map_err(|e| DisconnectReason::Tls(e.to_string()))?;
        Ok(Box::new(stream))
    }

    /// Without TLS support, `wss://` cannot be opened.
    #[cfg(not(any(feature = "rustls-ring", feature = "native-tls")))]
    pub(super) async fn tls(
        &self,
        _host: &str,
        _tcp: TcpStream,
    ) -> Result<Box<dyn Io>, DisconnectReason> {
        Err(ws_error(tungstenite::Error::Url(
            tungstenite::error::UrlError::TlsFeatureNotEnabled,
        )))
    }
}
