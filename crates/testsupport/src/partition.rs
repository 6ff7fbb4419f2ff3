//! Two globals whose peer links (each global's kubeconfig Secret for the other) pass through
//! TCP proxies that can blackhole, as a partition between the globals would; a sampler of both
//! statuses that records when both held the primary role. Used by `tests/partition.rs` (issue
//! 18's scenarios) and `tests/nemesis.rs` (seeded random schedules).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, DRTopologyStatus, Phase, Role};
use kube::api::Api;

use super::faults::{Mode, Proxy};
use super::pair::{Controller, Pair, TOPOLOGY};
use super::Global;

pub const STEADY: Duration = Duration::from_secs(90);
pub const FAILOVER: Duration = Duration::from_secs(120);

pub fn primary_steady(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)
}

pub fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

pub fn stood_down(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.demotion.as_ref().is_some_and(|d| d.stood_down.is_some())
}

/// A pair whose peer links pass through proxies: `a_to_b` carries A's calls to B's apiserver.
pub struct Partitionable {
    pub pair: Pair,
    a_to_b: Proxy,
    b_to_a: Proxy,
}

impl Partitionable {
    pub async fn start() -> Partitionable {
        let pair = Pair::start().await;
        let a_to_b = Proxy::start(api_addr(&pair.b));
        let b_to_a = Proxy::start(api_addr(&pair.a));
        for (g, peer, proxy) in [(&pair.a, &pair.b, &a_to_b), (&pair.b, &pair.a, &b_to_a)] {
            // The same kubeconfig, its server the proxy (the serving certificate names
            // 127.0.0.1, whatever the port).
            let kc = std::fs::read_to_string(&peer.api.kubeconfig).expect("read kubeconfig");
            let proxied = kc.replace(&peer.api.url, &format!("https://{}", proxy.addr));
            assert_ne!(kc, proxied, "{}'s kubeconfig names its apiserver {}", peer.name, peer.api.url);
            let path = pair.dir.path().join(format!("{}-via-proxy.kubeconfig", peer.name));
            std::fs::write(&path, proxied).expect("write kubeconfig");
            let secret = format!("{}-kubeconfig", peer.name);
            g.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", &secret]);
            g.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", &secret, &format!("--from-file=kubeconfig={}", path.display())]);
        }
        Partitionable { pair, a_to_b, b_to_a }
    }

    pub fn partition(&self, cut: bool) {
        let mode = if cut { Mode::Blackhole } else { Mode::Pass };
        self.a_to_b.set(mode);
        self.b_to_a.set(mode);
        // Connections the controllers keep open stall too: nothing crosses.
        if !cut {
            return;
        }
        self.a_to_b.stall_open_connections();
        self.b_to_a.stall_open_connections();
    }

    pub async fn steady(&self) -> (Controller, Controller) {
        steady_pair(&self.pair).await
    }
}

/// Both controllers started on `global-a` as primary, until A is steady and B in sync.
pub async fn steady_pair(pair: &Pair) -> (Controller, Controller) {
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    pair.wait(&pair.a, "A primary and steady", STEADY, &[&ca, &cb], primary_steady).await;
    pair.wait(&pair.b, "B standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    (ca, cb)
}

/// A proxy on `source`'s etcd for the mirror that pulls from it: the global that mirrors gets a
/// topology naming the proxy as `source`'s etcd endpoint ([`MirrorLink::topology`]), since the
/// controller takes its mirror's source from `spec.clusters[].etcd.endpoints`.
pub struct MirrorLink {
    proxy: Proxy,
    direct: String,
    /// The proxy's URL in the source's scheme (TLS passes through it untouched).
    proxied: String,
}

impl MirrorLink {
    pub fn start(source: &Global) -> MirrorLink {
        let (scheme, hostport) = source.etcd.client_url.trim_end_matches('/').split_once("://").expect("etcd client URL is scheme://IP:port");
        let proxy = Proxy::start(hostport.parse().expect("etcd client URL is scheme://IP:port"));
        MirrorLink { direct: source.etcd.client_url.clone(), proxied: format!("{scheme}://{}", proxy.addr), proxy }
    }

    /// `yaml` (a topology) with the source's etcd endpoint replaced by the proxy.
    pub fn topology(&self, yaml: &str) -> String {
        let (direct, proxied) = (format!("endpoints: [{}]", self.direct), format!("endpoints: [{}]", self.proxied));
        assert!(yaml.contains(&direct), "the topology names {direct}");
        yaml.replace(&direct, &proxied)
    }

    /// Blackholes the link (open connections stall too) or lets it pass again.
    pub fn cut(&self, cut: bool) {
        self.proxy.set(if cut { Mode::Blackhole } else { Mode::Pass });
        if cut {
            self.proxy.stall_open_connections();
        }
    }
}

fn api_addr(g: &Global) -> std::net::SocketAddr {
    let hostport = g.api.url.trim_start_matches("https://").trim_end_matches('/');
    hostport.parse().expect("apiserver URL is https://IP:port")
}

/// Both statuses sampled every 200 ms in the background: when both globals held the primary
/// role (offsets from `started`).
pub struct Sampler {
    started: Instant,
    stop: Arc<AtomicBool>,
    both: Arc<Mutex<Vec<Duration>>>,
    samples: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub async fn start(a: &Global, b: &Global) -> Sampler {
        let (ca, cb) = (a.client().await, b.client().await);
        let stop = Arc::new(AtomicBool::new(false));
        let both = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let (s, w, n) = (stop.clone(), both.clone(), samples.clone());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let (aa, ab): (Api<DRTopology>, Api<DRTopology>) = (Api::all(ca), Api::all(cb));
            let role = |t: Result<Option<DRTopology>, kube::Error>| t.ok().flatten().and_then(|t| t.status).and_then(|s| s.role);
            while !s.load(Ordering::SeqCst) {
                let (ra, rb) = tokio::join!(aa.get_opt(TOPOLOGY), ab.get_opt(TOPOLOGY));
                if role(ra) == Some(Role::Primary) && role(rb) == Some(Role::Primary) {
                    w.lock().expect("samples").push(started.elapsed());
                }
                *n.lock().expect("count") += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { started, stop, both, samples, task }
    }

    /// Samples taken, and those with two primaries before and after `healed` (an offset).
    pub async fn finish(self, healed: Option<Duration>) -> (u64, Vec<Duration>, Vec<Duration>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let n = *self.samples.lock().expect("count");
        let both = self.both.lock().expect("samples").clone();
        let (during, after) = both.into_iter().partition(|t| healed.is_none_or(|h| *t < h));
        (n, during, after)
    }

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

/// S1's bound while partitioned: both hold the primary role only from the new primary's Done
/// until a look of the old one sees DNS answer the peer (a 5 s requeue, the peer's 4 s timeout
/// and a 2 s DNS query each look, and a slow machine).
pub const PARTITION_OVERLAP_BOUND: Duration = Duration::from_secs(20);

/// How long two primaries overlapped: from the first to the last sample that saw both.
pub fn overlap(during: &[Duration]) -> Duration {
    match (during.first(), during.last()) {
        (Some(f), Some(l)) => *l - *f,
        _ => Duration::ZERO,
    }
}

/// Seconds from `from` to `to`, both RFC 3339 stamps of status.
pub fn secs_between(from: Option<&str>, to: Option<&str>) -> Option<f64> {
    let (f, t): (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) = (from?.parse().ok()?, to?.parse().ok()?);
    Some(t.duration_since(f).as_secs_f64())
}

pub fn step_started(s: &DRTopologyStatus, step: &str) -> Option<String> {
    s.failover.as_ref()?.steps.iter().find(|x| x.name == step)?.started_at.clone()
}
