//! Pushes written by the handles themselves.
//!
//! A push crossing to the socket task costs a wake-up of that task and, on the multi-thread
//! runtime, often a hop to another worker thread, for a few microseconds of work. When the
//! task is idle (waiting for frames or timers, its command queue empty), the handle instead
//! locks the driver (without waiting: if the task is running, the push is queued for it as
//! usual) and does what the task would do with the push: hands it to the sans-io core and
//! writes the frames the core asks for to the connection, registering the task's waker
//! wherever something is left to wait for. Only a lone request (no other reply awaited) goes
//! this way; pushes in a row and casts are left to the task, which writes them in one batch. The core's rules are unchanged: the same command path, with the current time, runs
//! under the lock that serializes the task.

use std::task::Context;

use super::{Command, Driver, ReplyReader};

impl Driver {
    /// Whether a handle may carry out this command now ([`Driver::push_now`]): a push awaiting
    /// a reply while no other reply is awaited (the request/reply pattern), with the task
    /// idle — it has run (it has a waker to leave work to), has a connection to write to, and
    /// has neither commands queued (call order is kept) nor work of its own in progress.
    /// Pushes in a row and casts are left to the task, which writes them in one batch (a
    /// flush per push would cost a write to the connection per push).
    pub(crate) fn takes_now(&self, command: &Command) -> bool {
        matches!(command, Command::Push { reply: Some(_), .. })
            && self.core.pending_len() == 0
            && self.waker.is_some()
            && !self.stopped
            && self.transport.is_some()
            && self.outbox.is_empty()
            && self.connecting.is_none()
            && self.congested.is_empty()
            && self.commands.is_empty()
    }

    /// Carries out a push command on the caller's thread, when
    /// [`takes_now`](Self::takes_now) said so: hands it to the core and writes and flushes
    /// its frame.
    pub(crate) fn push_now(&mut self, command: Command, reader: Option<&ReplyReader>) {
        let Some(waker) = self.waker.take() else {
            // Not reached (see `takes_now`); the task takes it.
            self.command(command);
            return;
        };
        let span = self.span.clone();
        let _entered = span.enter();
        let mut cx = Context::from_waker(&waker);
        self.command(command);
        if let Some(reader) = reader
            && self.core.pending_len() == 1
        {
            // The lone push takes the readiness before its frame is written (see
            // [`ReplyReader`]); the timer below covers its check.
            reader.claim_unpolled(self);
        }
        let mut wake = self.dispatch();
        if let Err(reason) = self.poll_write() {
            self.transport_lost(reason);
            self.dispatch();
            wake = true;
        }
        self.release_room();
        self.flush_consumers();
        // The push's deadline may come before the timer's; a stopping socket ends its task.
        if self.arm_timer(&mut cx) || self.stopped {
            wake = true;
        }
        if wake {
            waker.wake_by_ref();
        }
        self.waker = Some(waker);
    }
}
