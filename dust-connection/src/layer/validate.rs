//! Validation and encoding: [`WriteRequest`] in, [`EncodedWrite`] to the inner service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::error::WriteError;
use crate::format::Format;
use crate::write::{EncodedWrite, WriteAck, WriteRequest, encode};

/// Checks and encodes writes ([`WriteRequest`] → [`EncodedWrite`]): a write that is invalid
/// (an empty path or segment, a value its operation does not take, an unsupported
/// precondition) fails here with a [`Rejection`](crate::Rejection), before it is queued.
///
/// The payload is encoded once, in the connection's [`Format`] (JSON by default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateLayer {
    format: Format,
}

impl ValidateLayer {
    /// A layer encoding writes in `format` (the one the socket speaks).
    pub fn new(format: Format) -> Self {
        Self { format }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            format: self.format,
        }
    }
}

/// The service of [`ValidateLayer`].
#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
    format: Format,
}

impl<S> Service<WriteRequest> for Validate<S>
where
    S: Service<EncodedWrite, Response = WriteAck, Error = WriteError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = WriteAck;
    type Error = WriteError;
    type Future = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: WriteRequest) -> Self::Future {
        // The inner service that was polled ready goes with this call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let format = self.format;
        Box::pin(async move {
            let encoded = encode(request, format).await.map_err(WriteError::Invalid)?;
            inner.call(encoded).await
        })
    }
}
