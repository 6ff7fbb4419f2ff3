//! Why a reconcile failed, and its kind (`decide::retry` turns the kind into the requeue).
//! Display quotes the cause, as every error of the crate does (see `failover::error`).

use super::replication::SyncError;
use crate::decide::plan::Step;
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::failover::error::StepError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("step {step} failed: {source}")]
    Step { step: Step, source: StepError },
    #[error("stopping replication: {0}")]
    StopReplication(#[source] SyncError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(e) => kube_error_kind(e),
            Error::Step { source, .. } => source.kind(),
            Error::StopReplication(e) => e.kind(),
        }
    }
}
