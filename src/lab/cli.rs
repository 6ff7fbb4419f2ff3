//! `drctl lab ...`: the subcommands and what they print.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::flip::{self, Scenario};
use super::out::Out;
use super::{default_dir, down, standin, status, up, LabState};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Start two globals, PowerDNS, a Git repo, the stand-in for Argo CD and one controller per
    /// global; seed workloads on the primary; wait until the pair is steady.
    Up(DirArg),
    /// Flip spec.primary by a merged pull request and follow the failover to the end.
    Flip(DirArg),
    /// Stop the primary's etcd, apiserver and controller, then flip.
    Disaster(DirArg),
    /// Start the globals `disaster` stopped again; they come back as standbys of the new primary.
    Recover(DirArg),
    /// Primary, DNS answer and each global's role, phase and missed keys, read live.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the lab started (safe to run twice); logs and data stay.
    Down(DirArg),
    /// The stand-in for Argo CD (started by `lab up`).
    #[command(hide = true)]
    ArgoStandin(DirArg),
}

#[derive(Args, Debug)]
pub struct DirArg {
    /// The lab's directory [default: $DRCTL_LAB_DIR, else $TMPDIR/drctl-lab].
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }
}

pub async fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    let o = Out::new();
    match cmd {
        LabCommand::Up(d) => {
            up::up(&d.path(), &o).await?;
        }
        LabCommand::Flip(d) => {
            flip::flip(&d.path(), Scenario::Planned, &o).await?;
        }
        LabCommand::Disaster(d) => {
            flip::flip(&d.path(), Scenario::Disaster, &o).await?;
        }
        LabCommand::Recover(d) => up::recover(&d.path(), &o).await?,
        LabCommand::Status { dir, json } => {
            let state = LabState::require(&dir.path())?;
            let s = status::read(&state).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                status::print(&s, &o);
            }
        }
        LabCommand::Down(d) => down(&d.path(), &o)?,
        LabCommand::ArgoStandin(d) => standin::run(&d.path()).await?,
    }
    Ok(ExitCode::SUCCESS)
}
