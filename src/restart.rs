//! Restarting platform components after sync is enabled, at failover and at demotion: the
//! runbook's `kubectl delete po -l ...` and rollout restarts, made idempotent.
//!
//! Idempotence comes from a stamp chosen by the caller (the failover's start time, say): a
//! rollout restart writes it into the pod template, so running the step again after a crash
//! changes nothing; pod deletion removes only pods created before the stamp.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, instrument};

use crate::controller::peer::{kubeconfig_client, PeerError};
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::decide::wait::{wait_verdict, WaitVerdict};
use crate::topology::{RestartMethod, RestartScope, RestartSpec, RestartWhen};
use crate::validated::Spec;

/// The annotation `kubectl rollout restart` uses; drctl writes the same so tools recognise it.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("restart {name}: listing {kind} in {namespace} with {selector:?}: {source}")]
    List { name: String, kind: &'static str, namespace: String, selector: String, source: kube::Error },
    #[error("restart {name}: patching {kind} {namespace}/{object}: {source}")]
    Patch { name: String, kind: &'static str, namespace: String, object: String, source: kube::Error },
    #[error("restart {name}: deleting pod {namespace}/{object}: {source}")]
    Delete { name: String, namespace: String, object: String, source: kube::Error },
}

impl RestartError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RestartError::List { source, .. } | RestartError::Patch { source, .. } | RestartError::Delete { source, .. } => kube_error_kind(source),
        }
    }
}

/// Why the restarts declared for one occasion did not all run.
#[derive(Debug, thiserror::Error)]
pub enum RestartsError {
    #[error(transparent)]
    Here(RestartError),
    #[error("workload cluster {cluster}: {source}")]
    Reach { cluster: String, source: PeerError },
    #[error("workload cluster {cluster}: {source}")]
    There { cluster: String, source: RestartError },
}

impl RestartsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RestartsError::Here(e) | RestartsError::There { source: e, .. } => e.kind(),
            RestartsError::Reach { source, .. } => source.kind(),
        }
    }
}

/// What one look at the restarts declared for an occasion found.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// No restart is declared for it.
    NoneDeclared,
    /// All ready again, or not by the timeout (the summary names what is not).
    Done(String),
    /// Some are not ready yet: look again after `recheck_after`.
    Waiting { why: String, recheck_after: Duration },
}

/// One look at the restarts of `spec` declared for `when`, `waited` into their readiness
/// timeout: restarts them (stamped `stamp`, see [`start_all`]) unless `restarted` records that
/// they were, recording it there, then looks at readiness once (`decide::wait`). Never sleeps:
/// the caller requeues on [`Look::Waiting`], so the reconcile sees a flip back meanwhile.
pub async fn look(
    local: &Client,
    spec: &Spec,
    when: RestartWhen,
    stamp: Timestamp,
    restarted: &mut Option<String>,
    waited: Duration,
    timeout: Duration,
) -> Result<Look, RestartsError> {
    let summary = match restarted {
        Some(summary) => summary.clone(),
        None => match start_all(local, spec, when, stamp).await? {
            Some(summary) => restarted.insert(summary).clone(),
            None => return Ok(Look::NoneDeclared),
        },
    };
    let not_ready = not_ready_all(local, spec, when).await?;
    Ok(match wait_verdict(not_ready.is_empty(), waited, timeout) {
        WaitVerdict::Passed => Look::Done(summary),
        WaitVerdict::Again(recheck_after) => {
            Look::Waiting { why: format!("waiting for {} to be ready ({}s of {timeout:?}); {summary}", not_ready.join(", "), waited.as_secs()), recheck_after }
        }
        WaitVerdict::TimedOut => Look::Done(format!("{summary}; not ready after {timeout:?}: {}", not_ready.join(", "))),
    })
}

/// Restarts (idempotently, by `stamp`) every restart of `spec` declared for `when`, in this
/// cluster (`local`) and in the workload clusters (through their kubeconfig Secrets), without
/// waiting for readiness ([`not_ready_all`] looks). The summary; None when none is declared.
pub async fn start_all(local: &Client, spec: &Spec, when: RestartWhen, stamp: Timestamp) -> Result<Option<String>, RestartsError> {
    let targets = targets(local, spec, when).await?;
    if targets.is_empty() {
        return Ok(None);
    }
    let mut lines = Vec::new();
    for t in targets {
        let rep = act(&t.client, t.restart, stamp).await.map_err(|e| t.error(e))?;
        lines.push(t.said(rep.summary()));
    }
    Ok(Some(lines.join("; ")))
}

/// The workloads of the restarts declared for `when` that are not ready (again) yet, as
/// `Kind/name` (`in <workload cluster>` there).
pub async fn not_ready_all(local: &Client, spec: &Spec, when: RestartWhen) -> Result<Vec<String>, RestartsError> {
    let mut out = Vec::new();
    for t in targets(local, spec, when).await? {
        let names = not_ready(&t.client, t.restart).await.map_err(|e| t.error(e))?;
        out.extend(names.into_iter().map(|n| t.said(n)));
    }
    Ok(out)
}

/// One declared restart in one cluster: this one (`cluster` None) or a workload cluster.
struct Target<'s> {
    client: Client,
    cluster: Option<String>,
    restart: &'s RestartSpec,
}

impl Target<'_> {
    fn error(&self, source: RestartError) -> RestartsError {
        match &self.cluster {
            None => RestartsError::Here(source),
            Some(c) => RestartsError::There { cluster: c.clone(), source },
        }
    }

    fn said(&self, line: String) -> String {
        match &self.cluster {
            None => line,
            Some(c) => format!("{line} in {c}"),
        }
    }
}

async fn targets<'s>(local: &Client, spec: &'s Spec, when: RestartWhen) -> Result<Vec<Target<'s>>, RestartsError> {
    let mut out = Vec::new();
    for r in spec.restarts.iter().filter(|r| r.when.contains(&when)) {
        match r.scope {
            RestartScope::SelfCluster => out.push(Target { client: local.clone(), cluster: None, restart: r }),
            RestartScope::WorkloadClusters => {
                for wc in &spec.workload_clusters {
                    let client = kubeconfig_client(local, &wc.kubeconfig_secret_ref)
                        .await
                        .map_err(|source| RestartsError::Reach { cluster: wc.name.clone(), source })?;
                    out.push(Target { client, cluster: Some(wc.name.clone()), restart: r });
                }
            }
        }
    }
    Ok(out)
}

/// What one restart did, for the step message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestartReport {
    pub name: String,
    /// Workloads whose template now carries the stamp / pods deleted.
    pub touched: Vec<String>,
    /// Objects already restarted for this stamp (a resumed step).
    pub already: usize,
    /// Workloads not ready when the wait ended.
    pub not_ready: Vec<String>,
}

impl RestartReport {
    pub fn summary(&self) -> String {
        let mut s = format!("{}: restarted {}", self.name, self.touched.len());
        if self.already > 0 {
            s.push_str(&format!(", {} already restarted", self.already));
        }
        if !self.not_ready.is_empty() {
            s.push_str(&format!(", not ready: {}", self.not_ready.join(", ")));
        }
        s
    }
}

/// Runs one restart in the cluster `client` points at and waits up to `ready_timeout` for the
/// restarted workloads to be ready again.
#[instrument(skip(client, r), fields(restart = %r.name, namespace = %r.namespace))]
pub async fn run(client: &Client, r: &RestartSpec, stamp: Timestamp, ready_timeout: Duration) -> Result<RestartReport, RestartError> {
    let mut report = act(client, r, stamp).await?;
    report.not_ready = wait_ready(client, r, ready_timeout).await?;
    info!(summary = %report.summary(), "restart finished");
    Ok(report)
}

/// Rolls out or deletes what one restart selects, once per `stamp`.
async fn act(client: &Client, r: &RestartSpec, stamp: Timestamp) -> Result<RestartReport, RestartError> {
    let mut report = RestartReport { name: r.name.clone(), ..Default::default() };
    match r.method {
        RestartMethod::RolloutRestart => {
            let stamp_s = stamp.to_string();
            rollout::<Deployment>(client, r, &stamp_s, "Deployment", &mut report).await?;
            rollout::<StatefulSet>(client, r, &stamp_s, "StatefulSet", &mut report).await?;
            rollout::<DaemonSet>(client, r, &stamp_s, "DaemonSet", &mut report).await?;
        }
        RestartMethod::DeletePods => delete_pods(client, r, stamp, &mut report).await?,
    }
    Ok(report)
}

async fn rollout<K>(client: &Client, r: &RestartSpec, stamp: &str, kind: &'static str, report: &mut RestartReport) -> Result<(), RestartError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let (api, list) = list_selected::<K>(client, r, kind).await?;
    for obj in list {
        let name = obj.name_any();
        let current = serde_json::to_value(&obj)
            .ok()
            .and_then(|v| v.pointer(&format!("/spec/template/metadata/annotations/{}", RESTARTED_AT.replace('/', "~1"))).cloned());
        if current.as_ref().and_then(|v| v.as_str()) == Some(stamp) {
            report.already += 1;
            continue;
        }
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| RestartError::Patch {
            name: r.name.clone(),
            kind,
            namespace: r.namespace.clone(),
            object: name.clone(),
            source,
        })?;
        report.touched.push(format!("{kind}/{name}"));
    }
    Ok(())
}

async fn delete_pods(client: &Client, r: &RestartSpec, stamp: Timestamp, report: &mut RestartReport) -> Result<(), RestartError> {
    let (api, pods) = list_selected::<Pod>(client, r, "Pod").await?;
    for pod in pods {
        let name = pod.name_any();
        let created = pod.creation_timestamp().map(|t| t.0);
        if created.is_some_and(|c| c >= stamp) || pod.metadata.deletion_timestamp.is_some() {
            report.already += 1;
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => report.touched.push(format!("Pod/{name}")),
            // Gone already: someone (or our previous run) deleted it.
            Err(kube::Error::Api(e)) if e.code == 404 => report.already += 1,
            Err(source) => return Err(RestartError::Delete { name: r.name.clone(), namespace: r.namespace.clone(), object: name, source }),
        }
    }
    Ok(())
}

/// What a restart would act on in one cluster, as `Kind/name` (preflight and drills; acts on nothing).
pub async fn selected(client: &Client, r: &RestartSpec) -> Result<Vec<String>, RestartError> {
    async fn names<K>(client: &Client, r: &RestartSpec, kind: &'static str, out: &mut Vec<String>) -> Result<(), RestartError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let (_, list) = list_selected::<K>(client, r, kind).await?;
        out.extend(list.iter().map(|o| format!("{kind}/{}", o.name_any())));
        Ok(())
    }
    let mut out = Vec::new();
    match r.method {
        RestartMethod::RolloutRestart => {
            names::<Deployment>(client, r, "Deployment", &mut out).await?;
            names::<StatefulSet>(client, r, "StatefulSet", &mut out).await?;
            names::<DaemonSet>(client, r, "DaemonSet", &mut out).await?;
        }
        RestartMethod::DeletePods => names::<Pod>(client, r, "Pod", &mut out).await?,
    }
    Ok(out)
}

/// Waits until every Deployment/StatefulSet/DaemonSet matching the selector reports all replicas
/// updated and available (pods for `deletePods`: all Ready); returns the ones that are not.
async fn wait_ready(client: &Client, r: &RestartSpec, timeout: Duration) -> Result<Vec<String>, RestartError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let not_ready = not_ready(client, r).await?;
        if not_ready.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(not_ready);
        }
        tokio::time::sleep(Duration::from_secs(1).min(timeout)).await;
    }
}

async fn not_ready(client: &Client, r: &RestartSpec) -> Result<Vec<String>, RestartError> {
    let mut out = Vec::new();
    match r.method {
        RestartMethod::RolloutRestart => {
            unready::<Deployment>(client, r, "Deployment", &mut out, |d| {
                let st = d.status.clone().unwrap_or_default();
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                rolled_out(d.metadata.generation, st.observed_generation, want, st.updated_replicas, st.available_replicas)
            })
            .await?;
            unready::<StatefulSet>(client, r, "StatefulSet", &mut out, |s| {
                let st = s.status.clone().unwrap_or_default();
                let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                rolled_out(s.metadata.generation, st.observed_generation, want, st.updated_replicas, st.ready_replicas)
            })
            .await?;
            unready::<DaemonSet>(client, r, "DaemonSet", &mut out, |d| {
                let st = d.status.clone().unwrap_or_default();
                rolled_out(d.metadata.generation, st.observed_generation, st.desired_number_scheduled, st.updated_number_scheduled, st.number_available)
            })
            .await?;
        }
        RestartMethod::DeletePods => {
            unready::<Pod>(client, r, "Pod", &mut out, |p| {
                p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .await?;
        }
    }
    Ok(out)
}

/// Appends `Kind/name` of each object matching the restart's selector that is not `ready`.
async fn unready<K>(client: &Client, r: &RestartSpec, kind: &'static str, out: &mut Vec<String>, ready: impl Fn(&K) -> bool) -> Result<(), RestartError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (_, list) = list_selected::<K>(client, r, kind).await?;
    out.extend(list.iter().filter(|o| !ready(o)).map(|o| format!("{kind}/{}", o.name_any())));
    Ok(())
}

/// The objects of kind `K` the restart's selector matches, and the Api that listed them.
async fn list_selected<K>(client: &Client, r: &RestartSpec, kind: &'static str) -> Result<(Api<K>, Vec<K>), RestartError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &r.namespace);
    let list = api.list(&ListParams::default().labels(&r.label_selector)).await.map_err(|source| RestartError::List {
        name: r.name.clone(),
        kind,
        namespace: r.namespace.clone(),
        selector: r.label_selector.clone(),
        source,
    })?;
    Ok((api, list.items))
}

/// A workload's controller has seen its latest spec and `want` replicas run it and are ready.
fn rolled_out(generation: Option<i64>, observed: Option<i64>, want: i32, updated: Option<i32>, ready: Option<i32>) -> bool {
    observed >= generation && updated.unwrap_or(0) >= want && ready.unwrap_or(0) >= want
}

#[cfg(test)]
mod tests {
    use super::rolled_out;

    #[test]
    fn rolled_out_needs_the_latest_generation_seen_and_every_replica_updated_and_ready() {
        assert!(rolled_out(Some(3), Some(3), 2, Some(2), Some(2)));
        assert!(!rolled_out(Some(3), Some(2), 2, Some(2), Some(2)), "status is of an older spec");
        assert!(!rolled_out(Some(3), None, 2, Some(2), Some(2)), "no status yet");
        assert!(!rolled_out(Some(3), Some(3), 2, Some(1), Some(2)), "one replica still runs the old template");
        assert!(!rolled_out(Some(3), Some(3), 2, Some(2), None), "none ready");
        assert!(rolled_out(Some(1), Some(1), 0, None, None), "scaled to zero is done");
    }
}
