//! A `tower::retry` policy for writes rejected with `rate_limited`.

use std::time::Duration;

use tower::retry::Policy;

use crate::error::WriteError;
use crate::write::{RejectReason, WriteAck, WriteRequest};

/// Retries a write rejected with `rate_limited`, after the `retry_after_ms` the server asked for
/// (capped by [`max_wait`](Self::max_wait)), at most `max_retries` times. Any other outcome is
/// final.
///
/// The retried request is the same write with the same `client_op_id`: a rate-limited write was
/// not applied, so retrying it cannot apply it twice.
///
/// ```
/// use dust_connection::layer::RetryRateLimited;
/// use tower::retry::RetryLayer;
///
/// # fn demo(builder: dust_connection::DustConnectionBuilder) -> dust_connection::DustConnectionBuilder {
/// builder.layer(RetryLayer::new(RetryRateLimited::new(3)))
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RetryRateLimited {
    retries_left: u32,
    max_wait: Duration,
}

impl RetryRateLimited {
    /// At most `max_retries` retries per write, each waiting at most 10 s.
    pub fn new(max_retries: u32) -> Self {
        Self {
            retries_left: max_retries,
            max_wait: Duration::from_secs(10),
        }
    }

    /// Caps each wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

impl Policy<WriteRequest, WriteAck, WriteError> for RetryRateLimited {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut WriteRequest,
        result: &mut Result<WriteAck, WriteError>,
    ) -> Option<Self::Future> {
        match result {
            Err(WriteError::Rejected(rejection))
                if rejection.reason == RejectReason::RateLimited && self.retries_left > 0 =>
            {
                self.retries_left -= 1;
                let wait = rejection
                    .retry_after_ms()
                    .map_or(Duration::from_millis(100), Duration::from_millis);
                tracing::debug!(
                    ?wait,
                    retries_left = self.retries_left,
                    "rate limited; retrying"
                );
                Some(tokio::time::sleep(wait.min(self.max_wait)))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &WriteRequest) -> Option<WriteRequest> {
        Some(request.clone())
    }
}
