//! The mirror and the check on two real etcds.
use drctl_testsupport as support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drctl::check::{self, CheckOptions, CheckReport};
use drctl::etcd;
use drctl::keyspace::Filter;
use drctl::mirror::{Checkpoint, Mirror, MirrorConfig, Progress, Tuning, CHECKPOINT_KEY};
use drctl::topology::ExcludeSpec;
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use support::{drctl, Etcd};

fn filter() -> Filter {
    Filter::with_default_namespaces(&ExcludeSpec::default())
}

fn config(src: &Etcd, dst: &Etcd) -> MirrorConfig {
    let tuning = Tuning { anti_entropy_after: None, progress_timeout: Duration::from_secs(2), ..Tuning::default() };
    MirrorConfig { source: src.endpoint(), dest: dst.endpoint(), filter: filter(), tuning }
}

/// Replicated keys and values of an etcd, as the filter sees them.
async fn replicated(c: &mut Client) -> BTreeMap<String, Vec<u8>> {
    let mut kv = c.kv_client().max_decoding_message_size(etcd::MAX_MESSAGE_BYTES);
    let (f, mut out, mut from) = (filter(), BTreeMap::new(), b"/registry/".to_vec());
    loop {
        let page = etcd::range_page(&mut kv, &from, b"/registry0", 0, 5000).await.expect("range");
        if let Some(last) = page.kvs.last() {
            from = etcd::key_after(&last.key);
        }
        out.extend(page.kvs.into_iter().filter(|kv| f.copies(&kv.key)).map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value)));
        if !page.more {
            return out;
        }
    }
}

/// Asserts both sides hold the same replicated keys and values, naming a few that differ.
async fn assert_same(s: &mut Client, d: &mut Client) {
    let (a, b) = (replicated(s).await, replicated(d).await);
    let differing: Vec<&String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).take(5).collect();
    assert!(differing.is_empty(), "{} source vs {} destination keys; differing: {differing:?}", a.len(), b.len());
}

async fn head(c: &mut Client) -> i64 {
    c.get("\0", Some(GetOptions::new().with_count_only())).await.expect("head").header().expect("header").revision()
}

async fn put_all(c: &mut Client, kvs: &[(String, Vec<u8>)]) {
    for chunk in kvs.chunks(100) {
        let ops: Vec<TxnOp> = chunk.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None)).collect();
        c.txn(Txn::new().and_then(ops)).await.expect("load txn");
    }
}

/// Waits until the mirror has applied the source's current revision.
async fn caught_up(rx: &mut tokio::sync::watch::Receiver<Progress>, src: &mut Client) {
    let target = head(src).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = rx.borrow().clone();
        if p.applied_revision >= target {
            return;
        }
        assert!(Instant::now() < deadline, "mirror did not reach revision {target}: {p:?}");
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// Keys of every shape, replicated or not.
fn fixture() -> Vec<(String, Vec<u8>, bool)> {
    [
        ("/registry/namespaces/team-a", true),
        ("/registry/configmaps/team-a/settings", true),
        ("/registry/services/specs/team-a/api", true),
        ("/registry/clusterroles/viewer", true),
        ("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com", true),
        ("/registry/example.com/widgets/team-a/w1", true),
        ("/registry/configmaps/kube-system/own", false),
        ("/registry/namespaces/cpaas-system", false),
        ("/registry/events/team-a/e1", false),
        ("/registry/minions/node-1", false),
        ("/registry/leases/team-a/l1", false),
        ("/registry/compact_rev_key", false),
        ("/registry/masterleases/10.0.0.1", false),
        ("/registry/drctl.io/drtopologies/dr", false),
        ("/registry/configmaps/drctl-system/state", false),
        ("/registry/argoproj.io/applications/argocd/app", false),
        ("/outside/registry", false),
    ]
    .into_iter()
    .map(|(k, copied)| (k.to_string(), format!("value of {k}").into_bytes(), copied))
    .collect()
}

/// A mirror running in the background until `stop_mirror`.
struct Running {
    rx: tokio::sync::watch::Receiver<drctl::mirror::Progress>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn run_in_background(mirror: Mirror) -> Running {
    let rx = mirror.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        mirror
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { rx, stop, task }
}

async fn stop_mirror(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<()>) {
    let _ = stop.send(());
    task.await.expect("mirror task");
}

#[tokio::test]
async fn puts_updates_and_deletes_propagate_and_exclusions_hold() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let fx = fixture();
    put_all(&mut s, &fx.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect::<Vec<_>>()).await;

    let Running { mut rx, stop, task } = run_in_background(Mirror::new(config(&src, &dst)));
    caught_up(&mut rx, &mut s).await;
    let all = d.get("", Some(GetOptions::new().with_all_keys().with_keys_only())).await.expect("dest keys");
    let mut dest_keys: Vec<String> = all.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
    // The mirror's own keys: its checkpoint, and the key the revision floor writes to keep the
    // destination's numbering ahead of the source's (whether it has by now is a race).
    dest_keys.retain(|k| k != CHECKPOINT_KEY && k != etcd::REVISION_FLOOR_KEY);
    let mut want: Vec<String> = fx.iter().filter(|(_, _, c)| *c).map(|(k, _, _)| k.clone()).collect();
    want.sort();
    assert_eq!(dest_keys, want, "exactly the replicated keys are copied");
    assert_same(&mut s, &mut d).await;

    // Updates, deletes, new keys, a key with a lease, and an excluded write while following.
    let lease = s.lease_grant(60, None).await.expect("lease").id();
    s.put("/registry/configmaps/team-a/settings", "v2", None).await.expect("update");
    s.delete("/registry/services/specs/team-a/api", None).await.expect("delete");
    s.put("/registry/secrets/team-a/new", "fresh", Some(PutOptions::new().with_lease(lease))).await.expect("put");
    s.put("/registry/configmaps/kube-system/own", "changed", None).await.expect("excluded put");
    caught_up(&mut rx, &mut s).await;
    assert_same(&mut s, &mut d).await;
    let new = d.get("/registry/secrets/team-a/new", None).await.expect("get");
    let kv = new.kvs().first().expect("leased key copied");
    assert_eq!((kv.value(), kv.lease()), (&b"fresh"[..], 0), "value byte for byte, lease not copied");
    let own = d.get("/registry/configmaps/kube-system/own", None).await.expect("get");
    assert!(own.kvs().is_empty(), "excluded namespace never written");

    // A check while writes stream in reports nothing in flight as divergence.
    let writer = {
        let mut s = s.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                s.put(format!("/registry/configmaps/team-a/live-{i}"), vec![b'x'; 2048], None).await.expect("live put");
            }
        })
    };
    let (sc, dc) = (etcd::connect(&config(&src, &dst).source).await.expect("src"), etcd::connect(&config(&src, &dst).dest).await.expect("dst"));
    let mut reports = Vec::new();
    while !writer.is_finished() {
        reports.push(check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check").report);
    }
    writer.await.expect("writer");
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(r.consistent, "in-flight writes reported: {r}");
    }
    caught_up(&mut rx, &mut s).await;
    assert_same(&mut s, &mut d).await;

    stop_mirror(stop, task).await;
    let cp = Checkpoint::read(&mut d.kv_client()).await.expect("read").expect("checkpoint");
    assert_eq!(cp.revision, head(&mut s).await);
    assert!(cp.copy.is_none());
}

#[tokio::test]
async fn a_window_of_more_than_128_events_with_a_key_written_twice_is_batched() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    s.put("/registry/configmaps/team-a/seed", "1", None).await.expect("seed");
    let m = Mirror::new(config(&src, &dst));
    m.run_once().await.expect("initial copy");

    // While the mirror is away: 300 puts, one key written twice, a delete.
    for i in 0..300 {
        s.put(format!("/registry/configmaps/team-a/k{i:03}"), format!("v{i}"), None).await.expect("put");
    }
    s.put("/registry/configmaps/team-a/k007", "rewritten", None).await.expect("rewrite");
    s.delete("/registry/configmaps/team-a/seed", None).await.expect("delete");
    let (before, raised_before) = (head(&mut d).await, floor_puts(&mut d).await);
    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("catch up");
    assert!(p.resumed);
    assert_eq!(p.applied_revision, head(&mut s).await);
    assert_same(&mut s, &mut d).await;
    let got = d.get("/registry/configmaps/team-a/k007", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"rewritten");
    // 301 distinct writes in 127-op txns: 3 txns (no more than one per batch window of etcd's
    // watch responses would add), instead of 302 single writes.
    // The revision floor's puts (the destination raised to the source's numbering) aside.
    let raised = floor_puts(&mut d).await - raised_before;
    let txns = head(&mut d).await - before - raised;
    assert!((3..=8).contains(&txns), "{txns} destination revisions for 302 events ({raised} floor puts besides)");
    assert!(head(&mut d).await >= head(&mut s).await - 1, "the destination was raised to the source's numbering");
}

/// The revision floor kept beside the batches (`mirror::floor`): a standby far below its
/// primary's numbering (a busy primary beside a young standby) is raised to it while the mirror
/// goes on, and from then on a batch a little below waits for the raise, so every write lands at
/// or above its own revision, and the reported gap closes. No lead here: with one, the raise
/// would be ahead already and the batches would never have to wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_far_below_the_sources_numbering_is_raised_beside_the_writes() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    s.put("/registry/configmaps/team-a/seed", "1", None).await.expect("seed");
    let mut cfg = config(&src, &dst);
    cfg.tuning.floor_lead = 0;
    let Running { mut rx, stop, task } = run_in_background(Mirror::new(cfg));
    caught_up(&mut rx, &mut s).await;
    // The source's own churn outside what is replicated (leases, events): 5,000 revisions, far
    // more than a batch waits for (`Tuning::floor_step`).
    etcd::raise_revision(&s.kv_client(), 0, 5_000, 32).await.expect("churn");
    let at = s.put("/registry/configmaps/team-a/early", "1", None).await.expect("put").header().expect("header").revision();
    caught_up(&mut rx, &mut s).await;
    // Whether it waited depends on how far the raise had got when it arrived; the count of
    // writes below the floor says which, and lasts after the gap closes.
    let landed = d.get("/registry/configmaps/team-a/early", None).await.expect("get").kvs().first().map(|kv| kv.mod_revision()).expect("replicated");
    // Counted if it landed below; perhaps also if the raise passed it while the batch went in.
    let below = rx.borrow().writes_below_floor;
    assert!(below <= 1 && (landed >= at || below == 1), "early: written at source revision {at}, landed at {landed}, counted {below}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while head(&mut d).await < head(&mut s).await - 1 {
        assert!(Instant::now() < deadline, "the destination was not raised to the source's numbering: {} < {}", head(&mut d).await, head(&mut s).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From here on each write comes after 100 revisions of churn the destination must make up
    // first: it lands at or above its own revision only if its batch waited for the raise.
    for i in 0..10 {
        etcd::raise_revision(&s.kv_client(), 0, 100, 32).await.expect("churn");
        let key = format!("/registry/configmaps/team-a/later-{i}");
        let at = s.put(key.as_str(), "1", None).await.expect("put").header().expect("header").revision();
        caught_up(&mut rx, &mut s).await;
        let landed = d.get(key.as_str(), None).await.expect("get").kvs().first().map(|kv| kv.mod_revision()).expect("replicated");
        assert!(landed >= at, "{key}: written at source revision {at}, landed at {landed}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.borrow().revision_gap > 0 {
        assert!(Instant::now() < deadline, "the reported gap did not close: {:?}", rx.borrow().clone());
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
    assert_eq!(rx.borrow().writes_below_floor, below, "the later writes all waited for the raise");
    stop_mirror(stop, task).await;
    assert_same(&mut s, &mut d).await;
}

/// How many times the mirror raised `c`'s revision (`drctl::etcd::raise_revision`).
async fn floor_puts(c: &mut Client) -> i64 {
    let r = c.get(drctl::etcd::REVISION_FLOOR_KEY, None).await.expect("get the floor key");
    r.kvs().first().map_or(0, |kv| kv.version())
}

/// A destination etcd with lowered `--max-txn-ops` and `--max-request-bytes` (no API reports
/// them): the mirror's 128-op, 1 MiB txns are refused, and it learns to write smaller ones, in
/// the copy and in the watch's batches, losing nothing (a refused txn writes nothing and the
/// session resumes from its checkpoint).
#[tokio::test]
async fn a_destination_with_lowered_txn_limits_is_written_in_smaller_txns() {
    let src = Etcd::start();
    let dst = Etcd::start_with(&["--max-txn-ops=8", "--max-request-bytes=32768"]);
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let value = |i: usize| format!("{i:06}").repeat(500).into_bytes();
    let kvs: Vec<(String, Vec<u8>)> = (0..200).map(|i| (format!("/registry/configmaps/team-a/c{i:03}"), value(i))).collect();
    put_all(&mut s, &kvs[..100]).await;
    for (k, v) in &kvs[100..] {
        s.put(k.as_str(), v.clone(), None).await.expect("put");
    }
    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("copy into the limited destination");
    assert_eq!(p.applied_revision, head(&mut s).await);
    assert_same(&mut s, &mut d).await;
    // Following: one source txn of 100 puts arrives as one watch batch, written in small txns.
    let Running { mut rx, stop, task } = run_in_background(Mirror::new(config(&src, &dst)));
    let more: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("/registry/secrets/team-b/s{i:03}"), value(i))).collect();
    put_all(&mut s, &more).await;
    caught_up(&mut rx, &mut s).await;
    stop_mirror(stop, task).await;
    assert_same(&mut s, &mut d).await;
    let (code, report) = check_cli(&src, &dst, &[]);
    assert_eq!((code, report.missed.count, report.surplus.count, report.diverged.count), (0, 0, 0, 0), "{report:?}");
}

#[test]
fn kill_9_mid_copy_then_resume_without_recopying() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    const N: usize = 20_000;
    let keys: Vec<(String, Vec<u8>)> = (0..N).map(|i| (format!("/registry/configmaps/ns-{}/cm-{i:05}", i % 50), vec![b'a' + (i % 26) as u8; 2048])).collect();
    rt.block_on(put_all(&mut s, &keys));

    let args = [vec!["mirror".to_string(), "--once".into()], src.flags("source", "source-"), dst.flags("dest", "dest-")].concat();
    let mut child = drctl().args(&args).spawn().expect("spawn drctl mirror");
    let count =
        |d: &mut Client| rt.block_on(async { d.get("/registry/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count").count() });
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut d) < 2_000 {
        assert!(Instant::now() < deadline, "copy did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let killed_at = rt.block_on(head(&mut d));
    let copied = count(&mut d) as usize;
    assert!(copied < N, "the copy finished before the kill; nothing to resume");
    let cp = rt.block_on(Checkpoint::read(&mut d.kv_client())).expect("read").expect("checkpoint written");
    assert!(cp.copy.is_some(), "checkpoint of an unfinished copy: {cp:?}");

    let out = drctl().args(&args).output().expect("run drctl mirror again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("resumed from checkpoint"), "{stdout}");
    rt.block_on(async {
        assert_same(&mut s, &mut d).await;
        // Keys written after the kill: the rest, plus at most the txns that were in flight.
        let all = d.get("/registry/", Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("keys");
        let rewritten = all.kvs().iter().filter(|kv| kv.mod_revision() > killed_at).count();
        let in_flight = Tuning::default().in_flight * Tuning::default().txn_max_ops;
        assert!(rewritten <= N - copied + in_flight, "{rewritten} keys written after the kill; {copied} were already copied");
    });
}

#[tokio::test]
async fn compaction_while_stopped_forces_a_resync_that_converges_with_deletes() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let keys: Vec<(String, Vec<u8>)> = (0..400).map(|i| (format!("/registry/secrets/team-{}/s{i}", i % 4), format!("v{i}").into_bytes())).collect();
    put_all(&mut s, &keys).await;
    Mirror::new(config(&src, &dst)).run_once().await.expect("initial copy");
    // The standby's own object in an excluded namespace must survive the resync's prune.
    d.put("/registry/configmaps/kube-system/standby-own", "mine", None).await.expect("own put");

    for i in 0..40 {
        s.delete(format!("/registry/secrets/team-{}/s{i}", i % 4), None).await.expect("delete");
    }
    s.put("/registry/secrets/team-1/s41", "updated", None).await.expect("update");
    s.put("/registry/secrets/team-9/new", "new", None).await.expect("new");
    let now = head(&mut s).await;
    s.compact(now, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");

    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("resync");
    assert_eq!(p.resyncs, 1, "{p:?}");
    assert_eq!(p.deleted_keys, 40, "{p:?}");
    assert_same(&mut s, &mut d).await;
    let own = d.get("/registry/configmaps/kube-system/standby-own", None).await.expect("get");
    assert_eq!(own.kvs().len(), 1, "excluded keys are not pruned");
}

fn check_cli(src: &Etcd, dst: &Etcd, extra: &[&str]) -> (i32, CheckReport) {
    let out =
        drctl().args(["check", "--json"]).args(src.flags("source", "source-")).args(dst.flags("dest", "dest-")).args(extra).output().expect("run drctl check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check JSON: {e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exit code"), report)
}

#[test]
fn check_finds_planted_differences_and_repair_fixes_them() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    rt.block_on(async {
        let keys: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("/registry/configmaps/team-a/p{i:02}"), format!("cm {i}").into_bytes())).collect();
        put_all(&mut s, &keys).await;
        Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
        d.delete("/registry/configmaps/team-a/p07", None).await.expect("plant missed");
        d.put("/registry/configmaps/team-a/p08", "tampered", None).await.expect("plant diverged");
        d.put("/registry/configmaps/team-a/zz-surplus", "extra", None).await.expect("plant surplus");
        d.put("/registry/configmaps/kube-system/ignored", "excluded", None).await.expect("excluded surplus");
    });

    let (code, r) = check_cli(&src, &dst, &[]);
    assert_eq!(code, 2, "inconsistent exits 2");
    assert!(!r.consistent);
    assert_eq!((r.missed.count, r.surplus.count, r.diverged.count, r.checked_keys), (1, 1, 1, 50));
    assert_eq!(r.missed.keys, vec!["/registry/configmaps/team-a/p07"]);
    assert_eq!(r.diverged.keys, vec!["/registry/configmaps/team-a/p08"]);
    assert_eq!(r.surplus.keys, vec!["/registry/configmaps/team-a/zz-surplus"]);

    let (_, r) = check_cli(&src, &dst, &["--repair"]);
    let repair = r.repair.expect("repair outcome");
    assert_eq!((repair.put, repair.deleted), (2, 0), "surplus kept without --prune-surplus");
    let saved = repair.archive.expect("the diverged value was archived before the re-put");
    assert_eq!((repair.archived, saved.count, saved.overwritten, saved.reason.as_str()), (1, 1, 1, "repair"));
    let tampered = rt.block_on(drctl::archive::entries(&mut d.kv_client(), &saved.id)).expect("read the archive");
    assert_eq!((tampered[0].key.as_slice(), tampered[0].value.as_slice()), (&b"/registry/configmaps/team-a/p08"[..], &b"tampered"[..]));
    let (code, r) = check_cli(&src, &dst, &[]);
    assert_eq!((code, r.missed.count, r.diverged.count, r.surplus.count), (2, 0, 0, 1));

    let (_, r) = check_cli(&src, &dst, &["--repair", "--prune-surplus"]);
    assert_eq!(r.repair.expect("repair").deleted, 1);
    let (code, r) = check_cli(&src, &dst, &[]);
    assert!(r.consistent && code == 0, "{r}");
    let ignored = rt.block_on(d.get("/registry/configmaps/kube-system/ignored", None)).expect("get");
    assert_eq!(ignored.kvs().len(), 1, "excluded keys are never pruned");
}

#[tokio::test]
async fn the_mirror_reconnects_when_either_etcd_restarts() {
    let (mut src, mut dst) = (Etcd::start(), Etcd::start());
    let mut s = src.client().await;
    s.put("/registry/configmaps/team-a/before", "1", None).await.expect("put");
    let Running { mut rx, stop, task } = run_in_background(Mirror::new(config(&src, &dst)));
    caught_up(&mut rx, &mut s).await;

    dst.restart();
    s.put("/registry/configmaps/team-a/after-dest-restart", "2", None).await.expect("put");
    caught_up(&mut rx, &mut s).await;

    src.restart();
    let mut s = src.client().await;
    s.put("/registry/configmaps/team-a/after-source-restart", "3", None).await.expect("put");
    caught_up(&mut rx, &mut s).await;

    let mut d = dst.client().await;
    assert_same(&mut s, &mut d).await;
    assert_eq!(replicated(&mut d).await.len(), 3);
    stop_mirror(stop, task).await;
}

#[test]
fn mirror_and_check_speak_mtls_to_both_sides() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    rt.block_on(put_all(&mut s, &[("/registry/secrets/team-a/tls".into(), b"sealed".to_vec())]));
    let base = ["--source", &src.client_url, "--dest", &dst.client_url];

    let without = drctl().args(["mirror", "--once"]).args(base).output().expect("run drctl");
    assert!(!without.status.success(), "a client without a certificate must be refused");
    // Wrong or missing TLS material is named at once, not retried as if the etcd were down.
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("do not accept each other's TLS certificates") && stderr.contains("--source-cacert"), "{stderr}");
    assert!(!stderr.contains("trying again"), "a TLS refusal was retried:\n{stderr}");
    // So does the check (it reads both sides the same way).
    let without = drctl().args(["check"]).args(base).args(src.tls_args("source-")).output().expect("run drctl check");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the destination's etcd and drctl do not accept each other's TLS certificates") && stderr.contains("--dest-cacert"), "{stderr}");

    let out = drctl().args(["mirror", "--once"]).args(base).args(src.tls_args("source-")).args(dst.tls_args("dest-")).output().expect("run drctl mirror");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(assert_same(&mut s, &mut d));
    assert_eq!(rt.block_on(replicated(&mut d)).len(), 1);

    let out = drctl().args(["check", "--json"]).args(base).args(src.tls_args("source-")).args(dst.tls_args("dest-")).output().expect("run drctl check");
    let report: CheckReport = serde_json::from_slice(&out.stdout).expect("check JSON");
    assert!(report.consistent && report.checked_keys == 1, "{report}");
}

#[test]
fn drctl_mirror_follows_until_sigterm_then_exits_cleanly() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    let mut child = drctl()
        .arg("mirror")
        .args(src.flags("source", "source-"))
        .args(dst.flags("dest", "dest-"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn drctl mirror");
    rt.block_on(s.put("/registry/configmaps/team-a/later", "1", None)).expect("put");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(d.get("/registry/configmaps/team-a/later", None)).expect("get").kvs().is_empty() {
        assert!(Instant::now() < deadline, "the write never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "drctl mirror ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn anti_entropy_after_the_copy_restores_a_key_the_destination_lost() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let keys: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("/registry/replicasets/team-a/rs-{i}"), format!("rs {i}").into_bytes())).collect();
    put_all(&mut s, &keys).await;
    let mut cfg = config(&src, &dst);
    cfg.tuning.anti_entropy_after = Some(Duration::from_secs(3));
    let Running { mut rx, stop, task } = run_in_background(Mirror::new(cfg));
    caught_up(&mut rx, &mut s).await;
    // What the standby's garbage collector does to a child that arrived before its owner.
    d.delete("/registry/replicasets/team-a/rs-3", None).await.expect("delete on the destination");
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.get("/registry/replicasets/team-a/rs-3", None).await.expect("get").kvs().is_empty() {
        assert!(Instant::now() < deadline, "anti-entropy never restored the key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same(&mut s, &mut d).await;
    stop_mirror(stop, task).await;
}

/// Excluded resources are read without values (a scale optimisation); a key of an unknown shape
/// under one is still copied, and still compared byte for byte.
#[tokio::test]
async fn unknown_key_shapes_under_an_excluded_resource_are_copied_and_checked() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let mut keys: Vec<(String, Vec<u8>)> = (0..30).map(|i| (format!("/registry/pods/team-a/p{i:02}"), b"pod".to_vec())).collect();
    keys.push(("/registry/pods/team-a/p05/odd".into(), b"odd".to_vec()));
    keys.push(("/registry/events/team-a/e1".into(), b"event".to_vec()));
    put_all(&mut s, &keys).await;
    Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
    let got: Vec<String> = replicated(&mut d).await.into_keys().collect();
    assert_eq!(got, vec!["/registry/pods/team-a/p05/odd".to_string()], "only the unknown shape is copied");
    assert_same(&mut s, &mut d).await;
    d.put("/registry/pods/team-a/p05/odd", "tampered", None).await.expect("plant diverged");
    let found = check::run(
        &etcd::connect(&src.endpoint()).await.expect("src"),
        &etcd::connect(&dst.endpoint()).await.expect("dst"),
        &filter(),
        &CheckOptions::default(),
    )
    .await
    .expect("check");
    assert_eq!((found.report.diverged.keys.clone(), found.report.checked_keys), (vec!["/registry/pods/team-a/p05/odd".to_string()], 1));
}

#[test]
fn exclusions_from_the_topology_file_and_the_flags_add_to_the_defaults() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    let keys = [
        "/registry/configmaps/team-a/a",
        "/registry/configmaps/team-b/b",
        "/registry/configmaps/kube-system/k",
        "/registry/events/team-a/e",
        "/registry/example.com/widgets/team-a/w",
    ];
    rt.block_on(put_all(&mut s, &keys.iter().map(|k| (k.to_string(), b"v".to_vec())).collect::<Vec<_>>()));
    let minimal = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/minimal.yaml")).expect("example");
    let dir = tempfile::tempdir().expect("tempdir");
    let topo = dir.path().join("topology.yaml");
    // Namespaces given: they add to the defaults.
    std::fs::write(&topo, format!("{minimal}  sync:\n    exclude:\n      namespaces: [team-b]\n")).expect("write");
    let copied = |d: &mut Client| -> Vec<String> {
        let resp = rt.block_on(d.get("/registry/", Some(GetOptions::new().with_prefix().with_keys_only()))).expect("keys");
        resp.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
    };
    let base = [src.flags("source", "source-"), dst.flags("dest", "dest-")].concat();

    let config = format!("--config={}", topo.display());
    let out = drctl().args(["mirror", "--once", &config]).args(&base).output().expect("run drctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // team-b from the file, kube-system still excluded by default (it used to be copied: the
    // file's list replaced the defaults).
    assert_eq!(copied(&mut d), vec!["/registry/configmaps/team-a/a", "/registry/example.com/widgets/team-a/w"]);
    let out = drctl().args(["check", &config]).args(&base).output().expect("run drctl check");
    assert!(out.status.success(), "the check filters like the mirror: {}", String::from_utf8_lossy(&out.stdout));

    // Flags add to the defaults (kube-system and events stay excluded) and to --config's list.
    rt.block_on(d.delete("/registry/", Some(etcd_client::DeleteOptions::new().with_prefix()))).expect("wipe");
    rt.block_on(d.delete(CHECKPOINT_KEY, None)).expect("wipe checkpoint");
    let out = drctl()
        .args(["mirror", "--once", &config, "--exclude-namespace=team-a", "--exclude-resource=example.com/widgets"])
        .args(&base)
        .output()
        .expect("run drctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(copied(&mut d), Vec::<String>::new(), "team-b from --config, team-a and widgets from the flags, the rest by default");
    rt.block_on(d.delete(CHECKPOINT_KEY, None)).expect("wipe checkpoint");
    let out = drctl().args(["mirror", "--once", "--exclude-namespace=team-a"]).args(&base).output().expect("run drctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(copied(&mut d), vec!["/registry/configmaps/team-b/b"]);
    // What would exclude everything is refused before anything is written.
    for bad in ["--exclude-resource=*", "--exclude-resource=namespaces"] {
        let out = drctl().args(["mirror", "--once", bad]).args(&base).output().expect("run drctl");
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("spec.sync.exclude.resources[0]"), "{bad}: {err}");
    }
    // A check whose exclusions leave nothing replicated is not "consistent".
    let out = drctl()
        .args(["check", "--exclude-namespace=team-a", "--exclude-namespace=team-b", "--exclude-resource=example.com/widgets"])
        .args(&base)
        .output()
        .expect("run drctl check");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("NOT consistent") && said.contains("nothing is replicated"), "{said}");
}

/// Exclusions changed between a check and its repair (or a difference list from elsewhere):
/// the repair writes only keys the filter it is given replicates, so a namespace excluded now
/// (here kube-public, the standby's own) is never overwritten with the primary's copy.
#[tokio::test]
async fn repair_writes_only_keys_the_current_filter_replicates() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    put_all(
        &mut s,
        &[("/registry/configmaps/kube-public/cluster-info".into(), b"primary's".to_vec()), ("/registry/configmaps/team-a/x".into(), b"v".to_vec())],
    )
    .await;
    d.put("/registry/configmaps/kube-public/cluster-info", "standby's own", None).await.expect("standby's own");
    let (sc, dc) = (etcd::connect(&config(&src, &dst).source).await.expect("src"), etcd::connect(&config(&src, &dst).dest).await.expect("dst"));
    // Found while kube-public was opted in ...
    let opted_in = Filter::with_default_namespaces(&ExcludeSpec {
        opt_out: vec![drctl::topology::OptOut { namespace: Some("kube-public".into()), resource: None, reason: "test".into() }],
        ..Default::default()
    });
    let found = check::run(&sc, &dc, &opted_in, &CheckOptions::default()).await.expect("check");
    assert_eq!((found.report.missed.count, found.report.diverged.count), (1, 1), "{}", found.report);
    // ... repaired after it was excluded again.
    let outcome = check::repair(&sc, &dc, &filter(), &found.differences, false).await.expect("repair");
    assert_eq!((outcome.put, outcome.excluded), (1, 1), "{outcome:?}");
    let own = d.get("/registry/configmaps/kube-public/cluster-info", None).await.expect("get");
    assert_eq!(own.kvs()[0].value(), b"standby's own");
    let copied = d.get("/registry/configmaps/team-a/x", None).await.expect("get");
    assert_eq!(copied.kvs().len(), 1, "the replicated key was repaired");
}

/// The race the 60 s soak caught in CI: a check finds a key missed, the mirror then applies the
/// source's delete of it (a no-op on the destination, plus its checkpoint), and only then does
/// the repair run. Putting the checked value back would resurrect a deleted key for good; the
/// repair re-reads at the new checkpoint and leaves it alone. A diverged key the mirror has
/// since updated is not overwritten with the older value either.
#[tokio::test]
async fn repair_never_undoes_what_the_mirror_applied_after_the_check() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    put_all(&mut s, &[("/registry/configmaps/team-a/gone".into(), b"v1".to_vec()), ("/registry/configmaps/team-a/moved".into(), b"v1".to_vec())]).await;
    Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
    // The destination lost one key and holds other bytes for the second: both real differences.
    d.delete("/registry/configmaps/team-a/gone", None).await.expect("plant missed");
    d.put("/registry/configmaps/team-a/moved", "tampered", None).await.expect("plant diverged");
    let (sc, dc) = (etcd::connect(&config(&src, &dst).source).await.expect("src"), etcd::connect(&config(&src, &dst).dest).await.expect("dst"));
    let found = check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check");
    assert_eq!((found.report.missed.count, found.report.diverged.count), (1, 1), "{}", found.report);

    // Now the source deletes one and updates the other, and "the mirror" applies both, with its
    // checkpoint, in one txn, as the real one does.
    s.delete("/registry/configmaps/team-a/gone", None).await.expect("delete on source");
    let head = s.put("/registry/configmaps/team-a/moved", "v2", None).await.expect("update on source").header().expect("header").revision();
    let cp = Checkpoint::read(&mut dc.kv.clone()).await.expect("read checkpoint").expect("checkpoint");
    let next = Checkpoint { revision: head, ..cp };
    let ops = vec![
        TxnOp::delete("/registry/configmaps/team-a/gone", None),
        TxnOp::put("/registry/configmaps/team-a/moved", "v2", None),
        TxnOp::put(CHECKPOINT_KEY, serde_json::to_vec(&next).expect("json"), None),
    ];
    d.txn(Txn::new().and_then(ops)).await.expect("apply like the mirror");

    let outcome = check::repair(&sc, &dc, &filter(), &found.differences, false).await.expect("repair");
    assert_eq!((outcome.put, outcome.already, outcome.skipped), (0, 2, 0), "{outcome:?}");
    assert!(d.get("/registry/configmaps/team-a/gone", None).await.expect("get").kvs().is_empty(), "the deleted key stays deleted");
    let moved = d.get("/registry/configmaps/team-a/moved", None).await.expect("get");
    assert_eq!(moved.kvs().first().map(|kv| kv.value().to_vec()), Some(b"v2".to_vec()), "the newer value stays");
    let after = check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check");
    assert!(after.report.consistent, "{}", after.report);
}

/// A batch too big for one txn is written in several; until its last txn the checkpoint says
/// `pending`. A check in that window must neither report the half-written keys nor repair them
/// from the older revision (which would put back a key the batch deleted).
#[tokio::test]
async fn a_half_written_batch_is_never_compared_or_repaired() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    put_all(&mut s, &[("/registry/configmaps/team-a/big".into(), b"v1".to_vec())]).await;
    Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
    let cp = Checkpoint::read(&mut d.kv_client()).await.expect("read checkpoint").expect("checkpoint");
    let head = s.delete("/registry/configmaps/team-a/big", None).await.expect("delete on source").header().expect("header").revision();
    // An earlier txn of the batch up to `head`: its data, and the checkpoint marked pending.
    let pending = serde_json::to_vec(&Checkpoint { pending: Some(head), ..cp.clone() }).expect("json");
    d.txn(Txn::new().and_then(vec![TxnOp::delete("/registry/configmaps/team-a/big", None), TxnOp::put(CHECKPOINT_KEY, pending, None)]))
        .await
        .expect("partial batch");

    let (sc, dc) = (etcd::connect(&config(&src, &dst).source).await.expect("src"), etcd::connect(&config(&src, &dst).dest).await.expect("dst"));
    let found = check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check");
    assert!(found.report.consistent, "a half-written batch is in flux, not damage: {}", found.report);
    let missed = check::Difference {
        key: b"/registry/configmaps/team-a/big".to_vec(),
        source: Some(b"v1".to_vec()),
        dest_mod_revision: None,
        dest_value: None,
        dest_writer: None,
    };
    let outcome = check::repair(&sc, &dc, &filter(), &[missed], false).await.expect("repair");
    assert_eq!((outcome.put, outcome.skipped), (0, 1), "{outcome:?}");
    assert!(d.get("/registry/configmaps/team-a/big", None).await.expect("get").kvs().is_empty(), "the batch's delete stands");

    // The batch's last txn: the checkpoint at `head`, no longer pending. Consistent.
    let done = serde_json::to_vec(&Checkpoint { pending: None, revision: head, ..cp }).expect("json");
    d.put(CHECKPOINT_KEY, done, None).await.expect("last txn");
    let after = check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check");
    assert!(after.report.consistent, "{}", after.report);
}

/// `--source X --dest X` is refused by cluster ID, even when the two are reached differently
/// (the load balancer, one member's own URL, that URL with a host name for the IP), and nothing
/// is written.
#[tokio::test]
async fn the_same_etcd_as_source_and_destination_is_refused() {
    let e = Etcd::start();
    let member = e.member_urls()[1].clone();
    assert_ne!(member, e.client_url);
    let mut c = e.client().await;
    c.put("/registry/configmaps/team/a", "v", None).await.expect("put");
    let before = head(&mut c).await;

    let dest_at = |url: String| [vec!["--dest".to_string(), url], e.tls_args("dest-")].concat();
    let by_name = member.replace("127.0.0.1", "localhost");
    assert_ne!(by_name, member);
    for args in [
        [vec!["check".to_string()], e.flags("source", "source-"), dest_at(member.clone())].concat(),
        [vec!["mirror".to_string(), "--once".into()], e.flags("source", "source-"), dest_at(by_name)].concat(),
        [vec!["mirror".to_string()], e.flags("source", "source-"), e.flags("dest", "dest-")].concat(),
    ] {
        let out = drctl().args(&args).output().expect("run drctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("the source and the destination are the same etcd (cluster ID "), "{args:?}: {stderr}");
        eprintln!("{}: {}", args[0], stderr.lines().last().unwrap_or(""));
    }
    // The library refuses too (the controller's mirror and check use it).
    let cfg = MirrorConfig { source: e.endpoint(), dest: e.cluster.endpoint(vec![member]), filter: filter(), tuning: Tuning::default() };
    let err = Mirror::new(cfg).run_once().await.expect_err("same etcd");
    assert!(matches!(err, drctl::mirror::MirrorError::SameCluster(_)), "{err}");
    let conn = etcd::connect(&e.endpoint()).await.expect("connect");
    let err = check::run(&conn, &conn, &filter(), &CheckOptions::default()).await.expect_err("same etcd");
    assert!(matches!(err, check::CheckError::SameCluster(_)), "{err}");

    assert_eq!(head(&mut c).await, before, "nothing was written: no checkpoint, no copy");
    assert!(c.get(CHECKPOINT_KEY, None).await.expect("get").kvs().is_empty());
}

fn archive_cli(args: &[String]) -> String {
    let out = drctl().arg("archive").args(args).output().expect("run drctl archive");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "drctl archive {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// S2 (issue 18, scenario 2): an old primary's own writes on a destination whose mirror
/// checkpoint (from its earlier standby term) the source has compacted past. The resync deletes
/// what the source lacks and overwrites what differs: each value it replaces is saved in the
/// destination's archive first (also the ones the mirror wrote and the source changed since: a
/// compacted history cannot tell), counted in Progress, listed by `drctl archive list`, and
/// `drctl archive restore` puts one back on the primary.
#[test]
fn a_compaction_resync_archives_every_destination_value_it_deletes_or_overwrites() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    const SHARED: usize = 200;
    const OWN: usize = 37;
    const CHANGED: usize = 5;
    const SOURCE_CHANGED: usize = 20;
    let p = rt.block_on(async {
        let shared: Vec<(String, Vec<u8>)> = (0..SHARED).map(|i| (format!("/registry/configmaps/team-a/cm-{i:03}"), format!("v{i}").into_bytes())).collect();
        put_all(&mut s, &shared).await;
        Mirror::new(config(&src, &dst)).run_once().await.expect("initial copy");
        let stale = head(&mut s).await;
        // The destination takes writes of its own (as primary during a partition): keys the
        // source never had, and other values for keys it has.
        let own: Vec<(String, Vec<u8>)> =
            (0..OWN).map(|i| (format!("/registry/configmaps/team-b/own-{i:02}"), format!("acknowledged {i}").into_bytes())).collect();
        put_all(&mut d, &own).await;
        for i in 0..CHANGED {
            d.put(format!("/registry/configmaps/team-a/cm-{i:03}"), format!("changed here {i}"), None).await.expect("diverge");
        }
        d.put("/registry/configmaps/kube-system/own", "excluded", None).await.expect("excluded");
        // The source moves on and compacts past the destination's checkpoint.
        for i in 0..SOURCE_CHANGED {
            s.put(format!("/registry/configmaps/team-a/cm-{i:03}"), format!("source v2 {i}"), None).await.expect("update");
        }
        let now = head(&mut s).await;
        s.compact(now, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
        // The destination's checkpoint, from its standby term, is at `stale`.
        let cp = Checkpoint::read(&mut d.kv_client()).await.expect("read").expect("checkpoint");
        assert_eq!(cp.revision, stale);
        Mirror::new(config(&src, &dst)).run_once().await.expect("resync")
    });
    assert_eq!(p.resyncs, 1, "{p:?}");
    let m = p.archive.clone().expect("an archive was made");
    eprintln!(
        "compaction resync: {} of {} destination-only keys and {} overwritten values ({} changed here, {} mirror-written that the source changed since) archived ({} in Progress), archive {} revisions {}, {} deleted, {} put",
        m.pruned,
        OWN,
        m.overwritten,
        CHANGED,
        SOURCE_CHANGED - CHANGED,
        p.archived_keys,
        m.id,
        m.revisions(),
        p.deleted_keys,
        p.put_keys
    );
    let total = (OWN + SOURCE_CHANGED) as u64;
    assert_eq!((m.count, m.pruned, m.overwritten, p.archived_keys), (total, OWN as u64, SOURCE_CHANGED as u64, total), "{m:?}");
    assert_eq!(m.reason, "resync after compaction");
    rt.block_on(async {
        assert_same(&mut s, &mut d).await;
        // Every value the resync replaced is in the archive, byte for byte, with its revision.
        let entries = drctl::archive::entries(&mut d.kv_client(), &m.id).await.expect("entries");
        let saved: BTreeMap<String, Vec<u8>> = entries.iter().map(|e| (String::from_utf8_lossy(&e.key).into_owned(), e.value.clone())).collect();
        for i in 0..OWN {
            assert_eq!(saved.get(&format!("/registry/configmaps/team-b/own-{i:02}")), Some(&format!("acknowledged {i}").into_bytes()));
        }
        for i in 0..CHANGED {
            assert_eq!(saved.get(&format!("/registry/configmaps/team-a/cm-{i:03}")), Some(&format!("changed here {i}").into_bytes()));
        }
        assert!(entries.iter().all(|e| e.mod_revision > 0));
        // The archive is outside what is replicated and compared.
        let (sc, dc) = (etcd::connect(&config(&src, &dst).source).await.expect("src"), etcd::connect(&config(&src, &dst).dest).await.expect("dst"));
        let r = check::run(&sc, &dc, &filter(), &CheckOptions::default()).await.expect("check").report;
        assert!(r.consistent, "{r}");
        let own = d.get("/registry/configmaps/kube-system/own", None).await.expect("get");
        assert_eq!(own.kvs().len(), 1, "excluded keys are neither pruned nor archived");
    });

    let listed = archive_cli(&[&["list".into(), "--keys".into()][..], &dst.flags("etcd", "")].concat());
    eprint!("{listed}");
    assert!(listed.contains(&format!("{}  {} keys ({} overwritten, {} deleted)", m.id, OWN + SOURCE_CHANGED, SOURCE_CHANGED, OWN)), "{listed}");
    assert!(listed.contains("configmaps team-b/own-07  /registry/configmaps/team-b/own-07"), "{listed}");
    assert!(listed.contains("reason: resync after compaction"), "{listed}");

    // Put one back on the primary (the source), and leave one the primary holds alone.
    let key = "/registry/configmaps/team-b/own-07";
    let only = ["--only", key, "--only", "/registry/configmaps/team-a/cm-001"].map(String::from);
    let restored = archive_cli(&[&["restore".into(), m.id.clone()][..], &dst.flags("etcd", ""), &src.flags("to", "to-"), &only].concat());
    eprint!("{restored}");
    assert!(restored.contains("1 put, 1 kept"), "{restored}");
    rt.block_on(async {
        let got = s.get(key, None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"acknowledged 7");
        let kept = s.get("/registry/configmaps/team-a/cm-001", None).await.expect("get");
        assert_eq!(kept.kvs()[0].value(), b"source v2 1", "not overwritten without --overwrite");
    });
}

/// A rejoining old primary (no checkpoint: deleted when it became primary) gets an initial copy
/// over its existing data: values the copy overwrites are archived, keys only it holds are kept
/// (surplus, reported by the check; deleted only when an operator agrees) — on a rejoin, only
/// those it wrote as primary: older ones are replicas of keys the source deleted since (archived,
/// then pruned).
#[tokio::test]
async fn an_initial_copy_over_existing_data_archives_what_it_overwrites_and_keeps_surplus() {
    let (src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let same: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("/registry/secrets/team-a/s{i:02}"), format!("v{i}").into_bytes())).collect();
    put_all(&mut s, &same).await;
    put_all(&mut d, &same).await;
    for i in 0..3 {
        d.put(format!("/registry/secrets/team-a/s{i:02}"), "written while primary", None).await.expect("diverge");
    }
    d.put("/registry/secrets/team-a/only-here", "surplus", None).await.expect("surplus");
    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
    let m = p.archive.clone().expect("archive");
    eprintln!("rejoin copy: {} overwritten values archived, {} put, {} deleted", m.overwritten, p.put_keys, p.deleted_keys);
    assert_eq!((m.count, m.overwritten, m.pruned, m.reason.as_str(), p.deleted_keys), (3, 3, 0, "initial copy over existing data", 0));
    let kept = d.get("/registry/secrets/team-a/only-here", None).await.expect("get");
    assert_eq!(kept.kvs().len(), 1, "surplus kept");
    // The same cluster after a primary term (its controller deleted the checkpoint and left the
    // marker): a rejoin, which the alerts count as lost writes; the marker goes with the copy.
    d.delete(CHECKPOINT_KEY, None).await.expect("forget the checkpoint");
    d.put(drctl::mirror::WAS_PRIMARY_KEY, "{}", None).await.expect("marker");
    d.put("/registry/secrets/team-a/s10", "written while primary", None).await.expect("diverge");
    // Written as primary, then seen by the source's mirror (its marker says so), then deleted there.
    let seen = d.put("/registry/secrets/team-a/seen-then-deleted", "x", None).await.expect("put");
    let (d_id, seen_at) = seen.header().map(|h| (h.cluster_id(), h.revision())).expect("header");
    let applied = drctl::checkpoint::Applied { cluster_id: d_id, revision: seen_at };
    let theirs = drctl::mirror::WasPrimary { since: "then".into(), applied_from: Some(applied) };
    s.put(drctl::mirror::WAS_PRIMARY_KEY, theirs.to_json(), None).await.expect("the source's marker");
    d.put("/registry/secrets/team-a/never-seen", "surplus", None).await.expect("surplus");
    d.put("/registry/secrets/team-a/s30", "written as primary, never seen", None).await.expect("diverge");
    // The new primary deleted a key this cluster held as a replica: a CronJob's old Job, say.
    s.delete("/registry/secrets/team-a/s20", None).await.expect("delete at the source");
    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("rejoin copy");
    let m = p.archive.clone().expect("archive");
    assert_eq!((m.count, m.overwritten, m.pruned, m.reason.as_str()), (5, 2, 3, "rejoin after being primary"));
    // Of the five only s30 is a write the source never got (s10 it saw, and changed since); the
    // surplus key it never saw is kept, not archived.
    assert_eq!((m.unseen, m.lost()), (Some(1), 1), "stale replicas are not lost writes");
    assert_eq!(d.get(drctl::mirror::WAS_PRIMARY_KEY, None).await.expect("get").count(), 0, "the marker is gone with the rejoin's copy");
    let has = |resp: etcd_client::GetResponse| resp.count() > 0;
    assert!(!has(d.get("/registry/secrets/team-a/s20", None).await.expect("get")), "a replica the source deleted since is pruned (archived first)");
    assert!(!has(d.get("/registry/secrets/team-a/only-here", None).await.expect("get")), "so is a key held before the primary term");
    assert!(!has(d.get("/registry/secrets/team-a/seen-then-deleted", None).await.expect("get")), "and one the source saw, then deleted");
    assert!(has(d.get("/registry/secrets/team-a/never-seen", None).await.expect("get")), "a write the source never saw is kept: surplus");
    // A copy into an empty destination archives nothing.
    let (src2, dst2) = (Etcd::start(), Etcd::start());
    put_all(&mut src2.client().await, &same).await;
    let p = Mirror::new(config(&src2, &dst2)).run_once().await.expect("copy");
    assert_eq!((p.archive, p.archived_keys), (None, 0));
    assert!(drctl::archive::list(&mut dst2.client().await.kv_client()).await.expect("list").is_empty());
}

/// S5 (issue 18, scenario 4): the source's etcd restored from a snapshot (same cluster ID, its
/// revision back), then new writes. The running mirror reports the rewind, resyncs from the
/// source's head, archives what the resync deletes (the writes of the lost history), and ends
/// holding the new writes.
#[test]
fn a_source_restored_from_a_snapshot_is_reported_resynced_and_the_lost_history_archived() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (mut src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = rt.block_on(async { (src.client().await, dst.client().await) });
    const LOST: usize = 60;
    const NEW: usize = 20;
    let snap = src.dir().join("snap.db");
    let Running { mut rx, stop, task } = rt.block_on(async {
        let base: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("/registry/configmaps/team-a/base-{i:03}"), format!("v{i}").into_bytes())).collect();
        put_all(&mut s, &base).await;
        run_in_background(Mirror::new(config(&src, &dst)))
    });
    let cluster_id = rt.block_on(async {
        caught_up(&mut rx, &mut s).await;
        s.get("\0", Some(GetOptions::new().with_count_only())).await.expect("head").header().expect("header").cluster_id()
    });
    src.snapshot(&snap);
    let applied = rt.block_on(async {
        // The history the restore will lose: written after the snapshot, mirrored here.
        for i in 0..LOST {
            s.put(format!("/registry/configmaps/team-a/lost-{i:02}"), format!("lost {i}"), None).await.expect("put");
        }
        caught_up(&mut rx, &mut s).await;
        rx.borrow().applied_revision
    });
    src.restore_snapshot(&snap);
    let (restored_head, new_cluster_id) = rt.block_on(async {
        s = src.client().await;
        let h = s.get("\0", Some(GetOptions::new().with_count_only())).await.expect("head");
        let head = h.header().expect("header");
        (head.revision(), head.cluster_id())
    });
    assert_eq!(new_cluster_id, cluster_id, "a restore with the same member and peer URL keeps the cluster ID");
    assert!(restored_head < applied, "restored at {restored_head}, below the {applied} applied");
    let started = Instant::now();
    let p = rt.block_on(async {
        for i in 0..NEW {
            s.put(format!("/registry/configmaps/team-a/new-{i:02}"), format!("new {i}"), None).await.expect("new write");
        }
        let target = head(&mut s).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = rx.borrow().clone();
            if p.rewinds > 0 && p.phase == drctl::mirror::Phase::Following && p.applied_revision >= target {
                break p;
            }
            assert!(Instant::now() < deadline, "no rewind resync within 60s: {p:?}");
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    });
    let (from, to) = p.rewound.expect("rewind reported");
    let m = p.archive.clone().expect("the lost history archived");
    eprintln!(
        "source rewound from {from} to {to} (applied {applied}, restored head {restored_head}); resynced and following in {:.1}s; {}/{NEW} new writes here; {} of {LOST} lost-history keys archived in {}",
        started.elapsed().as_secs_f64(),
        NEW,
        m.pruned,
        m.id
    );
    assert!(from >= applied && to < from, "{from} -> {to}");
    assert_eq!((m.reason.as_str(), m.pruned, m.overwritten), ("source rewound", LOST as u64, 0));
    rt.block_on(async {
        assert_same(&mut s, &mut d).await;
        for i in 0..NEW {
            let got = d.get(format!("/registry/configmaps/team-a/new-{i:02}"), None).await.expect("get");
            assert_eq!(got.kvs().first().map(|kv| kv.value().to_vec()), Some(format!("new {i}").into_bytes()));
        }
        let cp = Checkpoint::read(&mut d.kv_client()).await.expect("read").expect("checkpoint");
        assert!(cp.copy.is_none() && cp.revision <= head(&mut s).await, "{cp:?}");
        stop_mirror(stop, task).await;
    });
}

/// The same restore while the mirror is down, with enough new writes that the source's head
/// passes the destination's checkpoint again: the revision alone cannot tell, the checkpoint's
/// witness (the last key put, read back at its revision) does. Without it the mirror would
/// resume the watch in the new history, missing its first writes and keeping the lost ones.
#[tokio::test]
async fn a_rewound_source_whose_new_writes_passed_the_checkpoint_is_told_by_the_witness() {
    let (mut src, dst) = (Etcd::start(), Etcd::start());
    let (mut s, mut d) = (src.client().await, dst.client().await);
    let snap = src.dir().join("snap.db");
    put_all(&mut s, &[("/registry/configmaps/team-a/base".into(), b"v".to_vec())]).await;
    Mirror::new(config(&src, &dst)).run_once().await.expect("copy");
    src.snapshot(&snap);
    for i in 0..30 {
        s.put(format!("/registry/configmaps/team-a/lost-{i:02}"), format!("lost {i}"), None).await.expect("put");
    }
    let p = Mirror::new(config(&src, &dst)).run_once().await.expect("follow the lost history");
    let cp = Checkpoint::read(&mut d.kv_client()).await.expect("read").expect("checkpoint");
    assert!(cp.witness.is_some(), "{cp:?}");
    src.restore_snapshot(&snap);
    s = src.client().await;
    for i in 0..50 {
        s.put(format!("/registry/configmaps/team-a/new-{i:02}"), format!("new {i}"), None).await.expect("put");
    }
    let now = head(&mut s).await;
    assert!(now > cp.revision, "the new history ({now}) passed the checkpoint ({})", cp.revision);
    let q = Mirror::new(config(&src, &dst)).run_once().await.expect("resync");
    let m = q.archive.clone().expect("archive");
    eprintln!(
        "rewound source past the checkpoint (applied {}, head now {now}): rewind reported {:?}, {} lost keys archived, {} new keys put",
        p.applied_revision, q.rewound, m.pruned, q.put_keys
    );
    assert_eq!((q.rewinds, q.rewound, m.reason.as_str(), m.pruned), (1, Some((cp.revision, now)), "source rewound", 30));
    assert_same(&mut s, &mut d).await;
}
