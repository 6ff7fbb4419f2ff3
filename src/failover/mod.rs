//! The failover runbook as a pure planner: what this cluster's controller should do next, given
//! the declared topology, its own recorded status and what it observes of its peer.
//!
//! The runbook (DESIGN.md §1, issue 4) on the cluster that becomes primary:
//! Preflight → Demote → FinalSync → StopSync → PreHooks → SwitchDNS → VerifyDNS → Restart →
//! PostHooks → Done. Every step is recorded in `status.failover.steps` before and after it runs
//! and is idempotent, so a controller killed anywhere re-plans from status and resumes there.
//!
//! Split-brain rules this planner enforces:
//! - a cluster mirrors only while it is standby *and* its peer reports itself Primary and Steady
//!   for the same `spec.primary` (so a new primary still catching up is never mirrored from, and
//!   two clusters never mirror into each other);
//! - an old primary acknowledges demotion (the demotion token) before it does anything else;
//! - a flip back during a failover supersedes it: the remaining steps are skipped and recorded,
//!   and the cluster named by the new `spec.primary` runs a complete failover of its own.

pub mod cli;
pub mod runbook;

use std::fmt;

use crate::topology::{DRTopologyStatus, FailoverStatus, Phase, Role, StepState};

/// The runbook's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Preflight,
    Demote,
    FinalSync,
    StopSync,
    PreHooks,
    SwitchDns,
    VerifyDns,
    Restart,
    PostHooks,
    Done,
}

impl Step {
    pub const ALL: [Step; 10] = [
        Step::Preflight,
        Step::Demote,
        Step::FinalSync,
        Step::StopSync,
        Step::PreHooks,
        Step::SwitchDns,
        Step::VerifyDns,
        Step::Restart,
        Step::PostHooks,
        Step::Done,
    ];

    /// The name recorded in `status.failover.steps[].name`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "Preflight",
            Step::Demote => "Demote",
            Step::FinalSync => "FinalSync",
            Step::StopSync => "StopSync",
            Step::PreHooks => "PreHooks",
            Step::SwitchDns => "SwitchDNS",
            Step::VerifyDns => "VerifyDNS",
            Step::Restart => "Restart",
            Step::PostHooks => "PostHooks",
            Step::Done => "Done",
        }
    }

    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What the step does, for `drctl failover plan` and dry runs.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Preflight => "check the spec, reach the old primary, compare encryption-config fingerprints",
            Step::Demote => "ask the old primary to step down and wait for its acknowledgement and final revision",
            Step::FinalSync => "catch up to the old primary's final revision, run the consistency check, record the RPO token",
            Step::StopSync => "stop replicating from the old primary",
            Step::PreHooks => "run spec.failover.preHooks (e.g. remove the 2379 forwarding from the VIPs)",
            Step::SwitchDns => "point the platform domain at this cluster's VIP",
            Step::VerifyDns => "resolve the domain through spec.dns.verify.resolvers until it answers the new VIP",
            Step::Restart => "run restarts with when: failover, here and in workload clusters, and wait until ready",
            Step::PostHooks => "run spec.failover.postHooks",
            Step::Done => "mark this cluster Primary and Steady",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What this controller can see of its peer (through the peer kubeconfig).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum PeerView {
    /// The peer's apiserver did not answer, or no kubeconfig for it is configured.
    #[default]
    Unreachable,
    Reachable(PeerState),
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct PeerState {
    /// `spec.primary` as applied in the peer cluster (Argo CD may not have synced it yet).
    pub spec_primary: String,
    pub role: Option<Role>,
    pub phase: Option<Phase>,
    /// The peer's demotion token: whom it stepped down for, and its final revision.
    pub demoted_for: Option<String>,
    pub final_revision: Option<i64>,
    /// The etcd cluster ID the final revision belongs to.
    pub token_cluster_id: Option<String>,
    pub encryption_config_sha256: Option<String>,
    /// The peer's own latest failover (to itself), if any.
    pub failover: Option<PeerFailover>,
}

/// How far the peer got with its latest failover to itself.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PeerFailover {
    pub completed: bool,
    pub aborted: bool,
    /// Its SwitchDNS step succeeded: clients may have written there since.
    pub dns_switched: bool,
}

impl PeerView {
    pub fn reachable(&self) -> Option<&PeerState> {
        match self {
            PeerView::Reachable(p) => Some(p),
            PeerView::Unreachable => None,
        }
    }
}

/// Everything the planner decides on.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    pub self_name: &'a str,
    pub spec_primary: &'a str,
    /// Validation errors of the spec (empty when valid).
    pub invalid: bool,
    /// `spec.failover.dryRun`: report what a role change would do instead of doing it.
    pub dry_run: bool,
    pub status: Option<&'a DRTopologyStatus>,
    pub peer: PeerView,
}

/// The next thing to do. The controller executes it, records the result and plans again.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The spec is invalid: change nothing, report `Valid=False`.
    Hold,
    /// `spec.failover.dryRun` and the declared primary differs from the role held: report the
    /// plan (the runbook, or the step-down) and keep the current role.
    DryRun { would: Box<Action> },
    /// First start as primary, nothing to fail over from.
    BootstrapPrimary,
    /// Steady primary: make sure no mirror runs.
    StayPrimary,
    /// Begin a failover record from the peer to this cluster.
    StartFailover,
    /// We stepped down for a peer whose failover was abandoned before DNS moved to it: nobody
    /// wrote there, so take the primary role back without a runbook.
    ReclaimPrimary,
    /// We stepped down for a peer that is still mid-failover and the primary is flipped back to
    /// us: wait until it abandons (it acknowledges with its own demotion token).
    WaitForPeerAbort { why: String },
    /// Execute this runbook step (recording it before and after).
    RunStep(Step),
    /// The declared primary changed away from an in-progress failover to us: skip what remains.
    AbortFailover { reason: String },
    /// This cluster was primary and `spec.primary` moved: write the demotion token.
    AcknowledgeDemotion { new_primary: String },
    /// Standby whose primary is ready: mirror from it (idempotent when already mirroring).
    Mirror,
    /// Standby whose primary is not ready (failing over, unreachable at start): do not mirror.
    WaitForPrimary { why: String },
}

/// The role a cluster should have by declaration alone.
pub fn desired_role(self_name: &str, spec_primary: &str) -> Role {
    if self_name == spec_primary {
        Role::Primary
    } else {
        Role::Standby
    }
}

/// A failover to `self_name` that has started and neither finished nor been aborted.
pub fn in_progress<'s>(status: Option<&'s DRTopologyStatus>, self_name: &str) -> Option<&'s FailoverStatus> {
    status
        .and_then(|s| s.failover.as_ref())
        .filter(|f| f.to == self_name && f.completed_at.is_none() && f.aborted.is_none())
}

/// The first step of a failover record that has not succeeded or been skipped.
pub fn next_step(f: &FailoverStatus) -> Step {
    for step in Step::ALL {
        let done = f
            .steps
            .iter()
            .any(|s| s.name == step.name() && matches!(s.state, StepState::Succeeded | StepState::Skipped));
        if !done {
            return step;
        }
    }
    Step::Done
}

pub fn plan(o: &Observed) -> Action {
    if o.invalid {
        return Action::Hold;
    }
    let next = plan_role(o);
    match next {
        Action::StartFailover | Action::AcknowledgeDemotion { .. } | Action::ReclaimPrimary if o.dry_run => {
            Action::DryRun { would: Box::new(next) }
        }
        other => other,
    }
}

fn plan_role(o: &Observed) -> Action {
    let role = o.status.and_then(|s| s.role);
    match desired_role(o.self_name, o.spec_primary) {
        Role::Primary => {
            if let Some(f) = in_progress(o.status, o.self_name) {
                return Action::RunStep(next_step(f));
            }
            let stepped_down = o.status.and_then(|s| s.demotion.as_ref()).is_some();
            match role {
                Some(Role::Primary) => Action::StayPrimary,
                Some(Role::Standby) if stepped_down => match o.peer.reachable() {
                    Some(p) => match p.failover.as_ref() {
                        Some(f) if !f.aborted && !f.completed => Action::WaitForPeerAbort {
                            why: format!("spec.primary is back to {}; waiting for the peer to abandon its failover", o.self_name),
                        },
                        // It abandoned after DNS had moved to it: clients may have written there.
                        Some(f) if f.aborted && f.dns_switched => Action::StartFailover,
                        // It holds a token for us and ran no failover since it wrote it (a
                        // failover clears the token): nobody wrote there, take the role back.
                        _ if p.demoted_for.as_deref() == Some(o.self_name) => Action::ReclaimPrimary,
                        // It completed a failover: a full one back brings its writes here.
                        _ => Action::StartFailover,
                    },
                    // It cannot be asked: the runbook's Demote step decides (and waits).
                    None => Action::StartFailover,
                },
                Some(Role::Standby) => Action::StartFailover,
                None => match o.peer.reachable() {
                    // A peer that still calls itself primary must be failed over from, not ignored.
                    Some(p) if p.role == Some(Role::Primary) => Action::StartFailover,
                    _ => Action::BootstrapPrimary,
                },
            }
        }
        Role::Standby => {
            if in_progress(o.status, o.self_name).is_some() {
                return Action::AbortFailover {
                    reason: format!("superseded: spec.primary is now {}", o.spec_primary),
                };
            }
            if role == Some(Role::Primary) {
                return Action::AcknowledgeDemotion { new_primary: o.spec_primary.to_string() };
            }
            match o.peer.reachable() {
                Some(p) if p.spec_primary != o.spec_primary => Action::WaitForPrimary {
                    why: format!(
                        "{} has spec.primary {:?} applied, this cluster has {:?}; waiting for Argo CD to sync both",
                        o.spec_primary, p.spec_primary, o.spec_primary
                    ),
                },
                Some(p) if p.role == Some(Role::Primary) && p.phase == Some(Phase::Steady) => Action::Mirror,
                Some(p) => Action::WaitForPrimary {
                    why: format!(
                        "{} is {} / {}; mirroring starts once it is Primary and Steady",
                        o.spec_primary,
                        p.role.map(|r| format!("{r:?}")).unwrap_or_else(|| "without a role".into()),
                        p.phase.map(|r| format!("{r:?}")).unwrap_or_else(|| "without a phase".into()),
                    ),
                },
                None => {
                    // Keep an established mirror going (it reconnects by itself); never start one
                    // without having seen the primary confirm its role.
                    if matches!(o.status.and_then(|s| s.phase), Some(Phase::Steady | Phase::Syncing | Phase::Degraded))
                        && role == Some(Role::Standby)
                        && o.status.and_then(|s| s.sync.as_ref()).is_some()
                    {
                        Action::Mirror
                    } else {
                        Action::WaitForPrimary {
                            why: format!("{} is unreachable; mirroring starts once it confirms it is primary", o.spec_primary),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{DemotionStatus, StepStatus};

    fn status(role: Option<Role>, phase: Option<Phase>) -> DRTopologyStatus {
        DRTopologyStatus { role, phase, ..Default::default() }
    }

    fn peer(spec_primary: &str, role: Option<Role>, phase: Option<Phase>) -> PeerView {
        PeerView::Reachable(PeerState {
            spec_primary: spec_primary.into(),
            role,
            phase,
            ..Default::default()
        })
    }

    fn failover(to: &str, done: &[Step]) -> FailoverStatus {
        FailoverStatus {
            from: "a".into(),
            to: to.into(),
            steps: done
                .iter()
                .map(|s| StepStatus { name: s.name().into(), state: StepState::Succeeded, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn obs<'a>(me: &'a str, primary: &'a str, st: Option<&'a DRTopologyStatus>, peer: PeerView) -> Observed<'a> {
        Observed { self_name: me, spec_primary: primary, invalid: false, dry_run: false, status: st, peer }
    }

    #[test]
    fn invalid_spec_never_starts_a_failover() {
        let st = status(Some(Role::Standby), Some(Phase::Steady));
        let mut o = obs("b", "b", Some(&st), PeerView::Unreachable);
        o.invalid = true;
        assert_eq!(plan(&o), Action::Hold);
    }

    #[test]
    fn dry_run_reports_role_changes_but_makes_none() {
        let standby = status(Some(Role::Standby), Some(Phase::Steady));
        let mut o = obs("b", "b", Some(&standby), PeerView::Unreachable);
        o.dry_run = true;
        assert_eq!(plan(&o), Action::DryRun { would: Box::new(Action::StartFailover) });
        let primary = status(Some(Role::Primary), Some(Phase::Steady));
        let mut o = obs("a", "b", Some(&primary), PeerView::Unreachable);
        o.dry_run = true;
        assert!(matches!(plan(&o), Action::DryRun { .. }));
        // Nothing to change: dry run or not, the same.
        let mut o = obs("a", "a", Some(&primary), PeerView::Unreachable);
        o.dry_run = true;
        assert_eq!(plan(&o), Action::StayPrimary);
    }

    #[test]
    fn fresh_primary_bootstraps_and_fresh_standby_waits_for_it() {
        assert_eq!(plan(&obs("a", "a", None, PeerView::Unreachable)), Action::BootstrapPrimary);
        assert_eq!(plan(&obs("a", "a", None, peer("a", None, None))), Action::BootstrapPrimary);
        assert!(matches!(plan(&obs("b", "a", None, peer("a", None, None))), Action::WaitForPrimary { .. }));
        assert!(matches!(plan(&obs("b", "a", None, PeerView::Unreachable)), Action::WaitForPrimary { .. }));
        assert_eq!(
            plan(&obs("b", "a", None, peer("a", Some(Role::Primary), Some(Phase::Steady)))),
            Action::Mirror
        );
    }

    #[test]
    fn primary_never_mirrors() {
        let st = status(Some(Role::Primary), Some(Phase::Steady));
        for p in [PeerView::Unreachable, peer("a", Some(Role::Standby), Some(Phase::Steady))] {
            assert_eq!(plan(&obs("a", "a", Some(&st), p)), Action::StayPrimary);
        }
    }

    #[test]
    fn standby_does_not_mirror_from_a_primary_still_failing_over() {
        let st = status(Some(Role::Standby), Some(Phase::Demoting));
        let o = obs("a", "b", Some(&st), peer("b", Some(Role::Standby), Some(Phase::FailingOver)));
        assert!(matches!(plan(&o), Action::WaitForPrimary { .. }));
        let o = obs("a", "b", Some(&st), peer("b", Some(Role::Primary), Some(Phase::Steady)));
        assert_eq!(plan(&o), Action::Mirror);
    }

    #[test]
    fn standby_waits_while_argo_has_synced_only_one_side() {
        let st = status(Some(Role::Standby), Some(Phase::Steady));
        let o = obs("b", "a", Some(&st), peer("b", Some(Role::Primary), Some(Phase::Steady)));
        assert!(matches!(plan(&o), Action::WaitForPrimary { .. }));
    }

    #[test]
    fn flip_starts_failover_on_the_standby_and_demotion_on_the_primary() {
        let standby = status(Some(Role::Standby), Some(Phase::Steady));
        assert!(matches!(plan(&obs("b", "b", Some(&standby), PeerView::Unreachable)), Action::StartFailover));
        let primary = status(Some(Role::Primary), Some(Phase::Steady));
        assert_eq!(
            plan(&obs("a", "b", Some(&primary), peer("b", Some(Role::Standby), Some(Phase::Steady)))),
            Action::AcknowledgeDemotion { new_primary: "b".into() }
        );
    }

    #[test]
    fn acknowledged_old_primary_waits_then_mirrors() {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        let o = obs("a", "b", Some(&st), peer("b", Some(Role::Standby), Some(Phase::FailingOver)));
        assert!(matches!(plan(&o), Action::WaitForPrimary { .. }));
    }

    #[test]
    fn resumes_at_the_first_unfinished_step() {
        let mut st = status(Some(Role::Standby), Some(Phase::FailingOver));
        st.failover = Some(failover("b", &[Step::Preflight, Step::Demote, Step::FinalSync]));
        assert_eq!(plan(&obs("b", "b", Some(&st), PeerView::Unreachable)), Action::RunStep(Step::StopSync));
        // A step recorded as Running (the controller died inside it) is run again.
        let f = st.failover.as_mut().expect("failover");
        f.steps.push(StepStatus { name: "StopSync".into(), state: StepState::Running, ..Default::default() });
        assert_eq!(plan(&obs("b", "b", Some(&st), PeerView::Unreachable)), Action::RunStep(Step::StopSync));
    }

    #[test]
    fn every_step_comes_in_order_then_done() {
        let mut done = Vec::new();
        for step in Step::ALL {
            let mut st = status(Some(Role::Standby), Some(Phase::FailingOver));
            st.failover = Some(failover("b", &done));
            assert_eq!(plan(&obs("b", "b", Some(&st), PeerView::Unreachable)), Action::RunStep(step));
            done.push(step);
        }
        let mut st = status(Some(Role::Primary), Some(Phase::Steady));
        let mut f = failover("b", &done);
        f.completed_at = Some("now".into());
        st.failover = Some(f);
        assert_eq!(plan(&obs("b", "b", Some(&st), PeerView::Unreachable)), Action::StayPrimary);
    }

    #[test]
    fn flip_back_mid_failover_aborts_it() {
        let mut st = status(Some(Role::Standby), Some(Phase::FailingOver));
        st.failover = Some(failover("b", &[Step::Preflight]));
        assert_eq!(
            plan(&obs("b", "a", Some(&st), peer("a", Some(Role::Standby), Some(Phase::Demoting)))),
            Action::AbortFailover { reason: "superseded: spec.primary is now a".into() }
        );
        // Once aborted, the cluster is a standby again, and waits for a to finish becoming primary.
        st.failover.as_mut().expect("f").aborted = Some("superseded".into());
        let o = obs("b", "a", Some(&st), peer("a", Some(Role::Standby), Some(Phase::FailingOver)));
        assert!(matches!(plan(&o), Action::WaitForPrimary { .. }));
    }

    #[test]
    fn flip_back_before_dns_moved_reclaims_without_a_runbook() {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        // A peer that abandons a failover writes a demotion token for us; one that completes
        // a failover has none (starting a failover clears it).
        let with = |f: PeerFailover| {
            PeerView::Reachable(PeerState {
                spec_primary: "a".into(),
                role: Some(Role::Standby),
                demoted_for: (f.aborted || !f.completed).then(|| "a".to_string()),
                failover: Some(f),
                ..Default::default()
            })
        };
        let running = PeerFailover { completed: false, aborted: false, dns_switched: false };
        assert!(matches!(plan(&obs("a", "a", Some(&st), with(running))), Action::WaitForPeerAbort { .. }));
        let aborted = PeerFailover { completed: false, aborted: true, dns_switched: false };
        assert_eq!(plan(&obs("a", "a", Some(&st), with(aborted))), Action::ReclaimPrimary);
        // DNS already moved to b before it aborted: b may hold writes, so fail over properly.
        let moved = PeerFailover { completed: false, aborted: true, dns_switched: true };
        assert_eq!(plan(&obs("a", "a", Some(&st), with(moved))), Action::StartFailover);
        let done = PeerFailover { completed: true, aborted: false, dns_switched: true };
        assert_eq!(plan(&obs("a", "a", Some(&st), with(done))), Action::StartFailover);
        assert_eq!(plan(&obs("a", "a", Some(&st), PeerView::Unreachable)), Action::StartFailover);
        // A stale completed record next to a token for us: the peer stepped down for us after
        // that failover and never failed over since (Argo CD lagged, the flip was reverted).
        let stale = PeerView::Reachable(PeerState {
            spec_primary: "a".into(),
            role: Some(Role::Standby),
            demoted_for: Some("a".into()),
            failover: Some(PeerFailover { completed: true, aborted: false, dns_switched: true }),
            ..Default::default()
        });
        assert_eq!(plan(&obs("a", "a", Some(&st), stale)), Action::ReclaimPrimary);
    }

    #[test]
    fn unreachable_primary_keeps_an_established_mirror_but_never_starts_one() {
        let mut st = status(Some(Role::Standby), Some(Phase::Steady));
        st.sync = Some(Default::default());
        assert_eq!(plan(&obs("b", "a", Some(&st), PeerView::Unreachable)), Action::Mirror);
        let fresh = status(Some(Role::Standby), Some(Phase::Syncing));
        assert!(matches!(plan(&obs("b", "a", Some(&fresh), PeerView::Unreachable)), Action::WaitForPrimary { .. }));
    }

    #[test]
    fn step_names_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::from_name(s.name()), Some(s));
        }
    }
}
