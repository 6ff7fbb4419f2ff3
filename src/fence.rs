//! Fencing a standby: a ValidatingAdmissionPolicy that refuses every write to replicated data
//! by anyone but the mirror, so nothing on the standby changes a copy the mirror is about to
//! overwrite: not users (their edit would be lost silently) and above all not the standby's own
//! control plane (its garbage collector, pod GC, workload controllers and scheduler would delete,
//! recreate, bind and rewrite the primary's objects, and run its workloads a second time).
//!
//! The mirror writes etcd directly and is not subject to admission. What the fence leaves alone,
//! and why, is in [`build`] and the README ("Fencing a standby").

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::Client;

#[cfg(test)]
use crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE;
use crate::keyspace::{Filter, NEVER_COPIED_NAMES};
use crate::validated::ValidatedTopology;

const MANAGER: &str = "drctl-fence";

#[derive(Debug, thiserror::Error)]
#[error("fence {name}: {source}")]
pub struct FenceError {
    name: String,
    source: kube::Error,
}

impl FenceError {
    pub fn kind(&self) -> crate::decide::retry::ErrorKind {
        crate::decide::retry::kube_error_kind(&self.source)
    }
}

/// Resources never replicated that the fence still guards: the standby's workload controllers
/// would make them for replicated workloads (pods for ReplicaSets, Jobs, StatefulSets), which
/// must run only where their owners are primary.
const FENCED_THOUGH_NOT_REPLICATED: [&str; 1] = ["pods"];

/// Writes that store nothing (reviews, token requests): refusing them would only break the
/// standby's authentication, never protect data.
const NOT_STORED: [(&str, &[&str]); 3] = [
    ("authentication.k8s.io", &["tokenreviews", "selfsubjectreviews"]),
    ("authorization.k8s.io", &["subjectaccessreviews", "selfsubjectaccessreviews", "localsubjectaccessreviews", "selfsubjectrulesreviews"]),
    ("", &["serviceaccounts/token"]),
];

/// Users who may write replicated data on a standby besides the configured ones: the apiserver's
/// own loopback client, whose bootstrap writes (default RBAC roles, priority classes, flow
/// control, CRD and APIService status) an apiserver must make to become ready.
const EXEMPT_USERS: [&str; 1] = ["system:apiserver"];

/// Name of the policy and its binding for a topology.
pub fn name(topo: &ValidatedTopology) -> String {
    format!("drctl-fence-{}", topo.name())
}

/// A CEL string literal (JSON's escapes are CEL's).
fn cel_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn cel_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    format!("[{}]", items.into_iter().map(cel_string).collect::<Vec<_>>().join(", "))
}

fn rule(groups: &[&str], resources: Vec<String>, names: &[&str]) -> NamedRuleWithOperations {
    NamedRuleWithOperations {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        api_versions: Some(vec!["*".into()]),
        resources: Some(resources),
        resource_names: (!names.is_empty()).then(|| names.iter().map(|n| n.to_string()).collect()),
        operations: Some(vec!["*".into()]),
        ..Default::default()
    }
}

/// The API group a `spec.sync.exclude.resources` group names (built-in keys carry none).
fn api_group(group: Option<&str>) -> &str {
    match group {
        None => "*",
        Some("core") => "",
        Some(g) => g,
    }
}

/// What the fence leaves writable, beyond excluded namespaces: resources never replicated (each
/// cluster's own, e.g. events, leases, nodes, endpointslices) except pods, writes that store
/// nothing, the DRTopology objects (never replicated, Argo CD applies them to each global) and
/// the objects excluded by name (`kube-root-ca.crt`). `r/*` is the resource and its subresources.
fn unfenced_rules(filter: &Filter) -> Vec<NamedRuleWithOperations> {
    let excluded =
        filter.excluded_resources().filter(|(_, r)| !FENCED_THOUGH_NOT_REPLICATED.contains(r)).map(|(g, r)| rule(&[api_group(g)], vec![format!("{r}/*")], &[]));
    let not_stored = NOT_STORED.iter().map(|(g, rs)| rule(&[g], rs.iter().map(|r| r.to_string()).collect(), &[]));
    let by_name = NEVER_COPIED_NAMES.iter().map(|(r, n, _)| rule(&[""], vec![r.to_string()], &[n]));
    excluded.chain(not_stored).chain(by_name).chain([rule(&["drctl.io"], vec!["drtopologies/*".into()], &[])]).collect()
}

/// The policy and binding that fence this standby (pure: what `apply` writes). The fence covers
/// every write (CREATE/UPDATE/DELETE, subresources included: `status`, `pods/binding`,
/// `pods/eviction`, `namespaces/finalize`) to what the mirror replicates, plus pods, by every
/// identity except drctl's own namespace's ServiceAccounts, the apiserver, and
/// `spec.sync.fence.exemptUsers`/`exemptGroups` (default `system:masters`, the break-glass admin).
/// Argo CD is not exempt: what it owns on a standby (its namespace, the DRTopology, excluded
/// namespaces) is unfenced, and replicated apps arrive from the primary's Argo CD.
pub fn build(topo: &ValidatedTopology, controller_namespace: &str) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = name(topo);
    let filter = topo.spec.filter(controller_namespace);
    let mut unfenced: Vec<String> = filter.excluded_namespaces().map(str::to_string).collect();
    unfenced.sort();
    let fence = &topo.spec.sync.fence;
    let users = cel_list(EXEMPT_USERS.into_iter().chain(fence.exempt_users.iter().map(String::as_str)));
    let drctl = cel_string(&format!("system:serviceaccount:{controller_namespace}:"));
    let groups = cel_list(fence.exempt_groups.iter().map(String::as_str));
    let policy = ValidatingAdmissionPolicy {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "NotIn".into(),
                        values: Some(unfenced),
                    }]),
                    ..Default::default()
                }),
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec!["*".into()]),
                    api_versions: Some(vec!["*".into()]),
                    // `*/*`: every resource and every subresource (`*` alone skips subresources).
                    resources: Some(vec!["*/*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    ..Default::default()
                }]),
                exclude_resource_rules: Some(unfenced_rules(&filter)),
                ..Default::default()
            }),
            match_conditions: Some(vec![
                MatchCondition {
                    name: "not-an-exempt-user".into(),
                    expression: format!("!(request.userInfo.username in {users} || request.userInfo.username.startsWith({drctl}))"),
                },
                MatchCondition {
                    name: "not-an-exempt-group".into(),
                    expression: format!("!(has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in {groups}))"),
                },
            ]),
            validations: Some(vec![Validation {
                expression: "false".into(),
                message: Some(format!(
                    "this cluster is a DR standby fenced by drctl: write to the primary ({}); changes here would be overwritten by replication",
                    topo.spec.primary
                )),
                reason: Some("Forbidden".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        spec: Some(ValidatingAdmissionPolicyBindingSpec { policy_name: Some(name), validation_actions: Some(vec!["Deny".into()]), ..Default::default() }),
    };
    (policy, binding)
}

/// Fences this cluster (idempotent: server-side apply).
pub async fn apply(client: &Client, topo: &ValidatedTopology, controller_namespace: &str) -> Result<(), FenceError> {
    let (policy, binding) = build(topo, controller_namespace);
    let err = |source| FenceError { name: name(topo), source };
    let pp = PatchParams::apply(MANAGER).force();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    policies.patch(&name(topo), &pp, &Patch::Apply(with_type(&policy, "ValidatingAdmissionPolicy"))).await.map_err(err)?;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    bindings.patch(&name(topo), &pp, &Patch::Apply(with_type(&binding, "ValidatingAdmissionPolicyBinding"))).await.map_err(err)?;
    Ok(())
}

/// Lifts the fence (idempotent: a missing object is fine).
pub async fn remove(client: &Client, topo: &ValidatedTopology) -> Result<(), FenceError> {
    let err = |source| FenceError { name: name(topo), source };
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    ignore_missing(bindings.delete(&name(topo), &DeleteParams::default()).await.map(|_| ())).map_err(err)?;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    ignore_missing(policies.delete(&name(topo), &DeleteParams::default()).await.map(|_| ())).map_err(err)?;
    Ok(())
}

fn ignore_missing(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

fn with_type<T: serde::Serialize>(obj: &T, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), "admissionregistration.k8s.io/v1".into());
        m.insert("kind".into(), kind.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(extra: &str) -> ValidatedTopology {
        let yaml = format!("{}{extra}", include_str!("../examples/minimal.yaml"));
        let raw: crate::topology::DRTopology = serde_saphyr::from_str(&yaml).expect("example parses");
        ValidatedTopology::try_from(&raw).expect("valid")
    }

    fn spec(topo: &ValidatedTopology) -> ValidatingAdmissionPolicySpec {
        build(topo, DEFAULT_CONTROLLER_NAMESPACE).0.spec.expect("spec")
    }

    fn conditions(spec: &ValidatingAdmissionPolicySpec) -> Vec<String> {
        spec.match_conditions.clone().unwrap_or_default().into_iter().map(|c| c.expression).collect()
    }

    #[test]
    fn fence_is_on_by_default() {
        assert!(topo("").spec.sync.fence.enabled);
        assert!(!topo("  sync:\n    fence: {enabled: false}\n").spec.sync.fence.enabled);
    }

    /// `spec.argocd.namespace` is what both the mirror's filter and the fence read: an
    /// OpenShift GitOps install is neither replicated nor fenced, and `argocd` then is both.
    #[test]
    fn argocd_namespace_from_the_spec_is_neither_replicated_nor_fenced() {
        let unfenced = |t: &ValidatedTopology| -> Vec<String> {
            let sel = spec(t).match_constraints.and_then(|m| m.namespace_selector).and_then(|s| s.match_expressions).expect("selector");
            sel[0].values.clone().unwrap_or_default()
        };
        let cases = [("", "argocd", "openshift-gitops"), ("  argocd: {namespace: openshift-gitops}\n", "openshift-gitops", "argocd")];
        for (extra, own, other) in cases {
            let t = topo(extra);
            let filter = t.spec.filter(DEFAULT_CONTROLLER_NAMESPACE);
            let app = |ns: &str| format!("/registry/argoproj.io/applications/{ns}/platform");
            assert!(!filter.copies(app(own).as_bytes()), "{own} must not be replicated ({extra:?})");
            assert!(filter.copies(app(other).as_bytes()), "{other} is an ordinary namespace then ({extra:?})");
            assert!(unfenced(&t).iter().any(|n| n == own), "{own} must stay writable on a standby ({extra:?})");
            assert!(!unfenced(&t).iter().any(|n| n == other), "{other} is fenced then ({extra:?})");
        }
    }

    #[test]
    fn fences_every_write_and_subresource_outside_excluded_namespaces_and_names_the_primary() {
        let t = topo("");
        let (policy, binding) = build(&t, DEFAULT_CONTROLLER_NAMESPACE);
        let spec = policy.spec.expect("spec");
        let m = spec.match_constraints.clone().expect("match");
        let sel = m.namespace_selector.and_then(|s| s.match_expressions).expect("selector");
        assert_eq!(sel[0].operator, "NotIn");
        let unfenced = sel[0].values.clone().unwrap_or_default();
        for ns in ["kube-system", "cpaas-system", "drctl-system", "argocd", "kube-node-lease"] {
            assert!(unfenced.iter().any(|n| n == ns), "{ns} must stay writable");
        }
        let rules = m.resource_rules.expect("rules");
        assert_eq!(rules[0].resources, Some(vec!["*/*".to_string()]), "status, binding, eviction are subresources");
        assert_eq!(rules[0].operations, Some(vec!["CREATE".to_string(), "UPDATE".into(), "DELETE".into()]));
        let msg = spec.validations.unwrap_or_default()[0].message.clone().unwrap_or_default();
        assert!(msg.contains("(global-a)"), "{msg}");
        assert_eq!(binding.spec.expect("binding").policy_name.as_deref(), Some("drctl-fence-platform"));
    }

    #[test]
    fn each_clusters_own_resources_and_writes_that_store_nothing_stay_unfenced_but_pods_do_not() {
        let excluded = spec(&topo("")).match_constraints.and_then(|m| m.exclude_resource_rules).expect("exclusions");
        let unfenced = |group: &str, resource: &str, name: Option<&str>| {
            excluded.iter().any(|r| {
                let groups = r.api_groups.clone().unwrap_or_default();
                let names = r.resource_names.clone().unwrap_or_default();
                (groups.iter().any(|g| g == "*" || g == group))
                    && r.resources
                        .clone()
                        .unwrap_or_default()
                        .iter()
                        .any(|x| x == resource || x == &format!("{}/*", resource.split('/').next().unwrap_or_default()))
                    && (names.is_empty() || name.is_some_and(|n| names.iter().any(|x| x == n)))
            })
        };
        for (group, resource) in [
            ("", "events"),
            ("events.k8s.io", "events"),
            ("coordination.k8s.io", "leases"),
            ("", "nodes"),
            ("", "nodes/status"),
            ("discovery.k8s.io", "endpointslices"),
            ("", "endpoints"),
            ("authentication.k8s.io", "tokenreviews"),
            ("authorization.k8s.io", "subjectaccessreviews"),
            ("", "serviceaccounts/token"),
            ("drctl.io", "drtopologies/status"),
        ] {
            assert!(unfenced(group, resource, None), "{group}/{resource} must stay writable");
        }
        assert!(unfenced("", "configmaps", Some("kube-root-ca.crt")), "each cluster's root-ca-cert-publisher writes its own");
        for (group, resource) in [
            ("", "pods"),
            ("", "pods/binding"),
            ("", "pods/eviction"),
            ("", "pods/status"),
            ("", "configmaps"),
            ("apps", "replicasets/status"),
            ("batch", "jobs"),
            ("", "namespaces/finalize"),
        ] {
            assert!(!unfenced(group, resource, Some("web")), "{group}/{resource} must be fenced");
        }
        // An excluded custom resource is each cluster's own too.
        let t = topo("  sync:\n    exclude:\n      resources: [events, example.com/widgets]\n");
        let excluded = spec(&t).match_constraints.and_then(|m| m.exclude_resource_rules).expect("exclusions");
        assert!(excluded.iter().any(|r| r.api_groups == Some(vec!["example.com".into()]) && r.resources == Some(vec!["widgets/*".into()])));
    }

    #[test]
    fn only_drctl_the_apiserver_and_configured_identities_are_exempt() {
        let conds = conditions(&spec(&topo("")));
        assert_eq!(
            conds,
            vec![
                r#"!(request.userInfo.username in ["system:apiserver"] || request.userInfo.username.startsWith("system:serviceaccount:drctl-system:"))"#
                    .to_string(),
                r#"!(has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in ["system:masters"]))"#.to_string(),
            ],
            "controllers, the scheduler, nodes and Argo CD are not exempt"
        );
        let t = topo("  sync:\n    fence:\n      exemptUsers: [\"sa\\\"x\"]\n      exemptGroups: [ops]\n");
        let conds = conditions(&spec(&t));
        assert!(conds[0].contains(r#"["system:apiserver", "sa\"x"]"#), "escaped, not injected: {}", conds[0]);
        assert!(conds[1].contains(r#"["ops"]"#), "{}", conds[1]);
    }
}
