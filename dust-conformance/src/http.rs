//! Plain HTTP requests on the listener, beside the WebSocket upgrades: the request head is
//! read first; a request the emulation answers itself (the Dust emulation's
//! `GET /api/files/:hash`) is answered and the connection closed, and any other goes on to
//! the WebSocket handshake with the bytes already read replayed in front of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::shared::{BoxedIo, Shared};

/// The largest request head read before the handshake takes over (tungstenite's own limit
/// applies to the rest).
const MAX_HEAD: usize = 8 * 1024;

/// What the head of a request decided.
pub(crate) enum Routed {
    /// Answered here; the connection is done.
    Answered,
    /// A WebSocket upgrade (or anything else): the stream, with what was read replayed.
    Upgrade(BoxedIo),
}

/// Reads the request head (at most [`MAX_HEAD`] bytes) and answers it when it is a request the
/// emulation serves over plain HTTP.
pub(crate) async fn route(mut stream: BoxedIo, shared: &Shared) -> io::Result<Routed> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    if let Some(answer) = answer(&head, shared).await {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        return Ok(Routed::Answered);
    }
    Ok(Routed::Upgrade(Box::new(Rewind {
        prefix: head,
        at: 0,
        inner: stream,
    })))
}

/// The response to a plain HTTP request the emulation serves, or `None` to go on with the
/// upgrade.
async fn answer(head: &[u8], shared: &Shared) -> Option<Vec<u8>> {
    let dust = shared.dust.as_ref()?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if request.method != Some("GET") || header("upgrade").is_some() {
        return None;
    }
    let path = request.path?.split('?').next()?;
    let hash = path.strip_prefix(crate::dust::files::PREFIX)?;
    if hash.is_empty() || hash.contains('/') {
        return None;
    }
    let hash = percent_encoding::percent_decode_str(hash)
        .decode_utf8()
        .ok()?;
    let authorization = header("authorization");
    Some(
        crate::dust::files::serve(dust, &hash, authorization)
            .await
            .to_bytes(),
    )
}

/// A stream whose first reads return `prefix` (bytes already read from `inner`).
struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    inner: BoxedIo,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
