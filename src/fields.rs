//! The syntax and limits of single spec fields, shared by the CRD (its patterns and CEL rules
//! in `topology`) and validation (`validate`, `guards`): a field's error, durations and their
//! floors, DNS resolver addresses.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Go-duration subset accepted for every duration field: `90s`, `5m`, `1h30m`, `500ms`.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path from the document root, e.g. `spec.clusters[1].vip`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a duration does not parse: not the CRD's syntax, or longer than a Go `time.Duration`
/// (int64 nanoseconds), which the CRD's CEL `duration()` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    Malformed,
    Overflow,
}

/// Parses the Go-duration subset the CRD accepts (`DURATION_PATTERN`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    parse_go_duration(s).ok()
}

/// [`parse_duration`] telling why not; the limits are Go's, so validate and CEL agree.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    const UNITS: [(&str, u64); 4] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];
    let max = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
    let (mut total, mut rest) = (0u64, s);
    if rest.is_empty() {
        return Err(DurationError::Malformed);
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or(DurationError::Malformed)?;
        if digits == 0 {
            return Err(DurationError::Malformed);
        }
        let (number, tail) = rest.split_at(digits);
        let &(unit, nanos) = UNITS.iter().find(|(u, _)| tail.starts_with(u)).ok_or(DurationError::Malformed)?;
        let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        total = n.checked_mul(nanos).and_then(|x| x.checked_add(total)).filter(|t| *t <= max).ok_or(DurationError::Overflow)?;
        rest = &tail[unit.len()..];
    }
    Ok(Duration::from_nanos(total))
}

/// `ip` or `ip:port` (IPv6 with port in brackets) → socket address, port 53 by default.
pub fn parse_resolver(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa);
    }
    s.parse::<IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53))
}

/// A duration field's floor and why, shared by the CRD's CEL rules and [`check`].
pub struct Floor {
    pub field: &'static str,
    pub min: &'static str,
    pub why: &'static str,
}

impl Floor {
    /// The CRD rule's message.
    pub fn message(&self) -> String {
        format!("{} must be at least {}: {}", self.field, self.min, self.why)
    }
}

/// `checkInterval`: a check compares the whole keyspace; below a second it runs on every
/// reconcile (0s measured 1 % → 23 % CPU). The lab and tests use 2s, real sites minutes.
pub const CHECK_INTERVAL_FLOOR: Floor =
    Floor { field: "spec.sync.checkInterval", min: "1s", why: "each check reads the whole replicated keyspace; use minutes in production (default 5m)" };
/// `demotionTimeout`: the old primary must see the flip and answer; with less, one slow
/// reconcile or a restarting apiserver is taken for a disaster (no RPO token, writes lost).
pub const DEMOTION_TIMEOUT_FLOOR: Floor = Floor {
    field: "spec.failover.demotionTimeout",
    min: "10s",
    why: "shorter makes a blip of the old primary a disaster failover that loses its last writes (default 2m)",
};
/// `finalSyncTimeout`: FinalSync catches up, checks the whole keyspace and repairs; with less,
/// a failover that would pass is abandoned (or proceeds losing keys) on one slow check.
pub const FINAL_SYNC_TIMEOUT_FLOOR: Floor =
    Floor { field: "spec.failover.finalSyncTimeout", min: "10s", why: "FinalSync must catch up and check the whole keyspace at least once (default 2m)" };
/// `dns.verify.timeout`: one lookup waits 2s; less than two lookups fails on one lost packet.
pub const VERIFY_TIMEOUT_FLOOR: Floor = Floor { field: "spec.dns.verify.timeout", min: "5s", why: "one DNS lookup may take 2s; the default is 5m" };

/// The CEL spelling of a floor: `duration()` only after the pattern matched, so a malformed
/// value reports the pattern's message, not an evaluation error.
pub fn floor_rule(f: &Floor) -> String {
    format!("!self.matches('{}') || duration(self) >= duration('{}')", DURATION_PATTERN, f.min)
}
