//! What every reconcile shares: the client, the flags, Events, metrics, the mirror, the watchdog.

use std::collections::HashMap;
use std::sync::Arc;

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use tokio::sync::Mutex;
use tracing::warn;

use super::args::ControllerArgs;
use super::replication::SyncManager;
use super::watchdog::Watchdog;
use crate::decide::notes::event_note;
use crate::metrics::Metrics;
use crate::topology::DRTopology;
use crate::validated::ValidatedTopology;

/// Shared by every reconcile.
/// A fence as this process last applied it.
pub struct FenceApplied {
    /// The primary it points writers to, or None when lifted.
    pub want: Option<String>,
    /// When it was last applied (it is re-applied every minute).
    pub at: std::time::Instant,
    /// When it first took this shape: how long writes may still have passed.
    pub since: std::time::Instant,
}

pub struct Context {
    pub client: Client,
    pub args: ControllerArgs,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub sync: Arc<SyncManager>,
    /// Serialises reconciles that act (one DRTopology is acted on, but watch events race).
    pub act_lock: Mutex<()>,
    /// The fence last applied, None before the first.
    pub fenced: Mutex<Option<FenceApplied>>,
    /// Tells `/readyz` when a reconcile stopped making progress.
    pub watchdog: Arc<Watchdog>,
    /// The encryption config's sha256, re-read only when the file changes.
    pub fingerprints: Arc<crate::files::FingerprintCache>,
    /// The last fingerprint error logged, so a bad path warns once, not every reconcile.
    pub(super) fingerprint_error: std::sync::Mutex<Option<String>>,
    /// The replication heartbeat's duty (write as primary, read as standby) and last beat.
    pub heartbeat: Arc<crate::heartbeat::Heartbeat>,
    /// The scheduled preflight behind the `Preflight` condition.
    pub preflight: crate::preflight::Periodic,
    /// Consecutive failed reconciles per DRTopology, for the backoff of transient errors.
    pub(super) failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn self_name(&self) -> &str {
        &self.args.cluster_name
    }

    /// Counts a failed reconcile of `name`: how many in a row now.
    pub fn failed(&self, name: &str) -> u32 {
        let Ok(mut f) = self.failures.lock() else { return 1 };
        let n = f.entry(name.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// A reconcile of `name` succeeded: the next failure backs off from the start.
    pub fn succeeded(&self, name: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(name);
        }
    }

    pub async fn event(&self, obj: &ValidatedTopology, type_: EventType, reason: &str, action: &str, note: String) {
        self.event_on(obj.object(), type_, reason, action, note).await
    }

    /// An Event on a DRTopology not validated (yet).
    pub async fn event_on(&self, obj: &DRTopology, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(event_note(note)), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Deletes this cluster's pods of replicated workloads (`crate::workloads`) and says so in a
/// `ReplicatedPodsStopped` Event; a failure is logged, not fatal (the next check tries again).
pub async fn stop_replicated_pods(ctx: &Context, topo: &ValidatedTopology, action: &str) {
    match crate::workloads::stop_replicated_pods(&ctx.client, &topo.spec.filter(&ctx.args.namespace)).await {
        Ok(0) => {}
        Ok(n) => {
            let note = format!("deleted this cluster's {n} pods of replicated workloads: they run on {} only", topo.spec.primary);
            ctx.event(topo, EventType::Normal, "ReplicatedPodsStopped", action, note).await;
        }
        Err(e) => warn!(error = %e, "cannot stop this cluster's pods of replicated workloads"),
    }
}
