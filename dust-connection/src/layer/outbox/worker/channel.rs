//! The store's channel: its handler, which forwards what happens on the channel to the
//! worker in order, and the worker's answers to it (join params, joins, messages, closes).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use phoenix_channels::backoff::RejoinPolicy;
use phoenix_channels::{
    ChannelContext, ChannelHandler, CloseCause, ErrorCause, Joined, Message, Payload, RejoinCause,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tower::Service;

use super::{EntryState, JoinEnd, Phase, Task};
use crate::Notice;
use crate::engine::{Capabilities, ServerEvent, Snapshot, StoreStatus};
use crate::error::WriteError;
use crate::format;
use crate::layer::SendWrite;
use crate::write::{Rejection, WriteAck};

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

/// The store channel's rejoin policy as the builder holds it (shared by every store's
/// channel). The channel alone schedules rejoins: after a failed join, a crash, and a server
/// close (the store channel is built with `rejoin_after_server_close`).
#[derive(Clone, Debug)]
pub(crate) struct SharedRejoinPolicy(pub(crate) Arc<dyn RejoinPolicy>);

impl RejoinPolicy for SharedRejoinPolicy {
    fn rejoin_delay(&self, attempt: u32, cause: &RejoinCause) -> Option<Duration> {
        self.0.rejoin_delay(attempt, cause)
    }
}

/// The capacity of the queue from a store's channel handler to its worker.
pub(crate) const INPUT_CAPACITY: usize = 256;

/// The join params used when the worker cannot answer.
pub(crate) fn default_join_params() -> Payload {
    Payload::from(json!({"last_store_seq": 0}))
}

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    pub(super) async fn on_input(&mut self, input: StoreInput) {
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
                    // The server ended the channel's process: like a leave, not a crash.
                    ErrorCause::ServerClosed => JoinEnd::Ended,
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

    pub(super) async fn on_joined(&mut self, joined: Joined) {
        let reply = format::value(&joined.response).unwrap_or(Value::Null);
        let capabilities = Capabilities::from_join_reply(&reply);
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
        // Answered before: the engine gets what it lacks from this join's catch-up.
        self.answer_ahead(true).await;
        // The catch-up starts after the seq the join asked from.
        self.applied_seq = asked;
        self.held_events.clear();
        self.gap_deadline = None;
        self.phase = Phase::CatchingUp(joined.join_ref);
        self.engine
            .set_capabilities(&self.store, &capabilities)
            .await;
        self.set_status(StoreStatus::Connected, None).await;
        self.notify(Notice::Joined {
            store: self.store.to_string(),
            capabilities,
        });
    }

    pub(super) async fn on_message(&mut self, message: Message) {
        match message.event.as_str() {
            "event" => match format::read::<ServerEvent>(&message.payload) {
                Ok(event) => self.on_event(event).await,
                Err(e) => {
                    tracing::warn!(store = %self.store, error = %e, "malformed event; ignored")
                }
            },
            "snapshot" => {
                let snapshot: Snapshot = match format::read(&message.payload) {
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
                self.answer_ahead(false).await;
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
                let payload = format::value(&message.payload).unwrap_or(Value::Null);
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

    pub(super) async fn on_closed(&mut self, cause: CloseCause) {
        self.join_ended(JoinEnd::Ended).await;
        match cause {
            CloseCause::Left if self.resync_pending => {
                self.resync_pending = false;
                drop(self.channel.join());
            }
            CloseCause::Left => {}
            CloseCause::RejoinStopped(cause) => {
                let rejection = match &cause {
                    RejoinCause::Rejected(payload) => {
                        Rejection::from_payload(&format::value(payload).unwrap_or(Value::Null))
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

    pub(super) async fn on_channel_gone(&mut self) {
        self.inputs = None;
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.fail_all(
                WriteError::Closed,
                "the connection was shut down before the write was answered",
            )
            .await;
        }
    }
}
