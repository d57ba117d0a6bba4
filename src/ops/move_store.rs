//! `tokend move --from URL --to URL`: copies a whole store into an empty one
//! and verifies it (the rules are in `store::copy`). Progress goes to stderr,
//! the report to stdout; a verification mismatch fails the command.

use std::{ops::ControlFlow, time::Instant};

use super::KEY_FILE_NOTICE;
use crate::{
    error::{Error, Result},
    store::{
        Store, StoreConfig,
        copy::{CopyOptions, CopyProgress, CopyReport},
        sqlite_file::SqliteFile,
    },
};

/// Connects to both stores (a SQLite source must exist; a SQLite target is
/// created) and runs the copy. `progress` may stop it (see `CopyProgress`).
pub async fn move_store(
    from: &str,
    to: &str,
    options: &CopyOptions,
    timeout: std::time::Duration,
    progress: &mut (dyn FnMut(CopyProgress) -> ControlFlow<()> + Send),
) -> Result<CopyReport> {
    if from == to {
        return Err(Error::invalid("to", "the target is the source"));
    }
    if let Some(file) = SqliteFile::from_url(from)?
        && !file.exists()
    {
        return Err(Error::NotFound(format!(
            "no SQLite store at {}",
            file.path().display()
        )));
    }
    let config = |url: &str| StoreConfig {
        url: url.to_owned().into(),
        max_connections: 4,
        timeout,
    };
    let source = Store::connect(&config(from)).await?;
    let target = Store::connect(&config(to)).await?;
    let result = source.move_into(&target, options, progress).await;
    source.close().await;
    target.close().await;
    result
}

/// `tokend move`: runs the copy with progress lines and prints the report.
pub async fn run(
    from: &str,
    to: &str,
    batch_rows: u64,
    timeout: std::time::Duration,
) -> Result<()> {
    let started = Instant::now();
    let mut last_table = None;
    let mut next_line = 0u64;
    let mut progress = |p: CopyProgress| {
        if last_table != Some(p.table) {
            last_table = Some(p.table);
            next_line = 0;
        }
        if p.copied >= next_line {
            eprintln!(
                "tokend move: {} {} rows copied ({:.1} s)",
                p.table.name(),
                p.copied,
                started.elapsed().as_secs_f64()
            );
            next_line = p.copied + 100_000;
        }
        ControlFlow::Continue(())
    };
    let options = CopyOptions {
        batch_rows: batch_rows.max(1),
    };
    let report = move_store(from, to, &options, timeout, &mut progress).await?;
    print_report(&report, started.elapsed());
    if report.verified() {
        Ok(())
    } else {
        Err(Error::Internal(
            "verification failed: the target does not hold exactly the source's rows (see the report); \
             do not switch to it. Start again with an empty target database"
                .into(),
        ))
    }
}

fn backend_name(b: sea_orm::DbBackend) -> &'static str {
    match b {
        sea_orm::DbBackend::Postgres => "PostgreSQL",
        sea_orm::DbBackend::Sqlite => "SQLite",
        _ => "other",
    }
}

/// The report, as printed to stdout.
pub fn print_report(report: &CopyReport, total: std::time::Duration) {
    println!(
        "tokend move: {} -> {}{}",
        backend_name(report.source_backend),
        backend_name(report.target_backend),
        if report.resumed {
            " (resumed an interrupted move)"
        } else {
            ""
        }
    );
    println!(
        "{:<16} {:>12} {:>12} {:>18} {:>18}  result",
        "table", "source rows", "target rows", "source checksum", "target checksum"
    );
    for t in &report.tables {
        println!(
            "{:<16} {:>12} {:>12} {:>18} {:>18}  {}{}",
            t.table.name(),
            t.source.rows,
            t.target.rows,
            t.source.hex(),
            t.target.hex(),
            if t.verified() { "ok" } else { "MISMATCH" },
            if t.resumed_rows > 0 {
                format!(" ({} rows from the earlier run)", t.resumed_rows)
            } else {
                String::new()
            }
        );
    }
    if report.derived.is_empty() {
        println!("derived tables (rebuilt by the target's triggers, never copied): none");
    } else {
        for (name, rows) in &report.derived {
            println!(
                "derived table {name}: {rows} rows, rebuilt by the target's triggers (not copied)"
            );
        }
    }
    for (seq, next) in &report.sequences {
        println!("sequence of {seq} moved past the copied ids: next value {next}");
    }
    println!(
        "copy {:.1} s, verification {:.1} s, total {:.1} s",
        report.copy_time.as_secs_f64(),
        report.verify_time.as_secs_f64(),
        total.as_secs_f64()
    );
    if report.verified() {
        println!("verified: every table's row count and checksum match");
    } else {
        println!("VERIFICATION FAILED: see the tables marked MISMATCH");
    }
    println!("{KEY_FILE_NOTICE}");
}
