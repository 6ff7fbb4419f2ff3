//! `drctl lab up`: start two globals, PowerDNS, the Git repo, the stand-in for Argo CD and the
//! controllers, seed workloads on the primary, and wait until the pair is steady.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::secret::Secret;
use crate::topology::{DRTopologyStatus, Phase, Role};

use super::out::Out;
use super::procs::{self, Lifetime};
use super::{io_err, repo, standin, ClusterState, ControllerState, DnsState, LabError, LabState, Pid, CLUSTERS, DOMAIN, ZONE};

const STEADY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a lab in `dir`; on failure stops whatever it had started.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub async fn up(dir: &Path, o: &Out) -> Result<LabState, LabError> {
    prepare_dir(dir)?;
    let dir = dir.canonicalize().map_err(io_err(format!("resolve {}", dir.display())))?;
    let mut started = Vec::new();
    match start(&dir, o, &mut started).await {
        Ok(state) => Ok(state),
        Err(e) => {
            o.warn(&format!("lab up failed; stopping the {} processes it started", started.len()));
            for p in started.iter().rev() {
                p.stop(Duration::from_secs(3));
            }
            Err(e)
        }
    }
}

/// An empty directory, or one holding a stopped lab (which is wiped).
fn prepare_dir(dir: &Path) -> Result<(), LabError> {
    if let Some(old) = LabState::load(dir)? {
        if old.any_alive() {
            return Err(LabError::Failed(format!(
                "a lab is running in {}: `drctl lab down --dir {}` first",
                dir.display(),
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).map_err(io_err(format!("remove the old lab in {}", dir.display())))?;
    } else if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(LabError::Failed(format!("{} is not empty and holds no lab; pick another --dir", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))
}

fn mkdir(p: PathBuf) -> Result<PathBuf, LabError> {
    std::fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
    Ok(p)
}

/// Runs a command that must succeed; its stdout.
pub(crate) fn run_ok(mut cmd: Command, what: &str) -> Result<String, LabError> {
    let out = cmd.output().map_err(io_err(format!("run {what}")))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start(dir: &Path, o: &Out, started: &mut Vec<Pid>) -> Result<LabState, LabError> {
    o.heading(&format!("Starting the drctl DR lab in {}", dir.display()));
    o.step("finding kube-apiserver and kubectl (hack/build-kube.sh builds them once)");
    let kube_bin = procs::kube_bin_dir()?;
    let drctl = std::env::current_exe().map_err(io_err("find the drctl binary"))?;

    o.step("starting two etcds");
    let mut etcds = Vec::new();
    for (name, _) in CLUSTERS {
        let e = procs::EtcdServer::on_free_ports(&mkdir(dir.join(name).join("etcd"))?)?;
        let child = e.spawn(Lifetime::Detached)?;
        started.push(Pid::of(&child, "etcd"));
        etcds.push((e, child));
    }
    for (e, child) in &mut etcds {
        e.wait_ready(child)?;
    }
    o.ok(&format!("etcd up: {}", etcds.iter().map(|(e, _)| e.client_url.as_str()).collect::<Vec<_>>().join(", ")));

    o.step("starting two kube-apiservers (generated CA, serving and admin certificates)");
    let mut apis = Vec::new();
    for ((name, _), (e, _)) in CLUSTERS.iter().zip(&etcds) {
        let a = procs::ApiServer::prepare(&mkdir(dir.join(name).join("apiserver"))?, &e.client_url)?;
        let child = a.spawn(&kube_bin, Lifetime::Detached)?;
        started.push(Pid::of(&child, "kube-apiserver"));
        apis.push((a, child));
    }
    for (a, child) in &mut apis {
        a.wait_ready(&kube_bin, child)?;
    }
    o.ok(&format!("kube-apiservers up: {}", apis.iter().map(|(a, _)| a.url.as_str()).collect::<Vec<_>>().join(", ")));

    o.step(&format!("starting PowerDNS with zone {ZONE}"));
    let (dns, dns_pid) = start_powerdns(&mkdir(dir.join("pdns"))?, started)?;
    o.ok(&format!("PowerDNS up: DNS {}, API {}; {DOMAIN} A {}", dns.server, dns.api_url, CLUSTERS[0].1));

    let mut clusters: Vec<ClusterState> = Vec::new();
    for (((name, vip), (etcd, etcd_child)), (api, api_child)) in CLUSTERS.iter().zip(etcds).zip(apis) {
        let listen = format!("127.0.0.1:{}", procs::free_port()?)
            .parse()
            .map_err(|e| LabError::Failed(format!("controller address: {e}")))?;
        clusters.push(ClusterState {
            name: name.to_string(),
            vip: vip.to_string(),
            etcd,
            etcd_pid: Some(Pid::of(&etcd_child, "etcd")),
            api,
            api_pid: Some(Pid::of(&api_child, "kube-apiserver")),
            controller: ControllerState { listen, log: dir.join(name).join("controller.log"), pid: None },
        });
    }
    let mut state = LabState {
        dir: dir.to_path_buf(),
        kube_bin,
        domain: DOMAIN.to_string(),
        repo: dir.join("repo"),
        file: PathBuf::from(crate::gitops::DEFAULT_FILE),
        dns: DnsState { pid: Some(dns_pid), ..dns },
        clusters,
        standin: None,
        standin_log: dir.join("argo-standin.log"),
    };
    state.save()?;

    o.step("installing the CRD, namespaces, peer kubeconfig and PowerDNS API key Secrets in both globals");
    for (i, c) in state.clusters.iter().enumerate() {
        let peer = &state.clusters[1 - i];
        prepare_global(&state, c, peer)?;
    }
    o.step(&format!("seeding workloads on {} (namespaces, ConfigMaps, a CRD and custom resources)", state.clusters[0].name));
    seed(&state, &state.clusters[0])?;
    o.ok("globals prepared");

    o.step("creating the Git repository (gitops/ layout, the lab's topology)");
    // Both globals share one encryption config, as the runbook requires.
    for c in &state.clusters {
        let path = encryption_config(&state, c);
        std::fs::write(&path, ENCRYPTION_CONFIG).map_err(io_err(format!("write {}", path.display())))?;
    }
    let topology = topology_yaml(&state);
    let first = repo::create(&state.repo, &repo::layout_source()?, &state.file, &topology)?;
    o.ok(&format!("repo {} at {} on {}", state.repo.display(), &first.to_string()[..12], repo::MAIN));

    o.step("starting the stand-in for Argo CD (applies topology/drtopology.yaml from main to both globals)");
    let mut cmd = Command::new(&drctl);
    cmd.args(["lab", "argo-standin", "--dir"]).arg(dir).env("DRCTL_LOG", "info");
    let child = procs::spawn(cmd, &state.standin_log, Lifetime::Detached)?;
    let pid = Pid::of(&child, &program_name(&drctl));
    started.push(pid.clone());
    state.standin = Some(pid);
    state.save()?;
    wait_applied(&state, &first.to_string(), Duration::from_secs(30)).await?;
    o.ok("stand-in for Argo CD applied the topology to both globals");

    o.step("starting one drctl controller per global");
    for c in &mut state.clusters {
        let pid = start_controller(&drctl, c)?;
        started.push(pid.clone());
        c.controller.pid = Some(pid);
    }
    state.save()?;
    let (a, b) = (&state.clusters[0], &state.clusters[1]);
    wait_status(a, "primary and steady", STEADY_TIMEOUT, |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await?;
    o.ok(&format!("{} is Primary and Steady", a.name));
    wait_status(b, "standby in sync", STEADY_TIMEOUT, standby_in_sync).await?;
    o.ok(&format!("{} is Standby, Steady, 0 missed keys: the mirror copied the seeded workloads", b.name));
    print_summary(&state, o);
    Ok(state)
}

fn program_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "drctl".into())
}

fn start_powerdns(dir: &Path, started: &mut Vec<Pid>) -> Result<(DnsState, Pid), LabError> {
    let api_key_file = dir.join("api-key");
    procs::write_private(&api_key_file, &procs::random_b64(18)?)?;
    let key = Secret::new(std::fs::read(&api_key_file).map_err(io_err("read the PowerDNS API key"))?);
    // A free port can be taken before pdns binds it: retry with new ports.
    for _ in 0..3 {
        let p = procs::PowerDns::prepare(dir, ZONE, key.clone())?;
        let mut child = p.spawn(Lifetime::Detached)?;
        let pid = Pid::of(&child, "pdns_server");
        started.push(pid.clone());
        if p.wait_ready(&mut child)? {
            p.create_zone()?;
            p.set(DOMAIN, "A", 30, &[CLUSTERS[0].1])?;
            let state = DnsState { server: p.dns, api_url: p.api_url(), api_key_file, log: p.log(), pid: None };
            return Ok((state, pid));
        }
        pid.kill();
    }
    Err(LabError::Failed(format!("pdns_server did not start:\n{}", procs::tail(&dir.join("pdns.log")))))
}

fn prepare_global(state: &LabState, c: &ClusterState, peer: &ClusterState) -> Result<(), LabError> {
    let crd = crate::topology::crd_yaml().map_err(|e| LabError::Failed(format!("render the CRD: {e}")))?;
    procs::kubectl_apply(c.kubectl(state), &crd)?;
    procs::kubectl_apply(c.kubectl(state), SYSTEM_NAMESPACES)?;
    procs::kubectl_apply(c.kubectl(state), RESTART_TARGET)?;
    let mut cmd = c.kubectl(state);
    cmd.args(["-n", "drctl-system", "create", "secret", "generic", &format!("{}-kubeconfig", peer.name)])
        .arg(format!("--from-file=kubeconfig={}", peer.api.kubeconfig.display()));
    run_ok(cmd, "create the peer kubeconfig Secret")?;
    let mut cmd = c.kubectl(state);
    cmd.args(["-n", "drctl-system", "create", "secret", "generic", "pdns-api"])
        .arg(format!("--from-file=apiKey={}", state.dns.api_key_file.display()));
    run_ok(cmd, "create the PowerDNS API key Secret")?;
    c.api.wait_crd_established(&state.kube_bin, "drtopologies.drctl.io")?;
    Ok(())
}

fn seed(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    procs::kubectl_apply(c.kubectl(state), WORKLOADS)?;
    c.api.wait_crd_established(&state.kube_bin, "widgets.example.com")?;
    procs::kubectl_apply(c.kubectl(state), WIDGETS)?;
    Ok(())
}

pub(crate) fn start_controller(drctl: &Path, c: &ClusterState) -> Result<Pid, LabError> {
    let mut cmd = Command::new(drctl);
    cmd.arg("controller")
        .arg(format!("--cluster-name={}", c.name))
        .arg(format!("--kubeconfig={}", c.api.kubeconfig.display()))
        .arg(format!("--listen={}", c.controller.listen))
        // A lab has no kubelet: restarted Deployments never become ready, so do not wait long.
        .args(["--lease-seconds=6", "--restart-ready-timeout=1s"])
        .env("DRCTL_LOG", "info,drctl=debug");
    let child = procs::spawn(cmd, &c.controller.log, Lifetime::Detached)?;
    Ok(Pid::of(&child, &program_name(drctl)))
}

/// Waits until the stand-in for Argo CD has applied `commit` to every live cluster in `to`.
pub(crate) async fn wait_applied(state: &LabState, commit: &str, timeout: Duration) -> Result<(), LabError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let record = standin::read_record(&state.dir);
        if state.clusters.iter().all(|c| record.clusters.get(&c.name).is_some_and(|a| a.commit == commit)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(LabError::Failed(format!(
        "the stand-in for Argo CD did not apply {commit} within {timeout:?}; see {}",
        state.standin_log.display()
    )))
}

pub(crate) fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

/// Polls `c`'s DRTopology status until `pred` holds.
pub(crate) async fn wait_status(
    c: &ClusterState,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&DRTopologyStatus) -> bool,
) -> Result<DRTopologyStatus, LabError> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(Some(t)) = c.topology().await {
            if let Some(s) = t.status {
                if pred(&s) {
                    return Ok(s);
                }
                last = Some(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(LabError::Failed(format!(
        "{}: not {what} within {timeout:?}; last status {}; see {}",
        c.name,
        serde_json::to_string(&last).unwrap_or_default(),
        c.controller.log.display()
    )))
}

fn encryption_config(state: &LabState, c: &ClusterState) -> PathBuf {
    state.dir.join(&c.name).join("encryption-provider.conf")
}

/// The lab's `topology/drtopology.yaml`: the real endpoints of this machine's lab.
fn topology_yaml(state: &LabState) -> String {
    let mut clusters = String::new();
    for c in &state.clusters {
        let enc = encryption_config(state, c);
        clusters.push_str(&format!(
            "    - name: {}\n      vip: {}\n      apiServer: {}\n      kubeconfigSecretRef: {{name: {}-kubeconfig, namespace: drctl-system}}\n      etcd:\n        endpoints: [{}]\n      encryptionConfigPath: {}\n",
            c.name,
            c.vip,
            c.api.url,
            c.name,
            c.etcd.client_url,
            enc.display()
        ));
    }
    format!(
        "# The DR topology of the lab's two global clusters. The stand-in for Argo CD applies this file
# from main to both globals (in production: Argo CD, one instance per global).
#
# To fail over, change ONLY spec.primary in a pull request (`drctl promote CLUSTER` prepares it;
# `drctl lab flip` does it and merges). VIPs are DNS data in the lab: nothing listens on them.
apiVersion: drctl.io/v1alpha1
kind: DRTopology
metadata:
  name: {name}
  annotations:
    argocd.argoproj.io/sync-options: Delete=false,Prune=false,SkipDryRunOnMissingResource=true
    drctl.io/health-max-lag-seconds: \"60\"
spec:
  primary: {primary}   # the cluster the platform domain points at
  platform:
    domain: {DOMAIN}
    ttl: 30
  clusters:
{clusters}  sync:
    checkInterval: 2s
  restarts:
    - name: cluster-transformer
      namespace: cpaas-system
      labelSelector: service_name=cluster-transformer
      method: rolloutRestart
      when: [failover]
  dns:
    powerdns:
      apiUrl: {api}
      zone: {ZONE}
      apiKeySecretRef: {{name: pdns-api, namespace: drctl-system}}
    verify:
      resolvers: [\"{resolver}\"]
      timeout: 20s
  failover:
    demotionTimeout: 10s
",
        name = super::TOPOLOGY,
        primary = state.clusters[0].name,
        api = state.dns.api_url,
        resolver = state.dns.server,
    )
}

fn print_summary(state: &LabState, o: &Out) {
    o.heading("The lab is up");
    let mut t = String::new();
    for (i, c) in state.clusters.iter().enumerate() {
        let role = if i == 0 { o.green("primary") } else { o.yellow("standby") };
        t.push_str(&format!(
            "  {}  {role}  VIP {}\n      apiserver  {}   (kubeconfig {})\n      etcd       {}\n      controller http://{}/check   (log {})\n",
            o.bold(&c.name),
            c.vip,
            c.api.url,
            c.api.kubeconfig.display(),
            c.etcd.client_url,
            c.controller.listen,
            c.controller.log.display()
        ));
    }
    t.push_str(&format!(
        "  {}  DNS {}  API {}   {} -> {}\n",
        o.bold("PowerDNS"),
        state.dns.server,
        state.dns.api_url,
        state.domain,
        state.clusters[0].vip
    ));
    t.push_str(&format!("  {}  {} (branch {}), file {}\n", o.bold("Git repo"), state.repo.display(), repo::MAIN, state.file.display()));
    t.push_str(&format!(
        "  {}  polls {} every {:?} (log {})\n",
        o.bold("stand-in for Argo CD"),
        repo::MAIN,
        standin::POLL,
        state.standin_log.display()
    ));
    let d = state.dir.display();
    t.push_str(&format!(
        "\n  Next:  drctl lab flip --dir {d}      (a pull request flips spec.primary)\n         drctl lab disaster --dir {d}  (the primary dies, then the flip)\n         drctl lab recover --dir {d}   (restart what disaster stopped)\n         drctl lab status --dir {d}\n         drctl lab down --dir {d}\n         {} --kubeconfig {} get drtopology\n",
        state.kube_bin.join("kubectl").display(),
        state.clusters[0].api.kubeconfig.display()
    ));
    o.raw(&t);
}

const ENCRYPTION_CONFIG: &str = "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - identity: {}
";

const SYSTEM_NAMESPACES: &str = "apiVersion: v1
kind: Namespace
metadata: {name: drctl-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: cpaas-system}
";

/// What the topology's `when: failover` restart targets; cpaas-system is never replicated, so
/// each global has its own.
const RESTART_TARGET: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: cluster-transformer
  namespace: cpaas-system
  labels: {service_name: cluster-transformer}
spec:
  replicas: 1
  selector: {matchLabels: {app: cluster-transformer}}
  template:
    metadata: {labels: {app: cluster-transformer}}
    spec:
      containers: [{name: transformer, image: busybox}]
";

const WORKLOADS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team-a}
data: {owner: team-a, tier: gold}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team-b}
data: {owner: team-b, tier: silver}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

const WIDGETS: &str = "apiVersion: example.com/v1
kind: Widget
metadata: {name: blue, namespace: team-a}
spec: {size: 3}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: green, namespace: team-b}
spec: {size: 5}
";

/// Starts the stopped globals again on their data and ports (after `drctl lab disaster`): etcd and
/// apiserver first, then, once the stand-in for Argo CD has applied `main` to them, their
/// controllers, which find they are no longer primary and mirror from the new one.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub async fn recover(dir: &Path, o: &Out) -> Result<(), LabError> {
    let mut state = LabState::require(dir)?;
    let drctl = std::env::current_exe().map_err(io_err("find the drctl binary"))?;
    let down: Vec<usize> = (0..state.clusters.len())
        .filter(|&i| !state.clusters[i].api_pid.as_ref().is_some_and(Pid::is_alive))
        .collect();
    if down.is_empty() {
        o.info("every global is running: nothing to recover");
        return Ok(());
    }
    for &i in &down {
        let kube_bin = state.kube_bin.clone();
        let c = &mut state.clusters[i];
        o.heading(&format!("Recovering {}", c.name));
        if !c.etcd_pid.as_ref().is_some_and(Pid::is_alive) {
            let mut child = c.etcd.spawn(Lifetime::Detached)?;
            c.etcd_pid = Some(Pid::of(&child, "etcd"));
            c.etcd.wait_ready(&mut child)?;
            o.ok(&format!("{}'s etcd is back on its data at {}", c.name, c.etcd.client_url));
        }
        let mut child = c.api.spawn(&kube_bin, Lifetime::Detached)?;
        c.api_pid = Some(Pid::of(&child, "kube-apiserver"));
        c.api.wait_ready(&kube_bin, &mut child)?;
        o.ok(&format!("{}'s kube-apiserver is back at {}", c.name, c.api.url));
    }
    state.save()?;
    let git = git2::Repository::open(&state.repo).map_err(super::git_err(format!("open {}", state.repo.display())))?;
    let (main, _) = repo::read_main(&git, &state.file)?;
    o.step("waiting for the stand-in for Argo CD to apply main to the recovered globals");
    wait_applied(&state, &main.to_string(), Duration::from_secs(30)).await?;
    let restarted = Timestamp::now();
    for &i in &down {
        let c = &mut state.clusters[i];
        if let Some(p) = c.controller.pid.take() {
            p.stop(Duration::from_secs(3));
        }
        c.controller.pid = Some(start_controller(&drctl, c)?);
    }
    state.save()?;
    for &i in &down {
        let c = &state.clusters[i];
        // A check from before the disaster must not count: only one this controller ran.
        let fresh = |s: &DRTopologyStatus| {
            standby_in_sync(s)
                && s.sync.as_ref().and_then(|y| y.last_check_time.as_deref()).and_then(|t| t.parse::<Timestamp>().ok()).is_some_and(|t| t >= restarted)
        };
        let s = wait_status(c, "standby in sync", STEADY_TIMEOUT, fresh).await?;
        let missed = s.sync.and_then(|y| y.missed_keys).unwrap_or_default();
        o.ok(&format!("{} is Standby, Steady, {missed} missed keys: it mirrors from the primary", c.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn lab_state() -> LabState {
        let dir = PathBuf::from("/lab");
        let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
        let clusters = CLUSTERS
            .iter()
            .enumerate()
            .map(|(i, (name, vip))| {
                let port = 2000 + 10 * i as u16;
                ClusterState {
                    name: name.to_string(),
                    vip: vip.to_string(),
                    etcd: procs::EtcdServer {
                        dir: dir.join(name).join("etcd"),
                        client_url: format!("http://127.0.0.1:{port}"),
                        peer_url: format!("http://127.0.0.1:{}", port + 1),
                        health_addr: None,
                        tls: None,
                    },
                    etcd_pid: None,
                    api: procs::ApiServer {
                        dir: dir.join(name).join("apiserver"),
                        port: port + 2,
                        url: format!("https://127.0.0.1:{}", port + 2),
                        etcd_url: format!("http://127.0.0.1:{port}"),
                        kubeconfig: dir.join(name).join("apiserver/kubeconfig"),
                    },
                    api_pid: None,
                    controller: ControllerState { listen: addr(port + 3), log: dir.join(name).join("controller.log"), pid: None },
                }
            })
            .collect();
        LabState {
            dir: dir.clone(),
            kube_bin: PathBuf::from("/kube"),
            domain: DOMAIN.into(),
            repo: dir.join("repo"),
            file: PathBuf::from(crate::gitops::DEFAULT_FILE),
            dns: DnsState { server: addr(53), api_url: "http://127.0.0.1:8081".into(), api_key_file: dir.join("pdns/api-key"), log: dir.join("pdns/pdns.log"), pid: None },
            clusters,
            standin: None,
            standin_log: dir.join("argo-standin.log"),
        }
    }

    #[test]
    fn the_lab_topology_is_valid_and_promote_can_flip_it() {
        let state = lab_state();
        let text = topology_yaml(&state);
        let reports = crate::validate::validate_text(&text).expect("YAML");
        assert_eq!(reports.len(), 1);
        assert!(reports[0].errors.is_empty(), "{:?}", reports[0].errors);
        let t = reports[0].topology.as_ref().expect("topology");
        assert_eq!(t.spec.primary, "global-a");
        assert_eq!(t.spec.clusters.iter().map(|c| c.vip.as_str()).collect::<Vec<_>>(), ["127.0.0.10", "127.0.0.20"]);
        assert_eq!(t.spec.clusters[1].api_server, "https://127.0.0.1:2012");
        assert_eq!(crate::gitops::find_primary(&text).expect("primary line").value, "global-a");
        assert!(text.contains("stand-in for Argo CD"), "the file says who applies it");
    }

    #[test]
    fn lab_state_round_trips_without_the_api_key() {
        let state = lab_state();
        let json = serde_json::to_string(&state).expect("json");
        let back: LabState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.clusters[1].api.url, state.clusters[1].api.url);
        assert!(json.contains("apiKeyFile") && !json.contains("apiKey\""), "{json}");
    }
}
