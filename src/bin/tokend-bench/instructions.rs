//! Instructions per request: the release server under
//! `valgrind --tool=callgrind`, for changes to the hot path that timings on a
//! shared VM cannot resolve (instruction counts do not depend on the load).
//!
//! After a warm-up, one h2load process (1 connection, `STREAMS` streams)
//! sends `REQUESTS` requests of one kind per batch; `callgrind_control -z`
//! zeroes the counters before each batch and `callgrind_control -d` dumps
//! them after it. Batches alternate Health/Check, Validate, Health/Check,
//! ext_authz `Check`, ... and each figure is the dump's total over
//! `REQUESTS`. The dumps stay in the run's directory for `callgrind_annotate`.
//!
//! With `TOKEND_BENCH_CPU=1` the server runs without valgrind and each
//! figure is its user and system CPU time per request over ten times as many
//! requests (`/proc/<pid>/stat`): what instructions do not show, such as
//! system calls.
//!
//! Usage: `target/release/tokend-bench instructions [--quick]` (needs
//! valgrind: `apt-get install valgrind`); not part of the full run.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    STREAMS,
    gateway::check_body,
    load::{frame, median, validate_body},
    server::{Server, bootstrap, issue_caller, issue_tokens, start_server_under, warm},
};

/// Requests per batch.
const REQUESTS: u32 = 20_000;

/// `tokend-bench instructions`: Health/Check, Validate and `Check`, each
/// measured in `rounds` alternating batches (`--quick`: 1).
pub async fn run(quick: bool) {
    let rounds = if quick { 1 } else { 3 };
    let dir = std::env::temp_dir().join(format!("tokend-bench-cg-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let cpu = std::env::var("TOKEND_BENCH_CPU").is_ok_and(|v| v == "1");
    let requests = if cpu { REQUESTS * 10 } else { REQUESTS };
    let (what, unit) = if cpu {
        ("CPU time per request (user + system)", "us")
    } else {
        ("Instructions per request (callgrind)", "instructions")
    };
    println!(
        "\n== {what}; {requests} requests per batch, h2load 1 connection x {STREAMS} streams, {rounds} rounds; files in {}",
        dir.display()
    );
    let platform = bootstrap(&dir);
    let launcher: Vec<String> = if cpu {
        Vec::new()
    } else {
        [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=yes",
            &format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let server = start_server_under(&dir, "callgrind", &launcher).await;
    let mut client = server.client().await;
    let caller = issue_caller(&mut client, &platform).await;
    let hot = issue_tokens(&client, &platform, 1).await;
    warm(&mut client, &caller, &hot).await;
    let health = frame(&tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    let kinds: [(&str, &str, Vec<u8>); 3] = [
        ("Health/Check", "/grpc.health.v1.Health/Check", health),
        (
            "Validate (cache hit)",
            "/tokens.v1.TokenService/Validate",
            validate_body(&hot[0]),
        ),
        (
            "ext_authz Check (cache hit)",
            "/envoy.service.auth.v3.Authorization/Check",
            check_body(&hot[0]),
        ),
    ];
    // Warm-up: every kind once, uncounted.
    for (_, path, body) in &kinds {
        batch(&server, &caller, path, body, &dir, 2_000);
    }
    let mut counts: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        for k in [0, 1, 0, 2] {
            let (label, path, body) = &kinds[k];
            if cpu {
                let before = cpu_ticks(&server);
                batch(&server, &caller, path, body, &dir, requests);
                let after = cpu_ticks(&server);
                let user = (after.0 - before.0) as f64 * 1e4 / f64::from(requests);
                let system = (after.1 - before.1) as f64 * 1e4 / f64::from(requests);
                println!(
                    "round {}: {label:<30} user {user:>6.2} us  system {system:>6.2} us per request",
                    round + 1
                );
                counts[k].push(user + system);
                continue;
            }
            zero(&server);
            batch(&server, &caller, path, body, &dir, REQUESTS);
            let total = dump(&server, &dir);
            let per = total as f64 / f64::from(REQUESTS);
            println!(
                "round {}: {label:<30} {per:>9.0} instructions per request",
                round + 1
            );
            counts[k].push(per);
        }
    }
    let health = median(&counts[0]);
    println!("\n== Summary (median per kind)");
    for (k, (label, _, _)) in kinds.iter().enumerate() {
        let m = median(&counts[k]);
        println!(
            "{label:<30} {m:>9.2} {unit} per request   (Health/Check {health:.2}: ratio {:.3})",
            health / m
        );
    }
    println!("server: {}", server.stop());
}

/// One h2load batch of `requests` requests; panics unless all succeeded.
fn batch(server: &Server, caller: &str, path: &str, body: &[u8], dir: &Path, requests: u32) {
    let file = dir.join("cg-body.bin");
    fs::write(&file, body).expect("write body");
    let out = Command::new("h2load")
        .args(["-c", "1", "-t", "1", "-m", &STREAMS.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {caller}")])
        .arg("-d")
        .arg(&file)
        .arg(format!("{}{path}", server.url()))
        .stderr(Stdio::null())
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = format!("{requests} succeeded");
    assert!(text.contains(&ok), "h2load {path}: {text}");
}

fn callgrind_control(server: &Server, flag: &str) {
    let status = Command::new("callgrind_control")
        .args([flag, &server.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("callgrind_control (apt-get install valgrind)");
    assert!(status.success(), "callgrind_control {flag} failed");
}

fn zero(server: &Server) {
    callgrind_control(server, "-z");
}

/// Dumps the counters and returns the dump's total instructions.
fn dump(server: &Server, dir: &Path) -> u64 {
    let before = dumps(dir);
    callgrind_control(server, "-d");
    let newest = dumps(dir)
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a new callgrind dump");
    let text = fs::read_to_string(&newest).expect("read dump");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a summary line in the dump")
}

fn dumps(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("callgrind.out."))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The server's (user, system) CPU time in clock ticks (1/100 s).
fn cpu_ticks(server: &Server) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{}/stat", server.pid())).expect("stat");
    let after = stat.rsplit(')').next().unwrap_or_default();
    // Fields 14 and 15 of stat (utime, stime); after the `)`, field 3 on.
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse().expect("utime"), f[12].parse().expect("stime"))
}
