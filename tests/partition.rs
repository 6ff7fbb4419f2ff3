//! Issue 18's scenarios on two real globals (etcd + kube-apiserver + `drctl controller` each,
//! PowerDNS): every peer link goes through a TCP proxy that can blackhole, as a partition between
//! the globals would (`support::partition`). Each test samples both statuses all along and asserts
//! the safe outcome; each prints one `FAULT | ...` line (RELIABILITY.md records them).

mod support;

use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, DRTopologyStatus, Role};
use kube::api::Api;
use support::faults;
use support::pair::{DOMAIN, TOPOLOGY, VIP_B};
use support::partition::{overlap, primary_steady, secs_between, step_started, stood_down, Partitionable, Sampler, FAILOVER, PARTITION_OVERLAP_BOUND, STEADY};

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
    // Writes A takes while it is still primary and cut off: B never gets them.
    let mut etcd_a = pair.a.etcd.client().await;
    for i in 0..5 {
        etcd_a.put(format!("/registry/configmaps/apps/cut-off-{i}"), format!("written on A after the cut {i}"), None).await.expect("put on A");
    }
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
    let a_follows = pair
        .wait(&pair.a, "A following B, its unreplicated revisions measured", STEADY, &[&ca, &cb], |s| {
            s.role == Some(Role::Standby) && s.sync.is_some() && s.demotion.as_ref().is_some_and(|d| d.unreplicated_revisions.is_some())
        })
        .await;
    let unreplicated = a_follows.status.and_then(|s| s.demotion).and_then(|d| d.unreplicated_revisions).unwrap_or_default();
    // The mirror's etcd link is not cut here (only the apiservers'): B may have copied some of
    // them before its StopSync. Those it did not are counted.
    let mut etcd_b = pair.b.etcd.client().await;
    let mut missing_on_b = 0;
    for i in 0..5 {
        if etcd_b.get(format!("/registry/configmaps/apps/cut-off-{i}"), None).await.expect("get on B").kvs().is_empty() {
            missing_on_b += 1;
        }
    }
    assert!(unreplicated >= missing_on_b, "{missing_on_b} of A's writes after the cut never reached B; counted: {unreplicated}");
    // Kept on A (surplus to B, or archived), never silently gone.
    let kept =
        etcd_a.get("/registry/configmaps/apps/cut-off-", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.expect("get").count();
    let archived = etcd_a.get("drctl/archive/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.expect("get archive");
    let in_archive = archived.kvs().iter().filter(|kv| kv.key_str().is_ok_and(|k| k.contains("/registry/configmaps/apps/cut-off-"))).count();
    assert_eq!(kept as usize + in_archive, 5, "A's writes after the cut: {kept} kept, {in_archive} archived");
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
            "{unreplicated} revisions A took after B's last applied counted (UnreplicatedWrites; {missing_on_b} of A's 5 writes after the cut never reached B), all 5 kept on A ({kept} in place, {in_archive} archived); B primary {:.1}s after the cut; A stood down {:.1}s after B's SwitchDNS began ({:.1}s after B's StopSync lifted its fence); both role Primary in {} of {n} samples while partitioned (over {:.1}s), 0 after the heal",
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
