//! Persistence: sea-orm entities, migrations and queries, on SQLite (embedded
//! default) or PostgreSQL (production, many replicas).
//!
//! - `entities/`: one sea-orm entity per table.
//! - `migration/`: schema migrations.
//! - `convert`: entity models <-> domain types.
//! - `tokens`: token reads and the transactional write paths.
//! - `search`: Search and its total, served from indexes; `fold`: its case folding.
//! - `events`: the audit-trail listing.
//! - `policies`: account policies and their audited changes.
//! - `changes`: the change log (+ NOTIFY) that keeps replica caches coherent.
//! - `import`: bulk import of tokens with their audit events.
//! - `watch`: events after an id and the commit signal (WatchEvents), in commit order.
//! - `verifiers`: verifier write-behind, per-key counts, the warm-start read.
//! - `audit`: audit retention (batched pruning) and export.
//! - `sweep`: the hygiene sweeper's queries: expiry notices (exactly once) and auto-disable.
//! - `locks`: every PostgreSQL advisory lock key, in one place.
//! - `copy`: store-to-store copy with verification (`tokend move`).
//! - `sqlite_file`: SQLite files: online backup, soundness checks (`tokend backup`/`restore`).
//!
//! Every mutation commits in one transaction together with its audit event.
//! Every call is bounded by the configured store timeout, so an unreachable
//! database gives a prompt `UNAVAILABLE`, never a hang.

mod audit;
mod changes;
mod convert;
pub mod copy;
pub mod entities;
mod error;
mod events;
pub mod fold;
mod import;
mod locks;
pub mod migration;
mod name_index;
mod policies;
mod search;
pub mod sqlite_file;
mod sweep;
mod tokens;
mod verifiers;
mod watch;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;
use secrecy::{ExposeSecret, SecretString};

pub use audit::EventRange;
pub use changes::{CHANNEL as CHANGE_CHANNEL, ChangeFeed, ChangeRow, FeedEvent};
pub use events::EventQuery;
pub use name_index::{FOLD_BATCH, FOLD_DELAY};
pub use search::{ExpiryBreach, FTS_DRIVE_MAX, SearchPlans, SearchQuery};
pub use sweep::{
    DisableBatch, NoticeRange, NoticeToken, NoticesRecorded, PolicyRules, RuleAccounts, accounts_of,
};
pub use tokens::{Change, Updated};
pub use verifiers::{Expected, KeyUsage, VerifierWrite, WarmQuery};
pub use watch::EventFilter;

use crate::{
    error::{Error, Result, StoreFault},
    telemetry::metrics,
};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path?mode=rwc` or `postgres://...`. A secret: it may hold a
    /// password, so it is never logged and `Debug` shows it redacted.
    pub url: SecretString,
    pub max_connections: u32,
    /// Upper bound for acquiring a connection and for each store call.
    pub timeout: Duration,
}

pub struct Store {
    db: DatabaseConnection,
    /// Kept for the LISTEN connection; never logged (it may hold a password).
    url: SecretString,
    /// Random id of this process, recorded with each change it makes.
    instance: String,
    /// SQLite allows one writer at a time; serialising our write transactions
    /// in-process turns would-be `SQLITE_BUSY` upgrades into a short wait.
    /// PostgreSQL uses row locks instead.
    write_lock: Option<tokio::sync::Mutex<()>>,
    timeout: Duration,
    statements: Arc<AtomicU64>,
    /// SQLite: the most name matches a Search looks up through the FTS index
    /// (`search::FTS_DRIVE_MAX` unless a test or benchmark changes it).
    fts_drive_max: AtomicU64,
    /// Bumped whenever events may have committed (`watch`).
    event_signal: tokio::sync::watch::Sender<u64>,
    /// Whether the PostgreSQL event follower was started (`watch`).
    event_follower: std::sync::atomic::AtomicBool,
    /// SQLite: a rename committed, so the name index has pending entries to
    /// fold (`name_index`).
    name_index_dirty: tokio::sync::Notify,
}

impl Store {
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

        let mut options = ConnectOptions::new(config.url.expose_secret());
        options
            .max_connections(config.max_connections)
            .min_connections(1)
            .connect_timeout(config.timeout)
            .acquire_timeout(config.timeout)
            // Statement text only (values are bound, never inlined), and only at TRACE.
            .sqlx_logging(true)
            .sqlx_logging_level(log::LevelFilter::Trace)
            .sqlx_slow_statements_logging_settings(log::LevelFilter::Warn, Duration::from_secs(1))
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    // An INSERT OR REPLACE then fires the delete triggers that
                    // keep the search indexes in step (migration 000004).
                    .pragma("recursive_triggers", "ON")
            });
        let mut db = tokio::time::timeout(config.timeout, Database::connect(options))
            .await
            .map_err(|_| {
                Error::Unavailable(
                    StoreFault::Timeout,
                    "timed out connecting to the database".into(),
                )
            })?
            .map_err(|e| {
                Error::Unavailable(
                    StoreFault::Unreachable,
                    format!("cannot connect to the database: {e}"),
                )
            })?;

        let statements = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&statements);
        db.set_metric_callback(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let write_lock =
            (db.get_database_backend() == DbBackend::Sqlite).then(|| tokio::sync::Mutex::new(()));
        let instance = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..12)
                .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                .collect()
        };
        Ok(Self {
            db,
            url: config.url.clone(),
            instance,
            write_lock,
            timeout: config.timeout,
            statements,
            fts_drive_max: AtomicU64::new(search::FTS_DRIVE_MAX),
            event_signal: tokio::sync::watch::Sender::new(0),
            event_follower: std::sync::atomic::AtomicBool::new(false),
            name_index_dirty: tokio::sync::Notify::new(),
        })
    }

    /// Applies pending migrations. On PostgreSQL, replicas starting together
    /// serialise on an advisory lock held by the migrating transaction, so
    /// exactly one applies each migration and the others then find nothing to do.
    pub async fn migrate(&self) -> Result<()> {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        if self.backend() == DbBackend::Postgres {
            let txn = self.db.begin().await?;
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [locks::MIGRATE.into()],
            ))
            .await?;
            migration::Migrator::up(&txn, None).await?;
            txn.commit().await?;
        } else {
            migration::Migrator::up(&self.db, None).await?;
        }
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.bounded(async { Ok(self.db.ping().await?) }).await
    }

    /// Number of SQL statements executed so far (for tests and metrics).
    pub fn statements_executed(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Whether other processes may share this store (PostgreSQL): replicas
    /// then follow the change log, and a missing verifier key is an error,
    /// since replicas must share one.
    pub fn is_shared(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    /// The database file of a SQLite URL (none for PostgreSQL or in-memory
    /// SQLite): where `tokend.key` is kept beside it.
    pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
        use std::str::FromStr;
        if !url.starts_with("sqlite:") {
            return None;
        }
        let options = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename();
        let text = path.to_string_lossy();
        (!text.is_empty() && !text.contains(":memory:")).then(|| path.to_path_buf())
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the database pool");
        }
    }

    /// Runs one store call under the store timeout, and records its time
    /// and any error in the store metrics.
    async fn bounded<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let started = metrics::timer();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(
                StoreFault::Timeout,
                format!("store call exceeded {:?}", self.timeout),
            )),
        };
        metrics::store_call(started, result.as_ref().err());
        result
    }

    async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}
