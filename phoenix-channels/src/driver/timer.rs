//! The task's timer (the core's next deadline, a read pause's end, the check on a waiting
//! push that reads its own reply) and the read pauses for a lagging consumer.

use std::future::Future as _;
use std::task::Context;

use tokio::time::Instant;

use super::{Driver, MIN_READ_PAUSE, PAUSE_SHARE};

impl Driver {
    /// Whether reading waits for a congested consumer (registering to be woken when it drains).
    pub(super) fn read_paused(&mut self, cx: &mut Context<'_>) -> bool {
        if self.congested.is_empty() {
            return false;
        }
        let slots = &self.slots;
        self.congested.retain(|id| {
            slots
                .get(id)
                .is_some_and(|slot| slot.queue.wake_when_drained(cx.waker()))
        });
        let now = Instant::now();
        if self.congested.is_empty() {
            self.end_pause(now);
            return false;
        }
        match self.pause_until {
            Some(until) if now < until => true,
            Some(_) => {
                // Spent: read on (the overflow is dropped and reported) while more is earned.
                self.end_pause(now);
                false
            }
            None => {
                let earned = now.saturating_duration_since(self.pause_earned_at) / PAUSE_SHARE;
                self.pause_earned = (self.pause_earned + earned).min(self.max_pause);
                self.pause_earned_at = now;
                if self.pause_earned < MIN_READ_PAUSE.min(self.max_pause) {
                    return false;
                }
                self.pause_started = Some(now);
                self.pause_until = Some(now + self.pause_earned);
                true
            }
        }
    }

    /// Ends the current read pause, if any, paying for its time.
    pub(super) fn end_pause(&mut self, now: Instant) {
        self.pause_until = None;
        if let Some(started) = self.pause_started.take() {
            self.pause_earned = self
                .pause_earned
                .saturating_sub(now.saturating_duration_since(started));
            self.pause_earned_at = now;
        }
    }

    /// Arms the timer for the core's next deadline (or the end of a read pause) and polls it;
    /// returns whether it has already fired.
    ///
    /// The timer is moved only to an earlier deadline, or after it fired: a later deadline
    /// (the usual case: a push's timeout after the reply of the previous one) leaves it armed
    /// early, and when it fires with nothing due it is armed again. Moving a tokio timer
    /// earlier re-registers it in the timer wheel, so this saves two moves per round trip.
    pub(super) fn arm_timer(&mut self, cx: &mut Context<'_>) -> bool {
        // A pause in progress ends at its deadline; one that has run out is not waited for.
        let now = Instant::now();
        let pause = self
            .pause_until
            .filter(|at| !self.congested.is_empty() && *at > now);
        // A waiting push that reads its own reply (see [`reader`]) is checked on by then.
        self.reader_check = self.reader_check.filter(|at| *at > now);
        let next = [
            self.core.poll_timeout().map(Instant::from_std),
            pause,
            self.reader_check,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(at) = next else {
            return false;
        };
        let stale = match self.timer_at {
            None => true,
            Some(armed) => at < armed || self.timer.is_elapsed(),
        };
        if stale {
            self.timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}
