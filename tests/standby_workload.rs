//! A live workload on the full platform (`Pair::start_full`: each global runs its own
//! kube-controller-manager, kube-scheduler and kwok nodes): on the primary, namespaces of
//! Deployments, a StatefulSet, a CronJob every minute, custom resources each owning 50 ConfigMaps,
//! plain ConfigMaps, and churn creating and deleting owner chains. The standby's controllers and
//! scheduler run all along. Asserted: a fresh copy into the standby (its garbage collector
//! running) loses nothing; the standby's checks are 0/0/0 in at least 95 % of checks and at the
//! end; its scheduler and controller-manager never exit; no Pod and no Job of its own for a
//! replicated workload exists there; a planned and then a disaster flip pass, the new standby
//! 0/0/0 within 60 s each. The figures are printed (RELIABILITY.md "Live control plane on the
//! standby").
use drctl_testsupport as support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drctl::topology::{DRTopologyStatus, Phase, Role};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::Client;
use support::pair::{Controller, Pair};
use support::Global;

const NAMESPACES: [&str; 3] = ["shop", "billing", "search"];
/// Widgets per namespace at the start, each owning `OWNED` ConfigMaps.
const WIDGETS: usize = 3;
const OWNED: usize = 50;
const PLAIN: usize = 20;
/// The steady-state run with churn.
const RUN: Duration = Duration::from_secs(90);
const STEADY: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(120);
/// The new standby must be 0/0/0 this soon after a flip completes.
const NEW_STANDBY_WITHIN: Duration = Duration::from_secs(60);

/// Tolerates kwok's fake nodes' taint-free defaults; images are never pulled (kwok runs nothing).
fn workloads(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: registry.invalid/web:1}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers: [{{name: api, image: registry.invalid/api:1}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {ns}}}
spec:
  selector: {{app: db}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec:
  replicas: 1
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: db, image: registry.invalid/db:1}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: every-minute, namespace: {ns}}}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 2
  failedJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: tick, image: registry.invalid/tick:1}}]
"#
    )
}

fn widgets_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A Widget and `owned` ConfigMaps it owns (as its controller would make them: the garbage
/// collector of a cluster that has the ConfigMaps but not the Widget deletes them).
async fn widget_with_configmaps(client: &Client, ns: &str, name: &str, owned: usize) {
    let widget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": owned},
    }))
    .expect("widget");
    let created = widgets_api(client, ns).create(&PostParams::default(), &widget).await.expect("create widget");
    let uid = created.metadata.uid.expect("uid");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..owned)
        .map(|i| {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": format!("{name}-{i}"),
                    "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": name, "uid": uid, "blockOwnerDeletion": true}],
                },
                "data": {"part": i.to_string()},
            }))
            .expect("configmap");
            let cms = cms.clone();
            async move { cms.create(&PostParams::default(), &cm).await.expect("create owned configmap") }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

async fn plain_configmap(client: &Client, ns: &str, name: &str, value: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"value": value}})).expect("configmap");
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");
}

/// Keys under `prefix` in a global's etcd.
async fn count_keys(g: &Global, prefix: &str) -> i64 {
    let mut c = g.etcd.client().await;
    let opts = etcd_client::GetOptions::new().with_prefix().with_count_only();
    c.get(prefix, Some(opts)).await.expect("count keys").count()
}

/// What the topology's `when: failover` and `when: syncEnabled` restarts act on, in both globals.
async fn restart_targets(g: &Global) {
    g.api.apply_stdin(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cluster-transformer, namespace: cpaas-system, labels: {service_name: cluster-transformer}}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: ct}}\n  template:\n    metadata: {labels: {app: ct}}\n    spec:\n      containers: [{name: c, image: registry.invalid/ct:1}]\n",
    );
}

/// The churn on the primary: owner chains created and deleted (a Widget with 10 ConfigMaps; a
/// Deployment whose ReplicaSet and Pods the primary's controllers make), plain ConfigMaps
/// updated. Counts its operations.
async fn churn(client: Client, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let ns = NAMESPACES[n % NAMESPACES.len()];
        widget_with_configmaps(&client, ns, &format!("churn-{n}"), 10).await;
        ops.fetch_add(11, Ordering::Relaxed);
        if n >= NAMESPACES.len() * 2 {
            // The owner only: the primary's garbage collector deletes its ConfigMaps.
            let old = n - NAMESPACES.len() * 2;
            let _ = widgets_api(&client, NAMESPACES[old % NAMESPACES.len()]).delete(&format!("churn-{old}"), &DeleteParams::background()).await;
            ops.fetch_add(1, Ordering::Relaxed);
        }
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("churn-{n}")},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"churn": n.to_string()}},
                "template": {"metadata": {"labels": {"churn": n.to_string()}}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]}},
            }
        }))
        .expect("deployment");
        let _ = deployments.create(&PostParams::default(), &d).await;
        if n >= NAMESPACES.len() {
            let old = n - NAMESPACES.len();
            let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACES[old % NAMESPACES.len()]);
            let _ = api.delete(&format!("churn-{old}"), &DeleteParams::background()).await;
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"data": {"value": format!("churn {n}")}});
        let _ = cms.patch("plain-0", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await;
        ops.fetch_add(3, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn zero(s: &DRTopologyStatus) -> bool {
    s.sync.as_ref().is_some_and(|y| (y.missed_keys, y.surplus_keys, y.diverged_keys) == (Some(0), Some(0), Some(0)))
}

fn standby_steady_0_0_0(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && zero(s)
}

/// (checks seen, of them 0/0/0) from the standby's status, sampled; a check is a new lastCheckTime.
#[derive(Default)]
struct Checks {
    last: Option<String>,
    seen: u64,
    clean: u64,
    dirty: Vec<String>,
}

impl Checks {
    fn observe(&mut self, s: &DRTopologyStatus) {
        let Some(sync) = &s.sync else { return };
        if sync.last_check_time.is_none() || sync.last_check_time == self.last {
            return;
        }
        self.last = sync.last_check_time.clone();
        self.seen += 1;
        if zero(s) {
            self.clean += 1;
        } else {
            let why = s.conditions.iter().find(|c| c.type_ == "SyncHealthy").map(|c| c.message.clone()).unwrap_or_default();
            self.dirty.push(format!("{:?}/{:?}/{:?}: {why}", sync.missed_keys, sync.surplus_keys, sync.diverged_keys));
        }
    }

    fn share(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.clean as f64 / self.seen as f64
        }
    }
}

/// Waits until `client`'s cluster runs no workload pods (a pod being deleted is being stopped:
/// a Job's pod keeps its job-tracking finalizer until a Job controller, fenced on a standby,
/// removes it); what still runs after `timeout`.
async fn pods_gone(client: &Client, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let mut left = Vec::new();
        for ns in NAMESPACES {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let items = pods.list(&ListParams::default()).await.expect("list pods").items;
            left.extend(items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| format!("{ns}/{}", p.metadata.name.unwrap_or_default())));
        }
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Names of the pods in the workload namespaces of `g`.
async fn workload_pods(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        out.extend(
            pods.list(&ListParams::default()).await.expect("list pods").items.into_iter().map(|p| format!("{ns}/{}", p.metadata.name.unwrap_or_default())),
        );
    }
    out
}

async fn job_uids(client: &Client) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for ns in NAMESPACES {
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        out.extend(jobs.list(&ListParams::default()).await.expect("list jobs").items.into_iter().filter_map(|j| j.metadata.uid));
    }
    out
}

fn exits(pair: &mut Pair) -> Vec<String> {
    let mut out = Vec::new();
    for g in [&mut pair.a, &mut pair.b] {
        if let Some(cp) = g.control_plane.as_mut() {
            out.extend(cp.exited().into_iter().map(|e| format!("{}: {}", g.name, e.lines().next().unwrap_or_default())));
        }
    }
    out
}

/// Waits until `g` is a 0/0/0 standby by a check made after `since` (status time, RFC 3339).
async fn new_standby_clean(pair: &Pair, g: &Global, since: &str, logs: &[&Controller]) -> Duration {
    let started = Instant::now();
    let since = since.to_string();
    pair.wait(g, "the new standby 0/0/0", NEW_STANDBY_WITHIN, logs, move |s| {
        standby_steady_0_0_0(s) && s.sync.as_ref().and_then(|y| y.last_check_time.as_deref()).is_some_and(|t| t > since.as_str())
    })
    .await;
    started.elapsed()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_workload_with_the_standbys_control_plane_running() {
    let t0 = Instant::now();
    let mut pair = Pair::start_full().await;
    let a = pair.a.client().await;
    let (ok, out) = pair.a.api.apply_stdin(drctl_testbed::platform::WIDGET_CRD);
    assert!(ok, "{out}");
    pair.a.api.wait_crd("widgets.example.com");
    for ns in NAMESPACES {
        let (ok, out) = pair.a.api.apply_stdin(&workloads(ns));
        assert!(ok, "{out}");
        for w in 0..WIDGETS {
            widget_with_configmaps(&a, ns, &format!("widget-{w}"), OWNED).await;
        }
        for i in 0..PLAIN {
            plain_configmap(&a, ns, &format!("plain-{i}"), "v").await;
        }
    }
    for g in [&pair.a, &pair.b] {
        restart_targets(g).await;
    }
    let owned_expected = (NAMESPACES.len() * WIDGETS * OWNED) as i64;

    // A fresh copy into a standby whose garbage collector (and every other controller) runs.
    let copy_started = Instant::now();
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    pair.wait(&pair.a, "A primary and steady", STEADY, &[&ca, &cb], |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
    pair.wait(&pair.b, "B a 0/0/0 standby after the fresh copy", STEADY, &[&ca, &cb], standby_steady_0_0_0).await;
    let copy_took = copy_started.elapsed();
    let mut owned_on_b = 0;
    for ns in NAMESPACES {
        let prefix = format!("/registry/configmaps/{ns}/widget-");
        let (on_a, on_b) = (count_keys(&pair.a, &prefix).await, count_keys(&pair.b, &prefix).await);
        assert_eq!(on_a, on_b, "{prefix}: the standby lost owned ConfigMaps to its garbage collector");
        owned_on_b += on_b;
    }
    assert_eq!(owned_on_b, owned_expected, "owned ConfigMaps on the standby");
    let replicated = count_keys(&pair.a, "/registry/").await;
    eprintln!("fresh copy with the standby's GC running: 0/0/0 after {:.1}s; {owned_on_b} of {owned_expected} owned ConfigMaps on the standby ({replicated} keys in the primary's etcd)", copy_took.as_secs_f64());

    // The steady run: churn on the primary, the standby's control plane running, checks sampled.
    let b = pair.b.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let churner = tokio::spawn(churn(a.clone(), stop.clone(), ops.clone()));
    let mut checks = Checks::default();
    let mut primary_jobs = BTreeSet::new();
    let mut pods_seen = BTreeSet::new();
    let mut foreign_jobs = BTreeSet::new();
    let mut exited = Vec::new();
    let run_started = Instant::now();
    let mut sampled = Instant::now() - Duration::from_secs(10);
    while run_started.elapsed() < RUN {
        if let Some(t) = pair.status(&pair.b).await.and_then(|t| t.status) {
            checks.observe(&t);
        }
        if sampled.elapsed() >= Duration::from_secs(5) {
            sampled = Instant::now();
            // The standby's first: a Job it has must be one the primary has (had).
            let standby_jobs = job_uids(&b).await;
            primary_jobs.extend(job_uids(&a).await);
            foreign_jobs.extend(standby_jobs.difference(&primary_jobs).cloned());
            pods_seen.extend(workload_pods(&b).await);
            exited.extend(exits(&mut pair));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::Relaxed);
    churner.await.expect("churn");
    // The end of the run: the last writes replicated and checked.
    let end = now_rfc3339();
    new_standby_clean(&pair, &pair.b, &end, &[&ca, &cb]).await;
    if let Some(t) = pair.status(&pair.b).await.and_then(|t| t.status) {
        checks.observe(&t);
    }
    let st = pair.status(&pair.b).await.and_then(|t| t.status).expect("B status");
    let repaired = st.sync.as_ref().and_then(|y| y.repaired_keys).unwrap_or(0);
    let jobs_on_primary = primary_jobs.len();
    eprintln!(
        "steady run {:.0}s: {} churn writes; {} checks, {} 0/0/0 ({:.1} %); {repaired} keys repaired; {} pods and {} jobs of the standby's own in replicated namespaces; {} component exits; {jobs_on_primary} jobs ran on the primary",
        RUN.as_secs_f64(),
        ops.load(Ordering::Relaxed),
        checks.seen,
        checks.clean,
        checks.share() * 100.0,
        pods_seen.len(),
        foreign_jobs.len(),
        exited.len(),
    );
    for d in &checks.dirty {
        eprintln!("  not 0/0/0: {d}");
    }
    // Enough samples for the share below: a check of this keyspace took under 2 s on one plain
    // etcd member, and takes 5–10 s on three TLS members (a debug build, beside other tests).
    assert!(checks.seen >= 6, "only {} checks in {RUN:?}", checks.seen);
    assert!(checks.share() >= 0.95, "0/0/0 in {} of {} checks: {:?}", checks.clean, checks.seen, checks.dirty);
    assert!(exited.is_empty(), "components exited: {exited:?}");
    assert!(pods_seen.is_empty(), "pods of replicated workloads on the standby: {pods_seen:?}");
    assert!(foreign_jobs.is_empty(), "the standby made Jobs of its own: {foreign_jobs:?}");
    assert!(jobs_on_primary > 0, "the CronJob never ran on the primary (so the Job assertion is vacuous)");

    // A planned flip A -> B; A becomes the standby.
    let flipped = Instant::now();
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B planned failover done", FAILOVER, &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    let planned = flipped.elapsed();
    let planned_clean = new_standby_clean(&pair, &pair.a, &now_rfc3339(), &[&ca, &cb]).await;
    eprintln!("planned flip: Done in {:.1}s; the new standby (global-a) 0/0/0 {:.1}s later", planned.as_secs_f64(), planned_clean.as_secs_f64());
    // The demoted primary stops its own pods of the replicated workloads (its fenced controllers
    // cannot): the workloads run on the new primary only.
    let leftover = pods_gone(&a, Duration::from_secs(30)).await;
    let on_b = workload_pods(&b).await;
    eprintln!("after the planned flip: {} workload pods left on the new standby (global-a), {} on the new primary (global-b)", leftover.len(), on_b.len());
    assert!(leftover.is_empty(), "the old primary still runs replicated workloads: {leftover:?}");
    assert!(!on_b.is_empty(), "the new primary runs the workloads");

    // A disaster: B (now primary) loses its controller, apiserver and etcd; the flip back to A
    // reaches A only.
    let mut cb = cb;
    cb.kill();
    pair.b.api.kill();
    pair.b.etcd.kill();
    let flipped = Instant::now();
    let y = pair.topology_yaml("global-a");
    pair.apply(&pair.a, &y);
    pair.wait(&pair.a, "A disaster failover done", FAILOVER, &[&ca], |s| {
        s.role == Some(Role::Primary) && s.failover.as_ref().is_some_and(|f| f.to == "global-a" && f.completed_at.is_some())
    })
    .await;
    let disaster = flipped.elapsed();
    // B comes back, sees the flip, steps down and mirrors from A.
    pair.b.etcd.restart();
    pair.b.api.restart();
    pair.apply(&pair.b, &y);
    let back = now_rfc3339();
    let cb = pair.controller(&pair.b, &[]);
    let disaster_clean = new_standby_clean(&pair, &pair.b, &back, &[&ca, &cb]).await;
    eprintln!(
        "disaster flip: Done in {:.1}s; the old primary back as a 0/0/0 standby {:.1}s after its controller started",
        disaster.as_secs_f64(),
        disaster_clean.as_secs_f64()
    );
    let st = pair.status(&pair.b).await.and_then(|t| t.status).expect("B status");
    eprintln!("  B: demotion {:?}; sync {:?}", st.demotion, st.sync);
    let b = pair.b.client().await;
    let leftover = pods_gone(&b, Duration::from_secs(30)).await;
    eprintln!("  workload pods: {} on the new standby (global-b), {} on the primary (global-a)", leftover.len(), workload_pods(&a).await.len());
    assert!(leftover.is_empty(), "the old primary, back after the disaster, still runs replicated workloads: {leftover:?}");
    for g in [&pair.a, &pair.b] {
        let notes = g.api.kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={range .items[?(@.reason==\"KeysRepaired\")]}{.note}{\"\\n\"}{end}{range .items[?(@.reason==\"KeysDiffer\")]}{.note}{\"\\n\"}{end}",
        ]);
        eprintln!("  {}: KeysRepaired/KeysDiffer events: {}", g.name, notes.lines().count());
        for n in notes.lines().take(5) {
            eprintln!("    {n}");
        }
    }
    let exited = exits(&mut pair);
    eprintln!("component exits over the whole test: {}; total {:.0}s", exited.len(), t0.elapsed().as_secs_f64());
    assert!(exited.is_empty(), "components exited: {exited:?}");
}
