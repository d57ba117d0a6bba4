//! HTTP forward-auth for gateways: nginx `auth_request`, Caddy
//! `forward_auth`, Traefik `ForwardAuth` and Envoy's HTTP ext_authz mode send
//! a subrequest with the client's headers; a 2xx answer lets the request
//! through, 401 and 403 deny it, and the answer's headers carry the identity.
//!
//! Any method on `/v1/forward-auth` (and any path under it: Envoy's HTTP
//! mode, and so Istio's `envoyExtAuthzHttp` provider, append the request's
//! path to the configured prefix):
//!
//! - the presented token: `Authorization: Bearer <token>`, else `X-Api-Key`
//!   (the bare token);
//! - required modules: the `X-Tokend-Modules` header (comma-separated) and
//!   the `modules` query parameter (comma-separated, repeatable). Both count,
//!   so a client that reaches the query string can only add requirements;
//!   the proxy sets (or strips) the header on every route;
//! - the gateway's own credential: `X-Tokend-Authorization: Bearer <token>`,
//!   a token with `tokens:validate` (or admin, platform), checked as gRPC
//!   metadata is;
//! - the client address, for IP-bound tokens (`client_ip`): the TCP peer,
//!   unless the peer is in `--trusted-proxies`; then the right-most
//!   `X-Forwarded-For` address that is not itself trusted, else `X-Real-IP`,
//!   else none (which a bound token refuses: binding fails closed).
//!
//! Allowed: 200 with `X-Tokend-Token-Id`, `-Account-Id`, `-Owner-Id`,
//! `-Modules`, `-Api-Version` (all five, even when empty), and
//! `x-envoy-auth-headers-to-remove` naming the header the token came in, which
//! Envoy's HTTP mode removes before the upstream; denied: 401/403 with `WWW-Authenticate` and a
//! one-line body (`api::gateway` decides both, as for ext_authz). A refused
//! gateway (credential missing or wrong, no privilege, a bad modules
//! setting) gets 500 with `X-Tokend-Error`: nginx answers its client 500 for
//! any status but 2xx/401/403, and Caddy passes it on; neither blames the
//! client. A store outage is 503, a throttled token id 429.

use std::{net::IpAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::Response,
    routing::any,
};
use tonic::Code;

use crate::{
    api::gateway::{self, Decision, Denial, Identity, Presented},
    domain::policy::Cidr,
    error::{Error, Result},
    http::Peer,
    manage::TokenManager,
    telemetry::metrics::Gateway,
};

/// Where gateways send their subrequests.
pub const PATH: &str = "/v1/forward-auth";
/// The gateway's own credential.
pub const GATEWAY_CREDENTIAL: &str = "x-tokend-authorization";
/// The required modules, set by the proxy per route.
pub const MODULES_HEADER: &str = "x-tokend-modules";
/// The bare token, when not in `Authorization`.
pub const API_KEY: &str = "x-api-key";
/// The query parameter with required modules.
pub const MODULES_PARAM: &str = "modules";
/// Set on a refused or failed call: what went wrong (a gRPC code name).
pub const ERROR_HEADER: &str = "x-tokend-error";
/// Envoy's HTTP ext_authz mode removes the headers this lists before the upstream.
const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The forwarded-for header of proxies (a comma list per line, the
/// nearest hop last) and nginx's single-address alternative.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";

/// What the handler needs: the use-cases, and `--trusted-proxies`.
#[derive(Clone)]
struct Gate {
    manager: Arc<TokenManager>,
    trusted: Arc<[Cidr]>,
}

/// The forward-auth routes, served on `--http-listen` (with `Peer` connect
/// info: `http::serve`), believing forwarded addresses from `trusted` peers.
pub fn router(manager: Arc<TokenManager>, trusted: Vec<Cidr>) -> Router {
    Router::new()
        .route(PATH, any(forward_auth))
        .route(&format!("{PATH}/{{*path}}"), any(forward_auth))
        .with_state(Gate {
            manager,
            trusted: trusted.into(),
        })
}

async fn forward_auth(State(gate): State<Gate>, request: Request) -> Response {
    // The body is not read; the parts are what is judged (and, unlike the
    // body, can be held across awaits).
    let (parts, _) = request.into_parts();
    // Without connect info (a router served some other way) the client is
    // unknown: IP-bound tokens are refused, others unaffected.
    let peer = parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(addr))| addr.ip());
    let client_ip = peer.and_then(|peer| client_ip(peer, &parts.headers, &gate.trusted));
    match judge(&gate.manager, &parts, peer, client_ip).await {
        Ok((Decision::Allow(identity), header)) => allowed(&identity, header),
        Ok((Decision::Deny(denial), _)) => denied(denial),
        Err(err) => {
            gateway::refused(Gateway::ForwardAuth, &err);
            failed(err)
        }
    }
}

/// The end client's address as `peer` (the TCP peer) and the proxies it
/// vouches for tell it: `peer` itself unless it is `trusted`; then the
/// right-most `X-Forwarded-For` address that is not trusted (proxies append
/// the address they received from, so entries left of an untrusted one may
/// be the client's own inventions), else `X-Real-IP`. `None` when a trusted
/// peer vouches for nothing usable (an entry that is not an address ends the
/// walk: nothing left of it can be believed).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    if !Cidr::any_contains(trusted, peer) {
        return Some(peer);
    }
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let line = line.to_str().ok()?;
        for item in line.rsplit(',').map(str::trim).filter(|i| !i.is_empty()) {
            let ip = forwarded_address(item)?;
            if !Cidr::any_contains(trusted, ip) {
                return Some(ip);
            }
        }
    }
    headers
        .get(X_REAL_IP)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| forwarded_address(v.trim()))
}

/// One forwarded address: bare, or with a port (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`), as some proxies write them.
fn forwarded_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The decision, and the header the token came in. `peer` (the gateway
/// itself) is where the gateway's credential comes from; `client_ip` is
/// where the end client's token does.
async fn judge(
    manager: &TokenManager,
    request: &Parts,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
) -> Result<(Decision, &'static str)> {
    let headers = &request.headers;
    let credential = headers.get(GATEWAY_CREDENTIAL).ok_or_else(|| {
        Error::Unauthenticated(
            "missing gateway credential: send `X-Tokend-Authorization: Bearer <token>`".into(),
        )
    })?;
    let caller = crate::api::authenticate_bearer(
        manager,
        Some(credential.as_bytes()),
        "X-Tokend-Authorization",
        peer,
        None,
    )
    .await?;
    let mut required = smallvec::SmallVec::<[String; 4]>::new();
    for value in headers.get_all(MODULES_HEADER) {
        let list = value.to_str().map_err(|_| {
            Error::invalid(
                "X-Tokend-Modules",
                "must be module names separated by commas",
            )
        })?;
        gateway::required_modules("X-Tokend-Modules", list, &mut required)?;
    }
    if let Some(query) = request.uri.query() {
        for (name, list) in form_urlencoded::parse(query.as_bytes()) {
            if name == MODULES_PARAM {
                gateway::required_modules("modules", &list, &mut required)?;
            }
        }
    }
    let (presented, header) = presented(headers);
    let decision = gateway::decide(
        manager,
        &caller,
        presented,
        &required,
        client_ip,
        Gateway::ForwardAuth,
    )
    .await?;
    Ok((decision, header))
}

/// `Authorization: Bearer`, else `X-Api-Key`, else none; and the header.
fn presented(headers: &HeaderMap) -> (Presented<'_>, &'static str) {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let found @ Presented::Value(_) = Presented::bearer(value.as_bytes())
    {
        return (found, gateway::AUTHORIZATION);
    }
    let found = headers
        .get(API_KEY)
        .map_or(Presented::Missing, |v| Presented::raw(v.as_bytes()));
    (found, API_KEY)
}

/// Sets each (lowercase name, value); values are header-safe ASCII by
/// construction (ids, modules, versions, fixed texts), any other is left out.
fn set_headers<'a>(
    response: &mut Response,
    headers: impl IntoIterator<Item = (&'static str, &'a str)>,
) {
    let map = response.headers_mut();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
}

fn allowed(identity: &Identity, credential_header: &'static str) -> Response {
    let mut response = Response::new(Body::empty());
    // All five, even when empty: Caddy 2.6 would otherwise pass its
    // placeholder text upstream for a missing one.
    let headers = identity.headers();
    set_headers(&mut response, headers.iter().map(|(k, v)| (*k, &**v)));
    set_headers(
        &mut response,
        [(ENVOY_HEADERS_TO_REMOVE, credential_header)],
    );
    response
}

fn denied(denial: Denial) -> Response {
    let mut response = Response::new(Body::from(denial.body));
    *response.status_mut() =
        StatusCode::from_u16(denial.status).unwrap_or(StatusCode::UNAUTHORIZED);
    set_headers(&mut response, denial.headers());
    response
}

/// A call without a verdict, mapped through the one error mapping
/// (`Status::from`, which logs store and internal errors). The body never
/// says more than the gateway's client should see.
fn failed(err: Error) -> Response {
    let status = tonic::Status::from(err);
    let (http, body) = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "tokend: the gateway is not set up to call tokend; see tokend's log\n",
        ),
        Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "tokend: the token store is unavailable; retry later\n",
        ),
        Code::ResourceExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "tokend: too many failed verifications for this token; retry later\n",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "tokend: internal error\n",
        ),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = http;
    set_headers(
        &mut response,
        [
            ("content-type", "text/plain; charset=utf-8"),
            (ERROR_HEADER, code_name(status.code())),
        ],
    );
    response
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unavailable => "UNAVAILABLE",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_comes_from_authorization_then_x_api_key() {
        let both = headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert!(matches!(
            presented(&both),
            (Presented::Value("a"), "authorization")
        ));
        let basic = headers(&[("authorization", "Basic x"), ("x-api-key", "b")]);
        assert!(matches!(
            presented(&basic),
            (Presented::Value("b"), "x-api-key")
        ));
        let only_basic = headers(&[("authorization", "Basic x")]);
        assert!(matches!(presented(&only_basic).0, Presented::Missing));
        assert!(matches!(presented(&headers(&[])).0, Presented::Missing));
    }

    #[test]
    fn the_client_address_is_the_one_trusted_proxies_vouch_for() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = [
            Cidr::parse("t", "10.0.0.0/8").unwrap(),
            Cidr::parse("t", "::1").unwrap(),
        ];
        let xff = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.4"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-real-ip", "192.0.2.1"),
        ]);
        // An untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &xff, &trusted),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(ip("203.0.113.5"), &xff, &[]),
            Some(ip("203.0.113.5"))
        );
        // A trusted peer: the right-most untrusted hop, not the spoofable left.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff, &trusted),
            Some(ip("198.51.100.4"))
        );
        assert_eq!(
            client_ip(ip("::1"), &xff, &trusted),
            Some(ip("198.51.100.4"))
        );
        // IPv4 peers on a dual-stack socket.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &xff, &trusted),
            Some(ip("198.51.100.4"))
        );
        // Only trusted hops, or none: X-Real-IP; nothing at all: unknown.
        let real = headers(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("x-real-ip", "2001:db8::9"),
        ]);
        assert_eq!(
            client_ip(ip("::1"), &real, &trusted),
            Some(ip("2001:db8::9"))
        );
        assert_eq!(client_ip(ip("::1"), &headers(&[]), &trusted), None);
        // Ports are dropped; garbage ends the walk (fail closed).
        let ported = headers(&[("x-forwarded-for", "[2001:db8::7]:4711, 10.0.0.1:80")]);
        assert_eq!(
            client_ip(ip("::1"), &ported, &trusted),
            Some(ip("2001:db8::7"))
        );
        let garbage = headers(&[("x-forwarded-for", "198.51.100.4, unknown")]);
        assert_eq!(client_ip(ip("::1"), &garbage, &trusted), None);
    }

    #[test]
    fn a_refused_gateway_is_a_server_error_not_a_client_denial() {
        for err in [
            Error::Unauthenticated("no".into()),
            Error::PermissionDenied("no".into()),
            Error::invalid("X-Tokend-Modules", "bad"),
        ] {
            let r = failed(err);
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
            assert!(r.headers().get(ERROR_HEADER).is_some());
        }
        assert_eq!(
            failed(Error::Unavailable(
                crate::error::StoreFault::Unreachable,
                "down".into()
            ))
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
