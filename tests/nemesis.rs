//! A nemesis on real processes (in the spirit of Jepsen and etcd's robustness tests): two whole
//! globals (etcd + kube-apiserver + `drctl controller` each, PowerDNS), their peer links behind
//! blackholing proxies, and per seed a random schedule of partitions and heals, flips applied to
//! one side, to both or reverted, and controllers killed -9 and restarted, while a writer keeps
//! a ledger of every ConfigMap either apiserver acknowledged. At the end the partition heals,
//! Git's last flip reaches both sides, and the checker asserts:
//! - S1: never two globals holding the primary role once they can see each other again (a
//!   look's grace after the heal), and while partitioned no longer than the stated bound;
//! - S3/S4: the pair settles with the declared primary Primary and Steady, the other a standby,
//!   DNS on the primary's VIP;
//! - S2: every acknowledged write is on the final primary, or still on the other global, or in
//!   its divergence archive: none vanished.
//!
//! One `NEMESIS | seed ...` line per seed. `DRCTL_NEMESIS_SEEDS=1,2,3` picks the seeds
//! (`make nemesis SEEDS=20` runs 1..=20); CI runs the default two.

use drctl_testsupport as support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, Role};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use support::faults::Rng;
use support::pair::{Controller, DOMAIN, TOPOLOGY, VIP_A, VIP_B};
use support::partition::{overlap, primary_steady, Partitionable, Sampler, PARTITION_OVERLAP_BOUND};
use support::Global;

const NAMES: [&str; 2] = ["global-a", "global-b"];
const LEDGER_NS: &str = "nemesis";
/// How long after the heal a stale primary may still hold the role: one look (5 s) with the
/// peer's 4 s timeout and a DNS query.
const HEAL_GRACE: Duration = Duration::from_secs(12);
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy)]
enum Fault {
    Cut,
    Heal,
    /// Git flips `spec.primary` to `to`; Argo CD applies it on `on` only (None: both).
    Flip {
        to: usize,
        on: Option<usize>,
    },
    /// The side that lagged catches up with Git.
    Sync(usize),
    Kill(usize),
    Restart(usize),
    Wait(u64),
}

fn schedule(seed: u64, len: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut git = 0;
    for _ in 0..len {
        out.push(match rng.range(0, 10) {
            0 | 1 => Fault::Cut,
            2 => Fault::Heal,
            3..=5 => {
                // Mostly a real flip; sometimes the same primary again (a revert's second half).
                if rng.range(0, 4) > 0 {
                    git = 1 - git;
                }
                Fault::Flip { to: git, on: [None, Some(0), Some(1)][rng.range(0, 3) as usize] }
            }
            6 => Fault::Sync(rng.range(0, 2) as usize),
            7 => Fault::Kill(rng.range(0, 2) as usize),
            8 => Fault::Restart(rng.range(0, 2) as usize),
            _ => Fault::Wait(rng.range(1, 6)),
        });
        // Time for the controllers to act between faults.
        out.push(Fault::Wait(rng.range(2, 9)));
    }
    out
}

/// Every ConfigMap an apiserver acknowledged: (the global that took it, its name).
type Ledger = Arc<Mutex<Vec<(usize, String)>>>;

/// Writes a ConfigMap through each global's apiserver in turn, every 150 ms, until stopped. A
/// fenced standby refuses them: only what an apiserver acknowledged is in the ledger.
fn writer(clients: [kube::Client; 2], stop: Arc<AtomicBool>, ledger: Ledger) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut attempts = 0u64;
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let side = (seq % 2) as usize;
            let name = format!("w{seq:06}-{}", NAMES[side]);
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"seq": seq.to_string()}})).expect("cm");
            let api: Api<ConfigMap> = Api::namespaced(clients[side].clone(), LEDGER_NS);
            attempts += 1;
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), api.create(&PostParams::default(), &cm)).await {
                ledger.lock().expect("ledger").push((side, name));
            }
            seq += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        attempts
    })
}

/// Keys under `prefix` in `g`'s etcd (names only, after the prefix), and every archived key.
async fn etcd_names(g: &Global, prefix: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut c = g.etcd.client().await;
    let opts = || Some(etcd_client::GetOptions::new().with_prefix().with_keys_only());
    let live = c.get(prefix, opts()).await.expect("etcd get");
    let names = live.kvs().iter().filter_map(|kv| kv.key_str().ok()).map(|k| k.trim_start_matches(prefix).to_string()).collect();
    // The divergence archive keeps the original key after its archive id, outside /registry/.
    let archived = c.get("drctl/archive/", opts()).await.expect("etcd get archive");
    let mut more: BTreeSet<String> = BTreeSet::new();
    for kv in archived.kvs() {
        if let Some(at) = kv.key_str().ok().and_then(|k| k.find(prefix).map(|i| k[i + prefix.len()..].to_string())) {
            more.insert(at);
        }
    }
    (names, more)
}

struct Outcome {
    line: String,
    violations: Vec<String>,
}

async fn run_seed(seed: u64) -> Outcome {
    let p = Partitionable::start().await;
    let (ca, cb) = p.steady().await;
    let mut ctl: [Controller; 2] = [ca, cb];
    let mut alive = [true, true];
    let pair = &p.pair;
    let globals = [&pair.a, &pair.b];
    let sampler = Sampler::start(&pair.a, &pair.b).await;
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The ledger's namespace, created on the primary and replicated.
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": LEDGER_NS}})).expect("namespace");
    Api::<Namespace>::all(pair.a.client().await).create(&PostParams::default(), &ns).await.expect("create namespace");
    let w = writer([pair.a.as_alice().await, pair.b.as_alice().await], stop.clone(), ledger.clone());
    let mut git = 0usize;
    let faults = schedule(seed, 8);
    let mut said = Vec::new();
    for f in &faults {
        match *f {
            Fault::Cut => p.partition(true),
            Fault::Heal => p.partition(false),
            Fault::Flip { to, on } => {
                git = to;
                let yaml = pair.topology_yaml(NAMES[to]);
                match on {
                    None => pair.apply_both(NAMES[to]),
                    Some(side) => pair.apply(globals[side], &yaml),
                }
            }
            Fault::Sync(side) => pair.apply(globals[side], &pair.topology_yaml(NAMES[git])),
            Fault::Kill(side) => {
                ctl[side].kill();
                alive[side] = false;
            }
            Fault::Restart(side) => {
                ctl[side].restart();
                alive[side] = true;
            }
            Fault::Wait(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        }
        if !matches!(f, Fault::Wait(_)) {
            said.push(format!("{f:?}"));
        }
    }
    // The end of the storm: the network heals, every controller runs, Git reaches both sides.
    p.partition(false);
    let healed = sampler.now();
    for side in 0..2 {
        if !alive[side] {
            ctl[side].restart();
        }
    }
    pair.apply_both(NAMES[git]);
    let mut violations = Vec::new();
    let primary = globals[git];
    let other = globals[1 - git];
    let settle_started = Instant::now();
    let settled = loop {
        let ps = pair.status(primary).await.and_then(|t| t.status);
        let os = pair.status(other).await.and_then(|t| t.status);
        let dns = support::dns::dig(pair.pdns.dns, DOMAIN, "A");
        let want_vip = if git == 0 { VIP_A } else { VIP_B };
        if ps.as_ref().is_some_and(primary_steady) && os.as_ref().is_some_and(|s| s.role == Some(Role::Standby)) && dns == vec![want_vip.to_string()] {
            break Some(settle_started.elapsed());
        }
        if settle_started.elapsed() > SETTLE {
            let show = |s: Option<drctl::topology::DRTopologyStatus>| s.map(|s| format!("{:?}/{:?} term {}", s.role, s.phase, s.term)).unwrap_or_default();
            violations.push(format!("S3/S4: not settled {SETTLE:?} after the heal: {} {}, {} {}, DNS {dns:?}", primary.name, show(ps), other.name, show(os)));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::SeqCst);
    let attempts = w.await.unwrap_or(0);
    // Let the last acknowledged writes of the primary reach the standby's mirror.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (n, during, after) = sampler.finish(Some(healed + HEAL_GRACE)).await;
    if !after.is_empty() {
        violations.push(format!("S1: two primaries in {} samples after the heal (+{HEAL_GRACE:?}): {after:?}", after.len()));
    }
    // Samples from before the heal (and within its grace): the partition's overlap.
    if overlap(&during) >= PARTITION_OVERLAP_BOUND {
        violations.push(format!("S1: two primaries for {:?} (bound {PARTITION_OVERLAP_BOUND:?}): {during:?}", overlap(&during)));
    }
    let prefix = format!("/registry/configmaps/{LEDGER_NS}/");
    let (on_primary, archived_p) = etcd_names(primary, &prefix).await;
    let (on_other, archived_o) = etcd_names(other, &prefix).await;
    let acked = ledger.lock().expect("ledger").clone();
    let (mut kept_elsewhere, mut archived, mut lost) = (0, 0, Vec::new());
    for (_, name) in &acked {
        if on_primary.contains(name) {
            continue;
        }
        if archived_p.contains(name) || archived_o.contains(name) {
            archived += 1;
        } else if on_other.contains(name) {
            kept_elsewhere += 1;
        } else {
            lost.push(name.clone());
        }
    }
    if !lost.is_empty() {
        violations.push(format!("S2: {} acknowledged writes on neither global nor archived: {:?}", lost.len(), &lost[..lost.len().min(5)]));
    }
    let terms: Vec<i64> = {
        let mut t = Vec::new();
        for g in globals {
            let api: Api<DRTopology> = Api::all(g.client().await);
            t.push(api.get_opt(TOPOLOGY).await.ok().flatten().and_then(|t| t.status).map(|s| s.term).unwrap_or(-1));
        }
        t
    };
    let line = format!(
        "NEMESIS | seed {seed} | {} | {} | settled {} | writes {} acknowledged of {attempts}, {kept_elsewhere} only on the other global, {archived} archived, {} lost | two primaries: {} of {n} samples before the heal (over {:.1}s), {} after | terms {terms:?}",
        said.join(" "),
        if violations.is_empty() { "ok" } else { "VIOLATED" },
        settled.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "never".into()),
        acked.len(),
        lost.len(),
        during.len(),
        overlap(&during).as_secs_f64(),
        after.len(),
    );
    Outcome { line, violations }
}

fn seeds() -> Vec<u64> {
    match std::env::var("DRCTL_NEMESIS_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_schedules_keep_s1_to_s4_and_lose_no_acknowledged_write() {
    let mut failed = Vec::new();
    for seed in seeds() {
        let o = run_seed(seed).await;
        eprintln!("{}", o.line);
        if !o.violations.is_empty() {
            failed.push(format!("seed {seed}: {}", o.violations.join("; ")));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
