//! The Demote step's verdict on each look at the old primary: acknowledged, a disaster (gone for
//! a whole `demotionTimeout` in a row), our own configuration error (never a disaster), not
//! acknowledged in time, or look again.

use std::time::Duration;

use super::plan::PeerState;
use crate::topology::Role;

/// What one attempt to read the old primary's DRTopology gave.
#[derive(Clone, Copy, Debug)]
pub enum PeerAnswer<'a> {
    Answered(&'a PeerState),
    /// No answer: the peer (or the network to it) may be down.
    Down,
    /// Refused or impossible for a reason on our side: a missing or bad kubeconfig Secret, a
    /// credential the peer rejects, RBAC. Waiting does not fix it.
    Misconfigured,
}

#[derive(Clone, Copy, Debug)]
pub struct DemoteFacts<'a> {
    pub self_name: &'a str,
    pub answer: PeerAnswer<'a>,
    /// How long the peer has given no answer in a row (None: it answered last time).
    pub down_for: Option<Duration>,
    /// How long the step has waited since its first start.
    pub waited: Duration,
    /// `spec.failover.demotionTimeout`.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteVerdict {
    /// The old primary stepped down for us: its token is what FinalSync catches up to.
    Acknowledged,
    /// Unreachable for a whole timeout in a row: fail over without it.
    Disaster,
    /// Our configuration or credentials: the step fails, and is never passed as a disaster.
    ConfigurationError,
    /// It answers but has not stepped down for us within the timeout.
    NotAcknowledged,
    /// Ask again in a moment.
    Wait,
    /// It answers, is not primary and never was (no term, no token): it holds no writes of
    /// its own, so there is nothing to demote or catch up. Waiting for its token would wait
    /// forever (a flip before the first bootstrap left the pair without a primary).
    NeverPrimary,
}

/// Not primary, no term, and no failover of its own running (two fresh clusters each failing
/// over to itself must not both pass: model check, S3); a token written at term 0 (an aborted
/// failover of a cluster that never served) promises nothing. A token from before terms
/// (`term` absent) is still waited for.
fn never_primary(p: &super::plan::PeerState) -> bool {
    p.role != Some(Role::Primary)
        && p.term == 0
        && !p.failover.as_ref().is_some_and(super::plan::PeerFailover::in_progress)
        && (p.demoted_for.is_none() || p.token_term == Some(0))
}

pub fn demote_verdict(f: &DemoteFacts) -> DemoteVerdict {
    match f.answer {
        PeerAnswer::Misconfigured => DemoteVerdict::ConfigurationError,
        PeerAnswer::Down if f.down_for.is_some_and(|d| d >= f.timeout) => DemoteVerdict::Disaster,
        PeerAnswer::Down => DemoteVerdict::Wait,
        // Before the token: a token of a cluster that never served promises nothing to catch up.
        PeerAnswer::Answered(p) if never_primary(p) => DemoteVerdict::NeverPrimary,
        PeerAnswer::Answered(p) if p.demoted_for.as_deref() == Some(f.self_name) && p.role == Some(Role::Standby) => DemoteVerdict::Acknowledged,
        PeerAnswer::Answered(_) if f.waited >= f.timeout => DemoteVerdict::NotAcknowledged,
        PeerAnswer::Answered(_) => DemoteVerdict::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(120);

    fn facts(answer: PeerAnswer<'_>, down_for: Option<u64>, waited: u64) -> DemoteFacts<'_> {
        DemoteFacts { self_name: "b", answer, down_for: down_for.map(Duration::from_secs), waited: Duration::from_secs(waited), timeout: TIMEOUT }
    }

    #[test]
    fn the_demote_verdict_follows_the_rules() {
        let acked = PeerState { demoted_for: Some("b".into()), role: Some(Role::Standby), ..Default::default() };
        let for_other = PeerState { demoted_for: Some("c".into()), role: Some(Role::Standby), ..Default::default() };
        let still_primary = PeerState { spec_primary: "a".into(), role: Some(Role::Primary), ..Default::default() };
        let token_but_primary = PeerState { demoted_for: Some("b".into()), role: Some(Role::Primary), ..Default::default() };
        let never = PeerState::default();
        let once_primary = PeerState { role: Some(Role::Standby), term: 1, ..Default::default() };
        let failing_over =
            PeerState { failover: Some(crate::decide::plan::PeerFailover { completed: false, aborted: false, ..Default::default() }), ..Default::default() };
        let aborted_token = PeerState { role: Some(Role::Standby), demoted_for: Some("c".into()), token_term: Some(0), ..Default::default() };
        let old_token = PeerState { role: Some(Role::Standby), demoted_for: Some("c".into()), token_term: None, ..Default::default() };
        use DemoteVerdict::*;
        use PeerAnswer::*;
        let cases = [
            (facts(Misconfigured, Some(10_000), 10_000), ConfigurationError, "a credentials error is never a disaster, however long it lasts"),
            (facts(Misconfigured, None, 0), ConfigurationError, "a configuration error fails at once: waiting does not fix it"),
            (facts(Down, Some(5), 119), Wait, "a blip is not a disaster"),
            (facts(Down, Some(119), 500), Wait, "down for less than the timeout in a row is not a disaster, however long the step waited"),
            (facts(Down, Some(120), 120), Disaster, "unreachable for a whole timeout in a row is a disaster"),
            (facts(Answered(&acked), None, 0), Acknowledged, "its token for us is the acknowledgement"),
            (facts(Answered(&acked), None, 1_000), Acknowledged, "a late token still counts"),
            (facts(Answered(&for_other), None, 10), Wait, "a token for another cluster is no acknowledgement"),
            (facts(Answered(&token_but_primary), None, 10), Wait, "a token while it still calls itself primary is no acknowledgement"),
            (facts(Answered(&still_primary), None, 119), Wait, "reachable: it has until the timeout"),
            (facts(Answered(&still_primary), None, 120), NotAcknowledged, "reachable and not stepped down within the timeout fails the step"),
            (facts(Answered(&never), None, 0), NeverPrimary, "never primary (no role, no term, no token): nothing to wait for"),
            (facts(Answered(&once_primary), None, 10), Wait, "a standby that once held a term may hold writes: its token is waited for"),
            (facts(Answered(&failing_over), None, 10), Wait, "a fresh peer failing over to itself: not both may pass"),
            (facts(Answered(&aborted_token), None, 0), NeverPrimary, "a token written at term 0 promises nothing"),
            (facts(Answered(&old_token), None, 0), Wait, "a token from before terms is waited for"),
        ];
        for (f, want, rule) in cases {
            assert_eq!(demote_verdict(&f), want, "{rule}");
        }
    }
}
