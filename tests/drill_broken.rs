//! The drill by annotation (`drctl.io/drill=<id>` on the standby's DRTopology) on a real pair
//! with controllers, both apiservers encrypting Secrets at rest with one key: a healthy pair
//! passes every step (the replicated Secret decrypted by the standby's apiserver); then one
//! dependency is broken at a time (a different encryption key on the standby, a wrong DNS API
//! key, a verify resolver down, a workload cluster's kubeconfig with credentials its apiserver
//! rejects, a hook endpoint down) and the drill reports exactly that failure: the step it failed
//! and the preflight row naming the dependency. DNS is rehearsed on the drill name and the
//! webhook hook called in drill mode. After each, the primary is untouched: its DNS record
//! unchanged, still the steady primary of the same term, no fence, no failover, no demotion. A
//! drill id runs once, also across a controller restart, and one the controller was killed
//! during is recorded as interrupted, not run again; `drctl status` shows the last drill.

use drctl_testsupport as support;

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drctl::topology::{DrillStatus, Phase, Role};
use support::pair::{Controller, Pair, DOMAIN, TOPOLOGY, VIP_A, VIP_B};

/// A webhook receiver answering 200 until stopped; stopped, its port refuses connections.
struct HookServer {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Each request's line and headers, lower-cased.
    seen: Arc<Mutex<Vec<String>>>,
    /// How long a POST waits before its answer, in milliseconds.
    post_delay: Arc<AtomicU64>,
}

impl HookServer {
    fn start() -> HookServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let post_delay = Arc::new(AtomicU64::new(0));
        let delay = post_delay.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let mut head = String::new();
                        let mut reader = BufReader::new(&stream);
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                            head.push_str(&line.to_lowercase());
                            line.clear();
                        }
                        let post = head.starts_with("post ");
                        if let Ok(mut s) = record.lock() {
                            s.push(head);
                        }
                        if post {
                            std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
                        }
                        let _ = (&stream).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HookServer { port, stop, seen, post_delay }
    }

    /// The POSTs received so far.
    fn posts(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.iter().filter(|h| h.starts_with("post ")).cloned().collect()).unwrap_or_default()
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // The listener is dropped within one poll.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Secrets encrypted with AES-CBC `key` (base64 of 32 bytes); plaintext still read (the
/// Secrets written before encryption was turned on).
fn write_encryption_config(path: &Path, key: &str) {
    let config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: {key}\n  - identity: {{}}\n"
    );
    std::fs::write(path, config).expect("write encryption config");
}

struct Bed {
    pair: Pair,
    ca: Controller,
    cb: Controller,
    hook: HookServer,
    /// The primary's term before any drill.
    term: i64,
    drills: usize,
}

impl Bed {
    /// Annotates the standby's DRTopology with a new drill id and waits for its report.
    async fn drill(&mut self) -> DrillStatus {
        self.drills += 1;
        let id = format!("case-{}", self.drills);
        self.pair.b.api.kubectl_ok(&["annotate", "--overwrite", "drt", TOPOLOGY, &format!("drctl.io/drill={id}")]);
        let t = self
            .pair
            .wait(&self.pair.b, &format!("drill {id} finished"), Duration::from_secs(150), &[&self.ca, &self.cb], |s| {
                s.last_drill.as_ref().is_some_and(|d| d.id == id && d.finished_at.is_some())
            })
            .await;
        let d = t.status.and_then(|s| s.last_drill).expect("lastDrill");
        eprintln!("drill {id}: {}", serde_json::to_string_pretty(&d).unwrap_or_default());
        d
    }

    /// What a failover must not be shown by a drill: the primary as it was.
    async fn assert_primary_untouched(&self) {
        assert_eq!(support::dns::dig(self.pair.pdns.dns, DOMAIN, "A"), [VIP_A], "the platform record");
        let a = self.pair.status(&self.pair.a).await.and_then(|t| t.status).expect("A's status");
        assert_eq!((a.role, a.phase, a.term), (Some(Role::Primary), Some(Phase::Steady), self.term), "A the steady primary of the same term");
        assert!(a.failover.is_none() && a.demotion.is_none(), "no failover, no demotion: {a:?}");
        let fences = self.pair.a.api.kubectl_ok(&["get", "validatingadmissionpolicies", "-o", "name"]);
        assert_eq!(fences.trim(), "", "the primary is not fenced");
    }

    /// Drills and asserts it failed at exactly `steps` with exactly the preflight `finding`
    /// (check, target) failing, named in what a failover would fail at.
    async fn assert_fails_exactly(&mut self, steps: &[&str], finding: (&str, &str)) -> DrillStatus {
        let d = self.drill().await;
        assert_eq!(d.passed, Some(false), "{d:#?}");
        let failed: Vec<&str> = d.steps.iter().filter(|s| s.outcome != "ok").map(|s| s.name.as_str()).collect();
        assert_eq!(failed, steps, "the failed steps: {d:#?}");
        assert!(d.steps.iter().filter(|s| s.outcome != "ok").all(|s| s.outcome == "fail"), "{d:#?}");
        let findings: Vec<(&str, &str, &str)> = d.findings.iter().map(|f| (f.check.as_str(), f.target.as_str(), f.outcome.as_str())).collect();
        assert_eq!(findings, [(finding.0, finding.1, "fail")], "exactly that preflight row: {d:#?}");
        let named = format!("{} {}", finding.0, finding.1);
        assert!(d.failures.iter().any(|f| f.starts_with("preflight: 1 of") && f.contains(&named)), "{named} in {:?}", d.failures);
        self.assert_primary_untouched().await;
        d
    }

    fn replace_secret(&self, name: &str, data: &str) {
        let b = &self.pair.b.api;
        b.kubectl_ok(&["-n", "drctl-system", "delete", "secret", name]);
        b.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", name, data]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_names_exactly_the_one_broken_dependency_and_leaves_the_primary_untouched() {
    let hook = HookServer::start();
    let mut pair = Pair::start().await;
    pair.failover_extra = format!("    preHooks:\n    - name: vip-forwarding\n      webhook: {{url: \"http://127.0.0.1:{}/hook\", drill: true}}\n", hook.port);
    pair.spec_extra = "  workloadClusters:\n  - name: business-1\n    kubeconfigSecretRef: {name: business-1-kubeconfig, namespace: drctl-system}\n".into();
    // Each global reaches a workload cluster (its own apiserver stands in for one), its Secret
    // written before encryption at rest is on.
    for g in [&pair.a, &pair.b] {
        let kc = format!("--from-file=kubeconfig={}", g.api.kubeconfig.display());
        g.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "business-1-kubeconfig", &kc]);
    }
    // Both apiservers encrypt Secrets with one key: the files the topology names.
    let key = support::dns::random_b64(32);
    let (enc_a, enc_b) = (pair.dir.path().join("encryption-a.conf"), pair.dir.path().join("encryption-b.conf"));
    write_encryption_config(&enc_a, &key);
    write_encryption_config(&enc_b, &key);
    pair.a.api.restart_encrypting(&enc_a, true);
    pair.b.api.restart_encrypting(&enc_b, true);
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    pair.a.api.kubectl_ok(&["create", "namespace", "apps"]);
    pair.a.api.kubectl_ok(&["-n", "apps", "create", "secret", "generic", "db-creds", "--from-literal=password=drill"]);
    let mut etcd_a = pair.a.etcd.client().await;
    let raw = etcd_a.get("/registry/secrets/apps/db-creds", None).await.expect("read etcd");
    assert!(raw.kvs().first().is_some_and(|kv| kv.value().starts_with(b"k8s:enc:aescbc:v1:key1:")), "the primary encrypts Secrets at rest");
    let a = pair.ready_for_drill(&[&ca, &cb]).await;
    let term = a.status.map(|s| s.term).unwrap_or_default();
    let mut bed = Bed { pair, ca, cb, hook, term, drills: 0 };

    // Healthy: every step passes; the replicated Secret is decrypted by the standby's apiserver.
    let d = bed.drill().await;
    assert_eq!(d.passed, Some(true), "{d:#?}");
    let steps: Vec<(&str, &str)> = d.steps.iter().map(|s| (s.name.as_str(), s.outcome.as_str())).collect();
    assert_eq!(steps, [("preflight", "ok"), ("catch-up", "ok"), ("check", "ok"), ("read-back", "ok"), ("dns", "ok"), ("hooks", "ok")], "{d:#?}");
    assert!(d.findings.is_empty() && d.failures.is_empty(), "{d:#?}");
    assert!(d.steps[3].detail.contains("Secrets included"), "{}", d.steps[3].detail);
    // DNS set and verified on the drill name, never the platform name (checked below); the
    // webhook hook called in drill mode.
    assert_eq!(support::dns::dig(bed.pair.pdns.dns, &format!("drctl-drill.{DOMAIN}"), "A"), [VIP_B], "the drill name set to the standby's VIP");
    let posts = bed.hook.posts();
    assert!(posts.len() == 1 && posts[0].starts_with("post /hook") && posts[0].contains("x-drctl-drill: true\r\n"), "one POST in drill mode: {posts:?}");
    assert!(d.predicted_rto_seconds.is_some_and(|s| s >= 30.0) && d.rpo_revisions.is_some() && d.rpo_seconds.is_some(), "{d:#?}");
    assert_eq!(d.last_passed_at, d.finished_at);
    let events = bed.pair.b.api.kubectl_ok(&["get", "events", "-A", "--field-selector", "reason=DrillPassed", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("drill case-1 passed: predicted RTO"), "{events}");
    bed.assert_primary_untouched().await;

    // The id ran once: a restarted controller does not run it again.
    bed.cb.restart();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let again = bed.pair.status(&bed.pair.b).await.and_then(|t| t.status).and_then(|s| s.last_drill).expect("lastDrill");
    assert_eq!((again.id.as_str(), &again.started_at, &again.finished_at), ("case-1", &d.started_at, &d.finished_at), "not run again");
    // drctl status shows it.
    let out = support::drctl()
        .arg("status")
        .arg(format!("--cluster=global-a={}", bed.pair.a.api.kubeconfig.display()))
        .arg(format!("--cluster=global-b={}", bed.pair.b.api.kubeconfig.display()))
        .output()
        .expect("run drctl status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ drctl status\n{text}");
    assert!(text.contains("Last drill on global-b (id case-1)") && text.contains("passed") && text.contains("read-back  ok"), "{text}");

    // A different encryption key on the standby: the copied Secret no longer decrypts there
    // (nor lists: that apiserver never becomes ready, but serves).
    bed.cb.kill();
    write_encryption_config(&enc_b, &support::dns::random_b64(32));
    bed.pair.b.api.restart_encrypting(&enc_b, false);
    bed.cb.restart();
    let d = bed.assert_fails_exactly(&["preflight", "read-back"], ("encryption.config", "global-b / global-a")).await;
    let read_back = &d.steps[3].detail;
    assert!(read_back.contains("failed: secrets/db-creds"), "{read_back}");
    bed.cb.kill();
    write_encryption_config(&enc_b, &key);
    bed.pair.b.api.restart_encrypting(&enc_b, true);
    bed.cb.restart();

    // The DNS API key is wrong on the standby.
    bed.replace_secret("pdns-api", "--from-literal=apiKey=not-the-key");
    let d = bed.assert_fails_exactly(&["preflight", "dns"], ("dns.provider", "powerdns")).await;
    assert!(!serde_json::to_string(&d).unwrap_or_default().contains("not-the-key"), "the key is never printed");
    bed.replace_secret("pdns-api", &format!("--from-literal=apiKey={}", bed.pair.pdns.api_key));

    // A verify resolver is down (the standby's topology names one where nothing answers).
    let dead = format!("127.0.0.1:{}", support::free_port());
    let yaml = bed.pair.topology_yaml("global-a");
    let broken = yaml.replace(&format!("resolvers: [\"{}\"]", bed.pair.pdns.dns), &format!("resolvers: [\"{dead}\"]"));
    assert_ne!(broken, yaml, "the resolver replaced");
    bed.pair.apply(&bed.pair.b, &broken);
    bed.assert_fails_exactly(&["preflight", "dns"], ("dns.resolver", &dead)).await;
    bed.pair.apply(&bed.pair.b, &yaml);

    // The workload cluster's kubeconfig holds credentials its apiserver rejects (a client
    // certificate of another CA, as after the cluster's CA was rotated).
    let other = tempfile::tempdir().expect("tempdir");
    let foreign = drctl_testbed::procs::ApiServer::prepare(other.path(), "http://127.0.0.1:1").expect("another PKI");
    let foreign = std::fs::read_to_string(&foreign.kubeconfig).expect("read kubeconfig");
    let own = std::fs::read_to_string(&bed.pair.b.api.kubeconfig).expect("read kubeconfig");
    let user = |kc: &str| kc.lines().filter(|l| l.contains("client-certificate-data") || l.contains("client-key-data")).collect::<Vec<_>>().join("\n");
    let rejected = own.replace(&user(&own), &user(&foreign));
    assert_ne!(rejected, own, "the credentials replaced");
    let path = other.path().join("rejected.kubeconfig");
    std::fs::write(&path, rejected).expect("write kubeconfig");
    bed.replace_secret("business-1-kubeconfig", &format!("--from-file=kubeconfig={}", path.display()));
    let d = bed.assert_fails_exactly(&["preflight"], ("workload.cluster", "business-1")).await;
    assert!(d.findings[0].fix.as_deref().unwrap_or("").contains("business-1-kubeconfig"), "{d:#?}");
    bed.replace_secret("business-1-kubeconfig", &format!("--from-file=kubeconfig={}", bed.pair.b.api.kubeconfig.display()));

    // The controller killed during a drill (its hook call held for 30 s): the restarted one
    // records it as interrupted and does not run it again (the receiver sees no second POST).
    bed.hook.post_delay.store(30_000, Ordering::SeqCst);
    let before = bed.hook.posts().len();
    bed.pair.b.api.kubectl_ok(&["annotate", "--overwrite", "drt", TOPOLOGY, "drctl.io/drill=killed-during"]);
    let start = std::time::Instant::now();
    while bed.hook.posts().len() == before {
        assert!(start.elapsed() < Duration::from_secs(60), "the drill's hook call never came\n{}", bed.cb.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let running = bed.pair.status(&bed.pair.b).await.and_then(|t| t.status).and_then(|s| s.last_drill).expect("lastDrill");
    assert_eq!((running.id.as_str(), running.finished_at.as_ref()), ("killed-during", None), "recorded as running before it ran");
    bed.cb.kill();
    bed.cb.restart();
    let t = bed
        .pair
        .wait(&bed.pair.b, "the interrupted drill recorded", Duration::from_secs(90), &[&bed.ca, &bed.cb], |s| {
            s.last_drill.as_ref().is_some_and(|d| d.id == "killed-during" && d.finished_at.is_some())
        })
        .await;
    let d = t.status.and_then(|s| s.last_drill).expect("lastDrill");
    assert_eq!(d.passed, Some(false), "{d:#?}");
    assert!(d.failures.len() == 1 && d.failures[0].starts_with("interrupted: the controller stopped"), "{d:#?}");
    assert_eq!(d.last_passed_at, running.last_passed_at, "the last pass is kept");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(bed.hook.posts().len(), before + 1, "not run again");
    bed.hook.post_delay.store(0, Ordering::SeqCst);
    bed.assert_primary_untouched().await;

    // The hook's endpoint is down.
    bed.hook.stop();
    bed.assert_fails_exactly(&["preflight", "hooks"], ("hook", "vip-forwarding")).await;

    // Asked of the primary: recorded as failed, nothing run there.
    bed.pair.a.api.kubectl_ok(&["annotate", "drt", TOPOLOGY, "drctl.io/drill=on-the-primary"]);
    let a = bed
        .pair
        .wait(&bed.pair.a, "A's drill recorded", Duration::from_secs(60), &[&bed.ca, &bed.cb], |s| {
            s.last_drill.as_ref().is_some_and(|d| d.id == "on-the-primary" && d.finished_at.is_some())
        })
        .await;
    let d = a.status.and_then(|s| s.last_drill).expect("lastDrill");
    assert_eq!(d.passed, Some(false), "{d:#?}");
    assert!(d.steps.is_empty() && d.failures.len() == 1 && d.failures[0].starts_with("global-a is spec.primary"), "{d:#?}");
    bed.assert_primary_untouched().await;
}
