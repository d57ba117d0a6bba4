//! Day-two operations: what an operator runs besides the server.
//!
//! - `backup`: `tokend backup` / `tokend restore` of a SQLite store.
//! - `move_store`: `tokend move`, a verified store-to-store copy (the growth
//!   path from SQLite to PostgreSQL).
//! - `export`: `tokend events export`, the audit trail as JSON lines.
//! - `retention`: the background pruner behind `--event-retention`.
//!
//! The database work itself lives in `store` (`sqlite_file`, `copy`,
//! `audit`); these modules handle files, progress and the printed reports.

pub mod backup;
pub mod export;
pub mod move_store;
pub mod retention;

use std::{fs, io, path::Path};

/// Loud, because nothing else will say it: the verifier key is not data of
/// any database, so no database backup or move carries it.
pub const KEY_FILE_NOTICE: &str = "NOT included: the verifier key file (--verifier-key-file / TOKEND_VERIFIER_KEY_FILE; \
with SQLite by default `tokend.key` beside the database file). No database backup or move contains it: \
back it up separately, keep it with this copy of the store, and give the same key to every server \
that serves it (they need it to validate without argon2).";

/// Renames `from` to `to` and makes both the file and the rename durable.
fn commit_file(from: &Path, to: &Path) -> io::Result<()> {
    fs::File::open(from)?.sync_all()?;
    fs::rename(from, to)?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Directory fsync makes the rename itself durable (Unix).
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name, in the same directory (so
/// a rename onto `path` stays on one file system).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
