//! The `gitops/` tree a platform team copies: every kustomize overlay builds with kubectl and
//! applies to a real kube-apiserver; the RBAC grants exactly the controller's verbs; the Argo CD
//! Applications point at files that exist (tests/ci_job.rs runs the CI job).

use drctl_testsupport as support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::Global;

const GLOBALS: [&str; 2] = ["global-a", "global-b"];
const SA: &str = "system:serviceaccount:drctl-system:drctl-controller";

fn gitops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops")
}

fn docs(yaml: &str) -> Vec<Value> {
    drctl::validate::parse_documents(yaml).expect("valid YAML")
}

fn kustomize(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(support::kubectl()).arg("kustomize").args(extra).arg(dir).output().expect("run kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn apply_server_side(g: &Global, manifest: &str) {
    let mut cmd = Command::new(support::kubectl());
    cmd.arg(format!("--kubeconfig={}", g.api.kubeconfig.display())).args(["apply", "--server-side", "--field-manager=argocd-controller", "-f", "-"]);
    let out = drctl_testbed::procs::run_with_stdin(cmd, manifest.as_bytes(), "kubectl apply").unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "apply failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `kubectl auth can-i` as the controller's ServiceAccount.
fn can_i(g: &Global, args: &[&str]) -> bool {
    let out = g.api.kubectl(&[&["auth", "can-i", "--as", SA][..], args].concat()).expect("run kubectl auth can-i");
    let answer = String::from_utf8_lossy(&out.stdout);
    match answer.lines().next() {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!("can-i {args:?}: {answer}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

const DNSENDPOINT_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: dnsendpoints.externaldns.k8s.io
  annotations: {api-approved.kubernetes.io: \"https://github.com/kubernetes-sigs/external-dns/pull/2007\"}
spec:
  group: externaldns.k8s.io
  scope: Namespaced
  names: {kind: DNSEndpoint, plural: dnsendpoints, singular: dnsendpoint, listKind: DNSEndpointList}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// The global-a overlay built from a temporary kustomization that adds `namespace:` (when given)
/// and these components, as a platform team's own overlay would.
fn overlay_with(namespace: Option<&str>, components: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    // kustomize wants relative paths; climb from the temp dir to / and down again.
    let up = "../".repeat(dir.path().components().count() - 1);
    let rel = |p: &str| format!("{up}{}", gitops().join(p).display().to_string().trim_start_matches('/'));
    let components: Vec<String> = components.iter().map(|c| rel(c)).collect();
    let namespace = namespace.map(|n| format!("namespace: {n}\n")).unwrap_or_default();
    let k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n{namespace}resources: [{}]\ncomponents: [{}]\n",
        rel("deploy/overlays/global-a"),
        components.join(", ")
    );
    std::fs::write(dir.path().join("kustomization.yaml"), k).expect("write kustomization");
    kustomize(dir.path(), &["--load-restrictor=LoadRestrictionsNone"])
}

/// The controller Pod the Deployment of `objs` would make, as a manifest to create.
fn pod_of(objs: &[Value], name: &str) -> String {
    let deploy = find(objs, "Deployment", "drctl-controller");
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": deploy["metadata"]["namespace"]},
        "spec": deploy["spec"]["template"]["spec"],
    });
    pod.to_string()
}

/// `kubectl create --dry-run=server`: admission (Pod Security included) runs, nothing is stored.
fn admitted(g: &Global, manifest: &str) -> Result<(), String> {
    let mut cmd = Command::new(support::kubectl());
    cmd.arg(format!("--kubeconfig={}", g.api.kubeconfig.display())).args(["create", "--dry-run=server", "-f", "-"]);
    let out = drctl_testbed::procs::run_with_stdin(cmd, manifest.as_bytes(), "kubectl create").unwrap_or_else(|e| panic!("{e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn argocd_never_prunes_or_deletes_the_crd_or_the_namespace() {
    for g in GLOBALS {
        let objs = docs(&kustomize(&gitops().join("deploy/overlays").join(g), &[]));
        for (kind, name) in [("CustomResourceDefinition", "drtopologies.drctl.io"), ("Namespace", "drctl-system")] {
            let options = find(&objs, kind, name)["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].as_str().unwrap_or_default().to_string();
            let options: Vec<&str> = options.split(',').map(str::trim).collect();
            assert!(options.contains(&"Prune=false") && options.contains(&"Delete=false"), "{g}: {kind} {name} has sync-options {options:?}");
        }
    }
}

/// A platform's own overlay that moves drctl to another namespace moves everything that names
/// it; the base Pod passes Pod Security `restricted`, the encryption-config component's only
/// with the namespace it makes `privileged` (and is refused under `restricted`).
#[test]
fn overlays_work_under_another_namespace_and_pass_pod_security() {
    const NS: &str = "dr-platform";
    let plain = docs(&overlay_with(Some(NS), &[]));
    let with_file = docs(&overlay_with(Some(NS), &["deploy/components/encryption-config"]));
    for objs in [&plain, &with_file] {
        find(objs, "Namespace", NS);
        for o in objs.iter().filter(|o| o["metadata"]["namespace"].is_string()) {
            assert_eq!(o["metadata"]["namespace"], NS, "{} {}", o["kind"], o["metadata"]["name"]);
        }
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            assert_eq!(find(objs, kind, "drctl-controller")["subjects"][0]["namespace"], NS, "{kind}");
        }
        let env = find(objs, "Deployment", "drctl-controller")["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        let pod_ns = env.as_array().expect("env").iter().find(|e| e["name"] == "POD_NAMESPACE").expect("POD_NAMESPACE").clone();
        assert_eq!(pod_ns["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace", "the controller reads the namespace it runs in");
    }
    let labels = |objs: &[Value]| find(objs, "Namespace", NS)["metadata"]["labels"].clone();
    assert_eq!(labels(&plain)["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels(&with_file)["pod-security.kubernetes.io/enforce"], "privileged");
    let volumes = |objs: &[Value]| find(objs, "Deployment", "drctl-controller")["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(!volumes(&plain).contains("hostPath"), "the base mounts nothing from the node");
    assert!(volumes(&with_file).contains("/etc/kubernetes/encryption-provider.conf"));

    let g = Global::start("global-a");
    apply_server_side(&g, &overlay_with(Some(NS), &[]));
    let sa = format!("system:serviceaccount:{NS}:drctl-controller");
    for args in [&["get", "secrets"][..], &["update", "leases.coordination.k8s.io"], &["patch", "configmaps"]] {
        let out = g.api.kubectl_ok(&[&["auth", "can-i", "--as", &sa, "-n", NS][..], args].concat());
        assert_eq!(out.trim(), "yes", "{args:?} in {NS}");
    }
    admitted(&g, &pod_of(&plain, "base")).unwrap_or_else(|e| panic!("the base Pod is refused under restricted: {e}"));
    let refused = admitted(&g, &pod_of(&with_file, "with-file")).expect_err("a hostPath Pod under restricted");
    assert!(refused.contains("violates PodSecurity \"restricted:latest\"") && refused.contains("hostPath"), "{refused}");
    apply_server_side(&g, &overlay_with(Some(NS), &["deploy/components/encryption-config"]));
    admitted(&g, &pod_of(&with_file, "with-file")).unwrap_or_else(|e| panic!("the component's Pod is refused in its privileged namespace: {e}"));
}

#[test]
fn base_crd_is_the_generated_crd() {
    let copy = std::fs::read_to_string(gitops().join("deploy/base/crd.yaml")).expect("read base crd");
    let crd = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/drtopology.yaml")).expect("read crd");
    assert!(copy == crd, "gitops/deploy/base/crd.yaml is stale; run `make crds`");
}

#[test]
fn overlays_build_set_the_cluster_name_and_grant_no_wildcards() {
    for g in GLOBALS {
        let objs = docs(&kustomize(&gitops().join("deploy/overlays").join(g), &[]));
        let deploy = find(&objs, "Deployment", "drctl-controller");
        let c = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["args"],
            serde_json::json!([
                "controller",
                "--cluster-name",
                "$(CLUSTER_NAME)",
                "--listen",
                "0.0.0.0:8080",
                "--check-token-file",
                "/var/run/drctl/check-token/token"
            ])
        );
        let env: Vec<&Value> = c["env"].as_array().expect("env").iter().filter(|e| e["name"] == "CLUSTER_NAME").collect();
        assert_eq!(env.len(), 1, "{env:?}");
        assert_eq!(env[0]["value"], g);
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["image"], "registry.example.com/platform/drctl:0.1.0", "the overlay's images: entry names the image");
        let svc = find(&objs, "Service", "drctl-controller");
        assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
        assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"], "the Service selects the controller");
        find(&objs, "CustomResourceDefinition", "drtopologies.drctl.io");
        for o in objs.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role") {
            for rule in o["rules"].as_array().expect("rules") {
                for field in ["verbs", "resources", "apiGroups"] {
                    let items = rule[field].as_array().map(Vec::as_slice).unwrap_or_default();
                    assert!(!items.iter().any(|v| v == "*"), "{} {} has `*` in {field}", o["kind"], o["metadata"]["name"]);
                }
            }
        }
    }
    // The optional ServiceMonitor and alerts components (per cluster, and the pair's) build on
    // the base; the ServiceMonitor scrapes the Service.
    let objs = docs(&overlay_with(None, &["deploy/components/servicemonitor", "deploy/components/alerts", "deploy/components/alerts-pair"]));
    let sm = find(&objs, "ServiceMonitor", "drctl-controller");
    let svc = find(&objs, "Service", "drctl-controller");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]);
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    find(&objs, "PrometheusRule", "drctl");
    find(&objs, "PrometheusRule", "drctl-pair");
    let dash = find(&objs, "ConfigMap", "drctl-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1", "Grafana's sidecar picks it up by this label");
    let json = std::fs::read_to_string(gitops().join("deploy/components/alerts/drctl-dashboard.json")).expect("read dashboard");
    assert_eq!(dash["data"]["drctl-dashboard.json"], json.as_str());
}

#[test]
fn overlays_apply_to_an_apiserver_and_rbac_is_exactly_the_controllers() {
    let g = Global::start("global-a");
    for name in GLOBALS {
        apply_server_side(&g, &kustomize(&gitops().join("deploy/overlays").join(name), &[]));
        let env = g.api.kubectl_ok(&[
            "-n",
            "drctl-system",
            "get",
            "deployment",
            "drctl-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"CLUSTER_NAME\")].value}",
        ]);
        assert_eq!(env, name, "the applied Deployment runs as {name}");
    }
    g.api.wait_crd("drtopologies.drctl.io");
    // What Argo CD's topology Application applies, through the CRD the base installed.
    let topology = std::fs::read_to_string(gitops().join("topology/drtopology.yaml")).expect("read topology");
    apply_server_side(&g, &topology);
    assert_eq!(g.api.kubectl_ok(&["get", "drtopology", "platform", "-o", "jsonpath={.spec.primary}"]), "global-a");

    // kubectl resolves resource names by discovery, so external-dns's CRD must exist (a stand-in
    // with its real group and names).
    apply_server_side(&g, DNSENDPOINT_CRD);
    g.api.wait_crd("dnsendpoints.externaldns.k8s.io");
    // Argo CD's Applications, for the follow-role grant.
    support::argocd::install_crds(&g);

    let allowed: &[&[&str]] = &[
        &["get", "drtopologies.drctl.io"],
        &["list", "drtopologies.drctl.io"],
        &["watch", "drtopologies.drctl.io"],
        &["patch", "drtopologies.drctl.io"],
        &["patch", "drtopologies.drctl.io", "--subresource=status"],
        &["get", "drtopologies.drctl.io", "--subresource=status"],
        &["create", "events.events.k8s.io", "-n", "drctl-system"],
        &["patch", "events.events.k8s.io", "-n", "cpaas-system"],
        &["get", "secrets", "-n", "drctl-system"],
        &["get", "leases.coordination.k8s.io", "-n", "drctl-system"],
        &["create", "leases.coordination.k8s.io", "-n", "drctl-system"],
        &["update", "leases.coordination.k8s.io", "-n", "drctl-system"],
        &["get", "configmaps", "-n", "drctl-system"],
        &["patch", "configmaps", "-n", "drctl-system"],
        &["list", "pods", "-n", "cpaas-system"],
        &["delete", "pods", "-n", "cpaas-system"],
        &["patch", "deployments.apps", "-n", "cpaas-system"],
        &["get", "statefulsets.apps", "-n", "cpaas-system"],
        &["list", "daemonsets.apps", "-n", "kube-system"],
        &["create", "jobs.batch", "-n", "drctl-system"],
        &["delete", "jobs.batch", "-n", "drctl-system"],
        &["create", "dnsendpoints.externaldns.k8s.io", "-n", "drctl-system"],
        &["patch", "dnsendpoints.externaldns.k8s.io", "-n", "drctl-system"],
        &["create", "validatingadmissionpolicies.admissionregistration.k8s.io"],
        &["delete", "validatingadmissionpolicybindings.admissionregistration.k8s.io"],
        &["list", "applications.argoproj.io", "-n", "argocd"],
        &["patch", "applications.argoproj.io", "-n", "argocd"],
    ];
    let denied: &[&[&str]] = &[
        &["delete", "drtopologies.drctl.io"],
        &["create", "drtopologies.drctl.io"],
        &["update", "drtopologies.drctl.io"],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-n", "drctl-system"],
        &["delete", "leases.coordination.k8s.io", "-n", "drctl-system"],
        &["get", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["patch", "configmaps", "-n", "kube-system"],
        &["delete", "configmaps", "-n", "drctl-system"],
        &["create", "pods", "-n", "cpaas-system"],
        &["delete", "deployments.apps", "-n", "cpaas-system"],
        &["update", "deployments.apps", "-n", "cpaas-system"],
        &["list", "jobs.batch", "-n", "drctl-system"],
        &["delete", "dnsendpoints.externaldns.k8s.io", "-n", "drctl-system"],
        &["update", "validatingadmissionpolicies.admissionregistration.k8s.io"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["create", "applications.argoproj.io", "-n", "argocd"],
        &["delete", "applications.argoproj.io", "-n", "argocd"],
        &["update", "applications.argoproj.io", "-n", "argocd"],
        &["*", "*"],
    ];
    let mut wrong = Vec::new();
    for args in allowed {
        if !can_i(&g, args) {
            wrong.push(format!("denied but needed: {args:?}"));
        }
    }
    for args in denied {
        if can_i(&g, args) {
            wrong.push(format!("allowed but not needed: {args:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn argocd_applications_sync_paths_that_exist() {
    for g in GLOBALS {
        let text = std::fs::read_to_string(gitops().join(format!("argocd/application-{g}.yaml"))).expect("read application");
        let apps = docs(&text);
        let paths: Vec<&str> = apps.iter().map(|a| a["spec"]["source"]["path"].as_str().expect("source.path")).collect();
        assert_eq!(paths, [format!("deploy/overlays/{g}").as_str(), "topology"], "{g}");
        for a in &apps {
            assert_eq!(a["kind"], "Application");
            assert_eq!(a["metadata"]["namespace"], "argocd");
            assert_eq!(a["spec"]["destination"]["server"], "https://kubernetes.default.svc", "each global syncs into itself");
            let path = a["spec"]["source"]["path"].as_str().expect("path");
            assert!(gitops().join(path).is_dir(), "gitops/{path} does not exist");
        }
        let topology = apps.iter().find(|a| a["metadata"]["name"] == "drtopology").expect("drtopology Application");
        assert_eq!(topology["spec"]["syncPolicy"]["automated"]["prune"], false, "Argo CD must never prune the topology");
    }
}
