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
pub use tls::TlsConfigError;
pub use websocket::{StreamConnector, WebSocketConnector};

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
