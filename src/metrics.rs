//! Prometheus metrics of the controller (`/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use k8s_openapi::jiff::Timestamp;

use crate::decide::conditions::{is_true, ConditionType};
use crate::decide::plan::{in_progress, Step};
use crate::decide::retry::ErrorKind;
use crate::decide::standby::Thresholds;
use crate::topology::{DRTopologyStatus, Phase, Role, StepState};

type StepLabels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub leader: Gauge,
    pub is_primary: Gauge,
    pub phase: Family<Vec<(String, String)>, Gauge>,
    pub failovers: Counter,
    pub stood_down: Counter,
    reconcile_errors: Family<Vec<(String, String)>, Counter>,
    pub step_seconds: Family<StepLabels, Gauge<f64, AtomicU64>>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub replication_lag_seconds: Gauge<f64, AtomicU64>,
    pub last_failover_seconds: Gauge<f64, AtomicU64>,
    last_drill_timestamp: Gauge<f64, AtomicU64>,
    last_drill_success: Gauge,
    last_passing_drill_timestamp: Gauge<f64, AtomicU64>,
    pub applied_revision: Gauge,
    revision_gap: Gauge,
    pub writes_below_floor: Counter,
    pub missed_keys: Gauge,
    pub surplus_keys: Gauge,
    pub diverged_keys: Gauge,
    pub repaired_keys: Gauge,
    archived_keys: Family<Vec<(String, String)>, Counter>,
    pub sync_healthy: Gauge,
    pub max_keys: Family<Vec<(String, String)>, Gauge>,
    condition: Family<Vec<(String, String)>, Gauge>,
    step_started: Family<StepLabels, Gauge<f64, AtomicU64>>,
    leader_acquired: Gauge<f64, AtomicU64>,
    cluster: String,
}

const PHASES: [Phase; 6] = [Phase::Steady, Phase::Syncing, Phase::FailingOver, Phase::Demoting, Phase::Degraded, Phase::Invalid];

impl Metrics {
    pub fn new(cluster: &str) -> Self {
        let mut m = Metrics {
            registry: Registry::with_labels(std::iter::once(("cluster".into(), cluster.to_string().into()))),
            leader: Gauge::default(),
            is_primary: Gauge::default(),
            phase: Family::default(),
            failovers: Counter::default(),
            stood_down: Counter::default(),
            reconcile_errors: Family::default(),
            step_seconds: Family::default(),
            lag_seconds: Gauge::default(),
            replication_lag_seconds: Gauge::default(),
            last_failover_seconds: Gauge::default(),
            last_drill_timestamp: Gauge::default(),
            last_drill_success: Gauge::default(),
            last_passing_drill_timestamp: Gauge::default(),
            applied_revision: Gauge::default(),
            revision_gap: Gauge::default(),
            writes_below_floor: Counter::default(),
            missed_keys: Gauge::default(),
            surplus_keys: Gauge::default(),
            diverged_keys: Gauge::default(),
            repaired_keys: Gauge::default(),
            archived_keys: Family::default(),
            sync_healthy: Gauge::default(),
            max_keys: Family::default(),
            condition: Family::default(),
            step_started: Family::default(),
            leader_acquired: Gauge::default(),
            cluster: cluster.to_string(),
        };
        let r = &mut m.registry;
        r.register("drctl_leader", "1 while this replica holds the leader Lease", m.leader.clone());
        r.register("drctl_primary", "1 while this cluster is primary", m.is_primary.clone());
        r.register("drctl_phase", "1 for the current phase", m.phase.clone());
        r.register("drctl_failovers", "Failovers started in this cluster", m.failovers.clone());
        r.register(
            "drctl_stood_down",
            "Times this cluster stood down as primary, outranked by a higher-term primary or DNS answering the peer",
            m.stood_down.clone(),
        );
        r.register("drctl_reconcile_errors", "Reconciles that returned an error, by kind (transient, configuration, invalid_spec)", m.reconcile_errors.clone());
        // Every kind from the start, at 0: a rate() over it then has a series before the first error.
        for kind in ErrorKind::ALL {
            let _ = m.reconcile_errors.get_or_create(&kind_label(kind));
        }
        r.register("drctl_failover_step_seconds", "Duration of the last run of each failover step", m.step_seconds.clone());
        r.register("drctl_sync_lag_seconds", "Replication lag behind the primary", m.lag_seconds.clone());
        r.register(
            "drctl_replication_lag_seconds",
            "On a standby: now minus the newest primary heartbeat applied here (the RPO measured; NaN before the first)",
            m.replication_lag_seconds.clone(),
        );
        r.register(
            "drctl_last_failover_duration_seconds",
            "The last completed failover to this cluster, from the controller seeing spec.primary change to Done",
            m.last_failover_seconds.clone(),
        );
        r.register(
            "drctl_last_drill_timestamp_seconds",
            "Unix time the last drill of this cluster (annotation drctl.io/drill) finished; 0 before the first",
            m.last_drill_timestamp.clone(),
        );
        r.register("drctl_last_drill_success", "1 when the last finished drill passed (no step failed), else 0", m.last_drill_success.clone());
        r.register(
            "drctl_last_passing_drill_timestamp_seconds",
            "Unix time the newest passing drill of this cluster finished; 0 when none passed (alert DrctlNoRecentPassingDrill)",
            m.last_passing_drill_timestamp.clone(),
        );
        r.register("drctl_sync_applied_revision", "Last primary revision applied here", m.applied_revision.clone());
        r.register(
            "drctl_sync_revision_gap",
            "Revisions this standby's etcd still lies below the primary's numbering; 0 once the mirror's revision floor holds",
            m.revision_gap.clone(),
        );
        r.register(
            "drctl_sync_writes_below_floor",
            "Writes the mirror applied while this etcd was known to lie below their primary revision (a standby catching up, or a burst the revision floor's raise fell behind): at least those that landed below it; the gap closes later, this count stays",
            m.writes_below_floor.clone(),
        );
        r.register("drctl_check_missed_keys", "Keys on the primary missing here at the last check", m.missed_keys.clone());
        r.register("drctl_check_surplus_keys", "Keys only here at the last check", m.surplus_keys.clone());
        r.register("drctl_check_diverged_keys", "Keys whose bytes differ at the last check", m.diverged_keys.clone());
        r.register("drctl_check_repaired_keys", "Keys re-put from the primary by autoRepair since this cluster became standby", m.repaired_keys.clone());
        r.register(
            "drctl_archived_keys",
            "Keys of this cluster saved in a divergence archive before a resync, a copy over existing data or a repair overwrote or deleted them, by the archive's reason",
            m.archived_keys.clone(),
        );
        // Every reason from the start, at 0: an increase() over it then sees the first archive.
        for reason in crate::archive::Reason::ALL {
            let _ = m.archived_keys.get_or_create(&vec![("reason".into(), reason.as_str().into())]);
        }
        r.register(
            "drctl_sync_healthy",
            "1 while this standby's SyncHealthy condition is True: mirroring, lag within bounds, and missed, surplus and diverged keys each within drctl_check_max_keys",
            m.sync_healthy.clone(),
        );
        r.register("drctl_check_max_keys", "Most keys of each kind the last check may find on a healthy standby", m.max_keys.clone());
        r.register("drctl_condition", "1 while the status condition is True, 0 while False", m.condition.clone());
        r.register(
            "drctl_failover_step_started_timestamp_seconds",
            "Unix time the unfinished (running or failed) step of the failover in progress first started; absent otherwise",
            m.step_started.clone(),
        );
        r.register("drctl_leader_acquired_timestamp_seconds", "Unix time this replica acquired the leader Lease", m.leader_acquired.clone());
        m
    }

    pub fn observe_thresholds(&self, t: &Thresholds) {
        for (kind, max) in [("missed", t.missed), ("surplus", t.surplus), ("diverged", t.diverged)] {
            self.max_keys.get_or_create(&vec![("kind".into(), kind.into())]).set(i64::try_from(max).unwrap_or(i64::MAX));
        }
    }

    /// `count` keys archived for `reason` (an archive's manifest reason).
    pub fn archived(&self, reason: &str, count: u64) {
        self.archived_keys.get_or_create(&vec![("reason".into(), reason.into())]).inc_by(count);
    }

    pub fn reconcile_failed(&self, kind: ErrorKind) {
        self.reconcile_errors.get_or_create(&kind_label(kind)).inc();
    }

    pub fn became_leader(&self) {
        self.leader.set(1);
        self.leader_acquired.set(unix_seconds(Timestamp::now()));
    }

    pub fn observe_status(&self, s: &DRTopologyStatus) {
        self.observe_conditions_and_step(s);
        self.is_primary.set(i64::from(s.role == Some(Role::Primary)));
        for p in PHASES {
            let on = s.phase == Some(p);
            self.phase.get_or_create(&vec![("phase".into(), format!("{p:?}"))]).set(i64::from(on));
        }
        let healthy = s.role == Some(Role::Standby) && is_true(s, ConditionType::SyncHealthy);
        self.sync_healthy.set(i64::from(healthy));
        self.last_failover_seconds.set(failover_seconds(s, &self.cluster).unwrap_or(0.0));
        let (finished, passed, last_passed) = drill_figures(s);
        self.last_drill_timestamp.set(finished);
        self.last_drill_success.set(i64::from(passed));
        self.last_passing_drill_timestamp.set(last_passed);
        if let Some(sync) = &s.sync {
            self.lag_seconds.set(sync.lag_seconds.unwrap_or(0.0));
            // Unknown is not zero: no alert compares true against NaN, and no graph shows "no lag".
            self.replication_lag_seconds.set(sync.replication_lag_seconds.unwrap_or(f64::NAN));
            self.applied_revision.set(sync.applied_revision.unwrap_or(0));
            let as_i64 = |v: Option<u64>| i64::try_from(v.unwrap_or(0)).unwrap_or(i64::MAX);
            self.revision_gap.set(as_i64(sync.revision_gap));
            self.missed_keys.set(as_i64(sync.missed_keys));
            self.surplus_keys.set(as_i64(sync.surplus_keys));
            self.diverged_keys.set(as_i64(sync.diverged_keys));
            self.repaired_keys.set(as_i64(sync.repaired_keys));
        } else {
            // A primary has no sync: a promoted standby's last figures must not linger.
            self.lag_seconds.set(0.0);
            self.replication_lag_seconds.set(0.0);
            for g in [&self.missed_keys, &self.surplus_keys, &self.diverged_keys, &self.revision_gap] {
                g.set(0);
            }
        }
    }

    /// Conditions and the failover's unfinished step, for the alerts (gitops/deploy/components/alerts).
    fn observe_conditions_and_step(&self, s: &DRTopologyStatus) {
        for c in &s.conditions {
            self.condition.get_or_create(&vec![("condition".into(), c.type_.clone())]).set(i64::from(c.status == "True"));
        }
        let stuck = unfinished_step(s, &self.cluster);
        for step in Step::ALL {
            let labels = vec![("step".into(), step.name().to_string())];
            match stuck {
                Some((name, started)) if name == step.name() => {
                    self.step_started.get_or_create(&labels).set(unix_seconds(started));
                }
                // Removed, not zeroed: a zero would read as a step stuck since 1970.
                _ => {
                    self.step_started.remove(&labels);
                }
            }
        }
    }

    pub fn step_finished(&self, step: &str, seconds: f64) {
        self.step_seconds.get_or_create(&vec![("step".into(), step.into())]).set(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn kind_label(kind: ErrorKind) -> Vec<(String, String)> {
    vec![("kind".into(), kind.label().into())]
}

/// Seconds from the start of the last failover to this cluster to its completion (None while it
/// runs, or without one).
pub fn failover_seconds(s: &DRTopologyStatus, cluster: &str) -> Option<f64> {
    let f = s.failover.as_ref().filter(|f| f.to == cluster)?;
    let start: Timestamp = f.started_at.as_deref()?.parse().ok()?;
    let end: Timestamp = f.completed_at.as_deref()?.parse().ok()?;
    Some(((end.as_millisecond() - start.as_millisecond()).max(0) as f64) / 1000.0)
}

/// The last finished drill's time and result, and the newest passing one's time (0: none), from
/// `status.lastDrill` (a running drill shows the previous one's figures only through
/// `lastPassedAt`).
fn drill_figures(s: &DRTopologyStatus) -> (f64, bool, f64) {
    let time = |t: Option<&str>| t.and_then(|t| t.parse().ok()).map(unix_seconds).unwrap_or(0.0);
    let Some(d) = &s.last_drill else { return (0.0, false, 0.0) };
    let last_passed = time(d.last_passed_at.as_deref());
    match d.finished_at.as_deref() {
        Some(f) => (time(Some(f)), d.passed == Some(true), last_passed),
        None => (0.0, false, last_passed),
    }
}

fn unix_seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The step a failover in progress is at, once it has started: Running, or Failed and waiting
/// to be retried. Its first start counts, so retries do not hide a step that never succeeds.
pub fn unfinished_step<'s>(s: &'s DRTopologyStatus, self_name: &str) -> Option<(&'s str, Timestamp)> {
    let f = in_progress(Some(s), self_name)?;
    f.steps
        .iter()
        .filter(|st| matches!(st.state, StepState::Running | StepState::Failed))
        .find_map(|st| Some((st.name.as_str(), st.started_at.as_deref()?.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_failover_duration_is_start_to_done_of_a_failover_to_this_cluster() {
        let mut s = crate::topology::DRTopologyStatus::default();
        assert_eq!(super::failover_seconds(&s, "global-b"), None);
        s.failover = Some(crate::topology::FailoverStatus {
            from: "global-a".into(),
            to: "global-b".into(),
            started_at: Some("2026-12-05T20:00:00Z".into()),
            ..Default::default()
        });
        assert_eq!(super::failover_seconds(&s, "global-b"), None, "still running");
        if let Some(f) = s.failover.as_mut() {
            f.completed_at = Some("2026-12-05T20:00:42.5Z".into());
        }
        assert_eq!(super::failover_seconds(&s, "global-b"), Some(42.5));
        assert_eq!(super::failover_seconds(&s, "global-a"), None, "a failover away from this cluster");
    }

    use super::*;
    use crate::topology::{FailoverStatus, StepStatus};

    const T0: &str = "2026-01-02T03:04:05Z";

    fn status(completed: bool, aborted: bool, steps: &[(&str, StepState)]) -> DRTopologyStatus {
        DRTopologyStatus {
            failover: Some(FailoverStatus {
                from: "global-a".into(),
                to: "global-b".into(),
                completed_at: completed.then(|| T0.to_string()),
                aborted: aborted.then(|| "flipped back".to_string()),
                steps: steps.iter().map(|(n, st)| StepStatus { name: (*n).into(), state: *st, started_at: Some(T0.into()), ..Default::default() }).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_unfinished_step_is_the_running_or_failed_step_of_a_failover_in_progress() {
        use StepState::*;
        let t0: Timestamp = T0.parse().expect("timestamp");
        type Case<'a> = (&'a str, &'a str, DRTopologyStatus, Option<(&'a str, Timestamp)>);
        let cases: &[Case] = &[
            ("no failover", "global-b", DRTopologyStatus::default(), None),
            ("running", "global-b", status(false, false, &[("Preflight", Succeeded), ("Demote", Running)]), Some(("Demote", t0))),
            ("failed, to be retried", "global-b", status(false, false, &[("Preflight", Succeeded), ("Demote", Failed)]), Some(("Demote", t0))),
            ("between two steps", "global-b", status(false, false, &[("Preflight", Succeeded)]), None),
            ("completed", "global-b", status(true, false, &[("Done", Succeeded)]), None),
            ("aborted", "global-b", status(false, true, &[("Demote", Failed)]), None),
            ("a failover to another cluster", "global-a", status(false, false, &[("Demote", Running)]), None),
        ];
        for (name, self_name, s, want) in cases {
            assert_eq!(unfinished_step(s, self_name), *want, "{name}");
        }
    }

    #[test]
    fn the_drill_metrics_follow_status_last_drill() {
        use crate::topology::DrillStatus;
        let m = Metrics::new("global-b");
        let mut s = DRTopologyStatus::default();
        let has = |m: &Metrics, line: &str| assert!(m.encode().contains(line), "{line} not in:\n{}", m.encode());
        m.observe_status(&s);
        has(&m, "drctl_last_drill_timestamp_seconds{cluster=\"global-b\"} 0.0\n");
        has(&m, "drctl_last_passing_drill_timestamp_seconds{cluster=\"global-b\"} 0.0\n");
        let at = |t: &str| unix_seconds(t.parse().expect("timestamp"));
        s.last_drill = Some(DrillStatus {
            id: "1".into(),
            started_at: "2026-12-05T20:00:00Z".into(),
            finished_at: Some("2026-12-05T20:00:40Z".into()),
            passed: Some(false),
            last_passed_at: Some(T0.into()),
            ..Default::default()
        });
        m.observe_status(&s);
        has(&m, &format!("drctl_last_drill_timestamp_seconds{{cluster=\"global-b\"}} {:?}\n", at("2026-12-05T20:00:40Z")));
        has(&m, "drctl_last_drill_success{cluster=\"global-b\"} 0\n");
        has(&m, &format!("drctl_last_passing_drill_timestamp_seconds{{cluster=\"global-b\"}} {:?}\n", at(T0)));
        if let Some(d) = s.last_drill.as_mut() {
            d.passed = Some(true);
            d.last_passed_at = d.finished_at.clone();
        }
        m.observe_status(&s);
        has(&m, "drctl_last_drill_success{cluster=\"global-b\"} 1\n");
        has(&m, &format!("drctl_last_passing_drill_timestamp_seconds{{cluster=\"global-b\"}} {:?}\n", at("2026-12-05T20:00:40Z")));
    }

    #[test]
    fn metrics_expose_conditions_the_unfinished_step_and_leadership() {
        let m = Metrics::new("global-b");
        let mut s = status(false, false, &[("Demote", StepState::Running)]);
        crate::decide::conditions::set_condition(
            &mut s,
            ConditionType::SyncHealthy,
            false,
            crate::decide::conditions::Reason::NotHealthy,
            "mirror stopped",
            None,
        );
        m.observe_status(&s);
        m.became_leader();
        let text = m.encode();
        assert!(text.contains("drctl_condition{cluster=\"global-b\",condition=\"SyncHealthy\"} 0"), "{text}");
        let started = unix_seconds(T0.parse().expect("timestamp"));
        assert!(text.contains(&format!("drctl_failover_step_started_timestamp_seconds{{cluster=\"global-b\",step=\"Demote\"}} {started}")), "{text}");
        assert!(text.contains("drctl_leader{cluster=\"global-b\"} 1\n"), "{text}");
        assert!(text.contains("drctl_reconcile_errors_total{cluster=\"global-b\",kind=\"configuration\"} 0"), "every kind is there from the start: {text}");
        assert!(text.contains("drctl_archived_keys_total{cluster=\"global-b\",reason=\"source rewound\"} 0"), "{text}");
        m.archived("source rewound", 37);
        assert!(m.encode().contains("drctl_archived_keys_total{cluster=\"global-b\",reason=\"source rewound\"} 37"), "{}", m.encode());
        m.reconcile_failed(ErrorKind::Transient);
        assert!(m.encode().contains("drctl_reconcile_errors_total{cluster=\"global-b\",kind=\"transient\"} 1"), "{}", m.encode());
        // The step finished: its series goes away.
        s.failover.as_mut().expect("failover").steps[0].state = StepState::Succeeded;
        m.observe_status(&s);
        assert!(!m.encode().contains("drctl_failover_step_started_timestamp_seconds{"), "{}", m.encode());
    }
}
