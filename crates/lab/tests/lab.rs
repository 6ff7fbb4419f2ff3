//! The DR lab end to end, through the `drctl lab` commands a newcomer runs: a planned switchover
//! and back (once with a webhook-style refresh, once by Argo CD's polling alone), and a disaster
//! (the primary dies first) followed by the old primary's recovery. Everything is real: two
//! globals each with three mTLS etcd members behind a load balancer, kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes,
//! its own Argo CD (redis, repo-server, application-controller) and a `drctl controller`;
//! PowerDNS and a Git repo; in a temp dir, stopped at the end even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drctl_lab::flip::{FlipReport, Scenario};
use drctl_lab::{procs, LabState, DOMAIN};
use serde_json::Value;

/// The `drctl` binary next to the `drctl-lab` under test, as a user runs it: `drctl lab ...`
/// execs that drctl-lab. Cargo builds a dependency's binaries only when asked.
fn drctl() -> Command {
    let lab = Path::new(env!("CARGO_BIN_EXE_drctl-lab"));
    let drctl = lab.with_file_name("drctl");
    assert!(drctl.is_file(), "no {}: run `cargo build --workspace --bins` first (make test does)", drctl.display());
    Command::new(drctl)
}

fn kubectl() -> PathBuf {
    procs::kube_bin_dir().unwrap_or_else(|e| panic!("kube binaries: {e}")).join("kubectl")
}

/// A lab in a temp dir; `drctl lab down` runs on drop, also on panic.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn up() -> Lab {
        let lab = Lab { dir: tempfile::tempdir().expect("tempdir") };
        lab.run(&["up"]);
        lab
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `drctl lab CMD --dir DIR`, which must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out: Output = drctl().arg("lab").args(args).arg("--dir").arg(self.path()).output().expect("run drctl lab");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "drctl lab {args:?} failed:\n{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), self.logs());
        stdout
    }

    fn state(&self) -> LabState {
        LabState::load(self.path()).expect("read lab.json").expect("a lab")
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.run(&["status", "--json"])).expect("status JSON")
    }

    /// `drctl status --lab DIR --json`: (exit code, the document).
    fn drctl_status(&self) -> (Option<i32>, Value) {
        let out = drctl().args(["status", "--json", "--lab"]).arg(self.path()).output().expect("run drctl status");
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("drctl status --json ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), doc)
    }

    fn kubectl(&self, cluster: &str, args: &[&str]) -> Output {
        let state = self.state();
        let c = state.cluster(cluster).expect("cluster");
        std::process::Command::new(kubectl()).arg(format!("--kubeconfig={}", c.api.kubeconfig.display())).args(args).output().expect("run kubectl")
    }

    /// Creates ConfigMap `apps/NAME` with `value` on `cluster`.
    fn put(&self, cluster: &str, name: &str, value: &str) {
        let _ = self.kubectl(cluster, &["create", "namespace", "apps"]);
        let out = self.kubectl(cluster, &["-n", "apps", "create", "configmap", name, &format!("--from-literal=value={value}")]);
        assert!(out.status.success(), "create configmap on {cluster}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until ConfigMap `apps/NAME` on `cluster` holds `value`.
    fn wait_for(&self, cluster: &str, name: &str, value: &str, timeout: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            let out = self.kubectl(cluster, &["-n", "apps", "get", "configmap", name, "-o", "jsonpath={.data.value}"]);
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && last == value {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("configmap apps/{name} on {cluster} is {last:?}, not {value:?}, after {timeout:?}\n{}", self.logs());
    }

    fn last_flip(&self) -> FlipReport {
        drctl_lab::flip::read_reports(self.path()).pop().expect("a flip report")
    }

    fn dig(&self) -> Vec<String> {
        procs::dig(self.state().dns.server, DOMAIN, "A").unwrap_or_else(|e| panic!("{e}"))
    }

    fn logs(&self) -> String {
        let state = self.state();
        let mut s = String::new();
        for c in &state.clusters {
            for log in [c.controller.log.clone(), c.supervisor_log.clone(), c.platform.log("argocd-application-controller")] {
                s.push_str(&format!("--- {}\n{}\n", log.display(), procs::tail(&log)));
            }
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = drctl().args(["lab", "down", "--dir"]).arg(self.path()).output();
    }
}

/// `drctl lab ARGS` runs this package's drctl-lab with ARGS: its help, its errors.
#[test]
fn drctl_lab_runs_the_drctl_lab_binary() {
    let help = drctl().args(["lab", "--help"]).output().expect("run drctl lab --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "drctl lab --help: {}", String::from_utf8_lossy(&help.stderr));
    for cmd in ["up", "flip", "disaster", "recover", "drill", "status", "down"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(cmd)), "drctl lab --help lists {cmd}:\n{text}");
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let out = drctl().args(["lab", "status", "--dir"]).arg(empty.path()).output().expect("run drctl lab status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("run `drctl lab up --dir"), "drctl-lab's own error: {stderr}");
}

fn cluster<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["clusters"].as_array().expect("clusters").iter().find(|c| c["name"] == name).expect("cluster in status")
}

/// Every component of `name` runs, and the control plane's own parts never had to be restarted.
fn assert_whole_platform(status: &Value, name: &str) {
    let c = cluster(status, name);
    let components = c["components"].as_array().expect("components");
    let names: Vec<&str> = components.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd-0",
            "etcd-1",
            "etcd-2",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "redis",
            "argocd-repo-server",
            "argocd-application-controller",
            "drctl-controller"
        ],
        "{status}"
    );
    for p in components {
        assert_eq!(p["running"], true, "{name}: {p} is not running: {status}");
        assert!(p["pid"].as_u64().is_some_and(|pid| pid > 0), "{p}");
        if p["name"] != "drctl-controller" {
            assert_eq!(p["restarts"], 0, "{name}: {p} exited: {status}");
        }
    }
    // Three mTLS members, all healthy, behind the load balancer the topology names.
    let e = &c["etcd"];
    assert_eq!((e["loadBalancerUp"].as_bool(), e["members"].as_u64(), e["membersHealthy"].as_u64()), (Some(true), Some(3), Some(3)), "{status}");
}

/// What `lab status --json` says of `name`'s Argo CD: synced to `commit`, and our health.lua's
/// verdict on the DRTopology.
fn assert_argo_synced(status: &Value, name: &str, commit: &str) {
    let a = &cluster(status, name)["argocd"];
    assert_eq!((a["application"].as_str(), a["sync"].as_str(), a["revision"].as_str()), (Some("drtopology"), Some("Synced"), Some(commit)), "{status}");
    assert!(a["health"].is_string() && a["healthMessage"].is_string(), "{status}");
}

const MIRROR: Duration = Duration::from_secs(30);

#[test]
fn planned_switchover_by_pull_request() {
    let lab = Lab::up();
    let s = lab.status();
    assert_eq!((s["primary"].as_str(), s["dnsAnswer"].as_str()), (Some("global-a"), Some("127.0.0.10")), "{s}");
    // The seeded workloads were mirrored: the standby has the custom resources.
    let out = lab.kubectl("global-b", &["-n", "team-a", "get", "widgets.example.com", "blue", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3", "seeded Widget on the standby: {}", String::from_utf8_lossy(&out.stderr));

    assert_whole_platform(&s, "global-a");
    assert_whole_platform(&s, "global-b");
    // Pods become Ready on kwok's nodes: the failover's restart target is a real rollout.
    let out = lab.kubectl("global-a", &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True True", "global-a's kwok nodes are Ready");

    // A drill on the standby first: it passes, and nothing moves.
    let drilled = lab.run(&["drill"]);
    assert!(drilled.contains("Drill lab-") && drilled.contains("on global-b") && drilled.contains("passed"), "{drilled}");
    assert!(drilled.contains("predicted RTO") && drilled.contains("catch-up") && drilled.contains("read-back"), "{drilled}");
    assert_eq!(lab.dig(), vec!["127.0.0.10"], "a drill never moves the platform name");
    let s = lab.status();
    let (a, b) = (cluster(&s, "global-a"), cluster(&s, "global-b"));
    assert_eq!((a["role"].as_str(), b["role"].as_str()), (Some("Primary"), Some("Standby")), "{s}");

    lab.put("global-a", "before-flip", "written on global-a");
    let shown = lab.run(&["flip"]);
    assert!(shown.contains("global-b's Argo CD synced the merge"), "{shown}");
    assert!(shown.contains("asked global-a's Argo CD to refresh"), "{shown}");
    assert!(shown.contains("Timeline") && shown.contains("RTO (planned)"), "{shown}");

    // DNS, roles, phases and missed keys, read live.
    let s = lab.status();
    assert_eq!(s["primary"], "global-b", "{s}");
    assert_eq!(s["dnsAnswer"], "127.0.0.20", "{s}");
    assert_eq!(lab.dig(), vec!["127.0.0.20"], "what a plain DNS client sees");
    let (a, b) = (cluster(&s, "global-a"), cluster(&s, "global-b"));
    assert_eq!((a["role"].as_str(), a["phase"].as_str()), (Some("Standby"), Some("Steady")), "{s}");
    assert_eq!((b["role"].as_str(), b["phase"].as_str()), (Some("Primary"), Some("Steady")), "{s}");
    assert_eq!(a["missedKeys"], 0, "{s}");
    assert_eq!((a["vip"].as_str(), b["vip"].as_str()), (Some("127.0.0.10"), Some("127.0.0.20")));

    // Nothing written before the flip is lost; the mirror now runs the other way.
    lab.wait_for("global-b", "before-flip", "written on global-a", Duration::from_secs(5));
    lab.put("global-b", "after-flip", "written on global-b");
    lab.wait_for("global-a", "after-flip", "written on global-b", MIRROR);

    // The flip is a merged pull request, and the audit trail names it.
    let r = lab.last_flip();
    assert_eq!((r.scenario, r.from.as_str(), r.to.as_str()), (Scenario::Planned, "global-a", "global-b"));
    let repo = git2::Repository::open(&lab.state().repo).expect("open repo");
    let main = repo.find_branch("main", git2::BranchType::Local).expect("main").get().peel_to_commit().expect("commit");
    assert_eq!(main.id().to_string(), r.merge_commit);
    assert_eq!(main.parent_count(), 2, "merged with a merge commit, as a pull request");
    assert_eq!(main.parent_id(1).expect("second parent").to_string(), r.promote_commit);
    let history = drctl::gitops::history(&lab.state().repo, Path::new(drctl::gitops::DEFAULT_FILE)).expect("history");
    let newest = history.first().expect("history entry");
    assert_eq!((newest.to.as_str(), newest.commit.as_str()), ("global-b", r.merge_commit.as_str()), "{history:?}");
    assert_eq!(newest.proposed_in.as_deref(), Some(r.promote_commit.as_str()), "{history:?}");
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"Done"), "{names:?}");
    assert!(r.rto_seconds > 0.0 && r.rto_seconds <= r.merge_to_done_seconds, "{r:?}");
    assert!(r.refreshed && r.argo_synced_at.contains_key("global-a") && r.argo_synced_at.contains_key("global-b"), "{r:?}");
    let s = lab.status();
    assert_argo_synced(&s, "global-a", &r.merge_commit);
    assert_argo_synced(&s, "global-b", &r.merge_commit);
    assert_whole_platform(&s, "global-a");
    assert_whole_platform(&s, "global-b");
    // drctl status reads the same pair through the kubeconfigs, Argo CD's Applications included.
    let (code, st) = lab.drctl_status();
    assert_eq!(code, Some(0), "{st:#}");
    assert_eq!(
        (st["specPrimary"].as_str(), st["dns"]["pointsAt"].as_str(), st["lastFailoverRecordedBy"].as_str()),
        (Some("global-b"), Some("global-b"), Some("global-b")),
        "{st:#}"
    );
    for c in st["clusters"].as_array().expect("clusters") {
        let a = &c["argocd"];
        assert_eq!((a["sync"].as_str(), a["revision"].as_str()), (Some("Synced"), Some(r.merge_commit.as_str())), "{st:#}");
        assert!(a["health"].is_string() && a["healthMessage"].is_string(), "{st:#}");
    }
    eprintln!("planned switchover RTO {:.2}s (merge -> Done {:.2}s, webhook-style refresh)", r.rto_seconds, r.merge_to_done_seconds);

    // And back, with Argo CD's polling alone.
    let shown = lab.run(&["flip", "--no-refresh"]);
    assert!(shown.contains("noticed by polling") || shown.contains("by polling"), "{shown}");
    let r = lab.last_flip();
    assert_eq!((r.from.as_str(), r.to.as_str(), r.refreshed), ("global-b", "global-a", false), "{r:?}");
    let s = lab.status();
    assert_eq!((s["primary"].as_str(), s["dnsAnswer"].as_str()), (Some("global-a"), Some("127.0.0.10")), "{s}");
    assert_eq!(lab.dig(), vec!["127.0.0.10"], "DNS follows the flip back");
    let (a, b) = (cluster(&s, "global-a"), cluster(&s, "global-b"));
    assert_eq!((a["role"].as_str(), a["phase"].as_str()), (Some("Primary"), Some("Steady")), "{s}");
    assert_eq!((b["role"].as_str(), b["phase"].as_str(), b["missedKeys"].as_u64()), (Some("Standby"), Some("Steady"), Some(0)), "{s}");
    lab.wait_for("global-a", "after-flip", "written on global-b", Duration::from_secs(5));
    assert_argo_synced(&s, "global-b", &r.merge_commit);
    eprintln!("flip back RTO {:.2}s (merge -> Done {:.2}s, polling only)", r.rto_seconds, r.merge_to_done_seconds);
}

#[test]
fn disaster_failover_then_the_old_primary_returns_as_standby() {
    let lab = Lab::up();
    lab.put("global-a", "last-words", "from global-a");
    lab.wait_for("global-b", "last-words", "from global-a", MIRROR);

    let doomed: Vec<drctl_lab::Pid> = lab.state().cluster("global-a").expect("a").components(&lab.state()).iter().filter_map(|r| r.pid()).collect();
    assert_eq!(doomed.len(), 11, "{doomed:?}");
    let lb = lab.state().cluster("global-a").expect("a").etcd.lb.clone();
    let shown = lab.run(&["disaster"]);
    assert!(shown.contains("killed global-a's supervisor"), "{shown}");
    assert!(doomed.iter().all(|p| !p.is_alive()), "every process of global-a died with its supervisor: {doomed:?}");
    let lb_addr: std::net::SocketAddr = lb.parse().expect("load balancer address");
    assert!(std::net::TcpStream::connect_timeout(&lb_addr, Duration::from_secs(1)).is_err(), "global-a's etcd load balancer died with it: {lb}");
    let s = lab.status();
    assert_eq!(s["primary"], "global-b", "{s}");
    assert_eq!(s["dnsAnswer"], "127.0.0.20", "{s}");
    assert_eq!(lab.dig(), vec!["127.0.0.20"]);
    let (a, b) = (cluster(&s, "global-a"), cluster(&s, "global-b"));
    assert_eq!(a["reachable"], false, "{s}");
    assert_eq!((b["role"].as_str(), b["phase"].as_str()), (Some("Primary"), Some("Steady")), "{s}");
    lab.wait_for("global-b", "last-words", "from global-a", Duration::from_secs(5));
    let r = lab.last_flip();
    assert_eq!((r.scenario, r.to.as_str()), (Scenario::Disaster, "global-b"));
    let demote = r.steps.iter().find(|s| s.name == "Demote").expect("Demote step");
    assert!(demote.message.as_deref().unwrap_or_default().contains("unreachable"), "{demote:?}");
    eprintln!("disaster failover RTO {:.2}s (merge -> Done {:.2}s)", r.rto_seconds, r.merge_to_done_seconds);

    // The old primary comes back, its own Argo CD applies the flip, then its controller mirrors.
    let shown = lab.run(&["recover"]);
    assert!(shown.contains("global-a's Argo CD synced main"), "{shown}");
    let s = lab.status();
    assert_whole_platform(&s, "global-a");
    let (a, b) = (cluster(&s, "global-a"), cluster(&s, "global-b"));
    assert_eq!((a["role"].as_str(), a["phase"].as_str(), a["missedKeys"].as_u64()), (Some("Standby"), Some("Steady"), Some(0)), "{s}");
    assert_eq!((b["role"].as_str(), b["phase"].as_str()), (Some("Primary"), Some("Steady")), "{s}");
    lab.put("global-b", "after-disaster", "from global-b");
    lab.wait_for("global-a", "after-disaster", "from global-b", MIRROR);

    // down stops everything, and a second down is harmless.
    let state = lab.state();
    let mut running: Vec<drctl_lab::Pid> = state.processes().into_iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(running.len(), 3, "PowerDNS and a supervisor per global: {running:?}");
    for c in &state.clusters {
        running.extend(c.components(&state).iter().filter_map(|r| r.pid()));
    }
    assert_eq!(running.len(), 3 + 2 * 11, "{running:?}");
    lab.run(&["down"]);
    assert!(running.iter().all(|p| !p.is_alive()), "still running after down: {running:?}");
    assert!(lab.state().processes().is_empty());
    lab.run(&["down"]);
}
