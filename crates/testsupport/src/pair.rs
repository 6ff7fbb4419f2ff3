//! A DR pair for controller tests: two globals (etcd + kube-apiserver each, plus with
//! [`Pair::start_full`] their own kube-controller-manager, kube-scheduler and kwok nodes),
//! PowerDNS holding the platform domain, the peer kubeconfig and DNS Secrets, the topology
//! applied to both, and `drctl controller` processes that can be killed and restarted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, DRTopologyStatus, Phase, Role};
use kube::api::Api;

use super::dns::PowerDnsServer;
use super::{free_port, Global};

pub const DOMAIN: &str = "platform.drlab.test";
pub const ZONE: &str = "drlab.test.";
pub const VIP_A: &str = "127.0.0.10";
pub const VIP_B: &str = "127.0.0.20";
pub const TOPOLOGY: &str = "platform";

pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
    pub listen: SocketAddr,
    args: Vec<String>,
    /// The drctl binary it runs: the one under test unless a test runs another build.
    bin: PathBuf,
}

impl Controller {
    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).env("DRCTL_LOG", "info,drctl=debug");
        self.child = Some(super::spawn(cmd, &self.log));
    }

    /// kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops it and starts `bin` with the same flags on the same state, as an upgrade (or a
    /// rollback) of the controller's image does.
    pub fn restart_with(&mut self, bin: &std::path::Path) {
        self.kill();
        self.bin = bin.to_path_buf();
        self.spawn();
    }

    /// The process id while it runs (None once it has exited): a test shows it was not restarted.
    pub fn pid(&mut self) -> Option<u32> {
        let c = self.child.as_mut()?;
        matches!(c.try_wait(), Ok(None)).then(|| c.id())
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Pair {
    pub a: Global,
    pub b: Global,
    pub pdns: PowerDnsServer,
    pub dir: tempfile::TempDir,
    /// Extra YAML under `spec.failover:` (hooks, timeouts).
    pub failover_extra: String,
    /// Extra YAML under `spec.sync:` (fence).
    pub sync_extra: String,
    /// Extra entries of `spec.restarts` and extra `spec` fields (workload clusters).
    pub restarts_extra: String,
    pub spec_extra: String,
    /// drctl's namespace in both globals: its Secrets, its Lease, the topology's references.
    pub namespace: String,
}

/// The namespace the base of `gitops/deploy` installs drctl into.
pub const NAMESPACE: &str = "drctl-system";

impl Pair {
    /// Two globals whose etcds are three mTLS members behind a load balancer each, as a real
    /// global runs its etcd: the topology names the load balancer and a `tlsSecretRef` per
    /// cluster, each apiserver is given the three members.
    pub async fn start() -> Pair {
        Pair::start_in(Global::start_pair("global-a", "global-b"), NAMESPACE, false).await
    }

    /// A pair with drctl's Secrets in `namespace`. The CRD is applied with kubectl unless
    /// `crd_from_argocd`: each global's Argo CD installs it with the rest of `gitops/`.
    pub async fn start_in((a, b): (Global, Global), namespace: &str, crd_from_argocd: bool) -> Pair {
        let pdns = PowerDnsServer::start(ZONE);
        pdns.set(&format!("{DOMAIN}."), "A", 30, &[VIP_A]);
        let dir = tempfile::tempdir().expect("tempdir");
        // Both globals share one encryption config, as the runbook requires.
        std::fs::write(dir.path().join("encryption-a.conf"), "kind: EncryptionConfiguration\n").expect("write");
        std::fs::write(dir.path().join("encryption-b.conf"), "kind: EncryptionConfiguration\n").expect("write");
        let pair = Pair {
            a,
            b,
            pdns,
            dir,
            failover_extra: String::new(),
            sync_extra: String::new(),
            restarts_extra: String::new(),
            spec_extra: String::new(),
            namespace: namespace.to_string(),
        };
        // One apply per global (a kubectl run is ~0.1 CPU-s plus a discovery the apiserver serves).
        for (g, peer) in [(&pair.a, &pair.b), (&pair.b, &pair.a)] {
            let mut docs = Vec::new();
            if !crd_from_argocd {
                docs.push(std::fs::read_to_string(super::repo().join("crds/drtopology.yaml")).expect("read the CRD"));
            }
            docs.extend([namespace, "cpaas-system"].map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n")));
            let kubeconfig = std::fs::read(&peer.api.kubeconfig).expect("read the peer's kubeconfig");
            docs.push(secret_yaml(namespace, &format!("{}-kubeconfig", peer.name), &[("kubeconfig", &kubeconfig)]));
            docs.push(secret_yaml(namespace, "pdns-api", &[("apiKey", pair.pdns.api_key.as_bytes())]));
            for e in [&pair.a, &pair.b] {
                let t = &e.etcd.tls;
                docs.push(etcd_tls_yaml(namespace, e, &t.ca, &t.cert, &t.key));
            }
            let (ok, out) = g.api.apply_stdin(&docs.join("---\n"));
            assert!(ok, "apply drctl's namespace, Secrets and CRD to {}: {out}", g.name);
        }
        if !crd_from_argocd {
            for g in [&pair.a, &pair.b] {
                g.api.wait_crd("drtopologies.drctl.io");
            }
        }
        pair
    }

    /// Writes `of`'s etcd TLS Secret (`<name>-etcd-tls`: `ca.crt`, `tls.crt`, `tls.key`) into
    /// both globals, created or replaced in place: each global holds the client certificates of
    /// both etcds (it reads the peer's as a standby and writes its own).
    pub fn put_etcd_tls(&self, of: &Global, ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) {
        let secret = etcd_tls_yaml(&self.namespace, of, ca, cert, key);
        for g in [&self.a, &self.b] {
            let (ok, out) = g.api.apply_stdin(&secret);
            assert!(ok, "apply {}-etcd-tls to {}: {out}", of.name, g.name);
        }
    }

    /// Waits for A steady as primary and B a checked standby whose `syncEnabled` restarts are
    /// done, then makes the restarts' targets on B (cpaas-system is not replicated; made after
    /// that restart, which deletes vmselect pods), so a drill finds no selector empty. A's
    /// DRTopology as it was then.
    pub async fn ready_for_drill(&self, logs: &[&Controller]) -> DRTopology {
        let t = Duration::from_secs(90);
        let a = self.wait(&self.a, "A steady primary", t, logs, |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
        self.wait(&self.b, "B standby, checked, its syncEnabled restarts done", t, logs, |s| {
            s.role == Some(Role::Standby) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0) && y.replication_lag_seconds.is_some() && y.restarts_done)
        })
        .await;
        self.b.api.apply_stdin(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cluster-transformer, namespace: cpaas-system, labels: {service_name: cluster-transformer}}\n\
             spec:\n  selector: {matchLabels: {app: ct}}\n  template:\n    metadata: {labels: {app: ct}}\n    spec: {containers: [{name: c, image: x}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: vmselect-0, namespace: cpaas-system, labels: {service_name: vmselect}}\nspec: {containers: [{name: c, image: x}]}\n",
        );
        a
    }

    /// A pair whose globals also run their own controller-manager, scheduler and kwok nodes,
    /// as real globals do: the failover scenarios run against these neighbours.
    pub async fn start_full() -> Pair {
        let mut pair = Pair::start().await;
        pair.a.start_control_plane(0);
        pair.b.start_control_plane(1);
        pair
    }

    /// Panics when a control-plane component of either global exited.
    pub fn assert_control_planes_running(&mut self) {
        let mut exited = Vec::new();
        for g in [&mut self.a, &mut self.b] {
            if let Some(cp) = g.control_plane.as_mut() {
                exited.extend(cp.exited().into_iter().map(|e| format!("{}: {e}", g.name)));
            }
        }
        assert!(exited.is_empty(), "{}", exited.join("\n"));
    }

    pub fn global(&self, name: &str) -> &Global {
        if name == self.a.name {
            &self.a
        } else {
            &self.b
        }
    }

    pub fn topology_yaml(&self, primary: &str) -> String {
        let cluster = |g: &Global, vip: &str, enc: &str| {
            let tls = format!("\n      tlsSecretRef: {{name: {}-etcd-tls, namespace: {}}}", g.name, self.namespace);
            format!(
                "  - name: {}\n    vip: {vip}\n    apiServer: {}\n    kubeconfigSecretRef: {{name: {}-kubeconfig, namespace: {}}}\n    etcd:\n      endpoints: [{}]{tls}\n    encryptionConfigPath: {}\n",
                g.name,
                g.api.url,
                g.name,
                self.namespace,
                g.etcd.client_url,
                self.dir.path().join(enc).display()
            )
        };
        format!(
            "apiVersion: drctl.io/v1alpha1\nkind: DRTopology\nmetadata:\n  name: {TOPOLOGY}\nspec:\n  primary: {primary}\n  platform:\n    domain: {DOMAIN}\n    ttl: 30\n  clusters:\n{}{}  sync:\n    checkInterval: 2s\n{}  restarts:\n  - name: cluster-transformer\n    namespace: cpaas-system\n    labelSelector: service_name=cluster-transformer\n    method: rolloutRestart\n    when: [failover]\n  - name: victoriametrics\n    namespace: cpaas-system\n    labelSelector: service_name in (vmselect,vminsert)\n    method: deletePods\n    when: [syncEnabled]\n{}  dns:\n    powerdns:\n      apiUrl: {}\n      zone: {ZONE}\n      apiKeySecretRef: {{name: pdns-api, namespace: {}}}\n    verify:\n      resolvers: [\"{}\"]\n      timeout: 20s\n  failover:\n    demotionTimeout: 10s\n{}{}",
            cluster(&self.a, VIP_A, "encryption-a.conf"),
            cluster(&self.b, VIP_B, "encryption-b.conf"),
            self.sync_extra,
            self.restarts_extra,
            self.pdns.api_url(),
            self.namespace,
            self.pdns.dns,
            self.failover_extra,
            self.spec_extra
        )
    }

    /// What Argo CD does: apply the topology from Git to one global.
    pub fn apply(&self, g: &Global, yaml: &str) {
        let (ok, out) = g.api.apply_stdin(yaml);
        assert!(ok, "apply topology to {}: {out}", g.name);
    }

    pub fn apply_both(&self, primary: &str) {
        let y = self.topology_yaml(primary);
        self.apply(&self.a, &y);
        self.apply(&self.b, &y);
    }

    pub fn controller(&self, g: &Global, extra: &[&str]) -> Controller {
        self.controller_as(g, &g.api.kubeconfig, extra)
    }

    /// A controller authenticating with `kubeconfig` (e.g. a ServiceAccount token) instead of admin.
    pub fn controller_as(&self, g: &Global, kubeconfig: &std::path::Path, extra: &[&str]) -> Controller {
        self.controller_from(super::drctl_bin(), g, kubeconfig, extra)
    }

    /// A controller running the drctl binary `bin` (another build, e.g. the last release).
    pub fn controller_from(&self, bin: &std::path::Path, g: &Global, kubeconfig: &std::path::Path, extra: &[&str]) -> Controller {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args: Vec<String> = vec![
            "controller".into(),
            format!("--cluster-name={}", g.name),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--listen={listen}"),
            // Explicit: a test host that is itself a Pod has POD_NAMESPACE and a ServiceAccount file.
            format!("--namespace={}", self.namespace),
        ];
        // Short unless the test asks for its own (one that restarts an apiserver).
        if !extra.iter().any(|a| a.starts_with("--lease-seconds")) {
            args.push("--lease-seconds=6".into());
        }
        // Short unless the test asks for its own (a restart that waits for readiness).
        if !extra.iter().any(|a| a.starts_with("--restart-ready-timeout")) {
            args.push("--restart-ready-timeout=1s".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.path().join(format!("controller-{}-{}.log", g.name, listen.port()));
        let mut c = Controller { child: None, log, listen, args, bin: bin.to_path_buf() };
        c.spawn();
        c
    }

    pub async fn status(&self, g: &Global) -> Option<DRTopology> {
        let api: Api<DRTopology> = Api::all(g.client().await);
        api.get_opt(TOPOLOGY).await.ok().flatten()
    }

    /// Polls `g`'s DRTopology until `pred` holds; panics with the last status and `logs` when it
    /// does not within `timeout`.
    pub async fn wait(&self, g: &Global, what: &str, timeout: Duration, logs: &[&Controller], pred: impl Fn(&DRTopologyStatus) -> bool) -> DRTopology {
        let start = Instant::now();
        let client = g.client().await;
        let api: Api<DRTopology> = Api::all(client);
        let mut last = None;
        while start.elapsed() < timeout {
            if let Ok(Some(t)) = api.get_opt(TOPOLOGY).await {
                if t.status.as_ref().is_some_and(&pred) {
                    return t;
                }
                last = Some(t);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> = logs.iter().map(|c| format!("--- {}\n{}", c.log.display(), c.log_tail())).collect();
        panic!(
            "{} on {}: not reached within {timeout:?}; status: {}\n{}",
            what,
            g.name,
            serde_json::to_string_pretty(&last.and_then(|t| t.status)).unwrap_or_default(),
            logs.join("\n")
        );
    }
}

/// A Secret of `data` (file name, contents) as YAML.
fn secret_yaml(namespace: &str, name: &str, data: &[(&str, &[u8])]) -> String {
    use base64::Engine;
    let data: String = data.iter().map(|(k, v)| format!("  {k}: {}\n", base64::engine::general_purpose::STANDARD.encode(v))).collect();
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: Opaque\ndata:\n{data}")
}

/// `of`'s etcd TLS Secret (`<name>-etcd-tls`) from the PEM files.
fn etcd_tls_yaml(namespace: &str, of: &Global, ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> String {
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    secret_yaml(namespace, &format!("{}-etcd-tls", of.name), &[("ca.crt", &read(ca)), ("tls.crt", &read(cert)), ("tls.key", &read(key))])
}
