//! The model world and its executor: two globals, what each has applied and recorded, the link
//! between them, where DNS points and a logical clock. A reconcile plans with the real
//! `decide::plan::plan` and applies the real `transition` / runbook functions; only the I/O the
//! executor would do (peer reads, etcd, DNS, the mirror) is modelled, abstractly.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use drctl::controller::peer::peer_state;
use drctl::decide::demote::{demote_verdict, override_named, DemoteFacts, DemoteVerdict, Override, PeerAnswer};
use drctl::decide::fence::{fence_wanted, stopped_sync, FenceFacts};
use drctl::decide::memory::{restore, Memory};
use drctl::decide::plan::{
    asks_dns, final_sync_left, in_progress, old_primary_may_be_newer, plan, step_record, Action, FinalSyncBound, Observed, PeerView, Step,
};
use drctl::decide::transition::{failover_done, record_step, transition, Facts};
use drctl::decide::wait::{elapsed_since, wait_verdict, WaitVerdict};
use drctl::topology::{DRTopology, DRTopologyStatus, DemoteOverridden, FinalSyncPolicy, Phase, Role, RpoToken, StepState};
use k8s_openapi::jiff::Timestamp;

pub const NAMES: [&str; 2] = ["a", "b"];
/// One Tick of the clock; demotionTimeout, finalSyncTimeout and the DNS verify timeout are all
/// this long, so a Tick is what turns a wait into its timeout verdict.
pub const TICK: i64 = 120;
const EPOCH: i64 = 1_700_000_000;

pub fn ts(t: i64) -> Timestamp {
    Timestamp::from_second(EPOCH + t).expect("model clock in range")
}

/// The peer's DRTopology as `peer::observe` reads it: only spec.primary and the status vary.
static TEMPLATE: LazyLock<DRTopology> =
    LazyLock::new(|| serde_saphyr::from_str(include_str!("../../examples/minimal.yaml")).expect("examples/minimal.yaml parses"));

#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Index into NAMES of the `spec.primary` Argo CD has applied here.
    pub spec: usize,
    pub generation: i64,
    pub status: DRTopologyStatus,
    /// The fence as last applied (`fence_as_declared` before an action, lifted by StopSync).
    pub fenced: bool,
    /// Ghost state, never seen by the controllers: the highest term this cluster ever held (a
    /// lost status forgets it, the data it served does not).
    pub held: i64,
    /// The role memory ConfigMap (`controller::status::StatusWriter` writes it with every status
    /// that changes it; a lost status starts from it).
    pub memory: Memory,
    /// The operator's `drctl.io/override-demotion` on this cluster's DRTopology (its value), and
    /// whether the peer's etcd is quiet when the Demote step watches it.
    pub override_demotion: Option<(String, bool)>,
}

#[derive(Clone, Debug)]
pub struct World {
    pub c: [Cluster; 2],
    /// `reach[x]`: cluster x can read its peer (the peer API and the mirror's etcd source).
    pub reach: [bool; 2],
    /// The cluster whose VIP the platform domain resolves to.
    pub dns: usize,
    /// Seconds since the model epoch.
    pub now: i64,
    pub policy: FinalSyncPolicy,
}

/// How a nondeterministic step ends; ignored by actions it does not apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// FinalSync's catch-up or check fails this attempt.
    SyncFails,
    /// The controller dies inside SwitchDNS after the DNS update went out, before it recorded it.
    CrashAfterDns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Argo CD applies `spec.primary: to` on cluster `on` only.
    Apply {
        on: usize,
        to: usize,
    },
    /// Argo CD applies `spec.primary: to` on both.
    ApplyBoth {
        to: usize,
    },
    /// One reconcile of cluster `on`: plan once, execute the action once.
    Reconcile {
        on: usize,
        outcome: Outcome,
    },
    /// A whole `reconcile_loop` of `on`: plan and act until the plan says wait (no peer step
    /// between), as a reconcile the peer does not interleave with runs.
    Run {
        on: usize,
    },
    Partition,
    /// Only `blind` loses sight of its peer (the peer still reads it).
    OneWay {
        blind: usize,
    },
    Heal,
    Tick,
    /// The DRTopology of `on` deleted and re-applied: its status back to the default.
    LoseStatus {
        on: usize,
    },
    /// The operator annotates `on` to override its Demote step, naming the peer at the term
    /// its waiting step shows, with the peer's writers stopped (`quiet`) or not.
    Override {
        on: usize,
        quiet: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::Apply { on, to } => write!(f, "apply({}:{})", NAMES[on], NAMES[to]),
            Event::ApplyBoth { to } => write!(f, "apply(ab:{})", NAMES[to]),
            Event::Reconcile { on, outcome: Outcome::Ok } => write!(f, "rec({})", NAMES[on]),
            Event::Reconcile { on, outcome: Outcome::SyncFails } => write!(f, "rec({}:syncfail)", NAMES[on]),
            Event::Reconcile { on, outcome: Outcome::CrashAfterDns } => write!(f, "rec({}:crashdns)", NAMES[on]),
            Event::Run { on } => write!(f, "run({})", NAMES[on]),
            Event::Partition => f.write_str("partition"),
            Event::OneWay { blind } => write!(f, "oneway({}blind)", NAMES[blind]),
            Event::Heal => f.write_str("heal"),
            Event::Tick => f.write_str("tick"),
            Event::LoseStatus { on } => write!(f, "lose({})", NAMES[on]),
            Event::Override { on, quiet: true } => write!(f, "override({})", NAMES[on]),
            Event::Override { on, quiet: false } => write!(f, "override({}:written)", NAMES[on]),
        }
    }
}

fn name_index(s: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == s)
}

/// Parses the space-separated form `Display` prints, so a counterexample is pasted as is.
pub fn parse_events(s: &str) -> Result<Vec<Event>, String> {
    s.split_whitespace().map(parse_event).collect()
}

fn parse_event(tok: &str) -> Result<Event, String> {
    let bad = || format!("unknown event {tok:?}");
    let arg = |prefix: &str| tok.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
    Ok(match tok {
        "partition" => Event::Partition,
        "heal" => Event::Heal,
        "tick" => Event::Tick,
        _ if tok.starts_with("apply(") => {
            let (on, to) = arg("apply(").and_then(|a| a.split_once(':')).ok_or_else(bad)?;
            let to = name_index(to).ok_or_else(bad)?;
            match on {
                "ab" => Event::ApplyBoth { to },
                _ => Event::Apply { on: name_index(on).ok_or_else(bad)?, to },
            }
        }
        _ if tok.starts_with("rec(") => {
            let a = arg("rec(").ok_or_else(bad)?;
            let (on, outcome) = match a.split_once(':') {
                None => (a, Outcome::Ok),
                Some((on, "syncfail")) => (on, Outcome::SyncFails),
                Some((on, "crashdns")) => (on, Outcome::CrashAfterDns),
                Some(_) => return Err(bad()),
            };
            Event::Reconcile { on: name_index(on).ok_or_else(bad)?, outcome }
        }
        _ if tok.starts_with("oneway(") => {
            let a = arg("oneway(").and_then(|a| a.strip_suffix("blind")).ok_or_else(bad)?;
            Event::OneWay { blind: name_index(a).ok_or_else(bad)? }
        }
        _ if tok.starts_with("run(") => Event::Run { on: arg("run(").and_then(name_index).ok_or_else(bad)? },
        _ if tok.starts_with("lose(") => Event::LoseStatus { on: arg("lose(").and_then(name_index).ok_or_else(bad)? },
        _ if tok.starts_with("override(") => {
            let a = arg("override(").ok_or_else(bad)?;
            let (on, quiet) = match a.split_once(':') {
                None => (a, true),
                Some((on, "written")) => (on, false),
                Some(_) => return Err(bad()),
            };
            Event::Override { on: name_index(on).ok_or_else(bad)?, quiet }
        }
        _ => return Err(bad()),
    })
}

/// What one event did, for the printed trace and the S2 approximation.
#[derive(Clone, Debug, Default)]
pub struct Effect {
    pub action: Option<String>,
    /// A FinalSync caught up from a peer whose term is below ours.
    pub stale_import: Option<String>,
}

impl World {
    /// Both fresh (no status), `spec.primary: a` applied on both, DNS at a.
    pub fn fresh(policy: FinalSyncPolicy) -> World {
        let c = Cluster { spec: 0, generation: 1, ..Default::default() };
        World { c: [c.clone(), c], reach: [true, true], dns: 0, now: 0, policy }
    }

    pub fn link_up(&self) -> bool {
        self.reach[0] && self.reach[1]
    }

    /// Unfenced and role Primary.
    pub fn acting_primary(&self, x: usize) -> bool {
        self.c[x].status.role == Some(Role::Primary) && !self.c[x].fenced
    }

    /// The events that change something (or may), in a fixed order.
    pub fn events(&self, one_way: bool) -> Vec<Event> {
        let mut ev = Vec::new();
        for to in 0..2 {
            for on in 0..2 {
                if self.c[on].spec != to {
                    ev.push(Event::Apply { on, to });
                }
            }
            if self.c[0].spec != to && self.c[1].spec != to {
                ev.push(Event::ApplyBoth { to });
            }
        }
        for on in 0..2 {
            ev.push(Event::Run { on });
            ev.push(Event::Reconcile { on, outcome: Outcome::Ok });
            // Only the alternatives this reconcile would meet.
            match self.next_action(on) {
                Action::RunStep(Step::FinalSync) if self.reach[on] && self.token(on) => ev.push(Event::Reconcile { on, outcome: Outcome::SyncFails }),
                Action::RunStep(Step::SwitchDns) => ev.push(Event::Reconcile { on, outcome: Outcome::CrashAfterDns }),
                _ => {}
            }
        }
        if self.reach != [false, false] {
            ev.push(Event::Partition);
        }
        if one_way {
            for blind in 0..2 {
                if self.reach[blind] && self.reach[1 - blind] {
                    ev.push(Event::OneWay { blind });
                }
            }
        }
        if !self.link_up() {
            ev.push(Event::Heal);
        }
        ev.push(Event::Tick);
        for on in 0..2 {
            if self.c[on].status != DRTopologyStatus::default() {
                ev.push(Event::LoseStatus { on });
            }
        }
        // Only where the runbook tells an operator to: a Demote waiting on a peer that answers
        // as primary (its controller not acting), and not already overridden for its term.
        for on in 0..2 {
            let peer = &self.c[1 - on].status;
            let value = format!("{}/{}", NAMES[1 - on], peer.term);
            let waiting = self.reach[on] && peer.role == Some(Role::Primary) && self.next_action(on) == Action::RunStep(Step::Demote);
            if waiting && self.c[on].override_demotion.as_ref().is_none_or(|(v, _)| *v != value) {
                ev.push(Event::Override { on, quiet: true });
                ev.push(Event::Override { on, quiet: false });
            }
        }
        ev
    }

    fn token(&self, x: usize) -> bool {
        self.c[x].status.failover.as_ref().is_some_and(|f| f.rpo_token.is_some())
    }

    /// What cluster `x` would plan now (without acting).
    pub fn next_action(&self, x: usize) -> Action {
        let mut w = self.clone();
        let (st, peer) = w.observe(x);
        w.plan_for(x, &st, peer)
    }

    pub fn apply(&mut self, e: Event) -> Effect {
        match e {
            Event::Apply { on, to } => self.flip(on, to),
            Event::ApplyBoth { to } => {
                self.flip(0, to);
                self.flip(1, to);
            }
            Event::Reconcile { on, outcome } => {
                let effect = self.reconcile(on, outcome).0;
                self.remember_terms();
                return effect;
            }
            Event::Run { on } => {
                let effect = self.run(on);
                self.remember_terms();
                return effect;
            }
            Event::Partition => self.reach = [false, false],
            Event::OneWay { blind } => self.reach[blind] = false,
            Event::Heal => self.reach = [true, true],
            Event::Tick => self.now += TICK,
            // `controller::remembering`: an empty status starts from the role memory.
            Event::LoseStatus { on } => {
                let m = &self.c[on].memory;
                self.c[on].status = if m.is_empty() { DRTopologyStatus::default() } else { restore(m) };
            }
            Event::Override { on, quiet } => {
                let value = format!("{}/{}", NAMES[1 - on], self.c[1 - on].status.term);
                self.c[on].override_demotion = Some((value, quiet));
            }
        }
        Effect::default()
    }

    fn remember_terms(&mut self) {
        for c in &mut self.c {
            c.held = c.held.max(c.status.term);
        }
    }

    fn flip(&mut self, on: usize, to: usize) {
        if self.c[on].spec != to {
            self.c[on].spec = to;
            self.c[on].generation += 1;
        }
    }

    /// `observe_peer`: the peer as `peer::observe` maps it, and the peer term learnt.
    fn observe(&mut self, x: usize) -> (DRTopologyStatus, PeerView) {
        let y = 1 - x;
        let mut st = self.c[x].status.clone();
        let peer = if self.reach[x] {
            let mut t = TEMPLATE.clone();
            t.spec.primary = NAMES[self.c[y].spec].to_string();
            // Both run this build, which publishes itself with every status write (a pair of
            // two versions is tests/upgrade.rs's: the older one's decisions are not in this build).
            t.status = Some(DRTopologyStatus { controller: Some(drctl::decide::skew::ours()), ..self.c[y].status.clone() });
            PeerView::Reachable(peer_state(&t, NAMES[y]))
        } else {
            PeerView::Unreachable
        };
        if let Some(p) = peer.reachable() {
            st.peer_term = st.peer_term.max(p.term);
        }
        (st, peer)
    }

    fn plan_for(&self, x: usize, st: &DRTopologyStatus, peer: PeerView) -> Action {
        let mut o = Observed {
            self_name: NAMES[x],
            peer_name: NAMES[1 - x],
            spec_primary: NAMES[self.c[x].spec],
            invalid: false,
            dry_run: false,
            status: Some(st),
            peer,
            dns_here: None,
            dns_at_peer: false,
            now: ts(self.now),
            final_sync: FinalSyncBound { timeout: Duration::from_secs(TICK as u64), policy: self.policy },
            generation: Some(self.c[x].generation),
            retry: None,
        };
        if asks_dns(&o) {
            (o.dns_here, o.dns_at_peer) = (Some(self.dns == x), self.dns != x);
        }
        plan(&o)
    }

    /// `reconcile_loop`: rounds until one requeues (bounded: a runbook is ten steps).
    fn run(&mut self, x: usize) -> Effect {
        let mut all = Effect::default();
        let mut actions = Vec::new();
        for _ in 0..16 {
            let (e, more) = self.reconcile(x, Outcome::Ok);
            actions.extend(e.action);
            all.stale_import = all.stale_import.or(e.stale_import);
            if !more {
                break;
            }
        }
        all.action = Some(actions.join(", "));
        all
    }

    /// One round of `reconcile_loop`: observe, plan, fence, act. True when `act` would continue
    /// (`Next::Continue`) rather than requeue.
    fn reconcile(&mut self, x: usize, outcome: Outcome) -> (Effect, bool) {
        let (mut st, peer) = self.observe(x);
        let action = self.plan_for(x, &st, peer.clone());
        if action != Action::Hold {
            self.c[x].fenced = fence_wanted(&FenceFacts {
                enabled: true,
                declared_primary: self.c[x].spec == x,
                dry_run: false,
                role: st.role,
                stopped_sync: stopped_sync(&st, NAMES[x]),
                failing_over: in_progress(Some(&st), NAMES[x]).is_some(),
                holds_primary: matches!(action, Action::HoldPrimary { .. }),
                stands_down: matches!(action, Action::StandDown { .. }),
            });
        }
        let mut facts = Facts {
            self_name: NAMES[x],
            peer_name: NAMES[1 - x],
            spec_primary: NAMES[self.c[x].spec],
            generation: Some(self.c[x].generation),
            retry: None,
            now: ts(self.now),
            ..Default::default()
        };
        match &action {
            Action::StayPrimary | Action::HoldPrimary { .. } => facts.dns_here = Some(self.dns == x),
            Action::AbandonFailover { .. } | Action::AbortFailover { .. } | Action::AcknowledgeDemotion { .. } | Action::StandDown { .. } => {
                facts.own_head = Some((1, format!("etcd-{}", NAMES[x])))
            }
            _ => {}
        }
        st = transition(&action, &st, &facts);
        let mut effect = Effect { action: Some(short_action(&action)), stale_import: None };
        match &action {
            Action::RunStep(step) => effect.stale_import = self.run_step(x, &mut st, *step, &peer, outcome),
            // The controller's executor: the provider switches the record back here.
            Action::RepairDns { .. } => self.dns = x,
            // The standby executor: a healthy mirror records its sync status and phase Steady.
            Action::Mirror | Action::HoldAbandoned { mirror: true, .. } => {
                st.sync.get_or_insert_with(Default::default);
                st.phase = Some(Phase::Steady);
            }
            _ => {}
        }
        let more = match &action {
            Action::BootstrapPrimary
            | Action::StartFailover { .. }
            | Action::AbandonFailover { .. }
            | Action::ProceedWithoutFinalSync { .. }
            | Action::AbortFailover { .. }
            | Action::AcknowledgeDemotion { .. }
            | Action::StandDown { .. }
            | Action::RepairDns { .. }
            | Action::ReclaimPrimary { .. } => true,
            // A finished step continues; so does a failed FinalSync whose bound is used (the
            // planner applies the policy at once).
            Action::RunStep(step) => st.failover.as_ref().and_then(|f| step_record(f, *step)).is_some_and(|r| match r.state {
                StepState::Succeeded | StepState::Skipped => true,
                StepState::Failed => {
                    *step == Step::FinalSync
                        && st.failover.as_ref().and_then(|f| final_sync_left(f, ts(self.now), Duration::from_secs(TICK as u64))) == Some(Duration::ZERO)
                }
                _ => false,
            }),
            _ => false,
        };
        // Conditions carry wall-clock times and are never planned on: not part of the model.
        st.conditions.clear();
        self.c[x].memory = Memory::of(&st);
        self.c[x].status = st;
        (effect, more)
    }

    /// `Runbook::run`: Running before, the outcome after; returns the S2 flag of a FinalSync.
    fn run_step(&mut self, x: usize, st: &mut DRTopologyStatus, step: Step, peer: &PeerView, outcome: Outcome) -> Option<String> {
        let now = ts(self.now);
        let f = st.failover.as_mut()?;
        if !step_record(f, step).is_some_and(|s| s.state == StepState::Running) {
            record_step(f, step, StepState::Running, Some(step.describe().to_string()), now);
        }
        st.phase = Some(Phase::FailingOver);
        let mut stale = None;
        let result = match step {
            Step::Preflight => {
                if let Some(p) = peer.reachable() {
                    record_peer_term(st, p.term);
                }
                Ok((StepState::Succeeded, "preflight".to_string()))
            }
            Step::Demote => self.demote(x, st, peer),
            Step::FinalSync => {
                // The terms each side really held (ghost state): a lost status of the peer
                // does not make its data older.
                let own = self.c[x].held.max(st.term);
                let peer_term = self.c[1 - x].held;
                let f = st.failover.as_mut()?;
                match f.rpo_token.clone() {
                    None => {
                        f.rpo_token = Some(RpoToken::default());
                        Ok((StepState::Skipped, "old primary unreachable: nothing to catch up".to_string()))
                    }
                    // `Runbook::final_sync`: nothing imported from an old primary of a lower term.
                    Some(_) if !old_primary_may_be_newer(st.term, f.peer_term) => {
                        Ok((StepState::Skipped, "the old primary's term is below ours: nothing imported".to_string()))
                    }
                    Some(ack) => {
                        if own > peer_term {
                            stale = Some(format!("{} (term {own}) imports from {} (term {peer_term})", NAMES[x], NAMES[1 - x]));
                        }
                        if !self.reach[x] || outcome == Outcome::SyncFails {
                            if let Some(t) = f.rpo_token.as_mut() {
                                t.missed_keys = None;
                            }
                            Err("catch-up did not finish".to_string())
                        } else {
                            f.rpo_token = Some(RpoToken { missed_keys: Some(0), applied_revision: 1, ..ack });
                            Ok((StepState::Succeeded, "caught up; check: 0 missed".to_string()))
                        }
                    }
                }
            }
            Step::StopSync => {
                self.c[x].fenced = false;
                Ok((StepState::Succeeded, "no longer replicating; fence lifted".to_string()))
            }
            Step::PreHooks | Step::PostHooks => Ok((StepState::Skipped, "no hooks".to_string())),
            Step::Restart => Ok((StepState::Skipped, "no restarts".to_string())),
            Step::SwitchDns => {
                self.dns = x;
                if outcome == Outcome::CrashAfterDns {
                    // Recorded Running only: the next reconcile runs it again.
                    return None;
                }
                Ok((StepState::Succeeded, "switched".to_string()))
            }
            Step::VerifyDns => {
                let waited = step_waited(st, step, now);
                match wait_verdict(self.dns == x, waited, Duration::from_secs(TICK as u64)) {
                    WaitVerdict::Passed => Ok((StepState::Succeeded, "verified".to_string())),
                    WaitVerdict::Again(_) => Ok((StepState::Running, "waiting for DNS".to_string())),
                    WaitVerdict::TimedOut => Err("DNS did not answer here in time".to_string()),
                }
            }
            Step::Done => {
                let g = Some(self.c[x].generation);
                let term = failover_done(st, now, g);
                Ok((StepState::Succeeded, format!("primary, term {term}")))
            }
        };
        let f = st.failover.as_mut()?;
        match result {
            Ok((state, msg)) => record_step(f, step, state, Some(msg), now),
            Err(msg) => {
                record_step(f, step, StepState::Failed, Some(msg), now);
                st.phase = Some(Phase::Degraded);
            }
        }
        stale
    }

    /// `Runbook::demote`: the peer's token, or a whole timeout unreachable in a row.
    fn demote(&self, x: usize, st: &mut DRTopologyStatus, peer: &PeerView) -> Result<(StepState, String), String> {
        let now = ts(self.now);
        let waited = step_waited(st, Step::Demote, now);
        let f = st.failover.as_mut().ok_or("no failover")?;
        match peer.reachable() {
            Some(_) => f.peer_down_since = None,
            None => {
                f.peer_down_since.get_or_insert_with(|| now.to_string());
            }
        }
        let down_for = f.peer_down_since.as_deref().map(|at| elapsed_since(at, now).expect("model timestamps parse"));
        if let Some(p) = peer.reachable() {
            record_peer_term(st, p.term);
        }
        let answer = peer.reachable().map(PeerAnswer::Answered).unwrap_or(PeerAnswer::Down);
        let timeout = Duration::from_secs(TICK as u64);
        let mut facts = DemoteFacts { self_name: NAMES[x], answer, down_for, waited, timeout, override_: Override::Absent };
        // `Runbook::demote`: the override is looked at only when it would change the verdict.
        if let (Some(p), DemoteVerdict::Wait | DemoteVerdict::NotAcknowledged) = (peer.reachable(), demote_verdict(&facts)) {
            if let Some((value, quiet)) = &self.c[x].override_demotion {
                if override_named(Some(value), NAMES[1 - x], p.term) == Ok(true) {
                    facts.override_ = if *quiet { Override::Quiet } else { Override::Written };
                }
            }
        }
        match demote_verdict(&facts) {
            DemoteVerdict::Wait => Ok((StepState::Running, "waiting for the old primary".to_string())),
            DemoteVerdict::Overridden => {
                let f = st.failover.as_mut().ok_or("no failover")?;
                // The peer's etcd head after the quiet window.
                f.rpo_token = Some(RpoToken { source_cluster_id: format!("etcd-{}", NAMES[1 - x]), final_revision: Some(1), ..Default::default() });
                let annotation = self.c[x].override_demotion.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
                f.demote_overridden = Some(DemoteOverridden { annotation, accepted_at: now.to_string(), final_revision: 1, quiet_seconds: 5 });
                Ok((StepState::Succeeded, "overridden".to_string()))
            }
            DemoteVerdict::OverrideRefused => Ok((StepState::Running, "override refused: the old primary is written".to_string())),
            DemoteVerdict::Disaster => Ok((StepState::Succeeded, "old primary unreachable: disaster failover".to_string())),
            DemoteVerdict::Acknowledged => {
                let p = peer.reachable().ok_or("acknowledged without an answer")?;
                let f = st.failover.as_mut().ok_or("no failover")?;
                f.rpo_token = Some(RpoToken {
                    source_cluster_id: p.token_cluster_id.clone().unwrap_or_default(),
                    final_revision: p.final_revision,
                    ..Default::default()
                });
                Ok((StepState::Succeeded, "acknowledged".to_string()))
            }
            DemoteVerdict::NeverPrimary => Ok((StepState::Succeeded, "never primary: nothing to demote".to_string())),
            DemoteVerdict::NotAcknowledged => Err("not acknowledged within demotionTimeout".to_string()),
            DemoteVerdict::ConfigurationError => Err("configuration error".to_string()),
        }
    }
}

fn record_peer_term(st: &mut DRTopologyStatus, term: i64) {
    if let Some(f) = st.failover.as_mut() {
        f.peer_term = Some(f.peer_term.unwrap_or(0).max(term));
    }
}

fn step_waited(st: &DRTopologyStatus, step: Step, now: Timestamp) -> Duration {
    st.failover
        .as_ref()
        .and_then(|f| step_record(f, step))
        .and_then(|s| s.started_at.as_deref())
        .map(|at| elapsed_since(at, now).expect("model timestamps parse"))
        .unwrap_or_default()
}

/// The action's variant (and step), without its prose.
pub fn short_action(a: &Action) -> String {
    match a {
        Action::RunStep(s) => format!("RunStep({s})"),
        Action::AcknowledgeDemotion { new_primary } => format!("AcknowledgeDemotion({new_primary})"),
        Action::HoldAbandoned { mirror, .. } => format!("HoldAbandoned(mirror={mirror})"),
        other => {
            let s = format!("{other:?}");
            s.split([' ', '(', '{']).next().unwrap_or_default().to_string()
        }
    }
}

/// One line per cluster: spec, role/phase, term, fence, demotion token, latest failover.
pub fn summary(w: &World, x: usize) -> String {
    let c = &w.c[x];
    let s = &c.status;
    let role = s.role.map(|r| format!("{r:?}")).unwrap_or_else(|| "-".into());
    let phase = s.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into());
    let demotion = s.demotion.as_ref().map(|d| format!(" demoted-for={}", d.new_primary)).unwrap_or_default();
    let failover = s
        .failover
        .as_ref()
        .map(|f| {
            let state = if f.completed_at.is_some() {
                "completed".to_string()
            } else if f.abandoned.is_some() {
                "abandoned".to_string()
            } else if f.aborted.is_some() {
                "aborted".to_string()
            } else {
                let next = drctl::decide::plan::next_step(f);
                let st = step_record(f, next).map(|r| format!("{:?}", r.state)).unwrap_or_else(|| "Pending".into());
                format!("at {next} ({st})")
            };
            format!(" failover={}->{} {state}", f.from, f.to)
        })
        .unwrap_or_default();
    let fence = if c.fenced { "fenced" } else { "unfenced" };
    format!("{}: spec={} {role}/{phase} term={} {fence}{demotion}{failover}", NAMES[x], NAMES[c.spec], s.term)
}

pub fn world_line(w: &World) -> String {
    let link = match w.reach {
        [true, true] => "up".to_string(),
        [false, false] => "down".to_string(),
        [a, _] => format!("one-way ({} blind)", if a { "b" } else { "a" }),
    };
    format!("{} | {} | link {link}, dns->{}, t={}", summary(w, 0), summary(w, 1), NAMES[w.dns], w.now)
}
