//! Two etcds, two numberings: what a client holding a resourceVersion of the other etcd's
//! numbering gets from this one, and the rule that makes it harmless.
//!
//! **The floor.** A standby's mirror keeps its etcd's revision at or above the source revision it
//! applies: when a batch of source writes up to revision `r` goes in, the destination's head is
//! at `r - 1` or above (raised beside the batches by puts of one key outside `/registry/`, see
//! `mirror::floor` and [`crate::etcd::raise_revision`]), so each write lands here at a revision
//! no lower than it had on the source. A batch further below than the raise has reached (a
//! standby catching up, a burst the raise falls behind) goes in as it is, reported as the gap,
//! rather than wait. A client that
//! watched the old primary up to `r` and resumes here from `r` is then shown writes again, never
//! skipped past one: every write it had not seen sits above `r` here too.
//!
//! **At promotion** StopSync raises the new primary past the old primary's last known revision
//! by a margin (the little the mirror had not closed yet), then compacts at its head: every
//! resourceVersion of the old numbering is at or below the compaction, refused (410 Gone) by
//! etcd, and the client relists. Only what the floor could not reach in time is left: a
//! revision above the compaction is refused only as "too large", and only until this etcd's own
//! revision passes it.

use std::fmt;

use crate::topology::RpoToken;

/// Revisions the destination, at `dest_head`, must skip before it applies source writes up to
/// `source_revision`, for each of them to land at a revision at least its own.
pub fn floor_gap(dest_head: i64, source_revision: i64) -> u64 {
    (source_revision - 1 - dest_head).max(0) as u64
}

/// Most revisions StopSync skips at promotion (~21 s at the 4,766 a second measured on three
/// members, BENCHMARKS.md; a step must not hold a reconcile long). The mirror keeps the floor as
/// it goes, so a longer way means it never caught up (a standby much younger than its primary):
/// the message then names what is left.
pub const PROMOTION_MAX_RAISE: u64 = 100_000;

/// Revisions StopSync raises past the old primary's last one it knows: after its final revision
/// the old primary's own unreplicated writes (leases, events) go on until DNS moves its clients,
/// and its apiserver hands out their resourceVersions. Every failover pays it (10,000 made each
/// flip of the test suite's alternating flips take ~40 s longer on a loaded 2-core machine), so
/// it covers seconds of a global's churn, not its clients' whole DNS TTL.
pub const PROMOTION_MARGIN: i64 = 1_000;

/// How far StopSync raises the new primary, at `head`, before compacting: past the old primary's
/// last revision it knows (its final revision or the last the mirror applied, whichever is
/// higher) by [`PROMOTION_MARGIN`], if that is within [`PROMOTION_MAX_RAISE`]. The compaction then
/// covers the old numbering.
pub fn promotion_raise(head: i64, token: Option<&RpoToken>) -> u64 {
    let Some(t) = token else { return 0 };
    let gap = (last_known(t) + PROMOTION_MARGIN - head).max(0) as u64;
    if gap <= PROMOTION_MAX_RAISE {
        gap
    } else {
        0
    }
}

/// The old primary's last revision known here: its final revision, or the last the mirror
/// applied if higher (its own writes after the final one) or if there is no final (a disaster).
fn last_known(t: &RpoToken) -> i64 {
    t.final_revision.unwrap_or(0).max(t.applied_revision)
}

/// Revisions of the old primary's numbering above the new primary's compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrefused {
    pub from: i64,
    pub to: i64,
    /// The old primary may have served more: it never acknowledged its final revision (a
    /// disaster), and `to` is the last revision the mirror applied.
    pub at_least: bool,
}

/// The old primary's revisions that the compaction at `compacted` does not refuse, if any.
pub fn unrefused(compacted: i64, token: Option<&RpoToken>) -> Option<Unrefused> {
    let token = token?;
    let (to, at_least) = (last_known(token), token.final_revision.is_none());
    (to > compacted).then_some(Unrefused { from: compacted + 1, to, at_least })
}

impl fmt::Display for Unrefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = if self.at_least { format!("at least {}", self.to) } else { self.to.to_string() };
        write!(f, "the old primary's resourceVersions {} to {to} are above it: refused as too large only until this etcd's revision passes them", self.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(final_revision: Option<i64>, applied_revision: i64) -> RpoToken {
        RpoToken { final_revision, applied_revision, ..Default::default() }
    }

    #[test]
    fn the_floor_lets_every_source_write_land_at_or_above_its_own_revision() {
        // (destination head, source revision of the batch, revisions to skip)
        for (dest, source, want) in [(100, 90, 0), (100, 101, 0), (100, 102, 1), (100, 5_000, 4_899), (0, 1, 0)] {
            let gap = floor_gap(dest, source);
            assert_eq!(gap, want, "dest {dest}, source {source}");
            // The batch's first txn lands at head + 1 after the raise.
            assert!(dest + gap as i64 + 1 >= source, "dest {dest}, source {source}");
        }
    }

    #[test]
    fn promotion_raises_to_the_old_primarys_last_known_revision_within_the_bound() {
        let (max, m) = (PROMOTION_MAX_RAISE as i64, PROMOTION_MARGIN);
        let cases = [
            // (head, final, applied, expected raise)
            (100 + m, Some(90), 90, 0),
            (100, Some(150), 150, 50 + m as u64),
            // The mirror applied past the final revision (the old primary's own writes after it).
            (100, Some(150), 170, 70 + m as u64),
            // A disaster: the last revision the mirror applied is all that is known.
            (100, None, 120, 20 + m as u64),
            (100, Some(100 + max - m), 100 + max - m, PROMOTION_MAX_RAISE),
            // Too far to walk in a failover: left to the message.
            (100, Some(101 + max - m), 101 + max - m, 0),
        ];
        for (head, final_revision, applied, want) in cases {
            assert_eq!(promotion_raise(head, Some(&token(final_revision, applied))), want, "head {head}, final {final_revision:?}, applied {applied}");
            let compacted = head + want as i64;
            assert_eq!(unrefused(compacted, Some(&token(final_revision, applied))).is_none(), want > 0 || applied <= head);
        }
        assert_eq!(promotion_raise(100, None), 0);
    }

    #[test]
    fn only_revisions_above_the_compaction_are_unrefused() {
        let cases = [
            // (compacted, final, applied, expected)
            (100, Some(90), 90, None),
            (100, Some(100), 100, None),
            (100, Some(150), 150, Some(Unrefused { from: 101, to: 150, at_least: false })),
            // A disaster: what the mirror applied is a lower bound of what the old primary served.
            (100, None, 120, Some(Unrefused { from: 101, to: 120, at_least: true })),
            (100, None, 80, None),
        ];
        for (compacted, final_revision, applied, want) in cases {
            assert_eq!(unrefused(compacted, Some(&token(final_revision, applied))), want, "compacted {compacted}, final {final_revision:?}, applied {applied}");
        }
        assert_eq!(unrefused(100, None), None, "no token: nothing known of the old numbering");
    }

    #[test]
    fn the_message_says_when_the_range_is_only_a_lower_bound() {
        let planned = Unrefused { from: 101, to: 150, at_least: false }.to_string();
        assert!(planned.contains("101 to 150 are above"), "{planned}");
        let disaster = Unrefused { from: 101, to: 120, at_least: true }.to_string();
        assert!(disaster.contains("101 to at least 120"), "{disaster}");
    }
}
