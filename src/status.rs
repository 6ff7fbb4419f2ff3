//! `drctl status`: both globals side by side, in the spirit of `kubectl cnpg status`.
//!
//! This file is the pure part: [`report`] judges what was read from the two globals and the
//! resolvers ([`ClusterView`], [`ResolverAnswer`]) into a [`StatusReport`], printed as a table
//! ([`render_table`]) or as one JSON document (every key always present, `null` when unknown).
//! [`read`] does the I/O, read-only.

pub mod read;

use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::argocd::ArgoView;
use crate::dns::ResolverAnswer;
use crate::topology::{DRTopology, DRTopologySpec, FailoverStatus, Phase, Role, StepState};

/// Exit code: at most one primary is visible and nothing below is a safety problem. (1 is an
/// error such as an unreadable kubeconfig, 2 a usage error, as clap exits.)
pub const EXIT_OK: u8 = 0;
/// A safety problem is visible: two primaries, or two answering globals with no primary and no
/// failover running.
pub const EXIT_SAFETY: u8 = 3;
/// Neither global answered: nothing is known.
pub const EXIT_UNREACHABLE: u8 = 4;

/// What was read from one global.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The name the operator gave this global (one of spec.clusters[].name).
    pub name: String,
    /// Err: the global's apiserver did not answer, and why.
    pub observed: Result<Observed, String>,
}

#[derive(Debug, Clone)]
pub struct Observed {
    /// The DRTopology the controller acts on (the oldest); None when the global has none.
    pub topology: Option<DRTopology>,
    /// The DRTopology CRD is installed (false: the apiserver answered 404 for the resource).
    pub crd_installed: bool,
    /// The `drtopology` Application; Ok(None) when there is none, Err when it could not be read.
    pub argocd: Result<Option<ArgoView>, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The DRTopology's name, from the first global that answered with one.
    pub topology: Option<String>,
    /// `spec.primary` when every answering global holds the same (see finding SpecDiffers).
    pub spec_primary: Option<String>,
    pub clusters: Vec<ClusterStatus>,
    pub dns: DnsStatus,
    /// The cluster whose `status.failover` is the newest (by start), when any has one.
    pub last_failover_recorded_by: Option<String>,
    pub findings: Vec<Finding>,
    /// [`EXIT_OK`], [`EXIT_SAFETY`] or [`EXIT_UNREACHABLE`]: what `drctl status` exits with.
    pub exit_code: u8,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub reachable: bool,
    /// Why the apiserver did not answer.
    pub error: Option<String>,
    /// The global has a DRTopology (false when unreachable: unknown).
    pub topology_found: bool,
    /// The DRTopology CRD is installed; None when unreachable.
    pub crd_installed: Option<bool>,
    /// `spec.primary` as this global holds it (what its Argo CD last applied).
    pub spec_primary: Option<String>,
    /// This cluster's VIP from the spec.
    pub vip: Option<String>,
    pub role: Option<Role>,
    pub phase: Option<Phase>,
    pub term: Option<i64>,
    /// The primary this cluster stepped down for (its demotion token), while it holds one.
    pub demoted_for: Option<String>,
    pub lag_seconds: Option<f64>,
    /// Now minus the newest primary heartbeat this standby applied, when it last reported.
    pub replication_lag_seconds: Option<f64>,
    pub missed_keys: Option<u64>,
    pub surplus_keys: Option<u64>,
    pub diverged_keys: Option<u64>,
    pub repaired_keys: Option<u64>,
    /// The last archive of this cluster's own values a resync, copy or repair replaced.
    pub archived: Option<crate::topology::ArchivedStatus>,
    pub last_check_time: Option<String>,
    /// Seconds between the last check and when the report was made.
    pub last_check_age_seconds: Option<f64>,
    pub conditions: Vec<ConditionView>,
    /// The failover this cluster recorded last (the one that made, or was making, it primary).
    pub failover: Option<FailoverView>,
    /// The last drill asked of this cluster (`status.lastDrill`).
    pub last_drill: Option<crate::topology::DrillStatus>,
    /// Seconds between the last drill's finish (else its start) and when the report was made.
    pub last_drill_age_seconds: Option<f64>,
    pub argocd: Option<ArgoView>,
    /// Why the Application could not be read (None also when it does not exist: see `argocd`).
    pub argocd_error: Option<String>,
    /// `status.applications`: the platform Applications that follow the role.
    pub applications: Option<crate::topology::ApplicationsStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverView {
    pub from: String,
    pub to: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Start to completion; None while it runs.
    pub duration_seconds: Option<f64>,
    pub aborted: Option<String>,
    pub commit: Option<String>,
    pub author: Option<String>,
    pub reason: Option<String>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsStatus {
    /// The platform domain asked for.
    pub name: Option<String>,
    pub answers: Vec<DnsAnswer>,
    /// The cluster whose VIP every resolver answered (alone); None when they did not agree on one.
    pub points_at: Option<String>,
    /// Why no resolver was asked (e.g. spec.dns.verify.resolvers empty and no /etc/resolv.conf).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DnsAnswer {
    pub resolver: String,
    pub addresses: Vec<String>,
    pub error: Option<String>,
    /// The cluster whose VIP this resolver answered, when it answered exactly one VIP.
    pub points_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    Warning,
    /// A safety problem: `drctl status` exits non-zero.
    Problem,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub severity: Severity,
    /// Stable name of the rule, e.g. `TwoPrimaries`.
    pub code: String,
    pub message: String,
}

impl Finding {
    fn new(severity: Severity, code: &str, message: String) -> Finding {
        Finding { severity, code: code.to_string(), message }
    }
}

/// Judges what was read from the two globals and the resolvers.
/// `dns` is what each resolver answered, or why none was asked.
pub fn report(views: &[ClusterView], dns: &Result<Vec<ResolverAnswer>, String>, now: Timestamp) -> StatusReport {
    let topologies: Vec<&DRTopology> = views.iter().filter_map(|v| v.observed.as_ref().ok()?.topology.as_ref()).collect();
    let spec = topologies.first().map(|t| &t.spec);
    let clusters: Vec<ClusterStatus> = views.iter().map(|v| cluster_status(v, spec, now)).collect();
    let dns = dns_status(spec, &clusters, dns);
    let mut held: Vec<&str> = clusters.iter().filter_map(|c| c.spec_primary.as_deref()).collect();
    held.dedup();
    let spec_primary = match held.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    };
    let last_failover_recorded_by = clusters
        .iter()
        .filter_map(|c| Some((c.failover.as_ref()?.started_at.as_deref().and_then(parse_time), c.name.clone())))
        .max_by_key(|(started, _)| *started)
        .map(|(_, name)| name);
    let findings = judge(&clusters, &dns);
    let exit_code = exit_code(&clusters, &findings);
    StatusReport {
        topology: topologies.first().and_then(|t| t.metadata.name.clone()),
        spec_primary,
        clusters,
        dns,
        last_failover_recorded_by,
        findings,
        exit_code,
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

fn seconds_between(from: Option<&str>, to: Option<&str>) -> Option<f64> {
    let (from, to) = (parse_time(from?)?, parse_time(to?)?);
    Some(to.duration_since(from).as_secs_f64())
}

fn cluster_status(v: &ClusterView, shared: Option<&DRTopologySpec>, now: Timestamp) -> ClusterStatus {
    let mut c = ClusterStatus { name: v.name.clone(), ..ClusterStatus::default() };
    let o = match &v.observed {
        Ok(o) => o,
        Err(e) => {
            c.error = Some(e.clone());
            c.vip = shared.and_then(|s| s.cluster(&v.name)).map(|s| s.vip.clone());
            return c;
        }
    };
    c.reachable = true;
    c.topology_found = o.topology.is_some();
    c.crd_installed = Some(o.crd_installed);
    match &o.argocd {
        Ok(a) => c.argocd = a.clone(),
        Err(e) => c.argocd_error = Some(e.clone()),
    }
    let own = o.topology.as_ref().map(|t| &t.spec);
    c.spec_primary = own.map(|s| s.primary.clone());
    c.vip = own.or(shared).and_then(|s| s.cluster(&v.name)).map(|s| s.vip.clone());
    let Some(st) = o.topology.as_ref().and_then(|t| t.status.as_ref()) else { return c };
    c.role = st.role;
    c.phase = st.phase;
    c.term = Some(st.term);
    c.demoted_for = st.demotion.as_ref().map(|d| d.new_primary.clone());
    if let Some(y) = &st.sync {
        c.lag_seconds = y.lag_seconds;
        c.replication_lag_seconds = y.replication_lag_seconds;
        c.missed_keys = y.missed_keys;
        c.surplus_keys = y.surplus_keys;
        c.diverged_keys = y.diverged_keys;
        c.repaired_keys = y.repaired_keys;
        c.archived = y.archived.clone();
        c.last_check_time = y.last_check_time.clone();
        c.last_check_age_seconds = y.last_check_time.as_deref().and_then(parse_time).map(|t| now.duration_since(t).as_secs_f64());
    }
    c.conditions = st
        .conditions
        .iter()
        .map(|k| ConditionView { type_: k.type_.clone(), status: k.status.clone(), reason: k.reason.clone(), message: k.message.clone() })
        .collect();
    c.failover = st.failover.as_ref().map(failover_view);
    c.last_drill_age_seconds = st
        .last_drill
        .as_ref()
        .and_then(|d| parse_time(d.finished_at.as_deref().unwrap_or(&d.started_at)))
        .map(|t| now.duration_since(t).as_secs_f64().max(0.0));
    c.last_drill = st.last_drill.clone();
    c.applications = st.applications.clone();
    c
}

fn failover_view(f: &FailoverStatus) -> FailoverView {
    FailoverView {
        from: f.from.clone(),
        to: f.to.clone(),
        started_at: f.started_at.clone(),
        completed_at: f.completed_at.clone(),
        duration_seconds: seconds_between(f.started_at.as_deref(), f.completed_at.as_deref()),
        aborted: f.aborted.clone(),
        commit: f.commit.clone(),
        author: f.author.clone(),
        reason: f.reason.clone(),
        steps: f
            .steps
            .iter()
            .map(|s| StepView {
                name: s.name.clone(),
                state: s.state,
                started_at: s.started_at.clone(),
                finished_at: s.finished_at.clone(),
                duration_seconds: seconds_between(s.started_at.as_deref(), s.finished_at.as_deref()),
                message: s.message.clone(),
            })
            .collect(),
    }
}

/// The cluster whose VIP is exactly `addrs` (one address, compared as addresses).
fn vip_owner(clusters: &[ClusterStatus], addrs: &[IpAddr]) -> Option<String> {
    let [addr] = addrs else { return None };
    clusters.iter().find(|c| c.vip.as_deref().and_then(|v| v.parse::<IpAddr>().ok()) == Some(*addr)).map(|c| c.name.clone())
}

fn dns_status(spec: Option<&DRTopologySpec>, clusters: &[ClusterStatus], answers: &Result<Vec<ResolverAnswer>, String>) -> DnsStatus {
    let (answers, error) = match answers {
        Ok(a) => (a.as_slice(), None),
        Err(e) => (&[][..], Some(e.clone())),
    };
    let answers: Vec<DnsAnswer> = answers
        .iter()
        .map(|a| {
            let (addresses, error, points_at) = match &a.result {
                Ok(ips) => (ips.iter().map(ToString::to_string).collect(), None, vip_owner(clusters, ips)),
                Err(e) => (Vec::new(), Some(e.clone()), None),
            };
            DnsAnswer { resolver: a.resolver.to_string(), addresses, error, points_at }
        })
        .collect();
    let first = answers.first().and_then(|a| a.points_at.clone());
    let points_at = first.filter(|p| answers.iter().all(|a| a.points_at.as_deref() == Some(p.as_str())));
    DnsStatus { name: spec.map(|s| s.platform.domain.clone()), answers, points_at, error }
}

fn role_of(c: &ClusterStatus) -> String {
    match (c.topology_found, c.role) {
        (false, _) => "no DRTopology".into(),
        (true, None) => "no status (is drctl controller running?)".into(),
        (true, Some(r)) => format!("{r:?}"),
    }
}

/// The rules, in the order they are reported. Problems: both globals unreachable, two
/// primaries, no primary among two answering globals while no failover runs. Everything else
/// is a warning: it needs a look but is not, from here, a safety problem (a global we cannot
/// reach may well be serving; a failover in progress has no primary by design).
fn judge(clusters: &[ClusterStatus], dns: &DnsStatus) -> Vec<Finding> {
    use Severity::{Problem, Warning};
    let mut f = Vec::new();
    let reachable: Vec<&ClusterStatus> = clusters.iter().filter(|c| c.reachable).collect();
    let unreachable: Vec<&ClusterStatus> = clusters.iter().filter(|c| !c.reachable).collect();
    if reachable.is_empty() {
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        f.push(Finding::new(Problem, "BothUnreachable", format!("no global answered ({}): nothing is known", names.join(", "))));
        return f;
    }
    let primaries: Vec<&str> = reachable.iter().filter(|c| c.role == Some(Role::Primary)).map(|c| c.name.as_str()).collect();
    let failing_over: Vec<&ClusterStatus> = reachable.iter().copied().filter(|c| c.phase == Some(Phase::FailingOver)).collect();
    if primaries.len() > 1 {
        f.push(Finding::new(
            Problem,
            "TwoPrimaries",
            format!("{} both report role Primary: split brain; the one spec.primary does not name must step down", primaries.join(" and ")),
        ));
    }
    for c in &unreachable {
        f.push(Finding::new(Warning, "Unreachable", format!("{} did not answer: what it holds is unknown", c.name)));
    }
    if primaries.is_empty() {
        let roles: Vec<String> = reachable.iter().map(|c| format!("{} {}", c.name, role_of(c))).collect();
        if let Some(c) = failing_over.first() {
            let step = running_step(c).map(|s| format!(", step {s}")).unwrap_or_default();
            f.push(Finding::new(Warning, "FailoverInProgress", format!("no primary while {} fails over{step}", c.name)));
        } else if let Some((old, new)) = failover_starting(&reachable) {
            f.push(Finding::new(
                Warning,
                "FailoverStarting",
                format!(
                    "no primary while {new} takes over: {old} stepped down for it, and {new} starts its failover once its Argo CD applies spec.primary: {new} (it holds {held})",
                    old = old.name,
                    new = new.name,
                    held = new.spec_primary.as_deref().unwrap_or("none")
                ),
            ));
        } else if unreachable.is_empty() {
            f.push(Finding::new(Problem, "NoPrimary", format!("neither global is primary ({})", roles.join(", "))));
        } else {
            let lost: Vec<&str> = unreachable.iter().map(|c| c.name.as_str()).collect();
            f.push(Finding::new(
                Warning,
                "PrimaryUnknown",
                format!("no answering global is primary ({}); {} may be: if it is lost, promote the standby", roles.join(", "), lost.join(", ")),
            ));
        }
    }
    let mut held: Vec<String> = reachable.iter().filter_map(|c| c.spec_primary.as_ref().map(|p| format!("{} on {}", p, c.name))).collect();
    let distinct: std::collections::BTreeSet<&str> = reachable.iter().filter_map(|c| c.spec_primary.as_deref()).collect();
    if distinct.len() > 1 {
        held.sort();
        f.push(Finding::new(Warning, "SpecDiffers", format!("spec.primary differs: {} (an Argo CD has not applied the latest commit)", held.join(", "))));
    }
    for c in &reachable {
        if c.crd_installed == Some(false) {
            f.push(Finding::new(
                Warning,
                "NoTopology",
                format!("{} has no DRTopology: its CRD is not installed (kubectl apply -f crds/drtopology.yaml, or sync gitops/deploy)", c.name),
            ));
        } else if !c.topology_found {
            f.push(Finding::new(Warning, "NoTopology", format!("{} has no DRTopology", c.name)));
        } else if c.vip.is_none() {
            f.push(Finding::new(Warning, "NotInSpec", format!("{} is not one of spec.clusters[].name", c.name)));
        }
        // A controller records only failovers to itself (and steps down only for its peer): a
        // record naming the other global means this kubeconfig reaches that one.
        let why = match (&c.failover, &c.demoted_for) {
            (Some(fo), _) if fo.to != c.name => Some(format!("it records a failover to {}", fo.to)),
            (_, Some(d)) if *d == c.name => Some(format!("it stepped down for {d}")),
            _ => None,
        };
        if let Some(why) = why {
            f.push(Finding::new(
                Warning,
                "WrongGlobal",
                format!("the status read as {} is not {}'s ({why}): check that kubeconfig, or the controller's --cluster-name", c.name, c.name),
            ));
        }
        if let Some(k) = c.conditions.iter().find(|k| k.type_ == "Degraded" && k.status == "True") {
            f.push(Finding::new(Warning, "Degraded", format!("{}: {} ({})", c.name, k.message, k.reason)));
        }
        // Only while the peer answers us too: a peer nobody reaches is reported as Unreachable.
        if unreachable.is_empty() {
            if let Some(k) = c.conditions.iter().find(|k| k.type_ == "PeerReachable" && k.status == "False") {
                f.push(Finding::new(
                    Warning,
                    "PeerUnreachable",
                    format!("{} cannot reach its peer though drctl status can (a failover could not demote it): {}", c.name, k.message),
                ));
            }
        }
        // A new standby's first copy over its own bootstrap objects is recorded, not a finding
        // (as it does not alert): nothing of the platform's was replaced.
        if let Some(a) = c.archived.as_ref().filter(|a| a.reason != crate::archive::Reason::InitialCopy.as_str()) {
            f.push(Finding::new(
                Warning,
                "WritesArchived",
                format!(
                    "{}: {} of its own values (revisions {}) were overwritten or deleted ({}) and saved in archive {} first: `drctl archive list --etcd <{}'s etcd> --keys` shows them, `drctl archive restore` puts chosen ones back",
                    c.name, a.count, a.revisions, a.reason, a.archive_id, c.name
                ),
            ));
        }
        if c.role == Some(Role::Standby) {
            if let Some(k) = c.conditions.iter().find(|k| k.type_ == "SyncHealthy" && k.status == "False") {
                f.push(Finding::new(Warning, "SyncNotHealthy", format!("{}: {} ({})", c.name, k.message, k.reason)));
            }
        }
    }
    if let [primary] = primaries.as_slice() {
        if dns.name.is_some() && dns.points_at.as_deref() != Some(*primary) {
            let said: Vec<String> = dns
                .answers
                .iter()
                .map(|a| match &a.error {
                    Some(e) => format!("{} failed: {e}", a.resolver),
                    None if a.addresses.is_empty() => format!("{} answered no address", a.resolver),
                    None => format!("{} answered {}", a.resolver, a.addresses.join(", ")),
                })
                .collect();
            let said = match (&dns.error, said.is_empty()) {
                (Some(e), _) => format!("no resolver asked: {e}"),
                (None, true) => "no resolver asked".to_string(),
                (None, false) => said.join("; "),
            };
            f.push(Finding::new(Warning, "DnsNotAtPrimary", format!("the platform domain does not resolve to {primary}'s VIP only: {said}")));
        }
    }
    f
}

/// The window of a planned failover before it runs: the old primary's Argo CD applied the flip
/// first and it stepped down (Demoting, its token for the peer), while the peer's Argo CD has not
/// applied it yet. Normal and short; a peer that already holds the flip and is not failing over
/// is not starting anything (e.g. it abandoned), so that stays NoPrimary.
fn failover_starting<'c>(reachable: &[&'c ClusterStatus]) -> Option<(&'c ClusterStatus, &'c ClusterStatus)> {
    let [a, b] = reachable else { return None };
    [(*a, *b), (*b, *a)].into_iter().find(|(old, new)| {
        old.phase == Some(Phase::Demoting)
            && old.demoted_for.as_deref() == Some(new.name.as_str())
            && old.spec_primary.as_deref() == Some(new.name.as_str())
            && new.spec_primary.as_deref() != Some(new.name.as_str())
    })
}

fn running_step(c: &ClusterStatus) -> Option<&str> {
    let f = c.failover.as_ref()?;
    f.steps.iter().rev().find(|s| matches!(s.state, StepState::Running | StepState::Failed)).map(|s| s.name.as_str())
}

fn exit_code(clusters: &[ClusterStatus], findings: &[Finding]) -> u8 {
    if clusters.iter().all(|c| !c.reachable) {
        EXIT_UNREACHABLE
    } else if findings.iter().any(|f| f.severity == Severity::Problem) {
        EXIT_SAFETY
    } else {
        EXIT_OK
    }
}

/// A duration for people: `7ms`, `0.4s`, `12.0s`, `3m05s`, `2h07m`; negative (clock skew)
/// shows as 0.
pub fn human_seconds(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 0.1 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = secs.round() as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// Shortens free text for a table cell: one line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// A value for a cluster column: "?" when the cluster did not answer, "-" when not applicable.
fn cell<T>(c: &ClusterStatus, v: Option<T>, show: impl Fn(T) -> String) -> String {
    match v {
        Some(v) => show(v),
        None if !c.reachable => "?".into(),
        None => "-".into(),
    }
}

fn argo_cell(c: &ClusterStatus) -> String {
    if !c.reachable {
        return "?".into();
    }
    if let Some(e) = &c.argocd_error {
        return format!("unreadable: {}", one_line(e, 40));
    }
    match &c.argocd {
        None => "no Application".into(),
        Some(a) => {
            let rev = a.revision.as_deref().map(|r| format!(" @{}", &r[..r.len().min(12)])).unwrap_or_default();
            format!("{} {}{rev}", a.sync.as_deref().unwrap_or("?"), a.health.as_deref().unwrap_or("?"))
        }
    }
}

/// "1 held", "2 released; not held: …"; `-` with no labelled Application.
fn apps_cell(c: &ClusterStatus) -> String {
    cell(c, c.applications.as_ref(), |a| {
        let state = format!("{} {}", a.count, crate::decide::follow_role::verb(a.state));
        match &a.message {
            Some(m) => format!("{state}; {}", one_line(m, 40)),
            None => state,
        }
    })
}

fn failover_cell(c: &ClusterStatus) -> String {
    let Some(f) = &c.failover else { return cell(c, None::<()>, |_| String::new()) };
    let end = match (&f.aborted, f.duration_seconds) {
        (Some(_), _) => "aborted".to_string(),
        (None, Some(d)) => format!("done in {}", human_seconds(d)),
        (None, None) => "running".to_string(),
    };
    format!("{} -> {}, {end}", f.from, f.to)
}

/// The column of `c`, one value per [`ROW_LABELS`] entry (the array length keeps them in step).
fn rows(c: &ClusterStatus) -> [String; ROW_LABELS.len()] {
    let condition = |t: &str| c.conditions.iter().find(|k| k.type_ == t).map(|k| format!("{} {}", k.status, k.reason));
    [
        if c.reachable { "ok".into() } else { "UNREACHABLE".into() },
        cell(c, c.vip.clone(), |v| v),
        cell(c, c.reachable.then(|| role_of(c)), |r| r),
        cell(c, c.phase, |p| format!("{p:?}")),
        cell(c, c.term, |t| t.to_string()),
        cell(c, c.lag_seconds, human_seconds),
        cell(c, c.replication_lag_seconds, human_seconds),
        cell(c, c.missed_keys.map(|m| (m, c.surplus_keys, c.diverged_keys)), |(m, s, d)| {
            let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            format!("{m} / {} / {}", n(s), n(d))
        }),
        cell(c, c.repaired_keys, |r| r.to_string()),
        cell(c, c.last_check_age_seconds, |a| format!("{} ago", human_seconds(a))),
        cell(c, condition("Ready"), |r| r),
        cell(c, condition("PeerReachable"), |r| r),
        argo_cell(c),
        apps_cell(c),
        failover_cell(c),
        drill_cell(c),
    ]
}

fn drill_cell(c: &ClusterStatus) -> String {
    let Some(d) = &c.last_drill else { return cell(c, None::<()>, |_| String::new()) };
    let ago = c.last_drill_age_seconds.map(human_seconds).unwrap_or_else(|| "?".into());
    match d.passed {
        None => format!("running for {ago}"),
        Some(true) => format!("passed {ago} ago, RTO {}", d.predicted_rto_seconds.map(human_seconds).unwrap_or_else(|| "?".into())),
        Some(false) => {
            let at: Vec<&str> = d.steps.iter().filter(|s| s.outcome == "fail").map(|s| s.name.as_str()).collect();
            format!("FAILED {ago} ago{}", if at.is_empty() { String::new() } else { format!(": {}", at.join(", ")) })
        }
    }
}

const ROW_LABELS: [&str; 16] = [
    "apiserver",
    "VIP",
    "role",
    "phase",
    "term",
    "lag",
    "RPO (heartbeat)",
    "missed / surplus / diverged",
    "repaired",
    "last check",
    "Ready",
    "PeerReachable",
    "Argo CD",
    "platform apps",
    "last failover",
    "last drill",
];

/// The report as a table: the two globals side by side, then DNS, the newest failover's steps,
/// why a global did not answer, and the findings.
pub fn render_table(r: &StatusReport) -> String {
    let mut t = format!(
        "DRTopology {}   spec.primary {}\n\n",
        r.topology.as_deref().unwrap_or("?"),
        r.spec_primary.as_deref().unwrap_or(if r.clusters.iter().any(|c| c.spec_primary.is_some()) { "differs (see below)" } else { "?" })
    );
    let columns: Vec<[String; ROW_LABELS.len()]> = r.clusters.iter().map(rows).collect();
    let label_w = ROW_LABELS.iter().map(|l| l.len()).max().unwrap_or(0) + 2;
    let widths: Vec<usize> =
        r.clusters.iter().zip(&columns).map(|(c, col)| col.iter().map(|v| v.chars().count()).chain([c.name.len()]).max().unwrap_or(0) + 3).collect();
    let line = |label: &str, values: Vec<&str>| {
        let mut l = format!("{label:<label_w$}");
        for (v, w) in values.iter().zip(&widths) {
            l.push_str(&format!("{v:<w$}"));
        }
        format!("{}\n", l.trim_end())
    };
    t.push_str(&line("", r.clusters.iter().map(|c| c.name.as_str()).collect()));
    for (i, label) in ROW_LABELS.iter().enumerate() {
        t.push_str(&line(label, columns.iter().map(|col| col[i].as_str()).collect()));
    }

    t.push_str(&format!("\nDNS {}\n", r.dns.name.as_deref().unwrap_or("?")));
    match (&r.dns.error, r.dns.answers.is_empty()) {
        (Some(e), _) => t.push_str(&format!("  no resolver asked: {e}\n")),
        (None, true) => t.push_str("  no resolver asked (no DRTopology read)\n"),
        (None, false) => {}
    }
    for a in &r.dns.answers {
        let said = match (&a.error, a.addresses.is_empty()) {
            (Some(e), _) => format!("failed: {}", one_line(e, 80)),
            (None, true) => "no address".into(),
            (None, false) => a.addresses.join(", "),
        };
        let whose = a.points_at.as_deref().map(|p| format!("  = {p}'s VIP")).unwrap_or_else(|| {
            if a.addresses.is_empty() {
                String::new()
            } else {
                "  = no cluster's VIP".into()
            }
        });
        t.push_str(&format!("  {:<22} {said}{whose}\n", a.resolver));
    }

    if let Some(c) = r.last_failover_recorded_by.as_deref().and_then(|n| r.clusters.iter().find(|c| c.name == n)) {
        if let Some(f) = &c.failover {
            t.push_str(&failover_section(f, &c.name));
        }
    }

    for c in &r.clusters {
        if let Some(d) = &c.last_drill {
            t.push_str(&drill_section(d, &c.name));
        }
    }

    for c in r.clusters.iter().filter(|c| !c.reachable) {
        t.push_str(&format!("\n{} is UNREACHABLE: {}\n", c.name, c.error.as_deref().unwrap_or("no answer")));
    }

    t.push_str("\nFindings\n");
    if r.findings.is_empty() {
        t.push_str("  ok       one primary, DNS answers its VIP, nothing to report\n");
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Problem => "PROBLEM",
            Severity::Warning => "warning",
        };
        t.push_str(&format!("  {sev:<8} {}: {}\n", f.code, f.message));
    }
    t
}

fn drill_section(d: &crate::topology::DrillStatus, cluster: &str) -> String {
    let how = match (d.passed, &d.finished_at) {
        (Some(true), Some(f)) => format!("passed, finished {f}"),
        (_, Some(f)) => format!("FAILED, finished {f}"),
        _ => "running".into(),
    };
    let mut t = format!("\nLast drill on {cluster} (id {}): started {}, {how}\n", d.id, d.started_at);
    if d.finished_at.is_some() {
        let n = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        t.push_str(&format!(
            "  predicted RTO {}, RPO {} revisions / {}\n",
            n(d.predicted_rto_seconds.map(human_seconds)),
            n(d.rpo_revisions.map(|r| r.to_string())),
            n(d.rpo_seconds.map(human_seconds))
        ));
    }
    for s in &d.steps {
        t.push_str(format!("  {:<11}{:<6}{:<9}{}", s.name, s.outcome, human_seconds(s.seconds), one_line(&s.detail, 90)).trim_end());
        t.push('\n');
    }
    for f in &d.findings {
        t.push_str(&format!("  preflight {} {} {}: {}\n", f.outcome, f.check, f.target, one_line(&f.detail, 90)));
    }
    for f in &d.failures {
        t.push_str(&format!("  would fail: {}\n", one_line(f, 110)));
    }
    t
}

fn failover_section(f: &FailoverView, recorded_by: &str) -> String {
    let how = match (&f.aborted, f.duration_seconds) {
        (Some(a), _) => format!("aborted: {}", one_line(a, 100)),
        (None, Some(d)) => format!("completed {} after {}", f.completed_at.as_deref().unwrap_or("?"), human_seconds(d)),
        (None, None) => "running".into(),
    };
    let mut t = format!("\nLast failover {} -> {} (recorded by {recorded_by}): started {}, {how}\n", f.from, f.to, f.started_at.as_deref().unwrap_or("?"));
    if let Some(commit) = &f.commit {
        t.push_str(&format!(
            "  commit {} by {}: {}\n",
            &commit[..commit.len().min(12)],
            f.author.as_deref().unwrap_or("?"),
            one_line(f.reason.as_deref().unwrap_or(""), 80)
        ));
    }
    let name_w = f.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4) + 2;
    t.push_str(&format!("  {:<name_w$}{:<11}{:<9}{}\n", "STEP", "STATE", "TOOK", "MESSAGE"));
    for s in &f.steps {
        let took = s.duration_seconds.map(human_seconds).unwrap_or_else(|| "-".into());
        let msg = s.message.as_deref().map(|m| one_line(m, 90)).unwrap_or_default();
        let state = format!("{:?}", s.state);
        t.push_str(format!("  {:<name_w$}{state:<11}{took:<9}{msg}", s.name).trim_end());
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{DRTopologyStatus, DemotionStatus, StepStatus, SyncStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const SPEC: &str = r#"{
        "apiVersion": "drctl.io/v1alpha1", "kind": "DRTopology", "metadata": {"name": "platform"},
        "spec": {
            "primary": "global-a",
            "platform": {"domain": "platform.example.com"},
            "clusters": [
                {"name": "global-a", "vip": "10.0.0.10", "apiServer": "https://a:6443", "etcd": {"endpoints": ["https://a:2379"]}},
                {"name": "global-b", "vip": "10.1.0.10", "apiServer": "https://b:6443", "etcd": {"endpoints": ["https://b:2379"]}}
            ],
            "dns": {}
        }
    }"#;

    fn now() -> Timestamp {
        "2026-12-01T12:00:10Z".parse().expect("time")
    }

    fn status(role: Role, phase: Phase) -> DRTopologyStatus {
        DRTopologyStatus { role: Some(role), phase: Some(phase), term: 1, ..Default::default() }
    }

    fn up(name: &str, st: DRTopologyStatus) -> ClusterView {
        let mut t: DRTopology = serde_json::from_str(SPEC).expect("topology");
        t.status = Some(st);
        ClusterView { name: name.into(), observed: Ok(Observed { topology: Some(t), crd_installed: true, argocd: Ok(None) }) }
    }

    fn down(name: &str) -> ClusterView {
        ClusterView { name: name.into(), observed: Err("https://b:6443: tcp connect error: Connection refused".into()) }
    }

    fn standby_in_sync() -> DRTopologyStatus {
        DRTopologyStatus {
            sync: Some(SyncStatus {
                lag_seconds: Some(0.25),
                missed_keys: Some(0),
                surplus_keys: Some(0),
                diverged_keys: Some(0),
                last_check_time: Some("2026-12-01T12:00:07Z".into()),
                ..Default::default()
            }),
            ..status(Role::Standby, Phase::Steady)
        }
    }

    fn answer(ip: &str) -> ResolverAnswer {
        ResolverAnswer { resolver: "10.96.0.10:53".parse().expect("addr"), result: Ok(vec![ip.parse().expect("ip")]) }
    }

    fn dns_at(ip: &str) -> Result<Vec<ResolverAnswer>, String> {
        Ok(vec![answer(ip)])
    }

    fn codes(r: &StatusReport) -> Vec<&str> {
        r.findings.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn one_primary_with_dns_at_its_vip_reports_nothing_and_exits_0() {
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", standby_in_sync())], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), Vec::<&str>::new());
        assert_eq!(r.exit_code, EXIT_OK);
        assert_eq!(r.spec_primary.as_deref(), Some("global-a"));
        assert_eq!(r.dns.points_at.as_deref(), Some("global-a"));
        assert_eq!(r.clusters[1].last_check_age_seconds, Some(3.0));
        let t = render_table(&r);
        assert!(t.contains("10.96.0.10:53          10.0.0.10  = global-a's VIP"), "{t}");
        assert!(t.contains("0 / 0 / 0") && t.contains("3.0s ago") && t.contains("0.2s"), "{t}");
    }

    #[test]
    fn archived_writes_are_a_warning_naming_the_archive() {
        let mut b = standby_in_sync();
        b.sync.as_mut().expect("sync").archived = Some(crate::topology::ArchivedStatus {
            count: 37,
            archive_id: "20261205T162300.000Z-r285-rejoin".into(),
            revisions: "290-366".into(),
            reason: "rejoin after being primary".into(),
            total: 37,
        });
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", b)], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["WritesArchived"]);
        let f = &r.findings[0];
        assert!(f.message.starts_with("global-b: 37 of its own values (revisions 290-366) were overwritten or deleted (rejoin after being primary) and saved in archive 20261205T162300.000Z-r285-rejoin first"), "{}", f.message);
        assert_eq!(r.clusters[1].archived.as_ref().map(|a| a.count), Some(37));
        // A new standby's first copy over its own bootstrap objects is no finding (nor an alert).
        let mut first = standby_in_sync();
        first.sync.as_mut().expect("sync").archived = Some(crate::topology::ArchivedStatus {
            count: 161,
            archive_id: "20261205T162300.000Z-r215-initial".into(),
            revisions: "1-214".into(),
            reason: crate::archive::Reason::InitialCopy.as_str().into(),
            total: 161,
        });
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", first)], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), Vec::<&str>::new());
    }

    #[test]
    fn two_primaries_is_a_safety_problem() {
        let r =
            report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", status(Role::Primary, Phase::Steady))], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["TwoPrimaries"]);
        assert_eq!(r.exit_code, EXIT_SAFETY);
        assert!(render_table(&r).contains("PROBLEM  TwoPrimaries: global-a and global-b both report role Primary"));
    }

    #[test]
    fn no_primary_among_two_answering_globals_is_a_safety_problem() {
        let demoting = status(Role::Standby, Phase::Demoting);
        let r = report(&[up("global-a", demoting), up("global-b", standby_in_sync())], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["NoPrimary"]);
        assert_eq!(r.exit_code, EXIT_SAFETY);
    }

    #[test]
    fn a_primary_that_stepped_down_before_the_peer_applied_the_flip_is_a_failover_starting() {
        let demoted = |new_primary: &str, spec_primary: &str| {
            let mut v = up(
                "global-a",
                DRTopologyStatus {
                    demotion: Some(DemotionStatus { new_primary: new_primary.into(), ..Default::default() }),
                    ..status(Role::Standby, Phase::Demoting)
                },
            );
            if let Ok(o) = v.observed.as_mut() {
                o.topology.as_mut().expect("topology").spec.primary = spec_primary.into();
            }
            v
        };
        let peer_with = |spec_primary: &str| {
            let mut v = up("global-b", standby_in_sync());
            if let Ok(o) = v.observed.as_mut() {
                o.topology.as_mut().expect("topology").spec.primary = spec_primary.into();
            }
            v
        };
        // (old primary's token, its spec.primary, the peer's spec.primary, finding)
        let cases = [
            // Argo CD applied the flip on global-a first: the failover has not started yet.
            ("global-b", "global-b", "global-a", "FailoverStarting", EXIT_OK),
            // Both hold the flip and global-b is not failing over: nothing will start by itself.
            ("global-b", "global-b", "global-b", "NoPrimary", EXIT_SAFETY),
            // A token for another cluster than the peer proves nothing.
            ("global-c", "global-b", "global-a", "NoPrimary", EXIT_SAFETY),
        ];
        for (token, a_spec, b_spec, code, exit) in cases {
            let r = report(&[demoted(token, a_spec), peer_with(b_spec)], &dns_at("10.0.0.10"), now());
            assert_eq!(codes(&r).iter().find(|c| **c != "SpecDiffers").copied(), Some(code), "{token} {a_spec} {b_spec}: {:?}", r.findings);
            assert_eq!(r.exit_code, exit, "{token} {a_spec} {b_spec}");
        }
        let r = report(&[demoted("global-b", "global-b"), peer_with("global-a")], &dns_at("10.0.0.10"), now());
        assert!(
            r.findings[0]
                .message
                .contains("global-a stepped down for it, and global-b starts its failover once its Argo CD applies spec.primary: global-b (it holds global-a)"),
            "{:?}",
            r.findings
        );
    }

    #[test]
    fn a_global_without_the_crd_answered_and_says_which_crd_to_install() {
        let bare = ClusterView { name: "global-b".into(), observed: Ok(Observed { topology: None, crd_installed: false, argocd: Ok(None) }) };
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), bare], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["NoTopology"]);
        assert!(
            r.findings[0].message.contains("global-b has no DRTopology: its CRD is not installed (kubectl apply -f crds/drtopology.yaml"),
            "{:?}",
            r.findings
        );
        assert!(r.clusters[1].reachable);
        assert_eq!(r.clusters[1].crd_installed, Some(false));
        assert_eq!(r.exit_code, EXIT_OK);
    }

    #[test]
    fn a_status_that_records_the_other_globals_failover_is_the_wrong_global() {
        let fo = |to: &str| FailoverStatus { from: "x".into(), to: to.into(), ..Default::default() };
        let mut mine = status(Role::Primary, Phase::Steady);
        mine.failover = Some(fo("global-a"));
        let mut swapped = standby_in_sync();
        swapped.failover = Some(fo("global-a"));
        let mut for_itself = standby_in_sync();
        for_itself.demotion = Some(DemotionStatus { new_primary: "global-b".into(), ..Default::default() });
        let cases =
            [(mine.clone(), standby_in_sync(), Vec::<&str>::new()), (mine.clone(), swapped, vec!["WrongGlobal"]), (mine, for_itself, vec!["WrongGlobal"])];
        for (a, b, want) in cases {
            let r = report(&[up("global-a", a), up("global-b", b)], &dns_at("10.0.0.10"), now());
            assert_eq!(codes(&r), want);
        }
        let mut swapped = standby_in_sync();
        swapped.failover = Some(fo("global-a"));
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", swapped)], &dns_at("10.0.0.10"), now());
        assert_eq!(
            r.findings[0].message,
            "the status read as global-b is not global-b's (it records a failover to global-a): check that kubeconfig, or the controller's --cluster-name"
        );
    }

    #[test]
    fn a_global_without_status_counts_as_not_primary() {
        let mut none = up("global-a", DRTopologyStatus::default());
        if let Ok(o) = none.observed.as_mut() {
            o.topology.as_mut().expect("topology").status = None;
        }
        let r = report(&[none, up("global-b", standby_in_sync())], &Ok(Vec::new()), now());
        assert_eq!(codes(&r), ["NoPrimary"]);
        assert!(r.findings[0].message.contains("global-a no status (is drctl controller running?)"), "{:?}", r.findings);
    }

    #[test]
    fn no_primary_while_a_failover_runs_is_only_a_warning() {
        let mut st = status(Role::Standby, Phase::FailingOver);
        st.failover = Some(FailoverStatus {
            from: "global-a".into(),
            to: "global-b".into(),
            started_at: Some("2026-12-01T12:00:00Z".into()),
            steps: vec![
                StepStatus {
                    name: "Preflight".into(),
                    state: StepState::Succeeded,
                    started_at: Some("2026-12-01T12:00:00Z".into()),
                    finished_at: Some("2026-12-01T12:00:00.5Z".into()),
                    message: None,
                },
                StepStatus {
                    name: "Demote".into(),
                    state: StepState::Running,
                    started_at: Some("2026-12-01T12:00:00.5Z".into()),
                    finished_at: None,
                    message: Some("waiting for\nthe token".into()),
                },
            ],
            ..Default::default()
        });
        let r = report(&[up("global-a", status(Role::Standby, Phase::Demoting)), up("global-b", st)], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["FailoverInProgress"]);
        assert!(r.findings[0].message.contains("global-b fails over, step Demote"));
        assert_eq!(r.exit_code, EXIT_OK);
        assert_eq!(r.last_failover_recorded_by.as_deref(), Some("global-b"));
        let t = render_table(&r);
        assert!(t.contains("Last failover global-a -> global-b (recorded by global-b): started 2026-12-01T12:00:00Z, running"), "{t}");
        assert!(t.contains("  Preflight  Succeeded  0.5s"), "{t}");
        assert!(t.contains("  Demote     Running    -        waiting for the token"), "{t}");
    }

    #[test]
    fn one_unreachable_global_is_said_in_its_column_and_exits_0() {
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), down("global-b")], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["Unreachable"]);
        assert_eq!(r.exit_code, EXIT_OK);
        let b = &r.clusters[1];
        assert!(!b.reachable && b.role.is_none());
        assert_eq!(b.vip.as_deref(), Some("10.1.0.10"), "the VIP comes from the other global's spec");
        let t = render_table(&r);
        let apiserver = t.lines().find(|l| l.starts_with("apiserver")).expect("apiserver row");
        assert!(apiserver.ends_with("UNREACHABLE"), "{t}");
        let role = t.lines().find(|l| l.starts_with("role")).expect("role row");
        assert!(role.contains("Primary") && role.ends_with('?'), "{t}");
        assert!(t.contains("global-b is UNREACHABLE: https://b:6443: tcp connect error: Connection refused"), "{t}");
    }

    #[test]
    fn an_unreachable_primary_leaves_the_primary_unknown_not_missing() {
        let r = report(&[down("global-a"), up("global-b", standby_in_sync())], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["Unreachable", "PrimaryUnknown"]);
        assert_eq!(r.exit_code, EXIT_OK);
    }

    #[test]
    fn both_unreachable_exits_4() {
        let r = report(&[down("global-a"), down("global-b")], &Ok(Vec::new()), now());
        assert_eq!(codes(&r), ["BothUnreachable"]);
        assert_eq!(r.exit_code, EXIT_UNREACHABLE);
        assert!(r.topology.is_none() && r.dns.name.is_none());
    }

    #[test]
    fn dns_at_the_standby_or_failing_is_a_warning_naming_what_resolvers_said() {
        let pair = || [up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", standby_in_sync())];
        let r = report(&pair(), &dns_at("10.1.0.10"), now());
        assert_eq!(codes(&r), ["DnsNotAtPrimary"]);
        assert_eq!(r.dns.points_at.as_deref(), Some("global-b"));
        assert!(r.findings[0].message.contains("10.96.0.10:53 answered 10.1.0.10"));
        let failed = Ok(vec![ResolverAnswer { resolver: "10.96.0.10:53".parse().expect("addr"), result: Err("timed out".into()) }]);
        let r = report(&pair(), &failed, now());
        assert!(r.findings[0].message.contains("10.96.0.10:53 failed: timed out"), "{:?}", r.findings);
        assert_eq!(r.exit_code, EXIT_OK);
        let r = report(&pair(), &Err("no nameserver in /etc/resolv.conf".into()), now());
        assert!(r.findings[0].message.contains("no resolver asked: no nameserver"), "{:?}", r.findings);
        assert!(render_table(&r).contains("  no resolver asked: no nameserver in /etc/resolv.conf"));
    }

    #[test]
    fn resolvers_that_disagree_point_at_no_cluster() {
        let answers = Ok(vec![answer("10.0.0.10"), answer("10.1.0.10")]);
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", standby_in_sync())], &answers, now());
        assert_eq!(r.dns.points_at, None);
        assert_eq!(r.dns.answers[1].points_at.as_deref(), Some("global-b"));
    }

    #[test]
    fn a_spec_primary_that_differs_between_globals_is_reported() {
        let mut b = up("global-b", standby_in_sync());
        if let Ok(o) = b.observed.as_mut() {
            o.topology.as_mut().expect("topology").spec.primary = "global-b".into();
        }
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), b], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["SpecDiffers"]);
        assert_eq!(r.spec_primary, None);
        assert!(r.findings[0].message.contains("global-a on global-a, global-b on global-b"));
    }

    fn condition(type_: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(now()),
        }
    }

    #[test]
    fn an_unhealthy_standby_says_why() {
        let mut st = standby_in_sync();
        st.phase = Some(Phase::Degraded);
        st.conditions.push(condition("SyncHealthy", "NotHealthy", "3 keys missed"));
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", st)], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["SyncNotHealthy"]);
        assert_eq!(r.findings[0].message, "global-b: 3 keys missed (NotHealthy)");
    }

    #[test]
    fn a_pair_held_after_an_abandoned_failover_says_so() {
        let mut reclaimed = status(Role::Primary, Phase::Steady);
        reclaimed.conditions.push(Condition {
            status: "True".into(),
            ..condition("Degraded", "FailoverAbandoned", "global-b abandoned its failover; set drctl.io/retry-failover to retry")
        });
        let r = report(&[up("global-a", reclaimed), up("global-b", standby_in_sync())], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["Degraded"]);
        assert!(r.findings[0].message.starts_with("global-a: global-b abandoned its failover"), "{:?}", r.findings);
        assert_eq!(r.exit_code, EXIT_OK);
    }

    #[test]
    fn a_peer_unreachable_from_a_global_but_not_from_here_is_reported() {
        let mut primary = status(Role::Primary, Phase::Steady);
        primary.conditions.push(condition("PeerReachable", "Unreachable", "peer global-b: connection refused"));
        let r = report(&[up("global-a", primary.clone()), up("global-b", standby_in_sync())], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["PeerUnreachable"]);
        assert!(r.findings[0].message.ends_with("peer global-b: connection refused"));
        let r = report(&[up("global-a", primary), down("global-b")], &dns_at("10.0.0.10"), now());
        assert_eq!(codes(&r), ["Unreachable"], "the peer nobody reaches is reported once");
    }

    #[test]
    fn the_json_document_has_every_key_even_when_unknown() {
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), down("global-b")], &Ok(Vec::new()), now());
        let v = serde_json::to_value(&r).expect("json");
        let b = &v["clusters"][1];
        for key in ["role", "phase", "lagSeconds", "missedKeys", "surplusKeys", "divergedKeys", "lastCheckTime", "failover", "argocd", "error"] {
            assert!(b.get(key).is_some(), "key {key} missing: {b}");
        }
        assert_eq!(b["reachable"], false);
        assert_eq!(v["clusters"][0]["role"], "Primary");
        assert_eq!(v["exitCode"], 0);
        assert_eq!(v["findings"][0]["severity"], "warning");
    }

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        for (secs, want) in [
            (0.0, "0ms"),
            (0.0074, "7ms"),
            (0.1, "0.1s"),
            (0.25, "0.2s"),
            (12.04, "12.0s"),
            (59.9, "59.9s"),
            (60.0, "1m00s"),
            (185.0, "3m05s"),
            (7620.0, "2h07m"),
            (-2.0, "0ms"),
            (f64::NAN, "0ms"),
        ] {
            assert_eq!(human_seconds(secs), want, "{secs}");
        }
    }

    #[test]
    fn the_platform_applications_are_a_row() {
        use crate::topology::{ApplicationsState, ApplicationsStatus};
        let mut st = standby_in_sync();
        st.applications = Some(ApplicationsStatus { state: ApplicationsState::Held, count: 2, names: vec!["web".into(), "api".into()], message: None });
        let r = report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", st.clone())], &dns_at("10.0.0.10"), now());
        assert_eq!(apps_cell(&r.clusters[1]), "2 held");
        assert_eq!(apps_cell(&r.clusters[0]), "-", "nothing labelled");
        assert!(render_table(&r).lines().any(|l| l.starts_with("platform apps") && l.ends_with("2 held")), "{}", render_table(&r));
        st.applications = Some(ApplicationsStatus { message: Some("not held: web: 409 Conflict".into()), ..st.applications.clone().expect("set") });
        let r = report(&[up("global-b", st)], &dns_at("10.0.0.10"), now());
        assert_eq!(apps_cell(&r.clusters[0]), "2 held; not held: web: 409 Conflict");
    }

    #[test]
    fn the_last_drill_is_a_row_and_a_section() {
        use crate::topology::{DrillStatus, DrillStepStatus};
        let step = |name: &str, outcome: &str| DrillStepStatus { name: name.into(), outcome: outcome.into(), seconds: 1.5, detail: format!("{name} said") };
        let drilled = |passed: Option<bool>| {
            let mut st = standby_in_sync();
            st.last_drill = Some(DrillStatus {
                id: "weekly-7".into(),
                started_at: "2026-12-01T11:58:05Z".into(),
                finished_at: passed.map(|_| "2026-12-01T11:59:05Z".into()),
                passed,
                predicted_rto_seconds: passed.map(|_| 31.5),
                rpo_revisions: Some(0),
                rpo_seconds: Some(1.2),
                steps: if passed.is_some() { vec![step("preflight", "fail"), step("catch-up", "ok")] } else { vec![] },
                failures: if passed == Some(false) {
                    vec!["preflight: 1 of 20 checks failed: dns.provider powerdns: the API key was rejected".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            });
            report(&[up("global-a", status(Role::Primary, Phase::Steady)), up("global-b", st)], &dns_at("10.0.0.10"), now())
        };
        let r = drilled(Some(false));
        let b = &r.clusters[1];
        assert_eq!(drill_cell(b), "FAILED 1m05s ago: preflight");
        assert_eq!(drill_cell(&r.clusters[0]), "-", "never drilled");
        let table = render_table(&r);
        assert!(table.contains("last drill") && table.contains("Last drill on global-b (id weekly-7): started 2026-12-01T11:58:05Z, FAILED"), "{table}");
        assert!(table.contains("would fail: preflight: 1 of 20 checks failed: dns.provider powerdns"), "{table}");
        assert!(table.contains("predicted RTO 31.5s, RPO 0 revisions / 1.2s"), "{table}");
        assert_eq!(serde_json::to_value(&r).expect("json")["clusters"][1]["lastDrill"]["id"], "weekly-7");
        assert_eq!(drill_cell(&drilled(Some(true)).clusters[1]), "passed 1m05s ago, RTO 31.5s");
        assert_eq!(drill_cell(&drilled(None).clusters[1]), "running for 2m05s");
    }

    #[test]
    fn table_cells_are_one_short_line() {
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line("abcdefghij", 5), "abcd…");
    }
}
