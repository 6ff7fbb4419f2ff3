//! The mirror benchmark (`make bench`; a benchmark, not a test): on 100k Kubernetes-shaped keys
//! with 2 KiB values it measures, in one run, the destination etcd's own batched-put rate (the
//! ceiling), `etcdctl make-mirror`'s initial copy, `drctl mirror --once`, the steady-state lag at
//! 2,000 writes/s, a full `drctl check`, and drctl's peak RSS; then prints a Markdown report.
//!
//! Each side's etcd is three members requiring client certificates unless `--members 1` (one
//! plain-HTTP member, as before issue 19).
//!
//! Usage: mirror_bench --drctl PATH [--keys N] [--members N] [--make-mirror-budget SECS]

mod bench;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::{batched_put, count, measure_lag, percentile, run_measured, EtcdProc, KillOnDrop, Load, Res};
use drctl::keyspace::Filter;
use drctl::topology::ExcludeSpec;

const VALUE_BYTES: usize = 2048;
/// Write concurrencies tried for the ceiling.
const CEILING_IN_FLIGHT: [usize; 3] = [4, 8, 16];
const LAG_RATE: u64 = 2000;
const LAG_SECONDS: u64 = 10;

#[tokio::main]
async fn main() -> Res<()> {
    let drctl = bench::drctl()?;
    let n: usize = bench::arg("--keys").map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let members = bench::members()?;
    let mm_budget = Duration::from_secs(bench::arg("--make-mirror-budget").map(|s| s.parse()).transpose()?.unwrap_or(120));

    let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
    let all: Vec<usize> = (0..n).collect();
    let replicated: Vec<usize> = all.iter().copied().filter(|&i| filter.copies(bench::key(i).as_bytes())).collect();
    eprintln!("{} keys, {} replicated by the default filter", all.len(), replicated.len());

    let src = EtcdProc::start(members).await?;
    let s = src.leader_client().await?;
    let load_rate = batched_put(&s, &all, VALUE_BYTES, 128, 8).await?;
    eprintln!("loaded the source at {load_rate:.0} keys/s");

    // 1. The ceiling: the destination's own batched-put rate, txns shaped like drctl's, at the
    //    best of several concurrencies (each into a fresh etcd).
    let (mut ceiling, mut ceiling_in_flight) = (0.0, 0);
    for in_flight in CEILING_IN_FLIGHT {
        let d = EtcdProc::start(members).await?;
        let c = d.leader_client().await?;
        let rate = batched_put(&c, &replicated, VALUE_BYTES, 127, in_flight).await?;
        eprintln!("batched put, {in_flight} in flight: {rate:.0} keys/s");
        if rate > ceiling {
            (ceiling, ceiling_in_flight) = (rate, in_flight);
        }
    }

    // 2. etcdctl make-mirror: copies every key under the prefix one put at a time.
    let (mm_rate, mm_keys, mm_secs, mm_done) = {
        let d = EtcdProc::start(members).await?;
        let mut c = d.client().await?;
        let started = Instant::now();
        // make-mirror takes one destination member: the one drctl pins, a follower.
        let to = &d.urls[d.follower().await?];
        let child = drctl_testbed::procs::etcd_command("etcdctl")
            .arg(format!("--endpoints={}", src.urls.join(",")))
            .args(src.tls_flags(""))
            .args(["make-mirror", "--prefix", "/registry/"])
            .args(d.tls_flags("dest-"))
            .arg(to)
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(KillOnDrop)?;
        let mut copied = 0;
        while started.elapsed() < mm_budget {
            tokio::time::sleep(Duration::from_millis(250)).await;
            copied = count(&mut c).await?;
            if copied as usize >= all.len() {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        drop(child);
        (copied as f64 / secs, copied, secs, copied as usize >= all.len())
    };
    eprintln!("make-mirror {mm_rate:.0} keys/s ({mm_keys} keys in {mm_secs:.1}s)");

    // 3. drctl mirror --once into a fresh destination, then steady state and check on it.
    let d = EtcdProc::start(members).await?;
    let both = [src.drctl_flags("source"), d.drctl_flags("dest")].concat();
    let bench::Measured { elapsed: once_elapsed, peak_kib: once_rss_kib, out: once_out, .. } =
        run_measured(Command::new(&drctl).arg("mirror").args(&both).arg("--once"))?;
    let mut dc = d.client().await?;
    let copied = count(&mut dc).await?;
    let drctl_rate = copied as f64 / once_elapsed.as_secs_f64();
    eprintln!("drctl --once: {}", once_out.trim());

    // 4. Steady-state lag at LAG_RATE writes/s: source commit → visible in the destination.
    let follower = Command::new(&drctl).arg("mirror").args(&both).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(KillOnDrop)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, lags) = measure_lag(&s, &dc, "/registry/configmaps/bench-lag/", Load::Rate(LAG_RATE), LAG_SECONDS as f64, VALUE_BYTES).await?;
    let write_secs = LAG_SECONDS as f64;
    drop(follower);
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    eprintln!("lag p50 {p50:.1} ms, p99 {p99:.1} ms over {} writes", lags.len());

    // 5. A full check of the replicated keyspace.
    let bench::Measured { elapsed: check_elapsed, peak_kib: check_rss_kib, out: check_out, .. } =
        run_measured(Command::new(&drctl).arg("check").args(&both).arg("--json"))?;
    let report: drctl::check::CheckReport = serde_json::from_str(&check_out)?;

    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!("## Mirror\n");
    println!(
        "`make bench` ({} keys, {} B values, {} replicated by the default filter; {}; {} CPUs; one run).\n",
        all.len(),
        VALUE_BYTES,
        replicated.len(),
        src.describe()?,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    println!("| measure | figure | target |");
    println!("|---|---|---|");
    println!(
        "| destination batched-put rate (ceiling: best of {CEILING_IN_FLIGHT:?} txns of 127 puts in flight; best at {ceiling_in_flight}) | {ceiling:.0} keys/s | |"
    );
    println!(
        "| `etcdctl make-mirror` initial copy | {mm_rate:.0} keys/s ({mm_keys} keys in {mm_secs:.1} s{}) | |",
        if mm_done { "" } else { ", stopped at the time budget" }
    );
    println!("| `drctl mirror --once` initial copy | {drctl_rate:.0} keys/s ({copied} keys in {:.2} s) | |", once_elapsed.as_secs_f64());
    if mm_keys > 0 {
        println!("| drctl / make-mirror | {:.1}× | ≥ 10×: {} |", drctl_rate / mm_rate, ok(drctl_rate >= 10.0 * mm_rate));
    } else {
        println!("| drctl / make-mirror | not measured (budget 0) | |");
    }
    println!("| drctl / ceiling | {:.2} | ≥ 0.70: {} |", drctl_rate / ceiling, ok(drctl_rate >= 0.7 * ceiling));
    println!(
        "| steady-state lag at {} writes/s ({} writes over {write_secs:.0} s) | p50 {p50:.1} ms, p99 {p99:.1} ms | p99 < 200 ms: {} |",
        LAG_RATE,
        lags.len(),
        ok(p99 < 200.0)
    );
    println!(
        "| full `drctl check` of {} keys | {:.2} s (consistent: {}) | < 3 s: {} |",
        report.checked_keys,
        check_elapsed.as_secs_f64(),
        report.consistent,
        ok(check_elapsed.as_secs_f64() < 3.0)
    );
    println!(
        "| peak RSS, `drctl mirror --once` / `drctl check` | {:.0} MiB / {:.0} MiB | < 200 MiB: {} |",
        once_rss_kib as f64 / 1024.0,
        check_rss_kib as f64 / 1024.0,
        ok(once_rss_kib < 200 * 1024)
    );
    Ok(())
}
