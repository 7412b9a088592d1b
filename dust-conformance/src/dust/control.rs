//! The Dust control handle: inspect stores and inject the Dust faults.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::clock::Clock;
use super::persist::Record;
use super::state::{DustShared, ReplyFault, StoreHandle, split_name};
use super::store::{StoreData, client_op_id_text};
use super::value::unwrap;
use crate::control::{Control, ControlError};

/// Why a Dust control command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DustError {
    /// No store has this name or UUID.
    #[error("no store {0}")]
    NoSuchStore(String),
    /// Not a valid `org/name`.
    #[error("invalid store name {0:?}")]
    InvalidName(String),
    /// The state file could not be written.
    #[error("cannot persist: {0}")]
    Persist(String),
}

/// A store, as listed by [`DustControl::stores`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoreInfo {
    /// Full name, `org/name`.
    pub name: String,
    /// Its UUID (joinable as `store:{id}`).
    pub id: String,
    /// Archived stores refuse writes (`store_archived`) and joins by name.
    pub archived: bool,
    /// The current `store_seq`.
    pub seq: u64,
    /// Entries held.
    pub entries: usize,
    /// Ops in the log (fewer than `seq` after a compaction).
    pub ops: usize,
    /// The seq of the latest snapshot, if compacted.
    pub snapshot_seq: Option<u64>,
}

/// One op of a store's log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct OpInfo {
    /// Its `store_seq`.
    pub seq: u64,
    /// `set`, `delete`, `merge`, ...
    pub op: String,
    /// The rendered path.
    pub path: String,
    /// The `client_op_id` as the client sent it.
    pub client_op_id: Value,
    /// The writer's device.
    pub device_id: String,
    /// The op's value as committed (an increment's delta, a lease's envelope, a file ref).
    pub value: Value,
    /// When it was committed (`2024-05-01T10:20:30.123Z`).
    pub inserted_at: String,
}

/// One materialized entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The rendered path.
    pub path: String,
    /// The value, unwrapped from its storage envelope.
    pub value: Value,
    /// `string`, `integer`, `counter`, `set`, `file`, `lease`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The seq of the op that last wrote it (what `if_match` compares with).
    pub revision: u64,
}

/// The control handle of the Dust emulation (from [`crate::Server::dust`] or
/// [`Control::dust`]). Cheap to clone. Stores are named by full name `org/name` or UUID.
#[derive(Clone)]
pub struct DustControl {
    dust: Arc<DustShared>,
    control: Control,
}

impl fmt::Debug for DustControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DustControl")
            .field("stores", &self.dust.all().len())
            .field("durable", &self.dust.durable())
            .finish_non_exhaustive()
    }
}

impl DustControl {
    pub(crate) fn new(dust: Arc<DustShared>, control: Control) -> Self {
        Self { dust, control }
    }

    fn store(&self, store: &str) -> Result<Arc<StoreHandle>, DustError> {
        self.dust
            .find(store)
            .ok_or_else(|| DustError::NoSuchStore(store.to_owned()))
    }

    fn info(store: &StoreHandle, data: &StoreData) -> StoreInfo {
        StoreInfo {
            name: store.full_name(),
            id: store.id.clone(),
            archived: store.archived(),
            seq: data.current_seq(),
            entries: data.entries.len(),
            ops: data.ops.len(),
            snapshot_seq: data.snapshot.as_ref().map(|s| s.seq),
        }
    }

    /// The layer's control handle (connections, Phoenix faults).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The emulation's clock (advance a [`Clock::manual`] to expire leases).
    pub fn clock(&self) -> Clock {
        self.dust.clock.clone()
    }

    /// Every store, by name.
    pub async fn stores(&self) -> Vec<StoreInfo> {
        let mut list = Vec::new();
        for store in self.dust.all() {
            let data = store.data.lock().await;
            list.push(Self::info(&store, &data));
        }
        list
    }

    /// One store.
    pub async fn store_info(&self, store: &str) -> Result<StoreInfo, DustError> {
        let handle = self.store(store)?;
        let data = handle.data.lock().await;
        Ok(Self::info(&handle, &data))
    }

    /// Creates a store (a no-op when it exists).
    pub async fn create_store(&self, name: &str) -> Result<StoreInfo, DustError> {
        let (org, store) =
            split_name(name).ok_or_else(|| DustError::InvalidName(name.to_owned()))?;
        self.dust
            .create_store(org, store)
            .await
            .map_err(DustError::Persist)?;
        self.store_info(name).await
    }

    /// The op log, oldest first: seq, op, path, client_op_id, device_id, value. Writes
    /// resent by a client appear once per application (the server does not deduplicate
    /// `client_op_id`). Compaction removes the compacted ops.
    pub async fn ops(&self, store: &str) -> Result<Vec<OpInfo>, DustError> {
        let handle = self.store(store)?;
        let data = handle.data.lock().await;
        Ok(data
            .ops
            .values()
            .map(|op| OpInfo {
                seq: op.seq,
                op: op.op.as_str().to_owned(),
                path: op.path.clone(),
                client_op_id: op.client_op_id.clone(),
                device_id: op.device_id.clone(),
                value: op.value.clone(),
                inserted_at: op.inserted_at.clone(),
            })
            .collect())
    }

    /// Every entry, by path.
    pub async fn entries(&self, store: &str) -> Result<Vec<EntryInfo>, DustError> {
        let handle = self.store(store)?;
        let data = handle.data.lock().await;
        Ok(data
            .entries
            .iter()
            .map(|(path, e)| EntryInfo {
                path: path.clone(),
                value: unwrap(&e.value).unwrap_or_else(|_| e.value.clone()),
                kind: e.kind.clone(),
                revision: e.seq,
            })
            .collect())
    }

    /// One entry by rendered path (exact match; no subtree assembly).
    pub async fn entry(&self, store: &str, path: &str) -> Result<Option<EntryInfo>, DustError> {
        Ok(self
            .entries(store)
            .await?
            .into_iter()
            .find(|e| e.path == path))
    }

    /// Archives a store as the real server's expiry worker does: later writes are refused
    /// with `store_archived`, joins by name with `unauthorized` (by UUID still work), and
    /// `phx_close` is broadcast on both its topics (`store:{org/name}` and `store:{id}`)
    /// while the server keeps the channels. Returns how many joiners the broadcast reached.
    pub async fn archive(&self, store: &str) -> Result<usize, DustError> {
        let handle = self.store(store)?;
        {
            let _gate = self.dust.gate.read().await;
            let mut data = handle.data.lock().await;
            self.dust
                .persist(&Record::Archive {
                    store: handle.id.clone(),
                })
                .await
                .map_err(DustError::Persist)?;
            handle.set_archived();
            // The store's writer stops: its in-memory lease deadlines are gone.
            data.lease_deadlines.clear();
        }
        let by_id = self
            .control
            .broadcast(&format!("store:{}", handle.id), "phx_close", json!({}));
        let by_name = self.control.broadcast(
            &format!("store:{}", handle.full_name()),
            "phx_close",
            json!({}),
        );
        Ok(by_id + by_name)
    }

    /// Empties a store: no ops, entries or snapshot; its seq goes back to 0. Channels stay
    /// joined (a client notices on its next join: `store_seq` below its own).
    pub async fn reset(&self, store: &str) -> Result<(), DustError> {
        let handle = self.store(store)?;
        let _gate = self.dust.gate.read().await;
        let mut data = handle.data.lock().await;
        self.dust
            .persist(&Record::Reset {
                store: handle.id.clone(),
            })
            .await
            .map_err(DustError::Persist)?;
        *data = StoreData::default();
        Ok(())
    }

    /// Compacts the op log into a snapshot at the last op's seq (the real server's
    /// compaction worker, without its age and size thresholds). Clients joining from an
    /// older seq get the `snapshot` first. `None` when there was no op to compact.
    pub async fn compact(&self, store: &str) -> Result<Option<u64>, DustError> {
        let handle = self.store(store)?;
        let _gate = self.dust.gate.read().await;
        let mut data = handle.data.lock().await;
        if data.ops.is_empty() {
            return Ok(None);
        }
        let at = super::clock::iso8601(self.dust.clock.wall_us(), 3);
        self.dust
            .persist(&Record::Compact {
                store: handle.id.clone(),
                at: at.clone(),
            })
            .await
            .map_err(DustError::Persist)?;
        Ok(data.compact(at))
    }

    /// The next `write`/`put_file` (on any store) is handled as usual (applied, broadcast)
    /// but gets no reply: its ack is lost.
    pub fn drop_next_write_reply(&self) {
        self.dust.arm_reply_fault(Some(ReplyFault::Drop));
    }

    /// The next `write`/`put_file` gets its reply only after `delay` (other frames are not
    /// held back).
    pub fn delay_next_write_reply(&self, delay: Duration) {
        self.dust.arm_reply_fault(Some(ReplyFault::Delay(delay)));
    }

    /// The next `write`/`put_file` (on any store, whatever it holds) crashes its channel, as
    /// the real server's store channel crashes on some writes (e.g. a second `put_file` into
    /// a store that already holds a file): it is not applied, the client gets `phx_error`
    /// and no reply. Messages the channel had not handled yet are lost with it.
    pub fn crash_next_write(&self) {
        self.dust.arm_crash_next(true);
    }

    /// Crashes the channel (as [`DustControl::crash_next_write`]) on every `write`/`put_file`
    /// that would commit at a rendered path equal to `path` or below it (`path` followed by
    /// `/`); `None` clears it. Such writes are never applied.
    pub fn crash_writes_at(&self, path: Option<&str>) {
        self.dust.set_crash_at(path.map(str::to_owned));
    }

    /// Makes every `write`/`put_file` of a store channel take `cost` to commit, as the real
    /// server's database commit does (a few ms each). A channel commits its writes strictly
    /// one at a time, in arrival order, so a backlog takes `cost` per write to work through,
    /// also after its connection is gone (see [`Control::drop_connection`]). Runs on tokio's
    /// clock (paused time too). `Duration::ZERO` (the default) commits at once.
    pub fn set_write_cost(&self, cost: Duration) {
        self.dust.set_write_cost(cost);
    }

    /// The write cost (see [`DustControl::set_write_cost`]).
    pub fn write_cost(&self) -> Duration {
        self.dust.write_cost()
    }

    /// Bounds how long the channels of a dead connection keep committing the writes they had
    /// received (`None`, the default: all of them). See [`Control::set_drain_limit`], which
    /// this is (the drain is generic Phoenix behaviour, for every channel).
    pub fn set_drain_limit(&self, limit: Option<Duration>) {
        self.control.set_drain_limit(limit);
    }

    /// Disarms a reply fault that has not fired yet.
    pub fn clear_write_reply_fault(&self) {
        self.dust.arm_reply_fault(None);
    }

    /// Closes every socket of a device (the real server's `"disconnect"` broadcast to
    /// `store_socket:{device_id}`; close code 1011). Returns how many.
    pub fn disconnect_device(&self, device_id: &str) -> usize {
        self.control
            .disconnect_socket(&format!("store_socket:{device_id}"))
    }

    /// Restarts the server (see [`Control::restart`]): connections dropped, stores kept
    /// (reloaded from the state file when there is one), same port.
    pub async fn restart(&self, downtime: Duration) -> Result<(), ControlError> {
        self.control.restart(downtime).await
    }

    /// The devices that connected (device id → last connect, ISO 8601).
    pub fn devices(&self) -> BTreeMap<String, String> {
        self.dust.devices()
    }

    /// The last `ack_seq` of each device on a store.
    pub fn acks(&self, store: &str) -> Result<BTreeMap<String, Value>, DustError> {
        let handle = self.store(store)?;
        Ok(self.dust.acks(&handle.id))
    }

    /// The `client_op_id`s of the op log in order, as the text the server stores (to check
    /// "each id applied exactly once, in order").
    pub async fn client_op_ids(&self, store: &str) -> Result<Vec<String>, DustError> {
        Ok(self
            .ops(store)
            .await?
            .iter()
            .map(|op| client_op_id_text(&op.client_op_id).unwrap_or_default())
            .collect())
    }
}
