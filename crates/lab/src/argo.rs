//! What the lab reads from and asks of each global's own Argo CD: the `drtopology`
//! Application's sync and health, when it applied a commit, and a refresh the way Argo CD's Git
//! webhook triggers one (the annotation `argocd.argoproj.io/refresh`).

use serde_json::Value;

use super::platform::{ARGOCD_NAMESPACE, TOPOLOGY_APPLICATION};
use super::{ClusterState, LabError, LabState};
pub use drctl::argocd::ArgoView;

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
