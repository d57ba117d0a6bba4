//! The hot path's wall clock: whole microseconds since the Unix epoch.
//!
//! Validate reads the time on every call (twice: once for the caller's
//! credential, once for the token) to check expiries and the rotate grace.
//! `chrono::Utc::now()` followed by `trunc_subsecs(6)` does calendar arithmetic
//! for both steps, several hundred instructions a call. Here it is a clock read
//! and a multiply, and expiries are compared as integers. The result is
//! converted to a `DateTime` only where one is stored (the last-used batch)
//! or read back (the miss path).
//!
//! `Clock` is the one injectable source of time: the system clock in
//! production, a manual clock in unit tests, so TTLs (negative cache,
//! unknown ids, the failure window) are tested by advancing it instead of
//! sleeping. It gives wall time (`now`, for expiries and stored instants)
//! and monotonic time (`elapsed`, for TTLs, which must not jump when the
//! wall clock is set).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Utc};

/// A point in time, in microseconds since 1970-01-01T00:00:00Z: the
/// resolution the store keeps timestamps at. Always within the range a
/// `DateTime<Utc>` can hold (every constructor clamps to it), so converting
/// back is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMicros(i64);

impl UnixMicros {
    /// The range of `DateTime<Utc>`, in microseconds.
    fn clamped(micros: i64) -> Self {
        let (min, max) = (
            DateTime::<Utc>::MIN_UTC.timestamp_micros(),
            DateTime::<Utc>::MAX_UTC.timestamp_micros(),
        );
        Self(micros.clamp(min, max))
    }

    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self::clamped(
                i64::try_from(d.as_secs())
                    .unwrap_or(i64::MAX / 1_000_000)
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(d.subsec_micros())),
            ),
            // A clock set before 1970: every expiry is still in the future.
            Err(_) => Self(0),
        }
    }

    /// `t`, truncated to whole microseconds.
    pub fn of(t: DateTime<Utc>) -> Self {
        Self(t.timestamp_micros())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        // In range by construction (see the type); were it not, the nearest
        // representable instant, never the epoch.
        DateTime::from_timestamp_micros(self.0).unwrap_or(if self.0 < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }

    /// Whole seconds since the epoch (rounded down).
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
}

/// A point on the monotonic timeline of a `Clock`, in microseconds since the
/// clock's origin: for TTLs, which must not move when the wall clock is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Monotonic(i64);

impl Monotonic {
    /// The time from `self` to `later` (zero if `later` is earlier).
    pub fn until(self, later: Self) -> Duration {
        Duration::from_micros(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
}

/// Where the system clock's monotonic timeline starts (the first read).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The one source of time: the system clock, or (in tests) a manual clock
/// that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

#[derive(Debug)]
struct Manual {
    wall: AtomicI64,
    monotonic: AtomicI64,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock frozen at `at` until `advance` moves it.
    pub fn manual(at: UnixMicros) -> Self {
        Self {
            manual: Some(Arc::new(Manual {
                wall: AtomicI64::new(at.0),
                monotonic: AtomicI64::new(0),
            })),
        }
    }

    /// Moves a manual clock (wall and monotonic time) forward by `by`; the
    /// system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            let wall = m.wall.load(Ordering::Relaxed).saturating_add(micros);
            m.wall.store(UnixMicros::clamped(wall).0, Ordering::Relaxed);
            m.monotonic.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Wall time, in whole microseconds.
    #[inline]
    pub fn now(&self) -> UnixMicros {
        match &self.manual {
            None => UnixMicros::now(),
            Some(m) => UnixMicros(m.wall.load(Ordering::Relaxed)),
        }
    }

    /// Wall time at the precision the store keeps (microseconds), so that
    /// page cursors and comparisons round-trip exactly.
    pub fn now_utc(&self) -> DateTime<Utc> {
        self.now().to_datetime()
    }

    /// Monotonic time, for TTLs.
    pub fn elapsed(&self) -> Monotonic {
        match &self.manual {
            None => Monotonic(i64::try_from(ORIGIN.elapsed().as_micros()).unwrap_or(i64::MAX)),
            Some(m) => Monotonic(m.monotonic.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::{SubsecRound, TimeZone};

    use super::*;

    #[test]
    fn agrees_with_chrono() {
        let before = Utc::now().trunc_subsecs(6);
        let now = UnixMicros::now();
        let after = Utc::now().trunc_subsecs(6);
        assert!(UnixMicros::of(before) <= now && now <= UnixMicros::of(after));
        assert!(before <= now.to_datetime() && now.to_datetime() <= after);
    }

    #[test]
    fn stays_within_the_range_of_a_datetime() {
        let clock = Clock::manual(UnixMicros::of(DateTime::<Utc>::MAX_UTC));
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now_utc(), DateTime::<Utc>::MAX_UTC.trunc_subsecs(6));
    }

    #[test]
    fn converts_both_ways_at_microsecond_resolution() {
        let t = Utc.timestamp_opt(4_102_444_800, 123_456_789).unwrap();
        let m = UnixMicros::of(t);
        assert_eq!(m.to_datetime(), t.trunc_subsecs(6));
        assert_eq!(m.secs(), 4_102_444_800);
        let before_epoch = Utc.timestamp_opt(-1, 500_000_000).unwrap();
        assert_eq!(UnixMicros::of(before_epoch).secs(), -1);
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let start = UnixMicros::of(Utc.timestamp_opt(1_700_000_000, 0).unwrap());
        let clock = Clock::manual(start);
        let (wall, mono) = (clock.now(), clock.elapsed());
        assert_eq!(wall, start);
        assert_eq!(clock.clone().now(), start, "clones share the time");
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now().secs(), 1_700_000_001);
        assert_eq!(mono.until(clock.elapsed()), Duration::from_millis(1500));
        assert_eq!(clock.elapsed().until(mono), Duration::ZERO);
    }

    #[test]
    fn the_system_clock_ignores_advance() {
        let clock = Clock::system();
        let before = clock.now();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now().secs() < before.secs() + 60);
        let a = clock.elapsed();
        assert!(a <= clock.elapsed());
    }
}
