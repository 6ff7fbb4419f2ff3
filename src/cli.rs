//! The `drctl` command line: one binary, one subcommand per job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{dns, topology, validate};

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
    /// DNS tools for operators.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Ask resolvers directly (no cache in between) for a name's A and AAAA addresses, as the
    /// failover's VerifyDNS step does; exit 1 if any resolver fails.
    Resolve {
        name: String,
        /// `ip` or `ip:port`; repeat for several. Default: the nameservers of /etc/resolv.conf.
        #[arg(long = "resolver")]
        resolvers: Vec<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", topology::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate_files(&files)),
        Command::Dns { command: DnsCommand::Resolve { name, resolvers } } => dns_resolve(&name, &resolvers).await,
    }
}

async fn dns_resolve(name: &str, resolvers: &[String]) -> anyhow::Result<ExitCode> {
    let spec = topology::DnsSpec {
        verify: topology::DnsVerify { resolvers: resolvers.to_vec(), ..Default::default() },
        ..Default::default()
    };
    let resolvers = dns::verify_resolvers(&spec)?;
    let mut failed = false;
    for answer in dns::ask_all(&resolvers, name, std::time::Duration::from_secs(3)).await {
        match answer.result {
            Ok(addrs) if addrs.is_empty() => println!("{}: no address", answer.resolver),
            Ok(addrs) => {
                let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("{}: {}", answer.resolver, shown.join(", "));
            }
            Err(e) => {
                failed = true;
                println!("{}: error: {e}", answer.resolver);
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
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
