//! The divergence archive: before the mirror's copy (a resync, a copy over existing data) or a
//! repair overwrites or deletes a replicated key of the destination whose value the source does
//! not have, the destination's key, value and mod revision are saved in the destination's own
//! etcd under [`ARCHIVE_PREFIX`], outside `/registry/`: the apiserver never sees them, no mirror
//! copies them (the filter copies only `/registry/`), no check compares them, and they survive
//! restarts. One archive per copy or repair, named by its id, with a manifest of its counts.
//!
//! Layout: `drctl/archive/<id>/manifest` (JSON [`Manifest`]) and `drctl/archive/<id>/k<key>`
//! (the saved value behind a one-line JSON header, see [`encode`]).

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::etcd;
use crate::keyspace::{self, prefix_end, REGISTRY_PREFIX};

/// Where archives live in the destination's etcd: outside `/registry/`, beside the mirror's checkpoint.
pub const ARCHIVE_PREFIX: &str = "drctl/archive/";

/// Why an archive was made (the API strings are in [`Reason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The source compacted the revision the mirror needed: a full resync with prune.
    #[serde(rename = "resync after compaction")]
    Compaction,
    /// The source is another etcd cluster than the checkpoint's.
    #[serde(rename = "source cluster changed")]
    ClusterChanged,
    /// The source's revision went back (restored from a snapshot).
    #[serde(rename = "source rewound")]
    Rewound,
    /// No checkpoint, and the destination already held data of its own (a new standby: its
    /// apiserver's bootstrap objects, or whatever was there).
    #[serde(rename = "initial copy over existing data")]
    InitialCopy,
    /// No checkpoint because this cluster was primary since its last standby term (see
    /// [`crate::checkpoint::WAS_PRIMARY_KEY`]): an old primary rejoining as standby.
    #[serde(rename = "rejoin after being primary")]
    Rejoin,
    /// A check's repair (`autoRepair`, `drctl check --repair`).
    #[serde(rename = "repair")]
    Repair,
}

impl Reason {
    pub const ALL: [Reason; 6] = [Reason::Compaction, Reason::ClusterChanged, Reason::Rewound, Reason::InitialCopy, Reason::Rejoin, Reason::Repair];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Compaction => "resync after compaction",
            Reason::ClusterChanged => "source cluster changed",
            Reason::Rewound => "source rewound",
            Reason::InitialCopy => "initial copy over existing data",
            Reason::Rejoin => "rejoin after being primary",
            Reason::Repair => "repair",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Reason::Compaction => "compaction",
            Reason::ClusterChanged => "cluster",
            Reason::Rewound => "rewind",
            Reason::InitialCopy => "initial",
            Reason::Rejoin => "rejoin",
            Reason::Repair => "repair",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The archive a copy writes into: kept in the copy's cursor, so a resumed copy keeps filling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveRef {
    pub id: String,
    pub reason: Reason,
}

impl ArchiveRef {
    /// A new archive for a copy or repair against the source at `source_revision`.
    pub fn new(reason: Reason, source_revision: i64) -> ArchiveRef {
        ArchiveRef { id: new_id(Timestamp::now(), source_revision, reason), reason }
    }
}

/// `<UTC time>-r<source revision>-<reason>`: sorts by time, never holds a `/`.
pub fn new_id(now: Timestamp, source_revision: i64, reason: Reason) -> String {
    format!("{}-r{source_revision}-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ"), reason.tag())
}

/// What happened to an archived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Its value was overwritten by the source's.
    Overwritten,
    /// It was deleted: the source does not have it.
    Pruned,
}

/// The header in front of an archived value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    mod_revision: i64,
    action: Action,
}

/// One archived key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The key's mod revision in the destination's etcd when it was saved.
    pub mod_revision: i64,
    pub action: Action,
}

/// The archived form: a one-line JSON header, a newline, the value's bytes as they were.
pub fn encode(mod_revision: i64, action: Action, value: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Header { mod_revision, action }).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(value);
    out
}

/// The header and value of an archived key; None when it is not in [`encode`]'s form.
pub fn decode(key: Vec<u8>, stored: &[u8]) -> Option<Entry> {
    let nl = stored.iter().position(|b| *b == b'\n')?;
    let h: Header = serde_json::from_slice(&stored[..nl]).ok()?;
    Some(Entry { key, value: stored[nl + 1..].to_vec(), mod_revision: h.mod_revision, action: h.action })
}

fn id_prefix(id: &str) -> String {
    format!("{ARCHIVE_PREFIX}{id}/")
}

fn keys_prefix(id: &str) -> Vec<u8> {
    format!("{ARCHIVE_PREFIX}{id}/k").into_bytes()
}

/// Where `key` is saved in archive `id`.
pub fn entry_key(id: &str, key: &[u8]) -> Vec<u8> {
    [keys_prefix(id).as_slice(), key].concat()
}

pub fn manifest_key(id: &str) -> String {
    format!("{ARCHIVE_PREFIX}{id}/manifest")
}

/// The put that saves `key`'s destination value into archive `id`.
pub fn save_op(id: &str, key: &[u8], value: &[u8], mod_revision: i64, action: Action) -> TxnOp {
    TxnOp::put(entry_key(id, key), encode(mod_revision, action, value), None)
}

/// An archive's summary, written once its copy or repair is done (`drctl archive list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub id: String,
    pub reason: String,
    pub created_at: String,
    /// The source the copy or repair followed, and its revision then.
    #[serde(default)]
    pub source_cluster_id: String,
    #[serde(default)]
    pub source_revision: i64,
    pub count: u64,
    pub overwritten: u64,
    pub pruned: u64,
    /// A rejoin's entries last written at or above what the new primary had seen of this
    /// cluster: writes it never got. The others it had, and replaced or deleted since (stale
    /// replicas). None for every other archive: each entry counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen: Option<u64>,
    /// The lowest and highest mod revision (in this etcd) of the saved keys.
    pub min_revision: i64,
    pub max_revision: i64,
    /// The saved keys' bytes.
    pub bytes: u64,
}

impl Manifest {
    /// The entries that are writes the primary does not have (what `DrctlWritesArchived` counts).
    pub fn lost(&self) -> u64 {
        self.unseen.unwrap_or(self.count)
    }

    pub fn revisions(&self) -> String {
        format!("{}-{}", self.min_revision, self.max_revision)
    }
}

/// Every entry of archive `id`, in key order.
pub async fn entries(kv: &mut KvClient, id: &str) -> Result<Vec<Entry>, etcd_client::Error> {
    let start = keys_prefix(id);
    let end = prefix_end(&start);
    let mut from = start.clone();
    let mut out = Vec::new();
    loop {
        let page = etcd::range_page(kv, &from, &end, 0, 500).await?;
        if let Some(last) = page.kvs.last() {
            from = etcd::key_after(&last.key);
        }
        out.extend(page.kvs.into_iter().filter_map(|kv| decode(kv.key[start.len()..].to_vec(), &kv.value)));
        if !page.more {
            return Ok(out);
        }
    }
}

/// Counts archive `id`'s entries and writes its manifest; None (and nothing written) when it is
/// empty. `seen_below`: a rejoin's bound of what the source had seen (see [`Manifest::unseen`]).
pub async fn seal(
    kv: &mut KvClient,
    archive: &ArchiveRef,
    source_cluster_id: u64,
    source_revision: i64,
    seen_below: Option<i64>,
) -> Result<Option<Manifest>, etcd_client::Error> {
    let found = entries(kv, &archive.id).await?;
    if found.is_empty() {
        return Ok(None);
    }
    let m = Manifest {
        unseen: seen_below.map(|below| found.iter().filter(|e| e.mod_revision >= below).count() as u64),
        ..summarize(&archive.id, archive.reason.as_str(), &found, source_cluster_id, source_revision)
    };
    kv.put(manifest_key(&archive.id), serde_json::to_vec(&m).unwrap_or_default(), None).await?;
    tracing::warn!(archive = %m.id, count = m.count, overwritten = m.overwritten, pruned = m.pruned, reason = %m.reason, "destination keys archived before they were overwritten or deleted");
    Ok(Some(m))
}

fn summarize(id: &str, reason: &str, found: &[Entry], source_cluster_id: u64, source_revision: i64) -> Manifest {
    let count = |a: Action| found.iter().filter(|e| e.action == a).count() as u64;
    Manifest {
        id: id.to_string(),
        reason: reason.to_string(),
        created_at: Timestamp::now().to_string(),
        source_cluster_id: format!("{source_cluster_id:x}"),
        source_revision,
        count: found.len() as u64,
        overwritten: count(Action::Overwritten),
        pruned: count(Action::Pruned),
        unseen: None,
        min_revision: found.iter().map(|e| e.mod_revision).min().unwrap_or(0),
        max_revision: found.iter().map(|e| e.mod_revision).max().unwrap_or(0),
        bytes: found.iter().map(|e| e.value.len() as u64).sum(),
    }
}

/// Every archive in an etcd, oldest first: its manifest, or for one whose copy has not finished
/// (no manifest yet) a summary of the entries so far, with reason "unfinished".
pub async fn list(kv: &mut KvClient) -> Result<Vec<Manifest>, etcd_client::Error> {
    let start = ARCHIVE_PREFIX.as_bytes().to_vec();
    let end = prefix_end(&start);
    let mut from = start.clone();
    let mut ids: BTreeMap<String, Option<Manifest>> = BTreeMap::new();
    loop {
        let page = etcd::range_page_of(kv, &from, &end, 0, 5000, true).await?;
        if let Some(last) = page.kvs.last() {
            from = etcd::key_after(&last.key);
        }
        for k in page.kvs {
            let rest = String::from_utf8_lossy(&k.key[start.len()..]).into_owned();
            if let Some((id, _)) = rest.split_once('/') {
                ids.entry(id.to_string()).or_default();
            }
        }
        if !page.more {
            break;
        }
    }
    let mut out = Vec::new();
    for id in ids.into_keys() {
        let got = kv.get(manifest_key(&id), None).await?;
        let manifest = got.kvs().first().and_then(|kv| serde_json::from_slice::<Manifest>(kv.value()).ok());
        out.push(match manifest {
            Some(m) => m,
            None => summarize(&id, "unfinished", &entries(kv, &id).await?, 0, 0),
        });
    }
    Ok(out)
}

/// Archive `id`'s manifest, once written.
pub async fn manifest(kv: &mut KvClient, id: &str) -> Result<Option<Manifest>, etcd_client::Error> {
    let got = kv.get(manifest_key(id), None).await?;
    Ok(got.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// Whether an archive id names one in this etcd.
pub async fn exists(kv: &mut KvClient, id: &str) -> Result<bool, etcd_client::Error> {
    let resp = kv.get(id_prefix(id), Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
    Ok(resp.count() > 0)
}

/// A key decoded as the Kubernetes object it names: `group/resource namespace/name`.
pub fn describe(key: &[u8]) -> String {
    match keyspace::parse(key) {
        Some(o) => {
            let resource = match o.group {
                Some(g) => format!("{g}/{}", o.resource),
                None => o.resource.to_string(),
            };
            match o.namespace {
                Some(ns) if o.resource != "namespaces" => format!("{resource} {ns}/{}", o.name),
                _ => format!("{resource} {}", o.name),
            }
        }
        None => "(not an object key)".into(),
    }
}

/// What a restore did with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Restored {
    Put,
    /// The target holds the key (with other bytes) and `overwrite` was not given.
    Exists,
    /// The target holds these very bytes.
    Same,
}

/// Writes `entry`'s saved value back under its original key in `target`: only where the key is
/// absent, unless `overwrite`. Keys outside `/registry/` are refused by the caller.
pub async fn restore(target: &mut KvClient, entry: &Entry, overwrite: bool) -> Result<Restored, etcd_client::Error> {
    let now = target.get(entry.key.clone(), None).await?;
    let current = now.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision()));
    let guard = match &current {
        Some((v, _)) if *v == entry.value => return Ok(Restored::Same),
        Some(_) if !overwrite => return Ok(Restored::Exists),
        Some((_, rev)) => Compare::mod_revision(entry.key.clone(), CompareOp::Equal, *rev),
        None => Compare::version(entry.key.clone(), CompareOp::Equal, 0),
    };
    let resp = target.txn(Txn::new().when(vec![guard]).and_then(vec![TxnOp::put(entry.key.clone(), entry.value.clone(), None)])).await?;
    Ok(if resp.succeeded() { Restored::Put } else { Restored::Exists })
}

/// True for keys a restore may write: the apiserver's keyspace only.
pub fn restorable(key: &[u8]) -> bool {
    key.starts_with(REGISTRY_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::Filter;
    use crate::topology::ExcludeSpec;

    #[test]
    fn archived_values_round_trip_byte_for_byte() {
        let value = b"k8s\x00\n\xffbinary\nvalue".to_vec();
        let stored = encode(42, Action::Pruned, &value);
        let e = decode(b"/registry/x".to_vec(), &stored).expect("decodes");
        assert_eq!((e.value, e.mod_revision, e.action), (value, 42, Action::Pruned));
        assert_eq!(decode(b"k".to_vec(), b"no header"), None);
    }

    #[test]
    fn archive_keys_are_never_replicated_or_checked() {
        let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
        let id = new_id("2026-12-05T16:23:00Z".parse().expect("time"), 285, Reason::Compaction);
        assert_eq!(id, "20261205T162300.000Z-r285-compaction");
        let k = entry_key(&id, b"/registry/configmaps/a/b");
        assert_eq!(String::from_utf8_lossy(&k), "drctl/archive/20261205T162300.000Z-r285-compaction/k/registry/configmaps/a/b");
        assert!(!filter.copies(&k) && !filter.copies(manifest_key(&id).as_bytes()));
        assert!(!k.starts_with(REGISTRY_PREFIX.as_bytes()), "outside the apiserver's keyspace and every range the check reads");
    }

    #[test]
    fn describe_names_the_object() {
        assert_eq!(describe(b"/registry/configmaps/team-a/cm-1"), "configmaps team-a/cm-1");
        assert_eq!(describe(b"/registry/example.com/widgets/team-a/w1"), "example.com/widgets team-a/w1");
        assert_eq!(describe(b"/registry/namespaces/team-a"), "namespaces team-a");
        assert_eq!(describe(b"/registry/clusterroles/viewer"), "clusterroles viewer");
    }
}
