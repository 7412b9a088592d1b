//! Telemetry: one `tracing` span per write, with its timing and outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::error::WriteError;
use crate::write::{WriteAck, WriteRequest};

/// Wraps every write in a `dust_write` span (store, op, client_op_id) and logs its outcome and
/// duration when it ends (debug for acks, info for rejections, warn for failures).
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    store: Arc<str>,
}

impl TelemetryLayer {
    /// Telemetry for writes to `store`.
    pub fn new(store: impl Into<Arc<str>>) -> Self {
        Self {
            store: store.into(),
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service of [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    store: Arc<str>,
}

impl<S> Service<WriteRequest> for Telemetry<S>
where
    S: Service<WriteRequest, Response = WriteAck, Error = WriteError>,
    S::Future: Send + 'static,
{
    type Response = WriteAck;
    type Error = WriteError;
    type Future = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: WriteRequest) -> Self::Future {
        let span = tracing::info_span!(
            "dust_write",
            store = %self.store,
            op = request.op.name(),
            client_op_id = %request.client_op_id,
        );
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = future.await;
                let elapsed_us = started.elapsed().as_micros() as u64;
                match &result {
                    Ok(ack) => tracing::debug!(
                        elapsed_us,
                        store_seq = ack.store_seq(),
                        from_event = ack.is_from_event(),
                        "write acknowledged"
                    ),
                    Err(WriteError::Rejected(r) | WriteError::Invalid(r)) => {
                        tracing::info!(elapsed_us, reason = %r.reason, "write rejected")
                    }
                    Err(error) => tracing::warn!(elapsed_us, %error, "write failed"),
                }
                result
            }
            .instrument(span),
        )
    }
}
