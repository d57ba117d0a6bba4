//! One table's copy, generic over its sea-orm entity: pages in primary-key
//! order, the order-independent checksum, and the resumable batches (each
//! committed with its progress row).

use super::*;

pub(super) async fn has_rows<E: EntityTrait>(conn: &impl ConnectionTrait) -> Result<bool> {
    Ok(E::find().limit(1).one(conn).await?.is_some())
}

pub(super) fn key_columns<E: EntityTrait>() -> Vec<E::Column> {
    E::PrimaryKey::iter().map(|k| k.into_column()).collect()
}

pub(super) fn auto_increment_column<E: EntityTrait>() -> Option<&'static str> {
    let keys = key_columns::<E>();
    match keys.as_slice() {
        [only] if <E::PrimaryKey as PrimaryKeyTrait>::auto_increment() => Some(only.as_str()),
        _ => None,
    }
}

/// `(k1, k2, ...)` for the entity's primary key.
pub(super) fn key_tuple<E: EntityTrait>() -> Expr {
    Expr::tuple(key_columns::<E>().into_iter().map(Expr::col))
}

pub(super) fn key_of<E: EntityTrait>(model: &E::Model) -> Vec<Value> {
    key_columns::<E>()
        .into_iter()
        .map(|c| model.get(c))
        .collect()
}

/// One page of rows in primary-key order, after `after` and at most `upto`.
pub(super) async fn page<E: EntityTrait>(
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
pub(super) async fn checksum<E: EntityTrait>(
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
pub(super) async fn copy_table<E>(
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
pub(super) async fn write_batch<E>(
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
