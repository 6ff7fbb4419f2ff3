//! `drctl controller`: runs in each global, reconciles the one DRTopology.
//!
//! Reconcile is a pipeline (the Stackable shape): read fresh → validate → observe the peer →
//! plan (pure, `failover::plan`) → act → write status, looping until the plan says "wait".
//! Status is written with server-side apply, and before and after every runbook step, so a
//! controller killed at any point re-plans from status and resumes where it stopped.

pub mod peer;
pub mod status;
pub mod sync;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;
use tracing::{info, info_span, warn, Instrument};

use crate::failover::{self, runbook::Runbook, Action, Observed, PeerView, Step};
use crate::http;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::topology::{DRTopology, Phase, Role, StepState};
use crate::validate;
use status::{set_condition, StatusWriter};

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Which cluster of the topology this controller runs in (spec.clusters[].name).
    #[arg(long, env = "DRCTL_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Kubeconfig for this cluster; in-cluster config when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the controller (leader-election Lease, default Secret lookups).
    #[arg(long, env = "DRCTL_NAMESPACE", default_value = "drctl-system")]
    pub namespace: String,
    /// Address for /metrics, /healthz, /readyz and /check.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// File with a bearer token /check requires. Without it /check answers only on a loopback
    /// --listen address: the report names keys of every replicated namespace.
    #[arg(long, value_name = "FILE")]
    pub check_token_file: Option<PathBuf>,
    /// Identity in the leader Lease; defaults to the hostname plus pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader Lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// How long a restart waits for workloads to become ready again.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    pub restart_ready_timeout: Duration,
    /// Lag above which SyncHealthy turns false.
    #[arg(long, default_value_t = 30.0)]
    pub max_lag_seconds: f64,
    /// A local clone of the GitOps repo (kept current by e.g. a git-sync sidecar), read-only:
    /// a failover record names the commit, author and reason that flipped spec.primary.
    #[arg(long)]
    pub git_repo: Option<PathBuf>,
    /// The topology file inside --git-repo.
    #[arg(long, default_value = crate::gitops::DEFAULT_FILE)]
    pub git_file: PathBuf,
}

pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    validate::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m or 1h"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("step {step} failed: {message}")]
    Step { step: failover::Step, message: String },
    #[error("{0}")]
    Other(String),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub args: ControllerArgs,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub sync: sync::SyncManager,
    /// Serialises reconciles that act (one DRTopology is acted on, but watch events race).
    pub act_lock: Mutex<()>,
    /// The fence last applied (the primary it points writers to, or None when lifted) and when.
    pub fenced: Mutex<Option<(Option<String>, std::time::Instant)>>,
    /// Tells `/readyz` when a reconcile stopped making progress.
    pub watchdog: watchdog::Watchdog,
    /// The encryption config's sha256, re-read only when the file changes.
    pub fingerprints: Arc<crate::files::FingerprintCache>,
    /// The last fingerprint error logged, so a bad path warns once, not every reconcile.
    fingerprint_error: std::sync::Mutex<Option<String>>,
}

impl Context {
    pub fn self_name(&self) -> &str {
        &self.args.cluster_name
    }

    pub async fn event(&self, obj: &DRTopology, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(event_note(note)), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The apiserver rejects an Event whose note is longer than this many bytes.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to the Event limit on a character boundary, with an ellipsis when cut: an Event
/// the apiserver rejects says nothing at all.
pub fn event_note(mut note: String) -> String {
    const MORE: &str = "…";
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - MORE.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(MORE);
    note
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let metrics = Arc::new(Metrics::new(&args.cluster_name));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter = Reporter { controller: "drctl".into(), instance: Some(identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        sync: sync::SyncManager::default(),
        act_lock: Mutex::new(()),
        fenced: Mutex::new(None),
        watchdog: watchdog::Watchdog::default(),
        fingerprints: Arc::default(),
        fingerprint_error: std::sync::Mutex::new(None),
        args: args.clone(),
    });
    let check_access = http::CheckAccess::from_args(args.listen, args.check_token_file.as_deref())?;
    let server = http::serve(args.listen, check_access, metrics.clone(), ctx.clone(), ready.clone());
    let server = tokio::spawn(server);

    // Two replicas never both act: only the Lease holder runs the controller.
    let elector = LeaderElector::new(client.clone(), &args.namespace, &format!("drctl-{}", args.cluster_name), &identity, Duration::from_secs(args.lease_seconds));
    info!(identity, cluster = %args.cluster_name, "waiting for leadership");
    elector.acquire().await?;
    metrics.became_leader();
    info!(identity, "leading");
    let lost = elector.keep_renewing();
    ready.store(true, std::sync::atomic::Ordering::SeqCst);

    let api: Api<DRTopology> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        });
    tokio::select! {
        _ = controller => info!("controller stopped"),
        e = lost => anyhow::bail!("lost leadership: {e}"),
        r = server => anyhow::bail!("http server stopped: {r:?}"),
    }
    ctx.sync.stop().await;
    elector.release().await;
    Ok(())
}

/// A client from a kubeconfig file, or the in-cluster / default configuration without one.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?
        }
        None => Client::try_default().await?,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "drctl".into())
}

fn error_policy(_obj: Arc<DRTopology>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_errors.inc();
    warn!(error = %err, "reconcile error; retrying");
    Requeue::requeue(Duration::from_secs(5))
}

/// How often a standby refreshes lag and status while nothing else happens.
const STEADY_REQUEUE: Duration = Duration::from_secs(5);
const WAIT_REQUEUE: Duration = Duration::from_secs(2);

async fn reconcile(obj: Arc<DRTopology>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let name = obj.name_any();
    let span = info_span!("reconcile", topology = %name, cluster = %ctx.self_name());
    async move {
        let _guard = ctx.act_lock.lock().await;
        let _busy = ctx.watchdog.start();
        let api: Api<DRTopology> = Api::all(ctx.client.clone());
        let mut writer: Option<StatusWriter> = None;
        // Plan and act until the plan says wait. The object is read again before every action:
        // the watch cache may trail our own status writes, and a flip back must be seen between
        // two runbook steps, not after the whole runbook.
        loop {
            let Some(topo) = api.get_opt(&name).await? else { return Ok(Requeue::await_change()) };
            let w = writer.get_or_insert_with(|| StatusWriter::new(api.clone(), &topo, ctx.self_name()));
            w.status.observed_generation = topo.metadata.generation;
            if let Some(wait) = refuse_invalid(&ctx, &api, &topo, w).await? {
                return Ok(wait);
            }
            let peer_name = topo.spec.peer_of(ctx.self_name()).map(|c| c.name.clone()).unwrap_or_default();
            let (peer, peer_err) = peer::observe(&ctx.client, &topo, &peer_name).await;
            match &peer_err {
                None => set_condition(&mut w.status, "PeerReachable", true, "Reachable", &format!("{peer_name} answered"), topo.metadata.generation),
                Some(e) => set_condition(&mut w.status, "PeerReachable", false, "Unreachable", e, topo.metadata.generation),
            }
            if let Some(p) = peer.reachable() {
                // A standby learns the term of the primary it follows, so a disaster failover
                // (the primary gone) still takes a higher one.
                w.status.peer_term = w.status.peer_term.max(p.term);
            }
            let status_now = w.status.clone();
            let mut observed = Observed {
                self_name: ctx.self_name(),
                spec_primary: &topo.spec.primary,
                invalid: false,
                dry_run: topo.spec.failover.dry_run,
                status: Some(&status_now),
                peer: peer.clone(),
                dns_here: None,
                now: Timestamp::now(),
                final_sync: failover::runbook::final_sync_bound(&topo),
                generation: topo.metadata.generation,
                retry: topo.annotations().get(failover::RETRY_ANNOTATION).map(String::as_str),
            };
            // Asked only when a reclaim is possible: a reclaim never happens while DNS is known
            // to point elsewhere.
            if failover::asks_dns(&observed) {
                observed.dns_here = dns_points_here(&topo, ctx.self_name()).await.0;
            }
            let action = failover::plan(&observed);
            tracing::debug!(?action, "planned");
            // After the plan: a primary holding the role for a peer that abandoned its failover
            // is not fenced, though spec.primary names the peer. Still before any action, so an
            // old primary is fenced before it writes its demotion token.
            fence_as_declared(&ctx, &topo, &w.status, &action).await;
            abandon_condition(&mut w.status, &action, topo.metadata.generation);
            ctx.watchdog.beat(watchdog::step_budget(&action, &topo.spec, ctx.args.restart_ready_timeout));
            match act(&ctx, &topo, w, action, &peer, &peer_name).await? {
                Next::Continue => continue,
                Next::Requeue(d) => {
                    w.write().await?;
                    ctx.metrics.observe_status(&w.status);
                    ctx.metrics.observe_thresholds(&sync::Thresholds::of(&topo));
                    return Ok(Requeue::requeue(d));
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Reports an invalid spec, or a second DRTopology, and says how long to wait; None when the
/// object may be acted on. An invalid spec never starts (or continues) a failover.
async fn refuse_invalid(ctx: &Context, api: &Api<DRTopology>, topo: &DRTopology, w: &mut StatusWriter) -> Result<Option<Requeue>, Error> {
    let generation = topo.metadata.generation;
    if let Some(older) = oldest_other(api, topo).await? {
        let msg = format!("only the oldest DRTopology is acted on; {older} is older: delete one of them");
        set_condition(&mut w.status, "Valid", false, "NotTheOnlyTopology", &msg, generation);
        w.status.phase = Some(Phase::Invalid);
        w.write().await?;
        return Ok(Some(Requeue::requeue(Duration::from_secs(60))));
    }
    w.status.encryption_config_sha256 = own_fingerprint(ctx, topo).await;
    let mut msgs: Vec<String> = validate::validate_spec(&topo.spec).iter().map(|e| e.to_string()).collect();
    if topo.spec.cluster(ctx.self_name()).is_none() {
        msgs.push(format!("spec.clusters: no cluster is named {:?} (this controller's --cluster-name)", ctx.self_name()));
    }
    if msgs.is_empty() {
        set_condition(&mut w.status, "Valid", true, "Valid", "the spec passed validation", generation);
        return Ok(None);
    }
    set_condition(&mut w.status, "Valid", false, "InvalidSpec", &msgs.join("; "), generation);
    set_condition(&mut w.status, "Ready", false, "InvalidSpec", "the spec is invalid; nothing is done until it is fixed", generation);
    w.status.phase = Some(Phase::Invalid);
    w.write().await?;
    Ok(Some(Requeue::requeue(Duration::from_secs(30))))
}

enum Next {
    Continue,
    Requeue(Duration),
}

async fn act(ctx: &Arc<Context>, topo: &DRTopology, w: &mut StatusWriter, action: Action, peer: &PeerView, peer_name: &str) -> Result<Next, Error> {
    let generation = topo.metadata.generation;
    match action {
        Action::Hold => Ok(Next::Requeue(Duration::from_secs(30))),
        Action::BootstrapPrimary => {
            sync::stop_replication(ctx, topo).await.map_err(|e| Error::Other(e.to_string()))?;
            w.status.role = Some(Role::Primary);
            w.status.phase = Some(Phase::Steady);
            w.status.sync = None;
            w.status.term = failover::next_term(&w.status);
            set_condition(&mut w.status, "SyncHealthy", true, "Primary", "a primary does not replicate", generation);
            set_condition(&mut w.status, "Ready", true, "Steady", "primary", generation);
            w.write().await?;
            let term = w.status.term;
            ctx.event(topo, EventType::Normal, "BecamePrimary", "Bootstrap", format!("{} is the primary, term {term}", ctx.self_name())).await;
            Ok(Next::Continue)
        }
        Action::StayPrimary | Action::HoldPrimary { .. } => {
            // Holding for a peer that abandoned: step down soon after it retries (its Demote waits).
            let requeue = if matches!(action, Action::HoldPrimary { .. }) { WAIT_REQUEUE } else { Duration::from_secs(30) };
            sync::stop_replication(ctx, topo).await.map_err(|e| Error::Other(e.to_string()))?;
            w.status.phase = Some(Phase::Steady);
            set_condition(&mut w.status, "Ready", true, "Steady", "primary", generation);
            let (here, why) = dns_points_here(topo, ctx.self_name()).await;
            let ok = here == Some(true);
            set_condition(&mut w.status, "DNSCorrect", ok, if ok { "PointsHere" } else { "Wrong" }, &why, generation);
            Ok(Next::Requeue(requeue))
        }
        Action::DryRun { would } => {
            let plan = match *would {
                Action::StartFailover { .. } => format!("would fail over to {}:\n{}", ctx.self_name(), failover::runbook::describe(topo, ctx.self_name(), peer)),
                other => format!("would {other:?}"),
            };
            set_condition(&mut w.status, "Ready", false, "DryRun", &format!("spec.failover.dryRun: {plan}"), generation);
            Ok(Next::Requeue(Duration::from_secs(30)))
        }
        Action::StartFailover { why } => {
            let mut record = crate::topology::FailoverStatus {
                from: peer_name.to_string(),
                to: ctx.self_name().to_string(),
                started_at: Some(Timestamp::now().to_string()),
                ..Default::default()
            };
            if let Some(e) = flipping_commit(&ctx.args, ctx.self_name()) {
                record.commit = Some(e.commit);
                record.author = Some(e.proposed_by.unwrap_or(e.author));
                record.reason = Some(e.reason);
            }
            w.status.failover = Some(record);
            w.status.phase = Some(Phase::FailingOver);
            w.status.demotion = None;
            set_condition(&mut w.status, "Ready", false, "FailingOver", &format!("failing over from {peer_name}"), generation);
            w.write().await?;
            ctx.metrics.failovers.inc();
            info!(%why, "full failover");
            ctx.event(topo, EventType::Normal, "FailoverStarted", "Failover", format!("failover {peer_name} -> {} started: {why}", ctx.self_name())).await;
            Ok(Next::Continue)
        }
        Action::RunStep(step) => {
            let mut rb = Runbook { ctx, topo, peer_name, status: w };
            match rb.run(step).await {
                // FinalSync's last attempt ran into its bound: plan now, so the policy applies
                // on time rather than after the error requeue.
                Err(_) if step == Step::FinalSync && final_sync_used(&w.status, topo) => Ok(Next::Continue),
                r => r.map(|()| Next::Continue),
            }
        }
        Action::AbandonFailover { reason } => {
            if let Some(f) = w.status.failover.as_mut() {
                failover::runbook::skip_remaining(f, &reason);
                f.aborted = Some(reason.clone());
                f.abandoned = Some(crate::topology::AbandonedUnder {
                    generation,
                    retry: topo.annotations().get(failover::RETRY_ANNOTATION).cloned(),
                });
            }
            ctx.event(topo, EventType::Warning, "FailoverAbandoned", "Failover", reason).await;
            // Hands the role back: the old primary reclaims on this token. Never primary here
            // (FinalSync comes before StopSync), so nothing to restart on demotion.
            acknowledge(ctx, topo, w, peer_name, false).await?;
            Ok(Next::Continue)
        }
        Action::ProceedWithoutFinalSync { missed, reason } => {
            if let Some(f) = w.status.failover.as_mut() {
                failover::runbook::proceed_without_final_sync(f, missed, &reason);
            }
            w.write().await?;
            warn!(%reason, "FinalSync bound reached; proceeding");
            ctx.event(topo, EventType::Warning, "FinalSyncProceeded", Step::FinalSync.name(), reason).await;
            Ok(Next::Continue)
        }
        Action::HoldAbandoned { why, mirror: false } => wait_for_primary(ctx, topo, w, &why).await,
        Action::AbortFailover { reason } => {
            if let Some(f) = w.status.failover.as_mut() {
                failover::runbook::skip_remaining(f, &reason);
                f.aborted = Some(reason.clone());
            }
            ctx.event(topo, EventType::Warning, "FailoverAborted", "Failover", reason).await;
            // Abandoning is stepping down: the new declared primary waits for this token.
            acknowledge(ctx, topo, w, &topo.spec.primary, true).await?;
            Ok(Next::Continue)
        }
        Action::AcknowledgeDemotion { new_primary } => {
            acknowledge(ctx, topo, w, &new_primary, true).await?;
            Ok(Next::Continue)
        }
        Action::ReclaimPrimary { proof } => {
            // The term stays: no failover completed anywhere since this cluster held it.
            w.status.role = Some(Role::Primary);
            w.status.phase = Some(Phase::Steady);
            w.status.demotion = None;
            w.status.sync = None;
            let msg = format!("primary again without a runbook: nobody became primary since it stepped down ({proof})");
            set_condition(&mut w.status, "Ready", true, "Steady", &msg, generation);
            w.write().await?;
            info!(%proof, "primary role reclaimed");
            ctx.event(topo, EventType::Normal, "PrimaryReclaimed", "Reclaim", format!("{} is primary again; {peer_name} never became primary: {proof}", ctx.self_name())).await;
            Ok(Next::Continue)
        }
        Action::WaitForPeer { why } => {
            set_condition(&mut w.status, "Ready", false, "WaitingForPeer", &why, generation);
            Ok(Next::Requeue(WAIT_REQUEUE))
        }
        Action::WaitForPrimary { why } => wait_for_primary(ctx, topo, w, &why).await,
        Action::Mirror | Action::HoldAbandoned { mirror: true, .. } => {
            w.status.role = Some(Role::Standby);
            sync::standby(ctx, topo, w).await?;
            Ok(Next::Requeue(STEADY_REQUEUE))
        }
    }
}

async fn wait_for_primary(ctx: &Context, topo: &DRTopology, w: &mut StatusWriter, why: &str) -> Result<Next, Error> {
    let generation = topo.metadata.generation;
    sync::stop_replication(ctx, topo).await.map_err(|e| Error::Other(e.to_string()))?;
    if w.status.role.is_none() {
        w.status.role = Some(Role::Standby);
    }
    if w.status.phase != Some(Phase::Demoting) {
        w.status.phase = Some(Phase::Syncing);
    }
    set_condition(&mut w.status, "SyncHealthy", false, "WaitingForPrimary", why, generation);
    set_condition(&mut w.status, "Ready", false, "WaitingForPrimary", why, generation);
    Ok(Next::Requeue(WAIT_REQUEUE))
}

/// This cluster's failover in progress has used FinalSync's whole bound.
fn final_sync_used(status: &crate::topology::DRTopologyStatus, topo: &DRTopology) -> bool {
    let bound = failover::runbook::final_sync_bound(topo).timeout;
    status.failover.as_ref().and_then(|f| failover::final_sync_left(f, Timestamp::now(), bound)) == Some(Duration::ZERO)
}

/// `Degraded` says the pair holds after an abandoned failover (why, and how to retry); it is
/// cleared once the hold ends. A reclaim is the step between abandoning and holding.
fn abandon_condition(status: &mut crate::topology::DRTopologyStatus, action: &Action, generation: Option<i64>) {
    match action.abandoned_hold() {
        Some(why) => set_condition(status, "Degraded", true, "FailoverAbandoned", why, generation),
        None if matches!(action, Action::ReclaimPrimary { .. }) => {}
        None => {
            if status.conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "True") {
                set_condition(status, "Degraded", false, "Resolved", "no abandoned failover holds the pair", generation);
            }
        }
    }
}

/// Whether the verify resolvers answer exactly this cluster's VIP for the platform domain:
/// `Some(true)` when all do, `Some(false)` when one answered something else, None when that is
/// unknown (no resolver answered, no resolvers configured).
async fn dns_points_here(topo: &DRTopology, self_name: &str) -> (Option<bool>, String) {
    let Some(vip) = topo.spec.cluster(self_name).and_then(|c| c.vip.parse::<std::net::IpAddr>().ok()) else {
        return (None, "this cluster has no valid VIP in spec.clusters".into());
    };
    let resolvers = match crate::dns::verify_resolvers(&topo.spec.dns) {
        Ok(r) => r,
        Err(e) => return (None, e.to_string()),
    };
    let answers = crate::dns::ask_all(&resolvers, &topo.spec.platform.domain, Duration::from_secs(2)).await;
    let elsewhere = answers.iter().any(|a| matches!(&a.result, Ok(ips) if ips != &[vip]));
    let all_here = !answers.is_empty() && answers.iter().all(|a| matches!(&a.result, Ok(ips) if ips == &[vip]));
    let here = if elsewhere { Some(false) } else { all_here.then_some(true) };
    let ok = here == Some(true);
    let said: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
    let msg = if ok {
        format!("{} resolves to {vip} ({})", topo.spec.platform.domain, said.join("; "))
    } else {
        format!("{} should resolve to {vip}: {}", topo.spec.platform.domain, said.join("; "))
    };
    (here, msg)
}

/// Writes the demotion token: this cluster stops acting as primary and tells the new primary
/// its final etcd revision, so a planned switchover can catch up to exactly that point. A
/// cluster that never `served` (an abandoned failover) keeps its mirror's status and has no
/// `when: demotion` restarts to run.
async fn acknowledge(ctx: &Context, topo: &DRTopology, w: &mut StatusWriter, new_primary: &str, served: bool) -> Result<(), Error> {
    let new_primary = new_primary.to_string();
    let (final_revision, cluster_id) = match sync::own_revision(ctx, topo).await {
        Ok((rev, id)) => (Some(rev), Some(id)),
        Err(e) => {
            warn!(error = %e, "cannot read own etcd revision for the demotion token");
            (None, None)
        }
    };
    w.status.role = Some(Role::Standby);
    w.status.phase = Some(Phase::Demoting);
    if served {
        w.status.sync = None;
    }
    w.status.demotion = Some(crate::topology::DemotionStatus {
        new_primary: new_primary.clone(),
        final_revision,
        cluster_id,
        acknowledged_at: Some(Timestamp::now().to_string()),
        restarts_done: !served,
    });
    set_condition(&mut w.status, "Ready", false, "Demoting", &format!("stepped down for {new_primary}"), topo.metadata.generation);
    w.write().await?;
    let rev = final_revision.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into());
    ctx.event(topo, EventType::Normal, "DemotionAcknowledged", "Demote", format!("{} stepped down for {new_primary} at revision {rev}", ctx.self_name())).await;
    // The workloads now run on the new primary only (its controllers make their own pods).
    stop_replicated_pods(ctx, topo, "Demote").await;
    Ok(())
}

/// Deletes this cluster's pods of replicated workloads (`crate::workloads`) and says so in a
/// `ReplicatedPodsStopped` Event; a failure is logged, not fatal (the next check tries again).
pub(crate) async fn stop_replicated_pods(ctx: &Context, topo: &DRTopology, action: &str) {
    match crate::workloads::stop_replicated_pods(&ctx.client, &sync::filter_for(topo, &ctx.args.namespace)).await {
        Ok(0) => {}
        Ok(n) => {
            let note = format!("deleted this cluster's {n} pods of replicated workloads: they run on {} only", topo.spec.primary);
            ctx.event(topo, EventType::Normal, "ReplicatedPodsStopped", action, note).await;
        }
        Err(e) => warn!(error = %e, "cannot stop this cluster's pods of replicated workloads"),
    }
}

/// A fenced standby refuses writes to replicated data; a primary (or fencing disabled) lifts the
/// fence. Follows the declared role, so an old primary is fenced before it writes its demotion
/// token (no write can land after its final revision); a new primary stays fenced until its
/// failover has stopped replicating (StopSync lifts it, before the hooks, DNS and restarts), so
/// its own controllers never act on data the mirror is still writing. Re-applied every minute in
/// case something removed it.
async fn fence_as_declared(ctx: &Context, topo: &DRTopology, status: &crate::topology::DRTopologyStatus, action: &Action) {
    let stopped_sync = status.failover.as_ref().is_some_and(|f| {
        f.to == ctx.self_name()
            && f.completed_at.is_none()
            && f.aborted.is_none()
            && f.steps.iter().any(|s| s.name == Step::StopSync.name() && matches!(s.state, StepState::Succeeded | StepState::Skipped))
    });
    let fenced = fence_wanted(&FenceFacts {
        enabled: topo.spec.sync.fence.enabled,
        declared_primary: topo.spec.primary == ctx.self_name(),
        dry_run: topo.spec.failover.dry_run,
        role: status.role,
        stopped_sync,
        holds_primary: matches!(action, Action::HoldPrimary { .. }),
    });
    let want = fenced.then(|| topo.spec.primary.clone());
    let mut last = ctx.fenced.lock().await;
    if last.as_ref().is_some_and(|(w, at)| w == &want && at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    let result = match &want {
        Some(_) => crate::fence::apply(&ctx.client, topo, &ctx.args.namespace).await,
        None => crate::fence::remove(&ctx.client, topo).await,
    };
    match result {
        Ok(()) => {
            if last.as_ref().map(|(w, _)| w) != Some(&want) {
                info!(fenced = want.is_some(), "fence reconciled");
            }
            *last = Some((want, std::time::Instant::now()));
        }
        Err(e) => warn!(error = %e, "fence not reconciled; will retry"),
    }
}

/// What decides whether this cluster is fenced.
#[derive(Debug, Clone, Copy)]
pub struct FenceFacts {
    pub enabled: bool,
    /// `spec.primary` names this cluster.
    pub declared_primary: bool,
    pub dry_run: bool,
    pub role: Option<Role>,
    /// This cluster's failover (in progress) has stopped replicating.
    pub stopped_sync: bool,
    /// The primary role is held for a peer that abandoned its failover (`spec.primary` names
    /// the peer).
    pub holds_primary: bool,
}

/// Whether this cluster should be fenced now: a declared standby is; a standby declared primary
/// is until its failover has stopped replicating; a dry run keeps the role it has; a cluster
/// that never was a standby (bootstrap) never is; a primary holding the role for a peer that
/// abandoned its failover is not.
pub fn fence_wanted(f: &FenceFacts) -> bool {
    if !f.enabled || f.holds_primary {
        return false;
    }
    if f.dry_run {
        return f.role != Some(Role::Primary);
    }
    !f.declared_primary || (f.role == Some(Role::Standby) && !f.stopped_sync)
}

/// The newest commit of the GitOps repo that made `to` the primary, when the repo is configured
/// and readable; failing to read it never blocks a failover.
fn flipping_commit(args: &ControllerArgs, to: &str) -> Option<crate::gitops::HistoryEntry> {
    let repo = args.git_repo.as_ref()?;
    match crate::gitops::history(repo, &args.git_file) {
        Ok(entries) => entries.into_iter().find(|e| e.to == to),
        Err(e) => {
            warn!(error = %e, repo = %repo.display(), "cannot read the GitOps history");
            None
        }
    }
}

/// The name of an older DRTopology than `topo`, if any (oldest wins; ties by name).
async fn oldest_other(api: &Api<DRTopology>, topo: &DRTopology) -> Result<Option<String>, Error> {
    let oldest = crate::topology::oldest(api.list(&Default::default()).await?.items);
    Ok(oldest.map(|t| t.name_any()).filter(|n| *n != topo.name_any()))
}

/// sha256 of this cluster's encryption config, published so the peer can compare before
/// failing over; None (with one warning per distinct error) when it cannot be read.
async fn own_fingerprint(ctx: &Context, topo: &DRTopology) -> Option<String> {
    let i = topo.spec.clusters.iter().position(|c| c.name == ctx.self_name())?;
    let field = format!("spec.clusters[{i}].encryptionConfigPath");
    let path = PathBuf::from(&topo.spec.clusters[i].encryption_config_path);
    let result = crate::files::fingerprint_bounded(ctx.fingerprints.clone(), field, path).await;
    let error = result.as_ref().err().map(ToString::to_string);
    if let Ok(mut last) = ctx.fingerprint_error.lock() {
        if *last != error {
            if let Some(e) = &error {
                warn!(error = %e, "encryption config not fingerprinted; the peer's preflight will not compare it");
            }
            *last = error;
        }
    }
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_follows_the_declared_role_and_lifts_only_after_the_new_primary_stopped_sync() {
        let facts = |enabled, declared_primary, dry_run, role, stopped_sync| FenceFacts { enabled, declared_primary, dry_run, role, stopped_sync, holds_primary: false };
        use Role::{Primary, Standby};
        let cases = [
            // (facts, fenced, rule)
            (facts(false, false, false, Some(Standby), false), false, "disabled: never"),
            (facts(true, false, false, Some(Standby), false), true, "a declared standby is fenced"),
            (facts(true, false, false, Some(Primary), false), true, "an old primary is fenced before its demotion token"),
            (facts(true, false, false, None, false), true, "a new standby is fenced before it mirrors"),
            (facts(true, true, false, Some(Standby), false), true, "a failing-over standby stays fenced while the mirror writes"),
            (facts(true, true, false, Some(Standby), true), false, "StopSync lifts it, before the platform must act"),
            (facts(true, true, false, Some(Primary), false), false, "a primary is not fenced"),
            (facts(true, true, false, None, false), false, "bootstrap: a cluster that never was standby"),
            (facts(true, true, true, Some(Standby), false), true, "dry run keeps the standby fenced"),
            (facts(true, false, true, Some(Primary), false), false, "dry run keeps the primary writable"),
            (FenceFacts { holds_primary: true, ..facts(true, false, false, Some(Primary), false) }, false, "a primary holding the role for a peer that abandoned its failover is writable"),
            (facts(true, true, false, Some(Standby), false), true, "the peer that abandoned (declared primary, standby, sync not stopped) stays fenced"),
        ];
        for (f, want, rule) in cases {
            assert_eq!(fence_wanted(&f), want, "{rule}: {f:?}");
        }
    }

    #[test]
    fn degraded_says_an_abandoned_failover_holds_and_clears_once_it_does_not() {
        let degraded = |s: &crate::topology::DRTopologyStatus| s.conditions.iter().find(|c| c.type_ == "Degraded").map(|c| (c.status.clone(), c.reason.clone()));
        let hold = Action::HoldPrimary { why: "b abandoned".into() };
        let reclaim = Action::ReclaimPrimary { proof: "terms".into() };
        let mut st = crate::topology::DRTopologyStatus::default();
        abandon_condition(&mut st, &Action::StayPrimary, None);
        assert_eq!(degraded(&st), None, "never added while nothing was abandoned");
        abandon_condition(&mut st, &hold, None);
        assert_eq!(degraded(&st), Some(("True".into(), "FailoverAbandoned".into())), "a hold sets it");
        abandon_condition(&mut st, &reclaim, None);
        assert_eq!(degraded(&st), Some(("True".into(), "FailoverAbandoned".into())), "a reclaim is the step into a hold: left as it is");
        abandon_condition(&mut st, &Action::AcknowledgeDemotion { new_primary: "b".into() }, None);
        assert_eq!(degraded(&st), Some(("False".into(), "Resolved".into())), "the peer retried: cleared");
    }

    #[test]
    fn event_notes_are_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(event_note("short".into()), "short");
        let exact = "x".repeat(EVENT_NOTE_LIMIT);
        assert_eq!(event_note(exact.clone()), exact);
        // 'é' is two bytes: every cut point lands inside or after one.
        for pad in 0..3 {
            let long = format!("{}{}", "a".repeat(pad), "é".repeat(EVENT_NOTE_LIMIT));
            let note = event_note(long.clone());
            assert!(note.len() <= EVENT_NOTE_LIMIT, "{}", note.len());
            assert!(note.ends_with('…') && long.starts_with(note.trim_end_matches('…')));
        }
    }
}
