//! How a join ends, and what the next join's catch-up decides about the writes it left
//! unanswered: resent, answered, or held for the settle time.

use tokio::time::Instant;
use tower::Service;

use super::{EntryState, JoinEnd, Phase, Task};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::write::WriteAck;
use crate::{Notice, UnknownOutcome};
use phoenix_channels::Ref;

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// The join ended: writes in flight are answered if their event came, orphaned otherwise.
    pub(super) async fn join_ended(&mut self, how: JoinEnd) {
        let was_joined = matches!(
            self.phase,
            Phase::CatchingUp(_) | Phase::Settling { .. } | Phase::Live(_)
        );
        self.phase = match &self.phase {
            Phase::Failed(r) => Phase::Failed(r.clone()),
            Phase::Closed => Phase::Closed,
            _ => Phase::Offline,
        };
        self.gap_deadline = None;
        self.answer_ahead(true).await;
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
    pub(super) fn start_settle_time(&mut self) {
        let lost_orphans = self.entries.values().any(|e| {
            matches!(e.state, EntryState::Orphan { epoch, .. } if self.ended.get(&epoch).is_some_and(|how| how.may_still_apply()))
        });
        if lost_orphans && self.settle_deadline.is_none() {
            self.settle_deadline = Some(Instant::now() + self.config.unknown_outcome_settle);
        }
    }

    /// Fails every write: unsent ones with `unsent`, the others as indeterminate. When the
    /// connection shut down (`unsent` is `Closed`), a durable outbox keeps them all: they go
    /// out on the next start.
    pub(super) async fn fail_all(&mut self, unsent: WriteError, why: &str) {
        let retire = unsent != WriteError::Closed;
        self.answer_ahead(true).await;
        let tickets: Vec<u64> = self.entries.keys().copied().collect();
        for ticket in tickets {
            let error = match self.entries.get(&ticket).map(|e| &e.state) {
                Some(EntryState::Queued) => unsent.clone(),
                _ => WriteError::Indeterminate(why.to_owned()),
            };
            self.resolve_with(ticket, Err(error), retire).await;
        }
        self.retire();
    }

    /// Leaves and rejoins the store, to learn what the catch-up says.
    pub(super) fn resync(&mut self, reason: &str) {
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
    pub(super) fn orphans(&self) -> Vec<(u64, u64, u64)> {
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
    pub(super) async fn after_catch_up(&mut self, join_ref: Ref) {
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
            if !self
                .ended
                .get(&epoch)
                .is_some_and(|how| how.may_still_apply())
                && let Some(entry) = self.entries.get_mut(&ticket)
            {
                entry.state = EntryState::Queued;
            }
        }
        self.ended.retain(|_, how| how.may_still_apply());
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
    pub(super) async fn settle_if_done(&mut self) {
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

    pub(super) async fn settle_timed_out(&mut self) {
        let Phase::Settling { join_ref, .. } = &self.phase else {
            return;
        };
        let join_ref = join_ref.clone();
        for (ticket, epoch, _) in self.orphans() {
            let recovered = self.ended.get(&epoch) == Some(&JoinEnd::Recovered);
            match self.config.unknown_outcome {
                UnknownOutcome::AtMostOnce if !recovered => {
                    let why = "the write was in flight when the connection was lost, and its event did not come within the settle time";
                    self.resolve(ticket, Err(WriteError::Indeterminate(why.into())))
                        .await;
                }
                _ => {
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
}
