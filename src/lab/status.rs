//! `drctl lab status`: read live from both globals and the DNS server.

use serde::Serialize;

use crate::topology::{Phase, Role};

use super::out::Out;
use super::{flip, LabState};

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
    o.raw(&t);
}
