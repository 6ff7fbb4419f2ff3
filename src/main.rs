use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = drctl::cli::Cli::parse();
    // The lab and status print their own progress and report unreachable globals themselves.
    let default_filter = match cli.command {
        drctl::cli::Command::Lab { .. } | drctl::cli::Command::Status(_) | drctl::cli::Command::Preflight(_) | drctl::cli::Command::Drill(_) => {
            "warn,kube_client=off"
        }
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DRCTL_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match drctl::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", drctl::cli::report(&e));
            ExitCode::FAILURE
        }
    }
}
