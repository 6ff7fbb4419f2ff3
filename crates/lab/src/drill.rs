//! `drctl lab drill`: a DR drill on the lab's standby, asked as an operator would (the
//! `drctl.io/drill` annotation on its DRTopology), followed to its report. Nothing moves: the
//! primary is only read.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use drctl::drill::DRILL_ANNOTATION;
use drctl::gitops;
use drctl::topology::DrillStatus;

use super::out::Out;
use super::{repo, LabError, LabState, TOPOLOGY};

/// A drill takes seconds to a minute (FinalSync's catch-up and check, the read-back, a DNS
/// record on the drill name and its verification).
const DRILL_TIMEOUT: Duration = Duration::from_secs(180);

/// Asks the standby (the cluster Git does not name primary) for a drill and prints its report.
/// Fails when the drill did not pass, naming what a failover now would have stopped at.
pub async fn drill(dir: &Path, o: &Out) -> Result<DrillStatus, LabError> {
    let state = LabState::require(dir)?;
    let git = git2::Repository::open(&state.repo).map_err(super::git_err(format!("open {}", state.repo.display())))?;
    let (_, text) = repo::read_main(&git, &state.file)?;
    let primary = gitops::find_primary(&text).map_err(|e| LabError::Failed(format!("{}: {e}", state.file.display())))?.value;
    let standby = state.clusters.iter().find(|c| c.name != primary).ok_or_else(|| LabError::Failed(format!("no cluster besides {primary}")))?;
    if !standby.is_up() {
        return Err(LabError::Failed(format!("{} is down: `drctl lab recover --dir {}` first", standby.name, dir.display())));
    }
    let id = format!("lab-{}", Timestamp::now().strftime("%Y%m%dT%H%M%SZ"));
    o.heading(&format!("Drill {id} on {} (the standby of {primary})", standby.name));
    let out = standby
        .kubectl(&state)
        .args(["annotate", "--overwrite", "drtopology", TOPOLOGY, &format!("{DRILL_ANNOTATION}={id}")])
        .output()
        .map_err(|e| LabError::Failed(format!("run kubectl annotate on {}: {e}", standby.name)))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!("kubectl annotate on {}: {}", standby.name, String::from_utf8_lossy(&out.stderr).trim())));
    }
    o.ok(&format!("annotated drtopology/{TOPOLOGY} {DRILL_ANNOTATION}={id}"));
    let clock = Instant::now();
    let report = loop {
        if clock.elapsed() > DRILL_TIMEOUT {
            return Err(LabError::Failed(format!("drill {id} did not finish within {DRILL_TIMEOUT:?}; see {}", standby.controller.log.display())));
        }
        let last = standby.topology().await.ok().flatten().and_then(|t| t.status).and_then(|s| s.last_drill);
        if let Some(d) = last.filter(|d| d.id == id && d.finished_at.is_some()) {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    print(&report, o);
    match report.passed {
        Some(true) => Ok(report),
        _ => Err(LabError::Failed(format!("drill {id} failed: {}", report.failures.join("; ")))),
    }
}

fn print(d: &DrillStatus, o: &Out) {
    let mut t = String::new();
    for s in &d.steps {
        t.push_str(&format!("  {:<10} {:<4} {:>6.1}s  {}\n", s.name, s.outcome, s.seconds, s.detail));
    }
    for f in &d.findings {
        t.push_str(&format!("  preflight {} {}: {} {}\n", f.outcome, f.check, f.target, f.detail));
    }
    o.raw(&t);
    let fmt = |v: Option<f64>| v.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "unknown".into());
    let rpo = d.rpo_revisions.map(|r| format!("{r} revisions")).unwrap_or_else(|| "unknown".into());
    o.info(&format!("predicted RTO {}; RPO {rpo}, {} (heartbeat)", fmt(d.predicted_rto_seconds), fmt(d.rpo_seconds)));
    match d.passed {
        Some(true) => o.ok("passed: a failover now would get past every rehearsed step"),
        _ => o.warn(&format!("failed: {}", d.failures.join("; "))),
    }
}
