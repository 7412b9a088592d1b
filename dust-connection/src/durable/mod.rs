//! [`Database`]: the SDK's state on disk, in one SQLite file — the durable cache (each store's
//! entries and last seq) and the durable outbox (each store's accepted writes, in issue order).
//!
//! Both live in the same database so that one transaction can apply a store's event to the
//! cache, advance its last seq, *and* retire the outbox row of the write the event confirms:
//! after a crash, a queued write is either still in the outbox (and its fate is learned from
//! the catch-up, which starts after the cache's seq) or already in the cache, never neither and
//! never both.
//!
//! The file is opened in WAL mode and held exclusively by one process: a second process (or a
//! second [`Database::open`] of the same file) gets [`DurableError::Busy`] rather than two
//! writers interleaving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

mod cache;
pub(crate) mod outbox;

pub use cache::SqliteCache;

/// The schema version this build writes; a newer file is refused ([`DurableError::Version`]).
const SCHEMA_VERSION: i64 = 1;

/// A failure of the durable cache or outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// SQLite failed (I/O error, disk full, corrupt file, ...).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another process (or another [`Database`] in this one) holds the file.
    #[error("database {0} is in use by another process")]
    Busy(PathBuf),
    /// The file was written by a newer version of this crate.
    #[error("database schema version {found} is newer than this build's {supported}")]
    Version {
        /// The file's version.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// A row could not be read back (a value that is not what was written).
    #[error("database row: {0}")]
    Corrupt(String),
}

/// The SDK's state on disk: the durable cache and the durable outbox, in one SQLite file.
///
/// Cheap to clone (the clones share one connection).
///
/// ```
/// use dust_connection::Database;
///
/// let dir = std::env::temp_dir().join(format!("dust-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let db = Database::open(dir.join("app.db")).unwrap();
/// // A second opener of the same file is refused while `db` is open.
/// assert!(Database::open(dir.join("app.db")).is_err());
/// drop(db);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (or creates) the database at `path`, holding it exclusively until every clone is
    /// dropped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let path = path.as_ref().to_path_buf();
        let connection = Connection::open(&path)?;
        Self::setup(connection, Some(path))
    }

    /// A database in memory: the same behaviour, nothing kept after the last clone is dropped
    /// (for tests and for comparing the two caches).
    pub fn in_memory() -> Result<Self, DurableError> {
        Self::setup(Connection::open_in_memory()?, None)
    }

    /// The file, `None` for [`Database::in_memory`].
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn setup(connection: Connection, path: Option<PathBuf>) -> Result<Self, DurableError> {
        let busy = |error: rusqlite::Error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                DurableError::Busy(path.clone().unwrap_or_default())
            }
            _ => DurableError::Sqlite(error),
        };
        // Never wait for another process's lock: say it is busy.
        connection
            .busy_timeout(std::time::Duration::ZERO)
            .map_err(busy)?;
        // Exclusive locking: the first write transaction takes the file for good, so a second
        // process fails here instead of interleaving its writes with ours.
        connection
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(busy)?;
        let _: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(busy)?;
        // The cache's commits survive a process crash (kill -9) without a disk sync each: the
        // WAL is in the OS's hands when a commit returns. The outbox's appends sync the disk
        // (`synchronous = FULL` around their commit, see `outbox::append`).
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(busy)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(busy)?;
        if version > SCHEMA_VERSION {
            return Err(DurableError::Version {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        connection
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 {outbox}
                 {cache}
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;",
                outbox = outbox::SCHEMA,
                cache = cache::SCHEMA,
            ))
            .map_err(busy)?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection: Mutex::new(connection),
                path,
            }),
        })
    }

    /// The connection, for one transaction at a time.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        match self.inner.connection.lock() {
            Ok(connection) => connection,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
