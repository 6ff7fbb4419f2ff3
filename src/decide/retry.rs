//! How soon a failed reconcile runs again, by the kind of its error: a transient error (a peer,
//! an etcd or an apiserver that did not answer) is retried with exponential backoff per object;
//! a configuration error (a missing Secret, a refused credential, RBAC) slowly, since waiting
//! rarely fixes it but an operator's fix outside the DRTopology is not watched; an invalid spec
//! only once the DRTopology changes.

use std::time::Duration;

/// What kind of failure an error is: decides its retry and labels the failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Transient,
    Configuration,
    InvalidSpec,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 3] = [ErrorKind::Transient, ErrorKind::Configuration, ErrorKind::InvalidSpec];

    /// The `kind` label of `drctl_reconcile_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Configuration => "configuration",
            ErrorKind::InvalidSpec => "invalid_spec",
        }
    }
}

/// When to reconcile again after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    After(Duration),
    /// Only when the object changes (the watch wakes the controller).
    AwaitChange,
}

/// The first retry of a transient error (what every error waited before kinds were told apart).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest a transient error waits: a failover step retried later than this would hold the
/// pair without a primary for nothing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a configuration error is retried.
pub const CONFIGURATION_RETRY: Duration = Duration::from_secs(120);

/// The wait before retry number `failures` (1 for the first failure) of a transient error:
/// doubling from [`FIRST_BACKOFF`], capped at [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// The retry of the `failures`-th consecutive failure of one object, by the error's kind. `due`
/// is when a bound of the failed step ends (FinalSync's `finalSyncTimeout`): the retry comes no
/// later, whatever the kind, so the bound's policy applies on time instead of a backoff later.
pub fn retry(kind: ErrorKind, failures: u32, due: Option<Duration>) -> Retry {
    let by_kind = match kind {
        ErrorKind::Transient => Retry::After(backoff(failures)),
        ErrorKind::Configuration => Retry::After(CONFIGURATION_RETRY),
        ErrorKind::InvalidSpec => Retry::AwaitChange,
    };
    match (by_kind, due) {
        (Retry::After(d), Some(due)) => Retry::After(d.min(due)),
        (Retry::AwaitChange, Some(due)) => Retry::After(due),
        (r, None) => r,
    }
}

/// The kind of a Kubernetes API error: a request refused as unauthorised, forbidden, not found
/// or invalid is ours to fix; anything else (a timeout, a conflict, a 5xx, no connection) may
/// pass by itself.
pub fn kube_error_kind(e: &kube::Error) -> ErrorKind {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 401 | 403 | 404 | 422) => ErrorKind::Configuration,
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_back_off_exponentially_per_object_up_to_a_minute() {
        let secs = |n| backoff(n).as_secs();
        let cases = [
            (0, 5, "no failure counted yet: the first wait"),
            (1, 5, "the first retry waits as before"),
            (2, 10, "doubles"),
            (3, 20, "doubles"),
            (4, 40, "doubles"),
            (5, 60, "capped"),
            (u32::MAX, 60, "never overflows"),
        ];
        for (failures, want, rule) in cases {
            assert_eq!(secs(failures), want, "{rule}: failure {failures}");
        }
    }

    #[test]
    fn each_kind_of_error_has_its_own_retry() {
        let cases = [
            (ErrorKind::Transient, 3, Retry::After(Duration::from_secs(20)), "transient: backoff"),
            (ErrorKind::Configuration, 1, Retry::After(CONFIGURATION_RETRY), "configuration: slow, from the first failure"),
            (ErrorKind::Configuration, 9, Retry::After(CONFIGURATION_RETRY), "configuration: no faster later"),
            (ErrorKind::InvalidSpec, 1, Retry::AwaitChange, "an invalid spec waits for a change"),
        ];
        for (kind, failures, want, rule) in cases {
            assert_eq!(retry(kind, failures, None), want, "{rule}");
        }
    }

    #[test]
    fn a_bound_ending_sooner_than_the_retry_brings_the_retry_forward() {
        let s = Duration::from_secs;
        let cases = [
            (ErrorKind::Transient, 3, Some(s(4)), Retry::After(s(4)), "backoff 20s, bound in 4s: at the bound"),
            (ErrorKind::Transient, 1, Some(s(30)), Retry::After(s(5)), "backoff 5s, bound later: the backoff"),
            (ErrorKind::Configuration, 1, Some(s(7)), Retry::After(s(7)), "configuration: at the bound"),
            (ErrorKind::InvalidSpec, 1, Some(s(9)), Retry::After(s(9)), "invalid spec: the bound is looked at anyway"),
            (ErrorKind::Transient, 2, Some(Duration::ZERO), Retry::After(Duration::ZERO), "bound used: now"),
        ];
        for (kind, failures, due, want, rule) in cases {
            assert_eq!(retry(kind, failures, due), want, "{rule}");
        }
    }

    #[test]
    fn refused_api_requests_are_configuration_errors_and_the_rest_transient() {
        let api = |code| kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }));
        for (code, want) in [
            (401, ErrorKind::Configuration),
            (403, ErrorKind::Configuration),
            (404, ErrorKind::Configuration),
            (422, ErrorKind::Configuration),
            (409, ErrorKind::Transient),
            (500, ErrorKind::Transient),
            (503, ErrorKind::Transient),
        ] {
            assert_eq!(kube_error_kind(&api(code)), want, "HTTP {code}");
        }
    }
}
