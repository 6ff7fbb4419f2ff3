//! Reaching the other global: a kube client built from the kubeconfig Secret the topology names,
//! and what we read of the peer's DRTopology.

use std::time::Duration;

use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::decide::demote::PeerAnswer;
use crate::decide::plan::{PeerFailover, PeerState, PeerView, Step};
use crate::decide::retry::{kube_error_kind, ErrorKind};
use crate::secret::{KubeSecrets, SecretError, SecretSource};
use crate::topology::{DRTopology, SecretRef};
use crate::validated::ValidatedTopology;

/// How long a peer call may take before the peer counts as unreachable.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no kubeconfigSecretRef for cluster {0}: the peer cannot be reached")]
    NoKubeconfig(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("kubeconfig in Secret {0} is not valid: {1}")]
    Kubeconfig(String, String),
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("peer {0}: {1}")]
    Api(String, kube::Error),
}

impl PeerError {
    pub fn kind(&self) -> ErrorKind {
        if self.may_be_down() {
            ErrorKind::Transient
        } else {
            ErrorKind::Configuration
        }
    }

    /// What the Demote step makes of this failure to read the old primary.
    pub fn answer(&self) -> PeerAnswer<'static> {
        if self.may_be_down() {
            PeerAnswer::Down
        } else {
            PeerAnswer::Misconfigured
        }
    }

    /// The peer may be down (or the network between us): as opposed to our own configuration
    /// or credentials being wrong, which waiting will not fix and must never pass for a disaster.
    pub fn may_be_down(&self) -> bool {
        match self {
            PeerError::Timeout(..) => true,
            PeerError::Api(_, e) => kube_error_kind(e) == ErrorKind::Transient,
            PeerError::NoKubeconfig(_) | PeerError::Secret(_) | PeerError::Kubeconfig(..) => false,
        }
    }
}

/// A client for cluster `name` of the topology, from its kubeconfig Secret in this cluster.
pub async fn client_for(local: &Client, topo: &ValidatedTopology, name: &str) -> Result<Client, PeerError> {
    let r = topo.spec.cluster(name).map(|c| c.kubeconfig_secret_ref.clone()).ok_or_else(|| PeerError::NoKubeconfig(name.to_string()))?;
    kubeconfig_client(local, &r).await
}

/// A client from a kubeconfig held in a Secret (peer globals and workload clusters alike).
pub async fn kubeconfig_client(local: &Client, r: &SecretRef) -> Result<Client, PeerError> {
    let where_ = format!("{}/{}", r.namespace, r.name);
    let secret = KubeSecrets::new(local.clone()).get(r, "kubeconfig").await?;
    let text = std::str::from_utf8(secret.expose()).map_err(|_| PeerError::Kubeconfig(where_.clone(), "not UTF-8".into()))?;
    // The parser quotes the offending lines in its message, and those may hold keys or tokens:
    // say only that it is not a kubeconfig.
    let kc = Kubeconfig::from_yaml(text).map_err(|_| PeerError::Kubeconfig(where_.clone(), "not a kubeconfig (YAML that does not parse as one)".into()))?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| PeerError::Kubeconfig(where_.clone(), e.to_string()))?;
    cfg.connect_timeout = Some(PEER_TIMEOUT);
    cfg.read_timeout = Some(PEER_TIMEOUT);
    Client::try_from(cfg).map_err(|e| PeerError::Kubeconfig(where_, e.to_string()))
}

/// The peer's DRTopology of the same name, bounded in time.
pub async fn get_topology(peer: &Client, peer_name: &str, name: &str) -> Result<Option<DRTopology>, PeerError> {
    let api: Api<DRTopology> = Api::all(peer.clone());
    match tokio::time::timeout(PEER_TIMEOUT, api.get_opt(name)).await {
        Err(_) => Err(PeerError::Timeout(peer_name.to_string(), PEER_TIMEOUT)),
        Ok(Err(e)) => Err(PeerError::Api(peer_name.to_string(), e)),
        Ok(Ok(t)) => Ok(t),
    }
}

/// The peer's DRTopology of the same name as `topo`.
pub async fn read(local: &Client, topo: &ValidatedTopology, peer_name: &str) -> Result<Option<DRTopology>, PeerError> {
    let c = client_for(local, topo, peer_name).await?;
    get_topology(&c, peer_name, &topo.name()).await
}

/// Observes the peer for the planner; any failure is `Unreachable` plus the reason.
pub async fn observe(local: &Client, topo: &ValidatedTopology, peer_name: &str) -> (PeerView, Option<String>) {
    let name = topo.name();
    match read(local, topo, peer_name).await {
        Ok(Some(t)) => (PeerView::Reachable(peer_state(&t, peer_name)), None),
        Ok(None) => (PeerView::Reachable(PeerState::default()), Some(format!("peer {peer_name} has no DRTopology {name} yet"))),
        Err(e) => (PeerView::Unreachable, Some(e.to_string())),
    }
}

pub fn peer_state(t: &DRTopology, peer_name: &str) -> PeerState {
    let st = t.status.clone().unwrap_or_default();
    PeerState {
        spec_primary: t.spec.primary.clone(),
        role: st.role,
        phase: st.phase,
        demoted_for: st.demotion.as_ref().map(|d| d.new_primary.clone()),
        final_revision: st.demotion.as_ref().and_then(|d| d.final_revision),
        token_cluster_id: st.demotion.as_ref().and_then(|d| d.cluster_id.clone()),
        encryption_config_sha256: st.encryption_config_sha256.clone(),
        term: st.term,
        token_term: st.demotion.as_ref().and_then(|d| d.term),
        controller: crate::decide::skew::PeerController::published(st.controller.as_ref()),
        failover: st.failover.as_ref().filter(|f| f.to == peer_name).map(|f| PeerFailover {
            completed: f.completed_at.is_some(),
            term: f.term,
            based_on_term: f.peer_term,
            applied: f.rpo_token.as_ref().map(|t| (t.source_cluster_id.clone(), t.applied_revision)),
            aborted: f.aborted.is_some(),
            abandoned: f.abandoned.is_some(),
            // Started counts: an update may have reached the DNS server before a timeout or a kill.
            dns_switched: f
                .steps
                .iter()
                .any(|s| s.step() == Some(Step::SwitchDns) && (s.state == crate::topology::StepState::Succeeded || s.started_at.is_some())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::demote::{demote_verdict, DemoteFacts, DemoteVerdict};

    #[test]
    fn a_credentials_error_is_never_a_disaster() {
        let api = |code| PeerError::Api("global-a".into(), kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() })));
        let secret = SecretError::NotFound { namespace: "drctl-system".into(), name: "global-a-kubeconfig".into() };
        let cases = [
            (api(401), DemoteVerdict::ConfigurationError, "a rejected credential"),
            (api(403), DemoteVerdict::ConfigurationError, "RBAC refuses"),
            (PeerError::NoKubeconfig("global-a".into()), DemoteVerdict::ConfigurationError, "no kubeconfig configured"),
            (PeerError::Secret(secret), DemoteVerdict::ConfigurationError, "the kubeconfig Secret is missing"),
            (PeerError::Kubeconfig("drctl-system/k".into(), "not UTF-8".into()), DemoteVerdict::ConfigurationError, "the kubeconfig does not parse"),
            (PeerError::Timeout("global-a".into(), PEER_TIMEOUT), DemoteVerdict::Disaster, "no answer for a whole timeout"),
            (api(503), DemoteVerdict::Disaster, "its apiserver unavailable for a whole timeout"),
        ];
        let hour = std::time::Duration::from_secs(3600);
        for (e, want, rule) in cases {
            let f = DemoteFacts {
                self_name: "global-b",
                answer: e.answer(),
                down_for: Some(hour),
                waited: hour,
                timeout: Duration::from_secs(120),
                override_: Default::default(),
            };
            assert_eq!(demote_verdict(&f), want, "{rule}: {e}");
        }
    }
}
