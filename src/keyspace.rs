//! The Kubernetes etcd keyspace: what a `/registry/...` key names, and which keys DR never copies.

/// Namespaces the seed's runbook never syncs: each global keeps its own platform components,
/// credentials and node-local state there.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 14] = [
    "cpaas-system",
    "cert-manager",
    "default",
    "global-credentials",
    "cpaas-system-global-credentials",
    "kube-ovn",
    "kube-public",
    "kube-system",
    "nsx-system",
    "cpaas-solution",
    "kube-node-lease",
    "kubevirt",
    "nativestor-system",
    "operators",
];

/// Resources excluded by default, with the one-line reason shown in the docs.
pub const DEFAULT_EXCLUDED_RESOURCES: [(&str, &str); 6] = [
    ("events", "high-churn, short-lived records of the source cluster's own activity"),
    ("leases", "leader election and node heartbeats belong to the cluster that holds them"),
    ("nodes", "nodes are the standby's own machines; copying them would register ghosts"),
    ("csinodes", "per-node CSI driver state of the source's nodes"),
    ("volumeattachments", "bind the source's volumes to the source's nodes"),
    ("certificatesigningrequests", "CSRs are signed by, and only valid for, the source's CA"),
];
