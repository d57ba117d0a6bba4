//! Where the verifier keys come from: the configured key file, or, for the
//! embedded SQLite default with nothing configured, `tokend.key` beside the
//! database file, created on first start (mode 0600, never overwritten) so
//! that the two-command start needs no setting.
//!
//! A shared store (PostgreSQL) needs a configured file: replicas with
//! different keys would not share verifiers, so a missing key is an error
//! there, not something to invent.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::verifier::Keyring;
use crate::config::ConfigError;

/// The key file made beside a SQLite database when none is configured.
pub const DEFAULT_FILE_NAME: &str = "tokend.key";

/// Where the keys were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The configured file.
    Configured(PathBuf),
    /// `tokend.key` beside the SQLite database, read from an earlier start.
    Beside(PathBuf),
    /// `tokend.key` beside the SQLite database, created by this start.
    Created(PathBuf),
    /// In-memory SQLite: a random key that dies with the process, like the data.
    Ephemeral,
}

/// Loads the keyring: from `configured`, else beside `sqlite_file`, else (a
/// shared store) refuses to start.
pub fn load(
    configured: Option<&Path>,
    sqlite_file: Option<&Path>,
    shared: bool,
) -> Result<(Keyring, KeySource), ConfigError> {
    if let Some(path) = configured {
        return Ok((read(path)?, KeySource::Configured(path.to_owned())));
    }
    if shared {
        return Err(ConfigError::new(
            "--verifier-key-file",
            "no verifier key: set --verifier-key-file (TOKEND_VERIFIER_KEY_FILE) to a file \
             made by `tokend keygen`, the same file on every replica",
        ));
    }
    let Some(db) = sqlite_file else {
        let keyring = Keyring::parse(&Zeroizing::new(Keyring::generate_line()))
            .map_err(|e| ConfigError::new("verifier key", format!("generated key: {e}")))?;
        return Ok((keyring, KeySource::Ephemeral));
    };
    let path = db
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(DEFAULT_FILE_NAME);
    match create(&path) {
        Ok(()) => Ok((read(&path)?, KeySource::Created(path))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((read(&path)?, KeySource::Beside(path)))
        }
        Err(e) => Err(ConfigError::new(
            "verifier key",
            format!("cannot create the key file {}: {e}", path.display()),
        )),
    }
}

/// Reads and parses a key file; warns when every user may read it (a group
/// read is how Kubernetes mounts a Secret for a non-root pod).
fn read(path: &Path) -> Result<Keyring, ConfigError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "--verifier-key-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o007 != 0
        {
            tracing::warn!(path = %path.display(), "the verifier key file is readable by every user; chmod o-rwx it");
        }
    }
    Keyring::parse(&text).map_err(|e| {
        ConfigError::new(
            "--verifier-key-file",
            format!("{} is unusable: {e}", path.display()),
        )
    })
}

/// Creates a new key file with one fresh key, readable by its owner only;
/// fails with `AlreadyExists` rather than overwrite one.
fn create(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let line = Zeroizing::new(Keyring::generate_line());
    let written = writeln!(
        file,
        "# tokend verifier keys: the first line is current. Back this file up with the\n\
         # database and keep it secret; `tokend keygen` makes a new line for rotation.\n{}",
        *line
    )
    .and_then(|()| file.sync_all());
    if written.is_err() {
        // A half-written key file must not be found and trusted next time.
        let _ = std::fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sqlite_default_creates_a_private_key_file_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tokend.db");
        let (first, source) = load(None, Some(&db), false).unwrap();
        let path = dir.path().join(DEFAULT_FILE_NAME);
        assert_eq!(source, KeySource::Created(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (again, source) = load(None, Some(&db), false).unwrap();
        assert_eq!(source, KeySource::Beside(path.clone()));
        assert_eq!(again.current_id(), first.current_id());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_shared_store_needs_a_configured_key() {
        let err = load(None, None, true).unwrap_err().to_string();
        assert!(err.contains("--verifier-key-file"), "{err}");
        assert!(err.contains("tokend keygen"), "{err}");
    }

    #[test]
    fn a_configured_file_is_read_and_errors_never_echo_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let line = Keyring::generate_line();
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let (ring, source) = load(Some(&path), None, true).unwrap();
        assert_eq!(source, KeySource::Configured(path.clone()));
        assert_eq!(Some(ring.current_id()), line.split(':').next());
        std::fs::write(&path, format!("{line}x\n")).unwrap();
        let err = load(Some(&path), None, true).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains(&line[10..]), "{err}");
        let missing = load(Some(&dir.path().join("nope")), None, false);
        assert!(missing.is_err());
    }
}
