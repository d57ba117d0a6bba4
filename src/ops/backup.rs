//! `tokend backup` and `tokend restore` for SQLite stores.
//!
//! Backup: `VACUUM INTO` a temporary file beside the destination (a
//! consistent snapshot, taken while the server serves and writes), check the
//! copy (SQLite's integrity check, tokend's migrations), make it durable, and
//! only then give it its name: a backup file that exists is complete.
//!
//! Restore: check the backup the same way, refuse while any process has the
//! store open (a running server would keep writing to the file it opened)
//! and, unless `--force`, when the store holds tokens or events; then copy
//! the backup beside the store, remove the store's stale WAL files (SQLite
//! would replay them into the restored file) and rename it into place.
//!
//! PostgreSQL: both refuse, pointing at pg_dump / pg_restore and PITR.

use std::{fs, path::Path, time::Instant};

use secrecy::ExposeSecret;

use super::{KEY_FILE_NOTICE, beside, commit_file, mib};
use crate::{
    config::Config,
    error::{Error, Result},
    store::sqlite_file::{POSTGRES_BACKUP_HINT, SqliteFile, StoreFileInfo},
};

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

fn store_file(config: &Config) -> Result<SqliteFile> {
    SqliteFile::from_url(config.database_url.expose_secret())?
        .ok_or_else(|| Error::FailedPrecondition(POSTGRES_BACKUP_HINT.into()))
}

fn describe(info: &StoreFileInfo) -> String {
    let schema = info.migrations.last().map_or("none", String::as_str);
    let mut text = format!(
        "{} tokens ({} not revoked), {} audit events, {:.1} MiB, schema {schema}",
        info.tokens,
        info.live_tokens,
        info.events,
        mib(info.bytes)
    );
    if !info.pending.is_empty() {
        text.push_str(&format!(
            " ({} newer migrations are applied when a server starts on it)",
            info.pending.len()
        ));
    }
    text
}

/// `tokend backup --to FILE`.
pub async fn backup(config: &Config, to: &Path) -> Result<StoreFileInfo> {
    let source = store_file(config)?;
    if !source.exists() {
        return Err(Error::NotFound(format!(
            "no SQLite store at {}",
            source.path().display()
        )));
    }
    if to.exists() {
        return Err(Error::FailedPrecondition(format!(
            "{} already exists; give the backup a new name",
            to.display()
        )));
    }
    let partial = beside(to, ".tokend-partial");
    // Left over from an interrupted backup of ours (its name says so).
    let _ = fs::remove_file(&partial);
    let started = Instant::now();
    let result = async {
        source.backup_into(&partial).await?;
        let info = SqliteFile::at(&partial).inspect().await?;
        commit_file(&partial, to).map_err(|e| io_error("cannot finish", to, e))?;
        Ok(info)
    }
    .await;
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    println!(
        "backup of {} written to {} in {:.2} s",
        source.path().display(),
        to.display(),
        started.elapsed().as_secs_f64()
    );
    println!("  consistent snapshot: {}", describe(&info));
    println!("  checked: SQLite integrity_check ok, tokend migrations table present");
    println!("{KEY_FILE_NOTICE}");
    tracing::info!(tokens = info.tokens, events = info.events, "backup written");
    Ok(info)
}

/// `tokend restore --from FILE [--force]`.
pub async fn restore(config: &Config, from: &Path, force: bool) -> Result<StoreFileInfo> {
    let target = store_file(config)?;
    let backup = SqliteFile::at(from);
    let info = backup.inspect().await?;
    if target.exists() {
        if same_file(from, target.path()) {
            return Err(Error::FailedPrecondition(
                "the backup file is the store itself".into(),
            ));
        }
        if target.in_use().await? {
            return Err(Error::FailedPrecondition(format!(
                "{} is open in another process (a running tokend?); stop it before restoring",
                target.path().display()
            )));
        }
        if !force && target.holds_data().await? {
            return Err(Error::FailedPrecondition(format!(
                "{} holds tokens or audit events; pass --force to replace it \
                 (back it up first: `tokend backup --to FILE`)",
                target.path().display()
            )));
        }
    }
    let restoring = beside(target.path(), ".tokend-restoring");
    let result = (|| {
        fs::copy(from, &restoring).map_err(|e| io_error("cannot copy to", &restoring, e))?;
        for stale in target.companions() {
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("cannot remove", &stale, e)),
            }
        }
        commit_file(&restoring, target.path())
            .map_err(|e| io_error("cannot replace", target.path(), e))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&restoring);
        return Err(e);
    }
    println!(
        "restored {} from {}",
        target.path().display(),
        from.display()
    );
    println!("  {}", describe(&info));
    println!(
        "Start tokend on it with the verifier key file that was in use when the backup was taken \
         (the key is not in the backup)."
    );
    tracing::info!(tokens = info.tokens, events = info.events, "store restored");
    Ok(info)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
