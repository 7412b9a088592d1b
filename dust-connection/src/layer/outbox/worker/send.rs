//! Sending: the in-flight window, each send pinned to its join, and what a send's outcome
//! says about the write.

use phoenix_channels::{PushError, Ref};
use tower::{Service, ServiceExt as _};
use tracing::Instrument as _;

use super::{EntryState, JoinEnd, Outcome, Phase, Task};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::write::WriteAck;

impl<S> Task<S>
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    pub(super) async fn send(&mut self, ticket: u64, join_ref: Ref) {
        let Some(entry) = self.entries.get_mut(&ticket) else {
            return;
        };
        if !entry.journaled && entry.reply.as_ref().is_some_and(|r| r.is_closed()) {
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
        // The caller's span travels with the write: the send is a child of it.
        let span = tracing::debug_span!(
            parent: &entry.span,
            "dust_outbox_send",
            client_op_id = %entry.write.client_op_id,
            send,
        );
        let request = SendWrite {
            channel: self.channel.clone(),
            write: entry.write.clone(),
            join_ref,
        };
        let call = match self.leaf.ready().await {
            Ok(leaf) => span.in_scope(|| leaf.call(request)),
            Err(error) => {
                self.resolve(ticket, Err(error)).await;
                return;
            }
        };
        self.in_flight.push(Box::pin(
            async move { (ticket, send, call.await) }.instrument(span),
        ));
    }

    /// While live, sends queued writes in issue order, keeping at most `max_in_flight` sent
    /// and unanswered. Nothing goes out while a write before them waits for its outcome.
    pub(super) async fn flush(&mut self) {
        let Phase::Live(join_ref) = &self.phase else {
            return;
        };
        let join_ref = join_ref.clone();
        let mut in_flight = 0;
        let mut to_send = Vec::new();
        let durable = self.journal.is_durable();
        for (ticket, entry) in &self.entries {
            match entry.state {
                EntryState::InFlight { .. } => in_flight += 1,
                EntryState::Orphan { .. } => return,
                EntryState::Queued => {
                    if (durable && !entry.journaled)
                        || in_flight + to_send.len() >= self.config.max_in_flight.max(1)
                    {
                        break;
                    }
                    to_send.push(*ticket);
                }
            }
        }
        if durable && !self.mark_sent(&to_send).await {
            return;
        }
        for ticket in to_send {
            self.send(ticket, join_ref.clone()).await;
        }
    }

    pub(super) async fn on_outcome(&mut self, (ticket, send, result): Outcome) {
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
            Ok(ack) => match ack.store_seq() {
                // Its event, sent before the reply, may still be on its way to this task.
                Some(seq) if seq > self.applied_seq => {
                    self.answered_ahead
                        .entry(seq)
                        .or_default()
                        .push((ticket, ack));
                }
                _ => self.resolve(ticket, Ok(ack)).await,
            },
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
}
