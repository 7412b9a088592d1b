//! The outbox's journal: where a durable outbox keeps its accepted writes (a [`Database`]),
//! or nothing (the in-memory outbox).
//!
//! [`Database`]: crate::Database

use std::sync::Arc;

use crate::error::WriteError;
use crate::write::{ClientOpId, EncodedWrite};

/// A write a durable outbox held when the process started.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) write: EncodedWrite,
    /// Whether it may have been sent (and so applied).
    pub(crate) sent: bool,
}

/// A store's outbox journal, and the writes it held at the start.
#[derive(Debug)]
pub(crate) struct Journaled {
    pub(crate) journal: Journal,
    pub(crate) recovered: Vec<Recovered>,
}

/// A store's outbox journal. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    #[cfg(feature = "sqlite")]
    store: Arc<str>,
    #[cfg(feature = "sqlite")]
    database: Option<crate::Database>,
}

impl Journal {
    /// The in-memory outbox: nothing is kept.
    pub(crate) fn none(store: Arc<str>) -> Self {
        #[cfg(not(feature = "sqlite"))]
        let _ = store;
        Self {
            #[cfg(feature = "sqlite")]
            store,
            #[cfg(feature = "sqlite")]
            database: None,
        }
    }

    /// A durable outbox in `database`.
    #[cfg(feature = "sqlite")]
    pub(crate) fn durable(store: Arc<str>, database: crate::Database) -> Self {
        Self {
            store,
            database: Some(database),
        }
    }

    /// Whether writes are kept on disk.
    pub(crate) fn is_durable(&self) -> bool {
        #[cfg(feature = "sqlite")]
        {
            self.database.is_some()
        }
        #[cfg(not(feature = "sqlite"))]
        {
            false
        }
    }

    /// Puts `writes` on disk in one transaction, in order (off the async threads: it waits
    /// for the disk).
    /// `sent` records them as (about to be) sent.
    pub(crate) async fn append(
        &self,
        writes: Vec<EncodedWrite>,
        sent: bool,
    ) -> Result<(), WriteError> {
        #[cfg(feature = "sqlite")]
        if let Some(database) = &self.database {
            let (database, store) = (database.clone(), self.store.clone());
            let append = move || crate::durable::outbox::append(&database, &store, &writes, sent);
            let result = match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime
                    .spawn_blocking(append)
                    .await
                    .unwrap_or_else(|join| Err(crate::DurableError::Corrupt(join.to_string()))),
                Err(_) => append(),
            };
            return result.map_err(|error| WriteError::Storage(error.to_string()));
        }
        let _ = (writes, sent);
        Ok(())
    }

    /// Marks writes as sent, before they are sent (a recovered write never sent cannot have
    /// been applied, and goes out without waiting).
    pub(crate) fn mark_sent(&self, client_op_ids: &[ClientOpId]) -> Result<(), WriteError> {
        #[cfg(feature = "sqlite")]
        if let Some(database) = &self.database {
            return crate::durable::outbox::mark_sent(database, &self.store, client_op_ids)
                .map_err(|error| WriteError::Storage(error.to_string()));
        }
        let _ = client_op_ids;
        Ok(())
    }

    /// The writes were answered for good: they leave the journal, in one commit. A failure
    /// is logged (the rows stay; after a restart the writes are answered from the catch-up,
    /// never applied twice).
    pub(crate) fn remove(&self, client_op_ids: &[ClientOpId]) {
        #[cfg(feature = "sqlite")]
        if let Some(database) = &self.database
            && let Err(error) = crate::durable::outbox::remove(database, &self.store, client_op_ids)
        {
            tracing::warn!(store = %self.store, writes = client_op_ids.len(), %error, "could not remove answered writes from the durable outbox");
        }
        let _ = client_op_ids;
    }
}
