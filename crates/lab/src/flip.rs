//! `drctl lab flip` and `drctl lab disaster`: `drctl promote` on a branch, merged into `main` as a
//! pull request would be, then following along until the new primary reports Done: each global's
//! Argo CD syncing the merge, each failover step with its duration, the DNS answer, both
//! globals' `kubectl get drtopology`, the consistency check, and a timeline with the RTO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use drctl::check::CheckReport;
use drctl::gitops::{self, PromoteRequest};
use drctl::topology::{DRTopologyStatus, StepState};

use super::out::Out;
use super::up::{standby_in_sync, wait_status};
use super::{argo, procs, repo, write_atomic, ClusterState, LabError, LabState};

const FAILOVER_TIMEOUT: Duration = Duration::from_secs(150);
const STANDBY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Both globals alive: the old primary demotes and hands over its final revision.
    Planned,
    /// The primary's etcd, apiserver and controller are stopped first.
    Disaster,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Planned => "planned",
            Scenario::Disaster => "disaster",
        }
    }
}

/// One failover step as the new primary recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTime {
    pub name: String,
    pub state: StepState,
    pub seconds: Option<f64>,
    pub message: Option<String>,
}

/// What a flip did and how long it took; `DIR/flips.json` keeps every one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlipReport {
    pub scenario: Scenario,
    pub from: String,
    pub to: String,
    pub branch: String,
    pub promote_commit: String,
    pub merge_commit: String,
    pub merged_at: String,
    /// Whether the lab asked both Argo CDs to refresh right after the merge (as a Git webhook
    /// does), or left them to their polling.
    pub refreshed: bool,
    /// Per global: when its own Argo CD finished applying the merge commit (RFC 3339).
    pub argo_synced_at: BTreeMap<String, String>,
    /// When the new primary's Argo CD applied the merge.
    pub applied_at: String,
    /// The new primary's `status.failover.completedAt`.
    pub done_at: String,
    /// Applied to the new primary → Done: the failover itself, without Argo CD's sync delay.
    pub rto_seconds: f64,
    /// Merge → Done, including Argo CD's sync delay.
    pub merge_to_done_seconds: f64,
    pub steps: Vec<StepTime>,
    pub dns_answer: Vec<String>,
    /// Planned only: when the old primary was an in-sync standby of the new one.
    pub old_primary_in_sync_at: Option<String>,
}

pub fn reports_path(dir: &Path) -> PathBuf {
    dir.join("flips.json")
}

/// Every flip of the lab in `dir`, oldest first.
pub fn read_reports(dir: &Path) -> Vec<FlipReport> {
    std::fs::read_to_string(reports_path(dir)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn secs_between(a: &str, b: &str) -> Option<f64> {
    let (a, b) = (a.parse::<Timestamp>().ok()?, b.parse::<Timestamp>().ok()?);
    Some(b.duration_since(a).as_secs_f64())
}

/// Runs a flip on the lab in `dir` and returns its report.
#[tracing::instrument(skip_all, fields(dir = %dir.display(), ?scenario))]
pub async fn flip(dir: &Path, scenario: Scenario, refresh: bool, o: &Out) -> Result<FlipReport, LabError> {
    let mut state = LabState::require(dir)?;
    let git = git2::Repository::open(&state.repo).map_err(super::git_err(format!("open {}", state.repo.display())))?;
    let (_, text) = repo::read_main(&git, &state.file)?;
    let from = gitops::find_primary(&text).map_err(|e| LabError::Failed(format!("{}: {e}", state.file.display())))?.value;
    let to = state.clusters.iter().find(|c| c.name != from).map(|c| c.name.clone()).ok_or_else(|| LabError::Failed(format!("no cluster besides {from}")))?;

    let down = |name: &str| state.cluster(name).map(|c| !c.is_up());
    if down(&to)? {
        return Err(LabError::Failed(format!("{to} is down: `drctl lab recover --dir {}` first", dir.display())));
    }
    if scenario == Scenario::Planned && down(&from)? {
        return Err(LabError::Failed(format!(
            "{from} is down: a planned switchover needs both globals (`drctl lab recover --dir {}`, or `drctl lab disaster`)",
            dir.display()
        )));
    }
    if scenario == Scenario::Disaster {
        o.heading(&format!("Disaster: {from} goes dark"));
        let c = state.clusters.iter_mut().find(|c| c.name == from).ok_or_else(|| LabError::Failed(format!("no cluster {from}")))?;
        // SIGKILL to the supervisor: every component dies with it (parent-death signal), at once,
        // as when a datacenter loses power.
        if let Some(p) = c.supervisor.take() {
            p.kill();
            o.warn(&format!("killed {from}'s supervisor (pid {}): etcd, apiserver, controller-manager, scheduler, kwok, Argo CD and drctl die with it", p.pid));
        }
        state.save()?;
    }

    o.heading(&format!("Pull request: promote {to} to primary"));
    let reason = match scenario {
        Scenario::Planned => format!("planned switchover to {to} (drctl lab flip)"),
        Scenario::Disaster => format!("{from} is down: disaster failover to {to} (drctl lab disaster)"),
    };
    let req = PromoteRequest {
        repo: state.repo.clone(),
        file: state.file.clone(),
        cluster: to.clone(),
        branch: None,
        message: None,
        reason: Some(reason),
        push: None,
    };
    let promoted = gitops::promote(&req)?;
    o.ok(&format!("drctl promote {to}: commit {} on branch {} (spec.primary {from} -> {to})", &promoted.commit[..12], promoted.branch));
    let number = repo::merges_on_main(&state.repo)? + 1;
    let merged = repo::merge_pull_request(&state.repo, &promoted.branch, number)?.to_string();
    let merged_at = Timestamp::now();
    let clock = Instant::now();
    o.ok(&format!("merged pull request #{number} into {}: merge commit {}", repo::MAIN, &merged[..12]));
    if refresh {
        // What the forge's webhook to each Argo CD does after a push.
        for c in state.clusters.iter().filter(|c| c.is_up()) {
            match argo::refresh(&state, c) {
                Ok(()) => o.info(&format!("asked {}'s Argo CD to refresh (as a Git webhook would)", c.name)),
                Err(e) => o.warn(&e.to_string()),
            }
        }
    } else {
        o.info(&format!("no refresh: each Argo CD notices the merge by polling (every {} s)", super::platform::ARGOCD_POLL_SECONDS));
    }

    o.heading("Following the failover");
    let target = state.cluster(&to)?.clone();
    let old = state.cluster(&from)?.clone();
    let mut seen_applied: BTreeMap<String, String> = BTreeMap::new();
    let mut printed: BTreeMap<String, StepState> = BTreeMap::new();
    let mut old_view = String::new();
    let done: DRTopologyStatus = loop {
        if clock.elapsed() > FAILOVER_TIMEOUT {
            return Err(LabError::Failed(format!("{to} did not finish the failover within {FAILOVER_TIMEOUT:?}; see {}", target.controller.log.display())));
        }
        let waiting: Vec<&ClusterState> = state.clusters.iter().filter(|c| c.is_up() && !seen_applied.contains_key(&c.name)).collect();
        for c in waiting {
            // When the lab saw it (polled every 200 ms): Argo CD's finishedAt has whole seconds only.
            if argo::application(&state, c).ok().flatten().is_some_and(|a| a.applied_at(&merged).is_some()) {
                let at = Timestamp::now().to_string();
                let after = secs_between(&merged_at.to_string(), &at).unwrap_or_default();
                o.ok(&format!("{}'s Argo CD synced the merge ({after:.1}s after the merge)", c.name));
                seen_applied.insert(c.name.clone(), at);
            }
        }
        if scenario == Scenario::Planned {
            if let Ok(Some(t)) = old.topology().await {
                let s = t.status.unwrap_or_default();
                let view = format!("{:?}/{:?}", s.role, s.phase);
                if view != old_view && s.role.is_some() {
                    o.info(&format!("{from}: {}", describe(&s)));
                    old_view = view;
                }
            }
        }
        let status = target.topology().await.ok().flatten().and_then(|t| t.status);
        if let Some(f) = status.as_ref().and_then(|s| s.failover.as_ref()).filter(|f| f.to == to && f.from == from) {
            for s in &f.steps {
                if printed.get(&s.name) == Some(&s.state) || s.state == StepState::Pending {
                    continue;
                }
                printed.insert(s.name.clone(), s.state);
                o.info(&format!("{to}: {}", step_line(o, s)));
            }
            let finished = f.completed_at.as_deref().and_then(|c| secs_between(&merged_at.to_string(), c)).is_some_and(|d| d >= 0.0);
            if finished {
                if let Some(s) = status.clone() {
                    break s;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let f = done.failover.clone().unwrap_or_default();
    let done_at = f.completed_at.clone().unwrap_or_default();
    o.ok(&format!("{to} is {} after {:.1}s", describe(&done), clock.elapsed().as_secs_f64()));

    let mut old_in_sync_at = None;
    if scenario == Scenario::Planned {
        let s = wait_status(&old, "an in-sync standby", STANDBY_TIMEOUT, standby_in_sync).await?;
        old_in_sync_at = Some(Timestamp::now().to_string());
        o.ok(&format!("{from} is {}: the mirror now runs {to} -> {from}", describe(&s)));
    }

    o.heading("Result");
    let answer = dns_answer(&state).await;
    let shown = if answer.is_empty() { "no answer".to_string() } else { answer.join(", ") };
    let verdict = if answer == [target.vip.clone()] { o.green(&format!("= {to}'s VIP")) } else { o.red(&format!("!= {to}'s VIP {}", target.vip)) };
    o.info(&format!("DNS {} A -> {shown} {verdict}", state.domain));
    for c in &state.clusters {
        o.info(&format!("kubectl get drtopology on {}:", c.name));
        o.raw(&indent(&kubectl_get(&state, c)));
    }
    match scenario {
        Scenario::Planned => match check(&old) {
            Some(r) => {
                o.info(&format!("consistency check on the new standby {from} (GET /check):"));
                o.raw(&indent(&r.to_string()));
            }
            None => o.warn(&format!("{from}'s controller has no check result yet")),
        },
        Scenario::Disaster => o.info(&format!("no standby while {from} is down: nothing to check")),
    }

    // The old primary's Argo CD may sync after the failover finished (it is not waited for).
    if let Ok(c) = state.cluster(&from) {
        if c.is_up() && !seen_applied.contains_key(&from) {
            if let Ok(at) = super::up::wait_argo_synced(&state, c, &merged, STANDBY_TIMEOUT).await {
                seen_applied.insert(from.clone(), at);
            }
        }
    }
    let applied_at = seen_applied.get(&to).cloned().unwrap_or_else(|| merged_at.to_string());
    let steps: Vec<StepTime> = f
        .steps
        .iter()
        .map(|s| StepTime {
            name: s.name.clone(),
            state: s.state,
            seconds: s.started_at.as_deref().zip(s.finished_at.as_deref()).and_then(|(a, b)| secs_between(a, b)),
            message: s.message.clone(),
        })
        .collect();
    let report = FlipReport {
        scenario,
        from: from.clone(),
        to: to.clone(),
        branch: promoted.branch,
        promote_commit: promoted.commit,
        merge_commit: merged,
        merged_at: merged_at.to_string(),
        refreshed: refresh,
        argo_synced_at: seen_applied.clone(),
        rto_seconds: secs_between(&applied_at, &done_at).unwrap_or_default(),
        merge_to_done_seconds: secs_between(&merged_at.to_string(), &done_at).unwrap_or_default(),
        applied_at,
        done_at,
        steps,
        dns_answer: answer,
        old_primary_in_sync_at: old_in_sync_at,
    };
    print_timeline(&report, &seen_applied, &f.steps, o);
    let mut all = read_reports(&state.dir);
    all.push(report.clone());
    let text = serde_json::to_string_pretty(&all).map_err(|source| LabError::Json { what: "serialize flips".into(), source })?;
    write_atomic(&reports_path(&state.dir), &text)?;
    Ok(report)
}

fn describe(s: &DRTopologyStatus) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    let mut d = format!("{} {}", opt(s.role.map(|r| format!("{r:?}"))), opt(s.phase.map(|p| format!("{p:?}"))));
    if let Some(m) = s.sync.as_ref().and_then(|y| y.missed_keys) {
        d.push_str(&format!(", {m} missed keys"));
    }
    d
}

fn step_line(o: &Out, s: &drctl::topology::StepStatus) -> String {
    let secs = s.started_at.as_deref().zip(s.finished_at.as_deref()).and_then(|(a, b)| secs_between(a, b));
    let state = match s.state {
        StepState::Succeeded => o.green("Succeeded"),
        StepState::Skipped => o.dim("Skipped"),
        StepState::Failed => o.red("Failed"),
        StepState::Running => o.yellow("Running"),
        StepState::Pending => "Pending".to_string(),
    };
    let dur = secs.map(|d| format!(" {d:.2}s")).unwrap_or_default();
    let msg = s.message.as_deref().map(|m| format!("  {}", o.dim(m))).unwrap_or_default();
    format!("{:<10} {state}{dur}{msg}", s.name)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// What a plain client sees for the platform domain, asking the authoritative server directly.
pub async fn dns_answer(state: &LabState) -> Vec<String> {
    match drctl::dns::resolve(&[state.dns.server], &state.domain).await {
        Ok(addrs) => {
            let mut v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            v.sort();
            v
        }
        Err(e) => {
            tracing::warn!(error = %e, "resolve {}", state.domain);
            Vec::new()
        }
    }
}

fn kubectl_get(state: &LabState, c: &ClusterState) -> String {
    let mut cmd = c.kubectl(state);
    cmd.args(["get", "drtopology"]);
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => "unreachable (its apiserver is down)\n".to_string(),
    }
}

/// The last consistency check of `c`'s in-process mirror (the controller's `/check`).
pub fn check(c: &ClusterState) -> Option<CheckReport> {
    let resp = procs::http_get(&c.controller.listen.to_string(), "/check")?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn print_timeline(r: &FlipReport, applied: &BTreeMap<String, String>, steps: &[drctl::topology::StepStatus], o: &Out) {
    let mut events: Vec<(f64, String)> = vec![(0.0, format!("pull request merged into {} ({})", repo::MAIN, &r.merge_commit[..12]))];
    let at = |t: &str| secs_between(&r.merged_at, t);
    for (name, t) in applied {
        if let Some(s) = at(t) {
            events.push((s, format!("{name}'s Argo CD applied it")));
        }
    }
    for s in steps {
        if let Some(t) = s.finished_at.as_deref().and_then(at) {
            events.push((t, format!("{}: {} {:?}", r.to, s.name, s.state)));
        }
    }
    if let Some(t) = r.old_primary_in_sync_at.as_deref().and_then(at) {
        events.push((t, format!("{} is an in-sync standby of {}", r.from, r.to)));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    o.heading("Timeline (seconds after the merge)");
    let mut t = String::new();
    for (s, e) in events {
        t.push_str(&format!("  {s:>7.2}  {e}\n"));
    }
    let how = if r.refreshed {
        "refreshed after the merge, as by a Git webhook".to_string()
    } else {
        format!("polling every {} s", super::platform::ARGOCD_POLL_SECONDS)
    };
    t.push_str(&format!(
        "\n  {} {:.2}s  ({}'s Argo CD applied it -> Done; merge -> Done {:.2}s, Argo CD {how})\n",
        o.bold(&format!("RTO ({}):", r.scenario.as_str())),
        r.rto_seconds,
        r.to,
        r.merge_to_done_seconds,
    ));
    o.raw(&t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_between_controller_timestamps() {
        let a = "2026-11-25T17:39:15.086298Z";
        let b = "2026-11-25T17:39:16.586298Z";
        assert_eq!(secs_between(a, b), Some(1.5));
        assert_eq!(secs_between(b, a), Some(-1.5));
        assert_eq!(secs_between("now", b), None);
    }
}
