//! Issue 21, item 1: the `gitops/` tree installed into both globals through each one's real
//! Argo CD, under a namespace (`dr-platform`) and an Argo CD namespace (`gitops-system`) that are
//! not the defaults, every object Synced and Healthy; each global's controller then runs as a
//! real Pod of that Deployment, from the image `make image` built, on a real node of its own
//! (containerd, runc and a kubelet per global: `drctl_testbed::kubelet`), and the pair does its
//! job: global-b replicates global-a with nothing missed and nothing surplus (Argo CD's own
//! namespace is left out on both sides), then fails over by a commit in Git.
//!
//! What the test overlays change, and why (the rest is `gitops/` as shipped):
//! - `imagePullPolicy: Never` and the image's local name: there is no registry; the image is
//!   imported into each node's containerd.
//! - `hostNetwork: true` (so the namespace is PSA `privileged`, which `baseline` would refuse):
//!   the test bed's etcds and apiservers listen on loopback only, which a Pod's own network
//!   namespace cannot reach. For the same reason `KUBERNETES_SERVICE_HOST`/`_PORT` name the
//!   apiserver's loopback address (no kube-proxy serves the `kubernetes` Service's ClusterIP),
//!   and each controller listens on a free port, not 8080, which the host may use.
//! - a `nodeSelector` for the global's real node: its other nodes are kwok's fakes.
//!
//! Needs root, Debian's containerd and runc (`make deps`) and the image (`make image`); where
//! any is missing the test fails saying so.

use drctl_testsupport as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drctl::topology::{DRTopologyStatus, Phase, Role, StepState};
use serde_json::Value;
use support::argocd::{self, ArgoCd};
use support::node::Node;
use support::pair::{Pair, DOMAIN, VIP_B};
use support::Global;

const NS: &str = "dr-platform";
const ARGOCD_NS: &str = "gitops-system";
const CHECK_TOKEN: &str = "s3cret-check-token-for-the-test";

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0) && y.surplus_keys == Some(0))
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Where the test overlay of `cluster` lives in the repository.
fn overlay_path(cluster: &str) -> String {
    format!("deploy/overlays/test-{cluster}")
}

/// The test overlay over `deploy/overlays/<cluster>` (see the module comment for each change).
fn overlay(cluster: &str, image: &str, node: &str, listen_port: u16, api_port: u16) -> String {
    let (name, tag) = image.rsplit_once(':').expect("image tag");
    format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {NS}
resources: [../{cluster}]
images:
  - name: registry.example.com/platform/drctl
    newName: {name}
    newTag: "{tag}"
patches:
  - patch: |-
      apiVersion: v1
      kind: Namespace
      metadata:
        name: drctl-system
        labels:
          pod-security.kubernetes.io/enforce: privileged
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: drctl-controller
        namespace: drctl-system
      spec:
        template:
          spec:
            hostNetwork: true
            nodeSelector:
              kubernetes.io/hostname: {node}
            containers:
              - name: controller
                imagePullPolicy: Never
                args: [controller, --cluster-name, $(CLUSTER_NAME), --listen, "0.0.0.0:{listen_port}", --check-token-file, /var/run/drctl/check-token/token, --lease-seconds=6]
                env:
                  - name: KUBERNETES_SERVICE_HOST
                    value: 127.0.0.1
                  - name: KUBERNETES_SERVICE_PORT
                    value: "{api_port}"
  # Ports merge on containerPort: a strategic merge would add a second port named http.
  - target: {{kind: Deployment, name: drctl-controller}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/ports/0/containerPort
        value: {listen_port}
"#
    )
}

/// A Git repository holding a copy of `gitops/` with the test overlays and the pair's topology.
fn gitops_repo(dir: &Path, overlays: &[(String, String)], topology: &str) -> std::path::PathBuf {
    let repo = dir.join("dr-gitops");
    std::fs::create_dir_all(&repo).expect("mkdir repo");
    let out = Command::new("cp").arg("-r").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/.")).arg(&repo).output().expect("cp");
    assert!(out.status.success(), "copy gitops/: {}", String::from_utf8_lossy(&out.stderr));
    for (path, overlay) in overlays {
        std::fs::create_dir_all(repo.join(path)).expect("mkdir overlay");
        std::fs::write(repo.join(path).join("kustomization.yaml"), overlay).expect("write overlay");
    }
    std::fs::write(repo.join("topology/drtopology.yaml"), topology).expect("write topology");
    git(&repo, &["init", "-q", "-b", "main"]);
    commit_all(&repo, "drctl for the DR pair");
    repo
}

fn commit_all(repo: &Path, message: &str) {
    git(repo, &["add", "-A"]);
    git(repo, &["-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-qm", message]);
}

/// The pair's topology as Git holds it, with the annotations of `gitops/topology/drtopology.yaml`.
fn topology_in_git(pair: &Pair, primary: &str) -> String {
    pair.topology_yaml(primary).replacen(
        "metadata:\n  name: platform\n",
        "metadata:\n  name: platform\n  annotations:\n    argocd.argoproj.io/sync-options: Delete=false,Prune=false,SkipDryRunOnMissingResource=true\n    drctl.io/health-max-lag-seconds: \"60\"\n",
        1,
    )
}

fn controller_pod(g: &Global) -> Value {
    let out = g.api.kubectl_ok(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=drctl", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("pod list");
    let pods = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 1, "one controller Pod: {out}");
    pods[0].clone()
}

/// Who holds `g`'s controller Lease (`--identity`, the Pod's name from the downward API).
fn lease_holder(g: &Global) -> Option<String> {
    let out = g.api.kubectl(&["-n", NS, "get", "lease", &format!("drctl-{}", g.name), "-o", "jsonpath={.spec.holderIdentity}"]).ok()?;
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

fn pod_ready(g: &Global, name: &str) -> bool {
    let jsonpath = r#"-o=jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    g.api.kubectl(&["-n", NS, "get", "pod", name, jsonpath]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
}

/// `GET path` on the controller's port of the node, with an optional bearer token; the status.
fn http_status(addr: &str, path: &str, token: Option<&str>) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_whitespace().nth(1)?.parse().ok()
}

/// The Application `drctl-controller` manages the objects of `gitops/deploy` it should.
fn assert_manages_the_install(app: &Value) {
    let kinds: Vec<String> = app["status"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| format!("{}/{}", r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or("")))
        .collect();
    for want in [
        "Namespace/dr-platform",
        "CustomResourceDefinition/drtopologies.drctl.io",
        "Deployment/drctl-controller",
        "ServiceAccount/drctl-controller",
        "Service/drctl-controller",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} not managed by the Application: {kinds:?}");
    }
}

/// The controller Pod of `g`: on `node`, Ready through its real probes, from `image`, with the
/// token the kubelet requested for its ServiceAccount and the check-token Secret mounted.
fn assert_pod_on_real_node(g: &Global, node: &Node, image: &str) {
    let pod = controller_pod(g);
    assert_eq!(pod["spec"]["nodeName"], node.node.name.as_str(), "{pod}");
    let ready = pod["status"]["conditions"].as_array().expect("conditions").iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "{}", pod["status"]);
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("kube-api-access") && volumes.contains("serviceAccountToken"), "the ServiceAccount token is mounted: {volumes}");
    assert!(volumes.contains("drctl-check-token"), "{volumes}");
    assert_eq!(pod["spec"]["containers"][0]["image"], image);
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("apiserver port")
}

#[tokio::test(flavor = "multi_thread")]
async fn gitops_installs_through_argocd_and_the_controllers_run_as_real_pods() {
    let started = Instant::now();
    let globals = (Global::start_for_real_node("global-a"), Global::start_for_real_node("global-b"));
    let mut pair = Pair::start_in(globals, NS, true).await;
    pair.spec_extra = format!("  argocd:\n    namespace: {ARGOCD_NS}\n");
    pair.a.start_control_plane(0);
    pair.b.start_control_plane(1);
    // Two nodes on one machine: each its own containerd, cgroup root, ports and bridge.
    let (node_a, node_b) = (Node::start(&pair.a, 0), Node::start(&pair.b, 1));
    let image = node_a.import_drctl_image();
    assert_eq!(node_b.import_drctl_image(), image);
    let nodes_up = started.elapsed();
    let mut argo_a = ArgoCd::start(&pair.a, 0, ARGOCD_NS);
    let mut argo_b = ArgoCd::start(&pair.b, 1, ARGOCD_NS);

    // What the operator creates by hand (Secrets are never in Git): the /check token.
    for g in [&pair.a, &pair.b] {
        g.api.kubectl_ok(&["-n", NS, "create", "secret", "generic", "drctl-check-token", &format!("--from-literal=token={CHECK_TOKEN}")]);
    }
    let (port_a, port_b) = (support::free_port(), support::free_port());
    let overlays = [
        (overlay_path("global-a"), overlay("global-a", &image, &node_a.node.name, port_a, port_of(&pair.a.api.url))),
        (overlay_path("global-b"), overlay("global-b", &image, &node_b.node.name, port_b, port_of(&pair.b.api.url))),
    ];
    let repo = gitops_repo(pair.dir.path(), &overlays, &topology_in_git(&pair, "global-a"));
    for g in [&pair.a, &pair.b] {
        let (ok, out) = g.api.apply_stdin(&argocd::applications(&g.name, &repo, ARGOCD_NS, NS, &overlay_path(&g.name)));
        assert!(ok, "apply the Applications to {}: {out}", g.name);
    }
    for (g, argo) in [(&pair.a, &mut argo_a), (&pair.b, &mut argo_b)] {
        assert_manages_the_install(&argo.wait_synced_and_healthy(g, "drctl-controller", Duration::from_secs(150)));
    }
    let installed = started.elapsed();
    assert_pod_on_real_node(&pair.a, &node_a, &image);
    assert_pod_on_real_node(&pair.b, &node_b, &image);

    // global-b's Pod as the standby: in sync with global-a's Pod.
    pair.wait(&pair.a, "global-a's Pod: primary", Duration::from_secs(90), &[], |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
    pair.wait(&pair.b, "global-b's Pod: standby in sync", Duration::from_secs(90), &[], standby_in_sync).await;
    // Argo CD's health check for the DRTopology (gitops/health) reads the status each wrote.
    argo_b.wait_synced_and_healthy(&pair.b, "drtopology", Duration::from_secs(90));
    argo_a.wait_synced_and_healthy(&pair.a, "drtopology", Duration::from_secs(60));

    // /check answers the token of the mounted Secret, and only it.
    let addr = format!("{}:{port_b}", node_b.node.ip);
    assert_eq!(http_status(&addr, "/readyz", None), Some(200));
    assert_eq!(http_status(&addr, "/check", Some(CHECK_TOKEN)).map(|s| s != 401 && s != 403), Some(true), "the mounted token is accepted");
    assert!(matches!(http_status(&addr, "/check", Some("wrong")), Some(401 | 403)), "a wrong token is refused");

    // Replication: what is written in global-a reaches global-b through the Pod's mirror.
    pair.a.api.kubectl_ok(&["create", "namespace", "apps"]);
    pair.a.api.kubectl_ok(&["-n", "apps", "create", "configmap", "before-flip", "--from-literal=value=written on global-a"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pair.b.api.kubectl(&["-n", "apps", "get", "configmap", "before-flip"]).map(|o| !o.status.success()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "global-a's ConfigMap never reached global-b");
        std::thread::sleep(Duration::from_millis(250));
    }
    let in_sync = started.elapsed();

    // A planned failover the GitOps way: the pull request flipping spec.primary merges, each
    // global's Argo CD applies it (refreshed as a forge webhook would), the two Pods' controllers
    // run the runbook.
    std::fs::write(repo.join("topology/drtopology.yaml"), topology_in_git(&pair, "global-b")).expect("write topology");
    commit_all(&repo, "Fail over to global-b");
    argo_a.refresh(&pair.a, "drtopology");
    argo_b.refresh(&pair.b, "drtopology");
    let b = pair
        .wait(&pair.b, "global-b's Pod: failover to global-b done", Duration::from_secs(150), &[], |s| {
            s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())
        })
        .await;
    let st = b.status.expect("status");
    assert_eq!((st.role, st.phase), (Some(Role::Primary), Some(Phase::Steady)));
    for s in &st.failover.expect("failover record").steps {
        let ok = s.state == StepState::Succeeded || (s.state == StepState::Skipped && s.name.ends_with("Hooks"));
        assert!(ok, "step {} ended {:?}: {:?}", s.name, s.state, s.message);
    }
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), vec![VIP_B], "the platform domain points at global-b");
    pair.wait(&pair.a, "global-a's Pod: standby in sync", Duration::from_secs(90), &[], standby_in_sync).await;

    for g in [&pair.a, &pair.b] {
        let pod = controller_pod(g);
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"].as_i64(), Some(0), "{}'s controller Pod never restarted", g.name);
        assert_eq!(lease_holder(g).as_deref(), pod["metadata"]["name"].as_str(), "{}'s Pod holds the Lease under its own name", g.name);
    }

    // The new primary's Pod is deleted (a drain, an eviction): the Deployment's next Pod, on the
    // same real node, takes the Lease over and the new primary stays steady.
    let old = controller_pod(&pair.b)["metadata"]["name"].as_str().expect("pod name").to_string();
    pair.b.api.kubectl_ok(&["-n", NS, "delete", "pod", &old, "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let new = loop {
        let holder = lease_holder(&pair.b);
        let ready = holder.as_deref().is_some_and(|h| h != old && pod_ready(&pair.b, h));
        if let (true, Some(h)) = (ready, holder) {
            break h;
        }
        assert!(Instant::now() < deadline, "no new controller Pod took the Lease over from {old}");
        std::thread::sleep(Duration::from_millis(500));
    };
    pair.wait(&pair.b, &format!("global-b primary under {new}"), Duration::from_secs(60), &[], |s| {
        s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)
    })
    .await;
    eprintln!(
        "2 nodes Ready with images imported after {nodes_up:?}; gitops/ Synced and Healthy in both after {installed:?}; standby in sync and replicating after {in_sync:?}; failed over, back in sync and the Pod replaced after {:?}",
        started.elapsed()
    );
}
