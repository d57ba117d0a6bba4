//! A SQLite store as a file, for `tokend backup` and `tokend restore`: the
//! online backup (`VACUUM INTO`), the checks that a file is a sound tokend
//! store, and whether some process (a server) has a file open.
//!
//! `VACUUM INTO` copies one read transaction's snapshot into a new, compact
//! file. With the store in WAL mode a reader neither blocks nor is blocked by
//! the server's writers, so a backup runs while the server serves and writes;
//! Validate cache hits do not touch the database at all.
//!
//! PostgreSQL stores are backed up with PostgreSQL's own tools (README,
//! "Day two"); these functions refuse their URLs.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sea_orm::sqlx::{
    self, ConnectOptions as _, Connection as _,
    sqlite::{SqliteConnectOptions, SqliteConnection, SqliteLockingMode},
};

use super::migration::Migrator;
use crate::error::{Error, Result, StoreFault};

/// A SQLite store file.
#[derive(Debug, Clone)]
pub struct SqliteFile {
    path: PathBuf,
}

/// What a store file holds, read after checking it is sound.
#[derive(Debug, Clone)]
pub struct StoreFileInfo {
    /// Migrations applied to it.
    pub migrations: Vec<String>,
    /// Migrations of this release it lacks (`serve` applies them at start).
    pub pending: Vec<String>,
    pub tokens: u64,
    /// Tokens not revoked.
    pub live_tokens: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Where backups and restores point people whose store is PostgreSQL.
pub const POSTGRES_BACKUP_HINT: &str = "on PostgreSQL, back up with pg_dump / pg_restore or point-in-time recovery \
     (continuous WAL archiving), as README.md \"Day two\" describes; `tokend backup` and `tokend restore` \
     work on SQLite stores";

fn sqlite_error(what: &str, path: &Path, e: sqlx::Error) -> Error {
    Error::Unavailable(
        StoreFault::Unreachable,
        format!("{what} {}: {e}", path.display()),
    )
}

impl SqliteFile {
    /// The file a `sqlite:` database URL names; `None` for any other URL.
    pub fn from_url(url: &str) -> Result<Option<Self>> {
        if !url.starts_with("sqlite:") {
            return Ok(None);
        }
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(Error::invalid(
                "database_url",
                "an in-memory SQLite database has no file to back up or restore",
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| Error::invalid("database_url", "not a valid sqlite: URL"))?;
        Ok(Some(Self::at(options.get_filename())))
    }

    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// The files SQLite keeps beside the database: a stale one next to a
    /// replaced database file would be replayed into it.
    pub fn companions(&self) -> Vec<PathBuf> {
        ["-wal", "-shm", "-journal"]
            .iter()
            .map(|suffix| {
                let mut name = self.path.as_os_str().to_owned();
                name.push(suffix);
                PathBuf::from(name)
            })
            .collect()
    }

    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5))
            .disable_statement_logging()
    }

    async fn connect(&self, options: SqliteConnectOptions) -> Result<SqliteConnection> {
        if !self.exists() {
            return Err(Error::NotFound(format!(
                "no SQLite store at {}",
                self.path.display()
            )));
        }
        SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| sqlite_error("cannot open", &self.path, e))
    }

    /// Writes a consistent copy of the store into `dest`, which must not
    /// exist, while other connections keep reading and writing.
    pub async fn backup_into(&self, dest: &Path) -> Result<()> {
        let dest_text = dest.to_str().ok_or_else(|| {
            Error::invalid("to", "the backup path must be valid UTF-8 for SQLite")
        })?;
        let mut conn = self.connect(self.options()).await?;
        let result = sqlx::query("VACUUM INTO ?")
            .bind(dest_text)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
            .map(|_| ())
            .map_err(|e| sqlite_error("backup of", &self.path, e))
    }

    /// Checks that the file is a sound tokend store (SQLite's
    /// `integrity_check`, a migrations table, no migration unknown to this
    /// release) and counts what it holds. Opens it read-only.
    pub async fn inspect(&self) -> Result<StoreFileInfo> {
        use sea_orm_migration::MigratorTrait;
        let mut conn = self.connect(self.options().read_only(true)).await?;
        let result = async {
            let fail = |e| sqlite_error("cannot read", &self.path, e);
            let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_all(&mut conn)
                .await
                .map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "{} is not a readable SQLite database: {e}",
                        self.path.display()
                    ))
                })?;
            if problems != ["ok"] {
                return Err(Error::FailedPrecondition(format!(
                    "{} fails SQLite's integrity check: {}",
                    self.path.display(),
                    problems.join("; ")
                )));
            }
            let has_migrations: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
            )
            .fetch_one(&mut conn)
            .await
            .map_err(fail)?;
            if has_migrations == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "{} is a SQLite database but not a tokend store (no migrations table)",
                    self.path.display()
                )));
            }
            let migrations: Vec<String> =
                sqlx::query_scalar("SELECT version FROM seaql_migrations ORDER BY version")
                    .fetch_all(&mut conn)
                    .await
                    .map_err(fail)?;
            let known: Vec<String> = Migrator::migrations()
                .iter()
                .map(|m| m.name().to_owned())
                .collect();
            if let Some(unknown) = migrations.iter().find(|m| !known.contains(m)) {
                return Err(Error::FailedPrecondition(format!(
                    "{} was written by a newer tokend (migration {unknown} is unknown to this one)",
                    self.path.display()
                )));
            }
            let pending = known
                .into_iter()
                .filter(|m| !migrations.contains(m))
                .collect();
            let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
            let tokens = count("SELECT COUNT(*) FROM tokens")
                .fetch_one(&mut conn)
                .await
                .map_err(fail)?;
            let live_tokens = count("SELECT COUNT(*) FROM tokens WHERE state <> 'revoked'")
                .fetch_one(&mut conn)
                .await
                .map_err(fail)?;
            let events = count("SELECT COUNT(*) FROM token_events")
                .fetch_one(&mut conn)
                .await
                .map_err(fail)?;
            Ok(StoreFileInfo {
                migrations,
                pending,
                tokens: tokens.max(0) as u64,
                live_tokens: live_tokens.max(0) as u64,
                events: events.max(0) as u64,
                bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            })
        }
        .await;
        let _ = conn.close().await;
        result
    }

    /// Whether the store holds any token or audit event (a store that was
    /// only migrated holds neither).
    pub async fn holds_data(&self) -> Result<bool> {
        let mut conn = self.connect(self.options().read_only(true)).await?;
        let result = sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tokens')",
        )
        .fetch_one(&mut conn)
        .await;
        let result = match result {
            Ok(0) => Ok(false),
            Ok(_) => sqlx::query_scalar::<_, i64>(
                "SELECT EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM token_events)",
            )
            .fetch_one(&mut conn)
            .await
            .map(|n| n != 0)
            .map_err(|e| sqlite_error("cannot read", &self.path, e)),
            Err(e) => Err(sqlite_error("cannot read", &self.path, e)),
        };
        let _ = conn.close().await;
        result
    }

    /// Whether another connection has the database open, e.g. a running
    /// server: SQLite refuses an exclusive lock then. (A server's pool keeps
    /// at least one connection open, and in WAL mode every open connection
    /// holds a shared lock.) The probe takes the lock only for an instant.
    pub async fn in_use(&self) -> Result<bool> {
        let options = self
            .options()
            .locking_mode(SqliteLockingMode::Exclusive)
            .busy_timeout(Duration::from_millis(200));
        let mut conn = match SqliteConnection::connect_with(&options).await {
            Ok(conn) => conn,
            Err(e) if is_locked(&e) => return Ok(true),
            Err(e) => return Err(sqlite_error("cannot open", &self.path, e)),
        };
        let locked = match sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut conn).await {
            Ok(_) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
                false
            }
            Err(e) if is_locked(&e) => true,
            Err(e) => {
                let _ = conn.close().await;
                return Err(sqlite_error("cannot lock", &self.path, e));
            }
        };
        let _ = conn.close().await;
        Ok(locked)
    }
}

fn is_locked(e: &sqlx::Error) -> bool {
    let text = e.to_string();
    text.contains("database is locked") || text.contains("database table is locked")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_name_files_or_nothing() {
        let f = SqliteFile::from_url("sqlite://data/tokend.db?mode=rwc")
            .unwrap()
            .unwrap();
        assert_eq!(f.path(), Path::new("data/tokend.db"));
        assert!(SqliteFile::from_url("postgres://u@h/db").unwrap().is_none());
        assert!(SqliteFile::from_url("sqlite::memory:").is_err());
        assert_eq!(f.companions()[0], PathBuf::from("data/tokend.db-wal"));
    }
}
