//! [`QueuedWrite`]: a write that is in its store's outbox, and its answer to come.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::WriteError;
use crate::write::{ClientOpId, WriteAck};

type Answer = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send>>;

/// A write that is in its store's outbox — on disk, with a durable outbox — and the future of
/// the server's answer.
///
/// From [`Store::queue`](crate::Store::queue), or, for the writes a durable outbox held when
/// the process started, [`Store::recovered`](crate::Store::recovered). Await it for the
/// answer. With a durable outbox, dropping it does not take the write back: it is sent
/// anyway, and answered from its event after a restart.
///
/// ```no_run
/// # async fn demo(store: dust_connection::Store) -> Result<(), dust_connection::WriteError> {
/// use dust_connection::WriteRequest;
///
/// let queued = store.queue(WriteRequest::set(["todo", "1"], "milk")).await?;
/// println!("queued as {}", queued.client_op_id());
/// let ack = queued.await?;
/// println!("applied at seq {:?}", ack.store_seq());
/// # Ok(()) }
/// ```
#[must_use = "the write is queued either way; await this to get its answer"]
pub struct QueuedWrite {
    client_op_id: ClientOpId,
    answer: Answer,
}

impl QueuedWrite {
    pub(crate) fn new(
        client_op_id: ClientOpId,
        answer: impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static,
    ) -> Self {
        Self {
            client_op_id,
            answer: Box::pin(answer),
        }
    }

    /// The write's idempotency key (its event carries it).
    pub fn client_op_id(&self) -> &ClientOpId {
        &self.client_op_id
    }
}

impl fmt::Debug for QueuedWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedWrite")
            .field("client_op_id", &self.client_op_id)
            .finish_non_exhaustive()
    }
}

impl Future for QueuedWrite {
    type Output = Result<WriteAck, WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.answer.as_mut().poll(cx)
    }
}
