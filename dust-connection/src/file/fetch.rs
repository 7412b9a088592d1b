//! [`FileClient`]: `GET /api/files/:hash` with the connection's token over a stream its
//! socket's connector opens, by hyper's HTTP/1 client; bounded in size and time, the content
//! checked against the ref's hash.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use http_body_util::Empty;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use phoenix_channels::transport::Connector;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use url::Url;

use super::{FileError, FileRef};
use crate::connection::DustConnection;
use crate::device::TokenProvider;

/// The default [`FileClient::max_size`]: 64 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 20;

/// The default [`FileClient::timeout`]: 60 s.
pub const DEFAULT_FILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The token a download is made with: the connection's.
#[derive(Clone)]
pub(crate) enum FileToken {
    Fixed(String),
    Provider(Arc<dyn TokenProvider>),
}

impl FileToken {
    async fn get(&self) -> Result<String, FileError> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Provider(provider) => provider
                .token()
                .await
                .map_err(|e| FileError::Token(e.to_string())),
        }
    }
}

/// Downloads the content of [`FileRef`]s over the server's `GET /api/files/:hash`, from the
/// host and port of the connection (`ws` → `http`, `wss` → `https`), with the connection's
/// token as a bearer, through the socket's connector (so with the same TLS settings). From
/// [`DustConnection::files`]; a cheap `Clone`.
///
/// Every download is bounded: at most [`max_size`](Self::max_size) bytes (default
/// [`DEFAULT_MAX_FILE_SIZE`]) and [`timeout`](Self::timeout) from start to last byte (default
/// [`DEFAULT_FILE_TIMEOUT`]), and its content is checked against the ref's hash and size.
///
/// ```no_run
/// use std::time::Duration;
/// use dust_connection::{DustConnection, MemoryEngine};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev")
///     .store("acme/app")
///     .engine(engine.clone())
///     .connect()?;
/// dust.store("acme/app")?.put_file(["docs", "hello"], &b"hello"[..], None, None).await?;
/// let file = engine.replica("acme/app").file_ref("docs/hello")?.expect("uploaded");
/// let files = dust.files().max_size(1 << 20).timeout(Duration::from_secs(10));
/// assert_eq!(&files.fetch(&file).await?[..], b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileClient {
    connector: Arc<dyn Connector>,
    base: Result<Url, String>,
    token: FileToken,
    max_size: u64,
    timeout: Duration,
}

impl fmt::Debug for FileClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileClient")
            .field("base", &self.base.as_ref().map(Url::as_str))
            .field("max_size", &self.max_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The HTTP origin of a socket endpoint: `ws` → `http`, `wss` → `https`, path, query and
/// credentials dropped.
fn http_base(endpoint: &str) -> Result<Url, String> {
    let url = Url::parse(endpoint).map_err(|e| e.to_string())?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => return Err(format!("scheme `{other}`")),
    };
    let host = url.host_str().ok_or("no host")?;
    let origin = match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}/"),
        None => format!("{scheme}://{host}/"),
    };
    Url::parse(&origin).map_err(|e| e.to_string())
}

impl DustConnection {
    /// A [`FileClient`] downloading with this connection's server, token and connector.
    pub fn files(&self) -> FileClient {
        FileClient {
            connector: self.inner.socket.connector(),
            base: http_base(&self.inner.endpoint),
            token: self.inner.file_token.clone(),
            max_size: DEFAULT_MAX_FILE_SIZE,
            timeout: DEFAULT_FILE_TIMEOUT,
        }
    }
}

/// Aborts the HTTP connection's task when dropped.
#[derive(Debug)]
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A header's value as a number.
fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl FileClient {
    /// At most this many bytes per download (default [`DEFAULT_MAX_FILE_SIZE`]): a ref, a
    /// `content-length` or a body over it ends the download with [`FileError::TooLarge`].
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// The whole download, from connecting to the last byte, within this (default
    /// [`DEFAULT_FILE_TIMEOUT`]); else [`FileError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The file's whole content, checked against its hash and size.
    pub async fn fetch(&self, file: &FileRef) -> Result<Bytes, FileError> {
        let mut body = self.open(file).await?;
        let mut content = BytesMut::with_capacity(usize::try_from(file.size).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            content.extend_from_slice(&chunk?);
        }
        Ok(content.freeze())
    }

    /// The file's content as a stream of chunks ([`FileBody`]), for content too big to hold
    /// at once. The status is checked before this returns; the size and time bounds hold
    /// while it streams, and its last item is an error if the content does not match the
    /// ref: use the chunks only once the stream has ended with `None`.
    pub async fn open(&self, file: &FileRef) -> Result<FileBody, FileError> {
        let expected = file
            .sha256_hex()
            .ok_or_else(|| FileError::UnsupportedHash(file.hash.clone()))?
            .to_owned();
        if file.size > self.max_size {
            return Err(FileError::TooLarge {
                limit: self.max_size,
            });
        }
        let deadline = Instant::now() + self.timeout;
        let (response, driver) = tokio::time::timeout_at(deadline, self.request(file))
            .await
            .map_err(|_| FileError::Timeout(self.timeout))??;
        let status = response.status().as_u16();
        let headers = response.headers();
        match status {
            200 => {}
            401 => return Err(FileError::Unauthorized),
            403 => return Err(FileError::Forbidden),
            404 => return Err(FileError::NotFound),
            429 => {
                return Err(FileError::RateLimited {
                    retry_after: number(headers, "retry-after").map(Duration::from_secs),
                    limit: number(headers, "x-ratelimit-limit"),
                    remaining: number(headers, "x-ratelimit-remaining"),
                    reset: number(headers, "x-ratelimit-reset").map(Duration::from_secs),
                });
            }
            other => return Err(FileError::Status(other)),
        }
        if let Some(length) = number(headers, "content-length") {
            if length > self.max_size {
                return Err(FileError::TooLarge {
                    limit: self.max_size,
                });
            }
            if length != file.size {
                return Err(mismatch(
                    &file.hash,
                    file.size,
                    format!("{length} bytes announced"),
                ));
            }
        }
        Ok(FileBody {
            body: response.into_body(),
            _driver: driver,
            hasher: Sha256::new(),
            received: 0,
            limit: self.max_size,
            size: file.size,
            expected,
            hash: file.hash.clone(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: self.timeout,
            done: false,
        })
    }

    /// Connects, sends the request and reads the response head.
    async fn request(
        &self,
        file: &FileRef,
    ) -> Result<(hyper::Response<Incoming>, Driver), FileError> {
        let mut url = self.base.clone().map_err(FileError::Url)?;
        url.path_segments_mut()
            .map_err(|()| FileError::Url("not a base URL".into()))?
            .clear()
            .extend(["api", "files", &file.hash]);
        let token = self.token.get().await?;
        let mut bearer = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| FileError::Token("the token is not a valid header value".into()))?;
        bearer.set_sensitive(true);
        let authority = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(FileError::Url("no host".into())),
        };
        let stream = self
            .connector
            .open_stream(&url)
            .await
            .map_err(FileError::Connect)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| FileError::Http(e.to_string()))?;
        let driver = Driver(tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "file download connection ended");
            }
        }));
        let request = hyper::Request::get(url.path())
            .header(header::HOST, authority)
            .header(header::AUTHORIZATION, bearer)
            .body(Empty::<Bytes>::new())
            .map_err(|e| FileError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FileError::Http(e.to_string()))?;
        Ok((response, driver))
    }
}

fn mismatch(hash: &str, size: u64, actual: String) -> FileError {
    FileError::Mismatch {
        expected: format!("{hash} ({size} bytes)"),
        actual,
    }
}

/// The content of a file as it arrives: a [`Stream`] of chunks, from [`FileClient::open`].
/// It ends with `None` once the whole content arrived and matched the ref's hash and size;
/// otherwise its last item is the error ([`FileError::Mismatch`], [`FileError::TooLarge`],
/// [`FileError::Timeout`], [`FileError::Http`]). Dropping it closes the connection.
pub struct FileBody {
    body: Incoming,
    _driver: Driver,
    hasher: Sha256,
    received: u64,
    limit: u64,
    size: u64,
    expected: String,
    hash: String,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    done: bool,
}

impl fmt::Debug for FileBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBody")
            .field("hash", &self.hash)
            .field("received", &self.received)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileBody {
    /// How many bytes arrived so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn fail(&mut self, error: FileError) -> Poll<Option<Result<Bytes, FileError>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    fn mismatch(&self, actual: String) -> FileError {
        mismatch(&self.hash, self.size, actual)
    }
}

impl Stream for FileBody {
    type Item = Result<Bytes, FileError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return self.fail(FileError::Timeout(timeout));
        }
        loop {
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return self.fail(FileError::Http(error.to_string())),
                None => {
                    self.done = true;
                    let digest = std::mem::take(&mut self.hasher).finalize();
                    let actual: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    if actual == self.expected && self.received == self.size {
                        return Poll::Ready(None);
                    }
                    let error = self.mismatch(format!("sha256:{actual} ({} bytes)", self.received));
                    return Poll::Ready(Some(Err(error)));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            self.received += data.len() as u64;
            if self.received > self.limit {
                let limit = self.limit;
                return self.fail(FileError::TooLarge { limit });
            }
            if self.received > self.size {
                let error = self.mismatch(format!("more than {} bytes", self.size));
                return self.fail(error);
            }
            self.hasher.update(&data);
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(data)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_origin_of_a_socket_endpoint() {
        let base = |e: &str| http_base(e).map(|u| u.to_string());
        assert_eq!(
            base("ws://127.0.0.1:4000/ws/sync?x=1").as_deref(),
            Ok("http://127.0.0.1:4000/")
        );
        assert_eq!(
            base("wss://u:p@dust.example.com/ws/sync").as_deref(),
            Ok("https://dust.example.com/")
        );
        assert!(base("ftp://x/").is_err());
        assert!(base("not a url").is_err());
    }
}
