//! What only a PostgreSQL target needs: the batch writer (rows go in through
//! `COPY ... FROM STDIN` in the text format, several times faster than
//! INSERTs), secondary indexes set aside while a table loads, and key
//! sequences moved past the copied ids.

use super::*;

/// PostgreSQL: the batch goes in with `COPY ... FROM STDIN` (text format),
/// several times faster than multi-row INSERTs, in one transaction with its
/// progress row. The progress row commits with its batch, so a crash loses
/// both or neither: waiting for each batch's WAL flush buys nothing.
pub(super) async fn write_batch_pg<E: EntityTrait>(
    target: &Store,
    text: &str,
    mark: progress::Model,
) -> Result<()> {
    use sea_orm::sqlx::{self, Acquire as _};
    let failed = Error::from;
    let columns: Vec<String> = E::Column::iter()
        .map(|c| format!("\"{}\"", c.as_str()))
        .collect();
    let statement = format!(
        "COPY \"{}\" ({}) FROM STDIN",
        E::default().table_name(),
        columns.join(", ")
    );
    let mut conn = target
        .db
        .get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(failed)?;
    let mut txn = conn.begin().await.map_err(failed)?;
    sqlx::raw_sql("SET LOCAL synchronous_commit = off")
        .execute(&mut *txn)
        .await
        .map_err(failed)?;
    let mut copy = txn.copy_in_raw(&statement).await.map_err(failed)?;
    if let Err(e) = copy.send(text.as_bytes()).await {
        let _ = copy.abort("tokend move: sending failed").await;
        return Err(failed(e));
    }
    copy.finish().await.map_err(failed)?;
    sqlx::query(
        "INSERT INTO tokend_move_progress (table_name, last_key, rows) VALUES ($1, $2, $3) \
         ON CONFLICT (table_name) DO UPDATE SET last_key = EXCLUDED.last_key, rows = EXCLUDED.rows",
    )
    .bind(mark.table_name)
    .bind(mark.last_key)
    .bind(mark.rows)
    .execute(&mut *txn)
    .await
    .map_err(failed)?;
    txn.commit().await.map_err(failed)?;
    Ok(())
}

/// The rows in PostgreSQL's COPY text format (tab-separated, `\N` for NULL,
/// backslash escapes), columns in entity order; `None` when a value is of a
/// type this encoder does not know (the batch then goes in as INSERTs).
pub(super) fn copy_text<E: EntityTrait>(rows: &[E::Model]) -> Option<String> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows.len() * 512);
    for row in rows {
        for (i, column) in E::Column::iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            let value = row.get(column);
            match &value {
                v if is_null(v) => out.push_str("\\N"),
                Value::String(Some(s)) => {
                    for c in s.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            '\t' => out.push_str("\\t"),
                            c => out.push(c),
                        }
                    }
                }
                Value::Bool(Some(b)) => out.push(if *b { 't' } else { 'f' }),
                Value::TinyInt(Some(n)) => write!(out, "{n}").ok()?,
                Value::SmallInt(Some(n)) => write!(out, "{n}").ok()?,
                Value::Int(Some(n)) => write!(out, "{n}").ok()?,
                Value::BigInt(Some(n)) => write!(out, "{n}").ok()?,
                Value::ChronoDateTimeUtc(Some(t)) => {
                    out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                }
                Value::Bytes(Some(b)) => {
                    out.push_str("\\\\x");
                    for byte in b {
                        write!(out, "{byte:02x}").ok()?;
                    }
                }
                _ => return None,
            }
        }
        out.push('\n');
    }
    Some(out)
}

impl Store {
    /// PostgreSQL: drops `table`'s secondary indexes before it loads, having
    /// saved their definitions in the same transaction (a bulk load then
    /// builds each index once, sorted, instead of row by row).
    pub(super) async fn defer_indexes(&self, table: &str) -> Result<()> {
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
    pub(super) async fn restore_indexes(&self, table: &str) -> Result<()> {
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
    pub(super) async fn advance_sequences(&self) -> Result<Vec<(String, i64)>> {
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
