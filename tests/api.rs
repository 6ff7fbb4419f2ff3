//! The DRTopology API on a real kube-apiserver (built from the k8s.io/kubernetes Go module).

use drctl_testsupport as support;

use std::time::Duration;

use drctl::topology::DRTopology;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use support::Global;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/drtopology.yaml");
const MINIMAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/minimal.yaml");
const ACP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acp-global.yaml");

async fn install_crd(g: &Global) {
    g.api.kubectl_ok(&["apply", "-f", CRD]);
    let crds: Api<CustomResourceDefinition> = Api::all(g.client().await);
    tokio::time::timeout(Duration::from_secs(30), await_condition(crds, "drtopologies.drctl.io", conditions::is_crd_established()))
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
}

fn minimal_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(MINIMAL).expect("read example");
    assert!(text.contains(from), "example lacks {from:?}");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_examples_cel_and_printer_columns() {
    let g = Global::start("global-a");
    install_crd(&g).await;

    // Both examples apply, and read back as the typed object with defaults filled in.
    g.api.kubectl_ok(&["apply", "-f", MINIMAL, "-f", ACP]);
    let api: Api<DRTopology> = Api::all(g.client().await);
    let minimal = api.get("platform").await.expect("get platform");
    assert_eq!(minimal.spec.primary, "global-a");
    // Exclusion lists add to the defaults (exclusions::DEFAULT_EXCLUSIONS): the CRD fills none in.
    assert!(minimal.spec.sync.exclude.namespaces.is_empty(), "{:?}", minimal.spec.sync.exclude);
    assert_eq!(minimal.spec.sync.check_interval, "5m");
    assert_eq!(minimal.spec.clusters[0].encryption_config_path, "/etc/kubernetes/encryption-provider.conf");
    assert_eq!(minimal.spec.argocd.namespace, "argocd", "Argo CD's namespace defaults to argocd");
    // Another Argo CD namespace applies and reads back; one that is not a namespace name does not.
    let gitops = format!("{}  argocd: {{namespace: openshift-gitops}}\n", minimal_with("name: platform", "name: openshift"));
    let (ok, out) = g.api.apply_stdin(&gitops);
    assert!(ok, "{out}");
    assert_eq!(api.get("openshift").await.expect("get openshift").spec.argocd.namespace, "openshift-gitops");
    let (ok, out) = g.api.apply_stdin(&gitops.replace("name: openshift", "name: bad-argocd").replace("openshift-gitops", "Open_Shift"));
    assert!(!ok && out.contains("spec.argocd.namespace"), "{out}");
    g.api.kubectl_ok(&["delete", "drt", "openshift"]);
    let acp = api.get("acp-global").await.expect("get acp-global");
    assert_eq!(acp.spec.restarts.len(), 4);

    // CEL rejects what the schema alone cannot say, with a readable message.
    let cases = [
        ("primary: global-a", "primary: global-c", "spec.primary must be the name of one of spec.clusters"),
        ("vip: 192.0.2.20", "vip: 192.0.2.10", "spec.clusters[].vip must be unique"),
        ("name: global-b", "name: global-a", "spec.clusters[].name must be unique"),
        ("vip: 192.0.2.20", "vip: 192.0.2.300", "vip must be an IPv4 or IPv6 address"),
        ("domain: platform.example.com", "domain: Not_A_Domain", "spec.platform.domain must be a lower-case fully qualified domain name"),
    ];
    for (from, to, want) in cases {
        let bad = minimal_with(from, to).replace("name: platform", "name: rejected");
        let (ok, out) = g.api.apply_stdin(&bad);
        assert!(!ok, "apiserver accepted {to:?}: {out}");
        assert!(out.contains(want), "for {to:?} expected {want:?} in: {out}");
        // drctl validate rejects the same document.
        let report = drctl::validate::validate_text(&bad).expect("yaml");
        assert!(!report[0].errors.is_empty(), "drctl validate accepted {to:?}");
    }
    // A third cluster: rejected by the schema's maxItems and by CEL.
    let three = minimal_with(
        "  dns:\n",
        "    - name: global-c\n      vip: 192.0.2.30\n      apiServer: https://192.0.2.30:6443\n      etcd: {endpoints: [https://192.0.2.31:2379]}\n  dns:\n",
    )
    .replace("name: platform", "name: three");
    let (ok, out) = g.api.apply_stdin(&three);
    assert!(!ok, "apiserver accepted three clusters: {out}");
    assert!(out.contains("spec.clusters"), "{out}");

    // Status is a subresource: a plain apply cannot write it, the printer columns read it.
    let patch = r#"{"status":{"role":"Primary","phase":"Steady","sync":{"lagSeconds":0.25,"missedKeys":3,"surplusKeys":4,"divergedKeys":5}}}"#;
    g.api.kubectl_ok(&["patch", "drtopology", "platform", "--subresource=status", "--type=merge", "-p", patch]);
    let table = g.api.kubectl_ok(&["get", "drt"]);
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "PRIMARY", "ROLE", "PHASE", "LAG", "MISSED", "SURPLUS", "DIVERGED", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().find(|l| l.starts_with("platform ")).expect("platform row").split_whitespace().collect();
    assert_eq!(&row[..8], ["platform", "global-a", "Primary", "Steady", "0.25", "3", "4", "5"], "{table}");
    // The short name and the category both resolve.
    assert!(g.api.kubectl_ok(&["get", "dr", "-o", "name"]).contains("drtopology.drctl.io/acp-global"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_independent_globals() {
    let (a, b) = Global::start_pair("global-a", "global-b");
    assert_ne!(a.etcd.client_url, b.etcd.client_url);
    install_crd(&a).await;
    // Only global-a has the CRD: the two apiservers share nothing.
    let out = b.api.kubectl(&["get", "drtopologies"]).expect("kubectl");
    assert!(!out.status.success(), "global-b unexpectedly knows drtopologies");
    install_crd(&b).await;
    let api_a: Api<DRTopology> = Api::all(a.client().await);
    let api_b: Api<DRTopology> = Api::all(b.client().await);
    let obj: DRTopology = serde_saphyr::from_str(&std::fs::read_to_string(MINIMAL).expect("read")).expect("parse example");
    api_a.create(&PostParams::default(), &obj).await.expect("create on a");
    assert!(api_b.get_opt("platform").await.expect("get on b").is_none());
    api_b.create(&PostParams::default(), &obj).await.expect("create on b");
    assert_eq!(api_a.list(&Default::default()).await.expect("list a").items.len(), 1);
}
