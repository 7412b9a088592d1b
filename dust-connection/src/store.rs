//! [`Store`]: the handle of one store of a connection, and its write path.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use phoenix_channels::ChannelState;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt as _};

use crate::error::WriteError;
use crate::layer::{Outbox, QueuedWrite};
use crate::write::{IntoSegments, Lease, WriteAck, WriteRequest};

/// The write path of a store, as one boxed service (telemetry, the user's layers, validation,
/// outbox, push).
pub type WriteService = BoxCloneSyncService<WriteRequest, WriteAck, WriteError>;

/// A store of a connection: its write path. A cheap `Clone` handle.
///
/// Every write returns the server's acknowledgement ([`WriteAck`]) or why it was not applied
/// ([`WriteError`]). Writes go out in the order they are made, after the store has joined and
/// caught up; a write is answered exactly once, and never applied twice by a resend (unless
/// [`UnknownOutcome::AtLeastOnce`](crate::UnknownOutcome::AtLeastOnce) is chosen).
#[derive(Clone)]
pub struct Store {
    pub(crate) name: Arc<str>,
    pub(crate) service: WriteService,
    pub(crate) outbox: Outbox,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole write path as a tower service, to compose further.
    pub fn service(&self) -> WriteService {
        self.service.clone()
    }

    /// How many writes this store's outbox holds right now, queued or in flight: never more
    /// than [`DustConnectionBuilder::outbox_capacity`](crate::DustConnectionBuilder::outbox_capacity) (writes waiting for room are not in it).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Writes, waiting for its turn and for room in the outbox if it is full.
    ///
    /// The write takes its place in the store's issue order when this is called, not when the
    /// future is first polled: writes made one after the other are sent (and applied) in that
    /// order, however their futures are polled. Dropping the future gives up the place (and
    /// takes the write out of the outbox if it was not sent yet).
    pub fn write(
        &self,
        mut request: WriteRequest,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        request.order = self.outbox.order(true);
        self.service.clone().oneshot(request)
    }

    /// Writes, and resolves as soon as the write is in the outbox — on disk, with a
    /// [durable outbox](crate::DustConnectionBuilder::durable_outbox) — with the
    /// [`QueuedWrite`] to await for the server's answer.
    ///
    /// The write takes its place in the issue order when this is called, as with
    /// [`write`](Self::write). It fails before being queued as `write` does (an invalid
    /// write, a layer's error, [`WriteError::Storage`] if the disk refused it); once queued,
    /// the write is sent even if the [`QueuedWrite`] is dropped (with a durable outbox; an
    /// in-memory outbox forgets a write not yet sent when its answer is dropped).
    ///
    /// ```no_run
    /// # async fn demo(store: dust_connection::Store) -> Result<(), dust_connection::WriteError> {
    /// use dust_connection::WriteRequest;
    ///
    /// let queued = store.queue(WriteRequest::increment(["stats", "visits"], 1)).await?;
    /// let ack = queued.await?;
    /// # Ok(()) }
    /// ```
    pub fn queue(
        &self,
        mut request: WriteRequest,
    ) -> impl Future<Output = Result<QueuedWrite, WriteError>> + Send + 'static {
        let (queued, is_queued) = tokio::sync::oneshot::channel();
        let client_op_id = request.client_op_id.clone();
        request.order = self.outbox.order_signalled(true, Some(queued));
        let mut write = Box::pin(self.service.clone().oneshot(request));
        async move {
            tokio::select! {
                biased;
                id = is_queued => match id {
                    Ok(id) => Ok(QueuedWrite::new(id, write)),
                    // The signal was dropped unsent: the write failed before it was queued.
                    Err(_) => match write.await {
                        Err(error) => Err(error),
                        Ok(_) => Err(WriteError::Closed),
                    },
                },
                result = &mut write => match result {
                    Err(error) => Err(error),
                    // Answered without reaching the outbox (a layer answered it).
                    Ok(ack) => Ok(QueuedWrite::new(client_op_id, std::future::ready(Ok(ack)))),
                },
            }
        }
    }

    /// The writes this store's [durable outbox](crate::DustConnectionBuilder::durable_outbox)
    /// held when the connection was built (queued by an earlier process that stopped or
    /// crashed before their answers), in issue order, each with its answer to come. They go
    /// out whether or not this is called; the first call takes them, later calls get none.
    pub fn recovered(&self) -> Vec<QueuedWrite> {
        self.outbox.take_recovered()
    }

    /// Writes without waiting for its turn or for room: fails with
    /// [`WriteError::OutboxFull`] if the outbox is full, if earlier writes of this store are
    /// still on their way to it, or if a layer is not ready.
    pub fn try_write(
        &self,
        mut request: WriteRequest,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        request.order = self.outbox.order(false);
        let mut service = self.service.clone();
        async move {
            match service.ready().now_or_never() {
                Some(Ok(ready)) => ready.call(request).await,
                Some(Err(error)) => Err(error),
                None => Err(WriteError::OutboxFull),
            }
        }
    }

    crate::write::write_shortcuts!(set);

    /// Acquires a lease on `key` for `ttl`; the lease carries the token for renew, release and
    /// fences.
    pub fn lease(
        &self,
        key: impl IntoSegments,
        ttl: Duration,
        holder: Option<String>,
    ) -> impl Future<Output = Result<Lease, WriteError>> + Send + 'static {
        let request = WriteRequest::lease(key, ttl.as_millis() as u64, holder);
        let key = crate::write::Path::new(request.op.path().to_vec()).ok();
        let write = self.write(request);
        async move {
            let ack = write.await?;
            key.and_then(|key| ack.lease(&key)).ok_or_else(|| {
                WriteError::Rejected(crate::write::Rejection::unexpected(&Value::Object(
                    ack.reply().clone(),
                )))
            })
        }
    }

    /// Renews a lease for `ttl`.
    pub fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, WriteError>> + Send + 'static {
        let write = self.write(WriteRequest::renew(lease, ttl.as_millis() as u64));
        let key = lease.key.clone();
        async move {
            let ack = write.await?;
            ack.lease(&key).ok_or_else(|| {
                WriteError::Rejected(crate::write::Rejection::unexpected(&Value::Object(
                    ack.reply().clone(),
                )))
            })
        }
    }

    /// Releases a lease (`released() == Some(false)` in the ack when it was not held).
    pub fn release(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::release(lease))
    }

    /// Stores `content` as a file at `path`.
    pub fn put_file(
        &self,
        path: impl IntoSegments,
        content: impl Into<bytes::Bytes>,
        filename: Option<String>,
        content_type: Option<String>,
    ) -> impl Future<Output = Result<WriteAck, WriteError>> + Send + 'static {
        self.write(WriteRequest::put_file(path, content).file_meta(filename, content_type))
    }

    /// Asks a store whose join was refused for good to try again.
    pub fn rejoin(&self) {
        self.outbox.rejoin();
    }
}
impl Store {
    /// Whether the store's channel is joined right now (read from the channel itself).
    pub fn is_joined(&self) -> bool {
        self.outbox.channel().state() == ChannelState::Joined
    }
}
