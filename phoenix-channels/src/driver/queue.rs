//! The queue from the socket task to a channel's consumer (its handler task or its message
//! stream).
//!
//! Messages count against a capacity: when the consumer falls that far behind, further messages
//! are dropped, counted, and reported to the consumer as one overflow notice — never silently,
//! and never with unbounded memory. Control notices (joined, errored, closed, join params
//! requests) always get through: they are produced at most once per join attempt, and a join
//! attempt that needs the consumer (for its params) waits for it, so they are bounded by the
//! consumer's own progress.
//!
//! The socket task wakes a consumer once per batch, not once per message: queuing marks the
//! queue, and [`QueueTx::flush`] (called by the socket task before it yields) wakes the
//! consumer if anything was queued since. On the multi-thread runtime, where the consumer
//! runs on another thread, each wake-up can cost a futex call. The consumer takes the batch
//! whole (one lock per batch, the buffers swapped so that neither side allocates again).
//!
//! An idle queue allocates nothing but its shared state: no slots until something is queued
//! (a tokio channel allocated about 1 KiB per queue up front, a quarter of an idle channel).
//!
//! The shared state also holds the channel's [`ChannelState`], which the socket task sets and
//! the channel's handles read. A `tokio::sync::watch` of it is made only when a
//! handle asks for one: a watch per channel cost an allocation of about 350 bytes and a
//! notification of its (usually absent) waiters on every state change.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;

use crate::channel::ChannelShared;
use crate::handler::Joined;
use crate::proto::channel::{ChannelState, CloseCause, ErrorCause, RejoinCause};
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

/// A channel's queue and state, inside the allocation its handles share
/// ([`ChannelShared`](crate::channel::ChannelShared)).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// What the socket task queued and the consumer has not taken yet.
    queued: Mutex<VecDeque<Delivery>>,
    /// The socket task dropped its side: nothing more comes.
    closed: AtomicBool,
    /// The consumer dropped its side: nothing is taken any more.
    gone: AtomicBool,
    queued_messages: AtomicUsize,
    dropped: AtomicU64,
    overflow_pending: AtomicBool,
    /// The socket task waits for this queue to drain below half.
    drain_wanted: AtomicBool,
    drained: AtomicWaker,
    /// The consumer, waiting for something to be queued.
    consumer: AtomicWaker,
    /// The channel's state.
    state: Mutex<StateCell>,
}

/// The channel's state, and the watch of it if a handle asked for one.
#[derive(Debug)]
struct StateCell {
    state: ChannelState,
    watch: Option<watch::Sender<ChannelState>>,
    /// The socket task dropped its side: the state changes no more, and a watch asked for now
    /// says so (its sender is dropped at once), as the watch of a forgotten channel always has.
    ended: bool,
}

impl Default for StateCell {
    fn default() -> Self {
        Self {
            state: ChannelState::Closed,
            watch: None,
            ended: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct QueueTx {
    shared: Arc<ChannelShared>,
    capacity: usize,
    /// Something was queued since the last [`QueueTx::flush`].
    unflushed: bool,
}

#[derive(Debug)]
pub(crate) struct QueueRx {
    /// The batch taken from the shared queue, being consumed.
    batch: VecDeque<Delivery>,
    shared: Arc<ChannelShared>,
    half: usize,
}

/// The consumer is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// The queue of the channel whose shared state is `shared`.
pub(crate) fn queue(shared: Arc<ChannelShared>, capacity: usize) -> (QueueTx, QueueRx) {
    let capacity = capacity.max(1);
    (
        QueueTx {
            shared: shared.clone(),
            capacity,
            unflushed: false,
        },
        QueueRx {
            batch: VecDeque::new(),
            shared,
            half: capacity / 2,
        },
    )
}

impl QueueTx {
    /// The channel's state, as last set.
    pub(crate) fn state(&self) -> ChannelState {
        self.shared.queue.state().state
    }

    /// Sets the channel's state, and tells the watch, if any.
    pub(crate) fn set_state(&self, state: ChannelState) {
        let mut cell = self.shared.queue.state();
        cell.state = state;
        if cell.watch.as_ref().is_some_and(watch::Sender::is_closed) {
            // Nobody watches any more: the next handle that asks gets a new watch.
            cell.watch = None;
        } else if let Some(watch) = &cell.watch {
            watch.send_replace(state);
        }
    }

    fn send(&mut self, delivery: Delivery) -> Result<(), Gone> {
        if self.shared.queue.gone.load(Ordering::Acquire) {
            return Err(Gone);
        }
        self.shared.queue.lock().push_back(delivery);
        self.unflushed = true;
        Ok(())
    }

    /// Queues a message, or counts it as dropped when the consumer is `capacity` behind.
    /// Returns whether it was queued. The consumer is woken by the next [`flush`](Self::flush).
    pub(crate) fn message(&mut self, message: Message) -> Result<bool, Gone> {
        if self.shared.queue.queued_messages.load(Ordering::Acquire) >= self.capacity {
            self.shared.queue.dropped.fetch_add(1, Ordering::AcqRel);
            if !self
                .shared
                .queue
                .overflow_pending
                .swap(true, Ordering::AcqRel)
            {
                self.send(Delivery::Overflow)?;
            }
            return Ok(false);
        }
        self.shared
            .queue
            .queued_messages
            .fetch_add(1, Ordering::AcqRel);
        self.send(Delivery::Message(Box::new(message)))?;
        Ok(true)
    }

    /// Queues a control notice. The consumer is woken by the next [`flush`](Self::flush).
    pub(crate) fn control(&mut self, delivery: Delivery) -> Result<(), Gone> {
        self.send(delivery)
    }

    /// Whether something was queued since the last [`flush`](Self::flush).
    pub(crate) fn is_unflushed(&self) -> bool {
        self.unflushed
    }

    /// Wakes the consumer if anything was queued since the last call.
    pub(crate) fn flush(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            self.shared.queue.consumer.wake();
        }
    }

    /// Whether the consumer is three quarters of its capacity behind.
    pub(crate) fn is_congested(&self) -> bool {
        self.shared.queue.queued_messages.load(Ordering::Acquire) >= self.high_water()
    }

    fn high_water(&self) -> usize {
        (self.capacity - self.capacity / 4).max(1)
    }

    /// Asks to be woken once the consumer has drained the queue below half; returns whether it
    /// is still congested (if not, no wake-up will come).
    pub(crate) fn wake_when_drained(&self, waker: &std::task::Waker) -> bool {
        self.shared.queue.drained.register(waker);
        self.shared
            .queue
            .drain_wanted
            .store(true, Ordering::Release);
        let congested =
            self.shared.queue.queued_messages.load(Ordering::Acquire) > self.capacity / 2;
        if !congested {
            self.shared
                .queue
                .drain_wanted
                .store(false, Ordering::Release);
        }
        congested
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        // Close the queue first, so that the woken consumer sees it closed.
        self.shared.queue.closed.store(true, Ordering::Release);
        self.shared.queue.consumer.wake();
        // The state changes no more: its watchers see the sender gone.
        let watch = {
            let mut cell = self.shared.queue.state();
            cell.ended = true;
            cell.watch.take()
        };
        drop(watch);
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.shared.queue.gone.store(true, Ordering::Release);
        // What was queued is not taken: free it now.
        self.shared.queue.lock().clear();
    }
}

impl Shared {
    /// The channel's state, as the socket task last set it.
    pub(crate) fn current_state(&self) -> ChannelState {
        self.state().state
    }

    /// A receiver of the state, to await changes; its sender is dropped when the socket task
    /// forgets the channel (or stops).
    pub(crate) fn watch_state(&self) -> watch::Receiver<ChannelState> {
        let mut cell = self.state();
        if let Some(watch) = &cell.watch {
            return watch.subscribe();
        }
        let (tx, rx) = watch::channel(cell.state);
        if !cell.ended {
            cell.watch = Some(tx);
        }
        rx
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StateCell> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueueRx {
    /// The next delivery (`Some(None)`: the queue is closed and empty; `None`: nothing yet).
    fn try_next(&mut self) -> Option<Option<Delivery>> {
        if let Some(delivery) = self.batch.pop_front() {
            return Some(Some(delivery));
        }
        // Read before looking: everything queued before the close is then in the queue.
        let closed = self.shared.queue.closed.load(Ordering::Acquire);
        std::mem::swap(&mut *self.shared.queue.lock(), &mut self.batch);
        match self.batch.pop_front() {
            Some(delivery) => Some(Some(delivery)),
            None if closed => Some(None),
            None => None,
        }
    }

    fn item(&self, delivery: Delivery) -> Item {
        match delivery {
            Delivery::Message(m) => {
                let left = self
                    .shared
                    .queue
                    .queued_messages
                    .fetch_sub(1, Ordering::AcqRel)
                    - 1;
                if left <= self.half
                    && self.shared.queue.drain_wanted.load(Ordering::Acquire)
                    && self.shared.queue.drain_wanted.swap(false, Ordering::AcqRel)
                {
                    self.shared.queue.drained.wake();
                }
                Item::Delivery(Delivery::Message(m))
            }
            Delivery::Overflow => {
                self.shared
                    .queue
                    .overflow_pending
                    .store(false, Ordering::Release);
                Item::Overflow(self.shared.queue.dropped.swap(0, Ordering::AcqRel))
            }
            other => Item::Delivery(other),
        }
    }

    /// The next item; `None` once the socket task has dropped the queue and it is empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        // Like tokio's own receivers: take part in the task's cooperative budget.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let received = match self.try_next() {
            Some(received) => received,
            None => {
                // Register, then look again: whatever is queued after the first look is
                // followed by a flush, which wakes this waker.
                self.shared.queue.consumer.register(cx.waker());
                match self.try_next() {
                    Some(received) => received,
                    None => return Poll::Pending,
                }
            }
        };
        coop.made_progress();
        Poll::Ready(received.map(|delivery| self.item(delivery)))
    }

    pub(crate) async fn recv(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proto::channel::ChannelId;
    use crate::proto::message::Payload;

    fn queue(capacity: usize) -> (QueueTx, QueueRx) {
        let shared = ChannelShared::new(ChannelId(1), "t".into(), std::time::Duration::ZERO);
        super::queue(Arc::new(shared), capacity)
    }

    fn message(n: u32) -> Message {
        Message::new("t", format!("e{n}"), Payload::empty())
    }

    #[tokio::test]
    async fn overflow_is_bounded_counted_and_reported_once_per_episode() {
        let (mut tx, mut rx) = queue(2);
        assert!(tx.message(message(1)).unwrap());
        assert!(tx.message(message(2)).unwrap());
        for n in 3..10 {
            assert!(!tx.message(message(n)).unwrap());
        }
        tx.control(Delivery::Closed(Box::new(CloseCause::Left)))
            .unwrap();
        tx.flush();
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
        tx.flush();
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
    fn the_state_watch_is_made_on_demand_follows_the_state_and_ends_with_the_queue() {
        let (tx, _rx) = queue(1);
        let view = &tx.shared.clone().queue;
        assert_eq!(view.current_state(), ChannelState::Closed);
        tx.set_state(ChannelState::Joining);
        assert_eq!(view.current_state(), ChannelState::Joining);
        let mut watch = view.watch_state();
        assert_eq!(*watch.borrow(), ChannelState::Joining);
        assert!(!watch.has_changed().unwrap());
        let mut second = view.watch_state();
        tx.set_state(ChannelState::Joined);
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), ChannelState::Joined);
        assert_eq!(*second.borrow_and_update(), ChannelState::Joined);
        // Nobody watches: the next change drops the watch, and a new one starts from the state.
        drop((watch, second));
        tx.set_state(ChannelState::Leaving);
        let mut watch = view.watch_state();
        assert_eq!(*watch.borrow_and_update(), ChannelState::Leaving);
        drop(tx);
        assert!(
            watch.has_changed().is_err(),
            "the sender goes with the queue"
        );
        assert!(
            view.watch_state().has_changed().is_err(),
            "and a later watch says so too"
        );
        assert_eq!(view.current_state(), ChannelState::Leaving);
    }

    #[test]
    fn a_gone_consumer_is_reported() {
        let (mut tx, rx) = queue(1);
        drop(rx);
        assert!(tx.message(message(1)).is_err());
        assert!(tx.control(Delivery::JoinParams).is_err());
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_consumer_is_woken_once_per_flush_and_when_the_queue_is_dropped() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let count = || wakes.0.load(Ordering::SeqCst);
        let (mut tx, mut rx) = queue(8);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(tx.message(message(1)).unwrap());
        tx.control(Delivery::JoinParams).unwrap();
        assert_eq!(count(), 0, "queuing alone does not wake");
        assert!(tx.is_unflushed());
        tx.flush();
        tx.flush();
        assert_eq!(count(), 1, "one wake-up for the batch");
        assert!(!tx.is_unflushed());
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Item::Delivery(Delivery::Message(_))))
        ));
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Item::Delivery(Delivery::JoinParams)))
        ));
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(tx.message(message(2)).unwrap());
        drop(tx);
        assert_eq!(count(), 2, "dropping the queue wakes the consumer");
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Item::Delivery(Delivery::Message(_))))
        ));
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }
}
