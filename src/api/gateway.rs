//! What the two gateway contracts share: Envoy's ext_authz (`ext_authz`, gRPC)
//! and HTTP forward-auth for nginx, Caddy and Traefik (`http::forward_auth`).
//! Both read a presented token and required modules from the proxied request,
//! get a verdict from `TokenManager::validate` (the same cache, coherence and
//! last-used recording as Validate) and answer the proxy in HTTP terms, which
//! this module decides once for both:
//!
//! - valid: allow, with the token's identity for the upstream
//!   (`x-tokend-token-id`, `-account-id`, `-owner-id`, `-modules`,
//!   `-api-version`), and the credential header removed before it;
//! - no token: 401, `WWW-Authenticate: Bearer realm="tokend"` (RFC 6750 §3.1:
//!   a request without credentials gets no error code);
//! - malformed, unknown, disabled, revoked, expired: 401 with
//!   `error="invalid_token"`;
//! - a required module missing: 403 with `error="insufficient_scope"` and the
//!   required modules as `scope`;
//! - an IP-bound token from outside its ranges (or from an address the
//!   contract could not establish): 403 with `error="invalid_token"`. The
//!   client address is Envoy's `source.address` for ext_authz, and for
//!   forward-auth the one `--trusted-proxies` vouch for (`http::forward_auth`).
//!
//! Each denial's body is one line naming the reason; no answer ever carries
//! the presented token. A gateway refused before any verdict (its own
//! credential missing or wrong, or without `tokens:validate`) is a
//! misconfigured gateway, not a client's fault: the contracts answer it with
//! an error (gRPC status, HTTP 500), never a 401 that would blame the client,
//! and tokend logs it (`refused`).

use std::{
    borrow::Cow,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use smallvec::SmallVec;

use crate::{
    domain::{Caller, TokenValue, fields, token_value::MalformedToken},
    error::{Error, Result},
    manage::TokenManager,
    telemetry::metrics::{self, Gateway, GatewayResult},
    validation::{Reason, cache::Entry},
};

/// The realm of every `WWW-Authenticate` challenge.
pub const REALM: &str = "tokend";

/// Identity headers set on an allowed request, in this order (lowercase, as
/// HTTP/2 and Envoy want them).
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-tokend-token-id",
    "x-tokend-account-id",
    "x-tokend-owner-id",
    "x-tokend-modules",
    "x-tokend-api-version",
];

/// The header a client presents its token in by default, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// The token a proxied request presented, as found by a contract.
#[derive(Clone, Copy)]
pub enum Presented<'a> {
    /// No credential (or an `Authorization` with another scheme).
    Missing,
    /// The text presented, not yet parsed.
    Value(&'a str),
}

impl Presented<'_> {
    /// From an `Authorization` value: `Bearer <token>`, else missing.
    pub fn bearer(header: &[u8]) -> Presented<'_> {
        super::bearer(header).map_or(Presented::Missing, Presented::Value)
    }

    /// From a header that carries the bare token (e.g. `X-Api-Key`); a
    /// `Bearer ` prefix is accepted too.
    pub fn raw(header: &[u8]) -> Presented<'_> {
        if let Some(token) = super::bearer(header) {
            return Presented::Value(token);
        }
        match std::str::from_utf8(header).map(str::trim) {
            Ok("") => Presented::Missing,
            Ok(token) => Presented::Value(token),
            // Not text: certainly not a token, but a token was presented.
            Err(_) => Presented::Value(""),
        }
    }
}

/// The gateway's decision about one proxied request.
pub enum Decision {
    Allow(Identity),
    Deny(Denial),
}

/// An allowed token, for the upstream headers and Envoy's dynamic metadata.
pub struct Identity {
    entry: Arc<Entry>,
}

impl Identity {
    pub fn token_id(&self) -> &str {
        self.entry.snapshot.id.as_str()
    }

    pub fn account_id(&self) -> &str {
        self.entry.snapshot.account_id()
    }

    pub fn owner_id(&self) -> &str {
        self.entry.snapshot.owner_id()
    }

    pub fn api_version(&self) -> &str {
        self.entry.snapshot.api_version()
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> + Clone {
        self.entry.snapshot.modules()
    }

    /// `IDENTITY_HEADERS` with their values; modules comma-separated.
    pub fn headers(&self) -> [(&'static str, Cow<'_, str>); 5] {
        let mut modules = String::new();
        for m in self.modules() {
            if !modules.is_empty() {
                modules.push(',');
            }
            modules.push_str(m);
        }
        [
            (IDENTITY_HEADERS[0], Cow::Borrowed(self.token_id())),
            (IDENTITY_HEADERS[1], Cow::Borrowed(self.account_id())),
            (IDENTITY_HEADERS[2], Cow::Borrowed(self.owner_id())),
            (IDENTITY_HEADERS[3], Cow::Owned(modules)),
            (IDENTITY_HEADERS[4], Cow::Borrowed(self.api_version())),
        ]
    }
}

/// A denied request: what the proxy answers its client.
pub struct Denial {
    /// 401 or 403.
    pub status: u16,
    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    pub www_authenticate: Cow<'static, str>,
    /// One line, ending in a newline; never the token.
    pub body: &'static str,
    /// Why, as in the metrics and the Validate reason (`missing_token` when
    /// none was presented).
    pub reason: &'static str,
}

/// The header that repeats a denial's body line (without `tokend: ` and
/// the newline), for proxies that pass headers but not an auth response's
/// body (nginx `auth_request_set`).
pub const REASON_HEADER: &str = "x-tokend-reason";

impl Denial {
    /// The headers of the denial response, lowercase: `WWW-Authenticate`,
    /// the body's type, and the reason again (`REASON_HEADER`).
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        let line = self.body.trim_end();
        [
            ("www-authenticate", &self.www_authenticate),
            ("content-type", "text/plain; charset=utf-8"),
            (REASON_HEADER, line.strip_prefix("tokend: ").unwrap_or(line)),
        ]
    }

    fn missing() -> Self {
        Self {
            status: 401,
            www_authenticate: Cow::Borrowed(r#"Bearer realm="tokend""#),
            body: "tokend: no token presented\n",
            reason: "missing_token",
        }
    }

    fn of(reason: Reason, required: &[impl AsRef<str>]) -> Self {
        macro_rules! invalid {
            ($description:literal, $reason:literal) => {
                Self {
                    status: 401,
                    www_authenticate: Cow::Borrowed(concat!(
                        r#"Bearer realm="tokend", error="invalid_token", error_description=""#,
                        $description,
                        '"'
                    )),
                    body: concat!("tokend: ", $description, "\n"),
                    reason: $reason,
                }
            };
        }
        match reason {
            // Not a denial: `decide` allows it; answered as unknown if ever asked.
            Reason::Valid | Reason::Unknown => invalid!("the token is unknown", "unknown"),
            Reason::Malformed => invalid!("the token is malformed", "malformed"),
            Reason::Disabled => invalid!("the token is disabled", "disabled"),
            Reason::Revoked => invalid!("the token has been revoked", "revoked"),
            Reason::Expired => invalid!("the token has expired", "expired"),
            Reason::IpNotAllowed => Self {
                status: 403,
                www_authenticate: Cow::Borrowed(
                    r#"Bearer realm="tokend", error="invalid_token", error_description="the token is not allowed from this client address""#,
                ),
                body: "tokend: the token is not allowed from this client address\n",
                reason: "ip_not_allowed",
            },
            Reason::MissingModules => Self {
                status: 403,
                // Module names are [A-Za-z0-9._:/*-]: safe inside the quotes.
                www_authenticate: Cow::Owned(format!(
                    r#"Bearer realm="{REALM}", error="insufficient_scope", error_description="the token lacks a required module", scope="{}""#,
                    required
                        .iter()
                        .map(AsRef::as_ref)
                        .collect::<Vec<&str>>()
                        .join(" ")
                )),
                body: "tokend: the token lacks a required module\n",
                reason: "missing_modules",
            },
        }
    }
}

/// Required modules from a gateway's setting: comma-separated, blanks
/// ignored, each a module name (else an error naming `field`: the gateway is
/// misconfigured).
/// `into` holds borrowed names (`&str`, ext_authz: no allocation per call)
/// or owned ones (`String`, forward-auth's decoded query).
pub fn required_modules<'a, M>(
    field: &str,
    list: &'a str,
    into: &mut SmallVec<[M; 4]>,
) -> Result<()>
where
    M: AsRef<str> + From<&'a str>,
{
    for m in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        fields::check_module(field, m)?;
        if !into.iter().any(|have| have.as_ref() == m) {
            into.push(M::from(m));
        }
    }
    Ok(())
}

/// Judges `presented` from the end client at `client_ip` (`None`: unknown)
/// for `caller` (the gateway), as Validate does, and counts the outcome for
/// `gateway`.
pub async fn decide(
    manager: &TokenManager,
    caller: &Caller,
    presented: Presented<'_>,
    required: &[impl AsRef<str> + Sync],
    client_ip: Option<IpAddr>,
    gateway: Gateway,
) -> Result<Decision> {
    let started = metrics::timer();
    let parsed = match presented {
        // Judged like a malformed value, so that the gateway's privilege is
        // checked the same way, then answered as missing.
        Presented::Missing => Err(MalformedToken::Shape),
        // A client's value that is too long is malformed, not the gateway's
        // invalid argument.
        Presented::Value(text) => TokenValue::parse(text).map_err(|e| match e {
            MalformedToken::TooLong => MalformedToken::Shape,
            other => other,
        }),
    };
    let value = parsed.as_ref().map_err(|e| *e);
    // A cache hit answers without an await; the full path is boxed, so its
    // state stays out of this future (as Validate does).
    let verdict = match manager.validate_now(caller, value, required, client_ip)? {
        Some(verdict) => verdict,
        None => Box::pin(manager.validate(caller, value, required, client_ip)).await?,
    };
    let (decision, result) = match (presented, verdict.reason, verdict.entry) {
        (Presented::Missing, _, _) => (Decision::Deny(Denial::missing()), GatewayResult::Missing),
        (_, Reason::Valid, Some(entry)) => (
            Decision::Allow(Identity { entry }),
            GatewayResult::Verdict(Reason::Valid),
        ),
        (_, reason, _) => (
            Decision::Deny(Denial::of(reason, required)),
            GatewayResult::Verdict(reason),
        ),
    };
    metrics::gateway_outcome(gateway, result, started);
    Ok(decision)
}

/// A gateway call that got no verdict: counts it and, for a refused gateway
/// (its credential or privilege), logs it at most once a second per
/// contract, with how many were not logged since, so a misconfigured
/// gateway at full traffic cannot flood the log. Store and internal errors
/// are logged where they are mapped (`Status::from`).
pub fn refused(gateway: Gateway, err: &Error) {
    let code = match err {
        Error::Unauthenticated(_) => "UNAUTHENTICATED",
        Error::PermissionDenied(_) => "PERMISSION_DENIED",
        Error::InvalidArgument(_) => "INVALID_ARGUMENT",
        _ => {
            metrics::gateway_outcome(gateway, GatewayResult::Error, None);
            return;
        }
    };
    metrics::gateway_outcome(gateway, GatewayResult::Refused, None);
    static LAST: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    static SKIPPED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let i = gateway as usize;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST[i].swap(now, Ordering::Relaxed) == now {
        SKIPPED[i].fetch_add(1, Ordering::Relaxed);
        return;
    }
    tracing::warn!(
        gateway = gateway.name(),
        code,
        error = %err,
        not_logged_since = SKIPPED[i].swap(0, Ordering::Relaxed),
        "gateway call refused: check the gateway's own tokend credential and its privileges"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_is_found_in_either_header_form() {
        assert!(matches!(
            Presented::bearer(b"Bearer tk_abc"),
            Presented::Value("tk_abc")
        ));
        assert!(matches!(
            Presented::bearer(b"Basic dXNlcjpw"),
            Presented::Missing
        ));
        assert!(matches!(
            Presented::raw(b" tk_abc "),
            Presented::Value("tk_abc")
        ));
        assert!(matches!(
            Presented::raw(b"Bearer tk_abc"),
            Presented::Value("tk_abc")
        ));
        assert!(matches!(Presented::raw(b""), Presented::Missing));
        assert!(matches!(Presented::raw(b"\xff"), Presented::Value("")));
    }

    #[test]
    fn denials_follow_rfc_6750() {
        let missing = Denial::missing();
        assert_eq!(missing.status, 401);
        assert_eq!(missing.www_authenticate, r#"Bearer realm="tokend""#);
        for (reason, word) in [
            (Reason::Malformed, "malformed"),
            (Reason::Unknown, "unknown"),
            (Reason::Disabled, "disabled"),
            (Reason::Revoked, "revoked"),
            (Reason::Expired, "expired"),
        ] {
            let d = Denial::of(reason, &[] as &[&str]);
            assert_eq!(d.status, 401);
            assert!(
                d.www_authenticate
                    .starts_with(r#"Bearer realm="tokend", error="invalid_token", "#),
                "{}",
                d.www_authenticate
            );
            assert!(d.body.contains(word) && d.body.ends_with('\n'));
            assert_eq!(d.body.lines().count(), 1);
            assert_eq!(d.reason, word);
        }
        let scope = Denial::of(Reason::MissingModules, &["billing:read", "reports"]);
        assert_eq!(scope.status, 403);
        assert!(
            scope
                .www_authenticate
                .contains(r#"error="insufficient_scope""#)
        );
        assert!(
            scope
                .www_authenticate
                .ends_with(r#"scope="billing:read reports""#)
        );
        let ip = Denial::of(Reason::IpNotAllowed, &[] as &[&str]);
        assert_eq!((ip.status, ip.reason), (403, "ip_not_allowed"));
        assert!(ip.www_authenticate.contains(r#"error="invalid_token""#));
        assert_eq!(
            ip.headers()[2],
            (
                REASON_HEADER,
                "the token is not allowed from this client address"
            )
        );
    }

    #[test]
    fn required_modules_are_a_checked_comma_list() {
        let mut into = SmallVec::<[&str; 4]>::new();
        required_modules("m", " billing:read, ,reports,billing:read ", &mut into).unwrap();
        assert_eq!(into.as_slice(), ["billing:read", "reports"]);
        let mut owned = SmallVec::<[String; 4]>::new();
        required_modules("m", "a,b,a", &mut owned).unwrap();
        assert_eq!(owned.as_slice(), ["a", "b"]);
        let err =
            required_modules("context_extensions.required_modules", "a b", &mut into).unwrap_err();
        assert!(
            err.to_string()
                .contains("context_extensions.required_modules")
        );
    }
}
