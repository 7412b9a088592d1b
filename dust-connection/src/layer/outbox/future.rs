//! The answer to a write queued in the outbox.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use tokio::sync::{mpsc, oneshot};

use super::gate::{Gate, Queued};
use super::service::Submission;
use crate::error::WriteError;
use crate::write::{EncodedWrite, WriteAck};

pub(super) enum State {
    Failed(Option<WriteError>),
    /// Waiting for its turn and a free slot.
    Admitting {
        gate: Arc<Gate>,
        ticket: u64,
        write: Option<EncodedWrite>,
        queued: Option<Queued>,
        submissions: mpsc::UnboundedSender<Submission>,
        span: tracing::Span,
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
    pub(super) state: State,
}

impl OutboxFuture {
    pub(super) fn failed(error: WriteError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }

    /// Tries to enter the outbox: `None` if it is not this write's turn or there is no room
    /// (`waker` is woken when that may have changed).
    pub(super) fn admit(&mut self, waker: Option<&Waker>) -> Option<Result<(), WriteError>> {
        let State::Admitting {
            gate,
            ticket,
            write,
            queued,
            submissions,
            span,
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
                        queued: queued.take(),
                        span: span.clone(),
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
