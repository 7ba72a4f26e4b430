//! `kuma-dp`: the sidecar identity agent. Parses the configuration, sets up logging and runs the
//! agent from the library until Envoy stops for good or a signal ends it.

use std::process::ExitCode;

use kuma_dp::app;
use kuma_dp::config::{Cli, Command, VERSION};
use tracing_subscriber::EnvFilter;

/// Exit status for bad configuration (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli: Cli = match cp_lite_api::cli::parse_env_wins(std::env::args_os(), |name| {
        std::env::var_os(name)
    }) {
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
            println!("kuma-dp {VERSION}");
            return ExitCode::SUCCESS;
        }
        Command::Run(run) => run,
    };
    let config = match run.validate(&|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("Error: {}", error_chain(&e));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let level = match config.log_level.as_str() {
        "off" => "off",
        "debug" => "debug",
        "trace" => "trace",
        "warn" | "warning" => "warn",
        "error" => "error",
        _ => "info",
    };
    let filter =
        EnvFilter::try_from_env("KUMA_DP_LOG_FILTER").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    // One thread is plenty for a sidecar agent (its work is a few RPCs and a CSR now and then),
    // and keeps its memory small next to the application it serves.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "kuma-dp stopped");
            eprintln!("Error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
