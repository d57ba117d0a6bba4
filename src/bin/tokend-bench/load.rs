//! h2load, the independent HTTP/2 load generator: gRPC bodies framed by hand,
//! per-request latency logs, and the interleaved-rounds helpers that make
//! ratios steady on a VM whose speed drifts.

use std::{fs, path::Path, process::Stdio};

use prost::Message;
use tokend::pb;

use crate::{LOAD_PROCESSES, STREAMS, server::Server};

/// A gRPC length-prefixed message, as h2load must send it.
pub fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[derive(Clone)]
pub struct Load {
    pub path: &'static str,
    pub body: Vec<u8>,
    pub rps: Option<u32>,
    pub streams: u32,
}

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub done: u64,
    pub failed: u64,
}

/// Runs the given loads concurrently, one h2load process each (1 connection,
/// `streams` concurrent streams), and returns one outcome per load.
/// `tag` names the per-request log files, so runs that alternate do not read
/// each other's latencies.
pub fn h2load(
    url: &str,
    caller: &str,
    loads: &[Load],
    seconds: u32,
    dir: &Path,
    tag: &str,
) -> Vec<Outcome> {
    let mut children = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let body = dir.join(format!("body-{i}.bin"));
        fs::write(&body, &load.body).expect("write body");
        let log = dir.join(format!("h2load-{tag}-{i}.tsv"));
        let _ = fs::remove_file(&log);
        let mut cmd = crate::server::pinned_command("h2load", crate::server::LOAD_CPUS);
        cmd.args([
            "-c",
            "1",
            "-t",
            "1",
            "-m",
            &load.streams.to_string(),
            "-D",
            &seconds.to_string(),
            "--warm-up-time",
            &WARM_UP_SECONDS.to_string(),
        ])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            &format!("authorization: Bearer {caller}"),
        ])
        .arg("-d")
        .arg(&body)
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("{url}{}", load.path))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(rps) = load.rps {
            cmd.arg(format!("--rps={rps}"));
        }
        children.push(
            cmd.spawn()
                .expect("h2load (apt-get install nghttp2-client)"),
        );
    }
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("h2load");
            parse_h2load(&String::from_utf8_lossy(&out.stdout))
        })
        .collect()
}

/// Throughput and counts from h2load's summary; latencies come from its log.
pub fn parse_h2load(text: &str) -> Outcome {
    let mut o = Outcome::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            o.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        }
        if let Some(rest) = line.strip_prefix("requests: ") {
            let field = |name: &str| {
                rest.split(", ")
                    .find(|p| p.ends_with(name))
                    .and_then(|p| p.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            o.done = field(" done");
            o.failed = field(" failed") + field(" errored");
        }
    }
    o
}

/// Sums the throughput of the processes `first..` and takes p50/p99 over all
/// their requests (from h2load's per-request logs).
pub fn combine(outcomes: &[Outcome], dir: &Path, tag: &str, first: usize) -> Outcome {
    let mut latencies = Vec::new();
    for i in first..first + outcomes.len() {
        latencies.extend(
            fs::read_to_string(dir.join(format!("h2load-{tag}-{i}.tsv")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    l.split('\t')
                        .nth(2)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                }),
        );
    }
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p).unwrap_or(0) as f64 / 1000.0;
    Outcome {
        rps: outcomes.iter().map(|o| o.rps).sum(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        done: outcomes.iter().map(|o| o.done).sum(),
        failed: outcomes.iter().map(|o| o.failed).sum(),
    }
}

/// Rounds of the Validate vs Health comparison, and of each flood measurement.
/// Many short rounds whose two halves run back to back: this machine is a
/// shared VM whose speed drifts by 10-20% over tens of seconds, and adjacent
/// short runs see the same speed, so their ratio is steady where a single
/// long run each is not.
/// (`--quick`: 4 and 2, for a smoke run; its figures are not the ones to quote.)
pub const ROUNDS: usize = 10;
pub const FLOOD_ROUNDS: usize = 5;
pub const WARM_UP_SECONDS: u32 = 1;

/// One undisturbed run of `valid` and one of `disturbed` (whose first
/// `LOAD_PROCESSES` outcomes are the same valid load), back to back, in an
/// order that alternates between calls.
pub fn disturbed_pair(
    server: &Server,
    caller: &str,
    valid: &[Load],
    disturbed: &[Load],
    seconds: u32,
    dir: &Path,
) -> (Outcome, Vec<Outcome>) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let undisturbed_first = CALLS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(2);
    let alone = || {
        combine(
            &h2load(&server.url(), caller, valid, seconds, dir, "alone"),
            dir,
            "alone",
            0,
        )
    };
    if undisturbed_first {
        let u = alone();
        (
            u,
            h2load(&server.url(), caller, disturbed, seconds, dir, "disturbed"),
        )
    } else {
        let d = h2load(&server.url(), caller, disturbed, seconds, dir, "disturbed");
        (alone(), d)
    }
}

/// `rounds` rounds of Health/Check and Validate, back to back in alternating
/// order (a drift in the machine's speed then favours neither), each round
/// printed; returns (throughput ratio, p99 ratio) per round.
pub fn interleaved(
    server: &Server,
    caller: &str,
    health: &[Load],
    validate: &[Load],
    rounds: usize,
    seconds: u32,
    dir: &Path,
) -> Vec<(f64, f64)> {
    interleaved_vs(
        server, caller, health, validate, "Validate", rounds, seconds, dir,
    )
}

/// As `interleaved`, for any RPC load (`subject`, named `label`) against
/// the Health/Check load.
#[allow(clippy::too_many_arguments)]
pub fn interleaved_vs(
    server: &Server,
    caller: &str,
    health: &[Load],
    subject: &[Load],
    label: &str,
    rounds: usize,
    seconds: u32,
    dir: &Path,
) -> Vec<(f64, f64)> {
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let first_health = !round.is_multiple_of(2);
        let run = |loads: &[Load]| {
            combine(
                &h2load(&server.url(), caller, loads, seconds, dir, "main"),
                dir,
                "main",
                0,
            )
        };
        let (h, v) = if first_health {
            let h = run(health);
            (h, run(subject))
        } else {
            let v = run(subject);
            (run(health), v)
        };
        show(&format!("round {round}: Health/Check"), &h);
        show(&format!("round {round}: {label}"), &v);
        println!(
            "round {round}: {label}/Health throughput ratio {:.3}, p99 ratio {:.3}",
            v.rps / h.rps,
            v.p99_ms / h.p99_ms
        );
        ratios.push((v.rps / h.rps, v.p99_ms / h.p99_ms));
    }
    ratios
}

/// The Health/Check load and one Validate load per h2load process, each
/// process validating its own token of `hot` (every `stride`-th).
pub fn health_and_validate_loads(hot: &[String], stride: usize) -> (Vec<Load>, Vec<Load>) {
    let health = Load {
        path: "/grpc.health.v1.Health/Check",
        body: frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
        rps: None,
        streams: STREAMS,
    };
    let validate = (0..LOAD_PROCESSES)
        .map(|i| Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(&hot[(i * stride) % hot.len()]),
            rps: None,
            streams: STREAMS,
        })
        .collect();
    (vec![health; LOAD_PROCESSES], validate)
}

/// The nearest-rank percentile (`fraction` in 0..=1) of sorted values; the
/// one definition every phase's p50/p95/p99 uses.
pub fn percentile<T: Copy>(sorted: &[T], fraction: f64) -> Option<T> {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn summary_line(label: &str, values: &[f64], target: &str) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{label:<56} median {:.3}  (min {min:.3}, max {max:.3}, n={})  target {target}",
        median(values),
        values.len()
    );
}

pub fn show(label: &str, o: &Outcome) {
    println!(
        "{label:<44} {:>10.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} done, {} failed)",
        o.rps, o.p50_ms, o.p99_ms, o.done, o.failed
    );
}

pub fn validate_body(token: &str) -> Vec<u8> {
    validate_body_from(token, "")
}

/// A Validate of `token` for an end client at `client_ip` (empty: none).
pub fn validate_body_from(token: &str, client_ip: &str) -> Vec<u8> {
    frame(&pb::ValidateRequest {
        client_ip: client_ip.to_owned(),
        token: token.to_owned(),
        required_modules: vec!["billing:read".into()],
    })
}
