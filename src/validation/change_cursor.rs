//! Where the change-log follower stands in the log: the highest sequence
//! number read, and the numbers skipped below it that may still appear.
//!
//! PostgreSQL hands out sequence numbers when a transaction inserts, not when
//! it commits, so a number below the highest seen can commit later. Each
//! skipped number is remembered and asked for again on every poll, until it
//! appears or `lookback` passes (by then its transaction was rolled back).
//! A pure type: no store, no clock of its own.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Skipped sequence numbers remembered at most (a burst of rollbacks must not
/// grow memory without bound).
pub const MAX_GAPS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ChangeCursor {
    high: i64,
    gaps: BTreeMap<i64, Instant>,
}

impl ChangeCursor {
    /// Starts after `high`: the log's end when following begins.
    pub fn new(high: i64) -> Self {
        Self {
            high,
            gaps: BTreeMap::new(),
        }
    }

    /// The highest sequence number read so far.
    pub fn high(&self) -> i64 {
        self.high
    }

    /// Numbers below `high` not seen yet, to ask for again.
    pub fn gaps(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// A row read from the log: true if it is news (above `high`, or a gap
    /// filled); numbers skipped on the way up become gaps, seen `now`.
    pub fn accept(&mut self, seq: i64, now: Instant) -> bool {
        if seq > self.high {
            let room = MAX_GAPS.saturating_sub(self.gaps.len());
            for skipped in ((self.high + 1)..seq).take(room) {
                self.gaps.insert(skipped, now);
            }
            self.high = seq;
            true
        } else {
            self.gaps.remove(&seq).is_some()
        }
    }

    /// Forgets gaps older than `lookback`: their transactions rolled back.
    pub fn expire(&mut self, lookback: Duration, now: Instant) {
        self.gaps
            .retain(|_, at| now.saturating_duration_since(*at) < lookback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_rows_are_news_once() {
        let now = Instant::now();
        let mut c = ChangeCursor::new(10);
        assert!(c.accept(11, now));
        assert!(c.accept(12, now));
        assert!(!c.accept(12, now), "seen");
        assert!(!c.accept(5, now), "before the start");
        assert_eq!(c.high(), 12);
        assert!(c.gaps().is_empty());
    }

    #[test]
    fn a_skipped_number_is_asked_for_until_it_commits() {
        let now = Instant::now();
        let mut c = ChangeCursor::new(0);
        assert!(c.accept(1, now));
        assert!(c.accept(4, now));
        assert_eq!(c.gaps(), vec![2, 3]);
        assert!(c.accept(3, now), "a late commit is news");
        assert_eq!(c.gaps(), vec![2]);
        assert!(!c.accept(3, now), "once");
        assert_eq!(c.high(), 4);
    }

    #[test]
    fn gaps_expire_after_the_lookback() {
        let start = Instant::now();
        let mut c = ChangeCursor::new(0);
        c.accept(3, start);
        let later = start + Duration::from_secs(5);
        c.accept(6, later);
        assert_eq!(c.gaps(), vec![1, 2, 4, 5]);
        c.expire(Duration::from_secs(3), later + Duration::from_secs(1));
        assert_eq!(c.gaps(), vec![4, 5], "only the old ones go");
        c.expire(Duration::from_secs(3), later + Duration::from_secs(3));
        assert!(c.gaps().is_empty());
        assert!(!c.accept(4, later), "an expired gap is no longer news");
    }

    #[test]
    fn gaps_are_bounded() {
        let now = Instant::now();
        let mut c = ChangeCursor::new(0);
        assert!(c.accept(1_000_000, now));
        assert_eq!(c.gaps().len(), MAX_GAPS);
        assert_eq!(c.high(), 1_000_000);
    }
}
