//! The store's single choke point for database errors: every `DbErr` (and
//! the LISTEN connection's sqlx errors) becomes an `Error` here, classified
//! by what the database said (SQLSTATE on PostgreSQL, the result code on
//! SQLite, the driver's own error kinds), never by message text:
//!
//! - cannot reach the database, or it is shutting down: `Unreachable`;
//! - it is there but cannot take the call now (locked, out of connections,
//!   a serialization failure): `Busy`;
//! - anything else is a bug or corruption: `Database`, its detail kept for the
//!   log (callers see a generic INTERNAL).

use sea_orm::{DbErr, RuntimeErr, sqlx};

use crate::error::{Error, StoreFault};

impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        match classify_db(&e) {
            Some(fault) => Error::Unavailable(fault, e.to_string()),
            None => Error::Database(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match classify_sqlx(&e) {
            Some(fault) => Error::Unavailable(fault, e.to_string()),
            None => Error::Database(e.to_string()),
        }
    }
}

fn classify_db(e: &DbErr) -> Option<StoreFault> {
    match e {
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => {
            Some(StoreFault::Timeout)
        }
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Some(StoreFault::Unreachable),
        DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => None,
    }
}

fn classify_sqlx(e: &sqlx::Error) -> Option<StoreFault> {
    match e {
        sqlx::Error::PoolTimedOut => Some(StoreFault::Timeout),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(StoreFault::Unreachable),
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                fault_of_sqlstate(&code)
            } else {
                fault_of_sqlite(code.parse().ok()?)
            }
        }
        _ => None,
    }
}

/// A SQLite (extended) result code.
fn fault_of_sqlite(code: u32) -> Option<StoreFault> {
    // The primary result code is the low byte of an extended one.
    match code & 0xff {
        5 | 6 => Some(StoreFault::Busy), // SQLITE_BUSY, SQLITE_LOCKED
        10 | 14 => Some(StoreFault::Unreachable), // SQLITE_IOERR, SQLITE_CANTOPEN
        _ => None,
    }
}

/// A PostgreSQL SQLSTATE.
fn fault_of_sqlstate(code: &str) -> Option<StoreFault> {
    match code {
        // Class 08: connection exception.
        c if c.starts_with("08") => Some(StoreFault::Unreachable),
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped.
        "57P01" | "57P02" | "57P03" | "57P04" => Some(StoreFault::Unreachable),
        // too_many_connections, serialization_failure, deadlock_detected,
        // lock_not_available.
        "53300" | "40001" | "40P01" | "55P03" => Some(StoreFault::Busy),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_by_value_not_text() {
        assert_eq!(fault_of_sqlite(5), Some(StoreFault::Busy));
        assert_eq!(fault_of_sqlite(517), Some(StoreFault::Busy)); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(fault_of_sqlite(262), Some(StoreFault::Busy)); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(fault_of_sqlite(2067), None); // SQLITE_CONSTRAINT_UNIQUE
        assert_eq!(fault_of_sqlstate("08006"), Some(StoreFault::Unreachable));
        assert_eq!(fault_of_sqlstate("57P01"), Some(StoreFault::Unreachable));
        assert_eq!(fault_of_sqlstate("53300"), Some(StoreFault::Busy));
        assert_eq!(fault_of_sqlstate("23505"), None); // unique_violation: a bug here
        assert_eq!(fault_of_sqlstate("42P01"), None);
    }

    #[test]
    fn driver_errors_are_classified() {
        let timeout: Error =
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout).into();
        assert!(matches!(
            timeout,
            Error::Unavailable(StoreFault::Timeout, _)
        ));
        let closed: Error = sqlx::Error::PoolClosed.into();
        assert!(matches!(
            closed,
            Error::Unavailable(StoreFault::Unreachable, _)
        ));
        let other: Error = DbErr::RecordNotFound("x".into()).into();
        assert!(matches!(other, Error::Database(_)));
    }
}
