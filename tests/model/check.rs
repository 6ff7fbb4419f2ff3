//! Breadth-first search over the model's events (so every counterexample is a shortest one),
//! states deduplicated by a canonical hash, and the safety properties of DESIGN.md §5 checked on
//! every state reached.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use drctl::topology::{FinalSyncPolicy, Phase};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::world::{parse_events, world_line, Effect, Event, Outcome, World, NAMES, TICK};

/// Keys whose string values are instants: canonicalised to their age (capped), so states that
/// differ only in when the clock started are one.
const TIME_KEYS: [&str; 6] = ["startedAt", "finishedAt", "completedAt", "acknowledgedAt", "peerDownSince", "acceptedAt"];

/// A canonical 128-bit hash of what the successors of a state depend on: specs (with the
/// generation only as "same as the abandoned failover's"), statuses with instants as capped ages,
/// fences, links and DNS.
pub fn canon(w: &World) -> u128 {
    let mut parts = Vec::with_capacity(2);
    for c in &w.c {
        let mut v = serde_json::to_value(&c.status).expect("status serialises");
        for under in ["/failover/abandoned/generation", "/demotion/stoodDown/generation"] {
            if let Some(ab) = v.pointer_mut(under) {
                *ab = Value::Bool(ab.as_i64() == Some(c.generation));
            }
        }
        ages(&mut v, w.now);
        parts.push(serde_json::json!([c.spec, c.fenced, c.held, c.override_demotion, v]));
    }
    let text = serde_json::json!([parts, w.reach, w.dns]).to_string();
    let half = |seed: u64| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        text.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

fn ages(v: &mut Value, now: i64) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if TIME_KEYS.contains(&k.as_str()) => {
                        if let Ok(t) = s.parse::<Timestamp>() {
                            let age = super::world::ts(now).as_second() - t.as_second();
                            *x = Value::from(age.clamp(-TICK, TICK));
                        }
                    }
                    _ => ages(x, now),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| ages(x, now)),
        _ => {}
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Both acting primary while the link is up.
    S1,
    /// No primary after fault-free settling.
    S3,
    /// DNS not on the primary after fault-free settling.
    S4,
    /// A FinalSync imported from a peer of a lower term.
    S2,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub root: &'static str,
    pub events: Vec<Event>,
    pub detail: String,
}

/// Named starting points, each reached from a fresh pair by fault-free flips and settling.
pub fn root(name: &str, policy: FinalSyncPolicy) -> World {
    let mut w = World::fresh(policy);
    let flips: &[usize] = match name {
        "fresh" => return w,
        "a-primary" => &[],
        "b-primary" => &[1],
        "a-again" => &[1, 0],
        _ => panic!("unknown root {name}"),
    };
    settle(&mut w, &mut |_| {});
    for &to in flips {
        w.apply(Event::ApplyBoth { to });
        settle(&mut w, &mut |_| {});
    }
    w
}

pub const ROOTS: [&str; 4] = ["fresh", "a-primary", "b-primary", "a-again"];

/// Fair fault-free reconciles (a, then b); the clock ticks only when a round changed nothing
/// (what waits on a timeout is woken). Settled when a round and a tick change nothing; false
/// when `SETTLE_ROUNDS` were not enough. `seen` is called on every state passed through.
pub const SETTLE_ROUNDS: usize = 30;
pub fn settle(w: &mut World, seen: &mut dyn FnMut(&World)) -> bool {
    let mut idle = false;
    for _ in 0..SETTLE_ROUNDS {
        let before = canon(w);
        for on in 0..2 {
            w.apply(Event::Reconcile { on, outcome: Outcome::Ok });
            seen(w);
        }
        if canon(w) != before {
            idle = false;
            continue;
        }
        if idle {
            return true;
        }
        idle = true;
        w.apply(Event::Tick);
    }
    false
}

/// The one Primary/Steady acting cluster, if exactly one.
fn the_primary(w: &World) -> Option<usize> {
    let p: Vec<usize> = (0..2).filter(|&x| w.acting_primary(x) && w.c[x].status.phase == Some(Phase::Steady)).collect();
    (p.len() == 1).then(|| p[0])
}

/// Quiescent: the link up and both have applied the same spec, so the pair must settle.
fn quiescent(w: &World) -> bool {
    w.link_up() && w.c[0].spec == w.c[1].spec
}

fn both_acting(w: &World) -> bool {
    w.acting_primary(0) && w.acting_primary(1)
}

/// Two acting primaries that one reconcile of each (the link up) brings down to one: a cluster
/// that had not looked since a flip or a heal. Counted as a transient overlap, not an S1
/// violation (its bound is a requeue interval).
pub fn resolves_at_next_look(w: &World) -> bool {
    let mut next = w.clone();
    next.apply(Event::Run { on: 0 });
    next.apply(Event::Run { on: 1 });
    !both_acting(&next)
}

/// The properties of one state reached by an event with `effect`: S1 and S2 at once, S3 and S4
/// after fault-free settling from a quiescent state.
fn check_state(w: &World, effect: &Effect) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    if w.link_up() && both_acting(w) && !resolves_at_next_look(w) {
        out.push((Kind::S1, "both acting primary (Primary, unfenced) with the link up, and still after a reconcile of each".to_string()));
    }
    if let Some(s) = &effect.stale_import {
        out.push((Kind::S2, format!("FinalSync from a lower term: {s}")));
    }
    if quiescent(w) && !both_acting(w) {
        let mut settled = w.clone();
        let (mut n, mut s1) = (0, None);
        let fixpoint = settle(&mut settled, &mut |s| {
            n += 1;
            if s1.is_none() && both_acting(s) {
                s1 = Some(n);
            }
        });
        if let Some(n) = s1 {
            out.push((Kind::S1, format!("both acting primary after {n} fault-free reconciles")));
        }
        let end = format!("settled{}: {}", if fixpoint { "" } else { " (no fixpoint)" }, world_line(&settled));
        match the_primary(&settled) {
            None => out.push((Kind::S3, format!("no single Primary/Steady acting cluster after fault-free reconciles; {end}"))),
            Some(p) if settled.dns != p => out.push((Kind::S4, format!("DNS points at {} but {} is the primary; {end}", NAMES[settled.dns], NAMES[p]))),
            Some(_) => {}
        }
    }
    out
}

pub struct Report {
    pub states: usize,
    pub depth: usize,
    pub seconds: f64,
    pub violations: BTreeMap<Kind, Vec<Violation>>,
    pub counts: BTreeMap<Kind, usize>,
    /// States where both act as primary while partitioned (fully or one way).
    pub partition_overlaps: usize,
    /// States where both act as primary with the link up until their next reconcile.
    pub transient_overlaps: usize,
    /// The longest run of consecutive events (on the shortest path) with both acting.
    pub max_overlap_run: u8,
}

struct Node {
    parent: u32,
    event: Event,
    root: u8,
}

/// Explores every event sequence up to `depth` from each root, keeping the first `keep`
/// (shortest) counterexamples of each kind.
pub fn explore(depth: usize, one_way: bool, policy: FinalSyncPolicy, keep: usize) -> Report {
    let start = Instant::now();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut run: Vec<u8> = Vec::new();
    let mut frontier: Vec<(u32, World)> = Vec::new();
    let mut report = Report {
        states: 0,
        depth,
        seconds: 0.0,
        violations: BTreeMap::new(),
        counts: BTreeMap::new(),
        partition_overlaps: 0,
        transient_overlaps: 0,
        max_overlap_run: 0,
    };
    let roots: Vec<World> = ROOTS.iter().map(|r| root(r, policy)).collect();
    for (i, w) in roots.iter().enumerate() {
        if seen.insert(canon(w)) {
            nodes.push(Node { parent: u32::MAX, event: Event::Tick, root: i as u8 });
            run.push(0);
            frontier.push(((nodes.len() - 1) as u32, w.clone()));
        }
    }
    for level in 0..depth {
        let mut next = Vec::new();
        for (id, w) in &frontier {
            for e in w.events(one_way) {
                let mut s = w.clone();
                let effect = s.apply(e);
                // A stale import is a property of the transition: check it even on a known state.
                let h = canon(&s);
                let new = seen.insert(h);
                if !new && effect.stale_import.is_none() {
                    continue;
                }
                nodes.push(Node { parent: *id, event: e, root: nodes[*id as usize].root });
                let nid = (nodes.len() - 1) as u32;
                let overlap = both_acting(&s);
                let r = if overlap { run[*id as usize].saturating_add(1) } else { 0 };
                run.push(r);
                if overlap && !s.link_up() {
                    report.partition_overlaps += 1;
                } else if overlap && resolves_at_next_look(&s) {
                    report.transient_overlaps += 1;
                }
                report.max_overlap_run = report.max_overlap_run.max(r);
                for (kind, detail) in check_state(&s, &effect) {
                    *report.counts.entry(kind).or_default() += 1;
                    let root = ROOTS[nodes[nid as usize].root as usize];
                    let list = report.violations.entry(kind).or_default();
                    if list.iter().filter(|v| v.root == root).count() < keep {
                        let events = path(&nodes, nid);
                        list.push(Violation { root, events, detail });
                    }
                }
                if new && level + 1 < depth {
                    next.push((nid, s));
                }
            }
        }
        report.states = seen.len();
        eprintln!("depth {}: {} states, frontier {}, {:.1}s", level + 1, seen.len(), next.len(), start.elapsed().as_secs_f64());
        frontier = next;
        if frontier.is_empty() {
            break;
        }
    }
    report.states = seen.len();
    report.seconds = start.elapsed().as_secs_f64();
    report
}

fn path(nodes: &[Node], mut id: u32) -> Vec<Event> {
    let mut out = Vec::new();
    while nodes[id as usize].parent != u32::MAX {
        out.push(nodes[id as usize].event);
        id = nodes[id as usize].parent;
    }
    out.reverse();
    out
}

/// The events one by one from `root`, with each state's summary, as a counterexample is printed.
pub fn trace(root_name: &str, policy: FinalSyncPolicy, events: &[Event]) -> String {
    let mut w = root(root_name, policy);
    let mut out = String::new();
    let _ = writeln!(out, "  root {root_name}: {}", world_line(&w));
    for (i, e) in events.iter().enumerate() {
        let effect = w.apply(*e);
        let action = effect.action.map(|a| format!(" -> {a}")).unwrap_or_default();
        let _ = writeln!(out, "  {:>2}. {e}{action}\n      {}", i + 1, world_line(&w));
    }
    out
}

/// Replays `events` (the printed form) from `root_name` and returns the violations met: S1 and S2
/// on every state, S3/S4 by settling from the last one (and from every quiescent one).
pub fn replay(root_name: &'static str, events: &str, policy: FinalSyncPolicy) -> Vec<(Kind, String)> {
    let events = parse_events(events).expect("events parse");
    let mut w = root(root_name, policy);
    let mut out = Vec::new();
    for e in events {
        let effect = w.apply(e);
        for (kind, detail) in check_state(&w, &effect) {
            out.push((kind, format!("after {e}: {detail}")));
        }
    }
    out
}
