//! What a cluster remembers of its role outside the DRTopology: the role, the terms and the
//! demotion token. A DRTopology deleted and re-created (a prune, `Replace=true`, a restore of
//! the CRD) comes back with no status; planned from nothing, a standby named primary would
//! bootstrap at once while the real primary still serves (measured: a second primary 4.2 s
//! after the re-apply). The executor keeps this memory in a ConfigMap in drctl's own namespace
//! (never replicated), written before the status that changes it, and a status found empty
//! starts from [`restore`] instead.

use std::collections::BTreeMap;

use crate::topology::{DRTopologyStatus, DemotionStatus, Phase, Role};

/// The fields of status that decide who may act as primary.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Memory {
    pub role: Option<Role>,
    pub term: i64,
    pub peer_term: i64,
    /// The cluster this one stepped down for, and the term it held then.
    pub demoted_for: Option<String>,
    pub demoted_term: Option<i64>,
}

const ROLE: &str = "role";
const TERM: &str = "term";
const PEER_TERM: &str = "peerTerm";
const DEMOTED_FOR: &str = "demotedFor";
const DEMOTED_TERM: &str = "demotedTerm";

impl Memory {
    pub fn of(st: &DRTopologyStatus) -> Memory {
        Memory {
            role: st.role,
            term: st.term,
            peer_term: st.peer_term,
            demoted_for: st.demotion.as_ref().map(|d| d.new_primary.clone()),
            demoted_term: st.demotion.as_ref().and_then(|d| d.term),
        }
    }

    /// Nothing worth keeping: a cluster that never held or followed a role.
    pub fn is_empty(&self) -> bool {
        *self == Memory::default()
    }

    /// The ConfigMap's data.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        if let Some(r) = self.role {
            d.insert(ROLE.into(), role_name(r).into());
        }
        d.insert(TERM.into(), self.term.to_string());
        d.insert(PEER_TERM.into(), self.peer_term.to_string());
        if let Some(n) = &self.demoted_for {
            d.insert(DEMOTED_FOR.into(), n.clone());
        }
        if let Some(t) = self.demoted_term {
            d.insert(DEMOTED_TERM.into(), t.to_string());
        }
        d
    }

    /// Reads the ConfigMap's data back; a field that does not parse is an error naming it (a
    /// memory edited by hand is not guessed at).
    pub fn from_data(d: &BTreeMap<String, String>) -> Result<Memory, String> {
        let int = |key: &str| -> Result<Option<i64>, String> {
            d.get(key).map(|v| v.parse::<i64>().map_err(|_| format!("data.{key}: {v:?} is not an integer"))).transpose()
        };
        let role = match d.get(ROLE).map(String::as_str) {
            None => None,
            Some("Primary") => Some(Role::Primary),
            Some("Standby") => Some(Role::Standby),
            Some(other) => return Err(format!("data.{ROLE}: {other:?} is neither Primary nor Standby")),
        };
        Ok(Memory {
            role,
            term: int(TERM)?.unwrap_or(0),
            peer_term: int(PEER_TERM)?.unwrap_or(0),
            demoted_for: d.get(DEMOTED_FOR).cloned(),
            demoted_term: int(DEMOTED_TERM)?,
        })
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "Primary",
        Role::Standby => "Standby",
    }
}

/// The status a cluster whose status was lost starts from: the role and terms it had, and its
/// demotion token. A primary stays primary (the higher term still makes it stand down if the
/// peer took over since); a standby stays standby, so being named primary runs a full failover
/// (Demote waits for the peer or `demotionTimeout`) instead of a bootstrap. What was lost
/// besides (a failover record, the mirror's status) starts again: every step is idempotent.
pub fn restore(m: &Memory) -> DRTopologyStatus {
    let mut st = DRTopologyStatus { role: m.role, term: m.term, peer_term: m.peer_term, ..Default::default() };
    st.phase = match m.role {
        Some(Role::Primary) => Some(Phase::Steady),
        Some(Role::Standby) if m.demoted_for.is_some() => Some(Phase::Demoting),
        Some(Role::Standby) => Some(Phase::Syncing),
        None => None,
    };
    st.demotion = m.demoted_for.as_ref().map(|n| DemotionStatus {
        new_primary: n.clone(),
        term: m.demoted_term,
        // Restarts already ran, or ran for nothing: a lost status must not restart workloads.
        restarts_done: true,
        ..Default::default()
    });
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::plan::{plan, Action, Observed, PeerView};

    #[test]
    fn memory_round_trips_through_configmap_data_and_rejects_what_it_cannot_read() {
        let m = Memory { role: Some(Role::Standby), term: 3, peer_term: 4, demoted_for: Some("b".into()), demoted_term: Some(3) };
        assert_eq!(Memory::from_data(&m.to_data()), Ok(m));
        assert_eq!(Memory::from_data(&BTreeMap::new()), Ok(Memory::default()));
        let bad = |k: &str, v: &str| Memory::from_data(&BTreeMap::from([(k.to_string(), v.to_string())])).unwrap_err();
        assert_eq!(bad("term", "x"), "data.term: \"x\" is not an integer");
        assert_eq!(bad("role", "Leader"), "data.role: \"Leader\" is neither Primary nor Standby");
    }

    /// Issue 18, scenario 5: B's DRTopology deleted and re-applied while A was unreachable
    /// and still primary. From an empty status B bootstrapped (a second primary in 4.2 s);
    /// from its memory it fails over, so Demote waits for A or `demotionTimeout`.
    #[test]
    fn a_lost_status_restored_from_memory_never_bootstraps_a_second_primary() {
        let plan_from = |st: Option<&DRTopologyStatus>| {
            plan(&Observed { self_name: "b", peer_name: "a", spec_primary: "b", status: st, peer: PeerView::Unreachable, ..Default::default() })
        };
        assert_eq!(plan_from(None), Action::BootstrapPrimary, "no memory: a fresh install bootstraps");
        let following = Memory { role: Some(Role::Standby), term: 0, peer_term: 1, ..Default::default() };
        let restored = restore(&following);
        assert!(matches!(plan_from(Some(&restored)), Action::StartFailover { .. }), "{:?}", plan_from(Some(&restored)));
        // A primary whose status was lost stays primary, with its term.
        let primary = restore(&Memory { role: Some(Role::Primary), term: 2, peer_term: 1, ..Default::default() });
        assert_eq!((primary.role, primary.term), (Some(Role::Primary), 2));
        assert_eq!(plan_from(Some(&primary)), Action::StayPrimary);
        // An old primary keeps its token, with the term it answers for.
        let stepped = restore(&Memory { role: Some(Role::Standby), term: 1, peer_term: 0, demoted_for: Some("a".into()), demoted_term: Some(1) });
        assert_eq!(stepped.demotion.as_ref().map(|d| (d.new_primary.as_str(), d.term, d.restarts_done)), Some(("a", Some(1), true)));
        assert_eq!(Memory::of(&stepped), Memory { role: Some(Role::Standby), term: 1, peer_term: 0, demoted_for: Some("a".into()), demoted_term: Some(1) });
    }
}
