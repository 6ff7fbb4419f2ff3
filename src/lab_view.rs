//! The local lab as drctl sees it, without carrying any of it: what `drctl status --lab` reads
//! (the DNS server and each global's kubeconfig, from the `lab.json` that `drctl lab up`, the
//! drctl-lab binary, writes) and how drctl and drctl-lab find each other's binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The lab's state file in its directory.
pub const STATE_FILE: &str = "lab.json";

#[derive(Debug, thiserror::Error)]
pub enum LabViewError {
    #[error("no lab in {dir}: run `drctl lab up --dir {dir}` first")]
    Missing { dir: String },
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parse {path} (written by `drctl lab up`): {source}")]
    Parse { path: String, source: serde_json::Error },
}

/// The lab's globals, by name and kubeconfig, and its authoritative DNS server.
#[derive(Debug, Clone, PartialEq)]
pub struct LabView {
    pub dns_server: SocketAddr,
    pub globals: Vec<(String, PathBuf)>,
}

#[derive(Deserialize)]
struct File {
    dns: Dns,
    clusters: Vec<Cluster>,
}

#[derive(Deserialize)]
struct Dns {
    server: SocketAddr,
}

#[derive(Deserialize)]
struct Cluster {
    name: String,
    api: Api,
}

#[derive(Deserialize)]
struct Api {
    kubeconfig: PathBuf,
}

impl LabView {
    /// The lab in `dir`, or an error telling how to start one.
    pub fn require(dir: &Path) -> Result<LabView, LabViewError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LabViewError::Missing { dir: dir.display().to_string() }),
            Err(source) => return Err(LabViewError::Read { path: path.display().to_string(), source }),
        };
        let f: File = serde_json::from_str(&text).map_err(|source| LabViewError::Parse { path: path.display().to_string(), source })?;
        Ok(LabView { dns_server: f.dns.server, globals: f.clusters.into_iter().map(|c| (c.name, c.api.kubeconfig)).collect() })
    }
}

/// `$DRCTL_LAB_DIR`, else `drctl-lab` in the system temp dir: where `drctl lab` and
/// `drctl status --lab` look when given no `--dir`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("DRCTL_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("drctl-lab"))
}

/// The executable `name` next to this one (cargo builds a workspace's binaries into one
/// directory), else the first on `PATH`: how `drctl lab` finds drctl-lab and the lab's
/// supervisor finds drctl.
pub fn sibling_or_on_path(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(name)));
    let path = std::env::var_os("PATH").unwrap_or_default();
    beside.into_iter().chain(std::env::split_paths(&path).map(|d| d.join(name))).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_lab_says_how_to_start_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = LabView::require(dir.path()).expect_err("no lab.json");
        assert!(e.to_string().contains("run `drctl lab up --dir"), "{e}");
    }
}
