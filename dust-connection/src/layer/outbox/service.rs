//! The outbox handle: a `Service<EncodedWrite>` in front of the store's worker.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use phoenix_channels::Channel;
use tokio::sync::{mpsc, oneshot};
use tower::Service;

use super::future::{OutboxFuture, State};
use super::gate::{Gate, Order, Permit, Queued, Ticket};
use super::journal::Recovered;
use super::queued::QueuedWrite;
use super::worker::{StoreLink, Worker, worker};
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::write::{EncodedWrite, WriteAck};

/// What the outbox service sends its worker.
#[derive(Debug)]
pub(crate) enum Submission {
    /// A new write, in issue order.
    Write {
        ticket: u64,
        write: EncodedWrite,
        reply: oneshot::Sender<Result<WriteAck, WriteError>>,
        permit: Permit,
        /// Told the client op id once the write is in the outbox (on disk, if durable).
        queued: Option<Queued>,
        /// The caller's span, entered by the worker while it handles the write.
        span: tracing::Span,
    },
    /// The caller of this write dropped its future: forget the write if it was not sent yet.
    Cancel { ticket: u64 },
    /// Rejoin a store whose join was refused for good.
    Rejoin,
    /// Leave and rejoin the store from the engine's seq, to catch up with ops the server
    /// wrote without broadcasting them.
    Resync(&'static str),
}

/// The outbox handle: a `Service<EncodedWrite>` whose calls are queued, in issue order, for
/// the store's worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    submissions: mpsc::UnboundedSender<Submission>,
    gate: Arc<Gate>,
    channel: Channel,
    /// The answers of the writes recovered from a durable outbox, until taken.
    recovered: Arc<Mutex<Vec<QueuedWrite>>>,
}

impl Outbox {
    /// Asks the worker to rejoin the store after a permanent join failure.
    pub(crate) fn rejoin(&self) {
        let _ = self.submissions.send(Submission::Rejoin);
    }

    /// Asks the worker to catch the store up again (leave, rejoin from the engine's seq).
    pub(crate) fn resync(&self, reason: &'static str) {
        let _ = self.submissions.send(Submission::Resync(reason));
    }

    /// A store's outbox in front of `leaf`, and the worker that serves it (to be spawned).
    /// `recovered` are the writes a durable outbox held when the process started (and whether
    /// each may have been sent): they take the first places in the queue.
    pub(crate) fn pair<S>(leaf: S, mut link: StoreLink, recovered: Vec<Recovered>) -> (Self, Worker)
    where
        S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
        S::Future: Send + 'static,
    {
        let (submissions, queue) = mpsc::unbounded_channel();
        let gate = Gate::new(link.config.outbox_capacity, recovered.len() as u64 + 1);
        let mut answers = Vec::with_capacity(recovered.len());
        for recovered in recovered {
            let (tx, rx) = oneshot::channel();
            let id = recovered.write.client_op_id.clone();
            answers.push(QueuedWrite::new(id, async move {
                rx.await.unwrap_or(Err(WriteError::Closed))
            }));
            // Recovered writes hold slots like any other (beyond the capacity if they must).
            link.recovered.push((recovered, tx, gate.force()));
        }
        let outbox = Self {
            submissions,
            gate,
            channel: link.channel.clone(),
            recovered: Arc::new(Mutex::new(answers)),
        };
        (outbox, worker(leaf, link, queue))
    }

    /// Takes the answers of the writes recovered from a durable outbox (once: later calls
    /// get none).
    pub(crate) fn take_recovered(&self) -> Vec<QueuedWrite> {
        match self.recovered.lock() {
            Ok(mut recovered) => std::mem::take(&mut *recovered),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    /// The store's channel.
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// How many writes the outbox holds right now, queued or in flight (at most its capacity;
    /// writes waiting for room are not in it).
    pub fn len(&self) -> usize {
        self.gate.held()
    }

    /// Whether the outbox holds no write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place in the issue order, taken now; `wait: false` makes the write fail with
    /// [`WriteError::OutboxFull`] rather than wait for its turn or for room.
    pub(crate) fn order(&self, wait: bool) -> Order {
        self.order_signalled(wait, None)
    }

    /// As [`order`](Self::order), and `queued` is told the write's client op id once the
    /// write is in the outbox (on disk, with a durable outbox).
    pub(crate) fn order_signalled(&self, wait: bool, queued: Option<Queued>) -> Order {
        Order(Some(Arc::new(Ticket {
            gate: self.gate.clone(),
            number: self.gate.issue(),
            wait,
            claimed: AtomicBool::new(false),
            queued: Mutex::new(queued),
        })))
    }
}

impl Service<EncodedWrite> for Outbox {
    type Response = WriteAck;
    type Error = WriteError;
    type Future = OutboxFuture;

    /// Always ready unless the store's worker is gone: a write waits for its turn and for room
    /// in its future (it cannot know its turn before its request is seen).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        if self.submissions.is_closed() {
            return Poll::Ready(Err(WriteError::Closed));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut write: EncodedWrite) -> OutboxFuture {
        let order = std::mem::take(&mut write.order);
        let (ticket, wait, queued) = match order.claim(&self.gate) {
            Some(claim) => (claim.number, claim.wait, claim.queued),
            None => (self.gate.issue(), true, None),
        };
        drop(order);
        let mut future = OutboxFuture {
            state: State::Admitting {
                gate: self.gate.clone(),
                ticket,
                write: Some(write),
                queued,
                submissions: self.submissions.clone(),
                span: tracing::Span::current(),
            },
        };
        if !wait {
            match future.admit(None) {
                Some(Ok(())) => {}
                Some(Err(error)) => return OutboxFuture::failed(error),
                None => {
                    self.gate.abandon(ticket);
                    future.state = State::Done;
                    return OutboxFuture::failed(WriteError::OutboxFull);
                }
            }
        }
        future
    }
}
