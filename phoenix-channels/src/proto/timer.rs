//! The timers of the core: one ordered set of every armed deadline but the pushes' (see
//! [`PushDeadlines`](super::push::PushDeadlines)).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
#[derive(Debug, Default)]
pub(crate) struct Timers(BTreeSet<(Instant, Timer)>);

impl Timers {
    pub(crate) fn arm(&mut self, at: Instant, timer: Timer) {
        self.0.insert((at, timer));
    }

    pub(crate) fn disarm(&mut self, at: Option<Instant>, timer: Timer) {
        if let Some(at) = at {
            self.0.remove(&(at, timer));
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.first().map(|(at, _)| *at)
    }

    /// Removes and returns the timers due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(Instant, Timer)> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.0.first() {
            if at > now {
                break;
            }
            self.0.pop_first();
            due.push((at, timer));
        }
        due
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
