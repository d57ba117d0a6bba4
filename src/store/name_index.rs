//! SQLite: folding the name index's pending list (migration 000009) into the
//! FTS5 index, in the background.
//!
//! A rename records its token in `tokens_name_fts_pending`; search reads the
//! list beside the index, so it is exact whatever the list holds. Folding
//! only keeps the list short, and it writes FTS5's per-transaction records
//! once for every rename it folds rather than once per rename. The server
//! folds [`FOLD_DELAY`] after a rename of its own (so a busy second's
//! renames go in one fold) and once at start-up, for what an earlier process
//! or another writer left pending; another process's renames while it runs
//! wait for its next rename. PostgreSQL has no list: every call here is a
//! no-op.

use std::{sync::Arc, time::Duration};

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::{error::Result, telemetry::metrics};

/// Pending tokens folded per transaction, so a writer waits behind at most
/// one fold's worth of FTS work (a few milliseconds).
pub const FOLD_BATCH: u64 = 2000;
/// How long after a rename the fold waits for more of them.
pub const FOLD_DELAY: Duration = Duration::from_secs(1);

/// One batch: the index forgets the names it holds for the batch's tokens,
/// learns their current names (a token since deleted has none), and the
/// batch leaves the list, all in one transaction.
const FOLD: [&str; 3] = [
    "INSERT INTO tokens_name_fts (tokens_name_fts, rowid, name)
     SELECT 'delete', token_rowid, indexed_name FROM tokens_name_fts_pending
     WHERE token_rowid IN (SELECT token_rowid FROM tokens_name_fts_pending ORDER BY token_rowid LIMIT ?)
       AND indexed_name IS NOT NULL",
    "INSERT INTO tokens_name_fts (rowid, name)
     SELECT t.rowid, t.name FROM tokens_name_fts_pending AS p JOIN tokens AS t ON t.rowid = p.token_rowid
     WHERE p.token_rowid IN (SELECT token_rowid FROM tokens_name_fts_pending ORDER BY token_rowid LIMIT ?)",
    "DELETE FROM tokens_name_fts_pending
     WHERE token_rowid IN (SELECT token_rowid FROM tokens_name_fts_pending ORDER BY token_rowid LIMIT ?)",
];

impl Store {
    /// Folds up to [`FOLD_BATCH`] pending tokens into the name index and
    /// returns how many it folded (0 on PostgreSQL).
    pub async fn fold_name_index(&self) -> Result<u64> {
        if self.backend() != DbBackend::Sqlite {
            return Ok(0);
        }
        self.bounded(async {
            let _serialised = self.write_guard().await;
            let started = metrics::timer();
            let txn = self.db.begin().await?;
            let mut folded = 0;
            for sql in FOLD {
                let statement = Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    sql,
                    [i64::try_from(FOLD_BATCH).unwrap_or(i64::MAX).into()],
                );
                folded = txn.execute_raw(statement).await?.rows_affected();
            }
            txn.commit().await?;
            metrics::name_index_folded(started, folded);
            Ok(folded)
        })
        .await
    }

    /// Folds until nothing is pending; returns how many were folded.
    pub async fn fold_all_of_name_index(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let folded = self.fold_name_index().await?;
            total += folded;
            if folded < FOLD_BATCH {
                return Ok(total);
            }
        }
    }

    /// How many tokens the name index has pending (0 on PostgreSQL).
    pub async fn name_index_pending(&self) -> Result<u64> {
        if self.backend() != DbBackend::Sqlite {
            return Ok(0);
        }
        self.bounded(async {
            let statement = Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM tokens_name_fts_pending",
            );
            let n: i64 = match self.db.query_one_raw(statement).await? {
                Some(row) => row.try_get_by_index(0)?,
                None => 0,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Called after a local commit that renamed a token.
    pub(super) fn name_index_grew(&self) {
        if self.backend() == DbBackend::Sqlite {
            self.name_index_dirty.notify_one();
        }
    }

    /// The server's folder: [`FOLD_DELAY`] after each rename, folds until
    /// nothing is pending, until `stop`. A failed fold is retried after the
    /// next delay (the list stays correct meanwhile; it only grows).
    pub async fn run_name_index_folder(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        if self.backend() != DbBackend::Sqlite {
            return Ok(());
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.name_index_dirty.notified() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(FOLD_DELAY) => {}
            }
            match self.fold_all_of_name_index().await {
                Ok(folded) => tracing::debug!(folded, "name index: folded the pending renames"),
                Err(e) => {
                    tracing::warn!(error = %e, "name index: fold failed; retrying");
                    self.name_index_dirty.notify_one();
                }
            }
        }
    }
}
