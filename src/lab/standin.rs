//! The stand-in for Argo CD: a loop that applies the topology file from the repository's `main`
//! branch to both globals whenever `main` moves, as Argo CD (one instance per global) would. It
//! is not Argo CD: no Applications, no health, no diffing; just "main moved, apply it".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::Repository;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{git_err, procs, repo, write_atomic, LabError, LabState};

/// How often the stand-in for Argo CD looks at `main` (Argo CD polls every 3 minutes by default,
/// or reacts to a webhook; the lab wants to be quick). RTO figures exclude this wait.
pub const POLL: Duration = Duration::from_secs(1);

/// What the stand-in for Argo CD applied where, in `DIR/argo-standin.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub clusters: BTreeMap<String, Applied>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub commit: String,
    /// RFC 3339 UTC.
    pub applied_at: String,
}

pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("argo-standin.json")
}

/// The record so far; empty when the stand-in has applied nothing yet.
pub fn read_record(dir: &Path) -> Record {
    std::fs::read_to_string(record_path(dir)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// Runs until killed (`drctl lab down`).
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub async fn run(dir: &Path) -> Result<(), LabError> {
    let state = LabState::require(dir)?;
    let git = Repository::open(&state.repo).map_err(git_err(format!("open {}", state.repo.display())))?;
    let mut record = read_record(dir);
    let mut last_error: BTreeMap<String, String> = BTreeMap::new();
    info!(repo = %state.repo.display(), file = %state.file.display(), "stand-in for Argo CD: watching {}", repo::MAIN);
    loop {
        match repo::read_main(&git, &state.file) {
            Ok((commit, text)) => {
                let commit = commit.to_string();
                let pending: Vec<_> = state.clusters.iter().filter(|c| record.clusters.get(&c.name).is_none_or(|a| a.commit != commit)).collect();
                // One Argo CD per global: apply to each independently, at the same time.
                let results: Vec<_> = std::thread::scope(|s| {
                    let handles: Vec<_> = pending
                        .iter()
                        .map(|c| s.spawn(|| procs::kubectl_apply(c.kubectl(&state), &text).map(|_| Timestamp::now())))
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(procs::ProcError::Failed("kubectl apply panicked".into())))).collect()
                });
                for (c, result) in pending.into_iter().zip(results) {
                    match result {
                        Ok(at) => {
                            info!(cluster = %c.name, commit = %&commit[..12], "stand-in for Argo CD: applied {} from {}", state.file.display(), repo::MAIN);
                            record.clusters.insert(c.name.clone(), Applied { commit: commit.clone(), applied_at: at.to_string() });
                            last_error.remove(&c.name);
                            let text = serde_json::to_string_pretty(&record).map_err(|source| LabError::Json { what: "serialize the stand-in record".into(), source })?;
                            write_atomic(&record_path(dir), &text)?;
                        }
                        Err(e) => {
                            // Say it once per distinct failure, not every second.
                            let msg = e.to_string();
                            if last_error.get(&c.name) != Some(&msg) {
                                warn!(cluster = %c.name, error = %msg, "stand-in for Argo CD: cannot apply; retrying");
                                last_error.insert(c.name.clone(), msg);
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "stand-in for Argo CD: cannot read {}", repo::MAIN),
        }
        tokio::time::sleep(POLL).await;
    }
}
