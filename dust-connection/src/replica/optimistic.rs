//! Optimistic writes: a store's pending writes overlaid on its confirmed entries, so reads and
//! subscribers see a write at once, until its own event confirms it or its rejection reverts
//! it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use serde_json::Value;

use super::Replica;
use crate::engine::{Entries, Stored, materialize_into};
use crate::error::WriteError;
use crate::layer::QueuedWrite;
use crate::store::Store;
use crate::write::{IntoSegments, Path, WriteAck, WriteOp, WriteRequest};

/// One write applied locally, not confirmed yet.
#[derive(Clone, Debug)]
struct PendingOp {
    client_op_id: String,
    path: Path,
    op: &'static str,
    value: Value,
    /// The seq of the write's acknowledgement, once it came: the write is confirmed when the
    /// replica reaches it (its event may come later than the reply).
    acked_seq: Option<u64>,
}

impl PendingOp {
    fn of(request: &WriteRequest) -> Option<Self> {
        let (op, segments, value) = match &request.op {
            WriteOp::Set { path, value } => ("set", path, value.clone()),
            WriteOp::Delete { path } => ("delete", path, Value::Null),
            WriteOp::Merge { path, value } if value.is_object() => ("merge", path, value.clone()),
            WriteOp::Increment { path, by } => ("increment", path, by.clone()),
            WriteOp::Add { path, member } => ("add", path, member.clone()),
            WriteOp::Remove { path, member } => ("remove", path, member.clone()),
            _ => return None,
        };
        Some(Self {
            client_op_id: request.client_op_id.as_str().to_owned(),
            path: Path::new(segments.clone()).ok()?,
            op,
            value,
            acked_seq: None,
        })
    }

    /// Applies the write to a view as the server would (an increment's total and a set's
    /// members computed from the view), its entries marked pending.
    fn apply(&self, view: &mut Entries, seq: u64) {
        let rendered = self.path.render();
        let current = view.get(&rendered).map(Stored::rendered);
        let value = match self.op {
            "increment" => add_numbers(current.as_ref(), &self.value),
            "add" | "remove" => {
                let mut members = match current {
                    Some(Value::Array(members)) => members,
                    _ => Vec::new(),
                };
                if self.op == "add" {
                    if !members.contains(&self.value) {
                        members.insert(0, self.value.clone());
                    }
                } else if let Some(at) = members.iter().position(|m| m == &self.value) {
                    members.remove(at);
                }
                Value::Array(members)
            }
            _ => self.value.clone(),
        };
        for path in materialize_into(view, &self.path, self.op, &value, seq) {
            if let Some(stored) = view.get_mut(&path) {
                stored.pending = true;
            }
        }
    }
}

/// `current + delta` as the server adds a counter (a missing or non-numeric current is 0;
/// integers stay integers while they fit).
fn add_numbers(current: Option<&Value>, delta: &Value) -> Value {
    let current = current
        .filter(|v| v.is_number())
        .cloned()
        .unwrap_or(0.into());
    match (current.as_i64(), delta.as_i64()) {
        (Some(a), Some(b)) => a
            .checked_add(b)
            .map_or(Value::from(a as f64 + b as f64), Value::from),
        _ => match (current.as_f64(), delta.as_f64()) {
            (Some(a), Some(b)) => {
                serde_json::Number::from_f64(a + b).map_or(delta.clone(), Value::Number)
            }
            _ => delta.clone(),
        },
    }
}

/// A store's pending writes, in issue order, and the view they make over its entries.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pending: Vec<PendingOp>,
    /// The confirmed entries with the pending writes applied: made by the first optimistic
    /// write, then kept in step with the confirmed entries by region (two copies of the
    /// entries while optimistic writes are used); `None` before.
    view: Option<Entries>,
}

/// A visible entry changed: (rendered path, value or `None` when gone, pending).
pub(crate) type Visible = (String, Option<Value>, bool);

impl Overlay {
    /// Whether the overlay keeps a view (from the first optimistic write on, until a
    /// snapshot or a reset finds nothing pending): reads see [`view`](Self::view), and every
    /// applied event updates it.
    pub(crate) fn active(&self) -> bool {
        self.view.is_some()
    }

    /// What reads see.
    pub(crate) fn view<'a>(&'a self, confirmed: &'a Entries) -> &'a Entries {
        self.view.as_ref().unwrap_or(confirmed)
    }

    /// How many writes are pending.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// A new pending write: applied to the view (made from the confirmed entries if there
    /// was none); returns what changed for a reader.
    fn push(&mut self, op: PendingOp, confirmed: &Entries, seq: u64) -> Vec<Visible> {
        let Some(view) = self.view.as_mut() else {
            self.pending.push(op);
            return self.rebuild(confirmed, seq);
        };
        let old = region(view, &op.path);
        op.apply(view, seq);
        let changes = visible_changes(&old, &region(view, &op.path));
        self.pending.push(op);
        changes
    }

    /// The write failed or is settled by its acknowledgement: it leaves the overlay; returns
    /// what changed for a reader (nothing if it was not pending).
    pub(crate) fn settle(
        &mut self,
        client_op_id: &str,
        confirmed: &Entries,
        seq: u64,
    ) -> Vec<Visible> {
        let (gone, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|op| op.client_op_id == client_op_id);
        self.pending = kept;
        self.refresh(confirmed, seq, paths_of(&gone))
    }

    /// Its acknowledgement came with `acked_seq`.
    pub(crate) fn acked(&mut self, client_op_id: &str, acked_seq: u64) {
        for op in &mut self.pending {
            if op.client_op_id == client_op_id {
                op.acked_seq = Some(acked_seq);
            }
        }
    }

    /// After the confirmed entries reached `seq` by an op at `touched` carrying
    /// `client_op_id` (or by a snapshot or a reset: `touched` is `None`): the writes it
    /// confirms leave, the view follows, and what changed for a reader is returned.
    pub(crate) fn confirmed(
        &mut self,
        confirmed: &Entries,
        seq: u64,
        client_op_id: Option<&str>,
        touched: Option<&Path>,
    ) -> Vec<Visible> {
        let (gone, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|op| {
                Some(op.client_op_id.as_str()) == client_op_id
                    || op.acked_seq.is_some_and(|acked| acked <= seq)
            });
        self.pending = kept;
        let Some(touched) = touched else {
            return self.rebuild(confirmed, seq);
        };
        let mut regions = paths_of(&gone);
        regions.push(touched.clone());
        self.refresh(confirmed, seq, regions)
    }

    /// The view follows the confirmed entries in `regions` (paths and what is below them):
    /// the area they cover, grown by the pending writes that reach into it (an ancestor's
    /// write covers its whole subtree), takes the confirmed entries, and the pending writes
    /// inside it are replayed in issue order. The rest of the view is untouched: no pending
    /// write outside the area reads or writes anything in it.
    fn refresh(&mut self, confirmed: &Entries, seq: u64, mut area: Vec<Path>) -> Vec<Visible> {
        if area.is_empty() {
            return Vec::new();
        }
        let Some(view) = self.view.as_mut() else {
            return self.rebuild(confirmed, seq);
        };
        let mut replay = vec![false; self.pending.len()];
        loop {
            let mut grew = false;
            for (i, op) in self.pending.iter().enumerate() {
                if replay[i] || !area.iter().any(|path| overlaps(&op.path, path)) {
                    continue;
                }
                replay[i] = true;
                if !area.iter().any(|path| op.path.starts_with(path)) {
                    // Strictly above a path of the area: its subtree joins the area.
                    area.push(op.path.clone());
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        let tops: Vec<Path> = area
            .iter()
            .filter(|path| {
                !area
                    .iter()
                    .any(|other| other != *path && path.starts_with(other))
            })
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let before: Vec<Entries> = tops.iter().map(|path| region(view, path)).collect();
        for (path, old) in tops.iter().zip(&before) {
            for key in old.keys() {
                view.remove(key);
            }
            view.extend(region(confirmed, path));
        }
        for (op, _) in self.pending.iter().zip(&replay).filter(|(_, r)| **r) {
            op.apply(view, seq);
        }
        let mut changes = Vec::new();
        for (path, old) in tops.iter().zip(&before) {
            changes.extend(visible_changes(old, &region(view, path)));
        }
        // Kept when nothing is pending (it equals the confirmed entries then): the next
        // write applies to it in place instead of copying the store again.
        changes
    }

    /// Rebuilds the view from the confirmed entries and returns the visible changes: a copy
    /// of the store's entries (when a write becomes pending with none before it, and after a
    /// snapshot or a reset).
    fn rebuild(&mut self, confirmed: &Entries, seq: u64) -> Vec<Visible> {
        let new = (!self.pending.is_empty()).then(|| {
            let mut view = confirmed.clone();
            for op in &self.pending {
                op.apply(&mut view, seq);
            }
            view
        });
        let old = self.view.take();
        let changes = visible_changes(
            old.as_ref().unwrap_or(confirmed),
            new.as_ref().unwrap_or(confirmed),
        );
        self.view = new;
        changes
    }
}

fn paths_of(ops: &[PendingOp]) -> Vec<Path> {
    ops.iter().map(|op| op.path.clone()).collect()
}

/// Whether one path is the other or below it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The entries at `path` and below it.
fn region(entries: &Entries, path: &Path) -> Entries {
    let rendered = path.render();
    let below = format!("{rendered}/");
    let mut out: Entries = entries
        .range(below.clone()..)
        .take_while(|(key, _)| key.starts_with(&below))
        .map(|(key, stored)| (key.clone(), stored.clone()))
        .collect();
    if let Some(stored) = entries.get(&rendered) {
        out.insert(rendered, stored.clone());
    }
    out
}

/// The entries that differ between two views, in path order.
fn visible_changes(old: &Entries, new: &Entries) -> Vec<Visible> {
    let mut paths: BTreeMap<&String, ()> = BTreeMap::new();
    paths.extend(old.keys().map(|k| (k, ())));
    paths.extend(new.keys().map(|k| (k, ())));
    paths
        .into_keys()
        .filter_map(|path| match (old.get(path), new.get(path)) {
            (Some(a), Some(b)) if a.value == b.value && a.pending == b.pending => None,
            (None, None) => None,
            (_, Some(b)) => Some((path.clone(), Some(b.rendered()), b.pending)),
            (Some(_), None) => Some((path.clone(), None, false)),
        })
        .collect()
}

/// A store's writes with its replica: each write of a value (`put`, `delete`, `merge`,
/// `increment`, `add`, `remove`) applies to the replica at once — reads see it, subscribers
/// get it with [`Update::pending`](crate::Update::pending) set — and goes out through the
/// store's outbox as any write. Its own event confirms it (subscribers see the entry
/// unpending); a rejection, or a failure before it was applied, reverts it and subscribers see
/// the entry as it was. Leases and files are written as usual ([`Store`]).
///
/// ```no_run
/// use dust_connection::{DustConnection, MemoryEngine};
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev").store("acme/app").engine(engine.clone()).connect()?;
/// let app = engine.replica("acme/app").optimistic(&dust.store("acme/app")?);
/// let ack = app.put(["users", "ada"], json!({"name": "Ada"}));
/// assert_eq!(app.replica().get("users/ada/name")?, Some(json!("Ada"))); // before the ack
/// ack.await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SyncedStore {
    replica: Replica,
    store: Store,
}

impl fmt::Debug for SyncedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncedStore")
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Optimistic writes through `store` (the same store, on a connection using this
    /// replica's engine), overlaid on this replica.
    pub fn optimistic(&self, store: &Store) -> SyncedStore {
        SyncedStore {
            replica: self.clone().with_writes(store),
            store: store.clone(),
        }
    }
}

/// Takes a pending write out of the overlay when its future ends without an acknowledgement
/// (an error, or dropped).
struct Revert {
    replica: Replica,
    client_op_id: Option<String>,
}

impl Revert {
    /// The write was acknowledged: the engine settles it (by its event, or when the replica
    /// reaches its ack's seq).
    fn disarm(&mut self) {
        self.client_op_id = None;
    }
}

impl Drop for Revert {
    fn drop(&mut self) {
        if let Some(id) = self.client_op_id.take() {
            self.replica.engine.settle_pending(&self.replica.store, &id);
        }
    }
}

impl SyncedStore {
    /// The replica (reads see the pending writes).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The store's write path.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies `request` to the replica's view, pending; the guard takes it back unless
    /// disarmed.
    fn apply(&self, request: &WriteRequest) -> Revert {
        let pending = PendingOp::of(request);
        let revert = Revert {
            replica: self.replica.clone(),
            client_op_id: pending.as_ref().map(|op| op.client_op_id.clone()),
        };
        if let Some(op) = pending {
            let store = self.replica.store.clone();
            self.replica.engine.with(&store, |s| {
                let seq = s.last_seq;
                let changes = s.overlay.push(op, &s.entries, seq);
                s.subscribers.dispatch_visible(seq, changes);
            });
        }
        revert
    }

    /// Writes `request`, applied to the replica at once when it writes a value; the future is
    /// the server's answer.
    pub fn write(
        &self,
        request: WriteRequest,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        let mut revert = self.apply(&request);
        let write = self.store.write(request);
        async move {
            let result = write.await;
            if result.is_ok() {
                revert.disarm();
            }
            result
        }
    }

    /// Writes `request` as [`write`](Self::write) does (applied to the replica at once), and
    /// resolves once the write is in the outbox — on disk, with a
    /// [durable outbox](crate::DustConnectionBuilder::durable_outbox) — with the answer to
    /// come ([`Store::queue`](crate::Store::queue)).
    pub fn queue(
        &self,
        request: WriteRequest,
    ) -> impl Future<Output = Result<QueuedWrite, WriteError>> + Send + 'static {
        let mut revert = self.apply(&request);
        let queued = self.store.queue(request);
        async move {
            let queued = queued.await?;
            let id = queued.client_op_id().clone();
            Ok(QueuedWrite::new(id, async move {
                let result = queued.await;
                if result.is_ok() {
                    revert.disarm();
                }
                result
            }))
        }
    }

    crate::write::write_shortcuts!(put);
}

#[cfg(test)]
mod tests;
