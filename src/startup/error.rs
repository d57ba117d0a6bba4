//! What can stop the server from starting: a setting that cannot work, a
//! listener that cannot be bound, or a part of the service (store, verifier
//! keys, argon2, TLS, metrics) that failed to start. Never a request's fault,
//! so it is its own type rather than a variant of the request error.

use std::net::SocketAddr;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting that cannot work.
    #[error("configuration: {setting} {problem}")]
    Setting {
        setting: &'static str,
        problem: &'static str,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener's address could not be read.
    #[error("{what} listener address: {source}")]
    ListenerAddress {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor sets.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// A setting, or a file a setting names, cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The argon2 pool could not start.
    #[error(transparent)]
    Hasher(#[from] crate::validation::hasher::StartError),
    /// A part of the service could not start.
    #[error(transparent)]
    Service(#[from] Error),
}
