//! Store-to-store copy for `tokend move`: SQLite to PostgreSQL, PostgreSQL to
//! SQLite, PostgreSQL to PostgreSQL. Every table, every column, verified.
//!
//! What is copied, and how (the rule for anyone adding a table or column):
//!
//! - **Copied tables** (`Table`): every row, through the table's sea-orm
//!   entity (`entities/`). Columns are never listed here: a row is read as the
//!   entity's `Model` and written back as its `ActiveModel`, so a column added
//!   to an entity comes along with no change to this file, and sea-orm does the
//!   SQLite <-> PostgreSQL type mapping both ways. Ids of auto-increment keys
//!   (audit event ids, change-log sequence numbers) are copied as they are, and
//!   on PostgreSQL the key's sequence is then moved past the highest copied id.
//! - **Derived tables** (`DERIVED`): tables that triggers on the copied tables
//!   maintain (search indexes and the like). Never copied: the target's own
//!   migrations created the same triggers, and they fill the derived tables as
//!   the copy inserts the base rows, exactly as they do for live writes.
//!   Copying them as well would double or contradict the triggers' rows.
//! - **Bookkeeping** (`BOOKKEEPING`): `seaql_migrations` (the target runs its
//!   own migrations first) and this module's progress table.
//! - **Anything else stops the move**, on either side, and so does a copied
//!   table whose columns differ from its entity's: a table or column that
//!   nobody classified would otherwise be left behind in silence. Classify a
//!   new table here when its migration is added (the unit test below fails
//!   until it is).
//!
//! Consistency: the source is read in one read-only snapshot transaction
//! (SQLite WAL, PostgreSQL `REPEATABLE READ`), so the copy and the source side
//! of the verification see one state even while a server still writes.
//!
//! Resumable: rows go over in primary-key order, one target transaction per
//! batch, and the same transaction records the batch's last key in a progress
//! table on the target. Rerunning the same command after an interruption
//! checks that the rows already copied still match the source (count and
//! checksum of the source's rows up to the recorded key against the target's
//! rows) and continues after the recorded key. A target with rows but no
//! progress table is refused.
//!
//! Speed (PostgreSQL targets): batches go in with `COPY`, and a table's
//! secondary (non-unique) indexes are set aside while it loads and rebuilt
//! after it, from their definitions as the target's migrations made them
//! (`pg_get_indexdef`), which are kept in a bookkeeping table until rebuilt,
//! so an interrupted move still rebuilds them. Primary keys and unique
//! indexes stay in place throughout.
//!
//! Verification: per table, the row count and a checksum over every row,
//! computed the same way on both sides: BLAKE3 of a canonical encoding of each
//! row (every column of the entity, by name), summed lane-wise. The sum does
//! not depend on row order, because the two databases do not agree on it:
//! SQLite orders text keys bytewise, PostgreSQL by its collation.
//!
//! Layout: this file holds the classification and the procedure (snapshot,
//! resume check, per-table copy then verification); `schema` inspects a
//! store's migrations, tables and columns, `table` copies and checksums one
//! table, `pg` holds what only PostgreSQL needs (the `COPY` writer, index
//! deferral, sequences) and `rows` the key and row encodings.

use std::{collections::BTreeSet, ops::ControlFlow, time::Duration};

use sea_orm::{
    AccessMode, ActiveModelTrait, ConnectionTrait, DbBackend, EntityName, EntityTrait, IdenStatic,
    IsolationLevel, Iterable, ModelTrait, PrimaryKeyToColumn, PrimaryKeyTrait, QueryFilter,
    QueryOrder, QuerySelect, Schema, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict, Value},
};

use super::{
    Store,
    entities::{
        account_policy, owner_quota, sweep_state, token, token_change, token_event, token_notice,
    },
};
use crate::error::{Error, Result};

/// Tables that triggers on the copied tables maintain (see the module doc):
/// never copied, rebuilt by the target's triggers. A SQLite FTS5 table's
/// shadow tables (`<name>_data`, `<name>_idx`, ...) count as the table's own.
pub const DERIVED: &[&str] = &[
    // m20261201_000004_search_indexes: SQLite's FTS5 name index (external
    // content over `tokens`, with its shadow tables and, since 000009, its
    // pending list `tokens_name_fts_pending`) and the per-module rows of both
    // backends, all maintained by triggers on `tokens`.
    "tokens_name_fts",
    "token_modules",
];

/// The mover's own progress table on the target (dropped after a verified move).
pub const PROGRESS_TABLE: &str = "tokend_move_progress";

/// PostgreSQL targets: the definitions of the indexes set aside while their
/// table loads (see `defer_indexes`).
pub const DEFERRED_INDEXES_TABLE: &str = "tokend_move_indexes";

/// Tables that are not the store's data.
const BOOKKEEPING: &[&str] = &["seaql_migrations", PROGRESS_TABLE, DEFERRED_INDEXES_TABLE];

/// The copied tables, in copy order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Tokens,
    OwnerQuotas,
    TokenEvents,
    TokenChanges,
    AccountPolicies,
    TokenNotices,
    SweepState,
}

/// Runs `$body` with `$E` bound to the entity of `$table`.
macro_rules! with_entity {
    ($table:expr, $E:ident => $body:expr) => {
        match $table {
            Table::Tokens => {
                type $E = token::Entity;
                $body
            }
            Table::OwnerQuotas => {
                type $E = owner_quota::Entity;
                $body
            }
            Table::TokenEvents => {
                type $E = token_event::Entity;
                $body
            }
            Table::TokenChanges => {
                type $E = token_change::Entity;
                $body
            }
            Table::AccountPolicies => {
                type $E = account_policy::Entity;
                $body
            }
            Table::TokenNotices => {
                type $E = token_notice::Entity;
                $body
            }
            Table::SweepState => {
                type $E = sweep_state::Entity;
                $body
            }
        }
    };
}

impl Table {
    pub const ALL: [Table; 7] = [
        Self::Tokens,
        Self::OwnerQuotas,
        Self::TokenEvents,
        Self::TokenChanges,
        Self::AccountPolicies,
        Self::TokenNotices,
        Self::SweepState,
    ];

    pub fn name(self) -> &'static str {
        with_entity!(self, E => E::default().table_name())
    }

    fn columns(self) -> Vec<&'static str> {
        with_entity!(self, E => <E as EntityTrait>::Column::iter().map(|c| c.as_str()).collect())
    }
}

/// Row count and order-independent checksum of a set of rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableSum {
    pub rows: u64,
    lanes: [u64; 4],
}

impl TableSum {
    fn add(&mut self, row: &blake3::Hash) {
        self.rows += 1;
        for (lane, chunk) in self.lanes.iter_mut().zip(row.as_bytes().chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *lane = lane.wrapping_add(u64::from_le_bytes(word));
        }
    }

    /// The checksum as printed: BLAKE3 of the count and the lanes, 16 hex digits.
    pub fn hex(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.rows.to_le_bytes());
        for lane in self.lanes {
            h.update(&lane.to_le_bytes());
        }
        h.finalize().to_hex()[..16].to_owned()
    }
}

/// How `move_into` goes about it.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Rows read from the source and committed to the target per batch.
    pub batch_rows: u64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self { batch_rows: 5000 }
    }
}

/// Reported after each committed batch; returning `Break` stops the move
/// there (as an interruption would), leaving it resumable.
#[derive(Debug, Clone, Copy)]
pub struct CopyProgress {
    pub table: Table,
    /// Rows of this table on the target so far.
    pub copied: u64,
}

#[derive(Debug, Clone)]
pub struct TableReport {
    pub table: Table,
    pub source: TableSum,
    pub target: TableSum,
    /// Rows found already copied by an earlier, interrupted run.
    pub resumed_rows: u64,
}

impl TableReport {
    pub fn verified(&self) -> bool {
        self.source == self.target
    }
}

#[derive(Debug, Clone)]
pub struct CopyReport {
    pub source_backend: DbBackend,
    pub target_backend: DbBackend,
    pub tables: Vec<TableReport>,
    /// Derived tables present on the target, with their row counts there.
    pub derived: Vec<(String, u64)>,
    /// PostgreSQL sequences moved past the copied ids: (`table.column`, next value).
    pub sequences: Vec<(String, i64)>,
    pub resumed: bool,
    pub copy_time: Duration,
    pub verify_time: Duration,
}

impl CopyReport {
    pub fn verified(&self) -> bool {
        self.tables.iter().all(TableReport::verified)
    }
}

/// The progress table: one row per copied table.
mod progress {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tokend_move_progress")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub table_name: String,
        /// The last copied row's primary key, as a JSON array (see `key_to_json`).
        pub last_key: String,
        pub rows: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl Store {
    /// Copies this whole store into `target` (see the module doc), then
    /// verifies every table. A verification mismatch is reported, not an
    /// error; the caller decides (see `CopyReport::verified`).
    pub async fn move_into(
        &self,
        target: &Store,
        options: &CopyOptions,
        progress: &mut (dyn FnMut(CopyProgress) -> ControlFlow<()> + Send),
    ) -> Result<CopyReport> {
        self.require_current_schema("source").await?;
        // Before migrating the target: a database holding tables of
        // something else is refused untouched, not half-filled with ours.
        target.refuse_unknown_tables("target").await?;
        target.migrate().await?;
        target.require_current_schema("target").await?;
        self.classify_tables("source").await?;
        let target_tables = target.classify_tables("target").await?;

        let resumed = target_tables.contains(PROGRESS_TABLE);
        if !resumed {
            for table in Table::ALL {
                if with_entity!(table, E => has_rows::<E>(&target.db).await?) {
                    return Err(Error::FailedPrecondition(format!(
                        "the target store is not empty (table {} has rows): `tokend move` fills an empty \
                         database only; create a new one for it",
                        table.name()
                    )));
                }
            }
            let create = Schema::new(target.backend())
                .create_table_from_entity(progress::Entity)
                .if_not_exists()
                .to_owned();
            target.db.execute(&create).await?;
            if target.backend() == DbBackend::Postgres {
                target
                    .db
                    .execute_unprepared(&format!(
                        "CREATE TABLE IF NOT EXISTS {DEFERRED_INDEXES_TABLE} \
                         (index_name TEXT PRIMARY KEY, table_name TEXT NOT NULL, definition TEXT NOT NULL)"
                    ))
                    .await?;
            }
        }

        let started = std::time::Instant::now();
        let snapshot = match self.backend() {
            DbBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let mut tables = Vec::new();
        for table in Table::ALL {
            let (source, resumed_rows) = with_entity!(table, E => {
                copy_table::<E>(&snapshot, target, table, options, progress).await?
            });
            tables.push(TableReport {
                table,
                source,
                target: TableSum::default(),
                resumed_rows,
            });
        }
        let sequences = target.advance_sequences().await?;
        let copy_time = started.elapsed();

        let verifying = std::time::Instant::now();
        for report in &mut tables {
            report.target = with_entity!(report.table, E => {
                checksum::<E>(&target.db, None, options.batch_rows).await?
            });
        }
        snapshot.commit().await?;
        let mut derived = Vec::new();
        for name in target.list_tables().await? {
            if is_derived(&name) {
                let rows = target.count_rows(&name).await?;
                derived.push((name, rows));
            }
        }
        let report = CopyReport {
            source_backend: self.backend(),
            target_backend: target.backend(),
            tables,
            derived,
            sequences,
            resumed,
            copy_time,
            verify_time: verifying.elapsed(),
        };
        if report.verified() {
            for bookkeeping in [PROGRESS_TABLE, DEFERRED_INDEXES_TABLE] {
                target
                    .db
                    .execute_unprepared(&format!("DROP TABLE IF EXISTS {bookkeeping}"))
                    .await?;
            }
        }
        Ok(report)
    }
}

mod pg;
mod rows;
mod schema;
mod table;

use self::{pg::*, rows::*, schema::*, table::*};

#[cfg(test)]
mod tests;
