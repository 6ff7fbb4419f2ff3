//! Platform Applications that follow the role: the I/O of `decide::follow_role`. Lists this
//! global's Argo CD Applications labelled `drctl.io/follow-role` and patches the automated sync
//! policy of those not in the state the role wants (JSON merge patch, field manager `drctl`).
//! drctl owns nothing else of them.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

use crate::decide::follow_role::{patch, verb, FOLLOWS_PRIMARY, HELD_ANNOTATION, LABEL};
use crate::topology::{ApplicationsState, ApplicationsStatus};

const FIELD_MANAGER: &str = "drctl";

/// Argo CD's `Application`.
fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application"), "applications")
}

#[derive(Debug, thiserror::Error)]
pub enum FollowRoleError {
    #[error(
        "list Argo CD Applications in namespace {namespace} (spec.argocd.namespace; drctl needs list and patch on applications.argoproj.io there): {source}"
    )]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// What one pass did: the status to record and the Applications it changed, with the state each
/// was put in (an opted-out one is released whatever the role).
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    pub status: ApplicationsStatus,
    pub changed: Vec<(String, ApplicationsState)>,
}

/// Brings every Application labelled `drctl.io/follow-role: primary` in `namespace` into `want`;
/// one labelled otherwise (opting out) that drctl still holds is released. A missing
/// Application CRD (no Argo CD here) is no Application. A patch that fails (a concurrent
/// writer, RBAC) is named in the status message and tried again next pass.
pub async fn reconcile(client: &Client, namespace: &str, want: ApplicationsState) -> Result<Pass, FollowRoleError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource());
    let list = match api.list(&ListParams::default().labels(LABEL)).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(source) => return Err(FollowRoleError::List { namespace: namespace.to_string(), source }),
    };
    let mut pass = Pass { status: ApplicationsStatus { state: want, ..Default::default() }, changed: Vec::new() };
    let mut failures = Vec::new();
    for obj in list {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let follows = obj.metadata.labels.as_ref().and_then(|l| l.get(LABEL)).map(String::as_str) == Some(FOLLOWS_PRIMARY);
        let state = if follows { want } else { ApplicationsState::Released };
        if follows {
            pass.status.names.push(name.clone());
        }
        let app = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match apply(&api, &name, &app, state).await {
            Ok(true) => pass.changed.push((name, state)),
            Ok(false) => {}
            Err(e) => failures.push(e),
        }
    }
    pass.status.count = u32::try_from(pass.status.names.len()).unwrap_or(u32::MAX);
    if !failures.is_empty() {
        pass.status.message = Some(format!("not {}: {}", verb(want), failures.join("; ")));
    }
    Ok(pass)
}

/// Patches `app` into `state`; whether it changed anything.
async fn apply(api: &Api<DynamicObject>, name: &str, app: &Value, state: ApplicationsState) -> Result<bool, String> {
    let Some(p) = patch(app, state).map_err(|e| e.to_string())? else { return Ok(false) };
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(&p)).await.map(|_| true).map_err(|e| format!("{name}: {e}"))
}

/// `drctl uninstall`: releases every Application in `namespace` that drctl holds (annotation
/// `drctl.io/held-automated`), labelled or not. Returns their names.
pub async fn release_all(client: &Client, namespace: &str, dry_run: bool) -> anyhow::Result<Vec<String>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("list Argo CD Applications in {namespace}: {e}"),
    };
    let mut released = Vec::new();
    for obj in list.into_iter().filter(|o| o.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(HELD_ANNOTATION))) {
        let name = obj.metadata.name.clone().unwrap_or_default();
        if !dry_run {
            apply(&api, &name, &serde_json::to_value(&obj)?, ApplicationsState::Released).await.map_err(|e| anyhow::anyhow!("release Application {e}"))?;
        }
        released.push(name);
    }
    Ok(released)
}
