//! `drctl-lab`: the local DR lab, run as `drctl lab ...` (drctl execs this binary) or directly.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "drctl lab",
    bin_name = "drctl lab",
    version,
    about = "The local DR lab: two whole globals (control plane, kwok nodes, their own Argo CD), PowerDNS and a Git repo on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: drctl_lab::cli::LabCommand,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The lab prints its own progress and reports unreachable globals itself.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DRCTL_LOG").unwrap_or_else(|_| "warn,kube_client=off".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match drctl_lab::cli::run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", drctl::cli::report(&e));
            ExitCode::FAILURE
        }
    }
}
