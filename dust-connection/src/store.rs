//! One store: its channel handler, and the worker that owns its outbox (see the crate docs,
//! "What it guarantees", for the rules it follows).
//!
//! The store handler is the `ChannelHandler` of topic `store:{name}`: it forwards what
//! happens on the channel, in order, to the store's worker. The worker is the only place where
//! the store's state lives: it answers join params from the engine, hands events (in seq order,
//! through a bounded reorder buffer), snapshots and catch-up to the engine, pushes `ack_seq`,
//! and runs the outbox: the in-flight window, the accounting of writes left unanswered by a
//! join that ended, the settle time after a lost connection, and resends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use phoenix_channels::backoff::RejoinPolicy;
use phoenix_channels::{
    Channel, ChannelContext, ChannelHandler, CloseCause, ErrorCause, Joined, Message, Payload,
    PushError, Ref, RejoinCause,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use crate::engine::{Capabilities, ServerEvent, Snapshot, StoreStatus, SyncEngine};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::layer::outbox::{Permit, Submission};
use crate::write::{ClientOpId, EncodedWrite, Rejection, WriteAck};

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

/// What the channel handler forwards to the worker.
#[derive(Debug)]
pub(crate) enum StoreInput {
    JoinParams(oneshot::Sender<Payload>),
    Joined(Joined),
    JoinFailed(RejoinCause),
    Message(Message),
    Errored(ErrorCause),
    Closed(CloseCause),
    Overflow(u64),
}

/// The `ChannelHandler` of a store's topic: forwards everything to the worker, in order. The
/// queue to the worker is bounded: if the engine falls far behind, the channel's own queue
/// overflows, which the worker answers with a resync (no event is silently lost).
pub(crate) struct StoreHandler {
    pub(crate) inputs: mpsc::Sender<StoreInput>,
}

#[async_trait]
impl ChannelHandler for StoreHandler {
    async fn join_params(&mut self, _ctx: &ChannelContext) -> Option<Payload> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(StoreInput::JoinParams(tx)).await.ok()?;
        rx.await.ok()
    }

    async fn on_joined(&mut self, _ctx: &ChannelContext, joined: Joined) {
        let _ = self.inputs.send(StoreInput::Joined(joined)).await;
    }

    async fn on_join_error(&mut self, _ctx: &ChannelContext, cause: RejoinCause) {
        let _ = self.inputs.send(StoreInput::JoinFailed(cause)).await;
    }

    async fn on_message(&mut self, _ctx: &ChannelContext, message: Message) {
        let _ = self.inputs.send(StoreInput::Message(message)).await;
    }

    async fn on_error(&mut self, _ctx: &ChannelContext, cause: ErrorCause) {
        let _ = self.inputs.send(StoreInput::Errored(cause)).await;
    }

    async fn on_close(&mut self, _ctx: &ChannelContext, cause: CloseCause) {
        let _ = self.inputs.send(StoreInput::Closed(cause)).await;
    }

    async fn on_overflow(&mut self, _ctx: &ChannelContext, dropped: u64) {
        let _ = self.inputs.send(StoreInput::Overflow(dropped)).await;
    }
}

/// What the outbox does with writes whose outcome stays unknown: writes that were in flight
/// on a connection that was lost, whose old channel process may still have applied them, and
/// whose own `event` did not arrive within [`unknown_outcome_settle`] after the new join's
/// catch-up.
///
/// [`unknown_outcome_settle`]: crate::DustConnectionBuilder::unknown_outcome_settle
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownOutcome {
    /// Fail them with [`WriteError::Indeterminate`]; never resend (a write is applied at most
    /// once, and may be lost). The default.
    #[default]
    AtMostOnce,
    /// Resend them (a write is applied at least once, and may be applied twice if its old
    /// channel process applied it after the settle time).
    AtLeastOnce,
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

/// The store channel's rejoin policy, shared by the channel and by the worker (which rejoins
/// after a server close), so one policy governs every rejoin of the store.
#[derive(Clone, Debug)]
pub(crate) struct SharedRejoinPolicy(pub(crate) Arc<dyn RejoinPolicy>);

impl RejoinPolicy for SharedRejoinPolicy {
    fn rejoin_delay(&self, attempt: u32, cause: &RejoinCause) -> Option<Duration> {
        self.0.rejoin_delay(attempt, cause)
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

struct Entry {
    write: EncodedWrite,
    reply: Option<oneshot::Sender<Result<WriteAck, WriteError>>>,
    state: EntryState,
    /// Consecutive channel crashes this write was the first unapplied write of.
    crashes: u32,
    _permit: Permit,
}

type Outcome = (u64, u64, Result<WriteAck, WriteError>);
type OutcomeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// Everything a worker is given.
pub(crate) struct WorkerParts<S> {
    pub(crate) store: Arc<str>,
    pub(crate) leaf: S,
    pub(crate) channel: Channel,
    pub(crate) engine: Arc<dyn SyncEngine>,
    pub(crate) inputs: mpsc::Receiver<StoreInput>,
    pub(crate) submissions: mpsc::UnboundedReceiver<Submission>,
    pub(crate) joined_stores: Arc<Mutex<BTreeSet<String>>>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) config: WorkerConfig,
}

/// The store's task.
pub(crate) struct Worker<S> {
    store: Arc<str>,
    leaf: S,
    channel: Channel,
    engine: Arc<dyn SyncEngine>,
    inputs: Option<mpsc::Receiver<StoreInput>>,
    submissions: mpsc::UnboundedReceiver<Submission>,
    joined_stores: Arc<Mutex<BTreeSet<String>>>,
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
    /// The `last_store_seq` of the last join params, to notice a server reset.
    asked_seq: Option<u64>,
    /// A leave was started to resynchronize: join again once it is done.
    resync_pending: bool,
    /// A rejoin after the server closed the channel.
    rejoin_at: Option<Instant>,
    rejoin_attempt: u32,
}

impl<S> fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("store", &self.store)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl<S> Worker<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    pub(crate) fn new(parts: WorkerParts<S>) -> Self {
        Self {
            store: parts.store,
            leaf: parts.leaf,
            channel: parts.channel,
            engine: parts.engine,
            inputs: Some(parts.inputs),
            submissions: parts.submissions,
            joined_stores: parts.joined_stores,
            notices: parts.notices,
            config: parts.config,
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
            asked_seq: None,
            resync_pending: false,
            rejoin_at: None,
            rejoin_attempt: 0,
        }
    }

    /// Runs until every handle of the store's outbox is gone.
    pub(crate) async fn run(mut self) {
        loop {
            let rejoin_at = self.rejoin_at;
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
                    Some(submission) => self.on_submission(submission).await,
                    None => break,
                },
                () = sleep_until(rejoin_at), if rejoin_at.is_some() => {
                    self.rejoin_at = None;
                    drop(self.channel.join());
                }
                () = sleep_until(gap_deadline), if gap_deadline.is_some() => {
                    self.gap_deadline = None;
                    self.join_ended(JoinEnd::Ended).await;
                    self.resync("a gap in the store's events stayed open too long");
                }
                () = sleep_until(settle_until), if settle_until.is_some() => {
                    self.settle_timed_out().await;
                }
            }
        }
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

    fn mark_joined(&self, joined: bool) {
        let mut set = match self.joined_stores.lock() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if joined {
            set.insert(self.store.to_string());
        } else {
            set.remove(&*self.store);
        }
    }

    // ----- writes ------------------------------------------------------------------------------

    async fn on_submission(&mut self, submission: Submission) {
        match submission {
            Submission::Write {
                ticket,
                write,
                reply,
                permit,
            } => {
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
                self.entries.insert(
                    ticket,
                    Entry {
                        write,
                        reply: Some(reply),
                        state: EntryState::Queued,
                        crashes: 0,
                        _permit: permit,
                    },
                );
                self.flush().await;
            }
            Submission::Cancel { ticket } => {
                if self
                    .entries
                    .get(&ticket)
                    .is_some_and(|e| matches!(e.state, EntryState::Queued))
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
        }
    }

    fn forget(&mut self, ticket: u64) -> Option<Entry> {
        let entry = self.entries.remove(&ticket)?;
        if self.by_op_id.get(&entry.write.client_op_id) == Some(&ticket) {
            self.by_op_id.remove(&entry.write.client_op_id);
        }
        Some(entry)
    }

    async fn send(&mut self, ticket: u64, join_ref: Ref) {
        let Some(entry) = self.entries.get_mut(&ticket) else {
            return;
        };
        if entry.reply.as_ref().is_some_and(|r| r.is_closed()) {
            // Its caller is gone and it is known not to be applied: drop it.
            self.forget(ticket);
            return;
        }
        self.sends += 1;
        let send = self.sends;
        entry.state = EntryState::InFlight {
            epoch: self.epoch,
            send,
            after_seq: self.known_seq,
            applied: None,
        };
        let request = SendWrite {
            write: entry.write.clone(),
            join_ref,
        };
        let call = match self.leaf.ready().await {
            Ok(leaf) => leaf.call(request),
            Err(error) => {
                self.resolve(ticket, Err(error)).await;
                return;
            }
        };
        self.in_flight
            .push(Box::pin(async move { (ticket, send, call.await) }));
    }

    /// While live, sends queued writes in issue order, keeping at most `max_in_flight` sent
    /// and unanswered. Nothing goes out while a write before them waits for its outcome.
    async fn flush(&mut self) {
        let Phase::Live(join_ref) = &self.phase else {
            return;
        };
        let join_ref = join_ref.clone();
        let mut in_flight = 0;
        let mut to_send = Vec::new();
        for (ticket, entry) in &self.entries {
            match entry.state {
                EntryState::InFlight { .. } => in_flight += 1,
                EntryState::Orphan { .. } => return,
                EntryState::Queued => {
                    if in_flight + to_send.len() >= self.config.max_in_flight.max(1) {
                        break;
                    }
                    to_send.push(*ticket);
                }
            }
        }
        for ticket in to_send {
            self.send(ticket, join_ref.clone()).await;
        }
    }

    async fn resolve(&mut self, ticket: u64, result: Result<WriteAck, WriteError>) {
        let Some(mut entry) = self.forget(ticket) else {
            return;
        };
        let id = &entry.write.client_op_id;
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
        if let Some(reply) = entry.reply.take() {
            let _ = reply.send(result);
        }
    }

    async fn on_outcome(&mut self, (ticket, send, result): Outcome) {
        let Some(entry) = self.entries.get_mut(&ticket) else {
            return;
        };
        let EntryState::InFlight {
            epoch,
            send: current,
            after_seq,
            applied,
        } = &mut entry.state
        else {
            return;
        };
        if *current != send {
            return;
        }
        let (epoch, after_seq) = (*epoch, *after_seq);
        match result {
            Ok(ack) => self.resolve(ticket, Ok(ack)).await,
            Err(WriteError::Transport(
                PushError::Unavailable | PushError::NotJoined | PushError::BufferFull { .. },
            )) => {
                // Not sent: the join it was pinned to had ended. It goes out after the rejoin.
                entry.state = EntryState::Queued;
            }
            Err(WriteError::Transport(
                error @ (PushError::Encode(_) | PushError::Payload(_) | PushError::SocketClosed),
            )) => {
                // Never sent, and sending it again cannot work.
                self.resolve(ticket, Err(WriteError::Transport(error)))
                    .await;
            }
            Err(WriteError::Transport(error)) => match applied.take() {
                Some(ack) => self.resolve(ticket, Ok(ack)).await,
                None => {
                    entry.state = EntryState::Orphan {
                        epoch,
                        send,
                        after_seq,
                    };
                    if error == PushError::Timeout && matches!(self.phase, Phase::Live(_)) {
                        // The connection is up but the reply never came: leave (the old
                        // channel process handles what it has before it goes) and learn the
                        // outcome from a fresh catch-up.
                        self.join_ended(JoinEnd::Ended).await;
                        self.resync("no reply to a write before its timeout");
                    }
                }
            },
            Err(other) => self.resolve(ticket, Err(other)).await,
        }
        self.flush().await;
    }

    /// The join ended: writes in flight are answered if their event came, orphaned otherwise.
    async fn join_ended(&mut self, how: JoinEnd) {
        let was_joined = matches!(
            self.phase,
            Phase::CatchingUp(_) | Phase::Settling { .. } | Phase::Live(_)
        );
        self.phase = match &self.phase {
            Phase::Failed(r) => Phase::Failed(r.clone()),
            Phase::Closed => Phase::Closed,
            _ => Phase::Offline,
        };
        self.mark_joined(false);
        self.gap_deadline = None;
        if was_joined {
            self.ended.entry(self.epoch).or_insert(how);
        }
        let in_flight: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::InFlight { .. }))
            .map(|(t, _)| *t)
            .collect();
        for ticket in in_flight {
            let Some(entry) = self.entries.get_mut(&ticket) else {
                continue;
            };
            if let EntryState::InFlight {
                epoch,
                send,
                after_seq,
                applied,
            } = &mut entry.state
            {
                match applied.take() {
                    Some(ack) => self.resolve(ticket, Ok(ack)).await,
                    None => {
                        self.ended.entry(*epoch).or_insert(how);
                        entry.state = EntryState::Orphan {
                            epoch: *epoch,
                            send: *send,
                            after_seq: *after_seq,
                        }
                    }
                }
            }
        }
        self.start_settle_time();
    }

    /// Starts the settle time when a lost join left writes whose fate its channel process may
    /// still decide.
    fn start_settle_time(&mut self) {
        let lost_orphans = self.entries.values().any(|e| {
            matches!(e.state, EntryState::Orphan { epoch, .. } if self.ended.get(&epoch) == Some(&JoinEnd::Lost))
        });
        if lost_orphans && self.settle_deadline.is_none() {
            self.settle_deadline = Some(Instant::now() + self.config.unknown_outcome_settle);
        }
    }

    /// Fails every write: unsent ones with `unsent`, the others as indeterminate.
    async fn fail_all(&mut self, unsent: WriteError, why: &str) {
        let tickets: Vec<u64> = self.entries.keys().copied().collect();
        for ticket in tickets {
            let error = match self.entries.get(&ticket).map(|e| &e.state) {
                Some(EntryState::Queued) => unsent.clone(),
                _ => WriteError::Indeterminate(why.to_owned()),
            };
            self.resolve(ticket, Err(error)).await;
        }
    }

    /// Leaves and rejoins the store, to learn what the catch-up says.
    fn resync(&mut self, reason: &str) {
        if self.resync_pending || matches!(self.phase, Phase::Failed(_) | Phase::Closed) {
            return;
        }
        tracing::info!(store = %self.store, reason, "resynchronizing the store");
        self.notify(Notice::Resync {
            store: self.store.to_string(),
            reason: reason.to_owned(),
        });
        self.resync_pending = true;
        self.phase = Phase::Offline;
        self.held_events.clear();
        self.gap_deadline = None;
        drop(self.channel.leave());
    }

    /// Orphans of ended joins, oldest first, with their join and send.
    fn orphans(&self) -> Vec<(u64, u64, u64)> {
        self.entries
            .iter()
            .filter_map(|(t, e)| match e.state {
                EntryState::Orphan { epoch, send, .. } => Some((*t, epoch, send)),
                _ => None,
            })
            .collect()
    }

    /// After a catch-up with no hole: decides what the events could decide about orphaned
    /// writes, then goes live, or settles while a lost connection's writes may still land.
    async fn after_catch_up(&mut self, join_ref: Ref) {
        // The first unapplied write of a crashed join is the one that crashed it.
        let crashed: Vec<u64> = self
            .ended
            .iter()
            .filter(|(_, how)| **how == JoinEnd::Crashed)
            .map(|(epoch, _)| *epoch)
            .collect();
        for epoch in crashed {
            let culprit = self
                .orphans()
                .into_iter()
                .filter(|(_, e, _)| *e == epoch)
                .min_by_key(|(_, _, send)| *send)
                .map(|(ticket, _, _)| ticket);
            self.ended.insert(epoch, JoinEnd::Ended);
            let Some(ticket) = culprit else { continue };
            let Some(entry) = self.entries.get_mut(&ticket) else {
                continue;
            };
            entry.crashes += 1;
            let crashes = entry.crashes;
            tracing::warn!(store = %self.store, crashes, client_op_id = %entry.write.client_op_id, "a write crashed the store's channel and was not applied");
            if crashes >= self.config.crash_limit.max(1) {
                self.resolve(ticket, Err(WriteError::CrashesChannel(crashes)))
                    .await;
            }
        }
        // Writes of ended joins without an event were not applied: they go out again, first.
        for (ticket, epoch, _) in self.orphans() {
            if self.ended.get(&epoch) != Some(&JoinEnd::Lost)
                && let Some(entry) = self.entries.get_mut(&ticket)
            {
                entry.state = EntryState::Queued;
            }
        }
        self.ended.retain(|_, how| *how == JoinEnd::Lost);
        if self.orphans().is_empty() {
            self.ended.clear();
            self.settle_deadline = None;
            self.phase = Phase::Live(join_ref);
            self.flush().await;
        } else {
            let until = *self
                .settle_deadline
                .get_or_insert_with(|| Instant::now() + self.config.unknown_outcome_settle);
            self.phase = Phase::Settling { join_ref, until };
            if until <= Instant::now() {
                self.settle_timed_out().await;
            }
        }
    }

    /// Settling is over when every orphan is answered.
    async fn settle_if_done(&mut self) {
        if let Phase::Settling { join_ref, .. } = &self.phase
            && self.orphans().is_empty()
        {
            let join_ref = join_ref.clone();
            self.ended.clear();
            self.settle_deadline = None;
            self.phase = Phase::Live(join_ref);
            self.flush().await;
        }
    }

    async fn settle_timed_out(&mut self) {
        let Phase::Settling { join_ref, .. } = &self.phase else {
            return;
        };
        let join_ref = join_ref.clone();
        for (ticket, _, _) in self.orphans() {
            match self.config.unknown_outcome {
                UnknownOutcome::AtMostOnce => {
                    let why = "the write was in flight when the connection was lost, and its event did not come within the settle time";
                    self.resolve(ticket, Err(WriteError::Indeterminate(why.into())))
                        .await;
                }
                UnknownOutcome::AtLeastOnce => {
                    if let Some(entry) = self.entries.get_mut(&ticket) {
                        entry.state = EntryState::Queued;
                    }
                }
            }
        }
        self.ended.clear();
        self.settle_deadline = None;
        self.phase = Phase::Live(join_ref);
        self.flush().await;
    }

    // ----- events, in seq order ----------------------------------------------------------------

    /// Takes an event: hands it (and the held ones it unblocks) to the engine in seq order,
    /// holds it while a hole is below it, drops it if the engine has it already.
    async fn on_event(&mut self, event: ServerEvent) {
        self.known_seq = self.known_seq.max(event.store_seq);
        if event.store_seq <= self.applied_seq {
            // A duplicate: the engine has it, but it still proves its write was applied.
            self.confirm(&event, false).await;
            return;
        }
        if event.store_seq > self.applied_seq + 1 {
            if self.held_events.len() >= self.config.reorder_capacity.max(1) {
                tracing::warn!(store = %self.store, held = self.held_events.len(), "too many events held behind a hole; resynchronizing");
                self.join_ended(JoinEnd::Ended).await;
                self.resync("too many events held behind a hole in the store's events");
                return;
            }
            self.held_events.insert(event.store_seq, event);
            if self.gap_deadline.is_none() {
                self.gap_deadline = Some(Instant::now() + self.config.gap_timeout);
            }
            return;
        }
        self.deliver(event).await;
        self.deliver_held().await;
    }

    async fn deliver_held(&mut self) {
        while let Some(entry) = self.held_events.first_entry() {
            if *entry.key() > self.applied_seq + 1 {
                break;
            }
            let event = entry.remove();
            if event.store_seq <= self.applied_seq {
                continue;
            }
            self.deliver(event).await;
        }
        if self.held_events.is_empty() {
            self.gap_deadline = None;
        }
    }

    async fn deliver(&mut self, event: ServerEvent) {
        self.applied_seq = event.store_seq;
        self.engine.handle_server_event(&self.store, &event).await;
        self.confirm(&event, true).await;
        if self.notices.receiver_count() > 0 {
            self.notify(Notice::Event {
                store: self.store.to_string(),
                event,
            });
        }
    }

    /// An event of one of our writes proves it applied. Delivered in seq order, it also proves
    /// that the orphaned writes sent before it under the same join, without an event, were
    /// processed and not applied (a channel process handles its pushes in order).
    async fn confirm(&mut self, event: &ServerEvent, in_order: bool) {
        let Some(ticket) = event
            .client_op_id
            .as_deref()
            .and_then(|id| self.by_op_id.get(&ClientOpId::from(id)).copied())
        else {
            return;
        };
        let ack = WriteAck::from_event(event);
        let orphan = match self.entries.get_mut(&ticket).map(|e| &mut e.state) {
            Some(EntryState::InFlight { applied, .. }) => {
                *applied = Some(ack);
                return;
            }
            Some(EntryState::Orphan { epoch, send, .. }) => Some((*epoch, *send)),
            // Resent after the settle time (at least once) and its late event came first.
            Some(EntryState::Queued) => None,
            None => return,
        };
        self.resolve(ticket, Ok(ack)).await;
        if in_order && let Some((epoch, send)) = orphan {
            for (earlier, e, s) in self.orphans() {
                if e == epoch && s < send {
                    let why = "a later write of the same connection was applied first, so the server processed this one and rejected it; its reply was lost";
                    self.resolve(earlier, Err(WriteError::NotApplied(why.into())))
                        .await;
                }
            }
        }
        self.settle_if_done().await;
    }

    // ----- the channel -------------------------------------------------------------------------

    async fn on_input(&mut self, input: StoreInput) {
        match input {
            StoreInput::JoinParams(reply) => {
                let seq = self.engine.last_store_seq(&self.store).await;
                self.asked_seq = Some(seq);
                let _ = reply.send(Payload::from(json!({ "last_store_seq": seq })));
            }
            StoreInput::Joined(joined) => self.on_joined(joined).await,
            StoreInput::JoinFailed(cause) => {
                tracing::info!(store = %self.store, %cause, "store join failed; retrying");
            }
            StoreInput::Message(message) => self.on_message(message).await,
            StoreInput::Errored(cause) => {
                let how = match cause {
                    ErrorCause::Crashed => JoinEnd::Crashed,
                    _ => JoinEnd::Lost,
                };
                self.join_ended(how).await;
                self.set_status(StoreStatus::Reconnecting, Some(cause.to_string()))
                    .await;
            }
            StoreInput::Closed(cause) => self.on_closed(cause).await,
            StoreInput::Overflow(dropped) => {
                tracing::warn!(store = %self.store, dropped, "store events were dropped; resynchronizing");
                self.join_ended(JoinEnd::Ended).await;
                self.resync("events were dropped because the engine fell behind");
            }
        }
    }

    async fn on_joined(&mut self, joined: Joined) {
        let reply = joined.response.to_value().unwrap_or(Value::Null);
        let capabilities = Capabilities::from_join_reply(&reply);
        self.rejoin_attempt = 0;
        let asked = match self.asked_seq.take() {
            Some(asked) => asked,
            None => self.engine.last_store_seq(&self.store).await,
        };
        if capabilities.store_seq < asked {
            tracing::warn!(store = %self.store, ours = asked, server = capabilities.store_seq, "server reset: its seq is below ours; resyncing from 0");
            self.engine
                .handle_server_reset(&self.store, capabilities.store_seq)
                .await;
            self.known_seq = capabilities.store_seq;
            self.resync("the server's seq went below ours (server reset)");
            return;
        }
        self.epoch += 1;
        self.known_seq = capabilities.store_seq;
        // The catch-up starts after the seq the join asked from.
        self.applied_seq = asked;
        self.held_events.clear();
        self.gap_deadline = None;
        self.phase = Phase::CatchingUp(joined.join_ref);
        self.mark_joined(true);
        self.engine
            .set_capabilities(&self.store, &capabilities)
            .await;
        self.set_status(StoreStatus::Connected, None).await;
        self.notify(Notice::Joined {
            store: self.store.to_string(),
            capabilities,
        });
    }

    async fn on_message(&mut self, message: Message) {
        match message.event.as_str() {
            "event" => match message.payload.deserialize::<ServerEvent>() {
                Ok(event) => self.on_event(event).await,
                Err(e) => {
                    tracing::warn!(store = %self.store, error = %e, "malformed event; ignored")
                }
            },
            "snapshot" => {
                let snapshot: Snapshot = match message.payload.deserialize() {
                    Ok(snapshot) => snapshot,
                    Err(e) => {
                        tracing::warn!(store = %self.store, error = %e, "malformed snapshot; ignored");
                        return;
                    }
                };
                self.known_seq = self.known_seq.max(snapshot.snapshot_seq);
                self.engine.handle_snapshot(&self.store, &snapshot).await;
                // The snapshot replaces everything up to its seq: events resume after it.
                self.applied_seq = snapshot.snapshot_seq;
                self.held_events = self.held_events.split_off(&(snapshot.snapshot_seq + 1));
                // A write of unknown outcome sent before the snapshot's seq may be inside it:
                // its event will never come, so whether it was applied cannot be known.
                let compacted: Vec<u64> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e.state, EntryState::Orphan { after_seq, .. } if after_seq < snapshot.snapshot_seq))
                    .map(|(t, _)| *t)
                    .collect();
                for ticket in compacted {
                    let why = "the store was compacted into a snapshot while the write's outcome was unknown";
                    self.resolve(ticket, Err(WriteError::Indeterminate(why.into())))
                        .await;
                }
                self.notify(Notice::Snapshot {
                    store: self.store.to_string(),
                    snapshot_seq: snapshot.snapshot_seq,
                });
                self.deliver_held().await;
                self.settle_if_done().await;
            }
            "catch_up_complete" => {
                let payload = message.payload.to_value().unwrap_or(Value::Null);
                let through_seq = payload
                    .get("through_seq")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.known_seq = self.known_seq.max(through_seq);
                if self.applied_seq < through_seq {
                    tracing::warn!(store = %self.store, through_seq, have = self.applied_seq, "catch-up left a hole; resynchronizing");
                    self.join_ended(JoinEnd::Ended).await;
                    self.resync("the catch-up left a hole in the store's events");
                    return;
                }
                self.channel
                    .cast_payload("ack_seq", Payload::from(json!({ "seq": through_seq })));
                self.engine
                    .set_catch_up_complete(&self.store, through_seq)
                    .await;
                self.notify(Notice::CatchUpComplete {
                    store: self.store.to_string(),
                    through_seq,
                });
                if let Phase::CatchingUp(join_ref) = &self.phase {
                    let join_ref = join_ref.clone();
                    self.after_catch_up(join_ref).await;
                }
            }
            other => tracing::debug!(store = %self.store, event = other, "unhandled store message"),
        }
    }

    async fn on_closed(&mut self, cause: CloseCause) {
        self.join_ended(JoinEnd::Ended).await;
        match cause {
            CloseCause::Left if self.resync_pending => {
                self.resync_pending = false;
                drop(self.channel.join());
            }
            CloseCause::Left => {}
            CloseCause::ServerClosed => {
                // The store goes reconnecting and rejoins when the channel's rejoin policy
                // says (a server close is handed to it as the end of the channel's process).
                self.rejoin_attempt += 1;
                match self
                    .config
                    .rejoin_policy
                    .rejoin_delay(self.rejoin_attempt, &RejoinCause::Crashed)
                {
                    Some(delay) => {
                        self.rejoin_at = Some(Instant::now() + delay);
                        self.set_status(
                            StoreStatus::Reconnecting,
                            Some("closed by the server".into()),
                        )
                        .await;
                    }
                    None => {
                        let rejection = Rejection::from_payload(
                            &json!({"reason": "closed by the server; the rejoin policy gave up"}),
                        );
                        self.phase = Phase::Failed(rejection.clone());
                        self.fail_all(
                            WriteError::JoinFailed(rejection.clone()),
                            "the store's channel was closed by the server",
                        )
                        .await;
                        self.set_status(StoreStatus::Failed, Some(rejection.to_string()))
                            .await;
                    }
                }
            }
            CloseCause::RejoinStopped(cause) => {
                let rejection = match &cause {
                    RejoinCause::Rejected(payload) => {
                        Rejection::from_payload(&payload.to_value().unwrap_or(Value::Null))
                    }
                    other => Rejection::from_payload(&json!({"reason": other.to_string()})),
                };
                tracing::warn!(store = %self.store, reason = %rejection, "store join refused for good");
                self.phase = Phase::Failed(rejection.clone());
                self.fail_all(
                    WriteError::JoinFailed(rejection.clone()),
                    "the store's join was refused for good",
                )
                .await;
                self.set_status(StoreStatus::Failed, Some(rejection.to_string()))
                    .await;
            }
            other => {
                self.phase = Phase::Closed;
                self.fail_all(
                    WriteError::Closed,
                    "the connection was shut down before the write was answered",
                )
                .await;
                self.set_status(StoreStatus::Failed, Some(other.to_string()))
                    .await;
            }
        }
    }

    async fn on_channel_gone(&mut self) {
        self.inputs = None;
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.mark_joined(false);
            self.fail_all(
                WriteError::Closed,
                "the connection was shut down before the write was answered",
            )
            .await;
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

/// The capacity of the queue from a store's channel handler to its worker.
pub(crate) const INPUT_CAPACITY: usize = 256;

/// The join params used when the worker cannot answer.
pub(crate) fn default_join_params() -> Payload {
    Payload::from(json!({"last_store_seq": 0}))
}
