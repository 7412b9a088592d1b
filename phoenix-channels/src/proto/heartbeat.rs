//! The heartbeat: while connected, one `phx_heartbeat` on the `phoenix` topic every interval, at
//! most one unanswered at a time; no reply within the timeout means the connection is dead.
//!
//! This unit keeps the schedule and the unanswered heartbeat; the socket machine sends the
//! frame, keeps the ref among its pending refs, and acts on a timeout.

use std::time::{Duration, Instant};

use super::timer::{Timer, Timers, deadline};

/// The heartbeat schedule of one socket.
#[derive(Debug)]
pub(super) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// When the next heartbeat is due (armed as [`Timer::Heartbeat`]).
    next: Option<Instant>,
    /// The unanswered heartbeat: its ref and its reply deadline (armed as
    /// [`Timer::HeartbeatTimeout`]).
    pending: Option<(u64, Instant)>,
}

impl Heartbeat {
    pub(super) fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            next: None,
            pending: None,
        }
    }

    /// The connection opened: the first heartbeat is due one interval later.
    pub(super) fn start(&mut self, now: Instant, timers: &mut Timers) {
        let at = deadline(now, self.interval);
        self.next = Some(at);
        timers.arm(at, Timer::Heartbeat);
    }

    /// The connection is gone: no more heartbeats, and the unanswered one is forgotten.
    pub(super) fn stop(&mut self, timers: &mut Timers) {
        timers.disarm(self.next.take(), Timer::Heartbeat);
        if let Some((_, at)) = self.pending.take() {
            timers.disarm(Some(at), Timer::HeartbeatTimeout);
        }
    }

    /// Forgets everything, for a `timers` that was cleared.
    pub(super) fn clear(&mut self) {
        self.next = None;
        self.pending = None;
    }

    /// [`Timer::Heartbeat`] fired. While `connected`, arms the next one and, unless a heartbeat
    /// is still unanswered, returns that one should be sent now under the ref `make_ref` gives.
    pub(super) fn due(
        &mut self,
        now: Instant,
        connected: bool,
        timers: &mut Timers,
        make_ref: impl FnOnce() -> u64,
    ) -> Option<u64> {
        self.next = None;
        if !connected {
            return None;
        }
        let send = self.pending.is_none().then(|| {
            let r = make_ref();
            let reply_by = deadline(now, self.timeout);
            self.pending = Some((r, reply_by));
            timers.arm(reply_by, Timer::HeartbeatTimeout);
            r
        });
        self.start(now, timers);
        send
    }

    /// The reply to heartbeat `r` arrived.
    pub(super) fn replied(&mut self, r: u64, timers: &mut Timers) {
        if let Some((pending, at)) = self.pending
            && pending == r
        {
            self.pending = None;
            timers.disarm(Some(at), Timer::HeartbeatTimeout);
        }
    }

    /// [`Timer::HeartbeatTimeout`] fired: the heartbeat is no longer awaited.
    pub(super) fn timed_out(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unanswered_heartbeat_at_a_time() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let mut timers = Timers::default();
        let mut hb = Heartbeat::new(10 * second, 25 * second);
        hb.start(now, &mut timers);
        assert_eq!(timers.next(), Some(now + 10 * second));
        let mut refs = 0;
        let mut make_ref = || {
            refs += 1;
            refs
        };
        let mut beat = |timers: &mut Timers, hb: &mut Heartbeat, at: Instant, connected| {
            let due: Vec<_> = timers.take_due(at).into_iter().map(|(_, t)| t).collect();
            assert_eq!(due, [Timer::Heartbeat]);
            hb.due(at, connected, timers, &mut make_ref)
        };
        assert_eq!(beat(&mut timers, &mut hb, now + 10 * second, true), Some(1));
        // Still unanswered at the next beat: nothing is sent, the schedule goes on.
        assert_eq!(beat(&mut timers, &mut hb, now + 20 * second, true), None);
        hb.replied(1, &mut timers);
        assert_eq!(beat(&mut timers, &mut hb, now + 30 * second, true), Some(2));
        // Disconnected: nothing sent; nothing stays armed after the stop.
        assert_eq!(beat(&mut timers, &mut hb, now + 40 * second, false), None);
        hb.stop(&mut timers);
        assert_eq!(timers.len(), 0);
    }
}
