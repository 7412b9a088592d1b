//! What happens on the stores, for observers.

use crate::engine::{Capabilities, ServerEvent, StoreStatus};

/// What happened on a store, for observers ([`DustConnection::notices`](crate::DustConnection::notices)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Notice {
    /// The store joined.
    Joined {
        /// The store.
        store: String,
        /// The join reply's capabilities and `store_seq`.
        capabilities: Capabilities,
    },
    /// An op of the store's log.
    Event {
        /// The store.
        store: String,
        /// The event.
        event: ServerEvent,
    },
    /// A snapshot arrived.
    Snapshot {
        /// The store.
        store: String,
        /// Its seq.
        snapshot_seq: u64,
    },
    /// Catch-up completed.
    CatchUpComplete {
        /// The store.
        store: String,
        /// Through this seq.
        through_seq: u64,
    },
    /// The store's status changed.
    Status {
        /// The store.
        store: String,
        /// The new status.
        status: StoreStatus,
        /// Why, when known.
        reason: Option<String>,
    },
    /// The store leaves and rejoins to resynchronize (server reset, lost events, unknown write
    /// outcome).
    Resync {
        /// The store.
        store: String,
        /// Why.
        reason: String,
    },
}
