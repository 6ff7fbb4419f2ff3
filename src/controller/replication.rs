//! The in-process mirror a standby runs: started, restarted on a changed source, destination or
//! exclusions, stopped; its progress, and the consistency check (with repair) of what it copied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use k8s_openapi::jiff::Timestamp;

use crate::check::{self, CheckReport};
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::decide::standby::first_keys;
use crate::etcd::{self, Endpoint};
use crate::keyspace::Filter;
use crate::mirror::{Mirror, MirrorConfig, Progress, Tuning};
use crate::secret::SecretError;

/// What identifies a running mirror: when any of it changes, the mirror restarts. The TLS
/// material is not part of it: a rotated certificate reaches the same etcds, and the running
/// mirror and check take it for their next connection ([`SyncManager::renew_credentials`]).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SyncKey {
    pub(super) source: Vec<String>,
    pub(super) dest: Vec<String>,
    pub(super) exclude: String,
    pub(super) namespace: String,
}

struct Running {
    key: SyncKey,
    progress: watch::Receiver<Progress>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    mirror: Arc<Mirror>,
    source: Endpoint,
    dest: Endpoint,
    filter: Filter,
}

/// What a check with repair returns: the report of what is left and what the repair did.
pub type CheckResult = Result<(CheckReport, Option<Repaired>), SyncError>;

/// The standby's periodic check, running beside the reconciles: it reads both keyspaces (about
/// 20 s at 1M keys at the default read rate, longer with a repair), and a reconcile waiting for
/// it would see a flip only afterwards.
struct PeriodicCheck {
    /// The report before this check, for the "differences changed" Event.
    previous: Option<CheckReport>,
    /// `spec.sync.autoRepair` and `checkReadRate` it runs with.
    settings: (bool, Option<u64>),
    task: JoinHandle<CheckResult>,
}

/// Which sides' TLS material [`SyncManager::renew_credentials`] replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Renewed {
    pub(super) source: bool,
    pub(super) dest: bool,
}

impl Renewed {
    pub(super) fn any(self) -> bool {
        self.source || self.dest
    }
}

/// A periodic check that finished: the report before it and its result.
pub struct FinishedCheck {
    pub previous: Option<CheckReport>,
    pub result: CheckResult,
    /// When it was published, if it passed: status's `lastCheckTime`.
    pub published: Option<Timestamp>,
}

/// The check health is decided on: its report, and when it was published (for its age, and as
/// status's `lastCheckTime`).
struct Published {
    report: CheckReport,
    at: Instant,
    time: Timestamp,
}

/// [`Progress::writes_below_floor`] of the running mirror already counted, and the count not yet
/// exported.
#[derive(Default)]
struct BelowFloor {
    seen: u64,
    unexported: u64,
}

#[derive(Default)]
pub struct SyncManager {
    running: Mutex<Option<Running>>,
    last_check: Mutex<Option<Published>>,
    periodic: Mutex<Option<PeriodicCheck>>,
    /// When revisions and lag were last copied into status. Each status write wakes the
    /// controller's watch; without this a busy primary would keep the standby reconciling.
    reported_at: std::sync::Mutex<Option<Instant>>,
    /// Source rewinds of the running mirror already noted ([`Progress::rewinds`]).
    rewinds_seen: std::sync::Mutex<u64>,
    /// Writes below the revision floor, summed over this controller's mirrors.
    below_floor: std::sync::Mutex<BelowFloor>,
    /// The last rewind, until a check of the new history has passed.
    rewound: std::sync::Mutex<Option<(i64, i64)>>,
    /// The error of the checks that failed since the last one that passed.
    check_error: std::sync::Mutex<Option<String>>,
    /// This cluster's mirror checkpoint is known deleted since it became primary.
    checkpoint_forgotten: std::sync::atomic::AtomicBool,
    /// Repairs of the periodic check no reconcile has announced yet, kept apart from its result:
    /// the check re-reads both keyspaces after its repair, and a flip that stops the mirror
    /// meanwhile cancels it, but the keys it put are put.
    unannounced_repairs: std::sync::Mutex<Vec<Repaired>>,
}

/// How often revisions and lag are refreshed in status.
const REPORT_EVERY: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cluster {0} is not in spec.clusters")]
    UnknownCluster(String),
    #[error("etcd TLS for cluster {cluster}: {source}")]
    Tls { cluster: String, source: SecretError },
    #[error("the mirror is not running")]
    NotRunning,
    #[error("applied revision {applied} did not reach {want} within {after:?}")]
    CatchUpTimeout { applied: i64, want: i64, after: Duration },
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error("the consistency check's task ended without a result: {0}")]
    CheckTask(#[source] tokio::task::JoinError),
    #[error("the source's history went back during the check (restored from a snapshot?): its result is of the old history")]
    RewoundDuringCheck,
    #[error("reading this cluster's etcd revision: {0}")]
    Status(etcd_client::Error),
    #[error("spec.sync.manifest: {0}")]
    Manifest(String),
    #[error("spec.sync.manifest: {object}: {source}")]
    ManifestApi { object: String, source: kube::Error },
}

impl SyncError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SyncError::UnknownCluster(_) => ErrorKind::InvalidSpec,
            SyncError::Tls { source, .. } => secret_error_kind(source),
            SyncError::Manifest(_) => ErrorKind::Configuration,
            SyncError::ManifestApi { source, .. } => kube_error_kind(source),
            SyncError::Etcd(e) => match e {
                etcd::EtcdError::Userinfo(_) => ErrorKind::InvalidSpec,
                etcd::EtcdError::ReadFile { .. } | etcd::EtcdError::HalfIdentity => ErrorKind::Configuration,
                // Connecting, and whatever else reaches etcd.
                _ => ErrorKind::Transient,
            },
            SyncError::NotRunning
            | SyncError::CatchUpTimeout { .. }
            | SyncError::Check(_)
            | SyncError::CheckTask(_)
            | SyncError::RewoundDuringCheck
            | SyncError::Status(_) => ErrorKind::Transient,
        }
    }
}

/// The kind of a failure to read a Secret: absent or incomplete is ours to fix.
pub fn secret_error_kind(e: &SecretError) -> ErrorKind {
    match e {
        SecretError::Kube { source, .. } => kube_error_kind(source),
        SecretError::NotFound { .. } | SecretError::MissingKey { .. } | SecretError::File { .. } => ErrorKind::Configuration,
    }
}

impl SyncManager {
    pub async fn stop(&self) {
        self.cancel_periodic().await;
        // Taken out first, so the lock is not held while the task ends.
        let running = self.running.lock().await.take();
        if let Some(r) = running {
            r.shutdown.cancel();
            let _ = r.task.await;
            self.fold_below_floor(&r.progress.borrow());
            info!(source = %crate::urls::redact_all(&r.key.source), "mirror stopped");
        }
    }

    pub(super) async fn start(&self, key: SyncKey, source: Endpoint, dest: Endpoint, filter: Filter) {
        self.stop().await;
        // A finished check of the mirror before that no reconcile collected is of another mirror.
        self.periodic.lock().await.take();
        // The last check was of the mirror before (another source, other exclusions, or an
        // older copy): the new one is healthy only once a check of it has finished.
        *self.last_check.lock().await = None;
        set(&self.rewinds_seen, 0);
        if let Ok(mut b) = self.below_floor.lock() {
            b.seen = 0;
        }
        set(&self.check_error, None);
        self.checkpoint_forgotten.store(false, std::sync::atomic::Ordering::SeqCst);
        let mirror = Arc::new(Mirror::new(MirrorConfig { source: source.clone(), dest: dest.clone(), filter: filter.clone(), tuning: Tuning::default() }));
        let progress = mirror.progress();
        let shutdown = CancellationToken::new();
        let task = {
            let (mirror, token) = (mirror.clone(), shutdown.clone());
            tokio::spawn(async move { mirror.run(token.cancelled_owned()).await })
        };
        info!(source = %crate::urls::redact_all(&key.source), dest = %crate::urls::redact_all(&key.dest), "mirror started");
        *self.running.lock().await = Some(Running { key, progress, shutdown, task, mirror, source, dest, filter });
    }

    /// Gives the running mirror and its checks `source` and `dest` for their next connections
    /// when their TLS material differs from what they have (a Secret rotated in place): the
    /// mirror's open session and a check under way finish on the connections they have.
    /// Which sides changed, if any.
    pub(super) async fn renew_credentials(&self, source: Endpoint, dest: Endpoint) -> Renewed {
        let mut guard = self.running.lock().await;
        let Some(r) = guard.as_mut() else { return Renewed::default() };
        let renewed = Renewed { source: r.source.digest() != source.digest(), dest: r.dest.digest() != dest.digest() };
        if renewed.any() {
            r.mirror.set_endpoints(source.clone(), dest.clone());
            (r.source, r.dest) = (source, dest);
        }
        renewed
    }

    /// What identifies the running mirror, if one runs.
    pub(super) async fn running_key(&self) -> Option<SyncKey> {
        self.running.lock().await.as_ref().map(|r| r.key.clone())
    }

    /// The mirror's progress and its lag in seconds (how long it has been behind the source).
    pub async fn progress(&self) -> Option<(Progress, f64)> {
        let guard = self.running.lock().await;
        let p = guard.as_ref()?.progress.borrow().clone();
        self.fold_below_floor(&p);
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
    pub async fn check_now(&self, repair: bool, max_read_rate: Option<u64>) -> CheckResult {
        let result = self.check_and_repair(repair, max_read_rate, false).await;
        self.publish(&result).await;
        result
    }

    /// Makes a finished check what health is decided on: the last check, the error of the
    /// checks since, a rewind behind us. The periodic check's is published when a reconcile
    /// collects it ([`Self::finished_periodic`]), in the pass that records it in status: published
    /// when it finished, a reconcile in between reported the standby healthy beside the
    /// `lastCheckTime` and counts of the check before (a restarted mirror's standby looked
    /// healthy on the old mirror's check).
    async fn publish(&self, result: &CheckResult) -> Option<Timestamp> {
        match result {
            Ok((report, _)) => {
                let time = Timestamp::now();
                *self.last_check.lock().await = Some(Published { report: report.clone(), at: Instant::now(), time });
                set(&self.check_error, None);
                // A check of the new history has passed: the rewind is behind us.
                set(&self.rewound, None);
                Some(time)
            }
            Err(e) => {
                set(&self.check_error, Some(e.to_string()));
                None
            }
        }
    }

    /// The check of [`Self::check_now`], not published; with `keep_repair`, a repair is also
    /// kept for [`Self::take_unannounced_repairs`] as soon as it is done (the periodic check).
    async fn check_and_repair(&self, repair: bool, max_read_rate: Option<u64>, keep_repair: bool) -> CheckResult {
        let (source, dest, filter, progress) = {
            let guard = self.running.lock().await;
            let r = guard.as_ref().ok_or(SyncError::NotRunning)?;
            (r.source.clone(), r.dest.clone(), r.filter.clone(), r.progress.clone())
        };
        let rewinds = progress.borrow().rewinds;
        let (s, d) = (etcd::connect(&source).await?, etcd::connect(&dest).await?);
        let opts = check::CheckOptions { max_read_rate, ..check::CheckOptions::default() };
        let mut result = check::run(&s, &d, &filter, &opts).await?;
        let fixable: Vec<_> = if repair { result.differences.iter().filter(|x| x.kind() != check::Kind::Surplus).cloned().collect() } else { Vec::new() };
        let mut repaired = None;
        if !fixable.is_empty() {
            let outcome = check::repair(&s, &d, &filter, &fixable, false).await?;
            let found = &result.report;
            // Nothing put: the differences were the mirror's in-flight writes after all.
            if outcome.put > 0 {
                let keys = found.missed.keys.iter().chain(&found.diverged.keys).cloned().collect();
                let writers = found.writers_summary();
                let r = Repaired { outcome: outcome.clone(), missed: found.missed.count, diverged: found.diverged.count, keys, writers };
                if keep_repair {
                    if let Ok(mut kept) = self.unannounced_repairs.lock() {
                        kept.push(r.clone());
                    }
                }
                repaired = Some(r);
            }
            result = check::run(&s, &d, &filter, &opts).await?;
            result.report.repair = Some(outcome);
        }
        if progress.borrow().rewinds != rewinds {
            return Err(SyncError::RewoundDuringCheck);
        }
        Ok((result.report, repaired))
    }

    /// A source rewind the running mirror reports that was not noted yet: the last check is of
    /// the old history (forgotten, a running one cancelled), and the standby is not healthy
    /// until a check of the new one passes. Returns it once.
    pub(super) async fn note_rewind(&self, p: &Progress) -> Option<(i64, i64)> {
        {
            let Ok(mut seen) = self.rewinds_seen.lock() else { return None };
            if p.rewinds <= *seen {
                return None;
            }
            *seen = p.rewinds;
        }
        // A check of the old history, running or finished and not collected yet: collected
        // later, it would be published as a check of the new one. Its repairs are kept apart
        // (`take_unannounced_repairs`) and still reported.
        if let Some(p) = self.periodic.lock().await.take() {
            p.task.abort();
            let _ = p.task.await;
        }
        *self.last_check.lock().await = None;
        set(&self.rewound, p.rewound);
        p.rewound
    }

    /// Writes below the revision floor counted since the last call (for the metric, a counter
    /// across mirrors: a standby's, and the catch-up of FinalSync).
    pub(super) fn take_writes_below_floor(&self) -> u64 {
        self.below_floor.lock().map(|mut b| std::mem::take(&mut b.unexported)).unwrap_or(0)
    }

    fn fold_below_floor(&self, p: &Progress) {
        if let Ok(mut b) = self.below_floor.lock() {
            let new = p.writes_below_floor.saturating_sub(b.seen);
            b.seen = b.seen.max(p.writes_below_floor);
            b.unexported += new;
        }
    }

    /// The last source rewind while no check of the new history has passed.
    pub fn rewound(&self) -> Option<(i64, i64)> {
        self.rewound.lock().ok().and_then(|r| *r)
    }

    /// The error of the checks that failed since the last one passed.
    pub fn check_error(&self) -> Option<String> {
        self.check_error.lock().ok().and_then(|e| e.clone())
    }

    /// Whether this cluster's mirror checkpoint is known deleted (since it became primary).
    pub(super) fn checkpoint_forgotten(&self) -> bool {
        self.checkpoint_forgotten.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn set_checkpoint_forgotten(&self) {
        self.checkpoint_forgotten.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts the periodic check in the background unless one is running (or has finished and
    /// not been collected by [`Self::finished_periodic`]). One running with other settings is
    /// replaced: `autoRepair: false` stops repairs now, not after a check of many minutes.
    pub(super) async fn start_periodic(self: &Arc<Self>, repair: bool, max_read_rate: Option<u64>) {
        let mut slot = self.periodic.lock().await;
        match slot.as_ref() {
            Some(p) if p.settings == (repair, max_read_rate) || p.task.is_finished() => return,
            Some(p) => {
                info!(repair, max_read_rate, was = ?p.settings, "consistency check cancelled: spec.sync.autoRepair or checkReadRate changed");
                p.task.abort();
            }
            None => {}
        }
        let previous = self.last_check().await;
        info!(repair, max_read_rate, "consistency check started");
        let me = self.clone();
        let task = tokio::spawn(async move { me.check_and_repair(repair, max_read_rate, true).await });
        *slot = Some(PeriodicCheck { previous, settings: (repair, max_read_rate), task });
    }

    /// The periodic check's result once it has finished (once: it is then forgotten), published
    /// for health as it is taken.
    pub(super) async fn finished_periodic(&self) -> Option<FinishedCheck> {
        let mut slot = self.periodic.lock().await;
        if !slot.as_ref().is_some_and(|p| p.task.is_finished()) {
            return None;
        }
        let p = slot.take()?;
        let result = match p.task.await {
            Ok(r) => r,
            Err(e) => Err(SyncError::CheckTask(e)),
        };
        let published = self.publish(&result).await;
        Some(FinishedCheck { previous: p.previous, result, published })
    }

    /// The periodic check's repairs not announced yet (once), unless the check is still running
    /// (its result then comes first, so status never shows a repair beside the differences it
    /// fixed); a cancelled check's repair is returned too.
    pub(super) async fn take_unannounced_repairs(&self) -> Vec<Repaired> {
        if self.periodic.lock().await.as_ref().is_some_and(|p| !p.task.is_finished()) {
            return Vec::new();
        }
        self.unannounced_repairs.lock().map(|mut kept| std::mem::take(&mut *kept)).unwrap_or_default()
    }

    /// Stops a periodic check that is running: the mirror stops, or FinalSync runs its own. One
    /// that has finished is kept for [`Self::finished_periodic`].
    pub async fn cancel_periodic(&self) {
        let mut slot = self.periodic.lock().await;
        if slot.as_ref().is_some_and(|p| !p.task.is_finished()) {
            if let Some(p) = slot.take() {
                p.task.abort();
                let _ = p.task.await;
            }
        }
    }

    /// True at most once per `REPORT_EVERY`.
    pub(super) fn report_due(&self) -> bool {
        let Ok(mut at) = self.reported_at.lock() else { return true };
        if at.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return false;
        }
        *at = Some(Instant::now());
        true
    }

    pub async fn last_check(&self) -> Option<CheckReport> {
        self.last_check.lock().await.as_ref().map(|p| p.report.clone())
    }

    /// [`Self::last_check`] and the time it was published, which status records as
    /// `lastCheckTime`.
    pub(super) async fn published_check(&self) -> Option<(CheckReport, Timestamp)> {
        self.last_check.lock().await.as_ref().map(|p| (p.report.clone(), p.time))
    }

    pub(super) async fn last_check_age(&self) -> Option<Duration> {
        self.last_check.lock().await.as_ref().map(|p| p.at.elapsed())
    }
}

fn set<T>(m: &std::sync::Mutex<T>, v: T) {
    if let Ok(mut g) = m.lock() {
        *g = v;
    }
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

impl Repaired {
    /// For an Event and the step message: the counts and the first few keys (an Event's note must
    /// fit the apiserver's limit, see `event_note`).
    pub fn summary(&self) -> String {
        format!(
            "re-put {} keys from the primary ({} missed, {} diverged found; {} already right again, {} left to the mirror){}{}; first: {}",
            self.outcome.put,
            self.missed,
            self.diverged,
            self.outcome.already,
            self.outcome.skipped,
            self.writers.as_ref().map(|w| format!("; diverged keys last written here by {w}")).unwrap_or_default(),
            self.outcome.archive.as_ref().map(|a| format!("; the {} values replaced are in archive {}", a.count, a.id)).unwrap_or_default(),
            first_keys(self.keys.iter()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::notes::{event_note, EVENT_NOTE_LIMIT};

    fn repaired(keys: usize, key_len: usize) -> Repaired {
        Repaired {
            outcome: check::RepairOutcome { put: keys as u64, ..Default::default() },
            missed: keys as u64,
            diverged: 0,
            keys: (0..keys).map(|i| format!("/registry/configmaps/team-a/{i:0>key_len$}")).collect(),
            writers: None,
        }
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

    fn clean_report() -> CheckReport {
        let none = check::KeyList::default();
        CheckReport {
            consistent: true,
            revision: 7,
            source_revision: 7,
            source_cluster_id: "ab".into(),
            checked_keys: 3,
            source_keys: 3,
            missed: none.clone(),
            surplus: none.clone(),
            diverged: none,
            duration_ms: 1,
            repair: None,
            writers: Default::default(),
        }
    }

    /// A periodic check that has finished with a clean report and was not collected yet.
    async fn finished_uncollected(sync: &SyncManager) {
        let task = tokio::spawn(async { Ok((clean_report(), None)) });
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
        *sync.periodic.lock().await = Some(PeriodicCheck { previous: None, settings: (true, None), task });
    }

    #[tokio::test]
    async fn a_finished_periodic_check_is_what_health_uses_only_once_a_reconcile_collects_it() {
        let sync = SyncManager::default();
        finished_uncollected(&sync).await;
        assert!(sync.last_check().await.is_none(), "published before a reconcile recorded it in status");
        let done = sync.finished_periodic().await.expect("the finished check");
        let (report, published) = sync.published_check().await.expect("published when collected");
        assert_eq!(report, clean_report());
        assert_eq!(done.published, Some(published), "status records the time health's check was published at");
        assert!(sync.finished_periodic().await.is_none(), "collected once");
    }

    #[tokio::test]
    async fn a_rewind_drops_a_finished_check_of_the_old_history_before_it_is_collected() {
        let sync = SyncManager::default();
        finished_uncollected(&sync).await;
        let rewind = Progress { rewinds: 1, rewound: Some((90, 40)), ..Progress::default() };
        assert_eq!(sync.note_rewind(&rewind).await, Some((90, 40)));
        assert!(sync.finished_periodic().await.is_none(), "the old history's check was kept");
        assert!(sync.last_check().await.is_none(), "a check of the old history is what health uses");
        assert_eq!(sync.rewound(), Some((90, 40)), "the rewind was cleared by a check of the old history");
    }
}
