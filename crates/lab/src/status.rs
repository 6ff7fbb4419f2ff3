//! `drctl lab status`: read live from both globals and the DNS server.

use serde::Serialize;

use drctl::topology::{Phase, Role};

use super::argo::ArgoView;
use super::out::Out;
use super::{argo, flip, LabState};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    /// `spec.primary` as the reachable globals hold it (what Git last said, once applied).
    pub primary: Option<String>,
    /// The platform domain's address from the authoritative server.
    pub dns_answer: Option<String>,
    pub domain: String,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub vip: String,
    pub reachable: bool,
    pub role: Option<Role>,
    pub phase: Option<Phase>,
    pub missed_keys: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub api_server: String,
    pub etcd: EtcdStatus,
    /// Every process of the global, as its supervisor sees it.
    pub components: Vec<Component>,
    /// The global's own Argo CD's view of the `drtopology` Application (None when unreachable).
    pub argocd: Option<ArgoView>,
}

/// The global's etcd: the load balancer the topology names, and its members' health.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    /// The load balancer's URL (`spec.clusters[].etcd.endpoints`).
    pub endpoint: String,
    /// It accepts connections (it runs inside the global's supervisor).
    pub load_balancer_up: bool,
    pub members: usize,
    /// Members whose /health says true (each needs a leader for that).
    pub members_healthy: usize,
}

impl EtcdStatus {
    fn read(etcd: &super::LabEtcd) -> EtcdStatus {
        let up = etcd.lb.parse().is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok());
        EtcdStatus {
            endpoint: etcd.url(),
            load_balancer_up: up,
            members: etcd.members.len(),
            members_healthy: etcd.members.iter().filter(|m| m.healthy()).count(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Resident memory and CPU time used so far, from /proc (running components only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// (VmRSS in MiB, user + system CPU seconds) of a live process.
fn usage(pid: u32) -> (Option<f64>, Option<f64>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).map(|kib| kib / 1024.0));
    // Fields 14 and 15 of /proc/PID/stat (after the parenthesised name) are utime and stime in
    // clock ticks; Linux reports them at USER_HZ = 100 on every architecture drctl runs on.
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    });
    (rss, cpu)
}

#[tracing::instrument(skip_all)]
pub async fn read(state: &LabState) -> LabStatus {
    let mut clusters = Vec::new();
    let mut primary = None;
    for c in &state.clusters {
        let t = c.topology().await;
        let reachable = t.is_ok();
        let t = t.ok().flatten();
        if primary.is_none() {
            primary = t.as_ref().map(|t| t.spec.primary.clone());
        }
        let s = t.and_then(|t| t.status).unwrap_or_default();
        let sync = s.sync.as_ref();
        clusters.push(ClusterStatus {
            name: c.name.clone(),
            vip: c.vip.clone(),
            reachable,
            role: s.role,
            phase: s.phase,
            missed_keys: sync.and_then(|y| y.missed_keys),
            lag_seconds: sync.and_then(|y| y.lag_seconds),
            api_server: c.api.url.clone(),
            etcd: EtcdStatus::read(&c.etcd),
            components: c
                .components(state)
                .into_iter()
                .map(|r| {
                    let running = r.alive();
                    let (rss_mib, cpu_seconds) = match r.pid {
                        Some(pid) if running => usage(pid),
                        _ => (None, None),
                    };
                    Component { running, pid: r.pid, restarts: r.restarts, last_exit: r.last_exit, name: r.name, rss_mib, cpu_seconds }
                })
                .collect(),
            argocd: if reachable { argo::application(state, c).ok().flatten() } else { None },
        });
    }
    let dns_answer = flip::dns_answer(state).await.into_iter().next();
    LabStatus { primary, dns_answer, domain: state.domain.clone(), clusters }
}

pub fn print(s: &LabStatus, o: &Out) {
    let dash = || "-".to_string();
    let mut t = format!(
        "primary (spec): {}\nDNS {} -> {}\n\n{:<10} {:<12} {:<9} {:<11} {:<7} {:<7} {}\n",
        o.bold(s.primary.as_deref().unwrap_or("?")),
        s.domain,
        s.dns_answer.as_deref().unwrap_or("no answer"),
        "CLUSTER",
        "VIP",
        "ROLE",
        "PHASE",
        "MISSED",
        "LAG",
        "APISERVER"
    );
    for c in &s.clusters {
        let (role, phase) = if c.reachable {
            (c.role.map(|r| format!("{r:?}")).unwrap_or_else(dash), c.phase.map(|p| format!("{p:?}")).unwrap_or_else(dash))
        } else {
            ("down".to_string(), dash())
        };
        let serving = s.dns_answer.as_deref() == Some(c.vip.as_str());
        t.push_str(&format!(
            "{:<10} {:<12} {:<9} {:<11} {:<7} {:<7} {}{}\n",
            c.name,
            c.vip,
            role,
            phase,
            c.missed_keys.map(|m| m.to_string()).unwrap_or_else(dash),
            c.lag_seconds.map(|l| format!("{l:.1}s")).unwrap_or_else(dash),
            c.api_server,
            if serving { format!("  {}", o.green("<- DNS")) } else { String::new() }
        ));
    }
    t.push('\n');
    for c in &s.clusters {
        let argo = match &c.argocd {
            Some(a) => format!(
                "{} {} at {}{}",
                a.sync.as_deref().unwrap_or("?"),
                a.health.as_deref().unwrap_or("?"),
                a.revision.as_deref().map(|r| &r[..r.len().min(12)]).unwrap_or("?"),
                a.health_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ),
            None => "unreachable".to_string(),
        };
        t.push_str(&format!("{}  Argo CD: {argo}\n", o.bold(&c.name)));
        let e = &c.etcd;
        let lb = if e.load_balancer_up { o.green("up") } else { o.red("down") };
        t.push_str(&format!("    etcd {} (load balancer {lb}): {}/{} members healthy\n", e.endpoint, e.members_healthy, e.members));
        let parts: Vec<String> = c
            .components
            .iter()
            .map(|p| {
                let restarts = if p.restarts > 0 { format!(" ({} restarts)", p.restarts) } else { String::new() };
                if p.running {
                    format!("{} {}{restarts}", o.green("●"), p.name)
                } else {
                    format!("{} {}{restarts}", o.red("○"), p.name)
                }
            })
            .collect();
        t.push_str(&format!("    {}\n", parts.join("  ")));
    }
    o.raw(&t);
}
