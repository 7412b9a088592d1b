//! The store's events, handed to the engine strictly in seq order, and what they prove about
//! the store's own writes.

use tokio::time::Instant;
use tower::Service;

use super::{EntryState, JoinEnd, Task};
use crate::Notice;
use crate::engine::ServerEvent;
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::write::{ClientOpId, WriteAck};

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// Takes an event: hands it (and the held ones it unblocks) to the engine in seq order,
    /// holds it while a hole is below it, drops it if the engine has it already.
    pub(super) async fn on_event(&mut self, event: ServerEvent) {
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

    pub(super) async fn deliver_held(&mut self) {
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

    pub(super) async fn deliver(&mut self, event: ServerEvent) {
        self.applied_seq = event.store_seq;
        self.engine.handle_server_event(&self.store, &event).await;
        self.confirm(&event, true).await;
        self.answer_ahead(false).await;
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
    pub(super) async fn confirm(&mut self, event: &ServerEvent, in_order: bool) {
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
}
