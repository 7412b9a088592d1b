//! The queue from the socket task to a channel's consumer (its handler task or its message
//! stream).
//!
//! Messages count against a capacity: when the consumer falls that far behind, further messages
//! are dropped, counted, and reported to the consumer as one overflow notice — never silently,
//! and never with unbounded memory. Control notices (joined, errored, closed, join params
//! requests) always get through: they are produced at most once per join attempt, and a join
//! attempt that needs the consumer (for its params) waits for it, so they are bounded by the
//! consumer's own progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::handler::Joined;
use crate::proto::channel::{CloseCause, ErrorCause, RejoinCause};
use crate::proto::message::Message;

/// Something for a channel's consumer. Every payload is boxed so that a queue slot is two
/// words: the queue allocates its slots in blocks, and an idle channel should cost little.
#[derive(Debug)]
pub(crate) enum Delivery {
    JoinParams,
    Joined(Box<Joined>),
    JoinFailed(Box<RejoinCause>),
    Message(Box<Message>),
    Errored(Box<ErrorCause>),
    Closed(Box<CloseCause>),
    /// Messages were dropped; the count is read when the notice is consumed.
    Overflow,
}

/// What the consumer gets: a delivery, with overflow notices carrying their count.
#[derive(Debug)]
pub(crate) enum Item {
    Delivery(Delivery),
    Overflow(u64),
}

#[derive(Debug, Default)]
struct Shared {
    queued_messages: AtomicUsize,
    dropped: AtomicU64,
    overflow_pending: AtomicBool,
    /// The socket task waits for this queue to drain below half.
    drain_wanted: AtomicBool,
    drained: AtomicWaker,
}

#[derive(Debug)]
pub(crate) struct QueueTx {
    tx: mpsc::UnboundedSender<Delivery>,
    shared: Arc<Shared>,
    capacity: usize,
}

#[derive(Debug)]
pub(crate) struct QueueRx {
    rx: mpsc::UnboundedReceiver<Delivery>,
    shared: Arc<Shared>,
    half: usize,
}

/// The consumer is gone.
#[derive(Debug)]
pub(crate) struct Gone;

pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let capacity = capacity.max(1);
    (
        QueueTx {
            tx,
            shared: shared.clone(),
            capacity,
        },
        QueueRx {
            rx,
            shared,
            half: capacity / 2,
        },
    )
}

impl QueueTx {
    /// Queues a message, or counts it as dropped when the consumer is `capacity` behind.
    /// Returns whether it was queued.
    pub(crate) fn message(&self, message: Message) -> Result<bool, Gone> {
        if self.shared.queued_messages.load(Ordering::Acquire) >= self.capacity {
            self.shared.dropped.fetch_add(1, Ordering::AcqRel);
            if !self.shared.overflow_pending.swap(true, Ordering::AcqRel) {
                self.tx.send(Delivery::Overflow).map_err(|_| Gone)?;
            }
            return Ok(false);
        }
        self.shared.queued_messages.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send(Delivery::Message(Box::new(message)))
            .map_err(|_| Gone)?;
        Ok(true)
    }

    /// Queues a control notice.
    pub(crate) fn control(&self, delivery: Delivery) -> Result<(), Gone> {
        self.tx.send(delivery).map_err(|_| Gone)
    }

    /// Whether the consumer is three quarters of its capacity behind.
    pub(crate) fn is_congested(&self) -> bool {
        self.shared.queued_messages.load(Ordering::Acquire) >= self.high_water()
    }

    fn high_water(&self) -> usize {
        (self.capacity - self.capacity / 4).max(1)
    }

    /// Asks to be woken once the consumer has drained the queue below half; returns whether it
    /// is still congested (if not, no wake-up will come).
    pub(crate) fn wake_when_drained(&self, waker: &std::task::Waker) -> bool {
        self.shared.drained.register(waker);
        self.shared.drain_wanted.store(true, Ordering::Release);
        let congested = self.shared.queued_messages.load(Ordering::Acquire) > self.capacity / 2;
        if !congested {
            self.shared.drain_wanted.store(false, Ordering::Release);
        }
        congested
    }
}

impl QueueRx {
    fn item(&self, delivery: Delivery) -> Item {
        match delivery {
            Delivery::Message(m) => {
                let left = self.shared.queued_messages.fetch_sub(1, Ordering::AcqRel) - 1;
                if left <= self.half
                    && self.shared.drain_wanted.load(Ordering::Acquire)
                    && self.shared.drain_wanted.swap(false, Ordering::AcqRel)
                {
                    self.shared.drained.wake();
                }
                Item::Delivery(Delivery::Message(m))
            }
            Delivery::Overflow => {
                self.shared.overflow_pending.store(false, Ordering::Release);
                Item::Overflow(self.shared.dropped.swap(0, Ordering::AcqRel))
            }
            other => Item::Delivery(other),
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| self.item(d)))
    }

    pub(crate) async fn recv(&mut self) -> Option<Item> {
        let delivery = self.rx.recv().await?;
        Some(self.item(delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proto::message::Payload;

    fn message(n: u32) -> Message {
        Message::new("t", format!("e{n}"), Payload::empty())
    }

    #[tokio::test]
    async fn overflow_is_bounded_counted_and_reported_once_per_episode() {
        let (tx, mut rx) = queue(2);
        assert!(tx.message(message(1)).unwrap());
        assert!(tx.message(message(2)).unwrap());
        for n in 3..10 {
            assert!(!tx.message(message(n)).unwrap());
        }
        tx.control(Delivery::Closed(Box::new(CloseCause::Left)))
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await
        {
            seen.push(match item {
                Item::Delivery(Delivery::Message(m)) => m.event.to_string(),
                Item::Overflow(n) => format!("overflow {n}"),
                Item::Delivery(other) => format!("{other:?}"),
            });
        }
        assert_eq!(seen, ["e1", "e2", "overflow 7", "Closed(Left)"]);
        // Room again: the next message goes through, and a new episode gets a new notice.
        assert!(tx.message(message(10)).unwrap());
        assert!(tx.message(message(11)).unwrap());
        assert!(!tx.message(message(12)).unwrap());
        assert!(matches!(
            rx.recv().await,
            Some(Item::Delivery(Delivery::Message(_)))
        ));
        assert!(matches!(
            rx.recv().await,
            Some(Item::Delivery(Delivery::Message(_)))
        ));
        assert!(matches!(rx.recv().await, Some(Item::Overflow(1))));
    }

    #[test]
    fn a_queue_slot_is_two_words() {
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn a_gone_consumer_is_reported() {
        let (tx, rx) = queue(1);
        drop(rx);
        assert!(tx.message(message(1)).is_err());
        assert!(tx.control(Delivery::JoinParams).is_err());
    }
}
