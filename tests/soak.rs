//! Soak: a DR pair under 1,000 writes/s (puts and deletes) with a planned failover in the middle.
//! Reports the end-to-end replication lag (a probe key written every 250 ms on the primary and
//! awaited on the standby), the controllers' RSS over time, and the final check and ledger.
//!
//! `cargo test --test soak` runs 60 s; `make soak` runs `soak_long` (DRCTL_SOAK_SECS, default 600).
//! DRCTL_SOAK_KEYS=N makes each writer cycle over N keys (a keyspace of constant size, to tell a
//! leak from growth with the keyspace); by default every put creates a key.

use drctl_testsupport as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::topology::{DRTopologyStatus, Phase, Role};
use etcd_client::Client;
use support::faults::{self, Ledger};
use support::pair::{Controller, Pair};
use support::Global;

// Many writers: each waits for its put to commit (~40 ms here under load), so 1,000 writes/s
// needs about 40 in flight; 100 writers at 10/s leave headroom.
const WRITERS: u64 = 100;
const RATE_PER_WRITER: u64 = 10;

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

/// Resident memory of the process listening on `port` (the controller), in KiB.
fn rss_kib(c: &Controller) -> Option<u64> {
    let needle = format!("--listen={}", c.listen);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == needle) {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            return status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

/// Writes a probe key every 250 ms on `src` and measures how long `dst` takes to show it.
async fn probe(mut src: Client, mut dst: Client, stop: Arc<AtomicBool>, lags: Arc<Mutex<Vec<Duration>>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("/registry/configmaps/soak-probe/p{}", n % 16);
        let value = format!("{n}");
        if src.put(key.as_str(), value.as_str(), None).await.is_err() {
            continue;
        }
        let written = Instant::now();
        while written.elapsed() < Duration::from_secs(60) {
            let got = dst.get(key.as_str(), None).await.ok().and_then(|r| r.kvs().first().map(|kv| kv.value().to_vec()));
            if got.as_deref() == Some(value.as_bytes()) {
                lags.lock().expect("lags").push(written.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writers and the probe from `src` (the primary) to `dst` (the standby) for `secs`.
/// What the load phases record into: acknowledged writes, probe lags, both controllers' RSS.
struct Records<'a> {
    ledger: &'a Arc<Mutex<Ledger>>,
    lags: &'a Arc<Mutex<Vec<Duration>>>,
    rss: &'a mut Vec<(u64, u64)>,
    ctrls: [&'a Controller; 2],
}

async fn load_phase(src: &Global, dst: &Global, secs: u64, keys: Option<u64>, phase: u64, rec: &mut Records<'_>) {
    let (ledger, lags, ctrls) = (rec.ledger, rec.lags, rec.ctrls);
    let stop = Arc::new(AtomicBool::new(false));
    let s = src.etcd.client().await;
    let mut tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(faults::write_load(s.clone(), format!("soak-{phase}-{w}"), RATE_PER_WRITER, phase * 1000 + w, keys, stop.clone(), ledger.clone()))
        })
        .collect();
    tasks.push(tokio::spawn(probe(s.clone(), dst.etcd.client().await, stop.clone(), lags.clone())));
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rec.rss.push((rss_kib(ctrls[0]).unwrap_or(0), rss_kib(ctrls[1]).unwrap_or(0)));
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

async fn soak(secs: u64, keys: Option<u64>) {
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    pair.wait(&pair.a, "A primary", Duration::from_secs(90), &[&ca, &cb], |s| s.role == Some(Role::Primary)).await;
    pair.wait(&pair.b, "B standby in sync", Duration::from_secs(90), &[&ca, &cb], standby_in_sync).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let lags = Arc::new(Mutex::new(Vec::new()));
    let mut rss = Vec::new();
    let started = Instant::now();

    load_phase(&pair.a, &pair.b, secs / 2, keys, 1, &mut Records { ledger: &ledger, lags: &lags, rss: &mut rss, ctrls: [&ca, &cb] }).await;
    // The failover in the middle: a planned switchover, then the load moves to the new primary.
    let flipped = Instant::now();
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B failover done", Duration::from_secs(180), &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    let rto = flipped.elapsed();
    pair.wait(&pair.a, "A standby in sync", Duration::from_secs(180), &[&ca, &cb], standby_in_sync).await;
    // Everything acknowledged by A before the flip is on B.
    let mut b = pair.b.etcd.client().await;
    let before_flip = ledger.lock().expect("ledger").clone();
    let lost_in_failover = faults::lost_writes(&mut b, &before_flip).await.len();
    load_phase(&pair.b, &pair.a, secs - secs / 2, keys, 2, &mut Records { ledger: &ledger, lags: &lags, rss: &mut rss, ctrls: [&ca, &cb] }).await;

    let mut a = pair.a.etcd.client().await;
    faults::wait_caught_up(&mut b, &mut a, Duration::from_secs(120)).await.expect("A catches up");
    let (code, report) = faults::check(&pair.b.etcd, &pair.a.etcd);
    let l = ledger.lock().expect("ledger").clone();
    let lost = faults::lost_writes(&mut a, &l).await;
    let mut sorted = lags.lock().expect("lags").clone();
    sorted.sort();
    let (rss_a, rss_b): (Vec<u64>, Vec<u64>) = rss.iter().copied().unzip();
    let growth = |v: &[u64]| {
        let n = v.len().clamp(1, 10);
        let first = v.iter().take(n).sum::<u64>() / n as u64;
        let last = v.iter().rev().take(n).sum::<u64>() / n as u64;
        (first, last, v.iter().max().copied().unwrap_or(0))
    };
    let (a0, a1, amax) = growth(&rss_a);
    let (b0, b1, bmax) = growth(&rss_b);
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("soak wall time {elapsed:.0} s");
    // RSS at each tenth of the load: does it level off or keep climbing?
    let tenths =
        |v: &[u64]| (1..=10).map(|i| (v.get((v.len() * i / 10).saturating_sub(1)).copied().unwrap_or(0) / 1024).to_string()).collect::<Vec<_>>().join(" ");
    eprintln!("RSS MiB by tenths of the load: A [{}], B [{}]", tenths(&rss_a), tenths(&rss_b));
    eprintln!(
        "SOAK | {secs} s of load at {} writes/s target, keys per writer {} | {} writes ({:.0}/s achieved, {} failed) | failover A->B in the middle: {:.1} s, {lost_in_failover} acknowledged writes lost | probe lag over {} probes: p50 {:?}, p99 {:?}, max {:?} | RSS KiB controller A {a0}->{a1} (max {amax}), B {b0}->{b1} (max {bmax}) | final check: {}/{}/{} (missed/surplus/diverged), exit {code:?}, {} keys; ledger: {} acknowledged writes lost",
        WRITERS * RATE_PER_WRITER,
        keys.map_or("unbounded".to_string(), |k| k.to_string()),
        l.writes,
        l.writes as f64 / secs as f64,
        l.failed,
        rto.as_secs_f64(),
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or_default(),
        report.missed.count,
        report.surplus.count,
        report.diverged.count,
        report.checked_keys,
        lost.len(),
    );
    assert_eq!(lost_in_failover, 0, "writes acknowledged before the planned failover are on the new primary");
    assert!(lost.is_empty(), "acknowledged writes lost: {:?}", &lost[..lost.len().min(5)]);
    assert!(report.consistent && code == Some(0), "final check: {report}");
    assert!(!sorted.is_empty(), "no probe made it across");
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_60s_with_a_failover() {
    soak(60, None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "10 minutes; run with `make soak`"]
async fn soak_long() {
    let secs = std::env::var("DRCTL_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let keys = std::env::var("DRCTL_SOAK_KEYS").ok().and_then(|s| s.parse().ok());
    soak(secs, keys).await;
}
