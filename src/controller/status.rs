//! Writing `DRTopology.status` with server-side apply, and keeping conditions tidy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
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
        Self {
            api,
            name: topo.name_any(),
            manager: format!("drctl-{cluster}"),
            written: topo.status.clone(),
            status,
        }
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
        self.api
            .patch_status(&self.name, &PatchParams::apply(&self.manager).force(), &Patch::Apply(&patch))
            .await?;
        self.written = Some(self.status.clone());
        Ok(())
    }
}

/// Sets a condition, keeping `lastTransitionTime` when its status did not change.
pub fn set_condition(status: &mut DRTopologyStatus, type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) {
    let s = if ok { "True" } else { "False" };
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()));
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != s {
                c.last_transition_time = now;
            }
            c.status = s.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.into(),
            status: s.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}
