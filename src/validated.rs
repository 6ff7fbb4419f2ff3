//! The DRTopology as the controller acts on it: built only by validation
//! (`ValidatedTopology::try_from`, in `validate`), so each field is parsed once, its
//! default applied once (the CRD's serde defaults, and `dns.verify.timeout`'s here), and every
//! reader gets the type it means: VIPs as addresses, durations as `Duration`, resolvers as socket
//! addresses, the DNS provider and each hook as one variant of an enum instead of several
//! `Option`s and an "exactly one" rule.
//!
//! Fields whose CRD type already is their meaning (Secret references, exclusions, restarts,
//! enums) are the CRD's own types.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use kube::ResourceExt;

use crate::decide::plan::FinalSyncBound;
use crate::topology::{
    DRTopology, DnsSpec, EtcdSpec, ExcludeSpec, ExternalDns, FenceSpec, JobHook, ManualDns, Platform, PowerDns, RestartSpec, Rfc2136Dns, SecretRef,
    SyncHealthSpec, WebhookDns, WebhookHook, WorkloadCluster,
};

/// How long `VerifyDNS` waits when `spec.dns.verify.timeout` is not set (the CRD has no default
/// for it: an unset timeout is not written back by the apiserver).
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// A DRTopology that passed validation: its metadata and status as read, its spec typed.
#[derive(Clone, Debug)]
pub struct ValidatedTopology {
    /// As read: name, generation, annotations and Events. Its spec is read through `spec`.
    object: DRTopology,
    pub spec: Spec,
}

impl ValidatedTopology {
    /// `object` with the spec validation proved (only `validate` calls this).
    pub(crate) fn new(object: DRTopology, spec: Spec) -> Self {
        Self { object, spec }
    }

    pub fn object(&self) -> &DRTopology {
        &self.object
    }

    pub fn name(&self) -> String {
        self.object.name_any()
    }

    pub fn generation(&self) -> Option<i64> {
        self.object.metadata.generation
    }

    pub fn annotations(&self) -> &BTreeMap<String, String> {
        self.object.annotations()
    }
}

/// `spec`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub primary: String,
    pub platform: Platform,
    /// Exactly two.
    pub clusters: Vec<Cluster>,
    pub sync: SyncConfig,
    pub restarts: Vec<RestartSpec>,
    pub dns: DnsConfig,
    pub failover: FailoverConfig,
    pub workload_clusters: Vec<WorkloadCluster>,
    /// `spec.argocd.namespace`.
    pub argocd_namespace: String,
}

impl Spec {
    /// What the mirror and every repair copy, and what the fence leaves open: the spec's
    /// exclusions on top of the defaults, with this controller's and Argo CD's namespaces.
    pub fn filter(&self, controller_namespace: &str) -> crate::keyspace::Filter {
        crate::keyspace::Filter::new(&self.sync.exclude, controller_namespace, &self.argocd_namespace)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The cluster that is not `name`, when `name` is one of the two.
    pub fn peer_of(&self, name: &str) -> Option<&Cluster> {
        self.cluster(name)?;
        self.clusters.iter().find(|c| c.name != name)
    }
}

/// `spec.clusters[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub vip: IpAddr,
    pub api_server: String,
    pub kubeconfig_secret_ref: SecretRef,
    pub etcd: EtcdSpec,
    pub encryption_config_path: PathBuf,
}

/// `spec.sync`.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncConfig {
    pub exclude: ExcludeSpec,
    pub check_interval: Duration,
    /// Most primary keys per second the periodic check reads; None: unbounded (`0` in the spec).
    pub check_read_rate: Option<u64>,
    pub driver: Driver,
    pub fence: FenceSpec,
    pub auto_repair: bool,
    pub health: SyncHealthSpec,
}

/// What replicates into a standby: `spec.sync.driver`, with `spec.sync.manifest` for `manifest`.
#[derive(Clone, Debug, PartialEq)]
pub enum Driver {
    Builtin,
    /// The platform's own sync object, applied while standby and deleted while primary.
    Manifest(serde_json::Value),
}

/// `spec.dns`.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    pub provider: DnsProvider,
    pub verify: Verify,
}

/// The one provider `spec.dns` sets.
#[derive(Clone, Debug, PartialEq)]
pub enum DnsProvider {
    Rfc2136(Rfc2136Dns),
    PowerDns(PowerDns),
    ExternalDns(ExternalDns),
    Webhook(WebhookDns),
    Manual(ManualDns),
}

impl DnsProvider {
    /// The provider `spec.dns` sets; the message says what is wrong when it sets none or several.
    pub fn of(d: &DnsSpec) -> Result<DnsProvider, String> {
        let mut set: Vec<(&str, DnsProvider)> = [
            ("rfc2136", d.rfc2136.clone().map(DnsProvider::Rfc2136)),
            ("powerdns", d.powerdns.clone().map(DnsProvider::PowerDns)),
            ("externalDns", d.external_dns.clone().map(DnsProvider::ExternalDns)),
            ("webhook", d.webhook.clone().map(DnsProvider::Webhook)),
            ("manual", d.manual.clone().map(DnsProvider::Manual)),
        ]
        .into_iter()
        .filter_map(|(name, p)| Some((name, p?)))
        .collect();
        let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        match (set.pop(), set.is_empty()) {
            (Some((_, p)), true) => Ok(p),
            _ => {
                let what = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                Err(format!("sets {what}; set exactly one of rfc2136, powerdns, externalDns, webhook, manual"))
            }
        }
    }
}

/// `spec.dns.verify`.
#[derive(Clone, Debug, PartialEq)]
pub struct Verify {
    /// Empty: the system's resolvers.
    pub resolvers: Vec<SocketAddr>,
    pub restart_core_dns: bool,
    pub timeout: Duration,
}

/// `spec.failover`.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverConfig {
    pub max_missed_keys: u64,
    pub demotion_timeout: Duration,
    /// `finalSyncTimeout` and `finalSyncPolicy`.
    pub final_sync: FinalSyncBound,
    pub pre_hooks: Vec<Hook>,
    pub post_hooks: Vec<Hook>,
    pub dry_run: bool,
    pub allow_encryption_config_mismatch: bool,
}

/// A runbook hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub name: String,
    pub kind: HookKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HookKind {
    Job(JobHook),
    Webhook(WebhookHook),
}

impl Hook {
    /// The hook, when it sets exactly one of `job` and `webhook`.
    pub fn of(h: &crate::topology::Hook) -> Option<Hook> {
        let kind = match (&h.job, &h.webhook) {
            (Some(j), None) => HookKind::Job(j.clone()),
            (None, Some(w)) => HookKind::Webhook(w.clone()),
            _ => return None,
        };
        Some(Hook { name: h.name.clone(), kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::parse_duration;
    use crate::topology::{FinalSyncPolicy, SyncDriver};
    use kube::CustomResourceExt;
    use serde_json::{json, Value};

    /// `examples/minimal.yaml` with `edit` applied to its spec.
    fn topology(edit: impl FnOnce(&mut Value)) -> DRTopology {
        let mut v: Value = serde_saphyr::from_str(include_str!("../examples/minimal.yaml")).expect("example");
        edit(&mut v["spec"]);
        serde_json::from_value(v).expect("a DRTopology")
    }

    fn parse(edit: impl FnOnce(&mut Value)) -> Result<Spec, Vec<String>> {
        ValidatedTopology::try_from(&topology(edit)).map(|t| t.spec).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    /// The `default` of every property of the CRD's schema, by JSON path under `spec`.
    fn schema_defaults() -> BTreeMap<String, Value> {
        fn walk(path: &str, s: &Value, out: &mut BTreeMap<String, Value>) {
            if let Some(d) = s.get("default") {
                out.insert(path.to_string(), d.clone());
            }
            for (k, p) in s.get("properties").and_then(Value::as_object).into_iter().flatten() {
                walk(&format!("{path}.{k}"), p, out);
            }
            if let Some(items) = s.get("items") {
                walk(&format!("{path}[]"), items, out);
            }
        }
        let crd = serde_json::to_value(DRTopology::crd()).expect("crd");
        let mut out = BTreeMap::new();
        walk("", &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"], &mut out);
        out
    }

    #[test]
    fn parsed_defaults_are_the_crds_defaults() {
        // The fields the spec omits, so each comes from its default.
        let s = parse(|spec| {
            spec.as_object_mut().expect("spec").retain(|k, _| ["primary", "platform", "clusters", "dns"].contains(&k.as_str()));
            spec["platform"].as_object_mut().expect("platform").remove("ttl");
        })
        .expect("valid");
        let d = schema_defaults();
        let duration =
            |path: &str| d.get(path).and_then(Value::as_str).and_then(parse_duration).unwrap_or_else(|| panic!("no duration default at {path}: {d:?}"));
        let value = |path: &str| d.get(path).cloned().unwrap_or_else(|| panic!("no default at {path}: {d:?}"));
        // (the CRD's default, the parsed value)
        let cases: [(&str, Value, Value); 11] = [
            (".platform.ttl", value(".platform.ttl"), json!(s.platform.ttl)),
            (".sync.checkReadRate", value(".sync.checkReadRate"), json!(s.sync.check_read_rate)),
            (".sync.autoRepair", value(".sync.autoRepair"), json!(s.sync.auto_repair)),
            (".sync.fence.enabled", value(".sync.fence.enabled"), json!(s.sync.fence.enabled)),
            (".sync.fence.exemptGroups", value(".sync.fence.exemptGroups"), json!(s.sync.fence.exempt_groups)),
            (".sync.driver", value(".sync.driver"), json!(if s.sync.driver == Driver::Builtin { SyncDriver::Builtin } else { SyncDriver::Manifest })),
            (".failover.maxMissedKeys", value(".failover.maxMissedKeys"), json!(s.failover.max_missed_keys)),
            (".failover.dryRun", value(".failover.dryRun"), json!(s.failover.dry_run)),
            (".dns.verify.restartCoreDNS", value(".dns.verify.restartCoreDNS"), json!(s.dns.verify.restart_core_dns)),
            (".failover.finalSyncPolicy", value(".failover.finalSyncPolicy"), json!(s.failover.final_sync.policy)),
            (".clusters[].encryptionConfigPath", value(".clusters[].encryptionConfigPath"), json!(s.clusters[0].encryption_config_path)),
        ];
        for (path, crd, parsed) in cases {
            assert_eq!(crd, parsed, "{path}");
        }
        assert_eq!(s.failover.final_sync.policy, FinalSyncPolicy::Abandon);
        assert_eq!(s.sync.check_interval, duration(".sync.checkInterval"), "checkInterval");
        assert_eq!(s.failover.demotion_timeout, duration(".failover.demotionTimeout"), "demotionTimeout");
        assert_eq!(s.failover.final_sync.timeout, duration(".failover.finalSyncTimeout"), "finalSyncTimeout");
        assert!(!d.contains_key(".dns.verify.timeout"), "the CRD has no default for verify.timeout; the parse's is the only one");
        assert_eq!(s.dns.verify.timeout, DEFAULT_VERIFY_TIMEOUT);
        assert_eq!((s.dns.verify.resolvers.as_slice(), s.failover.pre_hooks.as_slice()), (&[][..], &[][..]));
    }

    #[test]
    fn each_dns_provider_is_its_own_variant() {
        let tsig = json!({"server": "ns1.example.com", "zone": "example.com.", "tsigKeyName": "k", "tsigSecretRef": {"name": "t", "namespace": "dns"}});
        let pdns = json!({"apiUrl": "http://pdns.example.com:8081", "zone": "example.com.", "apiKeySecretRef": {"name": "p", "namespace": "dns"}});
        let webhook = json!({"url": "https://dns-switch.example.com/hook", "hmacSecretRef": {"name": "h", "namespace": "dns"}});
        // (the provider set in spec.dns, its variant's name)
        let cases = [
            (json!({"rfc2136": tsig}), "Rfc2136"),
            (json!({"powerdns": pdns}), "PowerDns"),
            (json!({"externalDns": {"namespace": "dns", "name": "platform"}}), "ExternalDns"),
            (json!({"webhook": webhook}), "Webhook"),
            (json!({"manual": {"instructions": "call the NOC"}}), "Manual"),
        ];
        for (dns, want) in cases {
            let got = parse(|spec| spec["dns"] = dns.clone()).expect("valid").dns.provider;
            let variant = format!("{got:?}");
            assert!(variant.starts_with(&format!("{want}(")), "{dns}: {variant}");
        }
        let both = parse(|spec| spec["dns"] = json!({"manual": {}, "externalDns": {"namespace": "dns", "name": "platform"}}));
        assert_eq!(both, Err(vec!["spec.dns: sets externalDns, manual; set exactly one of rfc2136, powerdns, externalDns, webhook, manual".to_string()]));
    }

    #[test]
    fn fields_are_typed_as_they_are_meant() {
        let s = parse(|spec| {
            spec["clusters"][1]["vip"] = json!("2001:DB8::A");
            spec["sync"] = json!({"checkInterval": "1m30s", "checkReadRate": 0});
            spec["dns"]["verify"] = json!({"resolvers": ["10.96.0.10", "[2001:db8::53]:5353"], "timeout": "45s"});
            spec["failover"] = json!({"demotionTimeout": "30s", "finalSyncTimeout": "1h", "preHooks": [
                {"name": "vip", "webhook": {"url": "https://hooks.example.com/vip"}},
                {"name": "job", "job": {"namespace": "ops", "template": {}}},
            ]});
        })
        .expect("valid");
        assert_eq!(s.clusters[1].vip, "2001:db8::a".parse::<IpAddr>().expect("ip"), "a VIP is an address, whatever its spelling");
        assert_eq!((s.sync.check_interval, s.sync.check_read_rate), (Duration::from_secs(90), None), "0 is unbounded");
        assert_eq!(s.dns.verify.resolvers, vec!["10.96.0.10:53".parse().expect("sa"), "[2001:db8::53]:5353".parse().expect("sa")]);
        assert_eq!(s.dns.verify.timeout, Duration::from_secs(45));
        assert_eq!((s.failover.demotion_timeout, s.failover.final_sync.timeout), (Duration::from_secs(30), Duration::from_secs(3600)));
        let kinds: Vec<(&str, bool)> = s.failover.pre_hooks.iter().map(|h| (h.name.as_str(), matches!(h.kind, HookKind::Job(_)))).collect();
        assert_eq!(kinds, [("vip", false), ("job", true)]);
    }

    #[test]
    fn an_invalid_spec_gives_every_error_with_its_field_path() {
        let got = parse(|spec| {
            spec["clusters"][0]["vip"] = json!("192.0.2");
            spec["failover"] = json!({"demotionTimeout": "soon", "postHooks": [{"name": "h"}]});
        });
        let want = vec![
            "spec.clusters[0].vip: \"192.0.2\" is not an IPv4 or IPv6 address; write e.g. 192.0.2.10 or 2001:db8::10",
            "spec.failover.demotionTimeout: \"soon\" is not a duration; write e.g. 30s, 5m or 1h30m",
            "spec.failover.postHooks[0]: sets both or neither of job and webhook; set exactly one",
        ];
        assert_eq!(got, Err(want.into_iter().map(String::from).collect()));
    }
}
