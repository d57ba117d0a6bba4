//! Every PostgreSQL advisory lock key tokend takes, in one place, so no two
//! uses ever share a key (a shared key silently couples unrelated work: the
//! pruner once shared the event-order key, so pruning skipped whenever any
//! event was being written, and every event write waited for a prune batch).
//! All are transaction-scoped (`pg_*advisory_xact_lock`): a replica that dies
//! releases its locks with its connection, so nothing is left to clean up.
//!
//! A key, once shipped, is never reused for something else: during a rolling
//! upgrade old and new replicas must agree on what each key means.

/// `Store::migrate`: replicas starting together apply migrations one at a time.
pub const MIGRATE: i64 = 7_364_916_281;
/// `watch::order_events`: event ids become visible in id order.
pub const EVENT_ORDER: i64 = 7_364_916_282;
/// `audit`: one replica prunes the audit trail at a time (try-lock per batch).
/// (Before migration 000008 it shared `EVENT_ORDER`'s key.)
pub const PRUNE: i64 = 7_364_916_283;
/// `sweep`: one replica sweeps at a time (try-lock per batch).
pub const SWEEP: i64 = 7_364_916_284;

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_distinct() {
        let mut keys = [
            super::MIGRATE,
            super::EVENT_ORDER,
            super::PRUNE,
            super::SWEEP,
        ];
        keys.sort_unstable();
        assert!(keys.windows(2).all(|w| w[0] != w[1]), "{keys:?}");
    }
}
