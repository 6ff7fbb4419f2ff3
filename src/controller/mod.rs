//! `drctl controller`: runs in each global, reconciles the one DRTopology.
//!
//! Reconcile is a pipeline (the Stackable shape): read fresh → validate → observe the peer →
//! plan (pure, `decide::plan`) → act → write status, looping until the plan says "wait".
//! Acting gathers the facts an action needs (I/O), takes the new status from
//! `decide::transition` (pure), writes it and publishes the Events; runbook steps are executed
//! by `failover::runbook`. Status is written with server-side apply, and before and after every
//! runbook step, so a controller killed at any point re-plans from status and resumes where it
//! stopped. A failed reconcile is retried by the kind of its error (`decide::retry`).

pub mod args;
pub mod context;
pub mod error;
pub mod peer;
pub mod replication;
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
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::{predicates, reflector, watcher, Predicate, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tracing::{debug, info, info_span, warn, Instrument};

pub use args::{parse_duration_arg, ControllerArgs};
pub use context::Context;
use context::FenceApplied;
pub use error::Error;

use crate::decide::conditions::{set_condition, ConditionType, Reason};
use crate::decide::fence::{fence_wanted, settle_left, stopped_sync, FenceFacts};
use crate::decide::follow_role::{self, RoleFacts};
use crate::decide::plan::{self, Action, Observed, PeerView, Step, BREAK_GLASS_ANNOTATION, RETRY_ANNOTATION};
use crate::decide::retry::{retry, Retry};
use crate::decide::standby::Thresholds;
use crate::decide::transition::{transition, Facts, FlipCommit};
use crate::failover::runbook::{self, Runbook};
use crate::http;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::topology::{ApplicationsState, ApplicationsStatus, DRTopology, Phase, Role};
use crate::validated::ValidatedTopology;
use status::StatusWriter;
use sync::Stopping;

pub async fn run(mut args: ControllerArgs) -> anyhow::Result<()> {
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let sa_file = std::path::Path::new(args::SERVICE_ACCOUNT_NAMESPACE_FILE);
    let (namespace, from) = args::resolve_namespace(args.namespace_flag.as_deref(), pod_namespace.as_deref(), sa_file).map_err(anyhow::Error::msg)?;
    info!(namespace, from, "controller namespace");
    args.namespace = namespace;
    let client = client(args.kubeconfig.as_deref()).await?;
    let identity = args.identity.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let metrics = Arc::new(Metrics::new(&args.cluster_name));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter = Reporter { controller: "drctl".into(), instance: Some(identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        sync: Arc::default(),
        act_lock: Mutex::new(()),
        fenced: Mutex::new(None),
        watchdog: Arc::default(),
        fingerprints: Arc::default(),
        fingerprint_error: std::sync::Mutex::new(None),
        failures: std::sync::Mutex::default(),
        preflight: Default::default(),
        drill: Default::default(),
        heartbeat: Arc::default(),
        args: args.clone(),
    });
    let check_access = http::CheckAccess::from_args(args.listen, args.check_token_file.as_deref());
    let probes = http::Probes { metrics: metrics.clone(), watchdog: ctx.watchdog.clone(), sync: ctx.sync.clone(), ready: ready.clone() };
    let server = tokio::spawn(http::serve(args.listen, check_access, probes));

    // Two replicas never both act: only the Lease holder runs the controller.
    let elector = Arc::new(LeaderElector::new(
        client.clone(),
        &args.namespace,
        &format!("drctl-{}", args.cluster_name),
        &identity,
        Duration::from_secs(args.lease_seconds),
    ));
    info!(identity, cluster = %args.cluster_name, "waiting for leadership");
    let renewed = elector.acquire().await?;
    metrics.became_leader();
    info!(identity, "leading");
    // A task of its own: the reconciles run in this one, and a long poll there must not delay a
    // renewal (or the give-up that ends the lead in time).
    let mut lost = tokio::spawn({
        let elector = elector.clone();
        async move { elector.keep_renewing(renewed).await }
    });
    tokio::spawn(crate::heartbeat::run(ctx.heartbeat.clone(), ActLock(ctx.clone())));
    ready.store(true, std::sync::atomic::Ordering::SeqCst);

    let api: Api<DRTopology> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    // Only a change of the spec (generation) or of the annotations (retry, manual DNS) starts a
    // reconcile: our own status writes would otherwise wake it at once, cutting short every
    // requeue interval and error backoff. Every reconcile ends in a requeue, so nothing waits
    // on a status change.
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::annotations), Default::default());
    let controller = Controller::for_stream(changes, reader).shutdown_on_signal().run(reconcile, error_policy, ctx.clone()).for_each(|res| async move {
        if let Err(e) = res {
            warn!(error = %e, "reconcile failed");
        }
    });
    tokio::select! {
        _ = controller => info!("controller stopped"),
        e = &mut lost => match e {
            Ok(e) => anyhow::bail!("lost leadership: {e}"),
            Err(e) => anyhow::bail!("lost leadership: the lease's renewal task ended: {e}"),
        },
        r = server => anyhow::bail!("http server stopped: {r:?}"),
    }
    // No renewal after the release below.
    lost.abort();
    let _ = (&mut lost).await;
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
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "drctl".into())
}

fn error_policy(obj: Arc<DRTopology>, err: &Error, ctx: Arc<Context>) -> Requeue {
    let kind = err.kind();
    ctx.metrics.reconcile_failed(kind);
    let failures = ctx.failed(&obj.name_any());
    match retry(kind, failures, err.due()) {
        Retry::After(d) => {
            warn!(error = %err, kind = kind.label(), failures, retry_in_seconds = d.as_secs(), "reconcile error; retrying");
            Requeue::requeue(d)
        }
        Retry::AwaitChange => {
            warn!(error = %err, kind = kind.label(), "reconcile error; retried once the DRTopology changes");
            Requeue::await_change()
        }
    }
}

/// How often a standby refreshes lag and status while nothing else happens.
const STEADY_REQUEUE: Duration = Duration::from_secs(5);
const WAIT_REQUEUE: Duration = Duration::from_secs(2);
/// How often an unchanged spec that is held (invalid, dry run, a steady primary) is looked at.
const HOLD_REQUEUE: Duration = Duration::from_secs(30);

async fn reconcile(obj: Arc<DRTopology>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let name = obj.name_any();
    let span = info_span!("reconcile", topology = %name, cluster = %ctx.self_name());
    let result = reconcile_loop(&name, &ctx).instrument(span).await;
    if result.is_ok() {
        ctx.succeeded(&name);
    }
    result
}

async fn reconcile_loop(name: &str, ctx: &Arc<Context>) -> Result<Requeue, Error> {
    let _guard = ctx.act_lock.lock().await;
    // No heartbeat until this reconcile ends knowing the role (it may demote).
    ctx.heartbeat.disarm();
    let _busy = ctx.watchdog.start();
    let api: Api<DRTopology> = Api::all(ctx.client.clone());
    let mut writer: Option<StatusWriter> = None;
    // A peer that did not answer is not asked again in the same pass: each ask waits out the
    // peer timeout (4 s), and a partitioned failover of ten steps spent 40 s on nothing but
    // that (a 10 s demotionTimeout became a 63 s failover). The next reconcile asks again.
    let mut peer_down = false;
    // Plan and act until the plan says wait. The object is read again before every action:
    // the watch cache may trail our own status writes, and a flip back must be seen between
    // two runbook steps, not after the whole runbook.
    loop {
        let Some(topo) = api.get_opt(name).await? else { return Ok(Requeue::await_change()) };
        let w = match writer.as_mut() {
            Some(w) => w,
            None => writer.insert(remembering(ctx, &api, &topo).await?),
        };
        w.status.observed_generation = topo.metadata.generation;
        if let Some(older) = oldest_other(&api, &topo).await? {
            let msg = format!("only the oldest DRTopology is acted on; {older} is older: delete one of them");
            set_condition(&mut w.status, ConditionType::Valid, false, Reason::NotTheOnlyTopology, &msg, topo.metadata.generation);
            w.status.phase = Some(Phase::Invalid);
            w.write().await?;
            return Ok(Requeue::requeue(Duration::from_secs(60)));
        }
        w.status.encryption_config_sha256 = own_fingerprint(ctx, &topo).await;
        // Parsed once: from here on the spec is read typed.
        let parsed = parse(&topo, ctx.self_name());
        let invalid = record_validity(&mut w.status, parsed.as_ref().err().map(Vec::as_slice).unwrap_or_default(), topo.metadata.generation);
        let v = parsed.as_ref().ok();
        let peer_name = v.and_then(|v| v.spec.peer_of(ctx.self_name())).map(|c| c.name.clone()).unwrap_or_default();
        // An invalid spec is not acted on: not even the peer is asked.
        let peer = match v {
            Some(v) if !peer_down => observe_peer(ctx, v, &peer_name, w).await,
            _ => PeerView::Unreachable,
        };
        peer_down = peer == PeerView::Unreachable;
        let status_now = w.status.clone();
        let mut observed = Observed {
            self_name: ctx.self_name(),
            peer_name: &peer_name,
            spec_primary: &topo.spec.primary,
            invalid,
            dry_run: v.is_some_and(|v| v.spec.failover.dry_run),
            status: Some(&status_now),
            peer: peer.clone(),
            dns_here: None,
            dns_at_peer: false,
            now: Timestamp::now(),
            final_sync: v.map(|v| v.spec.failover.final_sync).unwrap_or_default(),
            generation: topo.metadata.generation,
            retry: topo.annotations().get(RETRY_ANNOTATION).map(String::as_str),
        };
        // Asked while acting as primary (DNS answering the peer outranks it) and when a
        // reclaim is possible (never while DNS is known to point elsewhere).
        let mut dns = None;
        if let Some(v) = v.filter(|_| plan::asks_dns(&observed)) {
            let seen = dns_points_here(v, ctx.self_name(), &peer_name).await;
            (observed.dns_here, observed.dns_at_peer) = (seen.here, seen.at_peer);
            dns = Some(seen);
        }
        let action = plan::plan(&observed);
        debug!(?action, "planned");
        // Invalid: the planner held, and that is all until the spec changes.
        let Some(v) = v else {
            w.status = transition(&action, &w.status, &facts(ctx, &topo, &peer_name));
            return finish(ctx, &topo, w, HOLD_REQUEUE).await;
        };
        if action != Action::Hold {
            // After the plan: a primary holding the role for a peer that abandoned its failover
            // is not fenced, though spec.primary names the peer. Still before any action, so an
            // old primary is fenced before it writes its demotion token: a token written while
            // the fence failed would promise a final revision that later writes pass.
            let fenced = fence_as_declared(ctx, v, &w.status, &action).await;
            // With the fence, whatever came of it: a held Application only spares the fence
            // (and the mirror) a fight, so it never blocks a step.
            applications_as_declared(ctx, v, w, &action).await;
            let steps_down = matches!(action, Action::AcknowledgeDemotion { .. } | Action::StandDown { .. });
            let reads_final_revision = steps_down || matches!(action, Action::AbandonFailover { .. } | Action::AbortFailover { .. });
            match fenced {
                Err(e) if steps_down => return Err(Error::Fence(e)),
                // Not before the fence is enforced: a write it still let through would land
                // after the final revision the token promises, and the new primary would not
                // catch up to it.
                Ok(fenced_for) if reads_final_revision => {
                    if let Some(left) = settle_left(fenced_for) {
                        debug!(?left, "waiting for the fence to be enforced before reading the final revision");
                        return finish(ctx, &topo, w, left).await;
                    }
                }
                _ => {}
            }
        }
        ctx.watchdog.beat(watchdog::step_budget(&action, &v.spec));
        match act(ctx, v, w, action, &peer, &peer_name, dns).await? {
            Next::Continue => continue,
            Next::Requeue(d) => return finish(ctx, &topo, w, d).await,
        }
    }
}

/// The status writer of `topo`, with its role memory read; a status found without a role (the
/// DRTopology deleted and re-created) starts from the memory, so a lost status never makes a
/// standby bootstrap as a second primary.
async fn remembering(ctx: &Context, api: &Api<DRTopology>, topo: &DRTopology) -> Result<StatusWriter, Error> {
    let memory: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.args.namespace);
    let mut w = StatusWriter::new(api.clone(), topo, ctx.self_name(), memory);
    // Only an empty status needs the memory: with a role in status, an unreadable memory (say,
    // RBAC not updated yet) is a warning; without one, planning from nothing is what it prevents.
    let recalled = match w.recall().await {
        Ok(m) => m,
        Err(e) if w.status.role.is_some() => {
            warn!(error = %e, "role memory not read");
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(m) = recalled.filter(|m| w.status.role.is_none() && !m.is_empty()) {
        let restored = crate::decide::memory::restore(&m);
        let msg = format!(
            "status found empty; restored from ConfigMap {}/{}: role {:?}, term {}, peer term {}{}",
            ctx.args.namespace,
            StatusWriter::memory_name(&topo.name_any()),
            m.role,
            m.term,
            m.peer_term,
            m.demoted_for.as_ref().map(|n| format!(", stepped down for {n}")).unwrap_or_default()
        );
        warn!(%msg, "status restored");
        w.status = crate::topology::DRTopologyStatus { observed_generation: topo.metadata.generation, ..restored };
        ctx.event_on(topo, EventType::Warning, "StatusRestored", "Reconcile", msg).await;
    }
    Ok(w)
}

/// Writes the status and its metrics, and requeues after `after`.
async fn finish(ctx: &Context, topo: &DRTopology, w: &mut StatusWriter, after: Duration) -> Result<Requeue, Error> {
    refresh_preflight(ctx, topo, w);
    let drill = drill_duty(ctx, topo, w).await;
    heartbeat_duty(ctx, topo, &w.status).await;
    w.write().await?;
    // Started once `status.lastDrill` records its id: a controller restarted from here on
    // finds it unfinished and never runs it again.
    if let Some((id, v)) = drill {
        let (client, me, opts) = (ctx.client.clone(), ctx.self_name().to_string(), crate::drill::Options::new(&ctx.args.namespace));
        info!(id, "drill started");
        ctx.drill.start(id, tokio::spawn(async move { (crate::drill::run_drill(&client, &v, &me, &opts).await, Timestamp::now()) }));
    }
    ctx.metrics.observe_status(&w.status);
    ctx.metrics.observe_thresholds(&Thresholds::of(topo));
    ctx.metrics.writes_below_floor.inc_by(ctx.sync.take_writes_below_floor());
    Ok(Requeue::requeue(after))
}

/// The reconcile lock, as the heartbeat task takes it.
struct ActLock(Arc<Context>);

impl std::ops::Deref for ActLock {
    type Target = tokio::sync::Mutex<()>;
    fn deref(&self) -> &Self::Target {
        &self.0.act_lock
    }
}

/// What the heartbeat task does until the next reconcile: write beats as the steady primary
/// spec.primary names, read them as a standby, nothing otherwise.
async fn heartbeat_duty(ctx: &Context, topo: &DRTopology, st: &crate::topology::DRTopologyStatus) {
    use crate::heartbeat::Duty;
    let me = ctx.self_name();
    let write = st.role == Some(Role::Primary) && st.phase == Some(Phase::Steady) && topo.spec.primary == me;
    let read = st.role == Some(Role::Standby);
    if !(write || read) {
        return ctx.heartbeat.set(None);
    }
    let name = topo.name_any();
    let Ok(v) = parse(topo, me) else { return ctx.heartbeat.set(None) };
    let Some(c) = v.spec.cluster(me) else { return ctx.heartbeat.set(None) };
    // The Secret is read on every reconcile: a certificate rotated in place is used at once.
    match crate::etcd::cluster_endpoint(&crate::secret::KubeSecrets::new(ctx.client.clone()), c).await {
        Ok(etcd) if ctx.heartbeat.is(write, &name, &etcd) => ctx.heartbeat.rearm(),
        Ok(etcd) if write => ctx.heartbeat.set(Some(Duty::Write { topology: name, cluster: me.to_string(), etcd })),
        Ok(etcd) => ctx.heartbeat.set(Some(Duty::Read { topology: name, etcd })),
        Err(e) => {
            warn!(error = %e, "replication heartbeat: this cluster's etcd endpoint not built");
            // A standby goes on reading where it did (a Secret read that failed once must not
            // turn its lag unknown); a primary writes nothing it could not vouch for.
            if write {
                ctx.heartbeat.set(None);
            }
        }
    }
}

/// Starts the scheduled preflight when due and records a finished run in `Preflight` (an
/// invalid spec is not checked: `Valid` says what is wrong).
fn refresh_preflight(ctx: &Context, topo: &DRTopology, w: &mut StatusWriter) {
    let Ok(v) = parse(topo, ctx.self_name()) else { return };
    let (client, me) = (ctx.client.clone(), ctx.self_name().to_string());
    let opts = crate::preflight::Options { timeout: Duration::from_secs(5), probe_hooks: false };
    let rows =
        ctx.preflight.poll(ctx.args.preflight_interval, move || tokio::spawn(async move { crate::preflight::run_checks(&client, &v, &me, &opts).await }));
    if let Some(rows) = rows {
        let (ok, reason, msg) = crate::preflight::condition(&rows);
        set_condition(&mut w.status, ConditionType::Preflight, ok, reason, &msg, topo.metadata.generation);
    }
}

/// Records a drill that finished (status, Event), and one a restarted controller left
/// unfinished; returns the drill to start when annotation `drctl.io/drill` names a new id (an
/// invalid spec is recorded as that drill's failure, not run).
async fn drill_duty(ctx: &Context, topo: &DRTopology, w: &mut StatusWriter) -> Option<(String, ValidatedTopology)> {
    use crate::drill::{self, Duty};
    let now = Timestamp::now();
    if let Some((id, result, ended)) = ctx.drill.take_finished() {
        match w.status.last_drill.as_ref().filter(|d| d.id == id) {
            Some(running) => {
                let done = drill::record(running, &result, ended);
                drill_event(ctx, topo, &done).await;
                w.status.last_drill = Some(done);
            }
            None => warn!(id, "a finished drill no longer in status.lastDrill: its report is dropped"),
        }
    }
    let requested = topo.annotations().get(drill::DRILL_ANNOTATION).map(String::as_str);
    if drill::duty(requested, w.status.last_drill.as_ref(), ctx.drill.is_running()) == Duty::Interrupted {
        if let Some(running) = w.status.last_drill.as_ref() {
            let done = drill::record(running, &Err("interrupted: the controller stopped before the drill finished; annotate a new id to run one".into()), now);
            drill_event(ctx, topo, &done).await;
            w.status.last_drill = Some(done);
        }
    }
    let Duty::Start(id) = drill::duty(requested, w.status.last_drill.as_ref(), ctx.drill.is_running()) else { return None };
    let running = drill::started(&id, now, w.status.last_drill.as_ref());
    match parse(topo, ctx.self_name()) {
        Ok(v) => {
            ctx.event_on(topo, EventType::Normal, "DrillStarted", "Drill", format!("drill {id} started on {}", ctx.self_name())).await;
            w.status.last_drill = Some(running);
            Some((id, v))
        }
        Err(errors) => {
            let done = drill::record(&running, &Err(format!("the spec is invalid: {}", errors.join("; "))), now);
            drill_event(ctx, topo, &done).await;
            w.status.last_drill = Some(done);
            None
        }
    }
}

async fn drill_event(ctx: &Context, topo: &DRTopology, d: &crate::topology::DrillStatus) {
    let (warning, reason, note) = crate::drill::event(d);
    info!(id = d.id, passed = d.passed, "drill finished");
    ctx.event_on(topo, if warning { EventType::Warning } else { EventType::Normal }, reason, "Drill", note).await;
}

/// The spec as this controller acts on it, or what is wrong with it: every validation error,
/// and a `--cluster-name` the spec does not list.
fn parse(topo: &DRTopology, self_name: &str) -> Result<ValidatedTopology, Vec<String>> {
    let mut msgs = Vec::new();
    let parsed = ValidatedTopology::try_from(topo).map_err(|errs| msgs.extend(errs.iter().map(ToString::to_string)));
    if topo.spec.cluster(self_name).is_none() {
        msgs.push(format!("spec.clusters: no cluster is named {self_name:?} (this controller's --cluster-name)"));
    }
    match parsed {
        Ok(v) if msgs.is_empty() => Ok(v),
        _ => Err(msgs),
    }
}

/// Records the spec's validity in `Valid` (and, when invalid, `Ready` and the phase); true when
/// invalid. An invalid spec never starts (or continues) a failover: the planner holds.
fn record_validity(status: &mut crate::topology::DRTopologyStatus, errors: &[String], generation: Option<i64>) -> bool {
    if errors.is_empty() {
        set_condition(status, ConditionType::Valid, true, Reason::Valid, "the spec passed validation", generation);
        return false;
    }
    set_condition(status, ConditionType::Valid, false, Reason::InvalidSpec, &errors.join("; "), generation);
    set_condition(status, ConditionType::Ready, false, Reason::InvalidSpec, "the spec is invalid; nothing is done until it is fixed", generation);
    status.phase = Some(Phase::Invalid);
    true
}

/// Reads the peer for the planner, recording `PeerReachable` and the peer's term.
async fn observe_peer(ctx: &Context, topo: &ValidatedTopology, peer_name: &str, w: &mut StatusWriter) -> PeerView {
    let (peer, peer_err) = peer::observe(&ctx.client, topo, peer_name).await;
    let generation = topo.generation();
    match &peer_err {
        None => set_condition(&mut w.status, ConditionType::PeerReachable, true, Reason::Reachable, &format!("{peer_name} answered"), generation),
        Some(e) => set_condition(&mut w.status, ConditionType::PeerReachable, false, Reason::Unreachable, e, generation),
    }
    if let Some(p) = peer.reachable() {
        // A standby learns the term of the primary it follows, so a disaster failover (the
        // primary gone) still takes a higher one.
        w.status.peer_term = w.status.peer_term.max(p.term);
    }
    peer
}

enum Next {
    Continue,
    Requeue(Duration),
}

/// Executes one planned action: the I/O it needs first (stopping replication, reading DNS,
/// etcd or the GitOps repo), then the status `transition` says, then its write and Events.
async fn act(
    ctx: &Arc<Context>,
    topo: &ValidatedTopology,
    w: &mut StatusWriter,
    action: Action,
    peer: &PeerView,
    peer_name: &str,
    dns: Option<DnsSeen>,
) -> Result<Next, Error> {
    let mut facts = facts(ctx, topo.object(), peer_name);
    let stop_replication = |why| async move { sync::stop_replication(ctx, topo, why).await.map_err(Error::StopReplication) };
    match &action {
        Action::BootstrapPrimary => stop_replication(Stopping::AsPrimary).await?,
        // A standby stopping its mirror cancels the periodic check; what it finished or repaired
        // is recorded now, in this pass.
        Action::WaitForPrimary { .. } | Action::HoldAbandoned { mirror: false, .. } => {
            stop_replication(Stopping::AsStandby).await?;
            sync::collect_periodic(ctx, topo, &mut w.status).await;
        }
        Action::StayPrimary | Action::HoldPrimary { .. } => {
            stop_replication(Stopping::AsPrimary).await?;
            let seen = match dns {
                Some(seen) => seen,
                None => dns_points_here(topo, ctx.self_name(), peer_name).await,
            };
            (facts.dns_here, facts.dns_message) = (seen.here, seen.message);
        }
        Action::DryRun { would } => {
            facts.dry_run_plan = match would.as_ref() {
                Action::StartFailover { .. } => format!("would fail over to {}:\n{}", ctx.self_name(), runbook::describe(topo, ctx.self_name(), peer)),
                other => format!("would {other:?}"),
            };
        }
        Action::StartFailover { .. } => {
            facts.commit = flipping_commit(&ctx.args, ctx.self_name());
            facts.break_glass = topo.annotations().get(BREAK_GLASS_ANNOTATION).map(String::as_str);
        }
        Action::AbandonFailover { .. } | Action::AbortFailover { .. } | Action::AcknowledgeDemotion { .. } | Action::StandDown { .. } => {
            facts.own_head = match sync::own_revision(ctx, topo).await {
                Ok(head) => Some(head),
                Err(e) => {
                    warn!(error = %e, "cannot read own etcd revision for the demotion token");
                    None
                }
            };
        }
        _ => {}
    }
    w.status = transition(&action, &w.status, &facts);
    match action {
        Action::Hold | Action::DryRun { .. } => Ok(Next::Requeue(HOLD_REQUEUE)),
        Action::BootstrapPrimary => {
            w.write().await?;
            let term = w.status.term;
            ctx.event(topo, EventType::Normal, "BecamePrimary", "Bootstrap", format!("{} is the primary, term {term}", ctx.self_name())).await;
            Ok(Next::Continue)
        }
        // Holding for a peer that abandoned: step down soon after it retries (its Demote waits).
        Action::HoldPrimary { .. } => Ok(Next::Requeue(WAIT_REQUEUE)),
        // Looked at every few seconds: a primary outranked (a higher term, DNS answering the
        // peer) must stand down within seconds.
        Action::StayPrimary => Ok(Next::Requeue(STEADY_REQUEUE)),
        Action::RepairDns { why } => {
            w.write().await?;
            let note = match repair_dns(ctx, topo).await {
                Ok(done) => format!("{why}; {done}"),
                Err(e) => format!("{why}; the switch back failed (retried in {}s): {e}", STEADY_REQUEUE.as_secs()),
            };
            warn!(%note, "DNS answered the follower");
            ctx.event(topo, EventType::Warning, "DNSRepaired", "SwitchDNS", note).await;
            Ok(Next::Requeue(STEADY_REQUEUE))
        }
        Action::StartFailover { why } => {
            w.write().await?;
            ctx.metrics.failovers.inc();
            info!(%why, "full failover");
            ctx.event(topo, EventType::Normal, "FailoverStarted", "Failover", format!("failover {peer_name} -> {} started: {why}", ctx.self_name())).await;
            Ok(Next::Continue)
        }
        Action::RunStep(step) => {
            let mut rb = Runbook { ctx, topo, peer_name, status: w };
            match rb.run(step).await {
                // A step waiting for a condition: the next look is another reconcile, which plans
                // again first (a flip back is seen mid-step).
                Ok(runbook::StepRun::Waiting(after)) => Ok(Next::Requeue(after)),
                Ok(runbook::StepRun::Finished) => Ok(Next::Continue),
                // A failed FinalSync attempt is tried again no later than its bound ends, and once
                // the bound is used the planner applies its policy now: a backoff (up to a
                // minute) past the bound would hold the pair without a primary for nothing.
                Err(e) => match runbook::final_sync_left_now(&w.status, topo).filter(|_| step == Step::FinalSync) {
                    Some(Duration::ZERO) => Ok(Next::Continue),
                    left => Err(match e {
                        Error::Step { step, source, .. } => Error::Step { step, source, due: left },
                        e => e,
                    }),
                },
            }
        }
        Action::AbandonFailover { reason } => {
            ctx.event(topo, EventType::Warning, "FailoverAbandoned", "Failover", reason).await;
            stepped_down(ctx, topo, w, peer_name).await?;
            Ok(Next::Continue)
        }
        Action::ProceedWithoutFinalSync { reason, .. } => {
            w.write().await?;
            warn!(%reason, "FinalSync bound reached; proceeding");
            ctx.event(topo, EventType::Warning, "FinalSyncProceeded", Step::FinalSync.name(), reason).await;
            Ok(Next::Continue)
        }
        Action::AbortFailover { reason } => {
            ctx.event(topo, EventType::Warning, "FailoverAborted", "Failover", reason).await;
            stepped_down(ctx, topo, w, &topo.spec.primary).await?;
            Ok(Next::Continue)
        }
        Action::AcknowledgeDemotion { new_primary } => {
            stepped_down(ctx, topo, w, &new_primary).await?;
            Ok(Next::Continue)
        }
        Action::StandDown { new_primary, why } => {
            warn!(%why, "outranked: standing down");
            ctx.metrics.stood_down.inc();
            ctx.event(topo, EventType::Warning, "SteppedDown", "Demote", format!("{} stood down for {new_primary}: {why}", ctx.self_name())).await;
            stepped_down(ctx, topo, w, &new_primary).await?;
            Ok(Next::Continue)
        }
        Action::HoldStoodDown { .. } => Ok(Next::Requeue(WAIT_REQUEUE)),
        Action::ReclaimPrimary { proof } => {
            w.write().await?;
            info!(%proof, "primary role reclaimed");
            ctx.event(
                topo,
                EventType::Normal,
                "PrimaryReclaimed",
                "Reclaim",
                format!("{} is primary again; {peer_name} has not been primary since: {proof}", ctx.self_name()),
            )
            .await;
            Ok(Next::Continue)
        }
        Action::WaitForPeer { .. } | Action::WaitForPrimary { .. } | Action::HoldAbandoned { mirror: false, .. } => Ok(Next::Requeue(WAIT_REQUEUE)),
        Action::Mirror | Action::HoldAbandoned { mirror: true, .. } => {
            measure_rpo(ctx, topo, w, peer, peer_name).await;
            // Restarts waiting for readiness are looked at again sooner.
            let soon = sync::standby(ctx, topo, w).await;
            Ok(Next::Requeue(soon.map_or(STEADY_REQUEUE, |d| d.min(STEADY_REQUEUE))))
        }
    }
}

/// Points the platform domain back at this cluster's VIP with the configured provider (the same
/// `dns::switch_for` as SwitchDNS), for a primary whose DNS answers its follower.
async fn repair_dns(ctx: &Context, topo: &ValidatedTopology) -> Result<String, String> {
    let vip = topo.spec.cluster(ctx.self_name()).map(|c| c.vip).ok_or("this cluster is not in spec.clusters")?;
    let outcome = crate::dns::switch_for(topo, &ctx.client, vip).await.map_err(|e| e.to_string())?;
    if outcome.is_done() {
        Ok(outcome.to_string())
    } else {
        Err(outcome.to_string())
    }
}

/// A stepped-down primary following the new one measures, once, what that failover never
/// applied of its writes (`status.demotion.unreplicatedRevisions`, an `UnreplicatedWrites` Event
/// when some): after a partition heals, the RPO nobody compared before.
async fn measure_rpo(ctx: &Context, topo: &ValidatedTopology, w: &mut StatusWriter, peer: &PeerView, peer_name: &str) {
    let Some(p) = peer.reachable() else { return };
    let Some(d) = w.status.demotion.as_mut().filter(|d| d.unreplicated_revisions.is_none()) else { return };
    let Some(n) = plan::unreplicated_revisions(d, p) else { return };
    d.unreplicated_revisions = Some(n);
    if n > 0 {
        let msg = format!(
            "{} took {n} revisions as primary (up to {}) that {peer_name}'s failover never applied; its writes stay here as surplus keys or in the divergence archive (drctl archive list)",
            ctx.self_name(),
            d.final_revision.unwrap_or_default()
        );
        warn!(%msg, "unreplicated writes");
        ctx.event(topo, EventType::Warning, "UnreplicatedWrites", "Demote", msg).await;
    }
}

/// The facts every action's `transition` reads; the action adds its own.
fn facts<'a>(ctx: &'a Context, topo: &'a DRTopology, peer_name: &'a str) -> Facts<'a> {
    Facts {
        self_name: ctx.self_name(),
        peer_name,
        spec_primary: &topo.spec.primary,
        generation: topo.metadata.generation,
        retry: topo.annotations().get(RETRY_ANNOTATION).map(String::as_str),
        now: Timestamp::now(),
        ..Default::default()
    }
}

/// Writes the demotion token `transition` recorded, says so in an Event and stops this
/// cluster's pods of replicated workloads: they run on the new primary only (its controllers
/// make their own).
async fn stepped_down(ctx: &Context, topo: &ValidatedTopology, w: &mut StatusWriter, new_primary: &str) -> Result<(), Error> {
    w.write().await?;
    let rev = w.status.demotion.as_ref().and_then(|d| d.final_revision).map(|r| r.to_string()).unwrap_or_else(|| "unknown".into());
    ctx.event(topo, EventType::Normal, "DemotionAcknowledged", "Demote", format!("{} stepped down for {new_primary} at revision {rev}", ctx.self_name())).await;
    context::stop_replicated_pods(ctx, topo, "Demote").await;
    Ok(())
}

/// Where the verify resolvers say the platform domain points.
struct DnsSeen {
    /// `Some(true)` when all answer exactly this cluster's VIP, `Some(false)` when one answered
    /// something else, None when that is unknown (no resolver answered, none configured).
    here: Option<bool>,
    /// One answered exactly the peer's VIP.
    at_peer: bool,
    message: String,
}

async fn dns_points_here(topo: &ValidatedTopology, self_name: &str, peer_name: &str) -> DnsSeen {
    let unknown = |message: String| DnsSeen { here: None, at_peer: false, message };
    let Some(vip) = topo.spec.cluster(self_name).map(|c| c.vip) else {
        return unknown("this cluster is not in spec.clusters".into());
    };
    let peer_vip = topo.spec.cluster(peer_name).map(|c| c.vip);
    let resolvers = match crate::dns::verify_resolvers(&topo.spec.dns.verify.resolvers) {
        Ok(r) => r,
        Err(e) => return unknown(e.to_string()),
    };
    let answers = crate::dns::ask_all(&resolvers, &topo.spec.platform.domain, Duration::from_secs(2)).await;
    let elsewhere = answers.iter().any(|a| matches!(&a.result, Ok(ips) if ips != &[vip]));
    let all_here = !answers.is_empty() && answers.iter().all(|a| matches!(&a.result, Ok(ips) if ips == &[vip]));
    let at_peer = peer_vip.is_some_and(|p| answers.iter().any(|a| matches!(&a.result, Ok(ips) if ips == &[p])));
    let here = if elsewhere { Some(false) } else { all_here.then_some(true) };
    let said: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
    let message = if here == Some(true) {
        format!("{} resolves to {vip} ({})", topo.spec.platform.domain, said.join("; "))
    } else {
        format!("{} should resolve to {vip}: {}", topo.spec.platform.domain, said.join("; "))
    };
    DnsSeen { here, at_peer, message }
}

/// A fenced standby refuses writes to replicated data; a primary (or fencing disabled) lifts the
/// fence. Returns for how long this process has had it up (None: lifted). Follows the declared role, so an old primary is fenced before it writes its demotion
/// token (no write can land after its final revision); a new primary stays fenced until its
/// failover has stopped replicating (StopSync lifts it, before the hooks, DNS and restarts), so
/// its own controllers never act on data the mirror is still writing. Re-applied every minute in
/// case something removed it.
async fn fence_as_declared(
    ctx: &Context,
    topo: &ValidatedTopology,
    status: &crate::topology::DRTopologyStatus,
    action: &Action,
) -> Result<Option<Duration>, crate::fence::FenceError> {
    let fenced = fence_wanted(&FenceFacts {
        enabled: topo.spec.sync.fence.enabled,
        declared_primary: topo.spec.primary == ctx.self_name(),
        dry_run: topo.spec.failover.dry_run,
        role: status.role,
        stopped_sync: stopped_sync(status, ctx.self_name()),
        failing_over: plan::in_progress(Some(status), ctx.self_name()).is_some(),
        holds_primary: matches!(action, Action::HoldPrimary { .. }),
        stands_down: matches!(action, Action::StandDown { .. }),
    });
    let want = fenced.then(|| topo.spec.primary.clone());
    let mut last = ctx.fenced.lock().await;
    let up_for = |f: &FenceApplied| f.want.is_some().then(|| f.since.elapsed());
    if let Some(f) = last.as_ref().filter(|f| f.want == want && f.at.elapsed() < Duration::from_secs(60)) {
        return Ok(up_for(f));
    }
    let result = match &want {
        Some(_) => crate::fence::apply(&ctx.client, topo, &ctx.args.namespace).await,
        None => crate::fence::remove(&ctx.client, topo).await,
    };
    match result {
        Ok(()) => {
            let now = std::time::Instant::now();
            if last.as_ref().map(|f| &f.want) != Some(&want) {
                info!(fenced = want.is_some(), "fence reconciled");
            }
            // Up since it went up: naming another primary changes its message, not its hold.
            let since = last.as_ref().filter(|f| f.want.is_some() == want.is_some()).map_or(now, |f| f.since);
            let applied = FenceApplied { want, at: now, since };
            let fenced_for = up_for(&applied);
            *last = Some(applied);
            Ok(fenced_for)
        }
        Err(e) => {
            warn!(error = %e, "fence not reconciled; will retry");
            Err(e)
        }
    }
}

/// Holds or releases this global's labelled Argo CD Applications as its role wants
/// (`decide::follow_role`) and records it in `status.applications`; a failure is logged and
/// recorded, and tried again next pass.
async fn applications_as_declared(ctx: &Context, topo: &ValidatedTopology, w: &mut StatusWriter, action: &Action) {
    let facts = RoleFacts::of(
        &w.status,
        ctx.self_name(),
        &topo.spec.primary,
        topo.spec.failover.dry_run,
        matches!(action, Action::HoldPrimary { .. }),
        matches!(action, Action::StandDown { .. }),
    );
    let want = follow_role::wanted(&facts);
    let namespace = &topo.spec.argocd_namespace;
    match crate::follow_role::reconcile(&ctx.client, namespace, want).await {
        Ok(pass) => {
            for (state, reason, verb) in [
                (ApplicationsState::Held, "ApplicationsHeld", "held (automated sync off)"),
                (ApplicationsState::Released, "ApplicationsReleased", "released (automated sync restored)"),
            ] {
                let names: Vec<&str> = pass.changed.iter().filter(|(_, s)| *s == state).map(|(n, _)| n.as_str()).collect();
                if !names.is_empty() {
                    let note = format!("Argo CD Applications in {namespace} {verb}: {}", names.join(", "));
                    info!(%note, "applications follow the role");
                    ctx.event(topo, EventType::Normal, reason, "FollowRole", note).await;
                }
            }
            if let Some(m) = &pass.status.message {
                warn!(message = %m, "applications not all in the state the role wants; will retry");
            }
            // Nothing labelled and nothing wrong: no field to show.
            w.status.applications = (pass.status.count > 0 || pass.status.message.is_some()).then_some(pass.status);
        }
        Err(e) => {
            warn!(error = %e, "applications not reconciled; will retry");
            let last = w.status.applications.take().unwrap_or_default();
            w.status.applications = Some(ApplicationsStatus { state: want, message: Some(e.to_string()), ..last });
        }
    }
}

/// The newest commit of the GitOps repo that made `to` the primary, when the repo is configured
/// and readable; failing to read it never blocks a failover.
fn flipping_commit(args: &ControllerArgs, to: &str) -> Option<FlipCommit> {
    let repo = args.git_repo.as_ref()?;
    match crate::gitops::history(repo, &args.git_file) {
        Ok(entries) => {
            entries.into_iter().find(|e| e.to == to).map(|e| FlipCommit { commit: e.commit, author: e.proposed_by.unwrap_or(e.author), reason: e.reason })
        }
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
    fn an_invalid_spec_reaches_the_planner_and_is_held() {
        let mut topo: DRTopology = serde_saphyr::from_str(include_str!("../../examples/minimal.yaml")).expect("example");
        let errors = |topo: &DRTopology, self_name: &str| parse(topo, self_name).err().unwrap_or_default();
        let plan_for = |topo: &DRTopology, self_name: &str| {
            let mut st = crate::topology::DRTopologyStatus::default();
            let invalid = record_validity(&mut st, &errors(topo, self_name), Some(1));
            let o = Observed { self_name, spec_primary: &topo.spec.primary, invalid, status: Some(&st), ..Default::default() };
            (plan::plan(&o), st.phase)
        };
        let (valid, _) = plan_for(&topo, "global-a");
        assert_ne!(valid, Action::Hold, "a valid spec is acted on: {:?}", errors(&topo, "global-a"));
        assert_eq!(plan_for(&topo, "global-c"), (Action::Hold, Some(Phase::Invalid)), "a --cluster-name the spec does not list holds");
        topo.spec.clusters[1].vip = topo.spec.clusters[0].vip.clone();
        assert_eq!(plan_for(&topo, "global-a"), (Action::Hold, Some(Phase::Invalid)), "an invalid spec holds: {:?}", errors(&topo, "global-a"));
    }
}
