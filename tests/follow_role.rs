//! Platform Applications that follow the role, on a real pair with a real Argo CD in each global:
//! the parent of `gitops/argocd/platform-apps.yaml` applies `gitops/argocd/platform-web.yaml` from
//! a Git repository in both; the primary's Argo CD syncs the workload and the mirror replicates
//! it; the standby's copy is held (no automated sync, never synced, and the parent's selfHeal
//! does not put it back); after a failover the new primary's is released (after VerifyDNS, before
//! its restarts) and syncs a commit made after the flip, and the old primary's is held (before its
//! demotion token).

use drctl_testsupport as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drctl::decide::follow_role::HELD_ANNOTATION;
use drctl::topology::{ApplicationsState, DRTopologyStatus, Phase, Role};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use support::argocd::ArgoCd;
use support::pair::Pair;
use support::{eventually, Global};

const ARGOCD_NS: &str = "argocd";
const REPO_URL: &str = "https://git.example.com/platform/platform-apps.git";
const APP: &str = "platform-web";
const PARENT: &str = "platform-apps";

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-qm", message]);
    let out = Command::new("git").arg("-C").arg(repo).args(["rev-parse", "HEAD"]).output().expect("git rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A shipped file of `gitops/argocd/` pointed at `repo`.
fn shipped(file: &str, repo: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/argocd").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(text.contains(REPO_URL), "{file} names {REPO_URL}");
    text.replace(REPO_URL, &format!("file://{}", repo.display()))
}

fn workload(value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  value: {value}\n")
}

/// The platform repository: the child Application under `apps/`, its workload under `web/`.
fn platform_repo(dir: &Path) -> (std::path::PathBuf, String) {
    let repo = dir.join("platform-apps");
    for d in ["apps", "web"] {
        std::fs::create_dir_all(repo.join(d)).expect("mkdir");
    }
    std::fs::write(repo.join("apps/platform-web.yaml"), shipped("platform-web.yaml", &repo)).expect("write child");
    std::fs::write(repo.join("web/configmap.yaml"), workload("v1")).expect("write workload");
    git(&repo, &["init", "-q", "-b", "main"]);
    let head = commit_all(&repo, "platform-web v1");
    (repo, head)
}

fn web_value(g: &Global) -> Option<String> {
    let out = g.api.kubectl(&["-n", "platform-web", "get", "configmap", "web-config", "-o", "jsonpath={.data.value}"]).ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn automated(app: &Value) -> Option<&Value> {
    app.pointer("/spec/syncPolicy/automated").filter(|v| !v.is_null())
}

fn held_annotation(app: &Value) -> Option<&str> {
    app.pointer("/metadata/annotations").and_then(|a| a.get(HELD_ANNOTATION)).and_then(Value::as_str)
}

/// No sync of the child has failed in `g` (e.g. against the fence): no failed operation, no
/// SyncError condition.
fn never_failed(app: &Value) -> bool {
    let phase = app.pointer("/status/operationState/phase").and_then(Value::as_str);
    let conditions = app.pointer("/status/conditions").map(ToString::to_string).unwrap_or_default();
    !matches!(phase, Some("Failed" | "Error")) && !conditions.contains("SyncError")
}

fn time(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// When drctl last published an Event `reason` naming the Application in `g`.
fn newest_event(g: &Global, reason: &str) -> Timestamp {
    let out = g.api.kubectl_ok(&["get", "events", "-A", "--field-selector", &format!("reason={reason}"), "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("events");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let naming = items.iter().filter(|e| e["message"].as_str().is_some_and(|m| m.contains(APP)));
    naming.filter_map(|e| e["eventTime"].as_str().map(time)).max().unwrap_or_else(|| panic!("no {reason} Event naming {APP} in {}: {out}", g.name))
}

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

fn apps_are(state: ApplicationsState) -> impl Fn(&DRTopologyStatus) -> bool {
    move |s: &DRTopologyStatus| s.applications.as_ref().is_some_and(|a| a.state == state && a.count == 1 && a.names == [APP] && a.message.is_none())
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_applications_sync_only_on_the_primary_and_move_with_a_failover() {
    let started = Instant::now();
    let pair = Pair::start().await;
    let mut argo_a = ArgoCd::start(&pair.a, 0, ARGOCD_NS);
    let mut argo_b = ArgoCd::start(&pair.b, 1, ARGOCD_NS);
    let (repo, _) = platform_repo(pair.dir.path());
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    let logs = [&ca, &cb];
    let t = Duration::from_secs(90);
    pair.wait(&pair.a, "A steady primary", t, &logs, |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
    pair.wait(&pair.b, "B standby in sync", t, &logs, standby_in_sync).await;

    // The primary's Argo CD: the parent applies the child, the child syncs the workload.
    let parent = shipped("platform-apps.yaml", &repo);
    let (ok, out) = pair.a.api.apply_stdin(&parent);
    assert!(ok, "apply the parent to global-a: {out}");
    let child_a = argo_a.wait_synced_and_healthy(&pair.a, APP, Duration::from_secs(120));
    assert_eq!(automated(&child_a), Some(&serde_json::json!({"prune": true, "selfHeal": true})), "released on the primary as declared");
    assert_eq!(child_a.pointer("/status/operationState/phase").and_then(Value::as_str), Some("Succeeded"), "global-a's Argo CD synced it");
    assert_eq!(web_value(&pair.a).as_deref(), Some("v1"));
    pair.wait(&pair.a, "A: 1 Application released", t, &logs, apps_are(ApplicationsState::Released)).await;
    // The mirror brings the workload to the standby.
    eventually("global-a's workload replicated to global-b", t, || (web_value(&pair.b).as_deref() == Some("v1")).then_some(()), String::new);

    // The standby's Argo CD: the parent applies the same child; drctl holds it.
    let (ok, out) = pair.b.api.apply_stdin(&parent);
    assert!(ok, "apply the parent to global-b: {out}");
    pair.wait(&pair.b, "B: 1 Application held", t, &logs, apps_are(ApplicationsState::Held)).await;
    // The parent's first sync can still be applying the child as Git declares it (with
    // `automated`): a newer declaration, which drctl holds again at its next pass.
    let child_b = eventually(
        "the standby's child held",
        t,
        || argo_b.application(&pair.b, APP).filter(|c| automated(c).is_none()),
        || format!("{:?}", argo_b.application(&pair.b, APP).map(|c| c["spec"].clone())),
    );
    assert_eq!(automated(&child_b), None, "held on the standby: {}", child_b["spec"]);
    assert_eq!(held_annotation(&child_b), Some(r#"{"prune":true,"selfHeal":true}"#));
    // Argo CD there compares the replicated workload with Git (Synced) and never syncs it; the
    // parent, with selfHeal, does not put automated back (its ignoreDifferences), and stays Synced.
    let stays_held = Instant::now() + Duration::from_secs(20);
    while Instant::now() < stays_held {
        let child = argo_b.application(&pair.b, APP).expect("child");
        assert_eq!(automated(&child), None, "the standby's child stays held: {}", child["spec"]);
        assert!(child.pointer("/status/operationState").is_none() && never_failed(&child), "global-b's Argo CD never synced it: {}", child["status"]);
        std::thread::sleep(Duration::from_secs(1));
    }
    let child_b = argo_b.application(&pair.b, APP).expect("child");
    assert_eq!(child_b.pointer("/status/sync/status").and_then(Value::as_str), Some("Synced"), "{}", child_b["status"]);
    argo_b.wait_synced_and_healthy(&pair.b, PARENT, Duration::from_secs(60));
    let steady = started.elapsed();

    // A failover: spec.primary flips in both (as each Argo CD applies the merged pull request).
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B: failover done", Duration::from_secs(120), &logs, |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    pair.wait(&pair.b, "B: 1 Application released", t, &logs, apps_are(ApplicationsState::Released)).await;
    pair.wait(&pair.a, "A: standby in sync, 1 Application held", t, &logs, |s| standby_in_sync(s) && apps_are(ApplicationsState::Held)(s)).await;
    // When: the old primary held with its fence, before its demotion token; the new primary
    // released after VerifyDNS, before its restarts.
    let a_status = pair.status(&pair.a).await.and_then(|t| t.status).expect("A's status");
    let token_at = a_status.demotion.as_ref().and_then(|d| d.acknowledged_at.as_deref()).map(time).expect("A's demotion token");
    assert!(newest_event(&pair.a, "ApplicationsHeld") < token_at, "A held its Applications before writing its demotion token");
    let b_status = pair.status(&pair.b).await.and_then(|t| t.status).expect("B's status");
    let step = |name: &str| b_status.failover.as_ref().and_then(|f| f.steps.iter().find(|s| s.name == name).cloned()).expect("step");
    let released_at = newest_event(&pair.b, "ApplicationsReleased");
    assert!(step("VerifyDNS").finished_at.as_deref().map(time) < Some(released_at), "released after VerifyDNS");
    assert!(Some(released_at) < step("Restart").started_at.as_deref().map(time), "released before the restarts");
    let child_b = argo_b.application(&pair.b, APP).expect("child");
    assert_eq!(automated(&child_b), Some(&serde_json::json!({"prune": true, "selfHeal": true})), "restored exactly on the new primary");
    assert_eq!(held_annotation(&child_b), None);
    let child_a = argo_a.application(&pair.a, APP).expect("child");
    assert_eq!(automated(&child_a), None, "held on the old primary: {}", child_a["spec"]);
    let failed_over = started.elapsed();

    // A change committed after the flip: the new primary's Argo CD syncs it, the mirror brings it
    // to the old primary, whose Argo CD does not sync it (nor fail against its fence).
    std::fs::write(repo.join("web/configmap.yaml"), workload("v2")).expect("write workload");
    let v2 = commit_all(&repo, "platform-web v2");
    for (g, argo) in [(&pair.a, &argo_a), (&pair.b, &argo_b)] {
        argo.refresh(g, APP);
        argo.refresh(g, PARENT);
    }
    let synced = eventually(
        "global-b's Argo CD synced v2",
        Duration::from_secs(120),
        || {
            let app = argo_b.application(&pair.b, APP)?;
            let op = app.pointer("/status/operationState")?;
            (op["phase"] == "Succeeded" && op.pointer("/syncResult/revision").and_then(Value::as_str) == Some(v2.as_str())).then_some(app)
        },
        || format!("{}", argo_b.application(&pair.b, APP).map(|a| a["status"].clone()).unwrap_or_default()),
    );
    assert_eq!(web_value(&pair.b).as_deref(), Some("v2"), "{}", synced["status"]);
    eventually("v2 replicated to global-a", t, || (web_value(&pair.a).as_deref() == Some("v2")).then_some(()), String::new);
    let child_a = argo_a.application(&pair.a, APP).expect("child");
    assert_eq!(automated(&child_a), None, "still held: {}", child_a["spec"]);
    let last_sync_a = child_a.pointer("/status/operationState/syncResult/revision").and_then(Value::as_str);
    assert_ne!(last_sync_a, Some(v2.as_str()), "the old primary's Argo CD never synced the commit after the flip");
    assert!(never_failed(&child_a), "no sync against the fence on the old primary: {}", child_a["status"]);
    argo_a.wait_synced_and_healthy(&pair.a, PARENT, Duration::from_secs(60));
    eprintln!(
        "steady with the standby's Application held after {steady:?}; failed over and switched after {failed_over:?}; v2 synced on the new primary after {:?}",
        started.elapsed()
    );
}
