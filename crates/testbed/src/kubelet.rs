//! A real node for one global: Debian's containerd and runc under a kubelet built from the same
//! Kubernetes module as the apiserver (`hack/build-kube.sh`), so a Pod's probes, its
//! ServiceAccount token and its mounted Secrets are the kubelet's own. Images come from OCI
//! archives imported with `ctr` (no registry): drctl's from `make image`, and a pause image of
//! busybox-static that this module builds with umoci.
//!
//! Everything the node writes lives under its directory, with its own containerd socket, runc
//! root, cgroup root, ports and CNI bridge, except what [`RealNode::clean_up`] removes: the mounts
//! the kubelet makes under its root dir, the cgroups under its cgroup root, the containers'
//! shims, and the bridge if a Pod ever used it. The kubelet creates no iptables chains
//! (`makeIPTablesUtilChains: false`). The kubelet registers as [`NODE_NAME`] with the node
//! identity its global's PKI issued. Needs root (`../shared/notes/real-kubelet-probe.md`).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use crate::procs::NODE_NAME;
use crate::procs::{self, io, ProcError};

/// The image name the pause image is imported as (containerd's `sandbox_image`).
pub const PAUSE_IMAGE: &str = "docker.io/local/pause:1";
/// Where the CNI plugins of `containernetworking-plugins` live on Debian.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where the kubelet links each container's log (not configurable), into our `podLogsDir`.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// Where cgroups are mounted: the v1 hierarchies below it, or cgroup v2 itself.
const CGROUP_FS: &str = "/sys/fs/cgroup";

/// One node: its directory, name, address and ports.
#[derive(Debug, Clone)]
pub struct RealNode {
    pub dir: PathBuf,
    /// The Node object's name (`--hostname-override`), [`NODE_NAME`] but in unit tests.
    pub name: String,
    /// Tells apart the bridges, subnets and cgroup roots of nodes running side by side.
    pub index: u8,
    /// The host's own address (the kubelet refuses a loopback node IP): host-network Pods and
    /// their probes use it.
    pub ip: Ipv4Addr,
    pub kubelet_port: u16,
    pub healthz_port: u16,
    /// The CNI bridge and subnet, only used by a Pod that is not on the host network.
    pub bridge: String,
    pub subnet: String,
}

impl RealNode {
    /// Lays out the node's directories and configuration under `dir`; `index` tells apart the
    /// bridges, subnets and cgroup roots of nodes running side by side.
    pub fn prepare(dir: &Path, index: u8) -> Result<RealNode, ProcError> {
        let node = RealNode {
            dir: dir.to_path_buf(),
            name: NODE_NAME.to_string(),
            index,
            ip: host_ip()?,
            kubelet_port: procs::free_port()?,
            healthz_port: procs::free_port()?,
            bridge: format!("drctlnode{index}"),
            subnet: format!("10.89.{index}.0/24"),
        };
        for d in ["containerd", "cni", "kubelet", "pki", "pod-logs", "volume-plugins", "images"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io(format!("create {}", dir.join(d).display())))?;
        }
        let w = |name: &str, body: String| std::fs::write(dir.join(name), body).map_err(io(format!("write {}", dir.join(name).display())));
        w("containerd.toml", node.containerd_config())?;
        w("cni/10-drctl.conflist", node.cni_config())?;
        w("kubelet.yaml", node.kubelet_config())?;
        node.create_cgroup_root()?;
        Ok(node)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    fn root_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// A cgroup of its own under every hierarchy, so another kubelet's `/kubepods` is never ours.
    fn cgroup_root(&self) -> String {
        format!("/drctl-{}-{}", self.name, self.index)
    }

    fn containerd_config(&self) -> String {
        let d = self.dir.join("containerd").display().to_string();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The one setting these machines need: the process lacks CAP_SYS_RESOURCE, so runc cannot set
  # the sandbox's negative oom_score_adj (real-kubelet-probe.md).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
"#,
            sock = self.socket().display(),
            cni = self.dir.join("cni").display(),
        )
    }

    fn cni_config(&self) -> String {
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "{bridge}", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}"}}]], "dataDir": "{dir}/cni/ipam"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
  {{"type": "loopback"}}
]}}
"#,
            bridge = self.bridge,
            subnet = self.subnet,
            dir = self.dir.display()
        )
    }

    fn kubelet_config(&self) -> String {
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
readOnlyPort: 0
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
# No KUBE-FIREWALL chains: the machine's iptables stay as they were.
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}}
podLogsDir: {logs}
volumePluginDir: {plugins}
serializeImagePulls: false
",
            port = self.kubelet_port,
            healthz = self.healthz_port,
            cgroup_root = self.cgroup_root(),
            sock = self.socket().display(),
            logs = self.dir.join("pod-logs").display(),
            plugins = self.dir.join("volume-plugins").display(),
        )
    }

    /// The kubelet refuses a cgroup root that does not exist. A new cpuset cgroup starts with no
    /// CPUs and no memory nodes: it gets its parent's.
    fn create_cgroup_root(&self) -> Result<(), ProcError> {
        for h in cgroup_hierarchies()? {
            let d = h.join(self.cgroup_root().trim_start_matches('/'));
            std::fs::create_dir_all(&d).map_err(io(format!("create cgroup {}", d.display())))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                    std::fs::write(d.join(f), v.trim()).map_err(io(format!("write {}", d.join(f).display())))?;
                }
            }
        }
        Ok(())
    }

    pub fn containerd(&self) -> Command {
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(self.dir.join("containerd.toml"));
        cmd
    }

    /// The kubelet, registering as `self.name` with the apiserver `kubeconfig` points at.
    pub fn kubelet(&self, kube_bin: &Path, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(kube_bin.join("kubelet"));
        cmd.arg(format!("--config={}", self.dir.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", self.root_dir().display()))
            .arg(format!("--cert-dir={}", self.dir.join("pki").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip))
            .arg("-v=1");
        cmd
    }

    /// `ctr` against this node's containerd, in the namespace the kubelet's Pods live in.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(["--namespace", "k8s.io"]);
        cmd
    }

    /// containerd answers on its socket.
    pub fn containerd_ready(&self) -> bool {
        self.ctr().arg("version").output().is_ok_and(|o| o.status.success())
    }

    /// Imports the OCI archive `archive` (an OCI layout in a tar, tagged `tag`, as
    /// `hack/build-image.sh` writes it) as `name`; returns the name the kubelet knows it by.
    pub fn import_oci_archive(&self, archive: &Path, tag: &str, name: &str) -> Result<String, ProcError> {
        let docker = self.dir.join("images").join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet"]).arg(format!("oci-archive:{}:{tag}", archive.display())).arg(format!("docker-archive:{}:{name}", docker.display()));
        run_ok(copy, "skopeo copy")?;
        let mut import = self.ctr();
        import.args(["images", "import"]).arg(&docker);
        run_ok(import, "ctr images import")?;
        std::fs::remove_file(&docker).map_err(io(format!("remove {}", docker.display())))?;
        Ok(format!("docker.io/{name}"))
    }

    /// Builds and imports the pause image: busybox-static sleeping forever. containerd stops a
    /// sandbox with SIGKILL, so it needs no signal handling; host-network Pods share no PID
    /// namespace with it, so it reaps nothing.
    pub fn import_pause_image(&self) -> Result<(), ProcError> {
        let work = self.dir.join("images/pause");
        let layout = work.join("oci");
        let image = format!("{}:1", layout.display());
        let bundle = work.join("bundle");
        let umoci = |args: &[&str]| {
            let mut cmd = Command::new("umoci");
            cmd.args(args);
            run_ok(cmd, "umoci")
        };
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(io(format!("create {}", work.display())))?;
        umoci(&["init", "--layout", &layout.display().to_string()])?;
        umoci(&["new", "--image", &image])?;
        umoci(&["unpack", "--image", &image, &bundle.display().to_string()])?;
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).map_err(io(format!("create {}", bin.display())))?;
        std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(io("copy /bin/busybox (apt-get install busybox-static)"))?;
        umoci(&["repack", "--image", &image, &bundle.display().to_string()])?;
        umoci(&["config", "--image", &image, "--config.entrypoint=/bin/busybox", "--config.cmd=sleep", "--config.cmd=2147483647"])?;
        let archive = work.join("pause-oci.tar");
        let mut tar = Command::new("tar");
        tar.arg("-C").arg(&layout).arg("-cf").arg(&archive).arg(".");
        run_ok(tar, "tar the pause image")?;
        self.import_oci_archive(&archive, "1", PAUSE_IMAGE.trim_start_matches("docker.io/"))?;
        std::fs::remove_dir_all(&work).map_err(io(format!("remove {}", work.display())))
    }

    /// Removes what the node made, once the kubelet is stopped: every container's task (and with
    /// it its shim) and the containers while containerd still runs; the mounts under the node's
    /// directory, its cgroups, its log links and its bridge. Call it again once containerd is
    /// stopped, for what containerd held. Best effort: each step runs even if an earlier one
    /// failed; the failures are returned.
    pub fn clean_up(&self) -> Vec<String> {
        let mut failed = Vec::new();
        if self.containerd_ready() {
            for id in self.ctr_list(&["tasks", "ls", "-q"]) {
                for args in [&["tasks", "kill", "-s", "SIGKILL"][..], &["tasks", "delete", "-f"]] {
                    let mut cmd = self.ctr();
                    cmd.args(args).arg(&id);
                    let _ = cmd.output();
                }
            }
            for id in self.ctr_list(&["containers", "ls", "-q"]) {
                let mut cmd = self.ctr();
                cmd.args(["containers", "delete", &id]);
                if let Err(e) = run_ok(cmd, "ctr containers delete") {
                    failed.push(e.to_string());
                }
            }
        }
        failed.extend(unmount_under(&self.dir));
        for h in cgroup_hierarchies().unwrap_or_default() {
            let root = h.join(self.cgroup_root().trim_start_matches('/'));
            if let Err(e) = remove_cgroup(&root) {
                failed.push(format!("remove cgroup {}: {e}", root.display()));
            }
        }
        failed.extend(remove_links_into(Path::new(CONTAINER_LOG_LINKS), &self.dir));
        // The shims' socket directory containerd 1.6 always uses; shared, so only when empty.
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let mut cmd = Command::new("ip");
            cmd.args(["link", "delete", &self.bridge]);
            if let Err(e) = run_ok(cmd, "ip link delete") {
                failed.push(e.to_string());
            }
        }
        failed
    }

    fn ctr_list(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = self.ctr();
        cmd.args(args);
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }
}

fn run_ok(mut cmd: Command, what: &str) -> Result<String, ProcError> {
    let out = cmd.output().map_err(io(format!("run {what}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ProcError::Failed(format!("{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
    }
}

/// The address the host sends from towards the outside (no packet is sent): the kubelet needs a
/// node IP that is not loopback.
fn host_ip() -> Result<Ipv4Addr, ProcError> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(io("bind a UDP socket"))?;
    s.connect("192.0.2.254:9").or_else(|_| s.connect("203.0.113.1:9")).map_err(io("find the host's address (no route out?)"))?;
    match s.local_addr().map_err(io("read the UDP socket's address"))?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() => Ok(ip),
        other => Err(ProcError::Failed(format!("the host has no non-loopback IPv4 address for a node ({other})"))),
    }
}

/// The cgroup hierarchies: each v1 controller's (`cpu`, `memory`, `name=systemd`, ...) and the
/// unified one where mounted, or `/sys/fs/cgroup` itself on a cgroup v2 only host.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>, ProcError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(io("read /proc/self/mountinfo"))?;
    Ok(cgroup_mounts(&mountinfo))
}

fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            (matches!(fstype, "cgroup" | "cgroup2") && Path::new(point).starts_with(CGROUP_FS)).then(|| PathBuf::from(point))
        })
        .collect()
}

/// Every mount point in a /proc/self/mountinfo text (octal escapes decoded for spaces).
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(p.replace("\\040", " "))).collect()
}

/// The mounts at or under `dir`, deepest first (a mount made later on top comes off first).
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points(mountinfo).into_iter().filter(|m| m.starts_with(dir)).collect();
    v.reverse();
    v
}

/// Lazily unmounts every mount under `dir` (the kubelet's bind mount of its root dir, each Pod's
/// Secret and projected-token tmpfs, containerd's overlays).
fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec!["read /proc/self/mountinfo".into()];
    };
    let mut failed = Vec::new();
    for m in mounts_under(&mountinfo, dir) {
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(&m);
        if let Err(e) = run_ok(cmd, "umount") {
            failed.push(e.to_string());
        }
    }
    failed
}

/// Removes the symbolic links in `links` that point under `dir`.
fn remove_links_into(links: &Path, dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(links) else { return Vec::new() };
    let mut failed = Vec::new();
    for e in entries.flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                failed.push(format!("remove {}: {err}", e.path().display()));
            }
        }
    }
    failed
}

/// Removes a cgroup and its children, children first (a cgroup directory is removed with rmdir).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            remove_cgroup(&p)?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 22 254:0 /tmp/n/kubelet /tmp/n/kubelet rw - ext4 /dev/vda rw
41 40 0:50 / /tmp/n/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access rw - tmpfs tmpfs rw
42 22 0:51 / /tmp/nn rw - tmpfs tmpfs rw
43 22 0:52 / /tmp/n/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts_under_the_node_dir_come_off_deepest_first_and_no_others() {
        let got = mounts_under(MOUNTINFO, Path::new("/tmp/n"));
        let want: Vec<PathBuf> = ["/tmp/n/with space", "/tmp/n/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access", "/tmp/n/kubelet"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cgroup_hierarchies_are_the_cgroup_mounts_v1_or_v2() {
        assert_eq!(cgroup_mounts(MOUNTINFO), [Path::new("/sys/fs/cgroup/cpu"), Path::new("/sys/fs/cgroup/memory")]);
        let v2 = "22 1 254:0 / / rw - ext4 /dev/vda rw\n30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_mounts(v2), [Path::new("/sys/fs/cgroup")]);
    }

    #[test]
    fn each_node_has_its_own_socket_bridge_subnet_and_cgroup_root() {
        let dir = PathBuf::from("/nonexistent/node");
        let node = RealNode {
            dir: dir.clone(),
            name: NODE_NAME.into(),
            index: 3,
            ip: Ipv4Addr::new(192, 0, 2, 2),
            kubelet_port: 1,
            healthz_port: 2,
            bridge: "drctlnode3".into(),
            subnet: "10.89.3.0/24".into(),
        };
        let c = node.containerd_config();
        assert!(c.contains(&format!("address = \"{}/containerd.sock\"", dir.display())) && c.contains("restrict_oom_score_adj = true"), "{c}");
        assert!(c.contains(&format!("Root = \"{}/containerd/runc\"", dir.display())), "{c}");
        let k = node.kubelet_config();
        assert!(k.contains("cgroupRoot: /drctl-real-node-3") && k.contains("makeIPTablesUtilChains: false") && k.contains("port: 1\n"), "{k}");
        let n = node.cni_config();
        assert!(n.contains("\"bridge\": \"drctlnode3\"") && n.contains("10.89.3.0/24"), "{n}");
    }
}
