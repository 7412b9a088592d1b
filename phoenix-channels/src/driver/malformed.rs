//! Rate-limited warnings about malformed frames from the server.

use tokio::time::{Duration, Instant};

use crate::frame::DecodeError;

/// Malformed frames logged at `warn` per [`MALFORMED_WINDOW`]; the rest are counted and
/// summed up in one line when the window ends (or the connection does).
const MALFORMED_LOGGED: u32 = 5;

/// The window of [`MALFORMED_LOGGED`].
const MALFORMED_WINDOW: Duration = Duration::from_secs(60);

/// Rate-limits the warnings about malformed frames: a server spewing garbage must not flood
/// the logs (nor cost a formatted line per frame).
#[derive(Debug, Default)]
pub(super) struct MalformedLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl MalformedLog {
    pub(super) fn frame(&mut self, now: Instant, error: &DecodeError) {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= MALFORMED_WINDOW)
        {
            self.summary();
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < MALFORMED_LOGGED {
            self.logged += 1;
            tracing::warn!(%error, "dropping a malformed frame from the server");
            if self.logged == MALFORMED_LOGGED {
                tracing::warn!("further malformed frames are counted and reported once a minute");
            }
        } else {
            self.suppressed += 1;
        }
    }

    /// Reports the frames counted but not logged, if any.
    pub(super) fn summary(&mut self) {
        let dropped = std::mem::take(&mut self.suppressed);
        if dropped > 0 {
            tracing::warn!(dropped, "dropped more malformed frames from the server");
        }
    }
}
