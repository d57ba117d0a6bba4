//! Search served from indexes on both backends, kept in step by the database
//! itself (so rows written by any path, the service, a migration, a bulk
//! import or a restore, are searchable in the same transaction as the write):
//!
//! - **Name search.** SQLite: an FTS5 `trigram` index over `tokens.name`
//!   (external content, maintained by triggers, as FTS5's documentation
//!   recommends). PostgreSQL: `tokend_fold(name)`, the same case folding as
//!   FTS5's (`store::fold`), indexed with pg_trgm; it replaces the index on
//!   `lower(name)`, whose result depended on the database's locale.
//! - **Module filter.** `token_modules`: one row per (token, module) with the
//!   token's account, creation time and id, maintained by triggers; its keys
//!   list a module's tokens newest first, per account or platform-wide. It
//!   holds nothing that SetState changes, so a state change costs no upkeep.
//!
//! Both are backfilled from existing rows here.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

use crate::store::fold;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// SQLite. The FTS table's rowids are those of `tokens` (VACUUM keeps the
/// rowids of a table that has indexes, and `tokens` has several).
const SQLITE: &[&str] = &[
    "CREATE VIRTUAL TABLE IF NOT EXISTS tokens_name_fts USING fts5(name, content = 'tokens', tokenize = 'trigram')",
    "CREATE TRIGGER IF NOT EXISTS tokens_name_fts_insert AFTER INSERT ON tokens BEGIN
        INSERT INTO tokens_name_fts (rowid, name) VALUES (new.rowid, new.name);
     END",
    "CREATE TRIGGER IF NOT EXISTS tokens_name_fts_delete AFTER DELETE ON tokens BEGIN
        INSERT INTO tokens_name_fts (tokens_name_fts, rowid, name) VALUES ('delete', old.rowid, old.name);
     END",
    "CREATE TRIGGER IF NOT EXISTS tokens_name_fts_update AFTER UPDATE OF name ON tokens
     WHEN old.name IS NOT new.name BEGIN
        INSERT INTO tokens_name_fts (tokens_name_fts, rowid, name) VALUES ('delete', old.rowid, old.name);
        INSERT INTO tokens_name_fts (rowid, name) VALUES (new.rowid, new.name);
     END",
    "INSERT INTO tokens_name_fts (tokens_name_fts) VALUES ('rebuild')",
    "CREATE TABLE IF NOT EXISTS token_modules (
        account_id TEXT NOT NULL,
        module TEXT NOT NULL,
        created_at TEXT NOT NULL,
        token_id TEXT NOT NULL,
        PRIMARY KEY (account_id, module, created_at, token_id)
     ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS idx_token_modules_module ON token_modules (module, created_at, token_id)",
    "CREATE TRIGGER IF NOT EXISTS tokens_modules_insert AFTER INSERT ON tokens BEGIN
        INSERT OR REPLACE INTO token_modules (account_id, module, created_at, token_id)
        SELECT DISTINCT new.account_id, value, new.created_at, new.id FROM json_each(new.modules);
     END",
    "CREATE TRIGGER IF NOT EXISTS tokens_modules_delete AFTER DELETE ON tokens BEGIN
        DELETE FROM token_modules WHERE account_id = old.account_id
            AND module IN (SELECT value FROM json_each(old.modules))
            AND created_at = old.created_at AND token_id = old.id;
     END",
    "CREATE TRIGGER IF NOT EXISTS tokens_modules_update AFTER UPDATE OF account_id, modules, created_at, id ON tokens
     WHEN old.account_id IS NOT new.account_id OR old.modules IS NOT new.modules
       OR old.created_at IS NOT new.created_at OR old.id IS NOT new.id BEGIN
        DELETE FROM token_modules WHERE account_id = old.account_id
            AND module IN (SELECT value FROM json_each(old.modules))
            AND created_at = old.created_at AND token_id = old.id;
        INSERT OR REPLACE INTO token_modules (account_id, module, created_at, token_id)
        SELECT DISTINCT new.account_id, value, new.created_at, new.id FROM json_each(new.modules);
     END",
    "INSERT OR IGNORE INTO token_modules (account_id, module, created_at, token_id)
     SELECT DISTINCT t.account_id, m.value, t.created_at, t.id FROM tokens AS t, json_each(t.modules) AS m",
];

/// PostgreSQL, after `tokend_fold()` is created (the whole migration runs in
/// one transaction there).
const POSTGRES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS idx_tokens_name_fold_trgm ON tokens USING gin (tokend_fold(name) gin_trgm_ops)",
    "DROP INDEX IF EXISTS idx_tokens_name_trgm",
    "CREATE TABLE IF NOT EXISTS token_modules (
        account_id varchar(128) NOT NULL,
        module varchar(64) NOT NULL,
        created_at timestamptz NOT NULL,
        token_id varchar(16) NOT NULL,
        PRIMARY KEY (account_id, module, created_at, token_id)
     )",
    "CREATE INDEX IF NOT EXISTS idx_token_modules_module ON token_modules (module, created_at, token_id) INCLUDE (account_id)",
    "CREATE OR REPLACE FUNCTION tokend_token_modules() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            DELETE FROM token_modules WHERE account_id = OLD.account_id
                AND module IN (SELECT jsonb_array_elements_text(OLD.modules::jsonb))
                AND created_at = OLD.created_at AND token_id = OLD.id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO token_modules (account_id, module, created_at, token_id)
            SELECT DISTINCT NEW.account_id, m, NEW.created_at, NEW.id
            FROM jsonb_array_elements_text(NEW.modules::jsonb) AS m
            ON CONFLICT DO NOTHING;
        END IF;
        RETURN NULL;
     END $$",
    "DROP TRIGGER IF EXISTS tokens_modules_write ON tokens",
    "CREATE TRIGGER tokens_modules_write AFTER INSERT OR DELETE ON tokens
     FOR EACH ROW EXECUTE FUNCTION tokend_token_modules()",
    "DROP TRIGGER IF EXISTS tokens_modules_update ON tokens",
    "CREATE TRIGGER tokens_modules_update AFTER UPDATE OF account_id, modules, created_at, id ON tokens
     FOR EACH ROW WHEN (OLD.account_id IS DISTINCT FROM NEW.account_id OR OLD.modules IS DISTINCT FROM NEW.modules
        OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.id IS DISTINCT FROM NEW.id)
     EXECUTE FUNCTION tokend_token_modules()",
    "INSERT INTO token_modules (account_id, module, created_at, token_id)
     SELECT DISTINCT t.account_id, m, t.created_at, t.id
     FROM tokens AS t CROSS JOIN LATERAL jsonb_array_elements_text(t.modules::jsonb) AS m
     ON CONFLICT DO NOTHING",
];

/// `tokend_fold(text)`: `store::fold` in SQL. ASCII-only text (the common
/// case) is folded by `lower()` under the "C" collation, which touches A-Z
/// only whatever the database's locale; other text then goes through
/// `translate()` with the fold of every non-ASCII character that has one.
fn pg_fold_function() -> String {
    let (from, to) = fold::pg_translate_args();
    format!(
        "CREATE OR REPLACE FUNCTION tokend_fold(s text) RETURNS text
         LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fold$
            SELECT CASE WHEN octet_length(s) = char_length(s) THEN lower(s COLLATE \"C\")
                        ELSE translate(lower(s COLLATE \"C\"), '{from}', '{to}') END
         $fold$"
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(&pg_fold_function()).await?;
                for sql in POSTGRES {
                    db.execute_unprepared(sql).await?;
                }
            }
            _ => {
                for sql in SQLITE {
                    db.execute_unprepared(sql).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fold_function_quotes_nothing() {
        let sql = super::pg_fold_function();
        let (from, to) = crate::store::fold::pg_translate_args();
        for c in from.chars().chain(to.chars()) {
            assert!(!matches!(c, '\'' | '$' | '\\'), "{c:?}");
        }
        assert!(sql.contains(&from));
    }
}
