//! Deterministic simulation of two nodes running the real state machine and the real
//! packet codec over a simulated network and clock, with seeded random faults: loss per
//! direction, full, one-way and single-channel partitions, host and process crashes,
//! stalls, clock jumps, corrupted, replayed and garbage datagrams, link and monitor
//! failures, admin actions, and a tie-breaker and a fence that can fail.
//!
//! After every simulated event it checks:
//! - (a) no failover takeover is started while some channel was clean both ways and the
//!   peer was running for the whole dead time before it;
//! - (b) at most one VIP holder among nodes that hear each other (both ways, or one way)
//!   for longer than [`CONVERGE`];
//! - (c) every `AddVip` carries a term already on the node's disk, higher than any term
//!   that node held before; and VIP add/remove alternate;
//! - (d) the adaptive dead time stays within the configured floor and cap.
//!
//! And per scenario: a crashed peer is replaced within the dead time plus one interval (at
//! the defaults too), and a peer whose loop stalled once under the floor is not taken over
//! at its next, longer stalls while the dead time remembers the last one.

use super::machine::{AcquireReason, Action, Event, EventKind, Failback, Machine, MachineConfig, MachineInit};
use super::packet::{Keyring, NodeName, Role, decode, encode, next_boot_id};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

/// Longest time two holders that hear each other may coexist.
const CONVERGE: Duration = Duration::from_secs(3);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What the simulated world looks like.
#[derive(Clone)]
struct SimConfig {
    channels: usize,
    interval: Duration,
    dead_time: Duration,
    dead_time_max: Duration,
    tiebreaker: bool,
    fence: bool,
    failback: Failback,
    /// Initial loss per channel, per direction (0: node 0 to node 1).
    loss: Vec<[f64; 2]>,
    /// Inject random faults at this mean interval (None: only scripted faults).
    faults_every: Option<Duration>,
    /// Chance a delivered datagram is also delivered again later (a replay).
    dup: f64,
    /// Chance a datagram has one bit flipped in flight.
    corrupt: f64,
    /// How long a durable write of the term takes (ms, uniform in this range).
    disk_ms: std::ops::Range<u64>,
}

impl SimConfig {
    fn new(channels: usize) -> SimConfig {
        SimConfig {
            channels,
            interval: ms(100),
            dead_time: ms(500),
            dead_time_max: secs(2),
            tiebreaker: false,
            fence: false,
            failback: Failback::Manual,
            loss: vec![[0.0; 2]; channels],
            faults_every: None,
            dup: 0.0,
            corrupt: 0.0,
            disk_ms: 1..15,
        }
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Tick {
        node: usize,
        generation: u64,
    },
    Deliver {
        to: usize,
        channel: usize,
        bytes: Vec<u8>,
    },
    /// An adapter's answer, valid only for the node incarnation that asked.
    Answer {
        node: usize,
        incarnation: u64,
        event: Event,
    },
    /// The disk write of a term completes.
    DiskWrite {
        node: usize,
        incarnation: u64,
        term: u64,
    },
    Restart {
        node: usize,
    },
    Unstall {
        node: usize,
    },
    Fault,
    EndCut {
        channel: usize,
        dir: usize,
    },
    EndLoss {
        channel: usize,
        dir: usize,
        loss: f64,
    },
    LinkUp {
        node: usize,
    },
    MonitorOk {
        node: usize,
    },
    TiebreakerUp,
}

struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    // Reversed: BinaryHeap pops the earliest event, ties in scheduling order.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// When something was last "bad" (unclean channel direction, unavailable node).
#[derive(Clone, Copy, Default)]
struct History {
    bad_since: Option<Duration>,
    last_bad_end: Duration,
}

impl History {
    fn set(&mut self, bad: bool, now: Duration) {
        match (bad, self.bad_since) {
            (true, None) => self.bad_since = Some(now),
            (false, Some(_)) => {
                self.bad_since = None;
                self.last_bad_end = now;
            }
            _ => {}
        }
    }

    fn good_since(&self, from: Duration) -> bool {
        self.bad_since.is_none() && self.last_bad_end <= from
    }
}

#[derive(Clone, Copy, Default)]
struct Dir {
    cut: u32,
    loss: f64,
}

struct Node {
    cfg: MachineConfig,
    keys: Keyring,
    m: Option<Machine>,
    incarnation: u64,
    generation: u64,
    disk_term: u64,
    disk_peer_boot: u64,
    disk_boot: u64,
    vip: bool,
    stalled: bool,
    buffered: Vec<Ev>,
    offset_ns: i128,
    link_up: bool,
    monitor_failing: bool,
    last_add_term: u64,
}

impl Node {
    fn local(&self, now: Duration) -> Duration {
        let ns = (now.as_nanos() as i128 + self.offset_ns).max(0);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn running(&self) -> bool {
        self.m.is_some() && !self.stalled
    }
}

/// Counters and measurements of one run.
#[derive(Default, Debug, Clone)]
struct SimStats {
    takeovers: Vec<(Duration, usize, AcquireReason, u64)>,
    false_takeovers: u64,
    releases: u64,
    garps: u64,
    rejected: u64,
    accepted: u64,
    faults: u64,
    graceful_stops: u64,
    max_both_hold: Duration,
}

struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<Node>,
    net: Vec<[Dir; 2]>,
    clean: Vec<[History; 2]>,
    avail: [History; 2],
    tiebreaker_up: bool,
    fence_works: bool,
    both_hold_since: Option<Duration>,
    recorded: VecDeque<(usize, usize, Vec<u8>)>,
    trace: VecDeque<String>,
    stats: SimStats,
}

impl Sim {
    fn new(cfg: SimConfig, seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let key: [u8; 32] = rng.random();
        let keys = Keyring::new(&[(1, key)]).expect("random key");
        let names = ["head-a", "head-b"];
        let nodes = (0..2)
            .map(|i| {
                let role = if i == 0 { Role::Primary } else { Role::Standby };
                let chans = (0..cfg.channels).map(|c| format!("net{c}")).collect();
                let mut mc = MachineConfig::new(NodeName::new(names[i]).expect("name"), role, [150, 100][i], chans);
                mc.interval = cfg.interval;
                mc.dead_time = cfg.dead_time;
                mc.dead_time_max = cfg.dead_time_max;
                mc.tiebreaker = cfg.tiebreaker;
                mc.fence = cfg.fence;
                mc.failback = cfg.failback;
                Node {
                    cfg: mc,
                    keys: keys.clone(),
                    m: None,
                    incarnation: 0,
                    generation: 0,
                    disk_term: 0,
                    disk_peer_boot: 0,
                    disk_boot: 0,
                    vip: false,
                    stalled: false,
                    buffered: Vec::new(),
                    offset_ns: 10_000_000_000_000 + i as i128 * 3_000_000_000,
                    link_up: true,
                    monitor_failing: false,
                    last_add_term: 0,
                }
            })
            .collect();
        let net = cfg.loss.iter().map(|l| [Dir { cut: 0, loss: l[0] }, Dir { cut: 0, loss: l[1] }]).collect();
        let mut sim = Sim {
            clean: vec![[History::default(); 2]; cfg.channels],
            avail: [History::default(); 2],
            cfg,
            rng,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            net,
            tiebreaker_up: true,
            fence_works: true,
            both_hold_since: None,
            recorded: VecDeque::new(),
            trace: VecDeque::new(),
            stats: SimStats::default(),
        };
        sim.update_truth();
        sim.start(0);
        sim.at(ms(7), Ev::Restart { node: 1 });
        if let Some(every) = sim.cfg.faults_every {
            sim.at(every, Ev::Fault);
        }
        sim
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at: self.now + delay, seq: self.seq, ev });
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= 300 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>10.3}s {line}", self.now.as_secs_f64()));
    }

    fn fail(&self, what: &str) -> ! {
        let mut s = String::new();
        for l in &self.trace {
            let _ = writeln!(s, "{l}");
        }
        panic!("INVARIANT VIOLATED at {:?}: {what}\n--- last events ---\n{s}", self.now);
    }

    // ---- ground truth ----

    fn dir_clean(&self, c: usize, d: usize) -> bool {
        self.net[c][d].cut == 0 && self.net[c][d].loss == 0.0
    }

    fn dir_hears(&self, c: usize, d: usize) -> bool {
        self.net[c][d].cut == 0 && self.net[c][d].loss <= 0.5
    }

    fn update_truth(&mut self) {
        for c in 0..self.cfg.channels {
            for d in 0..2 {
                let bad = !self.dir_clean(c, d);
                self.clean[c][d].set(bad, self.now);
            }
        }
        for n in 0..2 {
            let bad = !self.nodes[n].running();
            self.avail[n].set(bad, self.now);
        }
    }

    /// (a): some channel clean both ways and the peer up throughout [from, now].
    fn provably_alive(&self, peer: usize, from: Duration) -> bool {
        self.avail[peer].good_since(from)
            && (0..self.cfg.channels).any(|c| self.clean[c][0].good_since(from) && self.clean[c][1].good_since(from))
    }

    fn check_holders(&mut self) {
        let both_run = self.nodes[0].running() && self.nodes[1].running();
        let hears = |s: &Sim, d: usize| (0..s.cfg.channels).any(|c| s.dir_hears(c, d));
        let some_hearing = both_run && (hears(self, 0) || hears(self, 1));
        if self.nodes[0].vip && self.nodes[1].vip && some_hearing {
            let since = *self.both_hold_since.get_or_insert(self.now);
            let held = self.now - since;
            self.stats.max_both_hold = self.stats.max_both_hold.max(held);
            if held > CONVERGE {
                let both_ways = hears(self, 0) && hears(self, 1);
                self.fail(&format!(
                    "(b) both hold the VIP for {held:?} while hearing each other (both ways: {both_ways})"
                ));
            }
        } else {
            self.both_hold_since = None;
        }
    }

    // ---- node lifecycle ----

    fn start(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.incarnation += 1;
        node.stalled = false;
        node.buffered.clear();
        let wall_us = u64::try_from(node.local(self.now).as_micros()).unwrap_or(u64::MAX);
        let boot = next_boot_id(node.disk_boot, wall_us);
        node.disk_boot = boot;
        let init =
            MachineInit { boot, term: node.disk_term, peer_boot_floor: node.disk_peer_boot, vip_present: node.vip };
        let local = node.local(self.now);
        let (m, actions) = Machine::new(node.cfg.clone(), init, local);
        node.m = Some(m);
        let (link_up, failing) = (node.link_up, node.monitor_failing);
        self.log(format!("node {n} starts (boot {boot:#x}, term {}, vip {})", init.term, init.vip_present));
        self.update_truth();
        self.execute(n, actions);
        if !link_up {
            self.feed(n, Event::LinkState { up: false });
        }
        if failing {
            self.feed(n, Event::MonitorEscalation { monitor: "svc".into() });
        }
        self.schedule_tick(n);
    }

    /// Host crash (power off: the VIP goes with it) or process crash (the VIP stays).
    fn crash(&mut self, n: usize, host: bool, down_for: Duration) {
        if self.nodes[n].m.is_none() {
            return;
        }
        let node = &mut self.nodes[n];
        node.m = None;
        node.stalled = false;
        node.buffered.clear();
        if host {
            node.vip = false;
        }
        self.log(format!("node {n} {} crash for {down_for:?}", if host { "host" } else { "process" }));
        self.update_truth();
        self.at(down_for, Ev::Restart { node: n });
    }

    fn schedule_tick(&mut self, n: usize) {
        let Some(m) = &self.nodes[n].m else { return };
        let wait = m.next_wakeup_in();
        self.nodes[n].generation += 1;
        let generation = self.nodes[n].generation;
        self.at(wait, Ev::Tick { node: n, generation });
    }

    fn feed(&mut self, n: usize, event: Event) {
        let local = self.nodes[n].local(self.now);
        let Some(m) = self.nodes[n].m.as_mut() else { return };
        let actions = m.handle(event, local);
        let (floor, cap) = (self.cfg.dead_time, self.cfg.dead_time_max.max(self.cfg.dead_time));
        let dead = m.dead_time();
        if dead < floor || dead > cap {
            self.fail(&format!("(d) node {n}'s dead time {dead:?} is outside {floor:?}..={cap:?}"));
        }
        self.execute(n, actions);
        self.schedule_tick(n);
    }

    // ---- actions ----

    fn execute(&mut self, n: usize, actions: Vec<Action>) {
        for a in actions {
            self.execute_one(n, a);
        }
    }

    fn answer(&mut self, n: usize, delay: Duration, event: Event) {
        let incarnation = self.nodes[n].incarnation;
        self.at(delay, Ev::Answer { node: n, incarnation, event });
    }

    fn execute_one(&mut self, n: usize, a: Action) {
        let peer = 1 - n;
        match a {
            Action::Send { channel, heartbeat } => {
                let bytes = encode(&heartbeat, &self.nodes[n].keys).to_vec();
                self.transmit(n, channel, bytes);
            }
            Action::PersistTerm(term) | Action::ReserveTerm(term) => {
                let d = ms(self.rng.random_range(self.cfg.disk_ms.clone()));
                let incarnation = self.nodes[n].incarnation;
                self.at(d, Ev::DiskWrite { node: n, incarnation, term });
            }
            Action::PersistPeerBoot(b) => self.nodes[n].disk_peer_boot = self.nodes[n].disk_peer_boot.max(b),
            Action::ProbeTieBreaker => {
                let reachable = self.tiebreaker_up && self.nodes[n].link_up;
                let d = ms(self.rng.random_range(1..30));
                self.answer(n, d, Event::TieBreakerResult { reachable });
            }
            Action::RunFence => {
                let d = ms(self.rng.random_range(50..300));
                let ok = self.fence_works;
                if ok {
                    let down = ms(self.rng.random_range(5_000..20_000));
                    self.log(format!("node {n} fences node {peer}"));
                    self.crash(peer, true, down);
                }
                self.answer(n, d, Event::FenceResult { ok });
            }
            Action::AddVip { term, reason } => self.add_vip(n, term, reason),
            Action::RemoveVip => {
                if !self.nodes[n].vip {
                    self.fail(&format!("node {n} removes a VIP it does not have"));
                }
                self.nodes[n].vip = false;
                self.stats.releases += 1;
                self.log(format!("node {n} removes the VIP"));
            }
            Action::SendGarp => self.stats.garps += 1,
            Action::RunStartHooks => {
                let d = ms(self.rng.random_range(5..50));
                self.answer(n, d, Event::StartHooksDone { ok: true });
            }
            Action::RunStopHooks => {
                let d = ms(self.rng.random_range(5..100));
                self.answer(n, d, Event::StopHooksDone { ok: true });
            }
            Action::RecordEvent { kind, message } => {
                if kind == EventKind::TakeoverStarted && message.starts_with("failover") {
                    let from = self.now.saturating_sub(self.cfg.dead_time);
                    if self.provably_alive(peer, from) {
                        self.fail(&format!("(a) node {n} starts a failover while a channel is up and the peer runs"));
                    }
                }
                self.log(format!("node {n} {kind:?}: {message}"));
            }
            Action::Alarm { alarm, raised, message } => {
                self.log(format!("node {n} alarm {alarm:?} {}: {message}", if raised { "raised" } else { "cleared" }));
            }
            Action::Exit => {
                if self.nodes[n].vip {
                    self.fail(&format!("node {n} exits holding the VIP"));
                }
                self.nodes[n].m = None;
                self.stats.graceful_stops += 1;
                let down = ms(self.rng.random_range(500..10_000));
                self.log(format!("node {n} exits (graceful stop) for {down:?}"));
                self.update_truth();
                self.at(down, Ev::Restart { node: n });
            }
        }
    }

    fn add_vip(&mut self, n: usize, term: u64, reason: AcquireReason) {
        let node = &self.nodes[n];
        if node.vip {
            self.fail(&format!("node {n} adds a VIP it already has"));
        }
        if node.disk_term < term {
            self.fail(&format!("(c) node {n} adds the VIP at term {term} but its disk holds {}", node.disk_term));
        }
        if term <= node.last_add_term {
            self.fail(&format!("(c) node {n} reuses term {term} (held {} before)", node.last_add_term));
        }
        let peer_alive = self.nodes[1 - n].running();
        if reason == AcquireReason::PeerLeft && self.nodes[1 - n].vip {
            self.fail(&format!("node {n} takes over from a leaving peer that still holds the VIP"));
        }
        let node = &mut self.nodes[n];
        node.vip = true;
        node.last_add_term = term;
        self.stats.takeovers.push((self.now, n, reason, term));
        if reason == AcquireReason::Failover && peer_alive {
            self.stats.false_takeovers += 1;
        }
        self.log(format!("node {n} ADDS THE VIP term {term} ({reason:?})"));
    }

    fn transmit(&mut self, from: usize, channel: usize, mut bytes: Vec<u8>) {
        let to = 1 - from;
        let dir = self.net[channel][from];
        if dir.cut > 0 || self.rng.random_bool(dir.loss.clamp(0.0, 1.0)) {
            return;
        }
        if self.rng.random_bool(self.cfg.corrupt) {
            let bit = self.rng.random_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        if self.recorded.len() >= 2000 {
            self.recorded.pop_front();
        }
        self.recorded.push_back((to, channel, bytes.clone()));
        if self.rng.random_bool(self.cfg.dup) {
            let later = ms(self.rng.random_range(1..3000));
            self.at(later, Ev::Deliver { to, channel, bytes: bytes.clone() });
        }
        let latency = Duration::from_micros(self.rng.random_range(100..2000));
        self.at(latency, Ev::Deliver { to, channel, bytes });
    }

    // ---- the event loop ----

    fn run_until(&mut self, end: Duration) {
        while let Some(q) = self.queue.peek() {
            if q.at > end {
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            self.now = q.at;
            self.dispatch(q.ev);
            self.check_holders();
        }
        self.now = end;
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, generation } => {
                let nd = &self.nodes[node];
                if nd.generation == generation && nd.running() {
                    self.feed(node, Event::Tick);
                }
            }
            Ev::Deliver { to, .. } | Ev::Answer { node: to, .. } if self.nodes[to].stalled => {
                self.nodes[to].buffered.push(ev);
            }
            Ev::Deliver { to, channel, bytes } => self.deliver(to, channel, &bytes),
            Ev::Answer { node, incarnation, event } => {
                if self.nodes[node].incarnation == incarnation {
                    self.feed(node, event);
                }
            }
            Ev::DiskWrite { node, incarnation, term } => {
                // The write lands only if the process that issued it still runs.
                if self.nodes[node].incarnation == incarnation && self.nodes[node].m.is_some() {
                    self.nodes[node].disk_term = self.nodes[node].disk_term.max(term);
                    self.answer(node, Duration::ZERO, Event::TermPersisted(term));
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].m.is_none() {
                    self.start(node);
                }
            }
            Ev::Unstall { node } => self.unstall(node),
            Ev::Fault => {
                self.random_fault();
                if let Some(every) = self.cfg.faults_every {
                    let mean = every.as_secs_f64();
                    let next = -mean * (1.0 - self.rng.random::<f64>()).ln();
                    self.at(Duration::from_secs_f64(next.min(mean * 5.0)), Ev::Fault);
                }
            }
            Ev::EndCut { channel, dir } => {
                self.net[channel][dir].cut = self.net[channel][dir].cut.saturating_sub(1);
                self.update_truth();
            }
            Ev::EndLoss { channel, dir, loss } => {
                if self.net[channel][dir].loss == loss {
                    self.net[channel][dir].loss = self.cfg.loss[channel][dir];
                    self.update_truth();
                }
            }
            Ev::LinkUp { node } => {
                self.nodes[node].link_up = true;
                self.feed(node, Event::LinkState { up: true });
            }
            Ev::MonitorOk { node } => {
                self.nodes[node].monitor_failing = false;
                self.feed(node, Event::MonitorRecovered { monitor: "svc".into() });
            }
            Ev::TiebreakerUp => self.tiebreaker_up = true,
        }
    }

    fn deliver(&mut self, to: usize, channel: usize, bytes: &[u8]) {
        if self.nodes[to].m.is_none() {
            return;
        }
        let event = match decode(bytes, &self.nodes[to].keys) {
            Ok(d) => Event::Heartbeat { channel, heartbeat: d.heartbeat, queued: Duration::ZERO },
            Err(error) => Event::Rejected { channel, error },
        };
        self.feed(to, event);
    }

    fn stall(&mut self, n: usize, d: Duration) {
        if !self.nodes[n].running() {
            return;
        }
        self.nodes[n].stalled = true;
        self.log(format!("node {n} stalls for {d:?}"));
        self.update_truth();
        self.at(d, Ev::Unstall { node: n });
    }

    fn unstall(&mut self, n: usize) {
        if !self.nodes[n].stalled {
            return;
        }
        self.nodes[n].stalled = false;
        self.update_truth();
        // The loop wakes up late: first a tick (as a timer would), then the queued input.
        self.feed(n, Event::Tick);
        for ev in std::mem::take(&mut self.nodes[n].buffered) {
            self.dispatch(ev);
        }
    }

    fn jump_clock(&mut self, n: usize, by_ns: i128) {
        let node = &mut self.nodes[n];
        node.offset_ns = (node.offset_ns + by_ns).max(1_000_000_000_000);
        self.log(format!("node {n} clock jumps {:+.3}s", by_ns as f64 / 1e9));
    }

    fn cut(&mut self, channel: usize, dir: usize, d: Duration) {
        self.net[channel][dir].cut += 1;
        self.update_truth();
        self.at(d, Ev::EndCut { channel, dir });
    }

    fn random_fault(&mut self) {
        self.stats.faults += 1;
        let r = &mut self.rng;
        let kind = r.random_range(0..16);
        let n = r.random_range(0..2usize);
        let c = r.random_range(0..self.cfg.channels);
        let d = r.random_range(0..2usize);
        let short = ms(r.random_range(100..8_000));
        let long = ms(r.random_range(500..15_000));
        match kind {
            0 | 1 => {
                let loss = [0.1, 0.2, 0.5, 0.9, 1.0][self.rng.random_range(0..5)];
                self.log(format!("fault: loss {loss} on channel {c} dir {d} for {short:?}"));
                self.net[c][d].loss = loss;
                self.update_truth();
                self.at(short, Ev::EndLoss { channel: c, dir: d, loss });
            }
            2 => {
                self.log(format!("fault: channel {c} dir {d} cut for {short:?}"));
                self.cut(c, d, short);
            }
            3 => {
                self.log(format!("fault: channel {c} cut both ways for {short:?}"));
                self.cut(c, 0, short);
                self.cut(c, 1, short);
            }
            4 => {
                self.log(format!("fault: one-way partition, dir {d} for {short:?}"));
                (0..self.cfg.channels).for_each(|c| self.cut(c, d, short));
            }
            5 => {
                self.log(format!("fault: full partition for {short:?}"));
                (0..self.cfg.channels).for_each(|c| {
                    self.cut(c, 0, short);
                    self.cut(c, 1, short);
                });
            }
            6 => self.crash(n, true, long),
            7 => {
                let down = ms(self.rng.random_range(50..3_000));
                self.crash(n, false, down);
            }
            8 => {
                let st = ms(self.rng.random_range(50..3_000));
                self.stall(n, st);
            }
            9 => {
                let by = self.rng.random_range(-30_000_000_000i128..30_000_000_000);
                self.jump_clock(n, by);
            }
            10 => {
                if self.nodes[n].link_up {
                    self.log(format!("fault: node {n} public link down for {long:?}"));
                    self.nodes[n].link_up = false;
                    self.feed(n, Event::LinkState { up: false });
                    self.at(long, Ev::LinkUp { node: n });
                }
            }
            11 => {
                if !self.nodes[n].monitor_failing {
                    self.log(format!("fault: node {n} service fails for {long:?}"));
                    self.nodes[n].monitor_failing = true;
                    self.feed(n, Event::MonitorEscalation { monitor: "svc".into() });
                    self.at(long, Ev::MonitorOk { node: n });
                }
            }
            12 => {
                let ev = if self.rng.random_bool(0.5) { Event::AdminTakeover } else { Event::AdminRelease };
                self.log(format!("fault: admin {ev:?} on node {n}"));
                self.feed(n, ev);
            }
            13 => self.hostile_datagram(n, c),
            14 => {
                if self.nodes[n].running() {
                    self.log(format!("fault: node {n} stops gracefully (SIGTERM)"));
                    self.feed(n, Event::Shutdown);
                }
            }
            _ => {
                self.log(format!("fault: tie-breaker down for {long:?}, fence works: {}", !self.fence_works));
                self.tiebreaker_up = false;
                self.fence_works = !self.fence_works;
                self.at(long, Ev::TiebreakerUp);
            }
        }
    }

    /// Garbage, a truncation, or a replay of a recorded datagram (old boot, old sequence).
    fn hostile_datagram(&mut self, n: usize, c: usize) {
        let which = self.rng.random_range(0..3);
        let bytes = match which {
            0 => {
                let len = self.rng.random_range(0..400);
                (0..len).map(|_| self.rng.random()).collect()
            }
            1 => match self.recorded.front() {
                Some((_, _, b)) => b[..self.rng.random_range(0..b.len())].to_vec(),
                None => return,
            },
            _ => {
                let candidates: Vec<_> = self.recorded.iter().filter(|(to, ..)| *to == n).collect();
                if candidates.is_empty() {
                    return;
                }
                let i = self.rng.random_range(0..candidates.len());
                let (_, ch, b) = candidates[i].clone();
                self.log(format!("fault: replay of an old datagram to node {n} on channel {ch}"));
                self.at(Duration::ZERO, Ev::Deliver { to: n, channel: ch, bytes: b });
                return;
            }
        };
        self.at(Duration::ZERO, Ev::Deliver { to: n, channel: c, bytes });
    }

    fn holder(&self) -> Option<usize> {
        match (self.nodes[0].vip, self.nodes[1].vip) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    }

    fn collect_rx_stats(&mut self) {
        for n in &self.nodes {
            if let Some(m) = &n.m {
                self.stats.rejected += m.stats().rejected();
                self.stats.accepted += m.stats().accepted;
            }
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn takeover_times(cfg: &SimConfig, runs: u64) -> Vec<Duration> {
    (0..runs)
        .map(|seed| {
            let mut sim = Sim::new(cfg.clone(), 1000 + seed);
            sim.run_until(secs(3));
            assert_eq!(sim.holder(), Some(0), "seed {seed}: the primary holds after a cold start");
            let crash_at = secs(3) + ms(sim.rng.random_range(0..1000));
            sim.run_until(crash_at);
            sim.crash(0, true, secs(3600));
            sim.run_until(crash_at + secs(5));
            let t = sim.stats.takeovers.iter().find(|(t, n, ..)| *n == 1 && *t > crash_at).map(|(t, ..)| *t);
            let t = t.unwrap_or_else(|| panic!("seed {seed}: no takeover within 5 s"));
            t - crash_at
        })
        .collect()
}

/// 40 crashes of the primary under `cfg`: each replaced within the dead time (less one
/// interval, as the last heartbeat may come just before) plus one interval and 20 ms of
/// processing; prints the spread. Returns the upper bound.
fn crash_replaced_within_the_dead_time(cfg: &SimConfig, what: &str) -> Duration {
    let mut v = takeover_times(cfg, 40);
    let (lo, hi) = (cfg.dead_time - cfg.interval, cfg.dead_time + cfg.interval + ms(20));
    for t in &v {
        assert!(*t >= lo && *t <= hi, "takeover after {t:?}, expected {lo:?}..{hi:?}");
    }
    let med = median(&mut v);
    println!(
        "SIM takeover after primary crash ({what}, 2 channels, 40 runs): min {:?} median {med:?} max {:?}",
        v[0],
        v[v.len() - 1]
    );
    hi
}

#[test]
fn takeover_time_after_crash() {
    let cfg = SimConfig::new(2);
    let hi = crash_replaced_within_the_dead_time(&cfg, "interval 100ms, dead_time 500ms");
    let mut full = SimConfig::new(2);
    full.tiebreaker = true;
    full.fence = true;
    let mut v = takeover_times(&full, 40);
    for t in &v {
        assert!(*t <= hi + ms(330), "takeover with checks after {t:?}");
    }
    let med = median(&mut v);
    println!(
        "SIM takeover with tie-breaker probe (1-30 ms) and fencing (50-300 ms): min {:?} median {med:?} max {:?}",
        v[0],
        v[v.len() - 1]
    );
}

/// The product's default timings (50 ms interval, 200 ms floor, 2 s cap).
fn defaults(channels: usize) -> SimConfig {
    let d = MachineConfig::new(NodeName::new("x").expect("name"), Role::Primary, 100, Vec::new());
    SimConfig {
        interval: d.interval,
        dead_time: d.dead_time,
        dead_time_max: d.dead_time_max,
        ..SimConfig::new(channels)
    }
}

#[test]
fn takeover_time_after_crash_at_the_defaults() {
    crash_replaced_within_the_dead_time(&defaults(2), "defaults: interval 50ms, dead_time 200ms");
}

/// Each fsync of the term takes 300-600 ms (a disk under load): the standby reserved its
/// next term long before the crash, so it is replaced as fast as with a quick disk.
#[test]
fn takeover_does_not_wait_for_a_slow_disk() {
    let cfg = SimConfig { disk_ms: 300..600, ..defaults(2) };
    crash_replaced_within_the_dead_time(&cfg, "defaults, every term write 300-600 ms");
}

/// The primary's loop stalls once for 120 ms (a gap under the 200 ms floor), then every
/// 10 s for 200, 300 and 400 ms: each stall lengthens the standby's dead time past the
/// next one, so it waits them all out. The same script with adaptation off takes over:
/// the test can tell them apart.
#[test]
fn a_peer_that_stalled_once_is_waited_for_at_its_next_stalls() {
    let run = |adapt: bool| {
        let mut cfg = defaults(2);
        if !adapt {
            cfg.dead_time_max = cfg.dead_time;
        }
        let mut sim = Sim::new(cfg, 48);
        sim.run_until(secs(3));
        assert_eq!(sim.holder(), Some(0));
        sim.stall(0, ms(120));
        sim.run_until(secs(5));
        for (i, d) in [200, 300, 400].into_iter().enumerate() {
            sim.stall(0, ms(d));
            sim.run_until(secs(15 + i as u64 * 10));
        }
        sim.stats.takeovers.len()
    };
    assert_eq!(run(true), 1, "only the cold start: the stalls were waited for");
    assert!(run(false) > 1, "with a fixed 200 ms dead time a 350 ms stall is a takeover");
}

/// One simulated hour with lossy channels, nobody crashes: every failover is false.
fn false_takeovers(cfg: SimConfig, seed: u64) -> SimStats {
    let mut sim = Sim::new(cfg, seed);
    sim.run_until(secs(3600));
    sim.collect_rx_stats();
    sim.stats
}

#[test]
fn false_takeovers_under_loss() {
    let mut results = Vec::new();
    for loss in [0.2, 0.5] {
        let mut two = SimConfig::new(2);
        two.loss[0] = [loss, loss];
        let s = false_takeovers(two, 7);
        println!(
            "SIM 1 h, 2 channels, {:.0}% loss both ways on one, other clean: {} false takeovers ({} heartbeats accepted)",
            loss * 100.0,
            s.false_takeovers,
            s.accepted
        );
        assert_eq!(s.false_takeovers, 0);
        assert_eq!(s.takeovers.len(), 1, "only the cold-start acquisition");
        let mut one = SimConfig::new(1);
        one.loss[0] = [loss, loss];
        let adaptive = false_takeovers(one.clone(), 7);
        one.dead_time_max = one.dead_time;
        let fixed = false_takeovers(one, 7);
        println!(
            "SIM 1 h, 1 channel, {:.0}% loss both ways: {} false takeovers with the adaptive dead time \
             (longest double hold {:?}), {} with it fixed at the floor",
            loss * 100.0,
            adaptive.false_takeovers,
            adaptive.max_both_hold,
            fixed.false_takeovers
        );
        assert!(adaptive.false_takeovers <= fixed.false_takeovers, "adapting made a lossy channel flap more");
        results.push(fixed.false_takeovers);
    }
    // Not a goal but a check that the loss model bites: one channel at 50% with a fixed
    // dead time must flap (adapting to the loss is what keeps it from flapping).
    assert!(results[1] > 0, "single channel at 50% loss never flapped: the simulated loss is not applied");
}

fn random_run(cfg: SimConfig, seed: u64, minutes: u64) -> SimStats {
    let mut sim = Sim::new(cfg, seed);
    sim.run_until(secs(minutes * 60));
    // Quiesce: faults stop mattering after they end; the pair must settle on one holder.
    sim.cfg.faults_every = None;
    sim.queue.retain(|q| !matches!(q.ev, Ev::Fault));
    sim.run_until(secs(minutes * 60 + 60));
    sim.collect_rx_stats();
    let healed = sim.nodes.iter().all(|n| n.m.is_some()) && sim.net.iter().all(|d| d[0].cut == 0 && d[1].cut == 0);
    if healed && sim.holder().is_none() {
        sim.fail("after the faults ended nobody (or both) holds the VIP");
    }
    sim.stats
}

fn random_suite(name: &str, base: &SimConfig, seeds: std::ops::Range<u64>, minutes: u64) {
    for seed in seeds {
        let s = random_run(base.clone(), seed, minutes);
        let failovers = s.takeovers.iter().filter(|t| t.2 == AcquireReason::Failover).count();
        println!(
            "SIM {name} seed {seed}: {minutes} min, {} faults, {} graceful stops, {} acquisitions \
             ({failovers} failovers), {} releases, {} GARPs, {} datagrams refused, longest double hold {:?}",
            s.faults,
            s.graceful_stops,
            s.takeovers.len(),
            s.releases,
            s.garps,
            s.rejected,
            s.max_both_hold
        );
    }
}

#[test]
fn random_faults_two_channels() {
    let mut cfg = SimConfig::new(2);
    cfg.faults_every = Some(secs(4));
    cfg.dup = 0.01;
    cfg.corrupt = 0.005;
    random_suite("2ch", &cfg, 0..12, 10);
}

#[test]
fn random_faults_with_tiebreaker_fence_and_failback() {
    let mut cfg = SimConfig::new(2);
    cfg.faults_every = Some(secs(4));
    cfg.tiebreaker = true;
    cfg.fence = true;
    cfg.failback = Failback::Delayed(secs(5));
    cfg.dup = 0.01;
    random_suite("2ch+tb+fence+failback", &cfg, 100..106, 10);
}

#[test]
fn random_faults_single_and_three_channels() {
    let mut one = SimConfig::new(1);
    one.faults_every = Some(secs(4));
    random_suite("1ch", &one, 200..206, 10);
    let mut three = SimConfig::new(3);
    three.faults_every = Some(secs(3));
    three.corrupt = 0.01;
    random_suite("3ch", &three, 300..304, 10);
}

/// SIGTERM on the holder: it releases, says goodbye, and the standby takes over well
/// inside the dead time, by `PeerLeft`, never by a failover.
#[test]
fn graceful_stop_hands_over_without_waiting() {
    for seed in 0..20 {
        let mut cfg = SimConfig::new(2);
        cfg.tiebreaker = true;
        cfg.fence = true;
        let mut sim = Sim::new(cfg, 500 + seed);
        sim.run_until(secs(3));
        assert_eq!(sim.holder(), Some(0), "seed {seed}");
        sim.feed(0, Event::Shutdown);
        // Stop hooks take up to 100 ms, the term write up to 15 ms: far below 500 ms.
        sim.run_until(secs(3) + ms(300));
        assert_eq!(sim.holder(), Some(1), "seed {seed}");
        assert_eq!(sim.stats.graceful_stops, 1, "seed {seed}");
        let last = sim.stats.takeovers.last().map(|t| (t.1, t.2));
        assert_eq!(last, Some((1, AcquireReason::PeerLeft)), "seed {seed}");
        assert_eq!(sim.stats.false_takeovers, 0);
    }
}

#[test]
fn one_way_partition_keeps_one_holder() {
    for dir in 0..2 {
        let mut sim = Sim::new(SimConfig::new(2), 42);
        sim.run_until(secs(3));
        assert_eq!(sim.holder(), Some(0));
        // Every channel loses one direction for a minute.
        for c in 0..2 {
            sim.cut(c, dir, secs(60));
        }
        sim.run_until(secs(60));
        let holder = sim.holder();
        assert!(holder.is_some(), "dir {dir}: nobody holds during a one-way partition");
        if dir == 0 {
            // The standby does not hear the primary: it takes over, the primary yields.
            assert_eq!(holder, Some(1));
        } else {
            // The standby still hears the primary: nothing happens at all.
            assert_eq!(holder, Some(0));
            assert_eq!(sim.stats.takeovers.len(), 1);
        }
        assert!(sim.stats.max_both_hold <= ms(1000), "{:?}", sim.stats.max_both_hold);
    }
}

/// Each direction survives on a different channel only: both nodes hear each other, and
/// the any-channel echo lets them prove it, so a cold start still elects the primary.
#[test]
fn cross_channel_asymmetry() {
    let mut sim = Sim::new(SimConfig::new(2), 50);
    sim.cut(0, 1, secs(120));
    sim.cut(1, 0, secs(120));
    sim.run_until(secs(60));
    assert_eq!(sim.holder(), Some(0));
    assert_eq!(sim.stats.takeovers.len(), 1);
    let m = sim.nodes[0].m.as_ref().expect("primary runs");
    // ... while each channel on its own is rightly reported down.
    assert!(m.channels().iter().all(|c| !c.up), "{:?}", m.channels());
}

#[test]
fn full_partition_heals_to_the_higher_term() {
    let mut sim = Sim::new(SimConfig::new(2), 43);
    sim.run_until(secs(3));
    for c in 0..2 {
        sim.cut(c, 0, secs(10));
        sim.cut(c, 1, secs(10));
    }
    sim.run_until(secs(12));
    assert!(sim.nodes[0].vip && sim.nodes[1].vip, "without tie-breaker or fence both hold in a partition");
    let garps_before = sim.stats.garps;
    sim.run_until(secs(14));
    // Term 2 (the standby's takeover) beats term 1: the primary released.
    assert_eq!(sim.holder(), Some(1));
    assert!(sim.stats.garps > garps_before, "winner re-announced ARP");
    assert!(sim.stats.max_both_hold < secs(1), "{:?}", sim.stats.max_both_hold);
}

#[test]
fn tiebreaker_and_link_check_stop_the_isolated_node() {
    for case in ["tie-breaker unreachable", "public link down"] {
        let mut cfg = SimConfig::new(2);
        cfg.tiebreaker = true;
        let mut sim = Sim::new(cfg, 44);
        sim.run_until(secs(3));
        // The standby is cut off from the primary and from the world: it must not take over.
        if case == "public link down" {
            sim.nodes[1].link_up = false;
            sim.feed(1, Event::LinkState { up: false });
        } else {
            sim.tiebreaker_up = false;
        }
        for c in 0..2 {
            sim.cut(c, 0, secs(20));
            sim.cut(c, 1, secs(20));
        }
        sim.run_until(secs(20));
        assert_eq!(sim.holder(), Some(0), "{case}");
        assert_eq!(sim.stats.takeovers.len(), 1, "{case}");
        assert!(sim.nodes[1].m.as_ref().is_some_and(|m| m.alarms().contains(&super::machine::Alarm::TakeoverBlocked)));
    }
}

#[test]
fn stalls_and_clock_jumps_do_not_cause_takeovers() {
    let mut sim = Sim::new(SimConfig::new(2), 45);
    sim.run_until(secs(3));
    for i in 0..20u64 {
        sim.stall(1, ms(300 + i * 150));
        sim.run_until(secs(4 + i * 5));
        sim.jump_clock(1, if i % 2 == 0 { 20_000_000_000 } else { -20_000_000_000 });
        sim.feed(1, Event::Tick);
        sim.run_until(secs(6 + i * 5));
    }
    assert_eq!(sim.stats.takeovers.len(), 1, "{:?}", sim.stats.takeovers);
    assert_eq!(sim.holder(), Some(0));
}

#[test]
fn replayed_heartbeats_do_not_hide_a_death() {
    let mut sim = Sim::new(SimConfig::new(2), 46);
    sim.run_until(secs(3));
    sim.crash(0, true, secs(3600));
    // An attacker replays the primary's recorded heartbeats to the standby every 50 ms.
    let old: Vec<_> = sim.recorded.iter().filter(|(to, ..)| *to == 1).cloned().collect();
    for (i, (to, ch, b)) in old.into_iter().rev().take(40).enumerate() {
        sim.at(ms(i as u64 * 50), Ev::Deliver { to, channel: ch, bytes: b });
    }
    sim.run_until(secs(6));
    assert_eq!(sim.holder(), Some(1));
    let m = sim.nodes[1].m.as_ref().expect("standby runs");
    assert!(m.stats().replay >= 40, "{:?}", m.stats());
}

#[test]
fn planned_switchover_and_back() {
    let mut sim = Sim::new(SimConfig::new(2), 47);
    sim.run_until(secs(3));
    sim.feed(1, Event::AdminTakeover);
    let t0 = sim.now;
    sim.run_until(secs(4));
    assert_eq!(sim.holder(), Some(1));
    let (t, n, reason, _) = *sim.stats.takeovers.last().expect("takeover");
    assert_eq!((n, reason), (1, AcquireReason::Coordinated));
    println!("SIM planned switchover: VIP on the standby {:?} after the admin request", t - t0);
    // The primary handed over on request: manual fail-back, so it stays standby.
    sim.run_until(secs(30));
    assert_eq!(sim.holder(), Some(1));
    sim.feed(1, Event::AdminRelease);
    sim.run_until(secs(31));
    assert_eq!(sim.holder(), Some(0));
    assert_eq!(sim.stats.takeovers.iter().filter(|t| t.2 == AcquireReason::Failover).count(), 0);
}

#[test]
fn escalation_moves_the_vip_to_a_healthy_peer() {
    let mut sim = Sim::new(SimConfig::new(2), 48);
    sim.run_until(secs(3));
    // The standby is unhealthy: the primary's escalation is held back.
    sim.feed(1, Event::MonitorEscalation { monitor: "svc".into() });
    sim.run_until(secs(4));
    sim.feed(0, Event::MonitorEscalation { monitor: "svc".into() });
    sim.run_until(secs(6));
    assert_eq!(sim.holder(), Some(0));
    sim.feed(1, Event::MonitorRecovered { monitor: "svc".into() });
    sim.run_until(secs(7));
    assert_eq!(sim.holder(), Some(1));
    // Both fail at the same instant: the primary hands over on stale news, but somebody
    // still holds the VIP (degraded beats nothing).
    let mut sim = Sim::new(SimConfig::new(2), 49);
    sim.run_until(secs(3));
    sim.feed(1, Event::MonitorEscalation { monitor: "svc".into() });
    sim.feed(0, Event::MonitorEscalation { monitor: "svc".into() });
    sim.run_until(secs(10));
    assert!(sim.holder().is_some(), "both unhealthy: nobody holds the VIP");
}
