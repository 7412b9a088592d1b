//! The transport under the driver: a WebSocket seen as a stream of received frames and a sink
//! of outgoing ones, and the connectors that open it.
//!
//! The default [`WebSocketConnector`] uses tokio-tungstenite (rustls with the `ring` provider and
//! the webpki roots for `wss://`, by default). [`StreamConnector`] runs the WebSocket handshake
//! over any byte stream the caller opens (a Unix socket, a proxy tunnel, an in-memory duplex in
//! tests). Anything implementing `Stream` + `Sink` with these item types is a [`Transport`], so a
//! custom connector can bring its own.

mod masked;
mod tls;
mod websocket;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite;
use url::Url;

use crate::frame::OutFrame;
use crate::proto::DisconnectReason;
pub use tls::{ByteStream, TlsConfigError};
/// The payload of a text frame: bytes known to be UTF-8 (tungstenite's type).
pub use tungstenite::Utf8Bytes;
pub use websocket::{StreamConnector, WebSocketConnector};

/// A boxed [`ByteStream`]: what [`Connector::open_stream`] opens.
pub type BoxStream = Box<dyn ByteStream>;

/// A frame read from the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A text frame: UTF-8, as the WebSocket protocol requires (the transport checks it).
    Text(Utf8Bytes),
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

    /// Opens a plain byte stream to the host and port of `url` the way this connector opens
    /// the WebSocket's, without the WebSocket handshake: TCP, with TLS when the scheme is
    /// `wss` or `https`. For plain HTTP requests to the same server beside the socket (a file
    /// download, say), with the same TLS settings.
    ///
    /// The default answers [`DisconnectReason::Io`]: a connector that cannot open such a
    /// stream says so. [`WebSocketConnector`] and [`StreamConnector`] open one.
    async fn open_stream(&self, url: &Url) -> Result<BoxStream, DisconnectReason> {
        Err(DisconnectReason::Io(format!(
            "this connector opens no plain streams (to {})",
            crate::socket::redact_url(url)
        )))
    }
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
    /// The connection is read through a buffer of this size, filled without zeroing, and
    /// tungstenite takes its frames from that buffer in small pieces: tungstenite zeroes the
    /// free part of its own read buffer before every read, so a big buffer of its own would
    /// cost on every read, even one that finds a single small frame (at 64 KiB, more than the
    /// rest of the client's work per sequential round trip in `bench_peers`), while a small
    /// read from the connection would split bursts into more reads and smaller batches.
    pub read_buffer_size: usize,
}

/// The default [`WebSocketSettings::max_frame_size`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;

/// The smallest [`WebSocketSettings::read_buffer_size`] used.
const MIN_READ_BUFFER: usize = 4 << 10;

/// tungstenite's own read buffer: how much it zeroes and takes per read from the buffered
/// connection (the socket itself is read through a buffer of at least [`MIN_READ_BUFFER`]).
/// 512 B: callgrind, sequential round trips, 4 KiB → 512 B: 19,324 → 16,166 instructions
/// (100 B, current_thread), 37,630 → 26,848 (4 KiB); 256 B reads more often for no gain.
const TUNGSTENITE_READ: usize = 512;

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
            .read_buffer_size(TUNGSTENITE_READ)
            .max_message_size(Some(self.max_frame_size))
            .max_frame_size(Some(self.max_frame_size))
    }

    /// The connection, read through a buffer of [`read_buffer_size`](Self::read_buffer_size)
    /// (allocated and zeroed once; writes pass through).
    fn buffered<S: tokio::io::AsyncRead>(self, stream: S) -> tokio::io::BufReader<S> {
        tokio::io::BufReader::with_capacity(self.read_buffer_size.max(MIN_READ_BUFFER), stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connectors_open_plain_streams_to_the_url_s_host_and_port() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = Url::parse(&format!("http://{addr}/api/files/x")).unwrap();
        let connector = WebSocketConnector::new();
        let opened = connector.open_stream(&url);
        let (opened, accepted) = tokio::join!(opened, listener.accept());
        let (mut client, mut server) = (opened.unwrap(), accepted.unwrap().0);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // A connector without plain streams says so.
        #[derive(Debug)]
        struct WebSocketOnly;
        #[async_trait]
        impl Connector for WebSocketOnly {
            async fn connect(&self, _: &ConnectRequest) -> Result<BoxTransport, DisconnectReason> {
                Err(DisconnectReason::Eof)
            }
        }
        let refused = WebSocketOnly.open_stream(&url).await.err();
        assert!(
            matches!(refused, Some(DisconnectReason::Io(_))),
            "{refused:?}"
        );
    }

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
        // tungstenite zeroes its whole free read buffer before each read: it gets a small one,
        // and the connection is read through a buffer of `read_buffer_size`.
        let config = WebSocketSettings::default().to_config();
        assert_eq!(config.read_buffer_size, TUNGSTENITE_READ);
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
        // tungstenite's own buffer stays small whatever the connection's buffer is.
        assert_eq!(tiny.to_config().read_buffer_size, TUNGSTENITE_READ);
    }

    /// Counts the reads that return data.
    struct CountingReads {
        inner: tokio::io::DuplexStream,
        reads: usize,
    }

    impl tokio::io::AsyncRead for CountingReads {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.reads += 1;
            }
            polled
        }
    }

    #[tokio::test]
    async fn a_burst_of_small_frames_is_taken_in_one_read_from_the_connection() {
        use futures_util::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        // 60 unmasked text frames of 100 bytes from the server: 6 KiB, more than tungstenite's
        // own read buffer, well within the default read buffer of the connection.
        let frame: Vec<u8> = [&[0x81, 100][..], &[b'x'; 100][..]].concat();
        let burst = frame.repeat(60);
        let (client, mut server) = tokio::io::duplex(64 << 10);
        server.write_all(&burst).await.unwrap();
        let settings = WebSocketSettings::default();
        let counted = settings.buffered(CountingReads {
            inner: client,
            reads: 0,
        });
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            ReadOnly(counted),
            tungstenite::protocol::Role::Client,
            Some(settings.to_config()),
        )
        .await;
        for _ in 0..60 {
            let message = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(message.len(), 100);
        }
        assert_eq!(ws.get_ref().0.get_ref().reads, 1);
    }

    /// A read-only stream seen as a duplex one (the test writes nothing).
    struct ReadOnly<R>(R);

    impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ReadOnly<R> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<R: Unpin> tokio::io::AsyncWrite for ReadOnly<R> {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
}
