//! `drctl failover plan`: what a failover would do, from a file or from a live cluster.

use std::path::Path;
use std::process::ExitCode;

use kube::api::Api;

use super::runbook;
use crate::controller::peer;
use crate::decide::plan::{plan as decide, Action, Observed, PeerView};
use crate::topology::DRTopology;
use crate::validate;
use crate::validated::ValidatedTopology;

pub async fn plan(to: &str, file: Option<&Path>, kubeconfig: Option<&Path>, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let (topo, client) = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
            let docs = validate::validate_text(&text).map_err(|e| anyhow::anyhow!("{}: not valid YAML at {e}", f.display()))?;
            let Some(doc) = docs.into_iter().next() else { anyhow::bail!("{}: no DRTopology in the file", f.display()) };
            if !doc.errors.is_empty() {
                for e in &doc.errors {
                    println!("{}: {e}", f.display());
                }
                println!("an invalid topology never starts a failover");
                return Ok(ExitCode::FAILURE);
            }
            let Some(t) = doc.topology else { anyhow::bail!("{}: no DRTopology in the file", f.display()) };
            (t, None)
        }
        None => {
            let client = crate::controller::client(kubeconfig).await?;
            let api: Api<DRTopology> = Api::all(client.clone());
            let topo = match name {
                Some(n) => api.get(n).await?,
                None => crate::topology::oldest(api.list(&Default::default()).await?.items).ok_or_else(|| anyhow::anyhow!("no DRTopology in the cluster"))?,
            };
            (topo, Some(client))
        }
    };
    let Some(peer_cluster) = topo.spec.peer_of(to) else {
        let names: Vec<&str> = topo.spec.clusters.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!("{to:?} is not one of spec.clusters[].name ({})", names.join(", "));
    };
    // The topology as it would be with `to` primary: what the planner and the runbook read.
    let mut hypothetical = topo.clone();
    hypothetical.spec.primary = to.to_string();
    let parsed = ValidatedTopology::try_from(&hypothetical);
    let (view, why) = match (&client, &parsed) {
        (Some(c), Ok(v)) => peer::observe(c, v, &peer_cluster.name).await,
        (Some(_), Err(_)) => (PeerView::Unreachable, Some("the topology is invalid: the peer is not consulted".into())),
        (None, _) => (PeerView::Unreachable, Some("reading from a file: the peer is not consulted".into())),
    };
    let status = topo.status.clone();
    let action = decide(&Observed {
        self_name: to,
        peer_name: &peer_cluster.name,
        spec_primary: to,
        invalid: parsed.is_err(),
        dry_run: false,
        status: status.as_ref(),
        peer: view.clone(),
        // Not asked: a plan shown to a person does not query DNS.
        dns_here: None,
        dns_at_peer: false,
        now: k8s_openapi::jiff::Timestamp::now(),
        final_sync: parsed.as_ref().map(|v| v.spec.failover.final_sync).unwrap_or_default(),
        // Flipping spec.primary is a spec change (a new generation): it retries an abandoned failover.
        generation: topo.metadata.generation.filter(|_| topo.spec.primary == to),
        retry: kube::ResourceExt::annotations(&topo).get(crate::decide::plan::RETRY_ANNOTATION).map(String::as_str),
    });
    println!("failover {} -> {to} (spec.primary is {} now)", peer_cluster.name, topo.spec.primary);
    if let Some(w) = why {
        println!("peer: {w}");
    }
    println!("next action: {action:?}");
    match &parsed {
        Ok(v) if matches!(action, Action::StartFailover { .. } | Action::RunStep(_)) || topo.spec.primary != to => {
            println!("{}", runbook::describe(v, to, &view))
        }
        Ok(_) => {}
        Err(errors) => {
            for e in errors {
                println!("invalid: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
