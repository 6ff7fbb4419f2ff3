//! drctl's test bed: the real servers the integration tests and the lab run on loopback (etcd,
//! kube-apiserver with its PKI, the rest of a global's control plane, Argo CD, kwok, PowerDNS),
//! a real node (containerd and a kubelet) per global,
//! spawned either to die with the test or detached for the lab; free ports and the one
//! "port taken, try new ports" loop; a TCP load balancer for etcd members. It depends on no drctl code, so the controller links none
//! of it.

pub mod kubelet;
pub mod platform;
pub mod ports;
pub mod procs;
pub mod tcp_lb;

use std::path::{Path, PathBuf};

/// The drctl source tree this crate was built in (it holds `hack/` and `gitops/`).
pub fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `rel` (`hack/build-kube.sh`, `gitops`) may be, nearest first: in the directory drctl
/// runs in or above it (a test runs in its package's directory), then in the tree this crate was
/// built in (cargo may reuse a build made in another clone of the same tree, since deleted).
pub fn tree_candidates(rel: &Path) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors().map(|d| d.join(rel)).chain([source_tree().join(rel)]).collect()
}
