//! The PostgreSQL batch writer of the copy: rows go in through `COPY ... FROM
//! STDIN` in the text format, which is several times faster than INSERTs.

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
