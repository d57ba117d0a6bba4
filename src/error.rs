//! The one error type of the service and its single mapping to gRPC status
//! codes. The mapping is pure: internal detail (database errors, I/O) is
//! replaced by a generic message callers see, and logged once, where the
//! error is handled (`log`, called by the api layer). Database errors are
//! classified where they arise, in `store/` (`store::error`).

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
    #[error("store unavailable ({0}): {1}")]
    Unavailable(StoreFault, String),
    /// The database failed in a way that is a bug or corruption.
    #[error("database error: {0}")]
    Database(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The server could not start (`tokend serve`), or a listener could not
    /// be bound again under the supervisor.
    #[error(transparent)]
    Startup(Box<crate::startup::StartupError>),
}

impl From<crate::startup::StartupError> for Error {
    fn from(e: crate::startup::StartupError) -> Self {
        match e {
            // Not wrapped twice.
            crate::startup::StartupError::Service(inner) => inner,
            other => Self::Startup(Box::new(other)),
        }
    }
}

/// A configuration error met outside `serve` (a command such as `tokend
/// move` loading the verifier key): reported like a start-up error.
impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        crate::startup::StartupError::Config(e).into()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the store could not serve a call: UNAVAILABLE to callers, who may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// The call exceeded the store timeout.
    Timeout,
    /// The database cannot be reached (or is shutting down).
    Unreachable,
    /// The database is there but cannot take the call now (locked, out of
    /// connections, a serialization failure).
    Busy,
}

impl std::fmt::Display for StoreFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timed out",
            Self::Unreachable => "unreachable",
            Self::Busy => "busy",
        })
    }
}

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

    /// Whether this error means "cannot reach the store" rather than a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(..))
    }

    /// Logs this error once, where it is handled: store trouble as a warning,
    /// bugs as errors with their detail (which callers never see), nothing
    /// for an ordinary refusal (bad input, denied, not found...).
    pub fn log(&self) {
        match self {
            Self::Unavailable(fault, detail) => {
                tracing::warn!(%fault, error = %detail, "store unavailable")
            }
            Self::Database(detail) => tracing::error!(error = %detail, "database error"),
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error")
            }
            Self::Startup(e) => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
    }
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
            Error::Unavailable(..) => {
                Status::unavailable("the token store is unavailable; retry later")
            }
            Error::Database(_) | Error::Internal(_) | Error::Startup(_) => {
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
