//! The `tokend` command line: `serve` (default), `migrate`, `bootstrap`,
//! and the day-two commands `backup`, `restore`, `move`, `events export` (`ops`).

use std::process::ExitCode;

use clap::Parser;

use crate::{
    config::{Cli, Command, Config, EventsCommand},
    domain::fields,
    error::{Error, Result},
    ops,
    startup::{Application, Services, shutdown_signal},
    store::{EventRange, Store, sqlite_file::SqliteFile},
    telemetry,
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
        } => ops::move_store::run(&from.0, &to.0, batch_rows, cli.config.store_timeout).await,
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
    }
}

/// `tokend events export`: reads an existing store (never creates one).
async fn export_events(config: &Config, range: &EventRange, out: &str) -> Result<()> {
    if let Some(file) = SqliteFile::from_url(&config.database_url)?
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
    let account =
        fields::principal("account", account).map_err(|v| Error::InvalidArgument(vec![v]))?;
    let owner = fields::principal("owner", owner).map_err(|v| Error::InvalidArgument(vec![v]))?;
    let services = Services::build(config).await?;
    let issued = services
        .manager
        .bootstrap(account.clone(), owner.clone())
        .await?;
    tracing::info!(token_id = %issued.token.id, %account, %owner, "bootstrap platform token issued");
    // The one place a secret is printed: to the operator who asked for it.
    println!("{}", issued.value.expose());
    Ok(())
}
