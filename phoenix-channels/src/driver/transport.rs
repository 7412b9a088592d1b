//! The transport under the driver: a WebSocket seen as a stream of received frames and a sink
//! of outgoing ones, and the connectors that open it.
//!
//! The default [`WebSocketConnector`] uses tokio-tungstenite (rustls with the `ring` provider and
//! the webpki roots for `wss://`, by default). [`StreamConnector`] runs the WebSocket handshake
//! over any byte stream the caller opens (a Unix socket, a proxy tunnel, an in-memory duplex in
//! tests). Anything implementing `Stream` + `Sink` with these item types is a [`Transport`], so a
//! custom connector can bring its own.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
#[cfg(feature = "rustls-ring")]
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, client::IntoClientRequest};
use url::Url;

use crate::proto::frame::OutFrame;
use crate::proto::socket::DisconnectReason;

/// A frame read from the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A text frame.
    Text(Bytes),
    /// A binary frame.
    Binary(Bytes),
    /// The peer closed the WebSocket (code 1005 when it gave none).
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// A frame to write to the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outgoing {
    /// A data frame.
    Frame(OutFrame),
    /// A close frame.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// A connected WebSocket: a stream of [`Received`] frames and a sink of [`Outgoing`] ones.
/// Errors are reported as the [`DisconnectReason`] they amount to.
pub trait Transport:
    Stream<Item = Result<Received, DisconnectReason>>
    + Sink<Outgoing, Error = DisconnectReason>
    + Send
    + Unpin
    + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<Received, DisconnectReason>>
        + Sink<Outgoing, Error = DisconnectReason>
        + Send
        + Unpin
        + 'static
{
}

/// A boxed [`Transport`].
pub type BoxTransport = Box<dyn Transport>;

/// What a connector needs to open the WebSocket of one connect attempt. Its `Debug` output
/// redacts the URL's credentials and query values (see
/// [`redact_url`](crate::socket::redact_url)) and shows header names only.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The full URL: endpoint + `/websocket` + params + `vsn=2.0.0`.
    pub url: Url,
    /// Extra HTTP headers of the upgrade request.
    pub headers: Vec<(String, String)>,
    /// WebSocket subprotocols (`phoenix` and the `authToken` one, when a token is set).
    pub protocols: Vec<String>,
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("url", &crate::socket::redact_url(&self.url))
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("protocols", &self.protocols.len())
            .finish()
    }
}

impl ConnectRequest {
    /// A request for this URL, without headers or subprotocols.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            headers: Vec::new(),
            protocols: Vec::new(),
        }
    }
}

/// Opens transports; called on every connect attempt.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens the WebSocket described by `request`.
    async fn connect(&self, request: &ConnectRequest) -> Result<BoxTransport, DisconnectReason>;
}

/// Settings of the WebSocket protocol layer.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct WebSocketSettings {
    /// The largest frame, and the largest message, accepted from the server (default 16 MiB):
    /// one limit, given to tungstenite as both its frame and its message size limit, so that
    /// neither a single frame nor a message in fragments can take more. A bigger frame ends
    /// the connection with [`DisconnectReason::Io`] (and the reconnect policy decides).
    pub max_frame_size: usize,
    /// How much one read from the connection may take, in bytes (default 64 KiB, at least
    /// 4 KiB; tungstenite's own default is 128 KiB).
    ///
    /// tungstenite zeroes the free part of its read buffer before every read, so a big
    /// buffer costs on every read, even one that finds a single small frame (at 128 KiB, a
    /// quarter of the client's CPU per sequential round trip in `bench_peers`), while a small
    /// one splits bursts into more reads and smaller batches (at 32 KiB, a fifth fewer
    /// pipelined writes per second in `dust-connection`'s benchmark). 64 KiB costs neither.
    pub read_buffer_size: usize,
}

/// The default [`WebSocketSettings::max_frame_size`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;

/// The smallest [`WebSocketSettings::read_buffer_size`] used.
const MIN_READ_BUFFER: usize = 4 << 10;

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            read_buffer_size: 64 << 10,
        }
    }
}

impl WebSocketSettings {
    fn to_config(self) -> tungstenite::protocol::WebSocketConfig {
        tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(MIN_READ_BUFFER))
            .max_message_size(Some(self.max_frame_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}

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

/// The default connector: TCP (with `TCP_NODELAY`), TLS for `wss://`, and the WebSocket
/// handshake, by tokio-tungstenite.
///
/// `wss://` works out of the box with the default `rustls-ring` feature; with the `native-tls`
/// feature instead, the platform's TLS library is used (with both, rustls). Without either, a
/// `wss://` connect fails with a clear error. A certificate the client does not trust ends
/// the attempt with [`DisconnectReason::Tls`]; trust more roots with
/// [`with_root_certificates_pem`](Self::with_root_certificates_pem).
#[derive(Clone, Debug, Default)]
pub struct WebSocketConnector {
    settings: WebSocketSettings,
    #[cfg(feature = "rustls-ring")]
    rustls: Option<Arc<rustls::ClientConfig>>,
    #[cfg(feature = "native-tls")]
    native: Option<native_tls::TlsConnector>,
}

impl WebSocketConnector {
    /// The default connector.
    pub fn new() -> Self {
        Self::default()
    }

    /// With these WebSocket settings.
    pub fn with_settings(mut self, settings: WebSocketSettings) -> Self {
        self.settings = settings;
        self
    }

    /// With this rustls configuration for `wss://` (custom roots, client certificates, ...).
    #[cfg(feature = "rustls-ring")]
    pub fn with_rustls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.rustls = Some(config);
        self
    }

    /// Also trusts the root certificates in `pem` (one or more `CERTIFICATE` blocks) for
    /// `wss://`, besides the default roots (webpki's with rustls, the platform's with
    /// native-tls): for a server with a private or self-signed certificate.
    pub fn with_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, TlsConfigError> {
        let blocks = pem_certificates(pem);
        if blocks.is_empty() {
            return Err(TlsConfigError::NoCertificates);
        }
        #[cfg(feature = "rustls-ring")]
        {
            self.rustls = Some(rustls_config_with(&blocks)?);
        }
        #[cfg(feature = "native-tls")]
        {
            let mut builder = native_tls::TlsConnector::builder();
            for block in &blocks {
                let certificate = native_tls::Certificate::from_pem(block.as_bytes())
                    .map_err(|e| TlsConfigError::InvalidCertificate(e.to_string()))?;
                builder.add_root_certificate(certificate);
            }
            self.native = Some(
                builder
                    .build()
                    .map_err(|e| TlsConfigError::Setup(e.to_string()))?,
            );
        }
        #[cfg(not(any(feature = "rustls-ring", feature = "native-tls")))]
        {
            let _ = &mut self;
            return Err(TlsConfigError::NoTls);
        }
        #[allow(unreachable_code)]
        Ok(self)
    }

    #[cfg(feature = "rustls-ring")]
    fn tls(&self) -> Result<tokio_tungstenite::Connector, DisconnectReason> {
        let config = match &self.rustls {
            Some(config) => config.clone(),
            None => default_rustls_config()?,
        };
        Ok(tokio_tungstenite::Connector::Rustls(config))
    }

    #[cfg(all(feature = "native-tls", not(feature = "rustls-ring")))]
    fn tls(&self) -> Result<tokio_tungstenite::Connector, DisconnectReason> {
        match &self.native {
            Some(connector) => Ok(tokio_tungstenite::Connector::NativeTls(connector.clone())),
            None => native_tls::TlsConnector::new()
                .map(tokio_tungstenite::Connector::NativeTls)
                .map_err(|e| DisconnectReason::Tls(format!("TLS configuration: {e}"))),
        }
    }
}

/// The `CERTIFICATE` blocks of PEM text, each with its armour.
fn pem_certificates(pem: &[u8]) -> Vec<String> {
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
fn rustls_config_with(blocks: &[String]) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
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

#[async_trait]
impl Connector for WebSocketConnector {
    async fn connect(&self, request: &ConnectRequest) -> Result<BoxTransport, DisconnectReason> {
        let http = http_request(request)?;
        let wss = request.url.scheme() == "wss";
        let config = Some(self.settings.to_config());
        #[cfg(any(feature = "rustls-ring", feature = "native-tls"))]
        let connected = {
            let tls = if wss { Some(self.tls()?) } else { None };
            tokio_tungstenite::connect_async_tls_with_config(http, config, true, tls).await
        };
        #[cfg(not(any(feature = "rustls-ring", feature = "native-tls")))]
        let connected = {
            if wss {
                return Err(ws_error(tungstenite::Error::Url(
                    tungstenite::error::UrlError::TlsFeatureNotEnabled,
                )));
            }
            tokio_tungstenite::connect_async_with_config(http, config, true).await
        };
        let (stream, _response) = connected.map_err(ws_error)?;
        Ok(Box::new(WsTransport(stream)))
    }
}

/// A connector that runs the WebSocket handshake over a byte stream opened by a closure: a Unix
/// socket, a tunnel through a proxy, or an in-memory duplex stream in tests.
///
/// ```
/// use phoenix_channels::transport::{ConnectRequest, StreamConnector};
/// use phoenix_channels::Socket;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let connector = StreamConnector::new(|request: ConnectRequest| async move {
///     let host = request.url.host_str().unwrap_or("localhost").to_owned();
///     let port = request.url.port_or_known_default().unwrap_or(80);
///     tokio::net::TcpStream::connect((host, port)).await
/// });
/// let socket = Socket::builder("ws://localhost:4000/socket").connector(connector).connect()?;
/// # Ok(()) }
/// ```
pub struct StreamConnector<F> {
    open: F,
    settings: WebSocketSettings,
}

impl<F> StreamConnector<F> {
    /// A connector that opens its byte stream with `open`.
    pub fn new(open: F) -> Self {
        Self {
            open,
            settings: WebSocketSettings::default(),
        }
    }

    /// With these WebSocket settings.
    pub fn with_settings(mut self, settings: WebSocketSettings) -> Self {
        self.settings = settings;
        self
    }
}

impl<F> fmt::Debug for StreamConnector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConnector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Fut, S> Connector for StreamConnector<F>
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    async fn connect(&self, request: &ConnectRequest) -> Result<BoxTransport, DisconnectReason> {
        let stream = (self.open)(request.clone())
            .await
            .map_err(|e| DisconnectReason::Io(e.to_string()))?;
        let http = http_request(request)?;
        let (stream, _response) = tokio_tungstenite::client_async_with_config(
            http,
            stream,
            Some(self.settings.to_config()),
        )
        .await
        .map_err(ws_error)?;
        Ok(Box::new(WsTransport(stream)))
    }
}

fn http_request(
    request: &ConnectRequest,
) -> Result<tungstenite::handshake::client::Request, DisconnectReason> {
    use tungstenite::http::{HeaderName, HeaderValue};
    let invalid =
        |what: &str, e: &dyn fmt::Display| DisconnectReason::Io(format!("invalid {what}: {e}"));
    let mut http = request
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid("URL", &e))?;
    let headers = http.headers_mut();
    for (name, value) in &request.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid("header name", &e))?;
        let value = HeaderValue::from_str(value).map_err(|e| invalid("header value", &e))?;
        headers.append(name, value);
    }
    if !request.protocols.is_empty() {
        let value = HeaderValue::from_str(&request.protocols.join(", "))
            .map_err(|e| invalid("subprotocol", &e))?;
        headers.insert("sec-websocket-protocol", value);
    }
    Ok(http)
}

/// Maps a tungstenite error to the reason a connection failed or ended.
fn ws_error(error: tungstenite::Error) -> DisconnectReason {
    use tungstenite::Error as E;
    match error {
        E::Http(response) => DisconnectReason::Http {
            status: response.status().as_u16(),
        },
        E::ConnectionClosed | E::AlreadyClosed => DisconnectReason::Eof,
        E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            DisconnectReason::Eof
        }
        E::Tls(e) => DisconnectReason::Tls(e.to_string()),
        E::Io(e) if is_tls_error(&e) => DisconnectReason::Tls(e.to_string()),
        E::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => DisconnectReason::Eof,
        E::Io(e) => DisconnectReason::Io(e.to_string()),
        E::Url(tungstenite::error::UrlError::TlsFeatureNotEnabled) => DisconnectReason::Io(
            "wss:// needs TLS: enable the `rustls-ring` (default) or `native-tls` feature".into(),
        ),
        other => DisconnectReason::Io(other.to_string()),
    }
}

/// Whether an I/O error is rustls' report of a failed handshake (an untrusted certificate, no
/// common protocol version, ...).
fn is_tls_error(error: &io::Error) -> bool {
    #[cfg(feature = "rustls-ring")]
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        return true;
    }
    let _ = error;
    false
}

/// A tokio-tungstenite stream seen as a [`Transport`].
struct WsTransport<S>(WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsTransport<S> {
    type Item = Result<Received, DisconnectReason>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let Some(next) = ready!(Pin::new(&mut self.0).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            let received = match next {
                Ok(WsMessage::Text(text)) => Received::Text(Bytes::from(text)),
                Ok(WsMessage::Binary(bytes)) => Received::Binary(bytes),
                Ok(WsMessage::Close(frame)) => match frame {
                    Some(frame) => Received::Close {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    },
                    None => Received::Close {
                        code: 1005,
                        reason: String::new(),
                    },
                },
                // Pings are answered by tungstenite itself.
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => continue,
                Err(e) => return Poll::Ready(Some(Err(ws_error(e)))),
            };
            return Poll::Ready(Some(Ok(received)));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Outgoing> for WsTransport<S> {
    type Error = DisconnectReason;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(ws_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Outgoing) -> Result<(), Self::Error> {
        let message = match item {
            Outgoing::Frame(OutFrame::Text(text)) => WsMessage::Text(text.into()),
            Outgoing::Frame(OutFrame::Binary(bytes)) => WsMessage::Binary(bytes),
            Outgoing::Close { code, reason } => {
                WsMessage::Close(Some(tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }))
            }
        };
        Pin::new(&mut self.0).start_send(message).map_err(ws_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(ws_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(ws_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_credentials() {
        let mut request = ConnectRequest::new(
            Url::parse("ws://h/socket/websocket?token=s3cret&vsn=2.0.0").unwrap(),
        );
        request
            .headers
            .push(("authorization".into(), "Bearer s3cret".into()));
        request
            .protocols
            .push("base64url.bearer.phx.czNjcmV0".into());
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("czNjcmV0"),
            "{shown}"
        );
        assert!(
            shown.contains("token=REDACTED") && shown.contains("authorization"),
            "{shown}"
        );
    }

    #[test]
    fn settings_reach_tungstenite_with_a_small_read_buffer_by_default() {
        let config = WebSocketSettings::default().to_config();
        assert_eq!(config.read_buffer_size, 64 << 10);
        // One limit for a frame and for a message.
        assert_eq!(config.max_message_size, Some(16 << 20));
        assert_eq!(config.max_frame_size, Some(16 << 20));
        let big = WebSocketSettings {
            max_frame_size: 100 << 20,
            ..WebSocketSettings::default()
        }
        .to_config();
        assert_eq!(
            (big.max_frame_size, big.max_message_size),
            (Some(100 << 20), Some(100 << 20))
        );
        let tiny = WebSocketSettings {
            read_buffer_size: 0,
            ..WebSocketSettings::default()
        };
        assert_eq!(tiny.to_config().read_buffer_size, MIN_READ_BUFFER);
    }
}
