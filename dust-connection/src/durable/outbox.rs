//! The durable outbox's table: each store's accepted writes, in issue order, until answered.

use bytes::Bytes;
use phoenix_channels::Payload;
use rusqlite::{Connection, params};

use super::{Database, DurableError};
use crate::write::{ClientOpId, EncodedWrite, Path};

/// The outbox table. `sent` is set before a write is first sent: a recovered write that was
/// never sent cannot have been applied. `position` orders the writes of every store (issue order, across
/// restarts); a row leaves when its write is answered, or in the cache's transaction that
/// applies the write's own event.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    client_op_id TEXT NOT NULL,
    event TEXT NOT NULL,
    op TEXT NOT NULL,
    path TEXT NOT NULL,
    kind INTEGER NOT NULL,
    params BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_by_op ON outbox (store, client_op_id);
";

/// The push events and op names a write can have (rows name them by text).
const EVENTS: &[&str] = &["write", "put_file"];
const OPS: &[&str] = &[
    "set",
    "delete",
    "merge",
    "increment",
    "add",
    "remove",
    "lease",
    "renew",
    "release",
    "put_file",
];

const JSON: i64 = 0;
const BINARY: i64 = 1;
const MSGPACK: i64 = 2;

/// Appends `writes` to `store`'s outbox in one transaction, `sent` or not yet: when it
/// returns `Ok`, every one of them is on disk, in this order (the commit syncs the disk: one
/// sync for the group).
pub(crate) fn append(
    db: &Database,
    store: &str,
    writes: &[EncodedWrite],
    sent: bool,
) -> Result<(), DurableError> {
    let mut connection = db.lock();
    connection.pragma_update(None, "synchronous", "FULL")?;
    let result = insert(&mut connection, store, writes, sent);
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    result
}

fn insert(
    connection: &mut Connection,
    store: &str,
    writes: &[EncodedWrite],
    sent: bool,
) -> Result<(), DurableError> {
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO outbox (store, client_op_id, event, op, path, kind, params, sent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for write in writes {
            let params = &write.params;
            let kind = if params.is_msgpack() {
                MSGPACK
            } else if params.is_binary() {
                BINARY
            } else {
                JSON
            };
            let path = serde_json::to_string(write.path.segments())
                .map_err(|error| DurableError::Corrupt(error.to_string()))?;
            insert.execute(params![
                store,
                write.client_op_id.as_str(),
                write.event,
                write.op,
                path,
                kind,
                params.as_bytes(),
                sent,
            ])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// Removes the rows of answered writes (accepted, rejected, or failed for good), in one
/// transaction.
pub(crate) fn remove(
    db: &Database,
    store: &str,
    client_op_ids: &[ClientOpId],
) -> Result<(), DurableError> {
    for_each(db, store, client_op_ids, RETIRE)
}

const RETIRE: &str = "DELETE FROM outbox WHERE store = ?1 AND client_op_id = ?2";

/// Removes the row of `client_op_id`, inside the caller's transaction (the cache calls it in
/// the transaction that applies the write's own event).
pub(crate) fn retire(
    connection: &Connection,
    store: &str,
    client_op_id: &ClientOpId,
) -> Result<(), DurableError> {
    connection
        .prepare_cached(RETIRE)?
        .execute(params![store, client_op_id.as_str()])?;
    Ok(())
}

/// Marks writes as sent, in one transaction, before they are sent.
pub(crate) fn mark_sent(
    db: &Database,
    store: &str,
    client_op_ids: &[ClientOpId],
) -> Result<(), DurableError> {
    for_each(
        db,
        store,
        client_op_ids,
        "UPDATE outbox SET sent = 1 WHERE store = ?1 AND client_op_id = ?2",
    )
}

/// Runs `sql` (`?1` the store, `?2` the op id) for each write, in one transaction.
fn for_each(
    db: &Database,
    store: &str,
    client_op_ids: &[ClientOpId],
    sql: &str,
) -> Result<(), DurableError> {
    let mut connection = db.lock();
    let transaction = connection.transaction()?;
    {
        let mut statement = transaction.prepare_cached(sql)?;
        for id in client_op_ids {
            statement.execute(params![store, id.as_str()])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// A write of the outbox, and whether it may have been sent.
pub(crate) struct Pending {
    pub(crate) write: EncodedWrite,
    pub(crate) sent: bool,
}

/// The writes still in `store`'s outbox, in issue order.
pub(crate) fn pending(db: &Database, store: &str) -> Result<Vec<Pending>, DurableError> {
    let connection = db.lock();
    let mut select = connection.prepare_cached(
        "SELECT client_op_id, event, op, path, kind, params, sent FROM outbox
         WHERE store = ?1 ORDER BY position",
    )?;
    let rows = select.query_map(params![store], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, Vec<u8>>(5)?,
            row.get::<_, bool>(6)?,
        ))
    })?;
    let mut writes = Vec::new();
    for row in rows {
        let (client_op_id, event, op, path, kind, params, sent) = row?;
        let write = decode(client_op_id, &event, &op, &path, kind, params)?;
        writes.push(Pending { write, sent });
    }
    Ok(writes)
}

fn decode(
    client_op_id: String,
    event: &str,
    op: &str,
    path: &str,
    kind: i64,
    params: Vec<u8>,
) -> Result<EncodedWrite, DurableError> {
    let corrupt =
        |what: String| DurableError::Corrupt(format!("outbox row {client_op_id}: {what}"));
    let event = EVENTS
        .iter()
        .copied()
        .find(|known| *known == event)
        .ok_or_else(|| corrupt(format!("unknown event {event:?}")))?;
    let op = OPS
        .iter()
        .copied()
        .find(|known| *known == op)
        .ok_or_else(|| corrupt(format!("unknown op {op:?}")))?;
    let segments: Vec<String> =
        serde_json::from_str(path).map_err(|error| corrupt(format!("path: {error}")))?;
    let path = Path::new(segments).map_err(|error| corrupt(format!("path: {error}")))?;
    let params = match kind {
        JSON => Payload::from_json_bytes(Bytes::from(params))
            .map_err(|error| corrupt(format!("params: {error}")))?,
        MSGPACK => Payload::from_msgpack_bytes(Bytes::from(params))
            .map_err(|error| corrupt(format!("params: {error}")))?,
        BINARY => Payload::binary(params),
        other => return Err(corrupt(format!("unknown payload kind {other}"))),
    };
    Ok(EncodedWrite {
        event,
        params,
        client_op_id: ClientOpId::from(client_op_id.clone()),
        op,
        path,
        order: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, WriteRequest};
    use serde_json::json;

    async fn encoded(format: Format, request: WriteRequest) -> EncodedWrite {
        crate::write::encode(request, format).await.unwrap()
    }

    fn writes(pending: Vec<Pending>) -> Vec<EncodedWrite> {
        pending.into_iter().map(|p| p.write).collect()
    }

    fn key(writes: &[EncodedWrite]) -> Vec<(String, &str, &str, String, Payload)> {
        writes
            .iter()
            .map(|w| {
                let id = w.client_op_id.as_str().to_owned();
                (id, w.event, w.op, w.path.render(), w.params.clone())
            })
            .collect()
    }

    #[tokio::test]
    async fn writes_come_back_in_order_per_store_until_removed() {
        let db = Database::in_memory().unwrap();
        let a = encoded(Format::Json, WriteRequest::set(["a"], json!({"x": 1}))).await;
        let b = encoded(Format::MessagePack, WriteRequest::increment(["b"], 2)).await;
        let c = encoded(Format::Json, WriteRequest::delete(["c"])).await;
        append(&db, "s1", &[a.clone(), b.clone()], false).unwrap();
        append(&db, "s2", std::slice::from_ref(&c), true).unwrap();
        let back = writes(pending(&db, "s1").unwrap());
        assert_eq!(key(&back), key(&[a.clone(), b.clone()]));
        assert_eq!(key(&writes(pending(&db, "s2").unwrap())), key(&[c]));
        mark_sent(&db, "s1", std::slice::from_ref(&b.client_op_id)).unwrap();
        let sent: Vec<bool> = pending(&db, "s1").unwrap().iter().map(|p| p.sent).collect();
        assert_eq!(sent, [false, true]);
        assert!(pending(&db, "s2").unwrap()[0].sent);
        remove(&db, "s1", std::slice::from_ref(&a.client_op_id)).unwrap();
        assert_eq!(key(&writes(pending(&db, "s1").unwrap())), key(&[b]));
    }

    #[test]
    fn an_unknown_op_is_a_typed_error_not_a_panic() {
        let db = Database::in_memory().unwrap();
        db.lock()
            .execute(
                "INSERT INTO outbox (store, client_op_id, event, op, path, kind, params)
                 VALUES ('s', 'op_1', 'write', 'explode', '[\"a\"]', 0, x'7b7d')",
                [],
            )
            .unwrap();
        assert!(matches!(pending(&db, "s"), Err(DurableError::Corrupt(_))));
    }
}
