//! Noticing a reconcile that no longer makes progress, so `/readyz` can say so.
//!
//! Reconciles are serialised, so one stuck reconcile (a blocking read, a call without a
//! timeout) stops the controller while `/healthz` still answers. Each step of a reconcile
//! beats the watchdog with the time that step may legitimately take; a reconcile still busy past
//! that is stalled. Long steps get their own budget, so a slow failover is not reported as a
//! stall. (Runbook steps now requeue between looks, so their budgets are looser than one look
//! needs; the `when: demotion` / `syncEnabled` restarts of AcknowledgeDemotion and Mirror still
//! wait up to `--restart-ready-timeout` inside the reconcile.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::plan::{Action, Step};
use crate::validated::{Hook, HookKind, Spec};

/// What any step may take on top of its own waits: several requeue intervals (5s) of API calls,
/// a consistency check of a large keyspace, a peer timeout or two.
pub const STALL_AFTER: Duration = Duration::from_secs(120);

/// How long the step `action` may run before the reconcile counts as stalled (pure).
pub fn step_budget(action: &Action, spec: &Spec, restart_ready_timeout: Duration) -> Duration {
    let own = match action {
        Action::RunStep(Step::Demote | Step::FinalSync) => spec.failover.demotion_timeout,
        Action::RunStep(Step::VerifyDns) => spec.dns.verify.timeout,
        Action::RunStep(Step::PreHooks) => hooks_budget(&spec.failover.pre_hooks),
        Action::RunStep(Step::PostHooks) => hooks_budget(&spec.failover.post_hooks),
        Action::RunStep(Step::Restart) | Action::AcknowledgeDemotion { .. } | Action::Mirror | Action::HoldAbandoned { mirror: true, .. } => {
            let clusters = spec.workload_clusters.len().max(1) as u32;
            restart_ready_timeout.saturating_mul(spec.restarts.len() as u32).saturating_mul(clusters)
        }
        _ => Duration::ZERO,
    };
    own.saturating_add(STALL_AFTER)
}

fn hooks_budget(hooks: &[Hook]) -> Duration {
    hooks
        .iter()
        .map(|h| match h.kind {
            HookKind::Job(_) => crate::hooks::JOB_TIMEOUT,
            HookKind::Webhook(_) => crate::hooks::WEBHOOK_TIMEOUT,
        })
        .fold(Duration::ZERO, Duration::saturating_add)
}

#[derive(Debug, Default)]
struct Beat {
    /// Set while a reconcile runs: when its current step began and what it may take.
    busy: Option<(Instant, Duration)>,
}

#[derive(Debug, Default)]
pub struct Watchdog {
    state: Mutex<Beat>,
}

/// Clears "busy" when the reconcile ends, however it ends (error, cancellation).
pub struct Busy<'a>(&'a Watchdog);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.busy = None;
        }
    }
}

impl Watchdog {
    /// A reconcile starts; its first step (read, validate, observe, plan) gets [`STALL_AFTER`].
    pub fn start(&self) -> Busy<'_> {
        self.beat_at(Instant::now(), STALL_AFTER);
        Busy(self)
    }

    /// A new step starts that may take `budget`.
    pub fn beat(&self, budget: Duration) {
        self.beat_at(Instant::now(), budget);
    }

    fn beat_at(&self, at: Instant, budget: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.busy = Some((at, budget));
        }
    }

    /// How long the current step has run past its budget's start, when it overran it.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let s = self.state.lock().ok()?;
        let (since, budget) = s.busy?;
        let ran = now.saturating_duration_since(since);
        (ran > budget).then_some(ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        let text = include_str!("../../examples/minimal.yaml");
        let t: crate::topology::DRTopology = serde_norway::from_str(text).expect("example");
        crate::validated::ValidatedTopology::try_from(&t).expect("valid").spec
    }

    #[test]
    fn stalled_only_while_busy_and_past_the_budget() {
        let w = Watchdog::default();
        let t0 = Instant::now();
        assert_eq!(w.stalled(t0 + Duration::from_secs(3600)), None, "idle is never stalled");
        {
            let _busy = w.start();
            w.beat_at(t0, Duration::from_secs(10));
            assert_eq!(w.stalled(t0 + Duration::from_secs(10)), None);
            assert_eq!(w.stalled(t0 + Duration::from_secs(11)), Some(Duration::from_secs(11)));
            w.beat_at(t0 + Duration::from_secs(11), Duration::from_secs(10));
            assert_eq!(w.stalled(t0 + Duration::from_secs(12)), None, "a new step resets the clock");
        }
        assert_eq!(w.stalled(t0 + Duration::from_secs(3600)), None, "a finished reconcile is not stalled");
    }

    #[test]
    fn long_steps_get_their_own_budget() {
        let mut s = spec();
        s.failover.demotion_timeout = Duration::from_secs(600);
        s.dns.verify.timeout = Duration::from_secs(60);
        let ready = Duration::from_secs(300);
        let cases = [
            (Action::Hold, STALL_AFTER),
            (Action::RunStep(Step::SwitchDns), STALL_AFTER),
            (Action::RunStep(Step::Demote), Duration::from_secs(600) + STALL_AFTER),
            (Action::RunStep(Step::FinalSync), Duration::from_secs(600) + STALL_AFTER),
            (Action::RunStep(Step::VerifyDns), Duration::from_secs(60) + STALL_AFTER),
            (Action::RunStep(Step::PostHooks), STALL_AFTER),
            (Action::RunStep(Step::Restart), ready * s.restarts.len() as u32 + STALL_AFTER),
        ];
        for (action, want) in cases {
            assert_eq!(step_budget(&action, &s, ready), want, "{action:?}");
        }
    }
}
