//! A standby whose own control plane runs: a real kube-controller-manager (each controller as its
//! own ServiceAccount), kube-scheduler and kwok nodes on the standby's apiserver
//! (`Global::start_control_plane`, as the lab runs them), while the mirror writes the primary's
//! workloads underneath them. The fence must keep them off replicated data.
use drctl_testsupport as support;

use std::process::Child;
use std::time::{Duration, Instant};

use drctl_testbed::procs::{self, Lifetime};
use serde_json::Value;
use support::{drctl, eventually, ApiServer, Global};

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
# RBAC lets the probes write anywhere (replicated like the rest): only the fence stands in their way.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: fence-probes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: fence-probes}]
"#;

/// Workloads as the primary's API holds them (it runs no controllers here: what the standby's
/// controllers would add, nothing on the primary adds).
const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: registry.invalid/web:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: team-a}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.invalid/db:1}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: team-a}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: team-a}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: registry.invalid/migrate:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: every-minute, namespace: team-a}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: tick, image: registry.invalid/tick:1}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: orphan
  namespace: team-a
  # Its owner never existed: the standby's garbage collector would delete it.
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: gone, uid: 00000000-0000-0000-0000-000000000001}
data: {k: v}
"#;

/// A ReplicaSet owned by the Deployment, as the primary's deployment controller would have made it.
fn replicaset(deployment_uid: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-1
  namespace: team-a
  labels: {{app: web}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: Deployment, name: web, uid: {deployment_uid}, controller: true, blockOwnerDeletion: true}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: registry.invalid/web:1}}]
"#
    )
}

fn get(api: &ApiServer, args: &[&str]) -> Option<Value> {
    let mut full = vec!["get", "-o", "json"];
    full.extend_from_slice(args);
    let out = api.kubectl(&full).expect("run kubectl");
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
}

/// `drctl check` between the two etcds: (missed, surplus, diverged) and the report.
fn check(primary: &Global, standby: &Global) -> ((u64, u64, u64), Value) {
    let out = drctl()
        .args(["check", "--json"])
        .args(primary.etcd.flags("source", "source-"))
        .args(standby.etcd.flags("dest", "dest-"))
        .output()
        .expect("drctl check");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("check JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let n = |k: &str| report[k]["count"].as_u64().expect("count");
    ((n("missed"), n("surplus"), n("diverged")), report)
}

/// Creates a ConfigMap in `ns` as `user` (impersonated, in the `fence-probes` group that RBAC
/// lets write anything); Ok or the error text. A server-side dry run: admission runs, nothing is
/// stored (a stored probe would be a surplus key).
fn create_as(api: &ApiServer, user: &str, ns: &str, name: &str) -> Result<(), String> {
    let out = api
        .kubectl(&[&format!("--as={user}"), "--as-group=fence-probes", "-n", ns, "create", "configmap", name, "--from-literal=k=v", "--dry-run=server"])
        .expect("kubectl");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_standbys_controller_manager_and_scheduler_never_write_replicated_data_and_never_exit() {
    let (primary, mut standby) = Global::start_pair("primary", "standby");
    let dir = tempfile::tempdir().expect("tempdir");
    let apply = |api: &ApiServer, yaml: &str| {
        let (ok, out) = api.apply_stdin(yaml);
        assert!(ok, "{out}");
    };
    apply(&primary.api, NAMESPACES);
    apply(&primary.api, WORKLOADS);
    let deployment = get(&primary.api, &["-n", "team-a", "deployment", "web"]).expect("deployment");
    apply(&primary.api, &replicaset(deployment["metadata"]["uid"].as_str().expect("uid")));

    let _mirror = Running(
        procs::spawn(
            {
                let mut c = drctl();
                c.arg("mirror").args(primary.etcd.flags("source", "source-")).args(standby.etcd.flags("dest", "dest-"));
                c
            },
            &dir.path().join("mirror.log"),
            Lifetime::WithParent,
        )
        .expect("drctl mirror"),
    );
    eventually("the workloads replicated", Duration::from_secs(60), || get(&standby.api, &["-n", "team-a", "replicaset", "web-1"]), String::new);

    // The fence, as the standby's controller installs it.
    let raw: drctl::topology::DRTopology = serde_saphyr::from_str(include_str!("../examples/minimal.yaml")).expect("example parses");
    let topo = drctl::validated::ValidatedTopology::try_from(&raw).expect("the example is valid");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async { drctl::fence::apply(&standby.api.client().await, &topo, drctl::keyspace::DEFAULT_CONTROLLER_NAMESPACE).await.expect("fence applied") });
    let rs_controller = "system:serviceaccount:kube-system:replicaset-controller";
    let t0 = Instant::now();
    let denied = eventually(
        "the fence enforced",
        Duration::from_secs(30),
        || create_as(&standby.api, rs_controller, "team-a", &format!("probe-{}", t0.elapsed().as_millis())).err(),
        String::new,
    );
    assert!(denied.contains("fenced by drctl"), "{denied}");

    // The standby's own kube-controller-manager (each controller as its own ServiceAccount),
    // kube-scheduler, and kwok with its nodes, as the lab runs them.
    standby.start_control_plane(1);
    // A pod of the replicated ReplicaSet that someone (break-glass admin) made on the standby:
    // the scheduler will try to bind it, the ReplicaSet controller to count or delete it.
    let rs = get(&standby.api, &["-n", "team-a", "replicaset", "web-1"]).expect("replicaset");
    apply(
        &standby.api,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1-stray\n  namespace: team-a\n  labels: {{app: web}}\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: ReplicaSet, name: web-1, uid: {}, controller: true}}\nspec:\n  tolerations: [{{operator: Exists}}]\n  containers: [{{name: web, image: registry.invalid/web:1}}]\n",
            rs["metadata"]["uid"].as_str().expect("uid")
        ),
    );

    // The standby's control plane at work on what it owns: its CA in every namespace, its slices.
    eventually(
        "the standby's own kube-root-ca.crt",
        Duration::from_secs(60),
        || get(&standby.api, &["-n", "team-a", "configmap", "kube-root-ca.crt"]),
        String::new,
    );
    eventually(
        "the standby's own EndpointSlice",
        Duration::from_secs(60),
        || {
            get(&standby.api, &["-n", "team-a", "endpointslices", "-l", "kubernetes.io/service-name=db"])
                .filter(|l| l["items"].as_array().is_some_and(|i| !i.is_empty()))
        },
        String::new,
    );

    // A couple of minutes (two CronJob schedules): every check 0/0/0, both components running.
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(130) {
        std::thread::sleep(Duration::from_secs(10));
        let exited = standby.control_plane.as_mut().expect("control plane").exited();
        assert!(exited.is_empty(), "{}", exited.join("\n"));
        let (counts, report) = check(&primary, &standby);
        checks += 1;
        assert_eq!(counts, (0, 0, 0), "check {checks} at {:?}: {report}", start.elapsed());
    }
    eprintln!("{checks} checks over {:?}: all 0/0/0; kube-controller-manager and kube-scheduler running", start.elapsed());

    // Nothing of a replicated workload runs or is bound on the standby.
    let pods = get(&standby.api, &["-n", "team-a", "pods"]).expect("pods");
    let pods = pods["items"].as_array().expect("items");
    assert_eq!(pods.len(), 1, "only the stray pod: {pods:?}");
    assert!(pods[0]["spec"]["nodeName"].is_null(), "the scheduler bound a replicated workload's pod: {}", pods[0]);
    let jobs = get(&standby.api, &["-n", "team-a", "jobs"]).expect("jobs");
    let names: Vec<&str> = jobs["items"].as_array().expect("items").iter().filter_map(|j| j["metadata"]["name"].as_str()).collect();
    assert_eq!(names, vec!["migrate"], "the CronJob ran on the standby");
    assert!(get(&standby.api, &["-n", "team-a", "configmap", "orphan"]).is_some(), "the garbage collector deleted a replicated object");
    // They tried, and were refused (so the assertions above are not vacuous).
    let cp_dir = standby.control_plane.as_ref().expect("control plane").dir.path().to_path_buf();
    for component in ["kube-controller-manager", "kube-scheduler"] {
        let log = cp_dir.join(format!("{component}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(text.contains("fenced by drctl"), "{component} never hit the fence:\n{}", procs::tail(&log));
    }

    // Exempt: drctl's own ServiceAccount and the break-glass admin.
    assert_eq!(create_as(&standby.api, "system:serviceaccount:drctl-system:drctl-controller", "team-a", "by-drctl"), Ok(()));
    standby.api.kubectl_ok(&["-n", "team-a", "create", "configmap", "by-admin", "--from-literal=k=v", "--dry-run=server"]);
    // Not exempt: the scheduler, kubelets, Argo CD.
    for user in ["system:kube-scheduler", "system:node:standby-node-0", "system:serviceaccount:argocd:argocd-application-controller"] {
        let e = create_as(&standby.api, user, "team-a", "nope").expect_err(user);
        assert!(e.contains("fenced by drctl"), "{user}: {e}");
    }
}
