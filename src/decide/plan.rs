//! The failover runbook as a pure planner: what this cluster's controller should do next, given
//! the declared topology, its own recorded status and what it observes of its peer.
//!
//! The runbook (docs/architecture.md, README "The failover runbook") on the cluster that becomes primary:
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
//!   and the cluster named by the new `spec.primary` runs a complete failover of its own;
//! - the pair is never left without a primary by a FinalSync that cannot pass: after
//!   `finalSyncTimeout` the failover is abandoned (the old primary reclaims, and the new one
//!   holds until the spec or `drctl.io/retry-failover` changes) or, by policy, proceeds;
//! - the higher term wins ([`outranked`]): a primary that sees a primary of a higher term, a
//!   peer that took over without it, or DNS answering the peer stands down, whatever its own
//!   spec says, and holds until the spec changes or the role comes back
//!   ([`holding_after_stand_down`]). docs/architecture.md, "Safety invariants", and
//!   `tests/model_check.rs`, which explores these rules exhaustively.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::topology::{DRTopologyStatus, DemotionStatus, FailoverStatus, FinalSyncPolicy, Phase, Role, StepState, StepStatus};

/// Retries a failover that was abandoned under an unchanged spec: set it on the DRTopology of
/// the cluster named primary to any value it did not have when the failover was abandoned.
pub const RETRY_ANNOTATION: &str = "drctl.io/retry-failover";

/// Set, with `spec.primary`, in the same `kubectl patch` of a break-glass failover (Git or the
/// forge down, docs/runbooks.md): why. The failover it starts records it (`failover.breakGlass`),
/// and `drctl history` shows it beside the commit that records the flip once Git is back.
pub const BREAK_GLASS_ANNOTATION: &str = "drctl.io/break-glass";

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
            Step::FinalSync => "catch up to the old primary's final revision, run the consistency check, record the RPO token; after finalSyncTimeout, abandon or proceed by finalSyncPolicy",
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

impl StepStatus {
    /// Whether this record is of `step` (records carry the step's name, the API's string).
    pub fn is(&self, step: Step) -> bool {
        self.name == step.name()
    }

    /// The step this record is of, unless a newer controller wrote a step this one does not know.
    pub fn step(&self) -> Option<Step> {
        Step::from_name(&self.name)
    }
}

/// The record of `step` in a failover, once it has one.
pub fn step_record(f: &FailoverStatus, step: Step) -> Option<&StepStatus> {
    f.steps.iter().find(|s| s.is(step))
}

/// Whether `step` of a failover has succeeded or been skipped.
pub fn step_finished(f: &FailoverStatus, step: Step) -> bool {
    step_record(f, step).is_some_and(|s| matches!(s.state, StepState::Succeeded | StepState::Skipped))
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What this controller can see of its peer (through the peer kubeconfig).
// One per reconcile, never held in a collection: boxing the state would buy nothing.
#[allow(clippy::large_enum_variant)]
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
    /// The term its demotion token answers for (the term it held when it stepped down).
    pub token_term: Option<i64>,
    /// The controller that wrote its status (`status.controller`): see `decide::skew`.
    pub controller: super::skew::PeerController,
}

/// How far the peer got with its latest failover to itself.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PeerFailover {
    pub completed: bool,
    pub aborted: bool,
    /// It was abandoned because its FinalSync did not pass in time (`finalSyncPolicy: abandon`):
    /// the peer hands the primary role back to us.
    pub abandoned: bool,
    /// Its SwitchDNS step succeeded: clients may have written there since.
    pub dns_switched: bool,
    /// The term it gave the peer, once completed.
    pub term: Option<i64>,
    /// Our term as it read it at Preflight/Demote (None: it never reached us). A failover based
    /// on a term below the one we hold now started before we last became primary: history.
    pub based_on_term: Option<i64>,
    /// Its RPO token: the etcd cluster ID it replicated from and the last revision it applied.
    pub applied: Option<(String, i64)>,
}

impl PeerFailover {
    /// Started and neither completed nor aborted.
    pub fn in_progress(&self) -> bool {
        !self.completed && !self.aborted
    }

    /// Whether this failover happened before we took term `mine`, so what it did (moving DNS)
    /// says nothing about who wrote since.
    fn predates(&self, mine: i64) -> bool {
        self.term.is_some_and(|t| t < mine) || self.based_on_term.is_some_and(|t| t < mine)
    }
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
    /// The other cluster of `spec.clusters`.
    pub peer_name: &'a str,
    pub spec_primary: &'a str,
    /// Validation errors of the spec (empty when valid).
    pub invalid: bool,
    /// `spec.failover.dryRun`: report what a role change would do instead of doing it.
    pub dry_run: bool,
    pub status: Option<&'a DRTopologyStatus>,
    pub peer: PeerView,
    /// Whether the platform domain resolves to this cluster's VIP: `Some(false)` when a resolver
    /// answered something else, None when unknown. Only asked when [`asks_dns`] holds.
    pub dns_here: Option<bool>,
    /// The resolvers answered the peer's VIP (then `dns_here` is `Some(false)`).
    pub dns_at_peer: bool,
    pub now: Timestamp,
    /// `spec.failover.finalSyncTimeout` and `finalSyncPolicy`.
    pub final_sync: FinalSyncBound,
    /// `metadata.generation` and the [`RETRY_ANNOTATION`] of this cluster's DRTopology: an
    /// abandoned failover is retried only when one of them changed.
    pub generation: Option<i64>,
    pub retry: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FinalSyncBound {
    pub timeout: Duration,
    pub policy: FinalSyncPolicy,
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
    /// FinalSync did not pass within its bound (`finalSyncPolicy: abandon`): skip what remains
    /// and hand the primary role back to the old primary with a demotion token for it.
    AbandonFailover { reason: String },
    /// FinalSync did not pass within its bound (`finalSyncPolicy: proceed`): record it as
    /// skipped with the keys it leaves behind (lost) and go on with StopSync.
    ProceedWithoutFinalSync { missed: Option<u64>, reason: String },
    /// Our failover was abandoned under the spec we still have: follow the old primary (mirror
    /// from it once it is Primary and Steady) instead of starting again.
    HoldAbandoned { why: String, mirror: bool },
    /// `spec.primary` names the peer, but stay primary (unfenced): the peer abandoned its
    /// failover to itself and handed the role back (until it retries), or its controller is of
    /// an older protocol (until it is upgraded).
    HoldPrimary { why: String, hold: PrimaryHold },
    /// This cluster was primary and `spec.primary` moved: write the demotion token.
    AcknowledgeDemotion { new_primary: String },
    /// Standby whose primary is ready: mirror from it (idempotent when already mirroring).
    Mirror,
    /// Standby whose primary is not ready (failing over, unreachable at start): do not mirror.
    WaitForPrimary { why: String },
    /// This cluster acts as primary but is outranked (see [`outranked`]): step down for the
    /// peer now, fenced, whatever its own `spec.primary` says. `why` names the evidence.
    StandDown { new_primary: String, why: String },
    /// The primary finds DNS answering its follower (a failover that moved DNS, then aborted):
    /// point it back here. (A peer that might be primary outranks us instead: [`outranked`].)
    RepairDns { why: String },
    /// We stood down against our own `spec.primary`, under the spec we still have: stay a
    /// fenced standby (not mirroring) until the spec or the retry annotation changes, or the
    /// peer hands the role back.
    HoldStoodDown { why: String },
}

/// Why a primary named standby keeps the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryHold {
    /// The new primary abandoned its failover and handed the role back.
    PeerAbandoned,
    /// The new primary's controller is of an older protocol (`decide::skew`).
    PeerVersionSkew,
}

impl Action {
    /// Why the pair holds after an abandoned failover, for the `Degraded` condition.
    pub fn abandoned_hold(&self) -> Option<&str> {
        match self {
            Action::AbandonFailover { reason: why } | Action::HoldAbandoned { why, .. } | Action::HoldPrimary { why, hold: PrimaryHold::PeerAbandoned } => {
                Some(why)
            }
            _ => None,
        }
    }
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
    status.and_then(|s| s.failover.as_ref()).filter(|f| f.to == self_name && f.completed_at.is_none() && f.aborted.is_none())
}

/// The first step of a failover record that has not succeeded or been skipped.
pub fn next_step(f: &FailoverStatus) -> Step {
    Step::ALL.into_iter().find(|step| !step_finished(f, *step)).unwrap_or(Step::Done)
}

/// The term a cluster takes when it becomes primary (bootstrap or a completed failover): past
/// every term it has held or seen, so the latest completed failover always holds the highest.
pub fn next_term(status: &DRTopologyStatus) -> i64 {
    let recorded = status.failover.as_ref().and_then(|f| f.peer_term).unwrap_or(0);
    status.term.max(status.peer_term).max(recorded).saturating_add(1)
}

/// What a stepped-down primary took that the peer's completed failover from it never applied:
/// our final revision against its applied one, when both count revisions of our etcd. None when
/// they cannot be compared (no final revision, another source, no completed failover).
pub fn unreplicated_revisions(demotion: &DemotionStatus, peer: &PeerState) -> Option<i64> {
    let f = peer.failover.as_ref().filter(|f| f.completed)?;
    let (source, applied) = f.applied.as_ref()?;
    let (ours, final_revision) = (demotion.cluster_id.as_ref()?, demotion.final_revision?);
    (source == ours).then(|| final_revision.saturating_sub(*applied).max(0))
}

/// Whether FinalSync catches up from the old primary, given our own term and the term it held
/// (`failover.peerTerm`, None when it never answered): not when ours is higher. Then we were
/// primary after it stepped down, it holds nothing newer, and a catch-up would replace our
/// acknowledged writes with its older copy.
pub fn old_primary_may_be_newer(own_term: i64, peer_term: Option<i64>) -> bool {
    peer_term.is_none_or(|t| t >= own_term)
}

/// How long FinalSync of `f` may still try: None before its first start, zero once its bound is
/// used. Counted from the first start recorded in status, so neither a failed attempt nor a
/// controller restart starts the bound again.
pub fn final_sync_left(f: &FailoverStatus, now: Timestamp, timeout: Duration) -> Option<Duration> {
    let started: Timestamp = step_record(f, Step::FinalSync)?.started_at.as_ref()?.parse().ok()?;
    let spent = now.duration_since(started);
    // A start in the future (clock skew) has spent nothing.
    Some(if spent.is_negative() { timeout } else { timeout.saturating_sub(spent.unsigned_abs()) })
}

/// A FinalSync that used its whole bound ends the failover by `spec.failover.finalSyncPolicy`,
/// whatever the peer does (gone or not, the old primary has already stepped down): waiting on
/// is what left the pair without a primary.
fn final_sync_expired(o: &Observed, f: &FailoverStatus) -> Action {
    let last = step_record(f, Step::FinalSync).and_then(|s| s.message.as_deref()).unwrap_or("no attempt finished");
    let bound = format!("FinalSync did not pass within spec.failover.finalSyncTimeout ({}s); last: {last}", o.final_sync.timeout.as_secs());
    match o.final_sync.policy {
        FinalSyncPolicy::Abandon => {
            Action::AbandonFailover { reason: format!("{bound}. Abandoned: {} takes its primary role back (finalSyncPolicy abandon)", f.from) }
        }
        FinalSyncPolicy::Proceed => {
            let missed = f.rpo_token.as_ref().and_then(|t| t.missed_keys);
            let lost = missed
                .map(|m| format!("{m} keys of {} missing here are lost", f.from))
                .unwrap_or_else(|| "the keys not caught up are lost (no check finished)".into());
            Action::ProceedWithoutFinalSync { missed, reason: format!("{bound}. Proceeding by finalSyncPolicy proceed: {lost}") }
        }
    }
}

/// Our latest failover was abandoned under the spec generation and retry annotation we still
/// have: why we hold (and do not start it again, which would demote the old primary again and
/// abandon again, in a loop).
pub fn holding_after_abandon(o: &Observed) -> Option<String> {
    let f = o.status?.failover.as_ref().filter(|f| f.to == o.self_name)?;
    let under = f.abandoned.as_ref()?;
    (under.generation == o.generation && under.retry.as_deref() == o.retry).then(|| {
        format!(
            "the failover {} -> {} was abandoned ({}); {} holds the primary role until the spec changes or annotation {RETRY_ANNOTATION} is set to a new value",
            f.from,
            f.to,
            f.aborted.as_deref().unwrap_or("FinalSync did not pass in time"),
            f.from
        )
    })
}

/// The peer's latest failover to itself was abandoned and handed the role back (and the peer
/// has not become primary since).
fn peer_abandoned<'o>(o: &'o Observed) -> Option<&'o PeerState> {
    o.peer.reachable().filter(|p| p.role != Some(Role::Primary) && p.failover.as_ref().is_some_and(|f| f.abandoned && !f.completed))
}

/// This cluster is a standby that stepped down for the declared primary, and that primary
/// abandoned its failover: whether we may take the role back is [`reclaim_after_abandon`]'s.
fn demoted_for_an_abandoned_peer(o: &Observed) -> bool {
    o.status.is_some_and(|s| s.role == Some(Role::Standby) && s.demotion.as_ref().is_some_and(|d| d.new_primary == o.spec_primary))
        && peer_abandoned(o).is_some()
}

/// The old primary takes the role back after the declared primary abandoned its failover, by
/// the same proof as any reclaim (see [`reclaim_refusal`]) plus the peer's demotion token for
/// us: it is fenced and will not act as primary. When the proof fails, it waits and says why;
/// a human decides (the peer holds, so nothing loops).
fn reclaim_after_abandon(o: &Observed) -> Option<Action> {
    if !demoted_for_an_abandoned_peer(o) {
        return None;
    }
    let p = peer_abandoned(o)?;
    let mine = o.status.map(|s| s.term).unwrap_or(0);
    if p.demoted_for.as_deref() != Some(o.self_name) {
        return Some(Action::WaitForPeer { why: format!("{} abandoned its failover; waiting for its demotion token for {}", o.spec_primary, o.self_name) });
    }
    Some(match reclaim_refusal(p, mine, o.dns_here) {
        Some(why) => Action::WaitForPeer {
            why: format!(
                "{} abandoned its failover, but this cluster may not take the role back: {why}. Flip spec.primary to the cluster that must serve",
                o.spec_primary
            ),
        },
        None => Action::ReclaimPrimary {
            proof: format!("{} abandoned its failover and handed the role back; {}", o.spec_primary, reclaim_proof(p, mine, o.dns_here)),
        },
    })
}

/// A standby whose declared primary is failing over to itself and has no demotion token from
/// us: we once held a term (so its Demote waits for our token) but lost the token (a status lost
/// mid-failover comes back from the role memory without it). Issue it again: we are a fenced
/// standby, and our head is where its FinalSync catches up to. Without it the pair stayed
/// without a primary for good (model check, S3).
fn token_wanted(o: &Observed) -> Option<String> {
    let st = o.status.filter(|s| s.role == Some(Role::Standby) && s.term > 0)?;
    let p = o.peer.reachable()?;
    let ours = st.demotion.as_ref().is_some_and(|d| d.new_primary == o.spec_primary);
    let waits = p.spec_primary == o.spec_primary && p.failover.as_ref().is_some_and(PeerFailover::in_progress);
    (!ours && waits && o.spec_primary == o.peer_name).then(|| o.spec_primary.to_string())
}

/// Whether the planner needs to know where DNS points: when a reclaim is possible, and while
/// this cluster acts as primary (DNS answering the peer outranks it, see [`outranked`]).
pub fn asks_dns(o: &Observed) -> bool {
    acting_primary(o) || bootstrapping(o) || may_reclaim(o.status, o.self_name, o.spec_primary) || demoted_for_an_abandoned_peer(o)
}

/// Named primary with no role yet: a bootstrap, unless DNS answers the peer.
fn bootstrapping(o: &Observed) -> bool {
    o.self_name == o.spec_primary && o.status.and_then(|s| s.role).is_none()
}

/// This cluster holds the primary role (writable unless fenced) and no failover to it runs.
fn acting_primary(o: &Observed) -> bool {
    o.status.and_then(|s| s.role) == Some(Role::Primary) && in_progress(o.status, o.self_name).is_none()
}

/// Why a cluster acting as primary must stand down, whatever its own `spec.primary` says: the
/// one rule that ends every split brain (a partition, a flip one side applied, a lost status).
/// - **The higher term wins.** The peer is primary with a higher term: it completed a failover
///   after ours (terms only rise past every term seen). Equal terms (two bootstraps) go to the
///   cluster DNS answers, else to the name that sorts first.
/// - **The peer took over without us.** Its failover to itself is past SwitchDNS and based on
///   no acknowledgement of ours: it declared us lost.
/// - **DNS is the arbiter** (the seed: "whoever DNS points at is primary"). The resolvers answer
///   the peer's VIP, and the peer is not provably our follower (it answers, is not primary, runs
///   no failover and holds a lower term): that catches a partition in which the peer is not
///   reachable but clients already are.
///
/// Only asked while `spec.primary` names this cluster: named standby, it acknowledges demotion
/// by the ordinary rule.
pub fn outranked(o: &Observed) -> Option<String> {
    if !acting_primary(o) || o.self_name != o.spec_primary {
        return None;
    }
    let mine = o.status.map(|s| s.term).unwrap_or(0);
    let peer = o.peer_name;
    if let Some(p) = o.peer.reachable() {
        if p.role == Some(Role::Primary) && p.term > mine {
            return Some(format!("{peer} is primary with term {} > ours {mine}: the higher term wins", p.term));
        }
        if p.role == Some(Role::Primary) && p.term == mine && o.dns_here != Some(true) && (o.dns_at_peer || o.self_name > peer) {
            let by = if o.dns_at_peer { "DNS answers it" } else { "its name sorts first" };
            return Some(format!("{peer} is primary with our term {mine} too; {by}"));
        }
        if p.failover.as_ref().is_some_and(|f| f.in_progress() && f.dns_switched) {
            return Some(format!("{peer} is failing over to itself and has moved DNS: it declared {} lost", o.self_name));
        }
    }
    let follower =
        o.peer.reachable().is_some_and(|p| p.role != Some(Role::Primary) && p.term < mine && !p.failover.as_ref().is_some_and(PeerFailover::in_progress));
    (o.dns_at_peer && !follower).then(|| format!("the platform domain resolves to {peer}'s VIP and {peer} may be primary: DNS decides"))
}

/// We stood down against our own `spec.primary` under the spec generation and retry
/// annotation we still have, and the peer has not handed the role back: why we hold.
pub fn holding_after_stand_down(o: &Observed) -> Option<String> {
    let st = o.status.filter(|s| s.role == Some(Role::Standby))?;
    let under = st.demotion.as_ref()?.stood_down.as_ref()?;
    // The peer that outranked us no longer acts as primary (it handed the role back, or lost it):
    // the ordinary rules decide again (a reclaim with proof, or a full failover).
    let gone = o.peer.reachable().is_some_and(|p| p.role != Some(Role::Primary) && !p.failover.as_ref().is_some_and(PeerFailover::in_progress));
    (under.generation == o.generation && under.retry.as_deref() == o.retry && !gone).then(|| {
        format!(
            "{} stood down for {} (a higher-term primary, or DNS answering it) though spec.primary names {}; it stays a fenced standby until the spec changes, annotation {RETRY_ANNOTATION} is set to a new value, or {} hands the role back",
            o.self_name, o.peer_name, o.self_name, o.peer_name
        )
    })
}

/// This cluster is named primary, is a standby, and once stepped down: whether it may take the
/// role back without a runbook is for [`reclaim_or_fail_over`] to decide.
pub fn may_reclaim(status: Option<&DRTopologyStatus>, self_name: &str, spec_primary: &str) -> bool {
    self_name == spec_primary && in_progress(status, self_name).is_none() && status.is_some_and(|s| s.role == Some(Role::Standby) && s.demotion.is_some())
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
    if let Some(why) = reclaim_refusal(p, mine, o.dns_here) {
        return Action::StartFailover { why };
    }
    if p.spec_primary != me {
        return Action::WaitForPeer {
            why: format!("the peer has spec.primary {:?} applied; waiting for Argo CD to sync the flip back to {me}", p.spec_primary),
        };
    }
    Action::ReclaimPrimary { proof: reclaim_proof(p, mine, o.dns_here) }
}

/// Why a cluster that stepped down (term `mine`) may not take the role back without a runbook,
/// if it may not: the peer is primary, holds a term not below ours (it may have become primary
/// after us), moved DNS in its latest failover, or DNS is known to point elsewhere.
fn reclaim_refusal(p: &PeerState, mine: i64, dns_here: Option<bool>) -> Option<String> {
    if p.role == Some(Role::Primary) {
        return Some(format!("the peer is primary (term {})", p.term));
    }
    if p.term >= mine {
        return Some(if p.term == mine {
            format!("the peer's term equals ours ({mine}): which primary came last is unknown (a status from before terms)")
        } else {
            format!("the peer became primary after we stepped down (its term {} > ours {mine})", p.term)
        });
    }
    // A failover from before we took our term (a completed one always is, past the check
    // above) moved DNS away from an earlier primary, not from us.
    if p.failover.as_ref().is_some_and(|f| f.dns_switched && !f.predates(mine)) {
        return Some("the peer's abandoned failover had moved DNS: clients may have written there".into());
    }
    if dns_here == Some(false) {
        return Some("the platform domain does not resolve to this cluster".into());
    }
    None
}

/// The facts a reclaim rests on, for its Event.
fn reclaim_proof(p: &PeerState, mine: i64, dns_here: Option<bool>) -> String {
    let last = match &p.failover {
        Some(f) if f.predates(mine) && f.completed => "its latest failover completed before our term: it was primary before us, not since",
        Some(f) if f.predates(mine) => "its latest failover came before our term",
        Some(_) => "its latest failover was abandoned before SwitchDNS",
        None => "it never started a failover",
    };
    let dns = if dns_here == Some(true) { "DNS answers here" } else { "DNS not verified" };
    format!("our term {mine} > the peer's {}; {last}; {dns}", p.term)
}

pub fn plan(o: &Observed) -> Action {
    if o.invalid {
        return Action::Hold;
    }
    let next = match outranked(o) {
        Some(why) => Action::StandDown { new_primary: o.peer_name.to_string(), why },
        None => plan_role(o),
    };
    match next {
        Action::StartFailover { .. } | Action::AcknowledgeDemotion { .. } | Action::ReclaimPrimary { .. } | Action::StandDown { .. } if o.dry_run => {
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
                let step = next_step(f);
                if step == Step::FinalSync && final_sync_left(f, o.now, o.final_sync.timeout) == Some(Duration::ZERO) {
                    return final_sync_expired(o, f);
                }
                return Action::RunStep(step);
            }
            if let Some(why) = holding_after_abandon(o) {
                let mirror = o.peer.reachable().is_some_and(|p| p.role == Some(Role::Primary) && p.phase == Some(Phase::Steady));
                return Action::HoldAbandoned { why, mirror };
            }
            if let Some(why) = holding_after_stand_down(o) {
                return Action::HoldStoodDown { why };
            }
            match role {
                Some(Role::Primary) if o.dns_at_peer => Action::RepairDns {
                    why: format!(
                        "the platform domain resolves to {}'s VIP, and {} follows this cluster (a lower term, not failing over)",
                        o.peer_name, o.peer_name
                    ),
                },
                Some(Role::Primary) => Action::StayPrimary,
                _ if may_reclaim(o.status, o.self_name, o.spec_primary) => reclaim_or_fail_over(o),
                Some(Role::Standby) => Action::StartFailover { why: "this cluster is a standby and spec.primary names it".into() },
                None => match o.peer.reachable() {
                    // A peer that still calls itself primary must be failed over from, not ignored.
                    Some(p) if p.role == Some(Role::Primary) => Action::StartFailover { why: format!("{} still reports itself primary", o.spec_primary) },
                    // A bootstrap does not move DNS: while it answers the peer, the runbook does.
                    _ if o.dns_at_peer => Action::StartFailover { why: format!("the platform domain resolves to {}'s VIP: the runbook moves it", o.peer_name) },
                    _ => Action::BootstrapPrimary,
                },
            }
        }
        Role::Standby => {
            if in_progress(o.status, o.self_name).is_some() {
                return Action::AbortFailover { reason: format!("superseded: spec.primary is now {}", o.spec_primary) };
            }
            if role == Some(Role::Primary) {
                if let Some(p) = peer_abandoned(o) {
                    let why = format!(
                        "spec.primary is {} but it abandoned its failover (term {}) and handed the role back; primary until it retries",
                        o.spec_primary, p.term
                    );
                    return Action::HoldPrimary { why, hold: PrimaryHold::PeerAbandoned };
                }
                if let Some(why) = o.peer.reachable().and_then(|p| super::skew::demotion_refused(o.self_name, o.peer_name, &p.controller)) {
                    return Action::HoldPrimary { why, hold: PrimaryHold::PeerVersionSkew };
                }
                return Action::AcknowledgeDemotion { new_primary: o.spec_primary.to_string() };
            }
            if let Some(reclaim) = reclaim_after_abandon(o) {
                return reclaim;
            }
            if let Some(new_primary) = token_wanted(o) {
                return Action::AcknowledgeDemotion { new_primary };
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
                        Action::WaitForPrimary { why: format!("{} is unreachable; mirroring starts once it confirms it is primary", o.spec_primary) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::DemotionStatus;

    fn status(role: Option<Role>, phase: Option<Phase>) -> DRTopologyStatus {
        DRTopologyStatus { role, phase, ..Default::default() }
    }

    fn peer(spec_primary: &str, role: Option<Role>, phase: Option<Phase>) -> PeerView {
        PeerView::Reachable(PeerState { spec_primary: spec_primary.into(), role, phase, ..Default::default() })
    }

    fn failover(to: &str, done: &[Step]) -> FailoverStatus {
        FailoverStatus {
            from: "a".into(),
            to: to.into(),
            steps: done.iter().map(|s| StepStatus { name: s.name().into(), state: StepState::Succeeded, ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    fn obs<'a>(me: &'a str, primary: &'a str, st: Option<&'a DRTopologyStatus>, peer: PeerView) -> Observed<'a> {
        Observed {
            self_name: me,
            peer_name: if me == "a" { "b" } else { "a" },
            spec_primary: primary,
            invalid: false,
            dry_run: false,
            status: st,
            peer,
            dns_here: None,
            dns_at_peer: false,
            now: at(0),
            final_sync: FinalSyncBound { timeout: Duration::from_secs(120), policy: FinalSyncPolicy::Abandon },
            generation: Some(1),
            retry: None,
        }
    }

    /// `secs` seconds after a fixed instant, as status records it.
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
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
        assert_eq!(plan(&obs("b", "a", None, peer("a", Some(Role::Primary), Some(Phase::Steady)))), Action::Mirror);
    }

    #[test]
    fn a_fresh_primary_that_dns_does_not_answer_runs_the_runbook_instead_of_bootstrapping() {
        let mut o = obs("b", "b", None, peer("b", None, None));
        assert!(asks_dns(&o));
        o.dns_at_peer = true;
        assert!(matches!(plan(&o), Action::StartFailover { why } if why.contains("a's VIP")));
        o.dns_at_peer = false;
        o.dns_here = Some(false);
        assert_eq!(plan(&o), Action::BootstrapPrimary, "DNS elsewhere (not the peer): a bootstrap, DNSCorrect says the rest");
    }

    /// Model check, S3: a's status lost mid-failover came back from its memory without the
    /// token b's Demote waits for; both waited for good.
    #[test]
    fn a_standby_that_lost_its_token_issues_it_again_for_a_peer_failing_over() {
        let st = DRTopologyStatus { term: 1, ..status(Some(Role::Standby), Some(Phase::Syncing)) };
        let failing = PeerView::Reachable(PeerState { spec_primary: "b".into(), role: Some(Role::Standby), failover: Some(RUNNING), ..Default::default() });
        assert_eq!(plan(&obs("a", "b", Some(&st), failing.clone())), Action::AcknowledgeDemotion { new_primary: "b".into() });
        // Never primary: the peer's Demote does not wait for us (NeverPrimary).
        let fresh = status(Some(Role::Standby), Some(Phase::Syncing));
        assert!(matches!(plan(&obs("a", "b", Some(&fresh), failing.clone())), Action::WaitForPrimary { .. }));
        // A token for b already there: the usual wait.
        let mut acked = st.clone();
        acked.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        assert!(matches!(plan(&obs("a", "b", Some(&acked), failing)), Action::WaitForPrimary { .. }));
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

    const RUNNING: PeerFailover =
        PeerFailover { completed: false, aborted: false, abandoned: false, dns_switched: false, term: None, based_on_term: None, applied: None };
    const ABORTED_BEFORE_DNS: PeerFailover =
        PeerFailover { completed: false, aborted: true, abandoned: false, dns_switched: false, term: None, based_on_term: None, applied: None };
    const ABORTED_AFTER_DNS: PeerFailover =
        PeerFailover { completed: false, aborted: true, abandoned: false, dns_switched: true, term: None, based_on_term: None, applied: None };
    const COMPLETED: PeerFailover =
        PeerFailover { completed: true, aborted: false, abandoned: false, dns_switched: true, term: None, based_on_term: None, applied: None };
    const ABANDONED: PeerFailover =
        PeerFailover { completed: false, aborted: true, abandoned: true, dns_switched: false, term: None, based_on_term: None, applied: None };

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
        let Action::ReclaimPrimary { proof } = back_to_a(4, b_standby(3, Some(ABORTED_BEFORE_DNS)), Some(true)) else { panic!("no reclaim") };
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

    /// `b` failing over from `a`, its FinalSync first started at `at(0)` and last `state`.
    fn in_final_sync(state: StepState, started: Option<i64>, missed: Option<u64>) -> DRTopologyStatus {
        let mut st = status(Some(Role::Standby), Some(Phase::FailingOver));
        let mut f = failover("b", &[Step::Preflight, Step::Demote]);
        f.steps.push(StepStatus {
            name: Step::FinalSync.name().into(),
            state,
            started_at: started.map(|s| at(s).to_string()),
            message: Some("3 keys of a are missing here".into()),
            ..Default::default()
        });
        f.rpo_token = Some(crate::topology::RpoToken { missed_keys: missed, ..Default::default() });
        st.failover = Some(f);
        st
    }

    #[test]
    fn final_sync_past_its_bound_abandons_or_proceeds_by_policy() {
        use FinalSyncPolicy::{Abandon, Proceed};
        let a_steady = || peer("b", Some(Role::Standby), Some(Phase::Demoting));
        // (rule, FinalSync state, first start, now, policy, peer, expected)
        type Case = (&'static str, StepState, Option<i64>, i64, FinalSyncPolicy, PeerView, &'static str);
        let cases: Vec<Case> = vec![
            ("within the bound another attempt runs", StepState::Failed, Some(0), 119, Abandon, a_steady(), "run"),
            ("at the bound abandon hands the role back", StepState::Failed, Some(0), 120, Abandon, a_steady(), "abandon"),
            (
                "counted from the first start: a controller killed inside it does not restart the bound",
                StepState::Running,
                Some(0),
                600,
                Abandon,
                a_steady(),
                "abandon",
            ),
            ("an unreachable old primary does not extend the bound", StepState::Failed, Some(0), 121, Abandon, PeerView::Unreachable, "abandon"),
            ("policy proceed goes on without the missing keys", StepState::Failed, Some(0), 120, Proceed, a_steady(), "proceed"),
            ("never started: nothing to bound", StepState::Pending, None, 10_000, Abandon, a_steady(), "run"),
            ("a first start in the future (clock skew) has spent nothing", StepState::Failed, Some(50), 0, Abandon, a_steady(), "run"),
        ];
        for (rule, state, started, now, policy, p, want) in cases {
            let st = in_final_sync(state, started, Some(3));
            let mut o = obs("b", "b", Some(&st), p);
            o.now = at(now);
            o.final_sync.policy = policy;
            let got = plan(&o);
            let ok = match want {
                "run" => got == Action::RunStep(Step::FinalSync),
                "abandon" => {
                    matches!(&got, Action::AbandonFailover { reason } if reason.contains("finalSyncTimeout (120s)") && reason.contains("3 keys of a are missing") && reason.contains("a takes its primary role back"))
                }
                "proceed" => {
                    matches!(&got, Action::ProceedWithoutFinalSync { missed: Some(3), reason } if reason.contains("3 keys of a missing here are lost"))
                }
                _ => unreachable!(),
            };
            assert!(ok, "{rule}: {got:?}");
        }
        // The bound is FinalSync's alone: a Demote that started long ago still runs.
        let mut st = status(Some(Role::Standby), Some(Phase::FailingOver));
        st.failover = Some(failover("b", &[Step::Preflight]));
        let mut o = obs("b", "b", Some(&st), PeerView::Unreachable);
        o.now = at(10_000);
        assert_eq!(plan(&o), Action::RunStep(Step::Demote));
    }

    #[test]
    fn proceed_without_a_finished_check_says_the_loss_is_unknown() {
        let st = in_final_sync(StepState::Failed, Some(0), None);
        let mut o = obs("b", "b", Some(&st), PeerView::Unreachable);
        o.now = at(130);
        o.final_sync.policy = FinalSyncPolicy::Proceed;
        assert!(matches!(plan(&o), Action::ProceedWithoutFinalSync { missed: None, reason } if reason.contains("no check finished")));
    }

    /// `b` after abandoning its failover from `a` under generation 1 and no retry annotation.
    fn b_abandoned() -> DRTopologyStatus {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.demotion = Some(DemotionStatus { new_primary: "a".into(), restarts_done: true, ..Default::default() });
        let mut f = failover("b", &[Step::Preflight, Step::Demote]);
        f.from = "a".into();
        f.aborted = Some("FinalSync did not pass".into());
        f.abandoned = Some(crate::topology::AbandonedUnder { generation: Some(1), retry: None });
        st.failover = Some(f);
        st
    }

    fn a_primary_again() -> PeerView {
        PeerView::Reachable(PeerState { spec_primary: "b".into(), role: Some(Role::Primary), phase: Some(Phase::Steady), term: 1, ..Default::default() })
    }

    #[test]
    fn an_abandoned_failover_holds_until_the_spec_or_the_retry_annotation_changes() {
        let st = b_abandoned();
        // (rule, generation, retry annotation, peer, expected)
        type Case = (&'static str, Option<i64>, Option<&'static str>, PeerView, &'static str);
        let cases: Vec<Case> = vec![
            ("same spec: hold and mirror from the old primary once it is primary again", Some(1), None, a_primary_again(), "hold+mirror"),
            ("same spec, the old primary not primary yet: hold, not mirroring", Some(1), None, peer("b", Some(Role::Standby), Some(Phase::Demoting)), "hold"),
            ("same spec, the old primary unreachable: hold", Some(1), None, PeerView::Unreachable, "hold"),
            ("the spec changed: a fresh failover", Some(2), None, a_primary_again(), "failover"),
            ("the retry annotation set: a fresh failover", Some(1), Some("2024-05-01"), a_primary_again(), "failover"),
        ];
        for (rule, generation, retry, p, want) in cases {
            let mut o = obs("b", "b", Some(&st), p);
            o.generation = generation;
            o.retry = retry;
            let got = plan(&o);
            let ok = match want {
                "hold+mirror" => matches!(&got, Action::HoldAbandoned { mirror: true, why } if why.contains(RETRY_ANNOTATION)),
                "hold" => matches!(got, Action::HoldAbandoned { mirror: false, .. }),
                "failover" => is_full_failover(&got),
                _ => unreachable!(),
            };
            assert!(ok, "{rule}: {got:?}");
            assert_eq!(got.abandoned_hold().is_some(), want.starts_with("hold"), "{rule}: the Degraded condition");
        }
        // A failover superseded by a flip back was not abandoned: nothing to hold.
        let mut superseded = b_abandoned();
        superseded.failover.as_mut().expect("f").abandoned = None;
        assert!(holding_after_abandon(&obs("b", "b", Some(&superseded), a_primary_again())).is_none());
    }

    /// `a` (term 1), stepped down for `b`, with `spec.primary` still `b`.
    fn a_demoted_for_b() -> DRTopologyStatus {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.demotion = Some(DemotionStatus { new_primary: "b".into(), ..Default::default() });
        st.term = 1;
        st
    }

    /// `b` as `a` sees it: a standby with `spec.primary: b`, its latest failover and its token.
    fn b_seen(failover: PeerFailover, demoted_for: Option<&str>, term: i64) -> PeerView {
        PeerView::Reachable(PeerState {
            spec_primary: "b".into(),
            role: Some(Role::Standby),
            phase: Some(Phase::Demoting),
            demoted_for: demoted_for.map(Into::into),
            term,
            failover: Some(failover),
            ..Default::default()
        })
    }

    #[test]
    fn the_old_primary_reclaims_only_from_a_peer_that_abandoned_before_dns_and_handed_the_role_back() {
        let st = a_demoted_for_b();
        let switched = PeerFailover { dns_switched: true, ..ABANDONED };
        // (rule, b, DNS here?, expected)
        let cases: Vec<(&str, PeerView, Option<bool>, &str)> = vec![
            ("b abandoned before SwitchDNS, token for a, lower term: reclaim", b_seen(ABANDONED, Some("a"), 0), Some(true), "reclaim"),
            ("DNS unknown does not block it (as any reclaim)", b_seen(ABANDONED, Some("a"), 0), None, "reclaim"),
            ("no token for a yet: wait for it", b_seen(ABANDONED, None, 0), Some(true), "wait-peer"),
            ("b's term not below ours: wait, a human decides", b_seen(ABANDONED, Some("a"), 1), Some(true), "wait-peer"),
            ("DNS points elsewhere: wait, a human decides", b_seen(ABANDONED, Some("a"), 0), Some(false), "wait-peer"),
            ("b had moved DNS: wait, a human decides", b_seen(switched, Some("a"), 0), Some(true), "wait-peer"),
            ("b aborted for another reason (superseded): the usual standby", b_seen(ABORTED_BEFORE_DNS, Some("a"), 0), Some(true), "wait-primary"),
            ("b still failing over: the usual standby", b_seen(RUNNING, None, 0), Some(true), "wait-primary"),
            ("b unreachable: nothing proves it abandoned", PeerView::Unreachable, Some(true), "wait-primary"),
        ];
        for (rule, p, dns, want) in cases {
            let mut o = obs("a", "b", Some(&st), p);
            o.dns_here = dns;
            let got = plan(&o);
            let ok = match want {
                "reclaim" => {
                    matches!(&got, Action::ReclaimPrimary { proof } if proof.starts_with("b abandoned its failover and handed the role back; our term 1 > the peer's 0"))
                }
                "wait-peer" => matches!(got, Action::WaitForPeer { .. }),
                "wait-primary" => matches!(got, Action::WaitForPrimary { .. }),
                _ => unreachable!(),
            };
            assert!(ok, "{rule}: {got:?}");
        }
        assert!(asks_dns(&obs("a", "b", Some(&st), b_seen(ABANDONED, Some("a"), 0))), "the reclaim asks where DNS points");
        assert!(!asks_dns(&obs("a", "b", Some(&st), b_seen(RUNNING, None, 0))));
    }

    #[test]
    fn a_reclaimed_primary_holds_against_the_spec_until_the_peer_retries() {
        let mut st = status(Some(Role::Primary), Some(Phase::Steady));
        st.term = 1;
        let got = plan(&obs("a", "b", Some(&st), b_seen(ABANDONED, Some("a"), 0)));
        assert!(matches!(&got, Action::HoldPrimary { .. }) && got.abandoned_hold().is_some(), "{got:?}");
        // b retries: a steps down for it as for any failover.
        assert_eq!(plan(&obs("a", "b", Some(&st), b_seen(RUNNING, None, 0))), Action::AcknowledgeDemotion { new_primary: "b".into() });
        // b unreachable: nothing proves it will not fail over; a follows the spec.
        assert_eq!(plan(&obs("a", "b", Some(&st), PeerView::Unreachable)), Action::AcknowledgeDemotion { new_primary: "b".into() });
    }

    #[test]
    fn a_primary_does_not_step_down_for_a_peer_of_an_older_protocol() {
        use super::super::skew::PeerController;
        let st = primary_of_term(3);
        let older = PeerController::published(None);
        let b = |controller: PeerController| {
            PeerView::Reachable(PeerState { spec_primary: "b".into(), role: Some(Role::Standby), term: 2, controller, ..Default::default() })
        };
        let skew = |a: &Action| matches!(a, Action::HoldPrimary { hold: PrimaryHold::PeerVersionSkew, .. });
        // (rule, me, spec.primary, peer, expected)
        let cases: Vec<(&str, &str, PeerView, &str)> = vec![
            ("flipped to an older peer that answers: stay primary, say why", "b", b(older.clone()), "skew"),
            ("flipped to a peer of our protocol: step down", "b", b(PeerController::default()), "ack"),
            ("flipped, the peer unreachable: its version is unknown and does not matter", "b", PeerView::Unreachable, "ack"),
            ("not flipped: an older standby is followed as ever", "a", b(older.clone()), "stay"),
        ];
        for (rule, primary, p, want) in cases {
            let got = plan(&obs("a", primary, Some(&st), p));
            let ok = match want {
                "skew" => skew(&got) && got.abandoned_hold().is_none(),
                "ack" => got == Action::AcknowledgeDemotion { new_primary: "b".into() },
                "stay" => got == Action::StayPrimary,
                _ => unreachable!(),
            };
            assert!(ok, "{rule}: {got:?}");
        }
        // An outranked primary stands down whatever the peer's version: the skew only holds a flip.
        let higher = PeerView::Reachable(PeerState { spec_primary: "a".into(), role: Some(Role::Primary), term: 4, controller: older, ..Default::default() });
        assert!(matches!(plan(&obs("a", "a", Some(&st), higher)), Action::StandDown { .. }));
    }

    /// A primary of term `term` with `spec.primary` naming itself, as `me` sees it.
    fn primary_of_term(term: i64) -> DRTopologyStatus {
        DRTopologyStatus { term, ..status(Some(Role::Primary), Some(Phase::Steady)) }
    }

    fn seen(role: Role, term: i64, failover: Option<PeerFailover>) -> PeerView {
        PeerView::Reachable(PeerState { spec_primary: "b".into(), role: Some(role), phase: Some(Phase::Steady), term, failover, ..Default::default() })
    }

    /// Issue 18, scenario 1 and the DNS arbiter: after a partition in which B failed over
    /// without A, A stayed Primary for good although it saw B's higher term and DNS on B.
    #[test]
    fn an_outranked_primary_stands_down_whatever_its_spec_says() {
        let moved = PeerFailover { dns_switched: true, ..RUNNING };
        // (rule, me, my term, peer, DNS here?, DNS at the peer?, stands down?)
        type Case = (&'static str, &'static str, i64, PeerView, Option<bool>, bool, bool);
        let cases: Vec<Case> = vec![
            ("a higher-term primary wins", "a", 1, seen(Role::Primary, 2, None), None, false, true),
            ("a lower-term primary stands down itself, not us", "a", 2, seen(Role::Primary, 1, None), None, false, false),
            ("equal terms: DNS here keeps the role", "b", 1, seen(Role::Primary, 1, None), Some(true), false, false),
            ("equal terms: DNS at the peer gives it up", "a", 1, seen(Role::Primary, 1, None), Some(false), true, true),
            ("equal terms, DNS unknown: the name sorting first keeps it", "a", 1, seen(Role::Primary, 1, None), None, false, false),
            ("equal terms, DNS unknown: the name sorting last gives it up", "b", 1, seen(Role::Primary, 1, None), None, false, true),
            ("the peer fails over without us and moved DNS: it declared us lost", "a", 1, seen(Role::Standby, 0, Some(moved)), None, false, true),
            ("the peer fails over but has not moved DNS: its Demote still asks us", "a", 1, seen(Role::Standby, 0, Some(RUNNING)), None, false, false),
            ("DNS at the unreachable peer: DNS decides", "a", 1, PeerView::Unreachable, Some(false), true, true),
            ("DNS elsewhere (not the peer): only DNSCorrect says so", "a", 1, PeerView::Unreachable, Some(false), false, false),
            ("DNS at a peer that provably follows us: not a primary (DNS is repaired instead)", "a", 2, seen(Role::Standby, 1, None), Some(false), true, false),
            ("DNS at a standby peer with a term not below ours: not provably a follower", "a", 1, seen(Role::Standby, 1, None), Some(false), true, true),
        ];
        for (rule, me, term, p, here, at_peer, down) in cases {
            let st = primary_of_term(term);
            let mut o = obs(me, me, Some(&st), p);
            (o.dns_here, o.dns_at_peer) = (here, at_peer);
            assert!(asks_dns(&o), "{rule}: a primary asks where DNS points");
            let got = plan(&o);
            let peer = if me == "a" { "b" } else { "a" };
            match (down, at_peer) {
                (true, _) => assert!(matches!(&got, Action::StandDown { new_primary, .. } if new_primary == peer), "{rule}: {got:?}"),
                (false, true) => assert!(matches!(got, Action::RepairDns { .. }), "{rule}: {got:?}"),
                (false, false) => assert_eq!(got, Action::StayPrimary, "{rule}"),
            }
        }
        // Dry run reports it and changes nothing.
        let st = primary_of_term(1);
        let mut o = obs("a", "a", Some(&st), seen(Role::Primary, 2, None));
        o.dry_run = true;
        assert!(matches!(plan(&o), Action::DryRun { would } if matches!(*would, Action::StandDown { .. })));
    }

    /// `a` after standing down for `b` under generation 1 and no retry annotation.
    fn a_stood_down() -> DRTopologyStatus {
        let mut st = status(Some(Role::Standby), Some(Phase::Demoting));
        st.term = 1;
        st.demotion = Some(DemotionStatus {
            new_primary: "b".into(),
            term: Some(1),
            stood_down: Some(crate::topology::AbandonedUnder { generation: Some(1), retry: None }),
            ..Default::default()
        });
        st
    }

    #[test]
    fn a_primary_that_stood_down_holds_until_the_spec_changes_or_the_role_is_handed_back() {
        let st = a_stood_down();
        let handed_back = PeerView::Reachable(PeerState { role: Some(Role::Standby), demoted_for: Some("a".into()), term: 2, ..Default::default() });
        // (rule, spec.primary, generation, retry, peer, expected)
        type Case = (&'static str, &'static str, Option<i64>, Option<&'static str>, PeerView, &'static str);
        let cases: Vec<Case> = vec![
            ("same spec, b primary: hold, fenced and not mirroring", "a", Some(1), None, seen(Role::Primary, 2, None), "hold"),
            ("same spec, b unreachable: hold", "a", Some(1), None, PeerView::Unreachable, "hold"),
            ("the spec changed, still naming a: a full failover (Demote asks b)", "a", Some(2), None, seen(Role::Primary, 2, None), "failover"),
            ("the retry annotation set: a full failover", "a", Some(1), Some("now"), seen(Role::Primary, 2, None), "failover"),
            ("b stepped down for a (a flip reverted on b): a full failover, never a hold with no primary", "a", Some(1), None, handed_back, "failover"),
            ("the flip reaches a: an ordinary standby that mirrors b", "b", Some(2), None, seen(Role::Primary, 2, None), "mirror"),
        ];
        for (rule, primary, generation, retry, p, want) in cases {
            let mut o = obs("a", primary, Some(&st), p);
            (o.generation, o.retry) = (generation, retry);
            let got = plan(&o);
            let ok = match want {
                "hold" => matches!(got, Action::HoldStoodDown { .. }),
                "failover" => is_full_failover(&got),
                "mirror" => got == Action::Mirror,
                _ => unreachable!(),
            };
            assert!(ok, "{rule}: {got:?}");
        }
    }

    /// Issue 18, scenario 3: after A→B→A, a flip away and back that only A applied. B's latest
    /// failover (A→B, completed, term 2) had moved DNS long before A took term 3; it counted as
    /// "the peer moved DNS", so A ran a full runbook whose FinalSync imported B's stale copy
    /// over 100 of A's acknowledged writes.
    #[test]
    fn a_peer_failover_from_before_our_term_is_history_and_its_copy_is_never_imported() {
        let mut st = a_demoted_for_b();
        st.term = 3;
        let old = PeerFailover { completed: true, dns_switched: true, term: Some(2), based_on_term: Some(1), ..RUNNING };
        let b = PeerView::Reachable(PeerState {
            spec_primary: "a".into(),
            role: Some(Role::Standby),
            phase: Some(Phase::Steady),
            term: 2,
            demoted_for: Some("a".into()),
            failover: Some(old),
            ..Default::default()
        });
        let mut o = obs("a", "a", Some(&st), b);
        o.dns_here = Some(true);
        let Action::ReclaimPrimary { proof } = plan(&o) else { panic!("no reclaim: {:?}", plan(&o)) };
        assert_eq!(proof, "our term 3 > the peer's 2; its latest failover completed before our term: it was primary before us, not since; DNS answers here");
        // An aborted failover based on our current term did move DNS away from us.
        let after = PeerFailover { aborted: true, dns_switched: true, based_on_term: Some(3), ..RUNNING };
        let refused = PeerState { spec_primary: "a".into(), role: Some(Role::Standby), term: 2, failover: Some(after), ..Default::default() };
        assert!(reclaim_refusal(&refused, 3, Some(true)).is_some_and(|w| w.contains("moved DNS")));
        // (our term, the old primary's, catch up from it?)
        for (own, peer, want) in [(3, Some(2), false), (2, Some(2), true), (1, Some(2), true), (3, None, true)] {
            assert_eq!(old_primary_may_be_newer(own, peer), want, "own {own}, peer {peer:?}");
        }
    }

    #[test]
    fn the_rpo_of_a_failover_is_what_the_old_primary_took_past_the_revision_applied() {
        let token = DemotionStatus { new_primary: "b".into(), final_revision: Some(366), cluster_id: Some("c-a".into()), ..Default::default() };
        let b = |completed, applied: Option<(&str, i64)>| PeerState {
            failover: Some(PeerFailover { completed, applied: applied.map(|(c, r)| (c.to_string(), r)), ..RUNNING }),
            ..Default::default()
        };
        // Issue 18, scenario 2: A's final revision 366, B's applied 285 (81 revisions nobody compared).
        assert_eq!(unreplicated_revisions(&token, &b(true, Some(("c-a", 285)))), Some(81));
        assert_eq!(unreplicated_revisions(&token, &b(true, Some(("c-a", 366)))), Some(0), "a planned switchover loses nothing");
        assert_eq!(unreplicated_revisions(&token, &b(true, Some(("c-other", 285)))), None, "revisions of another etcd do not compare");
        assert_eq!(unreplicated_revisions(&token, &b(false, Some(("c-a", 285)))), None, "not completed: not measured yet");
        let no_head = DemotionStatus { final_revision: None, ..token };
        assert_eq!(unreplicated_revisions(&no_head, &b(true, Some(("c-a", 285)))), None);
    }

    #[test]
    fn step_names_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::from_name(s.name()), Some(s));
        }
    }
}
