//! Why a runbook step failed: one variant per step and boundary, each with its kind (which
//! decides how soon the step is retried). Causes are boxed: a step's `Result` stays small.
//!
//! The crate's one convention for errors: an error's Display is its whole message and quotes
//! its cause; `source()` returns that cause for code that inspects the chain, never for
//! printing (print with Display, or `cli::report`, which adds only what the text does not say).
//! So no error prints its cause twice.

use crate::controller::peer::PeerError;
use crate::controller::replication::{secret_error_kind, SyncError};
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::dns::DnsError;
use crate::fence::FenceError;
use crate::hooks::HookError;
use crate::restart::RestartsError;
use crate::topology::Role;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("no failover in progress")]
    NoFailover,
    #[error("{message}. Use the same file on both clusters, or set spec.failover.allowEncryptionConfigMismatch")]
    EncryptionConfigMismatch { message: String },
    #[error(
        "cannot ask {peer} to step down: {source}. Fix the peer access (kubeconfig Secret, its RBAC); \
         a configuration error is never taken for a disaster"
    )]
    PeerAccess { peer: String, source: Box<PeerError> },
    #[error(
        "{peer} is reachable but did not acknowledge demotion within {timeout} (its spec.primary is {spec_primary:?}, role {role:?}). \
         Check its controller and Argo CD sync; only an old primary unreachable for that long is failed over from, \
         unless annotation drctl.io/override-demotion={peer}/{term} overrides it (docs/runbooks.md)"
    )]
    NotAcknowledged { peer: String, timeout: String, spec_primary: String, role: Option<Role>, term: i64 },
    /// FinalSync could not start the mirror it catches up with.
    #[error(transparent)]
    StartMirror(Box<SyncError>),
    #[error(transparent)]
    CatchUp(Box<SyncError>),
    #[error(transparent)]
    Check(Box<SyncError>),
    #[error("the consistency check did not finish within spec.failover.finalSyncTimeout ({after:?}); raise it for a keyspace this large")]
    CheckTimeout { after: std::time::Duration },
    #[error("{missed} keys of {peer} are missing here (spec.failover.maxMissedKeys is {max}); first: {first}")]
    MissedKeys { missed: u64, peer: String, max: u64, first: String },
    #[error(transparent)]
    StopSync(Box<SyncError>),
    #[error(transparent)]
    LiftFence(Box<FenceError>),
    #[error(transparent)]
    Hook(Box<HookError>),
    #[error("this cluster is not in spec.clusters")]
    NotInSpec,
    #[error(transparent)]
    SwitchDns(Box<DnsError>),
    /// The provider waits for an operator (`manual`): the step is retried until it is done.
    #[error("{0}")]
    DnsNotSwitched(String),
    #[error(transparent)]
    VerifyDns(Box<DnsError>),
    #[error(transparent)]
    Restart(Box<RestartsError>),
    /// A time in status that the failover counts from does not parse: its deadlines and its
    /// restart stamp would otherwise start again from "now".
    #[error("{field} is {value:?}, not an RFC 3339 time ({reason}). Fix the status field by hand, or retry the failover")]
    BadTime { field: String, value: String, reason: String },
}

impl StepError {
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind::*;
        match self {
            StepError::NoFailover
            | StepError::NotAcknowledged { .. }
            | StepError::CheckTimeout { .. }
            | StepError::MissedKeys { .. }
            | StepError::DnsNotSwitched(_) => Transient,
            StepError::EncryptionConfigMismatch { .. } | StepError::BadTime { .. } => Configuration,
            StepError::PeerAccess { source, .. } => source.kind(),
            StepError::StartMirror(e) | StepError::CatchUp(e) | StepError::Check(e) | StepError::StopSync(e) => e.kind(),
            StepError::LiftFence(e) => e.kind(),
            StepError::Hook(e) => hook_error_kind(e),
            StepError::NotInSpec => InvalidSpec,
            StepError::SwitchDns(e) | StepError::VerifyDns(e) => dns_error_kind(e),
            StepError::Restart(e) => e.kind(),
        }
    }
}

/// A 4xx answer is a request we must change; anything else may pass.
fn http_status_kind(status: u16) -> ErrorKind {
    if (400..500).contains(&status) && status != 408 && status != 429 {
        ErrorKind::Configuration
    } else {
        ErrorKind::Transient
    }
}

fn hook_error_kind(e: &HookError) -> ErrorKind {
    match e {
        HookError::Secret { source, .. } => secret_error_kind(source),
        HookError::Http { .. } | HookError::JobTimeout { .. } => ErrorKind::Transient,
        HookError::Status { status, .. } => http_status_kind(*status),
        HookError::Kube { source, .. } => kube_error_kind(source),
        // The hook ran and said no: a human looks before it runs again.
        HookError::JobFailed { .. } => ErrorKind::Configuration,
        HookError::Template { .. } => ErrorKind::InvalidSpec,
    }
}

fn dns_error_kind(e: &DnsError) -> ErrorKind {
    match e {
        DnsError::Config(_) | DnsError::BadSecret { .. } | DnsError::Refused { .. } => ErrorKind::Configuration,
        DnsError::Secret(s) => secret_error_kind(s),
        DnsError::HttpStatus { status, .. } => http_status_kind(*status),
        DnsError::Kube { source, .. } => kube_error_kind(source),
        DnsError::Io { .. } | DnsError::Timeout { .. } | DnsError::Protocol { .. } | DnsError::Http { .. } | DnsError::VerifyTimeout(_) => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The text quotes its cause (what `source()` returns) once: a printer that walks the
    /// chain and skips what is already said shows it once.
    fn says_its_cause_once(e: &(dyn std::error::Error + 'static)) {
        let text = e.to_string();
        if let Some(c) = e.source() {
            let quoted = c.to_string();
            assert_eq!(text.matches(&quoted).count(), 1, "{text:?} should quote {quoted:?} once");
        }
    }

    #[test]
    fn step_errors_say_each_cause_once_and_have_a_kind() {
        let forbidden = || kube::Error::Api(Box::new(kube::core::Status { code: 403, message: "forbidden".into(), ..Default::default() }));
        let cases: Vec<(StepError, ErrorKind)> = vec![
            (StepError::PeerAccess { peer: "global-a".into(), source: Box::new(PeerError::Api("global-a".into(), forbidden())) }, ErrorKind::Configuration),
            (
                StepError::PeerAccess { peer: "global-a".into(), source: Box::new(PeerError::Timeout("global-a".into(), std::time::Duration::from_secs(4))) },
                ErrorKind::Transient,
            ),
            (StepError::StopSync(Box::new(SyncError::ManifestApi { object: "Sync s".into(), source: forbidden() })), ErrorKind::Configuration),
            (StepError::CatchUp(Box::new(SyncError::CatchUpTimeout { applied: 1, want: 2, after: std::time::Duration::from_secs(1) })), ErrorKind::Transient),
            (StepError::Hook(Box::new(HookError::Status { hook: "h".into(), url: "http://x".into(), status: 503, body: String::new() })), ErrorKind::Transient),
            (
                StepError::Hook(Box::new(HookError::Status { hook: "h".into(), url: "http://x".into(), status: 401, body: String::new() })),
                ErrorKind::Configuration,
            ),
            (StepError::SwitchDns(Box::new(DnsError::Config("no provider".into()))), ErrorKind::Configuration),
            (StepError::NotInSpec, ErrorKind::InvalidSpec),
            (
                StepError::Restart(Box::new(RestartsError::Reach { cluster: "w1".into(), source: PeerError::NoKubeconfig("w1".into()) })),
                ErrorKind::Configuration,
            ),
        ];
        for (e, kind) in cases {
            says_its_cause_once(&e);
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[test]
    fn messages_stay_what_the_step_records() {
        let e = StepError::PeerAccess { peer: "global-a".into(), source: Box::new(PeerError::NoKubeconfig("global-a".into())) };
        assert_eq!(
            e.to_string(),
            "cannot ask global-a to step down: no kubeconfigSecretRef for cluster global-a: the peer cannot be reached. \
             Fix the peer access (kubeconfig Secret, its RBAC); a configuration error is never taken for a disaster"
        );
        assert!(e.source().is_some(), "the cause is there for code that inspects it");
    }
}
