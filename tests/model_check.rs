//! Model check of the decision core (issue 18, item 6): every sequence of Git flips (one-sided,
//! both, reverted), reconciles (one round, or a whole loop; FinalSync failing, a controller dying
//! inside SwitchDNS), partitions (full and one-way), heals, clock ticks and lost statuses up to a
//! depth, from four starting pairs, driving the real `decide::plan`, `transition`, `record_step`,
//! `failover_done`, `demote_verdict` and `fence_wanted`. Properties (DESIGN.md §5): S1 one acting
//! primary while the link is up, S2 approximated (no FinalSync from a lower term), S3 a primary
//! after fault-free settling, S4 DNS on it. `MODEL_DEPTH` raises the depth (`make model-check`).
//!
//! Each distinct counterexample found is kept below as a replayed regression case. Their comments
//! say what the core did when the case was found; each passes since issue 18's rules: the higher
//! term wins (`decide::plan::outranked`), the role memory (`decide::memory`), a peer that never
//! was primary has nothing to demote (`DemoteVerdict::NeverPrimary`), a standby re-issues a lost
//! token, FinalSync never imports from a lower term, and a fresh primary that DNS does not answer
//! runs the runbook instead of bootstrapping.

mod model;

use drctl::topology::FinalSyncPolicy;
use model::check::{explore, replay, trace};
use model::world::parse_events;

/// Depth 8: 85k states in about 90 s (210 MB) in a debug build on this 2-core machine (169 s on
/// a busy one; 78k before the Demote override's operator events; depth 7: 36k states, about
/// 45 s; each level costs about 2.3 times the one before).
const CI_DEPTH: usize = 8;

fn depth() -> usize {
    std::env::var("MODEL_DEPTH").ok().and_then(|d| d.parse().ok()).unwrap_or(CI_DEPTH)
}

fn policies() -> Vec<FinalSyncPolicy> {
    match std::env::var("MODEL_POLICY").as_deref() {
        Ok("proceed") => vec![FinalSyncPolicy::Proceed],
        Ok("both") => vec![FinalSyncPolicy::Abandon, FinalSyncPolicy::Proceed],
        _ => vec![FinalSyncPolicy::Abandon],
    }
}

#[test]
fn decision_core_keeps_s1_to_s4_at_every_reachable_state() {
    let mut failed = Vec::new();
    for policy in policies() {
        let r = explore(depth(), true, policy, 2);
        println!(
            "model check ({policy:?}): depth {}, {} states, {:.1}s; overlaps while partitioned: {} states, longest run {} events; \
             overlaps with the link up that the next reconcile ends: {} states",
            r.depth, r.states, r.seconds, r.partition_overlaps, r.max_overlap_run, r.transient_overlaps
        );
        for (kind, list) in &r.violations {
            println!("{kind:?}: {} violating states; shortest counterexamples per root:", r.counts.get(kind).copied().unwrap_or_default());
            for v in list {
                let events: Vec<String> = v.events.iter().map(ToString::to_string).collect();
                println!("- {kind:?} from {}: {}\n  events: {}\n{}", v.root, v.detail, events.join(" "), trace(v.root, policy, &v.events));
            }
        }
        failed.extend(r.violations.keys().map(|k| format!("{k:?} ({policy:?})")));
    }
    assert!(failed.is_empty(), "violations: {failed:?} (see the counterexamples above)");
}

/// Replays `events` from `root` and asserts no property is violated on the way.
fn assert_safe(root: &'static str, events: &str) {
    let v = replay(root, events, FinalSyncPolicy::Abandon);
    let steps = parse_events(events).expect("events parse");
    assert!(v.is_empty(), "{v:#?}\n{}", trace(root, FinalSyncPolicy::Abandon, &steps));
}

#[test]
fn a_planned_switchover_and_back_is_safe() {
    assert_safe("a-primary", "apply(ab:b) run(a) run(b) run(a) run(b) apply(ab:a) run(b) run(a) run(b) run(a)");
}

/// Issue 21: the old primary's controller is broken (a never reconciles; its apiserver answers
/// as primary), so b's Demote waits. An override while a's etcd is written is refused; one with
/// its writers stopped lets b fail over; a's controller, back, steps down for the higher term.
#[test]
fn a_demote_overridden_while_the_old_primary_controller_is_broken_is_safe() {
    let events = "apply(ab:b) run(b) override(b:written) run(b) override(b) run(b) run(a) run(b)";
    assert_safe("a-primary", events);
    let mut w = model::check::root("a-primary", FinalSyncPolicy::Abandon);
    for e in parse_events(events).expect("events parse") {
        w.apply(e);
    }
    let b = &w.c[1].status;
    let f = b.failover.as_ref().expect("b's failover");
    assert!(f.completed_at.is_some() && f.demote_overridden.as_ref().is_some_and(|o| o.annotation == "a/1"), "{}", model::world::world_line(&w));
    assert_eq!(w.c[0].status.role, Some(drctl::topology::Role::Standby), "{}", model::world::world_line(&w));
}

#[test]
fn a_flip_back_mid_failover_is_safe() {
    assert_safe("a-primary", "apply(ab:b) run(a) rec(b) rec(b) rec(b) apply(ab:a) run(b) run(a) run(b) run(a)");
}

#[test]
fn a_disaster_failover_with_the_old_primary_gone_is_safe_once_it_follows() {
    assert_safe("a-primary", "apply(ab:b) partition run(b) tick run(b) run(a) heal run(a) run(b)");
}

/// Issue 18 scenario 1: a flip applied to b only while partitioned; b's Demote declares a
/// disaster after demotionTimeout and b completes; a never sees the flip and stays primary.
#[test]
fn s1_after_a_partitioned_disaster_failover_the_lower_term_stands_down() {
    assert_safe("a-primary", "apply(b:b) partition run(b) tick run(b) heal");
}

/// Issue 18 scenario 5: b's status lost while partitioned from the primary: BootstrapPrimary.
#[test]
fn s1_a_status_lost_while_partitioned_never_bootstraps_a_second_primary() {
    assert_safe("a-again", "apply(b:b) partition lose(b) run(b) heal");
}

/// A first start: a bootstraps, the flip reaches b only, b starts while partitioned and
/// bootstraps too (nothing ever told it a primary exists).
#[test]
fn s1_a_first_start_with_a_one_sided_flip_during_a_partition_ends_with_one_primary() {
    assert_safe("fresh", "apply(b:b) run(a) partition run(b) heal");
}

/// The old primary loses its status before it acknowledged the flip: it comes back as a plain
/// standby, never writes a demotion token, and the new primary's Demote fails forever
/// (NotAcknowledged) with the link up: nobody is primary.
#[test]
fn s3_an_old_primary_losing_its_status_mid_flip_still_ends_with_a_primary() {
    assert_safe("a-primary", "apply(ab:b) lose(a)");
}

/// A flip before the first primary bootstrapped: b (a standby already) runs the runbook and
/// waits for an acknowledgement from a cluster that never was primary.
#[test]
fn s3_a_flip_before_the_first_bootstrap_still_ends_with_a_primary() {
    assert_safe("fresh", "run(b) apply(ab:b)");
}

/// The new primary loses its status after the flip: it sees the old primary already stepped
/// down and bootstraps: no Demote, no FinalSync, no SwitchDNS; DNS stays on the old primary.
#[test]
fn s4_a_new_primary_losing_its_status_still_moves_dns() {
    assert_safe("a-primary", "apply(ab:b) lose(b)");
}

/// Issue 18 scenario 3: after a→b→a, a flip away and back that only the primary (a) saw: a
/// steps down and, named primary again, runs the runbook against b's stale demotion token (for
/// a, from the earlier flip back) and FinalSync imports b's older copy.
#[test]
fn s2_a_one_sided_flip_away_and_back_never_imports_from_a_lower_term() {
    assert_safe("a-again", "apply(a:b) run(a) apply(a:a) run(a)");
}

/// The primary (b, term 2) loses its status while a flip away is applied to it: it comes back as
/// a plain standby, is named primary again, runs the runbook against a's stale demotion token
/// (for b, from the earlier flip) and FinalSync imports a's older copy over b's writes.
#[test]
fn s2_a_primary_that_lost_its_status_never_imports_the_old_standbys_copy() {
    assert_safe("b-primary", "apply(b:a) lose(b) run(b) apply(b:b) run(b)");
}

/// Depth 11 (`make model-check`): b's disaster failover during a partition moved DNS and was
/// then aborted by the flip reverted; a, primary all along, left DNS on its follower (S4). The
/// primary now points it back (`RepairDns`).
#[test]
fn s4_dns_moved_by_an_aborted_failover_is_pointed_back_at_the_primary() {
    assert_safe("b-primary", "apply(a:a) partition run(a) tick rec(a) rec(a) rec(a) rec(a) rec(a) apply(a:b) heal");
}

/// Depth 11: two fresh clusters, each named primary by its own applied spec, each failing over
/// to itself; each took the other for "never primary" and both passed Demote (S3). A peer
/// failing over is waited for.
#[test]
fn s3_two_fresh_clusters_failing_over_to_themselves_never_both_pass_demote() {
    assert_safe("fresh", "apply(b:b) rec(b) rec(b) rec(b) rec(b) rec(b) rec(b) rec(b) run(a) apply(a:b)");
}

/// Depth 11: a failover abandoned by FinalSync handed the role back to a cluster that never was
/// primary (its token came from an aborted failover at term 0); both waited (S3). A token
/// written at term 0 promises nothing: nothing to catch up, nothing to abandon.
#[test]
fn s3_a_failover_is_never_abandoned_to_a_cluster_that_never_was_primary() {
    assert_safe("fresh", "apply(ab:b) run(a) rec(b) apply(ab:a) rec(a) rec(a) run(b) rec(a) rec(a:syncfail) tick");
}

/// Depth 11 (found with `finalSyncPolicy: proceed`): a stood down for b's failover, then b lost
/// its status (no memory: it never held a role); a held, stood down, for good (S3). The hold
/// ends once the peer neither is primary nor fails over.
#[test]
fn s3_a_stood_down_primary_does_not_hold_for_a_peer_that_lost_its_failover() {
    assert_safe("fresh", "apply(b:b) rec(b) rec(b) rec(b) rec(b) rec(b) rec(b) rec(b) apply(b:a) run(a) lose(b)");
}
