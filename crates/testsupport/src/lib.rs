//! Test harness: real etcd and a real kube-apiserver on loopback, free ports, temp dirs.
//!
//! Every process is killed when its handle drops (also on panic), and asks the kernel to kill it
//! when the test process dies (PR_SET_PDEATHSIG), so a crashed test leaves nothing behind.

pub mod argocd;
pub mod dns;
pub mod etcd_cluster;
pub mod faults;
pub mod health;
pub mod ledger;
pub mod node;
pub mod oci;
pub mod pair;
pub mod partition;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use drctl_testbed::procs::{self, Lifetime};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

pub const KUBE_VERSION: &str = procs::KUBE_VERSION;

/// A free loopback port (TCP and UDP), from below the ephemeral range; servers start through
/// [`on_fresh_ports`] where a port taken by a process outside drctl matters.
pub fn free_port() -> u16 {
    procs::free_port().expect("free port")
}

/// Directory with `kube-apiserver` and `kubectl` built from Go modules (built once per machine).
pub fn kube_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| procs::kube_bin_dir().unwrap_or_else(|e| panic!("kube binaries: {e}")))
}

pub fn kubectl() -> PathBuf {
    kube_bin_dir().join("kubectl")
}

/// Spawns `cmd` so it dies with the spawning thread and logs into `log`. Spawn from the test's
/// own thread (not a helper thread that exits early), or the child is killed with that thread.
fn spawn(cmd: Command, log: &Path) -> Child {
    procs::spawn(cmd, log, Lifetime::WithParent).unwrap_or_else(|e| panic!("{e}"))
}

/// A plain HTTP/1.0 GET, enough for health endpoints; None on any failure.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    procs::http_get(addr, path)
}

/// `start` until it succeeds, on fresh ports each time (drctl_testbed::ports::on_fresh_ports).
fn on_fresh_ports<T, E: std::fmt::Display>(what: &str, start: impl FnMut() -> Result<T, E>) -> T {
    drctl_testbed::ports::on_fresh_ports(what, start).unwrap_or_else(|e| panic!("{e}"))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path) -> String {
    procs::tail(path)
}

pub use procs::EtcdTls;

/// A global's etcd as production runs it, in a temp dir: three members of etcd
/// [`procs::ETCD_VERSION`] (built from its Go modules) requiring client certificates, behind a
/// TCP load balancer ([`etcd_cluster::EtcdCluster`]). `client_url` is the load balancer's, which
/// is what the peer's mirror and the CLI are given; the apiserver is given the members.
pub struct Etcd {
    pub client_url: String,
    pub tls: EtcdTls,
    pub cluster: etcd_cluster::EtcdCluster,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// Members started with `args` too, e.g. lowered request limits.
    pub fn start_with(args: &[&str]) -> Etcd {
        let cluster = etcd_cluster::EtcdCluster::start_with(3, args);
        Etcd { client_url: cluster.lb_url(), tls: cluster.tls.clone(), cluster }
    }

    /// A temp dir that lives as long as this etcd (for a test's snapshots and logs).
    pub fn dir(&self) -> &Path {
        self.cluster.dir.path()
    }

    /// The client URLs of every member (the load balancer's alone is `client_url`).
    pub fn member_urls(&self) -> Vec<String> {
        self.cluster.member_urls()
    }

    /// Kill -9 every member, as a crash of the whole etcd would.
    pub fn kill(&mut self) {
        self.cluster.kill_all();
    }

    /// Every member started again on the same data dirs and ports.
    pub fn restart(&mut self) {
        self.cluster.restart_all();
    }

    /// `--<prefix>cacert/--<prefix>cert/--<prefix>key` for drctl's CLI.
    pub fn tls_args(&self, prefix: &str) -> Vec<String> {
        self.tls.cli_args(prefix)
    }

    /// How drctl's CLI is pointed at this etcd: `--<flag> <load balancer>` and the TLS flags
    /// `--<tls_prefix>cacert/cert/key` (`--source` with `source-`, `--etcd` with none).
    pub fn flags(&self, flag: &str, tls_prefix: &str) -> Vec<String> {
        let mut out = vec![format!("--{flag}"), self.client_url.clone()];
        out.extend(self.tls_args(tls_prefix));
        out
    }

    /// drctl's endpoint for this etcd: the load balancer, with the client certificate.
    pub fn endpoint(&self) -> drctl::etcd::Endpoint {
        self.cluster.endpoint(vec![self.client_url.clone()])
    }

    /// `etcdctl snapshot save` of this etcd into `path`.
    pub fn snapshot(&self, path: &Path) {
        // etcdctl's TLS flags are drctl's without a prefix.
        let out = procs::etcd_command("etcdctl")
            .args(["--endpoints", &self.client_url, "snapshot", "save"])
            .args(self.tls_args(""))
            .arg(path)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Restores this etcd from `snapshot` as an operator would after losing its data
    /// ([`etcd_cluster::EtcdCluster::restore_snapshot`]): the same cluster ID, its revision back
    /// to the snapshot's.
    pub fn restore_snapshot(&mut self, snapshot: &Path) {
        self.cluster.restore_snapshot(snapshot);
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.cluster.client().await
    }
}

/// The command that starts a test's etcd member. The tests' faults kill processes, never the
/// machine, and the page cache outlives a SIGKILL: fsync guards nothing here and would only add
/// its latency to every write of every test on the one shared disk. The lab and the benchmarks
/// keep fsync on.
pub fn etcd_command(server: &procs::EtcdServer) -> std::process::Command {
    let mut cmd = server.command();
    cmd.arg("--unsafe-no-fsync");
    cmd
}

/// The PEM files of a test bed etcd's client identity, as drctl's [`drctl::etcd::Endpoint`] loads them.
pub fn tls_files(t: &EtcdTls) -> drctl::etcd::TlsFiles {
    drctl::etcd::TlsFiles { ca: Some(t.ca.clone()), cert: Some(t.cert.clone()), key: Some(t.key.clone()) }
}

/// A kube-apiserver built from the `k8s.io/kubernetes` Go module, on an etcd of its own.
pub struct ApiServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub kubeconfig: PathBuf,
    server: procs::ApiServer,
}

impl ApiServer {
    pub fn start(etcd: &Etcd) -> ApiServer {
        ApiServer::spawn_new(etcd).ready_or_relaunch(etcd)
    }

    /// Waits for this spawned apiserver; when it does not start, a new one on a fresh port.
    fn ready_or_relaunch(self, etcd: &Etcd) -> ApiServer {
        let real_nodes = self.server.real_nodes;
        let mut spawned = Some(self);
        on_fresh_ports("kube-apiserver", || {
            let mut a = spawned.take().unwrap_or_else(|| ApiServer::spawn_with(etcd, real_nodes));
            let child = a.child.as_mut().expect("apiserver spawned");
            a.server.wait_ready(child).map(|()| a)
        })
    }

    fn spawn_new(etcd: &Etcd) -> ApiServer {
        ApiServer::spawn_with(etcd, false)
    }

    /// `real_nodes`: the admission a global with real nodes needs (`procs::ApiServer::real_nodes`).
    fn spawn_with(etcd: &Etcd, real_nodes: bool) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every member, as a control-plane node's apiserver is given them.
        let mut server = procs::ApiServer::prepare(dir.path(), &etcd.member_urls().join(",")).expect("apiserver pki");
        server.etcd_tls = Some(etcd.tls.clone());
        server.real_nodes = real_nodes;
        let mut a = ApiServer { child: None, url: server.url.clone(), kubeconfig: server.kubeconfig.clone(), dir, server };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        self.child = Some(spawn(self.server.command(kube_bin_dir()), &self.server.log()));
    }

    fn wait_ready(&mut self) {
        let child = self.child.as_mut().expect("apiserver spawned");
        self.server.wait_ready(child).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs kubectl against this apiserver as admin.
    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.server.kubectl(kube_bin_dir()).args(args).output()
    }

    /// `kubectl apply -f -` with `manifest` on stdin; (success, stdout+stderr).
    pub fn apply_stdin(&self, manifest: &str) -> (bool, String) {
        match procs::kubectl_apply(self.server.kubectl(kube_bin_dir()), manifest) {
            Ok(out) => (true, out),
            Err(e) => (false, e.to_string()),
        }
    }

    /// Waits until the CRD named `crd` is Established.
    pub fn wait_crd(&self, crd: &str) {
        self.server.wait_crd_established(crd).unwrap_or_else(|e| panic!("{e}"));
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).expect("run kubectl");
        assert!(out.status.success(), "kubectl {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kube config");
        Client::try_from(cfg).expect("kube client")
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
        self.child = None;
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// Restarts with encryption at rest as `config` (an EncryptionConfiguration) says; waits
    /// until it is ready, or with `ready` false only until it serves (`/livez`): an apiserver
    /// that cannot decrypt a stored Secret never becomes ready (its Secret cache cannot list).
    pub fn restart_encrypting(&mut self, config: &Path, ready: bool) {
        self.server.encryption_config = Some(config.to_path_buf());
        if ready {
            return self.restart();
        }
        self.kill();
        self.spawn();
        let start = std::time::Instant::now();
        while !self.kubectl(&["get", "--raw", "/livez"]).is_ok_and(|o| o.status.success()) {
            assert!(start.elapsed() < std::time::Duration::from_secs(90), "kube-apiserver not live:\n{}", procs::tail(&self.server.log()));
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The rest of a global's control plane, as the lab runs it (`drctl_testbed::platform`):
/// kube-controller-manager with per-controller ServiceAccounts, kube-scheduler, and kwok acting
/// as the kubelets of the global's fake nodes. Killed when dropped.
pub struct ControlPlane {
    children: Vec<(&'static str, Child, PathBuf)>,
    pub dir: tempfile::TempDir,
}

impl ControlPlane {
    /// The named components that exited (none may, for the run to count).
    pub fn exited(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|(name, c, log)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited ({status}); last lines of {}:\n{}", log.display(), tail(log))),
                _ => None,
            })
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, c, _) in self.children.iter_mut().rev() {
            kill(c);
        }
    }
}

/// The Go-built servers of a whole global (built once per machine).
pub fn binaries() -> &'static drctl_testbed::platform::Binaries {
    static B: OnceLock<drctl_testbed::platform::Binaries> = OnceLock::new();
    B.get_or_init(|| drctl_testbed::platform::Binaries::find().unwrap_or_else(|e| panic!("Go-built servers: {e}")))
}

/// One global cluster: its etcd and its kube-apiserver, and optionally the rest of its control plane.
pub struct Global {
    pub name: String,
    // Field order matters: the control plane and the apiserver drop (stop) before its etcd.
    pub control_plane: Option<ControlPlane>,
    pub api: ApiServer,
    pub etcd: Etcd,
}

impl Global {
    pub fn start(name: &str) -> Global {
        let etcd = Etcd::start();
        let api = ApiServer::start(&etcd);
        Global { name: name.to_string(), control_plane: None, api, etcd }
    }

    /// A global whose apiserver mounts ServiceAccount tokens into Pods, for a real node
    /// ([`node::Node`]).
    pub fn start_for_real_node(name: &str) -> Global {
        let etcd = Etcd::start();
        let api = ApiServer::spawn_with(&etcd, true).ready_or_relaunch(&etcd);
        Global { name: name.to_string(), control_plane: None, api, etcd }
    }

    /// Starts kube-controller-manager, kube-scheduler and kwok with this global's fake nodes.
    /// Spawn from the test's own thread (the children die with the spawning thread).
    pub fn start_control_plane(&mut self, index: usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = drctl_testbed::platform::Platform::on_free_ports(dir.path(), index).expect("ports");
        let b = binaries();
        let server = &self.api.server;
        let mut children = Vec::new();
        for (name, cmd) in
            [("kube-controller-manager", p.controller_manager(b, server)), ("kube-scheduler", p.scheduler(b, server)), ("kwok", p.kwok(b, server))]
        {
            let log = p.log(name);
            children.push((name, spawn(cmd, &log), log));
        }
        self.api.apply_stdin(&drctl_testbed::platform::nodes_yaml(&self.name));
        self.control_plane = Some(ControlPlane { children, dir });
    }

    /// Two independent globals, each etcd three mTLS members behind a load balancer and each
    /// apiserver given its three members. Processes are spawned from this thread
    /// (PR_SET_PDEATHSIG fires when the spawning *thread* exits) and the apiservers waited for
    /// together.
    pub fn start_pair(a: &str, b: &str) -> (Global, Global) {
        let (ea, eb) = (Etcd::start(), Etcd::start());
        let (aa, ab) = (ApiServer::spawn_new(&ea), ApiServer::spawn_new(&eb));
        let (aa, ab) = (aa.ready_or_relaunch(&ea), ab.ready_or_relaunch(&eb));
        (Global { name: a.to_string(), control_plane: None, api: aa, etcd: ea }, Global { name: b.to_string(), control_plane: None, api: ab, etcd: eb })
    }

    pub async fn client(&self) -> Client {
        self.api.client().await
    }

    /// A client acting as the user alice: cluster-admin by RBAC but not exempt from the fence,
    /// as a platform user would be.
    pub async fn as_alice(&self) -> Client {
        // Replicated from the primary once the standby mirrors: it may exist already.
        let _ = self.api.kubectl(&["create", "clusterrolebinding", "alice-admin", "--clusterrole=cluster-admin", "--user=alice"]);
        let kc = kube::config::Kubeconfig::read_from(&self.api.kubeconfig).expect("kubeconfig");
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
        cfg.auth_info.impersonate = Some("alice".into());
        Client::try_from(cfg).expect("client")
    }
}

/// Polls `f` until it returns Some, or panics naming `what` and `context()` after `timeout`.
pub fn eventually<T>(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", context());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The `drctl` binary under test.
pub fn drctl() -> Command {
    Command::new(drctl_bin())
}

/// The path of the `drctl` binary the running integration test was built with. Cargo gives it to
/// a test crate only at compile time (`CARGO_BIN_EXE_drctl`) and nextest at run time
/// (`NEXTEST_BIN_EXE_drctl`); without nextest it is where cargo puts it, beside the directory of
/// the test's own executable (`target/<profile>/deps/<test>-<hash>`).
pub fn drctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("NEXTEST_BIN_EXE_drctl").map(PathBuf::from).unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test's own executable");
            exe.parent().and_then(Path::parent).map(|profile| profile.join("drctl")).unwrap_or_default()
        });
        assert!(bin.is_file(), "the drctl binary under test is not at {} (build it with the tests: cargo build --all-targets)", bin.display());
        bin
    })
}

/// The repository's root: its `crds/`, `gitops/` and the rest the tests read.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
