//! The scale benchmark (`make bench-scale`; a benchmark, not a test): on N Kubernetes-shaped keys
//! (default 1,000,000 × 1 KiB) it measures, in one run, the destination etcd's own batched-put
//! rate (the ceiling), the snapshot route (`etcdctl snapshot save` + `snapshot restore` + start),
//! `drctl mirror --once`, the time to merely range-read both keyspaces (the check's floor),
//! `drctl check`, the primary's put latency with and without a check running against it, the lag
//! at the highest write rate the source sustains, and drctl's peak RSS; then prints a Markdown
//! report with the ratios. Each side's etcd is three members requiring client certificates unless
//! `--members 1` (one plain-HTTP member, as before issue 19); the writers put to the source's
//! leader, drctl and the floor read through the member list (a follower).
//!
//! Usage: scale_bench --drctl PATH [--keys N] [--members N] [--value-bytes B] [--ceiling-in-flight 8,16]
//!        [--writers W] [--writer-rate R] [--check-args "ARGS"]

mod bench;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::{batched_put, count, measure_lag, peak_rss_kib, percentile, run_measured, write_load, EtcdProc, KillOnDrop, Load, Res};
use drctl::keyspace::Filter;
use drctl::topology::ExcludeSpec;
use etcd_client::{Client, GetOptions};

/// How long the lag and latency measures write.
const WRITE_SECONDS: f64 = 10.0;
/// Keys per range request of the floor: the check's own page (8 MiB) at this value size.
const FLOOR_PAGE_BYTES: usize = 8 << 20;

/// Reads every key under `/registry/` with its value, in pages of `limit`, at the head revision
/// and serializably from the member `c` reaches (as the check reads its pinned revision), one
/// resource range at a time (a range over the whole keyspace would make etcd 3.4 walk its index
/// to the end of it on every page), keeping nothing: what any full comparison must at least
/// fetch from this side.
async fn read_all(c: &Client, limit: i64) -> Res<u64> {
    let mut kv = c.kv_client().max_decoding_message_size(256 << 20);
    let revision = drctl::etcd::head(&mut kv).await?.1;
    let everything = Filter::with_default_namespaces(&ExcludeSpec::default());
    let found = drctl::copy_order::discover(&mut kv, revision).await?;
    let (start, end) = (b"/registry/".to_vec(), drctl::keyspace::prefix_end(b"/registry/"));
    let mut n = 0;
    for range in drctl::copy_order::read_ranges(&start, &end, &found, &everything) {
        let mut from = range.start;
        loop {
            let opts = GetOptions::new().with_range(range.end.clone()).with_revision(revision).with_limit(limit).with_serializable();
            let resp = kv.get(from.clone(), Some(opts)).await?;
            n += resp.kvs().len() as u64;
            match resp.kvs().last() {
                Some(last) if resp.more() => from = drctl::etcd::key_after(last.key()),
                _ => break,
            }
        }
    }
    Ok(n)
}

/// CPU seconds of one measure: drctl's own and each etcd's over the same span.
struct Cpu {
    drctl: f64,
    source: f64,
    dest: f64,
}

impl Cpu {
    fn since(before: (f64, f64), after: (f64, f64), drctl: f64) -> Cpu {
        Cpu { drctl, source: after.0 - before.0, dest: after.1 - before.1 }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let drctl = if self.drctl.is_nan() { "–".to_string() } else { format!("{:.1}", self.drctl) };
        write!(f, "{drctl} / {:.1} / {:.1}", self.source, self.dest)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Res<()> {
    let drctl = bench::drctl()?;
    let n: usize = bench::arg("--keys").map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let members = bench::members()?;
    let value_bytes: usize = bench::arg("--value-bytes").map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let ceiling_in_flight: Vec<usize> = bench::arg("--ceiling-in-flight").unwrap_or("8,16".into()).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let writers: usize = bench::arg("--writers").map(|s| s.parse()).transpose()?.unwrap_or(64);
    let writer_rate: u64 = bench::arg("--writer-rate").map(|s| s.parse()).transpose()?.unwrap_or(500);
    let check_args: Vec<String> = bench::arg("--check-args").map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();
    let load_avg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ");
    let load_at_start = load_avg();

    let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
    let all: Vec<usize> = (0..n).collect();
    let replicated: Vec<usize> = all.iter().copied().filter(|&i| filter.copies(bench::key(i).as_bytes())).collect();
    eprintln!("{} keys × {value_bytes} B, {} replicated by the default filter", all.len(), replicated.len());

    let src = EtcdProc::start(members).await?;
    let s = src.leader_client().await?;
    let load_rate = batched_put(&s, &all, value_bytes, 128, 16).await?;
    eprintln!("loaded the source at {load_rate:.0} keys/s");

    // 1. The ceiling: the destination's own batched-put rate for the replicated keys, txns
    //    shaped like drctl's, best of the concurrencies (each into a fresh etcd).
    let (mut ceiling, mut ceiling_at) = (0.0, 0);
    for &in_flight in &ceiling_in_flight {
        let d = EtcdProc::start(members).await?;
        let rate = batched_put(&d.leader_client().await?, &replicated, value_bytes, 127, in_flight).await?;
        eprintln!("ceiling: batched put, {in_flight} in flight: {rate:.0} keys/s");
        if rate > ceiling {
            (ceiling, ceiling_at) = (rate, in_flight);
        }
    }
    let ceiling_secs = replicated.len() as f64 / ceiling;

    // 2. The snapshot route: the whole keyspace, physically.
    let (snap_save, snap_restore) = {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("snap.db");
        let started = Instant::now();
        let status = drctl_testbed::procs::etcd_command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", src.urls[0]))
            .args(src.tls_flags(""))
            .args(["snapshot", "save"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("etcdctl snapshot save: {status}").into());
        }
        let save = started.elapsed();
        let started = Instant::now();
        let restored = EtcdProc::start_from(members, Some(&file)).await?;
        let restore = started.elapsed();
        let got = count(&mut restored.client().await?).await?;
        if got as usize != n {
            return Err(format!("the restored etcd holds {got} keys, not {n}").into());
        }
        (save, restore)
    };
    let snap_secs = secs(snap_save + snap_restore);
    eprintln!("snapshot route: save {:.1} s + restore and start {:.1} s", secs(snap_save), secs(snap_restore));

    // 3. drctl mirror --once into a fresh destination.
    let d = EtcdProc::start(members).await?;
    let etcd_cpu = || (src.cpu_secs(), d.cpu_secs());
    let both = [src.drctl_flags("source"), d.drctl_flags("dest")].concat();
    let before = etcd_cpu();
    let once_run = run_measured(Command::new(&drctl).arg("mirror").args(&both).arg("--once"))?;
    let once_cpu = Cpu::since(before, etcd_cpu(), once_run.cpu_secs);
    let (once_elapsed, once_rss_kib, once_out) = (once_run.elapsed, once_run.peak_kib, once_run.out);
    let mut dc = d.client().await?;
    let copied = count(&mut dc).await?;
    eprintln!("drctl --once: {}", once_out.trim());

    // 4. The check's floor: range-read both keyspaces at once, pages as big as the check's.
    let src_reader = src.client().await?;
    let limit = (FLOOR_PAGE_BYTES / value_bytes).clamp(16, 10_000) as i64;
    let (started, before) = (Instant::now(), etcd_cpu());
    let (src_read, dst_read) = tokio::try_join!(read_all(&src_reader, limit), read_all(&dc, limit))?;
    let floor = started.elapsed();
    let floor_cpu = Cpu::since(before, etcd_cpu(), f64::NAN);
    eprintln!("range-read floor: {src_read} + {dst_read} keys in {:.1} s", secs(floor));

    // 5. A full check.
    let check_cmd = || {
        let mut c = Command::new(&drctl);
        c.arg("check").args(&both).arg("--json").args(&check_args);
        c
    };
    let before = etcd_cpu();
    let check_run = run_measured(&mut check_cmd())?;
    let check_cpu = Cpu::since(before, etcd_cpu(), check_run.cpu_secs);
    let (check_elapsed, check_rss_kib, check_out) = (check_run.elapsed, check_run.peak_kib, check_run.out);
    let report: drctl::check::CheckReport = serde_json::from_str(&check_out)?;
    eprintln!("check: {} keys in {:.1} s, consistent {}", report.checked_keys, secs(check_elapsed), report.consistent);

    // 6. The primary under a check: a steady writer's put latency alone, then while a check
    //    reads it (writes to an excluded resource, so the check's result is unchanged).
    //    Then again with the check bounded at the controller's default `spec.sync.checkReadRate`.
    let alone = write_load(&s, "/registry/events/bench-writer-alone/", Load::Rate(writer_rate), WRITE_SECONDS, value_bytes).await?;
    let p99 = |w: &bench::Writes| percentile(&w.latencies_ms, 0.99);
    let bounded_rate = drctl::topology::SyncSpec::default().check_read_rate;
    let mut under_check = Vec::new();
    for (name, rate) in [("unbounded", 0), ("bounded", bounded_rate)] {
        let checker = std::thread::spawn({
            let mut cmd = check_cmd();
            cmd.args(["--max-read-rate", &rate.to_string()]);
            move || run_measured(&mut cmd).map_err(|e| e.to_string())
        });
        // Writes while the check runs (its time in step 5, or the bound's, at most 30 s).
        let span = secs(check_elapsed).max(if rate > 0 { n as f64 / rate as f64 } else { 0.0 }).min(30.0);
        let during = write_load(&s, &format!("/registry/events/bench-writer-{name}/"), Load::Rate(writer_rate), span, value_bytes).await?;
        let checked = checker.join().map_err(|_| "check thread panicked")??;
        eprintln!("primary put p99 during a check ({name}, took {:.1} s): {:.1} ms; alone {:.1} ms", secs(checked.elapsed), p99(&during), p99(&alone));
        under_check.push((name, rate, during, checked.elapsed));
    }

    // 7. The lag at the highest write rate the source sustains (a closed loop of `writers`),
    //    with the following mirror's peak RSS (it resumes from the checkpoint: no copy).
    let follower = Command::new(&drctl).arg("mirror").args(&both).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(KillOnDrop)?;
    // Steady state: the follower has applied everything written so far (the writers above put
    // tens of thousands of excluded keys it replays from the watch first) and raised the
    // destination to the source's numbering (the revision floor): that catch-up is reported on
    // its own, not measured as lag.
    let head = drctl::etcd::head(&mut s.kv_client()).await?.1;
    let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(120));
    let floor_gap = (head - drctl::etcd::head(&mut dc.kv_client()).await?.1).max(0);
    while (drctl::mirror::Checkpoint::read(&mut dc.kv_client()).await?.is_none_or(|cp| cp.revision < head)
        || drctl::etcd::head(&mut dc.kv_client()).await?.1 < head)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let floor_closed = started.elapsed();
    eprintln!("the follower caught up and closed a revision gap of {floor_gap} in {:.1} s", secs(floor_closed));
    let (writes, lags) = measure_lag(&s, &dc, "/registry/configmaps/bench-lag/", Load::Writers(writers), WRITE_SECONDS, value_bytes).await?;
    let follower_rss_kib = peak_rss_kib(follower.id());
    drop(follower);
    let (p50, lag99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    eprintln!("lag at {:.0} writes/s: p50 {p50:.1} ms, p99 {lag99:.1} ms", writes.per_second);

    let ok = |b: bool| if b { "met" } else { "MISSED" };
    let once = secs(once_elapsed);
    let check = secs(check_elapsed);
    let once_rate = copied as f64 / once;
    println!("## Scale\n");
    println!(
        "`make bench-scale` ({} keys × {value_bytes} B, {} replicated by the default filter; {}; {} CPUs; one run; load average {} at the start, {} at the end).\n",
        n,
        replicated.len(),
        src.describe()?,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_at_start,
        load_avg(),
    );
    println!("| measure | figure | ratio | target |");
    println!("|---|---|---|---|");
    println!("| source loaded (txns of 128 puts, 16 in flight) | {load_rate:.0} keys/s | | |");
    println!(
        "| destination ceiling (txns of 127 puts, best of {ceiling_in_flight:?} in flight: {ceiling_at}) | {ceiling:.0} keys/s ({} keys in {ceiling_secs:.1} s) | | |",
        replicated.len()
    );
    println!(
        "| snapshot route: `etcdctl snapshot save` + `snapshot restore`{} + start (all {n} keys) | {snap_secs:.1} s ({:.1} + {:.1}) | | |",
        if members > 1 { format!(" (into each of the {members} members at once)") } else { String::new() },
        secs(snap_save),
        secs(snap_restore)
    );
    println!(
        "| `drctl mirror --once` (filtered copy) | {once:.1} s, {once_rate:.0} keys/s ({copied} keys) | {:.2}× snapshot route; {:.2}× ceiling | ≤ 1.2× snapshot: {}; ≥ 0.9× ceiling: {} |",
        once / snap_secs,
        once_rate / ceiling,
        ok(once <= 1.2 * snap_secs),
        ok(once_rate >= 0.9 * ceiling)
    );
    println!("| range-read floor: both keyspaces read whole (values too) at once, a range per resource, pages of {limit} keys | {:.1} s ({src_read} + {dst_read} keys) | | |", secs(floor));
    println!(
        "| `drctl check` | {check:.1} s, {:.0} keys/s ({} keys, consistent: {}) | {:.2}× floor | ≤ 20 s: {}; ≤ 1.5× floor: {} |",
        report.checked_keys as f64 / check,
        report.checked_keys,
        report.consistent,
        check / secs(floor),
        ok(check <= 20.0),
        ok(check <= 1.5 * secs(floor))
    );
    println!("| primary's put latency at {writer_rate} writes/s, alone | p99 {:.1} ms (p50 {:.1}) | | |", p99(&alone), percentile(&alone.latencies_ms, 0.5));
    for (name, rate, during, took) in &under_check {
        println!(
            "| … while a check reads it, {name}{} (the check took {:.1} s) | p99 {:.1} ms (p50 {:.1}) | {:.2}× alone | |",
            if *rate > 0 { format!(" at {rate} keys/s (`checkReadRate` default)") } else { String::new() },
            secs(*took),
            p99(during),
            percentile(&during.latencies_ms, 0.5),
            p99(during) / p99(&alone)
        );
    }
    println!(
        "| the follower's start: catch up and raise the destination by {floor_gap} revisions to the source's numbering (the revision floor) | {:.1} s | | |",
        secs(floor_closed)
    );
    println!(
        "| lag at the highest rate the source sustains ({writers} writers, closed loop, {WRITE_SECONDS:.0} s) | {:.0} writes/s: p50 {p50:.1} ms, p99 {lag99:.1} ms | | p99 < 100 ms: {} |",
        writes.per_second,
        ok(lag99 < 100.0)
    );
    println!(
        "| CPU seconds (drctl / source etcd / destination etcd, every member): `mirror --once`; floor; `check` | {}; {}; {} | | |",
        once_cpu, floor_cpu, check_cpu
    );
    println!(
        "| peak RSS: `mirror --once` / `check` / following `mirror` | {:.0} / {:.0} / {:.0} MiB | | < 100 MiB: {} |",
        mib(once_rss_kib),
        mib(check_rss_kib),
        mib(follower_rss_kib),
        ok(once_rss_kib.max(check_rss_kib).max(follower_rss_kib) < 100 * 1024)
    );
    Ok(())
}
