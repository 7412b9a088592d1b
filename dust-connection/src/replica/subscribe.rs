//! Subscriptions to a replica's changes by glob: each subscriber has its own bounded queue,
//! filled under the store's lock in seq order; a subscriber that falls behind loses the
//! changes that do not fit and is told how many, in place, before the next one it gets.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::{Stream, StreamExt as _};
use serde_json::Value;

use crate::engine::MemoryEngine;
use crate::glob::Glob;
use crate::write::Path;

/// The default number of changes a subscriber may hold undelivered
/// ([`SubscribeOptions::capacity`]).
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 1024;

/// How to subscribe ([`Replica::on_with`](crate::Replica::on_with)).
///
/// ```
/// use dust_connection::SubscribeOptions;
/// let options = SubscribeOptions::new().capacity(64).with_current(true);
/// assert_eq!(options.get_capacity(), 64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    capacity: usize,
    current: bool,
    confirmed: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SubscribeOptions {
    /// [`DEFAULT_SUBSCRIBER_CAPACITY`], live changes only.
    pub fn new() -> Self {
        Self {
            capacity: DEFAULT_SUBSCRIBER_CAPACITY,
            current: false,
            confirmed: false,
        }
    }

    /// How many changes the subscriber may hold undelivered (at least 1; 0 counts as 1).
    /// Changes that come while it is full are dropped and reported as [`Lagged`].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The capacity set.
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the stream starts with the entries that match now (`Update::current` set),
    /// before any change (default: no).
    pub fn with_current(mut self, current: bool) -> Self {
        self.current = current;
        self
    }

    /// Whether the stream carries only what the server confirmed (default: no): the changes
    /// the store's events made, in seq order, never a pending write of a
    /// [`SyncedStore`](crate::SyncedStore) nor its revert (and the current entries, if asked,
    /// are the confirmed ones). Without it, the stream follows what a reader of the replica
    /// sees.
    pub fn confirmed_only(mut self, confirmed: bool) -> Self {
        self.confirmed = confirmed;
        self
    }
}

/// One entry that changed (or, first, one that matched when subscribing with
/// [`SubscribeOptions::with_current`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Update {
    /// The entry's path.
    pub path: Path,
    /// Its new value, unwrapped as [`Replica::get`](crate::Replica::get) reads it; `None`
    /// when the entry is gone (a delete, a subtree replaced, a release, a snapshot without it,
    /// a server reset).
    pub value: Option<Value>,
    /// The seq of the op (or snapshot) that made the change; 0 for a server reset; for a
    /// current entry, the seq that last wrote it; for a pending change or its revert, the
    /// replica's last seq at the time.
    pub seq: u64,
    /// Whether this is a current entry listed at subscription, not a change.
    pub current: bool,
    /// Whether the value comes from a write of this replica not confirmed yet
    /// ([`SyncedStore`](crate::SyncedStore)); its confirmation comes as an update with
    /// `pending` unset, its revert as the entry's confirmed state.
    pub pending: bool,
}

/// Changes a slow subscriber lost: its queue was full when they came. Delivered in place: the
/// items before it came before the lost changes, the items after it came after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("the subscriber fell behind and lost {missed} changes")]
#[non_exhaustive]
pub struct Lagged {
    /// How many changes were lost.
    pub missed: u64,
}

#[derive(Debug)]
struct Queue {
    /// Each change with the number of changes lost just before it.
    items: VecDeque<(u64, Update)>,
    /// Changes lost since the last one queued.
    lost: u64,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    queue: Mutex<Queue>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        match self.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn offer(&self, update: Update) {
        let mut queue = self.lock();
        if queue.items.len() < self.capacity {
            let lost = std::mem::take(&mut queue.lost);
            queue.items.push_back((lost, update));
        } else {
            queue.lost += 1;
        }
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    glob: Glob,
    shared: Arc<Shared>,
    /// Only server-confirmed changes ([`SubscribeOptions::confirmed_only`]).
    confirmed: bool,
}

/// A store's subscribers (kept in the engine's store state).
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    next_id: u64,
    list: Vec<Subscriber>,
}

impl Subscribers {
    /// Offers each leaf a server change changed to every subscriber whose glob matches it
    /// (what readers see, when no write is pending).
    pub(crate) fn dispatch(&mut self, seq: u64, leaves: Vec<(String, Option<Value>)>) {
        self.offer(seq, confirmed(leaves), |_| true);
    }

    /// Offers each leaf a server change changed to the subscribers of confirmed changes.
    pub(crate) fn dispatch_confirmed(&mut self, seq: u64, leaves: Vec<(String, Option<Value>)>) {
        self.offer(seq, confirmed(leaves), |s| s.confirmed);
    }

    /// Offers each leaf a reader sees change, marked pending or not, to the subscribers of
    /// what readers see.
    pub(crate) fn dispatch_visible(
        &mut self,
        seq: u64,
        leaves: Vec<(String, Option<Value>, bool)>,
    ) {
        self.offer(seq, leaves, |s| !s.confirmed);
    }

    fn offer(
        &mut self,
        seq: u64,
        leaves: Vec<(String, Option<Value>, bool)>,
        to: impl Fn(&Subscriber) -> bool,
    ) {
        if !self.list.iter().any(&to) {
            return;
        }
        for (rendered, value, pending) in leaves {
            let Ok(path) = Path::parse(&rendered) else {
                tracing::warn!(path = %rendered, "an entry with an invalid path; not delivered");
                continue;
            };
            for subscriber in &self.list {
                if to(subscriber) && subscriber.glob.matches(&path) {
                    subscriber.shared.offer(Update {
                        path: path.clone(),
                        value: value.clone(),
                        seq,
                        current: false,
                        pending,
                    });
                }
            }
        }
    }

    fn add(&mut self, glob: Glob, capacity: usize, confirmed: bool) -> (u64, Arc<Shared>) {
        let id = self.next_id;
        self.next_id += 1;
        let shared = Arc::new(Shared {
            capacity,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                lost: 0,
                waker: None,
            }),
        });
        self.list.push(Subscriber {
            id,
            glob,
            shared: shared.clone(),
            confirmed,
        });
        (id, shared)
    }

    fn remove(&mut self, id: u64) {
        self.list.retain(|subscriber| subscriber.id != id);
    }

    /// How many subscribers there are.
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

/// Server changes, not pending.
fn confirmed(leaves: Vec<(String, Option<Value>)>) -> Vec<(String, Option<Value>, bool)> {
    leaves
        .into_iter()
        .map(|(path, value)| (path, value, false))
        .collect()
}

/// The changes of a replica's entries that match a glob, as a [`Stream`] of
/// `Result<Update, Lagged>`; from [`Replica::on`](crate::Replica::on).
///
/// Changes come in seq order (the changes of one op in the order it made them). The
/// subscriber holds at most [`SubscribeOptions::capacity`] undelivered changes: while it is
/// full, new changes are dropped and counted, and the stream yields `Err(Lagged)` with the
/// count at the point they were lost, then goes on in order. Memory is bounded; nothing is lost
/// silently. The stream does not end; dropping it unsubscribes.
pub struct Subscription {
    engine: MemoryEngine,
    store: String,
    glob: Glob,
    id: u64,
    shared: Arc<Shared>,
    current: VecDeque<Update>,
    /// A change to yield after the lag reported just before it.
    next: Option<Update>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("store", &self.store)
            .field("glob", &self.glob)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Subscribes under the store's lock: the current entries (if asked) and the changes after
    /// them are consistent, nothing missed or seen twice.
    pub(crate) fn start(
        engine: &MemoryEngine,
        store: &str,
        glob: Glob,
        options: SubscribeOptions,
    ) -> Self {
        let (id, shared, current) = engine.with(store, |s| {
            let current = if options.current {
                let entries = if options.confirmed {
                    &s.entries
                } else {
                    s.overlay.view(&s.entries)
                };
                entries
                    .iter()
                    .filter_map(|(rendered, stored)| {
                        let path = Path::parse(rendered).ok()?;
                        glob.matches(&path).then(|| Update {
                            path,
                            value: Some(stored.rendered()),
                            seq: stored.revision,
                            current: true,
                            pending: stored.pending,
                        })
                    })
                    .collect()
            } else {
                VecDeque::new()
            };
            let (id, shared) = s
                .subscribers
                .add(glob.clone(), options.capacity, options.confirmed);
            (id, shared, current)
        });
        Self {
            engine: engine.clone(),
            store: store.to_owned(),
            glob,
            id,
            shared,
            current,
            next: None,
        }
    }

    /// The glob subscribed to.
    pub fn glob(&self) -> &Glob {
        &self.glob
    }

    /// How many changes wait undelivered right now (at most the capacity).
    pub fn queued(&self) -> usize {
        self.shared.lock().items.len()
    }
}

impl Stream for Subscription {
    type Item = Result<Update, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(update) = self.current.pop_front() {
            return Poll::Ready(Some(Ok(update)));
        }
        if let Some(update) = self.next.take() {
            return Poll::Ready(Some(Ok(update)));
        }
        let polled = {
            let mut queue = self.shared.lock();
            match queue.items.pop_front() {
                Some(item) => Some(item),
                None if queue.lost > 0 => {
                    let missed = std::mem::take(&mut queue.lost);
                    return Poll::Ready(Some(Err(Lagged { missed })));
                }
                None => {
                    queue.waker = Some(cx.waker().clone());
                    None
                }
            }
        };
        match polled {
            Some((0, update)) => Poll::Ready(Some(Ok(update))),
            Some((missed, update)) => {
                self.next = Some(update);
                Poll::Ready(Some(Err(Lagged { missed })))
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.id;
        self.engine.with(&self.store, |s| s.subscribers.remove(id));
    }
}

/// Why [`Replica::on_each`](crate::Replica::on_each) could not subscribe.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The glob pattern is invalid.
    #[error("invalid glob: {0}")]
    Glob(#[from] crate::glob::GlobError),
    /// Not called from within a Tokio runtime, where the callback's task runs.
    #[error("no Tokio runtime to run the callback on")]
    NoRuntime,
}

/// A callback subscription ([`Replica::on_each`](crate::Replica::on_each)): a task that
/// feeds the callback; dropping the handle stops it and unsubscribes.
#[derive(Debug)]
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(crate) fn spawn(
        mut subscription: Subscription,
        mut callback: impl FnMut(Result<Update, Lagged>) + Send + 'static,
    ) -> Result<Self, WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let task = runtime.spawn(async move {
            while let Some(item) = subscription.next().await {
                callback(item);
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
