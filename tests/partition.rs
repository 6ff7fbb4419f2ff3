//! Issue 18's scenarios on two real globals (etcd + kube-apiserver + `drctl controller` each,
//! PowerDNS): every peer link goes through a TCP proxy that can blackhole, as a partition between
//! the globals would (`support::partition`). Each test samples both statuses all along and asserts
//! the safe outcome; each prints one `FAULT | ...` line (RELIABILITY.md records them).

use drctl_testsupport as support;

use std::time::{Duration, Instant};

use drctl::topology::{DRTopology, DRTopologyStatus, Role};
use kube::api::Api;
use support::faults;
use support::pair::{DOMAIN, TOPOLOGY, VIP_B};
use support::partition::{
    overlap, primary_steady, secs_between, standby_in_sync, step_started, stood_down, MirrorLink, Partitionable, Sampler, FAILOVER, PARTITION_OVERLAP_BOUND,
    STEADY,
};

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

/// Scenario 3: a flip away and back that only the primary saw. After A→B→A (A term 3, B's
/// completed failover of term 2 still in its status, its demotion token for A from the flip
/// back), B's mirror source (A's etcd) is blackholed, A's apiserver acknowledges 100 writes,
/// B's etcd is compacted, and `global-b` then `global-a` reach A only. A steps down for B (which
/// never saw the flip) and, named primary again, takes the role back without a runbook: B's
/// failover predates A's term (`PeerFailover::predates`), so it is no "the peer moved DNS".
/// Before, that refusal made A run a full runbook against B's stale token, and FinalSync
/// imported B's copy, which holds none of the 100 writes (checked below, so the old path had
/// something to lose): "0 missed, 0 surplus, 0 diverged" and 100 of 100 gone. Had a runbook
/// still run, FinalSync would import nothing from B's lower term (`old_primary_may_be_newer`).
/// Run once with both rules disabled: A ran a full runbook (term 4), Demote took B's stale
/// token, FinalSync caught up from B ("0 missed, 100 surplus, 0 diverged") and this test failed
/// on the new failover record. The 100 writes stayed there as surplus keys: the loss the issue
/// measured came through A's old mirror checkpoint and a compaction resync, closed separately
/// (the checkpoint is forgotten when a cluster becomes primary).
#[tokio::test(flavor = "multi_thread")]
async fn a_flip_away_and_back_seen_only_by_the_primary_loses_no_write() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    let p = Partitionable::start().await;
    let pair = &p.pair;
    // B's mirror pulls from A's etcd through a proxy: B's topology names it for that link.
    let mirror = MirrorLink::start(&pair.a);
    let apply = |g: &support::Global, primary: &str| {
        let yaml = pair.topology_yaml(primary);
        pair.apply(g, &if g.name == pair.b.name { mirror.topology(&yaml) } else { yaml });
    };
    apply(&pair.a, "global-a");
    apply(&pair.b, "global-a");
    let (ca, cb) = (pair.controller(&pair.a, &[]), pair.controller(&pair.b, &[]));
    let logs = [&ca, &cb];
    pair.wait(&pair.a, "A primary and steady", STEADY, &logs, primary_steady).await;
    pair.wait(&pair.b, "B standby in sync", STEADY, &logs, standby_in_sync).await;
    // A→B→A, both sides applying both flips.
    for (to, from) in [(&pair.b, &pair.a), (&pair.a, &pair.b)] {
        apply(&pair.a, &to.name);
        apply(&pair.b, &to.name);
        pair.wait(to, "the new primary steady", FAILOVER, &logs, primary_steady).await;
        pair.wait(from, "the old primary following it", STEADY, &logs, |s| standby_in_sync(s) && s.demotion.as_ref().is_some_and(|d| d.new_primary == to.name))
            .await;
    }
    let a0 = pair.status(&pair.a).await.and_then(|t| t.status).expect("a status");
    let b0 = pair.status(&pair.b).await.and_then(|t| t.status).expect("b status");
    let b_failover = b0.failover.as_ref().expect("B's failover of the first flip");
    assert!(b_failover.completed_at.is_some() && b_failover.term.is_some_and(|t| t < a0.term), "B: {b_failover:?}, A's term {}", a0.term);
    let a_failover = a0.failover.clone().expect("A's failover of the flip back");

    let sampler = Sampler::start(&pair.a, &pair.b).await;
    let kube_a = pair.a.client().await;
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "apps"}})).expect("ns");
    Api::<Namespace>::all(kube_a.clone()).create(&Default::default(), &ns).await.expect("create namespace apps on A");
    mirror.cut(true);
    let cms: Api<ConfigMap> = Api::namespaced(kube_a.clone(), "apps");
    for i in 0..100 {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": format!("acked-{i}")}, "data": {"i": i.to_string()}})).expect("cm");
        cms.create(&Default::default(), &cm).await.unwrap_or_else(|e| panic!("A's apiserver refused write {i}: {e}"));
    }
    let mut etcd_b = pair.b.etcd.client().await;
    let on_b = |r: etcd_client::GetResponse| r.count();
    let prefix = || Some(etcd_client::GetOptions::new().with_prefix().with_count_only());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stale = on_b(etcd_b.get("/registry/configmaps/apps/acked-", prefix()).await.expect("get on B"));
    assert_eq!(stale, 0, "B's mirror source is cut: B's copy holds none of A's 100 writes");
    let head = etcd_b.get("/", None).await.expect("head of B").header().expect("header").revision();
    etcd_b.compact(head, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact B");

    // The flip away and back reaches A only (Argo CD on B is behind).
    apply(&pair.a, "global-b");
    pair.wait(&pair.a, "A stepped down for B", Duration::from_secs(60), &logs, |s| {
        s.role == Some(Role::Standby) && s.demotion.as_ref().is_some_and(|d| d.new_primary == "global-b")
    })
    .await;
    apply(&pair.a, "global-a");
    let back = Instant::now();
    let a = pair.wait(&pair.a, "A primary again", FAILOVER, &logs, primary_steady).await.status.expect("a status");
    let back_after = back.elapsed();
    // Reclaimed, no runbook: the failover record is still the flip back's, the term unchanged.
    let f = a.failover.as_ref().expect("A's failover record");
    assert_eq!((f.started_at.as_deref(), f.term, a.term), (a_failover.started_at.as_deref(), a_failover.term, a0.term), "A ran no new failover: {f:?}");
    let events = pair.a.api.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "jsonpath={range .items[*]}{.reason}: {.note}{\"\\n\"}{end}"]);
    let reclaimed = events
        .lines()
        .find(|l| l.starts_with("PrimaryReclaimed: "))
        .unwrap_or_else(|| panic!("an Event says A took the role back: {events}\n{}", ca.log_tail()));
    assert!(reclaimed.contains("completed before our term"), "{reclaimed}");
    // Every write A's apiserver acknowledged is still on A.
    let names: Vec<String> = cms.list(&Default::default()).await.expect("list on A").items.into_iter().filter_map(|c| c.metadata.name).collect();
    let kept = (0..100).filter(|i| names.contains(&format!("acked-{i}"))).count();
    assert_eq!(kept, 100, "A's acknowledged writes kept on A");
    let mut etcd_a = pair.a.etcd.client().await;
    let archived = etcd_a.get("drctl/archive/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.expect("archive").count();

    // B's mirror source back: B catches up with the 100 writes.
    mirror.cut(false);
    let healed = Instant::now();
    let mut reached = 0;
    while healed.elapsed() < STEADY {
        reached = on_b(etcd_b.get("/registry/configmaps/apps/acked-", prefix()).await.expect("get on B"));
        if reached == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(reached, 100, "A's writes reached B once its mirror source passed again\n{}", cb.log_tail());
    let caught_up = healed.elapsed();
    pair.wait(&pair.b, "B standby in sync with A", STEADY, &logs, standby_in_sync).await;
    let b = pair.status(&pair.b).await.and_then(|t| t.status).expect("b status");
    assert_eq!((b.role, b.term), (Some(Role::Standby), b0.term), "B never became primary");
    let (n, during, _) = sampler.finish(None).await;
    assert!(during.is_empty(), "two primaries in {} of {n} samples, at {during:?}", during.len());
    faults::report(
        "a flip away and back seen only by the primary, after A->B->A, B's mirror source cut",
        1,
        1,
        100 - kept,
        &format!(
            "A reclaimed {:.1}s after the flip back reached it (PrimaryReclaimed; no runbook, term {} kept, B's term {}); {kept} of 100 writes kept on A, {archived} keys archived on A; B held 0 of them while cut, all 100 {:.1}s after the heal; at most one primary in all {n} samples",
            back_after.as_secs_f64(),
            a.term,
            b.term,
            caught_up.as_secs_f64()
        ),
    );
}
