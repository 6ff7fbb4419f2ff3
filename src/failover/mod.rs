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
    /// The peer's primary term (`status.term`; 0 when it never was primary or predates terms).
    pub term: i64,
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
    /// Whether the platform domain resolves to this cluster's VIP: `Some(false)` when a resolver
    /// answered something else, None when unknown. Only asked when [`may_reclaim`] holds.
    pub dns_here: Option<bool>,
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
    /// Begin a failover record from the peer to this cluster; `why` says why a full runbook
    /// (and not a reclaim) is needed, for the Event.
    StartFailover { why: String },
    /// We stepped down, and it is provable that nobody became primary since (see
    /// [`reclaim_or_fail_over`]): take the primary role back without a runbook. `proof` names
    /// the facts, for the Event.
    ReclaimPrimary { proof: String },
    /// We stepped down and the primary is flipped back to us, but the peer is still mid-failover
    /// or has not applied the flip yet: wait until it abandons or agrees.
    WaitForPeer { why: String },
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

/// The term a cluster takes when it becomes primary (bootstrap or a completed failover): past
/// every term it has held or seen, so the latest completed failover always holds the highest.
pub fn next_term(status: &DRTopologyStatus) -> i64 {
    let recorded = status.failover.as_ref().and_then(|f| f.peer_term).unwrap_or(0);
    status.term.max(status.peer_term).max(recorded).saturating_add(1)
}

/// This cluster is named primary, is a standby, and once stepped down: whether it may take the
/// role back without a runbook is for [`reclaim_or_fail_over`] to decide.
pub fn may_reclaim(status: Option<&DRTopologyStatus>, self_name: &str, spec_primary: &str) -> bool {
    self_name == spec_primary
        && in_progress(status, self_name).is_none()
        && status.is_some_and(|s| s.role == Some(Role::Standby) && s.demotion.is_some())
}

/// A cluster that stepped down and is named primary again takes the role back without a runbook
/// only when it is provable that nobody else became primary since, and nobody wrote elsewhere:
/// the peer answers, is not primary, holds a lower term than ours (so our primary role was the
/// last one completed: a completed failover or bootstrap always raises the term past both),
/// never moved DNS in its latest failover, and DNS is not known to point elsewhere. In every
/// other case the full runbook runs, which is always safe: its Demote step waits for the peer's
/// acknowledgement and its FinalSync brings the peer's writes here.
pub fn reclaim_or_fail_over(o: &Observed) -> Action {
    let me = o.self_name;
    let mine = o.status.map(|s| s.term).unwrap_or(0);
    let Some(p) = o.peer.reachable() else {
        return Action::StartFailover { why: "the peer is unreachable: nothing proves it did not become primary".into() };
    };
    if let Some(f) = p.failover.as_ref().filter(|f| !f.aborted && !f.completed) {
        let at = if f.dns_switched { " (it already moved DNS)" } else { "" };
        return Action::WaitForPeer { why: format!("spec.primary is back to {me}; waiting for the peer to abandon its failover{at}") };
    }
    if p.role == Some(Role::Primary) {
        return Action::StartFailover { why: format!("the peer is primary (term {})", p.term) };
    }
    if p.term >= mine {
        let why = if p.term == mine {
            format!("the peer's term equals ours ({mine}): which primary came last is unknown (a status from before terms)")
        } else {
            format!("the peer became primary after we stepped down (its term {} > ours {mine})", p.term)
        };
        return Action::StartFailover { why };
    }
    if p.failover.as_ref().is_some_and(|f| f.dns_switched) {
        return Action::StartFailover { why: "the peer's abandoned failover had moved DNS: clients may have written there".into() };
    }
    if o.dns_here == Some(false) {
        return Action::StartFailover { why: "the platform domain does not resolve to this cluster".into() };
    }
    if p.spec_primary != me {
        return Action::WaitForPeer {
            why: format!("the peer has spec.primary {:?} applied; waiting for Argo CD to sync the flip back to {me}", p.spec_primary),
        };
    }
    let last = match &p.failover {
        Some(_) => "its latest failover was abandoned before SwitchDNS",
        None => "it never started a failover",
    };
    let dns = if o.dns_here == Some(true) { "DNS answers here" } else { "DNS not verified" };
    Action::ReclaimPrimary { proof: format!("our term {mine} > the peer's {}; {last}; {dns}", p.term) }
}

pub fn plan(o: &Observed) -> Action {
    if o.invalid {
        return Action::Hold;
    }
    let next = plan_role(o);
    match next {
        Action::StartFailover { .. } | Action::AcknowledgeDemotion { .. } | Action::ReclaimPrimary { .. } if o.dry_run => {
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
            match role {
                Some(Role::Primary) => Action::StayPrimary,
                _ if may_reclaim(o.status, o.self_name, o.spec_primary) => reclaim_or_fail_over(o),
                Some(Role::Standby) => Action::StartFailover { why: "this cluster is a standby and spec.primary names it".into() },
                None => match o.peer.reachable() {
                    // A peer that still calls itself primary must be failed over from, not ignored.
                    Some(p) if p.role == Some(Role::Primary) => {
                        Action::StartFailover { why: format!("{} still reports itself primary", o.spec_primary) }
                    }
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
        Observed { self_name: me, spec_primary: primary, invalid: false, dry_run: false, status: st, peer, dns_here: None }
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
        assert!(matches!(plan(&o), Action::DryRun { would } if is_full_failover(&would)));
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
        assert!(is_full_failover(&plan(&obs("b", "b", Some(&standby), PeerView::Unreachable))));
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

    /// What the old primary `a` (term 1, stepped down for `b`) sees of `b` when `spec.primary` is
    /// back to `a`.
    fn back_to_a(term_a: i64, p: PeerState, dns_here: Option<bool>) -> Action {
        let mut st = status(Some(Role::Standby), Some(Phase::Steady));
        st.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        st.term = term_a;
        let mut o = obs("a", "a", Some(&st), PeerView::Reachable(p));
        o.dns_here = dns_here;
        plan(&o)
    }

    /// `b` as a standby that applied the flip back, with its term and latest failover.
    fn b_standby(term: i64, failover: Option<PeerFailover>) -> PeerState {
        PeerState { spec_primary: "a".into(), role: Some(Role::Standby), demoted_for: Some("a".into()), term, failover, ..Default::default() }
    }

    const RUNNING: PeerFailover = PeerFailover { completed: false, aborted: false, dns_switched: false };
    const ABORTED_BEFORE_DNS: PeerFailover = PeerFailover { completed: false, aborted: true, dns_switched: false };
    const ABORTED_AFTER_DNS: PeerFailover = PeerFailover { completed: false, aborted: true, dns_switched: true };
    const COMPLETED: PeerFailover = PeerFailover { completed: true, aborted: false, dns_switched: true };

    fn is_full_failover(a: &Action) -> bool {
        matches!(a, Action::StartFailover { .. })
    }

    #[test]
    fn reclaim_only_when_our_term_is_the_latest_and_dns_never_moved() {
        // (what, a's term, b, DNS here?, reclaim?)
        let cases: Vec<(&str, i64, PeerState, Option<bool>, bool)> = vec![
            ("b abandoned before SwitchDNS", 1, b_standby(0, Some(ABORTED_BEFORE_DNS)), Some(true), true),
            ("b never started (flip reverted before it saw it)", 1, b_standby(0, None), None, true),
            ("b never started and holds no token for us", 1, PeerState { demoted_for: None, ..b_standby(0, None) }, Some(true), true),
            // The bug of issue 11: b completed (term 2) and then wrote a token for a.
            ("b completed a failover after we stepped down", 1, b_standby(2, Some(COMPLETED)), Some(false), false),
            ("b completed, DNS unknown", 1, b_standby(2, Some(COMPLETED)), None, false),
            ("b's abandoned failover had moved DNS", 1, b_standby(0, Some(ABORTED_AFTER_DNS)), Some(true), false),
            ("b completed, even with DNS answering here", 1, b_standby(3, Some(COMPLETED)), Some(true), false),
            ("our term lower: b became primary after us", 2, b_standby(5, Some(ABORTED_BEFORE_DNS)), Some(true), false),
            ("ties run the runbook (statuses from before terms)", 0, b_standby(0, Some(ABORTED_BEFORE_DNS)), Some(true), false),
            ("DNS known to point elsewhere", 1, b_standby(0, Some(ABORTED_BEFORE_DNS)), Some(false), false),
            ("b still calls itself primary", 3, PeerState { role: Some(Role::Primary), ..b_standby(1, None) }, Some(true), false),
        ];
        for (what, term_a, b, dns, reclaim) in cases {
            let got = back_to_a(term_a, b, dns);
            if reclaim {
                assert!(matches!(got, Action::ReclaimPrimary { .. }), "{what}: {got:?}");
            } else {
                assert!(is_full_failover(&got), "{what}: {got:?}");
            }
        }
    }

    #[test]
    fn reclaim_waits_while_the_peer_is_mid_failover_or_has_not_applied_the_flip_back() {
        assert!(matches!(back_to_a(1, b_standby(0, Some(RUNNING)), Some(true)), Action::WaitForPeer { .. }));
        let lagging = PeerState { spec_primary: "b".into(), demoted_for: None, ..b_standby(0, None) };
        assert!(matches!(back_to_a(1, lagging, Some(true)), Action::WaitForPeer { .. }));
    }

    #[test]
    fn unreachable_peer_never_allows_a_reclaim() {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        st.term = 7;
        assert!(is_full_failover(&plan(&obs("a", "a", Some(&st), PeerView::Unreachable))));
    }

    #[test]
    fn reclaim_proof_names_the_terms() {
        let Action::ReclaimPrimary { proof } = back_to_a(4, b_standby(3, Some(ABORTED_BEFORE_DNS)), Some(true)) else {
            panic!("no reclaim")
        };
        assert_eq!(proof, "our term 4 > the peer's 3; its latest failover was abandoned before SwitchDNS; DNS answers here");
    }

    #[test]
    fn becoming_primary_takes_a_term_past_every_term_seen() {
        let mut st = DRTopologyStatus::default();
        assert_eq!(next_term(&st), 1, "bootstrap from a fresh status");
        st.term = 3;
        st.peer_term = 5;
        assert_eq!(next_term(&st), 6, "a standby past the primary it followed (a disaster failover)");
        st.failover = Some(FailoverStatus { peer_term: Some(9), ..failover("a", &[]) });
        assert_eq!(next_term(&st), 10, "past the old primary's term read at Preflight/Demote");
        st.term = i64::MAX;
        assert_eq!(next_term(&st), i64::MAX, "saturates instead of wrapping");
    }

    /// Terms decide as the flips go, whatever Argo CD applies first: a replay of A→B (completed)
    /// →A with the planner driving both sides' terms.
    #[test]
    fn flip_back_after_a_completed_failover_runs_the_runbook_in_both_apply_orders() {
        // a was primary with term 1 and stepped down for b; b completed with term 2 (past a's).
        let mut b_done = status(Some(Role::Primary), Some(Phase::Steady));
        b_done.peer_term = 1;
        b_done.failover = Some(FailoverStatus { completed_at: Some("t".into()), peer_term: Some(1), ..failover("b", &Step::ALL) });
        b_done.term = next_term(&b_done);
        assert_eq!(b_done.term, 2);
        let seen = |s: &DRTopologyStatus, spec_primary: &str| PeerState {
            spec_primary: spec_primary.into(),
            role: s.role,
            demoted_for: s.demotion.as_ref().map(|d| d.new_primary.clone()),
            term: s.term,
            failover: Some(COMPLETED),
            ..Default::default()
        };
        // Old primary first: b has already stepped down for a (the order that used to reclaim).
        let mut b_acked = b_done.clone();
        b_acked.role = Some(Role::Standby);
        b_acked.demotion = Some(DemotionStatus { new_primary: "a".into(), ..Default::default() });
        assert!(is_full_failover(&back_to_a(1, seen(&b_acked, "a"), Some(false))));
        // New primary first: b is still primary and has not seen the flip.
        assert!(is_full_failover(&back_to_a(1, seen(&b_done, "b"), Some(false))));
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
