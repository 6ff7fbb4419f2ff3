//! `drctl lab up`: PowerDNS, the Git repo, and two globals, each a whole platform under its own
//! supervisor (control plane, kwok nodes, its own Argo CD syncing the repo, the drctl controller);
//! seed workloads on the primary, and wait until the pair is steady.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use drctl::topology::{DRTopologyStatus, Phase, Role};

use super::out::Out;
use super::platform::{self, Binaries, ARGOCD_NAMESPACE};
use super::ports;
use super::procs::{self, Lifetime};
use super::{argo, io_err, repo, ClusterState, ControllerState, DnsState, LabError, LabEtcd, LabState, Pid, CLUSTERS, DOMAIN, ZONE};

const STEADY_TIMEOUT: Duration = Duration::from_secs(180);
/// A cold global (apiserver, then Argo CD's first sync) on a loaded 2-core machine.
const GLOBAL_TIMEOUT: Duration = Duration::from_secs(180);

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
            return Err(LabError::Failed(format!("a lab is running in {}: `drctl lab down --dir {}` first", dir.display(), dir.display())));
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
        return Err(LabError::Failed(format!("{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start(dir: &Path, o: &Out, started: &mut Vec<Pid>) -> Result<LabState, LabError> {
    o.heading(&format!("Starting the drctl DR lab in {}", dir.display()));
    o.step("finding the Go-built servers: Kubernetes, Argo CD, kwok (hack/build-*.sh build them once per machine)");
    let bins = Binaries::find()?;
    // Fail now, not in each supervisor, when the controller binary is missing.
    super::drctl_binary()?;
    let lab = std::env::current_exe().map_err(io_err("find the drctl-lab binary"))?;

    o.step(&format!("starting PowerDNS with zone {ZONE}"));
    let (dns, dns_pid) = start_powerdns(&mkdir(dir.join("pdns"))?, started)?;
    o.ok(&format!("PowerDNS up: DNS {}, API {}; {DOMAIN} A {}", dns.server, dns.api_url, CLUSTERS[0].1));

    let mut clusters: Vec<ClusterState> = Vec::new();
    for (i, (name, vip)) in CLUSTERS.iter().enumerate() {
        let etcd = LabEtcd::prepare(&mkdir(dir.join(name).join("etcd"))?)?;
        // The apiserver is given every member, with its etcd client certificate.
        let mut api = procs::ApiServer::prepare(&mkdir(dir.join(name).join("apiserver"))?, &etcd.member_urls())?;
        api.etcd_tls = etcd.tls().cloned();
        let platform = platform::Platform::on_free_ports(&mkdir(dir.join(name).join("platform"))?, i)?;
        let listen = format!("127.0.0.1:{}", procs::free_port()?).parse().map_err(|e| LabError::Failed(format!("controller address: {e}")))?;
        clusters.push(ClusterState {
            name: name.to_string(),
            vip: vip.to_string(),
            etcd,
            api,
            platform,
            controller: ControllerState { listen, log: dir.join(name).join("controller.log") },
            supervisor: None,
            supervisor_log: dir.join(name).join("supervisor.log"),
        });
    }
    let mut state = LabState {
        dir: dir.to_path_buf(),
        bins,
        domain: DOMAIN.to_string(),
        repo: dir.join("repo"),
        file: PathBuf::from(drctl::gitops::DEFAULT_FILE),
        dns: DnsState { pid: Some(dns_pid), ..dns },
        clusters,
    };
    state.save()?;

    o.step("creating the Git repository (gitops/ layout, the lab's topology)");
    // Both globals share one encryption config, as the runbook requires.
    for c in &state.clusters {
        let path = encryption_config(&state, c);
        std::fs::write(&path, ENCRYPTION_CONFIG).map_err(io_err(format!("write {}", path.display())))?;
    }
    let topology = topology_yaml(&state);
    let layout = repo::layout_source()?;
    let first = repo::create(&state.repo, &layout, &state.file, &topology)?;
    o.ok(&format!("repo {} at {} on {}", state.repo.display(), &first.to_string()[..12], repo::MAIN));

    o.step("starting both globals: etcd (three mTLS members behind a load balancer), kube-apiserver, kube-controller-manager, kube-scheduler, kwok, Argo CD, drctl controller");
    for i in 0..state.clusters.len() {
        let pid = start_supervisor(&lab, &state, &state.clusters[i])?;
        started.push(pid.clone());
        state.clusters[i].supervisor = Some(pid);
    }
    state.save()?;
    for c in &state.clusters {
        wait_apiserver(c).await?;
    }
    o.ok(&format!("kube-apiservers up: {}", state.clusters.iter().map(|c| c.api.url.as_str()).collect::<Vec<_>>().join(", ")));

    o.step("installing the CRD, namespaces, Secrets, kwok nodes and Argo CD's configuration and Application in both globals");
    for (i, c) in state.clusters.iter().enumerate() {
        let peer = &state.clusters[1 - i];
        prepare_global(&state, c, peer, &layout)?;
    }
    o.step(&format!("seeding workloads on {} (namespaces, ConfigMaps, a CRD and custom resources)", state.clusters[0].name));
    seed(&state, &state.clusters[0])?;
    o.ok("globals prepared");

    o.step("waiting for each global's Argo CD to sync the topology from main (the controllers start after it)");
    for c in &state.clusters {
        let at = wait_argo_synced(&state, c, &first.to_string(), GLOBAL_TIMEOUT).await?;
        o.ok(&format!("{}'s Argo CD synced {} ({})", c.name, &first.to_string()[..12], at));
    }
    let (a, b) = (&state.clusters[0], &state.clusters[1]);
    wait_status(a, "primary and steady", STEADY_TIMEOUT, |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await?;
    o.ok(&format!("{} is Primary and Steady", a.name));
    wait_status(b, "standby in sync", STEADY_TIMEOUT, standby_in_sync).await?;
    o.ok(&format!("{} is Standby, Steady, 0 missed keys: the mirror copied the seeded workloads", b.name));
    print_summary(&state, o);
    Ok(state)
}

fn program_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "drctl-lab".into())
}

/// `drctl-lab supervise` for one global, detached; it starts (and restarts) the global's parts.
pub(crate) fn start_supervisor(lab: &Path, state: &LabState, c: &ClusterState) -> Result<Pid, LabError> {
    let mut cmd = Command::new(lab);
    cmd.args(["supervise", "--cluster", &c.name, "--dir"]).arg(&state.dir).env("DRCTL_LOG", "info");
    let child = procs::spawn(cmd, &c.supervisor_log, Lifetime::Detached)?;
    Ok(Pid::of(&child, &program_name(lab)))
}

async fn wait_apiserver(c: &ClusterState) -> Result<(), LabError> {
    let start = Instant::now();
    while start.elapsed() < GLOBAL_TIMEOUT {
        if !c.is_up() {
            return Err(LabError::Failed(format!("{}'s supervisor exited:\n{}", c.name, procs::tail(&c.supervisor_log))));
        }
        if c.api.ready() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(LabError::Failed(format!("{}'s kube-apiserver not ready within {GLOBAL_TIMEOUT:?}:\n{}", c.name, procs::tail(&c.api.log()))))
}

/// Waits until `c`'s own Argo CD has synced `commit`; returns when it finished applying it.
pub(crate) async fn wait_argo_synced(state: &LabState, c: &ClusterState, commit: &str, timeout: Duration) -> Result<String, LabError> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(Some(a)) = argo::application(state, c) {
            if a.synced_to(commit) {
                // When the lab saw it: Argo CD's own finishedAt has whole seconds only.
                return Ok(Timestamp::now().to_string());
            }
            last = Some(a);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(LabError::Failed(format!(
        "{}'s Argo CD did not sync {commit} within {timeout:?}; last Application status {}; see {}",
        c.name,
        serde_json::to_string(&last).unwrap_or_default(),
        c.platform.log("argocd-application-controller").display()
    )))
}

fn start_powerdns(dir: &Path, started: &mut Vec<Pid>) -> Result<(DnsState, Pid), LabError> {
    let api_key_file = dir.join("api-key");
    procs::write_private(&api_key_file, &procs::random_b64(18)?)?;
    let key = std::fs::read_to_string(&api_key_file).map_err(io_err("read the PowerDNS API key"))?;
    ports::on_fresh_ports("pdns_server", || {
        let p = procs::PowerDns::prepare(dir, ZONE, &key)?;
        let mut child = p.spawn(Lifetime::Detached)?;
        let pid = Pid::of(&child, "pdns_server");
        started.push(pid.clone());
        if !p.wait_ready(&mut child)? {
            pid.kill();
            return Err(LabError::Failed(procs::tail(&dir.join("pdns.log"))));
        }
        p.create_zone()?;
        p.set(DOMAIN, "A", 30, &[CLUSTERS[0].1])?;
        let state = DnsState { server: p.dns, api_url: p.api_url(), api_key_file: api_key_file.clone(), log: p.log(), pid: None };
        Ok((state, pid))
    })
    .map_err(LabError::Failed)
}

fn prepare_global(state: &LabState, c: &ClusterState, peer: &ClusterState, layout: &Path) -> Result<(), LabError> {
    let crd = drctl::topology::crd_yaml().map_err(|e| LabError::Failed(format!("render the CRD: {e}")))?;
    procs::kubectl_apply(c.kubectl(state), &crd)?;
    procs::kubectl_apply(c.kubectl(state), SYSTEM_NAMESPACES)?;
    procs::kubectl_apply(c.kubectl(state), RESTART_TARGET)?;
    procs::kubectl_apply(c.kubectl(state), &platform::nodes_yaml(&c.name))?;
    let mut cmd = c.kubectl(state);
    cmd.args(["-n", "drctl-system", "create", "secret", "generic", &format!("{}-kubeconfig", peer.name)])
        .arg(format!("--from-file=kubeconfig={}", peer.api.kubeconfig.display()));
    run_ok(cmd, "create the peer kubeconfig Secret")?;
    let mut cmd = c.kubectl(state);
    cmd.args(["-n", "drctl-system", "create", "secret", "generic", "pdns-api"]).arg(format!("--from-file=apiKey={}", state.dns.api_key_file.display()));
    run_ok(cmd, "create the PowerDNS API key Secret")?;
    // Both etcds' client certificates: a global reads the peer's etcd as a standby and writes
    // its own.
    for e in [c, peer] {
        let tls = e.etcd.tls().ok_or_else(|| LabError::Failed(format!("{}'s etcd has no client certificate", e.name)))?;
        let file = |key: &str, p: &Path| format!("--from-file={key}={}", p.display());
        let mut cmd = c.kubectl(state);
        cmd.args(["-n", "drctl-system", "create", "secret", "generic", &LabEtcd::secret_name(&e.name)]).args([
            file("ca.crt", &tls.ca),
            file("tls.crt", &tls.cert),
            file("tls.key", &tls.key),
        ]);
        run_ok(cmd, &format!("create the Secret with {}'s etcd client certificate", e.name))?;
    }
    // Argo CD: its CRDs (server-side: they are large), its config, our health check, the Application.
    for crd in ["application-crd.yaml", "appproject-crd.yaml"] {
        let mut cmd = c.kubectl(state);
        cmd.args(["apply", "--server-side", "--force-conflicts", "-f", "-"]);
        let out = procs::run_with_stdin(cmd, state.bins.argocd_manifest(crd)?.as_bytes(), "kubectl apply --server-side")?;
        if !out.status.success() {
            return Err(LabError::Failed(format!("apply Argo CD's {crd}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    for crd in ["drtopologies.drctl.io", "applications.argoproj.io", "appprojects.argoproj.io"] {
        c.api.wait_crd_established(crd)?;
    }
    procs::kubectl_apply(c.kubectl(state), &platform::argocd_config(&state.bins, ARGOCD_NAMESPACE)?)?;
    let mut cmd = c.kubectl(state);
    cmd.args(["-n", ARGOCD_NAMESPACE, "patch", "configmap", "argocd-cm", "--type", "merge", "--patch-file"]).arg(layout.join("argocd/argocd-cm-patch.yaml"));
    run_ok(cmd, "patch argocd-cm with gitops/argocd/argocd-cm-patch.yaml")?;
    procs::kubectl_apply(c.kubectl(state), &platform::topology_application(layout, &c.name, &state.repo)?)?;
    Ok(())
}

fn seed(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    procs::kubectl_apply(c.kubectl(state), WORKLOADS)?;
    procs::kubectl_apply(c.kubectl(state), platform::WIDGET_CRD)?;
    c.api.wait_crd_established("widgets.example.com")?;
    procs::kubectl_apply(c.kubectl(state), WIDGETS)?;
    Ok(())
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
            "    - name: {}\n      vip: {}\n      apiServer: {}\n      kubeconfigSecretRef: {{name: {}-kubeconfig, namespace: drctl-system}}\n      etcd:\n        endpoints: [{}]\n        tlsSecretRef: {{name: {}, namespace: drctl-system}}\n      encryptionConfigPath: {}\n",
            c.name,
            c.vip,
            c.api.url,
            c.name,
            c.etcd.url(),
            LabEtcd::secret_name(&c.name),
            enc.display()
        ));
    }
    format!(
        "# The DR topology of the lab's two global clusters. Each global's own Argo CD applies this
# file from main (Application drtopology, gitops/argocd/application-<cluster>.yaml).
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
            "  {}  {role}  VIP {}\n      apiserver  {}   (kubeconfig {})\n      etcd       {}   (load balancer; members {}, mTLS)\n      controller http://{}/check   (log {})\n      platform   kube-controller-manager, kube-scheduler, kwok ({} nodes), Argo CD (logs in {})\n",
            o.bold(&c.name),
            c.vip,
            c.api.url,
            c.api.kubeconfig.display(),
            c.etcd.url(),
            c.etcd.member_urls(),
            c.controller.listen,
            c.controller.log.display(),
            platform::NODES_PER_GLOBAL,
            c.platform.dir.display()
        ));
    }
    t.push_str(&format!("  {}  DNS {}  API {}   {} -> {}\n", o.bold("PowerDNS"), state.dns.server, state.dns.api_url, state.domain, state.clusters[0].vip));
    t.push_str(&format!("  {}  {} (branch {}), file {}\n", o.bold("Git repo"), state.repo.display(), repo::MAIN, state.file.display()));
    t.push_str(&format!(
        "  {}  one per global, Application {} syncs topology/ from {} (polls every {} s; `lab flip` also refreshes it as a Git webhook would)\n",
        o.bold("Argo CD"),
        platform::TOPOLOGY_APPLICATION,
        repo::MAIN,
        platform::ARGOCD_POLL_SECONDS
    ));
    let d = state.dir.display();
    t.push_str(&format!(
        "\n  Next:  drctl lab flip --dir {d}      (a pull request flips spec.primary)\n         drctl lab disaster --dir {d}  (the primary dies, then the flip)\n         drctl lab recover --dir {d}   (restart what disaster stopped)\n         drctl lab status --dir {d}\n         drctl lab down --dir {d}\n         {} --kubeconfig {} get drtopology\n",
        state.bins.kube.join("kubectl").display(),
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

/// Starts the globals `lab disaster` stopped again, on their data and ports: their supervisors
/// bring back etcd, the apiserver and the platform, and start each controller only once the
/// global's own Argo CD has applied `main`, so it finds it is no longer primary and mirrors.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub async fn recover(dir: &Path, o: &Out) -> Result<(), LabError> {
    let mut state = LabState::require(dir)?;
    super::drctl_binary()?;
    let lab = std::env::current_exe().map_err(io_err("find the drctl-lab binary"))?;
    let down: Vec<usize> = (0..state.clusters.len()).filter(|&i| !state.clusters[i].is_up()).collect();
    if down.is_empty() {
        o.info("every global is running: nothing to recover");
        return Ok(());
    }
    let restarted = Timestamp::now();
    for &i in &down {
        o.heading(&format!("Recovering {}", state.clusters[i].name));
        let pid = start_supervisor(&lab, &state, &state.clusters[i])?;
        state.clusters[i].supervisor = Some(pid);
    }
    state.save()?;
    let git = git2::Repository::open(&state.repo).map_err(super::git_err(format!("open {}", state.repo.display())))?;
    let (main, _) = repo::read_main(&git, &state.file)?;
    for &i in &down {
        let c = &state.clusters[i];
        wait_apiserver(c).await?;
        o.ok(&format!("{}'s etcd and kube-apiserver are back on their data at {}", c.name, c.api.url));
        let at = wait_argo_synced(&state, c, &main.to_string(), GLOBAL_TIMEOUT).await?;
        o.ok(&format!("{}'s Argo CD synced main ({}) at {at}; its controller starts now", c.name, &main.to_string()[..12]));
    }
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

    /// One member of global `i`'s etcd (the unit tests write no certificates).
    fn member(i: usize, dir: &Path) -> procs::EtcdServer {
        let port = 2000 + 10 * i as u16;
        let tls = procs::EtcdTls {
            ca: dir.join("etcd-ca.crt"),
            cert: dir.join("etcd-client.crt"),
            key: dir.join("etcd-client.key"),
            server_cert: dir.join("etcd-server.crt"),
            server_key: dir.join("etcd-server.key"),
        };
        procs::EtcdServer {
            dir: dir.join("m0"),
            client_url: format!("https://127.0.0.1:{port}"),
            peer_url: format!("http://127.0.0.1:{}", port + 1),
            health_addr: Some(format!("127.0.0.1:{}", port + 4)),
            tls: Some(tls),
            name: "m0".to_string(),
            initial_cluster: String::new(),
            advertised_peer_url: None,
        }
    }

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
                    etcd: LabEtcd { members: vec![member(i, &dir.join(name).join("etcd"))], lb: format!("127.0.0.1:{}", port + 9) },
                    api: procs::ApiServer {
                        dir: dir.join(name).join("apiserver"),
                        port: port + 2,
                        url: format!("https://127.0.0.1:{}", port + 2),
                        etcd_url: format!("https://127.0.0.1:{port}"),
                        kubeconfig: dir.join(name).join("apiserver/kubeconfig"),
                        etcd_tls: None,
                        encryption_config: None,
                        real_nodes: false,
                    },
                    platform: platform::Platform::on_free_ports(&dir.join(name).join("platform"), i).expect("ports"),
                    controller: ControllerState { listen: addr(port + 3), log: dir.join(name).join("controller.log") },
                    supervisor: None,
                    supervisor_log: dir.join(name).join("supervisor.log"),
                }
            })
            .collect();
        LabState {
            dir: dir.clone(),
            bins: Binaries { kube: PathBuf::from("/kube"), argocd: PathBuf::from("/argocd/argocd"), kwok: PathBuf::from("/kwok/kwok") },
            domain: DOMAIN.into(),
            repo: dir.join("repo"),
            file: PathBuf::from(drctl::gitops::DEFAULT_FILE),
            dns: DnsState {
                server: addr(53),
                api_url: "http://127.0.0.1:8081".into(),
                api_key_file: dir.join("pdns/api-key"),
                log: dir.join("pdns/pdns.log"),
                pid: None,
            },
            clusters,
        }
    }

    #[test]
    fn the_lab_topology_is_valid_and_promote_can_flip_it() {
        let state = lab_state();
        let text = topology_yaml(&state);
        let reports = drctl::validate::validate_text(&text).expect("YAML");
        assert_eq!(reports.len(), 1);
        assert!(reports[0].errors.is_empty(), "{:?}", reports[0].errors);
        let t = reports[0].topology.as_ref().expect("topology");
        assert_eq!(t.spec.primary, "global-a");
        assert_eq!(t.spec.clusters.iter().map(|c| c.vip.as_str()).collect::<Vec<_>>(), ["127.0.0.10", "127.0.0.20"]);
        assert_eq!(t.spec.clusters[1].api_server, "https://127.0.0.1:2012");
        // Each cluster's etcd is its load balancer, with the client certificate in a Secret.
        let etcd = serde_json::to_value(&t.spec.clusters[1].etcd).expect("etcd as JSON");
        assert_eq!(etcd["endpoints"], serde_json::json!(["https://127.0.0.1:2019"]), "{etcd}");
        assert_eq!(etcd["tlsSecretRef"]["name"], "global-b-etcd-tls", "{etcd}");
        assert_eq!(drctl::gitops::find_primary(&text).expect("primary line").value, "global-a");
        assert!(text.contains("own Argo CD applies"), "the file says who applies it");
    }

    #[test]
    fn lab_state_round_trips_without_the_api_key() {
        let state = lab_state();
        let json = serde_json::to_string(&state).expect("json");
        let back: LabState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.clusters[1].api.url, state.clusters[1].api.url);
        assert!(json.contains("apiKeyFile") && !json.contains("apiKey\""), "{json}");
    }

    #[test]
    fn a_lab_json_from_before_three_member_etcds_still_parses_with_no_members() {
        let mut json = serde_json::to_value(lab_state()).expect("json");
        for c in json["clusters"].as_array_mut().expect("clusters") {
            c["etcd"] = serde_json::json!({"dir": "/lab/etcd", "clientUrl": "http://127.0.0.1:2000", "peerUrl": "http://127.0.0.1:2001", "name": "default"});
        }
        let old: LabState = serde_json::from_value(json).expect("an old lab.json parses");
        assert!(old.clusters.iter().all(|c| c.etcd.members.is_empty() && !c.etcd.quorum()));
    }

    #[test]
    fn drctl_status_reads_the_globals_and_the_dns_server_from_the_state_the_lab_saves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = lab_state();
        state.dir = dir.path().to_path_buf();
        state.save().expect("save");
        let view = drctl::lab_view::LabView::require(dir.path()).expect("drctl reads lab.json");
        assert_eq!(view.dns_server, state.dns.server);
        let globals: Vec<(String, PathBuf)> = state.clusters.iter().map(|c| (c.name.clone(), c.api.kubeconfig.clone())).collect();
        assert_eq!(view.globals, globals);
    }

    #[test]
    fn the_test_bed_names_argo_cd_as_drctl_does() {
        assert_eq!(platform::ARGOCD_NAMESPACE, drctl::keyspace::DEFAULT_ARGOCD_NAMESPACE);
        assert_eq!(platform::TOPOLOGY_APPLICATION, drctl::argocd::APPLICATION);
    }
}
