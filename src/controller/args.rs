//! `drctl controller`'s flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::validate;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Which cluster of the topology this controller runs in (spec.clusters[].name).
    #[arg(long, env = "DRCTL_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Kubeconfig for this cluster; in-cluster config when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the controller (leader-election Lease, role memory, the fence's exemption,
    /// never replicated). Without it: $POD_NAMESPACE (the downward API), else the
    /// ServiceAccount's namespace file, else drctl-system.
    #[arg(long = "namespace", env = "DRCTL_NAMESPACE")]
    pub namespace_flag: Option<String>,
    /// The namespace in effect, set once by [`resolve_namespace`] at start.
    #[arg(skip)]
    pub namespace: String,
    /// Address for /metrics, /healthz, /readyz and /check.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// File with a bearer token /check requires. Without it /check answers only on a loopback
    /// --listen address: the report names keys of every replicated namespace.
    #[arg(long, value_name = "FILE")]
    pub check_token_file: Option<PathBuf>,
    /// Identity in the leader Lease; defaults to the hostname plus pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader Lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// How long a restart waits for workloads to become ready again.
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg)]
    pub restart_ready_timeout: Duration,
    /// Lag above which SyncHealthy turns false.
    #[arg(long, default_value_t = 30.0)]
    pub max_lag_seconds: f64,
    /// How often the Preflight condition is refreshed by running `drctl preflight`'s checks
    /// (webhook hooks not called) beside the reconciles; 0s: never.
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
    pub preflight_interval: Duration,
    /// A local clone of the GitOps repo (kept current by e.g. a git-sync sidecar), read-only:
    /// a failover record names the commit, author and reason that flipped spec.primary.
    #[arg(long)]
    pub git_repo: Option<PathBuf>,
    /// The topology file inside --git-repo.
    #[arg(long, default_value = crate::gitops::DEFAULT_FILE)]
    pub git_file: PathBuf,
}

/// Where a Pod's ServiceAccount token mount says which namespace the Pod runs in.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The controller's namespace and where it came from (for the log): `--namespace` /
/// `$DRCTL_NAMESPACE`, else `$POD_NAMESPACE`, else the ServiceAccount file, else the default.
/// One setting, so a kustomize `namespace:` override moves the Lease, the role memory and the
/// fence's exemption with the Pod. Empty values count as unset; a value that is not a
/// namespace name is refused rather than passed over.
pub fn resolve_namespace(flag: Option<&str>, pod_namespace: Option<&str>, service_account_file: &Path) -> Result<(String, String), String> {
    let file = std::fs::read_to_string(service_account_file).ok();
    let candidates = [
        (flag, "--namespace (DRCTL_NAMESPACE)".to_string()),
        (pod_namespace, "POD_NAMESPACE".to_string()),
        (file.as_deref(), service_account_file.display().to_string()),
    ];
    for (value, from) in candidates {
        let Some(ns) = value.map(str::trim).filter(|v| !v.is_empty()) else { continue };
        if !crate::validate::is_dns_label(ns) {
            return Err(format!(
                "the controller namespace {ns:?} from {from} is not a namespace name (lower-case letters, digits and '-', at most 63); fix or unset {from}"
            ));
        }
        return Ok((ns.to_string(), from));
    }
    Ok((crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE.to_string(), "the default".to_string()))
}

pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    validate::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_comes_from_the_flag_then_the_pod_then_the_service_account_then_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sa = dir.path().join("namespace");
        std::fs::write(&sa, "from-sa").expect("write");
        let none = dir.path().join("absent");
        // (flag, POD_NAMESPACE, ServiceAccount file, namespace, from)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a Path, &'a str, &'a str);
        let cases: [Case; 7] = [
            (Some("from-flag"), Some("from-pod"), &sa, "from-flag", "--namespace (DRCTL_NAMESPACE)"),
            (None, Some("from-pod"), &sa, "from-pod", "POD_NAMESPACE"),
            (Some(""), Some("from-pod"), &sa, "from-pod", "POD_NAMESPACE"),
            (None, None, &sa, "from-sa", sa.to_str().expect("utf-8")),
            (None, Some(" "), &sa, "from-sa", sa.to_str().expect("utf-8")),
            (None, None, &none, "drctl-system", "the default"),
            (None, None, dir.path(), "drctl-system", "the default"),
        ];
        for (flag, pod, file, want, from) in cases {
            assert_eq!(resolve_namespace(flag, pod, file), Ok((want.to_string(), from.to_string())), "{flag:?} {pod:?} {}", file.display());
        }
        let e = resolve_namespace(None, Some("Drctl_System"), &none).expect_err("not a namespace name");
        assert!(e.contains("\"Drctl_System\" from POD_NAMESPACE") && e.contains("fix or unset POD_NAMESPACE"), "{e}");
    }
}
