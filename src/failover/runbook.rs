//! The executor of the failover runbook: one function per step, each idempotent. `run` records
//! the step as Running before it acts and Succeeded/Skipped/Failed after, so a controller killed
//! inside a step runs that step again on restart and nothing twice that matters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, info_span, warn, Instrument};

use super::error::StepError;
use crate::controller::context::Context;
use crate::controller::status::StatusWriter;
use crate::controller::error::Error;
use crate::controller::peer::{self, peer_state};
use crate::controller::sync::{ensure_mirror, stop_replication};
use crate::decide::conditions::{set_condition, ConditionType, Reason};
use crate::decide::demote::{demote_verdict, DemoteFacts, DemoteVerdict, PeerAnswer};
use crate::decide::plan::{final_sync_left, step_record, FinalSyncBound, PeerView, Step};
use crate::decide::standby::record_check;
use crate::decide::transition::{failover_done, record_step};
use crate::dns;
use crate::hooks;
use crate::restart;
use crate::secret::KubeSecrets;
use crate::topology::{DRTopology, FailoverStatus, Phase, RestartScope, RestartWhen, RpoToken, StepState};
use crate::validate::parse_duration;

/// What a step ended with.
pub struct Outcome {
    pub state: StepState,
    pub message: String,
}

impl Outcome {
    fn ok(message: impl Into<String>) -> Self {
        Self { state: StepState::Succeeded, message: message.into() }
    }
    fn skipped(message: impl Into<String>) -> Self {
        Self { state: StepState::Skipped, message: message.into() }
    }
}

pub struct Runbook<'a> {
    pub ctx: &'a Arc<Context>,
    pub topo: &'a DRTopology,
    pub peer_name: &'a str,
    pub status: &'a mut StatusWriter,
}

impl Runbook<'_> {
    fn self_name(&self) -> &str {
        self.ctx.self_name()
    }

    fn generation(&self) -> Option<i64> {
        self.topo.metadata.generation
    }

    fn failover(&mut self) -> Result<&mut FailoverStatus, StepError> {
        self.status.status.failover.as_mut().ok_or(StepError::NoFailover)
    }

    /// Runs one step with its before/after records, Events and metrics.
    pub async fn run(&mut self, step: Step) -> Result<(), Error> {
        let span = info_span!("step", step = step.name());
        async {
            let failed = |source| Error::Step { step, source };
            record_step(self.failover().map_err(failed)?, step, StepState::Running, Some(step.describe().to_string()), Timestamp::now());
            self.status.status.phase = Some(Phase::FailingOver);
            self.status.write().await?;
            // A step may take minutes (hooks, DNS): its start must reach /metrics before it ends.
            self.ctx.metrics.observe_status(&self.status.status);
            let started = Instant::now();
            info!("step started");
            let result = self.execute(step).await;
            let secs = started.elapsed().as_secs_f64();
            self.ctx.metrics.step_finished(step.name(), secs);
            match result {
                Ok(outcome) => {
                    info!(message = %outcome.message, seconds = secs, "step finished");
                    record_step(self.failover().map_err(failed)?, step, outcome.state, Some(outcome.message.clone()), Timestamp::now());
                    self.status.write().await?;
                    self.ctx
                        .event(self.topo, EventType::Normal, &format!("Step{}", step.name()), step.name(), format!("{step}: {} ({secs:.1}s)", outcome.message))
                        .await;
                    Ok(())
                }
                Err(e) => {
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

    async fn execute(&mut self, step: Step) -> Result<Outcome, StepError> {
        match step {
            Step::Preflight => self.preflight().await,
            Step::Demote => self.demote().await,
            Step::FinalSync => self.final_sync().await,
            Step::StopSync => {
                stop_replication(self.ctx, self.topo).await.map_err(|e| StepError::StopSync(Box::new(e)))?;
                // Nothing writes underneath any more: this cluster's own control plane may act
                // on the data from now on (the hooks, DNS and restarts that follow need it to).
                crate::fence::remove(&self.ctx.client, self.topo).await.map_err(|e| StepError::LiftFence(Box::new(e)))?;
                Ok(Outcome::ok(format!("no longer replicating from {}; fence lifted", self.peer_name)))
            }
            Step::PreHooks => self.hooks(&self.topo.spec.failover.pre_hooks.clone(), hooks::Phase::Pre).await,
            Step::SwitchDns => self.switch_dns().await,
            Step::VerifyDns => self.verify_dns().await,
            Step::Restart => {
                let stamp = self.failover_started();
                let done = restart::run_all(&self.ctx.client, &self.topo.spec, RestartWhen::Failover, stamp, self.ctx.args.restart_ready_timeout).await;
                Ok(match done.map_err(|e| StepError::Restart(Box::new(e)))? {
                    Some(summary) => Outcome::ok(summary),
                    None => Outcome::skipped(format!("no restarts with when: {:?}", RestartWhen::Failover)),
                })
            }
            Step::PostHooks => self.hooks(&self.topo.spec.failover.post_hooks.clone(), hooks::Phase::Post).await,
            Step::Done => {
                let generation = self.generation();
                let term = failover_done(&mut self.status.status, Timestamp::now(), generation);
                Ok(Outcome::ok(format!("{} is primary, term {term}", self.self_name())))
            }
        }
    }

    fn failover_started(&self) -> Timestamp {
        self.status
            .status
            .failover
            .as_ref()
            .and_then(|f| f.started_at.as_ref())
            .and_then(|s| s.parse::<Timestamp>().ok())
            .unwrap_or_else(Timestamp::now)
    }

    async fn observe_peer(&self) -> (PeerView, Option<String>) {
        peer::observe(&self.ctx.client, self.topo, self.peer_name).await
    }

    async fn preflight(&mut self) -> Result<Outcome, StepError> {
        let (view, why) = self.observe_peer().await;
        let mine = self.status.status.encryption_config_sha256.clone();
        let Some(p) = view.reachable() else {
            return Ok(Outcome::ok(format!(
                "old primary {} unreachable ({}); encryption fingerprints not compared",
                self.peer_name,
                why.unwrap_or_default()
            )));
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

    fn step_started(&self, step: Step) -> Instant {
        // Timeouts count from when the step first started, so a restarted controller does not
        // wait a fresh full timeout.
        let started = self
            .status
            .status
            .failover
            .as_ref()
            .and_then(|f| step_record(f, step))
            .and_then(|s| s.started_at.as_ref())
            .and_then(|s| s.parse::<Timestamp>().ok());
        let ago = started
            .map(|t| Timestamp::now().duration_since(t).unsigned_abs())
            .unwrap_or_default();
        Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
    }

    /// Waits for the old primary's demotion token. Proceeds without it only when the old primary
    /// has been unreachable for a whole `demotionTimeout` in a row (a blip is not a disaster), and
    /// never when the failure is our own configuration or credentials.
    async fn demote(&mut self) -> Result<Outcome, StepError> {
        let timeout = parse_duration(&self.topo.spec.failover.demotion_timeout).unwrap_or(Duration::from_secs(120));
        let started = self.step_started(Step::Demote);
        let mut down_since: Option<Instant> = None;
        loop {
            let read = peer::read(&self.ctx.client, self.topo, self.peer_name).await;
            let answered = match &read {
                Ok(t) => {
                    down_since = None;
                    Some(t.as_ref().map(|t| peer_state(t, self.peer_name)).unwrap_or_default())
                }
                Err(e) if e.may_be_down() => {
                    down_since.get_or_insert_with(Instant::now);
                    None
                }
                Err(_) => None,
            };
            if let Some(p) = &answered {
                self.record_peer_term(p.term)?;
            }
            let answer = match (&read, &answered) {
                (Err(e), _) => e.answer(),
                (Ok(_), Some(p)) => PeerAnswer::Answered(p),
                (Ok(_), None) => PeerAnswer::Down,
            };
            let facts = DemoteFacts { self_name: self.self_name(), answer, down_for: down_since.map(|t| t.elapsed()), waited: started.elapsed(), timeout };
            match (demote_verdict(&facts), read) {
                (DemoteVerdict::Wait, _) => tokio::time::sleep(Duration::from_secs(1)).await,
                (DemoteVerdict::ConfigurationError, Err(source)) => return Err(StepError::PeerAccess { peer: self.peer_name.to_string(), source: Box::new(source) }),
                (DemoteVerdict::Disaster, Err(e)) => {
                    return Ok(Outcome::ok(format!(
                        "old primary {} unreachable for {} ({e}): proceeding without its acknowledgement (disaster failover)",
                        self.peer_name, self.topo.spec.failover.demotion_timeout
                    )))
                }
                (DemoteVerdict::Acknowledged, _) => {
                    let p = answered.unwrap_or_default();
                    // The token is what FinalSync catches up to, even if the peer is gone by then.
                    self.failover()?.rpo_token = Some(RpoToken {
                        source_cluster_id: p.token_cluster_id.clone().unwrap_or_default(),
                        final_revision: p.final_revision,
                        ..Default::default()
                    });
                    return Ok(Outcome::ok(format!(
                        "{} acknowledged demotion at revision {}",
                        self.peer_name,
                        p.final_revision.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())
                    )));
                }
                (DemoteVerdict::NotAcknowledged, _) => {
                    let p = answered.unwrap_or_default();
                    return Err(StepError::NotAcknowledged {
                        peer: self.peer_name.to_string(),
                        timeout: self.topo.spec.failover.demotion_timeout.clone(),
                        spec_primary: p.spec_primary,
                        role: p.role,
                    });
                }
                // A verdict on an error comes only from an error, and on an answer from one.
                (DemoteVerdict::ConfigurationError | DemoteVerdict::Disaster, Ok(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    async fn final_sync(&mut self) -> Result<Outcome, StepError> {
        // One attempt waits no longer than the step's bound has left, so the bound's policy
        // decides on time (the planner applies it once the bound is used).
        let attempt = parse_duration(&self.topo.spec.failover.demotion_timeout).unwrap_or(Duration::from_secs(120));
        let bound = final_sync_bound(self.topo).timeout;
        let left = self.status.status.failover.as_ref().and_then(|f| final_sync_left(f, Timestamp::now(), bound));
        let timeout = attempt.min(left.unwrap_or(bound)).max(Duration::from_secs(1));
        if self.topo.spec.sync.driver == crate::topology::SyncDriver::Manifest {
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
        // The mirror may not be running when the controller restarted mid-failover.
        ensure_mirror(self.ctx, self.topo, self.self_name()).await.map_err(|e| StepError::StartMirror(Box::new(e)))?;
        // An acknowledgement without a revision (its etcd did not answer): catch up to the head.
        let final_revision = match ack.final_revision {
            Some(r) => r,
            None => self.ctx.sync.progress().await.map(|(p, _)| p.source_revision).unwrap_or(0),
        };
        let applied = match self.ctx.sync.wait_applied(final_revision, timeout).await {
            Ok(applied) => applied,
            Err(e) => {
                // What the RPO token says if the bound's policy goes on without FinalSync.
                let applied = self.ctx.sync.applied_revision().await.unwrap_or(ack.applied_revision);
                if let Some(t) = self.failover()?.rpo_token.as_mut() {
                    t.applied_revision = applied;
                    t.missed_keys = None;
                }
                return Err(StepError::CatchUp(Box::new(e)));
            }
        };
        let (report, repaired) = self.ctx.sync.check_now(self.topo.spec.sync.auto_repair, None).await.map_err(|e| StepError::Check(Box::new(e)))?;
        let max = self.topo.spec.failover.max_missed_keys;
        let token = RpoToken {
            source_cluster_id: self.ctx.sync.source_cluster_id().await.unwrap_or(ack.source_cluster_id),
            final_revision: ack.final_revision,
            applied_revision: applied,
            missed_keys: Some(report.missed.count),
        };
        self.failover()?.rpo_token = Some(token);
        record_check(&mut self.status.status, &report, repaired.as_ref().map(|r| r.outcome.put));
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

    async fn hooks(&mut self, list: &[crate::topology::Hook], phase: hooks::Phase) -> Result<Outcome, StepError> {
        if list.is_empty() {
            return Ok(Outcome::skipped(format!("no {phase}-hooks")));
        }
        let secrets = KubeSecrets::new(self.ctx.client.clone());
        let id = self.failover_started().as_second().to_string();
        let mut done = Vec::new();
        for h in list {
            let input = hooks::HookInput {
                hook: &h.name,
                phase,
                topology: &self.topo.name_any(),
                from: self.peer_name,
                to: self.self_name(),
                failover_id: &id,
            };
            let msg = hooks::run(&self.ctx.client, &secrets, h, &input).await.map_err(|e| StepError::Hook(Box::new(e)))?;
            done.push(msg);
        }
        Ok(Outcome::ok(done.join("; ")))
    }

    fn target_vip(&self) -> Result<std::net::IpAddr, StepError> {
        let c = self.topo.spec.cluster(self.self_name()).ok_or(StepError::NotInSpec)?;
        c.vip.parse().map_err(|_| StepError::BadVip(c.vip.clone()))
    }

    async fn switch_dns(&mut self) -> Result<Outcome, StepError> {
        let target = self.target_vip()?;
        let secrets = KubeSecrets::new(self.ctx.client.clone());
        let annotations = self.topo.annotations().clone();
        let sctx = dns::SwitchContext { secrets: &secrets, kube: Some(self.ctx.client.clone()), annotations: &annotations };
        let outcome = dns::switch(&self.topo.spec.dns, &self.topo.spec.platform, target, &sctx)
            .await
            .map_err(|e| StepError::SwitchDns(Box::new(e)))?;
        if !outcome.is_done() {
            return Err(StepError::DnsNotSwitched(outcome.to_string()));
        }
        let generation = self.generation();
        set_condition(&mut self.status.status, ConditionType::DNSCorrect, false, Reason::Switched, &outcome.to_string(), generation);
        Ok(Outcome::ok(outcome.to_string()))
    }

    async fn verify_dns(&mut self) -> Result<Outcome, StepError> {
        let target = self.target_vip()?;
        let spec = &self.topo.spec.dns;
        let timeout = dns::verify_timeout(spec).map_err(|e| StepError::VerifyTimeout(Box::new(e)))?;
        let restart_coredns = spec.verify.restart_core_dns;
        let client = self.ctx.client.clone();
        let stamp = self.failover_started();
        let generation = self.generation();
        let mut restarted = false;
        let result = dns::verify(spec, &self.topo.spec.platform, target, timeout, |answers| {
            let client = client.clone();
            let first_time = !restarted;
            restarted = true;
            async move {
                let said: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
                warn!(answers = %said.join("; "), "DNS still wrong");
                if restart_coredns && first_time {
                    let coredns = crate::topology::RestartSpec {
                        name: "coredns".into(),
                        scope: RestartScope::SelfCluster,
                        namespace: "kube-system".into(),
                        label_selector: "k8s-app=kube-dns".into(),
                        method: crate::topology::RestartMethod::RolloutRestart,
                        when: vec![RestartWhen::Failover],
                    };
                    if let Err(e) = restart::run(&client, &coredns, stamp, Duration::ZERO).await {
                        warn!(error = %e, "restarting CoreDNS failed");
                    }
                }
            }
        })
        .await;
        match result {
            Ok(v) => {
                let msg = format!(
                    "{} answers {target} from {} resolver(s) after {} attempt(s), {:.1}s",
                    self.topo.spec.platform.domain,
                    v.resolvers.len(),
                    v.attempts,
                    v.elapsed.as_secs_f64()
                );
                set_condition(&mut self.status.status, ConditionType::DNSCorrect, true, Reason::Verified, &msg, generation);
                Ok(Outcome::ok(msg))
            }
            Err(e) => {
                set_condition(&mut self.status.status, ConditionType::DNSCorrect, false, Reason::Wrong, &e.to_string(), generation);
                Err(StepError::VerifyDns(Box::new(e)))
            }
        }
    }
}

/// `spec.failover.finalSyncTimeout` (validated; the default if it somehow does not parse) and
/// `finalSyncPolicy`.
pub fn final_sync_bound(topo: &DRTopology) -> FinalSyncBound {
    let f = &topo.spec.failover;
    FinalSyncBound { timeout: parse_duration(&f.final_sync_timeout).unwrap_or(Duration::from_secs(120)), policy: f.final_sync_policy }
}

/// The steps a failover to `self_name` would run now and the facts they rest on
/// (`spec.failover.dryRun`, `drctl failover plan`).
pub fn describe(topo: &DRTopology, self_name: &str, peer: &PeerView) -> String {
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
            Step::SwitchDns | Step::VerifyDns => format!(
                "{} -> {}",
                topo.spec.platform.domain,
                topo.spec.cluster(self_name).map(|c| c.vip.as_str()).unwrap_or("?")
            ),
            Step::Restart => {
                let names: Vec<&str> = topo
                    .spec
                    .restarts
                    .iter()
                    .filter(|r| r.when.contains(&RestartWhen::Failover))
                    .map(|r| r.name.as_str())
                    .collect();
                if names.is_empty() { "none".into() } else { names.join(", ") }
            }
            Step::StopSync | Step::Done => String::new(),
        };
        let fact = if fact.is_empty() { String::new() } else { format!(" [{fact}]") };
        lines.push(format!("{step}: {}{fact}", step.describe()));
    }
    lines.join("\n")
}
