//! Fencing a standby: a ValidatingAdmissionPolicy that rejects user writes to replicated data,
//! so nobody edits a copy the mirror is about to overwrite (and loses the edit silently).
//!
//! The mirror writes etcd directly and is not subject to admission. Users named `system:*`
//! (control-plane components, nodes, service accounts, drctl's own ServiceAccount) and the
//! configured groups stay exempt; excluded namespaces are not fenced, they are not replicated.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::keyspace::DEFAULT_ARGOCD_NAMESPACE;
#[cfg(test)]
use crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE;
use crate::topology::DRTopology;

const MANAGER: &str = "drctl-fence";

#[derive(Debug, thiserror::Error)]
#[error("fence {name}: {source}")]
pub struct FenceError {
    name: String,
    source: kube::Error,
}

/// Name of the policy and its binding for a topology.
pub fn name(topo: &DRTopology) -> String {
    format!("drctl-fence-{}", topo.name_any())
}

/// The policy and binding that fence this standby (pure: what `apply` writes).
pub fn build(topo: &DRTopology, controller_namespace: &str) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = name(topo);
    let mut unfenced: Vec<String> = crate::keyspace::excluded_namespaces(&topo.spec.sync.exclude);
    unfenced.extend([controller_namespace.to_string(), DEFAULT_ARGOCD_NAMESPACE.to_string()]);
    unfenced.sort();
    unfenced.dedup();
    let groups = topo
        .spec
        .sync
        .fence
        .exempt_groups
        .iter()
        .map(|g| format!("'{}'", g.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(", ");
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
                    resources: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![
                MatchCondition {
                    name: "not-a-system-user".into(),
                    expression: "!request.userInfo.username.startsWith('system:')".into(),
                },
                MatchCondition {
                    name: "not-an-exempt-group".into(),
                    expression: format!("!request.userInfo.groups.exists(g, g in [{groups}])"),
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
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name),
            validation_actions: Some(vec!["Deny".into()]),
            ..Default::default()
        }),
    };
    (policy, binding)
}

/// Fences this cluster (idempotent: server-side apply).
pub async fn apply(client: &Client, topo: &DRTopology, controller_namespace: &str) -> Result<(), FenceError> {
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
pub async fn remove(client: &Client, topo: &DRTopology) -> Result<(), FenceError> {
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

    #[test]
    fn fences_replicated_namespaces_only_and_names_the_primary() {
        let mut topo: DRTopology =
            serde_norway::from_str(include_str!("../examples/minimal.yaml")).expect("example parses");
        topo.spec.sync.fence.enabled = true;
        let (policy, binding) = build(&topo, DEFAULT_CONTROLLER_NAMESPACE);
        let spec = policy.spec.expect("spec");
        let sel = spec.match_constraints.and_then(|m| m.namespace_selector).and_then(|s| s.match_expressions).expect("selector");
        let unfenced = sel[0].values.clone().unwrap_or_default();
        for ns in ["kube-system", "cpaas-system", "drctl-system", "argocd"] {
            assert!(unfenced.iter().any(|n| n == ns), "{ns} must stay writable");
        }
        assert_eq!(sel[0].operator, "NotIn");
        let conds: Vec<String> = spec.match_conditions.unwrap_or_default().into_iter().map(|c| c.expression).collect();
        assert!(conds[1].contains("'system:masters'") && conds[1].contains("'system:nodes'"), "{conds:?}");
        let msg = spec.validations.unwrap_or_default()[0].message.clone().unwrap_or_default();
        assert!(msg.contains("(global-a)"), "{msg}");
        assert_eq!(binding.spec.expect("binding").policy_name.as_deref(), Some("drctl-fence-platform"));
    }
}
