//! Envoy's external authorization, v3 (`envoy.service.auth.v3.Authorization/Check`),
//! on the gRPC port, with the published types and service of the
//! `envoy-types` crate. Envoy, Istio, Envoy Gateway, Contour, Gloo and
//! Emissary call it once per proxied request.
//!
//! - The gateway authenticates like every caller: its own tokend token (with
//!   `tokens:validate`, `tokens:admin` or `tokens:platform`) in the call's
//!   `authorization` metadata (Envoy: `grpc_service.initial_metadata`). A
//!   missing or rejected credential fails the call (`UNAUTHENTICATED`), which
//!   Envoy answers with its `status_on_error`: never a 401 that blames the
//!   client for the gateway's misconfiguration.
//! - The presented token: the request's `authorization: Bearer ...` header,
//!   or the header named by the route's context extension `token_header`
//!   (e.g. `x-api-key`, whose value is the bare token).
//! - Required modules: the route's context extension `required_modules`,
//!   comma-separated.
//! - Allowed: `OK` with the identity headers for the upstream (overwriting
//!   any the client sent), the credential header in `headers_to_remove`, and
//!   the same identity as dynamic metadata (namespace
//!   `envoy.filters.http.ext_authz`). Denied: the status, `WWW-Authenticate`
//!   and one-line body decided in `gateway`.
//!
//! Envoy sends the request's headers in `headers` (lowercase names), or in
//! `header_map` with `encode_raw_headers: true`; both are read. A
//! `CheckRequest` carries the client's credentials in clear: it is never
//! logged or shown with `{:?}`.

use std::{collections::HashMap, sync::Arc};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            attribute_context::HttpRequest, authorization_server::Authorization,
            check_response::HttpResponse,
        },
        r#type::v3::{HttpStatus, StatusCode},
    },
    google::{
        protobuf::{ListValue, Struct, Value, value::Kind},
        rpc,
    },
};
use tonic::{Request, Response, Status};

use super::gateway::{self, AUTHORIZATION, Decision, Denial, Identity, Presented};
use crate::{error::Result, manage::TokenManager, telemetry::metrics::Gateway};

pub use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// Descriptor set of `envoy/service/auth/v3/external_auth.proto` and its
/// imports, for gRPC reflection (built from `proto/third_party` by build.rs).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_ext_authz_descriptor");

/// Context extension naming the header that carries the token (bare, or
/// `Bearer <token>`); default: `authorization`, `Bearer <token>`.
pub const TOKEN_HEADER: &str = "token_header";
/// Context extension listing the required modules, comma-separated.
pub const REQUIRED_MODULES: &str = "required_modules";

/// `google.rpc.Code` values Envoy reads in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// The `envoy.service.auth.v3.Authorization` implementation.
#[derive(Clone)]
pub struct ExtAuthzApi {
    manager: Arc<TokenManager>,
}

impl ExtAuthzApi {
    pub fn new(manager: Arc<TokenManager>) -> Self {
        Self { manager }
    }

    async fn inner_check(&self, req: Request<CheckRequest>) -> Result<CheckResponse> {
        let caller = super::authenticate(&self.manager, req.metadata()).await?;
        let attributes = req.get_ref().attributes.as_ref();
        let extensions = attributes.map(|a| &a.context_extensions);
        let extension = |key: &str| extensions.and_then(|e| e.get(key)).map(String::as_str);
        let mut required = Vec::new();
        if let Some(list) = extension(REQUIRED_MODULES) {
            gateway::required_modules("context_extensions.required_modules", list, &mut required)?;
        }
        let http = attributes
            .and_then(|a: &AttributeContext| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let header = match extension(TOKEN_HEADER).map(str::trim) {
            Some(name) if !name.is_empty() => name,
            _ => AUTHORIZATION,
        };
        let presented = match find_header(http, header) {
            None => Presented::Missing,
            Some(value) if header.eq_ignore_ascii_case(AUTHORIZATION) => Presented::bearer(value),
            Some(value) => Presented::raw(value),
        };
        let decision = gateway::decide(
            &self.manager,
            &caller,
            presented,
            &required,
            Gateway::ExtAuthz,
        )
        .await?;
        Ok(match decision {
            Decision::Allow(identity) => allowed(&identity, header),
            Decision::Deny(denial) => denied(denial),
        })
    }
}

/// A request header's value: from `headers` (lowercase names), else from
/// `header_map` (raw headers), compared without case.
fn find_header<'a>(http: Option<&'a HttpRequest>, name: &str) -> Option<&'a [u8]> {
    let http = http?;
    let from_map = |headers: &'a HashMap<String, String>| {
        headers
            .get(name)
            .or_else(|| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .map(String::as_bytes)
    };
    from_map(&http.headers).or_else(|| {
        http.header_map
            .as_ref()?
            .headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    h.raw_value.as_slice()
                }
            })
    })
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        // Replace whatever the client sent under these names: the upstream
        // must be able to trust them.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn allowed(identity: &Identity, credential_header: &str) -> CheckResponse {
    let headers = identity
        .headers()
        .iter()
        .map(|(k, v)| header(k, v))
        .collect();
    let modules = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: identity.modules().map(string).collect(),
        })),
    };
    let metadata = Struct {
        fields: HashMap::from([
            ("token_id".to_owned(), string(identity.token_id())),
            ("account_id".to_owned(), string(identity.account_id())),
            ("owner_id".to_owned(), string(identity.owner_id())),
            ("modules".to_owned(), modules),
            ("api_version".to_owned(), string(identity.api_version())),
        ]),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            // A token must not reach the backends.
            headers_to_remove: vec![credential_header.to_ascii_lowercase()],
            ..Default::default()
        })),
        dynamic_metadata: Some(metadata),
    }
}

fn denied(denial: Denial) -> CheckResponse {
    let (code, status) = match denial.status {
        403 => (PERMISSION_DENIED, StatusCode::Forbidden),
        _ => (UNAUTHENTICATED, StatusCode::Unauthorized),
    };
    CheckResponse {
        status: Some(rpc::Status {
            code,
            message: denial.reason.to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: status as i32,
            }),
            headers: denial
                .headers()
                .iter()
                .map(|(name, value)| header(name, value))
                .collect(),
            body: denial.body.to_owned(),
        })),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    #[tracing::instrument(
        level = "debug",
        name = "ext_authz.Check",
        skip_all,
        fields(caller, account)
    )]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        match self.inner_check(request).await {
            Ok(response) => Ok(Response::new(response)),
            Err(err) => {
                gateway::refused(Gateway::ExtAuthz, &err);
                Err(Status::from(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;

    use super::*;

    fn http(headers: &[(&str, &str)], raw: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            header_map: (!raw.is_empty()).then(|| HeaderMap {
                headers: raw
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn headers_are_found_in_either_encoding() {
        let h = http(&[("authorization", "Bearer a")], &[]);
        assert_eq!(
            find_header(Some(&h), "authorization"),
            Some(&b"Bearer a"[..])
        );
        assert_eq!(find_header(Some(&h), "x-api-key"), None);
        let raw = http(&[], &[("X-Api-Key", "k")]);
        assert_eq!(find_header(Some(&raw), "x-api-key"), Some(&b"k"[..]));
        assert_eq!(find_header(None, "x-api-key"), None);
    }

    #[test]
    fn the_descriptor_set_has_the_check_method() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .unwrap();
        let service = &file.service[0];
        assert_eq!(service.name(), "Authorization");
        assert_eq!(service.method[0].name(), "Check");
        // Every import is in the set, so reflection clients can resolve it.
        for dep in &file.dependency {
            assert!(set.file.iter().any(|f| f.name() == dep), "{dep} missing");
        }
    }
}
