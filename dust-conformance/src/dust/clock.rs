//! The emulation's clock: lease expiry, `expires_at`, rate-limit windows, timestamps.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::shared::lock;

/// The clock of a Dust emulation. [`Clock::system`] (the default) reads the real time;
/// [`Clock::manual`] stands still until a test calls [`Clock::advance`], so lease expiry and
/// rate-limit windows can be tested without sleeping. Clones share the same time.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use dust_conformance::dust::Clock;
///
/// let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let later = clock.clone();
/// clock.advance(Duration::from_secs(31));
/// assert_eq!(later.now(), UNIX_EPOCH + Duration::from_secs(1_700_000_031));
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

enum Inner {
    System {
        origin: Instant,
    },
    Manual {
        start_us: i64,
        advanced_us: Mutex<i64>,
    },
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.inner {
            Inner::System { .. } => "system",
            Inner::Manual { .. } => "manual",
        };
        f.debug_struct("Clock")
            .field("kind", &kind)
            .field("now_ms", &self.wall_ms())
            .finish()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

fn to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

impl Clock {
    /// The real time; the monotonic deadlines of leases use [`Instant`].
    pub fn system() -> Self {
        Self {
            inner: Arc::new(Inner::System {
                origin: Instant::now(),
            }),
        }
    }

    /// A clock that shows `start` until advanced.
    pub fn manual(start: SystemTime) -> Self {
        Self {
            inner: Arc::new(Inner::Manual {
                start_us: to_micros(start),
                advanced_us: Mutex::new(0),
            }),
        }
    }

    /// Moves a manual clock forward (wall time and monotonic time alike). No effect on the
    /// system clock.
    pub fn advance(&self, by: Duration) {
        if let Inner::Manual { advanced_us, .. } = &*self.inner {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            let mut advanced = lock(advanced_us);
            *advanced = advanced.saturating_add(by);
        }
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        let us = self.wall_us();
        if us >= 0 {
            UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
        }
    }

    /// Wall time, microseconds since the Unix epoch.
    pub(crate) fn wall_us(&self) -> i64 {
        match &*self.inner {
            Inner::System { .. } => to_micros(SystemTime::now()),
            Inner::Manual {
                start_us,
                advanced_us,
            } => start_us.saturating_add(*lock(advanced_us)),
        }
    }

    /// Wall time, milliseconds since the Unix epoch (the `expires_at` of leases).
    pub(crate) fn wall_ms(&self) -> i64 {
        self.wall_us().div_euclid(1000)
    }

    /// Monotonic milliseconds (only differences mean anything).
    pub(crate) fn mono_ms(&self) -> i64 {
        match &*self.inner {
            Inner::System { origin } => i64::try_from(origin.elapsed().as_millis()).unwrap_or(0),
            Inner::Manual { advanced_us, .. } => lock(advanced_us).div_euclid(1000),
        }
    }
}

/// ISO 8601 in UTC with `digits` fractional digits (3: SQLite's `%f`; 6: Elixir's
/// `DateTime.to_iso8601` of `utc_now`), e.g. `2024-05-01T10:20:30.123Z`.
pub(crate) fn iso8601(us: i64, digits: u32) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = match digits {
        3 => format!(".{:03}", micros / 1000),
        6 => format!(".{micros:06}"),
        _ => String::new(),
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_sqlite_and_elixir() {
        assert_eq!(iso8601(0, 3), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(1_714_558_830_123_456, 6),
            "2024-05-01T10:20:30.123456Z"
        );
        assert_eq!(iso8601(951_782_400_000_000, 3), "2000-02-29T00:00:00.000Z");
        for days in [-800_000, -1, 0, 11_016, 19_844, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_millis(5_000));
        assert_eq!((clock.wall_ms(), clock.mono_ms()), (5_000, 0));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!((clock.wall_ms(), clock.mono_ms()), (6_500, 1_500));
    }
}
