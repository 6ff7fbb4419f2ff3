//! The `DRTopology` API (`drtopologies.drctl.io/v1alpha1`): one cluster-scoped object, applied by
//! Argo CD to both globals, that declares which global is primary and how DR runs.
//!
//! Field names here are the public API. Everything the OpenAPI schema can say is said with CEL
//! (`x-kubernetes-validations`) so the apiserver rejects it at admission; `validate` repeats those
//! rules client-side with field paths and adds checks CEL cannot express.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::DURATION_PATTERN;

pub const GROUP: &str = "drctl.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "DRTopology";
pub const API_VERSION: &str = "drctl.io/v1alpha1";
/// Where the seed's platform keeps the shared etcd encryption-at-rest config.
pub const DEFAULT_ENCRYPTION_CONFIG_PATH: &str = "/etc/kubernetes/encryption-provider.conf";

/// Lower-case FQDN, at least two labels, optional trailing dot.
pub const DOMAIN_PATTERN: &str = "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?\\.?$";
/// RFC 1123 label: what Kubernetes accepts as a namespace or resource name part.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// An etcd key prefix DR may exclude: under `/registry/`, naming at least one whole segment.
pub const KEY_PREFIX_PATTERN: &str = "^/registry/[^/]+/";
/// RFC 1123 subdomain: what Kubernetes accepts as the name of a Secret.
pub const SUBDOMAIN_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The disaster-recovery topology of a pair of global clusters.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "drctl.io",
    version = "v1alpha1",
    kind = "DRTopology",
    plural = "drtopologies",
    singular = "drtopology",
    shortname = "drt",
    category = "dr",
    status = "DRTopologyStatus",
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".spec.primary","description":"Declared primary cluster"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".status.role","description":"Role of the cluster this object lives in"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Lag","type":"number","jsonPath":".status.sync.lagSeconds","description":"Replication lag in seconds (standby only)"}"#,
    printcolumn = r#"{"name":"Missed","type":"integer","jsonPath":".status.sync.missedKeys","description":"Keys on the primary missing here at the last check"}"#,
    printcolumn = r#"{"name":"Surplus","type":"integer","jsonPath":".status.sync.surplusKeys","description":"Keys only here at the last check"}"#,
    printcolumn = r#"{"name":"Diverged","type":"integer","jsonPath":".status.sync.divergedKeys","description":"Keys whose bytes differ from the primary's at the last check"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.clusters.exists(c, c.name == self.primary)")
    .message("spec.primary must be the name of one of spec.clusters").field_path(".primary").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.restarts.all(r, r.scope != 'workloadClusters') || size(self.workloadClusters) > 0")
    .message("a restart with scope workloadClusters needs spec.workloadClusters").field_path(".workloadClusters").reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct DRTopologySpec {
    /// Name of the primary cluster; the field a pull request flips to fail over.
    #[schemars(length(min = 1, max = 63))]
    pub primary: String,
    pub platform: Platform,
    /// Exactly two globals: the primary and the standby.
    #[schemars(length(min = 2, max = 2))]
    #[x_kube(validation = Rule::new("size(self) == 2").message("spec.clusters must list exactly two clusters"))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("spec.clusters[].name must be unique"))]
    // VIPs compare as addresses: 2001:db8::a and 2001:DB8::A are one VIP.
    #[x_kube(validation = Rule::new("self.all(a, !isIP(a.vip) || self.exists_one(b, isIP(b.vip) && ip(b.vip) == ip(a.vip)))").message("spec.clusters[].vip must be unique"))]
    #[x_kube(validation = Rule::new("size(self) != 2 || self[0].apiServer.lowerAscii() != self[1].apiServer.lowerAscii()")
        .message("both clusters name the same apiServer; each global has its own"))]
    #[x_kube(validation = Rule::new("size(self) != 2 || !self[0].etcd.endpoints.exists(e, e in self[1].etcd.endpoints)")
        .message("both clusters list the same etcd endpoint; the mirror would copy an etcd onto itself"))]
    pub clusters: Vec<ClusterSpec>,
    #[serde(default)]
    pub sync: SyncSpec,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub restarts: Vec<RestartSpec>,
    pub dns: DnsSpec,
    #[serde(default)]
    pub failover: FailoverSpec,
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub workload_clusters: Vec<WorkloadCluster>,
    /// The Argo CD that applies this object in each global. In the spec, not a controller flag,
    /// so Git gives both globals the same value: the standby must exclude (and leave unfenced)
    /// exactly the namespace the primary does not replicate.
    #[serde(default)]
    pub argocd: ArgoCdSpec,
}

/// `spec.argocd`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArgoCdSpec {
    /// Argo CD's namespace, the same in both globals (`openshift-gitops` on OpenShift GitOps).
    /// Never replicated (each global's Argo CD is its own) and never fenced on a standby.
    #[serde(default = "default_argocd_namespace")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: String,
}

impl Default for ArgoCdSpec {
    fn default() -> Self {
        Self { namespace: default_argocd_namespace() }
    }
}

/// Argo CD's namespace unless `spec.argocd.namespace` says otherwise: one Argo CD per global,
/// so the survivor can still sync.
pub const DEFAULT_ARGOCD_NAMESPACE: &str = "argocd";

fn default_argocd_namespace() -> String {
    DEFAULT_ARGOCD_NAMESPACE.to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    /// The platform domain whose record points at the primary's VIP.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", DOMAIN_PATTERN.replace('\\', "\\\\")))
        .message("spec.platform.domain must be a lower-case fully qualified domain name, e.g. platform.example.com"))]
    pub domain: String,
    /// TTL in seconds of the platform record.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    30
}

/// A reference to a key of a Secret. The object is cluster-scoped, so the namespace is explicit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: String,
    /// Key inside the Secret; each consumer documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kubeconfigSecretRef)")
    .message("kubeconfigSecretRef is required: without it the peer cannot reach this cluster and a failover never passes Demote")
    .field_path(".kubeconfigSecretRef").reason(Reason::FieldValueRequired))]
pub struct ClusterSpec {
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(format!("self.matches('{NAME_PATTERN}')"))
        .message("cluster names are RFC 1123 labels: lower-case letters, digits and '-'"))]
    pub name: String,
    /// The VIP in front of this cluster; the platform domain points here while it is primary.
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("vip must be an IPv4 or IPv6 address"))]
    #[x_kube(validation = Rule::new("!isIP(self) || !(ip(self).isUnspecified() || ip(self) == ip('255.255.255.255') || cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self))")
        .message("vip must be an address clients can reach: not unspecified, broadcast or multicast"))]
    pub vip: String,
    /// URL of this cluster's kube-apiserver, used by the peer.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("apiServer must be an http(s) URL"))]
    #[x_kube(validation = Rule::new(format!("!self.matches('{}')", crate::urls::USERINFO_PATTERN)).message("credentials in a URL are refused: remove the user:password@ part and use the Secret reference"))]
    pub api_server: String,
    /// Secret holding a kubeconfig the peer uses to reach this cluster (key default `kubeconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretRef>,
    pub etcd: EtcdSpec,
    #[serde(default = "default_encryption_config_path")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = "^/"))]
    pub encryption_config_path: String,
}

fn default_encryption_config_path() -> String {
    DEFAULT_ENCRYPTION_CONFIG_PATH.to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Client URLs of this cluster's etcd, e.g. `https://10.0.0.1:2379`.
    #[schemars(length(min = 1, max = 16), inner(length(max = 2048)))]
    #[x_kube(validation = Rule::new("self.all(e, e.startsWith('https://') || e.startsWith('http://'))")
        .message("etcd endpoints must be http(s) URLs, e.g. https://10.0.0.1:2379"))]
    #[x_kube(validation = Rule::new(format!("self.all(e, !e.matches('{}'))", crate::urls::USERINFO_PATTERN)).message("credentials in a URL are refused: remove the user:password@ part and use the Secret reference"))]
    pub endpoints: Vec<String>,
    /// Secret with `ca.crt`, `tls.crt`, `tls.key` for mTLS to this etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.manifest) || !has(self.manifest.kind) || self.manifest.kind != 'Namespace'")
    .message("spec.sync.manifest must not be a Namespace: it is deleted while this cluster is primary, with everything in it").field_path(".manifest"))]
#[x_kube(validation = Rule::new("self.driver != 'manifest' || has(self.manifest)")
    .message("spec.sync.driver manifest needs spec.sync.manifest").field_path(".manifest").reason(Reason::FieldValueRequired))]
pub struct SyncSpec {
    #[serde(default)]
    pub exclude: ExcludeSpec,
    /// How often the standby runs a full consistency check.
    #[serde(default = "default_check_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}')")).message("checkInterval must be a duration like 30s, 5m or 1h"))]
    #[x_kube(validation = Rule::new(crate::fields::floor_rule(&crate::fields::CHECK_INTERVAL_FLOOR)).message(kube::core::Message::Message(crate::fields::CHECK_INTERVAL_FLOOR.message())))]
    pub check_interval: String,
    /// Most primary keys per second the periodic check reads (0: as fast as the primary
    /// answers). A check reads the whole replicated keyspace of the primary, whose own clients
    /// wait longer meanwhile; FinalSync's check during a failover is never held back.
    #[serde(default = "default_check_read_rate")]
    #[schemars(range(max = 100000000))]
    #[x_kube(validation = Rule::new(format!("self == 0 || self >= {CHECK_READ_RATE_MIN}")).message(kube::core::Message::Message(format!("checkReadRate must be 0 (unbounded) or at least {CHECK_READ_RATE_MIN} keys/s: below that a check of a million keys takes over a quarter of an hour"))))]
    pub check_read_rate: u64,
    #[serde(default)]
    pub driver: SyncDriver,
    /// While this cluster is standby, refuse writes to replicated data by anyone but the mirror
    /// (a ValidatingAdmissionPolicy): users, and the standby's own controllers and scheduler.
    #[serde(default)]
    pub fence: FenceSpec,
    /// With `driver: manifest`: the platform's own sync object, applied while standby and deleted
    /// while primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_manifest")]
    pub manifest: Option<serde_json::Value>,
    /// The standby's checks (periodic and FinalSync) re-put keys it lacks or holds different
    /// bytes for, from the primary, then check again; restarting the mirror is never the fix.
    /// Keys only the standby has are reported, never deleted (`drctl check --prune-surplus`).
    #[serde(default = "default_auto_repair")]
    pub auto_repair: bool,
    /// How many differing keys the last check may find before the standby is not healthy.
    #[serde(default)]
    pub health: SyncHealthSpec,
}

/// Thresholds of a standby's health (phase, `SyncHealthy`, metrics, Argo CD's health.lua) for
/// the keys the last check found only here or different here. Missed keys are held to
/// `spec.failover.maxMissedKeys`: a standby a planned failover would refuse is not healthy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncHealthSpec {
    /// Most keys only the standby may hold (someone wrote there besides the mirror). Default 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_surplus_keys: u64,
    /// Most keys whose bytes may differ from the primary's, after autoRepair. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_diverged_keys: u64,
}

impl Default for SyncSpec {
    fn default() -> Self {
        Self {
            health: SyncHealthSpec::default(),
            exclude: ExcludeSpec::default(),
            fence: FenceSpec::default(),
            check_interval: default_check_interval(),
            check_read_rate: default_check_read_rate(),
            driver: SyncDriver::default(),
            manifest: None,
            auto_repair: default_auto_repair(),
        }
    }
}

fn default_auto_repair() -> bool {
    true
}

fn default_check_interval() -> String {
    "5m".into()
}

/// The smallest non-zero `spec.sync.checkReadRate`, keys/s.
pub const CHECK_READ_RATE_MIN: u64 = 1000;

fn default_check_read_rate() -> u64 {
    50_000
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any Kubernetes object; `kind` is declared so a CEL rule can read it.
fn any_manifest(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": { "kind": { "type": "string", "maxLength": 63 } },
    })
}

/// Who may write replicated data on a standby (see README "Fencing a standby"). Nobody but the
/// mirror does by default: the standby's own controllers, scheduler and in-cluster writers are
/// refused, except drctl (its namespace's ServiceAccounts), the apiserver itself and these.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FenceSpec {
    #[serde(default = "default_fence_enabled")]
    pub enabled: bool,
    /// Groups that may still write replicated data on a standby. Default `system:masters`: the
    /// break-glass admin (who can delete the fence anyway).
    #[serde(default = "default_fence_exempt_groups")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(g, !(g in ['system:authenticated', 'system:unauthenticated', 'system:serviceaccounts']))")
        .message("exemptGroups must not hold system:authenticated, system:unauthenticated or system:serviceaccounts: the fence would stop nobody"))]
    pub exempt_groups: Vec<String>,
    /// Users (e.g. `system:serviceaccount:ns:name`) that may still write replicated data on a
    /// standby. Default: none.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub exempt_users: Vec<String>,
}

impl Default for FenceSpec {
    fn default() -> Self {
        Self { enabled: default_fence_enabled(), exempt_groups: default_fence_exempt_groups(), exempt_users: Vec::new() }
    }
}

fn default_fence_enabled() -> bool {
    true
}

fn default_fence_exempt_groups() -> Vec<String> {
    vec!["system:masters".into()]
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum SyncDriver {
    /// drctl's own etcd mirror, in-process.
    #[default]
    Builtin,
    /// A user-given manifest (a platform's own synchronizer).
    Manifest,
}

/// What is not replicated beyond the defaults (`exclusions::DEFAULT_EXCLUSIONS`, README "What
/// is never replicated"): every list here adds to them; only `optOut` removes a default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExcludeSpec {
    /// Namespaces never replicated, in addition to the default ones.
    #[serde(default)]
    #[schemars(length(max = 512), inner(length(max = 63), regex(pattern = NAME_PATTERN)))]
    pub namespaces: Vec<String>,
    /// Resources never replicated, in addition to the default ones, as `resource` or
    /// `group/resource`. No wildcards; `namespaces` is refused (nothing namespaced would be served).
    #[serde(default)]
    #[schemars(length(max = 512), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(r, !r.contains('*') && r != 'namespaces' && r != 'v1/namespaces')")
        .message("spec.sync.exclude.resources: no wildcards, and not namespaces: that would exclude (nearly) everything"))]
    pub resources: Vec<String>,
    /// Raw etcd key prefixes never replicated, each under `/registry/` and naming at least one
    /// whole segment, e.g. `/registry/example.com/widgets/`.
    #[serde(default)]
    #[schemars(length(max = 512), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new(format!("self.all(p, p.matches('{KEY_PREFIX_PATTERN}'))"))
        .message("spec.sync.exclude.keyPrefixes: each prefix is under /registry/ and names a whole segment, e.g. /registry/example.com/widgets/"))]
    pub key_prefixes: Vec<String>,
    /// Default exclusions to replicate anyway, one entry per item, each with the reason.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub opt_out: Vec<OptOut>,
}

/// Replicate one default-excluded namespace or resource after all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.__namespace__) != has(self.resource)")
    .message("an optOut entry names exactly one of namespace or resource"))]
#[x_kube(validation = Rule::new(crate::exclusions::opt_out_cel())
    .message("an optOut entry names a default exclusion (README: What is never replicated)"))]
pub struct OptOut {
    /// A namespace of the default exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// A resource of the default exclusions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub resource: Option<String>,
    /// Why this cluster pair replicates it (kept in Git, shown by `drctl validate`).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartSpec {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default)]
    pub scope: RestartScope,
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: String,
    /// A label selector in kubectl syntax: `app=vmselect` or `app in (vmselect,vminsert)`.
    #[schemars(length(min = 1, max = 1024))]
    pub label_selector: String,
    #[serde(default)]
    pub method: RestartMethod,
    /// The runbook moments that trigger this restart.
    #[schemars(length(min = 1, max = 3))]
    pub when: Vec<RestartWhen>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RestartScope {
    /// The global cluster the controller runs in.
    #[default]
    #[serde(rename = "self")]
    SelfCluster,
    /// Every cluster in `spec.workloadClusters`.
    WorkloadClusters,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RestartMethod {
    /// Patch `restartedAt` into the pod template of Deployments, StatefulSets and DaemonSets.
    #[default]
    RolloutRestart,
    /// Delete matching pods and let their owners recreate them.
    DeletePods,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RestartWhen {
    /// Once, after replication first becomes healthy on a standby.
    SyncEnabled,
    /// On the new primary during failover.
    Failover,
    /// On the old primary once it has become a standby.
    Demotion,
}

/// How the platform domain is switched. Exactly one provider is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.rfc2136), has(self.powerdns), has(self.externalDns), has(self.webhook), has(self.manual)].filter(x, x).size() == 1")
    .message("spec.dns must set exactly one of rfc2136, powerdns, externalDns, webhook, manual"))]
pub struct DnsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powerdns: Option<PowerDns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_dns: Option<ExternalDns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualDns>,
    #[serde(default)]
    pub verify: DnsVerify,
}

/// Dynamic update (RFC 2136) signed with TSIG.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rfc2136Dns {
    /// Primary name server, `host:port` (port 53 if omitted).
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// The zone the record lives in, e.g. `example.com.`.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    #[schemars(length(min = 1, max = 253))]
    pub tsig_key_name: String,
    #[serde(default = "default_tsig_algorithm")]
    pub tsig_algorithm: TsigAlgorithm,
    /// Secret holding the base64 TSIG secret (key default `secret`).
    pub tsig_secret_ref: SecretRef,
}

fn default_tsig_algorithm() -> TsigAlgorithm {
    TsigAlgorithm::HmacSha256
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// The PowerDNS authoritative HTTP API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PowerDns {
    /// Base URL of the API, e.g. `http://pdns.example.com:8081`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(format!("!self.matches('{}')", crate::urls::USERINFO_PATTERN)).message("credentials in a URL are refused: remove the user:password@ part and use the Secret reference"))]
    pub api_url: String,
    #[serde(default = "default_pdns_server_id")]
    pub server_id: String,
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// Secret holding the API key (key default `apiKey`).
    pub api_key_secret_ref: SecretRef,
}

fn default_pdns_server_id() -> String {
    "localhost".into()
}

/// An external-dns `DNSEndpoint` object that drctl rewrites; external-dns does the rest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDns {
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A generic webhook: drctl POSTs `{domain, recordType, address, ttl}` with header
/// `X-Drctl-Timestamp: <unix seconds>` and `X-Drctl-Signature: sha256=<hex HMAC-SHA256 of
/// "<timestamp>.<body>">`; any 2xx means accepted. Receivers should refuse stale timestamps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDns {
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(format!("!self.matches('{}')", crate::urls::USERINFO_PATTERN)).message("credentials in a URL are refused: remove the user:password@ part and use the Secret reference"))]
    pub url: String,
    /// Secret holding the HMAC key (key default `hmacKey`).
    pub hmac_secret_ref: SecretRef,
}

/// An operator switches DNS by hand and confirms with an annotation on the DRTopology.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManualDns {
    /// Shown to the operator while drctl waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsVerify {
    /// Resolvers asked after the switch, `ip` or `ip:port`. Empty: the system resolver.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, !r.matches('^([0-9.]+|\\\\[[0-9a-fA-F:.]*\\\\]):0+$'))").message("a resolver's port must not be 0; omit the port for 53"))]
    pub resolvers: Vec<String>,
    /// Rollout-restart CoreDNS (kube-system, k8s-app=kube-dns) when it still answers the old VIP.
    #[serde(default, rename = "restartCoreDNS")]
    pub restart_core_dns: bool,
    /// Give up verifying after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::fields::floor_rule(&crate::fields::VERIFY_TIMEOUT_FLOOR)).message(kube::core::Message::Message(crate::fields::VERIFY_TIMEOUT_FLOOR.message())))]
    pub timeout: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Most keys the check may find missing on the new primary before a planned failover stops.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_missed_keys: u64,
    /// How long to wait for a reachable old primary to acknowledge its demotion.
    #[serde(default = "default_demotion_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}')")).message("demotionTimeout must be a duration like 30s, 2m or 1h"))]
    #[x_kube(validation = Rule::new(crate::fields::floor_rule(&crate::fields::DEMOTION_TIMEOUT_FLOOR)).message(kube::core::Message::Message(crate::fields::DEMOTION_TIMEOUT_FLOOR.message())))]
    pub demotion_timeout: String,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub pre_hooks: Vec<Hook>,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub post_hooks: Vec<Hook>,
    /// How long FinalSync may try (catch up, check, repair, again) counted from its first start,
    /// across retries and controller restarts, before `finalSyncPolicy` ends the failover: the old
    /// primary has already stepped down, so the pair never waits longer than this without one.
    #[serde(default = "default_final_sync_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DURATION_PATTERN}')")).message("finalSyncTimeout must be a duration like 30s, 2m or 1h"))]
    #[x_kube(validation = Rule::new(crate::fields::floor_rule(&crate::fields::FINAL_SYNC_TIMEOUT_FLOOR)).message(kube::core::Message::Message(crate::fields::FINAL_SYNC_TIMEOUT_FLOOR.message())))]
    pub final_sync_timeout: String,
    /// What ends a FinalSync that did not pass within `finalSyncTimeout`.
    #[serde(default)]
    pub final_sync_policy: FinalSyncPolicy,
    /// Plan and report the steps; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Fail over even when the clusters' encryption configs differ (copied secrets won't decrypt).
    #[serde(default)]
    pub allow_encryption_config_mismatch: bool,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            max_missed_keys: 0,
            demotion_timeout: default_demotion_timeout(),
            final_sync_timeout: default_final_sync_timeout(),
            final_sync_policy: FinalSyncPolicy::default(),
            pre_hooks: Vec::new(),
            post_hooks: Vec::new(),
            dry_run: false,
            allow_encryption_config_mismatch: false,
        }
    }
}

fn default_demotion_timeout() -> String {
    "2m".into()
}

fn default_final_sync_timeout() -> String {
    "2m".into()
}

/// How a failover ends whose FinalSync did not pass within `finalSyncTimeout` (README "Safety
/// rules").
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum FinalSyncPolicy {
    /// Give the primary role back: the new primary abandons its failover (before StopSync, so it
    /// never served), writes a demotion token for the old one, which reclaims; no data is lost.
    /// It is retried only when the spec changes or `drctl.io/retry-failover` is set to a new value.
    #[default]
    Abandon,
    /// Go on without the keys still missing here: they are lost (counted in the RPO token and an
    /// Event `FinalSyncProceeded`).
    Proceed,
}

/// A runbook hook: a Job from a template, or a webhook call. Exactly one is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.job) != has(self.webhook)").message("a hook sets exactly one of job or webhook"))]
pub struct Hook {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookHook>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobHook {
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub namespace: String,
    /// A `batch/v1` Job spec; drctl names the Job and waits for it to succeed.
    #[schemars(schema_with = "any_object")]
    pub template: serde_json::Value,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookHook {
    #[schemars(length(min = 1, max = 2048), regex(pattern = "^https?://"))]
    #[x_kube(validation = Rule::new(format!("!self.matches('{}')", crate::urls::USERINFO_PATTERN)).message("credentials in a URL are refused: remove the user:password@ part and use the Secret reference"))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretRef>,
    /// The receiver answers drill calls (header `X-Drctl-Drill: true`, `"drill": true` in the
    /// body) without acting: a drill calls it. Unset, a drill does not call it (and warns).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCluster {
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Secret holding a kubeconfig for this workload cluster (key default `kubeconfig`).
    pub kubeconfig_secret_ref: SecretRef,
}

// ---------------------------------------------------------------------------------------------
// Status: written by the controller of the cluster the object lives in, never by Git.

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DRTopologyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// sha256 of this cluster's encryption config; the peer compares it before failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,
    /// Set by a primary that saw `spec.primary` move away: the acknowledgement the new primary
    /// waits for before it takes over (the demotion token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demotion: Option<DemotionStatus>,
    /// The primary term this cluster holds or last held. Becoming primary (bootstrap or a
    /// completed failover) raises it past every term this cluster has held or seen, so the
    /// cluster with the higher term holds the latest completed failover. 0: never primary, or a
    /// status written before terms existed.
    #[serde(default)]
    pub term: i64,
    /// The highest term read from the peer (the primary a standby follows, the old primary at
    /// Preflight and Demote), so a disaster failover still raises the term past it.
    #[serde(default)]
    pub peer_term: i64,
    /// The last drill asked of this cluster by annotation `drctl.io/drill` (`drctl drill`'s
    /// report): running while `finishedAt` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillStatus>,
    /// The platform's own Argo CD Applications that follow the role (label
    /// `drctl.io/follow-role: primary` in `spec.argocd.namespace`): held on a standby, released
    /// on the acting primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<ApplicationsStatus>,
    /// The drctl controller that writes this status: its version and the peer protocol it
    /// speaks (`decide::skew`). Absent: a release from before protocols (32753b3 or older).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerStatus>,
}

/// `status.applications`: what drctl last did to this global's labelled Applications.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationsStatus {
    /// What this cluster's role wants of them.
    pub state: ApplicationsState,
    /// How many labelled Applications there are (all in `state` unless `message` says otherwise).
    pub count: u32,
    /// Their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// What could not be held or released, and why (retried every reconcile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether a labelled Application's automated sync is on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApplicationsState {
    /// `spec.syncPolicy.automated` removed (kept in annotation `drctl.io/held-automated`): this
    /// global's Argo CD does not sync them into a fenced standby.
    #[default]
    Held,
    /// `spec.syncPolicy.automated` as declared: the acting primary's Argo CD syncs them.
    Released,
}

/// `status.controller`: what the peer reads to know which rules this controller follows.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    /// drctl's version (the crate version of its build).
    #[schemars(length(max = 64))]
    pub version: String,
    /// The peer protocol it speaks; a controller of a newer one refuses to step down for it.
    pub protocol: u32,
}

/// A drill's report as kept in status (`src/drill.rs`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatus {
    /// The value of annotation `drctl.io/drill` this drill answered: each value runs once.
    pub id: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// No step failed; unset while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// The finish of the newest drill that passed (this one or an earlier one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_passed_at: Option<String>,
    /// FinalSync's catch-up and check as measured, plus the platform record's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_rto_seconds: Option<f64>,
    /// Primary revisions not applied here when the drill started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_revisions: Option<i64>,
    /// Now minus the newest primary heartbeat applied here, when the drill started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<DrillStepStatus>,
    /// The preflight rows that were not ok.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<DrillFinding>,
    /// What a failover now would have stopped at: each failed step with its detail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// One rehearsed step of a drill.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrillStepStatus {
    pub name: String,
    /// ok, warn or fail.
    pub outcome: String,
    pub seconds: f64,
    #[serde(default)]
    pub detail: String,
}

/// A preflight row of a drill that was not ok.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrillFinding {
    pub check: String,
    pub target: String,
    /// warn or fail.
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DemotionStatus {
    /// The primary this cluster stepped down for.
    pub new_primary: String,
    /// This cluster's etcd revision when it stopped acting as primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_revision: Option<i64>,
    /// This cluster's etcd cluster ID, so the new primary can tie the revision to a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    /// `when: demotion` restarts have run.
    #[serde(default)]
    pub restarts_done: bool,
    /// The `when: demotion` restarts once begun: a later look (or a restarted controller) waits
    /// for them, restarting nothing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartsBegun>,
    /// The primary term this cluster held when it stepped down: the token answers for that term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// Set when this cluster stood down against its own `spec.primary` (a primary of a higher
    /// term, or DNS answering the peer): the spec generation and retry annotation it stood down
    /// under. It holds, fenced, until one of them changes or the peer hands the role back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stood_down: Option<AbandonedUnder>,
    /// The revisions this cluster took as primary that the new primary's failover never applied
    /// (`finalRevision` against the new primary's `rpoToken.appliedRevision` for this cluster's
    /// etcd): the RPO of that failover, measured once the two see each other again. Those writes
    /// stay here as surplus keys or in the divergence archive; 0 after a planned switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreplicated_revisions: Option<i64>,
}

/// Restarts of one occasion (`when: demotion`, `when: syncEnabled`) that have begun.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestartsBegun {
    /// When they began, recorded before they act: their stamp (so acting again restarts nothing
    /// twice) and the start of `--restart-ready-timeout`.
    pub started_at: String,
    /// What they restarted, once they have: later looks only wait for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Steady,
    Syncing,
    FailingOver,
    Demoting,
    Degraded,
    Invalid,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Latest revision seen on the primary's etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<i64>,
    /// Last primary revision fully applied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<i64>,
    /// Revisions this etcd still lies below the primary's numbering (absent once its revision
    /// is at or above every primary revision applied here): while it is, a client holding one
    /// of the primary's resourceVersions could resume here past writes after a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_gap: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Now minus the newest primary heartbeat applied here (`src/heartbeat.rs`): the RPO
    /// measured; it also grows when the primary's controller stops writing beats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_keys: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surplus_keys: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged_keys: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    /// Keys the checks re-put from the primary (`spec.sync.autoRepair`) in this standby term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired_keys: Option<u64>,
    /// `when: syncEnabled` restarts have run for this standby term.
    #[serde(default)]
    pub restarts_done: bool,
    /// The `when: syncEnabled` restarts of this standby term once begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartsBegun>,
    /// The last archive of this cluster's own values that the mirror (a resync, a copy over
    /// existing data) or a repair overwrote or deleted: saved in this cluster's etcd under
    /// `drctl/archive/<archiveId>/` (`drctl archive list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<ArchivedStatus>,
    /// The last time the primary's etcd history went back (restored from a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewound: Option<RewoundStatus>,
}

/// Keys saved in a divergence archive before they were overwritten or deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedStatus {
    /// Keys in the archive.
    pub count: u64,
    pub archive_id: String,
    /// The saved keys' mod revisions in this cluster's etcd, `lowest-highest`.
    pub revisions: String,
    /// "resync after compaction", "source cluster changed", "source rewound", "rejoin after being
    /// primary", "initial copy over existing data" or "repair".
    pub reason: String,
    /// Keys archived since this cluster became standby, every archive.
    #[serde(default)]
    pub total: u64,
}

/// The source's history went back: the revision this cluster had applied, the source's head then
/// (below it, or past it again in another history).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RewoundStatus {
    pub from_revision: i64,
    pub to_revision: i64,
    pub detected_at: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_token: Option<RpoToken>,
    /// The old primary's term as read at Preflight and Demote; absent when it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_term: Option<i64>,
    /// Since when the old primary has not answered Demote, in a row (absent once it answers): a
    /// disaster is declared after `demotionTimeout` of this, also across controller restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_down_since: Option<String>,
    /// What the Restart step restarted, once it has: a later look only waits for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
    /// The hooks of this failover that finished, so a step waiting for a later hook's Job (or
    /// retried) does not call them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks_done: Vec<HookDone>,
    /// The term this failover gave this cluster, set when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// Why the failover ended early (e.g. superseded by a flip back); absent when it ran through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Set when FinalSync did not pass within `finalSyncTimeout` and `finalSyncPolicy: abandon`
    /// gave the role back: what it was abandoned under, so it is not retried until that changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<AbandonedUnder>,
    /// The `drctl.io/break-glass` annotation set with the flip that started this failover: it
    /// was made in the cluster (Git or the forge down), not by a commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Set when the Demote step passed on the operator's override (annotation
    /// `drctl.io/override-demotion`) instead of the old primary's acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote_overridden: Option<DemoteOverridden>,
    /// The Git commit that flipped `spec.primary`, when the controller can read the repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An override of the Demote step, as accepted: the audit record of a failover that did not
/// wait for the old primary's acknowledgement while that primary still answered.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DemoteOverridden {
    /// The annotation's value: the old primary and the term it held (`<cluster>/<term>`).
    pub annotation: String,
    pub accepted_at: String,
    /// The old primary's etcd head after the quiet window: what FinalSync caught up to.
    pub final_revision: i64,
    /// How long its etcd was watched and found taking no client writes.
    pub quiet_seconds: u64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub name: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A hook that finished in a failover: its phase (`pre`, `post`), name and what it said.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HookDone {
    pub phase: String,
    pub name: String,
    pub message: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StepState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// The spec generation and `drctl.io/retry-failover` annotation a failover was abandoned (or a
/// primary stood down) under: it holds until one of them changes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AbandonedUnder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
}

/// What a planned switchover promises not to lose: the last source revision applied here.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RpoToken {
    pub source_cluster_id: String,
    /// The old primary's final revision when it acknowledged demotion (absent in a disaster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_revision: Option<i64>,
    pub applied_revision: i64,
    /// Keys of the old primary missing here at FinalSync's last finished check: lost when the failover
    /// went on with them (`maxMissedKeys`, `finalSyncPolicy: proceed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_keys: Option<u64>,
}

impl DRTopologySpec {
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The cluster that is not `name`, when `name` is one of the two.
    pub fn peer_of(&self, name: &str) -> Option<&ClusterSpec> {
        self.cluster(name)?;
        self.clusters.iter().find(|c| c.name != name)
    }
}

/// The DRTopology that is acted on when there are several: the oldest (ties by name).
pub fn oldest(items: impl IntoIterator<Item = DRTopology>) -> Option<DRTopology> {
    items.into_iter().min_by_key(|t| (t.metadata.creation_timestamp.clone().map(|t| t.0), t.metadata.name.clone()))
}

/// The CRD as YAML, exactly what `drctl crd` prints and `crds/drtopology.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let header = "# Generated by `drctl crd`; do not edit. CI fails when this file drifts.\n";
    Ok(format!("{header}{}", crate::kyaml::to_string(&DRTopology::crd())?))
}
