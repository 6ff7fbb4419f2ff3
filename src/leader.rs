//! Leader election on a coordination.k8s.io Lease, so two controller replicas never both act.
//!
//! The holder renews every third of the lease duration; a holder that cannot renew before its
//! lease runs out stops acting (the process exits and its Deployment restarts it), the same
//! trade-off client-go's leaderelection makes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Api { namespace: String, name: String, source: kube::Error },
    #[error("lease {0} was taken by {1}")]
    Lost(String, String),
    #[error("could not renew lease {0} within its duration")]
    Expired(String),
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

    /// One attempt: Ok(true) when we hold the lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        match self.api.get_opt(&self.name).await.map_err(|e| self.err(e))? {
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
                    Ok(_) => Ok(true),
                    // Someone else created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
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
                    return Ok(false);
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
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(self.err(e)),
                }
            }
        }
    }

    /// Blocks until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.try_acquire().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until the lease is lost; resolves with the reason.
    pub async fn keep_renewing(&self) -> LeaderError {
        let mut last_ok = tokio::time::Instant::now();
        // Stop before a rival may take the lease over (it waits the full duration).
        let give_up = self.duration * 2 / 3;
        loop {
            tokio::time::sleep(self.duration / 3).await;
            // A renewal that hangs (a half-open connection) must not keep us leading.
            let left = give_up.saturating_sub(last_ok.elapsed());
            let attempt = match tokio::time::timeout(left, self.try_acquire()).await {
                Ok(r) => r,
                Err(_) => return LeaderError::Expired(self.name.clone()),
            };
            match attempt {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let holder = self.api.get_opt(&self.name).await.ok().flatten().and_then(|l| l.spec.and_then(|s| s.holder_identity)).unwrap_or_default();
                    return LeaderError::Lost(self.name.clone(), holder);
                }
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() >= give_up {
                        return LeaderError::Expired(self.name.clone());
                    }
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
