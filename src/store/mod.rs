//! Persistence: sea-orm entities, migrations and queries, on SQLite (embedded
//! default) or PostgreSQL (production, many replicas).
//!
//! - `entities/`: one sea-orm entity per table.
//! - `migration/`: schema migrations.
//! - `convert`: entity models <-> domain types.
//! - `tokens`: token reads, the transactional write paths and Search.
//! - `events`: the audit-trail listing.
//! - `changes`: the change log (+ NOTIFY) that keeps replica caches coherent.
//! - `audit`: audit retention (batched pruning) and export.
//! - `copy`: store-to-store copy with verification (`tokend move`).
//! - `sqlite_file`: SQLite files: online backup, soundness checks (`tokend backup`/`restore`).
//! - `seed`: bulk loading for benchmarks.
//!
//! Every mutation commits in one transaction together with its audit event.
//! Every call is bounded by the configured store timeout, so an unreachable
//! database gives a prompt `UNAVAILABLE`, never a hang.

mod audit;
mod changes;
mod convert;
pub mod copy;
pub mod entities;
mod events;
pub mod migration;
mod seed;
pub mod sqlite_file;
mod tokens;

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

pub use audit::EventRange;
pub use changes::{CHANNEL as CHANGE_CHANNEL, ChangeRow};
pub use events::EventQuery;
pub use tokens::{Change, SearchQuery};

use crate::error::{Error, Result};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path?mode=rwc` or `postgres://...`. Never logged: it may hold a password.
    pub url: String,
    pub max_connections: u32,
    /// Upper bound for acquiring a connection and for each store call.
    pub timeout: Duration,
}

pub struct Store {
    db: DatabaseConnection,
    /// Kept for the LISTEN connection; never logged (it may hold a password).
    url: String,
    /// Random id of this process, recorded with each change it makes.
    instance: String,
    /// SQLite allows one writer at a time; serialising our write transactions
    /// in-process turns would-be `SQLITE_BUSY` upgrades into a short wait.
    /// PostgreSQL uses row locks instead.
    write_lock: Option<tokio::sync::Mutex<()>>,
    timeout: Duration,
    statements: Arc<AtomicU64>,
}

impl Store {
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

        let mut options = ConnectOptions::new(config.url.clone());
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
            });
        let mut db = tokio::time::timeout(config.timeout, Database::connect(options))
            .await
            .map_err(|_| Error::Unavailable("timed out connecting to the database".into()))?
            .map_err(|e| Error::Unavailable(format!("cannot connect to the database: {e}")))?;

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
        })
    }

    /// Applies pending migrations. On PostgreSQL, replicas starting together
    /// serialise on an advisory lock held by the migrating transaction, so
    /// exactly one applies each migration and the others then find nothing to do.
    pub async fn migrate(&self) -> Result<()> {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        if self.backend() == DbBackend::Postgres {
            let txn = self.db.begin().await?;
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7364916281)")
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

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub async fn close(self) {
        if let Err(e) = self.db.close().await {
            tracing::warn!(error = %e, "closing the database pool");
        }
    }

    /// Runs one store call under the store timeout.
    async fn bounded<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "store call exceeded {:?}",
                self.timeout
            ))),
        }
    }

    async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}
