#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn defaults_match_the_documentation() {
    let c = Config::default();
    assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.argon2_memory_kib, 19456);
    assert_eq!(c.max_tokens_per_owner, 100);
    assert_eq!(c.max_rotate_grace, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.token_prefix, "tk");
    let sweep = c.sweeper().unwrap();
    assert_eq!(sweep.interval, Duration::from_secs(60));
    assert_eq!(sweep.batch, 500);
    assert!(
        Cli::parse_from(["tokend", "--sweep", "false"])
            .config
            .sweeper()
            .is_none()
    );
}

#[test]
fn flags_override_and_parse_durations() {
    let cli = Cli::parse_from([
        "tokend",
        "bootstrap",
        "--account",
        "a",
        "--owner",
        "o",
        "--max-rotate-grace",
        "1h",
        "--listen",
        "0.0.0.0:1",
    ]);
    assert!(matches!(cli.command, Some(Command::Bootstrap { .. })));
    assert!(cli.config.tls().is_none());
    assert!(cli.config.metrics_listen.is_none());
    assert!(cli.config.http_listen.is_none());
    assert_eq!(cli.config.max_rotate_grace, Duration::from_secs(3600));
    assert_eq!(cli.config.listen.port(), 1);
}

#[test]
fn debug_never_shows_the_database_password() {
    let cli = Cli::parse_from([
        "tokend",
        "--database-url",
        "postgres://tokend:hunter2-s3cret@db:5432/tokend",
    ]);
    let shown = format!("{:?}", cli.config);
    assert!(!shown.contains("hunter2-s3cret"), "{shown}");
    assert!(shown.contains("database_url"), "{shown}");
    let store = format!("{:?}", cli.config.store());
    assert!(!store.contains("hunter2-s3cret"), "{store}");
    use secrecy::ExposeSecret;
    assert!(cli.config.database_url.expose_secret().contains("hunter2"));
}

#[test]
fn tls_flags_go_together() {
    assert!(Cli::try_parse_from(["tokend", "--tls-cert", "c.pem"]).is_err());
    assert!(Cli::try_parse_from(["tokend", "--tls-client-ca", "ca.pem"]).is_err());
    let cli = Cli::parse_from([
        "tokend",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
        "--tls-client-ca",
        "ca.pem",
        "--metrics-listen",
        "0.0.0.0:9090",
    ]);
    let tls = cli.config.tls().unwrap();
    assert_eq!(tls.client_ca.unwrap().to_str(), Some("ca.pem"));
    assert_eq!(cli.config.metrics_listen.unwrap().port(), 9090);
}
