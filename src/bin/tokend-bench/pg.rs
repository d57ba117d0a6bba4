//! Scratch PostgreSQL databases for the phases that measure PostgreSQL:
//! one per phase and process, dropped (with its connections) when done.

use sea_orm::{ConnectionTrait, Database};

/// The URL of a database `tokend_bench_<tag>_<pid>` beside `base`'s, dropped
/// first if an earlier run left it, and created empty when `create` (else
/// left for `tokend move` or the like to create).
pub async fn database(base: &str, tag: &str, create: bool) -> String {
    let name = format!("tokend_bench_{tag}_{}", std::process::id());
    let admin = Database::connect(base)
        .await
        .expect("connect to PostgreSQL");
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop");
    if create {
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create");
    }
    admin.close().await.ok();
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("postgres URL ends with /database");
    format!("{prefix}/{name}")
}

/// Drops the database `url` names, closing its connections.
pub async fn drop_database(base: &str, url: &str) {
    let (_, name) = url.rsplit_once('/').expect("database");
    let admin = Database::connect(base)
        .await
        .expect("connect to PostgreSQL");
    let _ = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    admin.close().await.ok();
}
