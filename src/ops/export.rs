//! `tokend events export`: the audit trail (or a time range of it, or one
//! account's part) as JSON lines, oldest first, in the format of
//! `api::export`. Read in id order, one page at a time, so a large trail
//! never sits in memory; a file is written under a temporary name and
//! renamed when complete.

use std::{
    fs,
    io::{self, BufWriter, Write},
    path::Path,
};

use super::{beside, commit_file};
use crate::{
    api::export::event_json_line,
    error::{Error, Result},
    store::{EventRange, Store},
};

const PAGE: u64 = 1000;

/// Writes the events of `range` to `out` (`-`: stdout); returns how many.
pub async fn export(store: &Store, range: &EventRange, out: &str) -> Result<u64> {
    if out == "-" {
        let stdout = io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        let n = write_events(store, range, &mut w).await?;
        w.flush()
            .map_err(|e| Error::Internal(format!("writing stdout: {e}")))?;
        return Ok(n);
    }
    let path = Path::new(out);
    let partial = beside(path, ".tokend-partial");
    let written = async {
        let file = fs::File::create(&partial)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", partial.display())))?;
        let mut w = BufWriter::new(file);
        let n = write_events(store, range, &mut w).await?;
        w.flush()
            .map_err(|e| Error::Internal(format!("writing {}: {e}", partial.display())))?;
        drop(w);
        commit_file(&partial, path)
            .map_err(|e| Error::Internal(format!("cannot finish {}: {e}", path.display())))?;
        Ok(n)
    }
    .await;
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

async fn write_events(store: &Store, range: &EventRange, w: &mut impl Write) -> Result<u64> {
    let mut after = 0i64;
    let mut count = 0u64;
    loop {
        let page = store.export_events(range, after, PAGE).await?;
        for event in &page {
            writeln!(w, "{}", event_json_line(event))
                .map_err(|e| Error::Internal(format!("writing events: {e}")))?;
            after = event.id;
        }
        count += page.len() as u64;
        if (page.len() as u64) < PAGE {
            return Ok(count);
        }
    }
}
