//! The `tokend` command line: `serve` (default), `migrate`, `bootstrap`.

use std::process::ExitCode;

use clap::Parser;

use crate::{
    config::{Cli, Command, Config},
    domain::fields,
    error::{Error, Result},
    startup::{Application, Services, shutdown_signal},
    store::Store,
    telemetry,
};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format, &cli.config.log, std::io::stderr);
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
    }
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
