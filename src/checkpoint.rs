//! The mirror's checkpoint in the destination: which source (cluster ID) and revision the
//! destination holds, and how far a copy got. The mirror writes it with its data; the check
//! reads it to compare at a revision the destination fully has.

use etcd_client::{KvClient, TxnOp};
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveRef;

/// Where the mirror keeps its checkpoint in the destination: outside `/registry/`, so the
/// destination's apiserver never sees it and no mirror ever copies it.
pub const CHECKPOINT_KEY: &str = "drctl/mirror/checkpoint";

/// Written (with the checkpoint's delete) when a cluster becomes primary, removed when its next
/// standby term's copy is done: that copy is an old primary's rejoin, whose archive the alerts
/// treat as lost writes (a new standby's first copy replaces only its own bootstrap objects).
pub const WAS_PRIMARY_KEY: &str = "drctl/mirror/was-primary";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the mirror checkpoint {CHECKPOINT_KEY}: {0}")]
    Read(#[source] etcd_client::Error),
    #[error("the mirror checkpoint {CHECKPOINT_KEY} is not valid: {0}")]
    Parse(#[source] serde_json::Error),
}

/// What the destination has of the source: written in the same txn as the data it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The source etcd's cluster ID; another ID means another source and a full resync.
    pub cluster_id: u64,
    /// The last source revision fully applied; during a copy, the revision copied at.
    pub revision: i64,
    /// Set while the initial copy (or a resync) is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyCursor>,
    /// Set by the earlier txns of a batch too big for one: the data of the batch up to this
    /// revision is partly written, so the destination is not the source at `revision` (a check
    /// must not compare or repair against it until the batch's last txn clears this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// The last source key the mirror saw put, at or before `revision`: read back when the
    /// mirror resumes, to tell the source's history from another one under the same cluster ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
}

/// A source key and the revision it was put at. The source read at that revision answers that
/// key with that mod revision while its history is the one the mirror followed; an etcd restored
/// from an older snapshot, whose new writes have passed the revision again, answers otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Witness {
    /// Hex-encoded (keys are bytes).
    pub key: String,
    pub mod_revision: i64,
}

/// The value of [`WAS_PRIMARY_KEY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasPrimary {
    #[serde(default)]
    pub since: String,
    /// What this cluster's mirror had fully applied when it became primary (from its
    /// checkpoint): the old source's history up to there was seen here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_from: Option<Applied>,
}

/// A source's history applied up to `revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub cluster_id: u64,
    pub revision: i64,
}

impl WasPrimary {
    /// Below which revision of `cluster_id`'s etcd this cluster saw every write: a key there
    /// last written below it, and missing here, was deleted here. None for another source.
    pub fn seen_below(&self, cluster_id: u64) -> Option<i64> {
        self.applied_from.filter(|a| a.cluster_id == cluster_id).map(|a| a.revision.saturating_add(1))
    }

    /// The marker and its create revision (where the cluster began acting as primary), if set.
    /// A value that does not parse (written by an older drctl) still marks the term.
    pub async fn read(kv: &mut KvClient) -> Result<Option<(WasPrimary, i64)>, etcd_client::Error> {
        let resp = kv.get(WAS_PRIMARY_KEY, None).await?;
        Ok(resp.kvs().first().map(|kv| (serde_json::from_slice(kv.value()).unwrap_or_default(), kv.create_revision())))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Checkpoint {
    /// What it proves applied: nothing while a copy or a split batch is half done.
    pub fn applied(&self) -> Option<Applied> {
        (self.copy.is_none() && self.pending.is_none()).then_some(Applied { cluster_id: self.cluster_id, revision: self.revision })
    }

    /// The source fully applied up to `revision`.
    pub fn at(cluster_id: u64, revision: i64) -> Checkpoint {
        Checkpoint { cluster_id, revision, copy: None, pending: None, witness: None }
    }

    pub(crate) fn witnessed(self, witness: Option<Witness>) -> Checkpoint {
        Checkpoint { witness, ..self }
    }
}

/// How far a copy got: every key of the copy phases before (`phase`, `next`) is copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyCursor {
    pub phase: usize,
    /// The next key to copy, hex-encoded (keys are bytes); empty means the phase's start.
    pub next: String,
    /// A resync also deletes destination keys the source no longer has.
    pub prune: bool,
    /// A rejoin deletes destination keys the source no longer has that were last written before
    /// this revision (the destination's numbering): when it became primary, so they are replicas
    /// of what the source deleted since, not its own writes (which are kept: surplus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_below: Option<i64>,
    /// Where the copy saves the destination's values it overwrites or deletes (see
    /// [`crate::archive`]); absent in checkpoints written before archives existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveRef>,
}

impl CopyCursor {
    pub(crate) fn start(prune: bool, archive: ArchiveRef) -> CopyCursor {
        CopyCursor { phase: 0, next: String::new(), prune, prune_below: None, archive: Some(archive) }
    }

    /// This copy also prunes keys last written before `revision` (see [`CopyCursor::prune_below`]).
    pub(crate) fn pruning_below(self, revision: Option<i64>) -> CopyCursor {
        CopyCursor { prune_below: revision, ..self }
    }

    /// The same copy, at (`phase`, `next`).
    pub(crate) fn at(&self, phase: usize, next: &[u8]) -> CopyCursor {
        CopyCursor { phase, next: hex::encode(next), ..self.clone() }
    }

    /// Whether a destination key the source does not have is deleted.
    pub fn prunes(&self, dest_mod_revision: Option<i64>) -> bool {
        self.prune || matches!((self.prune_below, dest_mod_revision), (Some(below), Some(rev)) if rev < below)
    }
}

impl Checkpoint {
    pub async fn read(kv: &mut KvClient) -> Result<Option<Checkpoint>, CheckpointError> {
        let resp = kv.get(CHECKPOINT_KEY, None).await.map_err(CheckpointError::Read)?;
        resp.kvs().first().map(|kv| serde_json::from_slice(kv.value()).map_err(CheckpointError::Parse)).transpose()
    }

    pub(crate) fn op(&self) -> TxnOp {
        // Serializing plain integers and strings cannot fail.
        TxnOp::put(CHECKPOINT_KEY, serde_json::to_vec(self).unwrap_or_default(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Reason;

    #[test]
    fn checkpoint_json_is_stable() {
        let cp = Checkpoint {
            copy: Some(CopyCursor { archive: None, ..CopyCursor::start(true, ArchiveRef::new(Reason::Compaction, 1)) }.at(2, b"/registry/x")),
            ..Checkpoint::at(7, 42)
        };
        let json = String::from_utf8(serde_json::to_vec(&cp).expect("serialize")).expect("utf8");
        assert_eq!(json, r#"{"clusterId":7,"revision":42,"copy":{"phase":2,"next":"2f72656769737472792f78","prune":true}}"#);
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).expect("parse"), cp);
        let archive = ArchiveRef { id: "x-r1-compaction".into(), reason: Reason::Compaction };
        let with = Checkpoint { copy: Some(CopyCursor::start(true, archive)), ..Checkpoint::at(7, 42) };
        let json = String::from_utf8(serde_json::to_vec(&with).expect("serialize")).expect("utf8");
        assert!(json.contains(r#""archive":{"id":"x-r1-compaction","reason":"resync after compaction"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).expect("parse"), with);
    }

    #[test]
    fn the_was_primary_marker_says_what_history_of_which_source_was_seen() {
        let cp = Checkpoint::at(7, 42);
        let m = WasPrimary { since: "t".into(), applied_from: cp.applied() };
        assert_eq!((m.seen_below(7), m.seen_below(8)), (Some(43), None));
        let copying = Checkpoint { copy: Some(CopyCursor::start(true, ArchiveRef::new(Reason::Compaction, 1))), ..cp.clone() };
        assert_eq!(copying.applied(), None, "a half-done copy proves nothing");
        assert_eq!(Checkpoint { pending: Some(40), ..cp }.applied(), None, "nor a half-written batch");
        let json = m.to_json();
        assert_eq!(json, r#"{"since":"t","appliedFrom":{"clusterId":7,"revision":42}}"#);
        assert_eq!(serde_json::from_str::<WasPrimary>("{}").expect("an older marker"), WasPrimary::default());
    }

    #[test]
    fn a_rejoin_prunes_only_replicas_older_than_its_primary_term() {
        let rejoin = CopyCursor::start(false, ArchiveRef::new(Reason::Rejoin, 1)).pruning_below(Some(100));
        assert!(rejoin.prunes(Some(99)), "last written by the mirror before the primary term: the source deleted it since");
        assert!(!rejoin.prunes(Some(100)) && !rejoin.prunes(Some(150)), "written during the primary term: kept, reported as surplus");
        assert!(!rejoin.prunes(None));
        let initial = CopyCursor::start(false, ArchiveRef::new(Reason::InitialCopy, 1));
        assert!(!initial.prunes(Some(1)), "a first copy keeps whatever the destination had");
        assert!(CopyCursor::start(true, ArchiveRef::new(Reason::Compaction, 1)).prunes(Some(1_000)));
        // Resumed from a checkpoint with the bound.
        let json = serde_json::to_string(&rejoin.at(1, b"/registry/a")).expect("serialize");
        assert!(json.contains(r#""pruneBelow":100"#), "{json}");
        assert_eq!(serde_json::from_str::<CopyCursor>(&json).expect("parse").prune_below, Some(100));
    }
}
