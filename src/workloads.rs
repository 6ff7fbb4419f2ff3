//! The old primary's own pods of replicated workloads. Pods are never replicated: each cluster's
//! controllers make their own from the replicated Deployments, StatefulSets and Jobs. A cluster
//! that steps down still runs the pods it made while primary, and once fenced its controllers may
//! no longer delete them, so without this the workloads would run on both globals at once (two
//! writers to whatever they write to). On demotion, drctl deletes them; the new primary's
//! controllers already run their own.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::Client;

use crate::keyspace::Filter;

/// Which pods to stop: those in namespaces the mirror replicates (the platform's own namespaces,
/// kube-system among them, keep theirs).
pub fn pods_to_stop<'a>(pods: &'a [(String, String)], filter: &Filter) -> Vec<&'a (String, String)> {
    let excluded: HashSet<&str> = filter.excluded_namespaces().collect();
    pods.iter().filter(|(ns, _)| !excluded.contains(ns.as_str())).collect()
}

/// Deletes this cluster's pods of replicated workloads; returns how many it deleted.
pub async fn stop_replicated_pods(client: &Client, filter: &Filter) -> Result<usize, kube::Error> {
    let all: Api<Pod> = Api::all(client.clone());
    let pods: Vec<(String, String)> = all
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.namespace?, p.metadata.name?)))
        .collect();
    let mut deleted = 0;
    let mut first_error = None;
    // One failure must not leave the rest running: try every pod, report the first error.
    for (ns, name) in pods_to_stop(&pods, filter) {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            // Gone meanwhile: nothing to stop.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ExcludeSpec;

    #[test]
    fn only_pods_in_replicated_namespaces_are_stopped() {
        let pods: Vec<(String, String)> =
            [("team-a", "web-1"), ("kube-system", "coredns-1"), ("cpaas-system", "es-0"), ("drctl-system", "drctl-0"), ("team-b", "db-0")]
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect();
        let stop: Vec<&str> = pods_to_stop(&pods, &Filter::with_default_namespaces(&ExcludeSpec::default())).iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(stop, ["web-1", "db-0"]);
    }
}
