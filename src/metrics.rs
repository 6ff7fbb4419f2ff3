//! Prometheus metrics of the controller (`/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::controller::sync::Thresholds;
use crate::topology::{DRTopologyStatus, Phase, Role};

type StepLabels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub leader: Gauge,
    pub is_primary: Gauge,
    pub phase: Family<Vec<(String, String)>, Gauge>,
    pub failovers: Counter,
    pub reconcile_errors: Counter,
    pub step_seconds: Family<StepLabels, Gauge<f64, AtomicU64>>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub applied_revision: Gauge,
    pub missed_keys: Gauge,
    pub surplus_keys: Gauge,
    pub diverged_keys: Gauge,
    pub repaired_keys: Gauge,
    pub sync_healthy: Gauge,
    pub max_keys: Family<Vec<(String, String)>, Gauge>,
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
            reconcile_errors: Counter::default(),
            step_seconds: Family::default(),
            lag_seconds: Gauge::default(),
            applied_revision: Gauge::default(),
            missed_keys: Gauge::default(),
            surplus_keys: Gauge::default(),
            diverged_keys: Gauge::default(),
            repaired_keys: Gauge::default(),
            sync_healthy: Gauge::default(),
            max_keys: Family::default(),
        };
        let r = &mut m.registry;
        r.register("drctl_leader", "1 while this replica holds the leader Lease", m.leader.clone());
        r.register("drctl_primary", "1 while this cluster is primary", m.is_primary.clone());
        r.register("drctl_phase", "1 for the current phase", m.phase.clone());
        r.register("drctl_failovers", "Failovers started in this cluster", m.failovers.clone());
        r.register("drctl_reconcile_errors", "Reconciles that returned an error", m.reconcile_errors.clone());
        r.register("drctl_failover_step_seconds", "Duration of the last run of each failover step", m.step_seconds.clone());
        r.register("drctl_sync_lag_seconds", "Replication lag behind the primary", m.lag_seconds.clone());
        r.register("drctl_sync_applied_revision", "Last primary revision applied here", m.applied_revision.clone());
        r.register("drctl_check_missed_keys", "Keys on the primary missing here at the last check", m.missed_keys.clone());
        r.register("drctl_check_surplus_keys", "Keys only here at the last check", m.surplus_keys.clone());
        r.register("drctl_check_diverged_keys", "Keys whose bytes differ at the last check", m.diverged_keys.clone());
        r.register("drctl_check_repaired_keys", "Keys re-put from the primary by autoRepair since this cluster became standby", m.repaired_keys.clone());
        r.register(
            "drctl_sync_healthy",
            "1 while this standby's SyncHealthy condition is True: mirroring, lag within bounds, and missed, surplus and diverged keys each within drctl_check_max_keys",
            m.sync_healthy.clone(),
        );
        r.register("drctl_check_max_keys", "Most keys of each kind the last check may find on a healthy standby", m.max_keys.clone());
        m
    }

    pub fn observe_thresholds(&self, t: &Thresholds) {
        for (kind, max) in [("missed", t.missed), ("surplus", t.surplus), ("diverged", t.diverged)] {
            self.max_keys.get_or_create(&vec![("kind".into(), kind.into())]).set(i64::try_from(max).unwrap_or(i64::MAX));
        }
    }

    pub fn observe_status(&self, s: &DRTopologyStatus) {
        self.is_primary.set(i64::from(s.role == Some(Role::Primary)));
        for p in PHASES {
            let on = s.phase == Some(p);
            self.phase.get_or_create(&vec![("phase".into(), format!("{p:?}"))]).set(i64::from(on));
        }
        let healthy = s.role == Some(Role::Standby) && s.conditions.iter().any(|c| c.type_ == "SyncHealthy" && c.status == "True");
        self.sync_healthy.set(i64::from(healthy));
        if let Some(sync) = &s.sync {
            self.lag_seconds.set(sync.lag_seconds.unwrap_or(0.0));
            self.applied_revision.set(sync.applied_revision.unwrap_or(0));
            let as_i64 = |v: Option<u64>| i64::try_from(v.unwrap_or(0)).unwrap_or(i64::MAX);
            self.missed_keys.set(as_i64(sync.missed_keys));
            self.surplus_keys.set(as_i64(sync.surplus_keys));
            self.diverged_keys.set(as_i64(sync.diverged_keys));
            self.repaired_keys.set(as_i64(sync.repaired_keys));
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
