//! `drctl controller`'s flags.

use std::path::PathBuf;
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
    /// Namespace of the controller (leader-election Lease, default Secret lookups).
    #[arg(long, env = "DRCTL_NAMESPACE", default_value = "drctl-system")]
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

pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    validate::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m or 1h"))
}
