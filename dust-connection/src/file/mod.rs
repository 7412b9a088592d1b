//! File references: a `put_file` value read back from a replica as a typed [`FileRef`], and
//! its content fetched over the server's `GET /api/files/:hash` ([`FileClient`]).

mod fetch;

use std::time::Duration;

use serde_json::Value;

use crate::replica::{Entry, IntoPath, Replica};
use crate::write::PathError;

pub(crate) use fetch::FileToken;
pub use fetch::{DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_FILE_SIZE, FileBody, FileClient};

/// A reference to a file stored in Dust: what a `put_file` leaves at its path (the server's
/// `{"_type": "file", "hash", "size", "content_type", "filename", "uploaded_at"}`). The
/// content itself is fetched with [`FileClient::fetch`] (or streamed with
/// [`FileClient::open`]), and checked against [`hash`](Self::hash).
///
/// ```
/// use dust_connection::FileRef;
/// use serde_json::json;
///
/// let value = json!({
///     "_type": "file",
///     "hash": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
///     "size": 5, "content_type": "text/plain", "filename": "hello.txt",
///     "uploaded_at": "2026-01-01T00:00:00.000000Z"
/// });
/// let file = FileRef::from_value(&value)?;
/// assert_eq!((file.size, file.filename.as_deref()), (5, Some("hello.txt")));
/// assert!(FileRef::from_value(&json!("just a string")).is_err());
/// # Ok::<(), dust_connection::FileRefError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileRef {
    /// The content hash, as the server addresses the file: `sha256:` and 64 lower-case hex
    /// digits.
    pub hash: String,
    /// The content's size in bytes.
    pub size: u64,
    /// The content type given at upload (`application/octet-stream` when none was).
    pub content_type: String,
    /// The file name given at upload, if any.
    pub filename: Option<String>,
    /// When it was uploaded (ISO 8601, as the server wrote it), if the ref says.
    pub uploaded_at: Option<String>,
}

/// Why a value is not a [`FileRef`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileRefError {
    /// The value is not a `{"_type": "file", …}` map (another value, or an entry of another
    /// type); the found type is given (`string`, `map`, `lease`, ...).
    #[error("not a file reference (found {0})")]
    NotAFile(String),
    /// A file reference without a field it needs, or with a field of the wrong type.
    #[error("malformed file reference: field `{0}` is missing or invalid")]
    Malformed(&'static str),
    /// The path is invalid.
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
}

/// The JSON type name of a value, for [`FileRefError::NotAFile`].
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(map) => {
            return map
                .get("_type")
                .and_then(Value::as_str)
                .unwrap_or("map")
                .to_owned();
        }
    }
    .to_owned()
}

impl FileRef {
    /// The file reference a value holds (as [`Replica::get`] reads a `put_file`'s path), or
    /// [`FileRefError`] when it is not one.
    pub fn from_value(value: &Value) -> Result<Self, FileRefError> {
        let Some(map) = value.as_object() else {
            return Err(FileRefError::NotAFile(kind_of(value)));
        };
        if map.get("_type").and_then(Value::as_str) != Some("file") {
            return Err(FileRefError::NotAFile(kind_of(value)));
        }
        let text = |field: &'static str| match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(FileRefError::Malformed(field)),
        };
        let hash = text("hash")?.ok_or(FileRefError::Malformed("hash"))?;
        let size = map
            .get("size")
            .and_then(Value::as_u64)
            .ok_or(FileRefError::Malformed("size"))?;
        Ok(Self {
            hash,
            size,
            content_type: text("content_type")?
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename: text("filename")?,
            uploaded_at: text("uploaded_at")?,
        })
    }

    /// The hex SHA-256 digest of [`hash`](Self::hash), when it is a `sha256:` hash of 64
    /// hex digits (lower case, as the server writes it).
    pub fn sha256_hex(&self) -> Option<&str> {
        let hex = self.hash.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then_some(hex)
    }
}

impl TryFrom<&Value> for FileRef {
    type Error = FileRefError;

    fn try_from(value: &Value) -> Result<Self, Self::Error> {
        Self::from_value(value)
    }
}

impl TryFrom<&Entry> for FileRef {
    type Error = FileRefError;

    /// The file reference of a replica entry of type `file`.
    fn try_from(entry: &Entry) -> Result<Self, Self::Error> {
        if entry.kind != "file" {
            return Err(FileRefError::NotAFile(entry.kind.clone()));
        }
        Self::from_value(&entry.value)
    }
}

impl Replica {
    /// The file reference at `path`: `None` when nothing is there, [`FileRefError::NotAFile`]
    /// when something else is.
    ///
    /// ```
    /// use dust_connection::{FileRef, MemoryEngine, ServerEvent, SyncEngine};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = MemoryEngine::new();
    /// let event: ServerEvent = serde_json::from_value(json!({
    ///     "store_seq": 1, "op": "put_file", "path": "docs/a",
    ///     "value": {"_type": "file", "size": 5, "content_type": "text/plain", "filename": null,
    ///               "hash": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}
    /// }))?;
    /// engine.handle_server_event("org/app", &event).await;
    /// let app = engine.replica("org/app");
    /// let file = app.file_ref("docs/a")?.expect("a file is there");
    /// assert_eq!(file.size, 5);
    /// assert_eq!(app.file_ref("docs/none")?, None);
    /// # Ok(()) }
    /// ```
    pub fn file_ref(&self, path: impl IntoPath) -> Result<Option<FileRef>, FileRefError> {
        self.entry(path)?
            .map(|entry| FileRef::try_from(&entry))
            .transpose()
    }
}

/// Why a file's content could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The ref's hash is not a `sha256:` hash, so the content could not be checked; nothing
    /// was fetched.
    #[error("unsupported file hash `{0}` (expected sha256:<64 hex digits>)")]
    UnsupportedHash(String),
    /// The connection's URL has no HTTP counterpart (not `ws`/`wss`/`http`/`https`).
    #[error("no HTTP URL for the connection's endpoint: {0}")]
    Url(String),
    /// The token provider failed.
    #[error("the token provider failed: {0}")]
    Token(String),
    /// The server could not be reached (TCP, TLS, or the connector cannot open streams).
    #[error("could not reach the server: {0}")]
    Connect(phoenix_channels::DisconnectReason),
    /// HTTP failed on the way (the connection broke, a malformed response).
    #[error("HTTP: {0}")]
    Http(String),
    /// 401: the token is missing or unknown.
    #[error("401 unauthorized: the token is missing or unknown")]
    Unauthorized,
    /// 403: the token lacks `files:read`, or no store it reaches references this hash now.
    #[error("403 forbidden: the token lacks files:read or reaches no store referencing the file")]
    Forbidden,
    /// 404: the server holds no content for this hash.
    #[error("404 not found: the server holds no content for this hash")]
    NotFound,
    /// 429: the token's read limit is used up.
    #[error("429 rate limited (retry after {:?})", .retry_after)]
    RateLimited {
        /// `retry-after`.
        retry_after: Option<Duration>,
        /// `x-ratelimit-limit`: requests per window.
        limit: Option<u64>,
        /// `x-ratelimit-remaining`.
        remaining: Option<u64>,
        /// `x-ratelimit-reset`, in seconds.
        reset: Option<Duration>,
    },
    /// Another HTTP status.
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// The content is larger than the client's limit ([`FileClient::max_size`]): the ref's
    /// size, the announced `content-length`, or the bytes received said so. What was
    /// received is dropped.
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The download did not finish within the client's timeout ([`FileClient::timeout`]).
    #[error("the download did not finish within {0:?}")]
    Timeout(Duration),
    /// The content's SHA-256 is not the ref's hash (or its size not the ref's size).
    #[error("the content does not match the reference: expected {expected}, got {actual}")]
    Mismatch {
        /// The ref's hash (and size).
        expected: String,
        /// The content's.
        actual: String,
    },
}
