//! Log hygiene: after a full session at TRACE level, no token value, secret,
//! argon2 hash, verifier or verifier key appears in the captured logs, while
//! the token ids do.

use tokend::{
    domain::{TokenId, TokenValue},
    pb,
};
use tonic::Code;

use crate::helpers::{TestApp, captured_logs, id_of, spawn_app};

/// The 44-character secret part of a value.
fn secret_of(value: &str) -> String {
    let rest = value.splitn(3, '_').nth(2).unwrap();
    rest[..44].to_owned()
}

async fn hashes(app: &TestApp, id: &str) -> Vec<String> {
    let token = app
        .store
        .find_token(TokenId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut out = vec![token.secret_hash.as_phc().to_owned()];
    if let Some(prev) = &token.previous_secret {
        out.push(prev.hash.as_phc().to_owned());
    }
    out
}

/// The stored verifier MACs of a token, as hex and as a byte list.
async fn verifiers(app: &TestApp, id: &str) -> Vec<String> {
    let token = app
        .store
        .find_token(TokenId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut macs = vec![token.verifier.unwrap().mac];
    macs.extend(
        token
            .previous_secret
            .and_then(|p| p.verifier)
            .map(|v| v.mac),
    );
    macs.iter()
        .flat_map(|m| {
            [
                hex::encode(m),
                format!("{:?}", &m[..8]).trim_end_matches(']').to_owned(),
            ]
        })
        .collect()
}

#[tokio::test]
async fn no_secret_value_or_hash_reaches_the_logs() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let mut values = vec![p.clone()];
    let mut ids = vec![id_of(&p)];

    let (validator_id, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    values.push(validator.clone());
    ids.push(validator_id.clone());

    // Issue, validate, validate wrong values.
    let issued = app
        .issue_as(
            &p,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "logged".into(),
                modules: vec!["billing:read".into()],
                ..Default::default()
            },
        )
        .await;
    let a = issued.token.unwrap().id;
    let a_old = issued.secret;
    values.push(a_old.clone());
    ids.push(a.clone());
    assert!(
        app.validate_with(&validator, &a_old, &["billing:read"])
            .await
            .valid
    );
    let wrong = TokenValue::generate_for("tk", TokenId::parse(&a).unwrap())
        .unwrap()
        .expose();
    values.push(wrong.clone());
    assert_eq!(
        app.validate_with(&validator, &wrong, &[]).await.reason(),
        pb::Reason::Unknown
    );
    let mut typo = a_old.clone().into_bytes();
    typo[30] = if typo[30] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    values.push(typo.clone());
    assert_eq!(
        app.validate_with(&validator, &typo, &[]).await.reason(),
        pb::Reason::Malformed
    );
    let unknown = TokenValue::generate("tk").unwrap().expose();
    values.push(unknown.clone());
    assert_eq!(
        app.validate_with(&validator, &unknown, &[]).await.reason(),
        pb::Reason::Unknown
    );
    // A wrong value used as an RPC credential.
    let err = client
        .get(&wrong, pb::GetRequest { id: a.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Rotate with grace (so a previous hash exists), then validate both.
    let rotated = client
        .rotate(
            &p,
            pb::RotateRequest {
                id: a.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
            },
        )
        .await
        .unwrap();
    let a_new = rotated.secret;
    values.push(a_new.clone());
    assert!(app.validate_with(&validator, &a_old, &[]).await.valid);
    assert!(app.validate_with(&validator, &a_new, &[]).await.valid);

    // Duplicate, search by value, revoke the copy by value.
    let dup = client
        .duplicate(
            &p,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: a.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    let d = dup.token.unwrap().id;
    let d_value = dup.secret;
    values.push(d_value.clone());
    ids.push(d.clone());
    let found = client
        .search(
            &p,
            pb::SearchRequest {
                query: a_new.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(found.tokens.len(), 1);
    assert_eq!(found.tokens[0].id, a);
    let found = client
        .search(
            &p,
            pb::SearchRequest {
                query: wrong.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(found.tokens.is_empty());
    let err = client.revoke_value(&p, &wrong, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.revoke_value(&p, &typo, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Oversized values (containing a real one) are refused, and not logged either.
    let long = format!("{a_new}{}", "z".repeat(600));
    let err = client
        .validate(
            &validator,
            pb::ValidateRequest {
                client_ip: String::new(),
                token: long,
                required_modules: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    client
        .revoke_value(&validator, &d_value, "leaked")
        .await
        .unwrap();
    assert_eq!(
        app.validate_with(&validator, &d_value, &[]).await.reason(),
        pb::Reason::Revoked
    );
    // Other management calls with the bootstrap platform token.
    client
        .change_state(&p, &a, pb::State::Disabled, "audit")
        .await
        .unwrap();
    client
        .get(&p, pb::GetRequest { id: a.clone() })
        .await
        .unwrap();
    client
        .list_events(&p, pb::ListEventsRequest::default())
        .await
        .unwrap();

    let mut phc = Vec::new();
    for id in [&ids[0], &validator_id, &a, &d] {
        phc.extend(hashes(&app, id).await);
    }
    assert_eq!(phc.len(), 5, "the rotated token has a previous hash");
    let mut macs = Vec::new();
    for id in [&ids[0], &validator_id, &a, &d] {
        macs.extend(verifiers(&app, id).await);
    }
    assert_eq!(macs.len(), 10, "the rotated token has a previous verifier");
    let key_file = app.data_dir.as_ref().unwrap().join("tokend.key");
    let key_lines: Vec<String> = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(key_lines.len(), 1);
    assert_eq!(key_lines[0].len(), 64);
    app.stop().await;

    let logs = captured_logs();
    assert!(!logs.is_empty(), "nothing was logged");
    // The ids the RPC spans record (callers, and the token a call is about)
    // are there, so the checks below look at the right output. (The id of a
    // Duplicate's new token is not guaranteed to be logged: no event fires
    // inside the span after it is recorded.)
    for id in [&ids[0], &validator_id, &a] {
        assert!(logs.contains(id.as_str()), "token id {id} is never logged");
    }
    assert!(logs.contains("Rotate"), "RPC spans are logged");
    for value in &values {
        assert!(
            !logs.contains(value.as_str()),
            "a token value reached the logs"
        );
        let secret = secret_of(value);
        assert!(!logs.contains(&secret), "a secret reached the logs");
    }
    for key in &key_lines {
        assert!(
            !logs.contains(key.as_str()),
            "the verifier key reached the logs"
        );
        assert!(
            !logs.contains(&key[..16]),
            "part of the verifier key reached the logs"
        );
    }
    for mac in &macs {
        assert!(!logs.contains(mac.as_str()), "a verifier reached the logs");
    }
    for hash in &phc {
        assert!(hash.starts_with("$argon2"), "not a PHC string");
        assert!(
            !logs.contains(hash.as_str()),
            "an argon2 hash reached the logs"
        );
        let digest = hash.rsplit('$').next().unwrap();
        assert!(digest.len() >= 16);
        assert!(!logs.contains(digest), "an argon2 digest reached the logs");
        let salt = hash.rsplit('$').nth(1).unwrap();
        assert!(!logs.contains(salt), "an argon2 salt reached the logs");
    }
}
