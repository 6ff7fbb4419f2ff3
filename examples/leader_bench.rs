//! The primary's leader during a check (issue 19, "spare the primary's leader"): a three-member
//! etcd (3.6, mTLS) holding N Kubernetes-shaped keys, a steady writer of single-key puts to the
//! leader (as the apiservers' writes all end there), and the put latency measured alone, during
//! a `drctl check` whose reads go to the leader, and during one whose reads go to the followers
//! (the member list: drctl reads past revisions from followers), and beside a thread that only
//! burns one core (no reads at all): if the burner slows the leader as much as a follower's check
//! does, what is left is CPU sharing, not the check's reads. Each phase reports the leader's CPU
//! time (`/proc/PID/stat`) and how long its threads waited for a CPU (`schedstat`). Then what
//! StopSync's raise of the new primary's revision (`decide::revisions`) costs: revisions skipped
//! per second. Not a test: `make bench-leader`.
//!
//! Usage: leader_bench [--keys N] [--rate PUTS_PER_S] [--raise REVISIONS]

#[path = "bench/mod.rs"]
mod bench;

use std::time::{Duration, Instant};

use bench::{arg, batched_put, percentile, EtcdProc, Load, Res};
use drctl::check::{self, CheckOptions};
use drctl::etcd::{self, Endpoint};
use drctl::keyspace::Filter;
use drctl::mirror::{Mirror, MirrorConfig, Tuning};
use drctl::topology::ExcludeSpec;

struct Phase {
    name: &'static str,
    p50: f64,
    p99: f64,
    puts: usize,
    checks: usize,
    check_ms: f64,
    /// The leader's CPU seconds and its seconds runnable but waiting for a CPU, over the phase.
    leader_cpu: f64,
    leader_wait: f64,
    /// CPU seconds of everything else measured: the followers and this process (writer, check,
    /// burner).
    others_cpu: f64,
}

/// What runs beside the writer in a phase.
enum Beside {
    Nothing,
    /// Back-to-back checks reading through this endpoint.
    Check(Endpoint),
    /// A thread spinning on one core, reading nothing.
    Burner,
}

#[tokio::main]
async fn main() -> Res<()> {
    let keys: usize = arg("--keys").map_or(Ok(300_000), |s| s.parse())?;
    let rate: u64 = arg("--rate").map_or(Ok(300), |s| s.parse())?;
    let raise: u64 = arg("--raise").map_or(Ok(50_000), |s| s.parse())?;
    let src = EtcdProc::start(3).await?;
    let leader_index = src.leader().await?;
    let pids = src.pids();
    let leader_pid = pids[leader_index];
    let other_pids: Vec<u32> = pids.iter().enumerate().filter(|(i, _)| *i != leader_index).map(|(_, p)| *p).chain([std::process::id()]).collect();
    let others_cpu = || other_pids.iter().map(|p| bench::cpu_secs(*p)).sum::<f64>();
    let leader_sched = || (bench::cpu_secs(leader_pid), bench::cpu_wait_secs(leader_pid));
    let to_leader = etcd::connect(&src.member_endpoint(leader_index)?).await?.client;

    eprintln!("loading {keys} keys of 1 KiB into a 3-member etcd {} ...", bench::etcd_version()?);
    let ids: Vec<usize> = (0..keys).collect();
    batched_put(&to_leader, &ids, 1024, 128, 4).await?;
    let dst = EtcdProc::start(1).await?;
    let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
    let tuning = Tuning { anti_entropy_after: None, ..Tuning::default() };
    Mirror::new(MirrorConfig { source: src.endpoint()?, dest: dst.endpoint()?, filter: filter.clone(), tuning }).run_once().await?;
    let dest = etcd::connect(&dst.endpoint()?).await?;

    let mut phases = Vec::new();
    for (name, beside) in [
        ("alone", Beside::Nothing),
        ("check reading the leader", Beside::Check(src.member_endpoint(leader_index)?)),
        ("check reading the followers", Beside::Check(src.endpoint()?)),
        ("a thread burning one core", Beside::Burner),
    ] {
        let source = match &beside {
            Beside::Check(e) => Some(etcd::connect(e).await?),
            _ => None,
        };
        let (leader_before, others_before) = (leader_sched(), others_cpu());
        let started = Instant::now();
        let burner = matches!(beside, Beside::Burner).then(|| {
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while started.elapsed() < Duration::from_secs(15) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        });
        let writer = {
            let c = to_leader.clone();
            tokio::spawn(
                async move { bench::write_load(&c, "/registry/configmaps/bench-writer", Load::Rate(rate), 15.0, 1024).await.map_err(|e| e.to_string()) },
            )
        };
        let (mut checks, mut check_time) = (0, Duration::ZERO);
        if let Some(source) = &source {
            while started.elapsed() < Duration::from_secs(14) {
                let t = Instant::now();
                let found = check::run(source, &dest, &filter, &CheckOptions::default()).await?;
                check_time += t.elapsed();
                checks += 1;
                eprintln!("  {name}: {}", found.report);
            }
        }
        let w = writer.await??;
        if let Some(b) = burner {
            b.join().map_err(|_| "the burner thread panicked")?;
        }
        let (leader_after, others_after) = (leader_sched(), others_cpu());
        let mut lat = w.latencies_ms;
        lat.sort_by(f64::total_cmp);
        phases.push(Phase {
            name,
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            puts: lat.len(),
            checks,
            check_ms: check_time.as_secs_f64() * 1e3 / checks.max(1) as f64,
            leader_cpu: leader_after.0 - leader_before.0,
            leader_wait: leader_after.1 - leader_before.1,
            others_cpu: others_after - others_before,
        });
    }
    let alone = phases[0].p99;
    println!("\nput latency at the leader, {rate} puts/s of 1 KiB, {keys} keys, etcd {} x3 (mTLS):", bench::etcd_version()?);
    println!("| phase | puts | p50 ms | p99 ms | p99 / alone | checks | ms per check | leader CPU s | leader waiting for a CPU s | others' CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in &phases {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2}x | {} | {:.0} | {:.1} | {:.2} | {:.1} |",
            p.name,
            p.puts,
            p.p50,
            p.p99,
            p.p99 / alone,
            p.checks,
            p.check_ms,
            p.leader_cpu,
            p.leader_wait,
            p.others_cpu
        );
    }
    // StopSync's raise, through the member list as the controller connects: 64 puts in flight.
    let mut all = etcd::connect(&src.endpoint()?).await?;
    let (_, head) = etcd::head(&mut all.kv).await?;
    let t = Instant::now();
    let to = etcd::raise_revision(&all.kv, head, raise, 64).await?;
    let secs = t.elapsed().as_secs_f64();
    println!("\nStopSync's raise: {} revisions ({head} -> {to}) in {secs:.1} s: {:.0} revisions/s", to - head, (to - head) as f64 / secs);
    Ok(())
}
