//! Replies read by the task that awaits them.
//!
//! On a round trip the reply used to reach its push through the socket task: the connection's
//! readiness woke the task, which read the frame and woke the push's task (on the multi-thread
//! runtime another thread, on the current-thread runtime one more pass of its loop). While a
//! lone push waits and the task is idle, the push's task instead takes the connection's
//! readiness itself ([`IoWake`]): woken by it, it locks the driver (without waiting) and runs
//! the task's own round on its thread, which reads the reply and whatever else came, delivers
//! everything as the task would, and leaves the waker of the task wherever anything else is to
//! wait for. The core's rules are unchanged: the same round runs, with the current time, under
//! the lock that serializes the task.
//!
//! Every readiness reaches someone who reads: the waiter that takes it either runs the round,
//! or, when it cannot (the task is running, or the push was dropped or answered first), wakes
//! the task instead. A push that is left unpolled while its task awaits something else would
//! hold the readiness back: the task's timer wakes it at most [`READER_CHECK`] after a push
//! claimed the readiness, and each of its wake-ups reads.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};

use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Driver;
use crate::proto::message::Reply;
use crate::proto::push::PushError;

/// How long after a waiting push claimed the connection's readiness the socket task wakes at
/// the latest, to read what an unpolled push may have been woken for. (The timer moves only
/// to an earlier deadline: one claim in a row of round trips moves it, the rest find it armed.)
pub(super) const READER_CHECK: Duration = Duration::from_millis(50);

/// The waker the driver gives the connection (reads and writes alike): it wakes the waiting
/// push that claimed the connection's readiness, else the socket task. Lock-free on the way
/// of a wake-up (the I/O driver's thread calls it while the waiter's thread runs), except
/// for the socket task's waker, which is locked only when no waiter takes the wake-up.
#[derive(Debug, Default)]
pub(crate) struct IoWake {
    /// The socket task's waker.
    task: Mutex<Option<Waker>>,
    /// The waiting push that takes the next readiness, by its id (0: none), and its waker.
    waiter_id: AtomicU64,
    waiter: AtomicWaker,
    /// The waiter woken by a readiness and not yet done with it (0: none): until it is,
    /// further wake-ups are its to handle too (the connection wakes its read and its write
    /// waker, this one both, for one readiness).
    owed: AtomicU64,
    next_id: AtomicU64,
    /// Whether a write to the connection waits for room ([`WriteWake`]).
    write_pending: AtomicBool,
}

/// The waker the driver gives the connection's writes: it wakes the socket task, and only
/// while a write waits for room. (The connection wakes its read and its write wakers
/// together, whatever the readiness, and a write waker is left registered by every flush:
/// were it the socket task's own, each reply read by its waiting push would wake the task as
/// well.)
#[derive(Debug)]
pub(crate) struct WriteWake(pub(crate) Arc<IoWake>);

impl Wake for WriteWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.0.write_pending.load(Ordering::Acquire) {
            self.0.wake_task();
        }
    }
}

impl Wake for IoWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.owed.load(Ordering::Acquire) != 0 {
            // A waiter was woken to read and has not yet: it reads (or hands over) all.
            return;
        }
        let id = self.waiter_id.swap(0, Ordering::AcqRel);
        if id != 0 {
            self.owed.store(id, Ordering::Release);
            self.waiter.wake();
        } else {
            self.wake_task();
        }
    }
}

impl IoWake {
    fn wake_task(&self) {
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }

    /// Keeps the socket task's waker (called when it changed).
    pub(super) fn set_task(&self, waker: &Waker) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    }

    /// Whether writes wait for room: set before the connection is asked to write (so that a
    /// wake-up while it is asked is not lost) and cleared when it took everything.
    pub(super) fn set_write_pending(&self, pending: bool) {
        self.write_pending.store(pending, Ordering::Release);
    }

    /// The round about to run reads whatever a woken waiter owes.
    pub(super) fn paying(&self) {
        if self.owed.load(Ordering::Acquire) != 0 {
            self.owed.store(0, Ordering::Release);
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether waiter `id` was woken to read and has not yet (it now takes that on).
    fn take_owed(&self, id: u64) -> bool {
        self.owed
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn claim_unpolled(&self, id: u64) {
        // The waker left from an earlier push (most likely of the same task) is woken at
        // worst: the first poll checks what is owed before anything else.
        self.waiter_id.store(id, Ordering::Release);
    }

    fn claim(&self, id: u64, waker: &Waker) {
        self.waiter.register(waker);
        self.waiter_id.store(id, Ordering::Release);
    }

    fn claimed_by(&self, id: u64) -> bool {
        self.waiter_id.load(Ordering::Acquire) == id
    }

    fn unclaim(&self, id: u64) {
        let _ = self
            .waiter_id
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Waiter `id` is done (answered or dropped): it gives up its claim, and a readiness it
    /// was woken for and did not read goes to the socket task.
    fn release(&self, id: u64) {
        self.unclaim(id);
        if self.take_owed(id) {
            self.wake_task();
        }
    }
}

impl Driver {
    /// Whether a waiting push may take the connection's readiness: it is the only push
    /// awaiting a reply (pushes in a row are read by the task, in batches), and the task is
    /// idle with a connection and nothing of its own to do.
    fn reader_may_claim(&self) -> bool {
        self.core.pending_len() == 1
            && self.commands.is_empty()
            && self.waker.is_some()
            && !self.stopped
            && self.transport.is_some()
            && self.connecting.is_none()
            && self.congested.is_empty()
    }

    /// Notes when the task checks on a waiting push that took the connection's readiness;
    /// returns whether the timer must be armed for it.
    fn note_reader_check(&mut self) -> bool {
        let now = Instant::now();
        if self.reader_check.is_some_and(|check| check > now) {
            // Checked on soon enough.
            return false;
        }
        self.reader_check = Some(now + READER_CHECK);
        true
    }

    /// A waiting push took the connection's readiness: the task checks on it by
    /// [`READER_CHECK`].
    fn reader_claimed(&mut self) {
        let Some(waker) = self.waker.clone() else {
            return;
        };
        if !self.note_reader_check() {
            return;
        }
        if self.arm_timer(&mut Context::from_waker(&waker)) {
            waker.wake_by_ref();
        }
    }

    /// Runs the socket task's round on the caller's thread, with the task's waker.
    fn run_for_reader(&mut self) {
        let Some(waker) = self.waker.clone() else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        if self.run(&mut cx).is_ready() {
            // The socket stopped: its task ends when it next runs.
            waker.wake_by_ref();
        }
    }
}

/// A push's reply, received through the socket task or read by the push's own task.
pub(crate) struct ReplyReader {
    driver: Weak<Mutex<Driver>>,
    io: Arc<IoWake>,
    id: u64,
}

impl ReplyReader {
    pub(crate) fn new(driver: Weak<Mutex<Driver>>, io: Arc<IoWake>) -> Self {
        let id = io.next_id();
        Self { driver, io, id }
    }

    /// Takes the connection's readiness for this push before it is first polled (from
    /// [`Driver::push_now`], whose own timer arming covers the check): a readiness that
    /// comes first wakes no one (no waker yet), and the first poll reads it.
    pub(super) fn claim_unpolled(&self, driver: &mut Driver) {
        self.io.claim_unpolled(self.id);
        driver.note_reader_check();
    }

    /// Polls for the reply of `rx`, reading it from the connection when this push may.
    pub(crate) fn poll_reply(
        &mut self,
        rx: &mut oneshot::Receiver<Result<Reply, PushError>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Reply, PushError>> {
        if let Poll::Ready(reply) = Pin::new(&mut *rx).poll(cx) {
            return Poll::Ready(reply.unwrap_or(Err(PushError::SocketClosed)));
        }
        let mut owed = self.io.take_owed(self.id);
        if !owed && self.io.claimed_by(self.id) {
            // Still the reader: nothing came yet, unless it came while the waker was being
            // registered (and went to the waker before it).
            self.io.waiter.register(cx.waker());
            owed = self.io.take_owed(self.id);
            if !owed {
                return Poll::Pending;
            }
        }
        let Some(driver) = self.driver.upgrade() else {
            return Poll::Pending;
        };
        let Ok(mut driver) = driver.try_lock() else {
            // The task is running: it reads, now and later.
            self.io.unclaim(self.id);
            if owed {
                self.io.wake_task();
            }
            return Poll::Pending;
        };
        if owed {
            // The reply this round may deliver is taken right after it: its delivery must not
            // wake this task once more (a spurious wake-up costs the runtime a whole turn), so
            // the receiver holds a no-op waker meanwhile; the poll after the round puts the
            // task's waker back when the reply did not come.
            if let Poll::Ready(reply) =
                Pin::new(&mut *rx).poll(&mut Context::from_waker(Waker::noop()))
            {
                return Poll::Ready(reply.unwrap_or(Err(PushError::SocketClosed)));
            }
            driver.run_for_reader();
            if let Poll::Ready(reply) = Pin::new(&mut *rx).poll(cx) {
                return Poll::Ready(reply.unwrap_or(Err(PushError::SocketClosed)));
            }
        }
        if driver.reader_may_claim() {
            self.io.claim(self.id, cx.waker());
            driver.reader_claimed();
        } else {
            self.io.unclaim(self.id);
        }
        Poll::Pending
    }
}

impl Drop for ReplyReader {
    fn drop(&mut self) {
        self.io.release(self.id);
    }
}
