//! Gateways: what tokend costs an API gateway, on the two contracts.
//!
//! - ext_authz: `envoy.service.auth.v3.Authorization/Check` on a cached
//!   token against the server's own `grpc.health.v1.Health/Check`, same
//!   server, same h2load settings, interleaved rounds. The CheckRequest is
//!   shaped like Envoy's (peers, a dozen headers, the route's context
//!   extension) and framed by hand like Validate's.
//! - forward-auth through real nginx (the shipped
//!   `deploy/gateways/nginx/tokend.conf.template`): requests/s and p50/p99 of
//!   nginx proxying to a trivial upstream *with* `auth_request` to tokend,
//!   against the same nginx proxying to the same upstream *without* auth, with
//!   wrk (HTTP/1.1, keep-alive), interleaved rounds.
//!
//! Usage: part of the full run; alone: `target/release/tokend-bench gateway [--quick]`.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
};

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    service::auth::v3::{AttributeContext, CheckRequest, attribute_context},
};
use tokend::http::test_proxies::{self, Placeholders};

use crate::{
    LOAD_PROCESSES, STREAMS,
    load::{Load, Outcome, frame, health_and_validate_loads, interleaved_vs, median, summary_line},
    server::{bootstrap, issue_caller, issue_tokens, logged_port, start_server_on, warm},
};

/// Rounds of each comparison (`--quick`: 2).
pub const GATEWAY_ROUNDS: usize = 10;
/// wrk connections (one thread): as many requests in flight as h2load's streams.
const WRK_CONNECTIONS: u32 = STREAMS;
/// nginx worker processes.
const NGINX_WORKERS: usize = 1;

/// The figures of this phase.
pub struct Figures {
    /// Check/Health throughput and p99 ratios, per round.
    pub check: Vec<(f64, f64)>,
    /// (with auth, without auth), per round.
    pub nginx: Vec<(Outcome, Outcome)>,
}

/// A CheckRequest as Envoy sends it for `GET /billing/invoices` with `token`.
pub fn check_body(token: &str) -> Vec<u8> {
    let peer = |ip: &str, port: u32| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let headers: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/billing/invoices?page=2"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("user-agent", "curl/8.5.0"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "5e0c4c3e-8f1a-4bb4-9a3e-2f5d3c9b7a10"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("authorization", &format!("Bearer {token}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    frame(&CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.1.2.3", 53114)),
            destination: Some(peer("10.1.9.9", 8080)),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "16312838911289422151".into(),
                    method: "GET".into(),
                    headers,
                    path: "/billing/invoices?page=2".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([(
                "required_modules".to_owned(),
                "billing:read".to_owned(),
            )]),
            ..Default::default()
        }),
    })
}

/// Runs the phase on a fresh server over the database in `dir`.
pub async fn run(dir: &Path, rounds: usize, seconds: u32) -> Figures {
    println!(
        "\n== Gateways: ext_authz Check (cache hit) vs Health/Check, same server, same h2load settings, {rounds} interleaved rounds"
    );
    let platform = bootstrap(dir);
    let server = start_server_on(
        dir,
        "gateway",
        &crate::server::database_url(dir),
        &[("TOKEND_HTTP_LISTEN", "127.0.0.1:0".to_owned())],
    )
    .await;
    // Port 0, as for the other listeners: the server logs the port it took.
    let forward_auth = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        logged_port(&server.log(), "forward-auth on").expect("forward-auth port in the log"),
    ));
    let mut client = server.client().await;
    let caller = issue_caller(&mut client, &platform).await;
    let hot = issue_tokens(&client, &platform, LOAD_PROCESSES * 8).await;
    warm(&mut client, &caller, &hot).await;
    let (health, _) = health_and_validate_loads(&hot, 1);
    let checks: Vec<Load> = (0..LOAD_PROCESSES)
        .map(|i| Load {
            path: "/envoy.service.auth.v3.Authorization/Check",
            body: check_body(&hot[i]),
            rps: None,
            streams: STREAMS,
        })
        .collect();
    let check = interleaved_vs(
        &server,
        &caller,
        &health,
        &checks,
        "ext_authz Check",
        rounds,
        seconds,
        dir,
    );

    let nginx = match test_proxies::installed("nginx") {
        Some(_) => nginx_rounds(forward_auth, &caller, &hot[0], rounds, seconds),
        None => {
            println!(
                "skipped: forward-auth through nginx (nginx is not installed: apt-get install nginx)"
            );
            Vec::new()
        }
    };
    println!("{}", server.metrics_line());
    let page = server.scrape();
    for line in page
        .lines()
        .filter(|l| l.starts_with("tokend_gateway_requests_total"))
    {
        println!("metrics: {line}");
    }
    println!("server: {}", server.stop());
    Figures { check, nginx }
}

/// nginx with the shipped configuration plus a server that proxies to the
/// same upstream without auth and the trivial upstream itself (nginx
/// answering 200 from memory); wrk against both, in alternating order.
fn nginx_rounds(
    forward_auth: std::net::SocketAddr,
    gateway: &str,
    token: &str,
    rounds: usize,
    seconds: u32,
) -> Vec<(Outcome, Outcome)> {
    let upstream = test_proxies::free_port().expect("port");
    let plain = test_proxies::free_port().expect("port");
    let placeholders = Placeholders {
        listen: test_proxies::free_port().expect("port"),
        upstream,
        forward_auth,
        gateway_token: gateway.to_owned(),
    };
    // `tokend_backend` is the shipped file's upstream block (keep-alive).
    let extra = format!(
        "  server {{ listen {upstream}; location / {{ return 200 \"ok\\n\"; }} }}\n\
         \x20 server {{ listen {plain}; location / {{ proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; proxy_pass http://tokend_backend; }} }}\n"
    );
    let proxy = test_proxies::start_nginx(&placeholders, NGINX_WORKERS, &extra).expect("nginx");
    println!(
        "\n== Gateways: forward-auth through nginx {} (shipped configuration, {NGINX_WORKERS} worker): \
         nginx -> trivial upstream with auth_request to tokend vs without auth; wrk -t1 -c{WRK_CONNECTIONS} \
         (HTTP/1.1 keep-alive), {rounds} interleaved rounds",
        nginx_version()
    );
    let authed = format!("http://{}/billing/invoices", proxy.addr);
    let unauthed = format!("http://{plain}/billing/invoices");
    let header = format!("Authorization: Bearer {token}");
    // Warm-up: both paths answer 200 (and tokend's cache holds the token).
    for url in [&authed, &unauthed] {
        let o = wrk(url, &header, 1);
        assert!(o.done > 0 && o.failed == 0, "{url}: {o:?}\n{}", proxy.log());
    }
    let mut out = Vec::new();
    for round in 1..=rounds {
        let (with, without) = if round % 2 == 1 {
            let w = wrk(&authed, &header, seconds);
            (w, wrk(&unauthed, &header, seconds))
        } else {
            let wo = wrk(&unauthed, &header, seconds);
            (wrk(&authed, &header, seconds), wo)
        };
        crate::load::show(&format!("round {round}: nginx without auth"), &without);
        crate::load::show(
            &format!("round {round}: nginx + auth_request to tokend"),
            &with,
        );
        println!(
            "round {round}: with/without auth throughput ratio {:.3}",
            with.rps / without.rps
        );
        out.push((with, without));
    }
    drop(proxy);
    out
}

fn nginx_version() -> String {
    let out = Command::new(test_proxies::installed("nginx").expect("nginx"))
        .arg("-v")
        .output()
        .expect("nginx -v");
    String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("nginx version: ")
        .to_owned()
}

/// One wrk run: throughput, p50/p99 (its latency distribution), requests
/// done, and responses other than 2xx/3xx or socket errors as failures.
fn wrk(url: &str, header: &str, seconds: u32) -> Outcome {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            header,
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("wrk (apt-get install wrk)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> Outcome {
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        let (n, scale) = if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, 1.0)
        };
        n.parse::<f64>().unwrap_or(f64::NAN) * scale
    };
    let mut o = Outcome::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => o.rps = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => o.p50_ms = ms(v),
            (Some("99%"), Some(v)) => o.p99_ms = ms(v),
            (Some(n), Some("requests")) => o.done = n.parse().unwrap_or(0),
            (Some("Non-2xx"), _) => {
                o.failed += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            (Some("Socket"), _) => {
                o.failed += line
                    .split(", ")
                    .filter_map(|p| p.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    o
}

/// The summary lines of this phase.
pub fn summary(f: &Figures) {
    let throughput: Vec<f64> = f.check.iter().map(|r| r.0).collect();
    let p99: Vec<f64> = f.check.iter().map(|r| r.1).collect();
    summary_line("ext_authz Check/Health throughput", &throughput, ">= 0.8");
    summary_line("ext_authz Check/Health p99", &p99, "(no target)");
    if f.nginx.is_empty() {
        println!(
            "{:<56} skipped (nginx not installed)",
            "nginx with/without auth_request throughput"
        );
        return;
    }
    let ratio: Vec<f64> = f.nginx.iter().map(|(w, wo)| w.rps / wo.rps).collect();
    summary_line(
        "nginx with/without auth_request throughput",
        &ratio,
        ">= 0.4",
    );
    let col = |pick: fn(&Outcome) -> f64, with: bool| -> f64 {
        median(
            &f.nginx
                .iter()
                .map(|(w, wo)| pick(if with { w } else { wo }))
                .collect::<Vec<_>>(),
        )
    };
    for (label, with) in [
        ("nginx without auth", false),
        ("nginx + auth_request to tokend", true),
    ] {
        println!(
            "{label:<56} median {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            col(|o| o.rps, with),
            col(|o| o.p50_ms, with),
            col(|o| o.p99_ms, with)
        );
    }
}

/// `tokend-bench gateway`: this phase alone, on a fresh database.
pub async fn alone(quick: bool) {
    let dir = crate::scratch_dir();
    let (rounds, seconds) = if quick { (2, 2) } else { (GATEWAY_ROUNDS, 4) };
    let figures = run(&dir, rounds, seconds).await;
    println!("\n== Summary (median over interleaved rounds; every round is printed above)");
    summary(&figures);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::parse_wrk;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.61ms  345.46us   8.01ms   84.92%\n  Latency Distribution\n     50%    1.55ms\n     75%    1.75ms\n     90%    2.00ms\n     99%  850.00us\n  39696 requests in 2.00s, 5.75MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  19838.35\nTransfer/sec:      2.87MB\n";
        let o = parse_wrk(text);
        assert_eq!(o.done, 39696);
        assert_eq!(o.failed, 3);
        assert!((o.rps - 19838.35).abs() < 1e-6);
        assert!((o.p50_ms - 1.55).abs() < 1e-9);
        assert!((o.p99_ms - 0.85).abs() < 1e-9);
    }
}
