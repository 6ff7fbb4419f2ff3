//! Issue 18's scenarios on two real globals (etcd + kube-apiserver + `drctl controller` each,
//! PowerDNS): every peer link (each global's kubeconfig Secret for the other) goes through a
//! TCP proxy that can blackhole, as a partition between the globals would. Each test samples
//! both statuses all along and asserts the safe outcome; each prints one `FAULT | ...` line
//! (RELIABILITY.md records them).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, DRTopologyStatus, Phase, Role};
use kube::api::Api;
use support::faults::{self, Mode, Proxy};
use support::pair::{Controller, Pair, DOMAIN, TOPOLOGY, VIP_B};
use support::Global;

const STEADY: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(120);

fn primary_steady(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)
}

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

fn stood_down(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.demotion.as_ref().is_some_and(|d| d.stood_down.is_some())
}

/// A pair whose peer links pass through proxies: `a_to_b` carries A's calls to B's apiserver.
struct Partitionable {
    pair: Pair,
    a_to_b: Proxy,
    b_to_a: Proxy,
}

impl Partitionable {
    async fn start() -> Partitionable {
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

    fn partition(&self, cut: bool) {
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

    async fn steady(&self) -> (Controller, Controller) {
        let pair = &self.pair;
        pair.apply_both("global-a");
        let ca = pair.controller(&pair.a, &[]);
        let cb = pair.controller(&pair.b, &[]);
        pair.wait(&pair.a, "A primary and steady", STEADY, &[&ca, &cb], primary_steady).await;
        pair.wait(&pair.b, "B standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
        (ca, cb)
    }
}

fn api_addr(g: &Global) -> std::net::SocketAddr {
    let hostport = g.api.url.trim_start_matches("https://").trim_end_matches('/');
    hostport.parse().expect("apiserver URL is https://IP:port")
}

/// Both statuses sampled every 200 ms in the background: when both globals held the primary
/// role (offsets from `started`).
struct Sampler {
    started: Instant,
    stop: Arc<AtomicBool>,
    both: Arc<Mutex<Vec<Duration>>>,
    samples: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(a: &Global, b: &Global) -> Sampler {
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
    async fn finish(self, healed: Option<Duration>) -> (u64, Vec<Duration>, Vec<Duration>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let n = *self.samples.lock().expect("count");
        let both = self.both.lock().expect("samples").clone();
        let (during, after) = both.into_iter().partition(|t| healed.is_none_or(|h| *t < h));
        (n, during, after)
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

/// S1's bound while partitioned: both hold the primary role only from the new primary's Done
/// until a look of the old one sees DNS answer the peer (a 5 s requeue, the peer's 4 s timeout
/// and a 2 s DNS query each look, and a slow machine).
const PARTITION_OVERLAP_BOUND: Duration = Duration::from_secs(20);

/// How long two primaries overlapped: from the first to the last sample that saw both.
fn overlap(during: &[Duration]) -> Duration {
    match (during.first(), during.last()) {
        (Some(f), Some(l)) => *l - *f,
        _ => Duration::ZERO,
    }
}

/// Seconds from `from` to `to`, both RFC 3339 stamps of status.
fn secs_between(from: Option<&str>, to: Option<&str>) -> Option<f64> {
    let (f, t): (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) = (from?.parse().ok()?, to?.parse().ok()?);
    Some(t.duration_since(f).as_secs_f64())
}

fn step_started(s: &DRTopologyStatus, step: &str) -> Option<String> {
    s.failover.as_ref()?.steps.iter().find(|x| x.name == step)?.started_at.clone()
}

/// Scenario 1: partitioned with both alive, the flip applied to B only. B declares a disaster
/// after `demotionTimeout` and fails over; A sees DNS answer B's VIP and stands down (fenced)
/// though its spec still names it, and stays a standby after the partition heals, until the
/// flip reaches it and it mirrors from B. Before: both Primary 60 s after the heal.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_with_the_flip_on_one_side_ends_with_one_primary() {
    let p = Partitionable::start().await;
    let (ca, cb) = p.steady().await;
    let pair = &p.pair;
    let sampler = Sampler::start(&pair.a, &pair.b).await;
    p.partition(true);
    let cut = Instant::now();
    pair.apply(&pair.b, &pair.topology_yaml("global-b"));
    let b = pair.wait(&pair.b, "B primary after a disaster failover", FAILOVER, &[&ca, &cb], primary_steady).await;
    let b_done = cut.elapsed();
    let a = pair.wait(&pair.a, "A stood down (DNS answers B), partitioned", Duration::from_secs(30), &[&ca, &cb], stood_down).await;
    let (bs, as_) = (b.status.expect("b status"), a.status.expect("a status"));
    let demote = bs.failover.as_ref().and_then(|f| f.steps.iter().find(|s| s.name == "Demote")).and_then(|s| s.message.clone()).unwrap_or_default();
    assert!(demote.contains("disaster"), "B proceeded without A's token: {demote}");
    // The window in which both could write: B's fence lifts at StopSync; A stands down once a
    // look of its sees DNS on B (every 5 s).
    let switched_to_down = secs_between(step_started(&bs, "SwitchDNS").as_deref(), as_.demotion.as_ref().and_then(|d| d.acknowledged_at.as_deref()));
    let stop_to_down = secs_between(step_started(&bs, "StopSync").as_deref(), as_.demotion.as_ref().and_then(|d| d.acknowledged_at.as_deref()));
    assert!(bs.term > as_.term, "B's term {} past A's {}", bs.term, as_.term);

    // Heal: A sees B's higher term and stays down; its spec still names A.
    p.partition(false);
    let healed = sampler.now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let a_after = pair.status(&pair.a).await.and_then(|t| t.status).expect("a status");
    let b_after = pair.status(&pair.b).await.and_then(|t| t.status).expect("b status");
    assert!(stood_down(&a_after), "A holds as a fenced standby after the heal: {:?} {:?}", a_after.role, a_after.phase);
    assert_eq!(b_after.role, Some(Role::Primary));
    // Argo CD on A catches up with Git: A follows B.
    pair.apply(&pair.a, &pair.topology_yaml("global-b"));
    pair.wait(&pair.a, "A standby in sync with B", STEADY, &[&ca, &cb], standby_in_sync).await;
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), vec![VIP_B]);
    let (n, during, after) = sampler.finish(Some(healed)).await;
    assert!(after.is_empty(), "two primaries after the heal in {} of {n} samples, at {after:?}", after.len());
    assert!(overlap(&during) < PARTITION_OVERLAP_BOUND, "two primaries while partitioned for {:?}: {during:?}", overlap(&during));
    faults::report(
        "partition, flip applied to B only",
        1,
        1,
        0,
        &format!(
            "B primary {:.1}s after the cut; A stood down {:.1}s after B's SwitchDNS began ({:.1}s after B's StopSync lifted its fence); both role Primary in {} of {n} samples while partitioned (over {:.1}s), 0 after the heal",
            b_done.as_secs_f64(),
            switched_to_down.unwrap_or(f64::NAN),
            stop_to_down.unwrap_or(f64::NAN),
            during.len(),
            overlap(&during).as_secs_f64()
        ),
    );
}

/// Scenario 5: B's DRTopology deleted and re-applied (its status lost) while A is unreachable
/// and still primary. B comes back from its role memory as a standby and runs a failover whose
/// Demote waits `demotionTimeout` again; before, it bootstrapped as a second primary in 4.2 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_status_never_bootstraps_a_second_primary() {
    let p = Partitionable::start().await;
    let (ca, mut cb) = p.steady().await;
    let pair = &p.pair;
    let sampler = Sampler::start(&pair.a, &pair.b).await;
    p.partition(true);
    let yaml = pair.topology_yaml("global-b");
    pair.apply(&pair.b, &yaml);
    pair.wait(&pair.b, "B failing over, Demote waiting", FAILOVER, &[&ca, &cb], |s| step_started(s, "Demote").is_some()).await;
    // Restarted around it, so nothing of the old status is left in the process either: only
    // the role memory can bring it back.
    cb.kill();
    pair.b.api.kubectl_ok(&["delete", "drtopology", TOPOLOGY]);
    pair.apply(&pair.b, &yaml);
    cb.restart();
    let reapplied = Instant::now();
    // B's first status after the re-apply (its controller waits out the old Lease first), and
    // for 5 s after it: never primary (it was within 4.2 s).
    let api: Api<DRTopology> = Api::all(pair.b.client().await);
    let mut restored: Option<DRTopologyStatus> = None;
    let mut first_seen: Option<Instant> = None;
    while reapplied.elapsed() < Duration::from_secs(40) && first_seen.is_none_or(|t| t.elapsed() < Duration::from_secs(5)) {
        let st = api.get_opt(TOPOLOGY).await.ok().flatten().and_then(|t| t.status).filter(|s| s.role.is_some());
        if let Some(s) = st {
            assert_ne!(s.role, Some(Role::Primary), "B primary {:.1}s after its status was lost", reapplied.elapsed().as_secs_f64());
            first_seen.get_or_insert_with(Instant::now);
            restored.get_or_insert(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restored = restored.expect("B wrote a status");
    assert_eq!((restored.role, restored.peer_term), (Some(Role::Standby), 1), "B restored from its memory");
    let events = pair.b.api.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("StatusRestored"), "an Event says the status was restored: {events}\n{}", cb.log_tail());
    // The disaster failover runs as any other (Demote waits demotionTimeout: 10 s).
    let b = pair.wait(&pair.b, "B primary after a full failover", FAILOVER, &[&ca, &cb], primary_steady).await;
    let b_primary = reapplied.elapsed();
    let f = b.status.as_ref().and_then(|s| s.failover.clone()).expect("B has a failover record, not a bootstrap");
    assert!(f.completed_at.is_some() && f.steps.iter().any(|s| s.name == "Demote"), "{f:?}");
    pair.wait(&pair.a, "A stood down (DNS answers B)", Duration::from_secs(30), &[&ca, &cb], stood_down).await;
    p.partition(false);
    let (n, during, _) = sampler.finish(None).await;
    assert!(overlap(&during) < PARTITION_OVERLAP_BOUND, "two primaries while partitioned for {:?}: {during:?}", overlap(&during));
    faults::report(
        "status lost on B (DRTopology deleted and re-applied) while A is partitioned and primary",
        1,
        1,
        0,
        &format!(
            "B restored as standby (peer term 1); primary {:.1}s after the re-apply through a full failover; both role Primary in {} of {n} samples (over {:.1}s) until A stood down",
            b_primary.as_secs_f64(),
            during.len(),
            overlap(&during).as_secs_f64()
        ),
    );
}
