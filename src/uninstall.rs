//! `drctl uninstall`: deletes what the controller created in one global — the fence
//! (ValidatingAdmissionPolicy and binding `drctl-fence-*`, which have no owner: left behind they
//! keep a former standby fenced), the role memory ConfigMaps and the leader Leases, and releases
//! the Argo CD Applications drctl holds (their automated sync restored). The
//! DRTopology, its CRD, the namespace and its Secrets are Argo CD's and yours
//! (`docs/runbooks.md`, "Uninstall"). Refused while a controller still holds its Lease: it would
//! put the fence back.

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE;

/// Name prefixes of what drctl creates: `fence::name`, `StatusWriter::memory_name`, the leader
/// Lease `drctl-<cluster>`.
pub const FENCE_PREFIX: &str = "drctl-fence-";
pub const MEMORY_PREFIX: &str = "drctl-memory-";
pub const LEASE_PREFIX: &str = "drctl-";

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// Kubeconfig of the global to clean; in-cluster or ~/.kube/config when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// drctl's namespace in that global (its Leases and role memory).
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAMESPACE)]
    pub namespace: String,
    /// Argo CD's namespace in that global (`spec.argocd.namespace`): the Applications drctl
    /// holds there get their automated sync back.
    #[arg(long, default_value = crate::topology::DEFAULT_ARGOCD_NAMESPACE)]
    pub argocd_namespace: String,
    /// List what would be deleted; delete nothing.
    #[arg(long, conflicts_with = "yes", required_unless_present = "yes")]
    pub dry_run: bool,
    /// Delete.
    #[arg(long)]
    pub yes: bool,
}

/// One object drctl created: (kind, namespace/name or name).
pub type Found = (&'static str, String);

pub async fn run(args: UninstallArgs) -> anyhow::Result<()> {
    let client = crate::controller::client(args.kubeconfig.as_deref()).await?;
    let found = uninstall(&client, &args.namespace, &args.argocd_namespace, !args.yes, Timestamp::now()).await?;
    let verb = if args.yes { "deleted" } else { "would delete" };
    for (kind, name) in &found {
        match *kind {
            RELEASED => println!("{} Application {name} (automated sync restored)", if args.yes { "released" } else { "would release" }),
            _ => println!("{verb} {kind} {name}"),
        }
    }
    if found.is_empty() {
        println!("nothing of drctl's left in this global");
    }
    println!(
        "left in place: the DRTopology, its CRD, namespace {} and its Secrets (Argo CD's and yours), and drctl/ keys in this global's etcd (checkpoint, archive: drctl archive list)",
        args.namespace
    );
    Ok(())
}

/// The kind [`uninstall`] reports a released Application under.
pub const RELEASED: &str = "Application (released)";

/// Finds (and unless `dry_run`, deletes) what drctl created, and releases the Applications it
/// holds in `argocd_namespace`. Refused while a Lease of drctl's is held and not expired at `now`.
pub async fn uninstall(client: &Client, namespace: &str, argocd_namespace: &str, dry_run: bool, now: Timestamp) -> anyhow::Result<Vec<Found>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let leases = named(&leases, LEASE_PREFIX).await?;
    for l in &leases {
        let spec = l.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let renewed = spec.renew_time.map(|t| now.as_second() - t.0.as_second());
        let valid = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        if let Some(ago) = renewed.filter(|ago| !holder.is_empty() && *ago <= valid) {
            anyhow::bail!(
                "a drctl controller still runs in this global: Lease {namespace}/{} is held by {holder}, renewed {ago}s ago (valid {valid}s); \
                 stop it first (delete the drctl-controller Application, or scale deployment/drctl-controller to 0), wait {valid}s, then run again",
                l.name_any()
            );
        }
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let memory: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut found = Vec::new();
    // The binding first: a policy without its binding enforces nothing.
    found.extend(delete_all(&bindings, named(&bindings, FENCE_PREFIX).await?, None, dry_run).await?);
    found.extend(delete_all(&policies, named(&policies, FENCE_PREFIX).await?, None, dry_run).await?);
    found.extend(delete_all(&memory, named(&memory, MEMORY_PREFIX).await?, Some(namespace), dry_run).await?);
    found.extend(delete_all(&lease_api, leases, Some(namespace), dry_run).await?);
    // Last: released while the fence stands, the Application would sync into it.
    let released = crate::follow_role::release_all(client, argocd_namespace, dry_run).await?;
    found.extend(released.into_iter().map(|name| (RELEASED, format!("{argocd_namespace}/{name}"))));
    Ok(found)
}

async fn named<K>(api: &Api<K>, prefix: &str) -> anyhow::Result<Vec<K>>
where
    K: k8s_openapi::Resource + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await.map_err(|e| anyhow::anyhow!("list {}: {e}", K::KIND))?;
    Ok(list.items.into_iter().filter(|o| o.name_any().starts_with(prefix)).collect())
}

async fn delete_all<K>(api: &Api<K>, objs: Vec<K>, namespace: Option<&str>, dry_run: bool) -> anyhow::Result<Vec<Found>>
where
    K: k8s_openapi::Resource + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut found = Vec::new();
    for o in objs {
        let name = o.name_any();
        if !dry_run {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => anyhow::bail!("delete {} {name}: {e}", K::KIND),
            }
        }
        found.push((K::KIND, namespace.map(|ns| format!("{ns}/{name}")).unwrap_or(name)));
    }
    Ok(found)
}
