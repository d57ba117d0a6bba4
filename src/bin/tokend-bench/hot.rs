//! The whole run: cache-hit Validate against Health/Check in interleaved
//! rounds, for unbound and for IP-bound tokens (`validate_vs_health`, also
//! alone as `tokend-bench validate`), and the wrong-secret and mixed floods
//! (here), then the restart phase (`restart`), the TLS phase (`tls`), the
//! gateway phase (`gateway`), WatchEvents across PostgreSQL replicas
//! (`watch`, with `TOKEND_BENCH_POSTGRES_URL`) and memory per cached token
//! (`memory`), and one summary.

use std::{fs, io::Write, time::Instant};

use tokend::domain::TokenValue;

use crate::{
    HOT_TOKENS, LOAD_PROCESSES, STREAMS, gateway,
    load::{
        FLOOD_ROUNDS, Load, ROUNDS, WARM_UP_SECONDS, combine, disturbed_pair,
        health_and_validate_loads, interleaved, interleaved_vs, show, summary_line, validate_body,
        validate_body_from,
    },
    memory::memory_in_child,
    server::{
        BOUND_CIDRS, BOUND_CLIENT_IP, Server, bootstrap, issue_bound_tokens, issue_caller,
        issue_tokens, start_server, warm, warm_from,
    },
    tls,
};

/// The hot-path comparison's medians: (throughput ratios, p99 ratios) for
/// unbound tokens, and throughput ratios for IP-bound ones.
pub struct HotRatios {
    pub unbound: Vec<(f64, f64)>,
    pub bound: Vec<(f64, f64)>,
}

/// What the hot phase leaves for the floods: the server and its loads.
struct Hot {
    server: Server,
    caller: String,
    hot: Vec<String>,
    validate_loads: Vec<Load>,
    ratios: HotRatios,
}

fn header(seconds: u32) {
    println!(
        "tokend-bench: {seconds} s per measurement (+{WARM_UP_SECONDS} s warm-up), {LOAD_PROCESSES} h2load processes x 1 connection x {STREAMS} streams"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}

/// Starts a server, issues and warms the hot tokens (and IP-bound ones),
/// then compares cache-hit Validate with Health/Check in interleaved
/// rounds: unbound tokens first, then IP-bound ones (several ranges, the
/// client's in the last), each round against a fresh Health/Check run.
async fn validate_vs_health(dir: &std::path::Path, rounds: usize, seconds: u32) -> Hot {
    let platform = bootstrap(dir);
    let server = start_server(dir, "server").await;
    let mut client = server.client().await;
    let caller = issue_caller(&mut client, &platform).await;
    let started = Instant::now();
    let hot = issue_tokens(&client, &platform, HOT_TOKENS).await;
    println!(
        "issued {} tokens with the default argon2id cost in {:.1} s",
        hot.len(),
        started.elapsed().as_secs_f64()
    );
    warm(&mut client, &caller, &hot).await;
    println!("all {} hot tokens validated once (cache warm)", hot.len());
    let bound = issue_bound_tokens(&client, &platform, LOAD_PROCESSES).await;
    warm_from(&mut client, &caller, &bound, BOUND_CLIENT_IP).await;
    println!(
        "{} IP-bound tokens ({}) validated once from {BOUND_CLIENT_IP}",
        bound.len(),
        BOUND_CIDRS.join(", ")
    );

    let (health_loads, validate_loads) = health_and_validate_loads(&hot, 97);
    println!(
        "\n== Validate (cache hit) vs Health/Check, same server, same h2load settings, {rounds} interleaved rounds"
    );
    let unbound = interleaved(
        &server,
        &caller,
        &health_loads,
        &validate_loads,
        rounds,
        seconds,
        dir,
    );
    let bound_loads: Vec<Load> = bound
        .iter()
        .map(|value| Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body_from(value, BOUND_CLIENT_IP),
            rps: None,
            streams: STREAMS,
        })
        .collect();
    println!(
        "\n== IP-bound Validate (cache hit, client_ip {BOUND_CLIENT_IP}) vs Health/Check, {rounds} interleaved rounds"
    );
    let bound = interleaved_vs(
        &server,
        &caller,
        &health_loads,
        &bound_loads,
        "Validate (IP-bound)",
        rounds,
        seconds,
        dir,
    );
    Hot {
        server,
        caller,
        hot,
        validate_loads,
        ratios: HotRatios { unbound, bound },
    }
}

fn hot_summary(ratios: &HotRatios) {
    let throughput: Vec<f64> = ratios.unbound.iter().map(|r| r.0).collect();
    let p99: Vec<f64> = ratios.unbound.iter().map(|r| r.1).collect();
    summary_line("Validate/Health throughput", &throughput, ">= 0.9");
    summary_line("Validate/Health p99", &p99, "<= 1.5");
    let bound: Vec<f64> = ratios.bound.iter().map(|r| r.0).collect();
    summary_line("IP-bound Validate/Health throughput", &bound, ">= 0.85");
}

/// `tokend-bench validate [--quick]`: only the cache-hit comparisons,
/// unbound and IP-bound, in one run.
pub async fn validate_alone(quick: bool) {
    let seconds = if quick { 2 } else { 4 };
    let rounds = if quick { 4 } else { ROUNDS };
    let dir_buf = crate::scratch_dir();
    let dir = dir_buf.as_path();
    header(seconds);
    let hot = validate_vs_health(dir, rounds, seconds).await;
    println!("{}", hot.server.metrics_line());
    println!("server: {}", hot.server.stop());
    println!("\n== Summary (median over interleaved rounds; every round is printed above)");
    hot_summary(&hot.ratios);
    let _ = std::io::stdout().flush();
    let _ = fs::remove_dir_all(dir);
}

pub async fn run(quick: bool) {
    let seconds = if quick { 2 } else { 4 };
    let (rounds, flood_rounds) = if quick {
        (4, 2)
    } else {
        (ROUNDS, FLOOD_ROUNDS)
    };
    let dir_buf = crate::scratch_dir();
    let dir = dir_buf.as_path();
    header(seconds);
    let Hot {
        server,
        caller,
        hot,
        validate_loads,
        ratios,
    } = validate_vs_health(dir, rounds, seconds).await;

    println!(
        "\n== Wrong-secret flood on one token id ({LOAD_PROCESSES} distinct wrong values, 2,500 req/s each) during Validate load"
    );
    let victim = &hot[7];
    let mut floods: Vec<Load> = Vec::new();
    for _ in 0..LOAD_PROCESSES {
        let wrong = TokenValue::generate_for("tk", TokenValue::parse(victim).expect("parse").id())
            .expect("random")
            .expose();
        floods.push(Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(&wrong),
            rps: Some(2500),
            streams: 8,
        });
    }
    let mut loads = validate_loads.clone();
    loads.extend(floods.iter().cloned());
    let mut flood_ratios = Vec::new();
    for round in 1..=flood_rounds {
        let (undisturbed, out) =
            disturbed_pair(&server, &caller, &validate_loads, &loads, seconds, dir);
        let valid = combine(&out[..LOAD_PROCESSES], dir, "disturbed", 0);
        let flood = combine(&out[LOAD_PROCESSES..], dir, "disturbed", LOAD_PROCESSES);
        show(
            &format!("round {round}: valid tokens, undisturbed"),
            &undisturbed,
        );
        show(
            &format!("round {round}: valid tokens during the flood"),
            &valid,
        );
        show(&format!("round {round}: wrong-secret flood"), &flood);
        println!(
            "round {round}: valid throughput during flood / undisturbed: {:.3}",
            valid.rps / undisturbed.rps
        );
        flood_ratios.push(valid.rps / undisturbed.rps);
    }

    println!("\n== Mixed flood: valid + malformed + unknown-id + wrong-secret");
    let malformed = format!("{}x", &hot[1][..hot[1].len() - 1]);
    let unknown = TokenValue::generate("tk").expect("random").expose();
    let wrong = TokenValue::generate_for("tk", TokenValue::parse(&hot[2]).expect("parse").id())
        .expect("random")
        .expose();
    let mut loads = validate_loads.clone();
    for bad in [&malformed, &unknown, &wrong] {
        loads.push(Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(bad),
            rps: Some(2500),
            streams: 8,
        });
    }
    let mut mix_ratios = Vec::new();
    for round in 1..=flood_rounds {
        let (undisturbed, out) =
            disturbed_pair(&server, &caller, &validate_loads, &loads, seconds, dir);
        let valid = combine(&out[..LOAD_PROCESSES], dir, "disturbed", 0);
        show(
            &format!("round {round}: valid tokens, undisturbed"),
            &undisturbed,
        );
        show(&format!("round {round}: valid share of the mix"), &valid);
        for (i, label) in ["malformed", "unknown id", "wrong secret"]
            .iter()
            .enumerate()
        {
            let at = LOAD_PROCESSES + i;
            show(
                &format!("round {round}: {label} flood"),
                &combine(&out[at..=at], dir, "disturbed", at),
            );
        }
        println!(
            "round {round}: valid throughput in the mix / undisturbed: {:.3}",
            valid.rps / undisturbed.rps
        );
        mix_ratios.push(valid.rps / undisturbed.rps);
    }
    println!("{}", server.metrics_line());
    println!("server: {}", server.stop());

    let restart = crate::restart::run(quick, dir).await;

    let tls_rounds = if quick { 2 } else { tls::TLS_ROUNDS };
    let tls_ratios = tls::run(dir, tls_rounds, seconds).await;

    let gateway_rounds = if quick { 2 } else { gateway::GATEWAY_ROUNDS };
    let gateways = gateway::run(dir, gateway_rounds, seconds).await;

    let watch = match std::env::var("TOKEND_BENCH_POSTGRES_URL") {
        Ok(base) => Some(crate::watch::run(quick, dir, &base).await),
        Err(_) => None,
    };

    println!("\n== Memory: 1,000,000 cached tokens, in a fresh process");
    let per_token = memory_in_child();

    println!("\n== Summary (median over interleaved rounds; every round is printed above)");
    hot_summary(&ratios);
    summary_line(
        "valid during 10,000/s wrong-secret flood / undisturbed",
        &flood_ratios,
        ">= 0.7",
    );
    summary_line(
        "valid in the mixed flood / undisturbed",
        &mix_ratios,
        "(no target)",
    );
    tls::summary(&tls_ratios);
    gateway::summary(&gateways);
    println!(
        "{:<56} {per_token:.0}  target <= 512",
        "bytes per cached token (RSS growth / entries)"
    );
    crate::restart::summarise(&restart);
    crate::watch::summarise(watch.as_ref());
    let _ = std::io::stdout().flush();
    let _ = fs::remove_dir_all(dir);
}
