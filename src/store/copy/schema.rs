//! What a store holds, as the copy sees it: its applied migrations, its
//! tables classified (copied, derived, bookkeeping; anything else stops the
//! move, see the parent module doc), their columns and row counts.

use super::*;

impl Store {
    /// Refuses a store whose applied migrations are not exactly this
    /// release's: rows of another schema would not fit the entities.
    pub(super) async fn require_current_schema(&self, side: &str) -> Result<()> {
        use sea_orm_migration::MigratorTrait;
        let known: Vec<String> = crate::store::migration::Migrator::migrations()
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
    pub(super) async fn list_tables(&self) -> Result<BTreeSet<String>> {
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

    pub(super) async fn list_columns(&self, table: &str) -> Result<BTreeSet<String>> {
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
    pub(super) async fn classify_tables(&self, side: &str) -> Result<BTreeSet<String>> {
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
    pub(super) async fn refuse_unknown_tables(&self, side: &str) -> Result<BTreeSet<String>> {
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

    pub(super) async fn count_rows(&self, table: &str) -> Result<u64> {
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
}

pub(super) fn is_derived(table: &str) -> bool {
    DERIVED.iter().any(|d| {
        table == *d
            || table
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with('_'))
    })
}
