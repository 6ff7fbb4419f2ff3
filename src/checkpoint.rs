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

impl Checkpoint {
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
    /// Where the copy saves the destination's values it overwrites or deletes (see
    /// [`crate::archive`]); absent in checkpoints written before archives existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveRef>,
}

impl CopyCursor {
    pub(crate) fn start(prune: bool, archive: ArchiveRef) -> CopyCursor {
        CopyCursor { phase: 0, next: String::new(), prune, archive: Some(archive) }
    }

    pub(crate) fn at(phase: usize, next: &[u8], prune: bool, archive: Option<ArchiveRef>) -> CopyCursor {
        CopyCursor { phase, next: hex::encode(next), prune, archive }
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

    #[test]
    fn checkpoint_json_is_stable() {
        let cp = Checkpoint { copy: Some(CopyCursor::at(2, b"/registry/x", true, None)), ..Checkpoint::at(7, 42) };
        let json = String::from_utf8(serde_json::to_vec(&cp).expect("serialize")).expect("utf8");
        assert_eq!(json, r#"{"clusterId":7,"revision":42,"copy":{"phase":2,"next":"2f72656769737472792f78","prune":true}}"#);
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).expect("parse"), cp);
        let archive = ArchiveRef { id: "x-r1-compaction".into(), reason: crate::archive::Reason::Compaction };
        let with = Checkpoint { copy: Some(CopyCursor::at(0, b"", true, Some(archive))), ..Checkpoint::at(7, 42) };
        let json = String::from_utf8(serde_json::to_vec(&with).expect("serialize")).expect("utf8");
        assert!(json.contains(r#""archive":{"id":"x-r1-compaction","reason":"resync after compaction"}"#), "{json}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).expect("parse"), with);
    }
}
