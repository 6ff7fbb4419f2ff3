//! Leader election on a coordination.k8s.io Lease, so two controller replicas never both act.
//!
//! A rival takes the lease over when its clock is a full duration past the lease's renewTime (or
//! at once when the lease has no holder). The holder therefore counts from the renew time it last
//! had confirmed, taken after its read (a slow read costs nothing), and stops acting two thirds of
//! the duration later unless a renewal has landed (the process exits and its Deployment restarts
//! it): the third left covers clock skew between replicas, as client-go's 15 s lease and 10 s
//! renew deadline do. It renews a sixth of the duration after the last renew time, at once after
//! a late answer, a quarter of that after a failure. So it keeps the lease while
//! `max(sixth, write) + read + write` fits in two thirds: on a 6 s lease a read and a write of
//! 1.3 s each (the first renewal, a fixed 2 s per try from the last answer, lost it at 1 s each).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::time::Instant;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Api { namespace: String, name: String, source: kube::Error },
    #[error("lease {0} is no longer ours: {1}")]
    Lost(String, String),
    #[error("could not renew lease {name} within two thirds of its {duration:?} (the renew time last confirmed is {since:?} old; {tries})")]
    Expired { name: String, duration: Duration, since: Duration, tries: String },
}

/// When the holder renews and when it must stop acting, counted from the instant it took the
/// renew time it last wrote. Pure, so the margin before a rival may take over is tested
/// without an apiserver.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    duration: Duration,
    period: Duration,
    give_up: Duration,
}

impl Schedule {
    fn new(duration: Duration) -> Self {
        Self { duration, period: duration / 6, give_up: duration * 2 / 3 }
    }

    /// The holder acts until then: a third of the duration before a rival may take the lease.
    fn deadline(&self, renewed: Instant) -> Instant {
        renewed + self.give_up
    }

    /// When to try next after an attempt that ended at `now`: a period after the last renewal,
    /// or at once when that is past (a late answer); a quarter period after a failure (an
    /// apiserver that refuses at once is not hammered); never after the deadline.
    fn next_try(&self, renewed: Instant, now: Instant, failed: bool) -> Instant {
        let next = if failed { now + self.period / 4 } else { (renewed + self.period).max(now) };
        next.min(self.deadline(renewed))
    }
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    /// We hold the lease; the renew time we wrote was taken at this instant.
    Held(Instant),
    /// The read found this other replica holding it, its renew time not yet expired.
    HeldBy(String),
    /// Our write lost to another (a 409): the lease changed between our read and our write.
    Conflict,
}

pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), namespace: namespace.into(), name: name.into(), identity: identity.into(), duration }
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api { namespace: self.namespace.clone(), name: self.name.clone(), source }
    }

    /// One attempt to take or renew the lease.
    async fn try_acquire(&self) -> Result<Attempt, LeaderError> {
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let current = self.api.get_opt(&self.name).await.map_err(|e| self.err(e))?;
        // After the read, so the holder's clock starts as late as it safely can (and, clocks
        // not stepping back, no earlier than the renew time read). The instant first: the
        // holder must not count from later than the time it writes.
        let at = Instant::now();
        let now = Timestamp::now();
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Held(at)),
                    // Someone else created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                    Err(e) => Err(self.err(e)),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let ours = holder == self.identity;
                let expired = spec.renew_time.as_ref().is_none_or(|t| {
                    let dur = spec.lease_duration_seconds.unwrap_or(secs);
                    now.as_second() - t.0.as_second() > i64::from(dur)
                });
                if !ours && !holder.is_empty() && !expired {
                    debug!(holder, "lease held by another replica");
                    return Ok(Attempt::HeldBy(holder));
                }
                let mut new = spec;
                if !ours {
                    new.acquire_time = Some(MicroTime(now));
                    new.lease_transitions = Some(new.lease_transitions.unwrap_or(0) + 1);
                }
                new.holder_identity = Some(self.identity.clone());
                new.renew_time = Some(MicroTime(now));
                new.lease_duration_seconds = Some(secs);
                lease.spec = Some(new);
                // replace() carries resourceVersion: a concurrent writer makes this 409, not a split.
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Held(at)),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                    Err(e) => Err(self.err(e)),
                }
            }
        }
    }

    /// Blocks until this replica holds the lease; the instant its renew time was taken.
    pub async fn acquire(&self) -> Result<Instant, LeaderError> {
        let schedule = Schedule::new(self.duration);
        loop {
            match self.try_acquire().await {
                // Held only while there is time left to act: an answer that came later than that
                // is tried again at once (which renews it).
                Ok(Attempt::Held(at)) if Instant::now() < schedule.deadline(at) => return Ok(at),
                Ok(Attempt::Held(_)) => continue,
                Ok(Attempt::HeldBy(_) | Attempt::Conflict) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the lease acquired at `renewed` until it is lost; resolves with the reason.
    pub async fn keep_renewing(&self, renewed: Instant) -> LeaderError {
        renew_until_lost(&self.name, Schedule::new(self.duration), renewed, || self.renew()).await
    }

    /// One renewal: the instant of the renew time it wrote, None when it did not land (a
    /// conflict with a write of ours we did not hear back from: the lease is still ours), or
    /// [`LeaderError::Lost`] when another replica holds it now.
    async fn renew(&self) -> Result<Option<Instant>, LeaderError> {
        match self.try_acquire().await? {
            Attempt::Held(at) => Ok(Some(at)),
            Attempt::HeldBy(h) => Err(LeaderError::Lost(self.name.clone(), format!("{h} holds it"))),
            // Only a read after the conflict tells whose write won.
            Attempt::Conflict => {
                let lease = self.api.get_opt(&self.name).await.map_err(|e| self.err(e))?;
                match lease.and_then(|l| l.spec.and_then(|s| s.holder_identity)).filter(|h| !h.is_empty()) {
                    Some(h) if h == self.identity => Ok(None),
                    Some(h) => Err(LeaderError::Lost(self.name.clone(), format!("{h} holds it"))),
                    None => Err(LeaderError::Lost(self.name.clone(), "it was released or deleted".into())),
                }
            }
        }
    }

    /// Gives the lease up on a clean shutdown so a standby replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(&self.identity) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
                }
            }
        }
    }
}

/// The holder's loop: renews on `schedule` from the renew time taken at `renewed` until a try
/// finds the lease lost or none lands in time. `renew` is one try ([`LeaderElector::renew`]): the
/// instant of the renew time it wrote, None when it did not land but the lease is still ours.
async fn renew_until_lost<F, Fut>(name: &str, schedule: Schedule, mut renewed: Instant, mut renew: F) -> LeaderError
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Instant>, LeaderError>>,
{
    let mut next = schedule.next_try(renewed, renewed, false);
    // What the tries since the last confirmed renewal met, for the error.
    let (mut slowest, mut last_error) = (Duration::ZERO, None::<String>);
    loop {
        let deadline = schedule.deadline(renewed);
        if next >= deadline {
            let tries = match last_error {
                Some(e) => format!("the last try failed: {e}"),
                None if slowest.is_zero() => "no try since".into(),
                None => format!("the slowest try since took {slowest:?}: an apiserver or etcd this slow needs a longer --lease-seconds"),
            };
            return LeaderError::Expired { name: name.into(), duration: schedule.duration, since: Instant::now() - renewed, tries };
        }
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        // A renewal that hangs (a half-open connection) must not keep us leading.
        let failed = match tokio::time::timeout_at(deadline, renew()).await {
            Ok(Ok(Some(at))) => {
                // Only a late one is logged: a line a second would bury a log's tail.
                let took = started.elapsed();
                if took > schedule.period {
                    warn!(took_ms = took.as_millis() as u64, lease = ?schedule.duration, "lease renewal answered late");
                }
                (renewed, slowest, last_error) = (at, Duration::ZERO, None);
                false
            }
            Ok(Ok(None)) => true,
            Ok(Err(LeaderError::Api { source, .. })) => {
                warn!(error = %source, "lease renewal failed");
                last_error = Some(source.to_string());
                true
            }
            Ok(Err(lost)) => return lost,
            Err(_) => true,
        };
        slowest = slowest.max(started.elapsed());
        next = schedule.next_try(renewed, Instant::now(), failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(6);
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_holder_stops_a_third_of_the_lease_before_a_rival_may_take_it() {
        let s = Schedule::new(LEASE);
        let t0 = Instant::now();
        assert_eq!(s.deadline(t0), t0 + ms(4000));
        assert_eq!(t0 + LEASE - s.deadline(t0), LEASE / 3);
    }

    #[test]
    fn next_try_renews_each_sixth_retries_soon_after_a_failure_and_never_past_the_deadline() {
        let s = Schedule::new(LEASE);
        let t0 = Instant::now();
        // (answer at, failed) -> next try
        let table = [
            (ms(100), false, ms(1000)),  // a quick renewal: a sixth after the renew time
            (ms(1600), false, ms(1600)), // a late answer: at once
            (ms(100), true, ms(350)),    // a failure: a quarter period later
            (ms(3900), true, ms(4000)),  // not past the deadline
            (ms(4500), false, ms(4000)),
        ];
        for (now, failed, want) in table {
            assert_eq!(s.next_try(t0, t0 + now, failed), t0 + want, "answer at {now:?}, failed {failed}");
        }
    }

    /// The holder's loop on the schedule alone, each try (and the acquire's) a read taking
    /// `read` and a write taking `write`: how many renewals land before it must stop (at most `n`).
    fn renewals_kept(read: Duration, write: Duration, n: usize) -> usize {
        let s = Schedule::new(LEASE);
        let mut renewed = Instant::now();
        let mut next = s.next_try(renewed, renewed + write, false);
        for done in 0..n {
            let at = next + read;
            if at + write > s.deadline(renewed) {
                return done;
            }
            renewed = at;
            next = s.next_try(renewed, at + write, false);
        }
        n
    }

    #[test]
    fn a_slow_apiserver_keeps_the_lease_while_a_sixth_or_the_write_plus_a_read_and_a_write_fit_the_window() {
        assert_eq!(renewals_kept(ms(10), ms(10), 100), 100);
        assert_eq!(renewals_kept(ms(1000), ms(1000), 100), 100);
        // 1.3 + 1.3 + 1.3 s fit the 4 s; 1.4 s each do not, from the acquire on.
        assert_eq!(renewals_kept(ms(1300), ms(1300), 100), 100);
        assert_eq!(renewals_kept(ms(1400), ms(1400), 100), 0);
        // One write slower than the whole window is the end of it.
        assert_eq!(renewals_kept(ms(10), ms(3100), 100), 0);
    }

    /// One try of the real loop: a read of `read`, the renew time, a write of `write`.
    async fn slow_try(read: Duration, write: Duration) -> Result<Option<Instant>, LeaderError> {
        tokio::time::sleep(read).await;
        let at = Instant::now();
        tokio::time::sleep(write).await;
        Ok(Some(at))
    }

    #[tokio::test]
    async fn the_loop_keeps_a_lease_whose_every_renewal_takes_longer_than_a_third_of_it() {
        // 1.1 + 1.1 s a try on a 6 s lease: the first renewal (2 s per try) lost it. Real time,
        // with 0.7 s to spare in each window.
        let renewed = Instant::now();
        let run = renew_until_lost("l", Schedule::new(LEASE), renewed, || slow_try(ms(1100), ms(1100)));
        let r = tokio::time::timeout(Duration::from_secs(10), run).await;
        assert!(r.is_err(), "lost the lease: {}", r.map(|e| e.to_string()).unwrap_or_default());
    }

    #[tokio::test]
    async fn a_renewal_that_hangs_ends_the_lead_two_thirds_of_the_lease_after_the_last_renew_time() {
        let lease = Duration::from_secs(3);
        let renewed = Instant::now();
        let e = renew_until_lost("l", Schedule::new(lease), renewed, std::future::pending).await;
        let after = renewed.elapsed();
        assert!(matches!(e, LeaderError::Expired { .. }), "{e}");
        assert!(after >= ms(2000) && after < ms(3000), "ended after {after:?}");
        assert!(e.to_string().contains("the slowest try since took"), "{e}");
    }

    #[tokio::test]
    async fn conflicts_with_our_own_writes_are_retried_and_a_rival_ends_the_lead_at_once() {
        let renewed = Instant::now();
        let mut tries = 0;
        let run = renew_until_lost("l", Schedule::new(LEASE), renewed, || {
            tries += 1;
            let n = tries;
            async move {
                match n {
                    1..=3 => Ok(None),
                    4 => Ok(Some(Instant::now())),
                    _ => Err(LeaderError::Lost("l".into(), "b holds it".into())),
                }
            }
        });
        let e = run.await;
        assert_eq!(e.to_string(), "lease l is no longer ours: b holds it");
        // Three retries a quarter period apart after the first try at a sixth, the renewal,
        // then a sixth to the try that finds the rival.
        let after = renewed.elapsed();
        assert!(after >= ms(2750) && after < ms(3750), "ended after {after:?}");
        assert_eq!(tries, 5);
    }
}
