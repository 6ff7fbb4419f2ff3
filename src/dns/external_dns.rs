//! external-dns: drctl owns the endpoints for the platform domain in a `DNSEndpoint` object
//! (externaldns.k8s.io/v1alpha1) and external-dns pushes them to the real DNS provider.
//! Endpoints for other names in the same object are kept as they are.

use std::net::IpAddr;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{json, Value};

use super::{DnsError, RecordKind, SwitchAction, SwitchOutcome};
use crate::topology::{ExternalDns, Platform};

const FIELD_MANAGER: &str = "drctl";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"), "dnsendpoints")
}

fn same_name(endpoint: &Value, domain: &str) -> bool {
    endpoint.get("dnsName").and_then(Value::as_str).is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(domain.trim_end_matches('.')))
}

/// The object's endpoints with this domain's replaced by exactly one for the target.
fn desired_endpoints(existing: &[Value], domain: &str, target: IpAddr, ttl: u32) -> Vec<Value> {
    let mut out: Vec<Value> = existing.iter().filter(|e| !same_name(e, domain)).cloned().collect();
    out.push(json!({
        "dnsName": domain,
        "recordType": RecordKind::for_ip(target).as_str(),
        "recordTTL": ttl,
        "targets": [target.to_string()],
    }));
    out
}

/// Addresses the object currently declares for the domain.
fn declared(existing: &[Value], domain: &str) -> Vec<IpAddr> {
    existing
        .iter()
        .filter(|e| same_name(e, domain))
        .filter(|e| matches!(e.get("recordType").and_then(Value::as_str), Some("A" | "AAAA")))
        .flat_map(|e| e.get("targets").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().and_then(|s| s.parse().ok()))
        .collect()
}

#[tracing::instrument(skip_all, fields(namespace = %cfg.namespace, name = %cfg.name))]
pub(super) async fn switch(cfg: &ExternalDns, platform: &Platform, target: IpAddr, client: &kube::Client) -> Result<SwitchOutcome, DnsError> {
    let ar = api_resource();
    let object = format!("DNSEndpoint {}/{}", cfg.namespace, cfg.name);
    let kube_err = |source| DnsError::Kube { object: object.clone(), source };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &cfg.namespace, &ar);
    let existing_obj = api.get_opt(&cfg.name).await.map_err(kube_err)?;
    let existing: Vec<Value> = existing_obj.as_ref().and_then(|o| o.data.pointer("/spec/endpoints")).and_then(Value::as_array).cloned().unwrap_or_default();
    let previous = declared(&existing, &platform.domain);
    let desired = desired_endpoints(&existing, &platform.domain, target, platform.ttl);
    let action = if existing_obj.is_some() && desired == existing {
        SwitchAction::Unchanged
    } else {
        let obj = json!({
            "apiVersion": "externaldns.k8s.io/v1alpha1",
            "kind": "DNSEndpoint",
            "metadata": { "name": cfg.name, "namespace": cfg.namespace },
            "spec": { "endpoints": desired },
        });
        // Force: the switch is the one writer that must win over whoever applied it before.
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&cfg.name, &pp, &Patch::Apply(&obj)).await.map_err(kube_err)?;
        SwitchAction::Updated
    };
    Ok(SwitchOutcome { provider: "externalDns", domain: platform.domain.clone(), record: RecordKind::for_ip(target), target, previous: Some(previous), action })
}

/// Preflight: reads the DNSEndpoint (absent is fine: the switch creates it), writes nothing.
pub(super) async fn probe(cfg: &ExternalDns, client: &kube::Client) -> Result<String, DnsError> {
    let object = format!("DNSEndpoint {}/{}", cfg.namespace, cfg.name);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &cfg.namespace, &api_resource());
    let found = api.get_opt(&cfg.name).await.map_err(|source| DnsError::Kube { object: object.clone(), source })?;
    Ok(format!("{object} {}", if found.is_some() { "read" } else { "not there yet (a switch creates it)" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_this_domains_endpoints() {
        let existing = vec![
            json!({"dnsName": "platform.example.com", "recordType": "A", "recordTTL": 30, "targets": ["192.0.2.1"]}),
            json!({"dnsName": "platform.example.com.", "recordType": "AAAA", "recordTTL": 30, "targets": ["2001:db8::1"]}),
            json!({"dnsName": "other.example.com", "recordType": "A", "targets": ["192.0.2.9"]}),
        ];
        let prev = declared(&existing, "platform.example.com");
        assert_eq!(prev, vec!["192.0.2.1".parse::<IpAddr>().expect("ip"), "2001:db8::1".parse().expect("ip")]);
        let got = desired_endpoints(&existing, "platform.example.com", "192.0.2.2".parse().expect("ip"), 30);
        assert_eq!(
            got,
            vec![
                json!({"dnsName": "other.example.com", "recordType": "A", "targets": ["192.0.2.9"]}),
                json!({"dnsName": "platform.example.com", "recordType": "A", "recordTTL": 30, "targets": ["192.0.2.2"]}),
            ]
        );
        // Applying the result again changes nothing: the switch is idempotent.
        assert_eq!(desired_endpoints(&got, "platform.example.com", "192.0.2.2".parse().expect("ip"), 30), got);
    }
}
