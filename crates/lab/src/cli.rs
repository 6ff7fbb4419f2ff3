//! `drctl lab ...`: the subcommands and what they print.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::flip::{self, Scenario};
use super::out::Out;
use super::{default_dir, down, drill, status, supervise, up, LabState};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Start PowerDNS, a Git repo and two globals (control plane, kwok nodes, their own Argo CD,
    /// a drctl controller each); seed workloads on the primary; wait until the pair is steady.
    Up(DirArg),
    /// Flip spec.primary by a merged pull request and follow the failover to the end.
    Flip(FlipArgs),
    /// Kill the primary global (every process of it at once), then flip.
    Disaster(FlipArgs),
    /// Start the globals `disaster` stopped again; they come back as standbys of the new primary.
    Recover(DirArg),
    /// A DR drill on the standby (the `drctl.io/drill` annotation), followed to its report:
    /// every failover step that moves no traffic, the primary only read.
    Drill(DirArg),
    /// Primary, DNS answer and each global's role, phase and missed keys, read live.
    Status {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// Stop everything the lab started (safe to run twice); logs and data stay.
    Down(DirArg),
    /// The supervisor of one global (started by `lab up` and `lab recover`).
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Args, Debug)]
pub struct FlipArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Do not ask the Argo CDs to refresh after the merge (as a Git webhook would): let them
    /// notice it by polling.
    #[arg(long)]
    no_refresh: bool,
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
        LabCommand::Flip(f) => {
            flip::flip(&f.dir.path(), Scenario::Planned, !f.no_refresh, &o).await?;
        }
        LabCommand::Disaster(f) => {
            flip::flip(&f.dir.path(), Scenario::Disaster, !f.no_refresh, &o).await?;
        }
        LabCommand::Recover(d) => up::recover(&d.path(), &o).await?,
        LabCommand::Drill(d) => {
            drill::drill(&d.path(), &o).await?;
        }
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
        LabCommand::Supervise { dir, cluster } => supervise::run(&dir.path(), &cluster).await?,
    }
    Ok(ExitCode::SUCCESS)
}
