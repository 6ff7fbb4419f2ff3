//! Writing `DRTopology.status` with server-side apply (conditions are set in `decide::conditions`).

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;

use crate::topology::{DRTopology, DRTopologyStatus, API_VERSION, KIND};

/// Holds this cluster's view of the status and applies it. Each controller is the only writer
/// of its cluster's status, so it applies the whole status with `force`.
pub struct StatusWriter {
    api: Api<DRTopology>,
    name: String,
    manager: String,
    pub status: DRTopologyStatus,
    written: Option<DRTopologyStatus>,
}

impl StatusWriter {
    pub fn new(api: Api<DRTopology>, topo: &DRTopology, cluster: &str) -> Self {
        let mut status = topo.status.clone().unwrap_or_default();
        status.observed_generation = topo.metadata.generation;
        Self { api, name: topo.name_any(), manager: format!("drctl-{cluster}"), written: topo.status.clone(), status }
    }

    /// Applies the status when it changed since the last write.
    pub async fn write(&mut self) -> Result<(), kube::Error> {
        if self.written.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "status": self.status,
        });
        self.api.patch_status(&self.name, &PatchParams::apply(&self.manager).force(), &Patch::Apply(&patch)).await?;
        self.written = Some(self.status.clone());
        Ok(())
    }
}
