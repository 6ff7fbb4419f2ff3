//! `drctl uninstall` on a real standby (whose controller holds a labelled Application and
//! releases one whose label opts out): refused while its controller holds the Lease; once it is
//! stopped, a dry run lists the fence, the role memory, the Lease and the Application drctl
//! holds and changes nothing, and `--yes` leaves none of them and gives the Application its
//! automated sync back — and nothing that is not drctl's is touched.

use drctl_testsupport as support;

use std::time::Duration;

use drctl::topology::{ApplicationsState, DRTopologyStatus, Phase, Role};
use support::pair::Pair;
use support::Global;

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

fn uninstall(g: &Global, mode: &str) -> (bool, String) {
    let out = support::drctl().args(["uninstall", mode, &format!("--kubeconfig={}", g.api.kubeconfig.display())]).output().expect("run drctl uninstall");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Names of drctl's objects left in `g`: fence policies and bindings, role memory, Leases.
fn left(g: &Global) -> Vec<String> {
    let mut names = Vec::new();
    for (what, ns) in [
        ("validatingadmissionpolicies", None),
        ("validatingadmissionpolicybindings", None),
        ("configmaps", Some("drctl-system")),
        ("leases.coordination.k8s.io", Some("drctl-system")),
    ] {
        let mut args = vec!["get", what, "-o", "jsonpath={.items[*].metadata.name}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        for n in g.api.kubectl_ok(&args).split_whitespace().filter(|n| n.starts_with("drctl-")) {
            names.push(format!("{what}/{n}"));
        }
    }
    names
}

const TEAM_POLICY: &str = "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: team-policy}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  validations: [{expression: \"true\"}]
";

/// A platform Application that follows the role (gitops/argocd/platform-web.yaml, trimmed).
const FOLLOWER: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: platform-web, namespace: argocd, labels: {drctl.io/follow-role: primary}}
spec:
  project: default
  source: {repoURL: https://git.example.com/platform/platform-apps.git, targetRevision: main, path: web}
  destination: {server: https://kubernetes.default.svc, namespace: platform-web}
  syncPolicy:
    automated: {prune: true, selfHeal: true}
";

/// One drctl held before its label was changed to opt out: released once, whatever the role.
const OPTED_OUT: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: platform-old
  namespace: argocd
  labels: {drctl.io/follow-role: none}
  annotations: {drctl.io/held-automated: '{\"prune\":false}'}
spec:
  project: default
  source: {repoURL: https://git.example.com/platform/platform-apps.git, targetRevision: main, path: old}
  destination: {server: https://kubernetes.default.svc, namespace: platform-old}
";

fn automated_of(g: &Global, app: &str) -> String {
    g.api.kubectl_ok(&["-n", "argocd", "get", "applications.argoproj.io", app, "-o", "jsonpath={.spec.syncPolicy.automated}"])
}

fn automated(g: &Global) -> String {
    automated_of(g, "platform-web")
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_removes_the_fence_memory_and_leases_once_the_controller_is_stopped() {
    let pair = Pair::start().await;
    // Argo CD's API (no Argo CD runs: only drctl touches the Application): its CRDs made on the
    // primary reach the standby through the mirror.
    support::argocd::install_crds(&pair.a);
    pair.apply_both("global-a");
    // The platform's own policy, made on the primary and replicated: uninstall must leave it.
    let (ok, out) = pair.a.api.apply_stdin(TEAM_POLICY);
    assert!(ok, "{out}");
    let ca = pair.controller(&pair.a, &[]);
    let mut cb = pair.controller(&pair.b, &[]);
    pair.wait(&pair.b, "B standby in sync", Duration::from_secs(90), &[&ca, &cb], standby_in_sync).await;
    // Made on the steady standby, in Argo CD's namespace (never replicated nor fenced): held
    // within a reconcile.
    pair.b.api.wait_crd("applications.argoproj.io");
    pair.b.api.kubectl_ok(&["create", "namespace", "argocd"]);
    let (ok, out) = pair.b.api.apply_stdin(&format!("{FOLLOWER}---\n{OPTED_OUT}"));
    assert!(ok, "{out}");
    pair.wait(&pair.b, "B holds platform-web", Duration::from_secs(30), &[&ca, &cb], |s| {
        s.applications.as_ref().is_some_and(|a| a.state == ApplicationsState::Held && a.names == ["platform-web"])
    })
    .await;
    assert_eq!(automated(&pair.b), "", "held: automated sync removed");
    assert_eq!(automated_of(&pair.b, "platform-old"), r#"{"prune":false}"#, "opted out: released on a standby too");
    let before = left(&pair.b);
    for want in [
        "validatingadmissionpolicies/drctl-fence-platform",
        "validatingadmissionpolicybindings/drctl-fence-platform",
        "leases.coordination.k8s.io/drctl-global-b",
        "configmaps/drctl-memory-platform",
    ] {
        assert!(before.contains(&want.to_string()), "{want} not among {before:?}");
    }

    let (ok, out) = uninstall(&pair.b, "--yes");
    assert!(!ok, "refused while the controller runs: {out}");
    assert!(out.contains("Lease drctl-system/drctl-global-b is held by") && out.contains("stop it first"), "{out}");
    assert_eq!(left(&pair.b), before, "a refused uninstall deletes nothing");

    cb.kill();
    tokio::time::sleep(Duration::from_secs(7)).await; // --lease-seconds=6
    let (ok, out) = uninstall(&pair.b, "--dry-run");
    assert!(ok, "{out}");
    for name in &before {
        let (kind, n) = name.split_once('/').expect("kind/name");
        let kind = match kind {
            "validatingadmissionpolicies" => "ValidatingAdmissionPolicy",
            "validatingadmissionpolicybindings" => "ValidatingAdmissionPolicyBinding",
            "configmaps" => "ConfigMap",
            _ => "Lease",
        };
        assert!(out.lines().any(|l| l.starts_with(&format!("would delete {kind} ")) && l.ends_with(n)), "{name} not listed:\n{out}");
    }
    assert!(out.lines().any(|l| l == "would release Application argocd/platform-web (automated sync restored)"), "{out}");
    assert_eq!(left(&pair.b), before, "a dry run deletes nothing");
    assert_eq!(automated(&pair.b), "", "a dry run releases nothing");

    let (ok, out) = uninstall(&pair.b, "--yes");
    assert!(ok, "{out}");
    assert_eq!(left(&pair.b), Vec::<String>::new(), "after:\n{out}");
    assert!(out.lines().any(|l| l == "released Application argocd/platform-web (automated sync restored)"), "{out}");
    let restored: serde_json::Value = serde_json::from_str(&automated(&pair.b)).expect("automated as JSON");
    assert_eq!(restored, serde_json::json!({"prune": true, "selfHeal": true}), "as declared");
    assert_eq!(
        pair.b.api.kubectl_ok(&["get", "validatingadmissionpolicy", "team-policy", "-o", "name"]).trim(),
        "validatingadmissionpolicy.admissionregistration.k8s.io/team-policy"
    );
    assert_eq!(pair.b.api.kubectl_ok(&["get", "drt", "platform", "-o", "name"]).trim(), "drtopology.drctl.io/platform", "the DRTopology is Argo CD's");
    let (ok, out) = uninstall(&pair.b, "--yes");
    assert!(ok && out.contains("nothing of drctl's left in this global"), "{out}");
    drop(ca);
}
