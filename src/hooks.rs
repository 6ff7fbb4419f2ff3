//! Runbook hooks (`spec.failover.preHooks` / `postHooks`): a webhook call or a Job, e.g. to
//! remove the 2379 forwarding from the VIPs before DNS moves.
//!
//! Both are idempotent per failover: a Job is named after the hook and the failover id, so a
//! resumed step finds the Job it already created instead of starting another; a webhook gets
//! the failover id in its body and header so the receiver can deduplicate. A Job is looked at
//! once per call ([`HookRun::Running`] while it runs): the step waits by requeueing, and the
//! Job's timeout counts from its creation, so a restarted controller keeps it.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use serde::Serialize;

use crate::decide::wait::{elapsed, wait_verdict, WaitVerdict};
use crate::dns::json_post;
use crate::secret::{SecretError, SecretSource};
use crate::validated::{Hook, HookKind};

/// How long a Job hook may run.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {hook}: {source}")]
    Secret { hook: String, source: SecretError },
    #[error("hook {hook}: POST {url}: {source}")]
    Http { hook: String, url: String, source: reqwest::Error },
    #[error("hook {hook}: {url} answered HTTP {status}: {body}")]
    Status { hook: String, url: String, status: u16, body: String },
    #[error("hook {hook}: job template is not a batch/v1 JobSpec: {reason}")]
    Template { hook: String, reason: String },
    #[error("hook {hook}: Job {namespace}/{name}: {source}")]
    Kube { hook: String, namespace: String, name: String, source: kube::Error },
    #[error("hook {hook}: Job {namespace}/{name} failed: {reason}")]
    JobFailed { hook: String, namespace: String, name: String, reason: String },
    #[error("hook {hook}: Job {namespace}/{name} did not finish within {after:?}")]
    JobTimeout { hook: String, namespace: String, name: String, after: Duration },
}

/// Before or after DNS moves; written `pre` or `post` in a webhook's body and a Job's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Post,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        })
    }
}

/// What a hook is told about the failover it runs in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookInput<'a> {
    pub hook: &'a str,
    pub phase: Phase,
    pub topology: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// Stable across retries of the same failover (its start time in Unix seconds).
    pub failover_id: &'a str,
    /// A drill (`drctl drill`), not a failover: the receiver must check and answer, and change
    /// nothing. Also sent as header [`DRILL_HEADER`]`: true`; absent from a failover's body.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

/// The header of a webhook hook called by a drill.
pub const DRILL_HEADER: &str = "X-Drctl-Drill";

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
}

/// What one call of a hook gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HookRun {
    /// A line for the step message.
    Done(String),
    /// Its Job runs: what it waits for, and how soon to look again.
    Running { why: String, recheck_after: Duration },
}

/// Calls a webhook, or creates a hook's Job (once) and looks at it.
pub async fn run(client: &Client, secrets: &dyn SecretSource, hook: &Hook, input: &HookInput<'_>) -> Result<HookRun, HookError> {
    let j = match &hook.kind {
        HookKind::Job(j) => j,
        HookKind::Webhook(w) => {
            let body = serde_json::to_vec(input).map_err(|e| HookError::Template { hook: hook.name.clone(), reason: e.to_string() })?;
            let key = match &w.hmac_secret_ref {
                Some(r) => Some(secrets.get(r, "hmacKey").await.map_err(|source| HookError::Secret { hook: hook.name.clone(), source })?),
                None => None,
            };
            let mut req = json_post(&reqwest::Client::new(), &w.url, key.as_ref().map(|k| k.expose()), body)
                .timeout(WEBHOOK_TIMEOUT)
                .header("X-Drctl-Failover-Id", input.failover_id);
            if input.drill {
                req = req.header(DRILL_HEADER, "true");
            }
            let resp = req.send().await.map_err(|source| HookError::Http {
                hook: hook.name.clone(),
                url: crate::urls::redact(&w.url),
                source: source.without_url(),
            })?;
            let status = resp.status();
            if !status.is_success() {
                let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
                return Err(HookError::Status { hook: hook.name.clone(), url: crate::urls::redact(&w.url), status: status.as_u16(), body });
            }
            return Ok(HookRun::Done(format!("{}: webhook answered {}", hook.name, status.as_u16())));
        }
    };
    let spec = serde_json::from_value(j.template.clone()).map_err(|e| HookError::Template { hook: hook.name.clone(), reason: e.to_string() })?;
    // Fixed length whatever the hook's name: the failover id is never cut off (a cut id would
    // find the previous failover's finished Job and skip the hook).
    let name = format!("drctl-{}-{}-{}", input.phase, input.failover_id, &short_hash(&hook.name));
    let api: Api<Job> = Api::namespaced(client.clone(), &j.namespace);
    let kube_err = |source| HookError::Kube { hook: hook.name.clone(), namespace: j.namespace.clone(), name: name.clone(), source };
    if api.get_opt(&name).await.map_err(kube_err)?.is_none() {
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "drctl".to_string())].into()),
                annotations: Some([("drctl.io/hook".to_string(), hook.name.clone())].into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err(e)),
        }
    }
    let job = api.get(&name).await.map_err(kube_err)?;
    let age = job.metadata.creation_timestamp.as_ref().map(|t| elapsed(t.0, k8s_openapi::jiff::Timestamp::now())).unwrap_or_default();
    let st = job.status.unwrap_or_default();
    let failed = st.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Failed" && c.status == "True");
    if let Some(c) = failed {
        return Err(HookError::JobFailed { hook: hook.name.clone(), namespace: j.namespace.clone(), name, reason: c.message.unwrap_or_default() });
    }
    match wait_verdict(st.succeeded.unwrap_or(0) > 0, age, JOB_TIMEOUT) {
        WaitVerdict::Passed => Ok(HookRun::Done(format!("{}: Job {}/{name} succeeded", hook.name, j.namespace))),
        WaitVerdict::Again(recheck_after) => Ok(HookRun::Running {
            why: format!("waiting for hook {}: Job {}/{name} ({}s of {JOB_TIMEOUT:?})", hook.name, j.namespace, age.as_secs()),
            recheck_after,
        }),
        WaitVerdict::TimedOut => Err(HookError::JobTimeout { hook: hook.name.clone(), namespace: j.namespace.clone(), name, after: JOB_TIMEOUT }),
    }
}
