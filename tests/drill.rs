//! `drctl drill` (the real binary) on the standby of a real pair with controllers: every
//! rehearsed step passes on a healthy pair, with the replicated Secret read back through the
//! standby's apiserver; a different encryption config on the standby makes exactly that
//! preflight finding fail the drill; and the primary is never touched (DNS, role, no failover).

use drctl_testsupport as support;

use drctl::topology::{Phase, Role};
use serde_json::Value;
use support::pair::{Pair, DOMAIN, VIP_A};

fn drill(pair: &Pair) -> (i32, Value) {
    let out = support::drctl()
        .args(["drill", "--json", "--cluster-name=global-b", "--catch-up-timeout=30s"])
        .arg(format!("--kubeconfig={}", pair.b.api.kubeconfig.display()))
        .output()
        .expect("run drctl drill");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl drill --json\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{stdout}")))
}

fn outcomes(v: &Value) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or("").to_string(), s["outcome"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn assert_primary_untouched(pair: &Pair) {
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), [VIP_A], "the platform record");
    let a = pair.status(&pair.a).await.and_then(|t| t.status).expect("A's status");
    assert_eq!((a.role, a.phase), (Some(Role::Primary), Some(Phase::Steady)), "A still the steady primary");
    assert!(a.failover.is_none() && a.demotion.is_none(), "no failover, no demotion: {a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_on_the_standby_rehearses_without_touching_the_primary() {
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    pair.a.api.kubectl_ok(&["create", "namespace", "apps"]);
    pair.a.api.kubectl_ok(&["-n", "apps", "create", "secret", "generic", "db-creds", "--from-literal=password=drill"]);
    pair.a.api.kubectl_ok(&["-n", "apps", "create", "configmap", "settings", "--from-literal=mode=drill"]);
    pair.ready_for_drill(&[&ca, &cb]).await;

    let (code, v) = drill(&pair);
    let ok = |n: &str| (n.to_string(), "ok".to_string());
    assert_eq!(outcomes(&v), vec![ok("preflight"), ok("catch-up"), ok("check"), ok("read-back"), ok("dns"), ok("hooks")], "{v:#}");
    assert_eq!(code, 0);
    let read_back = v["steps"][3]["detail"].as_str().unwrap_or("");
    assert!(read_back.contains("Secrets included") && !read_back.contains("failed"), "{read_back}");
    assert!(v["predictedRtoSeconds"].as_f64().is_some_and(|s| s >= 30.0), "at least the record's TTL (30s): {v:#}");
    assert!(v["rpoRevisions"].is_number() && v["rpoSeconds"].as_f64().is_some_and(|s| s < 15.0), "{v:#}");
    assert_eq!(v["wouldFail"], serde_json::json!([]));
    // The report an operator reads.
    let out = support::drctl()
        .args(["drill", "--cluster-name=global-b"])
        .arg(format!("--kubeconfig={}", pair.b.api.kubeconfig.display()))
        .output()
        .expect("run drctl drill");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl drill --cluster-name global-b\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Predicted RTO: ") && text.contains("A failover now would pass every rehearsed step."), "{text}");
    assert_primary_untouched(&pair).await;

    // The standby's encryption config differs: a failover would serve data it cannot decrypt.
    std::fs::write(pair.dir.path().join("encryption-b.conf"), "kind: EncryptionConfiguration\n# another key\n").expect("write");
    let (code, v) = drill(&pair);
    assert_eq!(code, 2, "{v:#}");
    let findings: Vec<(&str, &str)> =
        v["findings"].as_array().expect("findings").iter().map(|f| (f["check"].as_str().unwrap_or(""), f["outcome"].as_str().unwrap_or(""))).collect();
    assert_eq!(findings, [("encryption.config", "fail")], "{v:#}");
    assert_eq!(outcomes(&v)[0], ("preflight".to_string(), "fail".to_string()));
    assert!(v["wouldFail"][0].as_str().is_some_and(|w| w.starts_with("preflight: 1 of") && w.contains("encryption.config")), "{v:#}");
    assert_primary_untouched(&pair).await;
}
