//! The local DR lab: two globals, each a whole platform (three mTLS etcd members behind a load
//! balancer, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok nodes, its own Argo CD and a `drctl
//! controller`), PowerDNS holding the platform domain and a Git repo with the `gitops/` layout,
//! all on loopback and all recorded in `DIR/lab.json`, so `flip`, `disaster`, `status` and `down`
//! (separate commands) find what `up` started.
//!
//! Each global runs under its own supervisor (`supervise`), detached (own session): it outlives
//! `drctl lab up` and is stopped by `drctl lab down`.

pub mod argo;
pub mod cli;
pub mod drill;
pub mod flip;
pub mod out;
pub mod repo;
pub mod status;
pub mod supervise;
pub mod up;

pub use drctl_testbed::{platform, ports, procs, tcp_lb};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};

use drctl::lab_view::STATE_FILE;
use drctl::topology::DRTopology;
use procs::ProcError;

pub const DOMAIN: &str = "platform.drlab.test";
pub const ZONE: &str = "drlab.test.";
pub const TOPOLOGY: &str = "platform";
/// The two globals and their VIPs (DNS data only: nothing listens on them).
pub const CLUSTERS: [(&str, &str); 2] = [("global-a", "127.0.0.10"), ("global-b", "127.0.0.20")];

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Git { what: String, source: git2::Error },
    #[error(transparent)]
    Gitops(#[from] drctl::gitops::GitopsError),
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("{what}: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

pub(crate) fn git_err(what: impl Into<String>) -> impl FnOnce(git2::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Git { what, source }
}

/// A process the lab started, by pid and program name (checked before signalling, so a reused
/// pid is never killed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pid {
    pub pid: u32,
    pub program: String,
}

impl Pid {
    pub fn of(child: &std::process::Child, program: &str) -> Pid {
        Pid { pid: child.id(), program: program.to_string() }
    }

    /// Running (not a zombie) and still the program we started.
    pub fn is_alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // The state is the first field after the parenthesised command name.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return false;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().map(String::from_utf8_lossy).unwrap_or_default();
        // Some servers (redis) rewrite their title into argv[0]: "redis-server 127.0.0.1:6379".
        let argv0 = argv0.split_whitespace().next().unwrap_or_default();
        Path::new(argv0).file_name().is_some_and(|n| n.to_string_lossy() == self.program)
    }

    fn signal(&self, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else { return };
        // SAFETY: kill(2) with a pid we checked is still our program.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; a no-op when it is already gone.
    pub fn stop(&self, grace: Duration) {
        if !self.is_alive() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL, as a crash would; waits until it is gone.
    pub fn kill(&self) {
        if !self.is_alive() {
            return;
        }
        self.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsState {
    /// The authoritative server's DNS address.
    pub server: SocketAddr,
    pub api_url: String,
    /// The PowerDNS API key lives in this file (mode 0600), never in lab.json.
    pub api_key_file: PathBuf,
    pub log: PathBuf,
    pub pid: Option<Pid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerState {
    pub listen: SocketAddr,
    pub log: PathBuf,
}

/// A global's etcd as production runs it: three members that require client certificates (one
/// CA, one client certificate), the kube-apiserver given all three, and a TCP load balancer in
/// front of them, which the DRTopology names. The supervisor runs the members (one component
/// each) and the balancer (a thread of its own: it dies with the global).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabEtcd {
    /// Empty in a lab.json from before the lab ran three members: such a lab cannot be recovered.
    #[serde(default)]
    pub members: Vec<procs::EtcdServer>,
    /// The load balancer's address, `127.0.0.1:PORT` (the serving certificates name 127.0.0.1).
    #[serde(default)]
    pub lb: String,
}

impl LabEtcd {
    pub const MEMBERS: usize = 3;

    /// Certificates, data directories and fixed ports for the members and the balancer.
    pub fn prepare(dir: &Path) -> Result<LabEtcd, LabError> {
        let members = procs::EtcdServer::cluster_tls(dir, LabEtcd::MEMBERS)?;
        Ok(LabEtcd { members, lb: format!("127.0.0.1:{}", procs::free_port()?) })
    }

    /// The load balancer's URL: the topology's `etcd.endpoints`.
    pub fn url(&self) -> String {
        format!("https://{}", self.lb)
    }

    /// The members' client URLs, comma-separated (the apiserver's `--etcd-servers`).
    pub fn member_urls(&self) -> String {
        self.members.iter().map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The CA, client certificate and key every client shows the members.
    pub fn tls(&self) -> Option<&procs::EtcdTls> {
        self.members.first().and_then(|m| m.tls.as_ref())
    }

    /// The members' client addresses, `host:port`, as the balancer dials them.
    pub fn member_addrs(&self) -> Result<Vec<SocketAddr>, LabError> {
        self.members
            .iter()
            .map(|m| {
                let hostport = m.client_url.trim_start_matches("https://").trim_start_matches("http://");
                hostport.parse().map_err(|e| LabError::Failed(format!("etcd member URL {}: {e}", m.client_url)))
            })
            .collect()
    }

    /// A majority of the members report healthy (each needs a leader for that).
    pub fn quorum(&self) -> bool {
        !self.members.is_empty() && self.members.iter().filter(|m| m.healthy()).count() > self.members.len() / 2
    }

    /// The Secret in `drctl-system` of both globals holding `cluster`'s etcd client certificate.
    pub fn secret_name(cluster: &str) -> String {
        format!("{cluster}-etcd-tls")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    pub name: String,
    pub vip: String,
    /// A lab.json from before three members parses with no members (and cannot be recovered).
    #[serde(default)]
    pub etcd: LabEtcd,
    pub api: procs::ApiServer,
    pub platform: platform::Platform,
    pub controller: ControllerState,
    /// The global's supervisor: every component of the global lives and dies with it.
    pub supervisor: Option<Pid>,
    pub supervisor_log: PathBuf,
}

impl ClusterState {
    pub fn kubectl(&self, state: &LabState) -> std::process::Command {
        let mut cmd = self.api.kubectl(&state.bins.kube);
        cmd.arg("--request-timeout=5s");
        cmd
    }

    /// Its supervisor runs (the global is up, whatever state its components are in).
    pub fn is_up(&self) -> bool {
        self.supervisor.as_ref().is_some_and(Pid::is_alive)
    }

    /// Each component as its supervisor last recorded it (`ComponentRecord::alive` checks /proc:
    /// a killed supervisor leaves its record saying running).
    pub fn components(&self, state: &LabState) -> Vec<supervise::ComponentRecord> {
        supervise::read_records(&state.dir, &self.name)
    }

    /// This global's DRTopology; Err when its apiserver does not answer.
    pub async fn topology(&self) -> Result<Option<DRTopology>, LabError> {
        let client = client(&self.api.kubeconfig).await?;
        let api: kube::Api<DRTopology> = kube::Api::all(client);
        api.get_opt(TOPOLOGY).await.map_err(|source| LabError::Kube { what: format!("read DRTopology on {}", self.name), source })
    }
}

/// What `drctl lab up` started, where, and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub dir: PathBuf,
    pub bins: platform::Binaries,
    pub domain: String,
    /// The Git repository each global's Argo CD syncs (its `main` branch).
    pub repo: PathBuf,
    /// The topology file inside the repository.
    pub file: PathBuf,
    pub dns: DnsState,
    pub clusters: Vec<ClusterState>,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// None when no lab was ever started in `dir`.
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = LabState::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::Io { what: format!("read {}", path.display()), source: e }),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| LabError::Json { what: format!("parse {}", path.display()), source })
    }

    /// The lab in `dir`, or an error telling how to start one.
    pub fn require(dir: &Path) -> Result<LabState, LabError> {
        LabState::load(dir)?.ok_or_else(|| LabError::Failed(format!("no lab in {}: run `drctl lab up --dir {}` first", dir.display(), dir.display())))
    }

    pub fn save(&self) -> Result<(), LabError> {
        let path = LabState::path(&self.dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| LabError::Json { what: "serialize lab state".into(), source })?;
        write_atomic(&path, &text)
    }

    pub fn cluster(&self, name: &str) -> Result<&ClusterState, LabError> {
        self.clusters.iter().find(|c| c.name == name).ok_or_else(|| LabError::Failed(format!("no cluster {name} in this lab")))
    }

    /// Every process the lab started itself, with what it is (the supervisors start the rest).
    pub fn processes(&self) -> Vec<(String, &Pid)> {
        let mut v: Vec<(String, &Pid)> =
            self.clusters.iter().filter_map(|c| c.supervisor.as_ref().map(|p| (format!("{} (supervisor and its components)", c.name), p))).collect();
        if let Some(p) = &self.dns.pid {
            v.push(("PowerDNS".to_string(), p));
        }
        v
    }

    pub fn any_alive(&self) -> bool {
        self.processes().iter().any(|(_, p)| p.is_alive())
    }
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename {}", tmp.display())))
}

/// A kube client for a lab kubeconfig, with short timeouts so a dead global answers quickly.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, LabError> {
    let kube = |what: &str| {
        let what = format!("{what} {}", kubeconfig.display());
        move |source: kube::Error| LabError::Kube { what, source }
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| LabError::Failed(format!("read {}: {e}", kubeconfig.display())))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| LabError::Failed(format!("load {}: {e}", kubeconfig.display())))?;
    cfg.connect_timeout = Some(Duration::from_secs(2));
    cfg.read_timeout = Some(Duration::from_secs(5));
    kube::Client::try_from(cfg).map_err(kube("build a client from"))
}

/// The `drctl` binary each global runs as its controller: the one next to this `drctl-lab`,
/// else the first on `PATH`.
pub fn drctl_binary() -> Result<PathBuf, LabError> {
    drctl::lab_view::sibling_or_on_path("drctl").ok_or_else(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        LabError::Failed(format!("no drctl binary next to {} nor on PATH: build it with `cargo build --workspace --bins`", exe.display()))
    })
}

pub use drctl::lab_view::default_dir;

/// Stops everything the lab in `dir` started; safe to run twice.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub fn down(dir: &Path, o: &out::Out) -> Result<(), LabError> {
    let Some(mut state) = LabState::load(dir)? else {
        o.info(&format!("no lab in {}: nothing to stop", dir.display()));
        return Ok(());
    };
    let mut stopped = 0;
    for (what, pid) in state.processes() {
        if pid.is_alive() {
            // A supervisor stops its components first (5 s grace each).
            pid.stop(Duration::from_secs(60));
            o.ok(&format!("stopped {what} (pid {})", pid.pid));
            stopped += 1;
        }
    }
    state.dns.pid = None;
    for c in &mut state.clusters {
        c.supervisor = None;
    }
    state.save()?;
    if stopped == 0 {
        o.info("nothing was running");
    }
    o.info(&format!("logs and data stay in {}", dir.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_alive_only_as_the_program_it_was_started_as() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = Pid::of(&child, "sleep");
        // /proc may show the pre-exec image for a moment after spawn returns.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !pid.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(pid.is_alive());
        assert!(!Pid { pid: pid.pid, program: "etcd".into() }.is_alive(), "a reused pid is not ours");
        pid.stop(Duration::from_secs(2));
        let _ = child.wait();
        assert!(!pid.is_alive());
        pid.stop(Duration::from_secs(1));
    }
}
