//! Write requests: the operation, its preconditions and its `client_op_id`.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use rand::Rng as _;
use serde_json::Value;

use super::path::IntoSegments;
use super::reply::Lease;

/// The idempotency key of a write: `op_` + base64url of 12 random bytes, unless the caller gives
/// one. It stays the same across every resend of the write.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientOpId(String);

impl ClientOpId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "op_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ClientOpId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for ClientOpId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl fmt::Display for ClientOpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientOpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The content of a `put_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileContent {
    /// These bytes.
    Bytes(Bytes),
    /// The content of this file, read when the write is encoded.
    File(PathBuf),
}

/// What a write does. Paths are segment lists, checked when the write is validated.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WriteOp {
    /// Sets the value at the path (a map value is stored as its leaves).
    Set {
        /// The path.
        path: Vec<String>,
        /// The value.
        value: Value,
    },
    /// Deletes the path and everything below it.
    Delete {
        /// The path.
        path: Vec<String>,
    },
    /// Merges a map into the path.
    Merge {
        /// The path.
        path: Vec<String>,
        /// A JSON object.
        value: Value,
    },
    /// Adds a number to the counter at the path.
    Increment {
        /// The path.
        path: Vec<String>,
        /// A JSON number.
        by: Value,
    },
    /// Adds a member to the set at the path.
    Add {
        /// The path.
        path: Vec<String>,
        /// The member.
        member: Value,
    },
    /// Removes a member from the set at the path.
    Remove {
        /// The path.
        path: Vec<String>,
        /// The member.
        member: Value,
    },
    /// Acquires a lease on the key (when it is free or its lease expired).
    Lease {
        /// The key.
        path: Vec<String>,
        /// How long the lease lasts.
        ttl_ms: u64,
        /// Who holds it.
        holder: Option<String>,
    },
    /// Extends a held lease.
    Renew {
        /// The key.
        path: Vec<String>,
        /// The lease's token.
        token: u64,
        /// The new duration.
        ttl_ms: u64,
    },
    /// Releases a held lease.
    Release {
        /// The key.
        path: Vec<String>,
        /// The lease's token.
        token: u64,
    },
    /// Stores a file.
    PutFile {
        /// The path.
        path: Vec<String>,
        /// The content.
        content: FileContent,
        /// The file name (default: the source file's name, if any).
        filename: Option<String>,
        /// The content type (default `application/octet-stream`).
        content_type: Option<String>,
    },
}

impl WriteOp {
    /// The op's wire name (`set`, `delete`, ..., `put_file`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Set { .. } => "set",
            Self::Delete { .. } => "delete",
            Self::Merge { .. } => "merge",
            Self::Increment { .. } => "increment",
            Self::Add { .. } => "add",
            Self::Remove { .. } => "remove",
            Self::Lease { .. } => "lease",
            Self::Renew { .. } => "renew",
            Self::Release { .. } => "release",
            Self::PutFile { .. } => "put_file",
        }
    }

    /// The path's segments.
    pub fn path(&self) -> &[String] {
        match self {
            Self::Set { path, .. }
            | Self::Delete { path }
            | Self::Merge { path, .. }
            | Self::Increment { path, .. }
            | Self::Add { path, .. }
            | Self::Remove { path, .. }
            | Self::Lease { path, .. }
            | Self::Renew { path, .. }
            | Self::Release { path, .. }
            | Self::PutFile { path, .. } => path,
        }
    }
}

/// A fence: the write applies only while `key` holds a live lease with this token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The leased key.
    pub key: Vec<String>,
    /// The lease's token.
    pub token: u64,
}

impl Fence {
    /// A fence on a key and token.
    pub fn new(key: impl IntoSegments, token: u64) -> Self {
        Self {
            key: key.into_segments(),
            token,
        }
    }
}

impl From<&Lease> for Fence {
    fn from(lease: &Lease) -> Self {
        Self {
            key: lease.key.segments().to_vec(),
            token: lease.token,
        }
    }
}

/// A write: what it does, its preconditions and its idempotency key.
///
/// ```
/// use dust_connection::{Fence, WriteRequest};
/// use serde_json::json;
///
/// let write = WriteRequest::set(["users", "ada"], json!({"name": "Ada"})).if_match(3);
/// assert_eq!(write.op.name(), "set");
/// assert!(write.client_op_id.as_str().starts_with("op_"));
/// let fenced = WriteRequest::increment(["jobs", "done"], 1).fence(Fence::new(["jobs", "lock"], 42));
/// assert_eq!(fenced.fence.unwrap().token, 42);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct WriteRequest {
    /// What the write does.
    pub op: WriteOp,
    /// Applies only if the path's revision is this (set and delete only).
    pub if_match: Option<u64>,
    /// Applies only if the path is absent (a leaf set only).
    pub if_absent: bool,
    /// Applies only while a lease is held with this token.
    pub fence: Option<Fence>,
    /// The idempotency key, kept across resends.
    pub client_op_id: ClientOpId,
    /// Its place in the store's issue order, taken by `Store::write` when it is called (not
    /// part of equality).
    pub(crate) order: crate::layer::outbox_internal::Order,
}

impl WriteRequest {
    /// A write of this op, with a new `client_op_id` and no preconditions.
    pub fn new(op: WriteOp) -> Self {
        Self {
            op,
            if_match: None,
            if_absent: false,
            fence: None,
            client_op_id: ClientOpId::generate(),
            order: crate::layer::outbox_internal::Order::default(),
        }
    }

    /// Sets `value` at `path`.
    pub fn set(path: impl IntoSegments, value: impl Into<Value>) -> Self {
        Self::new(WriteOp::Set {
            path: path.into_segments(),
            value: value.into(),
        })
    }

    /// Deletes `path` and everything below it.
    pub fn delete(path: impl IntoSegments) -> Self {
        Self::new(WriteOp::Delete {
            path: path.into_segments(),
        })
    }

    /// Merges the map `value` into `path`.
    pub fn merge(path: impl IntoSegments, value: impl Into<Value>) -> Self {
        Self::new(WriteOp::Merge {
            path: path.into_segments(),
            value: value.into(),
        })
    }

    /// Adds `by` to the counter at `path`.
    pub fn increment(path: impl IntoSegments, by: impl Into<Value>) -> Self {
        Self::new(WriteOp::Increment {
            path: path.into_segments(),
            by: by.into(),
        })
    }

    /// Adds `member` to the set at `path`.
    pub fn add(path: impl IntoSegments, member: impl Into<Value>) -> Self {
        Self::new(WriteOp::Add {
            path: path.into_segments(),
            member: member.into(),
        })
    }

    /// Removes `member` from the set at `path`.
    pub fn remove(path: impl IntoSegments, member: impl Into<Value>) -> Self {
        Self::new(WriteOp::Remove {
            path: path.into_segments(),
            member: member.into(),
        })
    }

    /// Acquires a lease on `key` for `ttl_ms`.
    pub fn lease(key: impl IntoSegments, ttl_ms: u64, holder: Option<String>) -> Self {
        Self::new(WriteOp::Lease {
            path: key.into_segments(),
            ttl_ms,
            holder,
        })
    }

    /// Renews a held lease for `ttl_ms`.
    pub fn renew(lease: &Lease, ttl_ms: u64) -> Self {
        Self::new(WriteOp::Renew {
            path: lease.key.segments().to_vec(),
            token: lease.token,
            ttl_ms,
        })
    }

    /// Releases a held lease.
    pub fn release(lease: &Lease) -> Self {
        Self::new(WriteOp::Release {
            path: lease.key.segments().to_vec(),
            token: lease.token,
        })
    }

    /// Stores `content` as a file at `path`.
    pub fn put_file(path: impl IntoSegments, content: impl Into<Bytes>) -> Self {
        Self::new(WriteOp::PutFile {
            path: path.into_segments(),
            content: FileContent::Bytes(content.into()),
            filename: None,
            content_type: None,
        })
    }

    /// Stores the file at `source` at `path` (read when the write is encoded; its name is the
    /// default file name).
    pub fn put_file_from(path: impl IntoSegments, source: impl Into<PathBuf>) -> Self {
        Self::new(WriteOp::PutFile {
            path: path.into_segments(),
            content: FileContent::File(source.into()),
            filename: None,
            content_type: None,
        })
    }

    /// Sets the file name and content type of a `put_file` (ignored for other ops).
    pub fn file_meta(mut self, filename: Option<String>, content_type: Option<String>) -> Self {
        if let WriteOp::PutFile {
            filename: f,
            content_type: c,
            ..
        } = &mut self.op
        {
            *f = filename;
            *c = content_type;
        }
        self
    }

    /// Applies only if the path's current revision is `revision`.
    pub fn if_match(mut self, revision: u64) -> Self {
        self.if_match = Some(revision);
        self
    }

    /// Applies only if the path is absent.
    pub fn if_absent(mut self) -> Self {
        self.if_absent = true;
        self
    }

    /// Applies only while the fence's lease is held.
    pub fn fence(mut self, fence: impl Into<Fence>) -> Self {
        self.fence = Some(fence.into());
        self
    }

    /// Uses this idempotency key instead of a generated one.
    pub fn with_client_op_id(mut self, id: impl Into<ClientOpId>) -> Self {
        self.client_op_id = id.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_are_op_underscore_and_16_base64url_chars() {
        let id = ClientOpId::generate();
        assert!(id.as_str().starts_with("op_"));
        assert_eq!(id.as_str().len(), 3 + 16);
        assert!(
            id.as_str()[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(id, ClientOpId::generate());
    }
}
