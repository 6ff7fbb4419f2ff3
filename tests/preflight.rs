//! `drctl preflight` (the real binary) from the primary of a real pair (etcd + kube-apiserver
//! each, PowerDNS): a healthy pair gives only ok rows and exit 0; one broken dependency at a
//! time (the peer's etcd endpoint, the DNS API key) gives exactly that row failing, with its
//! fix, and exit 2; and the primary stays untouched (DNS record, no drctl key written in its
//! etcd, its DRTopology without status).

use drctl_testsupport as support;

use serde_json::Value;
use support::pair::{Pair, DOMAIN, VIP_A};

/// Runs `drctl preflight --json` against global-a; (exit code, the rows).
fn preflight(pair: &Pair) -> (i32, Vec<Value>) {
    let out = support::drctl()
        .args(["preflight", "--json", "--cluster-name=global-a", "--timeout=3s"])
        .arg(format!("--kubeconfig={}", pair.a.api.kubeconfig.display()))
        .output()
        .expect("run drctl preflight");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl preflight --json\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{stdout}"));
    (out.status.code().unwrap_or(-1), v["rows"].as_array().expect("rows").clone())
}

fn not_ok(rows: &[Value]) -> Vec<(String, String, String)> {
    rows.iter()
        .filter(|r| r["outcome"] != "ok")
        .map(|r| {
            (r["check"].as_str().unwrap_or("").to_string(), r["target"].as_str().unwrap_or("").to_string(), r["outcome"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

fn checks(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["check"].as_str().unwrap_or("")).collect()
}

/// What a preflight must not change on the primary.
async fn assert_primary_untouched(pair: &Pair) {
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), [VIP_A], "the platform record");
    let mut etcd = pair.a.etcd.client().await;
    let drctl_keys = etcd.get("drctl/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.expect("read etcd");
    assert_eq!(drctl_keys.count(), 0, "preflight wrote into the primary's etcd");
    let topo = pair.status(&pair.a).await.expect("topology");
    assert!(topo.status.is_none(), "preflight wrote the DRTopology's status: {:?}", topo.status);
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_passes_on_a_healthy_pair_and_names_exactly_the_broken_dependency() {
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    // What the pair's restarts select, so that no selector comes back empty.
    pair.a.api.apply_stdin(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cluster-transformer, namespace: cpaas-system, labels: {service_name: cluster-transformer}}\n\
         spec:\n  selector: {matchLabels: {app: ct}}\n  template:\n    metadata: {labels: {app: ct}}\n    spec: {containers: [{name: c, image: x}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: vmselect-0, namespace: cpaas-system, labels: {service_name: vmselect}}\nspec: {containers: [{name: c, image: x}]}\n",
    );

    let (code, rows) = preflight(&pair);
    assert_eq!(not_ok(&rows), vec![], "a healthy pair");
    assert_eq!(code, 0);
    for want in [
        "etcd.read",
        "etcd.write",
        "etcd.members",
        "etcd.versions",
        "peer.apiserver",
        "clock.offset",
        "peer.identity",
        "kubernetes.versions",
        "dns.provider",
        "dns.resolver",
        "restart.selector",
        "encryption.config",
    ] {
        assert!(checks(&rows).contains(&want), "no {want} row: {rows:#?}");
    }
    assert_eq!(rows.iter().filter(|r| r["check"] == "etcd.read").count(), 2, "own and peer etcd");
    assert_primary_untouched(&pair).await;

    // The peer's etcd endpoint is wrong (nothing listens there) in global-a's topology.
    let wrong = format!("http://127.0.0.1:{}", support::free_port());
    let yaml = pair.topology_yaml("global-a").replace(&format!("endpoints: [{}]", pair.b.etcd.client_url), &format!("endpoints: [{wrong}]"));
    assert!(yaml.contains(&wrong), "the peer's endpoint replaced");
    pair.apply(&pair.a, &yaml);
    let (code, rows) = preflight(&pair);
    assert_eq!(not_ok(&rows), vec![("etcd.read".to_string(), "global-b (peer)".to_string(), "fail".to_string())]);
    assert_eq!(code, 2);
    let row = rows.iter().find(|r| r["outcome"] == "fail").expect("the failing row");
    assert!(row["fix"].as_str().unwrap_or("").contains("spec.clusters[name=global-b].etcd.endpoints"), "{row:#}");
    assert_primary_untouched(&pair).await;
    pair.apply(&pair.a, &pair.topology_yaml("global-a"));

    // The PowerDNS API key is wrong.
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", "pdns-api"]);
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "pdns-api", "--from-literal=apiKey=not-the-key"]);
    let (code, rows) = preflight(&pair);
    assert_eq!(not_ok(&rows), vec![("dns.provider".to_string(), "powerdns".to_string(), "fail".to_string())]);
    assert_eq!(code, 2);
    let row = rows.iter().find(|r| r["outcome"] == "fail").expect("the failing row");
    assert!(row["detail"].as_str().unwrap_or("").contains("the API key was rejected"), "{row:#}");
    assert!(!row.to_string().contains("not-the-key"), "the key itself is never printed: {row:#}");
    assert!(row["fix"].as_str().unwrap_or("").contains("spec.dns.powerdns"), "{row:#}");
    // The table an operator reads says the same.
    let out = support::drctl()
        .args(["preflight", "--cluster-name=global-a"])
        .arg(format!("--kubeconfig={}", pair.a.api.kubeconfig.display()))
        .output()
        .expect("run drctl preflight");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl preflight --cluster-name global-a\n{table}");
    assert_eq!(out.status.code(), Some(2));
    let fail: Vec<&str> = table.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(fail.len() == 1 && fail[0].contains("dns.provider"), "{table}");
    assert!(table.contains("      fix: fix spec.dns.powerdns") && table.contains("checks failed: dns.provider powerdns"), "{table}");
    assert_primary_untouched(&pair).await;
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", "pdns-api"]);
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "pdns-api", &format!("--from-literal=apiKey={}", pair.pdns.api_key)]);

    // The peer's kubeconfig Secret holds this global's own kubeconfig.
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", "global-b-kubeconfig"]);
    let own = format!("--from-file=kubeconfig={}", pair.a.api.kubeconfig.display());
    pair.a.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "global-b-kubeconfig", &own]);
    let (code, rows) = preflight(&pair);
    assert_eq!(not_ok(&rows), vec![("peer.identity".to_string(), "global-b".to_string(), "fail".to_string())]);
    assert_eq!(code, 2);
    let row = rows.iter().find(|r| r["outcome"] == "fail").expect("the failing row");
    assert!(row["detail"].as_str().unwrap_or("").contains("reaches this global (global-a), not global-b"), "{row:#}");
    assert_primary_untouched(&pair).await;
}

/// The controller's scheduled preflight: `Preflight` True on a healthy pair, False naming the
/// failing check once the standby's DNS API key is wrong, True again once it is fixed.
#[tokio::test(flavor = "multi_thread")]
async fn the_controller_keeps_a_preflight_condition_current() {
    use drctl::topology::{DRTopologyStatus, Phase, Role};
    use std::time::Duration;
    let preflight =
        |s: &DRTopologyStatus| s.conditions.iter().find(|c| c.type_ == "Preflight").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &["--preflight-interval=2s"]);
    let cb = pair.controller(&pair.b, &["--preflight-interval=2s"]);
    let t = Duration::from_secs(90);
    pair.wait(&pair.a, "A primary with Preflight True", t, &[&ca, &cb], |s| {
        s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady) && preflight(s).is_some_and(|(st, _, _)| st == "True")
    })
    .await;
    let b = pair.wait(&pair.b, "B standby with Preflight True", t, &[&ca, &cb], |s| preflight(s).is_some_and(|(st, _, _)| st == "True")).await;
    eprintln!("B: {:?}", b.status.as_ref().and_then(preflight));

    pair.b.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", "pdns-api"]);
    pair.b.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "pdns-api", "--from-literal=apiKey=not-the-key"]);
    let b = pair.wait(&pair.b, "B Preflight False", t, &[&ca, &cb], |s| preflight(s).is_some_and(|(st, _, _)| st == "False")).await;
    let (_, reason, message) = b.status.as_ref().and_then(preflight).expect("condition");
    assert_eq!(reason, "ChecksFailed");
    assert!(message.starts_with("1 of ") && message.contains("dns.provider powerdns"), "{message}");
    assert!(!message.contains("not-the-key"), "{message}");
    // The primary is not touched by its standby's broken dependency.
    assert_eq!(support::dns::dig(pair.pdns.dns, DOMAIN, "A"), [VIP_A]);

    pair.b.api.kubectl_ok(&["-n", "drctl-system", "delete", "secret", "pdns-api"]);
    pair.b.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "pdns-api", &format!("--from-literal=apiKey={}", pair.pdns.api_key)]);
    pair.wait(&pair.b, "B Preflight True again", t, &[&ca, &cb], |s| preflight(s).is_some_and(|(st, _, _)| st == "True")).await;
}

/// Hooks are probed, never run: a webhook gets a HEAD (a receiver that answers is ok, one that
/// is down fails), a Job hook a server-side dry-run create (a missing namespace fails); no Job is
/// created and the receiver sees no POST.
#[tokio::test(flavor = "multi_thread")]
async fn preflight_probes_hooks_without_running_them() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let methods = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = methods.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let _ = reader.read_line(&mut line);
            seen.lock().expect("lock").push(line.split_whitespace().next().unwrap_or("").to_string());
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let dead = support::free_port();
    let mut pair = Pair::start().await;
    let job = "{template: {spec: {restartPolicy: Never, containers: [{name: c, image: x}]}}}";
    pair.failover_extra = format!(
        "    preHooks:\n    - name: vip-forwarding\n      webhook: {{url: \"http://127.0.0.1:{port}/hook\"}}\n    - name: notify-down\n      webhook: {{url: \"http://127.0.0.1:{dead}/hook\"}}\n    postHooks:\n    - name: job-here\n      job: {{namespace: drctl-system, template: {job}}}\n    - name: job-nowhere\n      job: {{namespace: no-such-namespace, template: {job}}}\n"
    );
    pair.apply_both("global-a");
    let (code, rows) = preflight(&pair);
    let hooks: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["check"] == "hook")
        .map(|r| (r["target"].as_str().unwrap_or("").to_string(), r["outcome"].as_str().unwrap_or("").to_string()))
        .collect();
    let want: Vec<(String, String)> = [("vip-forwarding", "ok"), ("notify-down", "fail"), ("job-here", "ok"), ("job-nowhere", "fail")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(hooks, want, "{rows:#?}");
    assert_eq!(code, 2);
    assert_eq!(*methods.lock().expect("lock"), ["HEAD"], "the receiver saw one HEAD and no POST");
    let jobs = pair.a.api.kubectl_ok(&["get", "jobs", "-A", "-o", "name"]);
    assert_eq!(jobs.trim(), "", "no Job created");
}
