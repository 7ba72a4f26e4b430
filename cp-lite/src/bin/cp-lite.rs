//! `cp-lite`: the thin control plane. Parses the configuration, sets up logging, starts the
//! control plane from the library and runs it until SIGTERM or SIGINT.

use std::process::ExitCode;

use cp_lite::app;
use cp_lite::config::{self, Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit status for bad configuration (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli: Cli = match config::parse_env_wins(std::env::args_os(), |name| std::env::var_os(name))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let run = match cli.command {
        Command::Version => {
            println!("cp-lite {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(run) => run,
    };
    let filter = match EnvFilter::try_new(&run.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("invalid configuration: --log-level (KUMA_LOG_LEVEL): {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = match run.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let control_plane = app::start(config, shutdown.clone()).await?;
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        control_plane.wait(shutdown).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %app::error_chain(e.as_ref()), "cp-lite stopped");
            eprintln!("Error: {}", app::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("could not install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("received signal, stopping");
    shutdown.cancel();
}
