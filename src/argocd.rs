//! What drctl reads from a global's own Argo CD: the `drtopology` Application (gitops/argocd/)
//! that applies the DRTopology from Git, its sync and health, and the last sync operation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Application's name in gitops/argocd/application-<cluster>.yaml.
pub const APPLICATION: &str = "drtopology";

/// The `drtopology` Application as `drctl status` and `drctl lab status` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArgoView {
    pub application: String,
    /// Synced / OutOfSync / Unknown.
    pub sync: Option<String>,
    /// Healthy / Progressing / Degraded / Missing / Unknown, for the whole Application.
    pub health: Option<String>,
    /// The DRTopology's own health message, from our health.lua.
    pub health_message: Option<String>,
    /// The commit it is synced to.
    pub revision: Option<String>,
    /// The last sync operation: its commit, phase and finish time (RFC 3339).
    pub operation_revision: Option<String>,
    pub operation_phase: Option<String>,
    pub operation_finished_at: Option<String>,
    /// Argo CD's conditions ("ComparisonError: ..."): why sync is Unknown, when it is.
    #[serde(default)]
    pub conditions: Vec<String>,
}

impl ArgoView {
    pub fn from_json(v: &Value) -> ArgoView {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        let health_message = v
            .pointer("/status/resources")
            .and_then(Value::as_array)
            .and_then(|rs| rs.iter().find(|r| r.get("kind").and_then(Value::as_str) == Some("DRTopology")))
            .and_then(|r| r.pointer("/health/message"))
            .and_then(Value::as_str)
            .map(str::to_string);
        ArgoView {
            application: s("/metadata/name").unwrap_or_default(),
            sync: s("/status/sync/status"),
            health: s("/status/health/status"),
            health_message,
            revision: s("/status/sync/revision"),
            operation_revision: s("/status/operationState/syncResult/revision"),
            operation_phase: s("/status/operationState/phase"),
            operation_finished_at: s("/status/operationState/finishedAt"),
            conditions: v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .map(|cs| cs.iter().map(|c| format!("{}: {}", c["type"].as_str().unwrap_or("?"), c["message"].as_str().unwrap_or(""))).collect())
                .unwrap_or_default(),
        }
    }

    /// When Argo CD finished applying `commit`, if its last sync operation did.
    pub fn applied_at(&self, commit: &str) -> Option<&str> {
        (self.operation_revision.as_deref() == Some(commit) && self.operation_phase.as_deref() == Some("Succeeded"))
            .then_some(self.operation_finished_at.as_deref())
            .flatten()
    }

    pub fn synced_to(&self, commit: &str) -> bool {
        self.sync.as_deref() == Some("Synced") && self.revision.as_deref() == Some(commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sync_health_and_the_last_operation_from_an_application() {
        let v = serde_json::json!({
            "metadata": {"name": "drtopology"},
            "status": {
                "sync": {"status": "Synced", "revision": "abc"},
                "health": {"status": "Progressing"},
                "resources": [{"kind": "DRTopology", "name": "platform", "health": {"status": "Progressing", "message": "failing over: SwitchDNS"}}],
                "operationState": {"phase": "Succeeded", "finishedAt": "2026-12-01T10:00:00Z", "syncResult": {"revision": "abc"}}
            }
        });
        let a = ArgoView::from_json(&v);
        assert_eq!(a.health_message.as_deref(), Some("failing over: SwitchDNS"));
        assert!(a.conditions.is_empty());
        let failing =
            serde_json::json!({"status": {"sync": {"status": "Unknown"}, "conditions": [{"type": "ComparisonError", "message": "connection refused"}]}});
        assert_eq!(ArgoView::from_json(&failing).conditions, ["ComparisonError: connection refused"]);
        assert!(a.synced_to("abc") && !a.synced_to("def"));
        assert_eq!(a.applied_at("abc"), Some("2026-12-01T10:00:00Z"));
        assert_eq!(a.applied_at("def"), None);
    }

    #[test]
    fn a_failed_or_running_sync_has_not_applied_anything() {
        let v = serde_json::json!({"status": {"operationState": {"phase": "Running", "finishedAt": null, "syncResult": {"revision": "abc"}}}});
        assert_eq!(ArgoView::from_json(&v).applied_at("abc"), None);
    }
}
