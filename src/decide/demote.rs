//! The Demote step's verdict on each look at the old primary: acknowledged, a disaster (gone for
//! a whole `demotionTimeout` in a row), our own configuration error (never a disaster), not
//! acknowledged in time, or look again; and the operator's override of an acknowledgement that
//! cannot come (the old primary's apiserver answers, its controller does not act), refused while
//! the old primary's etcd is still being written.

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

/// Set on the new primary's DRTopology to let its Demote step proceed as if the old primary had
/// acknowledged: `<old primary>/<its term>` (e.g. `global-a/3`; the waiting step's message names
/// both). Naming the term makes it good for this failover only: an old primary that serves again
/// holds a higher term. docs/runbooks.md, "A Demote that cannot be acknowledged".
pub const OVERRIDE_ANNOTATION: &str = "drctl.io/override-demotion";

/// How long the old primary's etcd is watched before an override is accepted.
pub const OVERRIDE_QUIET_WINDOW: Duration = Duration::from_secs(5);

/// The override as the Demote step found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Override {
    /// Not set, or set for another cluster or term (`override_named` says why).
    #[default]
    Absent,
    /// Names the old primary at its term, but its etcd took writes during the quiet window (or
    /// could not be watched): writes there would be lost.
    Written,
    /// Names it, and its etcd took none but its apiservers' own bookkeeping in the window.
    Quiet,
}

/// Whether `value` (the [`OVERRIDE_ANNOTATION`]) names `peer` at `term`: Ok(false) when it is not
/// set, Err(why) when it names something else (mistyped, or written for an earlier failover).
pub fn override_named(value: Option<&str>, peer: &str, term: i64) -> Result<bool, String> {
    let Some(value) = value.map(str::trim) else { return Ok(false) };
    let want = format!("{peer}/{term}");
    if value == want {
        return Ok(true);
    }
    Err(format!("annotation {OVERRIDE_ANNOTATION}={value:?} is ignored: it must name the old primary at its present term, {want:?}"))
}

/// Keys an idle global's control plane writes by itself (leases renewed every few seconds,
/// Events, drctl's heartbeat, the apiserver's compaction marker): writes there do not make an
/// override unsafe. Every other write is a client's, and would be lost.
fn bookkeeping(key: &[u8]) -> bool {
    const PREFIXES: [&str; 3] = ["/registry/leases/", "/registry/masterleases/", "/registry/events/"];
    PREFIXES.iter().any(|p| key.starts_with(p.as_bytes())) || crate::heartbeat::is_heartbeat(key) || key == crate::etcd::APISERVER_COMPACT_KEY.as_bytes()
}

/// The keys among `written` (the old primary's etcd during the quiet window) that refuse an
/// override: all but [`bookkeeping`] writes, each once, in order.
pub fn client_writes<'k>(written: impl IntoIterator<Item = &'k [u8]>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in written.into_iter().filter(|k| !bookkeeping(k)) {
        let k = String::from_utf8_lossy(k).into_owned();
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
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
    /// The operator's [`OVERRIDE_ANNOTATION`], looked at only while the peer answers without
    /// acknowledging.
    pub override_: Override,
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
    /// It answers without acknowledging, and the operator's override names it and its etcd is
    /// quiet: proceed as if it had acknowledged at its etcd's head.
    Overridden,
    /// The override names it, but its etcd is still being written: refused, ask again.
    OverrideRefused,
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
        // Before the timeout: the operator decides when to stop waiting for a broken controller.
        PeerAnswer::Answered(_) if f.override_ == Override::Quiet => DemoteVerdict::Overridden,
        PeerAnswer::Answered(_) if f.override_ == Override::Written => DemoteVerdict::OverrideRefused,
        PeerAnswer::Answered(_) if f.waited >= f.timeout => DemoteVerdict::NotAcknowledged,
        PeerAnswer::Answered(_) => DemoteVerdict::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(120);

    fn facts(answer: PeerAnswer<'_>, down_for: Option<u64>, waited: u64) -> DemoteFacts<'_> {
        DemoteFacts {
            self_name: "b",
            answer,
            down_for: down_for.map(Duration::from_secs),
            waited: Duration::from_secs(waited),
            timeout: TIMEOUT,
            override_: Override::Absent,
        }
    }

    #[test]
    fn an_override_counts_only_while_the_peer_answers_without_acknowledging() {
        let acked = PeerState { demoted_for: Some("b".into()), role: Some(Role::Standby), ..Default::default() };
        let still_primary = PeerState { spec_primary: "a".into(), role: Some(Role::Primary), term: 3, ..Default::default() };
        let never = PeerState::default();
        let with = |f: DemoteFacts<'static>, o: Override| DemoteFacts { override_: o, ..f };
        use DemoteVerdict::*;
        use PeerAnswer::*;
        let (acked, still_primary, never) = (Box::leak(Box::new(acked)), Box::leak(Box::new(still_primary)), Box::leak(Box::new(never)));
        let cases = [
            (with(facts(Answered(still_primary), None, 0), Override::Quiet), Overridden, "a quiet old primary: proceed at once"),
            (with(facts(Answered(still_primary), None, 500), Override::Quiet), Overridden, "also after the timeout failed the step"),
            (with(facts(Answered(still_primary), None, 10), Override::Written), OverrideRefused, "still written: refused"),
            (with(facts(Answered(still_primary), None, 500), Override::Written), OverrideRefused, "refused, not failed: the operator stops the writers"),
            (with(facts(Answered(still_primary), None, 10), Override::Absent), Wait, "no override: wait"),
            (with(facts(Answered(acked), None, 0), Override::Written), Acknowledged, "a real acknowledgement needs no override"),
            (with(facts(Answered(never), None, 0), Override::Written), NeverPrimary, "nothing to demote"),
            (with(facts(Down, Some(5), 5), Override::Quiet), Wait, "unreachable: the disaster rule, not the override"),
            (with(facts(Misconfigured, None, 0), Override::Quiet), ConfigurationError, "our configuration: not overridden"),
        ];
        for (f, want, rule) in cases {
            assert_eq!(demote_verdict(&f), want, "{rule}");
        }
    }

    #[test]
    fn the_override_names_the_old_primary_at_its_term() {
        assert_eq!(override_named(None, "global-a", 3), Ok(false));
        assert_eq!(override_named(Some("global-a/3"), "global-a", 3), Ok(true));
        assert_eq!(override_named(Some(" global-a/3\n"), "global-a", 3), Ok(true), "surrounding whitespace is not part of it");
        for stale in ["global-a/2", "global-a", "global-b/3", ""] {
            let e = override_named(Some(stale), "global-a", 3).expect_err(stale);
            assert!(e.contains("\"global-a/3\"") && e.contains(OVERRIDE_ANNOTATION), "{e}");
        }
    }

    #[test]
    fn only_client_writes_refuse_an_override() {
        let written: [&[u8]; 7] = [
            b"/registry/leases/kube-system/kube-controller-manager",
            b"/registry/masterleases/127.0.0.1",
            b"/registry/events/default/x.1",
            b"/registry/drctl.io/heartbeats/platform",
            b"compact_rev_key",
            b"/registry/configmaps/apps/orders",
            b"/registry/configmaps/apps/orders",
        ];
        assert_eq!(client_writes(written), vec!["/registry/configmaps/apps/orders".to_string()], "each client key once");
        assert!(client_writes(written[..5].iter().copied()).is_empty(), "an idle control plane's bookkeeping");
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
