//! Schema migrations, applied at `serve` start and by `tokend migrate`. Append
//! new files; never edit one that has shipped.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tokens;
mod m20261122_000002_change_log_and_search_indexes;
mod m20261201_000003_token_verifiers;
mod m20261201_000004_search_indexes;
mod m20261201_000005_event_retention;
mod m20261201_000006_account_policies;
mod m20261201_000007_token_allowed_cidrs;
mod m20261201_000008_sweeper;
mod m20261204_000009_name_index_pending;

pub struct Migrator;

/// `CREATE INDEX IF NOT EXISTS name ON table (columns...)`.
fn index<T: IntoIden, C: IntoIden>(
    name: &str,
    table: T,
    columns: impl IntoIterator<Item = C>,
) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table).if_not_exists();
    for column in columns {
        index.col(column);
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tokens::Migration),
            Box::new(m20261122_000002_change_log_and_search_indexes::Migration),
            Box::new(m20261201_000003_token_verifiers::Migration),
            Box::new(m20261201_000004_search_indexes::Migration),
            Box::new(m20261201_000005_event_retention::Migration),
            Box::new(m20261201_000006_account_policies::Migration),
            Box::new(m20261201_000007_token_allowed_cidrs::Migration),
            Box::new(m20261201_000008_sweeper::Migration),
            Box::new(m20261204_000009_name_index_pending::Migration),
        ]
    }
}
