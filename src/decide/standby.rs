//! A standby's health: whether the last check is within the thresholds, what the `KeysDiffer`
//! Event says, and the phase and conditions that follow from the mirror and the check.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::conditions::{set_condition, ConditionType, Reason};
use crate::archive::Manifest;
use crate::check::CheckReport;
use crate::mirror::Phase as MirrorPhase;
use crate::topology::{ArchivedStatus, DRTopology, DRTopologyStatus, Phase, SyncStatus};

/// Keys a summary names; the counts say how many there were.
const SUMMARY_KEYS: usize = 5;

/// The first `SUMMARY_KEYS` of `keys`, and how many more there are.
pub fn first_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<&String> = keys.collect();
    let named = keys.iter().take(SUMMARY_KEYS).map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    match keys.len().saturating_sub(SUMMARY_KEYS) {
        0 => named,
        n => format!("{named} and {n} more"),
    }
}

/// The most differing keys of each kind a healthy standby's last check may have found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub missed: u64,
    pub surplus: u64,
    pub diverged: u64,
}

impl Thresholds {
    pub fn of(topo: &DRTopology) -> Thresholds {
        let h = &topo.spec.sync.health;
        Thresholds { missed: topo.spec.failover.max_missed_keys, surplus: h.max_surplus_keys, diverged: h.max_diverged_keys }
    }
}

/// Every kind of difference over its threshold, with the field that sets it; None when the
/// counts (missed, surplus, diverged) are all within theirs.
pub fn over_thresholds(missed: u64, surplus: u64, diverged: u64, t: &Thresholds) -> Option<String> {
    let over: Vec<String> = [
        (missed, t.missed, "missed", "spec.failover.maxMissedKeys"),
        (surplus, t.surplus, "surplus", "spec.sync.health.maxSurplusKeys"),
        (diverged, t.diverged, "diverged", "spec.sync.health.maxDivergedKeys"),
    ]
    .into_iter()
    .filter(|(n, max, _, _)| n > max)
    .map(|(n, max, kind, field)| format!("{n} {kind} ({field} is {max})"))
    .collect();
    (!over.is_empty()).then(|| format!("{} keys at the last check", over.join(", ")))
}

/// Why the last check makes the standby unhealthy, with who last wrote the differing keys here
/// and the first of them; None when within the thresholds.
pub fn unhealthy_because(report: &CheckReport, t: &Thresholds) -> Option<String> {
    let over = over_thresholds(report.missed.count, report.surplus.count, report.diverged.count, t)?;
    let writers = report.writers_summary().map(|w| format!("; last written here by {w}")).unwrap_or_default();
    let keys = report.missed.keys.iter().chain(&report.surplus.keys).chain(&report.diverged.keys);
    Some(format!("{over}{writers}; first: {}", first_keys(keys)))
}

/// A `KeysDiffer` Event's note when a check (after any repair) still finds differences and
/// they are not the ones the previous check already reported; None otherwise, so a standby
/// that stays inconsistent does not publish an Event per check.
pub fn differences_event(previous: Option<&CheckReport>, now: &CheckReport) -> Option<String> {
    let counts = |r: &CheckReport| (r.missed.count, r.surplus.count, r.diverged.count);
    if now.consistent || previous.is_some_and(|p| counts(p) == counts(now) && p.writers == now.writers) {
        return None;
    }
    let writers = now.writers_summary().map(|w| format!("; surplus and diverged keys last written here by {w}")).unwrap_or_default();
    let keys = now.missed.keys.iter().chain(&now.surplus.keys).chain(&now.diverged.keys);
    Some(format!(
        "the check found {} missed, {} surplus, {} diverged keys{writers}; first: {}",
        now.missed.count,
        now.surplus.count,
        now.diverged.count,
        first_keys(keys)
    ))
}

/// Records a check's counts and its time in `status.sync`; `repaired` is how many keys its
/// repair re-put.
pub fn record_check(status: &mut DRTopologyStatus, report: &CheckReport, time: Timestamp, repaired: Option<u64>) {
    let sync = status.sync.get_or_insert_with(SyncStatus::default);
    sync.missed_keys = Some(report.missed.count);
    sync.surplus_keys = Some(report.surplus.count);
    sync.diverged_keys = Some(report.diverged.count);
    sync.last_check_time = Some(time.to_string());
    if let Some(r) = repaired {
        record_repair(status, r);
    }
}

/// Adds the keys a check re-put to `status.sync.repairedKeys`.
pub fn record_repair(status: &mut DRTopologyStatus, put: u64) {
    let sync = status.sync.get_or_insert_with(SyncStatus::default);
    sync.repaired_keys = Some(sync.repaired_keys.unwrap_or(0) + put);
}

/// Records an archive in `status.sync.archived` when it is newer than the one recorded (ids
/// start with their UTC time, so they sort by age: once per archive, across controller restarts,
/// whether the mirror or the periodic check made it) and returns the `WritesArchived` Event's
/// note then.
pub fn record_archive(status: &mut DRTopologyStatus, m: &Manifest) -> Option<String> {
    let sync = status.sync.get_or_insert_with(SyncStatus::default);
    if sync.archived.as_ref().is_some_and(|a| a.archive_id >= m.id) || m.count == 0 {
        return None;
    }
    let total = sync.archived.as_ref().map_or(0, |a| a.total) + m.count;
    let a = ArchivedStatus { count: m.count, archive_id: m.id.clone(), revisions: m.revisions(), reason: m.reason.clone(), total };
    let unseen =
        m.unseen.map(|n| format!("; {n} of them writes the primary never saw, the others replicas of what it changed or deleted since")).unwrap_or_default();
    let note = format!(
        "{} keys of this cluster ({} overwritten, {} deleted; mod revisions {} here{unseen}) were replaced by the primary's ({}) after being saved in archive {}: `drctl archive list --keys` shows them, `drctl archive restore {}` puts chosen ones back on the primary",
        m.count, m.overwritten, m.pruned, a.revisions, m.reason, m.id, m.id
    );
    sync.archived = Some(a);
    Some(note)
}

/// What a standby's health is decided on.
#[derive(Debug, Clone)]
pub struct MirrorFacts<'a> {
    pub phase: MirrorPhase,
    pub last_error: Option<&'a str>,
    /// The live lag, and the one in `status.sync` (refreshed every few seconds).
    pub lag_seconds: f64,
    pub reported_lag_seconds: Option<f64>,
    /// `--max-lag-seconds`.
    pub max_lag_seconds: f64,
    pub last_check: Option<&'a CheckReport>,
    pub thresholds: Thresholds,
    /// The cluster mirrored from (the peer: a cluster holding after an abandoned failover is
    /// named primary).
    pub source: &'a str,
    /// How long ago the last check (the one in `last_check`) finished, `spec.sync.checkInterval`,
    /// and the error of the checks that failed since, if the last one failed.
    pub check_age: Option<Duration>,
    pub check_interval: Duration,
    pub check_error: Option<&'a str>,
    /// The source's history went back from `.0` to `.1` and no check has passed since.
    pub rewound: Option<(i64, i64)>,
}

/// A check older than this many `spec.sync.checkInterval`s says nothing about the standby now.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// ... and older than one interval plus this (a check takes time: ~20 s at 1M keys at the
/// default read rate), so a short interval does not make every check's run time a staleness.
pub const STALE_MIN_SLACK: Duration = Duration::from_secs(60);

/// The age past which the last passing check is stale.
pub fn stale_bound(interval: Duration) -> Duration {
    (interval * STALE_AFTER_INTERVALS).max(interval + STALE_MIN_SLACK)
}

/// Why the last passing check is too old to vouch for the standby (S5: healthy only on a recent
/// check): its age over [`stale_bound`] (3 × the interval, at least the interval + 60 s),
/// whatever made the later checks fail (`error`). None while it is recent, or when there is
/// none (that is "waiting for the first check").
pub fn stale_check(age: Option<Duration>, interval: Duration, error: Option<&str>) -> Option<String> {
    let age = age?;
    let bound = stale_bound(interval);
    (age > bound).then(|| {
        let failing = error.map(|e| format!("; the checks since fail: {e}")).unwrap_or_default();
        format!("the last consistency check passed {}s ago, over the {}s its spec.sync.checkInterval allows{failing}", age.as_secs(), bound.as_secs())
    })
}

/// A standby's health: `SyncHealthy` and `Ready`, the phase, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub healthy: bool,
    pub phase: Phase,
    pub why: String,
    /// `SyncHealthy`'s reason when not healthy.
    pub reason: Reason,
}

/// Healthy only while the mirror follows without an error, the lag is within bounds and the
/// last check (after any repair) is within every threshold and replicates something. The
/// message uses figures from the last check and `status.sync`, not live ones: a message that
/// changed on every reconcile would make every reconcile write status.
pub fn standby_health(f: &MirrorFacts) -> Health {
    let following = f.phase == MirrorPhase::Following;
    let empty = f.last_check.filter(|r| r.replicates_nothing());
    let over = f.last_check.and_then(|r| unhealthy_because(r, &f.thresholds));
    let lagging = f.lag_seconds > f.max_lag_seconds;
    let stale = stale_check(f.check_age, f.check_interval, f.check_error);
    let healthy = following
        && !lagging
        && f.last_check.is_some()
        && over.is_none()
        && empty.is_none()
        && f.last_error.is_none()
        && stale.is_none()
        && f.rewound.is_none();
    let why = if let Some((from, to)) = f.rewound {
        format!(
            "the source's etcd history went back (restored from a snapshot?): this cluster had applied revision {from}, the source's head was {to}; resyncing from it ({}); healthy again once a check passes",
            if following { "copied; waiting for a check" } else { "copying" }
        )
    } else if !following {
        format!("mirror is {:?}{}", f.phase, f.last_error.map(|e| format!(": {e}")).unwrap_or_default())
    } else if lagging {
        format!("lag {:.1}s is over {:.0}s", f.reported_lag_seconds.unwrap_or(f.lag_seconds), f.max_lag_seconds)
    } else if let Some(r) = empty {
        format!("nothing is replicated: the primary holds {} keys under /registry/ and spec.sync.exclude removes all of them", r.source_keys)
    } else if let Some(over) = &over {
        over.clone()
    } else if let Some(stale) = &stale {
        stale.clone()
    } else if f.last_check.is_none() {
        "waiting for the first consistency check".into()
    } else {
        format!("following {}; revisions and lag in status.sync", f.source)
    };
    let phase = if healthy {
        Phase::Steady
    } else if following && f.last_check.is_some() && f.rewound.is_none() {
        Phase::Degraded
    } else {
        Phase::Syncing
    };
    let reason = if f.rewound.is_some() {
        Reason::SourceRewound
    } else if following && !lagging && over.is_none() && empty.is_none() && stale.is_some() {
        Reason::CheckStale
    } else {
        Reason::NotHealthy
    };
    Health { healthy, phase, why, reason }
}

/// Writes a standby's health into status: `SyncHealthy`, `Ready`, `DNSCorrect` (DNS is the
/// primary's concern) and the phase.
pub fn record_health(status: &mut DRTopologyStatus, h: &Health, generation: Option<i64>) {
    let ok = h.healthy;
    set_condition(status, ConditionType::SyncHealthy, ok, if ok { Reason::Mirroring } else { h.reason }, &h.why, generation);
    set_condition(status, ConditionType::DNSCorrect, true, Reason::Standby, "DNS is the primary's concern", generation);
    set_condition(status, ConditionType::Ready, ok, if ok { Reason::Steady } else { Reason::Syncing }, &h.why, generation);
    status.phase = Some(h.phase);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check;

    fn report(missed: u64, surplus: u64, diverged: u64, writers: &[(&str, u64)]) -> CheckReport {
        let list =
            |n: u64, kind: &str| check::KeyList { count: n, keys: (0..n.min(3)).map(|i| format!("/registry/{kind}/{i}")).collect(), writers: Vec::new() };
        CheckReport {
            consistent: missed + surplus + diverged == 0,
            revision: 1,
            source_revision: 1,
            source_cluster_id: "ab".into(),
            checked_keys: 100,
            source_keys: 100,
            missed: list(missed, "missed"),
            surplus: list(surplus, "surplus"),
            diverged: list(diverged, "diverged"),
            duration_ms: 1,
            repair: None,
            writers: writers.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn a_standby_is_unhealthy_when_any_kind_of_difference_is_over_its_threshold() {
        let zero = Thresholds { missed: 0, surplus: 0, diverged: 0 };
        let lenient = Thresholds { missed: 2, surplus: 5, diverged: 1 };
        let cases: [(u64, u64, u64, &Thresholds, Option<&str>); 7] = [
            (0, 0, 0, &zero, None),
            (1, 0, 0, &zero, Some("1 missed (spec.failover.maxMissedKeys is 0) keys at the last check")),
            (0, 3, 0, &zero, Some("3 surplus (spec.sync.health.maxSurplusKeys is 0) keys at the last check")),
            (0, 0, 4, &zero, Some("4 diverged (spec.sync.health.maxDivergedKeys is 0) keys at the last check")),
            (1, 2, 0, &zero, Some("1 missed (spec.failover.maxMissedKeys is 0), 2 surplus (spec.sync.health.maxSurplusKeys is 0) keys at the last check")),
            (2, 5, 1, &lenient, None),
            (2, 6, 1, &lenient, Some("6 surplus (spec.sync.health.maxSurplusKeys is 5) keys at the last check")),
        ];
        for (m, s, d, t, want) in cases {
            assert_eq!(over_thresholds(m, s, d, t).as_deref(), want, "{m}/{s}/{d} against {t:?}");
        }
        let why = unhealthy_because(&report(0, 2, 1, &[("kube-scheduler", 2), ("kube-controller-manager", 1)]), &zero).expect("unhealthy");
        assert!(
            why.contains(
                "; last written here by kube-scheduler ×2, kube-controller-manager ×1; first: /registry/surplus/0, /registry/surplus/1, /registry/diverged/0"
            ),
            "{why}"
        );
        assert_eq!(unhealthy_because(&report(2, 5, 1, &[]), &lenient), None);
    }

    #[test]
    fn keys_differ_events_only_when_the_findings_change() {
        let bad = report(0, 2, 0, &[("kube-scheduler", 2)]);
        let note = differences_event(None, &bad).expect("first finding");
        assert_eq!(note, "the check found 0 missed, 2 surplus, 0 diverged keys; surplus and diverged keys last written here by kube-scheduler ×2; first: /registry/surplus/0, /registry/surplus/1");
        assert_eq!(differences_event(Some(&bad), &bad), None, "the same findings again");
        assert!(differences_event(Some(&bad), &report(0, 3, 0, &[("kube-scheduler", 3)])).is_some(), "more of them");
        assert!(differences_event(Some(&bad), &report(0, 2, 0, &[("someone-else", 2)])).is_some(), "another writer");
        assert!(differences_event(Some(&report(0, 0, 0, &[])), &bad).is_some(), "was consistent");
        assert_eq!(differences_event(Some(&bad), &report(0, 0, 0, &[])), None, "consistent now");
    }

    fn facts<'a>(phase: MirrorPhase, lag: f64, check: Option<&'a CheckReport>) -> MirrorFacts<'a> {
        let thresholds = Thresholds { missed: 0, surplus: 0, diverged: 0 };
        MirrorFacts {
            phase,
            last_error: None,
            lag_seconds: lag,
            reported_lag_seconds: Some(lag),
            max_lag_seconds: 30.0,
            last_check: check,
            thresholds,
            source: "global-a",
            check_age: check.map(|_| Duration::from_secs(10)),
            check_interval: Duration::from_secs(60),
            check_error: None,
            rewound: None,
        }
    }

    #[test]
    fn a_standby_is_steady_only_while_it_follows_within_lag_and_its_last_check_is_clean() {
        let clean = report(0, 0, 0, &[]);
        let surplus = report(0, 1, 0, &[]);
        let nothing = CheckReport { source_keys: 7, checked_keys: 0, ..report(0, 0, 0, &[]) };
        let broken = MirrorFacts { last_error: Some("etcd: connection refused"), ..facts(MirrorPhase::Following, 0.0, Some(&clean)) };
        let cases: [(&str, MirrorFacts, bool, Phase, &str); 7] = [
            ("following, clean check: steady", facts(MirrorPhase::Following, 1.0, Some(&clean)), true, Phase::Steady, "following global-a"),
            ("still copying: syncing", facts(MirrorPhase::Copying, 0.0, None), false, Phase::Syncing, "mirror is Copying"),
            ("no check yet: syncing", facts(MirrorPhase::Following, 0.0, None), false, Phase::Syncing, "waiting for the first consistency check"),
            ("lag over the bound: degraded", facts(MirrorPhase::Following, 31.0, Some(&clean)), false, Phase::Degraded, "lag 31.0s is over 30s"),
            ("a surplus key over its threshold: degraded", facts(MirrorPhase::Following, 0.0, Some(&surplus)), false, Phase::Degraded, "1 surplus"),
            ("nothing replicated: degraded", facts(MirrorPhase::Following, 0.0, Some(&nothing)), false, Phase::Degraded, "nothing is replicated"),
            ("a mirror error: degraded", broken, false, Phase::Degraded, "following global-a"),
        ];
        for (rule, f, healthy, phase, why) in cases {
            let h = standby_health(&f);
            assert_eq!((h.healthy, h.phase), (healthy, phase), "{rule}: {h:?}");
            assert!(h.why.starts_with(why), "{rule}: {}", h.why);
        }
    }

    #[test]
    fn a_check_older_than_three_intervals_is_stale_whatever_the_later_checks_did() {
        let s = Duration::from_secs;
        let interval = s(60);
        type Case<'a> = (&'a str, Option<Duration>, Option<&'a str>, Option<&'a str>);
        let cases: [Case; 6] = [
            ("no check yet: not stale, waiting", None, None, None),
            ("just checked", Some(s(5)), None, None),
            ("a check due and running", Some(s(150)), None, None),
            ("exactly the bound", Some(s(180)), None, None),
            ("past the bound", Some(s(181)), None, Some("the last consistency check passed 181s ago, over the 180s its spec.sync.checkInterval allows")),
            (
                "past the bound, the checks since failing",
                Some(s(600)),
                Some("required revision is a future revision"),
                Some("the last consistency check passed 600s ago, over the 180s its spec.sync.checkInterval allows; the checks since fail: required revision is a future revision"),
            ),
        ];
        for (rule, age, error, want) in cases {
            assert_eq!(stale_check(age, interval, error).as_deref(), want, "{rule}");
        }
        // A short interval: one interval plus a minute, not three intervals.
        assert_eq!((stale_bound(s(2)), stale_bound(s(300))), (s(62), s(900)));
        assert_eq!(stale_check(Some(s(30)), s(2), None), None);
        // In the health: a clean but stale check is not healthy, with its own reason.
        let clean = report(0, 0, 0, &[]);
        let stale = MirrorFacts { check_age: Some(s(181)), check_error: Some("etcd: future revision"), ..facts(MirrorPhase::Following, 0.0, Some(&clean)) };
        let h = standby_health(&stale);
        assert_eq!((h.healthy, h.phase, h.reason), (false, Phase::Degraded, Reason::CheckStale), "{h:?}");
        assert!(h.why.contains("the checks since fail: etcd: future revision"), "{}", h.why);
    }

    #[test]
    fn each_archive_is_recorded_and_announced_once() {
        let m = Manifest {
            id: "a1".into(),
            reason: "resync after compaction".into(),
            count: 37,
            overwritten: 3,
            pruned: 34,
            min_revision: 290,
            max_revision: 366,
            ..Manifest::default()
        };
        let mut st = DRTopologyStatus::default();
        let note = record_archive(&mut st, &m).expect("a new archive");
        assert!(note.starts_with("37 keys of this cluster (3 overwritten, 34 deleted; mod revisions 290-366 here)"), "{note}");
        assert_eq!(record_archive(&mut st, &m), None, "the same archive again");
        let older = Manifest { id: "a0".into(), ..m.clone() };
        assert_eq!(record_archive(&mut st, &older), None, "an older one (already announced before the last)");
        let second = Manifest { id: "a2".into(), count: 2, ..m.clone() };
        assert!(record_archive(&mut st, &second).is_some());
        let a = st.sync.as_ref().and_then(|s| s.archived.clone()).expect("recorded");
        assert_eq!((a.archive_id.as_str(), a.count, a.total, a.revisions.as_str()), ("a2", 2, 39, "290-366"));
        // A rejoin tells the old primary's unseen writes from stale replicas.
        let rejoin = Manifest { id: "a3".into(), reason: "rejoin after being primary".into(), unseen: Some(5), ..m.clone() };
        let note = record_archive(&mut st, &rejoin).expect("a new archive");
        assert!(note.contains("290-366 here; 5 of them writes the primary never saw, the others replicas of what it changed or deleted since)"), "{note}");
        assert_eq!((m.lost(), rejoin.lost()), (37, 5));
    }

    #[test]
    fn a_rewound_source_is_unhealthy_until_a_check_passes() {
        let clean = report(0, 0, 0, &[]);
        let copying = MirrorFacts { rewound: Some((120, 80)), ..facts(MirrorPhase::Copying, 0.0, None) };
        let h = standby_health(&copying);
        assert_eq!((h.healthy, h.phase, h.reason), (false, Phase::Syncing, Reason::SourceRewound), "{h:?}");
        assert!(
            h.why.starts_with(
                "the source's etcd history went back (restored from a snapshot?): this cluster had applied revision 120, the source's head was 80"
            ),
            "{}",
            h.why
        );
        // Following again with an old clean check in hand: still SourceRewound.
        let following = MirrorFacts { rewound: Some((120, 80)), ..facts(MirrorPhase::Following, 0.0, Some(&clean)) };
        assert_eq!(standby_health(&following).reason, Reason::SourceRewound);
        assert!(!standby_health(&following).healthy);
        assert!(standby_health(&facts(MirrorPhase::Following, 0.0, Some(&clean))).healthy, "once a check has passed");
    }
}
