//! The executor of the failover runbook: one function per step, each idempotent. `run` records
//! the step as Running before it acts and Succeeded/Skipped/Failed after, so a controller killed
//! inside a step runs that step again on restart and nothing twice that matters. A step that
//! waits for a condition (an acknowledgement, a catch-up, DNS) looks once and returns
//! [`Outcome::Waiting`]: it stays Running and the reconcile requeues (`decide::wait`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use tracing::{debug, info, info_span, warn, Instrument};

use super::error::StepError;
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::peer::{self, peer_state};
use crate::controller::replication::SyncError;
use crate::controller::status::StatusWriter;
use crate::controller::sync::{collect_periodic, compact_own_history, ensure_mirror, stop_replication, Stopping};
use crate::decide::conditions::{set_condition, ConditionType, Reason};
use crate::decide::demote::{
    client_writes, demote_verdict, override_named, DemoteFacts, DemoteVerdict, Override, PeerAnswer, OVERRIDE_ANNOTATION, OVERRIDE_QUIET_WINDOW,
};
use crate::decide::plan::{final_sync_left, old_primary_may_be_newer, step_record, PeerView, Step};
use crate::decide::standby::record_check;
use crate::decide::transition::{failover_done, record_step};
use crate::decide::wait::{elapsed_since, recheck_within, wait_verdict, WaitVerdict, RECHECK};
use crate::dns;
use crate::hooks;
use crate::restart;
use crate::secret::KubeSecrets;
use crate::topology::{DemoteOverridden, FailoverStatus, HookDone, Phase, RestartScope, RestartWhen, RpoToken, StepState};
use crate::validated::{Driver, Hook, ValidatedTopology};

/// What the old primary's etcd took during an override's quiet window.
struct QuietWindow {
    /// Client writes ([`client_writes`]): none, or the override is refused.
    writes: Vec<String>,
    /// Its head at the end of the window, and its cluster ID: the token FinalSync catches up to.
    head: i64,
    cluster_id: String,
}

/// What one run of a step ended with.
pub enum Outcome {
    Finished {
        state: StepState,
        message: String,
    },
    /// Its condition does not hold yet: the step stays Running with `why` as its message and is
    /// run again after `recheck_after`.
    Waiting {
        why: String,
        recheck_after: Duration,
    },
}

impl Outcome {
    fn ok(message: impl Into<String>) -> Self {
        Self::Finished { state: StepState::Succeeded, message: message.into() }
    }
    fn skipped(message: impl Into<String>) -> Self {
        Self::Finished { state: StepState::Skipped, message: message.into() }
    }
    fn waiting(why: impl Into<String>, recheck_after: Duration) -> Self {
        Self::Waiting { why: why.into(), recheck_after }
    }
}

/// What [`Runbook::run`] left a step as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepRun {
    Finished,
    /// Still Running: reconcile again after this long.
    Waiting(Duration),
}

pub struct Runbook<'a> {
    pub ctx: &'a Arc<Context>,
    pub topo: &'a ValidatedTopology,
    pub peer_name: &'a str,
    pub status: &'a mut StatusWriter,
}

impl Runbook<'_> {
    fn self_name(&self) -> &str {
        self.ctx.self_name()
    }

    fn generation(&self) -> Option<i64> {
        self.topo.generation()
    }

    fn failover(&mut self) -> Result<&mut FailoverStatus, StepError> {
        self.status.status.failover.as_mut().ok_or(StepError::NoFailover)
    }

    /// Runs one step (or one more look of a waiting step) with its before/after records, Events
    /// and metrics.
    pub async fn run(&mut self, step: Step) -> Result<StepRun, Error> {
        let span = info_span!("step", step = step.name());
        async {
            let failed = |source| Error::Step { step, source, due: None };
            let f = self.failover().map_err(failed)?;
            // A waiting step keeps its message (what it waits for) between looks.
            let resumed = step_record(f, step).is_some_and(|s| s.state == StepState::Running);
            if !resumed {
                record_step(f, step, StepState::Running, Some(step.describe().to_string()), Timestamp::now());
                info!("step started");
            }
            self.status.status.phase = Some(Phase::FailingOver);
            self.status.write().await?;
            // A step may wait minutes (hooks, DNS): its start must reach /metrics before it ends.
            self.ctx.metrics.observe_status(&self.status.status);
            match self.execute(step).await {
                Ok(Outcome::Waiting { why, recheck_after }) => {
                    debug!(%why, "step waiting");
                    record_step(self.failover().map_err(failed)?, step, StepState::Running, Some(why), Timestamp::now());
                    self.status.write().await?;
                    Ok(StepRun::Waiting(recheck_after))
                }
                Ok(Outcome::Finished { state, message }) => {
                    let secs = self.finished(step);
                    info!(%message, seconds = secs, "step finished");
                    record_step(self.failover().map_err(failed)?, step, state, Some(message.clone()), Timestamp::now());
                    self.status.write().await?;
                    self.ctx.event(self.topo, EventType::Normal, &format!("Step{}", step.name()), step.name(), format!("{step}: {message} ({secs:.1}s)")).await;
                    Ok(StepRun::Finished)
                }
                Err(e) => {
                    self.finished(step);
                    let message = e.to_string();
                    warn!(%message, kind = e.kind().label(), "step failed");
                    record_step(self.failover().map_err(failed)?, step, StepState::Failed, Some(message.clone()), Timestamp::now());
                    self.status.status.phase = Some(Phase::Degraded);
                    let generation = self.generation();
                    set_condition(&mut self.status.status, ConditionType::Ready, false, Reason::StepFailed, &format!("{step}: {message}"), generation);
                    self.status.write().await?;
                    self.ctx.event(self.topo, EventType::Warning, "StepFailed", step.name(), format!("{step}: {message}")).await;
                    Err(failed(e))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Counts a step that finished or failed in the metrics; its seconds since the first start
    /// (looks and retries included).
    fn finished(&self, step: Step) -> f64 {
        let secs = self.step_waited(step).map(|d| d.as_secs_f64()).unwrap_or_default();
        self.ctx.metrics.step_finished(step.name(), secs);
        secs
    }

    async fn execute(&mut self, step: Step) -> Result<Outcome, StepError> {
        match step {
            Step::Preflight => self.preflight().await,
            Step::Demote => self.demote().await,
            Step::FinalSync => self.final_sync().await,
            Step::StopSync => {
                let token = self.status.status.failover.as_ref().and_then(|f| f.rpo_token.as_ref());
                let held_all = token.is_some_and(|t| t.final_revision.is_some() && t.missed_keys == Some(0));
                let why = if held_all { Stopping::PromotedHoldingAll } else { Stopping::AsPrimary };
                stop_replication(self.ctx, self.topo, why).await.map_err(|e| StepError::StopSync(Box::new(e)))?;
                // Before anyone writes here: resourceVersions of the other etcd's numbering must
                // make clients relist, not resume.
                let compacted = compact_own_history(self.ctx, self.topo, token).await.map_err(|e| StepError::StopSync(Box::new(e)))?;
                let raised = match compacted.raised {
                    0 => String::new(),
                    n => format!(" after skipping {n} revisions to pass the old primary's numbering"),
                };
                let unrefused = crate::decide::revisions::unrefused(compacted.revision, token).map(|u| format!("; {u}")).unwrap_or_default();
                // Nothing writes underneath any more: this cluster's own control plane may act
                // on the data from now on (the hooks, DNS and restarts that follow need it to).
                crate::fence::remove(&self.ctx.client, self.topo).await.map_err(|e| StepError::LiftFence(Box::new(e)))?;
                Ok(Outcome::ok(format!(
                    "no longer replicating from {}; history compacted at revision {}{raised} (clients holding the other etcd's resourceVersions up to it relist){unrefused}; fence lifted",
                    self.peer_name, compacted.revision
                )))
            }
            Step::PreHooks => self.hooks(&self.topo.spec.failover.pre_hooks.clone(), hooks::Phase::Pre).await,
            Step::SwitchDns => self.switch_dns().await,
            Step::VerifyDns => self.verify_dns().await,
            Step::Restart => self.restart().await,
            Step::PostHooks => self.hooks(&self.topo.spec.failover.post_hooks.clone(), hooks::Phase::Post).await,
            Step::Done => {
                let generation = self.generation();
                let term = failover_done(&mut self.status.status, Timestamp::now(), generation);
                Ok(Outcome::ok(format!("{} is primary, term {term}", self.self_name())))
            }
        }
    }

    /// When the failover started: the stamp of its restarts and the id of its hooks, so it must
    /// be the recorded one (a fresh "now" would restart everything again).
    fn failover_started(&self) -> Result<Timestamp, StepError> {
        let at = self.status.status.failover.as_ref().ok_or(StepError::NoFailover)?.started_at.as_deref().unwrap_or_default();
        at.parse().map_err(|e| bad_time("status.failover.startedAt", at, e))
    }

    /// How long `step` has run since its first start as recorded in status (deadlines count from
    /// it, so a restarted controller keeps them).
    fn step_waited(&self, step: Step) -> Result<Duration, StepError> {
        let f = self.status.status.failover.as_ref().ok_or(StepError::NoFailover)?;
        let at = step_record(f, step).and_then(|s| s.started_at.as_deref()).unwrap_or_default();
        elapsed_since(at, Timestamp::now()).map_err(|e| bad_time(&format!("status.failover.steps[{step}].startedAt"), at, e))
    }

    /// Restarts once (stamped with the failover's start, recorded in status), then looks at
    /// readiness until `--restart-ready-timeout` has passed since the step's first start; what
    /// is not ready by then is named in the message (the step does not fail on it).
    async fn restart(&mut self) -> Result<Outcome, StepError> {
        let (client, spec, when) = (&self.ctx.client, &self.topo.spec, RestartWhen::Failover);
        let (stamp, waited) = (self.failover_started()?, self.step_waited(Step::Restart)?);
        let mut restarted = self.failover()?.restarted.clone();
        let look = restart::look(client, spec, when, stamp, &mut restarted, waited, self.ctx.args.restart_ready_timeout).await;
        // Kept even when the look failed after restarting: a retry restarts nothing again.
        self.failover()?.restarted = restarted;
        Ok(match look.map_err(|e| StepError::Restart(Box::new(e)))? {
            restart::Look::NoneDeclared => Outcome::skipped(format!("no restarts with when: {when:?}")),
            restart::Look::Done(summary) => Outcome::ok(summary),
            restart::Look::Waiting { why, recheck_after } => Outcome::waiting(why, recheck_after),
        })
    }

    async fn observe_peer(&self) -> (PeerView, Option<String>) {
        peer::observe(&self.ctx.client, self.topo, self.peer_name).await
    }

    async fn preflight(&mut self) -> Result<Outcome, StepError> {
        let (view, why) = self.observe_peer().await;
        let mine = self.status.status.encryption_config_sha256.clone();
        let Some(p) = view.reachable() else {
            return Ok(Outcome::ok(format!("old primary {} unreachable ({}); encryption fingerprints not compared", self.peer_name, why.unwrap_or_default())));
        };
        self.record_peer_term(p.term)?;
        let short = |s: &Option<String>| s.as_deref().map(|h| h.chars().take(12).collect::<String>()).unwrap_or_else(|| "unknown".into());
        match (&mine, &p.encryption_config_sha256) {
            (Some(a), Some(b)) if a != b => {
                let msg = format!(
                    "encryption config differs: {} sha256 {} vs {} sha256 {}; copied Secrets would not decrypt here",
                    self.self_name(),
                    short(&mine),
                    self.peer_name,
                    short(&p.encryption_config_sha256)
                );
                if self.topo.spec.failover.allow_encryption_config_mismatch {
                    Ok(Outcome::ok(format!("{msg} (allowed by spec.failover.allowEncryptionConfigMismatch)")))
                } else {
                    Err(StepError::EncryptionConfigMismatch { message: msg })
                }
            }
            (Some(_), Some(_)) => Ok(Outcome::ok(format!("{} reachable; encryption configs match (sha256 {})", self.peer_name, short(&mine)))),
            _ => Ok(Outcome::ok(format!(
                "{} reachable; encryption fingerprint unknown on {} (file missing?), not compared",
                self.peer_name,
                if mine.is_none() { self.self_name() } else { self.peer_name }
            ))),
        }
    }

    /// Keeps the highest term read from the old primary in the failover record, so the term
    /// this failover takes at Done is past it.
    fn record_peer_term(&mut self, term: i64) -> Result<(), StepError> {
        let f = self.failover()?;
        f.peer_term = Some(f.peer_term.unwrap_or(0).max(term));
        Ok(())
    }

    /// Looks for the old primary's demotion token. Proceeds without it only when the old
    /// primary has been unreachable for a whole `demotionTimeout` in a row (a blip is not a
    /// disaster; "since when" is kept in status), and never when the failure is our own
    /// configuration or credentials.
    async fn demote(&mut self) -> Result<Outcome, StepError> {
        let timeout = self.topo.spec.failover.demotion_timeout;
        let waited = self.step_waited(Step::Demote)?;
        let now = Timestamp::now();
        let read = peer::read(&self.ctx.client, self.topo, self.peer_name).await;
        let answered = match &read {
            Ok(t) => {
                self.failover()?.peer_down_since = None;
                Some(t.as_ref().map(|t| peer_state(t, self.peer_name)).unwrap_or_default())
            }
            Err(e) if e.may_be_down() => {
                self.failover()?.peer_down_since.get_or_insert_with(|| now.to_string());
                None
            }
            Err(_) => None,
        };
        if let Some(p) = &answered {
            self.record_peer_term(p.term)?;
        }
        let down_for = match self.failover()?.peer_down_since.clone() {
            Some(at) => Some(elapsed_since(&at, now).map_err(|e| bad_time("status.failover.peerDownSince", &at, e))?),
            None => None,
        };
        let answer = match (&read, &answered) {
            (Err(e), _) => e.answer(),
            (Ok(_), Some(p)) => PeerAnswer::Answered(p),
            (Ok(_), None) => PeerAnswer::Down,
        };
        let mut facts = DemoteFacts { self_name: self.self_name(), answer, down_for, waited, timeout, override_: Override::Absent };
        // The operator's override, looked at only when it would change the verdict: the old
        // primary answers and has not acknowledged (its controller does not act).
        let annotation = self.topo.annotations().get(OVERRIDE_ANNOTATION).cloned();
        let (mut ignored, mut watched) = (None, None);
        if let (Some(p), DemoteVerdict::Wait | DemoteVerdict::NotAcknowledged) = (&answered, demote_verdict(&facts)) {
            match override_named(annotation.as_deref(), self.peer_name, p.term) {
                Ok(false) => {}
                Err(why) => ignored = Some(why),
                Ok(true) => {
                    let quiet = self.quiet_window().await;
                    facts.override_ = if quiet.as_ref().is_ok_and(|q| q.writes.is_empty()) { Override::Quiet } else { Override::Written };
                    watched = Some(quiet);
                }
            }
        }
        let (topo, peer_name) = (self.topo, self.peer_name);
        let timeout_s = format!("{:?}", topo.spec.failover.demotion_timeout);
        let term = answered.as_ref().map(|p| p.term).unwrap_or_default();
        let wait = || {
            let why = match down_for {
                Some(d) => format!("waiting: {peer_name} unreachable for {}s in a row; a disaster after {timeout_s}", d.as_secs()),
                None => format!(
                    "waiting for {peer_name} to acknowledge demotion ({}s of {timeout_s}); if its controller is broken, see annotation {OVERRIDE_ANNOTATION}={peer_name}/{term}{}",
                    waited.as_secs(),
                    ignored.as_ref().map(|i| format!(" ({i})")).unwrap_or_default()
                ),
            };
            // Looks again before the deadline passes, so the verdict comes on time.
            let left = timeout.saturating_sub(down_for.unwrap_or(waited));
            Ok(Outcome::waiting(why, recheck_within(left)))
        };
        match (demote_verdict(&facts), read) {
            (DemoteVerdict::Wait, _) => wait(),
            // Quiet only when the window was watched and found so.
            (DemoteVerdict::Overridden, _) => {
                let Some(Ok(q)) = watched else { return wait() };
                let annotation = annotation.unwrap_or_default();
                let f = self.failover()?;
                f.rpo_token = Some(RpoToken { source_cluster_id: q.cluster_id.clone(), final_revision: Some(q.head), ..Default::default() });
                f.demote_overridden = Some(DemoteOverridden {
                    annotation: annotation.clone(),
                    accepted_at: Timestamp::now().to_string(),
                    final_revision: q.head,
                    quiet_seconds: OVERRIDE_QUIET_WINDOW.as_secs(),
                });
                let note = format!(
                    "demotion of {peer_name} overridden by annotation {OVERRIDE_ANNOTATION}={annotation}: it answers but did not acknowledge, and its etcd took no client writes in {}s; proceeding as if it acknowledged at revision {} (it is not fenced: keep its writers stopped until it is a standby)",
                    OVERRIDE_QUIET_WINDOW.as_secs(),
                    q.head
                );
                warn!(%note, "demotion overridden");
                self.ctx.event(self.topo, EventType::Warning, "DemoteOverridden", Step::Demote.name(), note.clone()).await;
                Ok(Outcome::ok(note))
            }
            (DemoteVerdict::OverrideRefused, _) => {
                let why = match watched {
                    Some(Ok(q)) => format!(
                        "its etcd is still being written ({} keys written in {}s besides leases and Events; first: {})",
                        q.writes.len(),
                        OVERRIDE_QUIET_WINDOW.as_secs(),
                        crate::decide::standby::first_keys(q.writes.iter())
                    ),
                    Some(Err(e)) => format!("its etcd could not be watched for writes: {e}"),
                    None => "it was not watched".to_string(),
                };
                let note = format!(
                    "override {OVERRIDE_ANNOTATION} of {peer_name}'s demotion refused: {why}. Stop its writers (clients, controllers, workload clusters reporting to it), or stop its apiservers for a disaster failover"
                );
                warn!(%note, "demotion override refused");
                self.ctx.event(self.topo, EventType::Warning, "DemoteOverrideRefused", Step::Demote.name(), note.clone()).await;
                Ok(Outcome::waiting(note, RECHECK))
            }
            (DemoteVerdict::ConfigurationError, Err(source)) => Err(StepError::PeerAccess { peer: self.peer_name.to_string(), source: Box::new(source) }),
            (DemoteVerdict::Disaster, Err(e)) => Ok(Outcome::ok(format!(
                "old primary {} unreachable for {timeout_s} ({e}): proceeding without its acknowledgement (disaster failover)",
                self.peer_name
            ))),
            (DemoteVerdict::Acknowledged, _) => {
                let p = answered.unwrap_or_default();
                // The token is what FinalSync catches up to, even if the peer is gone by then.
                self.failover()?.rpo_token = Some(RpoToken {
                    source_cluster_id: p.token_cluster_id.clone().unwrap_or_default(),
                    final_revision: p.final_revision,
                    ..Default::default()
                });
                Ok(Outcome::ok(format!(
                    "{} acknowledged demotion at revision {}",
                    self.peer_name,
                    p.final_revision.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())
                )))
            }
            (DemoteVerdict::NeverPrimary, _) => {
                Ok(Outcome::ok(format!("{} never was primary (no term, no demotion token): nothing to demote or catch up", self.peer_name)))
            }
            (DemoteVerdict::NotAcknowledged, _) => {
                let p = answered.unwrap_or_default();
                Err(StepError::NotAcknowledged {
                    peer: self.peer_name.to_string(),
                    timeout: timeout_s.clone(),
                    spec_primary: p.spec_primary,
                    role: p.role,
                    term: p.term,
                })
            }
            // A verdict on an error comes only from an error, and on an answer from one.
            (DemoteVerdict::ConfigurationError | DemoteVerdict::Disaster, Ok(_)) => wait(),
        }
    }

    /// Watches the old primary's etcd for [`OVERRIDE_QUIET_WINDOW`]: the client writes it took
    /// (every revision from the start to the end of the window, read back from its history) and
    /// its head at the end.
    async fn quiet_window(&self) -> Result<QuietWindow, String> {
        let peer = self.topo.spec.cluster(self.peer_name).ok_or_else(|| format!("cluster {} is not in spec.clusters", self.peer_name))?;
        let endpoint = crate::etcd::cluster_endpoint(&KubeSecrets::new(self.ctx.client.clone()), peer).await.map_err(|e| e.to_string())?;
        let mut conn = crate::etcd::connect(&endpoint).await.map_err(|e| e.to_string())?;
        let (_, from) = crate::etcd::head(&mut conn.kv).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(OVERRIDE_QUIET_WINDOW).await;
        let (cluster_id, head) = crate::etcd::head(&mut conn.kv).await.map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        if head > from {
            let opts = etcd_client::WatchOptions::new().with_all_keys().with_start_revision(from + 1);
            let mut stream = conn.watch.watch("", Some(opts)).await.map_err(|e| e.to_string())?;
            let mut seen = from;
            while seen < head {
                let resp = match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => return Err("its watch ended".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("its history up to revision {head} was not read back within 5s")),
                };
                for kv in resp.events().iter().filter_map(|e| e.kv()) {
                    seen = seen.max(kv.mod_revision());
                    if kv.mod_revision() <= head {
                        keys.push(kv.key().to_vec());
                    }
                }
            }
        }
        Ok(QuietWindow { writes: client_writes(keys.iter().map(Vec::as_slice)), head, cluster_id: format!("{cluster_id:x}") })
    }

    async fn final_sync(&mut self) -> Result<Outcome, StepError> {
        // One look waits a moment at most; once the step's bound is used the last look's error is
        // recorded and the planner applies the bound's policy.
        let bound = self.topo.spec.failover.final_sync.timeout;
        let left = final_sync_left_now(&self.status.status, self.topo).unwrap_or(bound);
        if matches!(self.topo.spec.sync.driver, Driver::Manifest(_)) {
            return Ok(Outcome::skipped("sync.driver is manifest: the platform's synchronizer cannot be asked for its revision"));
        }
        let acked = self.status.status.failover.as_ref().and_then(|f| f.rpo_token.clone());
        let Some(ack) = acked else {
            let applied = self.ctx.sync.applied_revision().await;
            let token = RpoToken {
                source_cluster_id: self.ctx.sync.source_cluster_id().await.unwrap_or_default(),
                applied_revision: applied.unwrap_or(0),
                ..Default::default()
            };
            self.failover()?.rpo_token = Some(token);
            return Ok(Outcome::skipped(format!(
                "old primary unreachable: nothing to catch up; last applied revision {}",
                applied.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())
            )));
        };
        let (own_term, peer_term) = (self.status.status.term, self.failover()?.peer_term);
        if !old_primary_may_be_newer(own_term, peer_term) {
            return Ok(Outcome::skipped(format!(
                "{} last held term {}, below ours {own_term}: this cluster was primary after it and holds the newer data; nothing imported",
                self.peer_name,
                peer_term.unwrap_or_default()
            )));
        }
        // The mirror may not be running when the controller restarted mid-failover.
        ensure_mirror(self.ctx, self.topo, self.self_name()).await.map_err(|e| StepError::StartMirror(Box::new(e)))?;
        // An acknowledgement without a revision (its etcd did not answer): catch up to the head.
        let final_revision = match ack.final_revision {
            Some(r) => r,
            None => self.ctx.sync.progress().await.map(|(p, _)| p.source_revision).unwrap_or(0),
        };
        let applied = match self.ctx.sync.wait_applied(final_revision, recheck_within(left)).await {
            Ok(applied) => applied,
            Err(SyncError::CatchUpTimeout { applied, want, .. }) if left > RECHECK => {
                return Ok(Outcome::waiting(
                    format!("waiting for the mirror to catch up to {}'s final revision {want} (applied {applied})", self.peer_name),
                    RECHECK,
                ));
            }
            Err(e) => {
                // The last look's error says how long the whole step waited.
                let e = match e {
                    SyncError::CatchUpTimeout { applied, want, .. } => SyncError::CatchUpTimeout { applied, want, after: bound },
                    e => e,
                };
                let applied = self.ctx.sync.applied_revision().await.unwrap_or(ack.applied_revision);
                self.unchecked_token(applied)?;
                return Err(StepError::CatchUp(Box::new(e)));
            }
        };
        // One still running from the standby days would double the read load. What a periodic
        // check finished or repaired since the flip is recorded (no standby reconcile has
        // collected it), before what is left of the bound is measured.
        self.ctx.sync.cancel_periodic().await;
        collect_periodic(self.ctx, self.topo, &mut self.status.status).await;
        // The check reads the whole keyspace inside this look (BENCHMARKS: 0.6 s at 100k keys,
        // 6-12 s at 1M, twice with a repair): a flip back is planned once it ends. Bounded by
        // what is left of the step's bound, so the bound's policy still applies on time.
        let left = final_sync_left_now(&self.status.status, self.topo).unwrap_or(bound);
        let check = self.ctx.sync.check_now(self.topo.spec.sync.auto_repair, None);
        let (report, repaired) = match tokio::time::timeout(left, check).await {
            Ok(Ok(checked)) => checked,
            Ok(Err(e)) => {
                self.unchecked_token(applied)?;
                return Err(StepError::Check(Box::new(e)));
            }
            Err(_) => {
                self.unchecked_token(applied)?;
                return Err(StepError::CheckTimeout { after: bound });
            }
        };
        let max = self.topo.spec.failover.max_missed_keys;
        let token = RpoToken {
            source_cluster_id: self.ctx.sync.source_cluster_id().await.unwrap_or(ack.source_cluster_id),
            final_revision: ack.final_revision,
            applied_revision: applied,
            missed_keys: Some(report.missed.count),
        };
        self.failover()?.rpo_token = Some(token);
        record_check(&mut self.status.status, &report, Timestamp::now(), repaired.as_ref().map(|r| r.outcome.put));
        if report.missed.count > max {
            return Err(StepError::MissedKeys { missed: report.missed.count, peer: self.peer_name.to_string(), max, first: report.missed.keys.join(", ") });
        }
        Ok(Outcome::ok(format!(
            "caught up to {}'s final revision {final_revision} (applied {applied}); check: {} missed, {} surplus, {} diverged{}",
            self.peer_name,
            report.missed.count,
            report.surplus.count,
            report.diverged.count,
            repaired.map(|r| format!(" after the repair: {}", r.summary())).unwrap_or_default()
        )))
    }

    /// What the RPO token says when this look's check did not finish and the bound's policy may
    /// go on without it: `applied`, and the missed keys of an earlier look's check if one
    /// finished. That check ran after catching up to the old primary's final revision, the
    /// revision the RPO is about, so its count still stands; unknown only if none finished (a
    /// look cut short by what is left of the bound used to erase it: "no check finished").
    fn unchecked_token(&mut self, applied: i64) -> Result<(), StepError> {
        if let Some(t) = self.failover()?.rpo_token.as_mut() {
            t.applied_revision = applied;
        }
        Ok(())
    }

    async fn hooks(&mut self, list: &[Hook], phase: hooks::Phase) -> Result<Outcome, StepError> {
        if list.is_empty() {
            return Ok(Outcome::skipped(format!("no {phase}-hooks")));
        }
        let secrets = KubeSecrets::new(self.ctx.client.clone());
        let id = self.failover_started()?.as_second().to_string();
        let mut done = Vec::new();
        for h in list {
            let recorded = self.failover()?.hooks_done.iter().find(|d| d.phase == phase.to_string() && d.name == h.name).map(|d| d.message.clone());
            if let Some(msg) = recorded {
                done.push(msg);
                continue;
            }
            let input = hooks::HookInput {
                hook: &h.name,
                phase,
                topology: &self.topo.name(),
                from: self.peer_name,
                to: self.self_name(),
                failover_id: &id,
                drill: false,
            };
            match hooks::run(&self.ctx.client, &secrets, h, &input).await.map_err(|e| StepError::Hook(Box::new(e)))? {
                hooks::HookRun::Done(msg) => {
                    self.failover()?.hooks_done.push(HookDone { phase: phase.to_string(), name: h.name.clone(), message: msg.clone() });
                    done.push(msg);
                }
                hooks::HookRun::Running { why, recheck_after } => return Ok(Outcome::waiting(why, recheck_after)),
            }
        }
        Ok(Outcome::ok(done.join("; ")))
    }

    fn target_vip(&self) -> Result<std::net::IpAddr, StepError> {
        Ok(self.topo.spec.cluster(self.self_name()).ok_or(StepError::NotInSpec)?.vip)
    }

    async fn switch_dns(&mut self) -> Result<Outcome, StepError> {
        let target = self.target_vip()?;
        let outcome = dns::switch_for(self.topo, &self.ctx.client, target).await.map_err(|e| StepError::SwitchDns(Box::new(e)))?;
        if !outcome.is_done() {
            return Err(StepError::DnsNotSwitched(outcome.to_string()));
        }
        let generation = self.generation();
        set_condition(&mut self.status.status, ConditionType::DNSCorrect, false, Reason::Switched, &outcome.to_string(), generation);
        Ok(Outcome::ok(outcome.to_string()))
    }

    /// Asks the verify resolvers once; until all answer the target VIP the step waits (with
    /// CoreDNS restarted, when asked to, once per failover), and fails with what each resolver
    /// said once `dns.verify.timeout` has passed since the step's first start.
    async fn verify_dns(&mut self) -> Result<Outcome, StepError> {
        let target = self.target_vip()?;
        let spec = &self.topo.spec.dns;
        let domain = &self.topo.spec.platform.domain;
        let timeout = spec.verify.timeout;
        let waited = self.step_waited(Step::VerifyDns)?;
        let resolvers = dns::verify_resolvers(&spec.verify.resolvers).map_err(|e| StepError::VerifyDns(Box::new(e)))?;
        let answers = dns::ask_verify(&resolvers, domain, target).await.map_err(|e| StepError::VerifyDns(Box::new(e)))?;
        let generation = self.generation();
        let said = answers.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("; ");
        match wait_verdict(answers.iter().all(|a| a.is(target)), waited, timeout) {
            WaitVerdict::Passed => {
                let msg = format!("{domain} answers {target} from {} resolver(s) after {:.1}s", resolvers.len(), waited.as_secs_f64());
                set_condition(&mut self.status.status, ConditionType::DNSCorrect, true, Reason::Verified, &msg, generation);
                Ok(Outcome::ok(msg))
            }
            WaitVerdict::Again(after) => {
                warn!(answers = %said, "DNS still wrong");
                if spec.verify.restart_core_dns {
                    self.restart_coredns().await?;
                }
                Ok(Outcome::waiting(
                    format!("waiting for {domain} to resolve to exactly {target} ({}s of {timeout:?}); last answers: {said}", waited.as_secs()),
                    after,
                ))
            }
            WaitVerdict::TimedOut => {
                let e = dns::DnsError::VerifyTimeout(format!("{domain} did not resolve to exactly {target} within {timeout:?}; last answers: {said}"));
                set_condition(&mut self.status.status, ConditionType::DNSCorrect, false, Reason::Wrong, &e.to_string(), generation);
                Err(StepError::VerifyDns(Box::new(e)))
            }
        }
    }

    /// Rolls CoreDNS out so its cached answers go; stamped with the failover's start, so a
    /// later look finds it done and restarts nothing.
    async fn restart_coredns(&self) -> Result<(), StepError> {
        let coredns = crate::topology::RestartSpec {
            name: "coredns".into(),
            scope: RestartScope::SelfCluster,
            namespace: "kube-system".into(),
            label_selector: "k8s-app=kube-dns".into(),
            method: crate::topology::RestartMethod::RolloutRestart,
            when: vec![RestartWhen::Failover],
        };
        if let Err(e) = restart::run(&self.ctx.client, &coredns, self.failover_started()?, Duration::ZERO).await {
            warn!(error = %e, "restarting CoreDNS failed");
        }
        Ok(())
    }
}

fn bad_time(field: &str, value: &str, e: k8s_openapi::jiff::Error) -> StepError {
    StepError::BadTime { field: field.to_string(), value: value.to_string(), reason: e.to_string() }
}

/// How long FinalSync of this cluster's failover in progress may still try: None before its first
/// start, zero once its bound is used.
pub fn final_sync_left_now(status: &crate::topology::DRTopologyStatus, topo: &ValidatedTopology) -> Option<Duration> {
    status.failover.as_ref().and_then(|f| final_sync_left(f, Timestamp::now(), topo.spec.failover.final_sync.timeout))
}

/// The steps a failover to `self_name` would run now and the facts they rest on
/// (`spec.failover.dryRun`, `drctl failover plan`).
pub fn describe(topo: &ValidatedTopology, self_name: &str, peer: &PeerView) -> String {
    let peer_name = topo.spec.peer_of(self_name).map(|c| c.name.as_str()).unwrap_or("?");
    let mut lines = Vec::new();
    for step in Step::ALL {
        let fact = match step {
            Step::Preflight | Step::Demote | Step::FinalSync => match peer.reachable() {
                Some(p) => format!("{peer_name} reachable, role {:?}, spec.primary {:?}", p.role, p.spec_primary),
                None => format!("{peer_name} unreachable: disaster path, no acknowledgement, no final sync"),
            },
            Step::PreHooks => format!("{} hook(s)", topo.spec.failover.pre_hooks.len()),
            Step::PostHooks => format!("{} hook(s)", topo.spec.failover.post_hooks.len()),
            Step::SwitchDns | Step::VerifyDns => {
                format!("{} -> {}", topo.spec.platform.domain, topo.spec.cluster(self_name).map(|c| c.vip.to_string()).unwrap_or_else(|| "?".into()))
            }
            Step::Restart => {
                let names: Vec<&str> = topo.spec.restarts.iter().filter(|r| r.when.contains(&RestartWhen::Failover)).map(|r| r.name.as_str()).collect();
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            }
            Step::StopSync | Step::Done => String::new(),
        };
        let fact = if fact.is_empty() { String::new() } else { format!(" [{fact}]") };
        lines.push(format!("{step}: {}{fact}", step.describe()));
    }
    lines.join("\n")
}
