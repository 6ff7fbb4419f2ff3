//! The executor of the failover runbook: one function per step, each idempotent. `run` records
//! the step as Running before it acts and Succeeded/Skipped/Failed after, so a controller killed
//! inside a step runs that step again on restart and nothing twice that matters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, info_span, warn, Instrument};

use super::{Step, PeerView};
use crate::controller::status::{set_condition, StatusWriter};
use crate::controller::{peer, sync, Context, Error};
use crate::dns;
use crate::hooks;
use crate::restart;
use crate::secret::KubeSecrets;
use crate::topology::{DRTopology, FailoverStatus, Phase, RestartScope, RestartWhen, Role, RpoToken, StepState, StepStatus};
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

/// Records FinalSync as skipped by `finalSyncPolicy: proceed`, the keys it leaves behind in the
/// RPO token (they are lost), so the runbook goes on with StopSync.
pub fn proceed_without_final_sync(f: &mut FailoverStatus, missed: Option<u64>, reason: &str) {
    record(f, Step::FinalSync, StepState::Skipped, Some(reason.to_string()));
    if let Some(t) = f.rpo_token.as_mut() {
        t.missed_keys = missed;
    }
}

/// Marks every step that has not finished as Skipped (a flip back superseded the failover).
pub fn skip_remaining(f: &mut FailoverStatus, reason: &str) {
    let now = Timestamp::now().to_string();
    for step in Step::ALL {
        match f.steps.iter_mut().find(|s| s.name == step.name()) {
            Some(s) if matches!(s.state, StepState::Succeeded | StepState::Skipped) => {}
            Some(s) => {
                s.state = StepState::Skipped;
                s.finished_at = Some(now.clone());
                s.message = Some(reason.to_string());
            }
            None => f.steps.push(StepStatus {
                name: step.name().into(),
                state: StepState::Skipped,
                started_at: None,
                finished_at: Some(now.clone()),
                message: Some(reason.to_string()),
            }),
        }
    }
}

fn record(f: &mut FailoverStatus, step: Step, state: StepState, message: Option<String>) {
    let now = Some(Timestamp::now().to_string());
    let entry = match f.steps.iter_mut().position(|s| s.name == step.name()) {
        Some(i) => &mut f.steps[i],
        None => {
            f.steps.push(StepStatus { name: step.name().into(), ..Default::default() });
            let last = f.steps.len() - 1;
            &mut f.steps[last]
        }
    };
    if state == StepState::Running {
        // The first start: timeouts count from it across retries and restarts.
        if entry.started_at.is_none() {
            entry.started_at = now;
        }
        entry.finished_at = None;
    } else {
        entry.finished_at = now;
    }
    entry.state = state;
    entry.message = message;
}

impl Runbook<'_> {
    fn self_name(&self) -> &str {
        self.ctx.self_name()
    }

    fn generation(&self) -> Option<i64> {
        self.topo.metadata.generation
    }

    fn failover(&mut self) -> Result<&mut FailoverStatus, Error> {
        self.status.status.failover.as_mut().ok_or_else(|| Error::Other("no failover in progress".into()))
    }

    /// Runs one step with its before/after records, Events and metrics.
    pub async fn run(&mut self, step: Step) -> Result<(), Error> {
        let span = info_span!("step", step = step.name());
        async {
            record(self.failover()?, step, StepState::Running, Some(step.describe().to_string()));
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
                    record(self.failover()?, step, outcome.state, Some(outcome.message.clone()));
                    self.status.write().await?;
                    self.ctx
                        .event(self.topo, EventType::Normal, &format!("Step{}", step.name()), step.name(), format!("{step}: {} ({secs:.1}s)", outcome.message))
                        .await;
                    Ok(())
                }
                Err(message) => {
                    warn!(%message, "step failed");
                    record(self.failover()?, step, StepState::Failed, Some(message.clone()));
                    self.status.status.phase = Some(Phase::Degraded);
                    let generation = self.generation();
                    set_condition(&mut self.status.status, "Ready", false, "StepFailed", &format!("{step}: {message}"), generation);
                    self.status.write().await?;
                    self.ctx.event(self.topo, EventType::Warning, "StepFailed", step.name(), format!("{step}: {message}")).await;
                    Err(Error::Step { step, message })
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn execute(&mut self, step: Step) -> Result<Outcome, String> {
        match step {
            Step::Preflight => self.preflight().await,
            Step::Demote => self.demote().await,
            Step::FinalSync => self.final_sync().await,
            Step::StopSync => {
                sync::stop_replication(self.ctx, self.topo).await.map_err(|e| e.to_string())?;
                // Nothing writes underneath any more: this cluster's own control plane may act
                // on the data from now on (the hooks, DNS and restarts that follow need it to).
                crate::fence::remove(&self.ctx.client, self.topo).await.map_err(|e| e.to_string())?;
                Ok(Outcome::ok(format!("no longer replicating from {}; fence lifted", self.peer_name)))
            }
            Step::PreHooks => self.hooks(&self.topo.spec.failover.pre_hooks.clone(), "pre").await,
            Step::SwitchDns => self.switch_dns().await,
            Step::VerifyDns => self.verify_dns().await,
            Step::Restart => self.restarts(RestartWhen::Failover, self.failover_started()).await,
            Step::PostHooks => self.hooks(&self.topo.spec.failover.post_hooks.clone(), "post").await,
            Step::Done => {
                let generation = self.generation();
                let st = &mut self.status.status;
                st.role = Some(Role::Primary);
                st.phase = Some(Phase::Steady);
                st.sync = None;
                // Computed before the record is marked complete, from the peer term it holds.
                st.term = super::next_term(st);
                let term = st.term;
                if let Some(f) = st.failover.as_mut() {
                    f.completed_at = Some(Timestamp::now().to_string());
                    f.term = Some(term);
                }
                set_condition(st, "Ready", true, "Steady", "primary", generation);
                set_condition(st, "SyncHealthy", true, "Primary", "a primary does not replicate", generation);
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

    async fn preflight(&mut self) -> Result<Outcome, String> {
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
                    Err(format!("{msg}. Use the same file on both clusters, or set spec.failover.allowEncryptionConfigMismatch"))
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
    fn record_peer_term(&mut self, term: i64) -> Result<(), String> {
        let f = self.failover().map_err(|e| e.to_string())?;
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
            .and_then(|f| f.steps.iter().find(|s| s.name == step.name()))
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
    async fn demote(&mut self) -> Result<Outcome, String> {
        let timeout = parse_duration(&self.topo.spec.failover.demotion_timeout).unwrap_or(Duration::from_secs(120));
        let started = self.step_started(Step::Demote);
        let mut down_since: Option<Instant> = None;
        loop {
            let p = match peer::read(&self.ctx.client, self.topo, self.peer_name).await {
                Err(e) if !e.may_be_down() => {
                    return Err(format!(
                        "cannot ask {} to step down: {e}. Fix the peer access (kubeconfig Secret, its RBAC); \
                         a configuration error is never taken for a disaster",
                        self.peer_name
                    ))
                }
                Err(e) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= timeout {
                        return Ok(Outcome::ok(format!(
                            "old primary {} unreachable for {} ({e}): proceeding without its acknowledgement (disaster failover)",
                            self.peer_name, self.topo.spec.failover.demotion_timeout
                        )));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Ok(t) => {
                    down_since = None;
                    t.map(|t| peer::peer_state(&t, self.peer_name)).unwrap_or_default()
                }
            };
            self.record_peer_term(p.term)?;
            if p.demoted_for.as_deref() == Some(self.self_name()) && p.role == Some(Role::Standby) {
                // The token is what FinalSync catches up to, even if the peer is gone by then.
                self.failover().map_err(|e| e.to_string())?.rpo_token = Some(RpoToken {
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
            if started.elapsed() >= timeout {
                return Err(format!(
                    "{} is reachable but did not acknowledge demotion within {} (its spec.primary is {:?}, role {:?}). \
                     Check its controller and Argo CD sync; only an old primary unreachable for that long is failed over from",
                    self.peer_name, self.topo.spec.failover.demotion_timeout, p.spec_primary, p.role
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn final_sync(&mut self) -> Result<Outcome, String> {
        // One attempt waits no longer than the step's bound has left, so the bound's policy
        // decides on time (the planner applies it once the bound is used).
        let attempt = parse_duration(&self.topo.spec.failover.demotion_timeout).unwrap_or(Duration::from_secs(120));
        let bound = final_sync_bound(self.topo).timeout;
        let left = self.status.status.failover.as_ref().and_then(|f| super::final_sync_left(f, Timestamp::now(), bound));
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
            self.failover().map_err(|e| e.to_string())?.rpo_token = Some(token);
            return Ok(Outcome::skipped(format!(
                "old primary unreachable: nothing to catch up; last applied revision {}",
                applied.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())
            )));
        };
        // The mirror may not be running when the controller restarted mid-failover.
        sync::ensure_mirror(self.ctx, self.topo, self.self_name()).await.map_err(|e| e.to_string())?;
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
                if let Some(t) = self.failover().map_err(|e| e.to_string())?.rpo_token.as_mut() {
                    t.applied_revision = applied;
                    t.missed_keys = None;
                }
                return Err(e.to_string());
            }
        };
        let (report, repaired) = self.ctx.sync.check_now(self.topo.spec.sync.auto_repair, None).await.map_err(|e| e.to_string())?;
        let max = self.topo.spec.failover.max_missed_keys;
        let token = RpoToken {
            source_cluster_id: self.ctx.sync.source_cluster_id().await.unwrap_or(ack.source_cluster_id),
            final_revision: ack.final_revision,
            applied_revision: applied,
            missed_keys: Some(report.missed.count),
        };
        self.failover().map_err(|e| e.to_string())?.rpo_token = Some(token);
        sync::record_check(&mut self.status.status, &report, repaired.as_ref());
        if report.missed.count > max {
            return Err(format!(
                "{} keys of {} are missing here (spec.failover.maxMissedKeys is {max}); first: {}",
                report.missed.count,
                self.peer_name,
                report.missed.keys.join(", ")
            ));
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

    async fn hooks(&mut self, list: &[crate::topology::Hook], phase: &str) -> Result<Outcome, String> {
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
            let msg = hooks::run(&self.ctx.client, &secrets, h, &input).await.map_err(|e| e.to_string())?;
            done.push(msg);
        }
        Ok(Outcome::ok(done.join("; ")))
    }

    fn target_vip(&self) -> Result<std::net::IpAddr, String> {
        let c = self.topo.spec.cluster(self.self_name()).ok_or("this cluster is not in spec.clusters")?;
        c.vip.parse().map_err(|_| format!("spec vip {:?} is not an IP address", c.vip))
    }

    async fn switch_dns(&mut self) -> Result<Outcome, String> {
        let target = self.target_vip()?;
        let secrets = KubeSecrets::new(self.ctx.client.clone());
        let annotations = self.topo.annotations().clone();
        let sctx = dns::SwitchContext { secrets: &secrets, kube: Some(self.ctx.client.clone()), annotations: &annotations };
        let outcome = dns::switch(&self.topo.spec.dns, &self.topo.spec.platform, target, &sctx)
            .await
            .map_err(|e| e.to_string())?;
        if !outcome.is_done() {
            return Err(outcome.to_string());
        }
        let generation = self.generation();
        set_condition(&mut self.status.status, "DNSCorrect", false, "Switched", &outcome.to_string(), generation);
        Ok(Outcome::ok(outcome.to_string()))
    }

    async fn verify_dns(&mut self) -> Result<Outcome, String> {
        let target = self.target_vip()?;
        let spec = &self.topo.spec.dns;
        let timeout = dns::verify_timeout(spec).map_err(|e| e.to_string())?;
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
                set_condition(&mut self.status.status, "DNSCorrect", true, "Verified", &msg, generation);
                Ok(Outcome::ok(msg))
            }
            Err(e) => {
                set_condition(&mut self.status.status, "DNSCorrect", false, "Wrong", &e.to_string(), generation);
                Err(e.to_string())
            }
        }
    }

    async fn restarts(&mut self, when: RestartWhen, stamp: Timestamp) -> Result<Outcome, String> {
        run_restarts(self.ctx, self.topo, when, stamp).await
    }
}

/// `spec.failover.finalSyncTimeout` (validated; the default if it somehow does not parse) and
/// `finalSyncPolicy`.
pub fn final_sync_bound(topo: &DRTopology) -> super::FinalSyncBound {
    let f = &topo.spec.failover;
    super::FinalSyncBound { timeout: parse_duration(&f.final_sync_timeout).unwrap_or(Duration::from_secs(120)), policy: f.final_sync_policy }
}

/// Runs every restart declared for `when`, in this cluster and in the workload clusters.
pub async fn run_restarts(ctx: &Arc<Context>, topo: &DRTopology, when: RestartWhen, stamp: Timestamp) -> Result<Outcome, String> {
    let wanted: Vec<_> = topo.spec.restarts.iter().filter(|r| r.when.contains(&when)).collect();
    if wanted.is_empty() {
        return Ok(Outcome::skipped(format!("no restarts with when: {when:?}")));
    }
    let timeout = ctx.args.restart_ready_timeout;
    let mut lines = Vec::new();
    for r in wanted {
        match r.scope {
            RestartScope::SelfCluster => {
                let rep = restart::run(&ctx.client, r, stamp, timeout).await.map_err(|e| e.to_string())?;
                lines.push(rep.summary());
            }
            RestartScope::WorkloadClusters => {
                for wc in &topo.spec.workload_clusters {
                    let client = peer::kubeconfig_client(&ctx.client, &wc.kubeconfig_secret_ref)
                        .await
                        .map_err(|e| format!("workload cluster {}: {e}", wc.name))?;
                    let rep = restart::run(&client, r, stamp, timeout)
                        .await
                        .map_err(|e| format!("workload cluster {}: {e}", wc.name))?;
                    lines.push(format!("{} in {}", rep.summary(), wc.name));
                }
            }
        }
    }
    Ok(Outcome::ok(lines.join("; ")))
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
