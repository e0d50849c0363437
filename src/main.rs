//! The `modeld` binary: parse the command line, start logging, dispatch.

use clap::Parser;
use modeld::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: bad --log filter {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match modeld::cli::run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, without a backtrace: these are messages for people.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
