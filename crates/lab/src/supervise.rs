//! One supervisor per lab global (`drctl-lab supervise`, started by `lab up` and `lab recover`):
//! it starts the global's components in dependency order and restarts any that exits, with
//! backoff, the way a kubelet restarts static pods and pods; every start and exit is recorded in
//! `DIR/<cluster>/components.json` and logged, so an exit is never silent. The drctl controller
//! starts only once the global's own Argo CD has synced `main` (a controller on a stale spec
//! would act on a role Git has already taken away). Killing the supervisor takes the whole
//! global down with it (each child dies with its supervisor thread, the etcd load balancer with
//! the process): that is `lab disaster`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::platform::{self, Binaries};
use super::procs::{self, Lifetime};
use super::tcp_lb::{Backend, TcpLb};
use super::{argo, io_err, repo, write_atomic, ClusterState, LabError, LabEtcd, LabState, Pid};

/// The processes of one global, in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Member `i` of the global's etcd ([`LabEtcd`]); each is restarted on its own.
    Etcd(usize),
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kwok,
    Redis,
    ArgocdRepoServer,
    ArgocdApplicationController,
    DrctlController,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Etcd(0),
        Kind::Etcd(1),
        Kind::Etcd(2),
        Kind::KubeApiserver,
        Kind::KubeControllerManager,
        Kind::KubeScheduler,
        Kind::Kwok,
        Kind::Redis,
        Kind::ArgocdRepoServer,
        Kind::ArgocdApplicationController,
        Kind::DrctlController,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd(i) => ETCD_NAMES[i.min(ETCD_NAMES.len() - 1)],
            Kind::KubeApiserver => "kube-apiserver",
            Kind::KubeControllerManager => "kube-controller-manager",
            Kind::KubeScheduler => "kube-scheduler",
            Kind::Kwok => "kwok",
            Kind::Redis => "redis",
            Kind::ArgocdRepoServer => "argocd-repo-server",
            Kind::ArgocdApplicationController => "argocd-application-controller",
            Kind::DrctlController => "drctl-controller",
        }
    }

    /// What must hold before the first start.
    fn after(self) -> Gate {
        match self {
            // Members start together: one alone would wait for its quorum.
            Kind::Etcd(_) => Gate::Nothing,
            Kind::KubeApiserver => Gate::EtcdHealthy,
            Kind::DrctlController => Gate::ArgoSyncedMain,
            // Argo CD exits at start without its config objects (`lab up` installs them).
            Kind::ArgocdRepoServer | Kind::ArgocdApplicationController => Gate::ArgoConfigured,
            _ => Gate::ApiserverReady,
        }
    }
}

/// The component names of the etcd members, as `components.json` and `lab status` show them.
const ETCD_NAMES: [&str; LabEtcd::MEMBERS] = ["etcd-0", "etcd-1", "etcd-2"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Nothing,
    EtcdHealthy,
    ApiserverReady,
    ArgoConfigured,
    ArgoSyncedMain,
}

/// One component as the supervisor last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentRecord {
    pub name: String,
    /// The program's file name, checked before any signal (pids are reused).
    pub program: String,
    pub pid: Option<u32>,
    pub running: bool,
    /// Exits after which it was started again.
    pub restarts: u32,
    /// How it last ended, and when (RFC 3339).
    pub last_exit: Option<String>,
    pub log: PathBuf,
}

impl ComponentRecord {
    pub fn pid(&self) -> Option<Pid> {
        self.pid.map(|pid| Pid { pid, program: self.program.clone() })
    }

    /// Running by the record and by /proc (a killed supervisor leaves a stale record).
    pub fn alive(&self) -> bool {
        self.running && self.pid().is_some_and(|p| p.is_alive())
    }
}

pub fn record_path(dir: &Path, cluster: &str) -> PathBuf {
    dir.join(cluster).join("components.json")
}

/// The supervisor's record of `cluster`, empty when it never ran.
pub fn read_records(dir: &Path, cluster: &str) -> Vec<ComponentRecord> {
    std::fs::read_to_string(record_path(dir, cluster)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// The command line of one component of `c`.
fn command(kind: Kind, state: &LabState, c: &ClusterState, drctl: &Path) -> Command {
    let (b, p): (&Binaries, &platform::Platform) = (&state.bins, &c.platform);
    match kind {
        Kind::Etcd(i) => c.etcd.members[i].command(),
        Kind::KubeApiserver => c.api.command(&b.kube),
        Kind::KubeControllerManager => p.controller_manager(b, &c.api),
        Kind::KubeScheduler => p.scheduler(b, &c.api),
        Kind::Kwok => p.kwok(b, &c.api),
        Kind::Redis => p.redis(),
        Kind::ArgocdRepoServer => p.repo_server(b, &c.api),
        Kind::ArgocdApplicationController => p.application_controller(b, &c.api, platform::ARGOCD_NAMESPACE),
        Kind::DrctlController => {
            let mut cmd = Command::new(drctl);
            cmd.arg("controller")
                .arg(format!("--cluster-name={}", c.name))
                .arg(format!("--kubeconfig={}", c.api.kubeconfig.display()))
                .arg(format!("--listen={}", c.controller.listen))
                // Explicit: a lab host that is itself a Pod has POD_NAMESPACE and a ServiceAccount file.
                .arg("--namespace=drctl-system")
                .arg("--lease-seconds=6")
                .env("DRCTL_LOG", "info,drctl=debug");
            cmd
        }
    }
}

fn log_of(kind: Kind, c: &ClusterState) -> PathBuf {
    match kind {
        Kind::Etcd(i) => c.etcd.members[i].log(),
        Kind::KubeApiserver => c.api.log(),
        Kind::DrctlController => c.controller.log.clone(),
        k => c.platform.log(k.name()),
    }
}

fn program_of(cmd: &Command) -> String {
    Path::new(cmd.get_program()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Restart delay after the n-th consecutive quick exit: 1 s doubling to 30 s (a kubelet uses
/// 10 s to 5 min; a lab wants to be quick).
pub fn backoff(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.min(5)).min(Duration::from_secs(30))
}

/// A run this long counts as healthy: the next exit starts the backoff anew.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

struct Shared {
    records: Mutex<Vec<ComponentRecord>>,
    path: PathBuf,
    stopping: AtomicBool,
}

impl Shared {
    fn update(&self, i: usize, f: impl FnOnce(&mut ComponentRecord)) {
        let Ok(mut records) = self.records.lock() else { return };
        f(&mut records[i]);
        if let Ok(text) = serde_json::to_string_pretty(&*records) {
            if let Err(e) = write_atomic(&self.path, &text) {
                warn!(error = %e, "cannot write the component record");
            }
        }
    }
}

/// Runs the supervisor of `cluster` until SIGTERM/SIGINT, then stops every component.
pub async fn run(dir: &Path, cluster: &str) -> Result<(), LabError> {
    let state = LabState::require(dir)?;
    let c = state.cluster(cluster)?.clone();
    let drctl = super::drctl_binary()?;
    if c.etcd.members.len() != LabEtcd::MEMBERS {
        return Err(LabError::Failed(format!(
            "{cluster}'s etcd in {} has {} members, not {}: this lab predates three-member etcds; run `drctl lab down` and `drctl lab up`",
            dir.display(),
            c.etcd.members.len(),
            LabEtcd::MEMBERS
        )));
    }
    // The load balancer in front of the members, on the fixed port the topology names; a thread
    // of this process, so it dies with the global (`lab disaster`).
    let backends = c.etcd.member_addrs()?.into_iter().map(Backend::direct).collect();
    let lb_addr = c.etcd.lb.parse().map_err(|e| LabError::Failed(format!("etcd load balancer address {}: {e}", c.etcd.lb)))?;
    let lb = TcpLb::bind(lb_addr, backends).map_err(io_err(format!("start the etcd load balancer on {}", c.etcd.lb)))?;
    info!(cluster, addr = %lb.addr, members = %c.etcd.member_urls(), "etcd load balancer up");
    for d in c.platform.argocd_dirs() {
        std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
    }
    let records = Kind::ALL
        .iter()
        .map(|&k| ComponentRecord { name: k.name().into(), program: program_of(&command(k, &state, &c, &drctl)), log: log_of(k, &c), ..Default::default() })
        .collect();
    let shared = Arc::new(Shared { records: Mutex::new(records), path: record_path(dir, cluster), stopping: AtomicBool::new(false) });
    info!(cluster, "supervising {} components", Kind::ALL.len());
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let (shared, state, c, drctl) = (shared.clone(), state.clone(), c.clone(), drctl.clone());
        // A thread per component: each child gets PR_SET_PDEATHSIG bound to the thread that
        // spawned it, so it must live as long as the component does.
        std::thread::Builder::new()
            .name(kind.name().into())
            .spawn(move || keep_running(kind, i, &shared, &state, &c, &drctl))
            .map_err(io_err(format!("start the {} thread", kind.name())))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(io_err("watch SIGTERM"))?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    shared.stopping.store(true, Ordering::SeqCst);
    info!(cluster, "stopping every component");
    let pids: Vec<Pid> = shared.records.lock().map(|r| r.iter().rev().filter_map(ComponentRecord::pid).collect()).unwrap_or_default();
    // In reverse start order, so the controller stops before the apiserver it talks to.
    for p in &pids {
        p.stop(Duration::from_secs(5));
    }
    Ok(())
}

fn keep_running(kind: Kind, i: usize, shared: &Shared, state: &LabState, c: &ClusterState, drctl: &Path) {
    wait_gate(kind.after(), shared, state, c);
    let mut consecutive = 0u32;
    while !shared.stopping.load(Ordering::SeqCst) {
        let cmd = command(kind, state, c, drctl);
        let log = log_of(kind, c);
        let started = Instant::now();
        let outcome = match procs::spawn(cmd, &log, Lifetime::WithParent) {
            Ok(mut child) => {
                shared.update(i, |r| {
                    r.pid = Some(child.id());
                    r.running = true;
                });
                info!(component = kind.name(), pid = child.id(), "started");
                child.wait().map(|s| s.to_string()).unwrap_or_else(|e| format!("wait failed: {e}"))
            }
            Err(e) => format!("could not start: {e}"),
        };
        let at = Timestamp::now();
        shared.update(i, |r| {
            r.running = false;
            r.last_exit = Some(format!("{outcome} at {at}"));
        });
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        consecutive = if started.elapsed() >= HEALTHY_RUN { 0 } else { consecutive + 1 };
        let delay = backoff(consecutive);
        warn!(component = kind.name(), outcome = %outcome, log = %log.display(), "exited; restarting in {delay:?}");
        shared.update(i, |r| r.restarts += 1);
        sleep_unless_stopping(shared, delay);
    }
}

fn sleep_unless_stopping(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gate(gate: Gate, shared: &Shared, state: &LabState, c: &ClusterState) {
    let ready = || match gate {
        Gate::Nothing => true,
        Gate::EtcdHealthy => c.etcd.quorum(),
        Gate::ApiserverReady => c.api.ready(),
        Gate::ArgoConfigured => argo::configured(state, c),
        Gate::ArgoSyncedMain => argo_synced_main(state, c),
    };
    while !shared.stopping.load(Ordering::SeqCst) && !ready() {
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// This global's Argo CD has applied the commit `main` points at now.
fn argo_synced_main(state: &LabState, c: &ClusterState) -> bool {
    let Ok(git) = git2::Repository::open(&state.repo) else { return false };
    let Ok((main, _)) = repo::read_main(&git, &state.file) else { return false };
    argo::application(state, c).ok().flatten().is_some_and(|a| a.synced_to(&main.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_one_second_to_thirty() {
        let delays: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn the_controller_waits_for_argo_cd_and_the_control_plane_for_the_apiserver() {
        assert_eq!(Kind::Etcd(0).after(), Gate::Nothing);
        assert_eq!(Kind::KubeApiserver.after(), Gate::EtcdHealthy);
        assert_eq!(Kind::DrctlController.after(), Gate::ArgoSyncedMain);
        for k in [Kind::KubeControllerManager, Kind::KubeScheduler, Kind::Kwok, Kind::Redis] {
            assert_eq!(k.after(), Gate::ApiserverReady, "{k:?}");
        }
        assert_eq!(Kind::ArgocdApplicationController.after(), Gate::ArgoConfigured);
    }

    #[test]
    fn every_etcd_member_is_a_component_of_its_own() {
        let etcds: Vec<&str> = Kind::ALL.iter().filter(|k| matches!(k, Kind::Etcd(_))).map(|k| k.name()).collect();
        assert_eq!(etcds, ["etcd-0", "etcd-1", "etcd-2"]);
        assert_eq!(Kind::ALL[..LabEtcd::MEMBERS], [Kind::Etcd(0), Kind::Etcd(1), Kind::Etcd(2)]);
    }

    #[test]
    fn a_record_whose_process_is_gone_is_not_alive() {
        let r = ComponentRecord { name: "etcd".into(), program: "etcd".into(), pid: Some(u32::MAX - 1), running: true, ..Default::default() };
        assert!(!r.alive());
    }
}
