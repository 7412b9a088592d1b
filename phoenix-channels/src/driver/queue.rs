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

use tokio::sync::mpsc;

use crate::handler::Joined;
use crate::proto::channel::{CloseCause, ErrorCause, RejoinCause};
use crate::proto::message::Message;

/// Something for a channel's consumer.
#[derive(Debug)]
pub(crate) enum Delivery {
    JoinParams,
    Joined(Joined),
    JoinFailed(RejoinCause),
    Message(Message),
    Errored(ErrorCause),
    Closed(CloseCause),
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
}

/// The consumer is gone.
#[derive(Debug)]
pub(crate) struct Gone;

pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    (
        QueueTx {
            tx,
            shared: shared.clone(),
            capacity: capacity.max(1),
        },
        QueueRx { rx, shared },
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
        self.tx.send(Delivery::Message(message)).map_err(|_| Gone)?;
        Ok(true)
    }

    /// Queues a control notice.
    pub(crate) fn control(&self, delivery: Delivery) -> Result<(), Gone> {
        self.tx.send(delivery).map_err(|_| Gone)
    }
}

impl QueueRx {
    fn item(&self, delivery: Delivery) -> Item {
        match delivery {
            Delivery::Message(m) => {
                self.shared.queued_messages.fetch_sub(1, Ordering::AcqRel);
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
        tx.control(Delivery::Closed(CloseCause::Left)).unwrap();
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
    fn a_gone_consumer_is_reported() {
        let (tx, rx) = queue(1);
        drop(rx);
        assert!(tx.message(message(1)).is_err());
        assert!(tx.control(Delivery::JoinParams).is_err());
    }
}
