//! What the lab reads from and asks of each global's own Argo CD: the `drtopology`
//! Application's sync and health, when it applied a commit, and a refresh the way Argo CD's Git
//! webhook triggers one (the annotation `argocd.argoproj.io/refresh`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::platform::{ARGOCD_NAMESPACE, TOPOLOGY_APPLICATION};
use super::{ClusterState, LabError, LabState};

/// The `drtopology` Application as `lab status` shows it.
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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

/// The live Application in `c`; Ok(None) when it does not exist yet.
pub fn application(state: &LabState, c: &ClusterState) -> Result<Option<ArgoView>, LabError> {
    let out = c
        .kubectl(state)
        .args(["-n", ARGOCD_NAMESPACE, "get", "applications.argoproj.io", TOPOLOGY_APPLICATION, "-o", "json", "--ignore-not-found"])
        .output()
        .map_err(super::io_err("run kubectl get application"))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!("read Application {TOPOLOGY_APPLICATION} on {}: {}", c.name, String::from_utf8_lossy(&out.stderr).trim())));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|source| LabError::Json { what: format!("parse Application on {}", c.name), source })?;
    Ok(Some(ArgoView::from_json(&v)))
}

/// Argo CD's config and our health check are installed (it exits at start without them).
pub fn configured(state: &LabState, c: &ClusterState) -> bool {
    c.kubectl(state)
        .args(["-n", ARGOCD_NAMESPACE, "get", "configmap", "argocd-cm", "-o", "jsonpath={.data}"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("resource.customizations.health.drctl.io_DRTopology"))
}

/// Asks Argo CD to compare with Git now, as a Git webhook does after a push.
pub fn refresh(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    let out = c
        .kubectl(state)
        .args(["-n", ARGOCD_NAMESPACE, "annotate", "--overwrite", "applications.argoproj.io", TOPOLOGY_APPLICATION, "argocd.argoproj.io/refresh=normal"])
        .output()
        .map_err(super::io_err("run kubectl annotate"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Failed(format!("refresh Application on {}: {}", c.name, String::from_utf8_lossy(&out.stderr).trim())))
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
        let failing = serde_json::json!({"status": {"sync": {"status": "Unknown"}, "conditions": [{"type": "ComparisonError", "message": "connection refused"}]}});
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
