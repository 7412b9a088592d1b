//! The WebSocket connectors: [`WebSocketConnector`] (TCP, TLS, handshake) and
//! [`StreamConnector`] (the handshake over a caller's stream), and tokio-tungstenite's stream
//! seen as a [`Transport`](super::Transport).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
#[cfg(feature = "rustls-ring")]
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, client::IntoClientRequest};

use super::masked::{Secrets, Unmask};
#[cfg(feature = "rustls-ring")]
use super::tls::rustls_config_with;
use super::tls::{Io, TlsConfigError, pem_certificates};
use super::{
    BoxStream, BoxTransport, ConnectRequest, Connector, Outgoing, Received, WebSocketSettings,
};

use crate::frame::OutFrame;
use crate::proto::DisconnectReason;

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
    pub(super) settings: WebSocketSettings,
    #[cfg(feature = "rustls-ring")]
    pub(super) rustls: Option<Arc<rustls::ClientConfig>>,
    #[cfg(feature = "native-tls")]
    pub(super) native: Option<native_tls::TlsConnector>,
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
            Err(TlsConfigError::NoTls)
        }
        #[cfg(any(feature = "rustls-ring", feature = "native-tls"))]
        Ok(self)
    }
}

impl WebSocketConnector {
    /// TCP (with `TCP_NODELAY`) to the host and port of `url`, with TLS when `tls` is set.
    async fn open(&self, url: &url::Url, tls: bool) -> Result<Box<dyn Io>, DisconnectReason> {
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(DisconnectReason::Io("the URL has no host".into())),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| DisconnectReason::Io(e.to_string()))?;
        // Small frames go out at once (as tokio-tungstenite's own connect does).
        let _ = tcp.set_nodelay(true);
        if tls {
            self.tls(&host, tcp).await
        } else {
            Ok(Box::new(tcp))
        }
    }
}

/// Whether a URL's scheme asks for TLS.
fn is_tls(url: &url::Url) -> bool {
    matches!(url.scheme(), "wss" | "https")
}

#[async_trait]
impl Connector for WebSocketConnector {
    async fn connect(&self, request: &ConnectRequest) -> Result<BoxTransport, DisconnectReason> {
        let (http, secrets) = http_request(request)?;
        let stream = self
            .open(&request.url, request.url.scheme() == "wss")
            .await?;
        handshake(&self.settings, http, secrets, stream).await
    }

    async fn open_stream(&self, url: &url::Url) -> Result<BoxStream, DisconnectReason> {
        self.open(url, is_tls(url)).await
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
    pub(super) settings: WebSocketSettings,
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
        let (http, secrets) = http_request(request)?;
        handshake(&self.settings, http, secrets, stream).await
    }

    /// The closure's stream for a request to `url` (without headers or subprotocols): the
    /// closure decides about TLS.
    async fn open_stream(&self, url: &url::Url) -> Result<BoxStream, DisconnectReason> {
        let stream = (self.open)(ConnectRequest::new(url.clone()))
            .await
            .map_err(|e| DisconnectReason::Io(e.to_string()))?;
        Ok(Box::new(stream))
    }
}

/// The WebSocket handshake over `stream` (credentials put back on the wire by [`Unmask`],
/// reads buffered as `settings` say), and the transport it opens.
async fn handshake<S>(
    settings: &WebSocketSettings,
    http: tungstenite::handshake::client::Request,
    secrets: Secrets,
    stream: S,
) -> Result<BoxTransport, DisconnectReason>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stream, _response) = tokio_tungstenite::client_async_with_config(
        http,
        settings.buffered(Unmask::new(stream, secrets)),
        Some(settings.to_config()),
    )
    .await
    .map_err(ws_error)?;
    Ok(Box::new(WsTransport(stream)))
}

/// The upgrade request as tungstenite gets it — with placeholders for the query values (but
/// those of [`SHOWN_PARAMS`](crate::socket::SHOWN_PARAMS)), the header values and the token
/// subprotocol, since tungstenite logs the whole request at trace level — and the secrets
/// that [`Unmask`] puts back on the wire.
fn http_request(
    request: &ConnectRequest,
) -> Result<(tungstenite::handshake::client::Request, Secrets), DisconnectReason> {
    use tungstenite::http::{HeaderName, HeaderValue};
    let invalid =
        |what: &str, e: &dyn fmt::Display| DisconnectReason::Io(format!("invalid {what}: {e}"));
    let mut secrets = Secrets::new();
    let mut url = request.url.clone();
    if let Some(query) = request.url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) => {
                    let decoded: String = url::form_urlencoded::parse(pair.as_bytes())
                        .next()
                        .map(|(k, _)| k.into_owned())
                        .unwrap_or_default();
                    if crate::socket::SHOWN_PARAMS.contains(&decoded.as_str()) {
                        pair.to_owned()
                    } else {
                        format!("{name}={}", secrets.mask(value))
                    }
                }
                None => pair.to_owned(),
            })
            .collect();
        url.set_query(Some(&masked.join("&")));
    }
    let mut http = url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid("URL", &e))?;
    let headers = http.headers_mut();
    for (name, value) in &request.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid("header name", &e))?;
        // Checked as it will be sent, then masked.
        HeaderValue::from_str(value).map_err(|e| invalid("header value", &e))?;
        let value =
            HeaderValue::from_str(&secrets.mask(value)).map_err(|e| invalid("header value", &e))?;
        headers.append(name, value);
    }
    if !request.protocols.is_empty() {
        let joined = request.protocols.join(", ");
        HeaderValue::from_str(&joined).map_err(|e| invalid("subprotocol", &e))?;
        let masked: Vec<String> = request
            .protocols
            .iter()
            .map(|p| {
                if p == "phoenix" {
                    p.clone()
                } else {
                    secrets.mask(p)
                }
            })
            .collect();
        let value =
            HeaderValue::from_str(&masked.join(", ")).map_err(|e| invalid("subprotocol", &e))?;
        headers.insert("sec-websocket-protocol", value);
    }
    Ok((http, secrets))
}

/// Maps a tungstenite error to the reason a connection failed or ended.
pub(super) fn ws_error(error: tungstenite::Error) -> DisconnectReason {
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
pub(super) fn is_tls_error(error: &io::Error) -> bool {
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
                Ok(WsMessage::Text(text)) => Received::Text(text),
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
