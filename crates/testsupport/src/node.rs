//! A real node for one test global (`drctl_testbed::kubelet`): containerd, runc and a kubelet
//! built from the same Kubernetes module as the apiserver. Where they cannot start, the test
//! fails saying why: a node that silently is not there would prove nothing.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use drctl_testbed::kubelet::RealNode;

use super::{kill, kube_bin_dir, spawn, tail, Global};

/// containerd and the kubelet of one node, stopped (and everything they left cleaned up) on drop.
pub struct Node {
    kubelet: Option<Child>,
    containerd: Option<Child>,
    pub node: RealNode,
    pub dir: tempfile::TempDir,
}

/// Polls `ready` until it holds, or panics with `what` and the tail of `log`.
fn wait(what: &str, log: &std::path::Path, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}; last lines of {}:\n{}", log.display(), tail(log));
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Node {
    /// Starts a node of `g` (`kubelet::NODE_NAME`, with the node identity `g`'s PKI issued) and
    /// waits until its Node object is Ready. `index` keeps two nodes' bridges, subnets and
    /// cgroup roots apart.
    pub fn start(g: &Global, index: u8) -> Node {
        let dir = tempfile::Builder::new().prefix("drctl-node-").tempdir().expect("tempdir");
        let node = RealNode::prepare(dir.path(), index).unwrap_or_else(|e| panic!("prepare a real node: {e}"));
        let containerd = spawn(node.containerd(), &node.log("containerd"));
        let mut n = Node { kubelet: None, containerd: Some(containerd), node, dir };
        wait("containerd (Debian's, `make deps`) did not answer on its socket", &n.node.log("containerd"), Duration::from_secs(30), || {
            n.node.containerd_ready()
        });
        n.node.import_pause_image().unwrap_or_else(|e| panic!("import the pause image: {e}"));
        n.kubelet = Some(spawn(n.node.kubelet(kube_bin_dir(), &g.api.server.node_kubeconfig()), &n.node.log("kubelet")));
        let ready = r#"-o=jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
        let log = n.node.log("kubelet");
        wait(&format!("node {} did not become Ready", n.node.name), &log, Duration::from_secs(90), || {
            g.api.kubectl(&["get", "node", &n.node.name, ready]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
        });
        n
    }

    /// Imports the image `make image` built (`$DRCTL_IMAGE`, else `$DRCTL_CACHE/image`) and returns its name.
    pub fn import_drctl_image(&self) -> String {
        let archive = super::oci::built_image();
        let tag = super::oci::tag(&archive);
        self.node.import_oci_archive(&archive, &tag, &format!("local/drctl:{tag}")).unwrap_or_else(|e| panic!("import {}: {e}", archive.display()))
    }
}

/// Every file under `dir`, depth first.
fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test shows what its Pods printed (the apiserver cannot proxy `kubectl logs`
        // to this kubelet: it has no address for it).
        if std::thread::panicking() {
            for f in files_under(&self.dir.path().join("pod-logs")) {
                eprintln!("--- {}:\n{}", f.display(), tail(&f));
            }
        }
        if let Some(k) = self.kubelet.as_mut() {
            kill(k);
        }
        let mut failed = self.node.clean_up();
        if let Some(c) = self.containerd.as_mut() {
            kill(c);
        }
        failed.extend(self.node.clean_up());
        if !failed.is_empty() {
            eprintln!("cleaning up node {}: {}", self.node.name, failed.join("; "));
        }
    }
}
