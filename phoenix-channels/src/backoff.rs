//! Reconnect and rejoin schedules as plain functions of the attempt number, and the policies
//! built on them.
//!
//! ```
//! use std::time::Duration;
//! use phoenix_channels::backoff::{schedule_delay, RECONNECT_SCHEDULE_MS};
//! assert_eq!(schedule_delay(&RECONNECT_SCHEDULE_MS, 1), Duration::from_millis(10));
//! assert_eq!(schedule_delay(&RECONNECT_SCHEDULE_MS, 42), Duration::from_millis(5000));
//! ```

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::proto::DisconnectReason;
use crate::proto::channel::RejoinCause;

/// The reconnect delays of phoenix.js and Slipstream, in milliseconds; the last one repeats.
pub const RECONNECT_SCHEDULE_MS: [u64; 10] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000];

/// The rejoin delays of phoenix.js, in milliseconds; the last one repeats.
pub const REJOIN_SCHEDULE_MS: [u64; 4] = [1000, 2000, 5000, 10000];

/// The delay before attempt number `attempt` (1 for the first retry) of a schedule in
/// milliseconds: the schedule's entry, or its last entry once the attempts run past its end.
/// An empty schedule retries at once.
pub fn schedule_delay(schedule_ms: &[u64], attempt: u32) -> Duration {
    let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    let ms = schedule_ms
        .get(index)
        .or(schedule_ms.last())
        .copied()
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Spreads `delay` over `[delay × (1 − fraction), delay × (1 + fraction)]` with `sample` in
/// `[0, 1)`: `sample = 0.5` leaves it unchanged. `fraction` is clamped to `[0, 1]`.
pub fn jittered(delay: Duration, fraction: f64, sample: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    let sample = sample.clamp(0.0, 1.0);
    delay.mul_f64(1.0 - fraction + 2.0 * fraction * sample)
}

/// Decides whether and when the socket reconnects after a failed or lost connection.
///
/// Called with the number of consecutive failures (1 for the first) and the reason of the last
/// one. `None` stops reconnecting: the socket reports the reason and stays disconnected.
pub trait ReconnectPolicy: Send + Sync + fmt::Debug {
    /// The delay before the next connect attempt, or `None` to stop.
    fn reconnect_delay(&self, attempt: u32, reason: &DisconnectReason) -> Option<Duration>;
}

/// Decides whether and when a channel rejoins after a failed join or a crash.
///
/// Called with the number of consecutive failures since the last successful join (1 for the
/// first) and what happened. `None` stops rejoining: the channel closes with that cause.
pub trait RejoinPolicy: Send + Sync + fmt::Debug {
    /// The delay before the next join attempt, or `None` to stop.
    fn rejoin_delay(&self, attempt: u32, cause: &RejoinCause) -> Option<Duration>;
}

/// Optional jitter for a schedule: a fraction and a seeded generator, so that the same seed
/// gives the same delays.
#[derive(Debug)]
struct Jitter {
    fraction: f64,
    rng: Mutex<SmallRng>,
}

impl Jitter {
    fn apply(&self, delay: Duration) -> Duration {
        let sample = match self.rng.lock() {
            Ok(mut rng) => rng.random::<f64>(),
            Err(poisoned) => poisoned.into_inner().random::<f64>(),
        };
        jittered(delay, self.fraction, sample)
    }
}

/// A schedule in milliseconds with optional jitter: what both policies are made of.
#[derive(Debug)]
struct Delays {
    schedule_ms: Vec<u64>,
    jitter: Option<Jitter>,
}

impl Delays {
    fn new(schedule_ms: &[u64]) -> Self {
        Self {
            schedule_ms: schedule_ms.to_vec(),
            jitter: None,
        }
    }

    fn jitter(&mut self, fraction: f64, seed: u64) {
        self.jitter = Some(Jitter {
            fraction,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        });
    }

    fn delay(&self, attempt: u32) -> Duration {
        let delay = schedule_delay(&self.schedule_ms, attempt);
        match &self.jitter {
            Some(jitter) => jitter.apply(delay),
            None => delay,
        }
    }
}

/// The default reconnect policy: a schedule (default [`RECONNECT_SCHEDULE_MS`]) with optional
/// jitter, that stops when retrying cannot help:
///
/// - the server refused the upgrade with an HTTP client error (4xx, except 408 and 429), such as
///   403 for bad credentials;
/// - the TLS handshake failed ([`DisconnectReason::Tls`]): a certificate the client does not
///   trust stays untrusted ([`stop_on_tls_error`](Self::stop_on_tls_error) turns this off).
///
/// A close with code 1000 from the server is reported and, by default, followed by a reconnect,
/// as phoenix.js 1.8 does (servers and proxies close idle sockets with 1000 too);
/// [`stop_on_normal_close`](Self::stop_on_normal_close) makes it final instead.
///
/// ```
/// use std::time::Duration;
/// use phoenix_channels::backoff::{ReconnectPolicy, ReconnectSchedule};
/// use phoenix_channels::DisconnectReason;
///
/// let policy = ReconnectSchedule::default();
/// let io = DisconnectReason::Io("connection reset".into());
/// assert_eq!(policy.reconnect_delay(1, &io), Some(Duration::from_millis(10)));
/// assert_eq!(policy.reconnect_delay(1, &DisconnectReason::Http { status: 403 }), None);
/// assert_eq!(policy.reconnect_delay(1, &DisconnectReason::Tls("UnknownIssuer".into())), None);
///
/// let keep_trying = ReconnectSchedule::default().stop_on_http_client_error(false);
/// assert!(keep_trying.reconnect_delay(1, &DisconnectReason::Http { status: 403 }).is_some());
/// ```
#[derive(Debug)]
pub struct ReconnectSchedule {
    delays: Delays,
    stop_on_http_client_error: bool,
    stop_on_normal_close: bool,
    stop_on_tls_error: bool,
}

impl Default for ReconnectSchedule {
    fn default() -> Self {
        Self {
            delays: Delays::new(&RECONNECT_SCHEDULE_MS),
            stop_on_http_client_error: true,
            stop_on_normal_close: false,
            stop_on_tls_error: true,
        }
    }
}

impl ReconnectSchedule {
    /// Uses these delays in milliseconds; the last one repeats.
    pub fn with_schedule_ms(mut self, schedule_ms: impl Into<Vec<u64>>) -> Self {
        self.delays.schedule_ms = schedule_ms.into();
        self
    }

    /// Spreads each delay by up to ± `fraction` of it, with a generator seeded by `seed`.
    pub fn with_jitter(mut self, fraction: f64, seed: u64) -> Self {
        self.delays.jitter(fraction, seed);
        self
    }

    /// Whether an HTTP 4xx answer to the upgrade (except 408 and 429) stops reconnecting.
    pub fn stop_on_http_client_error(mut self, stop: bool) -> Self {
        self.stop_on_http_client_error = stop;
        self
    }

    /// Whether a failed TLS handshake ([`DisconnectReason::Tls`]) stops reconnecting
    /// (default: it does).
    pub fn stop_on_tls_error(mut self, stop: bool) -> Self {
        self.stop_on_tls_error = stop;
        self
    }

    /// Whether a close with code 1000 from the server stops reconnecting.
    pub fn stop_on_normal_close(mut self, stop: bool) -> Self {
        self.stop_on_normal_close = stop;
        self
    }
}

impl ReconnectPolicy for ReconnectSchedule {
    fn reconnect_delay(&self, attempt: u32, reason: &DisconnectReason) -> Option<Duration> {
        match reason {
            DisconnectReason::Http { status }
                if self.stop_on_http_client_error
                    && (400..500).contains(status)
                    && *status != 408
                    && *status != 429 =>
            {
                return None;
            }
            DisconnectReason::Closed { code: 1000, .. } if self.stop_on_normal_close => {
                return None;
            }
            DisconnectReason::Tls(_) if self.stop_on_tls_error => return None,
            _ => {}
        }
        Some(self.delays.delay(attempt))
    }
}

/// The default rejoin policy: a schedule (default [`REJOIN_SCHEDULE_MS`]), optionally stopping
/// when the server rejects the join with one of the chosen reasons (the `reason` field of the
/// error response).
///
/// ```
/// use std::time::Duration;
/// use phoenix_channels::backoff::{RejoinPolicy, RejoinSchedule};
/// use phoenix_channels::{Payload, RejoinCause};
///
/// let policy = RejoinSchedule::default().stop_on_reasons(["unauthorized"]);
/// let denied = RejoinCause::Rejected(Payload::json(&serde_json::json!({"reason": "unauthorized"})).unwrap());
/// assert_eq!(policy.rejoin_delay(1, &denied), None);
/// assert_eq!(policy.rejoin_delay(3, &RejoinCause::Timeout), Some(Duration::from_millis(5000)));
/// ```
#[derive(Debug)]
pub struct RejoinSchedule {
    delays: Delays,
    stop_reasons: Vec<String>,
}

impl Default for RejoinSchedule {
    fn default() -> Self {
        Self {
            delays: Delays::new(&REJOIN_SCHEDULE_MS),
            stop_reasons: Vec::new(),
        }
    }
}

impl RejoinSchedule {
    /// Uses these delays in milliseconds; the last one repeats.
    pub fn with_schedule_ms(mut self, schedule_ms: impl Into<Vec<u64>>) -> Self {
        self.delays.schedule_ms = schedule_ms.into();
        self
    }

    /// Stops rejoining when a join is rejected with one of these reasons.
    pub fn stop_on_reasons<I, S>(mut self, reasons: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stop_reasons
            .extend(reasons.into_iter().map(Into::into));
        self
    }

    /// Spreads each delay by up to ± `fraction` of it, with a generator seeded by `seed`.
    pub fn with_jitter(mut self, fraction: f64, seed: u64) -> Self {
        self.delays.jitter(fraction, seed);
        self
    }
}

impl RejoinPolicy for RejoinSchedule {
    fn rejoin_delay(&self, attempt: u32, cause: &RejoinCause) -> Option<Duration> {
        if let Some(reason) = cause.reason()
            && self.stop_reasons.contains(&reason)
        {
            return None;
        }
        Some(self.delays.delay(attempt))
    }
}

/// Adapters from the `backoff` crate (feature `backoff`).
///
/// The `backoff` crate is unmaintained (RUSTSEC-2025-0012); it is offered only for users who
/// already configure their retries with it.
#[cfg(feature = "backoff")]
pub mod external {
    use std::fmt;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::{ReconnectPolicy, RejoinPolicy};
    use crate::proto::DisconnectReason;
    use crate::proto::channel::RejoinCause;

    /// A reconnect or rejoin policy driven by any `backoff::backoff::Backoff`: it is reset on
    /// the first attempt of each series and stops when the backoff gives up.
    ///
    /// ```
    /// use phoenix_channels::backoff::external::FromBackoff;
    /// use phoenix_channels::backoff::ReconnectPolicy;
    /// use phoenix_channels::DisconnectReason;
    ///
    /// let policy = FromBackoff::new(backoff::ExponentialBackoff::default());
    /// assert!(policy.reconnect_delay(1, &DisconnectReason::Io("reset".into())).is_some());
    /// ```
    pub struct FromBackoff<B>(Mutex<B>);

    impl<B> FromBackoff<B> {
        /// Wraps a backoff.
        pub fn new(backoff: B) -> Self {
            Self(Mutex::new(backoff))
        }
    }

    impl<B> fmt::Debug for FromBackoff<B> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("FromBackoff(..)")
        }
    }

    impl<B: backoff::backoff::Backoff + Send> FromBackoff<B> {
        fn next(&self, attempt: u32) -> Option<Duration> {
            let mut backoff = match self.0.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            if attempt <= 1 {
                backoff.reset();
            }
            backoff.next_backoff()
        }
    }

    impl<B: backoff::backoff::Backoff + Send> ReconnectPolicy for FromBackoff<B> {
        fn reconnect_delay(&self, attempt: u32, _reason: &DisconnectReason) -> Option<Duration> {
            self.next(attempt)
        }
    }

    impl<B: backoff::backoff::Backoff + Send> RejoinPolicy for FromBackoff<B> {
        fn rejoin_delay(&self, attempt: u32, _cause: &RejoinCause) -> Option<Duration> {
            self.next(attempt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::Payload;

    #[test]
    fn reconnect_schedule_matches_phoenix_js() {
        let got: Vec<u64> = (1..=12)
            .map(|a| schedule_delay(&RECONNECT_SCHEDULE_MS, a).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [
                10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000, 5000
            ]
        );
        assert_eq!(
            schedule_delay(&RECONNECT_SCHEDULE_MS, 0),
            Duration::from_millis(10)
        );
        assert_eq!(schedule_delay(&[], 3), Duration::ZERO);
    }

    #[test]
    fn rejoin_schedule_matches_phoenix_js() {
        let got: Vec<u64> = (1..=6)
            .map(|a| schedule_delay(&REJOIN_SCHEDULE_MS, a).as_millis() as u64)
            .collect();
        assert_eq!(got, [1000, 2000, 5000, 10000, 10000, 10000]);
    }

    #[test]
    fn jitter_stays_in_range_and_is_reproducible() {
        let d = Duration::from_millis(1000);
        assert_eq!(jittered(d, 0.5, 0.5), d);
        assert_eq!(jittered(d, 0.5, 0.0), Duration::from_millis(500));
        assert_eq!(jittered(d, 2.0, 1.0), Duration::from_millis(2000));
        let a = ReconnectSchedule::default().with_jitter(0.2, 7);
        let b = ReconnectSchedule::default().with_jitter(0.2, 7);
        let io = DisconnectReason::Io("x".into());
        for attempt in 1..20 {
            let x = a.reconnect_delay(attempt, &io).unwrap();
            assert_eq!(Some(x), b.reconnect_delay(attempt, &io));
            let base = schedule_delay(&RECONNECT_SCHEDULE_MS, attempt);
            assert!(
                x >= base.mul_f64(0.8) && x <= base.mul_f64(1.2),
                "{x:?} {base:?}"
            );
        }
    }

    #[test]
    fn default_reconnect_stops_on_client_errors_and_normal_close_is_a_choice() {
        let p = ReconnectSchedule::default();
        for status in [400, 401, 403, 404] {
            assert_eq!(
                p.reconnect_delay(1, &DisconnectReason::Http { status }),
                None
            );
        }
        for status in [408, 429, 500, 503] {
            assert!(
                p.reconnect_delay(1, &DisconnectReason::Http { status })
                    .is_some()
            );
        }
        let normal = DisconnectReason::Closed {
            code: 1000,
            reason: String::new(),
        };
        assert!(p.reconnect_delay(1, &normal).is_some());
        let away = DisconnectReason::Closed {
            code: 1001,
            reason: String::new(),
        };
        assert!(p.reconnect_delay(1, &away).is_some());
        assert!(
            p.reconnect_delay(1, &DisconnectReason::HeartbeatTimeout)
                .is_some()
        );
        let p = p.stop_on_normal_close(true);
        assert_eq!(p.reconnect_delay(1, &normal), None);
        assert!(p.reconnect_delay(1, &away).is_some());
    }

    #[test]
    fn rejoin_policy_stops_only_on_chosen_reasons() {
        let p = RejoinSchedule::default().stop_on_reasons(["unauthorized", "store_not_allowed"]);
        let rejected = |reason: &str| {
            RejoinCause::Rejected(Payload::json(&serde_json::json!({ "reason": reason })).unwrap())
        };
        assert_eq!(p.rejoin_delay(1, &rejected("unauthorized")), None);
        assert_eq!(
            p.rejoin_delay(1, &rejected("rejected")),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            p.rejoin_delay(2, &RejoinCause::Crashed),
            Some(Duration::from_millis(2000))
        );
        let p = RejoinSchedule::default().with_schedule_ms([5]);
        assert_eq!(
            p.rejoin_delay(9, &RejoinCause::Timeout),
            Some(Duration::from_millis(5))
        );
    }
}
