//! What runs in a lab global besides etcd and kube-apiserver, as in a real global cluster:
//! kube-controller-manager (each controller under its own ServiceAccount, as in production),
//! kube-scheduler, kwok (fake kubelets for the global's own nodes), and the global's own Argo CD
//! (redis, repo-server, application-controller) syncing the lab repository. This module builds
//! their command lines and the objects they need; `supervise` runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::procs::{self, ApiServer, ProcError};

/// Argo CD's namespace in every lab global (never replicated): drctl's
/// `keyspace::DEFAULT_ARGOCD_NAMESPACE` (the lab's tests check they agree).
pub const ARGOCD_NAMESPACE: &str = "argocd";
/// The Application that applies `topology/` (from `gitops/argocd/application-<cluster>.yaml`):
/// drctl's `argocd::APPLICATION` (the lab's tests check they agree).
pub const TOPOLOGY_APPLICATION: &str = "drtopology";
/// How often Argo CD polls Git when nobody asks it to refresh (Argo CD's default is 3 minutes;
/// the lab's flip also triggers a refresh the way a Git webhook would).
pub const ARGOCD_POLL_SECONDS: u64 = 15;
/// The fake nodes each global gets (kwok acts as their kubelets).
pub const NODES_PER_GLOBAL: usize = 2;

/// The custom resource the lab and the tests replicate (any object, no schema of its own).
pub const WIDGET_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
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

/// Ports and directories of one global's platform components.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub dir: PathBuf,
    /// Distinct per global, so the two clusters' pod IPs never look alike.
    pub pod_cidr: String,
    pub kwok_port: u16,
    pub redis_port: u16,
    pub repo_server_port: u16,
    pub repo_server_metrics_port: u16,
    pub app_controller_metrics_port: u16,
}

/// The programs a global's supervisor needs, built from Go modules and cached by version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binaries {
    /// kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.
    pub kube: PathBuf,
    pub argocd: PathBuf,
    pub kwok: PathBuf,
}

impl Binaries {
    /// Builds what is missing (minutes the first time on a machine) and finds the rest.
    pub fn find() -> Result<Binaries, ProcError> {
        Ok(Binaries { kube: procs::kube_bin_dir()?, argocd: procs::argocd_bin()?, kwok: procs::kwok_bin()? })
    }

    fn argocd_dir(&self) -> &Path {
        self.argocd.parent().unwrap_or(Path::new("."))
    }

    /// One of Argo CD's own manifests, as shipped in its Go module.
    pub fn argocd_manifest(&self, name: &str) -> Result<String, ProcError> {
        let path = self.argocd_dir().join("manifests").join(name);
        std::fs::read_to_string(&path).map_err(|source| ProcError::Io { what: format!("read {}", path.display()), source })
    }
}

impl Platform {
    pub fn on_free_ports(dir: &Path, index: usize) -> Result<Platform, ProcError> {
        Ok(Platform {
            dir: dir.to_path_buf(),
            pod_cidr: format!("10.{}.0.1/16", 100 + index),
            kwok_port: procs::free_port()?,
            redis_port: procs::free_port()?,
            repo_server_port: procs::free_port()?,
            repo_server_metrics_port: procs::free_port()?,
            app_controller_metrics_port: procs::free_port()?,
        })
    }

    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    pub fn controller_manager(&self, bins: &Binaries, api: &ApiServer) -> Command {
        let mut cmd = Command::new(bins.kube.join("kube-controller-manager"));
        cmd.args([
            format!("--kubeconfig={}", api.controller_manager_kubeconfig().display()),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            // Each controller acts as its own ServiceAccount in kube-system, as in production:
            // that identity is what a fence can tell apart.
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", api.sa_signing_key().display()),
            format!("--root-ca-file={}", api.ca_file().display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // kwok renews node leases every 10 s (below); on a loaded 2-core machine a renewal
            // can slip past the default 50 s grace, and a NotReady node taints and stalls the
            // restarts a failover waits for. The lab tolerates that; production keeps defaults.
            "--node-monitor-grace-period=120s".into(),
            "-v=1".into(),
        ]);
        cmd
    }

    pub fn scheduler(&self, bins: &Binaries, api: &ApiServer) -> Command {
        let mut cmd = Command::new(bins.kube.join("kube-scheduler"));
        cmd.args([format!("--kubeconfig={}", api.scheduler_kubeconfig().display()), "--leader-elect=false".into(), "--secure-port=0".into(), "-v=1".into()]);
        cmd
    }

    /// kwok manages only the nodes annotated as its own, with the lifecycle stages its "fast"
    /// preset uses, renewing each node's 40 s lease every 10 s as a kubelet does.
    pub fn kwok(&self, bins: &Binaries, api: &ApiServer) -> Command {
        let stages = bins.kwok.with_file_name("stages.yaml");
        let mut cmd = Command::new(&bins.kwok);
        cmd.args([
            format!("--kubeconfig={}", api.kubeconfig.display()),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            format!("--config={}", stages.display()),
            format!("--server-address=127.0.0.1:{}", self.kwok_port),
            format!("--cidr={}", self.pod_cidr),
            "--node-ip=127.0.0.1".into(),
            "--node-lease-duration-seconds=40".into(),
        ]);
        cmd
    }

    pub fn redis(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.redis_port.to_string(), "--save", "", "--appendonly", "no"]).arg("--dir").arg(&self.dir);
        cmd
    }

    /// The environment Argo CD's components read outside a cluster (as its own `make start-local`):
    /// `https://kubernetes.default.svc` means this global's apiserver, and every path it would
    /// mount is a directory of this global's own.
    fn argocd(&self, bins: &Binaries, api: &ApiServer, binary_name: &str) -> Command {
        let d = self.dir.join("argocd");
        let mut cmd = Command::new(&bins.argocd);
        let path = format!("{}:{}", bins.argocd_dir().display(), std::env::var("PATH").unwrap_or_default());
        cmd.env("ARGOCD_BINARY_NAME", binary_name)
            .env("ARGOCD_FAKE_IN_CLUSTER", "true")
            .env("KUBECONFIG", &api.kubeconfig)
            .env("HOME", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .env("ARGOCD_TLS_DATA_PATH", d.join("tls"))
            .env("ARGOCD_SSH_DATA_PATH", d.join("ssh"))
            .env("ARGOCD_GNUPGHOME", d.join("gpg/keys"))
            .env("ARGOCD_GPG_DATA_PATH", d.join("gpg/source"))
            .env("ARGOCD_PLUGINSOCKFILEPATH", d.join("plugins"))
            .env("ARGOCD_GPG_ENABLED", "false")
            // Locally, argocd-cm's timeout.reconciliation is read by nothing: these are.
            .env("ARGOCD_RECONCILIATION_TIMEOUT", format!("{ARGOCD_POLL_SECONDS}s"))
            .env("ARGOCD_RECONCILIATION_JITTER", "0s")
            // Resource health in the Application's status (readable with kubectl), not only redis.
            .env("ARGOCD_APPLICATION_CONTROLLER_PERSIST_RESOURCE_HEALTH", "true")
            // The application-controller derives its shard from a StatefulSet-style hostname.
            .env("HOSTNAME", "argocd-application-controller-0")
            .env("PATH", path);
        cmd
    }

    pub fn argocd_dirs(&self) -> Vec<PathBuf> {
        let d = self.dir.join("argocd");
        ["home", "tmp", "tls", "ssh", "gpg/keys", "gpg/source", "plugins"].iter().map(|s| d.join(s)).collect()
    }

    pub fn repo_server(&self, bins: &Binaries, api: &ApiServer) -> Command {
        let mut cmd = self.argocd(bins, api, "argocd-repo-server");
        cmd.args([
            "--port".into(),
            self.repo_server_port.to_string(),
            "--metrics-port".into(),
            self.repo_server_metrics_port.to_string(),
            "--redis".into(),
            format!("127.0.0.1:{}", self.redis_port),
            "--loglevel".into(),
            "info".into(),
        ]);
        cmd
    }

    /// Watches the Applications in `namespace` (the lab's is [`ARGOCD_NAMESPACE`]).
    pub fn application_controller(&self, bins: &Binaries, api: &ApiServer, namespace: &str) -> Command {
        let mut cmd = self.argocd(bins, api, "argocd-application-controller");
        cmd.args([
            "--namespace".into(),
            namespace.into(),
            "--redis".into(),
            format!("127.0.0.1:{}", self.redis_port),
            "--repo-server".into(),
            format!("127.0.0.1:{}", self.repo_server_port),
            "--metrics-port".into(),
            self.app_controller_metrics_port.to_string(),
            "--status-processors".into(),
            "2".into(),
            "--operation-processors".into(),
            "2".into(),
            "--loglevel".into(),
            "info".into(),
        ]);
        cmd
    }
}

/// The fake nodes of one global, annotated for its kwok.
pub fn nodes_yaml(cluster: &str) -> String {
    (0..NODES_PER_GLOBAL)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Node
metadata:
  name: {cluster}-node-{i}
  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: \"0\"}}
  labels: {{kubernetes.io/hostname: {cluster}-node-{i}, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}}
status:
  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Argo CD's own configuration objects (from its module) in Argo CD's `namespace`, plus the
/// `default` AppProject. argocd-cm is the upstream base; `gitops/argocd/argocd-cm-patch.yaml`
/// is applied over it as README tells users to.
pub fn argocd_config(bins: &Binaries, namespace: &str) -> Result<String, ProcError> {
    let mut docs = vec![format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n")];
    for name in ["argocd-cm.yaml", "argocd-cmd-params-cm.yaml", "argocd-rbac-cm.yaml", "argocd-secret.yaml"] {
        docs.push(with_namespace(&bins.argocd_manifest(name)?, namespace));
    }
    docs.push(format!(
        "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {{name: default, namespace: {namespace}}}
spec:
  sourceRepos: ['*']
  destinations: [{{namespace: '*', server: '*'}}]
  clusterResourceWhitelist: [{{group: '*', kind: '*'}}]
"
    ));
    Ok(docs.join("\n---\n"))
}

/// Upstream's config manifests carry no namespace (kustomize sets it); the lab applies them raw.
fn with_namespace(manifest: &str, namespace: &str) -> String {
    manifest.replacen("metadata:\n", &format!("metadata:\n  namespace: {namespace}\n"), 1)
}

/// The `drtopology` Application from the project's own `gitops/argocd/application-<cluster>.yaml`,
/// pointed at the lab repository.
pub fn topology_application(layout: &Path, cluster: &str, repo: &Path) -> Result<String, ProcError> {
    let path = layout.join("argocd").join(format!("application-{cluster}.yaml"));
    let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Io { what: format!("read {}", path.display()), source })?;
    let doc = text
        .split("\n---\n")
        .find(|d| d.contains(&format!("\n  name: {TOPOLOGY_APPLICATION}\n")))
        .ok_or_else(|| ProcError::Failed(format!("{} has no Application {TOPOLOGY_APPLICATION}", path.display())))?;
    let url = doc
        .lines()
        .find_map(|l| l.trim().strip_prefix("repoURL:"))
        .map(str::trim)
        .ok_or_else(|| ProcError::Failed(format!("{}: Application {TOPOLOGY_APPLICATION} has no repoURL", path.display())))?;
    Ok(doc.replace(url, &format!("file://{}", repo.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_application_comes_from_the_projects_own_file_pointed_at_the_lab_repo() {
        let layout = crate::tree_candidates(Path::new("gitops")).into_iter().find(|p| p.is_dir()).expect("the gitops/ layout");
        let app = topology_application(&layout, "global-a", Path::new("/lab/repo")).expect("application");
        assert!(app.contains("kind: Application") && app.contains("name: drtopology"), "{app}");
        assert!(app.contains("repoURL: file:///lab/repo"), "{app}");
        assert!(app.contains("path: topology") && !app.contains("drctl-controller"), "{app}");
    }

    #[test]
    fn fake_nodes_are_annotated_for_kwok_and_named_per_global() {
        let y = nodes_yaml("global-b");
        assert_eq!(y.matches("kind: Node").count(), NODES_PER_GLOBAL);
        assert!(y.contains("name: global-b-node-1") && y.contains("kwok.x-k8s.io/node: fake"), "{y}");
    }

    #[test]
    fn upstream_config_gets_argocds_namespace() {
        let m = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\ndata: {}\n";
        assert!(with_namespace(m, "gitops-system").contains("metadata:\n  namespace: gitops-system\n  name: argocd-cm"));
    }
}
