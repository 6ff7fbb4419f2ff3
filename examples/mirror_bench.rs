//! The mirror benchmark (`make bench`; a benchmark, not a test): on 100k Kubernetes-shaped keys
//! with 2 KiB values it measures, in one run, the destination etcd's own batched-put rate (the
//! ceiling), `etcdctl make-mirror`'s initial copy, `drctl mirror --once`, the steady-state lag at
//! 2,000 writes/s, a full `drctl check`, and drctl's peak RSS; then prints a Markdown report.
//!
//! Usage: mirror_bench --drctl PATH [--keys N] [--make-mirror-budget SECS]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::keyspace::Filter;
use drctl::topology::ExcludeSpec;
use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchOptions};
use futures::stream::{self, StreamExt};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const VALUE_BYTES: usize = 2048;
/// Write concurrencies tried for the ceiling.
const CEILING_IN_FLIGHT: [usize; 3] = [4, 8, 16];
const LAG_RATE: u64 = 2000;
const LAG_SECONDS: u64 = 10;

struct EtcdProc {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdProc {
    async fn start() -> Res<EtcdProc> {
        let dir = tempfile::tempdir()?;
        let url = format!("http://127.0.0.1:{}", free_port()?);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let child = Command::new("etcd")
            .args([
                "--name=default".to_string(),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=default={peer}"),
                "--quota-backend-bytes=8589934592".into(),
                "--log-level=warn".into(),
                "--logger=zap".into(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log"))?)
            .spawn()?;
        let e = EtcdProc { child, _dir: dir, url };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = e.client().await {
                if c.status().await.is_ok() {
                    return Ok(e);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("etcd at {} did not start", e.url).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> Res<Client> {
        Ok(Client::connect([self.url.as_str()], None).await?)
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mix like a platform's global cluster: workloads in 200 namespaces, CRD objects,
/// cluster-scoped objects, and some keys the default filter excludes.
fn key(i: usize) -> String {
    let ns = format!("team-{:03}", i % 200);
    match i % 20 {
        0 => format!("/registry/pods/kube-system/sys-{i}"),
        1..=5 => format!("/registry/pods/{ns}/pod-{i}"),
        6..=7 => format!("/registry/configmaps/{ns}/cm-{i}"),
        8 => format!("/registry/secrets/{ns}/secret-{i}"),
        9 => format!("/registry/deployments/{ns}/deploy-{i}"),
        10 => format!("/registry/replicasets/{ns}/rs-{i}"),
        11..=12 => format!("/registry/example.com/widgets/{ns}/w-{i}"),
        13 => format!("/registry/argoproj.io/applications/{ns}/app-{i}"),
        14 => format!("/registry/clusterroles/role-{i}"),
        15 => format!("/registry/services/specs/{ns}/svc-{i}"),
        16 => format!("/registry/events/{ns}/ev-{i}"),
        17 => format!("/registry/apiextensions.k8s.io/customresourcedefinitions/r{i}.example.com"),
        18 => format!("/registry/namespaces/ns-{i}"),
        _ => format!("/registry/leases/{ns}/lease-{i}"),
    }
}

/// 2 KiB that look like a serialized object (a k8s protobuf header, then varied bytes).
fn value(i: usize, salt: u8) -> Vec<u8> {
    let mut v = b"k8s\0\n\x0b\n\x02v1\x12\x05Thing".to_vec();
    let mut x = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(salt as u64 + 1);
    while v.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Writes `keys` in txns of `ops` puts, `in_flight` at a time; returns keys/s.
async fn batched_put(c: &Client, keys: &[(String, Vec<u8>)], ops: usize, in_flight: usize) -> Res<f64> {
    let started = Instant::now();
    let results: Vec<Result<(), etcd_client::Error>> = stream::iter(keys.chunks(ops))
        .map(|chunk| {
            let mut kv = c.kv_client();
            let txn = Txn::new().and_then(chunk.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None)).collect::<Vec<_>>());
            async move { kv.txn(txn).await.map(|_| ()) }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(keys.len() as f64 / started.elapsed().as_secs_f64())
}

async fn count(c: &mut Client) -> Res<i64> {
    Ok(c.get("/registry/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count())
}

/// Runs a command to completion; returns (elapsed, peak RSS in KiB, stdout).
///
/// The peak is the child's own `VmHWM`, sampled while it runs: `wait4`'s `ru_maxrss` would
/// include this process's RSS (a vfork child execs from the parent's address space).
fn run_measured(cmd: &mut Command) -> Res<(Duration, i64, String)> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_path).ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").parse::<i64>().ok()))
        });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let out = reader.join().map_err(|_| "reader panicked")?;
    if status.code().is_none_or(|c| c > 2) {
        return Err(format!("{cmd:?} failed: {status}: {out}").into());
    }
    Ok((elapsed, peak_kib, out))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let drctl = PathBuf::from(arg("--drctl").ok_or("--drctl PATH is required")?);
    let n: usize = arg("--keys").map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let mm_budget = Duration::from_secs(arg("--make-mirror-budget").map(|s| s.parse()).transpose()?.unwrap_or(120));

    let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
    let all: Vec<(String, Vec<u8>)> = (0..n).map(|i| (key(i), value(i, 0))).collect();
    let replicated: Vec<(String, Vec<u8>)> = all.iter().filter(|(k, _)| filter.copies(k.as_bytes())).cloned().collect();
    eprintln!("{} keys, {} replicated by the default filter", all.len(), replicated.len());

    let src = EtcdProc::start().await?;
    let s = src.client().await?;
    let load_rate = batched_put(&s, &all, 128, 8).await?;
    eprintln!("loaded the source at {load_rate:.0} keys/s");

    // 1. The ceiling: the destination's own batched-put rate, txns shaped like drctl's, at the
    //    best of several concurrencies (each into a fresh etcd).
    let (mut ceiling, mut ceiling_in_flight) = (0.0, 0);
    for in_flight in CEILING_IN_FLIGHT {
        let d = EtcdProc::start().await?;
        let c = d.client().await?;
        let rate = batched_put(&c, &replicated, 127, in_flight).await?;
        eprintln!("batched put, {in_flight} in flight: {rate:.0} keys/s");
        if rate > ceiling {
            (ceiling, ceiling_in_flight) = (rate, in_flight);
        }
    }

    // 2. etcdctl make-mirror: copies every key under the prefix one put at a time.
    let (mm_rate, mm_keys, mm_secs, mm_done) = {
        let d = EtcdProc::start().await?;
        let mut c = d.client().await?;
        let started = Instant::now();
        let mut child = Command::new("etcdctl")
            .args(["--endpoints", &src.url, "make-mirror", "--prefix", "/registry/", &d.url])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut copied = 0;
        while started.elapsed() < mm_budget {
            tokio::time::sleep(Duration::from_millis(250)).await;
            copied = count(&mut c).await?;
            if copied as usize >= all.len() {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        (copied as f64 / secs, copied, secs, copied as usize >= all.len())
    };
    eprintln!("make-mirror {mm_rate:.0} keys/s ({mm_keys} keys in {mm_secs:.1}s)");

    // 3. drctl mirror --once into a fresh destination, then steady state and check on it.
    let d = EtcdProc::start().await?;
    let (once_elapsed, once_rss_kib, once_out) =
        run_measured(Command::new(&drctl).args(["mirror", "--source", &src.url, "--dest", &d.url, "--once"]))?;
    let mut dc = d.client().await?;
    let copied = count(&mut dc).await?;
    let drctl_rate = copied as f64 / once_elapsed.as_secs_f64();
    eprintln!("drctl --once: {}", once_out.trim());

    // 4. Steady-state lag at LAG_RATE writes/s: source commit → visible in the destination.
    let mut follower = Command::new(&drctl)
        .args(["mirror", "--source", &src.url, "--dest", &d.url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut w = dc.watch_client();
    let mut stream = w.watch("/registry/configmaps/bench-lag/", Some(WatchOptions::new().with_prefix())).await?;
    let seen_w = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            let mut seen = seen_w.lock().unwrap_or_else(|e| e.into_inner());
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    seen.entry(String::from_utf8_lossy(kv.key()).into_owned()).or_insert(now);
                }
            }
        }
    });
    let total = (LAG_RATE * LAG_SECONDS) as usize;
    let per_tick = (LAG_RATE / 100) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut writes = Vec::new();
    for t in 0..total / per_tick {
        tick.tick().await;
        for j in 0..per_tick {
            let i = t * per_tick + j;
            let (mut kv, committed) = (s.kv_client(), committed.clone());
            writes.push(tokio::spawn(async move {
                let k = format!("/registry/configmaps/bench-lag/k{i:06}");
                if kv.put(k.clone(), value(i, 1), None).await.is_ok() {
                    committed.lock().unwrap_or_else(|e| e.into_inner()).insert(k, Instant::now());
                }
            }));
        }
    }
    let write_secs = LAG_SECONDS as f64;
    for wr in writes {
        wr.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let _ = follower.kill();
    let _ = follower.wait();
    let mut lags: Vec<f64> = {
        let (c, s) = (committed.lock().unwrap_or_else(|e| e.into_inner()), seen.lock().unwrap_or_else(|e| e.into_inner()));
        c.iter().filter_map(|(k, t)| s.get(k).map(|u| u.saturating_duration_since(*t).as_secs_f64() * 1e3)).collect()
    };
    lags.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    eprintln!("lag p50 {p50:.1} ms, p99 {p99:.1} ms over {} writes", lags.len());

    // 5. A full check of the replicated keyspace.
    let (check_elapsed, check_rss_kib, check_out) =
        run_measured(Command::new(&drctl).args(["check", "--source", &src.url, "--dest", &d.url, "--json"]))?;
    let report: drctl::check::CheckReport = serde_json::from_str(&check_out)?;

    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!("## Mirror\n");
    println!(
        "`make bench` ({} keys, {} B values, {} replicated by the default filter; etcd {}; {} CPUs; one run).\n",
        all.len(),
        VALUE_BYTES,
        replicated.len(),
        String::from_utf8_lossy(&Command::new("etcd").arg("--version").output()?.stdout)
            .lines()
            .next()
            .unwrap_or("?")
            .trim_start_matches("etcd Version: "),
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
