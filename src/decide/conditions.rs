//! `status.conditions`: their types and reasons as enums (the strings are the API), and setting
//! one without moving `lastTransitionTime` when its status did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::topology::DRTopologyStatus;

/// Expands to an enum whose variants are written as their names in the API.
macro_rules! api_names {
    ($(#[$doc:meta])* $name:ident { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

api_names! {
    /// `status.conditions[].type`.
    ConditionType { Ready, Valid, PeerReachable, SyncHealthy, DNSCorrect, Degraded, Preflight }
}

api_names! {
    /// `status.conditions[].reason`.
    Reason {
        Valid, InvalidSpec, NotTheOnlyTopology,
        Reachable, Unreachable,
        Steady, Primary, Standby, Syncing, Mirroring, NotHealthy, MirrorNotStarted, ManifestApplied, ManifestFailed,
        SourceRewound, CheckStale,
        PointsHere, Switched, Verified, Wrong,
        DryRun, FailingOver, StepFailed, Demoting, WaitingForPeer, WaitingForPrimary,
        FailoverAbandoned, Resolved, SteppedDown, PeerVersionSkew,
        ChecksPassed, ChecksWarned, ChecksFailed,
    }
}

/// Whether condition `type_` is present and True.
pub fn is_true(status: &DRTopologyStatus, type_: ConditionType) -> bool {
    status.conditions.iter().any(|c| c.type_ == type_.as_str() && c.status == "True")
}

/// Sets a condition, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(status: &mut DRTopologyStatus, type_: ConditionType, ok: bool, reason: Reason, message: &str, generation: Option<i64>) {
    let s = if ok { "True" } else { "False" };
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()));
    match status.conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(c) => {
            if c.status != s {
                c.last_transition_time = now;
            }
            c.status = s.into();
            c.reason = reason.as_str().into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.as_str().into(),
            status: s.into(),
            reason: reason.as_str().into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_names_are_the_api_strings() {
        assert_eq!(ConditionType::DNSCorrect.as_str(), "DNSCorrect");
        assert_eq!(Reason::WaitingForPrimary.to_string(), "WaitingForPrimary");
        assert_eq!(ConditionType::ALL.len(), 7);
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let mut st = DRTopologyStatus::default();
        set_condition(&mut st, ConditionType::Ready, false, Reason::Syncing, "a", None);
        let old = Time(Timestamp::UNIX_EPOCH);
        st.conditions[0].last_transition_time = old.clone();
        set_condition(&mut st, ConditionType::Ready, false, Reason::NotHealthy, "b", Some(2));
        assert_eq!((st.conditions[0].last_transition_time.clone(), st.conditions[0].reason.as_str()), (old.clone(), "NotHealthy"));
        set_condition(&mut st, ConditionType::Ready, true, Reason::Steady, "c", Some(2));
        assert_ne!(st.conditions[0].last_transition_time, old);
        assert!(is_true(&st, ConditionType::Ready) && !is_true(&st, ConditionType::Valid));
    }
}
