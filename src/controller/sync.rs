//! The standby's replication, run in-process: starts the `mirror` engine from the declared
//! primary's etcd into this cluster's etcd, restarts it when the topology's endpoints or
//! exclusions change, runs the periodic consistency check and reports into status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::status::{set_condition, StatusWriter};
use super::{Context, Error};
use crate::check::{self, CheckReport};
use crate::etcd::{self, Endpoint, SecretBytes, TlsMaterial};
use crate::failover::runbook::run_restarts;
use crate::keyspace::Filter;
use crate::mirror::{Mirror, MirrorConfig, Phase as MirrorPhase, Progress, Tuning};
use crate::secret::{KubeSecrets, SecretSource};
use crate::topology::{ClusterSpec, DRTopology, DRTopologyStatus, Phase, RestartWhen, SyncDriver, SyncStatus};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use crate::validate::parse_duration;

/// What identifies a running mirror: when any of it changes, the mirror restarts.
#[derive(Clone, Debug, PartialEq)]
struct SyncKey {
    source: Vec<String>,
    dest: Vec<String>,
    exclude: String,
    namespace: String,
    tls: String,
}

struct Running {
    key: SyncKey,
    progress: watch::Receiver<Progress>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    source: Endpoint,
    dest: Endpoint,
    filter: Filter,
}

#[derive(Default)]
pub struct SyncManager {
    running: Mutex<Option<Running>>,
    last_check: Mutex<Option<(CheckReport, Instant)>>,
    /// When revisions and lag were last copied into status. Each status write wakes the
    /// controller's watch; without this a busy primary would keep the standby reconciling.
    reported_at: std::sync::Mutex<Option<Instant>>,
}

/// How often revisions and lag are refreshed in status.
const REPORT_EVERY: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cluster {0} is not in spec.clusters")]
    UnknownCluster(String),
    #[error("etcd TLS for cluster {cluster}: {message}")]
    Tls { cluster: String, message: String },
    #[error("the mirror is not running")]
    NotRunning,
    #[error("applied revision {applied} did not reach {want} within {after:?}")]
    CatchUpTimeout { applied: i64, want: i64, after: Duration },
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error("reading this cluster's etcd revision: {0}")]
    Status(etcd_client::Error),
    #[error("spec.sync.manifest: {0}")]
    Manifest(String),
}

/// This cluster's etcd as an endpoint, with mTLS material from its Secret.
async fn endpoint(ctx: &Context, c: &ClusterSpec) -> Result<Endpoint, SyncError> {
    let tls = match &c.etcd.tls_secret_ref {
        None => None,
        Some(r) => {
            let secrets = KubeSecrets::new(ctx.client.clone());
            let get = |key: &'static str| {
                let secrets = secrets.clone();
                let r = r.clone();
                async move { secrets.get(&r, key).await }
            };
            let err = |e: crate::secret::SecretError| SyncError::Tls { cluster: c.name.clone(), message: e.to_string() };
            let ca = get("ca.crt").await.map_err(err)?;
            let cert = get("tls.crt").await.map_err(err)?;
            let key = get("tls.key").await.map_err(err)?;
            Some(TlsMaterial {
                ca: Some(ca.expose().to_vec()),
                identity: Some((cert.expose().to_vec(), SecretBytes(key.expose().to_vec()))),
            })
        }
    };
    Ok(Endpoint { urls: c.etcd.endpoints.clone(), tls })
}

pub(crate) fn filter_for(topo: &DRTopology, namespace: &str) -> Filter {
    Filter::new(&topo.spec.sync.exclude, namespace, crate::keyspace::DEFAULT_ARGOCD_NAMESPACE)
}

impl SyncManager {
    pub async fn stop(&self) {
        if let Some(r) = self.running.lock().await.take() {
            r.shutdown.cancel();
            let _ = r.task.await;
            info!(source = %crate::urls::redact_all(&r.key.source), "mirror stopped");
        }
    }

    async fn start(&self, key: SyncKey, source: Endpoint, dest: Endpoint, filter: Filter) {
        self.stop().await;
        let mirror = Arc::new(Mirror::new(MirrorConfig {
            source: source.clone(),
            dest: dest.clone(),
            filter: filter.clone(),
            tuning: Tuning::default(),
        }));
        let progress = mirror.progress();
        let shutdown = CancellationToken::new();
        let task = {
            let (mirror, token) = (mirror.clone(), shutdown.clone());
            tokio::spawn(async move { mirror.run(token.cancelled_owned()).await })
        };
        info!(source = %crate::urls::redact_all(&key.source), dest = %crate::urls::redact_all(&key.dest), "mirror started");
        *self.running.lock().await = Some(Running { key, progress, shutdown, task, source, dest, filter });
    }

    /// The mirror's progress and its lag in seconds (how long it has been behind the source).
    pub async fn progress(&self) -> Option<(Progress, f64)> {
        let guard = self.running.lock().await;
        let p = guard.as_ref()?.progress.borrow().clone();
        let lag = p.lag(std::time::SystemTime::now()).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Some((p, lag))
    }

    pub async fn applied_revision(&self) -> Option<i64> {
        self.progress().await.map(|(p, _)| p.applied_revision).filter(|r| *r > 0)
    }

    pub async fn source_cluster_id(&self) -> Option<String> {
        self.progress().await.map(|(p, _)| format!("{:x}", p.source_cluster_id)).filter(|s| s != "0")
    }

    /// Waits until the mirror has applied source revision `want`.
    pub async fn wait_applied(&self, want: i64, timeout: Duration) -> Result<i64, SyncError> {
        let mut rx = self.running.lock().await.as_ref().map(|r| r.progress.clone()).ok_or(SyncError::NotRunning)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = rx.borrow().applied_revision;
            if applied >= want {
                return Ok(applied);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SyncError::NotRunning),
                Err(_) => return Err(SyncError::CatchUpTimeout { applied, want, after: timeout }),
            }
        }
    }

    /// Runs a full consistency check of the running mirror's source and destination. With
    /// `repair`, missed and diverged keys are re-put from the source (at a consistent cut, never
    /// over a write the mirror applied meanwhile; surplus keys are left) and the check runs
    /// again: the report says what is left, its `repair` what was done, and `Repaired` which
    /// keys were found.
    pub async fn check_now(&self, repair: bool, max_read_rate: Option<u64>) -> Result<(CheckReport, Option<Repaired>), SyncError> {
        let (source, dest, filter) = {
            let guard = self.running.lock().await;
            let r = guard.as_ref().ok_or(SyncError::NotRunning)?;
            (r.source.clone(), r.dest.clone(), r.filter.clone())
        };
        let (s, d) = (etcd::connect(&source).await?, etcd::connect(&dest).await?);
        let opts = check::CheckOptions { max_read_rate, ..check::CheckOptions::default() };
        let mut result = check::run(&s, &d, &filter, &opts).await?;
        let fixable: Vec<_> =
            if repair { result.differences.iter().filter(|x| x.kind() != check::Kind::Surplus).cloned().collect() } else { Vec::new() };
        let mut repaired = None;
        if !fixable.is_empty() {
            let outcome = check::repair(&s, &d, &filter, &fixable, false).await?;
            let found = result.report;
            result = check::run(&s, &d, &filter, &opts).await?;
            result.report.repair = Some(outcome.clone());
            // Nothing put: the differences were the mirror's in-flight writes after all.
            if outcome.put > 0 {
                let keys = found.missed.keys.iter().chain(&found.diverged.keys).cloned().collect();
                let writers = found.writers_summary();
                repaired = Some(Repaired { outcome, missed: found.missed.count, diverged: found.diverged.count, keys, writers });
            }
        }
        *self.last_check.lock().await = Some((result.report.clone(), Instant::now()));
        Ok((result.report, repaired))
    }

    /// True at most once per `REPORT_EVERY`.
    fn report_due(&self) -> bool {
        let Ok(mut at) = self.reported_at.lock() else { return true };
        if at.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return false;
        }
        *at = Some(Instant::now());
        true
    }

    pub async fn last_check(&self) -> Option<CheckReport> {
        self.last_check.lock().await.as_ref().map(|(r, _)| r.clone())
    }

    async fn last_check_age(&self) -> Option<Duration> {
        self.last_check.lock().await.as_ref().map(|(_, at)| at.elapsed())
    }
}

/// Stops whatever replicates into this cluster: the in-process mirror, or with
/// `sync.driver: manifest` the platform's own sync object. Idempotent.
pub async fn stop_replication(ctx: &Context, topo: &DRTopology) -> Result<(), SyncError> {
    ctx.sync.stop().await;
    if topo.spec.sync.driver == SyncDriver::Manifest {
        manifest(ctx, topo, false).await?;
    }
    Ok(())
}

/// Applies (server-side) or deletes the `sync.manifest` object.
async fn manifest(ctx: &Context, topo: &DRTopology, present: bool) -> Result<(), SyncError> {
    let Some(m) = &topo.spec.sync.manifest else { return Ok(()) };
    let err = |e: String| SyncError::Manifest(e);
    let obj: DynamicObject = serde_json::from_value(m.clone()).map_err(|e| err(format!("not a Kubernetes object: {e}")))?;
    let gvk = obj
        .types
        .as_ref()
        .map(GroupVersionKind::try_from)
        .ok_or_else(|| err("apiVersion and kind are required".into()))?
        .map_err(|e| err(e.to_string()))?;
    let name = obj.metadata.name.clone().ok_or_else(|| err("metadata.name is required".into()))?;
    let (ar, caps) = kube::discovery::pinned_kind(&ctx.client, &gvk).await.map_err(|e| err(format!("{}: {e}", gvk.kind)))?;
    let api: Api<DynamicObject> = match (caps.scope, &obj.metadata.namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(ctx.client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(ctx.client.clone(), &ar),
    };
    let result = if present {
        api.patch(&name, &PatchParams::apply("drctl-sync").force(), &Patch::Apply(m)).await.map(|_| ())
    } else {
        match api.delete(&name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            r => r.map(|_| ()),
        }
    };
    result.map_err(|e| err(format!("{} {name}: {e}", gvk.kind)))
}

/// Starts (or keeps, or restarts on change) the mirror from the declared primary into this cluster.
pub async fn ensure_mirror(ctx: &Context, topo: &DRTopology, self_name: &str) -> Result<(), SyncError> {
    // The source is whoever is primary by declaration, or during a failover to us, the peer.
    let source_name = if topo.spec.primary == self_name {
        topo.spec.peer_of(self_name).map(|c| c.name.clone())
    } else {
        Some(topo.spec.primary.clone())
    }
    .ok_or_else(|| SyncError::UnknownCluster(self_name.to_string()))?;
    let src = topo.spec.cluster(&source_name).ok_or_else(|| SyncError::UnknownCluster(source_name.clone()))?;
    let me = topo.spec.cluster(self_name).ok_or_else(|| SyncError::UnknownCluster(self_name.to_string()))?;
    let key = SyncKey {
        source: src.etcd.endpoints.clone(),
        dest: me.etcd.endpoints.clone(),
        exclude: serde_json::to_string(&topo.spec.sync.exclude).unwrap_or_default(),
        namespace: ctx.args.namespace.clone(),
        tls: format!("{:?}/{:?}", src.etcd.tls_secret_ref, me.etcd.tls_secret_ref),
    };
    let running = ctx.sync.running.lock().await.as_ref().map(|r| r.key.clone());
    if running.as_ref() == Some(&key) {
        return Ok(());
    }
    if let Some(old) = running.filter(|r| r.exclude != key.exclude) {
        // Logged and recorded: from now on the mirror and every repair follow the new
        // exclusions only; keys excluded now are never written, whatever was copied before.
        let note = format!(
            "spec.sync.exclude changed from {} to {}; the mirror restarts with it, and repairs write only keys it replicates",
            old.exclude, key.exclude
        );
        warn!(%note, "exclusions changed");
        ctx.event(topo, EventType::Warning, "ExclusionsChanged", "Sync", note).await;
    }
    let (source, dest) = (endpoint(ctx, src).await?, endpoint(ctx, me).await?);
    ctx.sync.start(key, source, dest, filter_for(topo, &ctx.args.namespace)).await;
    Ok(())
}

/// This cluster's own etcd head revision and cluster ID (the demotion token's content).
pub async fn own_revision(ctx: &Context, topo: &DRTopology) -> Result<(i64, String), SyncError> {
    let me = topo.spec.cluster(ctx.self_name()).ok_or_else(|| SyncError::UnknownCluster(ctx.self_name().to_string()))?;
    let mut conn = etcd::connect(&endpoint(ctx, me).await?).await?;
    let (cluster_id, revision) = etcd::head(&mut conn.kv).await.map_err(SyncError::Status)?;
    Ok((revision, format!("{cluster_id:x}")))
}

/// What a check with repair found and re-put.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub outcome: check::RepairOutcome,
    pub missed: u64,
    pub diverged: u64,
    /// The first keys found missed, then diverged.
    pub keys: Vec<String>,
    /// Who had last written the diverged keys here (`manager ×count`), where the objects say.
    pub writers: Option<String>,
}

/// Keys a summary names; the counts say how many there were.
const SUMMARY_KEYS: usize = 5;

/// The first `SUMMARY_KEYS` of `keys`, and how many more there are.
fn first_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<&String> = keys.collect();
    let named = keys.iter().take(SUMMARY_KEYS).map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    match keys.len().saturating_sub(SUMMARY_KEYS) {
        0 => named,
        n => format!("{named} and {n} more"),
    }
}

impl Repaired {
    /// For an Event and the step message: the counts and the first few keys (an Event's note must
    /// fit the apiserver's limit, see `event_note`).
    pub fn summary(&self) -> String {
        format!(
            "re-put {} keys from the primary ({} missed, {} diverged found; {} already right again, {} left to the mirror){}; first: {}",
            self.outcome.put,
            self.missed,
            self.diverged,
            self.outcome.already,
            self.outcome.skipped,
            self.writers.as_ref().map(|w| format!("; diverged keys last written here by {w}")).unwrap_or_default(),
            first_keys(self.keys.iter()),
        )
    }
}

/// The most differing keys of each kind a healthy standby's last check may have found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub missed: u64,
    pub surplus: u64,
    pub diverged: u64,
}

impl Thresholds {
    pub fn of(topo: &DRTopology) -> Thresholds {
        let h = &topo.spec.sync.health;
        Thresholds { missed: topo.spec.failover.max_missed_keys, surplus: h.max_surplus_keys, diverged: h.max_diverged_keys }
    }
}

/// Every kind of difference over its threshold, with the field that sets it; None when the
/// counts (missed, surplus, diverged) are all within theirs.
pub fn over_thresholds(missed: u64, surplus: u64, diverged: u64, t: &Thresholds) -> Option<String> {
    let over: Vec<String> = [
        (missed, t.missed, "missed", "spec.failover.maxMissedKeys"),
        (surplus, t.surplus, "surplus", "spec.sync.health.maxSurplusKeys"),
        (diverged, t.diverged, "diverged", "spec.sync.health.maxDivergedKeys"),
    ]
    .into_iter()
    .filter(|(n, max, _, _)| n > max)
    .map(|(n, max, kind, field)| format!("{n} {kind} ({field} is {max})"))
    .collect();
    (!over.is_empty()).then(|| format!("{} keys at the last check", over.join(", ")))
}

/// Why the last check makes the standby unhealthy, with who last wrote the differing keys here
/// and the first of them; None when within the thresholds.
pub fn unhealthy_because(report: &CheckReport, t: &Thresholds) -> Option<String> {
    let over = over_thresholds(report.missed.count, report.surplus.count, report.diverged.count, t)?;
    let writers = report.writers_summary().map(|w| format!("; last written here by {w}")).unwrap_or_default();
    let keys = report.missed.keys.iter().chain(&report.surplus.keys).chain(&report.diverged.keys);
    Some(format!("{over}{writers}; first: {}", first_keys(keys)))
}

/// A `KeysDiffer` Event's note when a check (after any repair) still finds differences and
/// they are not the ones the previous check already reported; None otherwise, so a standby
/// that stays inconsistent does not publish an Event per check.
pub fn differences_event(previous: Option<&CheckReport>, now: &CheckReport) -> Option<String> {
    let counts = |r: &CheckReport| (r.missed.count, r.surplus.count, r.diverged.count);
    if now.consistent || previous.is_some_and(|p| counts(p) == counts(now) && p.writers == now.writers) {
        return None;
    }
    let writers = now.writers_summary().map(|w| format!("; surplus and diverged keys last written here by {w}")).unwrap_or_default();
    let keys = now.missed.keys.iter().chain(&now.surplus.keys).chain(&now.diverged.keys);
    Some(format!(
        "the check found {} missed, {} surplus, {} diverged keys{writers}; first: {}",
        now.missed.count,
        now.surplus.count,
        now.diverged.count,
        first_keys(keys)
    ))
}

pub fn record_check(status: &mut DRTopologyStatus, report: &CheckReport, repaired: Option<&Repaired>) {
    let sync = status.sync.get_or_insert_with(SyncStatus::default);
    sync.missed_keys = Some(report.missed.count);
    sync.surplus_keys = Some(report.surplus.count);
    sync.diverged_keys = Some(report.diverged.count);
    sync.last_check_time = Some(Timestamp::now().to_string());
    if let Some(r) = repaired {
        sync.repaired_keys = Some(sync.repaired_keys.unwrap_or(0) + r.outcome.put);
    }
}

/// One standby reconcile: mirror running, status and conditions current, the periodic check
/// and the once-only `syncEnabled` / `demotion` restarts.
pub async fn standby(ctx: &Arc<Context>, topo: &DRTopology, w: &mut StatusWriter) -> Result<(), Error> {
    let generation = topo.metadata.generation;
    if topo.spec.sync.driver == SyncDriver::Manifest {
        // The platform's own synchronizer does the work; drctl only keeps its object present.
        let (ok, why) = match manifest(ctx, topo, true).await {
            Ok(()) => (true, "sync delegated to spec.sync.manifest (applied); drctl does not measure its lag".to_string()),
            Err(e) => (false, e.to_string()),
        };
        set_condition(&mut w.status, "SyncHealthy", ok, if ok { "ManifestApplied" } else { "ManifestFailed" }, &why, generation);
        set_condition(&mut w.status, "Ready", ok, if ok { "Steady" } else { "ManifestFailed" }, &why, generation);
        w.status.phase = Some(if ok { Phase::Steady } else { Phase::Degraded });
        return Ok(());
    }
    if let Err(e) = ensure_mirror(ctx, topo, ctx.self_name()).await {
        w.status.phase = Some(Phase::Degraded);
        set_condition(&mut w.status, "SyncHealthy", false, "MirrorNotStarted", &e.to_string(), generation);
        return Ok(());
    }
    let Some((p, lag)) = ctx.sync.progress().await else { return Ok(()) };
    if ctx.sync.report_due() || w.status.sync.is_none() {
        let sync = w.status.sync.get_or_insert_with(SyncStatus::default);
        sync.source_revision = Some(p.source_revision).filter(|r| *r > 0);
        sync.applied_revision = Some(p.applied_revision).filter(|r| *r > 0);
        sync.lag_seconds = Some((lag * 1000.0).round() / 1000.0);
    }
    let following = p.phase == MirrorPhase::Following;
    let interval = parse_duration(&topo.spec.sync.check_interval).unwrap_or(Duration::from_secs(300));
    let due = ctx.sync.last_check_age().await.is_none_or(|age| age >= interval);
    if following && due {
        let previous = ctx.sync.last_check().await;
        let read_rate = Some(topo.spec.sync.check_read_rate).filter(|r| *r > 0);
        match ctx.sync.check_now(topo.spec.sync.auto_repair, read_rate).await {
            Ok((report, repaired)) => {
                record_check(&mut w.status, &report, repaired.as_ref());
                if let Some(r) = repaired {
                    warn!(put = r.outcome.put, missed = r.missed, diverged = r.diverged, "the check re-put keys the standby had lost or held different");
                    ctx.event(topo, EventType::Warning, "KeysRepaired", "Check", r.summary()).await;
                }
                if let Some(note) = differences_event(previous.as_ref(), &report) {
                    warn!(missed = report.missed.count, surplus = report.surplus.count, diverged = report.diverged.count, "the check found differences");
                    ctx.event(topo, EventType::Warning, "KeysDiffer", "Check", note).await;
                }
            }
            Err(e) => warn!(error = %e, "consistency check failed"),
        }
        // A fenced standby's controllers cannot make pods of replicated workloads, so any that
        // are here were made before the fence took effect (it applies a moment after it is
        // written): stop them too, once per check, as demotion did.
        if topo.spec.sync.fence.enabled {
            super::stop_replicated_pods(ctx, topo, "Check").await;
        }
    }
    let sync = w.status.sync.clone().unwrap_or_default();
    // Figures from the last check and status.sync (refreshed every few seconds), not live ones:
    // a message that changes on every reconcile would make every reconcile write status.
    let last_check = ctx.sync.last_check().await;
    let empty = last_check.as_ref().filter(|r| r.replicates_nothing());
    let over = last_check.as_ref().and_then(|r| unhealthy_because(r, &Thresholds::of(topo)));
    let healthy = following && lag <= ctx.args.max_lag_seconds && last_check.is_some() && over.is_none() && empty.is_none() && p.last_error.is_none();
    let why = if !following {
        format!("mirror is {:?}{}", p.phase, p.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())
    } else if lag > ctx.args.max_lag_seconds {
        format!("lag {:.1}s is over {:.0}s", sync.lag_seconds.unwrap_or(lag), ctx.args.max_lag_seconds)
    } else if let Some(r) = empty {
        format!(
            "nothing is replicated: the primary holds {} keys under /registry/ and spec.sync.exclude removes all of them",
            r.source_keys
        )
    } else if let Some(over) = &over {
        over.clone()
    } else if last_check.is_none() {
        "waiting for the first consistency check".into()
    } else {
        // The peer, not spec.primary: a cluster holding after an abandoned failover is named primary.
        let source = topo.spec.peer_of(ctx.self_name()).map(|c| c.name.as_str()).unwrap_or("the primary");
        format!("following {source}; revisions and lag in status.sync")
    };
    set_condition(&mut w.status, "SyncHealthy", healthy, if healthy { "Mirroring" } else { "NotHealthy" }, &why, generation);
    set_condition(&mut w.status, "DNSCorrect", true, "Standby", "DNS is the primary's concern", generation);
    set_condition(&mut w.status, "Ready", healthy, if healthy { "Steady" } else { "Syncing" }, &why, generation);
    w.status.phase = Some(if healthy { Phase::Steady } else if following && last_check.is_some() { Phase::Degraded } else { Phase::Syncing });

    if healthy {
        let stamp = Timestamp::now();
        if !sync.restarts_done {
            match run_restarts(ctx, topo, RestartWhen::SyncEnabled, stamp).await {
                Ok(o) => {
                    info!(message = %o.message, "syncEnabled restarts done");
                    if let Some(s) = w.status.sync.as_mut() {
                        s.restarts_done = true;
                    }
                }
                Err(e) => warn!(error = %e, "syncEnabled restarts failed; will retry"),
            }
        }
        if w.status.demotion.as_ref().is_some_and(|d| !d.restarts_done) {
            match run_restarts(ctx, topo, RestartWhen::Demotion, stamp).await {
                Ok(o) => {
                    info!(message = %o.message, "demotion restarts done");
                    if let Some(d) = w.status.demotion.as_mut() {
                        d.restarts_done = true;
                    }
                }
                Err(e) => warn!(error = %e, "demotion restarts failed; will retry"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{event_note, EVENT_NOTE_LIMIT};

    fn repaired(keys: usize, key_len: usize) -> Repaired {
        Repaired {
            outcome: check::RepairOutcome { put: keys as u64, ..Default::default() },
            missed: keys as u64,
            diverged: 0,
            keys: (0..keys).map(|i| format!("/registry/configmaps/team-a/{i:0>key_len$}")).collect(),
            writers: None,
        }
    }

    fn report(missed: u64, surplus: u64, diverged: u64, writers: &[(&str, u64)]) -> CheckReport {
        let list = |n: u64, kind: &str| check::KeyList { count: n, keys: (0..n.min(3)).map(|i| format!("/registry/{kind}/{i}")).collect(), writers: Vec::new() };
        CheckReport {
            consistent: missed + surplus + diverged == 0,
            revision: 1,
            source_revision: 1,
            source_cluster_id: "ab".into(),
            checked_keys: 100,
            source_keys: 100,
            missed: list(missed, "missed"),
            surplus: list(surplus, "surplus"),
            diverged: list(diverged, "diverged"),
            duration_ms: 1,
            repair: None,
            writers: writers.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn a_standby_is_unhealthy_when_any_kind_of_difference_is_over_its_threshold() {
        let zero = Thresholds { missed: 0, surplus: 0, diverged: 0 };
        let lenient = Thresholds { missed: 2, surplus: 5, diverged: 1 };
        let cases: [(u64, u64, u64, &Thresholds, Option<&str>); 7] = [
            (0, 0, 0, &zero, None),
            (1, 0, 0, &zero, Some("1 missed (spec.failover.maxMissedKeys is 0) keys at the last check")),
            (0, 3, 0, &zero, Some("3 surplus (spec.sync.health.maxSurplusKeys is 0) keys at the last check")),
            (0, 0, 4, &zero, Some("4 diverged (spec.sync.health.maxDivergedKeys is 0) keys at the last check")),
            (
                1,
                2,
                0,
                &zero,
                Some("1 missed (spec.failover.maxMissedKeys is 0), 2 surplus (spec.sync.health.maxSurplusKeys is 0) keys at the last check"),
            ),
            (2, 5, 1, &lenient, None),
            (2, 6, 1, &lenient, Some("6 surplus (spec.sync.health.maxSurplusKeys is 5) keys at the last check")),
        ];
        for (m, s, d, t, want) in cases {
            assert_eq!(over_thresholds(m, s, d, t).as_deref(), want, "{m}/{s}/{d} against {t:?}");
        }
        let why = unhealthy_because(&report(0, 2, 1, &[("kube-scheduler", 2), ("kube-controller-manager", 1)]), &zero).expect("unhealthy");
        assert!(why.contains("; last written here by kube-scheduler ×2, kube-controller-manager ×1; first: /registry/surplus/0, /registry/surplus/1, /registry/diverged/0"), "{why}");
        assert_eq!(unhealthy_because(&report(2, 5, 1, &[]), &lenient), None);
    }

    #[test]
    fn keys_differ_events_only_when_the_findings_change() {
        let bad = report(0, 2, 0, &[("kube-scheduler", 2)]);
        let note = differences_event(None, &bad).expect("first finding");
        assert_eq!(note, "the check found 0 missed, 2 surplus, 0 diverged keys; surplus and diverged keys last written here by kube-scheduler ×2; first: /registry/surplus/0, /registry/surplus/1");
        assert_eq!(differences_event(Some(&bad), &bad), None, "the same findings again");
        assert!(differences_event(Some(&bad), &report(0, 3, 0, &[("kube-scheduler", 3)])).is_some(), "more of them");
        assert!(differences_event(Some(&bad), &report(0, 2, 0, &[("someone-else", 2)])).is_some(), "another writer");
        assert!(differences_event(Some(&report(0, 0, 0, &[])), &bad).is_some(), "was consistent");
        assert_eq!(differences_event(Some(&bad), &report(0, 0, 0, &[])), None, "consistent now");
    }

    #[test]
    fn keys_repaired_event_names_counts_and_a_few_keys_within_the_note_limit() {
        let r = repaired(10_000, 200);
        let note = event_note(r.summary());
        assert!(note.len() <= EVENT_NOTE_LIMIT, "{} bytes", note.len());
        assert!(note.starts_with("re-put 10000 keys from the primary (10000 missed, 0 diverged found"), "{note}");
        assert!(note.contains(&r.keys[0]), "{note}");
        let few = repaired(7, 4).summary();
        assert!(few.contains("/registry/configmaps/team-a/0004") && !few.contains("team-a/0005"), "{few}");
        assert!(few.ends_with(" and 2 more"), "{few}");
        let with_writers = Repaired { writers: Some("kube-controller-manager ×3".into()), ..repaired(3, 4) }.summary();
        assert!(with_writers.contains("; diverged keys last written here by kube-controller-manager ×3; first: "), "{with_writers}");
        assert!(!repaired(3, 4).summary().contains("more"));
    }
}
