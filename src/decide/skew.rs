//! Two controller versions in one pair, as during an upgrade done one global at a time: what
//! each publishes (`status.controller`) and the one thing a mixed pair refuses.
//!
//! A controller of protocol 1 (32753b3 and older) does not stand down when outranked by a
//! higher term and writes its demotion token without a term. Made primary by a planned flip,
//! it would be the side of the pair that keeps serving in a split brain. So a primary of a newer
//! protocol does not step down for a peer of an older one: it stays primary (serving, unfenced)
//! and says why, and the older peer's Demote step waits. The other way round there is nothing to
//! refuse: an older primary steps down by itself as soon as it sees the flip, and the newer
//! standby's runbook accepts its term-less token ("a token from before terms is waited for").
//! A disaster is never refused: a peer that does not answer has no version to compare.

/// The peer protocol this build speaks. Raise it when a controller must rely on its peer
/// reading a new status field or following a new rule, and say in docs/runbooks.md
/// ("Upgrading drctl") what the older one lacks. 2: terms with stand-down, the demotion token's
/// term, the role memory.
pub const PROTOCOL: u32 = 2;

/// The protocol of a controller that publishes no `status.controller`: 32753b3 and older.
pub const UNPUBLISHED_PROTOCOL: u32 = 1;

/// This build's version, as published in `status.controller.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the peer published of its controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerController {
    /// None: it publishes no `status.controller`.
    pub version: Option<String>,
    pub protocol: u32,
}

/// Ours: a peer state built without a status.controller in a test or the model stands for a
/// controller of this build.
impl Default for PeerController {
    fn default() -> Self {
        Self { version: Some(VERSION.to_string()), protocol: PROTOCOL }
    }
}

impl PeerController {
    /// From the peer's `status.controller`; absent is a release before protocols.
    pub fn published(c: Option<&crate::topology::ControllerStatus>) -> Self {
        match c {
            Some(c) => Self { version: Some(c.version.clone()), protocol: c.protocol },
            None => Self { version: None, protocol: UNPUBLISHED_PROTOCOL },
        }
    }

    fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("drctl {v} (peer protocol {})", self.protocol),
            None => format!("a drctl release that publishes no status.controller (peer protocol {UNPUBLISHED_PROTOCOL}, 32753b3 or older)"),
        }
    }
}

/// `status.controller` as this build publishes it.
pub fn ours() -> crate::topology::ControllerStatus {
    crate::topology::ControllerStatus { version: VERSION.to_string(), protocol: PROTOCOL }
}

/// Why this cluster, primary and named standby by a flip, must not step down for `peer` (the
/// new primary, which answers): it runs an older protocol. None: step down as usual.
pub fn demotion_refused(self_name: &str, peer_name: &str, peer: &PeerController) -> Option<String> {
    (peer.protocol < PROTOCOL).then(|| {
        format!(
            "{peer_name} runs {}, {self_name} runs drctl {VERSION} (peer protocol {PROTOCOL}); a planned failover to the older \
             controller is refused while the pair is mixed, and {self_name} stays primary: upgrade {peer_name} first (docs/runbooks.md, section Upgrading drctl), then \
             its failover proceeds, or flip spec.primary back to {self_name}",
            peer.describe()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ControllerStatus;

    #[test]
    fn only_a_peer_of_an_older_protocol_is_refused() {
        let peer = |c: Option<ControllerStatus>| PeerController::published(c.as_ref());
        let of = |protocol| Some(ControllerStatus { version: "9.9.9".into(), protocol });
        let cases = [
            (peer(None), true, "no status.controller: 32753b3 or older"),
            (peer(of(PROTOCOL - 1)), true, "an older protocol that publishes itself"),
            (peer(of(PROTOCOL)), false, "ours"),
            (peer(of(PROTOCOL + 1)), false, "a newer one: it is that one's to refuse"),
            (PeerController::default(), false, "a peer state with no controller given stands for ours"),
        ];
        for (p, refused, rule) in cases {
            assert_eq!(demotion_refused("global-a", "global-b", &p).is_some(), refused, "{rule}");
        }
    }

    #[test]
    fn the_refusal_names_both_versions_and_the_fix() {
        let old = PeerController::published(None);
        let msg = demotion_refused("global-a", "global-b", &old).expect("refused");
        for want in ["32753b3 or older", &format!("drctl {VERSION} (peer protocol {PROTOCOL})"), "upgrade global-b first", "stays primary"] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }
}
