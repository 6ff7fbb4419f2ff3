//! `drctl status` (the real binary) on a real pair with controllers: both globals side by side
//! before and after a planned failover, then with one global's apiserver killed; and a global
//! that accepts connections but never answers, bounded by `--timeout`.

use drctl_testsupport as support;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use drctl::topology::{DRTopologyStatus, Phase, Role};
use serde_json::Value;
use support::pair::{Pair, DOMAIN, VIP_A, VIP_B};

const STEADY: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(120);

fn standby_checked(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0) && y.last_check_time.is_some())
}

/// Runs `drctl status` on the two kubeconfigs; (exit code, stdout).
fn drctl_status(a: &Path, b: &Path, extra: &[&str]) -> (i32, String) {
    let out = support::drctl()
        .arg("status")
        .arg(format!("--cluster=global-a={}", a.display()))
        .arg(format!("--cluster=global-b={}", b.display()))
        .args(extra)
        .output()
        .expect("run drctl status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl status {}\n{stdout}{}", extra.join(" "), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn json(a: &Path, b: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (code, out) = drctl_status(a, b, &args);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("drctl status --json printed no JSON ({e}):\n{out}")))
}

fn finding_codes(v: &Value) -> Vec<String> {
    v["findings"].as_array().expect("findings").iter().map(|f| f["code"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_both_globals_and_says_which_one_is_unreachable() {
    let mut pair = Pair::start().await;
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    let peer_reachable = |s: &DRTopologyStatus| s.conditions.iter().any(|c| c.type_ == "PeerReachable" && c.status == "True");
    pair.wait(&pair.a, "A primary, B reachable", STEADY, &[&ca, &cb], |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady) && peer_reachable(s))
        .await;
    pair.wait(&pair.b, "B standby, checked, A reachable", STEADY, &[&ca, &cb], |s| standby_checked(s) && peer_reachable(s)).await;
    let (ka, kb) = (pair.a.api.kubeconfig.clone(), pair.b.api.kubeconfig.clone());

    // Steady: A primary, B a checked standby, DNS at A's VIP; nothing to report.
    let (code, v) = json(&ka, &kb, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["specPrimary"], "global-a");
    let (a, b) = (&v["clusters"][0], &v["clusters"][1]);
    assert_eq!((a["name"].as_str(), a["role"].as_str(), a["phase"].as_str()), (Some("global-a"), Some("Primary"), Some("Steady")), "{v:#}");
    assert_eq!((b["name"].as_str(), b["role"].as_str(), b["phase"].as_str()), (Some("global-b"), Some("Standby"), Some("Steady")), "{v:#}");
    assert_eq!(b["missedKeys"], 0);
    assert!(b["lagSeconds"].is_number() && b["lastCheckTime"].is_string() && b["lastCheckAgeSeconds"].is_number(), "{b:#}");
    assert_eq!(a["vip"], VIP_A);
    assert_eq!((a["argocd"].clone(), a["argocdError"].clone()), (Value::Null, Value::Null), "no Argo CD (nor its CRD) in this pair: {a:#}");
    assert_eq!(v["dns"]["name"], DOMAIN);
    assert_eq!(v["dns"]["answers"][0]["resolver"], pair.pdns.dns.to_string());
    assert_eq!(v["dns"]["answers"][0]["addresses"], serde_json::json!([VIP_A]));
    assert_eq!(v["dns"]["pointsAt"], "global-a");
    assert_eq!(finding_codes(&v), Vec::<String>::new());

    // A planned failover to B: status shows its steps, each with its duration.
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B failover done", FAILOVER, &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    pair.wait(&pair.a, "A standby of B, checked", STEADY, &[&ca, &cb], standby_checked).await;
    let (code, v) = json(&ka, &kb, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["clusters"][1]["role"], "Primary");
    assert_eq!(v["clusters"][0]["role"], "Standby");
    assert_eq!(v["dns"]["pointsAt"], "global-b");
    assert_eq!(v["lastFailoverRecordedBy"], "global-b");
    let f = &v["clusters"][1]["failover"];
    assert_eq!((f["from"].as_str(), f["to"].as_str()), (Some("global-a"), Some("global-b")));
    assert!(f["durationSeconds"].is_number(), "{f:#}");
    let steps = f["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["Preflight", "Demote", "FinalSync", "StopSync", "PreHooks", "SwitchDNS", "VerifyDNS", "Restart", "PostHooks", "Done"]);
    for s in steps {
        assert!(s["durationSeconds"].is_number(), "step without a duration: {s:#}");
    }
    let (code, table) = drctl_status(&ka, &kb, &[]);
    assert_eq!(code, 0);
    assert!(table.contains("Last failover global-a -> global-b (recorded by global-b)"), "{table}");
    assert!(table.contains(&format!("{VIP_B}  = global-b's VIP")), "{table}");

    // One global's kubeconfig given for both: refused, not read as two primaries (exit 1).
    let out = support::drctl()
        .arg("status")
        .arg(format!("--cluster=global-a={}", kb.display()))
        .arg(format!("--cluster=global-b={}", kb.display()))
        .output()
        .expect("run drctl status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--cluster global-a and --cluster global-b reach the same global (both kubeconfigs name the apiserver"), "{stderr}");

    // A's apiserver dies: its column says so, B's is still whole, and status still exits 0 (the
    // primary it can see is the only one).
    pair.a.api.kill();
    let (code, v) = json(&ka, &kb, &["--timeout=3s"]);
    assert_eq!(code, 0, "{v:#}");
    let (a, b) = (&v["clusters"][0], &v["clusters"][1]);
    assert_eq!(a["reachable"], false);
    assert!(a["error"].as_str().is_some_and(|e| e.contains(&pair.a.api.url)), "{a:#}");
    assert_eq!((a["role"].clone(), a["phase"].clone()), (Value::Null, Value::Null));
    assert_eq!(a["vip"], VIP_A, "the VIP comes from the other global's spec");
    assert_eq!((b["reachable"].as_bool(), b["role"].as_str(), b["phase"].as_str()), (Some(true), Some("Primary"), Some("Steady")), "{b:#}");
    assert_eq!(b["failover"]["steps"].as_array().map(Vec::len), Some(10));
    assert_eq!(v["dns"]["pointsAt"], "global-b");
    assert_eq!(finding_codes(&v), ["Unreachable"]);
    let (code, table) = drctl_status(&ka, &kb, &["--timeout=3s"]);
    assert_eq!(code, 0);
    let apiserver = table.lines().find(|l| l.starts_with("apiserver")).expect("apiserver row");
    assert!(apiserver.contains("UNREACHABLE") && apiserver.trim_end().ends_with("ok"), "{table}");
    assert!(table.contains("global-a is UNREACHABLE: "), "{table}");

    // B without the DRTopology CRD still answers: reachable, and the finding names the CRD.
    drop(cb);
    pair.b.api.kubectl_ok(&["delete", "crd", "drtopologies.drctl.io", "--wait=true"]);
    let (code, v) = json(&ka, &kb, &["--timeout=3s"]);
    assert_eq!(code, 0, "{v:#}");
    let b = &v["clusters"][1];
    assert_eq!((b["reachable"].as_bool(), b["crdInstalled"].as_bool(), b["topologyFound"].as_bool()), (Some(true), Some(false), Some(false)), "{b:#}");
    assert!(
        v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["code"] == "NoTopology" && f["message"].as_str().is_some_and(|m| m.contains("its CRD is not installed"))),
        "{v:#}"
    );
    drop(ca);
}

/// A kubeconfig for a server at `addr` that accepts connections and never answers.
fn stalled_kubeconfig(dir: &Path, name: &str, addr: std::net::SocketAddr) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let mut f = std::fs::File::create(&path).expect("create kubeconfig");
    write!(
        f,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster: {{server: \"https://{addr}\", insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: u}}\ncurrent-context: {name}\n"
    )
    .expect("write kubeconfig");
    path
}

#[test]
fn globals_that_never_answer_are_given_up_on_after_the_timeout_and_exit_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Accepted by the kernel's backlog and never read: the TLS handshake waits forever.
    let stalled: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let a = stalled_kubeconfig(dir.path(), "global-a", stalled[0].local_addr().expect("addr"));
    let b = stalled_kubeconfig(dir.path(), "global-b", stalled[1].local_addr().expect("addr"));
    let (code, v) = json(&a, &b, &["--timeout=2s"]);
    assert_eq!(code, 4, "{v:#}");
    for c in v["clusters"].as_array().expect("clusters") {
        assert_eq!(c["reachable"], false);
        assert!(c["error"].as_str().is_some_and(|e| e.contains("no answer within 2.0s")), "{c:#}");
    }
    assert_eq!(finding_codes(&v), ["BothUnreachable"]);
}
