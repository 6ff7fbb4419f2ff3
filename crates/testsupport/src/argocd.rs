//! A global's own Argo CD (redis, repo-server, application-controller, as `drctl lab` runs it:
//! `drctl_testbed::platform`) in a namespace the test chooses, syncing a Git repository on disk.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use drctl_testbed::platform::{self, Platform};
use serde_json::Value;

use super::{binaries, kill, kube_bin_dir, spawn, tail, Global};

pub struct ArgoCd {
    children: Vec<(&'static str, Child)>,
    pub platform: Platform,
    pub namespace: String,
    pub dir: tempfile::TempDir,
}

impl ArgoCd {
    /// Installs Argo CD's CRDs and configuration (with `gitops/argocd/argocd-cm-patch.yaml`, as
    /// README says) into `g` under `namespace`, and starts its components.
    pub fn start(g: &Global, index: usize, namespace: &str) -> ArgoCd {
        let b = binaries();
        install_crds(g);
        let (ok, out) = g.api.apply_stdin(&platform::argocd_config(b, namespace).unwrap_or_else(|e| panic!("{e}")));
        assert!(ok, "Argo CD's configuration: {out}");
        let patch = super::repo().join("gitops/argocd/argocd-cm-patch.yaml");
        g.api.kubectl_ok(&["-n", namespace, "patch", "configmap", "argocd-cm", "--type", "merge", "--patch-file", &patch.display().to_string()]);

        let dir = tempfile::Builder::new().prefix("drctl-argocd-").tempdir().expect("tempdir");
        let p = Platform::on_free_ports(dir.path(), index).expect("ports");
        for d in p.argocd_dirs() {
            std::fs::create_dir_all(&d).expect("argocd dirs");
        }
        let server = &g.api.server;
        let mut children = Vec::new();
        for (name, cmd) in [
            ("redis", p.redis()),
            ("argocd-repo-server", p.repo_server(b, server)),
            ("argocd-application-controller", p.application_controller(b, server, namespace)),
        ] {
            children.push((name, spawn(cmd, &p.log(name))));
        }
        ArgoCd { children, platform: p, namespace: namespace.to_string(), dir }
    }

    /// The Application `name` as JSON, if it exists.
    pub fn application(&self, g: &Global, name: &str) -> Option<Value> {
        let out = g.api.kubectl(&["-n", &self.namespace, "get", "applications.argoproj.io", name, "-o", "json"]).ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the Application `name` is Synced and Healthy, and every resource it manages
    /// too; returns the Application.
    pub fn wait_synced_and_healthy(&mut self, g: &Global, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            self.assert_running();
            if let Some(app) = self.application(g, name) {
                if all_synced_and_healthy(&app) {
                    return app;
                }
                last = app;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = self.platform.log("argocd-application-controller");
        panic!(
            "Application {name} not Synced and Healthy within {timeout:?}: {}\nlast lines of {}:\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            log.display(),
            tail(&log)
        )
    }

    /// Asks Argo CD to look at Git now, as a webhook from the forge would.
    pub fn refresh(&self, g: &Global, name: &str) {
        g.api.kubectl_ok(&["-n", &self.namespace, "annotate", "--overwrite", "applications.argoproj.io", name, "argocd.argoproj.io/refresh=normal"]);
    }

    fn assert_running(&mut self) {
        for (name, c) in self.children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = self.platform.log(name);
                panic!("{name} exited ({status}); last lines of {}:\n{}", log.display(), tail(&log));
            }
        }
    }
}

/// Argo CD's Application and AppProject CRDs, established in `g`.
pub fn install_crds(g: &Global) {
    for crd in ["application-crd.yaml", "appproject-crd.yaml"] {
        let mut cmd = std::process::Command::new(kube_bin_dir().join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", g.api.kubeconfig.display())).args(["apply", "--server-side", "-f", "-"]);
        let manifest = binaries().argocd_manifest(crd).unwrap_or_else(|e| panic!("{e}"));
        let out = drctl_testbed::procs::run_with_stdin(cmd, manifest.as_bytes(), "kubectl apply").unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "apply Argo CD's {crd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for crd in ["applications.argoproj.io", "appprojects.argoproj.io"] {
        g.api.wait_crd(crd);
    }
}

/// The Application and every resource it lists are Synced and Healthy (a resource without a
/// health, such as a ConfigMap, counts as healthy; Argo CD reports none for it).
pub fn all_synced_and_healthy(app: &Value) -> bool {
    let st = &app["status"];
    let healthy = |h: &Value| h.is_null() || h["status"] == "Healthy";
    // Argo CD reports Synced and Healthy a moment before it closes the sync operation.
    let settled = !matches!(st["operationState"]["phase"].as_str(), Some("Running" | "Terminating"));
    settled
        && st["sync"]["status"] == "Synced"
        && st["health"]["status"] == "Healthy"
        && st["resources"].as_array().is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| r["status"] == "Synced" && healthy(&r["health"])))
}

impl Drop for ArgoCd {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            kill(c);
        }
    }
}

/// `gitops/argocd/application-<cluster>.yaml`, pointed at `repo` (a local Git repository), with
/// Argo CD's namespace `argocd_ns`, drctl's namespace `ns` and the controller's overlay `overlay`.
pub fn applications(cluster: &str, repo: &Path, argocd_ns: &str, ns: &str, overlay: &str) -> String {
    let path = super::repo().join(format!("gitops/argocd/application-{cluster}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.replace("repoURL: https://git.example.com/platform/dr-gitops.git", &format!("repoURL: file://{}", repo.display()))
        .replace("  namespace: argocd\n", &format!("  namespace: {argocd_ns}\n"))
        .replace("    namespace: drctl-system\n", &format!("    namespace: {ns}\n"))
        .replace(&format!("path: deploy/overlays/{cluster}\n"), &format!("path: {overlay}\n"))
}
