//! A runbook step that waits for a condition does its action once, looks at the condition and,
//! when it does not hold yet, says "waiting, look again in a moment": the reconcile requeues
//! instead of sleeping with the act lock held, so a flip back of `spec.primary` is planned
//! within seconds even mid-step. How long a step has waited is counted from its first start as
//! recorded in status, so a restarted controller keeps the same deadline.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// How soon a waiting step looks at its condition again.
pub const RECHECK: Duration = Duration::from_secs(2);
/// The shortest requeue: a deadline a few milliseconds away is looked at just after it.
const MIN_RECHECK: Duration = Duration::from_millis(200);

/// What a waiting step does after one look at its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitVerdict {
    Passed,
    /// Look again after this long (never past the deadline, so the timeout verdict comes on time).
    Again(Duration),
    TimedOut,
}

/// The verdict on a condition that must hold within `timeout` of the step's first start.
pub fn wait_verdict(passed: bool, waited: Duration, timeout: Duration) -> WaitVerdict {
    if passed {
        WaitVerdict::Passed
    } else if waited >= timeout {
        WaitVerdict::TimedOut
    } else {
        WaitVerdict::Again(recheck_within(timeout - waited))
    }
}

/// The next look when `left` remains before a deadline.
pub fn recheck_within(left: Duration) -> Duration {
    RECHECK.min(left).max(MIN_RECHECK)
}

/// How long ago `since` (an RFC 3339 time as status records it) was; a time in the future (clock
/// skew) is no time ago.
pub fn elapsed_since(since: &str, now: Timestamp) -> Result<Duration, k8s_openapi::jiff::Error> {
    Ok(elapsed(since.parse()?, now))
}

/// How long ago `since` was; a time in the future (clock skew) is no time ago.
pub fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d = now.duration_since(since);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// What the restarts of one occasion outside the runbook (`when: demotion`, `when:
/// syncEnabled`) do at a standby's reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartsNext {
    /// Done (or none is declared): mark them done, nothing runs.
    Done,
    /// Not begun: record their start in status (it is their stamp) before they act.
    Begin,
    /// Begun at `stamp`: restart by it (idempotent) and look at readiness, `waited` into the timeout.
    Look { stamp: Timestamp, waited: Duration },
}

/// The next move of an occasion's restarts from what status records: `done`, whether any is
/// `declared`, and when they began. An unreadable start is an error, never "now" (a new stamp
/// would restart everything again).
pub fn restarts_next(done: bool, declared: bool, started_at: Option<&str>, now: Timestamp) -> Result<RestartsNext, k8s_openapi::jiff::Error> {
    Ok(match started_at {
        _ if done => RestartsNext::Done,
        None if !declared => RestartsNext::Done,
        None => RestartsNext::Begin,
        Some(at) => {
            let stamp: Timestamp = at.parse()?;
            RestartsNext::Look { stamp, waited: elapsed(stamp, now) }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_outside_the_runbook_begin_once_and_wait_from_their_recorded_start() {
        let now = Timestamp::from_second(1_700_000_100).expect("ts");
        let began = Timestamp::from_second(1_700_000_000).expect("ts");
        let at = began.to_string();
        use RestartsNext::*;
        let cases = [
            (true, true, Some(at.as_str()), Done, "done: nothing runs again"),
            (true, true, None, Done, "done before it began (none owed): nothing runs"),
            (false, false, None, Done, "none declared: done without a status write"),
            (false, true, None, Begin, "owed and not begun: record the start before acting"),
            (false, true, Some(at.as_str()), Look { stamp: began, waited: Duration::from_secs(100) }, "begun: the recorded stamp, waited from it"),
            (false, false, Some(at.as_str()), Look { stamp: began, waited: Duration::from_secs(100) }, "begun, then undeclared: looked at to the end"),
        ];
        for (done, declared, started_at, want, rule) in cases {
            assert_eq!(restarts_next(done, declared, started_at, now).expect("parses"), want, "{rule}");
        }
        assert!(restarts_next(false, true, Some("yesterday"), now).is_err(), "an unreadable start is an error, never a new stamp");
    }

    #[test]
    fn a_waiting_step_passes_waits_or_times_out_by_its_first_start() {
        let s = Duration::from_secs;
        use WaitVerdict::*;
        let cases = [
            (true, s(0), s(300), Passed, "the condition holds: the step passes"),
            (true, s(900), s(300), Passed, "a late pass still passes"),
            (false, s(0), s(300), Again(RECHECK), "not yet: look again in a moment"),
            (false, s(299), s(300), Again(s(1)), "never looks past the deadline"),
            (false, s(300), s(300), TimedOut, "the whole timeout since the first start: timed out"),
            (false, s(301), s(300), TimedOut, "a controller restarted past the deadline times out at once"),
        ];
        for (passed, waited, timeout, want, rule) in cases {
            assert_eq!(wait_verdict(passed, waited, timeout), want, "{rule}");
        }
        assert_eq!(recheck_within(Duration::from_millis(1)), MIN_RECHECK, "a deadline just ahead is looked at just after it");
    }

    #[test]
    fn time_waited_counts_from_the_recorded_start() {
        let now = Timestamp::from_second(1_700_000_100).expect("ts");
        let at = |secs: i64| Timestamp::from_second(1_700_000_000 + secs).expect("ts").to_string();
        assert_eq!(elapsed_since(&at(0), now).expect("parses"), Duration::from_secs(100));
        assert_eq!(elapsed_since(&at(200), now).expect("parses"), Duration::ZERO, "a start in the future has waited nothing");
        assert!(elapsed_since("yesterday", now).is_err(), "an unreadable start is an error, never \"now\"");
    }
}
