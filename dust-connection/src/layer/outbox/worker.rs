//! One store: its channel handler, and the worker that owns its outbox (see the crate docs,
//! "What it guarantees", for the rules it follows).
//!
//! The store handler is the `ChannelHandler` of topic `store:{name}`: it forwards what
//! happens on the channel, in order, to the store's worker. The worker is the only place where
//! the store's state lives: it answers join params from the engine, hands events (in seq order,
//! through a bounded reorder buffer), snapshots and catch-up to the engine, pushes `ack_seq`,
//! and runs the outbox: the in-flight window, the accounting of writes left unanswered by a
//! join that ended, the settle time after a lost connection, and resends.

mod channel;
mod events;
mod joins;
mod journal;
mod send;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use phoenix_channels::backoff::RejoinPolicy;
use phoenix_channels::{Channel, Ref};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tower::Service;

use super::gate::{Permit, Queued};
use super::journal::{Journal, Recovered};
use super::service::Submission;
use crate::UnknownOutcome;
use crate::engine::{ServerEvent, StoreStatus, SyncEngine};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::notice::Notice;
use crate::write::{ClientOpId, EncodedWrite, Rejection, WriteAck};

pub(crate) use channel::{
    INPUT_CAPACITY, SharedRejoinPolicy, StoreHandler, StoreInput, default_join_params,
};

/// A store's outbox worker: the task that owns the store's queue of writes, sends them through
/// the leaf service, follows the store's channel, and hands its events to the engine. A
/// future that runs until every handle of the store's [`Outbox`](super::Outbox) is gone.
///
/// The connection spawns it on its tokio runtime unless
/// [`DustConnectionBuilder::spawn_workers_with`](crate::DustConnectionBuilder::spawn_workers_with)
/// gives it to you to spawn on the executor of your choice (it needs a tokio reactor for its
/// timers). It is not polled by anything else: until it runs, the store's writes wait.
#[must_use = "a worker does nothing until it is spawned or awaited"]
pub struct Worker {
    store: Arc<str>,
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Worker {
    /// The store this worker serves.
    pub fn store(&self) -> &str {
        &self.store
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

/// What ties a store's worker to the rest of the connection, besides its leaf and its outbox.
pub(crate) struct StoreLink {
    pub(crate) store: Arc<str>,
    pub(crate) channel: Channel,
    pub(crate) engine: Arc<dyn SyncEngine>,
    pub(crate) inputs: mpsc::Receiver<StoreInput>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) config: WorkerConfig,
    /// Where accepted writes are kept (nothing, or the durable outbox).
    pub(crate) journal: Journal,
    /// The writes a durable outbox held when the process started, in issue order, whether
    /// each may have been sent, and where each one's answer goes.
    pub(crate) recovered: Vec<(Recovered, Reply, Permit)>,
}

/// The worker's bounds and policies (from the builder).
#[derive(Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) max_in_flight: usize,
    pub(crate) unknown_outcome_settle: Duration,
    pub(crate) unknown_outcome: UnknownOutcome,
    pub(crate) reorder_capacity: usize,
    pub(crate) gap_timeout: Duration,
    pub(crate) crash_limit: u32,
    pub(crate) rejoin_policy: Arc<dyn RejoinPolicy>,
    pub(crate) outbox_capacity: usize,
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("max_in_flight", &self.max_in_flight)
            .field("unknown_outcome_settle", &self.unknown_outcome_settle)
            .field("unknown_outcome", &self.unknown_outcome)
            .field("reorder_capacity", &self.reorder_capacity)
            .field("gap_timeout", &self.gap_timeout)
            .field("crash_limit", &self.crash_limit)
            .finish_non_exhaustive()
    }
}

/// Where a store is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Not joined.
    Offline,
    /// Joined under this join; waiting for `catch_up_complete`.
    CatchingUp(Ref),
    /// Caught up, but writes of a lost connection may still be applied by their old channel
    /// process: nothing is sent until their events came or `until`.
    Settling { join_ref: Ref, until: Instant },
    /// Joined and caught up: writes go out.
    Live(Ref),
    /// The join was refused for good; writes fail until `rejoin`.
    Failed(Rejection),
    /// The connection is shut down.
    Closed,
}

/// How a join ended, which says what became of its unanswered writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JoinEnd {
    /// Its channel process ended (left, closed): what it did not apply, it never will.
    Ended,
    /// Its channel process crashed: as `Ended`, and the first write it did not apply is the
    /// one that crashed it.
    Crashed,
    /// The connection was lost: its channel process may still be applying them.
    Lost,
    /// The writes a durable outbox held when the process started: the process that sent
    /// them may have been cut at any point, so they are treated as after a lost connection,
    /// except that those still unknown after the settle time are sent again (the outbox
    /// took them for sending: nobody was told they failed).
    Recovered,
}

impl JoinEnd {
    /// Whether the join's channel process may still apply its writes.
    fn may_still_apply(self) -> bool {
        matches!(self, Self::Lost | Self::Recovered)
    }
}

#[derive(Debug)]
enum EntryState {
    /// Not sent (or known not to have been applied).
    Queued,
    /// Sent under the current join; `applied` once its own event came.
    InFlight {
        epoch: u64,
        send: u64,
        after_seq: u64,
        applied: Option<WriteAck>,
    },
    /// Sent under a join that ended before an answer: to be learned from the events.
    Orphan {
        epoch: u64,
        send: u64,
        after_seq: u64,
    },
}

/// Where a write's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<WriteAck, WriteError>>;

struct Entry {
    write: EncodedWrite,
    reply: Option<Reply>,
    state: EntryState,
    /// Consecutive channel crashes this write was the first unapplied write of.
    crashes: u32,
    /// The caller's span, carried from the call into the worker.
    span: tracing::Span,
    /// Whether the durable outbox has it on disk (never without one). With a durable outbox,
    /// only such a write may be sent.
    journaled: bool,
    /// Whether the durable outbox knows it may have been sent.
    marked_sent: bool,
    /// Told the client op id once persisted.
    queued: Option<Queued>,
    _permit: Permit,
}

type Outcome = (u64, u64, Result<WriteAck, WriteError>);
type OutcomeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// The store's task (see [`Worker`]).
struct Task<S> {
    store: Arc<str>,
    leaf: S,
    channel: Channel,
    engine: Arc<dyn SyncEngine>,
    inputs: Option<mpsc::Receiver<StoreInput>>,
    submissions: mpsc::UnboundedReceiver<Submission>,
    notices: broadcast::Sender<Notice>,
    config: WorkerConfig,
    phase: Phase,
    entries: BTreeMap<u64, Entry>,
    by_op_id: HashMap<ClientOpId, u64>,
    in_flight: FuturesUnordered<OutcomeFuture>,
    sends: u64,
    /// The number of the current (or last) join.
    epoch: u64,
    /// How the joins that still have orphaned writes ended.
    ended: BTreeMap<u64, JoinEnd>,
    /// When the writes of a lost connection stop being waited for: the settle time counts
    /// from the first loss, not from each rejoin, so cuts that keep coming cannot hold the
    /// store forever.
    settle_deadline: Option<Instant>,
    /// The latest seq known to exist on the server (join reply, events, snapshots).
    known_seq: u64,
    /// The seq the engine has been handed every event up to, in order.
    applied_seq: u64,
    /// Events above `applied_seq + 1`, waiting for the hole below them to fill.
    held_events: BTreeMap<u64, ServerEvent>,
    /// When an open hole below `held_events` makes the store resynchronize.
    gap_deadline: Option<Instant>,
    /// Writes whose reply said applied before their own event reached the engine (the reply
    /// and the event come by different paths), by the event's seq: answered once the engine
    /// has it, so that a write answered `Ok` is in the replica, or when the join ends. At most
    /// the in-flight window of them.
    answered_ahead: BTreeMap<u64, Vec<(u64, WriteAck)>>,
    /// The `last_store_seq` of the last join params, to notice a server reset.
    asked_seq: Option<u64>,
    /// A leave was started to resynchronize: join again once it is done.
    resync_pending: bool,
    /// Where accepted writes are kept.
    journal: Journal,
    /// Writes accepted and not yet in the journal, in ticket order.
    unpersisted: Vec<u64>,
    /// Answered writes whose rows are still in the journal. Taking them out can wait: after
    /// a crash, a recovered write that was answered is answered again from its event (or its
    /// row went in the same commit as the event, with a durable cache), never resent.
    retired: Vec<ClientOpId>,
}

/// At most this many writes go to the journal in one transaction (one sync of the disk).
const JOURNAL_BATCH: usize = 1024;

/// Builds a store's worker: it serves `submissions` through `leaf`.
pub(crate) fn worker<S>(
    leaf: S,
    link: StoreLink,
    submissions: mpsc::UnboundedReceiver<Submission>,
) -> Worker
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    let store = link.store.clone();
    let recovered = link.recovered;
    let mut task = Task {
        store: link.store,
        leaf,
        channel: link.channel,
        engine: link.engine,
        inputs: Some(link.inputs),
        submissions,
        notices: link.notices,
        config: link.config,
        phase: Phase::Offline,
        entries: BTreeMap::new(),
        by_op_id: HashMap::new(),
        in_flight: FuturesUnordered::new(),
        sends: 0,
        epoch: 0,
        ended: BTreeMap::new(),
        settle_deadline: None,
        known_seq: 0,
        applied_seq: 0,
        held_events: BTreeMap::new(),
        gap_deadline: None,
        answered_ahead: BTreeMap::new(),
        asked_seq: None,
        resync_pending: false,
        journal: link.journal,
        unpersisted: Vec::new(),
        retired: Vec::new(),
    };
    task.recover(recovered);
    Worker {
        store,
        future: Box::pin(task.run()),
    }
}

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// Runs until every handle of the store's outbox is gone.
    async fn run(mut self) {
        loop {
            let gap_deadline = self.gap_deadline;
            let settle_until = match &self.phase {
                Phase::Settling { until, .. } => Some(*until),
                _ => None,
            };
            tokio::select! {
                biased;
                input = recv_input(&mut self.inputs) => match input {
                    Some(input) => self.on_input(input).await,
                    None => self.on_channel_gone().await,
                },
                Some(outcome) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_outcome(outcome).await;
                }
                submission = self.submissions.recv() => match submission {
                    Some(submission) => {
                        self.on_submission(submission).await;
                        if self.journal.is_durable() {
                            self.persist().await;
                        }
                    }
                    None => break,
                },
                () = sleep_until(gap_deadline), if gap_deadline.is_some() => {
                    self.gap_deadline = None;
                    self.join_ended(JoinEnd::Ended).await;
                    self.resync("a gap in the store's events stayed open too long");
                }
                () = sleep_until(settle_until), if settle_until.is_some() => {
                    self.settle_timed_out().await;
                }
            }
            if self.in_flight.is_empty() {
                // Idle: the answered writes leave the journal now.
                self.retire();
            }
        }
        self.retire();
        tracing::debug!(store = %self.store, "store worker stopped");
    }

    fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    async fn set_status(&mut self, status: StoreStatus, reason: Option<String>) {
        self.engine.set_status(&self.store, status).await;
        self.notify(Notice::Status {
            store: self.store.to_string(),
            status,
            reason,
        });
    }

    // ----- writes ------------------------------------------------------------------------------

    async fn on_submission(&mut self, submission: Submission) {
        match submission {
            Submission::Write {
                ticket,
                write,
                reply,
                permit,
                queued,
                span,
            } => {
                tracing::debug!(parent: &span, store = %self.store, ticket, "write queued in the outbox");
                let refused = match &self.phase {
                    Phase::Failed(rejection) => Some(WriteError::JoinFailed(rejection.clone())),
                    Phase::Closed => Some(WriteError::Closed),
                    _ => None,
                };
                if let Some(error) = refused {
                    let _ = reply.send(Err(error));
                    return;
                }
                self.by_op_id.insert(write.client_op_id.clone(), ticket);
                let durable = self.journal.is_durable();
                let mut queued = queued;
                if !durable && let Some(queued) = queued.take() {
                    let _ = queued.send(write.client_op_id.clone());
                }
                self.entries.insert(
                    ticket,
                    Entry {
                        write,
                        reply: Some(reply),
                        state: EntryState::Queued,
                        crashes: 0,
                        span,
                        journaled: false,
                        marked_sent: false,
                        queued,
                        _permit: permit,
                    },
                );
                if durable {
                    self.unpersisted.push(ticket);
                } else {
                    self.flush().await;
                }
            }
            Submission::Cancel { ticket } => {
                // A write on disk stays: the outbox took it for sending.
                if self
                    .entries
                    .get(&ticket)
                    .is_some_and(|e| matches!(e.state, EntryState::Queued) && !e.journaled)
                {
                    self.forget(ticket);
                }
            }
            Submission::Rejoin => {
                if matches!(self.phase, Phase::Failed(_)) {
                    self.phase = Phase::Offline;
                    self.set_status(StoreStatus::Reconnecting, Some("rejoin asked".into()))
                        .await;
                    drop(self.channel.join());
                }
            }
            Submission::Resync(reason) => {
                if matches!(
                    self.phase,
                    Phase::Live(_) | Phase::CatchingUp(_) | Phase::Settling { .. }
                ) {
                    self.join_ended(JoinEnd::Ended).await;
                    self.resync(reason);
                }
            }
        }
    }

    fn forget(&mut self, ticket: u64) -> Option<Entry> {
        let entry = self.entries.remove(&ticket)?;
        if self.by_op_id.get(&entry.write.client_op_id) == Some(&ticket) {
            self.by_op_id.remove(&entry.write.client_op_id);
        }
        Some(entry)
    }

    /// Answers a write; with a durable outbox its row goes, unless the write failed
    /// because the connection shut down (`WriteError::Closed`): it goes out on the next start.
    async fn resolve(&mut self, ticket: u64, result: Result<WriteAck, WriteError>) {
        let retire = !matches!(result, Err(WriteError::Closed));
        self.resolve_with(ticket, result, retire).await;
    }

    /// Answers the writes of `answered_ahead` whose events the engine has, and sends what
    /// their places in the window let go; or all of them if `all` (the join ended: the
    /// catch-up of the next one brings what the engine lacks).
    async fn answer_ahead(&mut self, all: bool) {
        let mut answered = false;
        while let Some(entry) = self.answered_ahead.first_entry() {
            if !all && *entry.key() > self.applied_seq {
                break;
            }
            for (ticket, ack) in entry.remove() {
                self.resolve(ticket, Ok(ack)).await;
            }
            answered = true;
        }
        if answered && !all {
            self.flush().await;
        }
    }

    /// Answers a write, and takes it out of the durable outbox if `retire`.
    async fn resolve_with(
        &mut self,
        ticket: u64,
        result: Result<WriteAck, WriteError>,
        retire: bool,
    ) {
        let Some(mut entry) = self.forget(ticket) else {
            return;
        };
        let id = &entry.write.client_op_id;
        if entry.journaled && retire {
            self.retired.push(id.clone());
            if self.retired.len() >= JOURNAL_BATCH {
                self.retire();
            }
        }
        match &result {
            Ok(ack) => {
                self.engine
                    .handle_write_accepted(&self.store, id, ack)
                    .await
            }
            Err(WriteError::Rejected(rejection)) => {
                self.engine
                    .handle_write_rejected(&self.store, id, rejection)
                    .await
            }
            Err(_) => {}
        }
        // Its slot is free before its caller hears back.
        let reply = entry.reply.take();
        drop(entry);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

async fn recv_input(inputs: &mut Option<mpsc::Receiver<StoreInput>>) -> Option<StoreInput> {
    match inputs {
        Some(inputs) => inputs.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
