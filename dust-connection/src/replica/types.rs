//! The types of the replica's reads: paths to read, paging, entries, pages, status, errors.

use serde_json::Value;

use crate::engine::{Capabilities, StoreStatus, Stored};
use crate::glob::GlobError;
use crate::write::{IntoSegments, Path, PathError};

/// The largest page [`Replica::enumerate`](crate::Replica::enumerate) and [`Replica::range`](crate::Replica::range) return.
pub const MAX_PAGE: usize = 1000;

/// Why a read was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The path is invalid.
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    /// The glob pattern is invalid.
    #[error("invalid glob: {0}")]
    Glob(#[from] GlobError),
    /// The page's limit is 0 or above [`MAX_PAGE`].
    #[error("page limit {0} is not within 1..={MAX_PAGE}")]
    Limit(usize),
}

/// The order of a page: by rendered path, ascending or descending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// Ascending (the default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// Which page of a listing to read: at most `limit` entries (default 50, at most
/// [`MAX_PAGE`]), in `order`, after the cursor of the previous page.
///
/// ```
/// use dust_connection::{Order, Paging};
/// let first = Paging::new().limit(10).order(Order::Desc);
/// let next = first.clone().after("users/bob/name");
/// assert_eq!(next.get_limit(), 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paging {
    pub(super) limit: usize,
    pub(super) order: Order,
    pub(super) after: Option<String>,
}

impl Default for Paging {
    fn default() -> Self {
        Self::new()
    }
}

impl Paging {
    /// The first page, 50 entries, ascending.
    pub fn new() -> Self {
        Self {
            limit: 50,
            order: Order::Asc,
            after: None,
        }
    }

    /// At most this many entries (1 to [`MAX_PAGE`]; anything else is [`ReadError::Limit`]).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The limit set.
    pub fn get_limit(&self) -> usize {
        self.limit
    }

    /// The order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// The page after this cursor ([`Page::next_cursor`] of the previous page): entries whose
    /// rendered path comes after it in the page's order.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.after = Some(cursor.into());
        self
    }
}

/// One entry of a replica, as [`Replica::entry`](crate::Replica::entry) reads it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Entry {
    /// The rendered path.
    pub path: String,
    /// The value, unwrapped (never `{"_scalar": …}`); a subtree's assembled map.
    pub value: Value,
    /// The type the server records (`string`, `integer`, `float`, `boolean`, `null`, `map`,
    /// `counter`, `set`, `file`, `lease`); `map` for an assembled subtree.
    pub kind: String,
    /// The seq of the op that last wrote it (what `if_match` compares with); for a subtree,
    /// the latest of its entries'; for an entry that came in a snapshot, the snapshot's seq;
    /// for a pending entry, the replica's last seq when it was applied locally (not a
    /// revision for `if_match`).
    pub revision: u64,
    /// Whether it holds a write of this replica not confirmed yet
    /// ([`SyncedStore`](crate::SyncedStore)); for a subtree, whether any of its entries does.
    pub pending: bool,
}

impl Entry {
    pub(super) fn leaf(path: &str, stored: &Stored) -> Self {
        Self {
            path: path.to_owned(),
            value: stored.rendered(),
            kind: stored.kind.clone(),
            revision: stored.revision,
            pending: stored.pending,
        }
    }
}

/// A page of entries, and the cursor of the next one.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Page {
    /// The entries, in the page's order.
    pub entries: Vec<Entry>,
    /// The cursor to pass to [`Paging::after`] for the next page; `None` when this page is
    /// the last one.
    pub next_cursor: Option<String>,
}

/// A store's state, as its replica sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The store's connection status (`None` before the connection set one).
    pub connection: Option<StoreStatus>,
    /// The last seq applied.
    pub last_seq: u64,
    /// The `through_seq` of the last completed catch-up.
    pub caught_up_through: Option<u64>,
    /// Writes of this store not answered yet (queued or in flight in its outbox), when the
    /// replica was made with [`Replica::with_writes`](crate::Replica::with_writes); `None` otherwise.
    pub pending_ops: Option<usize>,
    /// How many entries the replica holds (pending writes included).
    pub entry_count: usize,
    /// How many optimistic writes ([`SyncedStore`](crate::SyncedStore)) are applied locally
    /// and not confirmed yet.
    pub optimistic: usize,
    /// What the last join reply granted (`None` before a join).
    pub capabilities: Option<Capabilities>,
    /// How many subscriptions are open.
    pub subscriptions: usize,
}

impl ReplicaStatus {
    /// `{"read": bool, "write": bool}` of the last join (`null` before a join).
    pub fn permissions(&self) -> Value {
        self.capabilities
            .as_ref()
            .map_or(Value::Null, |c| c.permissions.clone())
    }

    /// The token's scopes of the last join (empty before a join).
    pub fn scopes(&self) -> &[String] {
        self.capabilities.as_ref().map_or(&[], |c| &c.scopes)
    }
}

/// A path to read: a rendered path (`"users/ada~1b"`, parsed with [`Path::parse`]), a
/// [`Path`], or segments (`["users", "ada/b"]`, `Vec<String>`, ...).
pub trait IntoPath {
    /// The path, or why it is invalid.
    fn into_path(self) -> Result<Path, PathError>;
}

impl IntoPath for &str {
    fn into_path(self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}

impl IntoPath for String {
    fn into_path(self) -> Result<Path, PathError> {
        Path::parse(&self)
    }
}

impl IntoPath for &String {
    fn into_path(self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}

macro_rules! segments_into_path {
    ($($t:ty),* $(,)?) => {$(
        impl IntoPath for $t {
            fn into_path(self) -> Result<Path, PathError> {
                Path::new(self.into_segments())
            }
        }
    )*};
}

segments_into_path!(Path, &Path, Vec<String>, Vec<&str>, &[&str], &[String]);

impl<const N: usize> IntoPath for [&str; N] {
    fn into_path(self) -> Result<Path, PathError> {
        Path::new(self)
    }
}

impl<const N: usize> IntoPath for [String; N] {
    fn into_path(self) -> Result<Path, PathError> {
        Path::new(self)
    }
}
