//! The replication lag measured by the primary's heartbeat, on a real pair with controllers:
//! the standby reports it (status, `drctl status --json`, `/metrics`), small while the primary's
//! controller beats; with that controller stopped it grows although the mirror's own lag stays
//! 0 (measured, not assumed), and falls again once it beats again. A planned failover then
//! records its duration and loses no revision (the heartbeat never follows the final revision).

use drctl_testsupport as support;

use std::time::Duration;

use drctl::topology::{DRTopologyStatus, Phase, Role};
use support::pair::Pair;

fn hb(s: &DRTopologyStatus) -> Option<f64> {
    s.sync.as_ref()?.replication_lag_seconds
}

/// One sample of `name` from the controller's /metrics (plain HTTP/1.0 over loopback).
fn metric(addr: &std::net::SocketAddr, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find(|l| l.starts_with(name) && !l.starts_with('#')).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_measures_replication_lag_by_the_primary_heartbeat() {
    let pair = Pair::start().await;
    pair.apply_both("global-a");
    let mut ca = pair.controller(&pair.a, &[]);
    let cb = pair.controller(&pair.b, &[]);
    let t = Duration::from_secs(90);
    pair.wait(&pair.a, "A steady primary", t, &[&ca, &cb], |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
    let b = pair.wait(&pair.b, "B reports a heartbeat lag under 12s", t, &[&ca, &cb], |s| hb(s).is_some_and(|l| l < 12.0)).await;
    eprintln!("B sync: {:?}", b.status.as_ref().and_then(|s| s.sync.clone()));

    // /metrics is refreshed right after the status write, so a read right after the status can
    // still see the report before it (the first, before any beat was read, says NaN).
    let cbl = cb.listen;
    tokio::task::spawn_blocking(move || {
        let lag = || metric(&cbl, "drctl_replication_lag_seconds");
        support::eventually(
            "B's /metrics: drctl_replication_lag_seconds under 15",
            Duration::from_secs(10),
            || lag().filter(|v| *v < 15.0),
            || format!("{:?}", lag()),
        )
    })
    .await
    .expect("join");
    let out = support::drctl()
        .args(["status", "--json"])
        .arg(format!("--cluster=global-a={}", pair.a.api.kubeconfig.display()))
        .arg(format!("--cluster=global-b={}", pair.b.api.kubeconfig.display()))
        .output()
        .expect("drctl status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["clusters"][1]["replicationLagSeconds"].is_number(), "{v:#}");

    // No beats: the measured lag grows, the mirror's own stays small (nothing to replicate).
    ca.kill();
    let b = pair.wait(&pair.b, "B's heartbeat lag over 20s", t, &[&cb], |s| hb(s).is_some_and(|l| l > 20.0)).await;
    let sync = b.status.as_ref().and_then(|s| s.sync.clone()).expect("sync");
    assert!(sync.lag_seconds.is_some_and(|l| l < 5.0), "the mirror's lag does not see it: {sync:?}");
    ca.restart();
    pair.wait(&pair.b, "B's heartbeat lag small again", t, &[&ca, &cb], |s| hb(s).is_some_and(|l| l < 12.0)).await;

    // A planned failover: its duration is recorded, and no heartbeat of the old primary came
    // after its final revision.
    pair.apply_both("global-b");
    let b =
        pair.wait(&pair.b, "B failover done", Duration::from_secs(120), &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    let a = pair.wait(&pair.a, "A standby with a heartbeat lag", t, &[&ca, &cb], |s| s.role == Some(Role::Standby) && hb(s).is_some_and(|l| l < 12.0)).await;
    let unreplicated = a.status.as_ref().and_then(|s| s.demotion.as_ref()).and_then(|d| d.unreplicated_revisions);
    assert!(unreplicated.is_none_or(|n| n == 0), "a planned switchover lost {unreplicated:?} revisions");
    let f = b.status.as_ref().and_then(|s| s.failover.clone()).expect("failover");
    let cbl = cb.listen;
    let secs = tokio::task::spawn_blocking(move || metric(&cbl, "drctl_last_failover_duration_seconds")).await.expect("join");
    eprintln!("failover {:?} → {:?}: {secs:?}s", f.started_at, f.completed_at);
    assert!(secs.is_some_and(|s| s > 0.0 && s < 120.0), "drctl_last_failover_duration_seconds {secs:?}");
}
