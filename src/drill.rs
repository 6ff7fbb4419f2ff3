//! `drctl drill`: a rehearsal on the standby of every failover step that moves no traffic, for
//! real, ending with a report (each step's outcome and duration, the predicted RTO, the RPO at
//! that moment). The primary is only read: it is not demoted or fenced, the platform record is
//! not changed, no restart runs and hooks are only called in drill mode.
//!
//! Steps: `preflight` (every row of `drctl preflight`), `catch-up` (FinalSync's: the standby's
//! mirror reaches the primary's revision read at the start), `check` (FinalSync's consistency
//! check at that point), `read-back` (one object of every replicated resource, Secrets included,
//! read through the standby's apiserver: its encryption keys decrypt what was copied), `dns`
//! (SwitchDNS and VerifyDNS on [`drill_name`], never the platform name), `hooks` (each webhook
//! hook whose receiver answers drill calls, `webhook.drill`, called in drill mode: header
//! `X-Drctl-Drill: true`, `"drill": true` in its body).
//!
//! The same drill runs in the standby's controller when its DRTopology is annotated
//! [`DRILL_ANNOTATION`]`=<id>`: beside the reconciles (a drill takes seconds to a minute), once
//! per id, its report kept in `status.lastDrill` ([`record`]), an Event and the
//! `drctl_last_drill_*` metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::discovery::{Discovery, Scope};
use kube::Client;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::etcd::{self, Conn};
use crate::heartbeat::{self, Beat};
use crate::keyspace::{self, Filter};
use crate::preflight::{self, Outcome};
use crate::secret::KubeSecrets;
use crate::topology::{DrillFinding, DrillStatus, DrillStepStatus};
use crate::validated::ValidatedTopology;

/// The name a drill sets to the standby's VIP and verifies: under the platform domain (so in its
/// zone), never the platform name itself.
pub fn drill_name(domain: &str) -> String {
    format!("drctl-drill.{domain}")
}

/// Set to a new value on the standby's DRTopology to have its controller run a drill; each
/// value runs once (`status.lastDrill.id`).
pub const DRILL_ANNOTATION: &str = "drctl.io/drill";

/// One rehearsed step.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
    pub seconds: f64,
    pub detail: String,
}

/// The drill's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cluster: String,
    pub primary: String,
    pub started_at: String,
    pub steps: Vec<Step>,
    /// The preflight rows that were not ok.
    pub findings: Vec<preflight::Row>,
    /// Primary revisions not applied here when the drill started.
    pub rpo_revisions: Option<i64>,
    /// Now − the newest primary heartbeat applied here, when the drill started.
    pub rpo_seconds: Option<f64>,
    /// See [`predicted_rto`].
    pub predicted_rto_seconds: f64,
    /// The steps that failed: what a failover now would have stopped at.
    pub would_fail: Vec<String>,
}

/// A failover's time, predicted from what the drill measured: FinalSync's catch-up and check,
/// the DNS switch and its verification (on the drill name) and the webhook hooks as they took
/// now, plus the platform record's TTL (resolvers' caches). Not included: the old primary's
/// acknowledgement (a planned failover's Demote, usually a second), Job hooks and the restarts'
/// readiness (`--restart-ready-timeout` bounds them).
pub fn predicted_rto(steps: &[Step], ttl_seconds: u32) -> f64 {
    let measured: f64 = steps.iter().filter(|s| matches!(s.name, "catch-up" | "check" | "dns" | "hooks")).map(|s| s.seconds).sum();
    ((measured + f64::from(ttl_seconds)) * 1000.0).round() / 1000.0
}

/// The exit code: 0 when every step passed, 1 with a warning, 2 when a step failed.
pub fn exit_code(steps: &[Step]) -> u8 {
    match steps.iter().map(|s| s.outcome).max() {
        None | Some(Outcome::Ok) => 0,
        Some(Outcome::Warn) => 1,
        Some(Outcome::Fail) => 2,
    }
}

/// The catch-up's verdict: the standby's checkpoint has a complete copy at or past `want`.
pub fn caught_up(c: Option<&Checkpoint>, source_cluster_id: u64, want: i64) -> bool {
    c.is_some_and(|c| c.cluster_id == source_cluster_id && c.copy.is_none() && c.pending.is_none() && c.revision >= want)
}

/// One key per replicated (group, resource), the first in key order, up to `limit` resources.
pub fn sample(keys: &[Vec<u8>], filter: &Filter, limit: usize) -> Vec<Vec<u8>> {
    let mut by: BTreeMap<(Option<String>, String), Vec<u8>> = BTreeMap::new();
    for k in keys.iter().filter(|k| filter.copies(k) && !heartbeat::is_heartbeat(k)) {
        if let Some(o) = keyspace::parse(k) {
            by.entry((o.group.map(str::to_string), o.resource.to_string())).or_insert_with(|| k.clone());
        }
    }
    by.into_values().take(limit).collect()
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
        }
    }
}

/// What the controller does about the drill annotation.
#[derive(Clone, Debug, PartialEq)]
pub enum Duty {
    Nothing,
    /// Run a drill for this id: the annotation names one not run yet.
    Start(String),
    /// `status.lastDrill` is unfinished and no drill runs in this process: the controller
    /// stopped during it. Recorded as failed, never run again.
    Interrupted,
}

/// The controller's drill duty from the annotation, `status.lastDrill` and whether a drill runs
/// in this process now.
pub fn duty(requested: Option<&str>, last: Option<&DrillStatus>, running: bool) -> Duty {
    if running {
        return Duty::Nothing;
    }
    if last.is_some_and(|l| l.finished_at.is_none()) {
        return Duty::Interrupted;
    }
    match requested.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) if last.is_none_or(|l| l.id != r) => Duty::Start(r.to_string()),
        _ => Duty::Nothing,
    }
}

/// A drill just started: running until [`record`] fills it in.
pub fn started(id: &str, now: Timestamp, previous: Option<&DrillStatus>) -> DrillStatus {
    DrillStatus { id: id.to_string(), started_at: now.to_string(), last_passed_at: previous.and_then(|p| p.last_passed_at.clone()), ..Default::default() }
}

/// The finished drill as `status.lastDrill`: passed when no step failed; `Err` is a drill that
/// could not run (this cluster is the primary, the spec is invalid, the controller stopped).
pub fn record(running: &DrillStatus, result: &Result<Report, String>, now: Timestamp) -> DrillStatus {
    let finished_at = Some(now.to_string());
    let mut st = DrillStatus { finished_at: finished_at.clone(), ..running.clone() };
    match result {
        Ok(r) => {
            let passed = exit_code(&r.steps) < 2;
            st.passed = Some(passed);
            if passed {
                st.last_passed_at = finished_at;
            }
            st.predicted_rto_seconds = Some(r.predicted_rto_seconds);
            st.rpo_revisions = r.rpo_revisions;
            st.rpo_seconds = r.rpo_seconds;
            st.steps = r
                .steps
                .iter()
                .map(|s| DrillStepStatus { name: s.name.to_string(), outcome: s.outcome.label().into(), seconds: s.seconds, detail: s.detail.clone() })
                .collect();
            st.findings = r
                .findings
                .iter()
                .map(|f| DrillFinding {
                    check: f.check.to_string(),
                    target: f.target.clone(),
                    outcome: f.outcome.label().into(),
                    detail: f.detail.clone(),
                    fix: f.fix.clone(),
                })
                .collect();
            st.failures = r.would_fail.clone();
        }
        Err(e) => {
            st.passed = Some(false);
            st.failures = vec![e.clone()];
        }
    }
    st
}

/// The Event a finished drill publishes: (warning, reason, note).
pub fn event(d: &DrillStatus) -> (bool, &'static str, String) {
    let rpo = match (d.rpo_revisions, d.rpo_seconds) {
        (Some(n), Some(s)) => format!("RPO {n} revisions, {s:.1}s"),
        (Some(n), None) => format!("RPO {n} revisions"),
        _ => "RPO unknown".into(),
    };
    let rto = d.predicted_rto_seconds.map(|s| format!("predicted RTO {s:.1}s")).unwrap_or_else(|| "RTO not predicted".into());
    if d.passed == Some(true) {
        let warned: Vec<String> = d.steps.iter().filter(|s| s.outcome != "ok").map(|s| format!("{} warned: {}", s.name, s.detail)).collect();
        let warned = if warned.is_empty() { String::new() } else { format!("; {}", warned.join("; ")) };
        (false, "DrillPassed", format!("drill {} passed: {rto}, {rpo}{warned}", d.id))
    } else {
        (true, "DrillFailed", format!("drill {} failed; a failover now would fail at: {} ({rto}, {rpo})", d.id, d.failures.join("; ")))
    }
}

/// A drill's task: its result and when it ended.
pub type Task = tokio::task::JoinHandle<(Result<Report, String>, Timestamp)>;

/// The drill running in this controller, if any: its id and task.
#[derive(Default)]
pub struct Running {
    task: std::sync::Mutex<Option<(String, Task)>>,
}

impl Running {
    pub fn is_running(&self) -> bool {
        self.task.lock().map(|t| t.is_some()).unwrap_or(true)
    }

    pub fn start(&self, id: String, task: Task) {
        if let Ok(mut t) = self.task.lock() {
            *t = Some((id, task));
        }
    }

    /// The id, result and end of a drill that finished since the last call (a panicked one is
    /// an error, ended now).
    pub fn take_finished(&self) -> Option<(String, Result<Report, String>, Timestamp)> {
        use futures::FutureExt;
        let mut t = self.task.lock().ok()?;
        if !t.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            return None;
        }
        let (id, handle) = t.take()?;
        let (result, ended) = match handle.now_or_never() {
            Some(Ok(done)) => done,
            Some(Err(e)) => (Err(format!("the drill's task failed: {e}")), Timestamp::now()),
            None => (Err("the drill's task did not finish".into()), Timestamp::now()),
        };
        Some((id, result, ended))
    }
}

/// How the drill runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub probe_timeout: Duration,
    pub catch_up_timeout: Duration,
    /// Most resources read back.
    pub sample: usize,
    /// The controller's namespace (excluded from replication).
    pub namespace: String,
}

/// Runs the drill from the standby `self_name`.
pub async fn run_drill(local: &Client, topo: &ValidatedTopology, self_name: &str, opts: &Options) -> Result<Report, String> {
    let spec = &topo.spec;
    let me = spec.cluster(self_name).ok_or_else(|| format!("{self_name:?} is not one of spec.clusters[].name"))?;
    if spec.primary == self_name {
        return Err(format!("{self_name} is spec.primary: a drill rehearses a failover on the standby: run it there (--cluster-name of the standby, or annotation drctl.io/drill on its DRTopology)"));
    }
    let primary = spec.cluster(&spec.primary).ok_or_else(|| format!("spec.primary {} is not in spec.clusters", spec.primary))?;
    let started_at = Timestamp::now().to_string();
    let mut steps = Vec::new();

    let t = Instant::now();
    let rows = preflight::run_checks(local, topo, self_name, &preflight::Options { timeout: opts.probe_timeout, probe_hooks: true }).await;
    let findings: Vec<preflight::Row> = rows.iter().filter(|r| r.outcome != Outcome::Ok).cloned().collect();
    let worst = rows.iter().map(|r| r.outcome).max().unwrap_or(Outcome::Ok);
    steps.push(Step { name: "preflight", outcome: worst, seconds: secs(t), detail: preflight::summary(&rows) });

    let secrets = KubeSecrets::new(local.clone());
    let connect = |c| {
        let secrets = secrets.clone();
        async move {
            let e = etcd::cluster_endpoint(&secrets, c).await.map_err(|e| e.to_string())?;
            etcd::connect(&e).await.map_err(|e| e.to_string())
        }
    };
    let (src, dst) = match (connect(primary).await, connect(me).await) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            steps.push(Step { name: "catch-up", outcome: Outcome::Fail, seconds: 0.0, detail: e });
            return Ok(finish(self_name, &spec.primary, started_at, steps, findings, None, None, spec.platform.ttl));
        }
    };
    let (rpo_revisions, rpo_seconds) = rpo_now(&src, &dst, &topo.name()).await;

    let t = Instant::now();
    let catch_up = catch_up(&src, &dst, opts.catch_up_timeout).await;
    let ok = catch_up.is_ok();
    steps.push(match catch_up {
        Ok(d) => Step { name: "catch-up", outcome: Outcome::Ok, seconds: secs(t), detail: d },
        Err(d) => Step { name: "catch-up", outcome: Outcome::Fail, seconds: secs(t), detail: d },
    });
    let filter = topo.spec.filter(&opts.namespace);
    if ok {
        let t = Instant::now();
        let max_missed = spec.failover.max_missed_keys;
        steps.push(match crate::check::run(&src, &dst, &filter, &crate::check::CheckOptions::default()).await {
            Ok(c) => {
                let r = &c.report;
                let detail = format!(
                    "{} keys compared at revision {}: {} missed, {} surplus, {} diverged",
                    r.checked_keys, r.revision, r.missed.count, r.surplus.count, r.diverged.count
                );
                let outcome = if r.missed.count > max_missed || r.diverged.count > 0 {
                    Outcome::Fail
                } else if r.consistent {
                    Outcome::Ok
                } else {
                    Outcome::Warn
                };
                Step { name: "check", outcome, seconds: secs(t), detail }
            }
            Err(e) => Step { name: "check", outcome: Outcome::Fail, seconds: secs(t), detail: e.to_string() },
        });
    }

    let t = Instant::now();
    let (outcome, detail) = read_back(local, &dst, &filter, opts).await;
    steps.push(Step { name: "read-back", outcome, seconds: secs(t), detail });

    let t = Instant::now();
    let (outcome, detail) = dns_step(local, topo, me.vip).await;
    steps.push(Step { name: "dns", outcome, seconds: secs(t), detail });

    let t = Instant::now();
    let (outcome, detail) = hooks_step(local, topo, self_name, &started_at).await;
    steps.push(Step { name: "hooks", outcome, seconds: secs(t), detail });
    Ok(finish(self_name, &spec.primary, started_at, steps, findings, rpo_revisions, rpo_seconds, spec.platform.ttl))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    cluster: &str,
    primary: &str,
    started_at: String,
    steps: Vec<Step>,
    findings: Vec<preflight::Row>,
    rpo_revisions: Option<i64>,
    rpo_seconds: Option<f64>,
    ttl: u32,
) -> Report {
    let would_fail = steps.iter().filter(|s| s.outcome == Outcome::Fail).map(|s| format!("{}: {}", s.name, s.detail)).collect();
    Report {
        cluster: cluster.to_string(),
        primary: primary.to_string(),
        started_at,
        predicted_rto_seconds: predicted_rto(&steps, ttl),
        steps,
        findings,
        rpo_revisions,
        rpo_seconds,
        would_fail,
    }
}

fn secs(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// The primary's head minus the revision applied here; the heartbeat's age here.
async fn rpo_now(src: &Conn, dst: &Conn, topology: &str) -> (Option<i64>, Option<f64>) {
    let head = etcd::head(&mut src.kv.clone()).await.ok();
    let applied = Checkpoint::read(&mut dst.kv.clone()).await.ok().flatten();
    let revisions = match (head, applied) {
        (Some((id, h)), Some(c)) if c.cluster_id == id => Some((h - c.revision).max(0)),
        _ => None,
    };
    let beat = dst.kv.clone().get(heartbeat::key(topology), None).await.ok().and_then(|r| r.kvs().first().and_then(|kv| Beat::decode(kv.value())));
    (revisions, beat.and_then(|b| b.age(Timestamp::now())))
}

/// FinalSync's catch-up without a demotion: the primary's revision now is the target the
/// standby's mirror (run by its controller) must reach.
async fn catch_up(src: &Conn, dst: &Conn, timeout: Duration) -> Result<String, String> {
    let (id, want) = etcd::head(&mut src.kv.clone()).await.map_err(|e| format!("the primary's etcd: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let c = Checkpoint::read(&mut dst.kv.clone()).await.map_err(|e| e.to_string())?;
        if caught_up(c.as_ref(), id, want) {
            let at = c.map(|c| c.revision).unwrap_or_default();
            return Ok(format!("applied revision {at} ≥ the primary's {want} at the start"));
        }
        if Instant::now() >= deadline {
            let at = c.map(|c| c.revision.to_string()).unwrap_or_else(|| "none (no mirror checkpoint: is this cluster's controller mirroring?)".into());
            return Err(format!("the primary's revision {want} not applied within {timeout:?}; applied: {at}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SwitchDNS and VerifyDNS on the drill name: the provider's credentials used for a real write,
/// the resolvers asked until they answer it. A provider whose every call is a switch of the
/// platform record (webhook), or that drctl does not write (external-dns's DNSEndpoint names
/// the platform record, manual), is not rehearsed: a warning.
async fn dns_step(local: &Client, topo: &ValidatedTopology, vip: std::net::IpAddr) -> (Outcome, String) {
    use crate::validated::DnsProvider as P;
    let spec = &topo.spec;
    if !matches!(spec.dns.provider, P::PowerDns(_) | P::Rfc2136(_)) {
        let provider = preflight::provider_name(&spec.dns.provider);
        return (Outcome::Warn, format!("{provider}: not rehearsed (a call is a change of the platform record); preflight's dns.provider checked what it can"));
    }
    let platform = crate::topology::Platform { domain: drill_name(&spec.platform.domain), ttl: spec.platform.ttl };
    let secrets = KubeSecrets::new(local.clone());
    let no_annotations = BTreeMap::new();
    let ctx = crate::dns::SwitchContext { secrets: &secrets, kube: Some(local.clone()), annotations: &no_annotations };
    let set = match crate::dns::switch(&spec.dns.provider, &platform, vip, &ctx).await {
        Ok(o) => o,
        Err(e) => return (Outcome::Fail, format!("setting {} to {vip}: {e}", platform.domain)),
    };
    match crate::dns::verify(&spec.dns.verify, &platform, vip, spec.dns.verify.timeout, |_| async {}).await {
        Ok(v) => (Outcome::Ok, format!("{set}; {} resolver(s) answered it ({} attempt(s))", v.resolvers.len(), v.attempts)),
        Err(e) => (Outcome::Fail, format!("{set}; {e}")),
    }
}

/// The webhook hooks a drill calls (their receiver answers drill calls: `webhook.drill`), in
/// runbook order, and the names of those it does not; Job hooks are neither (preflight dry-run
/// creates their Job).
pub fn drill_hooks(f: &crate::validated::FailoverConfig) -> (Vec<(&crate::validated::Hook, crate::hooks::Phase)>, Vec<&str>) {
    use crate::hooks::Phase;
    use crate::validated::HookKind;
    let (mut call, mut skip) = (Vec::new(), Vec::new());
    for (h, phase) in f.pre_hooks.iter().map(|h| (h, Phase::Pre)).chain(f.post_hooks.iter().map(|h| (h, Phase::Post))) {
        match &h.kind {
            HookKind::Webhook(w) if w.drill => call.push((h, phase)),
            HookKind::Webhook(_) => skip.push(h.name.as_str()),
            HookKind::Job(_) => {}
        }
    }
    (call, skip)
}

/// Each webhook hook whose receiver answers drill calls, called as its failover would call it,
/// in drill mode; one that does not is named in a warning.
async fn hooks_step(local: &Client, topo: &ValidatedTopology, self_name: &str, started_at: &str) -> (Outcome, String) {
    use crate::hooks::{HookInput, HookRun};
    let secrets = KubeSecrets::new(local.clone());
    let id = format!("drill-{started_at}");
    let (call, skip) = drill_hooks(&topo.spec.failover);
    let (mut called, mut failed) = (Vec::new(), Vec::new());
    for (h, phase) in call {
        let input = HookInput { hook: &h.name, phase, topology: &topo.name(), from: &topo.spec.primary, to: self_name, failover_id: &id, drill: true };
        match crate::hooks::run(local, &secrets, h, &input).await {
            Ok(HookRun::Done(line)) => called.push(line),
            Ok(HookRun::Running { why, .. }) => called.push(why),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let mut detail = match called.is_empty() {
        true => "no webhook hook called".to_string(),
        false => format!("called in drill mode: {}", called.join("; ")),
    };
    if !skip.is_empty() {
        detail.push_str(&format!("; not called (set webhook.drill: true once the receiver answers X-Drctl-Drill calls without acting): {}", skip.join(", ")));
    }
    if !failed.is_empty() {
        return (Outcome::Fail, format!("{}; {detail}", failed.join("; ")));
    }
    (if skip.is_empty() { Outcome::Ok } else { Outcome::Warn }, detail)
}

/// Reads one object of each replicated resource through this cluster's apiserver.
async fn read_back(local: &Client, dst: &Conn, filter: &Filter, opts: &Options) -> (Outcome, String) {
    let mut keys = Vec::new();
    let (start, end) = (keyspace::REGISTRY_PREFIX.as_bytes().to_vec(), keyspace::prefix_end(keyspace::REGISTRY_PREFIX.as_bytes()));
    let mut from = start;
    // Keys only, paged: the standby's whole keyspace can be large.
    loop {
        let page = match etcd::range_page_of(&mut dst.kv.clone(), &from, &end, 0, 5000, true).await {
            Ok(p) => p,
            Err(e) => return (Outcome::Fail, format!("listing this cluster's keys: {e}")),
        };
        let more = page.more;
        if let Some(last) = page.kvs.last() {
            from = etcd::key_after(&last.key);
        }
        keys.extend(page.kvs.into_iter().map(|kv| kv.key));
        if !more {
            break;
        }
    }
    let discovery = match Discovery::new(local.clone()).run().await {
        Ok(d) => d,
        Err(e) => return (Outcome::Fail, format!("API discovery on this cluster: {e}")),
    };
    let (mut read, mut failed, mut unserved, mut forbidden) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for key in sample(&keys, filter, opts.sample) {
        let Some(o) = keyspace::parse(&key) else { continue };
        // Built-in keys carry no group (`/registry/deployments/...`): the core group first,
        // then any group serving that plural.
        let found = match o.group {
            Some(g) => discovery.groups().filter(|d| d.name() == g).flat_map(|d| d.recommended_resources()).find(|(ar, _)| ar.plural == o.resource),
            None => discovery
                .groups()
                .filter(|d| d.name().is_empty() || !d.name().contains('.') || d.name().ends_with(".k8s.io"))
                .flat_map(|d| d.recommended_resources())
                .filter(|(ar, _)| ar.plural == o.resource)
                .min_by_key(|(ar, _)| !ar.group.is_empty()),
        };
        // Not every key is an object an apiserver serves (e.g. the service IP allocator's).
        let Some((ar, caps)) = found else {
            unserved.push(String::from_utf8_lossy(&key).into_owned());
            continue;
        };
        let api: Api<DynamicObject> = match (caps.scope, o.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(local.clone(), ns, &ar),
            _ => Api::all_with(local.clone(), &ar),
        };
        let what = format!("{}{}/{}", if ar.group.is_empty() { String::new() } else { format!("{}/", ar.group) }, o.resource, o.name);
        match tokio::time::timeout(opts.probe_timeout, api.get(o.name)).await {
            Ok(Ok(_)) => read.push(what),
            // The controller's least-privilege RBAC gets few kinds: not a failed decryption.
            Ok(Err(kube::Error::Api(e))) if e.code == 403 => forbidden.push(what),
            Ok(Err(kube::Error::Api(s))) => failed.push(format!("{what}: {} {}", s.code, s.message)),
            Ok(Err(e)) => failed.push(format!("{what}: {e}")),
            Err(_) => failed.push(format!("{what}: no answer within {:?}", opts.probe_timeout)),
        }
    }
    let mut detail = format!("{} of {} sampled resources read back", read.len(), read.len() + failed.len() + forbidden.len());
    if !unserved.is_empty() {
        detail.push_str(&format!(" (keys no apiserver resource serves, not read: {})", unserved.join(", ")));
    }
    if !failed.is_empty() {
        detail.push_str(&format!("; failed: {}", failed.join("; ")));
        return (Outcome::Fail, detail);
    }
    if read.iter().any(|r| r.starts_with("secrets/")) {
        detail.push_str(", Secrets included (decrypted here)");
    }
    if !forbidden.is_empty() {
        detail.push_str(&format!("; not permitted to get (grant this identity get on them for a complete read-back): {}", forbidden.join(", ")));
        return (Outcome::Warn, detail);
    }
    (Outcome::Ok, detail)
}

/// `drctl drill`.
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    /// The standby's kubeconfig [default: $KUBECONFIG, else in-cluster].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Which of spec.clusters[].name this global (the standby) is.
    #[arg(long)]
    cluster_name: String,
    /// The DRTopology [default: the oldest in the cluster].
    #[arg(long)]
    name: Option<String>,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    /// How long the standby may take to apply the primary's revision read at the start.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::controller::args::parse_duration_arg)]
    catch_up_timeout: Duration,
    /// Most resources read back through the standby's apiserver (one object each).
    #[arg(long, default_value_t = 64)]
    sample: usize,
    /// The controller's namespace (never replicated).
    #[arg(long, default_value = crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE)]
    namespace: String,
}

impl Options {
    /// The CLI's defaults: probes of 5s, a catch-up of 60s, 64 resources read back.
    pub fn new(namespace: &str) -> Options {
        Options { probe_timeout: Duration::from_secs(5), catch_up_timeout: Duration::from_secs(60), sample: 64, namespace: namespace.to_string() }
    }
}

pub async fn run(args: DrillArgs, client: Client) -> anyhow::Result<ExitCode> {
    let topo = preflight::load_topology(&client, args.name.as_deref()).await?;
    let opts = Options { catch_up_timeout: args.catch_up_timeout, sample: args.sample, ..Options::new(&args.namespace) };
    let report = run_drill(&client, &topo, &args.cluster_name, &opts).await.map_err(|e| anyhow::anyhow!(e))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::from(exit_code(&report.steps)))
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut out = format!("DR drill on {} (standby of {}), started {}\n\n  STEP        RESULT  TOOK      DETAIL\n", r.cluster, r.primary, r.started_at);
    for s in &r.steps {
        let o = match s.outcome {
            Outcome::Ok => "ok",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("  {:<10}  {o:<6}  {:<8}  {}\n", s.name, format!("{:.1}s", s.seconds), s.detail));
    }
    for f in &r.findings {
        out.push_str(&format!(
            "  preflight {:?} {} {}: {}{}\n",
            f.outcome,
            f.check,
            f.target,
            f.detail,
            f.fix.as_ref().map(|x| format!(" (fix: {x})")).unwrap_or_default()
        ));
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    out.push_str(&format!(
        "\nRPO now: {} revisions, {} (heartbeat)\nPredicted RTO: {:.1}s (catch-up, check, dns and hooks as measured + the record's TTL; Demote, Job hooks and restarts' readiness not included)\n",
        opt(r.rpo_revisions.map(|n| n.to_string())),
        opt(r.rpo_seconds.map(|s| format!("{s:.1}s"))),
        r.predicted_rto_seconds
    ));
    if r.would_fail.is_empty() {
        out.push_str("A failover now would pass every rehearsed step.\n");
    } else {
        out.push_str(&format!("A failover now would fail at: {}\n", r.would_fail.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str, outcome: Outcome, seconds: f64) -> Step {
        Step { name, outcome, seconds, detail: String::new() }
    }

    #[test]
    fn the_predicted_rto_is_final_syncs_measured_steps_plus_the_ttl() {
        let steps = [
            step("preflight", Outcome::Ok, 3.0),
            step("catch-up", Outcome::Ok, 0.25),
            step("check", Outcome::Ok, 1.5),
            step("read-back", Outcome::Ok, 2.0),
            step("dns", Outcome::Ok, 0.5),
            step("hooks", Outcome::Ok, 0.125),
        ];
        assert_eq!(predicted_rto(&steps, 30), 32.375);
        assert_eq!(drill_name("platform.example.com"), "drctl-drill.platform.example.com");
        assert_eq!(exit_code(&steps), 0);
        assert_eq!(exit_code(&[step("check", Outcome::Warn, 0.0)]), 1);
        assert_eq!(exit_code(&[step("check", Outcome::Warn, 0.0), step("read-back", Outcome::Fail, 0.0)]), 2);
    }

    #[test]
    fn caught_up_needs_a_complete_copy_of_this_source_at_or_past_the_revision() {
        let c = Checkpoint::at(7, 100);
        assert!(caught_up(Some(&c), 7, 100));
        assert!(caught_up(Some(&c), 7, 90));
        assert!(!caught_up(Some(&c), 7, 101), "behind");
        assert!(!caught_up(Some(&c), 8, 90), "another source");
        assert!(!caught_up(None, 7, 1), "no checkpoint");
        assert!(!caught_up(Some(&Checkpoint { pending: Some(99), ..c.clone() }), 7, 90), "a batch half written");
    }

    #[test]
    fn each_drill_id_runs_once_and_an_unfinished_one_is_recorded_as_interrupted() {
        let done = DrillStatus { id: "7".into(), started_at: "t".into(), finished_at: Some("t".into()), ..Default::default() };
        let unfinished = DrillStatus { finished_at: None, ..done.clone() };
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a DrillStatus>, bool, Duty);
        let cases: &[Case] = &[
            ("no annotation", None, None, false, Duty::Nothing),
            ("an empty annotation", Some(" "), None, false, Duty::Nothing),
            ("a first id", Some("7"), None, false, Duty::Start("7".into())),
            ("an id already run", Some("7"), Some(&done), false, Duty::Nothing),
            ("a new id", Some("8"), Some(&done), false, Duty::Start("8".into())),
            ("a new id while one runs here", Some("8"), Some(&unfinished), true, Duty::Nothing),
            ("the id running here", Some("7"), Some(&unfinished), true, Duty::Nothing),
            ("unfinished, not running here (restarted)", Some("7"), Some(&unfinished), false, Duty::Interrupted),
            ("unfinished, the annotation removed", None, Some(&unfinished), false, Duty::Interrupted),
        ];
        for (name, requested, last, running, want) in cases {
            assert_eq!(duty(*requested, *last, *running), *want, "{name}");
        }
    }

    #[test]
    fn a_finished_drill_is_recorded_with_its_steps_findings_and_last_pass() {
        let t0: Timestamp = "2026-12-05T20:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-12-05T20:01:00Z".parse().expect("time");
        let earlier = DrillStatus { last_passed_at: Some("2026-11-28T20:00:00Z".into()), ..Default::default() };
        let running = started("weekly", t0, Some(&earlier));
        assert_eq!((running.id.as_str(), running.finished_at.as_deref(), running.last_passed_at.as_deref()), ("weekly", None, Some("2026-11-28T20:00:00Z")));
        let finding = preflight::Row::bad("dns.provider", "powerdns", Outcome::Fail, "the API key was rejected", "fix spec.dns.powerdns");
        let report = |steps: Vec<Step>, findings: Vec<preflight::Row>| finish("global-b", "global-a", t0.to_string(), steps, findings, Some(3), Some(1.5), 30);
        let failed = record(&running, &Ok(report(vec![step("preflight", Outcome::Fail, 2.0), step("catch-up", Outcome::Ok, 0.5)], vec![finding])), t1);
        assert_eq!(failed.passed, Some(false));
        assert_eq!(failed.last_passed_at.as_deref(), Some("2026-11-28T20:00:00Z"), "the earlier pass is kept");
        assert_eq!((failed.steps[0].name.as_str(), failed.steps[0].outcome.as_str()), ("preflight", "fail"));
        assert_eq!((failed.findings[0].check.as_str(), failed.findings[0].outcome.as_str()), ("dns.provider", "fail"));
        assert_eq!(failed.failures, ["preflight: "]);
        assert_eq!((failed.predicted_rto_seconds, failed.rpo_revisions, failed.rpo_seconds), (Some(30.5), Some(3), Some(1.5)));
        let (warning, reason, note) = event(&failed);
        assert!(warning && reason == "DrillFailed" && note.starts_with("drill weekly failed; a failover now would fail at: preflight"), "{note}");

        let passed = record(&running, &Ok(report(vec![step("preflight", Outcome::Warn, 2.0), step("catch-up", Outcome::Ok, 0.5)], vec![])), t1);
        assert_eq!((passed.passed, passed.last_passed_at.as_deref()), (Some(true), Some("2026-12-05T20:01:00Z")), "a warning passes");
        let (warning, reason, note) = event(&passed);
        assert!(!warning && reason == "DrillPassed" && note.contains("predicted RTO 30.5s, RPO 3 revisions, 1.5s; preflight warned"), "{note}");

        let refused = record(&running, &Err("global-a is spec.primary".into()), t1);
        assert_eq!(
            (refused.passed, refused.failures.as_slice(), refused.finished_at.as_deref()),
            (Some(false), &["global-a is spec.primary".to_string()][..], Some("2026-12-05T20:01:00Z"))
        );
    }

    #[test]
    fn a_drill_calls_only_the_webhook_hooks_whose_receiver_answers_drill_calls() {
        let topo: crate::topology::DRTopology = serde_saphyr::from_str(include_str!("../examples/minimal.yaml")).expect("example");
        let mut topo = topo;
        let hook = |name: &str, kind: &str| -> crate::topology::Hook {
            serde_json::from_value(match kind {
                "drill" => serde_json::json!({"name": name, "webhook": {"url": "http://r/h", "drill": true}}),
                "webhook" => serde_json::json!({"name": name, "webhook": {"url": "http://r/h"}}),
                _ => serde_json::json!({"name": name, "job": {"namespace": "ops", "template": {}}}),
            })
            .expect("hook")
        };
        topo.spec.failover.pre_hooks = vec![hook("vip", "drill"), hook("notify", "webhook"), hook("job", "job")];
        topo.spec.failover.post_hooks = vec![hook("after", "drill")];
        let v = ValidatedTopology::try_from(&topo).expect("valid");
        let (call, skip) = drill_hooks(&v.spec.failover);
        let called: Vec<(&str, crate::hooks::Phase)> = call.iter().map(|(h, p)| (h.name.as_str(), *p)).collect();
        assert_eq!(called, [("vip", crate::hooks::Phase::Pre), ("after", crate::hooks::Phase::Post)]);
        assert_eq!(skip, ["notify"], "a receiver not said to answer drill calls is not called; a Job hook is neither");
    }

    #[test]
    fn the_sample_takes_one_replicated_key_per_resource() {
        let filter = Filter::with_default_namespaces(&Default::default());
        let keys: Vec<Vec<u8>> = [
            "/registry/configmaps/apps/a",
            "/registry/configmaps/apps/b",
            "/registry/secrets/apps/s",
            "/registry/example.com/widgets/apps/w",
            "/registry/configmaps/kube-system/x",
            "/registry/drctl.io/heartbeats/platform",
        ]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
        let got: Vec<String> = sample(&keys, &filter, 10).into_iter().map(|k| String::from_utf8_lossy(&k).into_owned()).collect();
        assert_eq!(got, ["/registry/configmaps/apps/a", "/registry/secrets/apps/s", "/registry/example.com/widgets/apps/w"]);
        assert_eq!(sample(&keys, &filter, 1).len(), 1);
    }
}
