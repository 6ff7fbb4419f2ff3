//! What a client holding a resourceVersion of the other etcd's numbering gets from the new
//! primary. StopSync compacts the new primary at its head: every revision up to there is
//! refused (410 Gone) to lists and gets, and the client relists. A revision above the head is
//! refused only as "too large", and only until this etcd's own revision passes it; from then on
//! it would be served as if it meant something here.

use std::fmt;

use crate::topology::RpoToken;

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
    let (to, at_least) = match token.final_revision {
        Some(r) => (r, false),
        None => (token.applied_revision, true),
    };
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
