//! The standby's replication: keeps the in-process mirror (`replication`) running from the
//! declared primary's etcd into this cluster's etcd, or the `sync.manifest` object applied, runs
//! the periodic consistency check and reports the standby's health (`decide::standby`) into status.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::events::EventType;
use tracing::{debug, info, warn};

use super::context::{stop_replicated_pods, Context};
use super::replication::{FinishedCheck, SyncError, SyncKey};
use super::status::StatusWriter;
use crate::checkpoint::{Checkpoint, CheckpointError, WasPrimary, CHECKPOINT_KEY, WAS_PRIMARY_KEY};
use crate::decide::conditions::{set_condition, ConditionType, Reason};
use crate::decide::standby::{differences_event, record_archive, record_check, record_health, record_repair, standby_health, MirrorFacts, Thresholds};
use crate::decide::wait::{restarts_next, RestartsNext};
use crate::etcd::{self, Endpoint};
use crate::restart;
use crate::secret::KubeSecrets;
use crate::topology::{DRTopologyStatus, Phase, RestartWhen, RestartsBegun, RewoundStatus, RpoToken, SyncStatus};
use crate::validated::{Cluster, Driver, ValidatedTopology};

/// A global's etcd as an endpoint, with mTLS material from its Secret.
async fn endpoint(ctx: &Context, c: &Cluster) -> Result<Endpoint, SyncError> {
    etcd::cluster_endpoint(&KubeSecrets::new(ctx.client.clone()), c).await.map_err(|e| SyncError::Tls { cluster: e.cluster, source: e.source })
}

/// Whether replication stops because this cluster acts as primary now (it will take writes of
/// its own: the checkpoint of its standby term is forgotten) or only pauses (a standby waiting
/// for its primary, or holding after an abandoned failover: its copy is still faithful, and
/// forgetting its checkpoint would re-copy everything over it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopping {
    AsPrimary,
    /// The StopSync step of a planned switchover whose FinalSync check found none of the old
    /// primary's keys missing here: this cluster held all of its history up to the checkpoint.
    PromotedHoldingAll,
    AsStandby,
}

/// Stops whatever replicates into this cluster: the in-process mirror, or with
/// `sync.driver: manifest` the platform's own sync object. Idempotent. On a cluster that acts as
/// primary now, also deletes the mirror's checkpoint in its etcd (see [`forget_checkpoint`]).
pub async fn stop_replication(ctx: &Context, topo: &ValidatedTopology, why: Stopping) -> Result<(), SyncError> {
    ctx.sync.stop().await;
    if let Driver::Manifest(m) = &topo.spec.sync.driver {
        manifest(ctx, m, false).await?;
    }
    if why != Stopping::AsStandby && !ctx.sync.checkpoint_forgotten() {
        // Retried by the next reconcile (StayPrimary stops replication on each) when it fails.
        if let Err(e) = forget_checkpoint(ctx, topo, why == Stopping::PromotedHoldingAll).await {
            warn!(error = %e, "the mirror checkpoint left from this cluster's standby term could not be deleted; will retry");
        }
    }
    Ok(())
}

/// Deletes the mirror checkpoint left in this cluster's etcd by an earlier standby term. Once a
/// cluster has been primary its etcd holds writes of its own that the checkpoint knows nothing
/// about: resuming the watch from it (or a compaction resync with prune) would overwrite or
/// delete them unseen. Without a checkpoint, the next standby term starts with an initial copy
/// over existing data: values it overwrites are archived first, keys only here are kept (surplus,
/// reported by the check).
pub async fn forget_checkpoint(ctx: &Context, topo: &ValidatedTopology, held_all: bool) -> Result<(), SyncError> {
    let me = topo.spec.cluster(ctx.self_name()).ok_or_else(|| SyncError::UnknownCluster(ctx.self_name().to_string()))?;
    let mut conn = etcd::connect(&endpoint(ctx, me).await?).await?;
    let checkpoint = match Checkpoint::read(&mut conn.kv).await {
        Ok(cp) => cp,
        Err(CheckpointError::Read(e)) => return Err(SyncError::Status(e)),
        // Deleted all the same; it proves nothing applied.
        Err(CheckpointError::Parse(_)) => None,
    };
    let forget = TxnOp::delete(CHECKPOINT_KEY, None);
    let marker = |applied_from| TxnOp::put(WAS_PRIMARY_KEY, WasPrimary { since: Timestamp::now().to_string(), applied_from }.to_json(), None);
    // The marker records what the mirror had applied, for the peer's rejoin to tell replicas it
    // deleted since from writes it never saw; only when a check vouched that nothing was missing
    // (a key lost here behind the mirror's back must stay the old primary's surplus, not be
    // pruned as if deleted here). Without a checkpoint (a restart, the marker set already) it is
    // left as it is.
    let txn = match checkpoint {
        Some(cp) => Txn::new().and_then(vec![forget, marker(cp.applied().filter(|_| held_all))]),
        None => Txn::new()
            .when(vec![Compare::create_revision(WAS_PRIMARY_KEY, CompareOp::Equal, 0)])
            .and_then(vec![forget.clone(), marker(None)])
            .or_else(vec![forget]),
    };
    let resp = conn.kv.txn(txn).await.map_err(SyncError::Status)?;
    let deleted = resp.op_responses().iter().any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
    if deleted {
        info!("deleted the mirror checkpoint of this cluster's earlier standby term: it is primary now");
    }
    ctx.sync.set_checkpoint_forgotten();
    Ok(())
}

/// Raises this cluster's etcd to the old primary's numbering and compacts it at its head as it
/// becomes primary ([`etcd::compact_at_head`]).
pub async fn compact_own_history(ctx: &Context, topo: &ValidatedTopology, token: Option<&RpoToken>) -> Result<etcd::Compacted, SyncError> {
    let me = topo.spec.cluster(ctx.self_name()).ok_or_else(|| SyncError::UnknownCluster(ctx.self_name().to_string()))?;
    let mut conn = etcd::connect(&endpoint(ctx, me).await?).await?;
    etcd::compact_at_head(&mut conn, token).await.map_err(SyncError::Status)
}

/// Applies (server-side) or deletes the `sync.manifest` object.
async fn manifest(ctx: &Context, m: &serde_json::Value, present: bool) -> Result<(), SyncError> {
    let err = |e: String| SyncError::Manifest(e);
    let obj: DynamicObject = serde_json::from_value(m.clone()).map_err(|e| err(format!("not a Kubernetes object: {e}")))?;
    let gvk =
        obj.types.as_ref().map(GroupVersionKind::try_from).ok_or_else(|| err("apiVersion and kind are required".into()))?.map_err(|e| err(e.to_string()))?;
    let name = obj.metadata.name.clone().ok_or_else(|| err("metadata.name is required".into()))?;
    let (ar, caps) = kube::discovery::pinned_kind(&ctx.client, &gvk).await.map_err(|source| SyncError::ManifestApi { object: gvk.kind.clone(), source })?;
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
    result.map_err(|source| SyncError::ManifestApi { object: format!("{} {name}", gvk.kind), source })
}

/// Starts (or keeps, or restarts on change) the mirror from the declared primary into this cluster.
pub async fn ensure_mirror(ctx: &Context, topo: &ValidatedTopology, self_name: &str) -> Result<(), SyncError> {
    // The source is whoever is primary by declaration, or during a failover to us, the peer.
    let source_name = if topo.spec.primary == self_name { topo.spec.peer_of(self_name).map(|c| c.name.clone()) } else { Some(topo.spec.primary.clone()) }
        .ok_or_else(|| SyncError::UnknownCluster(self_name.to_string()))?;
    let src = topo.spec.cluster(&source_name).ok_or_else(|| SyncError::UnknownCluster(source_name.clone()))?;
    let me = topo.spec.cluster(self_name).ok_or_else(|| SyncError::UnknownCluster(self_name.to_string()))?;
    let key = SyncKey {
        source: src.etcd.endpoints.clone(),
        dest: me.etcd.endpoints.clone(),
        exclude: serde_json::to_string(&topo.spec.sync.exclude).unwrap_or_default(),
        namespace: ctx.args.namespace.clone(),
    };
    // Read on every reconcile: a certificate rotated inside the same Secret is used from the
    // next connection on, without a restart.
    let (source, dest) = (endpoint(ctx, src).await?, endpoint(ctx, me).await?);
    let running = ctx.sync.running_key().await;
    if running.as_ref() == Some(&key) {
        let renewed = ctx.sync.renew_credentials(source, dest).await;
        if renewed.any() {
            let secrets: Vec<String> = [(renewed.source, src), (renewed.dest, me)]
                .into_iter()
                .filter(|(changed, _)| *changed)
                .map(|(_, c)| match &c.etcd.tls_secret_ref {
                    Some(r) => format!("{} (Secret {}/{})", c.name, r.namespace, r.name),
                    None => c.name.clone(),
                })
                .collect();
            let note = format!(
                "the etcd TLS material of {} changed: the mirror and the check use it from their next connection (open connections are kept)",
                secrets.join(" and ")
            );
            info!(%note, "etcd credentials renewed");
            ctx.event(topo, EventType::Normal, "EtcdCredentialsRenewed", "Sync", note).await;
        }
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
    ctx.sync.start(key, source, dest, topo.spec.filter(&ctx.args.namespace)).await;
    Ok(())
}

/// This cluster's own etcd head revision and cluster ID (the demotion token's content).
pub async fn own_revision(ctx: &Context, topo: &ValidatedTopology) -> Result<(i64, String), SyncError> {
    let me = topo.spec.cluster(ctx.self_name()).ok_or_else(|| SyncError::UnknownCluster(ctx.self_name().to_string()))?;
    let mut conn = etcd::connect(&endpoint(ctx, me).await?).await?;
    let (cluster_id, revision) = etcd::head(&mut conn.kv).await.map_err(SyncError::Status)?;
    Ok((revision, format!("{cluster_id:x}")))
}

/// One standby reconcile: mirror running, status and conditions current, the periodic check
/// and a look at the once-only `syncEnabled` / `demotion` restarts. Some(when to look again)
/// while those wait for readiness or the mirror's first check runs.
pub async fn standby(ctx: &Arc<Context>, topo: &ValidatedTopology, w: &mut StatusWriter) -> Option<Duration> {
    let generation = topo.generation();
    if let Driver::Manifest(m) = &topo.spec.sync.driver {
        // The platform's own synchronizer does the work; drctl only keeps its object present, and
        // its own mirror (running when the driver was builtin until now) never writes beside it.
        ctx.sync.stop().await;
        let (ok, why) = match manifest(ctx, m, true).await {
            Ok(()) => (true, "sync delegated to spec.sync.manifest (applied); drctl does not measure its lag".to_string()),
            Err(e) => (false, e.to_string()),
        };
        set_condition(&mut w.status, ConditionType::SyncHealthy, ok, if ok { Reason::ManifestApplied } else { Reason::ManifestFailed }, &why, generation);
        set_condition(&mut w.status, ConditionType::Ready, ok, if ok { Reason::Steady } else { Reason::ManifestFailed }, &why, generation);
        w.status.phase = Some(if ok { Phase::Steady } else { Phase::Degraded });
        return None;
    }
    // Before the mirror may restart (new exclusions), which cancels the check.
    collect_periodic(ctx, topo, &mut w.status).await;
    // The check health is decided on below, in status whatever became of the pass that recorded
    // it: one whose status write failed lost it, and the next check is an interval away.
    if let Some((report, time)) = ctx.sync.published_check().await {
        if w.status.sync.as_ref().and_then(|y| y.last_check_time.as_deref()) != Some(time.to_string().as_str()) {
            record_check(&mut w.status, &report, time, None);
        }
    }
    if let Err(e) = ensure_mirror(ctx, topo, ctx.self_name()).await {
        w.status.phase = Some(Phase::Degraded);
        set_condition(&mut w.status, ConditionType::SyncHealthy, false, Reason::MirrorNotStarted, &e.to_string(), generation);
        return None;
    }
    let (p, lag) = ctx.sync.progress().await?;
    if let Some((from, to)) = ctx.sync.note_rewind(&p).await {
        let note = format!(
            "the primary's etcd history went back under the same cluster ID (restored from a snapshot?): this cluster had applied its revision {from}, its head is now {to} of another history. Resyncing from its head; values of this cluster the resync replaces are archived first"
        );
        warn!(from, to, "source rewound");
        let sync = w.status.sync.get_or_insert_with(SyncStatus::default);
        sync.rewound = Some(RewoundStatus { from_revision: from, to_revision: to, detected_at: Timestamp::now().to_string() });
        ctx.event(topo, EventType::Warning, "SourceRewound", "Sync", note).await;
    }
    announce_archives(ctx, topo, &mut w.status, &p.archives).await;
    if ctx.sync.report_due() || w.status.sync.is_none() {
        let sync = w.status.sync.get_or_insert_with(SyncStatus::default);
        sync.source_revision = Some(p.source_revision).filter(|r| *r > 0);
        sync.applied_revision = Some(p.applied_revision).filter(|r| *r > 0);
        sync.revision_gap = Some(p.revision_gap).filter(|g| *g > 0);
        sync.lag_seconds = Some((lag * 1000.0).round() / 1000.0);
        sync.replication_lag_seconds = ctx.heartbeat.lag_seconds(Timestamp::now()).map(|l| (l * 1000.0).round() / 1000.0);
    }
    let following = p.phase == crate::mirror::Phase::Following;
    let interval = topo.spec.sync.check_interval;
    // The check runs beside the reconciles (see `replication::PeriodicCheck`): this one starts
    // the next when it is due (the one that finished was recorded above).
    let due = ctx.sync.last_check_age().await.is_none_or(|age| age >= interval);
    if following && due {
        let read_rate = topo.spec.sync.check_read_rate;
        ctx.sync.start_periodic(topo.spec.sync.auto_repair, read_rate).await;
    }
    let sync = w.status.sync.clone().unwrap_or_default();
    let last_check = ctx.sync.last_check().await;
    let check_error = ctx.sync.check_error();
    // The peer, not spec.primary: a cluster holding after an abandoned failover is named primary.
    let source = topo.spec.peer_of(ctx.self_name()).map(|c| c.name.as_str()).unwrap_or("the primary");
    let health = standby_health(&MirrorFacts {
        phase: p.phase,
        last_error: p.last_error.as_deref(),
        lag_seconds: lag,
        reported_lag_seconds: sync.lag_seconds,
        max_lag_seconds: ctx.args.max_lag_seconds,
        last_check: last_check.as_ref(),
        thresholds: Thresholds::of(topo.object()),
        source,
        check_age: ctx.sync.last_check_age().await,
        check_interval: interval,
        check_error: check_error.as_deref(),
        rewound: ctx.sync.rewound(),
    });
    record_health(&mut w.status, &health, generation);

    if !health.healthy {
        // The first check of this mirror runs beside the reconciles: its result is looked for
        // sooner than the steady requeue, so a new standby is not reported unchecked for long.
        return (following && last_check.is_none()).then_some(crate::decide::wait::RECHECK);
    }
    let mut soon = None;
    for when in [RestartWhen::SyncEnabled, RestartWhen::Demotion] {
        if let Some(after) = occasion_restarts(ctx, topo, w, when).await {
            soon = Some(soon.map_or(after, |s: Duration| s.min(after)));
        }
    }
    soon
}

/// Records each archive newer than the one in `status.sync.archived`, with a `WritesArchived`
/// Warning Event and `drctl_archived_keys_total` (the writes lost: a rejoin's stale replicas are
/// not): once per archive.
async fn announce_archives(ctx: &Context, topo: &ValidatedTopology, status: &mut DRTopologyStatus, archives: &[crate::archive::Manifest]) {
    for m in archives {
        if let Some(note) = record_archive(status, m) {
            warn!(%note, "keys archived");
            ctx.metrics.archived(&m.reason, m.lost());
            ctx.event(topo, EventType::Warning, "WritesArchived", "Sync", note).await;
        }
    }
}

/// Records the periodic check if it has finished (status, the `KeysRepaired` and `KeysDiffer`
/// Events, and on a fenced standby the replicated pods stopped), and the repair of one cancelled
/// after its repair, once each. Stopping the mirror or cancelling the check keeps both for it.
pub async fn collect_periodic(ctx: &Context, topo: &ValidatedTopology, status: &mut DRTopologyStatus) {
    let finished = ctx.sync.finished_periodic().await;
    if let Some(FinishedCheck { result: Ok((report, _)), published: Some(time), .. }) = &finished {
        record_check(status, report, *time, None);
    }
    // The repair is kept apart from the check's result: a flip that stops the mirror during the
    // check's re-read after its repair cancels the check, and the keys it put are put.
    for r in ctx.sync.take_unannounced_repairs().await {
        warn!(put = r.outcome.put, missed = r.missed, diverged = r.diverged, "the check re-put keys the standby had lost or held different");
        record_repair(status, r.outcome.put);
        ctx.event(topo, EventType::Warning, "KeysRepaired", "Check", r.summary()).await;
        announce_archives(ctx, topo, status, r.outcome.archive.as_slice()).await;
    }
    let Some(done) = finished else { return };
    match done.result {
        Ok((report, _announced_above)) => {
            if let Some(note) = differences_event(done.previous.as_ref(), &report) {
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
        stop_replicated_pods(ctx, topo, "Check").await;
    }
}

/// Where status keeps the `when` restarts of this standby term: whether they are done and what
/// has begun. None when none is owed (no demotion token, no sync status yet).
fn restarts_record(st: &mut DRTopologyStatus, when: RestartWhen) -> Option<(&mut bool, &mut Option<RestartsBegun>)> {
    match when {
        RestartWhen::SyncEnabled => st.sync.as_mut().map(|s| (&mut s.restarts_done, &mut s.restarts)),
        RestartWhen::Demotion => st.demotion.as_mut().map(|d| (&mut d.restarts_done, &mut d.restarts)),
        RestartWhen::Failover => None,
    }
}

/// One look at the `syncEnabled` or `demotion` restarts, the Restart step's way
/// ([`restart::look`]): their start is written to status before they act (it is their stamp, so
/// a controller killed mid-way restarts nothing twice), what they restarted is kept, and
/// readiness is looked at once per reconcile until `--restart-ready-timeout` from their start.
/// Some(when to look again) while they wait.
async fn occasion_restarts(ctx: &Context, topo: &ValidatedTopology, w: &mut StatusWriter, when: RestartWhen) -> Option<Duration> {
    let now = Timestamp::now();
    let declared = topo.spec.restarts.iter().any(|r| r.when.contains(&when));
    let (done, begun) = restarts_record(&mut w.status, when)?;
    let next = restarts_next(*done, declared, begun.as_ref().map(|b| b.started_at.as_str()), now);
    let (stamp, waited, mut restarted) = match next {
        Ok(RestartsNext::Done) => {
            *done = true;
            return None;
        }
        Ok(RestartsNext::Begin) => {
            *begun = Some(RestartsBegun { started_at: now.to_string(), restarted: None });
            if let Err(e) = w.write().await {
                warn!(error = %e, ?when, "restarts not begun: their start could not be recorded; will retry");
                return None;
            }
            (now, Duration::ZERO, None)
        }
        Ok(RestartsNext::Look { stamp, waited }) => (stamp, waited, begun.as_ref().and_then(|b| b.restarted.clone())),
        Err(e) => {
            warn!(error = %e, ?when, "status restarts.startedAt is not an RFC 3339 time; fix it by hand: the restarts wait until then");
            return None;
        }
    };
    let look = restart::look(&ctx.client, &topo.spec, when, stamp, &mut restarted, waited, ctx.args.restart_ready_timeout).await;
    let (done, record) = restarts_record(&mut w.status, when)?;
    if let Some(b) = record.as_mut() {
        b.restarted = restarted;
    }
    match look {
        Ok(restart::Look::Done(message)) => {
            info!(%message, ?when, "restarts done");
            *done = true;
            None
        }
        Ok(restart::Look::NoneDeclared) => {
            *done = true;
            None
        }
        Ok(restart::Look::Waiting { why, recheck_after }) => {
            debug!(%why, ?when, "restarts waiting");
            Some(recheck_after)
        }
        Err(e) => {
            warn!(error = %e, ?when, "restarts failed; will retry");
            None
        }
    }
}
