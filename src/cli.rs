//! The `drctl` command line: one binary, one subcommand per job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{gitops, topology, validate};

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
    /// Check DRTopology manifests as the apiserver and the controller would; exit 1 on any error.
    Validate {
        /// YAML files, each with one or more DRTopology documents.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Prepare the pull request that makes CLUSTER the primary: a branch with a one-line commit.
    Promote {
        /// The cluster to promote; one of spec.clusters[].name.
        cluster: String,
        /// The Git repository (a clone of the one Argo CD watches).
        #[arg(long)]
        repo: PathBuf,
        /// The topology file, relative to the repository root.
        #[arg(long, default_value = gitops::DEFAULT_FILE)]
        file: PathBuf,
        /// Branch to create; default dr/promote-CLUSTER-<UTC YYYYMMDD-HHMMSS>.
        #[arg(long)]
        branch: Option<String>,
        /// Commit subject; default "DR: promote CLUSTER to primary".
        #[arg(long)]
        message: Option<String>,
        /// Why, recorded in the DR-Reason trailer (default: the subject).
        #[arg(long)]
        reason: Option<String>,
        /// Push the branch to this remote.
        #[arg(long, value_name = "REMOTE")]
        push: Option<String>,
    },
    /// The DR audit trail: every change of spec.primary on the first-parent line of HEAD.
    History {
        #[arg(long)]
        repo: PathBuf,
        /// The topology file, relative to the repository root (renames are followed).
        #[arg(long, default_value = gitops::DEFAULT_FILE)]
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", topology::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate_files(&files)),
        Command::Promote { cluster, repo, file, branch, message, reason, push } => {
            let req = gitops::PromoteRequest { repo, file, cluster, branch, message, reason, push };
            let outcome = gitops::promote(&req)?;
            print!("{}", gitops::next_steps(&outcome));
            Ok(ExitCode::SUCCESS)
        }
        Command::History { repo, file, json } => {
            let entries = gitops::history(&repo, &file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", gitops::format_history(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
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
