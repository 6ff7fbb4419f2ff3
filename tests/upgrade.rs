//! Upgrading drctl one global at a time (issue 21, item 4): a pair with one global on the last
//! released controller (hack/released-commit, built by hack/build-released.sh) and the other on
//! this build, under this build's CRD. The mixed pair replicates both ways, fails over to the
//! newer controller, refuses to fail over to the older one (`decide::skew`, condition Degraded /
//! PeerVersionSkew), and once the older one is restarted on this build on the same state, the
//! refused failover proceeds and the pair fails back, with no write a primary acknowledged lost.
//! Also the documented order (the primary first) with a rollback, and a disaster while mixed.

use drctl_testsupport as support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drctl::decide::skew::{PROTOCOL, VERSION};
use drctl::topology::{DRTopologyStatus, Phase, Role};
use support::ledger::Ledger;
use support::pair::{Controller, Pair};
use support::Global;

const STEADY: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(120);

/// The released controller, built from this clone's history once per machine.
fn released_drctl() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/build-released.sh");
    let start = Instant::now();
    let out = std::process::Command::new("bash").arg(script).stderr(std::process::Stdio::inherit()).output().expect("run hack/build-released.sh");
    assert!(out.status.success(), "hack/build-released.sh failed");
    let path = String::from_utf8_lossy(&out.stdout).lines().last().map(str::trim).map(PathBuf::from).expect("the binary's path on the last line");
    eprintln!("released drctl: {} ({:.1}s to get)", path.display(), start.elapsed().as_secs_f64());
    path
}

fn head_drctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drctl"))
}

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

fn failover_done(s: &DRTopologyStatus) -> bool {
    s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())
}

fn skew_condition(s: &DRTopologyStatus) -> Option<String> {
    s.conditions.iter().find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "PeerVersionSkew").map(|c| c.message.clone())
}

/// A ConfigMap written on `from` shows up on `to` through the mirror.
async fn replicates(from: &Global, to: &Global, name: &str, logs: &[&Controller]) {
    // Namespace `default` is never replicated (the apiserver's own Service).
    let _ = from.api.kubectl(&["create", "namespace", "apps"]);
    from.api.kubectl_ok(&["-n", "apps", "create", "configmap", name, "--from-literal=v=1"]);
    let start = Instant::now();
    while start.elapsed() < STEADY {
        if to.api.kubectl(&["-n", "apps", "get", "configmap", name]).is_ok_and(|o| o.status.success()) {
            eprintln!("replicated {name} from {} to {} in {:.1}s", from.name, to.name, start.elapsed().as_secs_f64());
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs: Vec<String> = logs.iter().map(|c| c.log_tail()).collect();
    panic!("{name} written on {} never reached {}\n{}", from.name, to.name, logs.join("\n---\n"));
}

fn primary_steady(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)
}

/// Topology to global-a; A's controller on the release, the steady primary, and B's on this
/// build, its standby in sync: the controllers and both statuses.
async fn release_primary_and_head_standby(pair: &Pair, released: &std::path::Path) -> (Controller, Controller, DRTopologyStatus, DRTopologyStatus) {
    pair.apply_both("global-a");
    let kc_a = pair.a.api.kubeconfig.clone();
    let ca = pair.controller_from(released, &pair.a, &kc_a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    let a = pair.wait(&pair.a, "A (release) primary and steady", STEADY, &[&ca, &cb], primary_steady).await;
    let b = pair.wait(&pair.b, "B (this build) standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    (ca, cb, a.status.expect("A status"), b.status.expect("B status"))
}

fn controller_of(s: &DRTopologyStatus) -> Option<(String, u32)> {
    s.controller.as_ref().map(|c| (c.version.clone(), c.protocol))
}

/// A on the release as primary, B on this build as standby (the standby upgraded first). The
/// flip to B completes (the old primary steps down by itself; B accepts its term-less token);
/// the flip back to the older A is refused by B, which stays primary and serves; A upgraded in
/// place, its waiting failover proceeds; then B takes over again with both on this build.
#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_pair_replicates_fails_over_to_the_newer_controller_and_refuses_the_older_until_it_is_upgraded() {
    let released = released_drctl();
    let mut pair = Pair::start().await;
    pair.sync_extra = "    fence: {enabled: true}\n".into();
    // This build's CRD is applied to both (Pair::start): an upgrade applies the CRD first.
    let (mut ca, cb, a, b) = release_primary_and_head_standby(&pair, &released).await;
    assert_eq!(controller_of(&a), None, "the release publishes no status.controller");
    assert_eq!(controller_of(&b), Some((VERSION.to_string(), PROTOCOL)));
    // The release's status survives this build's structural schema: nothing it writes is pruned.
    let raw = pair.a.api.kubectl_ok(&["get", "drtopology", "platform", "-o", "jsonpath={.status.term} {.status.role} {.status.encryptionConfigSha256}"]);
    assert!(raw.split_whitespace().count() == 3 && raw.contains("Primary"), "A's status as stored: {raw:?}");
    replicates(&pair.a, &pair.b, "from-release-primary", &[&ca, &cb]).await;

    // 1. Flip to the newer controller: completes, and carries every write A acknowledged.
    let ledger = Ledger::start(&pair.a, "a").await;
    pair.apply_both("global-b");
    let b = pair.wait(&pair.b, "B (this build) failover from the release done", FAILOVER, &[&ca, &cb], failover_done).await;
    ledger.stop_and_find_all_on(&pair.b).await;
    let term_b = b.status.expect("B status").term;
    pair.wait(&pair.a, "A (release) standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    replicates(&pair.b, &pair.a, "to-release-standby", &[&ca, &cb]).await;

    // 2. Flip to the older controller: B refuses to step down, stays primary, keeps serving.
    let ledger = Ledger::start(&pair.b, "b").await;
    pair.apply_both("global-a");
    let b = pair.wait(&pair.b, "B refuses the flip to the release", STEADY, &[&ca, &cb], |s| skew_condition(s).is_some()).await;
    let msg = skew_condition(b.status.as_ref().expect("status")).expect("condition");
    eprintln!("B's Degraded/PeerVersionSkew: {msg}");
    for want in ["global-a runs a drctl release that publishes no status.controller", "upgrade global-a first", "global-b stays primary"] {
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    // Past the release's demotionTimeout (10 s): still one primary, B, and its writes acknowledged.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (a, b) = (pair.status(&pair.a).await.and_then(|t| t.status).expect("A"), pair.status(&pair.b).await.and_then(|t| t.status).expect("B"));
    assert_eq!((a.role, b.role), (Some(Role::Standby), Some(Role::Primary)), "A must not have taken over from a primary that did not step down");
    assert!(b.demotion.as_ref().is_none_or(|d| d.new_primary != "global-a"), "B wrote no token for A while refusing: {:?}", b.demotion);

    // 3. A upgraded in place: its failover proceeds; B steps down for it; nothing B acked is lost.
    ca.restart_with(&head_drctl());
    let a = pair.wait(&pair.a, "A (now this build) failover done", FAILOVER, &[&ca, &cb], |s| failover_done(s) && s.role == Some(Role::Primary)).await;
    ledger.stop_and_find_all_on(&pair.a).await;
    let a = a.status.expect("A status");
    assert!(a.term > term_b, "A's term {} is past B's {term_b}", a.term);
    assert_eq!(controller_of(&a), Some((VERSION.to_string(), PROTOCOL)), "A publishes this build once upgraded");
    let b = pair.wait(&pair.b, "B standby in sync, skew cleared", STEADY, &[&ca, &cb], |s| standby_in_sync(s) && skew_condition(s).is_none()).await;
    assert!(b.status.is_some());

    // 4. And back, both on this build.
    let ledger = Ledger::start(&pair.a, "c").await;
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B failover done, both on this build", FAILOVER, &[&ca, &cb], |s| failover_done(s) && s.role == Some(Role::Primary) && s.term > a.term)
        .await;
    ledger.stop_and_find_all_on(&pair.b).await;
    pair.wait(&pair.a, "A standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
}

/// The documented order, from a pair that runs the release: this build's CRD first (applied by
/// `Pair::start`), then the primary's controller in place (no failover: it keeps its role and
/// term, replication goes on), a rollback of it and the runbook's status patch, the primary
/// again; a flip made while mixed is refused until the standby is upgraded, then completes.
#[tokio::test(flavor = "multi_thread")]
async fn the_primary_first_upgrades_a_released_pair_without_a_failover_and_rolls_back() {
    let released = released_drctl();
    let mut pair = Pair::start().await;
    pair.sync_extra = "    fence: {enabled: true}\n".into();
    pair.apply_both("global-a");
    let (kc_a, kc_b) = (pair.a.api.kubeconfig.clone(), pair.b.api.kubeconfig.clone());
    let mut ca = pair.controller_from(&released, &pair.a, &kc_a, &[]);
    let mut cb = pair.controller_from(&released, &pair.b, &kc_b, &[]);
    let a = pair.wait(&pair.a, "A (release) primary and steady", STEADY, &[&ca, &cb], primary_steady).await;
    pair.wait(&pair.b, "B (release) standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    let term = a.status.expect("A status").term;

    // 1. The primary first: same role, same term, no failover; the release's standby follows it.
    ca.restart_with(&head_drctl());
    let ours = Some((VERSION.to_string(), PROTOCOL));
    let a = pair.wait(&pair.a, "A upgraded in place, still primary", STEADY, &[&ca, &cb], |s| primary_steady(s) && controller_of(s) == ours).await;
    let a = a.status.expect("A status");
    assert_eq!((a.term, a.failover.is_none(), a.demotion.is_none()), (term, true, true), "an in-place upgrade is no failover");
    replicates(&pair.a, &pair.b, "after-primary-upgrade", &[&ca, &cb]).await;
    pair.wait(&pair.b, "B (release) standby in sync under an upgraded primary", STEADY, &[&ca, &cb], standby_in_sync).await;

    // 2. Rolled back: the runbook's patch removes what the upgraded controller published.
    ca.restart_with(&released);
    pair.a.api.kubectl_ok(&["patch", "drt", "platform", "--subresource=status", "--type=json", "-p", r#"[{"op":"remove","path":"/status/controller"}]"#]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = pair.status(&pair.a).await.and_then(|t| t.status).expect("A status");
    assert_eq!((controller_of(&a), a.role, a.term), (None, Some(Role::Primary), term), "rolled back: no status.controller, still primary");
    replicates(&pair.a, &pair.b, "after-primary-rollback", &[&ca, &cb]).await;
    ca.restart_with(&head_drctl());
    pair.wait(&pair.a, "A upgraded again", STEADY, &[&ca, &cb], |s| primary_steady(s) && controller_of(s) == ours).await;

    // 3. A flip made while mixed is refused; A keeps serving.
    let ledger = Ledger::start(&pair.a, "m").await;
    pair.apply_both("global-b");
    pair.wait(&pair.a, "A refuses the flip to the release", STEADY, &[&ca, &cb], |s| skew_condition(s).is_some() && s.role == Some(Role::Primary)).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let b = pair.status(&pair.b).await.and_then(|t| t.status).expect("B status");
    assert_eq!(b.role, Some(Role::Standby), "B must not take over from a primary that did not step down");

    // 4. The standby upgraded: the refused failover proceeds, nothing A acknowledged is lost.
    cb.restart_with(&head_drctl());
    pair.wait(&pair.b, "B failover done", FAILOVER, &[&ca, &cb], |s| failover_done(s) && s.role == Some(Role::Primary) && s.term > term).await;
    ledger.stop_and_find_all_on(&pair.b).await;
    pair.wait(&pair.a, "A standby in sync, skew cleared", STEADY, &[&ca, &cb], |s| standby_in_sync(s) && skew_condition(s).is_none()).await;
}

/// A disaster while mixed: the release's primary dies whole; HEAD's standby fails over after
/// `demotionTimeout` as ever (a peer that does not answer has no version to weigh), and the
/// release, back with the flip applied, steps down and follows HEAD.
#[tokio::test(flavor = "multi_thread")]
async fn a_disaster_while_mixed_fails_over_whatever_the_dead_peers_version() {
    let released = released_drctl();
    let mut pair = Pair::start().await;
    let (mut ca, cb, _, _) = release_primary_and_head_standby(&pair, &released).await;
    replicates(&pair.a, &pair.b, "last-words", &[&ca, &cb]).await;

    ca.kill();
    pair.a.api.kill();
    pair.a.etcd.kill();
    let flipped = Instant::now();
    let to_b = pair.topology_yaml("global-b");
    pair.apply(&pair.b, &to_b);
    let b = pair.wait(&pair.b, "B disaster failover done", FAILOVER, &[&cb], |s| failover_done(s) && s.role == Some(Role::Primary)).await;
    let f = b.status.expect("B status").failover.expect("failover");
    let demote = f.steps.iter().find(|s| s.name == "Demote").expect("Demote step");
    assert!(demote.message.as_deref().unwrap_or_default().contains("unreachable"), "{demote:?}");
    assert!(!b_skewed(&pair).await, "no version skew is reported for a peer that does not answer");
    eprintln!("disaster while mixed: flip -> Done in {:.1}s", flipped.elapsed().as_secs_f64());

    pair.a.etcd.restart();
    pair.a.api.restart();
    pair.apply(&pair.a, &to_b);
    let kc_a = pair.a.api.kubeconfig.clone();
    let ca = pair.controller_from(&released, &pair.a, &kc_a, &[]);
    pair.wait(&pair.a, "A (release) back as standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    replicates(&pair.b, &pair.a, "after-disaster", &[&ca, &cb]).await;
}

async fn b_skewed(pair: &Pair) -> bool {
    pair.status(&pair.b).await.and_then(|t| t.status).as_ref().and_then(skew_condition).is_some()
}
