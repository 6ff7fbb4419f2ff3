//! Whether this cluster is fenced: its own controllers refused writes to replicated data.

use std::time::Duration;

use super::plan::{in_progress, step_finished, Step};
use crate::topology::{DRTopologyStatus, Role};

/// How long a fence just put up may still let writes through. kube-apiserver enforces an
/// admission policy only after its informer delivers it and its policy source recompiles, which
/// it does at most once a second (k8s.io/apiserver `plugin/policy/generic/policy_source.go`,
/// `policyRefreshInterval`); the policy and its binding are two objects that may land in two
/// refreshes. A write admitted in that window commits after a final revision read too early.
pub const FENCE_SETTLE: Duration = Duration::from_secs(3);

/// How much longer to wait before reading a final revision behind a fence up for `fenced_for`
/// (None: not fenced, nothing to wait for). A controller that restarted does not know how long
/// the fence has been up and counts from its own first apply.
pub fn settle_left(fenced_for: Option<Duration>) -> Option<Duration> {
    fenced_for.and_then(|d| FENCE_SETTLE.checked_sub(d)).filter(|left| !left.is_zero())
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
    /// A failover to this cluster is in progress.
    pub failing_over: bool,
    /// The primary role is held for a peer that abandoned its failover (`spec.primary` names
    /// the peer).
    pub holds_primary: bool,
    /// The primary is standing down, outranked (a higher term, DNS answering the peer),
    /// whatever `spec.primary` says.
    pub stands_down: bool,
}

/// Whether this cluster should be fenced now: a declared standby is; a standby declared primary
/// is until its failover has stopped replicating; a dry run keeps the role it has; a cluster
/// that never was a standby (bootstrap) never is; a primary holding the role for a peer that
/// abandoned its failover is not; an outranked primary standing down is, before its token.
pub fn fence_wanted(f: &FenceFacts) -> bool {
    if !f.enabled || f.holds_primary {
        return false;
    }
    if f.stands_down {
        return true;
    }
    if f.dry_run {
        return f.role != Some(Role::Primary);
    }
    // A cluster failing over without a role yet (a fresh one whose peer is primary, or DNS
    // answers) is fenced as a standby is: the mirror may write until StopSync.
    let standing_by = f.role == Some(Role::Standby) || (f.role.is_none() && f.failing_over);
    !f.declared_primary || (standing_by && !f.stopped_sync)
}

/// This cluster's failover in progress has stopped replicating (StopSync succeeded or was
/// skipped).
pub fn stopped_sync(status: &DRTopologyStatus, self_name: &str) -> bool {
    in_progress(Some(status), self_name).is_some_and(|f| step_finished(f, Step::StopSync))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_revision_waits_until_a_new_fence_is_enforced() {
        let s = Duration::from_secs;
        assert_eq!(settle_left(None), None, "no fence, nothing to wait for");
        assert_eq!(settle_left(Some(s(0))), Some(FENCE_SETTLE));
        assert_eq!(settle_left(Some(s(1))), Some(FENCE_SETTLE - s(1)));
        assert_eq!(settle_left(Some(FENCE_SETTLE)), None);
        assert_eq!(settle_left(Some(s(600))), None, "a fence up for long is enforced");
    }
    use crate::topology::{FailoverStatus, StepState, StepStatus};

    #[test]
    fn fence_follows_the_declared_role_and_lifts_only_after_the_new_primary_stopped_sync() {
        let facts = |enabled, declared_primary, dry_run, role, stopped_sync| FenceFacts {
            enabled,
            declared_primary,
            dry_run,
            role,
            stopped_sync,
            failing_over: false,
            holds_primary: false,
            stands_down: false,
        };
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
            (
                FenceFacts { failing_over: true, ..facts(true, true, false, None, false) },
                true,
                "failing over without a role yet (model check): fenced until StopSync",
            ),
            (FenceFacts { failing_over: true, ..facts(true, true, false, None, true) }, false, "… and StopSync lifts it"),
            (facts(true, true, true, Some(Standby), false), true, "dry run keeps the standby fenced"),
            (facts(true, false, true, Some(Primary), false), false, "dry run keeps the primary writable"),
            (
                FenceFacts { holds_primary: true, ..facts(true, false, false, Some(Primary), false) },
                false,
                "a primary holding the role for a peer that abandoned its failover is writable",
            ),
            (facts(true, true, false, Some(Standby), false), true, "the peer that abandoned (declared primary, standby, sync not stopped) stays fenced"),
            (
                FenceFacts { stands_down: true, ..facts(true, true, false, Some(Primary), false) },
                true,
                "a declared primary standing down for a higher term is fenced before its token",
            ),
        ];
        for (f, want, rule) in cases {
            assert_eq!(fence_wanted(&f), want, "{rule}: {f:?}");
        }
    }

    #[test]
    fn only_a_failover_in_progress_to_this_cluster_that_passed_stop_sync_has_stopped_sync() {
        let with = |to: &str, state: StepState, completed: bool| DRTopologyStatus {
            failover: Some(FailoverStatus {
                to: to.into(),
                completed_at: completed.then(|| "2026-01-01T00:00:00Z".into()),
                steps: vec![StepStatus { name: "StopSync".into(), state, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (with("b", StepState::Succeeded, false), true, "StopSync succeeded"),
            (with("b", StepState::Skipped, false), true, "StopSync skipped"),
            (with("b", StepState::Running, false), false, "StopSync still running"),
            (with("b", StepState::Succeeded, true), false, "the failover completed: no longer in progress"),
            (with("a", StepState::Succeeded, false), false, "a failover to the peer"),
            (DRTopologyStatus::default(), false, "no failover"),
        ];
        for (st, want, rule) in cases {
            assert_eq!(stopped_sync(&st, "b"), want, "{rule}");
        }
    }
}
