//! `drctl uninstall` on a real standby: refused while its controller holds the Lease; once it is
//! stopped, a dry run lists the fence, the role memory and the Lease and deletes nothing, and
//! `--yes` leaves none of them — and nothing that is not drctl's is touched.

mod support;

use std::time::Duration;

use drctl::topology::{DRTopologyStatus, Phase, Role};
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

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_removes_the_fence_memory_and_leases_once_the_controller_is_stopped() {
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    // The platform's own policy, made on the primary and replicated: uninstall must leave it.
    let (ok, out) = pair.a.api.apply_stdin(TEAM_POLICY);
    assert!(ok, "{out}");
    let ca = pair.controller(&pair.a, &[]);
    let mut cb = pair.controller(&pair.b, &[]);
    pair.wait(&pair.b, "B standby in sync", Duration::from_secs(90), &[&ca, &cb], standby_in_sync).await;
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
    assert_eq!(left(&pair.b), before, "a dry run deletes nothing");

    let (ok, out) = uninstall(&pair.b, "--yes");
    assert!(ok, "{out}");
    assert_eq!(left(&pair.b), Vec::<String>::new(), "after:\n{out}");
    assert_eq!(
        pair.b.api.kubectl_ok(&["get", "validatingadmissionpolicy", "team-policy", "-o", "name"]).trim(),
        "validatingadmissionpolicy.admissionregistration.k8s.io/team-policy"
    );
    assert_eq!(pair.b.api.kubectl_ok(&["get", "drt", "platform", "-o", "name"]).trim(), "drtopology.drctl.io/platform", "the DRTopology is Argo CD's");
    let (ok, out) = uninstall(&pair.b, "--yes");
    assert!(ok && out.contains("nothing of drctl's left in this global"), "{out}");
    drop(ca);
}
