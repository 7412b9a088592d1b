//! The durable outbox's side of the worker: the writes recovered at the start, writes put on
//! disk (a group per transaction) before they are queued, marked sent before they go out, and
//! taken out once answered.

use tokio::time::Instant;
use tower::Service;

use super::{Entry, EntryState, JOURNAL_BATCH, JoinEnd, Permit, Phase, Recovered, Reply, Task};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::write::{ClientOpId, EncodedWrite, WriteAck};

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// Takes in the writes a durable outbox held when the process started: they take the
    /// first tickets, in issue order.
    pub(super) fn recover(&mut self, recovered: Vec<(Recovered, Reply, Permit)>) {
        if recovered.iter().any(|(r, _, _)| r.sent) {
            // Epoch 0 is before the first join of this process: the recovered writes' "join".
            self.ended.insert(0, JoinEnd::Recovered);
            self.settle_deadline = Some(Instant::now() + self.config.unknown_outcome_settle);
        }
        if !recovered.is_empty() {
            tracing::info!(store = %self.store, writes = recovered.len(), "writes recovered from the durable outbox");
        }
        for (ticket, (Recovered { write, sent }, reply, permit)) in (1..).zip(recovered) {
            self.by_op_id.insert(write.client_op_id.clone(), ticket);
            // A write that was sent may have been applied: its fate is learned as after a lost
            // connection. One never sent is simply queued.
            let state = if sent {
                EntryState::Orphan {
                    epoch: 0,
                    send: 0,
                    after_seq: 0,
                }
            } else {
                EntryState::Queued
            };
            self.entries.insert(
                ticket,
                Entry {
                    write,
                    reply: Some(reply),
                    state,
                    crashes: 0,
                    span: tracing::Span::none(),
                    journaled: true,
                    marked_sent: sent,
                    queued: None,
                    _permit: permit,
                },
            );
        }
    }

    /// Takes the answered writes out of the journal, in one commit.
    pub(super) fn retire(&mut self) {
        if !self.retired.is_empty() {
            let retired = std::mem::take(&mut self.retired);
            self.journal.remove(&retired);
        }
    }

    /// Before writes of a durable outbox are first sent, records that they may be (a
    /// recovered write never sent goes out at once; one sent waits for its fate). If the disk
    /// refuses, they are not sent: they fail with [`WriteError::Storage`] and leave the outbox.
    pub(super) async fn mark_sent(&mut self, tickets: &[u64]) -> bool {
        let ids: Vec<ClientOpId> = tickets
            .iter()
            .filter_map(|ticket| self.entries.get(ticket))
            .filter(|entry| !entry.marked_sent)
            .map(|entry| entry.write.client_op_id.clone())
            .collect();
        if ids.is_empty() {
            return true;
        }
        match self.journal.mark_sent(&ids) {
            Ok(()) => {
                for ticket in tickets {
                    if let Some(entry) = self.entries.get_mut(ticket) {
                        entry.marked_sent = true;
                    }
                }
                true
            }
            Err(error) => {
                tracing::error!(store = %self.store, %error, "could not mark writes as sent in the durable outbox");
                for ticket in tickets {
                    self.resolve(*ticket, Err(error.clone())).await;
                }
                false
            }
        }
    }

    /// Puts the accepted writes on disk, with the ones waiting in the submissions queue (up to
    /// [`JOURNAL_BATCH`]) in the same transaction; then they are queued: their callers are
    /// told, and they may be sent.
    pub(super) async fn persist(&mut self) {
        while self.unpersisted.len() < JOURNAL_BATCH
            && let Ok(submission) = self.submissions.try_recv()
        {
            self.on_submission(submission).await;
        }
        if self.unpersisted.is_empty() {
            return;
        }
        let tickets = std::mem::take(&mut self.unpersisted);
        let writes: Vec<EncodedWrite> = tickets
            .iter()
            .filter_map(|ticket| self.entries.get(ticket))
            .map(|entry| entry.write.clone())
            .collect();
        let count = writes.len();
        // While live they go out at once: they are written as sent, which saves a commit per
        // send (if the process dies before it sends them, they wait for the settle time after
        // the restart instead of going out at once: never twice either way).
        let sent = matches!(self.phase, Phase::Live(_));
        self.retire();
        match self.journal.append(writes, sent).await {
            Ok(()) => {
                tracing::trace!(store = %self.store, writes = count, "writes on disk");
                for ticket in tickets {
                    if let Some(entry) = self.entries.get_mut(&ticket) {
                        entry.journaled = true;
                        entry.marked_sent = sent;
                        if let Some(queued) = entry.queued.take() {
                            let _ = queued.send(entry.write.client_op_id.clone());
                        }
                    }
                }
                self.flush().await;
            }
            Err(error) => {
                tracing::error!(store = %self.store, %error, "could not put writes in the durable outbox");
                for ticket in tickets {
                    self.resolve_with(ticket, Err(error.clone()), false).await;
                }
            }
        }
    }
}
