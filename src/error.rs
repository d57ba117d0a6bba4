//! The one error type of the service and its single mapping to gRPC status
//! codes. Internal detail (database errors, I/O) is logged here and replaced by
//! a generic message: callers never see it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{FieldViolation, privilege::Denied};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("internal error: {0}")]
    Internal(String),
    /// Start-up configuration that cannot work (never a request's fault).
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// A "not found" that names the token id the caller asked for.
    pub fn token_not_found(id: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("token {id} not found"))
    }

    /// Maps an authorization refusal for the token `id`.
    pub fn denied(denied: Denied, id: impl std::fmt::Display) -> Self {
        match denied {
            Denied::NotFound => Self::token_not_found(id),
            Denied::Permission(why) => Self::PermissionDenied(why),
        }
    }

    /// Whether this error means "cannot reach the store" rather than a bug
    /// (the store error metric's `kind` label).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Database(e) => Self::db_is_unavailable(e),
            _ => false,
        }
    }

    /// Whether a database error means "cannot reach the store" rather than a bug.
    fn db_is_unavailable(err: &sea_orm::DbErr) -> bool {
        use sea_orm::{DbErr, RuntimeErr};
        match err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
            DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => {
                matches!(
                    **e,
                    sea_orm::sqlx::Error::Io(_)
                        | sea_orm::sqlx::Error::PoolTimedOut
                        | sea_orm::sqlx::Error::PoolClosed
                        | sea_orm::sqlx::Error::WorkerCrashed
                ) || is_busy(&e.to_string())
            }
            _ => false,
        }
    }
}

fn is_busy(message: &str) -> bool {
    message.contains("database is locked")
        || message.contains("terminating connection")
        || message.contains("connection refused")
}

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::InvalidArgument(vec![v])
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(Code::InvalidArgument, describe(&violations), details)
            }
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                Status::unavailable("the token store is unavailable; retry later")
            }
            Error::Database(e) if Error::db_is_unavailable(&e) => {
                tracing::warn!(error = %e, "store unavailable");
                Status::unavailable("the token store is unavailable; retry later")
            }
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                Status::internal("internal error")
            }
            Error::Internal(m) | Error::Config(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status: Status = Error::invalid("name", "must not be empty").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("name"));
        let details = status.get_error_details();
        let bad = details
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "name");
    }

    #[test]
    fn internal_detail_is_hidden() {
        let status: Status = Error::Internal("secret path /var/lib/x".into()).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/var/lib"));
    }
}
