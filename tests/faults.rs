//! The fault matrix: the mirror and the controller broken on purpose, on real etcds and real
//! apiservers, each run judged by `drctl check` at the source's head (0 missed / 0 surplus /
//! 0 diverged) and by a ledger of every write the source acknowledged. Each test prints one
//! `FAULT | ...` line (run with `--nocapture`); RELIABILITY.md records those figures.
//!
//! `DRCTL_FAULT_SEED` and `DRCTL_FAULT_RUNS` replay or extend the kill -9 runs.

use drctl_testsupport as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::etcd::Endpoint;
use drctl::keyspace::Filter;
use drctl::mirror::{Mirror, MirrorConfig, Phase as MirrorPhase, Progress, Tuning};
use drctl::topology::{ExcludeSpec, Role};
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use support::faults::{self, DrctlProcess, Ledger, Mode, Proxy, Rng, Verdict};
use support::pair::{Pair, DOMAIN, VIP_A, VIP_B};
use support::partition::{primary_steady, standby_in_sync, steady_pair, FAILOVER, STEADY};
use support::Etcd;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn head(c: &mut Client) -> i64 {
    c.get("\0", Some(GetOptions::new().with_count_only())).await.expect("head").header().expect("header").revision()
}

/// `n` keys of 512 bytes in a replicated namespace, so an initial copy takes a while.
async fn preload(c: &mut Client, ns: &str, n: usize) {
    let keys: Vec<usize> = (0..n).collect();
    for chunk in keys.chunks(100) {
        let ops: Vec<TxnOp> = chunk.iter().map(|i| TxnOp::put(format!("/registry/secrets/{ns}/s{i}"), vec![b'p'; 512], None)).collect();
        c.txn(Txn::new().and_then(ops)).await.expect("preload");
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(c: &Client, ns: &str, rate: u64, seed: u64, ledger: &Arc<Mutex<Ledger>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(faults::write_load(c.clone(), ns.to_string(), rate, seed, None, stop.clone(), ledger.clone()));
        Load { stop, task }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("write load");
    }
}

fn mirror_args(src: &Etcd, dst: &Etcd) -> Vec<String> {
    [vec!["mirror".to_string()], src.flags("source", "source-"), dst.flags("dest", "dest-")].concat()
}

/// An in-process mirror (for its progress) until `stop` fires.
fn in_process_mirror(
    source: Endpoint,
    dest: Endpoint,
) -> (tokio::sync::watch::Receiver<Progress>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let tuning = Tuning { progress_timeout: Duration::from_secs(2), anti_entropy_after: None, ..Tuning::default() };
    let m = Arc::new(Mirror::new(MirrorConfig { source, dest, filter: Filter::with_default_namespaces(&ExcludeSpec::default()), tuning }));
    let rx = m.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        m.run(async {
            let _ = stopped.await;
        })
        .await
    });
    (rx, stop, task)
}

async fn judge(src: &Etcd, dst: &Etcd, s: &mut Client, d: &mut Client, ledger: &Arc<Mutex<Ledger>>, catch_up: Duration) -> (Verdict, Duration) {
    let started = Instant::now();
    let caught = faults::wait_caught_up(s, d, catch_up).await;
    let took = started.elapsed();
    let l = ledger.lock().expect("ledger").clone();
    let mut v = faults::verdict(src, dst, d, &l).await;
    if let Err(e) = caught {
        v.consistent = false;
        eprintln!("{e}");
    }
    (v, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_killed_9_at_random_points() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    preload(&mut s, "preloaded", 20_000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("mirror.log");
    let (seed, runs) = (env_u64("DRCTL_FAULT_SEED", 7), env_u64("DRCTL_FAULT_RUNS", 20));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let args = mirror_args(&src, &dst);
    let (mut survived, mut lost, mut failures, mut kill_ms) = (0, 0, Vec::new(), Vec::new());
    // Where each kill landed, read from the destination's checkpoint right after it.
    let (mut before_checkpoint, mut in_copy, mut following) = (0, 0, 0);
    for run in 0..runs {
        let mut rng = Rng::new(seed.wrapping_add(run));
        // Every fourth run starts from an empty destination and is killed early, in the copy.
        let wiped = run % 4 == 0;
        if wiped {
            d.delete(vec![0u8], Some(DeleteOptions::new().with_from_key())).await.expect("wipe destination");
        }
        let load = Load::start(&s, "faults", 300, seed.wrapping_add(run) << 8, &ledger);
        let mut m = DrctlProcess::spawn(&args, &log);
        let delay = if wiped { rng.range(0, 600) } else { rng.range(0, 2000) };
        kill_ms.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        m.kill();
        match drctl::mirror::Checkpoint::read(&mut d.kv_client()).await.expect("read checkpoint") {
            None => before_checkpoint += 1,
            Some(c) if c.copy.is_some() => in_copy += 1,
            Some(_) => following += 1,
        }
        // Writes go on while the mirror is dead, then it restarts and runs a while.
        tokio::time::sleep(Duration::from_millis(rng.range(0, 500))).await;
        let restarted = DrctlProcess::spawn(&args, &log);
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1000))).await;
        load.finish().await;
        let (v, _) = judge(&src, &dst, &mut s, &mut d, &ledger, Duration::from_secs(30)).await;
        drop(restarted);
        lost += v.lost.len();
        if v.survived() {
            survived += 1;
        } else {
            failures.push(format!("run {run} (seed {}, killed after {delay} ms): {v}", seed.wrapping_add(run)));
        }
    }
    let l = ledger.lock().expect("ledger");
    faults::report(
        "mirror kill -9 at a random point, restart",
        runs as usize,
        survived,
        lost,
        &format!(
            "seed {seed}; killed after {}..{} ms: {before_checkpoint} before the first checkpoint, {in_copy} mid-copy, {following} while following; {} writes at 300/s",
            kill_ms.iter().min().unwrap_or(&0),
            kill_ms.iter().max().unwrap_or(&0),
            l.writes
        ),
    );
    assert!(failures.is_empty(), "runs that lost or diverged:\n{}\nmirror log: {}", failures.join("\n"), log.display());
}

/// One etcd down for `outage` under writes, the in-process mirror running throughout.
async fn etcd_down_under_writes(source_side: bool, outage: Duration) -> (Verdict, Duration, u64) {
    let (mut src, mut dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    preload(&mut s, "preloaded", 500).await;
    let (mut rx, stop, task) = in_process_mirror(src.endpoint(), dst.endpoint());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load = Load::start(&s, "faults", 200, 11, &ledger);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if source_side {
        src.kill()
    } else {
        dst.kill()
    }
    tokio::time::sleep(outage).await;
    if source_side {
        src.restart()
    } else {
        dst.restart()
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish().await;
    let (v, recovered) = judge(&src, &dst, &mut s, &mut d, &ledger, Duration::from_secs(60)).await;
    let resyncs = rx.borrow_and_update().resyncs;
    let _ = stop.send(());
    task.await.expect("mirror task");
    let failed = ledger.lock().expect("ledger").failed;
    eprintln!("writes failed during the outage: {failed}; mirror resyncs: {resyncs}");
    (v, recovered, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_etcd_down_30s_under_writes() {
    let (v, recovered, failed) = etcd_down_under_writes(true, Duration::from_secs(30)).await;
    faults::report(
        "source etcd down 30 s under 200 writes/s",
        1,
        usize::from(v.survived()),
        v.lost.len(),
        &format!("{failed} writes refused while down; caught up {:.1} s after the last write", recovered.as_secs_f64()),
    );
    assert!(v.survived(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_etcd_down_20s_under_writes() {
    let (v, recovered, failed) = etcd_down_under_writes(false, Duration::from_secs(20)).await;
    assert_eq!(failed, 0, "the source stayed up");
    faults::report(
        "destination etcd down 20 s under 200 writes/s",
        1,
        usize::from(v.survived()),
        v.lost.len(),
        &format!("caught up {:.1} s after the last write", recovered.as_secs_f64()),
    );
    assert!(v.survived(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_the_mirror_is_down() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    preload(&mut s, "preloaded", 1000).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("mirror.log");
    let args = mirror_args(&src, &dst);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut m = DrctlProcess::spawn(&args, &log);
    let load = Load::start(&s, "faults", 300, 21, &ledger);
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.kill();
    // While it is down: more writes, deletes of copied keys, and the history compacted away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish().await;
    for i in (0..1000).step_by(3) {
        s.delete(format!("/registry/secrets/preloaded/s{i}"), None).await.expect("delete");
    }
    let rev = head(&mut s).await;
    s.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
    let _restarted = DrctlProcess::spawn(&args, &log);
    let (v, recovered) = judge(&src, &dst, &mut s, &mut d, &ledger, Duration::from_secs(60)).await;
    let resynced = std::fs::read_to_string(&log).unwrap_or_default().contains("compact");
    faults::report(
        "source compacted past the checkpoint while the mirror was down (334 deletes missed by the watch)",
        1,
        usize::from(v.survived()),
        v.lost.len(),
        &format!("caught up {:.1} s after restart; log mentions compaction: {resynced}", recovered.as_secs_f64()),
    );
    assert!(v.survived(), "{v}\n{}", log.display());
}

/// Two etcds, the in-process mirror reaching the source through a TCP proxy, and 200 writes/s
/// on the source.
struct ThroughProxy {
    src: Etcd,
    dst: Etcd,
    s: Client,
    d: Client,
    proxy: Proxy,
    rx: tokio::sync::watch::Receiver<Progress>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    ledger: Arc<Mutex<Ledger>>,
    load: Load,
}

impl ThroughProxy {
    async fn start(seed: u64) -> ThroughProxy {
        let (src, dst) = (Etcd::start(), Etcd::start());
        let (s, d) = (src.client().await, dst.client().await);
        // In front of the source's load balancer; the members' certificates name 127.0.0.1, as
        // the proxy's address does.
        let proxy = Proxy::start(src.cluster.lb.addr);
        let through = src.cluster.endpoint(vec![proxy.url().replace("http://", "https://")]);
        let (rx, stop, task) = in_process_mirror(through, dst.endpoint());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let load = Load::start(&s, "faults", 200, seed, &ledger);
        ThroughProxy { src, dst, s, d, proxy, rx, stop, task, ledger, load }
    }

    /// Revisions the mirror is behind the source's head.
    async fn lag(&self) -> i64 {
        head(&mut self.s.clone()).await - self.rx.borrow().applied_revision
    }

    /// The largest lag seen over `for_`.
    async fn max_lag(&self, for_: Duration) -> i64 {
        let (mut max, end) = (0, Instant::now() + for_);
        while Instant::now() < end {
            max = max.max(self.lag().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    }

    /// How long until `ok(lag)` holds, if it does within `timeout`.
    async fn until(&self, timeout: Duration, ok: impl Fn(i64) -> bool) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if ok(self.lag().await) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops the load, lets the mirror catch up, stops it; the verdict.
    async fn finish(mut self) -> Verdict {
        self.load.finish().await;
        let (v, _) = judge(&self.src, &self.dst, &mut self.s, &mut self.d, &self.ledger, Duration::from_secs(30)).await;
        let _ = self.stop.send(());
        self.task.await.expect("mirror task");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_source_and_mirror() {
    let t = ThroughProxy::start(31).await;
    let before = t.max_lag(Duration::from_secs(3)).await;
    t.proxy.set(Mode::Blackhole);
    let during = t.max_lag(Duration::from_secs(10)).await;
    t.proxy.set(Mode::Pass);
    let healed = t.until(Duration::from_secs(30), |lag| lag <= before.max(50)).await;
    // A slow link (every chunk +30 ms each way) under the same load.
    t.proxy.set(Mode::Slow(Duration::from_millis(30)));
    let slowed = t.max_lag(Duration::from_secs(5)).await;
    t.proxy.set(Mode::Pass);
    let v = t.finish().await;
    faults::report(
        "partition source<->mirror (TCP proxy: 10 s blackhole, then 5 s at +30 ms per chunk)",
        1,
        usize::from(v.survived()),
        v.lost.len(),
        &format!(
            "max lag in revisions at 200 writes/s: {before} before, {during} blackholed, back to {} within {:.1} s of healing, {slowed} on the slow link",
            before.max(50),
            healed.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
        ),
    );
    assert!(during > before.max(100), "lag grew while partitioned: {before} -> {during}");
    assert!(healed.is_some(), "lag did not recover after the partition healed");
    assert!(v.survived(), "{v}");
}

/// The source's open connections go silent for good while new ones work (a hung load balancer,
/// a lost NAT entry): no error ever arrives, so only the dead-watch detection (silence, a
/// progress request, silence again) can get the mirror going again, on a new connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_that_goes_silent_without_closing_is_replaced() {
    let t = ThroughProxy::start(37).await;
    // Following first, with two seconds of writes applied, and caught up to within one second.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.rx.borrow().phase != MirrorPhase::Following || t.rx.borrow().applied_revision < 400 || t.lag().await > 200 {
        assert!(Instant::now() < deadline, "the mirror never caught up before the stall");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.proxy.stall_open_connections();
    let stalled_at = Instant::now();
    let grown = t.until(Duration::from_secs(10), |lag| lag > 400).await;
    let recovered = match grown {
        Some(_) => t.until(Duration::from_secs(60), |lag| lag <= 200).await.map(|_| stalled_at.elapsed()),
        None => None,
    };
    let v = t.finish().await;
    faults::report(
        "source connections stall for good without closing (TCP proxy; new connections pass)",
        1,
        usize::from(v.survived() && recovered.is_some()),
        v.lost.len(),
        &format!(
            "at 200 writes/s, progress timeout 2 s: lag over 400 revisions {:.1} s after the stall, back under 200 on a new connection {:.1} s after it",
            grown.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            recovered.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
        ),
    );
    assert!(grown.is_some(), "the stall did not stop replication; the proxy is not in the path");
    assert!(recovered.is_some(), "the mirror never replaced its silent watch");
    assert!(v.survived(), "{v}");
}

/// What `autoRepair` does on a standby, as often as it can: check and repair beside a live mirror
/// fed by five writers of 200 puts and deletes per second each (on three mTLS members behind a
/// load balancer, ~430 a second are acknowledged on a busy 2-core machine). The mirror is
/// healthy, so any difference reported here is its own in-flight work mistaken for damage, and a
/// repair acting on it would undo the mirror (a deleted key back). `tests/mirror.rs` replays that interleaving deterministically.
#[tokio::test(flavor = "multi_thread")]
async fn check_and_repair_beside_a_live_mirror_lose_nothing() {
    let t = ThroughProxy::start(41).await;
    let extra: Vec<Load> = (0..4).map(|i| Load::start(&t.s, &format!("repair-{i}"), 200, 60 + i, &t.ledger)).collect();
    let (sc, dc) = (drctl::etcd::connect(&t.src.endpoint()).await.expect("source"), drctl::etcd::connect(&t.dst.endpoint()).await.expect("destination"));
    let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.rx.borrow().phase != MirrorPhase::Following {
        assert!(Instant::now() < deadline, "the mirror never finished its copy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut checks, mut reported, mut put) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let found = drctl::check::run(&sc, &dc, &filter, &drctl::check::CheckOptions::default()).await.expect("check");
        checks += 1;
        let fixable: Vec<_> = found.differences.into_iter().filter(|d| d.kind() != drctl::check::Kind::Surplus).collect();
        reported += fixable.len();
        if !fixable.is_empty() {
            put += drctl::check::repair(&sc, &dc, &filter, &fixable, false).await.expect("repair").put;
        }
    }
    for l in extra {
        l.finish().await;
    }
    let writes = t.ledger.lock().expect("ledger").writes;
    let v = t.finish().await;
    faults::report(
        "check + repair in a loop beside a live mirror (autoRepair's job), five writers aiming at 1,000 puts and deletes/s",
        1,
        usize::from(v.survived()),
        v.lost.len(),
        &format!("{checks} checks in 15 s over {writes} writes: {reported} missed/diverged reported, {put} keys re-put"),
    );
    assert!(v.survived(), "{v}");
    // Re-verified at a consistent cut, a live mirror's in-flight work is never a difference.
    assert_eq!((reported, put), (0, 0), "false differences reported beside a healthy mirror");
}

// ---------------------------------------------------------------------------------------------
// The controller on a DR pair.

/// A key written on `on`'s etcd in a replicated namespace, straight through etcd.
async fn mark(g: &support::Global, key: &str) {
    let mut c = g.etcd.client().await;
    c.put(format!("/registry/configmaps/apps/{key}"), key, None).await.expect("put marker");
}

async fn has(g: &support::Global, key: &str) -> bool {
    let mut c = g.etcd.client().await;
    !c.get(format!("/registry/configmaps/apps/{key}"), None).await.expect("get marker").kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread")]
async fn flip_a_to_b_to_a_in_quick_succession() {
    let pair = Pair::start().await;
    let (ca, cb) = steady_pair(&pair).await;
    mark(&pair.a, "before-flips").await;
    pair.wait(&pair.b, "B in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    // Two merged pull requests a second apart: to B, and straight back to A.
    pair.apply_both("global-b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.apply_both("global-a");
    let a = pair.wait(&pair.a, "A primary again", FAILOVER, &[&ca, &cb], primary_steady).await;
    pair.wait(&pair.b, "B standby in sync again", FAILOVER, &[&ca, &cb], standby_in_sync).await;
    // Never two primaries at the end, DNS on A, the data there, and replication A->B works.
    let b = pair.status(&pair.b).await.expect("b").status.expect("status");
    assert_eq!((a.status.as_ref().and_then(|s| s.role), b.role), (Some(Role::Primary), Some(Role::Standby)));
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), vec![VIP_A]);
    assert!(has(&pair.a, "before-flips").await && has(&pair.b, "before-flips").await);
    mark(&pair.a, "after-flips").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has(&pair.b, "after-flips").await {
        assert!(Instant::now() < deadline, "A->B replication did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let record = match &b.failover {
        None => "B never started a failover".to_string(),
        Some(f) => format!("B's failover record: {} steps, completed {}, aborted {:?}", f.steps.len(), f.completed_at.is_some(), f.aborted),
    };
    faults::report("flip A->B->A one second apart", 1, 1, 0, &record);
}

/// Issue 11: flips A→B→A… each completed, in both orders Argo CD may apply a flip (the old
/// primary first, the order whose demotion token used to make the other side "reclaim" without
/// moving DNS; or the new primary first), with controllers killed in between. Every flip must
/// end with DNS on the declared primary, a higher term there (a full runbook ran: a reclaim
/// keeps the term), and the other side a steady standby that replicates from it.
#[tokio::test(flavor = "multi_thread")]
async fn alternating_flips_in_both_apply_orders_end_with_dns_on_the_primary() {
    let pair = Pair::start().await;
    let (mut ca, mut cb) = steady_pair(&pair).await;
    let flips = env_u64("DRCTL_FLIPS", 10) as usize;
    let mut term = pair.status(&pair.a).await.and_then(|t| t.status).map(|s| s.term).unwrap_or(0);
    let mut orders = Vec::new();
    for i in 0..flips {
        let (old, new, vip) = if i % 2 == 0 { (&pair.a, &pair.b, VIP_B) } else { (&pair.b, &pair.a, VIP_A) };
        // Both orders in both directions: flips 0,1 old primary first, 2,3 new first, ...
        let old_first = (i / 2) % 2 == 0;
        let (first, second) = if old_first { (old, new) } else { (new, old) };
        let yaml = pair.topology_yaml(&new.name);
        pair.apply(first, &yaml);
        // Let the first side act alone, as a lagging Argo CD on the other side would.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // A controller restarted between the two applies ...
        if i == 4 {
            (if first.name == pair.a.name { &mut ca } else { &mut cb }).restart();
        }
        pair.apply(second, &yaml);
        // ... and both restarted mid-failover.
        if i == 7 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ca.restart();
            cb.restart();
        }
        let what = format!("flip {i} to {} ({} first)", new.name, if old_first { "old primary" } else { "new primary" });
        let done = pair.wait(new, &format!("{what}: primary steady"), FAILOVER, &[&ca, &cb], primary_steady).await;
        let st = done.status.expect("status");
        assert!(st.term > term, "{what}: term {} not past {term}: a full failover must have run, not a reclaim", st.term);
        term = st.term;
        pair.wait(old, &format!("{what}: standby in sync"), FAILOVER, &[&ca, &cb], standby_in_sync).await;
        assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), vec![vip], "{what}: DNS");
        let key = format!("after-flip-{i}");
        mark(new, &key).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has(old, &key).await {
            assert!(Instant::now() < deadline, "{what}: {} does not replicate from {}", old.name, new.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        orders.push(if old_first { "old-first" } else { "new-first" });
    }
    let old_first = orders.iter().filter(|o| **o == "old-first").count();
    faults::report(
        "alternating flips, both apply orders, controller restarts at flips 4 and 7",
        flips,
        flips,
        0,
        &format!("{old_first} old-primary-first, {} new-primary-first; final term {term}", flips - old_first),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_restarted_mid_failover() {
    let mut pair = Pair::start().await;
    let (ca, mut cb) = steady_pair(&pair).await;
    mark(&pair.a, "before-restart").await;
    pair.wait(&pair.b, "B in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    pair.apply_both("global-b");
    // As soon as B records a running step, its apiserver goes away for a few seconds.
    let running = pair
        .wait(&pair.b, "B failing over", FAILOVER, &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_none() && !f.steps.is_empty()))
        .await;
    let step = running.status.and_then(|s| s.failover).and_then(|f| f.steps.last().map(|s| s.name.clone())).unwrap_or_default();
    pair.b.api.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pair.b.api.restart();
    // A controller that cannot renew its Lease exits by design; its Deployment restarts it.
    // Do what the kubelet would, once a renewal has had its chance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exited = std::fs::read_to_string(&cb.log).unwrap_or_default().contains("lost leadership");
    if exited {
        cb.restart();
    }
    let b = pair.wait(&pair.b, "B failover done", FAILOVER, &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    pair.wait(&pair.a, "A standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    let f = b.status.expect("status").failover.expect("failover");
    let names: Vec<&str> = f.steps.iter().map(|s| s.name.as_str()).collect();
    let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "each step recorded once: {names:?}");
    assert_eq!(names.last(), Some(&"Done"), "{names:?}");
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), vec![VIP_B]);
    assert!(has(&pair.b, "before-restart").await, "replicated data survived on the new primary");
    faults::report(
        "B's apiserver killed mid-failover, back after 3 s",
        1,
        1,
        0,
        &format!(
            "killed during step {step}; B's controller {}; every step recorded once",
            if exited { "lost its Lease, exited and was restarted" } else { "rode it out" }
        ),
    );
}
