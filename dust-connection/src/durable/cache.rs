//! [`SqliteCache`]: the durable [`Cache`], each store's entries and last seq in the
//! [`Database`], every applied event (or run of a catch-up's) one transaction that also retires
//! the outbox rows of the writes it confirms.

use std::collections::BTreeMap;

use rusqlite::{Connection, Statement, Transaction, params};

use super::{Database, DurableError, outbox};
use crate::engine::{Cache, CacheError, CachedEntry, CachedStore, Commit};
use crate::write::ClientOpId;

/// The cache's tables: one row per store (its last seq), one per entry (its value in the
/// storage envelope, as JSON text).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cache_stores (
    store TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cache_entries (
    store TEXT NOT NULL,
    path TEXT NOT NULL,
    value TEXT NOT NULL,
    kind TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (store, path)
) WITHOUT ROWID;
";

/// The durable [`Cache`]: the stores' state in a [`Database`], next to its outbox.
///
/// Each [`commit`](Cache::commit) (one event, or a run of a catch-up's) is one SQLite
/// transaction that writes the events' entries, the store's last seq and, for each event
/// carrying a `client_op_id`, removes that write's outbox row: after a crash, a queued write is either still in the outbox or already in the
/// cache, never both and never neither. Transactions run with `synchronous=NORMAL` in WAL
/// mode: a commit survives the process being killed (`kill -9`) without an fsync per event;
/// a power cut may lose the last commits, never atomicity (the next join catches up from the
/// seq that survived).
///
/// Usually made by [`MemoryEngine::open`](crate::MemoryEngine::open).
///
/// ```
/// use dust_connection::{Cache, Database, SqliteCache};
///
/// let cache = SqliteCache::new(Database::in_memory()?);
/// assert!(cache.load()?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqliteCache {
    db: Database,
}

impl SqliteCache {
    /// The cache in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Its database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every store's state (what [`Cache::load`] returns), with the database's own error.
    pub fn load_stores(&self) -> Result<BTreeMap<String, CachedStore>, DurableError> {
        let connection = self.db.lock();
        let mut stores = BTreeMap::new();
        let mut select = connection.prepare("SELECT store, last_seq FROM cache_stores")?;
        let rows = select.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (store, seq) = row?;
            stores.insert(store, CachedStore::new(seq_of(seq)?, BTreeMap::new()));
        }
        let mut select =
            connection.prepare("SELECT store, path, value, kind, revision FROM cache_entries")?;
        let rows = select.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (store, path, value, kind, revision) = row?;
            let value = serde_json::from_str(&value).map_err(|error| {
                DurableError::Corrupt(format!("cache entry {store} {path}: {error}"))
            })?;
            let entry = CachedEntry::new(value, kind, seq_of(revision)?);
            stores.entry(store).or_default().entries.insert(path, entry);
        }
        Ok(stores)
    }

    fn transaction<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, DurableError>,
    ) -> Result<R, DurableError> {
        let mut connection = self.db.lock();
        let transaction = connection.transaction()?;
        let result = f(&transaction)?;
        transaction.commit()?;
        Ok(result)
    }
}

/// A seq or revision read back (SQLite integers are signed).
fn seq_of(value: i64) -> Result<u64, DurableError> {
    u64::try_from(value).map_err(|_| DurableError::Corrupt(format!("negative seq {value}")))
}

/// A seq to store.
fn sql_seq(seq: u64) -> Result<i64, DurableError> {
    i64::try_from(seq).map_err(|_| DurableError::Corrupt(format!("seq {seq} is above i64::MAX")))
}

fn set_seq(connection: &Connection, store: &str, seq: u64) -> Result<(), DurableError> {
    connection
        .prepare_cached(
            "INSERT INTO cache_stores (store, last_seq) VALUES (?1, ?2)
             ON CONFLICT (store) DO UPDATE SET last_seq = excluded.last_seq",
        )?
        .execute(params![store, sql_seq(seq)?])?;
    Ok(())
}

const UPSERT: &str = "INSERT INTO cache_entries (store, path, value, kind, revision)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (store, path) DO UPDATE SET
         value = excluded.value, kind = excluded.kind, revision = excluded.revision";

const DELETE: &str = "DELETE FROM cache_entries WHERE store = ?1 AND path = ?2";

/// The statement in `slot`, prepared on first use.
fn prepared<'a, 'c>(
    slot: &'a mut Option<Statement<'c>>,
    connection: &'c Connection,
    sql: &str,
) -> Result<&'a mut Statement<'c>, DurableError> {
    if slot.is_none() {
        *slot = Some(connection.prepare(sql)?);
    }
    slot.as_mut()
        .ok_or_else(|| DurableError::Corrupt("a statement was not prepared".into()))
}

fn upsert(
    statement: &mut Statement<'_>,
    store: &str,
    path: &str,
    entry: &CachedEntry,
) -> Result<(), DurableError> {
    let value = serde_json::to_string(&entry.value)
        .map_err(|error| DurableError::Corrupt(format!("cache entry {path}: {error}")))?;
    statement.execute(params![
        store,
        path,
        value,
        entry.kind,
        sql_seq(entry.revision)?
    ])?;
    Ok(())
}

fn clear(connection: &Connection, store: &str) -> Result<(), DurableError> {
    connection
        .prepare("DELETE FROM cache_entries WHERE store = ?1")?
        .execute(params![store])?;
    Ok(())
}

fn retire(connection: &Connection, store: &str, client_op_id: &str) -> Result<(), DurableError> {
    outbox::retire(
        connection,
        store,
        &ClientOpId::from(client_op_id.to_owned()),
    )
}

impl Cache for SqliteCache {
    fn load(&self) -> Result<BTreeMap<String, CachedStore>, CacheError> {
        Ok(self.load_stores()?)
    }

    fn commit(&self, store: &str, commits: &[Commit]) -> Result<(), CacheError> {
        let Some(last) = commits.last() else {
            return Ok(());
        };
        self.transaction(|tx| {
            // Prepared once per transaction, when first needed.
            let (mut delete, mut set) = (None, None);
            for commit in commits {
                for path in &commit.removed {
                    prepared(&mut delete, tx, DELETE)?.execute(params![store, path])?;
                }
                for (path, entry) in &commit.set {
                    upsert(prepared(&mut set, tx, UPSERT)?, store, path, entry)?;
                }
                if let Some(id) = &commit.client_op_id {
                    retire(tx, store, id)?;
                }
            }
            set_seq(tx, store, last.seq)?;
            Ok(())
        })?;
        Ok(())
    }

    fn replace(
        &self,
        store: &str,
        state: &CachedStore,
        retire_ids: &[String],
    ) -> Result<(), CacheError> {
        self.transaction(|tx| {
            clear(tx, store)?;
            let mut set = tx.prepare(UPSERT)?;
            for (path, entry) in &state.entries {
                upsert(&mut set, store, path, entry)?;
            }
            set_seq(tx, store, state.last_seq)?;
            for id in retire_ids {
                retire(tx, store, id)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn forget(&self, store: &str) -> Result<(), CacheError> {
        self.transaction(|tx| {
            clear(tx, store)?;
            tx.prepare("DELETE FROM cache_stores WHERE store = ?1")?
                .execute(params![store])?;
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, WriteRequest};
    use serde_json::json;

    async fn queued(db: &Database, store: &str, request: WriteRequest) -> ClientOpId {
        let write = crate::write::encode(request, Format::Json).await.unwrap();
        outbox::append(db, store, std::slice::from_ref(&write), true).unwrap();
        write.client_op_id
    }

    fn ids(db: &Database, store: &str) -> Vec<String> {
        outbox::pending(db, store)
            .unwrap()
            .into_iter()
            .map(|p| p.write.client_op_id.as_str().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn an_event_s_commit_retires_its_write_s_outbox_row_in_the_same_transaction() {
        let db = Database::in_memory().unwrap();
        let cache = SqliteCache::new(db.clone());
        let a = queued(&db, "s", WriteRequest::set(["a"], 1)).await;
        let b = queued(&db, "s", WriteRequest::set(["b"], 2)).await;
        let other = queued(&db, "t", WriteRequest::set(["a"], 3)).await;

        let mut commit = Commit::new(1, Some(a.as_str().to_owned()));
        commit.set.push((
            "a".into(),
            CachedEntry::new(json!({"_scalar": 1}), "integer", 1),
        ));
        cache.commit("s", &[commit]).unwrap();
        assert_eq!(ids(&db, "s"), [b.as_str()], "a's row left with its event");
        assert_eq!(ids(&db, "t"), [other.as_str()], "another store's row stays");
        let loaded = cache.load_stores().unwrap();
        assert_eq!(loaded["s"].last_seq, 1);
        assert_eq!(loaded["s"].entries["a"].value, json!({"_scalar": 1}));

        // A commit that fails (here: a seq SQLite cannot hold) changes nothing: neither the
        // entries, nor the seq, nor the outbox.
        let mut failing = Commit::new(u64::MAX, Some(b.as_str().to_owned()));
        failing.set.push((
            "b".into(),
            CachedEntry::new(json!({"_scalar": 2}), "integer", 2),
        ));
        assert!(cache.commit("s", &[failing]).is_err());
        assert_eq!(ids(&db, "s"), [b.as_str()]);
        assert_eq!(cache.load_stores().unwrap(), loaded);

        // A replace retires the ids it is given, in its transaction.
        let state = CachedStore::new(7, BTreeMap::new());
        cache
            .replace("s", &state, &[b.as_str().to_owned()])
            .unwrap();
        assert!(ids(&db, "s").is_empty());
        assert_eq!(cache.load_stores().unwrap()["s"], state);
        cache.forget("s").unwrap();
        assert!(!cache.load_stores().unwrap().contains_key("s"));
    }

    #[test]
    fn a_value_that_is_not_json_is_a_typed_error() {
        let db = Database::in_memory().unwrap();
        db.lock()
            .execute(
                "INSERT INTO cache_entries (store, path, value, kind, revision)
                 VALUES ('s', 'a', '{not json', 'map', 1)",
                [],
            )
            .unwrap();
        assert!(matches!(
            SqliteCache::new(db).load_stores(),
            Err(DurableError::Corrupt(_))
        ));
    }
}
