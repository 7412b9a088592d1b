//! The timers of the core: one ordered set of every armed deadline but the pushes' (see
//! [`PushDeadlines`](super::push::PushDeadlines)).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::channel::ChannelId;
use super::push::NEVER;

/// `now + after`, saturated: waits longer than [`NEVER`] are cut to it.
pub(crate) fn deadline(now: Instant, after: Duration) -> Instant {
    let after = after.min(NEVER);
    // `now + NEVER` fits in every platform's `Instant` for any clock reading of this era; should
    // it not, a wait of half as long is the next best "never".
    now.checked_add(after)
        .or_else(|| now.checked_add(after / 2))
        .unwrap_or(now)
}

/// The timers of the core, each at most once in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Timer {
    Heartbeat,
    HeartbeatTimeout,
    Healthy,
    Reconnect,
    Push(u64),
    JoinTimeout(ChannelId),
    LeaveTimeout(ChannelId),
    Rejoin(ChannelId),
}

/// Every armed timer, ordered by deadline. Entities remember their own deadline so that a timer
/// can be removed exactly, which keeps the set from growing with stale entries.
///
/// Timers of one kind are mostly armed with deadlines in order (every join of a socket's
/// channels has the same timeout, so their deadlines follow the order of the joins): those go
/// in a FIFO per kind, in constant time, with a map from each timer to its deadline saying
/// which entries are live. A timer due before the last one of its kind goes in an ordered set
/// instead. Entries of disarmed timers leave a FIFO lazily: from its front at once (so each
/// front is live), and by compaction when dead entries outnumber live ones four to one, so a
/// FIFO stays within a few times the timers armed.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    set: BTreeSet<(Instant, Timer)>,
    fifos: [Fifo; KINDS],
    /// The live entries of the FIFOs.
    live: FxHashMap<Timer, Instant>,
}

/// How many kinds of [`Timer`] there are.
const KINDS: usize = 8;

#[derive(Debug, Default)]
struct Fifo {
    entries: VecDeque<(Instant, Timer)>,
    live: usize,
}

impl Timer {
    fn kind(self) -> usize {
        match self {
            Self::Heartbeat => 0,
            Self::HeartbeatTimeout => 1,
            Self::Healthy => 2,
            Self::Reconnect => 3,
            Self::Push(_) => 4,
            Self::JoinTimeout(_) => 5,
            Self::LeaveTimeout(_) => 6,
            Self::Rejoin(_) => 7,
        }
    }
}

impl Timers {
    pub(crate) fn arm(&mut self, at: Instant, timer: Timer) {
        let kind = timer.kind();
        let fifo = &mut self.fifos[kind];
        if fifo.entries.back().is_none_or(|(last, _)| *last <= at) {
            fifo.entries.push_back((at, timer));
            fifo.live += 1;
            if self.live.insert(timer, at).is_some() {
                // Armed again without being disarmed: the older entry is dead.
                self.fifos[kind].live -= 1;
                self.drop_dead(kind);
            }
        } else {
            self.disarm_live(timer);
            self.set.insert((at, timer));
        }
    }

    pub(crate) fn disarm(&mut self, at: Option<Instant>, timer: Timer) {
        let Some(at) = at else {
            return;
        };
        if self.live.get(&timer) == Some(&at) {
            self.disarm_live(timer);
        } else {
            self.set.remove(&(at, timer));
        }
    }

    /// Marks the FIFO entry of `timer`, if any, dead.
    fn disarm_live(&mut self, timer: Timer) {
        if self.live.remove(&timer).is_some() {
            let kind = timer.kind();
            self.fifos[kind].live -= 1;
            self.drop_dead(kind);
        }
    }

    /// Drops the dead entries at a FIFO's front, and compacts it when most are dead.
    fn drop_dead(&mut self, kind: usize) {
        let live = &self.live;
        let is_live = |&(at, timer): &(Instant, Timer)| live.get(&timer) == Some(&at);
        let fifo = &mut self.fifos[kind];
        while let Some(entry) = fifo.entries.front() {
            if is_live(entry) {
                break;
            }
            fifo.entries.pop_front();
        }
        if fifo.entries.len() > 64 && fifo.entries.len() > 4 * fifo.live {
            fifo.entries.retain(is_live);
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        let fronts = self.fifos.iter().filter_map(|f| f.entries.front());
        let set = self.set.first();
        fronts.chain(set).map(|(at, _)| *at).min()
    }

    /// Removes and returns the timers due at `now`, in order of deadline (then of timer).
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(Instant, Timer)> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.set.first() {
            if at > now {
                break;
            }
            self.set.pop_first();
            due.push((at, timer));
        }
        for kind in 0..KINDS {
            while let Some(&(at, timer)) = self.fifos[kind].entries.front() {
                if at > now {
                    break;
                }
                self.fifos[kind].entries.pop_front();
                if self.live.get(&timer) == Some(&at) {
                    self.live.remove(&timer);
                    self.fifos[kind].live -= 1;
                    due.push((at, timer));
                }
            }
            self.drop_dead(kind);
        }
        due.sort_unstable();
        due
    }

    pub(crate) fn clear(&mut self) {
        self.set.clear();
        self.fifos = Default::default();
        self.live.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len() + self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn timers_come_due_in_deadline_order_whether_armed_in_order_or_not() {
        let base = Instant::now();
        let mut timers = Timers::default();
        timers.arm(at(base, 10), Timer::JoinTimeout(ChannelId(1)));
        timers.arm(at(base, 20), Timer::JoinTimeout(ChannelId(2)));
        // Earlier than the last one: out of order.
        timers.arm(at(base, 5), Timer::Heartbeat);
        timers.arm(at(base, 15), Timer::Rejoin(ChannelId(3)));
        timers.arm(at(base, 30), Timer::Reconnect);
        assert_eq!(timers.len(), 5);
        assert_eq!(timers.next(), Some(at(base, 5)));
        assert_eq!(
            timers.take_due(at(base, 20)),
            [
                (at(base, 5), Timer::Heartbeat),
                (at(base, 10), Timer::JoinTimeout(ChannelId(1))),
                (at(base, 15), Timer::Rejoin(ChannelId(3))),
                (at(base, 20), Timer::JoinTimeout(ChannelId(2))),
            ]
        );
        assert_eq!(timers.next(), Some(at(base, 30)));
        assert_eq!(timers.len(), 1);
        assert_eq!(
            timers.take_due(at(base, 30)),
            [(at(base, 30), Timer::Reconnect)]
        );
        assert_eq!((timers.next(), timers.len()), (None, 0));
    }

    #[test]
    fn a_disarmed_timer_never_comes_due_and_the_next_deadline_stays_exact() {
        let base = Instant::now();
        let mut timers = Timers::default();
        timers.arm(at(base, 10), Timer::JoinTimeout(ChannelId(1)));
        timers.arm(at(base, 20), Timer::JoinTimeout(ChannelId(2)));
        timers.arm(at(base, 15), Timer::LeaveTimeout(ChannelId(3)));
        timers.disarm(Some(at(base, 10)), Timer::JoinTimeout(ChannelId(1)));
        timers.disarm(Some(at(base, 15)), Timer::LeaveTimeout(ChannelId(3)));
        // Disarming with another deadline than the armed one changes nothing.
        timers.disarm(Some(at(base, 19)), Timer::JoinTimeout(ChannelId(2)));
        timers.disarm(None, Timer::JoinTimeout(ChannelId(2)));
        assert_eq!(timers.next(), Some(at(base, 20)));
        assert_eq!(timers.len(), 1);
        assert_eq!(
            timers.take_due(at(base, 100)),
            [(at(base, 20), Timer::JoinTimeout(ChannelId(2)))]
        );
    }

    #[test]
    fn a_timer_armed_again_comes_due_once_at_its_new_deadline() {
        let base = Instant::now();
        let mut timers = Timers::default();
        timers.arm(at(base, 10), Timer::Rejoin(ChannelId(1)));
        timers.arm(at(base, 12), Timer::Rejoin(ChannelId(1)));
        assert_eq!(timers.next(), Some(at(base, 12)));
        assert_eq!(timers.len(), 1);
        assert_eq!(
            timers.take_due(at(base, 100)),
            [(at(base, 12), Timer::Rejoin(ChannelId(1)))]
        );
    }

    #[test]
    fn disarmed_entries_do_not_pile_up() {
        let base = Instant::now();
        let mut timers = Timers::default();
        // One long-lived timer at the front keeps the dead ones behind it from leaving by
        // the front: compaction bounds them.
        let first = Timer::JoinTimeout(ChannelId(u64::MAX));
        timers.arm(at(base, 1), first);
        for n in 0..10_000 {
            let timer = Timer::JoinTimeout(ChannelId(n));
            timers.arm(at(base, 10 + n), timer);
            timers.disarm(Some(at(base, 10 + n)), timer);
        }
        assert_eq!(timers.len(), 1);
        let fifo = &timers.fifos[first.kind()];
        assert!(fifo.entries.len() <= 65, "{} entries", fifo.entries.len());
        assert_eq!(timers.take_due(at(base, 1 << 20)), [(at(base, 1), first)]);
        assert!(timers.fifos.iter().all(|f| f.entries.is_empty()));
    }
}
