//! etcd→etcd replication of the Kubernetes keyspace: a paged copy at a fixed source revision,
//! then a watch from the next revision, with a checkpoint in the destination that makes both
//! resumable.
//!
//! Values are copied byte for byte and keys are never renamed (encryption at rest binds the key
//! as authenticated data); leases are not copied (the source's leases mean nothing here).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, KvClient, Txn, TxnOp, WatchOptions, WatchResponse};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;

use crate::archive::{self, ArchiveRef, Manifest, Reason};
use crate::check::{self, CheckError, CheckOptions, DiffPage, DiffPager};
// Re-exported: the checkpoint is the mirror's, in its own module so the check can read it too.
pub use crate::checkpoint::{Checkpoint, CheckpointError, CopyCursor, WasPrimary, Witness, CHECKPOINT_KEY, WAS_PRIMARY_KEY};
use crate::copy_order;
use crate::decide::revisions;
use crate::etcd::{self, Conn, Endpoint, EtcdError, Side, TxnRefusal};
use crate::keyspace::{Filter, REGISTRY_PREFIX};

mod floor;
use floor::Floor;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Connect(#[from] EtcdError),
    #[error("etcd request to the {side} failed: {source}")]
    Etcd { side: Side, source: etcd_client::Error },
    #[error(transparent)]
    TlsRefused(#[from] etcd::TlsRefused),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    SameCluster(#[from] etcd::SameCluster),
    #[error("the source compacted the revision the mirror needs")]
    Compacted,
    #[error("the source has not reached a revision the mirror already applied: its history went back (restored from a snapshot?)")]
    Rewound,
    #[error("the source's watch stream went silent for {0:?} after a progress request")]
    DeadWatch(Duration),
    #[error("the source ended the watch stream")]
    WatchEnded,
    #[error("the source canceled the watch: {0}")]
    WatchCanceled(String),
    #[error("a write task failed: {0}")]
    Task(String),
}

impl MirrorError {
    /// A failure another session can get past: an election, a member gone, a stream cut.
    pub fn is_transient(&self) -> bool {
        match self {
            MirrorError::Etcd { source, .. } => etcd::is_transient(source),
            MirrorError::Connect(e) => e.is_transient(),
            MirrorError::DeadWatch(_) | MirrorError::WatchEnded => true,
            MirrorError::WatchCanceled(why) => why.contains("no leader"),
            _ => false,
        }
    }
}

fn on(side: Side) -> impl FnOnce(etcd_client::Error) -> MirrorError {
    move |source| {
        if side == Side::Source && etcd::is_compacted(&source) {
            MirrorError::Compacted
        } else if side == Side::Source && etcd::is_future_revision(&source) {
            MirrorError::Rewound
        } else if etcd::is_tls_refusal(&source) {
            MirrorError::TlsRefused(etcd::TlsRefused { side, source })
        } else {
            MirrorError::Etcd { side, source }
        }
    }
}

impl From<CheckError> for MirrorError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Etcd { side, source } => on(side)(source),
            CheckError::TlsRefused(r) => MirrorError::TlsRefused(r),
            CheckError::Checkpoint(c) => MirrorError::Checkpoint(c),
            CheckError::SameCluster(s) => MirrorError::SameCluster(s),
        }
    }
}

/// Sizes and timings; the defaults suit a Kubernetes etcd with its default 1.5 MiB request limit.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// etcd's `--max-txn-ops` default; one op of each txn is the checkpoint.
    pub txn_max_ops: usize,
    pub txn_max_bytes: usize,
    /// Target size of one range page.
    pub page_bytes: usize,
    /// Write txns in flight during the copy.
    pub in_flight: usize,
    /// Distinct keys collected from the watch before a batch is applied.
    pub batch_max_keys: usize,
    /// Silence on the watch before asking for progress, and then before declaring it dead.
    pub progress_timeout: Duration,
    /// How often a checkpoint is written when only excluded keys changed.
    pub checkpoint_every: Duration,
    /// The first anti-entropy pass runs this long after the copy has caught up (None: never);
    /// passes repeat every `anti_entropy_retry` until one finds nothing to repair.
    pub anti_entropy_after: Option<Duration>,
    pub anti_entropy_retry: Duration,
    /// Most revisions a batch waits for the destination to be raised by, to keep it at or above
    /// the source's numbering (`decide::revisions`, raised beside the batches: `mirror::floor`).
    /// A standby further below its primary catches up without the batches waiting.
    pub floor_step: u64,
    /// How far past the source's last revision the destination is raised while following, so a
    /// batch under a steady write rate finds its room made already.
    pub floor_lead: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            txn_max_ops: 128,
            txn_max_bytes: 1 << 20,
            page_bytes: 4 << 20,
            in_flight: 8,
            batch_max_keys: 2048,
            progress_timeout: Duration::from_secs(5),
            checkpoint_every: Duration::from_secs(2),
            // Right away: a standby whose garbage collector runs may already be deleting
            // dependents that arrived before their owners.
            anti_entropy_after: Some(Duration::ZERO),
            anti_entropy_retry: Duration::from_secs(2),
            floor_step: 250,
            floor_lead: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub source: Endpoint,
    pub dest: Endpoint,
    pub filter: Filter,
    pub tuning: Tuning,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Connecting,
    Copying,
    Following,
    Stopped,
}

/// What the mirror is doing; observe it with [`Mirror::progress`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    pub source_cluster_id: u64,
    /// Latest revision the source reported.
    pub source_revision: i64,
    /// Last source revision fully applied to the destination.
    pub applied_revision: i64,
    /// Keys under `/registry/` at the copy revision (for a progress bar).
    pub copy_total_keys: u64,
    /// Replicated source keys compared by the copy so far.
    pub copy_compared_keys: u64,
    /// Keys written to / deleted from the destination since start.
    pub put_keys: u64,
    pub deleted_keys: u64,
    /// This run continued from a checkpoint instead of copying from scratch.
    pub resumed: bool,
    /// Full resyncs (compaction, another source cluster, a rewound source).
    pub resyncs: u64,
    /// The last time the source's history went back (an etcd restored from a snapshot: same
    /// cluster ID, its revision below what the destination applied, or past it again in another
    /// history, which the checkpoint's witness tells): (the revision the destination had
    /// applied, the source's head then). A resync from the head follows.
    pub rewound: Option<(i64, i64)>,
    /// How many times that happened since start.
    pub rewinds: u64,
    /// Destination keys saved in archives (before a copy or a repair overwrote or deleted
    /// them) since start.
    pub archived_keys: u64,
    /// The last archive made, once its copy or repair finished.
    pub archive: Option<Manifest>,
    /// The archives made since start, oldest first (the last [`KEPT_ARCHIVES`]).
    pub archives: Vec<Manifest>,
    pub last_error: Option<String>,
    /// When the destination last had every source revision the mirror knew of.
    pub caught_up_at: Option<SystemTime>,
    /// Revisions the destination still lies below the source revision it applied (0 once the
    /// floor of `decide::revisions` holds).
    pub revision_gap: u64,
    /// Writes of the batches applied since start while the destination was known to lie below
    /// the batch's revision (a standby catching up, or a burst the floor's raise fell behind):
    /// `revision_gap` closes again once the raise catches up, this stays. A client resuming a
    /// watch from a resourceVersion in such a window on the promoted standby could miss them.
    /// At least every write that landed below its own revision; a batch is counted whole, and
    /// the head the mirror knows can trail the destination's by a chunk of the raise.
    pub writes_below_floor: u64,
}

/// Archives kept in [`Progress::archives`].
pub const KEPT_ARCHIVES: usize = 16;

impl Progress {
    fn archived(&mut self, m: Manifest) {
        self.archives.push(m.clone());
        if self.archives.len() > KEPT_ARCHIVES {
            self.archives.remove(0);
        }
        self.archive = Some(m);
    }

    /// Source revisions not yet applied.
    pub fn lag_revisions(&self) -> i64 {
        (self.source_revision - self.applied_revision).max(0)
    }

    /// How long the destination has been behind (zero when caught up; None before it ever was).
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        let since = self.caught_up_at?;
        Some(if self.lag_revisions() == 0 { Duration::ZERO } else { now.duration_since(since).unwrap_or_default() })
    }
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
        }
    }

    fn txn_op(self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k, v, None),
            Op::Delete(k) => TxnOp::delete(k, None),
        }
    }
}

/// Splits writes to distinct keys into txns of at most `max_ops` ops and about `max_bytes`
/// (a single bigger value gets a txn of its own).
fn split_txns(ops: Vec<Op>, max_ops: usize, max_bytes: usize) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut cur: Vec<Op> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        if !cur.is_empty() && (cur.len() >= max_ops || bytes + op.bytes() > max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += op.bytes();
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Watch events of consecutive revisions, collapsed to the last write per key (etcd rejects a
/// txn that touches a key twice).
#[derive(Debug, Default)]
struct Batch {
    ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    /// Every source revision up to this one is in the batch.
    revision: i64,
    source_revision: i64,
    /// The last key put in the batch (replicated or not), for the checkpoint.
    witness: Option<Witness>,
}

impl Batch {
    fn absorb(&mut self, resp: &WatchResponse, filter: &Filter) {
        let header = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.source_revision = self.source_revision.max(header);
        // The watch covers every key, so every source revision arrives as at least one event
        // and the last event's revision is exactly what is delivered. (Progress responses are
        // not trusted for that: etcd before 3.4.24/3.5.8 answers a progress request with the
        // head revision even while the watcher is still catching up.)
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            if ev.event_type() == EventType::Put && self.witness.as_ref().is_none_or(|w| kv.mod_revision() >= w.mod_revision) {
                self.witness = Some(Witness { key: hex::encode(kv.key()), mod_revision: kv.mod_revision() });
            }
            if !filter.copies(kv.key()) {
                continue;
            }
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            self.bytes += kv.key().len() + value.as_ref().map_or(0, Vec::len);
            self.ops.insert(kv.key().to_vec(), value);
        }
    }

    fn into_ops(self) -> Vec<Op> {
        self.ops
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => Op::Put(k, v),
                None => Op::Delete(k),
            })
            .collect()
    }
}

/// Applies one txn of writes, with the checkpoint when given, and returns the revision it
/// committed at.
async fn apply(mut kv: KvClient, ops: Vec<Op>, checkpoint: Option<Checkpoint>) -> Result<i64, MirrorError> {
    let mut txn_ops: Vec<TxnOp> = ops.into_iter().map(Op::txn_op).collect();
    txn_ops.extend(checkpoint.map(|c| c.op()));
    let resp = kv.txn(Txn::new().and_then(txn_ops)).await.map_err(on(Side::Destination))?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}

/// A spawned write that stops when its copy is abandoned (an error, a shutdown).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Anti-entropy passes after a copy before the periodic check is left to catch what remains.
const ANTI_ENTROPY_MAX_PASSES: u32 = 30;

/// Pages read ahead of the writes, so the source's reads overlap the destination's writes.
const READ_AHEAD_PAGES: usize = 3;

/// Reads the pager's pages in a task of its own, ahead of the writes.
fn read_ahead(mut pager: DiffPager, src: &Conn, dst: &Conn, filter: &Filter) -> (AbortOnDrop<()>, tokio::sync::mpsc::Receiver<Result<DiffPage, CheckError>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_PAGES);
    let (mut skv, mut dkv, filter) = (src.kv.clone(), dst.kv.clone(), filter.clone());
    let task = tokio::spawn(async move {
        loop {
            match pager.next(&mut skv, &mut dkv, &filter).await {
                Ok(Some(page)) => {
                    if tx.send(Ok(page)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (AbortOnDrop(task), rx)
}

/// What one of the copy's txns wrote, once it committed.
struct Wrote {
    cursor: CopyCursor,
    puts: u64,
    dels: u64,
    /// Destination values saved in the archive before it.
    saved: u64,
}

/// Where a session starts.
enum Start {
    Copy { revision: i64, cursor: CopyCursor },
    Follow(i64, Option<Witness>),
}

/// Whether the source, read at the checkpoint's witness revision, answers otherwise than when the
/// mirror saw it: its history changed under the same cluster ID (restored from a snapshot, then
/// written past the checkpoint again). A compacted witness cannot tell (false: a compaction
/// resync follows anyway); a revision the source has not reached is a rewind.
async fn history_changed(kv: &mut KvClient, cp: &Checkpoint) -> Result<bool, MirrorError> {
    let Some(w) = &cp.witness else { return Ok(false) };
    let key = hex::decode(&w.key).unwrap_or_default();
    match kv.get(key, Some(etcd_client::GetOptions::new().with_revision(w.mod_revision))).await {
        Ok(r) => Ok(r.kvs().first().map(|kv| kv.mod_revision()) != Some(w.mod_revision)),
        Err(e) if etcd::is_compacted(&e) => Ok(false),
        Err(e) if etcd::is_future_revision(&e) => Ok(true),
        Err(e) => Err(on(Side::Source)(e)),
    }
}

/// The smallest txn the mirror shrinks to: one data op beside the checkpoint, and a few KiB.
const MIN_TXN: TxnLimits = TxnLimits { ops: 2, bytes: 4 << 10 };

/// How many ops and bytes the mirror puts in one txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    pub ops: usize,
    pub bytes: usize,
}

impl TxnLimits {
    /// Half the limit the destination refused, or None when it is at the floor already (then
    /// the refusal stands: one value is larger than the destination takes).
    pub fn shrunk(self, refused: TxnRefusal) -> Option<TxnLimits> {
        let next = match refused {
            TxnRefusal::TooManyOps => TxnLimits { ops: (self.ops / 2).max(MIN_TXN.ops), ..self },
            TxnRefusal::TooLarge => TxnLimits { bytes: (self.bytes / 2).max(MIN_TXN.bytes), ..self },
        };
        (next != self).then_some(next)
    }
}

/// The replication engine; the CLI and the controller run it in-process.
pub struct Mirror {
    cfg: MirrorConfig,
    /// The source and destination each session connects to: `cfg`'s, until
    /// [`Mirror::set_endpoints`] gives new ones (a TLS Secret rotated in place).
    endpoints: std::sync::Mutex<(Endpoint, Endpoint)>,
    progress: watch::Sender<Progress>,
    /// Starts at the tuning's; halved each time the destination refuses a txn as too big.
    limits: std::sync::Mutex<TxnLimits>,
}

impl Mirror {
    pub fn new(cfg: MirrorConfig) -> Mirror {
        let limits = std::sync::Mutex::new(TxnLimits { ops: cfg.tuning.txn_max_ops, bytes: cfg.tuning.txn_max_bytes });
        let endpoints = std::sync::Mutex::new((cfg.source.clone(), cfg.dest.clone()));
        Mirror { cfg, endpoints, progress: watch::Sender::new(Progress::default()), limits }
    }

    fn txn_limits(&self) -> TxnLimits {
        self.limits.lock().map(|l| *l).unwrap_or(TxnLimits { ops: self.cfg.tuning.txn_max_ops, bytes: self.cfg.tuning.txn_max_bytes })
    }

    /// Learns from a destination that refused a txn as too big: the next session writes smaller
    /// ones (a refused txn wrote nothing; the session resumes from the checkpoint). True when the
    /// limits shrank, so the session is worth running again at once.
    fn learned(&self, e: &MirrorError) -> bool {
        let MirrorError::Etcd { side: Side::Destination, source } = e else { return false };
        let Some(refused) = etcd::txn_refusal(source) else { return false };
        let Ok(mut limits) = self.limits.lock() else { return false };
        match limits.shrunk(refused) {
            Some(next) => {
                tracing::warn!(
                    ?refused,
                    ops = next.ops,
                    bytes = next.bytes,
                    "the destination etcd refused a txn as too big (its --max-txn-ops or --max-request-bytes is below drctl's batch): writing smaller txns"
                );
                *limits = next;
                true
            }
            None => {
                tracing::error!(?refused, ops = limits.ops, bytes = limits.bytes, "the destination etcd refuses even drctl's smallest txn: raise its --max-txn-ops (at least 2) or --max-request-bytes (above the largest object)");
                false
            }
        }
    }

    /// The endpoints the next session connects with (the running one keeps its connections:
    /// the credentials they were opened with were valid then, and a member that stops
    /// accepting them closes them, which starts the next session).
    pub fn set_endpoints(&self, source: Endpoint, dest: Endpoint) {
        if let Ok(mut e) = self.endpoints.lock() {
            *e = (source, dest);
        }
    }

    fn endpoints(&self) -> (Endpoint, Endpoint) {
        match self.endpoints.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Live progress: revisions, lag, counts.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }

    /// Copies (or resumes), catches up to the source's revision at start, and returns.
    pub async fn run_once(&self) -> Result<Progress, MirrorError> {
        // A session resumes from the checkpoint: one that an election or a member going away
        // ended is simply run again, as the long-running mirror would.
        let mut r = self.session(true).await;
        let mut waits = [500, 1000, 2000, 4000].into_iter();
        loop {
            match &r {
                Err(e) if self.learned(e) => {}
                Err(e) if e.is_transient() => {
                    let Some(wait) = waits.next() else { break };
                    tracing::warn!(error = %e, "mirror session failed; trying again");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                _ => break,
            }
            r = self.session(true).await;
        }
        self.update(|p| p.phase = Phase::Stopped);
        r.map(|()| self.progress.borrow().clone())
    }

    /// Mirrors until `shutdown` completes, reconnecting with backoff when either side fails.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(500);
        loop {
            let err = tokio::select! {
                r = self.session(false) => match r {
                    Ok(()) => break,
                    Err(e) => e,
                },
                () = &mut shutdown => break,
            };
            // A session that got as far as following was healthy, or one whose txns were too big
            // for the destination (it writes smaller ones now): its failure starts a new backoff.
            let learned = self.learned(&err);
            if learned || self.progress.borrow().phase == Phase::Following {
                backoff = Duration::from_millis(500);
            }
            tracing::warn!(error = %err, retry_in = ?backoff, "mirror session failed");
            self.update(|p| {
                p.last_error = Some(err.to_string());
                p.phase = Phase::Connecting;
            });
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut shutdown => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        self.update(|p| p.phase = Phase::Stopped);
    }

    #[tracing::instrument(skip(self))]
    async fn session(&self, once: bool) -> Result<(), MirrorError> {
        self.update(|p| p.phase = Phase::Connecting);
        let (source, dest) = self.endpoints();
        let src = etcd::connect(&source).await?;
        let dst = etcd::connect(&dest).await?;
        let (cluster_id, head) = etcd::head(&mut src.kv.clone()).await.map_err(on(Side::Source))?;
        let (dest_id, dest_head) = etcd::head(&mut dst.kv.clone()).await.map_err(on(Side::Destination))?;
        etcd::distinct(cluster_id, dest_id)?;
        self.update(|p| {
            p.source_cluster_id = cluster_id;
            p.source_revision = head;
            // Until the watch raises it: a copy's writes land wherever the destination is.
            p.revision_gap = revisions::floor_gap(dest_head, head + 1);
        });
        let checkpoint = Checkpoint::read(&mut dst.kv.clone()).await?;
        let history_changed = match &checkpoint {
            Some(cp) if cp.cluster_id == cluster_id && cp.revision <= head => history_changed(&mut src.kv.clone(), cp).await?,
            _ => false,
        };
        let mut start = match checkpoint {
            None => {
                // Whatever the destination holds already (a rejoining old primary's data) is kept
                // where the source lacks it (surplus, reported by the check); values the copy
                // overwrites are archived first.
                let marker = WasPrimary::read(&mut dst.kv.clone()).await.map_err(on(Side::Destination))?;
                let reason = if marker.is_some() { Reason::Rejoin } else { Reason::InitialCopy };
                let seen = match marker {
                    Some((_, since)) => Some(self.seen_by_source(&src, dest_id, since).await),
                    None => None,
                };
                tracing::info!(revision = head, ?seen, "no checkpoint: initial copy");
                Start::Copy { revision: head, cursor: CopyCursor::start(false, ArchiveRef::new(reason, head)).pruning_below(seen) }
            }
            Some(cp) if cp.cluster_id != cluster_id => {
                tracing::warn!(old = cp.cluster_id, new = cluster_id, "source cluster changed: full resync");
                self.update(|p| p.resyncs += 1);
                Start::Copy { revision: head, cursor: CopyCursor::start(true, ArchiveRef::new(Reason::ClusterChanged, head)) }
            }
            Some(cp) if cp.revision > head || history_changed => self.rewound(cp.revision, head),
            Some(Checkpoint { revision, copy: Some(mut cursor), .. }) => {
                tracing::info!(revision, phase = cursor.phase, "resuming the copy");
                self.update(|p| p.resumed = true);
                // A copy checkpointed before archives existed: one for the rest of it.
                let reason = if cursor.prune { Reason::Compaction } else { Reason::InitialCopy };
                cursor.archive.get_or_insert_with(|| ArchiveRef::new(reason, revision));
                Start::Copy { revision, cursor }
            }
            Some(cp) => {
                tracing::info!(revision = cp.revision, "resuming the watch");
                self.update(|p| p.resumed = true);
                Start::Follow(cp.revision, cp.witness)
            }
        };
        loop {
            let (from, copied, witness) = match start {
                Start::Copy { revision, cursor } => (self.copy(&src, &dst, cluster_id, revision, cursor).await, true, None),
                Start::Follow(rev, witness) => (Ok(rev), false, witness),
            };
            let result = match from {
                Ok(from) if once && from >= head => {
                    self.update(|p| p.applied_revision = from);
                    return Ok(());
                }
                Ok(from) => {
                    let anti_entropy = match (copied, once, self.cfg.tuning.anti_entropy_after) {
                        (true, false, Some(after)) => Some(Instant::now() + after),
                        _ => None,
                    };
                    self.follow(&src, &dst, cluster_id, (from, witness), once.then_some(head), anti_entropy).await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(MirrorError::Compacted) => {
                    let (_, now) = etcd::head(&mut src.kv.clone()).await.map_err(on(Side::Source))?;
                    tracing::warn!(revision = now, "source compacted past the checkpoint: full resync");
                    self.update(|p| p.resyncs += 1);
                    // Every value the resync replaces is archived, also those the mirror wrote: the
                    // compacted history cannot tell whether the source still had them (a source
                    // restored from a snapshot, then compacted, dropped them for good).
                    start = Start::Copy { revision: now, cursor: CopyCursor::start(true, ArchiveRef::new(Reason::Compaction, now)) };
                }
                Err(MirrorError::Rewound) => {
                    let (_, now) = etcd::head(&mut src.kv.clone()).await.map_err(on(Side::Source))?;
                    let had = Checkpoint::read(&mut dst.kv.clone()).await?.map_or(self.progress.borrow().applied_revision, |cp| cp.revision);
                    start = self.rewound(had, now);
                }
                other => return other,
            }
        }
    }

    /// The source's history went back from `had` (what the destination holds) to `head`: reported,
    /// then a full resync from the head whose overwrites and deletes are archived.
    fn rewound(&self, had: i64, head: i64) -> Start {
        tracing::warn!(had, head, "the source's history went back (restored from a snapshot?): full resync from its head");
        self.update(|p| {
            p.rewound = Some((had, head));
            p.rewinds += 1;
            p.resyncs += 1;
            // What was applied belongs to the old history: nothing of the new one is here yet.
            p.applied_revision = 0;
            p.caught_up_at = None;
        });
        Start::Copy { revision: head, cursor: CopyCursor::start(true, ArchiveRef::new(Reason::Rewound, head)) }
    }

    /// Copies `/registry/` at `revision` from `cursor` on, saving the destination's values it
    /// overwrites or deletes in the cursor's archive first; returns `revision`.
    /// A rejoining old primary (its marker created at `since`): below which revision of its own
    /// etcd the source saw every write. Its marker's create revision at least (what came before
    /// the primary term are replicas); further when the source's own marker says its mirror had
    /// applied more of this cluster's history when it became primary (recorded only after a
    /// planned switchover whose check found nothing missing). A key the source lacks that was
    /// last written below this was deleted by the source; one written later is a write it never
    /// saw.
    async fn seen_by_source(&self, src: &Conn, dest_id: u64, since: i64) -> i64 {
        match WasPrimary::read(&mut src.kv.clone()).await {
            Ok(theirs) => theirs.and_then(|(m, _)| m.seen_below(dest_id)).map_or(since, |seen| seen.max(since)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the source's was-primary marker: pruning only what predates this cluster's primary term");
                since
            }
        }
    }

    #[tracing::instrument(skip(self, src, dst, cursor), fields(prune = cursor.prune))]
    async fn copy(&self, src: &Conn, dst: &Conn, cluster_id: u64, revision: i64, cursor: CopyCursor) -> Result<i64, MirrorError> {
        let t = &self.cfg.tuning;
        let limits = self.txn_limits();
        let mut skv = src.kv.clone();
        let dkv = dst.kv.clone();
        let total = skv
            .get(REGISTRY_PREFIX, Some(etcd_client::GetOptions::new().with_prefix().with_count_only().with_revision(revision)))
            .await
            .map_err(on(Side::Source))?
            .count();
        self.update(|p| {
            p.phase = Phase::Copying;
            p.copy_total_keys = total.max(0) as u64;
            p.copy_compared_keys = 0;
        });
        let archive = cursor.archive.clone();
        let at = |phase: usize, next: &[u8]| cursor.at(phase, next);
        let next = hex::decode(&cursor.next).unwrap_or_default();
        let checkpoint = |c: &CopyCursor| Checkpoint { copy: Some(c.clone()), ..Checkpoint::at(cluster_id, revision) };
        let mut done = cursor.clone();
        type Pending = BoxFuture<'static, Result<Wrote, MirrorError>>;
        let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let found = copy_order::discover(&mut skv, revision).await.map_err(on(Side::Source))?;
        let phases = copy_order::copy_phases(&found);
        for (phase, (start, end)) in phases.iter().enumerate().skip(cursor.phase) {
            let from = if phase == cursor.phase && !next.is_empty() { next.clone() } else { start.clone() };
            let (mut reader, mut pages) =
                read_ahead(DiffPager::over(copy_order::read_ranges(&from, end, &found, &self.cfg.filter), revision, t.page_bytes), src, dst, &self.cfg.filter);
            while let Some(page) = pages.recv().await.transpose()? {
                self.update(|p| p.copy_compared_keys += page.source_keys);
                let ops: Vec<(Op, Option<Op>)> = page
                    .differences
                    .into_iter()
                    .filter_map(|d| {
                        let (op, action) = match d.source {
                            Some(v) => (Op::Put(d.key, v), archive::Action::Overwritten),
                            None if cursor.prunes(d.dest_mod_revision) => (Op::Delete(d.key), archive::Action::Pruned),
                            None => return None,
                        };
                        // The destination's value goes into the archive before the write replaces it.
                        let save = match (&archive, &d.dest_value, d.dest_mod_revision) {
                            // The old primary's last heartbeat is its clock, nobody's write.
                            _ if crate::heartbeat::is_heartbeat(op.key()) => None,
                            (Some(a), Some(old), Some(rev)) => Some(Op::Put(archive::entry_key(&a.id, op.key()), archive::encode(rev, action, old))),
                            _ => None,
                        };
                        Some((op, save))
                    })
                    .collect();
                let mut saves: BTreeMap<Vec<u8>, Op> = BTreeMap::new();
                let ops: Vec<Op> = ops
                    .into_iter()
                    .map(|(op, save)| {
                        if let Some(save) = save {
                            saves.insert(op.key().to_vec(), save);
                        }
                        op
                    })
                    .collect();
                let mut chunks = split_txns(ops, limits.ops - 1, limits.bytes);
                let last = chunks.pop();
                // Each chunk covers keys up to its last key; the page's last chunk (or an empty
                // page's marker) covers the whole page.
                let mut ends: Vec<(Vec<Op>, CopyCursor)> = chunks
                    .into_iter()
                    .map(|c| {
                        let end = c.last().map(|op| etcd::key_after(op.key())).unwrap_or_default();
                        (c, at(phase, &end))
                    })
                    .collect();
                ends.push((last.unwrap_or_default(), at(phase, &page.covered_to)));
                for (ops, end) in ends {
                    while inflight.len() >= t.in_flight {
                        done = self.settle(inflight.next().await, done)?;
                    }
                    let (puts, dels) = ops.iter().fold((0, 0), |(p, d), op| match op {
                        Op::Put(..) => (p + 1, d),
                        Op::Delete(_) => (p, d + 1),
                    });
                    let saved: Vec<Op> = ops.iter().filter_map(|op| saves.remove(op.key())).collect();
                    let wrote = Wrote { cursor: end, puts, dels, saved: saved.len() as u64 };
                    if ops.is_empty() {
                        inflight.push_back(async move { Ok(wrote) }.boxed());
                    } else {
                        // The checkpoint may only claim what has committed in order before it.
                        // Spawned, so writes proceed while the next page is read.
                        let (kv, cp, (max_ops, max_bytes)) = (dkv.clone(), checkpoint(&done), (limits.ops, limits.bytes));
                        let mut task = AbortOnDrop(tokio::spawn(async move {
                            // The values about to be replaced are saved first: a crash in between
                            // leaves them both saved and in place, and the resumed copy saves the same.
                            for save in split_txns(saved, max_ops, max_bytes) {
                                apply(kv.clone(), save, None).await?;
                            }
                            apply(kv, ops, Some(cp)).await
                        }));
                        inflight.push_back(
                            async move {
                                match (&mut task.0).await {
                                    Ok(r) => r.map(|_| wrote),
                                    Err(e) => Err(MirrorError::Task(e.to_string())),
                                }
                            }
                            .boxed(),
                        );
                    }
                }
            }
            // The channel also closes when the reader dies; only a clean end means the phase is read.
            (&mut reader.0).await.map_err(|e| MirrorError::Task(e.to_string()))?;
            while let Some(r) = inflight.next().await {
                done = self.settle(Some(r), done)?;
            }
            done = at(phase + 1, &[]);
        }
        // A rejoin's copy is done: the next copy without a checkpoint is not one.
        let done = if archive.as_ref().is_some_and(|a| a.reason == Reason::Rejoin) { vec![Op::Delete(WAS_PRIMARY_KEY.into())] } else { Vec::new() };
        apply(dkv.clone(), done, Some(Checkpoint::at(cluster_id, revision))).await?;
        let sealed = match &archive {
            Some(a) => archive::seal(&mut dkv.clone(), a, cluster_id, revision, cursor.prune_below).await.map_err(on(Side::Destination))?,
            None => None,
        };
        self.update(|p| {
            p.applied_revision = revision;
            if revision >= p.source_revision {
                p.caught_up_at = Some(SystemTime::now());
            }
            if let Some(m) = sealed {
                p.archived(m);
            }
        });
        tracing::info!(revision, "copy done");
        Ok(revision)
    }

    fn settle(&self, r: Option<Result<Wrote, MirrorError>>, done: CopyCursor) -> Result<CopyCursor, MirrorError> {
        match r {
            Some(Ok(w)) => {
                self.update(|p| {
                    p.put_keys += w.puts;
                    p.deleted_keys += w.dels;
                    p.archived_keys += w.saved;
                });
                Ok(w.cursor)
            }
            Some(Err(e)) => Err(e),
            None => Ok(done),
        }
    }

    /// Applies the source's changes after revision `from` (whose checkpoint has `witness`),
    /// until `target` (once) or forever.
    #[tracing::instrument(skip(self, src, dst, anti_entropy, witness))]
    async fn follow(
        &self,
        src: &Conn,
        dst: &Conn,
        cluster_id: u64,
        (from, mut witness): (i64, Option<Witness>),
        target: Option<i64>,
        mut anti_entropy: Option<Instant>,
    ) -> Result<(), MirrorError> {
        let t = &self.cfg.tuning;
        let opts = WatchOptions::new().with_all_keys().with_start_revision(from + 1).with_progress_notify();
        let mut stream = src.watch.clone().watch("", Some(opts)).await.map_err(on(Side::Source))?;
        self.update(|p| {
            p.phase = Phase::Following;
            p.applied_revision = from;
            p.last_error = None;
        });
        let (mut applied, mut persisted, mut last_persist) = (from, from, Instant::now());
        let (_, dest_head) = etcd::head(&mut dst.kv.clone()).await.map_err(on(Side::Destination))?;
        // A single pass (`--once`) makes no room past what it applies.
        let mut floor = Floor::start(dst.kv.clone(), dest_head, if target.is_some() { 0 } else { t.floor_lead });
        let (mut asked_progress, mut passes, mut below_floor) = (false, 0, false);
        loop {
            let first = match tokio::time::timeout(t.progress_timeout, stream.message()).await {
                // Quiet, and nothing missed: on to the checkpoint and anti-entropy below.
                Err(_) if asked_progress => {
                    self.quiet_source(src, &floor, applied).await?;
                    None
                }
                Err(_) => {
                    stream.request_progress().await.map_err(on(Side::Source))?;
                    asked_progress = true;
                    continue;
                }
                Ok(r) => {
                    let resp = r.map_err(on(Side::Source))?.ok_or(MirrorError::WatchEnded)?;
                    // The answer to the progress request. etcd 3.5 gives it from the member's own
                    // state, so a member whose messages to its peers are lost (it still hears its
                    // leader) says it is current while it misses every write: only a
                    // linearizable read, which needs the quorum, proves nothing was missed.
                    if asked_progress && resp.events().is_empty() && !resp.canceled() && resp.compact_revision() == 0 {
                        self.quiet_source(src, &floor, applied).await?;
                    }
                    Some(resp)
                }
            };
            asked_progress = false;
            let mut batch = Batch::default();
            let mut next = first;
            // Take whatever else is already here, up to the batch bounds.
            while let Some(resp) = next.take() {
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Err(match resp.compact_revision() {
                        0 => MirrorError::WatchCanceled(resp.cancel_reason().to_string()),
                        _ => MirrorError::Compacted,
                    });
                }
                batch.absorb(&resp, &self.cfg.filter);
                if batch.ops.len() < t.batch_max_keys && batch.bytes < t.page_bytes {
                    next = match stream.message().now_or_never() {
                        Some(r) => Some(r.map_err(on(Side::Source))?.ok_or(MirrorError::WatchEnded)?),
                        None => None,
                    };
                }
            }
            let source_revision = batch.source_revision;
            floor.failed()?;
            floor.reach(source_revision.max(batch.revision));
            if batch.revision > applied {
                let revision = batch.revision;
                if batch.witness.is_some() {
                    witness = batch.witness.clone();
                }
                if !batch.ops.is_empty() {
                    // Each write lands at or above its own revision: wait for the raise to make
                    // room if little is missing. Further behind (a standby catching up), a wait
                    // would delay the batch without flooring it: it goes in now, the raise goes
                    // on, and `revision_gap` says how far below its numbering it landed.
                    if floor.gap(revision) <= t.floor_step {
                        floor.wait(revision - 1).await?;
                    }
                    let gap = floor.gap(revision);
                    if gap > 0 && !below_floor {
                        tracing::warn!(gap, revision, "writes land below the source's numbering while the destination is raised to it (once a session)");
                        below_floor = true;
                    }
                    let done = Checkpoint::at(cluster_id, persisted);
                    let (puts, dels, head) = self.apply_batch(dst, done, Checkpoint::at(cluster_id, revision).witnessed(witness.clone()), batch).await?;
                    floor.saw(head);
                    self.update(|p| {
                        p.put_keys += puts;
                        p.deleted_keys += dels;
                        if gap > 0 {
                            p.writes_below_floor += puts + dels;
                        }
                    });
                    (persisted, last_persist) = (revision, Instant::now());
                }
                applied = revision;
            }
            self.update(|p| {
                p.applied_revision = applied;
                p.source_revision = p.source_revision.max(source_revision);
                p.revision_gap = floor.gap(applied + 1);
                if applied >= p.source_revision {
                    p.caught_up_at = Some(SystemTime::now());
                }
            });
            let caught_up = applied >= self.progress.borrow().source_revision;
            let done = target.is_some_and(|t| applied >= t);
            if applied > persisted && (done || last_persist.elapsed() >= t.checkpoint_every || anti_entropy.is_some()) {
                let head = apply(dst.kv.clone(), Vec::new(), Some(Checkpoint::at(cluster_id, applied).witnessed(witness.clone()))).await?;
                floor.saw(head);
                (persisted, last_persist) = (applied, Instant::now());
            }
            if done {
                let gap = floor.finish(applied + 1).await?;
                self.update(|p| p.revision_gap = gap);
                return Ok(());
            }
            if caught_up && anti_entropy.is_some_and(|at| Instant::now() >= at) && persisted == applied {
                passes += 1;
                let repaired = self.anti_entropy(src, dst).await?;
                anti_entropy = match repaired {
                    0 => None,
                    _ if passes >= ANTI_ENTROPY_MAX_PASSES => {
                        tracing::warn!(
                            passes,
                            "still repairing after the copy: something on the destination keeps changing replicated keys; the periodic check takes over"
                        );
                        None
                    }
                    _ => Some(Instant::now() + t.anti_entropy_retry),
                };
            }
        }
    }

    /// The watch stayed silent, then answered a progress request or stayed silent after it too.
    /// etcd 3.6 answers one only once its store has reached the watch's start revision
    /// (`progressIfSync`), so on a quiet source (nothing after `applied`, where the watch starts)
    /// silence is the answer; etcd 3.5 answers from the member's state, however stale. A
    /// linearizable read of the head tells a quiet source apart from a stream that stopped
    /// delivering and from a member that no longer reaches its quorum (the read times out). A
    /// quiet source is a chance to close what is left of the floor's gap.
    async fn quiet_source(&self, src: &Conn, floor: &Floor, applied: i64) -> Result<(), MirrorError> {
        let t = &self.cfg.tuning;
        let (_, head) = tokio::time::timeout(t.progress_timeout, etcd::head(&mut src.kv.clone()))
            .await
            .map_err(|_| MirrorError::DeadWatch(t.progress_timeout))?
            .map_err(on(Side::Source))?;
        match head.cmp(&applied) {
            std::cmp::Ordering::Greater => Err(MirrorError::DeadWatch(t.progress_timeout)),
            std::cmp::Ordering::Less => Err(MirrorError::Rewound),
            std::cmp::Ordering::Equal => {
                floor.reach(applied + 1);
                self.update(|p| {
                    p.source_revision = head;
                    p.caught_up_at = Some(SystemTime::now());
                });
                Ok(())
            }
        }
    }

    /// Writes one deduplicated batch, taking the destination from `done` (its checkpoint) to
    /// `next`, and returns how many keys it put and deleted and the revision it ended at. The new checkpoint goes with the last txn, after the others committed, so it
    /// never claims a revision whose writes are not all in; the earlier txns mark it pending, so
    /// no reader takes the half-written state for the source at `done.revision`.
    async fn apply_batch(&self, dst: &Conn, done: Checkpoint, next: Checkpoint, batch: Batch) -> Result<(u64, u64, i64), MirrorError> {
        let revision = next.revision;
        let t = &self.cfg.tuning;
        let ops = batch.into_ops();
        let dels = ops.iter().filter(|op| matches!(op, Op::Delete(_))).count() as u64;
        let puts = ops.len() as u64 - dels;
        let limits = self.txn_limits();
        let mut txns = split_txns(ops, limits.ops - 1, limits.bytes);
        let last = txns.pop().unwrap_or_default();
        let pending = Checkpoint { pending: Some(revision), ..done.clone() };
        let writes: Vec<BoxFuture<'static, Result<i64, MirrorError>>> =
            txns.into_iter().map(|ops| apply(dst.kv.clone(), ops, Some(pending.clone())).boxed()).collect();
        futures::stream::iter(writes).buffer_unordered(t.in_flight).try_collect::<Vec<i64>>().await?;
        let head = apply(dst.kv.clone(), last, Some(next)).await?;
        Ok((puts, dels, head))
    }

    /// Re-puts keys that went missing or diverged after the copy (e.g. the destination's garbage
    /// collector deleting a child that arrived before its owner) and says how many it re-put.
    /// Never deletes.
    async fn anti_entropy(&self, src: &Conn, dst: &Conn) -> Result<u64, MirrorError> {
        let opts = CheckOptions { settle: Duration::ZERO, ..CheckOptions::default() };
        // Through From: a compacted revision becomes Compacted, which the session resyncs from.
        let found = check::run(src, dst, &self.cfg.filter, &opts).await?;
        let mut put = 0;
        if !found.differences.is_empty() {
            let outcome = check::repair(src, dst, &self.cfg.filter, &found.differences, false).await?;
            tracing::warn!(put = outcome.put, archived = outcome.archived, "anti-entropy repaired keys");
            self.update(|p| {
                p.put_keys += outcome.put;
                p.archived_keys += outcome.archived;
                if let Some(m) = outcome.archive.clone() {
                    p.archived(m);
                }
            });
            put = outcome.put;
        }
        tracing::info!(checked = found.report.checked_keys, differences = found.differences.len(), "anti-entropy pass done");
        Ok(put)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_txn_halves_the_limit_it_broke_down_to_a_floor() {
        let l = TxnLimits { ops: 128, bytes: 1 << 20 };
        assert_eq!(l.shrunk(TxnRefusal::TooManyOps), Some(TxnLimits { ops: 64, bytes: 1 << 20 }));
        assert_eq!(l.shrunk(TxnRefusal::TooLarge), Some(TxnLimits { ops: 128, bytes: 512 << 10 }));
        assert_eq!(TxnLimits { ops: 3, ..l }.shrunk(TxnRefusal::TooManyOps), Some(TxnLimits { ops: 2, ..l }));
        assert_eq!(TxnLimits { ops: 2, ..l }.shrunk(TxnRefusal::TooManyOps), None, "one data op and the checkpoint: the refusal stands");
        assert_eq!(TxnLimits { bytes: 4 << 10, ..l }.shrunk(TxnRefusal::TooLarge), None);
    }

    fn put(k: &str, v: usize) -> Op {
        Op::Put(k.as_bytes().to_vec(), vec![b'x'; v])
    }

    #[test]
    fn split_respects_op_and_byte_bounds() {
        let ops: Vec<Op> = (0..300).map(|i| put(&format!("/registry/k/{i:04}"), 10)).collect();
        let txns = split_txns(ops, 127, 1 << 20);
        assert_eq!(txns.iter().map(Vec::len).collect::<Vec<_>>(), vec![127, 127, 46]);
        let big = vec![put("/a", 600_000), put("/b", 600_000), put("/c", 2_000_000), put("/d", 10)];
        let txns = split_txns(big, 127, 1 << 20);
        assert_eq!(txns.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1, 1]);
    }

    #[test]
    fn batch_keeps_last_write_per_key() {
        let mut b = Batch::default();
        for (k, v) in [("/registry/a", Some("1")), ("/registry/b", Some("2")), ("/registry/a", None), ("/registry/b", Some("3"))] {
            b.ops.insert(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        }
        assert_eq!(b.into_ops(), vec![Op::Delete(b"/registry/a".to_vec()), Op::Put(b"/registry/b".to_vec(), b"3".to_vec())]);
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_grows_while_behind() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut p = Progress { source_revision: 10, applied_revision: 10, ..Progress::default() };
        assert_eq!(p.lag(t0), None);
        p.caught_up_at = Some(t0);
        assert_eq!(p.lag(t0 + Duration::from_secs(5)), Some(Duration::ZERO));
        p.source_revision = 12;
        assert_eq!(p.lag(t0 + Duration::from_secs(5)), Some(Duration::from_secs(5)));
        assert_eq!(p.lag_revisions(), 2);
    }
}
