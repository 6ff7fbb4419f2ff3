//! Noticing a reconcile that no longer makes progress, so `/readyz` can say so.
//!
//! Reconciles are serialised, so one stuck reconcile (a blocking read, a call without a
//! timeout) stops the controller while `/healthz` still answers. Each action of a reconcile
//! beats the watchdog with the time one run of it may legitimately take; a reconcile still busy
//! past that is stalled. A step that waits (an acknowledgement, a Job, DNS, readiness) looks once
//! per reconcile and requeues, and so do the `when: demotion` / `syncEnabled` restarts: a long
//! failover is many short reconciles, never one long one, and its budgets are those of one look,
//! not of the step's whole wait. What still runs long inside one look gets its own budget:
//! FinalSync's consistency check (bounded by `finalSyncTimeout`) and a hook step's webhooks (one
//! after another, each bounded by its timeout). The standby's periodic check runs beside the
//! reconciles (`replication::PeriodicCheck`), so it is in no look's budget.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::plan::{Action, Step};
use crate::validated::{Hook, HookKind, Spec};

/// What one look of any action may take on top of its own budget: several API calls, a peer's
/// timeout or two, DNS queries.
pub const STALL_AFTER: Duration = Duration::from_secs(120);

/// How long one run of `action` may take before the reconcile counts as stalled (pure).
pub fn step_budget(action: &Action, spec: &Spec) -> Duration {
    let own = match action {
        Action::RunStep(Step::FinalSync) => spec.failover.final_sync.timeout,
        Action::RunStep(Step::PreHooks) => webhooks_budget(&spec.failover.pre_hooks),
        Action::RunStep(Step::PostHooks) => webhooks_budget(&spec.failover.post_hooks),
        _ => Duration::ZERO,
    };
    own.saturating_add(STALL_AFTER)
}

/// One look of a hook step calls each webhook not yet done; a Job hook's look only reads its Job.
fn webhooks_budget(hooks: &[Hook]) -> Duration {
    hooks.iter().filter(|h| matches!(h.kind, HookKind::Webhook(_))).map(|_| crate::hooks::WEBHOOK_TIMEOUT).fold(Duration::ZERO, Duration::saturating_add)
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
        self.start_at(Instant::now())
    }

    fn start_at(&self, at: Instant) -> Busy<'_> {
        self.beat_at(at, STALL_AFTER);
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
        let t: crate::topology::DRTopology = serde_saphyr::from_str(text).expect("example");
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
    fn a_look_gets_the_budget_of_its_longest_synchronous_part() {
        let mut s = spec();
        // The whole waits are long; one look of them is not.
        s.failover.demotion_timeout = Duration::from_secs(600);
        s.failover.final_sync.timeout = Duration::from_secs(180);
        s.dns.verify.timeout = Duration::from_secs(300);
        let hook = |name: &str, job: bool| -> Hook {
            let kind = if job {
                serde_json::json!({"job": {"namespace": "drctl-system", "template": {}}})
            } else {
                serde_json::json!({"webhook": {"url": "https://hooks.example/x"}})
            };
            let mut v = kind;
            v["name"] = name.into();
            Hook::of(&serde_json::from_value(v).expect("hook")).expect("one kind")
        };
        s.failover.pre_hooks = vec![hook("notify", false), hook("forward", true), hook("page", false)];
        s.failover.post_hooks = vec![hook("forward", true)];
        let secs = Duration::from_secs;
        let cases = [
            (Action::Hold, STALL_AFTER, "planning and holding: API calls only"),
            (Action::RunStep(Step::SwitchDns), STALL_AFTER, "one provider update"),
            (Action::RunStep(Step::Demote), STALL_AFTER, "one read of the peer, not demotionTimeout"),
            (Action::RunStep(Step::VerifyDns), STALL_AFTER, "one round of queries, not verify.timeout"),
            (Action::RunStep(Step::Restart), STALL_AFTER, "restart once, list readiness once, not --restart-ready-timeout"),
            (Action::AcknowledgeDemotion { new_primary: "global-b".into() }, STALL_AFTER, "the demotion restarts look once per reconcile"),
            (Action::RunStep(Step::FinalSync), secs(180) + STALL_AFTER, "the consistency check, bounded by finalSyncTimeout"),
            (Action::RunStep(Step::PreHooks), crate::hooks::WEBHOOK_TIMEOUT * 2 + STALL_AFTER, "each webhook in turn; a Job hook is only read"),
            (Action::RunStep(Step::PostHooks), STALL_AFTER, "a Job hook is only read"),
            (Action::Mirror, STALL_AFTER, "a standby's look; its periodic check runs beside it"),
        ];
        for (action, want, rule) in cases {
            assert_eq!(step_budget(&action, &s), want, "{rule}: {action:?}");
        }
    }

    #[test]
    fn a_long_failover_of_short_looks_never_stalls_but_a_wedged_look_does() {
        let s = spec();
        let w = Watchdog::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // Demote waiting 10 minutes for an acknowledgement, a Job hook 10, readiness 5: a look
        // of 1 s every 2 s, each with its own budget.
        let steps = [(Step::Demote, 600), (Step::PreHooks, 600), (Step::Restart, 300)];
        let mut at = t0;
        for (step, waits) in steps {
            for _ in 0..waits / 2 {
                let busy = w.start_at(at);
                w.beat_at(at, step_budget(&Action::RunStep(step), &s));
                assert_eq!(w.stalled(at + secs(1)), None, "{step:?}: a look within its budget");
                drop(busy);
                assert_eq!(w.stalled(at + secs(2)), None, "{step:?}: between looks nothing runs");
                at += secs(2);
            }
        }
        assert!(at >= t0 + secs(1500), "the failover took 25 minutes");
        // One look that never returns (a call without a timeout): stalled once its budget is used.
        let _wedged = w.start_at(at);
        let budget = step_budget(&Action::RunStep(Step::Demote), &s);
        w.beat_at(at, budget);
        assert_eq!(w.stalled(at + budget), None);
        assert_eq!(w.stalled(at + budget + secs(1)), Some(budget + secs(1)), "a wedged Demote look is a stall long before demotionTimeout would end");
    }
}
