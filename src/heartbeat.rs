//! The replication heartbeat: the RPO measured, not assumed. A primary writes the time into a
//! key of its etcd every few seconds; the key is under `/registry/` (a group no apiserver
//! serves), so the standby's mirror replicates it like any write, and the standby's
//! `drctl_replication_lag_seconds` is now − the newest heartbeat it has applied. The mirror's
//! own lag (`drctl_sync_lag_seconds`) counts from the revisions it was told of; the heartbeat
//! also catches a mirror that silently stopped hearing of any.
//!
//! It is written only while a reconcile has just found this cluster the steady primary, and
//! never while a reconcile acts (the lock every reconcile holds): a demotion's final revision is
//! never followed by a heartbeat, so a planned switchover still loses no revision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::etcd::{self, Endpoint};

/// Where the heartbeat of the topology `name` lives in both globals' etcd (the same key on
/// both: after a failover the new primary's beats replace the old one's, nothing is left over).
pub fn key(topology: &str) -> String {
    format!("{}drctl.io/heartbeats/{topology}", crate::keyspace::REGISTRY_PREFIX)
}

/// True for a heartbeat key: drctl's own clock, not anyone's data (a copy does not archive it).
pub fn is_heartbeat(key: &[u8]) -> bool {
    key.starts_with(format!("{}drctl.io/heartbeats/", crate::keyspace::REGISTRY_PREFIX).as_bytes())
}

/// How often a primary writes it.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How long one write or read may hold the reconcile lock.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One beat: who wrote it, when (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub cluster: String,
    pub time: String,
}

impl Beat {
    pub fn now(cluster: &str) -> Beat {
        Beat { cluster: cluster.to_string(), time: Timestamp::now().to_string() }
    }

    pub fn decode(bytes: &[u8]) -> Option<Beat> {
        serde_json::from_slice(bytes).ok()
    }

    /// Seconds from the beat to `now` (never negative: a primary's clock ahead reads as 0).
    pub fn age(&self, now: Timestamp) -> Option<f64> {
        let t: Timestamp = self.time.parse().ok()?;
        Some(((now.as_millisecond() - t.as_millisecond()).max(0) as f64) / 1000.0)
    }
}

/// What the heartbeat task does now, as the last reconcile left it.
#[derive(Clone, Debug)]
pub enum Duty {
    /// Write beats into this (own) etcd: the steady primary.
    Write { topology: String, cluster: String, etcd: Endpoint },
    /// Read the replicated beat from this (own) etcd: a standby.
    Read { topology: String, etcd: Endpoint },
}

/// Shared between the reconciles (which set the duty) and the heartbeat task.
#[derive(Default)]
pub struct Heartbeat {
    duty: std::sync::Mutex<Option<Duty>>,
    /// Cleared at the start of every reconcile, set by its end: a reconcile that ended in an
    /// error (say, mid-demotion) leaves no writing duty behind. Reading needs no arming: it
    /// changes nothing, and a standby keeps measuring through a failed reconcile.
    armed: AtomicBool,
    /// The newest beat a standby read.
    last: std::sync::Mutex<Option<Beat>>,
}

impl Heartbeat {
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    pub fn set(&self, duty: Option<Duty>) {
        // A beat read as a standby means nothing once this cluster no longer reads.
        if !matches!(duty, Some(Duty::Read { .. })) {
            self.record(None);
        }
        if let Ok(mut d) = self.duty.lock() {
            *d = duty;
        }
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Whether the duty already is `write`/read of `topology` at `endpoint`, TLS material
    /// included (a Secret rotated in place makes a new duty, and the task a new connection).
    pub fn is(&self, write: bool, topology: &str, endpoint: &Endpoint) -> bool {
        let Ok(d) = self.duty.lock() else { return false };
        match &*d {
            Some(Duty::Write { topology: t, etcd, .. }) => write && t == topology && etcd.digest() == endpoint.digest(),
            Some(Duty::Read { topology: t, etcd }) => !write && t == topology && etcd.digest() == endpoint.digest(),
            None => false,
        }
    }

    /// Keeps the duty and marks it current (set by a reconcile that found it unchanged).
    pub fn rearm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn duty(&self) -> Option<Duty> {
        let duty = self.duty.lock().ok()?.clone()?;
        (self.armed.load(Ordering::SeqCst) || matches!(duty, Duty::Read { .. })).then_some(duty)
    }

    /// The replication lag a standby measured: now − the newest beat it has applied.
    pub fn lag_seconds(&self, now: Timestamp) -> Option<f64> {
        self.last.lock().ok()?.as_ref()?.age(now)
    }

    fn record(&self, beat: Option<Beat>) {
        if let Ok(mut l) = self.last.lock() {
            *l = beat;
        }
    }
}

/// The heartbeat task: every [`INTERVAL`], under `lock` (skipped while a reconcile holds it),
/// writes or reads the beat as the duty says. Errors are logged once per change and retried.
pub async fn run<L: std::ops::Deref<Target = tokio::sync::Mutex<()>>>(hb: Arc<Heartbeat>, lock: L) {
    // The connection and the digest of the endpoint it was made to.
    let mut conn: Option<([u8; 32], etcd::Conn)> = None;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let Ok(_guard) = lock.try_lock() else { continue };
        let Some(duty) = hb.duty() else { continue };
        let (topology, endpoint) = match &duty {
            Duty::Write { topology, etcd, .. } | Duty::Read { topology, etcd } => (topology, etcd),
        };
        // Bounded: the lock held here keeps every reconcile waiting.
        let io = async {
            let digest = endpoint.digest();
            if conn.as_ref().is_none_or(|(d, _)| *d != digest) {
                conn = Some((digest, etcd::connect(endpoint).await.map_err(|e| e.to_string())?));
            }
            let Some((_, c)) = conn.as_mut() else { return Ok(()) };
            match &duty {
                Duty::Write { cluster, .. } => {
                    let value = serde_json::to_vec(&Beat::now(cluster)).unwrap_or_default();
                    c.kv.put(key(topology), value, None).await.map(|_| ()).map_err(|e| e.to_string())
                }
                Duty::Read { .. } => {
                    let r = c.kv.get(key(topology), None).await.map_err(|e| e.to_string())?;
                    // None read keeps the last beat: the lag is since the newest beat this
                    // standby ever applied, and grows while none arrives (a resync that briefly
                    // lacks the key must not read as "unknown").
                    if let Some(beat) = r.kvs().first().and_then(|kv| Beat::decode(kv.value())) {
                        hb.record(Some(beat));
                    }
                    Ok(())
                }
            }
        };
        let result = tokio::time::timeout(IO_TIMEOUT, io).await.unwrap_or_else(|_| Err(format!("etcd did not answer within {IO_TIMEOUT:?}")));
        let error = result.err();
        if error.is_some() {
            conn = None;
        }
        if error != last_error {
            if let Some(e) = &error {
                tracing::warn!(error = %e, "replication heartbeat failed; retrying");
            }
            last_error = error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_replicated_and_recognised() {
        let k = key("platform");
        assert_eq!(k, "/registry/drctl.io/heartbeats/platform");
        let filter = crate::keyspace::Filter::with_default_namespaces(&Default::default());
        assert!(filter.copies(k.as_bytes()), "the mirror copies the heartbeat");
        assert!(is_heartbeat(k.as_bytes()));
        assert!(!is_heartbeat(b"/registry/drctl.io/drtopologies/platform"));
    }

    #[test]
    fn the_age_is_now_minus_the_beat_and_never_negative() {
        let t: Timestamp = "2026-12-05T20:00:00Z".parse().expect("time");
        let beat = Beat { cluster: "global-a".into(), time: t.to_string() };
        let later = Timestamp::from_millisecond(t.as_millisecond() + 7_500).expect("time");
        let earlier = Timestamp::from_millisecond(t.as_millisecond() - 3_000).expect("time");
        assert_eq!(beat.age(later), Some(7.5));
        assert_eq!(beat.age(earlier), Some(0.0), "a primary clock ahead reads as no lag");
        assert_eq!(Beat { time: "soon".into(), ..beat.clone() }.age(later), None);
        assert_eq!(Beat::decode(&serde_json::to_vec(&beat).expect("json")), Some(beat));
        assert_eq!(Beat::decode(b"garbage"), None);
    }

    #[test]
    fn a_disarmed_heartbeat_writes_nothing_but_keeps_reading() {
        let hb = Heartbeat::default();
        let write = Duty::Write { topology: "p".into(), cluster: "a".into(), etcd: Endpoint::default() };
        hb.set(Some(write));
        assert!(hb.duty().is_some());
        hb.disarm();
        assert!(hb.duty().is_none(), "a reconcile that has not finished leaves no writing duty");

        // A standby whose reconcile failed keeps its last beat and goes on reading: its lag
        // must not turn unknown (NaN on /metrics) because one reconcile did not finish.
        hb.set(Some(Duty::Read { topology: "p".into(), etcd: Endpoint::default() }));
        hb.record(Some(Beat::now("a")));
        hb.disarm();
        assert!(matches!(hb.duty(), Some(Duty::Read { .. })));
        assert!(hb.lag_seconds(Timestamp::now()).is_some());
        hb.set(None);
        assert!(hb.lag_seconds(Timestamp::now()).is_none(), "a cluster that stopped reading forgets the beat");
    }
}
