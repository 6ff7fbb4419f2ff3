//! The revision floor of `decide::revisions`, kept beside the mirror's batches. The floor costs
//! one destination write per source revision, while a batch carries many source revisions in one
//! txn; raised before each batch, it made every batch wait for those writes (lag p99 850 ms at
//! 3,000 writes/s at 1M keys, BENCHMARKS.md). A task raises the destination instead, toward the
//! last source revision the watch showed plus a lead, while batches apply: under a steady rate a
//! batch finds its room made already and waits only for what outran the lead.

use std::sync::Arc;

use etcd_client::KvClient;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{on, MirrorError, Side};
use crate::decide::revisions;
use crate::etcd;

/// The raise's writes in flight: on an idle 1-member etcd 3.6 here, ~8,300 revisions/s at 32,
/// ~9,300 at 64, ~11,800 at 128 (at 1M keys under 64 writers, lag p99 265 ms at 64 and 117 ms
/// at 128 with a smaller `floor_step`, BENCHMARKS.md).
const IN_FLIGHT: usize = 128;
/// Revisions raised between two looks at the target and two reports of the head.
const CHUNK: u64 = 512;

pub(super) struct Floor {
    /// The source revision whose writes must land at or above their own revisions; None once
    /// the raise was told to end there.
    target: Option<watch::Sender<i64>>,
    /// The destination's head as far as known: the raise's writes and the batches'.
    head: Arc<watch::Sender<i64>>,
    /// None once its outcome was taken.
    task: Option<JoinHandle<Result<(), etcd_client::Error>>>,
}

impl Floor {
    /// Starts raising the destination, at `head`, `lead` revisions past every target.
    pub(super) fn start(kv: KvClient, head: i64, lead: u64) -> Floor {
        let (target, targets) = watch::channel(0);
        let head = Arc::new(watch::channel(head).0);
        let task = tokio::spawn(raise(kv, targets, head.clone(), lead));
        Floor { target: Some(target), head, task: Some(task) }
    }

    pub(super) fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// The destination reached `head` otherwise (a batch's txn).
    pub(super) fn saw(&self, head: i64) {
        self.head.send_if_modified(|h| raise_to(h, head));
    }

    /// The source reached `revision`: make room for its writes up to it.
    pub(super) fn reach(&self, revision: i64) {
        if let Some(target) = &self.target {
            target.send_if_modified(|t| raise_to(t, revision));
        }
    }

    /// Ends the raise and says what is left of the gap for the source's writes up to
    /// `revision`: it raises the rest of the way if that is within
    /// [`revisions::PROMOTION_MAX_RAISE`] (a single pass ends at the source's numbering, as a
    /// promotion would), else it stops where it is. None of its writes is in flight after.
    pub(super) async fn finish(mut self, revision: i64) -> Result<u64, MirrorError> {
        if self.gap(revision) <= revisions::PROMOTION_MAX_RAISE {
            self.reach(revision);
            // Its sender gone, the raise ends once it has reached the last target.
            self.target = None;
        } else if let Some(task) = &self.task {
            task.abort();
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(self.gap(revision)),
                Err(e) if e.is_cancelled() => Ok(self.gap(revision)),
                ended => Err(failure(ended)),
            },
            None => Err(failure(Ok(Ok(())))),
        }
    }

    /// Revisions still to skip for the source's writes up to `revision`.
    pub(super) fn gap(&self, revision: i64) -> u64 {
        revisions::floor_gap(self.head(), revision)
    }

    /// The raise's failure, if it failed: the session ends with it (and another one starts
    /// over), as it would have had the raise failed in its own way, not only when a batch waits.
    pub(super) fn failed(&mut self) -> Result<(), MirrorError> {
        match self.task.take_if(|t| t.is_finished()).and_then(FutureExt::now_or_never) {
            Some(ended) => Err(failure(ended)),
            None if self.task.is_none() => Err(failure(Ok(Ok(())))),
            None => Ok(()),
        }
    }

    /// Waits until the destination's head is at least `head`, or the raise failed.
    pub(super) async fn wait(&mut self, head: i64) -> Result<(), MirrorError> {
        let mut heads = self.head.subscribe();
        while *heads.borrow_and_update() < head {
            let Some(task) = self.task.as_mut() else { return Err(failure(Ok(Ok(())))) };
            tokio::select! {
                // The sender lives in `self`: a change, never a close.
                _ = heads.changed() => {}
                ended = task => {
                    self.task = None;
                    return Err(failure(ended));
                }
            }
        }
        Ok(())
    }
}

fn failure(ended: Result<Result<(), etcd_client::Error>, tokio::task::JoinError>) -> MirrorError {
    match ended {
        Ok(Err(e)) => on(Side::Destination)(e),
        Ok(Ok(())) => MirrorError::Task("the revision floor's raise ended".into()),
        Err(e) => MirrorError::Task(format!("the revision floor's raise: {e}")),
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn raise_to(value: &mut i64, to: i64) -> bool {
    let up = to > *value;
    if up {
        *value = to;
    }
    up
}

/// Raises the destination `lead` past each target, a chunk at a time, until the targets close.
async fn raise(kv: KvClient, mut targets: watch::Receiver<i64>, head: Arc<watch::Sender<i64>>, lead: u64) -> Result<(), etcd_client::Error> {
    loop {
        loop {
            let target = *targets.borrow_and_update();
            let from = *head.borrow();
            let gap = match target {
                0 => 0,
                _ => revisions::floor_gap(from, target.saturating_add(lead as i64)),
            };
            if gap == 0 {
                break;
            }
            let reached = etcd::raise_revision(&kv, from, gap.min(CHUNK), IN_FLIGHT).await?;
            head.send_if_modified(|h| raise_to(h, reached));
        }
        if targets.changed().await.is_err() {
            return Ok(());
        }
    }
}
