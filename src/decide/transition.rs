//! What each planned action does to this cluster's status, given the facts the executor
//! gathered for it (its I/O: DNS answers, its own etcd head, the flipping commit). The executor
//! writes the result and publishes the Events; runbook steps record themselves (`record_step`).

use k8s_openapi::jiff::Timestamp;

use super::conditions::{is_true, set_condition, ConditionType, Reason};
use super::plan::{next_term, Action, PrimaryHold, Step};
use crate::topology::{AbandonedUnder, DRTopologyStatus, DemotionStatus, FailoverStatus, Phase, Role, StepState, StepStatus};

/// The commit of the GitOps repo that made this cluster the primary, for the failover record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlipCommit {
    pub commit: String,
    pub author: String,
    pub reason: String,
}

/// What an action's effect on status rests on besides the status itself.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    pub self_name: &'a str,
    pub peer_name: &'a str,
    pub spec_primary: &'a str,
    pub generation: Option<i64>,
    /// The `drctl.io/retry-failover` annotation, recorded when a failover is abandoned.
    pub retry: Option<&'a str>,
    pub now: Timestamp,
    /// Staying primary: whether DNS answers this cluster's VIP (None: unknown) and what the
    /// resolvers said.
    pub dns_here: Option<bool>,
    pub dns_message: String,
    /// A dry run: what it would do.
    pub dry_run_plan: String,
    /// Starting a failover: the commit that flipped `spec.primary`, when the repo is readable.
    pub commit: Option<FlipCommit>,
    /// Starting a failover: the [`BREAK_GLASS_ANNOTATION`](super::plan::BREAK_GLASS_ANNOTATION)
    /// set with the flip, when it was made in the cluster instead of in Git.
    pub break_glass: Option<&'a str>,
    /// Stepping down: this cluster's etcd head revision and cluster ID, when etcd answered.
    pub own_head: Option<(i64, String)>,
}

/// The status after `action`. Runbook steps (`RunStep`) and a standby's mirroring (`Mirror`)
/// change status as they go; here they only take the role a standby has.
pub fn transition(action: &Action, status: &DRTopologyStatus, f: &Facts) -> DRTopologyStatus {
    let mut st = status.clone();
    if *action == Action::Hold {
        // An invalid spec changes nothing but its own conditions (recorded by validation).
        return st;
    }
    abandon_condition(&mut st, action, f.generation);
    let g = f.generation;
    match action {
        Action::Hold | Action::RunStep(_) => {}
        Action::BootstrapPrimary => {
            become_primary(&mut st, g);
            st.term = next_term(&st);
        }
        Action::RepairDns { why } => {
            st.phase = Some(Phase::Steady);
            set_condition(&mut st, ConditionType::Ready, true, Reason::Steady, "primary", g);
            set_condition(&mut st, ConditionType::DNSCorrect, false, Reason::Switched, &format!("{why}: switched back to this cluster's VIP"), g);
        }
        Action::StayPrimary | Action::HoldPrimary { .. } => {
            st.phase = Some(Phase::Steady);
            set_condition(&mut st, ConditionType::Ready, true, Reason::Steady, "primary", g);
            let ok = f.dns_here == Some(true);
            set_condition(&mut st, ConditionType::DNSCorrect, ok, if ok { Reason::PointsHere } else { Reason::Wrong }, &f.dns_message, g);
        }
        Action::DryRun { .. } => {
            set_condition(&mut st, ConditionType::Ready, false, Reason::DryRun, &format!("spec.failover.dryRun: {}", f.dry_run_plan), g);
        }
        Action::StartFailover { .. } => {
            let mut record =
                FailoverStatus { from: f.peer_name.to_string(), to: f.self_name.to_string(), started_at: Some(f.now.to_string()), ..Default::default() };
            if let Some(c) = &f.commit {
                record.commit = Some(c.commit.clone());
                record.author = Some(c.author.clone());
                record.reason = Some(c.reason.clone());
            }
            record.break_glass = f.break_glass.map(str::to_string);
            st.failover = Some(record);
            st.phase = Some(Phase::FailingOver);
            st.demotion = None;
            set_condition(&mut st, ConditionType::Ready, false, Reason::FailingOver, &format!("failing over from {}", f.peer_name), g);
        }
        Action::AbandonFailover { reason } => {
            if let Some(fo) = st.failover.as_mut() {
                skip_remaining(fo, reason, f.now);
                fo.aborted = Some(reason.clone());
                fo.abandoned = Some(AbandonedUnder { generation: g, retry: f.retry.map(str::to_string) });
            }
            // Hands the role back: the old primary reclaims on this token. Never primary here
            // (FinalSync comes before StopSync), so nothing to restart on demotion.
            step_down(&mut st, f.peer_name, false, f);
        }
        Action::ProceedWithoutFinalSync { missed, reason } => {
            if let Some(fo) = st.failover.as_mut() {
                record_step(fo, Step::FinalSync, StepState::Skipped, Some(reason.clone()), f.now);
                if let Some(t) = fo.rpo_token.as_mut() {
                    t.missed_keys = *missed;
                }
            }
        }
        Action::AbortFailover { reason } => {
            if let Some(fo) = st.failover.as_mut() {
                skip_remaining(fo, reason, f.now);
                fo.aborted = Some(reason.clone());
            }
            // Abandoning is stepping down: the new declared primary waits for this token.
            step_down(&mut st, f.spec_primary, true, f);
        }
        // A standby re-issuing its token (it lost it) served nothing since: no demotion restarts.
        Action::AcknowledgeDemotion { new_primary } => step_down(&mut st, new_primary, status.role == Some(Role::Primary), f),
        Action::StandDown { new_primary, why } => {
            step_down(&mut st, new_primary, true, f);
            if let Some(d) = st.demotion.as_mut() {
                d.stood_down = Some(AbandonedUnder { generation: g, retry: f.retry.map(str::to_string) });
            }
            set_condition(&mut st, ConditionType::Degraded, true, Reason::SteppedDown, &format!("stood down for {new_primary}: {why}"), g);
        }
        Action::HoldStoodDown { why } => {
            set_condition(&mut st, ConditionType::Degraded, true, Reason::SteppedDown, why, g);
            set_condition(&mut st, ConditionType::Ready, false, Reason::SteppedDown, why, g);
        }
        Action::ReclaimPrimary { proof } => {
            // The term stays: no failover completed anywhere since this cluster held it.
            st.role = Some(Role::Primary);
            st.phase = Some(Phase::Steady);
            st.demotion = None;
            st.sync = None;
            let msg = format!("primary again without a runbook: nobody became primary since it stepped down ({proof})");
            set_condition(&mut st, ConditionType::Ready, true, Reason::Steady, &msg, g);
        }
        Action::WaitForPeer { why } => set_condition(&mut st, ConditionType::Ready, false, Reason::WaitingForPeer, why, g),
        Action::WaitForPrimary { why } | Action::HoldAbandoned { why, mirror: false } => {
            if st.role.is_none() {
                st.role = Some(Role::Standby);
            }
            if st.phase != Some(Phase::Demoting) {
                st.phase = Some(Phase::Syncing);
            }
            set_condition(&mut st, ConditionType::SyncHealthy, false, Reason::WaitingForPrimary, why, g);
            set_condition(&mut st, ConditionType::Ready, false, Reason::WaitingForPrimary, why, g);
        }
        Action::Mirror | Action::HoldAbandoned { mirror: true, .. } => st.role = Some(Role::Standby),
    }
    st
}

/// Role Primary, phase Steady, nothing replicated: bootstrap and a failover's Done.
fn become_primary(st: &mut DRTopologyStatus, generation: Option<i64>) {
    st.role = Some(Role::Primary);
    st.phase = Some(Phase::Steady);
    st.sync = None;
    set_condition(st, ConditionType::SyncHealthy, true, Reason::Primary, "a primary does not replicate", generation);
    set_condition(st, ConditionType::Ready, true, Reason::Steady, "primary", generation);
}

/// The Done step: primary with a term past every term held or seen, the failover complete.
/// Returns the term.
pub fn failover_done(st: &mut DRTopologyStatus, now: Timestamp, generation: Option<i64>) -> i64 {
    become_primary(st, generation);
    // Computed before the record is marked complete, from the peer term it holds.
    st.term = next_term(st);
    let term = st.term;
    if let Some(f) = st.failover.as_mut() {
        f.completed_at = Some(now.to_string());
        f.term = Some(term);
    }
    term
}

/// The demotion token: this cluster stops acting as primary and tells `new_primary` its final
/// etcd revision, so a planned switchover can catch up to exactly that point. A cluster that
/// never `served` (an abandoned failover) keeps its mirror's status and has no `when: demotion`
/// restarts to run.
fn step_down(st: &mut DRTopologyStatus, new_primary: &str, served: bool, f: &Facts) {
    st.role = Some(Role::Standby);
    st.phase = Some(Phase::Demoting);
    if served {
        st.sync = None;
    }
    st.demotion = Some(DemotionStatus {
        new_primary: new_primary.to_string(),
        final_revision: f.own_head.as_ref().map(|(rev, _)| *rev),
        term: Some(st.term),
        stood_down: None,
        unreplicated_revisions: None,
        cluster_id: f.own_head.as_ref().map(|(_, id)| id.clone()),
        acknowledged_at: Some(f.now.to_string()),
        restarts_done: !served,
        restarts: None,
    });
    set_condition(st, ConditionType::Ready, false, Reason::Demoting, &format!("stepped down for {new_primary}"), f.generation);
}

/// `Degraded` says the pair holds after an abandoned failover (why, and how to retry) or for a
/// peer of an older controller (`decide::skew`); it is cleared once the hold ends. A reclaim is
/// the step between abandoning and holding.
fn abandon_condition(status: &mut DRTopologyStatus, action: &Action, generation: Option<i64>) {
    if let Action::HoldPrimary { why, hold: PrimaryHold::PeerVersionSkew } = action {
        return set_condition(status, ConditionType::Degraded, true, Reason::PeerVersionSkew, why, generation);
    }
    match action.abandoned_hold() {
        Some(why) => set_condition(status, ConditionType::Degraded, true, Reason::FailoverAbandoned, why, generation),
        None if matches!(action, Action::ReclaimPrimary { .. } | Action::StandDown { .. } | Action::HoldStoodDown { .. }) => {}
        None => {
            if is_true(status, ConditionType::Degraded) {
                set_condition(status, ConditionType::Degraded, false, Reason::Resolved, "no abandoned failover or version skew holds the pair", generation);
            }
        }
    }
}

/// Marks every step that has not finished as Skipped (a flip back superseded the failover).
pub fn skip_remaining(f: &mut FailoverStatus, reason: &str, now: Timestamp) {
    let now = now.to_string();
    for step in Step::ALL {
        match f.steps.iter_mut().find(|s| s.is(step)) {
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

/// Records `step` as `state`: Running before it acts (its first start kept: timeouts count from
/// it across retries and restarts), finished after.
pub fn record_step(f: &mut FailoverStatus, step: Step, state: StepState, message: Option<String>, now: Timestamp) {
    let now = Some(now.to_string());
    let entry = match f.steps.iter().position(|s| s.is(step)) {
        Some(i) => &mut f.steps[i],
        None => {
            f.steps.push(StepStatus { name: step.name().into(), ..Default::default() });
            let last = f.steps.len() - 1;
            &mut f.steps[last]
        }
    };
    if state == StepState::Running {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::RpoToken;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
    }

    fn facts() -> Facts<'static> {
        Facts { self_name: "b", peer_name: "a", spec_primary: "b", generation: Some(3), now: at(0), ..Default::default() }
    }

    fn condition(st: &DRTopologyStatus, t: ConditionType) -> Option<(String, String)> {
        st.conditions.iter().find(|c| c.type_ == t.as_str()).map(|c| (c.status.clone(), c.reason.clone()))
    }

    fn standby() -> DRTopologyStatus {
        DRTopologyStatus { role: Some(Role::Standby), phase: Some(Phase::Steady), term: 1, peer_term: 4, ..Default::default() }
    }

    fn in_failover(done: &[Step]) -> DRTopologyStatus {
        let mut st = standby();
        let mut f = FailoverStatus { from: "a".into(), to: "b".into(), started_at: Some(at(0).to_string()), ..Default::default() };
        for s in done {
            record_step(&mut f, *s, StepState::Succeeded, None, at(1));
        }
        st.failover = Some(f);
        st
    }

    #[test]
    fn bootstrap_takes_the_primary_role_with_a_term_past_every_term_seen() {
        let st = transition(&Action::BootstrapPrimary, &DRTopologyStatus { peer_term: 4, ..Default::default() }, &facts());
        assert_eq!((st.role, st.phase, st.term), (Some(Role::Primary), Some(Phase::Steady), 5));
        assert_eq!(condition(&st, ConditionType::SyncHealthy), Some(("True".into(), "Primary".into())));
    }

    #[test]
    fn a_started_failover_records_whence_when_and_the_commit_and_drops_an_old_demotion_token() {
        let mut was = standby();
        was.demotion = Some(DemotionStatus { new_primary: "a".into(), ..Default::default() });
        let commit = FlipCommit { commit: "abc".into(), author: "ana".into(), reason: "drill".into() };
        let st = transition(&Action::StartFailover { why: "flip".into() }, &was, &Facts { commit: Some(commit), ..facts() });
        let f = st.failover.as_ref().expect("record");
        assert_eq!((f.from.as_str(), f.to.as_str(), f.started_at.clone()), ("a", "b", Some(at(0).to_string())));
        assert_eq!((f.commit.as_deref(), f.author.as_deref(), f.reason.as_deref()), (Some("abc"), Some("ana"), Some("drill")));
        assert_eq!(f.break_glass, None);
        let glass = transition(&Action::StartFailover { why: "flip".into() }, &was, &Facts { break_glass: Some("git down"), ..facts() });
        assert_eq!(glass.failover.as_ref().and_then(|f| f.break_glass.as_deref()), Some("git down"), "a break-glass flip is recorded as one");
        assert_eq!((st.phase, st.demotion.is_none()), (Some(Phase::FailingOver), true));
        assert_eq!(condition(&st, ConditionType::Ready), Some(("False".into(), "FailingOver".into())));
    }

    #[test]
    fn stepping_down_writes_the_demotion_token_with_the_final_revision_and_owes_demotion_restarts() {
        let was = DRTopologyStatus { role: Some(Role::Primary), sync: Some(Default::default()), ..Default::default() };
        let f = Facts { own_head: Some((42, "c0ffee".into())), ..facts() };
        let st = transition(&Action::AcknowledgeDemotion { new_primary: "a".into() }, &was, &f);
        let d = st.demotion.as_ref().expect("token");
        assert_eq!((d.new_primary.as_str(), d.final_revision, d.cluster_id.as_deref(), d.restarts_done), ("a", Some(42), Some("c0ffee"), false));
        assert_eq!((st.role, st.phase, st.sync.is_none()), (Some(Role::Standby), Some(Phase::Demoting), true));
        let unknown = transition(&Action::AcknowledgeDemotion { new_primary: "a".into() }, &was, &facts());
        assert_eq!(unknown.demotion.expect("token").final_revision, None, "an etcd that did not answer: no revision, still a token");
    }

    #[test]
    fn a_flip_back_skips_the_remaining_steps_and_steps_down_for_the_new_primary() {
        let st = transition(
            &Action::AbortFailover { reason: "superseded".into() },
            &in_failover(&[Step::Preflight, Step::Demote]),
            &Facts { spec_primary: "a", ..facts() },
        );
        let f = st.failover.as_ref().expect("record");
        assert_eq!(f.aborted.as_deref(), Some("superseded"));
        assert_eq!(f.steps.len(), Step::ALL.len());
        assert!(f
            .steps
            .iter()
            .filter(|s| !s.is(Step::Preflight) && !s.is(Step::Demote))
            .all(|s| s.state == StepState::Skipped && s.message.as_deref() == Some("superseded")));
        assert_eq!(st.demotion.as_ref().map(|d| (d.new_primary.as_str(), d.restarts_done)), Some(("a", false)), "served: demotion restarts owed");
    }

    #[test]
    fn an_abandoned_failover_records_the_spec_it_was_abandoned_under_and_hands_the_role_back() {
        let mut was = in_failover(&[Step::Preflight, Step::Demote]);
        was.sync = Some(Default::default());
        let f = Facts { retry: Some("7"), ..facts() };
        let st = transition(&Action::AbandonFailover { reason: "FinalSync did not pass".into() }, &was, &f);
        let fo = st.failover.as_ref().expect("record");
        assert_eq!(fo.abandoned, Some(AbandonedUnder { generation: Some(3), retry: Some("7".into()) }));
        let d = st.demotion.as_ref().expect("token");
        assert_eq!(
            (d.new_primary.as_str(), d.restarts_done, st.sync.is_some()),
            ("a", true, true),
            "never served: the mirror's status stays, nothing to restart"
        );
        assert_eq!(condition(&st, ConditionType::Degraded), Some(("True".into(), "FailoverAbandoned".into())));
    }

    #[test]
    fn proceeding_without_final_sync_skips_it_and_counts_the_lost_keys_in_the_rpo_token() {
        let mut was = in_failover(&[Step::Preflight, Step::Demote]);
        if let Some(f) = was.failover.as_mut() {
            f.rpo_token = Some(RpoToken { missed_keys: None, ..Default::default() });
        }
        let st = transition(&Action::ProceedWithoutFinalSync { missed: Some(3), reason: "bound".into() }, &was, &facts());
        let f = st.failover.expect("record");
        assert_eq!(f.rpo_token.as_ref().and_then(|t| t.missed_keys), Some(3));
        assert_eq!(super::super::plan::next_step(&f), Step::StopSync, "the runbook goes on with StopSync");
    }

    #[test]
    fn a_reclaim_keeps_the_term_and_drops_the_demotion_token() {
        let mut was = standby();
        was.demotion = Some(DemotionStatus { new_primary: "a".into(), ..Default::default() });
        let st = transition(&Action::ReclaimPrimary { proof: "terms".into() }, &was, &facts());
        assert_eq!((st.role, st.term, st.demotion.is_none(), st.sync.is_none()), (Some(Role::Primary), 1, true, true));
    }

    #[test]
    fn waiting_for_the_primary_keeps_a_demoting_phase_and_says_why() {
        let why = "a is FailingOver";
        let demoting = DRTopologyStatus { role: Some(Role::Standby), phase: Some(Phase::Demoting), ..Default::default() };
        let st = transition(&Action::WaitForPrimary { why: why.into() }, &demoting, &facts());
        assert_eq!(st.phase, Some(Phase::Demoting));
        let fresh = transition(&Action::WaitForPrimary { why: why.into() }, &DRTopologyStatus::default(), &facts());
        assert_eq!((fresh.role, fresh.phase), (Some(Role::Standby), Some(Phase::Syncing)), "a fresh cluster is a syncing standby");
        assert_eq!(condition(&fresh, ConditionType::SyncHealthy), Some(("False".into(), "WaitingForPrimary".into())));
    }

    #[test]
    fn staying_primary_reports_where_dns_points() {
        let primary = DRTopologyStatus { role: Some(Role::Primary), ..Default::default() };
        let here = transition(&Action::StayPrimary, &primary, &Facts { dns_here: Some(true), ..facts() });
        assert_eq!(condition(&here, ConditionType::DNSCorrect), Some(("True".into(), "PointsHere".into())));
        let unknown = transition(&Action::StayPrimary, &primary, &facts());
        assert_eq!(condition(&unknown, ConditionType::DNSCorrect), Some(("False".into(), "Wrong".into())), "not known to point here is not correct");
    }

    #[test]
    fn the_done_step_makes_a_primary_with_a_new_term_and_completes_the_record() {
        let mut st = in_failover(&Step::ALL[..9]);
        if let Some(f) = st.failover.as_mut() {
            f.peer_term = Some(6);
        }
        let term = failover_done(&mut st, at(9), None);
        let f = st.failover.as_ref().expect("record");
        assert_eq!((term, f.term, f.completed_at.clone()), (7, Some(7), Some(at(9).to_string())));
        assert_eq!((st.role, st.phase), (Some(Role::Primary), Some(Phase::Steady)));
    }

    #[test]
    fn a_step_keeps_its_first_start_across_retries() {
        let mut f = FailoverStatus::default();
        record_step(&mut f, Step::FinalSync, StepState::Running, None, at(0));
        record_step(&mut f, Step::FinalSync, StepState::Failed, Some("missing keys".into()), at(5));
        record_step(&mut f, Step::FinalSync, StepState::Running, None, at(10));
        let s = &f.steps[0];
        assert_eq!((s.started_at.clone(), s.finished_at.clone(), s.state), (Some(at(0).to_string()), None, StepState::Running));
    }

    #[test]
    fn degraded_says_an_abandoned_failover_holds_and_clears_once_it_does_not() {
        let degraded = |s: &DRTopologyStatus| condition(s, ConditionType::Degraded);
        let hold = Action::HoldPrimary { why: "b abandoned".into(), hold: PrimaryHold::PeerAbandoned };
        let reclaim = Action::ReclaimPrimary { proof: "terms".into() };
        let mut st = DRTopologyStatus::default();
        abandon_condition(&mut st, &Action::StayPrimary, None);
        assert_eq!(degraded(&st), None, "never added while nothing was abandoned");
        abandon_condition(&mut st, &hold, None);
        assert_eq!(degraded(&st), Some(("True".into(), "FailoverAbandoned".into())), "a hold sets it");
        abandon_condition(&mut st, &reclaim, None);
        assert_eq!(degraded(&st), Some(("True".into(), "FailoverAbandoned".into())), "a reclaim is the step into a hold: left as it is");
        abandon_condition(&mut st, &Action::AcknowledgeDemotion { new_primary: "b".into() }, None);
        assert_eq!(degraded(&st), Some(("False".into(), "Resolved".into())), "the peer retried: cleared");
        let skew = Action::HoldPrimary { why: "b runs an older drctl".into(), hold: PrimaryHold::PeerVersionSkew };
        abandon_condition(&mut st, &skew, None);
        assert_eq!(degraded(&st), Some(("True".into(), "PeerVersionSkew".into())), "a version skew holds the pair too");
        abandon_condition(&mut st, &Action::AcknowledgeDemotion { new_primary: "b".into() }, None);
        assert_eq!(degraded(&st), Some(("False".into(), "Resolved".into())), "the peer upgraded: cleared");
    }

    #[test]
    fn standing_down_writes_a_token_for_the_term_held_and_the_spec_it_stood_down_under() {
        let mut primary = DRTopologyStatus { role: Some(Role::Primary), phase: Some(Phase::Steady), term: 4, ..Default::default() };
        primary.sync = Some(Default::default());
        let f =
            Facts { self_name: "a", peer_name: "b", spec_primary: "a", generation: Some(7), retry: Some("r1"), own_head: Some((99, "c1".into())), ..facts() };
        let st = transition(&Action::StandDown { new_primary: "b".into(), why: "b is primary with term 5 > ours 4".into() }, &primary, &f);
        let d = st.demotion.as_ref().expect("token");
        assert_eq!((st.role, d.new_primary.as_str(), d.term, d.final_revision), (Some(Role::Standby), "b", Some(4), Some(99)));
        assert_eq!(d.stood_down, Some(AbandonedUnder { generation: Some(7), retry: Some("r1".into()) }));
        assert_eq!(condition(&st, ConditionType::Degraded), Some(("True".into(), "SteppedDown".into())));
        assert_eq!(st.term, 4, "standing down keeps the term: the token answers for it");
        // An ordinary acknowledgement carries the term too, and no stand-down.
        let acked = transition(&Action::AcknowledgeDemotion { new_primary: "b".into() }, &primary, &f);
        assert_eq!(acked.demotion.map(|d| (d.term, d.stood_down)), Some((Some(4), None)));
    }
}
