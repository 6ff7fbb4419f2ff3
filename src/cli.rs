//! The `drctl` command line: one binary, one subcommand per job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{topology, validate};

#[derive(Parser, Debug)]
#[command(name = "drctl", version, about = "Declarative, GitOps-driven disaster recovery for a Kubernetes global cluster")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the DRTopology CustomResourceDefinition (what crds/drtopology.yaml holds).
    Crd,
    /// Run the controller in one global cluster.
    Controller(crate::controller::ControllerArgs),
    /// Failover tools.
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// Check DRTopology manifests as the apiserver and the controller would; exit 1 on any error.
    Validate {
        /// YAML files, each with one or more DRTopology documents.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FailoverCommand {
    /// Print the steps a failover to CLUSTER would run and the facts they rest on; change nothing.
    Plan {
        /// The cluster that would become primary.
        #[arg(long)]
        to: String,
        /// Read the topology from this file instead of the cluster.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Kubeconfig of the cluster that would become primary (its peer Secret and status are read).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Name of the DRTopology object when reading from the cluster.
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Controller(args) => {
            crate::controller::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Failover(FailoverCommand::Plan { to, file, kubeconfig, name }) => {
            crate::failover::cli::plan(&to, file.as_deref(), kubeconfig.as_deref(), name.as_deref()).await
        }
        Command::Crd => {
            print!("{}", topology::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate_files(&files)),
    }
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{shown}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let reports = match validate::validate_text(&text) {
            Ok(r) => r,
            Err(e) => {
                println!("{shown}: not valid YAML at {e}");
                failed = true;
                continue;
            }
        };
        if reports.is_empty() {
            println!("{shown}: no documents; expected a DRTopology");
            failed = true;
        }
        let multi = reports.len() > 1;
        for r in reports {
            let label = match (&r.name, multi) {
                (Some(n), true) => format!("{shown} (document {}, {n})", r.index),
                (Some(n), false) => format!("{shown} ({n})"),
                (None, _) => format!("{shown} (document {})", r.index),
            };
            if r.errors.is_empty() {
                let primary = r.topology.as_ref().map(|t| t.spec.primary.as_str()).unwrap_or("?");
                println!("{label}: valid; primary {primary}");
            } else {
                failed = true;
                for e in &r.errors {
                    println!("{label}: {e}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
