//! One store: its channel handler, and the worker that owns its outbox.
//!
//! The store handler is the `ChannelHandler` of topic `store:{name}`: it forwards what
//! happens on the channel, in order, to the store's worker. The worker is the only place where
//! the store's state lives: it answers join params from the engine, hands events, snapshots and
//! catch-up to the engine, pushes `ack_seq`, and runs the outbox:
//!
//! - writes go out in issue order, and only while the store is joined and caught up;
//! - each push is pinned to the join it was sent under, so nothing goes out late after a rejoin;
//! - a write whose own `event` arrives is known to be applied; if its reply is then lost it is
//!   answered from the event;
//! - after a rejoin, the worker waits for `catch_up_complete`: writes that were in flight and
//!   whose `client_op_id` shows up in the catch-up are answered from it; the others are resent
//!   with the same `client_op_id`, then the queued ones, in issue order. Nothing is sent twice
//!   by us, nothing accepted is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use phoenix_channels::{
    Channel, ChannelContext, ChannelHandler, CloseCause, ErrorCause, Joined, Message, Payload,
    PushError, Ref, RejoinCause,
};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use crate::engine::{Capabilities, ServerEvent, Snapshot, StoreStatus, SyncEngine};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::layer::outbox::Submission;
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

/// Where a store is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Not joined.
    Offline,
    /// Joined under this join; waiting for `catch_up_complete`.
    CatchingUp(Ref),
    /// Joined and caught up: writes go out.
    Live(Ref),
    /// The join was refused for good; writes fail until `rejoin`.
    Failed(Rejection),
    /// The connection is shut down.
    Closed,
}

#[derive(Debug)]
enum EntryState {
    /// Not sent (or known not to have been sent).
    Queued,
    /// Sent under the current join; `applied` once its own event came.
    InFlight {
        send: u64,
        after_seq: u64,
        applied: Option<WriteAck>,
    },
    /// Sent, then the join ended before an answer: applied or not, to be learned from catch-up.
    Unknown { after_seq: u64 },
}

struct Entry {
    write: EncodedWrite,
    reply: Option<oneshot::Sender<Result<WriteAck, WriteError>>>,
    state: EntryState,
    _permit: OwnedSemaphorePermit,
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
    phase: Phase,
    entries: BTreeMap<u64, Entry>,
    by_op_id: HashMap<ClientOpId, u64>,
    in_flight: FuturesUnordered<OutcomeFuture>,
    sends: u64,
    /// The latest seq known to exist on the server (join reply, events, snapshots).
    known_seq: u64,
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
            phase: Phase::Offline,
            entries: BTreeMap::new(),
            by_op_id: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            sends: 0,
            known_seq: 0,
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
                        _permit: permit,
                    },
                );
                if let Phase::Live(join_ref) = &self.phase {
                    let join_ref = join_ref.clone();
                    self.send(ticket, join_ref).await;
                }
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
        if matches!(entry.state, EntryState::Queued)
            && entry.reply.as_ref().is_some_and(|r| r.is_closed())
        {
            // Its caller is gone and it was never sent: drop it.
            self.forget(ticket);
            return;
        }
        self.sends += 1;
        let send = self.sends;
        entry.state = EntryState::InFlight {
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

    /// Sends every unsent write, in issue order (the ones whose outcome was unknown are the
    /// oldest, so they go first).
    async fn flush(&mut self, join_ref: Ref) {
        let unsent: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Queued | EntryState::Unknown { .. }))
            .map(|(t, _)| *t)
            .collect();
        for ticket in unsent {
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
        let after_seq = *after_seq;
        match result {
            Ok(ack) => self.resolve(ticket, Ok(ack)).await,
            Err(WriteError::Transport(PushError::Unavailable)) => {
                // Not sent: the join it was pinned to had ended. It goes out after the rejoin.
                entry.state = EntryState::Queued;
            }
            Err(WriteError::Transport(error)) => match applied.take() {
                Some(ack) => self.resolve(ticket, Ok(ack)).await,
                None => {
                    entry.state = EntryState::Unknown { after_seq };
                    if error == PushError::Timeout && matches!(self.phase, Phase::Live(_)) {
                        // The connection is up but the reply never came: learn the outcome from
                        // a fresh catch-up.
                        self.resync("no reply to a write before its timeout");
                    }
                }
            },
            Err(other) => self.resolve(ticket, Err(other)).await,
        }
    }

    /// The join ended: writes in flight are answered if their event came, unknown otherwise.
    async fn join_ended(&mut self) {
        self.phase = match &self.phase {
            Phase::Failed(r) => Phase::Failed(r.clone()),
            Phase::Closed => Phase::Closed,
            _ => Phase::Offline,
        };
        self.mark_joined(false);
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
                after_seq, applied, ..
            } = &mut entry.state
            {
                match applied.take() {
                    Some(ack) => self.resolve(ticket, Ok(ack)).await,
                    None => {
                        entry.state = EntryState::Unknown {
                            after_seq: *after_seq,
                        }
                    }
                }
            }
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
        drop(self.channel.leave());
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
                self.join_ended().await;
                self.set_status(StoreStatus::Reconnecting, Some(cause.to_string()))
                    .await;
            }
            StoreInput::Closed(cause) => self.on_closed(cause).await,
            StoreInput::Overflow(dropped) => {
                tracing::warn!(store = %self.store, dropped, "store events were dropped; resynchronizing");
                self.join_ended().await;
                self.resync("events were dropped because the engine fell behind");
            }
        }
    }

    async fn on_joined(&mut self, joined: Joined) {
        let reply = joined.response.to_value().unwrap_or(Value::Null);
        let capabilities = Capabilities::from_join_reply(&reply);
        self.rejoin_attempt = 0;
        if let Some(asked) = self.asked_seq.take()
            && capabilities.store_seq < asked
        {
            tracing::warn!(store = %self.store, ours = asked, server = capabilities.store_seq, "server reset: its seq is below ours; resyncing from 0");
            self.engine
                .handle_server_reset(&self.store, capabilities.store_seq)
                .await;
            self.known_seq = capabilities.store_seq;
            self.resync("the server's seq went below ours (server reset)");
            return;
        }
        self.known_seq = capabilities.store_seq;
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
            "event" => {
                let event: ServerEvent = match message.payload.deserialize() {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(store = %self.store, error = %e, "malformed event; ignored");
                        return;
                    }
                };
                self.known_seq = self.known_seq.max(event.store_seq);
                self.engine.handle_server_event(&self.store, &event).await;
                if let Some(ticket) = event
                    .client_op_id
                    .as_deref()
                    .and_then(|id| self.by_op_id.get(&ClientOpId::from(id)).copied())
                {
                    let ack = WriteAck::from_event(&event);
                    match self.entries.get_mut(&ticket).map(|e| &mut e.state) {
                        Some(EntryState::InFlight { applied, .. }) => *applied = Some(ack),
                        Some(EntryState::Unknown { .. }) => self.resolve(ticket, Ok(ack)).await,
                        _ => {}
                    }
                }
                if self.notices.receiver_count() > 0 {
                    self.notify(Notice::Event {
                        store: self.store.to_string(),
                        event,
                    });
                }
            }
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
                // A write of unknown outcome sent before the snapshot's seq may be inside it:
                // its event will never come, so whether it was applied cannot be known.
                let compacted: Vec<u64> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e.state, EntryState::Unknown { after_seq } if after_seq < snapshot.snapshot_seq))
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
            }
            "catch_up_complete" => {
                let payload = message.payload.to_value().unwrap_or(Value::Null);
                let through_seq = payload
                    .get("through_seq")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.known_seq = self.known_seq.max(through_seq);
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
                    self.phase = Phase::Live(join_ref.clone());
                    self.flush(join_ref).await;
                }
            }
            other => tracing::debug!(store = %self.store, event = other, "unhandled store message"),
        }
    }

    async fn on_closed(&mut self, cause: CloseCause) {
        self.join_ended().await;
        match cause {
            CloseCause::Left if self.resync_pending => {
                self.resync_pending = false;
                drop(self.channel.join());
            }
            CloseCause::Left => {}
            CloseCause::ServerClosed => {
                // As the seed does: the store goes reconnecting and rejoins with backoff.
                self.rejoin_attempt += 1;
                let delay = phoenix_channels::backoff::schedule_delay(
                    &phoenix_channels::backoff::REJOIN_SCHEDULE_MS,
                    self.rejoin_attempt,
                );
                self.rejoin_at = Some(Instant::now() + delay);
                self.set_status(
                    StoreStatus::Reconnecting,
                    Some("closed by the server".into()),
                )
                .await;
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
