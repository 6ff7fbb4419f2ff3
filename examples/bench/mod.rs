//! What the benchmarks share: etcd servers on loopback, the Kubernetes-shaped keyspace, batched
//! loading, peak RSS of a child, and the lag measure (source commit → seen on the destination).
#![allow(dead_code)] // each benchmark uses part of it

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::etcd::Endpoint;
use drctl_testbed::procs::{EtcdServer, Lifetime};
use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchOptions};
use futures::stream::{self, StreamExt};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One side's etcd: `--members 1` is one plain-HTTP member (how the figures before issue 19 were
/// taken); more is a cluster of that many members requiring client certificates, as a global
/// runs it. drctl gets the member list, as the controller does; the test bed's load balancer is
/// left out, since a proxy in this process would be measured with drctl.
pub struct EtcdProc {
    /// Killed before `_dir` is removed (fields drop in order).
    children: Vec<KillOnDrop>,
    members: Vec<EtcdServer>,
    /// Member client URLs.
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
}

/// `--members N` of the command line: 3 unless given.
pub fn members() -> Res<usize> {
    match arg("--members").map(|s| (s.parse::<usize>(), s)) {
        None => Ok(3),
        Some((Ok(n), _)) if n > 0 => Ok(n),
        Some((_, s)) => Err(format!("--members {s:?}: give the number of etcd members per side, 1 or more (3 by default)").into()),
    }
}

impl EtcdProc {
    /// A fresh, empty etcd of `n` members.
    pub async fn start(n: usize) -> Res<EtcdProc> {
        Self::start_from(n, None).await
    }

    /// An etcd of `n` members whose data directories are restored from `snapshot` (`etcdutl
    /// snapshot restore` per member, at once, as the runbook would on each node), then started.
    pub async fn start_from(n: usize, snapshot: Option<&Path>) -> Res<EtcdProc> {
        let dir = tempfile::tempdir()?;
        let members = match n {
            0 => return Err("an etcd needs at least one member".into()),
            1 => vec![EtcdServer::on_free_ports(dir.path())?],
            n => EtcdServer::cluster_tls(dir.path(), n)?,
        };
        if let Some(snap) = snapshot {
            let log = |m: &EtcdServer| m.dir.join("restore.log");
            let mut restores = Vec::new();
            for m in &members {
                restores.push(KillOnDrop(m.restore_command(snap).stdout(Stdio::null()).stderr(std::fs::File::create(log(m))?).spawn()?));
            }
            // Every restore ends before any is judged: none writes into a directory being removed.
            let statuses = restores.iter_mut().map(|r| r.0.wait()).collect::<Result<Vec<_>, _>>()?;
            if let Some((m, status)) = members.iter().zip(statuses).find(|(_, s)| !s.success()) {
                return Err(format!("etcdutl snapshot restore {} into {}: {status}: {}", snap.display(), m.name, drctl_testbed::procs::tail(&log(m))).into());
            }
        }
        let urls = members.iter().map(|m| m.client_url.clone()).collect();
        let mut e = EtcdProc { children: Vec::new(), members, urls, _dir: dir };
        for m in &e.members {
            e.children.push(KillOnDrop(m.spawn(Lifetime::WithParent)?));
        }
        for (m, c) in e.members.iter().zip(e.children.iter_mut()) {
            m.wait_ready(&mut c.0)?;
        }
        Ok(e)
    }

    /// How drctl's library reaches it: the member list, with the client certificate if any.
    pub fn endpoint(&self) -> Res<Endpoint> {
        let tls = match &self.members[0].tls {
            Some(t) => Some(drctl_testsupport::tls_files(t).load()?),
            None => None,
        };
        Ok(Endpoint { urls: self.urls.clone(), tls })
    }

    /// The same, to one member only.
    pub fn member_endpoint(&self, i: usize) -> Res<Endpoint> {
        Ok(Endpoint { urls: vec![self.urls[i].clone()], ..self.endpoint()? })
    }

    /// A client as drctl connects (with several members: a follower in quorum).
    pub async fn client(&self) -> Res<Client> {
        Ok(drctl::etcd::connect(&self.endpoint()?).await?.client)
    }

    /// The index of the member that leads, by asking each.
    pub async fn leader(&self) -> Res<usize> {
        for i in 0..self.urls.len() {
            let mut c = drctl::etcd::connect(&self.member_endpoint(i)?).await?.client;
            let s = c.status().await?;
            if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                return Ok(i);
            }
        }
        Err("no member leads".into())
    }

    /// The index of a member that does not lead (the only one, with one member): where drctl
    /// reads and writes when given the member list.
    pub async fn follower(&self) -> Res<usize> {
        let leader = self.leader().await?;
        Ok((0..self.urls.len()).find(|i| *i != leader).unwrap_or(leader))
    }

    /// A client of the leader alone, where every write ends up (the apiservers' too).
    pub async fn leader_client(&self) -> Res<Client> {
        Ok(drctl::etcd::connect(&self.member_endpoint(self.leader().await?)?).await?.client)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(KillOnDrop::id).collect()
    }

    /// CPU seconds every member used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.pids().into_iter().map(cpu_secs).sum()
    }

    /// The client TLS flags with `prefix` ([`drctl_testbed::procs::EtcdTls::cli_args`]); none
    /// for a plain member.
    pub fn tls_flags(&self, prefix: &str) -> Vec<String> {
        self.members[0].tls.iter().flat_map(|t| t.cli_args(prefix)).collect()
    }

    /// drctl's flags for this etcd as `side` ("source" or "dest").
    pub fn drctl_flags(&self, side: &str) -> Vec<String> {
        let mut flags = vec![format!("--{side}={}", self.urls.join(","))];
        flags.extend(self.tls_flags(&format!("{side}-")));
        flags
    }

    /// "etcd 3.6.16, 3 members (mTLS)" for a report.
    pub fn describe(&self) -> Res<String> {
        Ok(match self.urls.len() {
            1 => format!("etcd {}, one plain-HTTP member per side", etcd_version()?),
            n => format!("etcd {}, {n} members per side with client certificates, drctl given the member list", etcd_version()?),
        })
    }
}

/// A child process killed when this goes out of scope, also on an error path.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Key `i` of a mix like a platform's global cluster: workloads in 200 namespaces, CRD objects,
/// cluster-scoped objects, and some keys the default filter excludes.
pub fn key(i: usize) -> String {
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

/// `bytes` that look like a serialized object (a k8s protobuf header, then varied bytes).
pub fn value(i: usize, salt: u8, bytes: usize) -> Vec<u8> {
    let mut v = b"k8s\0\n\x0b\n\x02v1\x12\x05Thing".to_vec();
    let mut x = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(salt as u64 + 1);
    while v.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Writes keys `ids` (values of `value_bytes`) in txns of `ops` puts, `in_flight` at a time;
/// returns keys/s. Values are made per txn, so a million keys never sit in memory at once.
pub async fn batched_put(c: &Client, ids: &[usize], value_bytes: usize, ops: usize, in_flight: usize) -> Res<f64> {
    let started = Instant::now();
    let results: Vec<Result<(), etcd_client::Error>> = stream::iter(ids.chunks(ops))
        .map(|chunk| {
            let mut kv = c.kv_client();
            let txn = Txn::new().and_then(chunk.iter().map(|&i| TxnOp::put(key(i), value(i, 0, value_bytes), None)).collect::<Vec<_>>());
            async move { kv.txn(txn).await.map(|_| ()) }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
}

pub async fn count(c: &mut Client) -> Res<i64> {
    Ok(c.get("/registry/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count())
}

/// The peak RSS (`VmHWM`) of process `pid` so far, in KiB; 0 once it is gone.
pub fn peak_rss_kib(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").parse::<i64>().ok())))
        .unwrap_or(0)
}

/// CPU time (user + system) process `pid` used so far, in seconds; 0 once it is gone.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the 3rd, utime the 14th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (f.get(11), f.get(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s) / hz,
        _ => 0.0,
    }
}

/// Seconds the threads of process `pid` spent runnable but waiting for a CPU, summed over its
/// threads (`/proc/PID/task/*/schedstat`, second field; threads that exited are not counted). 0
/// once it is gone. Its CPU time is [`cpu_secs`].
pub fn cpu_wait_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// A finished command: wall time, its own peak RSS and CPU time, its stdout.
pub struct Measured {
    pub elapsed: Duration,
    pub peak_kib: i64,
    pub cpu_secs: f64,
    pub out: String,
}

/// Runs a command to completion.
///
/// The peak is the child's own `VmHWM`, sampled while it runs: `wait4`'s `ru_maxrss` would
/// include this process's RSS (a vfork child execs from the parent's address space).
pub fn run_measured(cmd: &mut Command) -> Res<Measured> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let (mut peak_kib, mut cpu) = (0, 0.0);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak_kib = peak_kib.max(peak_rss_kib(child.id()));
        cpu = cpu_secs(child.id()).max(cpu);
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let out = reader.join().map_err(|_| "reader panicked")?;
    if status.code().is_none_or(|c| c > 2) {
        return Err(format!("{cmd:?} failed: {status}: {out}").into());
    }
    Ok(Measured { elapsed, peak_kib, cpu_secs: cpu, out })
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How the writes of a lag measure arrive.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// An open loop: this many puts per second, whatever the source's latency.
    Rate(u64),
    /// A closed loop: this many writers, each putting as soon as its last put returned — the
    /// highest rate the source sustains with the mirror running.
    Writers(usize),
}

/// Put latencies (ms) and the achieved rate of single-key puts under `load` for `secs`.
pub struct Writes {
    pub latencies_ms: Vec<f64>,
    pub per_second: f64,
    /// Key → when the source acknowledged it.
    pub committed: HashMap<String, Instant>,
}

/// Single-key puts (one per request, like an apiserver) of keys under `prefix` for `secs`.
pub async fn write_load(c: &Client, prefix: &str, load: Load, secs: f64, value_bytes: usize) -> Res<Writes> {
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let put = {
        let (c, committed, latencies, prefix) = (c.clone(), committed.clone(), latencies.clone(), prefix.to_string());
        move |i: usize| {
            let (mut kv, committed, latencies, prefix) = (c.kv_client(), committed.clone(), latencies.clone(), prefix.clone());
            async move {
                let k = format!("{prefix}k{i:08}");
                let t = Instant::now();
                if kv.put(k.clone(), value(i, 1, value_bytes), None).await.is_ok() {
                    let now = Instant::now();
                    latencies.lock().unwrap_or_else(|e| e.into_inner()).push((now - t).as_secs_f64() * 1e3);
                    committed.lock().unwrap_or_else(|e| e.into_inner()).insert(k, now);
                }
            }
        }
    };
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    match load {
        Load::Rate(rate) => {
            let per_tick = (rate / 100).max(1) as usize;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut writes = Vec::new();
            let mut i = 0;
            while Instant::now() < end {
                tick.tick().await;
                for _ in 0..per_tick {
                    writes.push(tokio::spawn(put(i)));
                    i += 1;
                }
            }
            for w in writes {
                w.await?;
            }
        }
        Load::Writers(n) => {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (next, put) = (next.clone(), put.clone());
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            put(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies_ms = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let committed = std::mem::take(&mut *committed.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Writes { per_second: committed.len() as f64 / elapsed, latencies_ms, committed })
}

/// Lag of a running mirror: writes `load` to the source for `secs` under `prefix`; lag = when a
/// watch on the destination saw the key − when the source acknowledged it. Returns the writes
/// and the sorted lags (ms).
pub async fn measure_lag(src: &Client, dst: &Client, prefix: &str, load: Load, secs: f64, value_bytes: usize) -> Res<(Writes, Vec<f64>)> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut w = dst.watch_client();
    let mut stream = w.watch(prefix, Some(WatchOptions::new().with_prefix())).await?;
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
    let writes = write_load(src, prefix, load, secs, value_bytes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let mut lags: Vec<f64> = {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        writes.committed.iter().filter_map(|(k, t)| s.get(k).map(|u| u.saturating_duration_since(*t).as_secs_f64() * 1e3)).collect()
    };
    lags.sort_by(|a, b| a.total_cmp(b));
    Ok((writes, lags))
}

/// `etcd --version`'s first line, version only.
pub fn etcd_version() -> Res<String> {
    Ok(String::from_utf8_lossy(&drctl_testbed::procs::etcd_command("etcd").arg("--version").output()?.stdout)
        .lines()
        .next()
        .unwrap_or("?")
        .trim_start_matches("etcd Version: ")
        .to_string())
}

/// `--name VALUE` or `--name=VALUE` of the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(name) {
        Some("") => args.get(i + 1).cloned(),
        Some(v) => v.strip_prefix('=').map(String::from),
        None => None,
    })
}

/// The drctl binary the benchmark runs (`--drctl PATH`).
pub fn drctl() -> Res<PathBuf> {
    Ok(PathBuf::from(arg("--drctl").ok_or("--drctl PATH is required")?))
}
