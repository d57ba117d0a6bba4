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
//! Layout: the PostgreSQL `COPY` writer is in `pg`, the key and row
//! encodings in `rows`. This file stays longer than most (about 800 lines)
//! on purpose: the classification above, the snapshot, the resume check and
//! the per-table copy-then-verify loop are one procedure whose steps rely on
//! each other's invariants, and they read best in one place.

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
    // content over `tokens`, with its shadow tables) and the per-module rows
    // of both backends, all maintained by triggers on `tokens`.
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

    /// Refuses a store whose applied migrations are not exactly this
    /// release's: rows of another schema would not fit the entities.
    async fn require_current_schema(&self, side: &str) -> Result<()> {
        use sea_orm_migration::MigratorTrait;
        let known: Vec<String> = super::migration::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        let applied = self.applied_migrations().await?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the {side} database is not a tokend store (it has no migrations table)"
            ))
        })?;
        if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
            return Err(Error::FailedPrecondition(format!(
                "the {side} store was migrated by a newer tokend (migration {unknown} is unknown to this one); \
                 use that release"
            )));
        }
        if let Some(missing) = known.iter().find(|v| !applied.contains(v)) {
            return Err(Error::FailedPrecondition(format!(
                "the {side} store is not migrated to this release (migration {missing} is missing); \
                 run `tokend migrate --database-url <{side} URL>` first"
            )));
        }
        Ok(())
    }

    /// The versions in `seaql_migrations`, or `None` when there is no such table.
    pub(super) async fn applied_migrations(&self) -> Result<Option<Vec<String>>> {
        if !self.list_tables().await?.contains("seaql_migrations") {
            return Ok(None);
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                self.backend(),
                "SELECT version FROM seaql_migrations ORDER BY version",
            ))
            .await?;
        let versions = rows
            .iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(versions))
    }

    /// The names of the database's tables (SQLite's internal ones excluded).
    async fn list_tables(&self) -> Result<BTreeSet<String>> {
        let sql = match self.backend() {
            DbBackend::Postgres => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            }
            _ => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_string(self.backend(), sql))
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<Result<_, _>>()?)
    }

    async fn list_columns(&self, table: &str) -> Result<BTreeSet<String>> {
        let stmt = match self.backend() {
            DbBackend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
                [table.into()],
            ),
            backend => Statement::from_sql_and_values(
                backend,
                "SELECT name FROM pragma_table_info(?)",
                [table.into()],
            ),
        };
        let rows = self.db.query_all_raw(stmt).await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Checks that every table is classified and that every copied table has
    /// exactly its entity's columns; returns the table names.
    async fn classify_tables(&self, side: &str) -> Result<BTreeSet<String>> {
        let tables = self.refuse_unknown_tables(side).await?;
        for table in Table::ALL {
            let have = self.list_columns(table.name()).await?;
            let want: BTreeSet<String> = table.columns().into_iter().map(str::to_owned).collect();
            if have != want {
                let extra: Vec<&String> = have.difference(&want).collect();
                let missing: Vec<&String> = want.difference(&have).collect();
                return Err(Error::FailedPrecondition(format!(
                    "table {} in the {side} database does not match this tokend's schema \
                     (columns unknown here: {extra:?}; columns missing there: {missing:?})",
                    table.name()
                )));
            }
        }
        Ok(tables)
    }

    /// Refuses a database with a table that is neither copied, derived nor
    /// bookkeeping; returns the table names.
    async fn refuse_unknown_tables(&self, side: &str) -> Result<BTreeSet<String>> {
        let tables = self.list_tables().await?;
        let copied: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        let unknown: Vec<&str> = tables
            .iter()
            .map(String::as_str)
            .filter(|t| !copied.contains(t) && !BOOKKEEPING.contains(t) && !is_derived(t))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "the {side} database has tables `tokend move` does not know: {}; it is not \
                 (only) a tokend store: move into an empty database, or classify them in \
                 src/store/copy.rs (copied or derived)",
                unknown.join(", ")
            )));
        }
        Ok(tables)
    }

    async fn count_rows(&self, table: &str) -> Result<u64> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.backend(),
                format!("SELECT COUNT(*) FROM \"{table}\""),
            ))
            .await?;
        let n = row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?;
        Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    /// PostgreSQL: drops `table`'s secondary indexes before it loads, having
    /// saved their definitions in the same transaction (a bulk load then
    /// builds each index once, sorted, instead of row by row).
    async fn defer_indexes(&self, table: &str) -> Result<()> {
        if self.backend() != DbBackend::Postgres {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x \
                 JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE t.relname = $1 AND n.nspname = current_schema() \
                 AND NOT x.indisunique AND NOT x.indisprimary",
                [table.into()],
            ))
            .await?;
        for row in rows {
            let name: String = row.try_get_by_index(0)?;
            let definition: String = row.try_get_by_index(1)?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO {DEFERRED_INDEXES_TABLE} (index_name, table_name, definition) \
                     VALUES ($1, $2, $3) ON CONFLICT (index_name) DO NOTHING"
                ),
                [name.clone().into(), table.into(), definition.into()],
            ))
            .await?;
            txn.execute_unprepared(&format!("DROP INDEX \"{name}\""))
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// PostgreSQL: rebuilds the indexes `defer_indexes` set aside for
    /// `table`, each in one transaction with the removal of its saved
    /// definition, so a rebuild is never lost or done twice.
    async fn restore_indexes(&self, table: &str) -> Result<()> {
        if self.backend() != DbBackend::Postgres {
            return Ok(());
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT index_name, definition FROM {DEFERRED_INDEXES_TABLE} \
                     WHERE table_name = $1 ORDER BY index_name"
                ),
                [table.into()],
            ))
            .await?;
        for row in rows {
            let name: String = row.try_get_by_index(0)?;
            let definition: String = row.try_get_by_index(1)?;
            let txn = self.db.begin().await?;
            txn.execute_unprepared("SET LOCAL maintenance_work_mem = '256MB'")
                .await?;
            txn.execute_unprepared(&definition).await?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("DELETE FROM {DEFERRED_INDEXES_TABLE} WHERE index_name = $1"),
                [name.into()],
            ))
            .await?;
            txn.commit().await?;
        }
        Ok(())
    }

    /// PostgreSQL: moves each copied auto-increment key's sequence past the
    /// highest copied id, so new rows do not collide with copied ones. SQLite
    /// (`AUTOINCREMENT`) tracks explicitly inserted ids by itself.
    async fn advance_sequences(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        if self.backend() != DbBackend::Postgres {
            return Ok(out);
        }
        for table in Table::ALL {
            let Some(column) = with_entity!(table, E => auto_increment_column::<E>()) else {
                continue;
            };
            let name = table.name();
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('\"{name}\"', '{column}'), \
                 COALESCE((SELECT MAX(\"{column}\") FROM \"{name}\"), 0) + 1, false)"
            );
            let row = self
                .db
                .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                .await?;
            let next = row
                .map(|r| r.try_get_by_index::<Option<i64>>(0))
                .transpose()?
                .flatten();
            if let Some(next) = next {
                out.push((format!("{name}.{column}"), next));
            }
        }
        Ok(out)
    }
}

fn is_derived(table: &str) -> bool {
    DERIVED.iter().any(|d| {
        table == *d
            || table
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with('_'))
    })
}

async fn has_rows<E: EntityTrait>(conn: &impl ConnectionTrait) -> Result<bool> {
    Ok(E::find().limit(1).one(conn).await?.is_some())
}

fn key_columns<E: EntityTrait>() -> Vec<E::Column> {
    E::PrimaryKey::iter().map(|k| k.into_column()).collect()
}

fn auto_increment_column<E: EntityTrait>() -> Option<&'static str> {
    let keys = key_columns::<E>();
    match keys.as_slice() {
        [only] if <E::PrimaryKey as PrimaryKeyTrait>::auto_increment() => Some(only.as_str()),
        _ => None,
    }
}

/// `(k1, k2, ...)` for the entity's primary key.
fn key_tuple<E: EntityTrait>() -> Expr {
    Expr::tuple(key_columns::<E>().into_iter().map(Expr::col))
}

fn key_of<E: EntityTrait>(model: &E::Model) -> Vec<Value> {
    key_columns::<E>()
        .into_iter()
        .map(|c| model.get(c))
        .collect()
}

/// One page of rows in primary-key order, after `after` and at most `upto`.
async fn page<E: EntityTrait>(
    conn: &impl ConnectionTrait,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    limit: u64,
) -> Result<Vec<E::Model>> {
    let mut select = E::find();
    if let Some(after) = after {
        select =
            select.filter(key_tuple::<E>().gt(Expr::tuple(after.iter().cloned().map(Expr::val))));
    }
    if let Some(upto) = upto {
        select =
            select.filter(key_tuple::<E>().lte(Expr::tuple(upto.iter().cloned().map(Expr::val))));
    }
    for column in key_columns::<E>() {
        select = select.order_by_asc(column);
    }
    Ok(select.limit(limit).all(conn).await?)
}

/// The checksum of every row (at most `upto`, in this database's key order).
async fn checksum<E: EntityTrait>(
    conn: &impl ConnectionTrait,
    upto: Option<&[Value]>,
    batch: u64,
) -> Result<TableSum> {
    let mut sum = TableSum::default();
    let mut buf = Vec::new();
    let mut after: Option<Vec<Value>> = None;
    loop {
        let rows = page::<E>(conn, after.as_deref(), upto, batch).await?;
        for row in &rows {
            sum.add(&row_hash::<E>(row, &mut buf));
        }
        match rows.last() {
            Some(last) if rows.len() as u64 == batch => after = Some(key_of::<E>(last)),
            _ => return Ok(sum),
        }
    }
}

/// Copies one table from the snapshot `source` into `target`, resuming after
/// the key its progress row records. Returns the source's checksum of the
/// whole table and the number of rows an earlier run had copied.
async fn copy_table<E>(
    source: &impl ConnectionTrait,
    target: &Store,
    table: Table,
    options: &CopyOptions,
    progress: &mut (dyn FnMut(CopyProgress) -> ControlFlow<()> + Send),
) -> Result<(TableSum, u64)>
where
    E: EntityTrait,
    E::ActiveModel: ActiveModelTrait<Entity = E> + From<E::Model> + Send,
{
    let batch = std::cmp::max(options.batch_rows, 1);
    let recorded = progress::Entity::find_by_id(table.name().to_owned())
        .one(&target.db)
        .await?;
    let mut last: Option<Vec<Value>> = match &recorded {
        Some(p) => Some(key_from_json::<E>(&p.last_key)?),
        None => None,
    };
    let resumed_rows = recorded
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rows).unwrap_or(0));
    let mut source_sum = TableSum::default();
    if let Some(last) = &last {
        source_sum = checksum::<E>(source, Some(last), batch).await?;
        let copied = checksum::<E>(&target.db, None, batch).await?;
        if source_sum != copied || copied.rows != resumed_rows {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume: the {} rows of table {} already on the target do not match the source's \
                 first {} rows (the source changed since the interrupted move, or the target holds other \
                 data); start again with an empty target database",
                copied.rows,
                table.name(),
                source_sum.rows
            )));
        }
    }
    if recorded.is_none() {
        // A resumed move reaches tables it has not started yet: they must
        // still be empty (rows there are someone else's).
        if has_rows::<E>(&target.db).await? {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume: table {} on the target has rows this move did not copy; \
                 start again with an empty target database",
                table.name()
            )));
        }
        target.defer_indexes(table.name()).await?;
    }
    let mut copied = resumed_rows;
    // Both databases bound the parameters of one statement (PostgreSQL 65535,
    // SQLite 32766): insert in chunks that stay under both.
    let columns = E::Column::iter().count().max(1);
    let chunk = (30_000 / columns).max(1);
    let mut buf = Vec::new();
    loop {
        let rows = page::<E>(source, last.as_deref(), None, batch).await?;
        let Some(tail) = rows.last() else {
            break;
        };
        let tail_key = key_of::<E>(tail);
        for row in &rows {
            source_sum.add(&row_hash::<E>(row, &mut buf));
        }
        let n = rows.len() as u64;
        copied += n;
        let mark = progress::Model {
            table_name: table.name().to_owned(),
            last_key: key_to_json(&tail_key)?,
            rows: copied as i64,
        };
        let copy_text = (target.backend() == DbBackend::Postgres)
            .then(|| copy_text::<E>(&rows))
            .flatten();
        match copy_text {
            Some(text) => write_batch_pg::<E>(target, &text, mark).await?,
            None => write_batch::<E>(target, rows, chunk, mark).await?,
        }
        last = Some(tail_key);
        if progress(CopyProgress { table, copied }).is_break() {
            return Err(Error::FailedPrecondition(format!(
                "move interrupted after {copied} rows of table {}; run the same command again to resume",
                table.name()
            )));
        }
        if n < batch {
            break;
        }
    }
    target.restore_indexes(table.name()).await?;
    Ok((source_sum, resumed_rows))
}

/// Inserts one batch and its progress row in one transaction.
async fn write_batch<E>(
    target: &Store,
    rows: Vec<E::Model>,
    chunk: usize,
    mark: progress::Model,
) -> Result<()>
where
    E: EntityTrait,
    E::ActiveModel: ActiveModelTrait<Entity = E> + From<E::Model> + Send,
{
    let txn = target.db.begin().await?;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let part: Vec<E::ActiveModel> = rows.by_ref().take(chunk).map(Into::into).collect();
        E::insert_many(part).exec_without_returning(&txn).await?;
    }
    progress::Entity::insert(progress::ActiveModel::from(mark))
        .on_conflict(
            OnConflict::column(progress::Column::TableName)
                .update_columns([progress::Column::LastKey, progress::Column::Rows])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

mod pg;
mod rows;

use self::{pg::*, rows::*};

#[cfg(test)]
mod tests;
