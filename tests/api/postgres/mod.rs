//! PostgreSQL production mode: many stateless replicas on one database.
//!
//! Every test needs `TOKEND_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`): without it a test fails when
//! `CI` is set and otherwise says on stderr that it did not run. Each test
//! holds `helpers::PG_LOCK.read()` for its whole body.
//!
//! Replicas are several `helpers::start` apps in this process on one database:
//! separate pools, caches, LISTEN connections and ports. Latency figures are
//! printed (run with `--nocapture` to see them).
//!
//! Tests that stop the PostgreSQL server or read its log files live in the
//! `pg_outage` test target (`tests/pg_outage/`), which shares `harness` and
//! `trial` with these.

pub(crate) mod harness;
pub(crate) mod trial;

mod basics;
mod indexes;
mod ip_binding;
mod propagation;
mod slow_commit;
mod sweeper;
mod watch_processes;

pub(crate) use harness::*;
