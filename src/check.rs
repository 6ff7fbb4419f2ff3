//! Anti-entropy: which replicated keys are missed (source only), surplus (destination only) or
//! diverged (different bytes), and the repair.
//!
//! In-flight writes are not reported: the source is read at the revision the destination's
//! mirror checkpoint says is fully applied (the checkpoint is written in the same txn as its data),
//! so a running mirror's destination equals that snapshot except for writes it applied after it.
//! Every mismatch is then re-verified after a short settle, key by key, at a consistent cut: the
//! destination's key and checkpoint read in one txn, the source at that checkpoint's revision
//! (no cut while the checkpoint says a copy or a multi-txn batch is half written: such keys are
//! in flux, not reported). Only keys that still differ there are reported. A repair writes only
//! at such a cut, guarded by the checkpoint being unchanged, so it never undoes a write the
//! mirror applied meanwhile (a delete applied after the cut would otherwise be resurrected).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use backon::Retryable;
use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError, CHECKPOINT_KEY};
use crate::copy_order::{self, ReadRange};
use crate::etcd::{self, Conn, Kv, Side};
use crate::keyspace::{prefix_end, Filter, REGISTRY_PREFIX};
use crate::managed_fields::{last_writer, Writer};

/// How many keys of each kind a report lists.
pub const DEFAULT_LIST_LIMIT: usize = 20;
/// Concurrent single-key requests while re-verifying or repairing.
const KEY_CONCURRENCY: usize = 16;
/// Tries per key when a mirror batch keeps landing between a repair's read and its write.
const REPAIR_ATTEMPTS: usize = 20;

/// One single-key request of a re-verification or a repair.
type KeyTask<T> = BoxFuture<'static, Result<T, CheckError>>;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("etcd request to the {side} failed: {source}")]
    Etcd { side: Side, source: etcd_client::Error },
    #[error(transparent)]
    TlsRefused(#[from] etcd::TlsRefused),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    SameCluster(#[from] etcd::SameCluster),
}

fn on(side: Side) -> impl FnOnce(etcd_client::Error) -> CheckError {
    move |source| {
        if etcd::is_tls_refusal(&source) {
            CheckError::TlsRefused(etcd::TlsRefused { side, source })
        } else {
            CheckError::Etcd { side, source }
        }
    }
}

/// One key that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: Vec<u8>,
    /// The source's value; None for a surplus key.
    pub source: Option<Vec<u8>>,
    /// The destination's mod revision (for a compare-and-swap repair); None for a missed key.
    pub dest_mod_revision: Option<i64>,
    /// The destination's value, saved in the archive before a copy or repair replaces it.
    pub dest_value: Option<Vec<u8>>,
    /// Who last wrote the destination's value, where it says (surplus and diverged keys).
    pub dest_writer: Option<Writer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missed,
    Surplus,
    Diverged,
}

impl Difference {
    /// How `key` differs between the source's value and the destination's (value, mod
    /// revision); None when both have the same bytes or neither has the key.
    fn between(key: Vec<u8>, source: Option<Vec<u8>>, dest: Option<(Vec<u8>, i64)>) -> Option<Difference> {
        match (source, dest) {
            (None, None) => None,
            (Some(a), Some((b, _))) if a == b => None,
            (source, dest) => {
                let dest_writer = dest.as_ref().and_then(|(v, _)| last_writer(v));
                let (dest_value, dest_mod_revision) = dest.map_or((None, None), |(v, r)| (Some(v), Some(r)));
                Some(Difference { key, source, dest_writer, dest_mod_revision, dest_value })
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match (&self.source, self.dest_mod_revision) {
            (Some(_), None) => Kind::Missed,
            (None, _) => Kind::Surplus,
            (Some(_), Some(_)) => Kind::Diverged,
        }
    }
}

/// Merge-joins two key-sorted lists, keeping only keys the filter replicates.
pub fn diff_sorted(source: Vec<Kv>, dest: Vec<Kv>, filter: &Filter) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut s = source.into_iter().filter(|kv| filter.copies(&kv.key)).peekable();
    let mut d = dest.into_iter().filter(|kv| filter.copies(&kv.key)).peekable();
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => return out,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.key.cmp(&b.key),
        };
        let (a, b) = match order {
            std::cmp::Ordering::Less => (s.next(), None),
            std::cmp::Ordering::Greater => (None, d.next()),
            std::cmp::Ordering::Equal => (s.next(), d.next()),
        };
        let Some(key) = a.as_ref().or(b.as_ref()).map(|kv| kv.key.clone()) else { return out };
        out.extend(Difference::between(key, a.map(|kv| kv.value), b.map(|kv| (kv.value, kv.mod_revision))));
    }
}

/// Pages through key ranges of the source at a fixed revision and the destination now,
/// aligned so each page covers the same key interval on both sides.
pub struct DiffPager {
    /// The ranges left, in key order; the first is read from `next` on.
    ranges: VecDeque<ReadRange>,
    next: Vec<u8>,
    revision: i64,
    page_bytes: usize,
    page_keys: i64,
}

/// One aligned page: every key before `covered_to` is compared.
#[derive(Debug)]
pub struct DiffPage {
    pub differences: Vec<Difference>,
    /// Replicated source keys in the page.
    pub source_keys: u64,
    /// Source keys in the page, replicated or not.
    pub all_source_keys: u64,
    pub covered_to: Vec<u8>,
}

/// Keys per page of a keys-only range (no values: ~3 MB whatever the objects). Big, because etcd
/// 3.4 walks its index to the range's end for every page (under the lock the primary's writes
/// need): fewer pages, fewer walks.
const KEYS_ONLY_PAGE: i64 = 50_000;

/// One page of each side of `[start, end)`, both at once.
async fn read_both(
    source: &mut KvClient,
    dest: &mut KvClient,
    (start, end): (&[u8], &[u8]),
    revision: i64,
    limit: i64,
    keys_only: bool,
) -> Result<(etcd::Page, etcd::Page), CheckError> {
    tokio::try_join!(async { etcd::range_page_of(source, start, end, revision, limit, keys_only).await.map_err(on(Side::Source)) }, async {
        etcd::range_page_of(dest, start, end, 0, limit, keys_only).await.map_err(on(Side::Destination))
    },)
}

impl DiffPager {
    pub fn new(start: Vec<u8>, end: Vec<u8>, revision: i64, page_bytes: usize) -> DiffPager {
        DiffPager::over(vec![ReadRange { start, end, keys_only: false }], revision, page_bytes)
    }

    /// Pages through `ranges` in turn (sorted, disjoint; as [`copy_order::read_ranges`] makes them).
    pub fn over(ranges: Vec<ReadRange>, revision: i64, page_bytes: usize) -> DiffPager {
        let ranges: VecDeque<ReadRange> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        let next = ranges.front().map(|r| r.start.clone()).unwrap_or_default();
        DiffPager { ranges, next, revision, page_bytes, page_keys: 256 }
    }

    /// The next page, None when the ranges are done. Errors name the side that failed.
    pub async fn next(&mut self, source: &mut KvClient, dest: &mut KvClient, filter: &Filter) -> Result<Option<DiffPage>, CheckError> {
        let Some(range) = self.ranges.front() else { return Ok(None) };
        let (end, keys_only) = (range.end.clone(), range.keys_only);
        let bounds = (self.next.as_slice(), end.as_slice());
        let (mut src, mut dst) = if keys_only {
            read_both(source, dest, bounds, self.revision, KEYS_ONLY_PAGE, true).await?
        } else {
            read_both(source, dest, bounds, self.revision, self.page_keys, false).await?
        };
        if keys_only && src.kvs.iter().chain(&dst.kvs).any(|kv| filter.copies(&kv.key)) {
            // A key of an unknown shape under an excluded resource is copied: compare its bytes.
            (src, dst) = read_both(source, dest, bounds, self.revision, self.page_keys, false).await?;
        }
        // The page covers keys up to where the shorter read stopped.
        let stop = |p: &etcd::Page| match (p.more, p.kvs.last()) {
            (true, Some(last)) => Some(etcd::key_after(&last.key)),
            _ => None,
        };
        let covered_to = match (stop(&src), stop(&dst)) {
            (None, None) => end.clone(),
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => a.min(b),
        };
        // Size pages by bytes: values range from a few bytes to 1.5 MiB.
        let bytes: usize = src.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        if !src.kvs.is_empty() && !keys_only {
            let avg = (bytes / src.kvs.len()).max(1);
            self.page_keys = (self.page_bytes / avg).clamp(16, 10_000) as i64;
        }
        let within = |kvs: Vec<Kv>| -> Vec<Kv> { kvs.into_iter().take_while(|kv| kv.key < covered_to).collect() };
        let (source_kvs, dest_kvs) = (within(src.kvs), within(dst.kvs));
        let source_keys = source_kvs.iter().filter(|kv| filter.copies(&kv.key)).count() as u64;
        let all_source_keys = source_kvs.len() as u64;
        if covered_to == end {
            self.ranges.pop_front();
            self.next = self.ranges.front().map(|r| r.start.clone()).unwrap_or_default();
        } else {
            self.next = covered_to.clone();
        }
        Ok(Some(DiffPage { differences: diff_sorted(source_kvs, dest_kvs, filter), source_keys, all_source_keys, covered_to }))
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Keys listed per kind in the report.
    pub list_limit: usize,
    /// Wait before re-verifying mismatches (lets in-flight mirror writes land).
    pub settle: Duration,
    pub page_bytes: usize,
    /// Most source keys read per second (None: as fast as the source answers): a standby's
    /// periodic check reads the whole primary, which then answers its own clients more slowly.
    pub max_read_rate: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { list_limit: DEFAULT_LIST_LIMIT, settle: Duration::from_millis(500), page_bytes: 8 << 20, max_read_rate: None }
    }
}

/// How long to wait before reading more, having read `read` keys in `elapsed` at most `rate`
/// keys per second.
pub fn read_pause(read: u64, elapsed: Duration, rate: Option<u64>) -> Duration {
    match rate {
        Some(r) if r > 0 => Duration::from_secs_f64(read as f64 / r as f64).saturating_sub(elapsed),
        _ => Duration::ZERO,
    }
}

/// Counts plus the first keys of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub count: u64,
    pub keys: Vec<String>,
    /// Who last wrote the destination's value of listed keys, where the object says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<KeyWriter>,
}

/// A listed key and who last wrote it on the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWriter {
    pub key: String,
    #[serde(flatten)]
    pub writer: Writer,
}

impl KeyList {
    fn writer_of(&self, key: &str) -> Option<&Writer> {
        self.writers.iter().find(|w| w.key == key).map(|w| &w.writer)
    }
}

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairOutcome {
    /// Missed and diverged keys written with the source's value.
    pub put: u64,
    /// Surplus keys deleted (only with prune).
    pub deleted: u64,
    /// Keys needing no write by the time of the repair: right again (the mirror got there
    /// first), or surplus at that point and not to be pruned.
    #[serde(default)]
    pub already: u64,
    /// Keys the mirror kept changing under the repair (left to the mirror and the next check).
    pub skipped: u64,
    /// Keys the current exclusions do not replicate: never written, whatever the difference
    /// said (it may come from a check run with other exclusions).
    #[serde(default)]
    pub excluded: u64,
    /// Destination values saved in the archive before they were overwritten or deleted.
    #[serde(default)]
    pub archived: u64,
    /// The archive they are in (see [`crate::archive`]); absent when none was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::archive::Manifest>,
}

/// The report `drctl check` prints and the controller serves at `/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub consistent: bool,
    /// Source revision compared against (the destination's checkpoint when it has one).
    pub revision: i64,
    /// The source's revision when the check started.
    pub source_revision: i64,
    pub source_cluster_id: String,
    /// Replicated source keys compared.
    pub checked_keys: u64,
    /// Source keys under `/registry/`, replicated or not.
    #[serde(default)]
    pub source_keys: u64,
    pub missed: KeyList,
    pub surplus: KeyList,
    pub diverged: KeyList,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairOutcome>,
    /// Surplus and diverged keys (all, not only the listed ones) by the field manager that last
    /// wrote them on the destination; keys whose value does not say are not counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub writers: BTreeMap<String, u64>,
}

impl CheckReport {
    /// `manager ×count` of `writers`, most keys first, for messages.
    pub fn writers_summary(&self) -> Option<String> {
        let mut by: Vec<(&String, &u64)> = self.writers.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        (!by.is_empty()).then(|| by.iter().map(|(m, n)| format!("{m} ×{n}")).collect::<Vec<_>>().join(", "))
    }
}

impl CheckReport {
    /// The exclusions leave nothing to replicate although the source has data: replication has
    /// effectively stopped, which is never "consistent".
    pub fn replicates_nothing(&self) -> bool {
        self.checked_keys == 0 && self.source_keys > 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.consistent { "consistent" } else { "NOT consistent" };
        writeln!(
            f,
            "{verdict} at source revision {} (source head {}): {} keys checked in {} ms",
            self.revision, self.source_revision, self.checked_keys, self.duration_ms
        )?;
        if self.replicates_nothing() {
            writeln!(
                f,
                "nothing is replicated: the source holds {} keys under /registry/ and the exclusions remove all of them; fix spec.sync.exclude",
                self.source_keys
            )?;
        }
        for (name, list) in [("missed", &self.missed), ("surplus", &self.surplus), ("diverged", &self.diverged)] {
            writeln!(f, "{name}: {}", list.count)?;
            for k in &list.keys {
                match list.writer_of(k) {
                    Some(w) => writeln!(f, "  {k}  (last written here by {w})")?,
                    None => writeln!(f, "  {k}")?,
                }
            }
            if list.count > list.keys.len() as u64 {
                writeln!(f, "  ... and {} more", list.count - list.keys.len() as u64)?;
            }
        }
        if let Some(w) = self.writers_summary() {
            writeln!(f, "last writers of surplus and diverged keys here: {w}")?;
        }
        if let Some(r) = &self.repair {
            writeln!(
                f,
                "repair: {} put, {} deleted, {} already right, {} skipped (kept changing; left to the mirror), {} excluded (not written)",
                r.put, r.deleted, r.already, r.skipped, r.excluded
            )?;
            if let Some(a) = &r.archive {
                writeln!(f, "the {} values replaced are saved in archive {} (drctl archive list)", a.count, a.id)?;
            }
        }
        Ok(())
    }
}

/// A check's report with every difference (the report lists only the first few).
#[derive(Debug, Clone)]
pub struct Check {
    pub report: CheckReport,
    pub differences: Vec<Difference>,
}

/// Compares the replicated keyspace of `source` and `dest`.
#[tracing::instrument(skip_all)]
pub async fn run(source: &Conn, dest: &Conn, filter: &Filter, opts: &CheckOptions) -> Result<Check, CheckError> {
    let started = Instant::now();
    let (mut skv, mut dkv) = (source.kv.clone(), dest.kv.clone());
    let (cluster_id, head) = etcd::head(&mut skv).await.map_err(on(Side::Source))?;
    etcd::distinct(cluster_id, etcd::head(&mut dkv).await.map_err(on(Side::Destination))?.0)?;
    let at = compare_revision(&mut dkv, cluster_id, head).await?;
    let (revision, (mut differences, checked, all)) = match scan(&mut skv, &mut dkv, filter, at, opts).await {
        // The checkpoint's revision is gone from the source's history: compare with now.
        Err(CheckError::Etcd { side: Side::Source, source: e }) if etcd::is_compacted(&e) => (head, scan(&mut skv, &mut dkv, filter, head, opts).await?),
        r => (at, r?),
    };
    if !differences.is_empty() && !opts.settle.is_zero() {
        tokio::time::sleep(opts.settle).await;
        differences = reverify(&skv, &dkv, differences, cluster_id).await?;
    }
    let list = |kind: Kind| {
        let mut l = KeyList::default();
        for d in differences.iter().filter(|d| d.kind() == kind) {
            l.count += 1;
            if l.keys.len() < opts.list_limit {
                let key = String::from_utf8_lossy(&d.key).into_owned();
                if let Some(w) = &d.dest_writer {
                    l.writers.push(KeyWriter { key: key.clone(), writer: w.clone() });
                }
                l.keys.push(key);
            }
        }
        l
    };
    let mut writers = BTreeMap::new();
    for w in differences.iter().filter(|d| d.kind() != Kind::Missed).filter_map(|d| d.dest_writer.as_ref()) {
        *writers.entry(w.manager.clone()).or_insert(0) += 1;
    }
    let mut report = CheckReport {
        consistent: false,
        revision,
        source_revision: head,
        source_cluster_id: format!("{cluster_id:x}"),
        checked_keys: checked,
        source_keys: all,
        missed: list(Kind::Missed),
        surplus: list(Kind::Surplus),
        diverged: list(Kind::Diverged),
        duration_ms: started.elapsed().as_millis() as u64,
        repair: None,
        writers,
    };
    report.consistent = differences.is_empty() && !report.replicates_nothing();
    tracing::info!(consistent = report.consistent, revision, checked, "check done");
    Ok(Check { report, differences })
}

/// The source revision the destination claims to have fully applied, else the source's head.
async fn compare_revision(dest: &mut KvClient, cluster_id: u64, head: i64) -> Result<i64, CheckError> {
    Ok(match Checkpoint::read(dest).await? {
        Some(cp) if cp.cluster_id == cluster_id && cp.copy.is_none() && cp.revision <= head => cp.revision,
        _ => head,
    })
}

async fn scan(skv: &mut KvClient, dkv: &mut KvClient, filter: &Filter, at: i64, opts: &CheckOptions) -> Result<(Vec<Difference>, u64, u64), CheckError> {
    let start = REGISTRY_PREFIX.as_bytes().to_vec();
    let found = copy_order::discover(skv, at).await.map_err(on(Side::Source))?;
    let ranges = copy_order::read_ranges(&start, &prefix_end(&start), &found, filter);
    let mut pager = DiffPager::over(ranges, at, opts.page_bytes);
    let (mut diffs, mut checked, mut all) = (Vec::new(), 0, 0);
    let started = Instant::now();
    while let Some(page) = pager.next(skv, dkv, filter).await? {
        checked += page.source_keys;
        all += page.all_source_keys;
        diffs.extend(page.differences);
        tokio::time::sleep(read_pause(all, started.elapsed(), opts.max_read_rate)).await;
    }
    Ok((diffs, checked, all))
}

/// One key at a consistent cut.
struct Cut {
    /// How the key differs there; None when both sides agree.
    difference: Option<Difference>,
    /// Holds while the destination's checkpoint is as read: no mirror batch landed since.
    checkpoint_unchanged: Compare,
}

/// Reads `key` on the destination together with its mirror checkpoint (one txn), then on the
/// source at the checkpoint's revision: both sides as of the same source revision. None when
/// there is no such cut right now: a copy or a multi-txn batch half written, a checkpoint of
/// another source, or its revision compacted away; the key is in flux, not known to differ.
/// With no checkpoint at all (a copy not made by drctl) the source is read at its head and the
/// destination as it is.
async fn read_cut(mut skv: KvClient, mut dkv: KvClient, key: &[u8], cluster_id: u64) -> Result<Option<Cut>, CheckError> {
    let txn = Txn::new().and_then(vec![TxnOp::get(key, None), TxnOp::get(CHECKPOINT_KEY, None)]);
    let resp = dkv.txn(txn).await.map_err(on(Side::Destination))?;
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let dest = gets.next().and_then(|g| g.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())));
    let checkpoint = gets.next().and_then(|g| g.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())));
    let (revision, checkpoint_unchanged) = match checkpoint {
        None => (etcd::head(&mut skv).await.map_err(on(Side::Source))?.1, Compare::version(CHECKPOINT_KEY, CompareOp::Equal, 0)),
        Some((value, mod_revision)) => match serde_json::from_slice::<Checkpoint>(&value) {
            // May be past a head read earlier: the mirror applied more since; the source has it.
            Ok(cp) if cp.cluster_id == cluster_id && cp.copy.is_none() && cp.pending.is_none() => {
                (cp.revision, Compare::mod_revision(CHECKPOINT_KEY, CompareOp::Equal, mod_revision))
            }
            _ => return Ok(None),
        },
    };
    let src = match skv.get(key, Some(GetOptions::new().with_revision(revision))).await {
        Ok(r) => r,
        Err(e) if etcd::is_compacted(&e) => return Ok(None),
        Err(e) => return Err(on(Side::Source)(e)),
    };
    let source = src.kvs().first().map(|kv| kv.value().to_vec());
    Ok(Some(Cut { difference: Difference::between(key.to_vec(), source, dest), checkpoint_unchanged }))
}

/// Re-reads each differing key at a consistent cut; keeps those that still differ there. A key
/// with no cut right now is in flux (the mirror is writing): not reported; the next check sees it.
async fn reverify(skv: &KvClient, dkv: &KvClient, differences: Vec<Difference>, cluster_id: u64) -> Result<Vec<Difference>, CheckError> {
    let lookups: Vec<KeyTask<Option<Difference>>> = differences
        .into_iter()
        .map(|d| {
            let (s, t) = (skv.clone(), dkv.clone());
            async move { Ok(read_cut(s, t, &d.key, cluster_id).await?.and_then(|cut| cut.difference)) }.boxed()
        })
        .collect();
    let results: Vec<Option<Difference>> = futures::stream::iter(lookups).buffered(KEY_CONCURRENCY).try_collect().await?;
    Ok(results.into_iter().flatten().collect())
}

/// What one key's repair did; `true`: the destination's value was saved in the archive first.
enum Fix {
    Put(bool),
    Deleted(bool),
    Already,
    Skipped,
    Excluded,
}

/// Why one repair attempt of a key wrote nothing.
enum NotWritten {
    /// No consistent cut right now: a batch or a copy is being written; give it a moment.
    InFlux,
    /// A mirror batch landed between the read and the guarded write.
    Raced,
    Failed(CheckError),
}

/// The waits between a key's repair attempts ([`REPAIR_ATTEMPTS`] in all): 10 ms longer each time.
fn in_flux_waits() -> impl Iterator<Item = Duration> {
    (1..REPAIR_ATTEMPTS as u64).map(|n| Duration::from_millis(10 * n))
}

/// Above this many bytes (old value, new value and keys) a repair saves the old value in a txn
/// of its own, before the write: etcd refuses requests over 1.5 MiB by default.
const SAVE_IN_SAME_TXN_BYTES: usize = 1 << 20;

/// One repair attempt of `key`: read at a consistent cut, then write the source's value (or
/// delete, with `prune`) guarded by the destination's key and checkpoint being as read. The
/// destination's value it replaces is saved in archive `archive` first (same txn when it fits).
async fn write_at_cut(skv: KvClient, mut dkv: KvClient, key: &[u8], cluster_id: u64, prune: bool, archive: &str) -> Result<Fix, NotWritten> {
    let cut = read_cut(skv, dkv.clone(), key, cluster_id).await.map_err(NotWritten::Failed)?.ok_or(NotWritten::InFlux)?;
    let Some(d) = cut.difference else { return Ok(Fix::Already) };
    let new_bytes = d.source.as_ref().map_or(0, Vec::len);
    let save = match (&d.dest_value, d.dest_mod_revision) {
        (Some(old), Some(rev)) if d.source.is_some() || prune => {
            let action = if d.source.is_some() { crate::archive::Action::Overwritten } else { crate::archive::Action::Pruned };
            Some((crate::archive::save_op(archive, key, old, rev, action), old.len()))
        }
        _ => None,
    };
    let saved = save.is_some();
    let (op, fix) = match d.source {
        Some(v) => (TxnOp::put(key, v, None), Fix::Put(saved)),
        None if prune => (TxnOp::delete(key, None), Fix::Deleted(saved)),
        None => return Ok(Fix::Already),
    };
    let mut ops = Vec::new();
    match save {
        Some((save, old)) if old + new_bytes + 2 * key.len() > SAVE_IN_SAME_TXN_BYTES => {
            dkv.txn(Txn::new().and_then(vec![save])).await.map_err(|e| NotWritten::Failed(on(Side::Destination)(e)))?;
        }
        Some((save, _)) => ops.push(save),
        None => {}
    }
    ops.push(op);
    let guards = vec![
        match d.dest_mod_revision {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::version(key, CompareOp::Equal, 0),
        },
        cut.checkpoint_unchanged,
    ];
    let resp = dkv.txn(Txn::new().when(guards).and_then(ops)).await.map_err(|e| NotWritten::Failed(on(Side::Destination)(e)))?;
    if resp.succeeded() {
        Ok(fix)
    } else {
        Err(NotWritten::Raced)
    }
}

/// Writes the source's value over missed and diverged keys; deletes surplus keys when `prune`.
/// Each key is re-read at a consistent cut and written only if the destination's key and its
/// checkpoint are still as read, so a write the mirror applied meanwhile is never undone. Only
/// keys `filter` replicates are ever written: a key excluded now is the destination's own, even
/// when a difference found under other exclusions names it. Every destination value it
/// overwrites or deletes is saved first in a new archive (reason "repair", [`crate::archive`]).
#[tracing::instrument(skip_all, fields(differences = differences.len(), prune))]
pub async fn repair(source: &Conn, dest: &Conn, filter: &Filter, differences: &[Difference], prune: bool) -> Result<RepairOutcome, CheckError> {
    let (cluster_id, head) = etcd::head(&mut source.kv.clone()).await.map_err(on(Side::Source))?;
    let archive = crate::archive::ArchiveRef::new(crate::archive::Reason::Repair, head);
    let writes: Vec<KeyTask<Fix>> = differences
        .iter()
        .map(|d| {
            let (skv, dkv, key, id) = (source.kv.clone(), dest.kv.clone(), d.key.clone(), archive.id.clone());
            let excluded = !filter.copies(&key);
            async move {
                if excluded {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), "repair refused: the key is excluded from replication now");
                    return Ok(Fix::Excluded);
                }
                let attempt = || write_at_cut(skv.clone(), dkv.clone(), &key, cluster_id, prune, &id);
                let written = attempt
                    .retry(in_flux_waits())
                    .when(|e| !matches!(e, NotWritten::Failed(_)))
                    // A lost race is tried again at once: the batch that won has landed, the next read sees it.
                    .adjust(|e, wait| if matches!(e, NotWritten::Raced) { wait.map(|_| Duration::ZERO) } else { wait })
                    .await;
                match written {
                    Ok(fix) => Ok(fix),
                    Err(NotWritten::InFlux | NotWritten::Raced) => Ok(Fix::Skipped),
                    Err(NotWritten::Failed(e)) => Err(e),
                }
            }
            .boxed()
        })
        .collect();
    let fixes: Vec<Fix> = futures::stream::iter(writes).buffer_unordered(KEY_CONCURRENCY).try_collect().await?;
    let mut out = RepairOutcome::default();
    for f in fixes {
        match f {
            Fix::Put(saved) => {
                out.put += 1;
                out.archived += u64::from(saved);
            }
            Fix::Deleted(saved) => {
                out.deleted += 1;
                out.archived += u64::from(saved);
            }
            Fix::Already => out.already += 1,
            Fix::Skipped => out.skipped += 1,
            Fix::Excluded => out.excluded += 1,
        }
    }
    if out.archived > 0 {
        // Counted from what is in the archive: a write that lost a race after its value was saved
        // in a txn of its own left an entry too.
        let sealed = crate::archive::seal(&mut dest.kv.clone(), &archive, cluster_id, head, None).await.map_err(on(Side::Destination))?;
        out.archived = sealed.as_ref().map_or(out.archived, |m| m.count);
        out.archive = sealed;
    }
    tracing::info!(
        put = out.put,
        deleted = out.deleted,
        already = out.already,
        skipped = out.skipped,
        excluded = out.excluded,
        archived = out.archived,
        "repair done"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ExcludeSpec;

    #[test]
    fn a_key_in_flux_is_tried_repair_attempts_times_waiting_10ms_longer_each_time() {
        let waits: Vec<u128> = in_flux_waits().map(|d| d.as_millis()).collect();
        assert_eq!(waits.len(), REPAIR_ATTEMPTS - 1, "the first attempt, then one per wait");
        assert_eq!(waits[..3], [10, 20, 30]);
        assert_eq!(waits.last(), Some(&(10 * (REPAIR_ATTEMPTS as u128 - 1))));
    }

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), mod_revision: rev }
    }

    #[test]
    fn read_pause_holds_the_read_rate_and_never_waits_unbounded() {
        let s = Duration::from_secs;
        assert_eq!(read_pause(50_000, s(1), Some(10_000)), s(4), "ahead of the rate: wait until it is met");
        assert_eq!(read_pause(5_000, s(1), Some(10_000)), Duration::ZERO, "behind it: go on");
        assert_eq!(read_pause(1_000_000, Duration::ZERO, None), Duration::ZERO, "unbounded");
        assert_eq!(read_pause(1_000_000, Duration::ZERO, Some(0)), Duration::ZERO, "0 means unbounded");
    }

    #[test]
    fn diff_finds_missed_surplus_diverged_and_ignores_excluded() {
        let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
        let source = vec![
            kv("/registry/configmaps/a/same", "1", 5),
            kv("/registry/configmaps/a/missed", "2", 6),
            kv("/registry/configmaps/a/diverged", "3", 7),
            kv("/registry/configmaps/kube-system/excluded", "4", 8),
        ];
        let mut source = source;
        source.sort_by(|a, b| a.key.cmp(&b.key));
        let dest = vec![
            kv("/registry/configmaps/a/diverged", "x", 40),
            kv("/registry/configmaps/a/same", "1", 41),
            kv("/registry/configmaps/a/surplus", "5", 42),
            kv("/registry/masterleases/10.0.0.1", "own", 43),
        ];
        let got: Vec<(String, Kind)> =
            diff_sorted(source, dest, &filter).into_iter().map(|d| (String::from_utf8_lossy(&d.key).into_owned(), d.kind())).collect();
        assert_eq!(
            got,
            vec![
                ("/registry/configmaps/a/diverged".to_string(), Kind::Diverged),
                ("/registry/configmaps/a/missed".to_string(), Kind::Missed),
                ("/registry/configmaps/a/surplus".to_string(), Kind::Surplus),
            ]
        );
    }

    #[test]
    fn report_json_round_trips_and_text_lists_keys_with_their_writers() {
        let writer = Writer { manager: "kube-scheduler".into(), operation: "Update".into(), subresource: "binding".into(), time: None };
        let report = CheckReport {
            consistent: false,
            revision: 10,
            source_revision: 12,
            source_cluster_id: "ab".into(),
            checked_keys: 3,
            source_keys: 5,
            missed: KeyList { count: 2, keys: vec!["/registry/a".into()], writers: Vec::new() },
            surplus: KeyList::default(),
            diverged: KeyList { count: 3, keys: vec!["/registry/pods/x/p".into()], writers: vec![KeyWriter { key: "/registry/pods/x/p".into(), writer }] },
            duration_ms: 1,
            repair: None,
            writers: BTreeMap::from([("kube-scheduler".to_string(), 2), ("kube-controller-manager".to_string(), 1)]),
        };
        let json = serde_json::to_string(&report).expect("serialize");
        assert!(json.contains("\"sourceRevision\":12"), "{json}");
        assert!(json.contains(r#"{"key":"/registry/pods/x/p","manager":"kube-scheduler","operation":"Update","subresource":"binding"}"#), "{json}");
        assert_eq!(serde_json::from_str::<CheckReport>(&json).expect("parse"), report);
        let text = report.to_string();
        assert!(text.contains("NOT consistent") && text.contains("  /registry/a") && text.contains("1 more"), "{text}");
        assert!(!text.contains("nothing is replicated"), "{text}");
        // Exclusions that leave nothing to compare while the source has data: never consistent.
        let empty = CheckReport { checked_keys: 0, missed: KeyList::default(), ..report };
        assert!(empty.replicates_nothing());
        assert!(empty.to_string().contains("nothing is replicated: the source holds 5 keys"), "{empty}");
        assert!(text.contains("  /registry/pods/x/p  (last written here by kube-scheduler (Update binding))"), "{text}");
        assert!(text.contains("here: kube-scheduler ×2, kube-controller-manager ×1"), "{text}");
    }

    #[test]
    fn only_surplus_and_diverged_keys_carry_the_destinations_writer() {
        let stored = br#"{"metadata":{"managedFields":[{"manager":"standby-writer","operation":"Update"}]}}"#.to_vec();
        let diverged = Difference::between(b"/k".to_vec(), Some(b"{}".to_vec()), Some((stored.clone(), 7))).expect("differs");
        assert_eq!((diverged.kind(), diverged.dest_writer.map(|w| w.manager)), (Kind::Diverged, Some("standby-writer".into())));
        let surplus = Difference::between(b"/k".to_vec(), None, Some((stored.clone(), 7))).expect("differs");
        assert_eq!(surplus.dest_writer.map(|w| w.manager).as_deref(), Some("standby-writer"));
        let missed = Difference::between(b"/k".to_vec(), Some(stored.clone()), None).expect("differs");
        assert_eq!((missed.kind(), missed.dest_writer), (Kind::Missed, None));
        assert_eq!(Difference::between(b"/k".to_vec(), Some(stored.clone()), Some((stored, 7))), None);
    }
}
