//! Writing `DRTopology.status` with server-side apply (conditions are set in `decide::conditions`),
//! and the role memory beside it (`decide::memory`): a ConfigMap in drctl's namespace, written
//! before any status that changes it, read back when the status is found empty.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;

use crate::decide::memory::Memory;
use crate::topology::{DRTopology, DRTopologyStatus, API_VERSION, KIND};

/// Holds this cluster's view of the status and applies it. Each controller is the only writer
/// of its cluster's status, so it applies the whole status with `force`.
pub struct StatusWriter {
    api: Api<DRTopology>,
    name: String,
    manager: String,
    pub status: DRTopologyStatus,
    written: Option<DRTopologyStatus>,
    memory: Api<ConfigMap>,
    /// The memory last written or read (None: not known yet, written with the next status).
    remembered: Option<Memory>,
}

impl StatusWriter {
    pub fn new(api: Api<DRTopology>, topo: &DRTopology, cluster: &str, memory: Api<ConfigMap>) -> Self {
        let mut status = topo.status.clone().unwrap_or_default();
        status.observed_generation = topo.metadata.generation;
        Self { api, name: topo.name_any(), manager: format!("drctl-{cluster}"), written: topo.status.clone(), status, memory, remembered: None }
    }

    /// The ConfigMap holding the role memory of topology `name`.
    pub fn memory_name(name: &str) -> String {
        format!("drctl-memory-{name}")
    }

    /// The memory kept for this topology, if any.
    pub async fn recall(&mut self) -> Result<Option<Memory>, kube::Error> {
        let Some(cm) = self.memory.get_opt(&Self::memory_name(&self.name)).await? else { return Ok(None) };
        match Memory::from_data(&cm.data.unwrap_or_default()) {
            Ok(m) => {
                self.remembered = Some(m.clone());
                Ok(Some(m))
            }
            Err(e) => {
                // Not guessed at: planned as a fresh status, and overwritten by the next write.
                tracing::warn!(error = %e, configmap = Self::memory_name(&self.name), "role memory unreadable");
                Ok(None)
            }
        }
    }

    /// Applies the status when it changed since the last write, the role memory first when
    /// that changed: a status never holds a role or term the memory has not.
    pub async fn write(&mut self) -> Result<(), kube::Error> {
        // Published with every write, so the peer knows which rules this controller follows.
        self.status.controller = Some(crate::decide::skew::ours());
        let memory = Memory::of(&self.status);
        if self.remembered.as_ref() != Some(&memory) && !(self.remembered.is_none() && memory.is_empty()) {
            let name = Self::memory_name(&self.name);
            let cm = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "drctl"}},
                "data": memory.to_data(),
            });
            self.memory.patch(&name, &PatchParams::apply(&self.manager).force(), &Patch::Apply(&cm)).await?;
            self.remembered = Some(memory);
        }
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
