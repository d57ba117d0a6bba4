//! The Prometheus listener: a real scrape taken after exercising every RPC
//! carries each required metric family, and `promtool check metrics` finds
//! no problem in it (skipped, visibly, when promtool is not installed;
//! `.ci/run` installs it).

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
};

use prost_types::FieldMask;
use tokend::pb::{self, revoke_request::Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{self};

/// GET `path` over plain HTTP/1.1: (status line, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("utf8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// The value of the sample `series` (name with labels, as rendered).
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// grpcurl runs as a blocking child process: the server needs other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_every_rpc_passes_promtool() {
    let app =
        helpers::spawn_app_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics = app.metrics_addr.expect("metrics listener");
    let p = app.platform.clone();
    let c = app.api.clone();

    // Every TokenService RPC, some failing on purpose.
    let (id, value) = app.token_for("acme", "alice", &["svc:read"]).await;
    let validate = |token: &str, required: &[&str]| pb::ValidateRequest {
        client_ip: String::new(),
        token: token.into(),
        required_modules: required.iter().map(|m| (*m).to_owned()).collect(),
    };
    for (token, required) in [
        (value.as_str(), &["svc:read"][..]),
        (value.as_str(), &["svc:write"][..]),
        ("tk_garbage", &[][..]),
    ] {
        c.validate(&p, validate(token, required)).await.unwrap();
    }
    c.get(&p, pb::GetRequest { id: id.clone() }).await.unwrap();
    c.get("tk_not_a_token", pb::GetRequest { id: id.clone() })
        .await
        .unwrap_err();
    c.update(
        &p,
        pb::UpdateRequest {
            id: id.clone(),
            name: "renamed".into(),
            update_mask: Some(FieldMask {
                paths: vec!["name".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.set_state(
        &p,
        pb::SetStateRequest {
            id: id.clone(),
            state: pb::State::Disabled.into(),
            reason: "test".into(),
        },
    )
    .await
    .unwrap();
    c.validate(&p, validate(&value, &[])).await.unwrap();
    let dup = c
        .duplicate(
            &p,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: id.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    c.rotate(
        &p,
        pb::RotateRequest {
            id: dup.token.unwrap().id,
            grace_period: None,
        },
    )
    .await
    .unwrap();
    c.revoke(
        &p,
        pb::RevokeRequest {
            target: Some(Target::Id(id.clone())),
            reason: "done".into(),
        },
    )
    .await
    .unwrap();
    c.validate(&p, validate(&value, &[])).await.unwrap();
    c.search(&p, pb::SearchRequest::default()).await.unwrap();
    c.list_events(&p, pb::ListEventsRequest::default())
        .await
        .unwrap();
    c.issue(&p, pb::IssueRequest::default()).await.unwrap_err();
    c.health_check("").await.unwrap();
    // Reflection, as grpcurl uses it (when installed; .ci/run installs it).
    if let Some(grpcurl) = crate::tls::grpcurl() {
        let listed = Command::new(grpcurl)
            .args(["-plaintext", &format!("127.0.0.1:{}", app.port), "list"])
            .output()
            .unwrap();
        assert!(listed.status.success());
    }
    // Let the last-used flusher run once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let (status, headers, scrape) = http_get(metrics, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    for family in [
        "tokend_build_info",
        "tokend_validate_requests_total",
        "tokend_validate_duration_seconds_bucket",
        "tokend_grpc_requests_total",
        "tokend_cache_entries",
        "tokend_cache_hits_total",
        "tokend_cache_misses_total",
        "tokend_cache_evictions_total",
        "tokend_negative_cache_entries",
        "tokend_argon2_verifications_total",
        "tokend_argon2_hashes_total",
        "tokend_argon2_queue_depth",
        "tokend_argon2_refusals_total",
        "tokend_store_statements_total",
        "tokend_store_errors_total",
        "tokend_store_call_duration_seconds_bucket",
        "tokend_health_serving",
        "tokend_changelog_deliveries_total",
        "tokend_changelog_listener_reconnects_total",
        "tokend_last_used_pending",
        "tokend_last_used_flush_duration_seconds_bucket",
        "tokend_last_used_flush_failures_total",
        "tokend_task_running",
        "tokend_task_restarts_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            scrape.lines().any(|l| l.starts_with(family)),
            "{family} missing from the scrape:\n{scrape}"
        );
    }
    for method in [
        "Issue",
        "Validate",
        "Get",
        "Update",
        "SetState",
        "Revoke",
        "Rotate",
        "Duplicate",
        "Search",
        "ListEvents",
    ] {
        let ok = format!(
            r#"tokend_grpc_requests_total{{service="tokens.v1.TokenService",method="{method}",code="OK"}}"#
        );
        assert!(
            sample(&scrape, &ok).unwrap_or(0.0) >= 1.0,
            "{ok} not counted"
        );
    }
    for failed in [
        r#"tokend_grpc_requests_total{service="tokens.v1.TokenService",method="Get",code="UNAUTHENTICATED"}"#,
        r#"tokend_grpc_requests_total{service="tokens.v1.TokenService",method="Issue",code="INVALID_ARGUMENT"}"#,
        r#"tokend_grpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"}"#,
    ] {
        assert!(
            sample(&scrape, failed).unwrap_or(0.0) >= 1.0,
            "{failed} not counted"
        );
    }
    for reason in [
        "valid",
        "missing_modules",
        "malformed",
        "disabled",
        "revoked",
    ] {
        let hit = sample(
            &scrape,
            &format!(r#"tokend_validate_requests_total{{reason="{reason}",cache="hit"}}"#),
        )
        .unwrap_or(0.0);
        let miss = sample(
            &scrape,
            &format!(r#"tokend_validate_requests_total{{reason="{reason}",cache="miss"}}"#),
        )
        .unwrap_or(0.0);
        assert!(
            hit + miss >= 1.0,
            "no Validate counted with reason {reason}"
        );
    }
    // Present (its value is process-wide: other servers of this test binary
    // set it too, e.g. while they drain).
    assert!(
        sample(
            &scrape,
            r#"tokend_health_serving{service="tokens.v1.TokenService"}"#
        )
        .is_some()
    );
    assert!(!scrape.contains(&value), "a token value in the scrape");

    let Some(check) = promtool_check(&scrape) else {
        helpers::not_run(
            "a_scrape_after_every_rpc_passes_promtool (promtool check metrics)",
            "promtool is not installed; .ci/run installs it",
        );
        return;
    };
    assert!(check.0, "promtool check metrics failed:\n{}", check.1);
    assert!(
        check.1.trim().is_empty(),
        "promtool reported problems:\n{}",
        check.1
    );
    println!(
        "promtool check metrics: no problems in {} lines",
        scrape.lines().count()
    );

    let (status, _, _) = http_get(metrics, "/nope").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn readiness_and_liveness_over_http() {
    let app =
        helpers::spawn_app_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics = app.metrics_addr.unwrap();
    let (status, _, body) = http_get(metrics, "/readyz").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "SERVING\n");
    let (status, _, _) = http_get(metrics, "/livez").await;
    assert!(status.contains("200"), "{status}");
}

/// `promtool check metrics` on `text`: (success, its output), or `None`
/// when promtool is not installed.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}

#[tokio::test]
async fn no_metrics_listener_unless_configured() {
    let app = helpers::spawn_app().await;
    assert!(app.metrics_addr.is_none());
}
