//! The outbox stage: a handle service in front of the store's worker, in the manner of
//! `tower::buffer`. The worker (see [`crate::store`]) owns the store's ordered queue of writes,
//! sends them through the leaf service, and answers each caller exactly once.
//!
//! Capacity is a semaphore: each write holds a permit from `poll_ready` until it is answered,
//! so `poll_ready` waits while the outbox is full (backpressure) and a call that does not wait
//! gets [`WriteError::OutboxFull`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::PollSemaphore;
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
        permit: OwnedSemaphorePermit,
    },
    /// The caller of this write dropped its future: forget the write if it was not sent yet.
    Cancel { ticket: u64 },
    /// Rejoin a store whose join was refused for good.
    Rejoin,
}

/// The outbox handle: a `Service<EncodedWrite>` whose calls are queued, in order, for the
/// store's worker. Cheap to clone; a clone starts without a reserved slot.
#[derive(Debug)]
pub struct Outbox {
    submissions: mpsc::UnboundedSender<Submission>,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    tickets: Arc<AtomicU64>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        Self {
            submissions: self.submissions.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
            tickets: self.tickets.clone(),
        }
    }
}

impl Outbox {
    /// Asks the worker to rejoin the store after a permanent join failure.
    pub(crate) fn rejoin(&self) {
        let _ = self.submissions.send(Submission::Rejoin);
    }

    pub(crate) fn new(submissions: mpsc::UnboundedSender<Submission>, capacity: usize) -> Self {
        Self {
            submissions,
            semaphore: PollSemaphore::new(Arc::new(Semaphore::new(capacity.max(1)))),
            permit: None,
            tickets: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Service<EncodedWrite> for Outbox {
    type Response = WriteAck;
    type Error = WriteError;
    type Future = OutboxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        if self.submissions.is_closed() {
            return Poll::Ready(Err(WriteError::Closed));
        }
        if self.permit.is_none() {
            match ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Ready(Err(WriteError::Closed)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, write: EncodedWrite) -> OutboxFuture {
        // `poll_ready` reserves the slot; a caller that skipped it gets one only if free.
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None => match self.semaphore.clone_inner().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => return OutboxFuture::failed(WriteError::OutboxFull),
            },
        };
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if self
            .submissions
            .send(Submission::Write {
                ticket,
                write,
                reply: tx,
                permit,
            })
            .is_err()
        {
            return OutboxFuture::failed(WriteError::Closed);
        }
        OutboxFuture {
            state: State::Waiting {
                rx,
                ticket,
                submissions: self.submissions.clone(),
            },
        }
    }
}

#[derive(Debug)]
enum State {
    Failed(Option<WriteError>),
    Waiting {
        rx: oneshot::Receiver<Result<WriteAck, WriteError>>,
        ticket: u64,
        submissions: mpsc::UnboundedSender<Submission>,
    },
    Done,
}

/// The answer to a write queued in the outbox. Dropping it before the write was sent takes
/// the write out of the queue; a write already sent stays tracked until it is answered.
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
}

impl Future for OutboxFuture {
    type Output = Result<WriteAck, WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.state {
            State::Failed(error) => Err(error.take().unwrap_or(WriteError::Closed)),
            State::Waiting { rx, .. } => {
                ready!(Pin::new(rx).poll(cx)).unwrap_or(Err(WriteError::Closed))
            }
            State::Done => Err(WriteError::Closed),
        };
        self.state = State::Done;
        Poll::Ready(result)
    }
}

impl Drop for OutboxFuture {
    fn drop(&mut self) {
        if let State::Waiting {
            ticket,
            submissions,
            ..
        } = &self.state
        {
            let _ = submissions.send(Submission::Cancel { ticket: *ticket });
        }
    }
}
