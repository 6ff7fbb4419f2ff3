//! Specs that are well-formed but dangerous: what `validate` refuses beyond shape and types
//! because the controller would otherwise act on it and lose data or never finish a failover.
//! Each rule the CRD can express is also a CEL rule in `topology.rs`; the rest are listed as
//! semantic-only in the bad-input catalog (tests/data/bad).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::fields::{parse_duration, FieldError, Floor, CHECK_INTERVAL_FLOOR, DEMOTION_TIMEOUT_FLOOR, FINAL_SYNC_TIMEOUT_FLOOR, VERIFY_TIMEOUT_FLOOR};
use crate::topology::DRTopologySpec;

/// Groups that are (nearly) everyone: exempting them turns the standby's fence off.
pub const EVERYONE_GROUPS: [&str; 3] = ["system:authenticated", "system:unauthenticated", "system:serviceaccounts"];

/// The values `validate` parsed before these checks run; None where a value did not parse
/// (validate reported it) or, for `verify_timeout`, is not set.
#[derive(Debug, Default)]
pub struct Parsed {
    pub vips: Vec<Option<IpAddr>>,
    pub check_interval: Option<Duration>,
    pub resolvers: Vec<Option<SocketAddr>>,
    pub verify_timeout: Option<Duration>,
    pub demotion_timeout: Option<Duration>,
    pub final_sync_timeout: Option<Duration>,
}

/// `value` (the spec's text, parsed as `parsed`) below its floor.
fn floor(value: &str, parsed: Option<Duration>, f: &Floor, errs: &mut Vec<FieldError>) {
    let (Some(v), Some(min)) = (parsed, parse_duration(f.min)) else { return };
    if v < min {
        errs.push(FieldError::new(f.field, format!("{value} is below the minimum of {}; {}", f.min, f.why)));
    }
}

/// Why an address cannot be a VIP clients reach, if it cannot (pure).
pub fn unreachable_vip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        // The apiserver's isIP() refuses them too: write the IPv4 address itself.
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("an IPv4-mapped IPv6 address (write the IPv4 address)"),
        _ => None,
    }
}

/// A URL's scheme, host and port (default port filled in), to compare endpoints as places, not
/// as strings: `https://ETCD:2379/` and `https://etcd:2379` are one etcd.
fn place(url: &str) -> Option<(String, String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((u.scheme().to_string(), u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

/// Every check of this module, in field order.
pub fn check(spec: &DRTopologySpec, parsed: &Parsed) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, c) in spec.clusters.iter().enumerate() {
        let p = format!("spec.clusters[{i}]");
        if let Some(why) = parsed.vips.get(i).copied().flatten().and_then(unreachable_vip) {
            errs.push(FieldError::new(
                format!("{p}.vip"),
                format!("{} is {why}; clients cannot reach a VIP there. Use the address of this cluster's load balancer", c.vip),
            ));
        }
        if c.kubeconfig_secret_ref.is_none() {
            errs.push(FieldError::new(
                format!("{p}.kubeconfigSecretRef"),
                "is missing; without it the peer can never read this cluster, so a failover away from it waits in Demote forever. Name the Secret holding its kubeconfig",
            ));
        }
        let urls = std::iter::once((format!("{p}.apiServer"), &c.api_server))
            .chain(c.etcd.endpoints.iter().enumerate().map(|(j, e)| (format!("{p}.etcd.endpoints[{j}]"), e)));
        for (path, url) in urls {
            if crate::urls::has_userinfo(url) {
                errs.push(FieldError::new(path, crate::urls::userinfo_message(url)));
            }
        }
    }
    if let [a, b] = spec.clusters.as_slice() {
        if place(&a.api_server).is_some() && place(&a.api_server) == place(&b.api_server) {
            errs.push(FieldError::new(
                "spec.clusters[1].apiServer",
                format!("{} is the same apiServer as spec.clusters[0]'s; each global has its own", crate::urls::redact(&b.api_server)),
            ));
        }
        for (j, e) in b.etcd.endpoints.iter().enumerate() {
            if place(e).is_some() && a.etcd.endpoints.iter().any(|o| place(o) == place(e)) {
                errs.push(FieldError::new(
                    format!("spec.clusters[1].etcd.endpoints[{j}]"),
                    format!(
                        "{} is also an etcd endpoint of spec.clusters[0]; the mirror would copy an etcd onto itself. Each global has its own etcd",
                        crate::urls::redact(e)
                    ),
                ));
            }
        }
    }

    floor(&spec.sync.check_interval, parsed.check_interval, &CHECK_INTERVAL_FLOOR, &mut errs);
    for (i, g) in spec.sync.fence.exempt_groups.iter().enumerate() {
        if EVERYONE_GROUPS.contains(&g.as_str()) {
            errs.push(FieldError::new(
                format!("spec.sync.fence.exemptGroups[{i}]"),
                format!("{g} is (nearly) every user, so the fence would stop nobody; exempt the groups of the people and tools that must write on a standby"),
            ));
        }
    }
    if let Some(m) = &spec.sync.manifest {
        if m.get("kind").and_then(Value::as_str) == Some("Namespace") {
            errs.push(FieldError::new(
                "spec.sync.manifest.kind",
                "is Namespace; the manifest is deleted whenever this cluster is primary, and deleting a Namespace deletes everything in it. Put the platform's sync object here, not a namespace",
            ));
        }
    }
    for (i, r) in spec.restarts.iter().enumerate() {
        if r.label_selector.trim().is_empty() {
            continue;
        }
        if let Err(e) = crate::selector::parse(&r.label_selector) {
            errs.push(FieldError::new(
                format!("spec.restarts[{i}].labelSelector"),
                format!("{:?} is not a label selector ({e}); write e.g. app=vmselect or app in (vmselect,vminsert)", r.label_selector),
            ));
        }
    }

    let d = &spec.dns;
    let urls = [
        d.powerdns.as_ref().map(|p| ("spec.dns.powerdns.apiUrl".to_string(), &p.api_url)),
        d.webhook.as_ref().map(|w| ("spec.dns.webhook.url".to_string(), &w.url)),
    ];
    let hooks = [("preHooks", &spec.failover.pre_hooks), ("postHooks", &spec.failover.post_hooks)];
    let hook_urls = hooks.into_iter().flat_map(|(name, list)| {
        list.iter().enumerate().filter_map(move |(i, h)| h.webhook.as_ref().map(|w| (format!("spec.failover.{name}[{i}].webhook.url"), &w.url)))
    });
    for (path, url) in urls.into_iter().flatten().chain(hook_urls) {
        if crate::urls::has_userinfo(url) {
            errs.push(FieldError::new(path, crate::urls::userinfo_message(url)));
        }
    }
    for (i, (r, a)) in d.verify.resolvers.iter().zip(&parsed.resolvers).enumerate() {
        if a.is_some_and(|a| a.port() == 0) {
            errs.push(FieldError::new(format!("spec.dns.verify.resolvers[{i}]"), format!("{r} has port 0, where no resolver listens; omit the port for 53")));
        }
    }
    if let Some(t) = &d.verify.timeout {
        floor(t, parsed.verify_timeout, &VERIFY_TIMEOUT_FLOOR, &mut errs);
    }
    floor(&spec.failover.demotion_timeout, parsed.demotion_timeout, &DEMOTION_TIMEOUT_FLOOR, &mut errs);
    floor(&spec.failover.final_sync_timeout, parsed.final_sync_timeout, &FINAL_SYNC_TIMEOUT_FLOOR, &mut errs);
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> DRTopologySpec {
        let t: crate::topology::DRTopology = serde_saphyr::from_str(include_str!("../examples/minimal.yaml")).expect("example");
        t.spec
    }

    /// Through validation, which parses the values these checks read (the specs here have no
    /// other errors).
    fn messages(spec: &DRTopologySpec) -> Vec<String> {
        crate::validate::validate_spec(spec).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_examples_pass() {
        assert_eq!(messages(&minimal()), Vec::<String>::new());
    }

    #[test]
    fn unreachable_vips_are_compared_as_addresses() {
        let cases = [
            ("0.0.0.0", Some("the unspecified address")),
            ("::", Some("the unspecified address")),
            ("0:0::0", Some("the unspecified address")),
            ("255.255.255.255", Some("the broadcast address")),
            ("224.0.0.1", Some("a multicast address")),
            ("ff02::1", Some("a multicast address")),
            ("::ffff:192.0.2.10", Some("an IPv4-mapped IPv6 address (write the IPv4 address)")),
            ("192.0.2.10", None),
            ("127.0.0.10", None),
            ("2001:db8::10", None),
        ];
        for (vip, want) in cases {
            assert_eq!(unreachable_vip(vip.parse().expect("ip")), want, "{vip}");
        }
    }

    #[test]
    fn durations_below_their_floor_are_refused() {
        let mut s = minimal();
        s.sync.check_interval = "500ms".into();
        s.failover.demotion_timeout = "0s".into();
        s.dns.verify.timeout = Some("1s".into());
        s.failover.final_sync_timeout = "9s".into();
        assert_eq!(
            messages(&s),
            vec![
                "spec.sync.checkInterval: 500ms is below the minimum of 1s; each check reads the whole replicated keyspace; use minutes in production (default 5m)",
                "spec.dns.verify.timeout: 1s is below the minimum of 5s; one DNS lookup may take 2s; the default is 5m",
                "spec.failover.demotionTimeout: 0s is below the minimum of 10s; shorter makes a blip of the old primary a disaster failover that loses its last writes (default 2m)",
                "spec.failover.finalSyncTimeout: 9s is below the minimum of 10s; FinalSync must catch up and check the whole keyspace at least once (default 2m)",
            ]
        );
        s.sync.check_interval = "1s".into();
        s.failover.demotion_timeout = "10s".into();
        s.dns.verify.timeout = Some("5s".into());
        s.failover.final_sync_timeout = "10s".into();
        assert_eq!(messages(&s), Vec::<String>::new(), "the floors themselves are allowed");
    }

    #[test]
    fn one_etcd_or_apiserver_for_both_clusters_is_refused() {
        let mut s = minimal();
        s.clusters[1].api_server = s.clusters[0].api_server.to_uppercase().replace("HTTPS", "https");
        s.clusters[1].etcd.endpoints = vec![format!("{}/", s.clusters[0].etcd.endpoints[0])];
        let m = messages(&s);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("spec.clusters[1].apiServer: "), "{m:?}");
        assert!(m[1].starts_with("spec.clusters[1].etcd.endpoints[0]: "), "{m:?}");
    }

    #[test]
    fn credentials_in_urls_are_refused_and_not_repeated() {
        let mut s = minimal();
        s.clusters[0].etcd.endpoints[0] = "https://root:s3cret@10.0.0.1:2379".into();
        let m = messages(&s);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("spec.clusters[0].etcd.endpoints[0]: https://***@10.0.0.1:2379 carries credentials"), "{m:?}");
        assert!(!m[0].contains("s3cret"));
    }

    #[test]
    fn fence_exempting_everyone_and_a_namespace_manifest_are_refused() {
        let mut s = minimal();
        s.sync.fence.exempt_groups.push("system:authenticated".into());
        s.sync.manifest = Some(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}));
        let m = messages(&s);
        assert!(
            m[0].starts_with(&format!("spec.sync.fence.exemptGroups[{}]: system:authenticated is (nearly) every user", s.sync.fence.exempt_groups.len() - 1)),
            "{m:?}"
        );
        assert!(m[1].starts_with("spec.sync.manifest.kind: is Namespace"), "{m:?}");
    }

    #[test]
    fn a_selector_typo_and_resolver_port_zero_are_found_before_failover() {
        let mut s = minimal();
        s.restarts.push(crate::topology::RestartSpec {
            name: "x".into(),
            scope: Default::default(),
            namespace: "ns".into(),
            label_selector: "app in vmselect".into(),
            method: Default::default(),
            when: vec![crate::topology::RestartWhen::Failover],
        });
        s.dns.verify.resolvers = vec!["10.96.0.10:0".into(), "[2001:db8::53]:0".into(), "2001:db8::0".into()];
        let m = messages(&s);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("labelSelector: \"app in vmselect\" is not a label selector (at character 4"), "{m:?}");
        assert!(m[1].starts_with("spec.dns.verify.resolvers[0]: 10.96.0.10:0 has port 0"), "{m:?}");
        assert!(m[2].starts_with("spec.dns.verify.resolvers[1]:"), "{m:?}");
    }
}
