//! Admission into a store's outbox: order tickets (issue order) and capacity (slots).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

/// Admission into a store's outbox: order tickets and capacity.
#[derive(Debug)]
pub(super) struct Gate {
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
    /// Slots held beyond the capacity (recovered writes that did not fit): paid back first.
    debt: usize,
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
    /// A gate whose first ticket is `first` (the tickets before it are the writes recovered
    /// from a durable outbox, already in the worker's queue).
    pub(super) fn new(capacity: usize, first: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                next_issue: first,
                next_admit: first,
                free: capacity.max(1),
                debt: 0,
                abandoned: BTreeSet::new(),
                waiters: HashMap::new(),
            }),
            capacity: capacity.max(1),
        })
    }

    /// How many writes hold a slot (queued in the outbox or in flight).
    pub(super) fn held(&self) -> usize {
        let state = lock(self);
        self.capacity - state.free + state.debt
    }

    /// A slot for a write recovered from a durable outbox, taken whether or not one is free:
    /// beyond the capacity, new writes wait until enough recovered ones are answered.
    pub(super) fn force(self: &Arc<Self>) -> Permit {
        let mut state = lock(self);
        if state.free > 0 {
            state.free -= 1;
        } else {
            state.debt += 1;
        }
        Permit {
            gate: Some(self.clone()),
        }
    }

    pub(super) fn issue(&self) -> u64 {
        let mut state = lock(self);
        let ticket = state.next_issue;
        state.next_issue += 1;
        ticket
    }

    /// The ticket's write will never come: later ones need not wait for it.
    pub(super) fn abandon(&self, ticket: u64) {
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
    pub(super) fn try_admit<T>(
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
        if state.debt > 0 {
            state.debt -= 1;
            return;
        }
        state.free += 1;
        state.advance();
    }
}

/// A slot of the outbox, held by a write until it is answered.
pub(crate) struct Permit {
    pub(super) gate: Option<Arc<Gate>>,
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

pub(super) struct Ticket {
    pub(super) gate: Arc<Gate>,
    pub(super) number: u64,
    /// Whether the write waits for its turn and room (false for `try_write`).
    pub(super) wait: bool,
    pub(super) claimed: AtomicBool,
    /// Told the write's client op id once the write is in the outbox (on disk, with a durable
    /// outbox): [`Store::queue`](crate::Store::queue).
    pub(super) queued: Mutex<Option<Queued>>,
}

/// Where a write's "queued" signal goes.
pub(crate) type Queued = tokio::sync::oneshot::Sender<crate::write::ClientOpId>;

/// A claimed place: the ticket, whether the write waits, and its "queued" signal.
pub(super) struct Claim {
    pub(super) number: u64,
    pub(super) wait: bool,
    pub(super) queued: Option<Queued>,
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
pub(crate) struct Order(pub(super) Option<Arc<Ticket>>);

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
    pub(super) fn claim(&self, gate: &Arc<Gate>) -> Option<Claim> {
        let ticket = self.0.as_ref()?;
        if !Arc::ptr_eq(&ticket.gate, gate) || ticket.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let queued = match ticket.queued.lock() {
            Ok(mut queued) => queued.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        Some(Claim {
            number: ticket.number,
            wait: ticket.wait,
            queued,
        })
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
        let gate = Gate::new(8, 1);
        let (a, b, c) = (gate.issue(), gate.issue(), gate.issue());
        assert!(admit(&gate, b).is_none(), "b must wait for a");
        assert!(admit(&gate, c).is_none());
        gate.abandon(a);
        let _b = admit(&gate, b).expect("a gave up its turn");
        let _c = admit(&gate, c).expect("then c");
    }

    #[test]
    fn forced_slots_beyond_the_capacity_are_paid_back_before_new_writes_enter() {
        let gate = Gate::new(2, 1);
        let forced: Vec<Permit> = (0..3).map(|_| gate.force()).collect();
        assert_eq!(gate.held(), 3);
        let next = gate.issue();
        assert!(admit(&gate, next).is_none(), "no room: 3 held, capacity 2");
        let mut forced = forced.into_iter();
        drop(forced.next());
        assert!(admit(&gate, next).is_none(), "the debt is paid first");
        drop(forced.next());
        assert_eq!(gate.held(), 1);
        let _admitted = admit(&gate, next).expect("a slot is free");
    }

    #[test]
    fn capacity_is_held_until_the_permit_is_dropped() {
        let gate = Gate::new(1, 1);
        let (a, b) = (gate.issue(), gate.issue());
        let first = admit(&gate, a).unwrap();
        assert!(admit(&gate, b).is_none(), "the only slot is taken");
        drop(first);
        assert!(admit(&gate, b).is_some());
    }

    #[test]
    fn a_shared_order_is_claimed_once_and_only_by_its_own_gate() {
        let gate = Gate::new(1, 1);
        let other = Gate::new(1, 1);
        let order = Order(Some(Arc::new(Ticket {
            gate: gate.clone(),
            number: gate.issue(),
            wait: true,
            claimed: AtomicBool::new(false),
            queued: Mutex::new(None),
        })));
        let copy = order.clone();
        assert!(order.claim(&other).is_none());
        let claim = order.claim(&gate).expect("its own gate");
        assert_eq!((claim.number, claim.wait), (1, true));
        assert!(copy.claim(&gate).is_none());
    }
}
