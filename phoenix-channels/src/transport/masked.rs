//! Keeps credentials out of tungstenite's logs.
//!
//! tungstenite logs the whole upgrade request — request line with the query, and every
//! header — at trace level (`log` target `tungstenite::handshake::client`). So the request it
//! is given carries placeholders instead of the values of query params (except
//! [`SHOWN_PARAMS`](crate::socket::SHOWN_PARAMS)), header values and the auth token, and the
//! stream under it, [`Unmask`], puts the real values back into the request bytes on their way
//! to the connection. What tungstenite logs is the masked request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The end of the request's header.
const HEADER_END: &[u8] = b"\r\n\r\n";

/// The most request bytes held before the header ends (a request this big is refused).
const MAX_REQUEST: usize = 64 << 10;

/// Placeholders and the real text each stands for.
#[derive(Debug, Default)]
pub(crate) struct Secrets {
    nonce: u64,
    pairs: Vec<(String, String)>,
}

impl Secrets {
    pub(crate) fn new() -> Self {
        Self {
            nonce: rand::random(),
            pairs: Vec::new(),
        }
    }

    /// A placeholder for `real` (text as it appears on the wire).
    pub(crate) fn mask(&mut self, real: &str) -> String {
        if real.is_empty() {
            return String::new();
        }
        let placeholder = format!("phxmasked{:016x}x{}", self.nonce, self.pairs.len());
        self.pairs.push((placeholder.clone(), real.to_owned()));
        placeholder
    }

    /// The request bytes with every placeholder replaced by its real text.
    fn unmask(&self, request: &[u8]) -> Vec<u8> {
        let mut out = request.to_vec();
        for (placeholder, real) in &self.pairs {
            out = replace(&out, placeholder.as_bytes(), real.as_bytes());
        }
        out
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    let mut rest = haystack;
    while let Some(at) = memchr::memmem::find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// A stream that unmasks the request written through it (up to the end of its header), then
/// passes everything through.
#[derive(Debug)]
pub(crate) struct Unmask<S> {
    inner: S,
    secrets: Option<Secrets>,
    /// The request so far, while its header has not ended.
    request: Vec<u8>,
    /// Unmasked request bytes not yet written to `inner`.
    out: Vec<u8>,
    written: usize,
}

impl<S> Unmask<S> {
    pub(crate) fn new(inner: S, secrets: Secrets) -> Self {
        Self {
            inner,
            secrets: Some(secrets),
            request: Vec::new(),
            out: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Unmask<S> {
    /// Writes the unmasked request out; ready once all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Unmask<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unmask<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let Some(secrets) = &this.secrets else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        // Take the request up to the end of its header, at most.
        let seen = this.request.len();
        this.request.extend_from_slice(buf);
        let from = seen.saturating_sub(HEADER_END.len() - 1);
        let end = memchr::memmem::find(&this.request[from..], HEADER_END)
            .map(|at| from + at + HEADER_END.len());
        let Some(end) = end else {
            if this.request.len() > MAX_REQUEST {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "upgrade request too large",
                )));
            }
            return Poll::Ready(Ok(buf.len()));
        };
        let taken = end - seen;
        this.request.truncate(end);
        this.out = secrets.unmask(&this.request);
        this.written = 0;
        this.secrets = None;
        this.request = Vec::new();
        // Start writing; what is left goes on the next write, flush or read.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn the_request_is_unmasked_on_the_wire_even_when_written_in_pieces() {
        let mut secrets = Secrets::new();
        let token = secrets.mask("s3cret%20x");
        let auth = secrets.mask("Bearer b3arer");
        let request = format!(
            "GET /socket/websocket?token={token}&vsn=2.0.0 HTTP/1.1\r\nauthorization: {auth}\r\n\r\n"
        );
        assert!(!request.contains("s3cret") && !request.contains("b3arer"));
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut stream = Unmask::new(client, secrets);
        for piece in request.as_bytes().chunks(7) {
            stream.write_all(piece).await.unwrap();
        }
        stream.write_all(b"after").await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
        let mut wire = String::new();
        server.read_to_string(&mut wire).await.unwrap();
        assert_eq!(
            wire,
            "GET /socket/websocket?token=s3cret%20x&vsn=2.0.0 HTTP/1.1\r\nauthorization: Bearer b3arer\r\n\r\nafter"
        );
    }
}
