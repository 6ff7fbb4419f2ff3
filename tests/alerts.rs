//! The alerts and dashboard of gitops/deploy/components/alerts (per cluster) and alerts-pair
//! (comparing both globals): `promtool check rules` and `promtool test rules` (a test for every
//! alert; the per-cluster tests hold one cluster's series each, and a healthy standby alone and a
//! healthy primary alone evaluate every per-cluster alert silent), then a real Prometheus
//! scraping a DR pair's two real controllers with both rule files, where breaking DNS and
//! stopping the standby's mirror fire the right alerts, a standby never drilled fires
//! DrctlNoRecentPassingDrill until a drill passes, and every dashboard query runs.

use drctl_testsupport as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pair::{Pair, DOMAIN, VIP_A};

/// A component's PrometheusRule, its promtool tests, and the rules file name the tests load.
struct Rules {
    rule: &'static str,
    tests: &'static str,
    file: &'static str,
}

/// The per-cluster alerts, for the Prometheus of each global.
const PER_CLUSTER: Rules = Rules {
    rule: "gitops/deploy/components/alerts/prometheusrule.yaml",
    tests: "gitops/deploy/components/alerts/prometheusrule_test.yaml",
    file: "drctl-rules.yaml",
};
/// The alerts comparing both globals, for a ruler that sees both.
const PAIR: Rules = Rules {
    rule: "gitops/deploy/components/alerts-pair/prometheusrule.yaml",
    tests: "gitops/deploy/components/alerts-pair/prometheusrule_test.yaml",
    file: "drctl-pair-rules.yaml",
};
const DASHBOARD: &str = "gitops/deploy/components/alerts/drctl-dashboard.json";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    drctl::validate::parse_documents(&text).expect("valid YAML").remove(0)
}

/// Every alerting rule of the PrometheusRule's groups.
fn alerts(spec: &Value) -> Vec<&Value> {
    spec["groups"].as_array().expect("groups").iter().flat_map(|g| g["rules"].as_array().expect("rules")).collect()
}

/// The PrometheusRule's `spec` (a Prometheus rules file), with `edit` applied to every rule.
fn rules_file(rules: &Rules, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> String {
    let mut spec = yaml(&repo(rules.rule))["spec"].clone();
    for g in spec["groups"].as_array_mut().expect("groups") {
        for r in g["rules"].as_array_mut().expect("rules") {
            edit(r.as_object_mut().expect("rule"));
        }
    }
    serde_json::to_string_pretty(&spec).expect("json") // JSON is YAML to promtool and Prometheus
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().unwrap_or_else(|e| panic!("run promtool (Debian package prometheus; `make deps` installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alert names of a PrometheusRule.
fn alert_names(rules: &Rules) -> Vec<String> {
    let rule = yaml(&repo(rules.rule));
    assert_eq!(rule["kind"], "PrometheusRule");
    alerts(&rule["spec"]).iter().map(|r| r["alert"].as_str().expect("alert name").to_string()).collect()
}

/// Every alert has a runbook and a promtool test that fires it; `promtool check rules` and
/// `promtool test rules` pass. Returns the promtool tests.
fn check_component(rules: &Rules) -> Value {
    let names = alert_names(rules);
    for r in alerts(&yaml(&repo(rules.rule))["spec"]) {
        let runbook = r["annotations"]["runbook"].as_str().unwrap_or_default();
        assert!(runbook.len() > 20, "{} has no runbook annotation", r["alert"]);
    }
    let tests = yaml(&repo(rules.tests));
    assert_eq!(tests["rule_files"], serde_json::json!([rules.file]), "{}", rules.tests);
    let fired: Vec<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().expect("alertname"))
        .collect();
    let untested: Vec<&String> = names.iter().filter(|n| !fired.contains(&n.as_str())).collect();
    assert!(untested.is_empty(), "no promtool test of {} expects these to fire: {untested:?}", rules.tests);

    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.yaml");
    std::fs::write(&full, rules_file(rules, |_| {})).expect("write rules");
    let out = promtool(&["check", "rules", full.to_str().expect("path")]);
    println!("{out}");
    assert!(out.contains(&format!("SUCCESS: {} rules found", names.len())), "{out}");
    // The unit tests pin expressions, labels and `for`, not the wording of annotations.
    std::fs::write(dir.path().join(rules.file), rules_file(rules, |r| drop(r.remove("annotations")))).expect("write rules");
    let copy = dir.path().join("prometheusrule_test.yaml");
    std::fs::copy(repo(rules.tests), &copy).expect("copy tests");
    let out = promtool(&["test", "rules", copy.to_str().expect("path")]);
    println!("{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    tests
}

/// The `cluster` label values of a promtool test's input series.
fn clusters_of(test: &Value) -> Vec<String> {
    let mut clusters: Vec<String> = test["input_series"]
        .as_array()
        .expect("input_series")
        .iter()
        .filter_map(|s| {
            let series = s["series"].as_str()?;
            let (_, rest) = series.split_once("cluster=\"")?;
            rest.split_once('"').map(|(c, _)| c.to_string())
        })
        .collect();
    clusters.sort();
    clusters.dedup();
    clusters
}

#[test]
fn every_alert_has_a_runbook_and_a_promtool_unit_test_that_fires_it() {
    let per_cluster = check_component(&PER_CLUSTER);
    check_component(&PAIR);
    let names = alert_names(&PER_CLUSTER);
    let pair = alert_names(&PAIR);
    assert!(names.iter().all(|n| !pair.contains(n)), "an alert in both components: {names:?} {pair:?}");

    // What a per-cluster Prometheus holds: every test has one cluster's series only ...
    let tests = per_cluster["tests"].as_array().expect("tests");
    for t in tests {
        assert!(clusters_of(t).len() <= 1, "{:?} mixes clusters' series: {:?}", t["name"], clusters_of(t));
    }
    // ... and a healthy standby alone and a healthy primary alone evaluate every alert silent.
    for who in ["a healthy standby alone", "a healthy primary alone"] {
        let t = tests.iter().find(|t| t["name"].as_str().is_some_and(|n| n.starts_with(who))).unwrap_or_else(|| panic!("no test {who:?}"));
        let silent: Vec<&str> = t["alert_rule_test"]
            .as_array()
            .expect("alert_rule_test")
            .iter()
            .filter(|a| a["exp_alerts"].as_array().is_some_and(Vec::is_empty))
            .map(|a| a["alertname"].as_str().expect("alertname"))
            .collect();
        let unchecked: Vec<&String> = names.iter().filter(|n| !silent.contains(&n.as_str())).collect();
        assert!(unchecked.is_empty(), "{who:?} does not check these stay silent: {unchecked:?}");
    }
}

/// A Prometheus on loopback, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `for:` of every alert in the live test: the real values are minutes.
const TEST_FOR: &str = "3s";

impl Prometheus {
    /// Scrapes `targets` every second as job drctl-controller and evaluates `rules` every
    /// second with every `for:` shortened to [`TEST_FOR`]; keeps its files in `dir`.
    async fn start(dir: &Path, targets: &[String], rules: &[&Rules]) -> Prometheus {
        std::fs::create_dir_all(dir).expect("mkdir");
        let files: Vec<PathBuf> = rules
            .iter()
            .map(|rules| {
                let path = dir.join(rules.file);
                let text = rules_file(rules, |r| {
                    if r.contains_key("for") {
                        r.insert("for".into(), TEST_FOR.into());
                    }
                });
                std::fs::write(&path, text).expect("write rules");
                path
            })
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": files,
            "scrape_configs": [{"job_name": "drctl-controller", "static_configs": [{"targets": targets}]}],
        });
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let addr = format!("127.0.0.1:{}", support::free_port());
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"));
        let log = dir.join("prometheus.log");
        let child = drctl_testbed::procs::spawn(cmd, &log, drctl_testbed::procs::Lifetime::WithParent)
            .unwrap_or_else(|e| panic!("start prometheus (Debian package prometheus): {e}"));
        let p = Prometheus { child, url: format!("http://{addr}"), log };
        let start = Instant::now();
        while reqwest::get(format!("{}/-/ready", p.url)).await.map_or(true, |r| !r.status().is_success()) {
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus not ready:\n{}", drctl_testbed::procs::tail(&p.log));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).expect("url");
        let resp = reqwest::get(url).await.expect("prometheus api");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// Firing alerts as (alertname, cluster or instance).
    async fn firing(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let l = &a["labels"];
                let who = l["cluster"].as_str().or(l["instance"].as_str()).unwrap_or_default();
                (l["alertname"].as_str().unwrap_or_default().to_string(), who.to_string())
            })
            .collect()
    }

    /// Waits until `alert` fires for `who` (a cluster, or a target for DrctlControllerDown).
    async fn wait_firing(&self, alert: &str, who: &str, timeout: Duration, logs: &str) -> Duration {
        let start = Instant::now();
        loop {
            let firing = self.firing().await;
            if firing.iter().any(|(a, w)| a == alert && w == who) {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "{alert} for {who} did not fire within {timeout:?}; firing: {firing:?}\n{logs}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Alerts a healthy, steady pair must not fire (reconcile errors of the start-up may linger).
const QUIET_WHEN_HEALTHY: &[&str] = &[
    "DrctlStandbyNotReplicating",
    "DrctlReplicationLagHigh",
    "DrctlMissedKeys",
    "DrctlDivergedKeys",
    "DrctlFailoverStepStuck",
    "DrctlDNSNotPointingAtPrimary",
    "DrctlBothPrimary",
    "DrctlNoPrimary",
    "DrctlControllerDown",
    "DrctlMetricsAbsent",
    "DrctlClusterMissing",
    "DrctlNoLeader",
    "DrctlLeaderFlapping",
    "DrctlPeerUnreachable",
    "DrctlTopologyInvalid",
];

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_fires_the_right_alerts_when_dns_breaks_and_the_mirror_stops() {
    let mut pair = Pair::start().await;
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    let logs = |ca: &support::pair::Controller, cb: &support::pair::Controller| format!("--- A\n{}\n--- B\n{}", ca.log_tail(), cb.log_tail());
    let steady = Duration::from_secs(90);
    pair.wait(&pair.a, "A primary", steady, &[&ca, &cb], |s| s.role == Some(drctl::topology::Role::Primary)).await;
    pair.wait(&pair.b, "B standby in sync", steady, &[&ca, &cb], |s| {
        s.phase == Some(drctl::topology::Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
    })
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    // One Prometheus sees both clusters (both rule files), and each global has its own with the
    // per-cluster rules only, as gitops/README.md deploys them.
    let (a, b) = (ca.listen.to_string(), cb.listen.to_string());
    let prom = Prometheus::start(&dir.path().join("both"), &[a.clone(), b.clone()], &[&PER_CLUSTER, &PAIR]).await;
    let prom_a = Prometheus::start(&dir.path().join("a"), std::slice::from_ref(&a), &[&PER_CLUSTER]).await;
    let prom_b = Prometheus::start(&dir.path().join("b"), std::slice::from_ref(&b), &[&PER_CLUSTER]).await;

    // Healthy: both targets up with their cluster label, and none of the fault alerts fires, in
    // the Prometheus that sees both nor in either global's own.
    let start = Instant::now();
    loop {
        let mut firing = prom.firing().await;
        firing.extend(prom_a.firing().await);
        firing.extend(prom_b.firing().await);
        let noisy: Vec<_> = firing.iter().filter(|(a, _)| QUIET_WHEN_HEALTHY.contains(&a.as_str())).collect();
        let up = prom.api("/api/v1/query", &[("query", "count(count by (cluster) (drctl_leader == 1))")]).await;
        let both_lead = up["result"][0]["value"][1] == "2";
        // A few evaluations in a row with nothing firing, past every shortened `for:`.
        if noisy.is_empty() && both_lead && start.elapsed() > Duration::from_secs(8) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "a healthy pair fires {noisy:?} (both lead: {both_lead})\n{}", logs(&ca, &cb));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "healthy pair: no fault alert fires (both: {:?}; A alone: {:?}; B alone: {:?})",
        prom.firing().await,
        prom_a.firing().await,
        prom_b.firing().await
    );

    // Every dashboard query runs on the real series; the core panels have data.
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).expect("read dashboard")).expect("dashboard JSON");
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr").replace("$cluster", ".*");
            let data = prom.api("/api/v1/query", &[("query", &expr)]).await;
            let title = panel["title"].as_str().unwrap_or_default();
            let empty = data["result"].as_array().is_none_or(|r| r.is_empty());
            let may_be_empty = ["Unfinished failover step, for", "Failover step durations (last run)", "Firing drctl alerts", "Reconcile errors"];
            assert!(!empty || may_be_empty.contains(&title), "dashboard panel {title:?} has no data: {expr}");
        }
    }

    // The standby never passed a drill: its last passing drill is 1970. A drill by annotation
    // passes and clears the alert.
    let took = prom.wait_firing("DrctlNoRecentPassingDrill", "global-b", Duration::from_secs(30), &logs(&ca, &cb)).await;
    println!("a standby never drilled: DrctlNoRecentPassingDrill fired for global-b after {took:?}");
    assert!(!prom.firing().await.iter().any(|(a, w)| a == "DrctlNoRecentPassingDrill" && w == "global-a"), "the primary is not drilled");
    pair.b.api.kubectl_ok(&["annotate", "drt", support::pair::TOPOLOGY, "drctl.io/drill=alerts-1"]);
    let b = pair
        .wait(&pair.b, "B's drill alerts-1 finished", Duration::from_secs(120), &[&ca, &cb], |s| {
            s.last_drill.as_ref().is_some_and(|d| d.id == "alerts-1" && d.finished_at.is_some())
        })
        .await;
    let drill = b.status.and_then(|s| s.last_drill).expect("lastDrill");
    assert_eq!(drill.passed, Some(true), "{drill:#?}");
    let start = Instant::now();
    while prom.firing().await.iter().any(|(a, w)| a == "DrctlNoRecentPassingDrill" && w == "global-b") {
        assert!(start.elapsed() < Duration::from_secs(30), "DrctlNoRecentPassingDrill still fires after a passing drill\n{}", logs(&ca, &cb));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let q = prom.api("/api/v1/query", &[("query", "drctl_last_drill_success{cluster=\"global-b\"}")]).await;
    assert_eq!(q["result"][0]["value"][1], "1", "{q}");
    println!("drill alerts-1 passed (predicted RTO {:?}s): DrctlNoRecentPassingDrill cleared after {:?}", drill.predicted_rto_seconds, start.elapsed());

    // DNS broken: the platform domain answers an address that is neither VIP.
    pair.pdns.set(&format!("{DOMAIN}."), "A", 30, &["127.0.0.99"]);
    let took = prom.wait_firing("DrctlDNSNotPointingAtPrimary", "global-a", Duration::from_secs(75), &logs(&ca, &cb)).await;
    println!("DNS set to 127.0.0.99 (primary VIP {VIP_A}): DrctlDNSNotPointingAtPrimary fired for global-a after {took:?}");
    assert!(!prom.firing().await.iter().any(|(a, w)| a == "DrctlDNSNotPointingAtPrimary" && w == "global-b"), "only the primary's DNS matters");
    let took = prom_a.wait_firing("DrctlDNSNotPointingAtPrimary", "global-a", Duration::from_secs(30), &logs(&ca, &cb)).await;
    println!("... and in A's own Prometheus after {took:?} more");

    // The standby's mirror stops: the primary's etcd dies.
    pair.a.etcd.kill();
    let took = prom.wait_firing("DrctlStandbyNotReplicating", "global-b", Duration::from_secs(75), &logs(&ca, &cb)).await;
    println!("primary etcd killed: DrctlStandbyNotReplicating fired for global-b after {took:?}");
    let took = prom_b.wait_firing("DrctlStandbyNotReplicating", "global-b", Duration::from_secs(30), &logs(&ca, &cb)).await;
    println!("... and in B's own Prometheus after {took:?} more");
    // Its controller cannot renew its Lease without etcd and exits: its target goes down.
    let took = prom.wait_firing("DrctlControllerDown", &ca.listen.to_string(), Duration::from_secs(75), &logs(&ca, &cb)).await;
    println!("DrctlControllerDown fired for global-a's controller {} after {took:?}", ca.listen);
    let took = prom_a.wait_firing("DrctlControllerDown", &ca.listen.to_string(), Duration::from_secs(30), &logs(&ca, &cb)).await;
    println!("... and in A's own Prometheus after {took:?} more");
    drop((prom, prom_a, prom_b));
}
