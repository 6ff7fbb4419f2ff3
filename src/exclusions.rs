//! What DR never replicates by default, and why: the table the keyspace filter, validation and
//! the CRD's CEL rule for `spec.sync.exclude.optOut` all read (so none of them depends on another).

/// One item DR does not replicate by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// Every object in this namespace (and the Namespace object itself).
    Namespace(&'static str),
    /// Every object of this resource (plural), in any group.
    Resource(&'static str),
}

/// Why the seed runbook's namespaces are not synced.
const SEED: &str = "the seed runbook's list: each global keeps its own platform components, credentials and node-local state here";

/// What DR never replicates unless `spec.sync.exclude.optOut` names the item with a reason, and
/// why (the README's table). `spec.sync.exclude` lists add to these; they never replace them.
pub const DEFAULT_EXCLUSIONS: &[(Item, &str)] = &[
    (Item::Namespace("cpaas-system"), SEED),
    (Item::Namespace("cert-manager"), SEED),
    (Item::Namespace("default"), "the kubernetes Service and Endpoints of this cluster's own apiserver"),
    (Item::Namespace("global-credentials"), SEED),
    (Item::Namespace("cpaas-system-global-credentials"), SEED),
    (Item::Namespace("kube-ovn"), SEED),
    (Item::Namespace("kube-public"), "the cluster-info ConfigMap and bootstrap RBAC of this cluster"),
    (Item::Namespace("kube-system"), "control-plane components, CoreDNS, kube-proxy and their credentials"),
    (Item::Namespace("nsx-system"), SEED),
    (Item::Namespace("cpaas-solution"), SEED),
    (Item::Namespace("kube-node-lease"), "node heartbeats of this cluster's nodes"),
    (Item::Namespace("kubevirt"), SEED),
    (Item::Namespace("nativestor-system"), SEED),
    (Item::Namespace("operators"), SEED),
    (Item::Resource("events"), "high-churn, short-lived records of the source cluster's own activity"),
    (Item::Resource("leases"), "leader election and node heartbeats belong to the cluster that holds them"),
    (Item::Resource("nodes"), "nodes are the standby's own machines; copying them would register ghosts"),
    (Item::Resource("csinodes"), "per-node CSI driver state of the source's nodes"),
    (Item::Resource("volumeattachments"), "bind the source's volumes to the source's nodes"),
    (Item::Resource("certificatesigningrequests"), "CSRs are signed by, and only valid for, the source's CA"),
    (Item::Resource("ipaddresses"), "ClusterIP allocations; each apiserver rebuilds them from its own Services and deletes orphans"),
    (Item::Resource("servicecidrs"), "the Service IP ranges each apiserver was started with"),
    (Item::Resource("endpointslices"), "derived from Services and the local Pods by each cluster's own controllers"),
    (Item::Resource("endpoints"), "derived from Services and the local Pods by each cluster's own controllers"),
    (Item::Resource("pods"), "bound to the source's nodes; each cluster's controllers make their own from the replicated workloads (fenced on a standby)"),
];

/// The CRD's CEL rule for an `optOut` entry: it names a default exclusion (from the same table).
pub fn opt_out_cel() -> String {
    let quoted = |items: Vec<&str>| items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
    format!(
        "(!has(self.__namespace__) || self.__namespace__ in [{}]) && (!has(self.resource) || self.resource in [{}])",
        quoted(default_namespaces().collect()),
        quoted(default_resources().collect())
    )
}

/// The default-excluded namespaces, in table order.
pub fn default_namespaces() -> impl Iterator<Item = &'static str> {
    DEFAULT_EXCLUSIONS.iter().filter_map(|(i, _)| match i {
        Item::Namespace(n) => Some(*n),
        Item::Resource(_) => None,
    })
}

/// The default-excluded resources, in table order.
pub fn default_resources() -> impl Iterator<Item = &'static str> {
    DEFAULT_EXCLUSIONS.iter().filter_map(|(i, _)| match i {
        Item::Resource(r) => Some(*r),
        Item::Namespace(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_cel_lists_every_default() {
        let cel = opt_out_cel();
        for (item, reason) in DEFAULT_EXCLUSIONS {
            let name = match item {
                Item::Namespace(n) | Item::Resource(n) => n,
            };
            assert!(cel.contains(&format!("'{name}'")), "{name} missing from the CRD rule");
            assert!(!reason.is_empty(), "{name} has a reason");
        }
    }
}
