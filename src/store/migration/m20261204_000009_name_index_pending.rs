//! SQLite: a rename no longer writes the FTS5 name index in its own
//! transaction. It records the token in `tokens_name_fts_pending` instead,
//! and `Store::fold_name_index` folds the list into the index in batches
//! (`store::name_index`). This is PostgreSQL's GIN "fast update" design: the
//! pending list is part of the index, written by the database's own triggers
//! in the writing transaction, and every search reads it, so search results
//! are exact the moment a write commits; the fold only moves entries from the
//! list into the index.
//!
//! Why: every FTS5 transaction writes a new segment and its structure,
//! averages, `_idx` and size records, and pays for the merges that keep the
//! segments few: about 18 WAL pages per single-token commit on a store of a
//! million tokens, against one for the row itself, which cost SQLite
//! renames about 15% of their throughput. A fold writes those records once
//! for hundreds of renames.
//!
//! `tokens_name_fts_pending` holds, per token whose name changed since the
//! last fold, the name the FTS index holds for it (`indexed_name`, NULL when
//! it holds none). Inserts and deletes still write the index directly (an
//! Issue is argon2-bound; imports and purges come in batches), unless the
//! token's rowid is pending, in which case the fold settles it. The trigger
//! names are those of migration 000004.
//!
//! PostgreSQL: nothing (its pg_trgm GIN index keeps its own pending list).

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens_name_fts_pending (
        token_rowid INTEGER PRIMARY KEY,
        indexed_name TEXT
     )",
    "DROP TRIGGER IF EXISTS tokens_name_fts_insert",
    "CREATE TRIGGER tokens_name_fts_insert AFTER INSERT ON tokens
     WHEN NOT EXISTS (SELECT 1 FROM tokens_name_fts_pending WHERE token_rowid = new.rowid) BEGIN
        INSERT INTO tokens_name_fts (rowid, name) VALUES (new.rowid, new.name);
     END",
    "DROP TRIGGER IF EXISTS tokens_name_fts_delete",
    "CREATE TRIGGER tokens_name_fts_delete AFTER DELETE ON tokens
     WHEN NOT EXISTS (SELECT 1 FROM tokens_name_fts_pending WHERE token_rowid = old.rowid) BEGIN
        INSERT INTO tokens_name_fts (tokens_name_fts, rowid, name) VALUES ('delete', old.rowid, old.name);
     END",
    // OR IGNORE: a token already pending keeps the name the index holds.
    "DROP TRIGGER IF EXISTS tokens_name_fts_update",
    "CREATE TRIGGER tokens_name_fts_update AFTER UPDATE OF name ON tokens
     WHEN old.name IS NOT new.name BEGIN
        INSERT OR IGNORE INTO tokens_name_fts_pending (token_rowid, indexed_name)
        VALUES (old.rowid, old.name);
     END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on one connection, recorded with the migration: a
    /// trigger is dropped and created again, and another pooled connection
    /// could still read the schema from before the drop.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for sql in SQLITE {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
