//! Generated protobuf and gRPC types for `tokens.v1`, plus the file descriptor
//! set served by reflection.
//!
//! Messages that carry token values or secrets have no generated `Debug`
//! (see build.rs); the hand-written ones below redact those fields, so a stray
//! `{:?}` can never print a secret.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

use std::fmt;

tonic::include_proto!("tokens.v1");

/// The server side of `TokenService`, generated in a second pass of build.rs
/// so that Validate can reply with `api::wire::ValidateReply`.
mod server {
    include!(concat!(env!("OUT_DIR"), "/server/tokens.v1.rs"));
}
pub use server::token_service_server;

/// Descriptor set of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokens_v1_descriptor");

const REDACTED: &str = "<redacted>";

impl fmt::Debug for IssueResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueResponse")
            .field("token", &self.token)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for RotateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateResponse")
            .field("token", &self.token)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for DuplicateResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DuplicateResponse")
            .field("token", &self.token)
            .field("secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateRequest")
            .field("token", &REDACTED)
            .field("required_modules", &self.required_modules)
            .finish()
    }
}

impl fmt::Debug for RevokeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("target", &self.target)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Debug for revoke_request::Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => f.debug_tuple("Id").field(id).finish(),
            Self::Token(_) => f.debug_tuple("Token").field(&REDACTED).finish(),
        }
    }
}

impl fmt::Debug for SearchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `query` may be a full token value.
        f.debug_struct("SearchRequest")
            .field("account_id", &self.account_id)
            .field("query", &REDACTED)
            .field("states", &self.states)
            .field("owner_id", &self.owner_id)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let secret = "tk_0123456789abcdef_supersecret".to_owned();
        let outputs = [
            format!(
                "{:?}",
                IssueResponse {
                    token: None,
                    secret: secret.clone()
                }
            ),
            format!(
                "{:?}",
                RotateResponse {
                    token: None,
                    secret: secret.clone()
                }
            ),
            format!(
                "{:?}",
                DuplicateResponse {
                    token: None,
                    secret: secret.clone()
                }
            ),
            format!(
                "{:?}",
                ValidateRequest {
                    client_ip: String::new(),
                    token: secret.clone(),
                    required_modules: vec![]
                }
            ),
            format!(
                "{:?}",
                RevokeRequest {
                    target: Some(revoke_request::Target::Token(secret.clone())),
                    reason: String::new()
                }
            ),
            format!(
                "{:?}",
                SearchRequest {
                    query: secret.clone(),
                    ..Default::default()
                }
            ),
        ];
        for out in outputs {
            assert!(!out.contains("supersecret"), "{out}");
        }
    }
}
