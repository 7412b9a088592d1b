//! The driver's side of each channel: its consumer's queue, its state watch and the waiters
//! of its join and leave, and how channel events reach them.

use tokio::sync::oneshot;

use super::Driver;
use super::queue::{Delivery, QueueTx};
use crate::error::JoinError;
use crate::handler::Joined;
use crate::proto::ChannelEvent;
#[cfg(doc)]
use crate::proto::SocketCore;
use crate::proto::channel::ChannelId;
use crate::proto::message::Payload;

/// The driver's side of a channel.
pub(super) struct Slot {
    pub(super) queue: QueueTx,
    /// Whether the consumer is a handler (it gets control notices) or a message stream.
    pub(super) notify: bool,
    pub(super) join_waiters: Waiters<JoinWaiter>,
    pub(super) leave_waiters: Waiters<oneshot::Sender<()>>,
    /// Join waiters with their outcome, answered at the next [`Driver::flush_consumers`]: the
    /// outcomes of a batch of replies go out together, so that a task awaiting many joins on
    /// another thread is woken once for the batch rather than once per reply.
    pub(super) answered: Waiters<(JoinWaiter, Result<Payload, JoinError>)>,
    /// The core refused the channel (another channel uses the topic): the core does not hold
    /// it. Whether a channel the core holds was removed, and the response of its current join,
    /// are the core's to say ([`SocketCore::is_removed`], [`SocketCore::join_response`]).
    pub(super) refused: bool,
}

pub(super) type JoinWaiter = oneshot::Sender<Result<Payload, JoinError>>;

impl Slot {
    /// Whether the slot has something for [`Driver::flush_consumers`].
    fn is_unflushed(&self) -> bool {
        self.queue.is_unflushed() || !self.answered.is_empty()
    }

    /// Answers the join waiters whose outcome is known, and wakes the consumer if anything was
    /// queued for it.
    fn flush(&mut self) {
        for (done, outcome) in self.answered.drain() {
            let _ = done.send(outcome);
        }
        self.queue.flush();
    }

    /// Gives every join waiter its outcome (at the next flush).
    fn answer_joins(&mut self, outcome: impl Fn() -> Result<Payload, JoinError>) {
        let Self {
            join_waiters,
            answered,
            ..
        } = self;
        for done in join_waiters.drain() {
            answered.push((done, outcome()));
        }
    }
}

/// The waiters of a join or a leave: almost always none or one, which takes no allocation.
pub(super) struct Waiters<T> {
    first: Option<T>,
    more: Vec<T>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self {
            first: None,
            more: Vec::new(),
        }
    }
}

impl<T> Waiters<T> {
    pub(super) fn push(&mut self, waiter: T) {
        match self.first {
            None => self.first = Some(waiter),
            Some(_) => self.more.push(waiter),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Takes every waiter, in the order they came.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

impl Driver {
    /// Wakes the consumers that got something since the last call (once each), and answers
    /// the join waiters whose outcome came since.
    pub(super) fn flush_consumers(&mut self) {
        let slots = &mut self.slots;
        for id in self.to_flush.drain(..) {
            if let Some(slot) = slots.get_mut(&id) {
                slot.flush();
            }
        }
    }

    pub(super) fn channel_event(&mut self, id: ChannelId, event: ChannelEvent) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let was_unflushed = slot.is_unflushed();
        let delivered = match event {
            ChannelEvent::Message(message) => slot.queue.message(message).map(|queued| {
                if !queued {
                    tracing::debug!(channel = %id, "channel consumer is behind; message dropped");
                }
                if slot.queue.is_congested() && !self.congested.contains(&id) {
                    self.congested.push(id);
                }
            }),
            ChannelEvent::State(state) => {
                slot.queue.set_state(state);
                Ok(())
            }
            ChannelEvent::NeedJoinParams => slot.queue.control(Delivery::JoinParams),
            ChannelEvent::Joined { response, join_ref } => {
                slot.answer_joins(|| Ok(response.clone()));
                if slot.notify {
                    slot.queue
                        .control(Delivery::Joined(Box::new(Joined { response, join_ref })))
                } else {
                    Ok(())
                }
            }
            ChannelEvent::JoinFailed(cause) => {
                slot.answer_joins(|| Err(JoinError::from(cause.clone())));
                if slot.notify {
                    slot.queue.control(Delivery::JoinFailed(Box::new(cause)))
                } else {
                    Ok(())
                }
            }
            ChannelEvent::Errored(cause) => {
                if slot.notify {
                    slot.queue.control(Delivery::Errored(Box::new(cause)))
                } else {
                    Ok(())
                }
            }
            ChannelEvent::Closed(cause) => {
                slot.answer_joins(|| Err(JoinError::Closed(cause.clone())));
                for done in slot.leave_waiters.drain() {
                    let _ = done.send(());
                }
                let delivered = if slot.notify {
                    slot.queue.control(Delivery::Closed(Box::new(cause)))
                } else {
                    Ok(())
                };
                if self.core.is_removed(id) {
                    // The handle is gone and the channel is closed: dropping the slot ends the
                    // consumer after this last notice; its join waiters are answered first.
                    slot.flush();
                    self.slots.remove(&id);
                    return;
                }
                delivered
            }
        };
        if !was_unflushed && slot.is_unflushed() {
            self.to_flush.push(id);
        }
        if delivered.is_err() && slot.notify && !self.core.is_removed(id) {
            // The handler task ended (it panicked): nothing can take this channel's events.
            tracing::error!(channel = %id, "channel handler task ended; leaving the channel");
            self.core.remove_channel(Self::now(), id);
        }
    }
}
