//! The hot path's wall clock: whole microseconds since the Unix epoch.
//!
//! Validate reads the time on every call (twice: once for the caller's
//! credential, once for the token) to check expiries and the rotate grace.
//! `chrono::Utc::now()` followed by `trunc_subsecs(6)` does calendar arithmetic
//! for both steps, several hundred instructions a call. Here it is a clock read
//! and a multiply, and expiries are compared as integers. The result is
//! converted to a `DateTime` only where one is stored (the last-used batch)
//! or read back (the miss path).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

/// A point in time, in microseconds since 1970-01-01T00:00:00Z: the
/// resolution the store keeps timestamps at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixMicros(i64);

impl UnixMicros {
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self(
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
        DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    /// Whole seconds since the epoch (rounded down).
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
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
    fn converts_both_ways_at_microsecond_resolution() {
        let t = Utc.timestamp_opt(4_102_444_800, 123_456_789).unwrap();
        let m = UnixMicros::of(t);
        assert_eq!(m.to_datetime(), t.trunc_subsecs(6));
        assert_eq!(m.secs(), 4_102_444_800);
        let before_epoch = Utc.timestamp_opt(-1, 500_000_000).unwrap();
        assert_eq!(UnixMicros::of(before_epoch).secs(), -1);
    }
}
