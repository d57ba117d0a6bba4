//! The `tokend` command line: `serve` (default), `migrate`, `bootstrap`,
//! `keygen`, `key-status`, and the day-two commands `backup`, `restore`, `move`,
//! `events export` (`ops`).

use std::process::ExitCode;

use clap::Parser;
use secrecy::ExposeSecret;

use crate::{
    config::{Cli, Command, Config, EventsCommand},
    domain::{AccountId, OwnerId},
    error::{Error, Result},
    ops,
    startup::{Application, Services, shutdown_signal},
    store::{EventRange, KeyUsage, Store, sqlite_file::SqliteFile},
    telemetry,
    validation::{key_file, verifier::Keyring},
};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_stderr(cli.config.log_format, &cli.config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokend: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tokend failed");
            eprintln!("tokend: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(&cli.config)
                .await?
                .run_until_stopped(shutdown_signal())
                .await
        }
        Command::Migrate => {
            let store = Store::connect(&cli.config.store()).await?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            store.close().await;
            Ok(())
        }
        Command::Bootstrap { account, owner } => bootstrap(&cli.config, &account, &owner).await,
        Command::Backup { to } => ops::backup::backup(&cli.config, &to).await.map(|_| ()),
        Command::Restore { from, force } => ops::backup::restore(&cli.config, &from, force)
            .await
            .map(|_| ()),
        Command::Move {
            from,
            to,
            batch_rows,
        } => {
            ops::move_store::run(
                from.expose_secret(),
                to.expose_secret(),
                batch_rows,
                cli.config.store_timeout,
            )
            .await
        }
        Command::Events {
            command:
                EventsCommand::Export {
                    from,
                    to,
                    account,
                    out,
                },
        } => {
            let range = EventRange {
                from,
                to,
                account_id: account,
            };
            export_events(&cli.config, &range, &out).await
        }
        Command::Keygen => {
            // The one place a key is printed: to the operator who asked for it.
            println!("{}", *zeroize::Zeroizing::new(Keyring::generate_line()));
            Ok(())
        }
        Command::KeyStatus => key_status(&cli.config).await,
    }
}

/// Prints live tokens per verifier key: an old key can be dropped from the
/// key file once no token is left under it (those left would each need one
/// argon2 verification on their next use, then heal).
async fn key_status(config: &Config) -> Result<()> {
    let store = Store::connect(&config.store()).await?;
    store.migrate().await?;
    let (keyring, source) = key_file::load(
        config.verifier_key_file.as_deref(),
        Store::sqlite_file(config.database_url.expose_secret()).as_deref(),
        store.is_shared(),
    )?;
    tracing::debug!(?source, "verifier keys");
    let usage = store.verifier_key_usage().await?;
    store.close().await;
    println!("{}", describe_key_usage(&keyring, &usage).join("\n"));
    Ok(())
}

/// One line per key of the key file, then tokens under unknown keys or none.
pub fn describe_key_usage(keyring: &Keyring, usage: &[KeyUsage]) -> Vec<String> {
    let count = |id: Option<&str>| -> i64 {
        usage
            .iter()
            .filter(|u| u.key_id.as_deref() == id)
            .map(|u| u.tokens)
            .sum()
    };
    let mut lines = Vec::new();
    for (i, id) in keyring.ids().enumerate() {
        let role = if i == 0 { "current" } else { "older" };
        lines.push(format!(
            "key {id} ({role}): {} live tokens",
            count(Some(id))
        ));
    }
    let unknown: i64 = usage
        .iter()
        .filter(|u| {
            u.key_id
                .as_deref()
                .is_some_and(|k| keyring.index_of(k).is_none())
        })
        .map(|u| u.tokens)
        .sum();
    lines.push(format!(
        "keys not in the key file: {unknown} live tokens (argon2 once each on next use)"
    ));
    lines.push(format!(
        "no verifier yet: {} live tokens (argon2 once each on next use)",
        count(None)
    ));
    lines
}

/// `tokend events export`: reads an existing store (never creates one).
async fn export_events(config: &Config, range: &EventRange, out: &str) -> Result<()> {
    if let Some(file) = SqliteFile::from_url(config.database_url.expose_secret())?
        && !file.exists()
    {
        return Err(Error::NotFound(format!(
            "no SQLite store at {}",
            file.path().display()
        )));
    }
    let store = Store::connect(&config.store()).await?;
    let written = ops::export::export(&store, range, out).await;
    store.close().await;
    let n = written?;
    tracing::info!(events = n, "audit events exported");
    if out != "-" {
        eprintln!("tokend: exported {n} audit events to {out}");
    }
    Ok(())
}

async fn bootstrap(config: &Config, account: &str, owner: &str) -> Result<()> {
    // Checked before connecting, so a typo touches no database.
    AccountId::parse("account", account)?;
    OwnerId::parse("owner", owner)?;
    let services = Services::build(config).await?;
    let issued = services.manager.bootstrap(account, owner).await?;
    let (account, owner) = (&issued.token.account_id, &issued.token.owner_id);
    tracing::info!(token_id = %issued.token.id, %account, %owner, "bootstrap platform token issued");
    // The one place a secret is printed: to the operator who asked for it.
    println!("{}", issued.value.expose());
    Ok(())
}
