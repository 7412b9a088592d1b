//! The outbox stage: a handle service in front of the store's worker, in the manner of
//! `tower::buffer`. The worker (see [`crate::store`]) owns the store's ordered queue of writes,
//! sends them through the leaf service, and answers each caller exactly once.
//!
//! **Issue order.** Every write takes an order ticket when it is made: [`Store::write`]
//! (and `set`, `put_file`, ...) takes it synchronously, at the call, so the order of the calls
//! is the order of the writes whatever the order in which their futures are polled; a write
//! that reaches this service without one (through [`Store::service`]) takes it here, at `call`.
//! Writes are admitted into the outbox strictly in ticket order: a write whose turn has not
//! come yet (an earlier one is still reading its file, waiting in a layer, or waiting for room)
//! waits. A ticket whose write is dropped or fails before it reaches the outbox is skipped, so
//! it never blocks the later ones.
//!
//! **Capacity.** Each admitted write holds one of the outbox's slots until it is answered; a
//! write waits for its turn and a free slot (backpressure), and a write made with
//! [`Store::try_write`] fails with [`WriteError::OutboxFull`] instead of waiting.
//!
//! [`Store::write`]: crate::Store::write
//! [`Store::service`]: crate::Store::service
//! [`Store::try_write`]: crate::Store::try_write

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use tokio::sync::{mpsc, oneshot};
use tower::Service;

use crate::error::WriteError;
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
    },
    /// The caller of this write dropped its future: forget the write if it was not sent yet.
    Cancel { ticket: u64 },
    /// Rejoin a store whose join was refused for good.
    Rejoin,
}

/// Admission into a store's outbox: order tickets and capacity.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    capacity: usize,
}

#[derive(Debug)]
struct GateState {
    /// The next ticket to hand out.
    next_issue: u64,
    /// The ticket whose turn it is.
    next_admit: u64,
    /// Free slots.
    free: usize,
    /// Tickets at or after `next_admit` whose writes will never come.
    abandoned: BTreeSet<u64>,
    /// Writes waiting for their turn.
    waiters: HashMap<u64, Waker>,
}

impl GateState {
    /// Skips abandoned tickets and wakes the write whose turn it is.
    fn advance(&mut self) {
        while self.abandoned.remove(&self.next_admit) {
            self.next_admit += 1;
        }
        if self.free > 0
            && let Some(waker) = self.waiters.remove(&self.next_admit)
        {
            waker.wake();
        }
    }
}

fn lock(gate: &Gate) -> MutexGuard<'_, GateState> {
    match gate.state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Gate {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                next_issue: 1,
                next_admit: 1,
                free: capacity.max(1),
                abandoned: BTreeSet::new(),
                waiters: HashMap::new(),
            }),
            capacity: capacity.max(1),
        })
    }

    /// How many writes hold a slot (queued in the outbox or in flight).
    fn held(&self) -> usize {
        self.capacity - lock(self).free
    }

    fn issue(&self) -> u64 {
        let mut state = lock(self);
        let ticket = state.next_issue;
        state.next_issue += 1;
        ticket
    }

    /// The ticket's write will never come: later ones need not wait for it.
    fn abandon(&self, ticket: u64) {
        let mut state = lock(self);
        state.waiters.remove(&ticket);
        if ticket >= state.next_admit {
            state.abandoned.insert(ticket);
            state.advance();
        }
    }

    /// Admits `ticket` if it is its turn and a slot is free, running `admitted` with its permit
    /// while the gate is held (so admitted writes reach the worker in ticket order). Registers
    /// `waker` otherwise.
    fn try_admit<T>(
        self: &Arc<Self>,
        ticket: u64,
        waker: Option<&Waker>,
        admitted: impl FnOnce(Permit) -> T,
    ) -> Option<T> {
        let mut state = lock(self);
        state.advance();
        if ticket == state.next_admit && state.free > 0 {
            state.free -= 1;
            state.next_admit += 1;
            state.waiters.remove(&ticket);
            state.advance();
            let permit = Permit {
                gate: Some(self.clone()),
            };
            return Some(admitted(permit));
        }
        if let Some(waker) = waker {
            state.waiters.insert(ticket, waker.clone());
        }
        None
    }

    fn release(&self) {
        let mut state = lock(self);
        state.free += 1;
        state.advance();
    }
}

/// A slot of the outbox, held by a write until it is answered.
pub(crate) struct Permit {
    gate: Option<Arc<Gate>>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

struct Ticket {
    gate: Arc<Gate>,
    number: u64,
    /// Whether the write waits for its turn and room (false for `try_write`).
    wait: bool,
    claimed: AtomicBool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.claimed.load(Ordering::Acquire) {
            self.gate.abandon(self.number);
        }
    }
}

/// A write's place in its store's issue order (see the [module docs](self)). Clones share
/// the place; the first to reach the outbox takes it. Not part of a request's equality.
#[derive(Clone, Default)]
pub(crate) struct Order(Option<Arc<Ticket>>);

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(ticket) => write!(f, "Order({})", ticket.number),
            None => f.write_str("Order(-)"),
        }
    }
}

impl PartialEq for Order {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Order {
    /// Takes the place, if it is one of this gate's and not taken yet.
    fn claim(&self, gate: &Arc<Gate>) -> Option<(u64, bool)> {
        let ticket = self.0.as_ref()?;
        if !Arc::ptr_eq(&ticket.gate, gate) || ticket.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some((ticket.number, ticket.wait))
    }
}

/// The outbox handle: a `Service<EncodedWrite>` whose calls are queued, in issue order, for
/// the store's worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    submissions: mpsc::UnboundedSender<Submission>,
    gate: Arc<Gate>,
}

impl Outbox {
    /// Asks the worker to rejoin the store after a permanent join failure.
    pub(crate) fn rejoin(&self) {
        let _ = self.submissions.send(Submission::Rejoin);
    }

    pub(crate) fn new(submissions: mpsc::UnboundedSender<Submission>, capacity: usize) -> Self {
        Self {
            submissions,
            gate: Gate::new(capacity),
        }
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
        Order(Some(Arc::new(Ticket {
            gate: self.gate.clone(),
            number: self.gate.issue(),
            wait,
            claimed: AtomicBool::new(false),
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
        let (ticket, wait) = order
            .claim(&self.gate)
            .unwrap_or_else(|| (self.gate.issue(), true));
        drop(order);
        let mut future = OutboxFuture {
            state: State::Admitting {
                gate: self.gate.clone(),
                ticket,
                write: Some(write),
                submissions: self.submissions.clone(),
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

enum State {
    Failed(Option<WriteError>),
    /// Waiting for its turn and a free slot.
    Admitting {
        gate: Arc<Gate>,
        ticket: u64,
        write: Option<EncodedWrite>,
        submissions: mpsc::UnboundedSender<Submission>,
    },
    Waiting {
        rx: oneshot::Receiver<Result<WriteAck, WriteError>>,
        ticket: u64,
        submissions: mpsc::UnboundedSender<Submission>,
    },
    Done,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
            Self::Admitting { ticket, .. } => f.debug_tuple("Admitting").field(ticket).finish(),
            Self::Waiting { ticket, .. } => f.debug_tuple("Waiting").field(ticket).finish(),
            Self::Done => f.write_str("Done"),
        }
    }
}

/// The answer to a write queued in the outbox. Dropping it before the write was sent takes
/// the write out of the queue (or gives up its turn); a write already sent stays tracked until
/// it is answered.
#[derive(Debug)]
#[must_use = "the write is queued either way; await this to get its answer"]
pub struct OutboxFuture {
    state: State,
}

impl OutboxFuture {
    fn failed(error: WriteError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }

    /// Tries to enter the outbox: `None` if it is not this write's turn or there is no room
    /// (`waker` is woken when that may have changed).
    fn admit(&mut self, waker: Option<&Waker>) -> Option<Result<(), WriteError>> {
        let State::Admitting {
            gate,
            ticket,
            write,
            submissions,
        } = &mut self.state
        else {
            return Some(Ok(()));
        };
        let ticket = *ticket;
        let (tx, rx) = oneshot::channel();
        // Sent while the gate is held, so writes reach the worker in ticket order; what is
        // left of a refused submission (its permit) is dropped after the gate is let go.
        let sent = gate.try_admit(ticket, waker, |permit| -> Result<(), Box<dyn Send>> {
            match write.take() {
                Some(write) => submissions
                    .send(Submission::Write {
                        ticket,
                        write,
                        reply: tx,
                        permit,
                    })
                    .map_err(|refused| Box::new(refused.0) as Box<dyn Send>),
                None => Err(Box::new(permit)),
            }
        })?;
        let submissions = submissions.clone();
        Some(match sent {
            Ok(()) => {
                self.state = State::Waiting {
                    rx,
                    ticket,
                    submissions,
                };
                Ok(())
            }
            Err(refused) => {
                drop(refused);
                self.state = State::Done;
                Err(WriteError::Closed)
            }
        })
    }
}

impl Future for OutboxFuture {
    type Output = Result<WriteAck, WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if matches!(self.state, State::Admitting { .. }) {
            match self.admit(Some(cx.waker())) {
                None => return Poll::Pending,
                Some(Err(error)) => return Poll::Ready(Err(error)),
                Some(Ok(())) => {}
            }
        }
        let result = match &mut self.state {
            State::Failed(error) => Err(error.take().unwrap_or(WriteError::Closed)),
            State::Waiting { rx, .. } => {
                ready!(Pin::new(rx).poll(cx)).unwrap_or(Err(WriteError::Closed))
            }
            State::Admitting { .. } | State::Done => Err(WriteError::Closed),
        };
        self.state = State::Done;
        Poll::Ready(result)
    }
}

impl Drop for OutboxFuture {
    fn drop(&mut self) {
        match &self.state {
            State::Admitting { gate, ticket, .. } => gate.abandon(*ticket),
            State::Waiting {
                ticket,
                submissions,
                ..
            } => {
                let _ = submissions.send(Submission::Cancel { ticket: *ticket });
            }
            State::Failed(_) | State::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn admit(gate: &Arc<Gate>, ticket: u64) -> Option<Permit> {
        gate.try_admit(ticket, Some(Waker::noop()), |permit| permit)
    }

    #[test]
    fn tickets_are_admitted_in_order_and_skipped_when_abandoned() {
        let gate = Gate::new(8);
        let (a, b, c) = (gate.issue(), gate.issue(), gate.issue());
        assert!(admit(&gate, b).is_none(), "b must wait for a");
        assert!(admit(&gate, c).is_none());
        gate.abandon(a);
        let _b = admit(&gate, b).expect("a gave up its turn");
        let _c = admit(&gate, c).expect("then c");
    }

    #[test]
    fn capacity_is_held_until_the_permit_is_dropped() {
        let gate = Gate::new(1);
        let (a, b) = (gate.issue(), gate.issue());
        let first = admit(&gate, a).unwrap();
        assert!(admit(&gate, b).is_none(), "the only slot is taken");
        drop(first);
        assert!(admit(&gate, b).is_some());
    }

    #[test]
    fn a_shared_order_is_claimed_once_and_only_by_its_own_gate() {
        let gate = Gate::new(1);
        let other = Gate::new(1);
        let order = Order(Some(Arc::new(Ticket {
            gate: gate.clone(),
            number: gate.issue(),
            wait: true,
            claimed: AtomicBool::new(false),
        })));
        let copy = order.clone();
        assert_eq!(order.claim(&other), None);
        assert_eq!(order.claim(&gate), Some((1, true)));
        assert_eq!(copy.claim(&gate), None);
    }
}
