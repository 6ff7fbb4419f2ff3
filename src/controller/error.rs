//! Why a reconcile failed, and its kind (`decide::retry` turns the kind into the requeue).
//! Display quotes the cause, as every error of the crate does (see `failover::error`).

use std::time::Duration;

use super::replication::SyncError;
use crate::decide::plan::Step;
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::failover::error::StepError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("step {step} failed: {source}")]
    Step {
        step: Step,
        source: StepError,
        /// The step's bound ends this soon: it is retried no later (see `decide::retry`).
        due: Option<Duration>,
    },
    #[error("stopping replication: {0}")]
    StopReplication(#[source] SyncError),
    /// The fence a step-down needs did not apply: the demotion token is not written without it.
    #[error("fencing before stepping down: {0}")]
    Fence(#[source] crate::fence::FenceError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(e) => kube_error_kind(e),
            Error::Step { source, .. } => source.kind(),
            Error::StopReplication(e) => e.kind(),
            Error::Fence(e) => e.kind(),
        }
    }

    /// When the bound of the failed step ends, if it has one.
    pub fn due(&self) -> Option<Duration> {
        match self {
            Error::Step { due, .. } => *due,
            _ => None,
        }
    }
}
