//! The Kubernetes etcd keyspace: what a `/registry/...` key names, and which keys DR never copies.

use std::collections::HashSet;

pub use crate::exclusions::{default_namespaces, default_resources};
use crate::topology::{ExcludeSpec, OptOut};

/// Objects excluded by name in every namespace, with why: each cluster makes its own.
pub const NEVER_COPIED_NAMES: [(&str, &str, &str); 1] =
    [("configmaps", "kube-root-ca.crt", "each cluster's root-ca-cert-publisher writes its own cluster CA there")];

/// Where the apiserver keeps everything (its default `--etcd-prefix`). Nothing outside is copied.
pub const REGISTRY_PREFIX: &str = "/registry/";
/// The controller's own namespace: each global runs its own controller.
pub const DEFAULT_CONTROLLER_NAMESPACE: &str = "drctl-system";
// Argo CD's namespace by default: the default lives with the spec (`spec.argocd.namespace`).
pub use crate::topology::DEFAULT_ARGOCD_NAMESPACE;

/// Keys never copied whatever the configuration says, with why.
const NEVER_COPIED_PREFIXES: [&str; 5] = [
    // The apiserver's compaction CAS clock; the standby's apiserver keeps its own.
    "/registry/compact_rev_key",
    // The apiservers of the source cluster announcing themselves.
    "/registry/masterleases/",
    // The DRTopology objects: Argo CD applies them to each global, each keeps its own status.
    "/registry/drctl.io/drtopologies/",
    // A standby's fence (src/fence.rs) is its own: copying or pruning it would lift it.
    "/registry/validatingadmissionpolicies/drctl-fence-",
    "/registry/validatingadmissionpolicybindings/drctl-fence-",
];

/// What a `/registry/...` key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey<'a> {
    /// API group when the key carries one (`apps` keys do not; CRD keys do).
    pub group: Option<&'a str>,
    /// Resource (plural), with the special prefixes mapped to their resource names.
    pub resource: &'a str,
    /// The namespace the object lives in; for a Namespace object, the namespace it *is*.
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// Parses a key of the apiserver's keyspace; None for anything that is not an object key.
pub fn parse(key: &[u8]) -> Option<ObjectKey<'_>> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(REGISTRY_PREFIX)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let (group, resource, tail) = match segs.as_slice() {
        ["services", "specs", tail @ ..] => (None, "services", tail),
        ["services", "endpoints", tail @ ..] => (None, "endpoints", tail),
        [g, r, tail @ ..] if g.contains('.') => (Some(*g), *r, tail),
        [r, tail @ ..] => (None, special_resource(r), tail),
        [] => return None,
    };
    let (namespace, name) = match tail {
        [name] if resource == "namespaces" && group.is_none() => (Some(*name), *name),
        [name] => (None, *name),
        [ns, name] => (Some(*ns), *name),
        _ => return None,
    };
    if resource.is_empty() || name.is_empty() || namespace.is_some_and(str::is_empty) {
        return None;
    }
    Some(ObjectKey { group, resource, namespace, name })
}

/// Built-in resources whose key prefix is not their resource name (historical names).
fn special_resource(segment: &str) -> &str {
    match segment {
        "minions" => "nodes",
        "controllers" => "replicationcontrollers",
        "ingress" => "ingresses",
        other => other,
    }
}

/// Which keys DR copies: everything under `/registry/` except the never-copied keys and the
/// configured exclusions.
#[derive(Debug, Clone)]
pub struct Filter {
    namespaces: HashSet<String>,
    /// (group, resource); no group matches the resource in any group.
    resources: Vec<(Option<String>, String)>,
    prefixes: Vec<Vec<u8>>,
}

impl Filter {
    /// A filter from the defaults (less the opt-outs), the topology's exclusions and the
    /// never-copied rules, with the controller's and Argo CD's namespaces given.
    pub fn new(spec: &ExcludeSpec, controller_namespace: &str, argocd_namespace: &str) -> Filter {
        let mut namespaces: HashSet<String> = excluded_namespaces(spec).into_iter().collect();
        namespaces.insert(controller_namespace.to_string());
        namespaces.insert(argocd_namespace.to_string());
        let opted_out = |r: &str| spec.opt_out.iter().any(|o| o.resource.as_deref() == Some(r));
        let resources = default_resources()
            .filter(|r| !opted_out(r))
            .map(str::to_string)
            .chain(spec.resources.iter().cloned())
            .map(|r| match r.rsplit_once('/') {
                Some((g, r)) => (Some(g.to_string()), r.to_string()),
                None => (None, r),
            })
            .collect();
        let prefixes = NEVER_COPIED_PREFIXES.iter().map(|p| p.as_bytes().to_vec()).chain(spec.key_prefixes.iter().map(|p| p.as_bytes().to_vec())).collect();
        Filter { namespaces, resources, prefixes }
    }

    /// A filter with the default controller and Argo CD namespaces.
    pub fn with_default_namespaces(spec: &ExcludeSpec) -> Filter {
        Filter::new(spec, DEFAULT_CONTROLLER_NAMESPACE, DEFAULT_ARGOCD_NAMESPACE)
    }

    /// Namespaces never replicated (the fence leaves them writable).
    pub fn excluded_namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().map(String::as_str)
    }

    /// Resources never replicated, as (group, resource); no group means any group.
    pub fn excluded_resources(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.resources.iter().map(|(g, r)| (g.as_deref(), r.as_str()))
    }

    /// True when `key` is replicated.
    pub fn copies(&self, key: &[u8]) -> bool {
        if !key.starts_with(REGISTRY_PREFIX.as_bytes()) || self.prefixes.iter().any(|p| key.starts_with(p)) {
            return false;
        }
        // Keys of an unknown shape are copied: the mirror must not silently drop data it does
        // not understand; exclude them with a key prefix.
        let Some(obj) = parse(key) else { return true };
        if obj.namespace.is_some_and(|ns| self.namespaces.contains(ns))
            || NEVER_COPIED_NAMES.iter().any(|(r, n, _)| obj.group.is_none() && obj.resource == *r && obj.name == *n)
        {
            return false;
        }
        !self.excludes(obj.group, obj.resource)
    }

    /// Whether the exclusions name this resource (of this group).
    fn excludes(&self, key_group: Option<&str>, key_resource: &str) -> bool {
        self.resources.iter().any(|(group, resource)| {
            // Built-in keys carry no group, so `apps/deployments` matches `/registry/deployments/`;
            // a custom group (`example.com/secrets`) only matches keys that carry it.
            resource == key_resource
                && match (group, key_group) {
                    (Some(g), Some(kg)) => g == kg,
                    (Some(g), None) => !g.contains('.') || g.ends_with(".k8s.io"),
                    (None, _) => true,
                }
        })
    }

    /// Whether every object key under the resource prefix `prefix` (`/registry/pods/`) is
    /// excluded because its resource is. A hint for reading such a range without values: keys
    /// of an unknown shape under it are still copied, which only [`Filter::copies`] decides.
    pub fn excludes_resource(&self, prefix: &[u8]) -> bool {
        let probe = [prefix, b"x"].concat();
        prefix.ends_with(b"/") && parse(&probe).is_some_and(|obj| self.excludes(obj.group, obj.resource))
    }
}

/// The namespaces `spec` keeps out of replication (and out of the fence): the defaults less its
/// opt-outs, plus its own list.
pub fn excluded_namespaces(spec: &ExcludeSpec) -> Vec<String> {
    let opted_out = |n: &str| spec.opt_out.iter().any(|o: &OptOut| o.namespace.as_deref() == Some(n));
    let mut out: Vec<String> = default_namespaces().filter(|n| !opted_out(n)).map(str::to_string).collect();
    for n in &spec.namespaces {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace, which etcd spells as "\0".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_key_shapes() {
        type Parsed = Option<(Option<&'static str>, &'static str, Option<&'static str>, &'static str)>;
        let cases: [(&str, Parsed); 16] = [
            ("/registry/pods/team-a/web-0", Some((None, "pods", Some("team-a"), "web-0"))),
            ("/registry/deployments/team-a/web", Some((None, "deployments", Some("team-a"), "web"))),
            ("/registry/namespaces/team-a", Some((None, "namespaces", Some("team-a"), "team-a"))),
            ("/registry/services/specs/team-a/api", Some((None, "services", Some("team-a"), "api"))),
            ("/registry/services/endpoints/team-a/api", Some((None, "endpoints", Some("team-a"), "api"))),
            ("/registry/minions/node-1", Some((None, "nodes", None, "node-1"))),
            ("/registry/controllers/team-a/rc", Some((None, "replicationcontrollers", Some("team-a"), "rc"))),
            ("/registry/ingress/team-a/www", Some((None, "ingresses", Some("team-a"), "www"))),
            ("/registry/clusterroles/admin", Some((None, "clusterroles", None, "admin"))),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
                Some((Some("apiextensions.k8s.io"), "customresourcedefinitions", None, "widgets.example.com")),
            ),
            ("/registry/apiregistration.k8s.io/apiservices/v1.apps", Some((Some("apiregistration.k8s.io"), "apiservices", None, "v1.apps"))),
            ("/registry/example.com/widgets/team-a/w1", Some((Some("example.com"), "widgets", Some("team-a"), "w1"))),
            ("/registry/example.com/clusterwidgets/cw", Some((Some("example.com"), "clusterwidgets", None, "cw"))),
            ("/registry/compact_rev_key", None),
            ("/other/pods/a/b", None),
            ("/registry/pods/a/b/c", None),
        ];
        for (key, want) in cases {
            let got = parse(key.as_bytes()).map(|o| (o.group, o.resource, o.namespace, o.name));
            assert_eq!(got, want, "{key}");
        }
    }

    #[test]
    fn filter_applies_exclusions_and_never_copied_keys() {
        let spec = ExcludeSpec {
            namespaces: vec!["kube-system".into()],
            resources: vec![
                "events".into(),
                "nodes".into(),
                "example.com/secrets".into(),
                "apps/replicasets".into(),
                "storage.k8s.io/volumeattachments".into(),
            ],
            key_prefixes: vec!["/registry/raw.example.com/".into()],
            opt_out: vec![],
        };
        let f = Filter::with_default_namespaces(&spec);
        let cases = [
            ("/registry/pods/team-a/web-0", false),
            ("/registry/pods/kube-system/coredns", false),
            ("/registry/namespaces/kube-system", false),
            ("/registry/namespaces/team-a", true),
            ("/registry/events/team-a/web.1", false),
            ("/registry/minions/node-1", false),
            ("/registry/replicasets/team-a/web-5d8", false),
            ("/registry/secrets/team-a/tls", true),
            ("/registry/volumeattachments/va-1", false),
            ("/registry/example.com/secrets/team-a/s", false),
            ("/registry/other.example.com/secrets/team-a/s", true),
            ("/registry/raw.example.com/things/x", false),
            ("/registry/compact_rev_key", false),
            ("/registry/masterleases/10.0.0.1", false),
            ("/registry/drctl.io/drtopologies/dr", false),
            ("/registry/validatingadmissionpolicies/drctl-fence-platform", false),
            ("/registry/validatingadmissionpolicybindings/drctl-fence-platform", false),
            ("/registry/validatingadmissionpolicies/team-policy", true),
            ("/registry/configmaps/drctl-system/state", false),
            ("/registry/namespaces/argocd", false),
            ("/registry/argoproj.io/applications/argocd/app", false),
            ("/registry/argoproj.io/applications/team-a/app", true),
            ("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com", true),
            ("/registry/some/odd/deep/key/shape", true),
            ("/elsewhere/key", false),
            ("drctl/mirror/checkpoint", false),
        ];
        for (key, want) in cases {
            assert_eq!(f.copies(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn default_filter_excludes_design_defaults() {
        let f = Filter::with_default_namespaces(&ExcludeSpec::default());
        assert!(!f.copies(b"/registry/configmaps/cpaas-system/x"));
        assert!(!f.copies(b"/registry/leases/kube-node-lease/node-1"));
        assert!(!f.copies(b"/registry/certificatesigningrequests/csr-1"));
        assert!(!f.copies(b"/registry/storage.k8s.io/volumeattachments/va"));
        assert!(f.copies(b"/registry/configmaps/team-a/x"));
    }

    #[test]
    fn user_lists_add_to_the_defaults() {
        let spec = ExcludeSpec { namespaces: vec!["team-scratch".into()], resources: vec!["example.com/widgets".into()], ..Default::default() };
        let f = Filter::with_default_namespaces(&spec);
        for ns in default_namespaces() {
            assert!(!f.copies(format!("/registry/configmaps/{ns}/x").as_bytes()), "default {ns} still excluded");
        }
        assert!(!f.copies(b"/registry/configmaps/team-scratch/x"));
        assert!(!f.copies(b"/registry/events/team-a/e"), "default resources still excluded");
        assert!(!f.copies(b"/registry/example.com/widgets/team-a/w"));
        assert!(f.copies(b"/registry/configmaps/team-a/x"));
        assert!(excluded_namespaces(&spec).contains(&"kube-system".to_string()), "and the fence leaves them alone");
    }

    #[test]
    fn opt_out_replicates_exactly_the_named_default() {
        let spec = ExcludeSpec {
            opt_out: vec![
                OptOut { namespace: Some("cert-manager".into()), resource: None, reason: "one shared issuer".into() },
                OptOut { namespace: None, resource: Some("leases".into()), reason: "test".into() },
            ],
            ..Default::default()
        };
        let f = Filter::with_default_namespaces(&spec);
        assert!(f.copies(b"/registry/secrets/cert-manager/ca"));
        assert!(f.copies(b"/registry/leases/team-a/lock"));
        assert!(!f.copies(b"/registry/secrets/kube-system/ca"), "other defaults stay");
        assert!(!f.copies(b"/registry/events/team-a/e"));
        assert!(!excluded_namespaces(&spec).contains(&"cert-manager".to_string()));
    }

    #[test]
    fn per_cluster_and_derived_objects_are_not_copied_by_default() {
        let f = Filter::with_default_namespaces(&ExcludeSpec::default());
        for key in [
            "/registry/configmaps/team-a/kube-root-ca.crt",
            "/registry/endpointslices/team-a/api-x7k",
            "/registry/services/endpoints/team-a/api",
            "/registry/pods/team-a/web-5d8-x",
        ] {
            assert!(!f.copies(key.as_bytes()), "{key}");
        }
        for key in [
            "/registry/configmaps/team-a/kube-root-ca.crt-copy",
            "/registry/example.com/configmaps/team-a/kube-root-ca.crt",
            "/registry/services/specs/team-a/api",
        ] {
            assert!(f.copies(key.as_bytes()), "{key}");
        }
    }
}
