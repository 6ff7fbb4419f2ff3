//! Fault injection for the reliability suite: a TCP proxy that can pass, blackhole or slow
//! traffic (a partition between the globals), a seeded random source, a write load that keeps a
//! ledger of acknowledged writes, and the final verdict (`drctl check` plus the ledger).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drctl::check::CheckReport;
use etcd_client::{Client, GetOptions};

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing moves in either direction; connections stay open (a partition, not a reset).
    Blackhole,
    /// Every chunk waits this long before it is forwarded.
    Slow(Duration),
}

/// A TCP proxy on 127.0.0.1 in front of `target`, on a thread and runtime of its own.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Where it forwards to.
    pub target: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes forwarded, both directions.
    pub forwarded: Arc<AtomicU64>,
    /// Connections accepted before the last [`Proxy::stall_open_connections`] hang for good.
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr");
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let forwarded = Arc::new(AtomicU64::new(0));
        let epoch = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (m, f, e) = (mode.clone(), forwarded.clone(), epoch.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let accept = async {
                    loop {
                        let Ok((inbound, _)) = listener.accept().await else { continue };
                        let (m, f) = (m.clone(), f.clone());
                        let born = Epoch { current: e.clone(), at_accept: e.load(Ordering::SeqCst) };
                        tokio::spawn(async move {
                            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                            // No Nagle: a request written in parts would wait for a delayed ACK (tcp_lb.rs).
                            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::spawn(pump(ri, wo, m.clone(), f.clone(), born.clone()));
                            pump(ro, wi, m, f, born).await;
                        });
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = accept => {}
                }
            });
        });
        Proxy { addr, target, mode, stop: Some(stop), thread: Some(thread), forwarded, epoch }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("proxy mode") = mode;
    }

    /// Every connection open now stops carrying bytes, for good, without being closed (a hung
    /// load balancer or a lost NAT entry); connections made after this pass as usual.
    pub fn stall_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// A connection's generation: it carries bytes only while no stall came after its accept.
#[derive(Clone)]
struct Epoch {
    current: Arc<AtomicU64>,
    at_accept: u64,
}

impl Epoch {
    fn stalled(&self) -> bool {
        self.current.load(Ordering::SeqCst) != self.at_accept
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<Mutex<Mode>>,
    forwarded: Arc<AtomicU64>,
    epoch: Epoch,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let current = || if epoch.stalled() { Mode::Blackhole } else { *mode.lock().expect("proxy mode") };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Hold bytes while blackholed: neither read nor write, as a dead link would.
        while current() == Mode::Blackhole {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match current() {
                Mode::Blackhole => tokio::time::sleep(Duration::from_millis(20)).await,
                Mode::Slow(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Pass => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// xorshift64*: seeded, so a failing run can be replayed with its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// `drctl` as a child that dies with the spawning thread, logging to `log`.
pub struct DrctlProcess {
    child: Option<Child>,
}

impl DrctlProcess {
    pub fn spawn(args: &[String], log: &Path) -> DrctlProcess {
        use std::os::unix::process::CommandExt;
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let f2 = f.try_clone().expect("clone log");
        let mut cmd = Command::new(super::drctl_bin());
        cmd.args(args).stdout(f).stderr(f2);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        DrctlProcess { child: Some(cmd.spawn().expect("spawn drctl")) }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DrctlProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every write the source acknowledged, by key: `Some(value)` after a put, `None` after a
/// delete. A write whose outcome is unknown (the call failed) makes its key uncertain.
#[derive(Default, Clone)]
pub struct Ledger {
    pub acked: BTreeMap<String, Option<Vec<u8>>>,
    pub uncertain: BTreeSet<String>,
    pub writes: u64,
    pub failed: u64,
}

/// A write load on the source: puts (and deletes of earlier keys) under `/registry/configmaps/
/// <ns>/`, `rate` per second, until `stop` is set. Failed writes are counted, not retried.
/// With `keys`, puts cycle over that many names (updates, a keyspace of constant size);
/// without, every put creates a new key.
pub async fn write_load(mut c: Client, ns: String, rate: u64, seed: u64, keys: Option<u64>, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let mut rng = Rng::new(seed);
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        interval.tick().await;
        n += 1;
        let names = keys.map_or(n, |k| n.min(k));
        let (key, op) = if n > 10 && rng.range(0, 5) == 0 {
            (format!("/registry/configmaps/{ns}/k{}", rng.range(0, names)), None)
        } else {
            let v = format!("{seed}-{n}-{}", "x".repeat(rng.range(10, 1024) as usize)).into_bytes();
            (format!("/registry/configmaps/{ns}/k{}", keys.map_or(n, |k| n % k)), Some(v))
        };
        let res = match &op {
            Some(v) => tokio::time::timeout(Duration::from_secs(2), c.put(key.as_str(), v.clone(), None)).await.map(|r| r.map(|_| ())),
            None => tokio::time::timeout(Duration::from_secs(2), c.delete(key.as_str(), None)).await.map(|r| r.map(|_| ())),
        };
        let mut l = ledger.lock().expect("ledger");
        l.writes += 1;
        match res {
            Ok(Ok(())) => {
                l.uncertain.remove(&key);
                l.acked.insert(key, op);
            }
            _ => {
                l.failed += 1;
                l.acked.remove(&key);
                l.uncertain.insert(key);
            }
        }
    }
}

/// Acknowledged writes missing or different on `dest`: the data lost.
pub async fn lost_writes(dest: &mut Client, ledger: &Ledger) -> Vec<String> {
    let mut kv = dest.kv_client().max_decoding_message_size(drctl::etcd::MAX_MESSAGE_BYTES);
    let (mut all, mut start, mut revision) = (Vec::new(), b"/registry/".to_vec(), 0);
    loop {
        let page = drctl::etcd::range_page(&mut kv, &start, b"/registry0", revision, 2000).await.expect("read destination");
        revision = page.revision;
        let next = page.kvs.last().map(|kv| drctl::etcd::key_after(&kv.key));
        all.extend(page.kvs);
        match next {
            Some(n) if page.more => start = n,
            _ => break,
        }
    }
    let have: BTreeMap<String, Vec<u8>> = all.into_iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value)).collect();
    ledger.acked.iter().filter(|(k, want)| have.get(*k) != want.as_ref()).map(|(k, _)| k.clone()).collect()
}

/// `drctl check --json` between two etcds.
pub fn check(source: &super::Etcd, dest: &super::Etcd) -> (Option<i32>, CheckReport) {
    let out =
        super::drctl().args(["check", "--json"]).args(source.flags("source", "source-")).args(dest.flags("dest", "dest-")).output().expect("run drctl check");
    let report: CheckReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drctl check printed no report ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

/// Waits until the destination's checkpoint covers the source's head (a finished copy).
pub async fn wait_caught_up(source: &mut Client, dest: &mut Client, timeout: Duration) -> Result<(), String> {
    let head = source.get("\0", Some(GetOptions::new().with_count_only())).await.map_err(|e| e.to_string())?;
    let head = head.header().map(|h| h.revision()).unwrap_or_default();
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let mut kv = dest.kv_client();
        if let Ok(cp) = drctl::mirror::Checkpoint::read(&mut kv).await {
            if cp.as_ref().is_some_and(|c| c.revision >= head && c.copy.is_none()) {
                return Ok(());
            }
            last = cp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("destination not caught up with source revision {head} within {timeout:?}; checkpoint {last:?}"))
}

/// The outcome of one faulted run, as RELIABILITY.md reports it.
pub struct Verdict {
    pub consistent: bool,
    pub missed: u64,
    pub surplus: u64,
    pub diverged: u64,
    pub lost: Vec<String>,
}

impl Verdict {
    pub fn survived(&self) -> bool {
        self.consistent && self.missed + self.surplus + self.diverged == 0 && self.lost.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "check {}/{}/{} (missed/surplus/diverged), {} acknowledged writes lost", self.missed, self.surplus, self.diverged, self.lost.len())?;
        if let Some(k) = self.lost.first() {
            write!(f, ", e.g. {k}")?;
        }
        Ok(())
    }
}

/// Judges a caught-up destination: `drctl check` at the source's head, and the ledger.
pub async fn verdict(source: &super::Etcd, dest_etcd: &super::Etcd, dest: &mut Client, ledger: &Ledger) -> Verdict {
    let (code, r) = check(source, dest_etcd);
    Verdict {
        // Compared at the source's head, not at a checkpoint behind it.
        consistent: r.consistent && code == Some(0) && r.revision == r.source_revision,
        missed: r.missed.count,
        surplus: r.surplus.count,
        diverged: r.diverged.count,
        lost: lost_writes(dest, ledger).await,
    }
}

/// One line per fault for RELIABILITY.md, printed with `--nocapture`.
pub fn report(fault: &str, runs: usize, survived: usize, lost: usize, extra: &str) {
    eprintln!("FAULT | {fault} | runs {runs} | survived {survived} | acknowledged writes lost {lost} | {extra}");
}
