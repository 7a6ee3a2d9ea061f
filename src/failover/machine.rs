//! The failover state machine: `step(state, event, now) -> (state, actions)`.
//!
//! Pure and deterministic: no clock reads, no I/O, no randomness, no hash-map iteration.
//! Adapters turn sockets, netlink, timers and hook processes into [`Event`]s and carry out
//! the [`Action`]s in the order given.
//!
//! # Time
//!
//! `now` is a monotonic time chosen by the adapter. The machine keeps its own clock that
//! advances by the gap between consecutive events; a gap that goes backwards advances it
//! by nothing. A gap longer than twice the heartbeat interval means our own loop did not
//! run (stall, VM pause, suspend, clock jump): that gap is not counted as peer silence
//! (the silence before it still is), and the peer is not declared dead until twice the
//! interval after it, so input queued during the stall is read first and a peer whose
//! packets were lost during a VM pause has time to be heard again.
//!
//! # Decisions
//!
//! - The peer is dead only when nothing authentic came from it on any channel for the dead
//!   time: the configured floor, lengthened while its heartbeats have lately been irregular
//!   ([`super::jitter`]). One-way hearing counts as alive: a standby that still hears the primary never
//!   takes over, whatever happens to the other direction.
//! - Failover (peer dead): our public link must be up, the tie-breaker (if configured)
//!   must answer, the fence (if configured) must succeed; then the VIP is added under
//!   term+1, which must be on disk first. The next term is reserved on disk ahead of need
//!   ([`Action::ReserveTerm`]), so a takeover normally adds the VIP at once; when the
//!   reservation is not confirmed yet, it waits for [`Action::PersistTerm`].
//! - Coordinated acquisition (peer alive, nobody holds): only when the link works both
//!   ways, by the node ranked first on (public link up, healthy, requesting, not yielding,
//!   primary role, priority, name), and only with our public link up. A node whose
//!   services fail still ranks above nobody: a degraded holder beats an outage. This
//!   covers cold start, planned switchover and fail-back.
//! - Two holders that hear each other: the higher (term, priority, name) keeps the VIP; the
//!   other releases and announces it on every channel; the keeper re-sends ARP at once. A
//!   holder that hears the other holder but is not heard by it yields, since the other side
//!   cannot learn about the conflict.
//! - Shutdown ([`Event::Shutdown`], SIGTERM): a holder releases the VIP and runs its stop
//!   hooks while still sending heartbeats (so the peer waits), then sends a few `leaving`
//!   heartbeats and asks the adapter to exit ([`Action::Exit`]). A peer that hears `leaving`
//!   with a fresh echo of its own boot (so it is no replay) takes the VIP at once, without
//!   the tie-breaker or the fence: the leaver told it, authenticated, that it let go.

use super::garp::GarpSchedule;
use super::jitter::GapTracker;
use super::link::{Link, SentLog};
use super::packet::{Admission, Flags, Heartbeat, NodeName, PacketError, ReplayGuard, Role, RxStats, channel_tag};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::time::Duration;

/// Heartbeat rounds sent on the way out.
const FAREWELL_ROUNDS: usize = 3;

/// Fail-back: what the configured primary does when it is healthy again and the standby
/// holds the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// Stay standby until an admin moves the VIP (the default: no surprise second outage).
    Manual,
    /// Ask for the VIP back after the peer held it and we were healthy for this long.
    Delayed(Duration),
}

/// What the machine needs to know about its configuration.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Our node name.
    pub node: NodeName,
    /// Our configured role.
    pub role: Role,
    /// Our priority (ranks nodes after role).
    pub priority: u8,
    /// Heartbeat interval.
    pub interval: Duration,
    /// Silence on every channel for this long means the peer is dead: the floor of the
    /// adaptive dead time ([`super::jitter`]).
    pub dead_time: Duration,
    /// The most the adaptive dead time may grow to (equal to `dead_time`: no adaptation).
    pub dead_time_max: Duration,
    /// Channel names, in configuration order (a channel index is a position here).
    pub channels: Vec<String>,
    /// Whether a tie-breaker must answer before a failover.
    pub tiebreaker: bool,
    /// How long to wait for the tie-breaker.
    pub tiebreaker_timeout: Duration,
    /// Whether the peer must be fenced before a failover.
    pub fence: bool,
    /// How long to wait for the fence.
    pub fence_timeout: Duration,
    /// Fail-back policy.
    pub failback: Failback,
    /// How long to wait for the term to reach the disk.
    pub persist_timeout: Duration,
    /// How long to wait for stop hooks before announcing the release anyway.
    pub hook_timeout: Duration,
}

impl MachineConfig {
    /// A configuration with the default timings (50 ms interval, 200 ms dead time growing
    /// to at most 2 s with measured jitter), no tie-breaker, no fence and manual fail-back.
    pub fn new(node: NodeName, role: Role, priority: u8, channels: Vec<String>) -> MachineConfig {
        MachineConfig {
            node,
            role,
            priority,
            interval: Duration::from_millis(50),
            dead_time: Duration::from_millis(200),
            dead_time_max: Duration::from_secs(2),
            channels,
            tiebreaker: false,
            tiebreaker_timeout: Duration::from_secs(1),
            fence: false,
            fence_timeout: Duration::from_secs(60),
            failback: Failback::Manual,
            persist_timeout: Duration::from_secs(5),
            hook_timeout: Duration::from_secs(120),
        }
    }

    fn stall_limit(&self) -> Duration {
        self.interval.saturating_mul(2)
    }

    /// Wait after a blocked takeover attempt before trying again.
    fn retry_after(&self) -> Duration {
        self.dead_time.max(Duration::from_secs(1))
    }
}

/// What the adapter read from disk and the system at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineInit {
    /// Our boot id ([`super::packet::next_boot_id`]), persisted before the first send.
    pub boot: u64,
    /// The last term persisted.
    pub term: u64,
    /// The highest peer boot id persisted (0: none).
    pub peer_boot_floor: u64,
    /// The VIP is configured on our interface (left over from a crashed process).
    pub vip_present: bool,
}

/// Inputs. `now` is passed to [`step`] beside the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed; the adapter ticks at least every [`Machine::next_wakeup_in`].
    Tick,
    /// An authenticated heartbeat arrived on channel `channel` (index into the config).
    Heartbeat {
        /// Channel index.
        channel: usize,
        /// The decoded content.
        heartbeat: Heartbeat,
        /// How long it waited in the kernel's queue before we read it (from the kernel's
        /// receive timestamp; zero when unknown).
        queued: Duration,
    },
    /// A datagram on `channel` failed to decode; counted, nothing else.
    Rejected {
        /// Channel index.
        channel: usize,
        /// Why.
        error: PacketError,
    },
    /// Sending on `channel` failed (no route, interface down).
    ChannelSendFailed {
        /// Channel index.
        channel: usize,
    },
    /// Answer to [`Action::ProbeTieBreaker`].
    TieBreakerResult {
        /// At least one tie-breaker address answered.
        reachable: bool,
    },
    /// Answer to [`Action::RunFence`].
    FenceResult {
        /// The fence command reported the peer off.
        ok: bool,
    },
    /// Our public link (the VIP's interface) went up or down.
    LinkState {
        /// Carrier present.
        up: bool,
    },
    /// A monitor exhausted its restarts: our services are broken here.
    MonitorEscalation {
        /// The monitor's name.
        monitor: String,
    },
    /// A monitor that escalated passes again.
    MonitorRecovered {
        /// The monitor's name.
        monitor: String,
    },
    /// An admin asks this node to take the VIP.
    AdminTakeover,
    /// An admin asks this node to give the VIP away (or never to take it while the peer can).
    AdminRelease,
    /// The term from [`Action::PersistTerm`] is durably on disk.
    TermPersisted(u64),
    /// The start hooks finished.
    StartHooksDone {
        /// All succeeded.
        ok: bool,
    },
    /// The stop hooks finished.
    StopHooksDone {
        /// All succeeded.
        ok: bool,
    },
    /// The service is stopping: release, tell the peer, then [`Action::Exit`].
    Shutdown,
}

/// Why we took the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireReason {
    /// The peer was silent on every channel for the dead time.
    Failover,
    /// The peer is alive and nobody held the VIP (cold start, handover, fail-back).
    Coordinated,
    /// The peer announced it is shutting down, after releasing the VIP.
    PeerLeft,
}

/// Why we gave the VIP up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Both held it; the peer ranks higher.
    SplitBrainLost,
    /// The peer holds it and does not hear us, so it cannot yield.
    OneWayYield,
    /// The peer asked (admin takeover there, or its fail-back).
    PeerRequested,
    /// An admin asked here.
    Admin,
    /// Our services or public link failed and the peer is healthy.
    Unhealthy,
    /// The VIP was left on our interface by a previous process.
    Startup,
    /// This service is stopping.
    Shutdown,
}

/// Outputs, to be carried out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Encode (signing key) and send this heartbeat on `channel`.
    Send {
        /// Channel index.
        channel: usize,
        /// Content.
        heartbeat: Heartbeat,
    },
    /// Write the term durably (fsync), then report [`Event::TermPersisted`]: a takeover
    /// waits for the answer.
    PersistTerm(u64),
    /// As [`Action::PersistTerm`], for the term the next takeover will use, written ahead
    /// so that the takeover need not wait for the disk; nothing waits for the answer.
    ReserveTerm(u64),
    /// Write the peer's boot id durably (no answer needed); read back as `peer_boot_floor`.
    PersistPeerBoot(u64),
    /// Probe the tie-breaker addresses, then report [`Event::TieBreakerResult`].
    ProbeTieBreaker,
    /// Run the fence command against the peer, then report [`Event::FenceResult`].
    RunFence,
    /// Add the VIP addresses (the term is persisted already).
    AddVip {
        /// The term we hold it under.
        term: u64,
        /// Why.
        reason: AcquireReason,
    },
    /// Remove the VIP addresses.
    RemoveVip,
    /// Send gratuitous ARP (unsolicited neighbour advertisements for IPv6) for every VIP.
    SendGarp,
    /// Run the start hooks in order, then report [`Event::StartHooksDone`].
    RunStartHooks,
    /// Run the stop hooks in order, then report [`Event::StopHooksDone`].
    RunStopHooks,
    /// Append to the event log.
    RecordEvent {
        /// What happened.
        kind: EventKind,
        /// Details for humans.
        message: String,
    },
    /// Raise or clear an alarm (edges only).
    Alarm {
        /// Which.
        alarm: Alarm,
        /// Raised (true) or cleared (false).
        raised: bool,
        /// Details for humans.
        message: String,
    },
    /// Shutdown is complete (VIP released, stop hooks done, peer told): stop the service.
    Exit,
}

/// Kinds of recorded events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The first heartbeat of a peer boot id.
    PeerFound,
    /// The peer came back with a new boot id.
    PeerRestarted,
    /// The peer was silent on every channel for the dead time.
    PeerLost,
    /// We started taking the VIP.
    TakeoverStarted,
    /// A takeover stopped before the VIP was added.
    TakeoverAborted,
    /// We hold the VIP.
    Takeover,
    /// We gave the VIP up.
    Release,
    /// The peer gave the VIP up while we hold it; ARP re-announced.
    PeerReleased,
    /// Both nodes hold the VIP.
    SplitBrain,
    /// Our own loop ran late; the dead-time window restarted.
    SelfStall,
    /// The time passed in went backwards.
    ClockBackwards,
    /// We ask the holder for the VIP (fail-back or admin).
    TakeoverRequested,
    /// An admin request was refused.
    AdminRefused,
    /// An admin request was accepted.
    Admin,
    /// Health changed (monitor, link, hooks).
    Health,
    /// The peer announced it is shutting down.
    PeerLeft,
    /// This service is shutting down.
    Shutdown,
}

/// Alarms, raised and cleared on edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alarm {
    /// A channel does not work both ways.
    ChannelDown(usize),
    /// The peer is heard but does not hear us (one-way link, or a replayed recording).
    PeerOneWay,
    /// The peer is dead but we cannot take over.
    TakeoverBlocked,
    /// Our services are broken but the peer is not ready to take over.
    EscalationBlocked,
    /// Start hooks failed.
    StartHooksFailed,
    /// Stop hooks failed or timed out.
    StopHooksFailed,
}

/// The coarse state, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not holding the VIP.
    Backup,
    /// Checking, fencing or persisting before adding the VIP.
    Acquiring,
    /// Holding the VIP.
    Holding,
    /// VIP removed, stop hooks running.
    Releasing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Backup,
    Probing { reason: AcquireReason, started: Duration, deadline: Duration },
    Fencing { reason: AcquireReason, started: Duration, deadline: Duration },
    Persisting { reason: AcquireReason, started: Duration, deadline: Duration, term: u64 },
    Holding { term: u64 },
    Releasing { deadline: Duration },
}

#[derive(Debug, Clone)]
struct Peer {
    name: NodeName,
    last_heard: Duration,
    role: Role,
    priority: u8,
    term: u64,
    flags: Flags,
    /// The last packet said `leaving` and echoed our current boot (so it is not a replay).
    left: bool,
}

/// Per-channel status, for metrics and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStatus {
    /// Channel name.
    pub name: String,
    /// Works both ways within the dead time.
    pub up: bool,
    /// Time since the peer was last heard here.
    pub last_heard_ago: Option<Duration>,
    /// Estimated loss of the peer's packets here.
    pub loss: f64,
    /// Last measured round trip.
    pub rtt: Option<Duration>,
    /// Failed sends.
    pub send_failures: u64,
}

/// The whole state of one node's failover logic.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: MachineConfig,
    tags: Vec<u32>,
    boot: u64,
    /// The highest term we held, or read from the disk at start.
    term: u64,
    /// The highest term the adapter confirmed on disk: a takeover up to it need not wait.
    disk_term: u64,
    /// A reservation in flight: its term, and when to ask again if no answer came.
    reserving: Option<(u64, Duration)>,
    observed_term: u64,
    phase: Phase,
    clock: Duration,
    last_real: Duration,
    quiet_since: Duration,
    /// Recent gaps between the peer's heartbeats, for the adaptive dead time.
    gaps: GapTracker,
    seq: u64,
    next_send: Duration,
    send_now: bool,
    sent: SentLog,
    peer: Option<Peer>,
    peer_lost_reported: bool,
    /// The peer's newest sequence heard on any channel (echoed as `echo_any_seq`).
    last_rx_any: u64,
    /// When we sent the newest packet the peer echoed on any channel.
    heard_us_sent_at: Option<Duration>,
    guard: ReplayGuard,
    links: Vec<Link>,
    stats: RxStats,
    link_up: bool,
    link_down_since: Option<Duration>,
    failing_monitors: BTreeSet<String>,
    start_hooks_failed: bool,
    yielding: bool,
    admin_request_until: Option<Duration>,
    admin_force: bool,
    failback_since: Option<Duration>,
    failback_requesting: bool,
    releasing_until: Option<Duration>,
    retry_at: Duration,
    garp: Option<GarpSchedule>,
    conflict: bool,
    one_way_since: Option<Duration>,
    alarms: BTreeSet<Alarm>,
    /// Shutting down: no new acquisitions; `leaving` is announced once released.
    leaving: bool,
    /// The farewell went out and [`Action::Exit`] was given: the machine is inert.
    exited: bool,
}

/// Advance `state` by one event at time `now`.
pub fn step(mut state: Machine, event: Event, now: Duration) -> (Machine, Vec<Action>) {
    let actions = state.handle(event, now);
    (state, actions)
}

fn ev(out: &mut Vec<Action>, kind: EventKind, message: String) {
    out.push(Action::RecordEvent { kind, message });
}

impl Machine {
    /// A machine starting at `now`, and its first actions (removing a VIP left over by a
    /// crashed process: we cannot know whether the peer took over meanwhile).
    pub fn new(cfg: MachineConfig, init: MachineInit, now: Duration) -> (Machine, Vec<Action>) {
        let n = cfg.channels.len();
        let keep = cfg.dead_time_max.max(cfg.dead_time).saturating_mul(2);
        let mut m = Machine {
            tags: cfg.channels.iter().map(|c| channel_tag(c)).collect(),
            boot: init.boot,
            term: init.term,
            disk_term: init.term,
            reserving: None,
            observed_term: init.term,
            phase: Phase::Backup,
            clock: now,
            last_real: now,
            quiet_since: now,
            gaps: GapTracker::default(),
            seq: 0,
            next_send: now,
            send_now: true,
            sent: SentLog::new(keep),
            peer: None,
            peer_lost_reported: false,
            last_rx_any: 0,
            heard_us_sent_at: None,
            guard: ReplayGuard::new(n, init.peer_boot_floor),
            links: vec![Link::default(); n],
            stats: RxStats::default(),
            link_up: true,
            link_down_since: None,
            failing_monitors: BTreeSet::new(),
            start_hooks_failed: false,
            yielding: false,
            admin_request_until: None,
            admin_force: false,
            failback_since: None,
            failback_requesting: false,
            releasing_until: None,
            retry_at: now,
            garp: None,
            conflict: false,
            one_way_since: None,
            alarms: BTreeSet::new(),
            leaving: false,
            exited: false,
            cfg,
        };
        let mut out = Vec::new();
        if init.vip_present {
            m.release(ReleaseReason::Startup, &mut out);
        }
        m.evaluate(&mut out);
        (m, out)
    }

    /// Handle one event at `now`; returns the actions to carry out in order.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        match event {
            Event::Tick => {}
            Event::Heartbeat { channel, heartbeat, queued } => self.on_heartbeat(channel, heartbeat, queued, &mut out),
            Event::Rejected { error, .. } => self.stats.record(&error),
            Event::ChannelSendFailed { channel } => {
                if let Some(l) = self.links.get_mut(channel) {
                    l.send_failures += 1;
                }
            }
            Event::TieBreakerResult { reachable } => self.on_tiebreaker(reachable, &mut out),
            Event::FenceResult { ok } => self.on_fence(ok, &mut out),
            Event::LinkState { up } => self.on_link(up, &mut out),
            Event::MonitorEscalation { monitor } => {
                ev(&mut out, EventKind::Health, format!("monitor {monitor} escalated: services failing here"));
                self.failing_monitors.insert(monitor);
                self.send_now = true;
            }
            Event::MonitorRecovered { monitor } => {
                if self.failing_monitors.remove(&monitor) {
                    ev(&mut out, EventKind::Health, format!("monitor {monitor} recovered"));
                    self.send_now = true;
                }
            }
            Event::AdminTakeover => self.on_admin_takeover(&mut out),
            Event::AdminRelease => self.on_admin_release(&mut out),
            Event::TermPersisted(t) => self.on_term_persisted(t, &mut out),
            Event::StartHooksDone { ok } => self.on_start_hooks(ok, &mut out),
            Event::StopHooksDone { ok } => self.on_stop_hooks(ok, &mut out),
            Event::Shutdown => self.on_shutdown(&mut out),
        }
        self.evaluate(&mut out);
        out
    }

    /// The coarse state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Backup => State::Backup,
            Phase::Probing { .. } | Phase::Fencing { .. } | Phase::Persisting { .. } => State::Acquiring,
            Phase::Holding { .. } => State::Holding,
            Phase::Releasing { .. } => State::Releasing,
        }
    }

    /// The highest term held (or read from the disk at start).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The highest term the adapter confirmed on disk (at least [`Machine::term`]; one more
    /// once the next takeover's term is reserved).
    pub fn disk_term(&self) -> u64 {
        self.disk_term
    }

    /// Our boot id.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Counters of accepted and refused heartbeats.
    pub fn stats(&self) -> &RxStats {
        &self.stats
    }

    /// Alarms currently raised.
    pub fn alarms(&self) -> Vec<Alarm> {
        self.alarms.iter().copied().collect()
    }

    /// The dead time now: the configured floor, longer while the peer's heartbeats have
    /// lately been irregular ([`super::jitter`]).
    pub fn dead_time(&self) -> Duration {
        self.gaps.dead_time(self.clock, self.cfg.interval, self.cfg.dead_time, self.cfg.dead_time_max)
    }

    /// Per-channel status.
    pub fn channels(&self) -> Vec<ChannelStatus> {
        let w = self.cfg.dead_time;
        self.cfg
            .channels
            .iter()
            .zip(&self.links)
            .map(|(name, l)| ChannelStatus {
                name: name.clone(),
                up: l.up(self.clock, w),
                last_heard_ago: l.last_heard.map(|t| self.clock.saturating_sub(t)),
                loss: l.loss,
                rtt: l.rtt,
                send_failures: l.send_failures,
            })
            .collect()
    }

    /// How long the adapter may wait before the next [`Event::Tick`] (at most one interval).
    pub fn next_wakeup_in(&self) -> Duration {
        let mut at = self.next_send;
        let mut consider = |t: Duration| {
            if t > self.clock && t < at {
                at = t;
            }
        };
        if let Some(g) = &self.garp {
            consider(g.next_at());
        }
        match self.phase {
            Phase::Probing { deadline, .. }
            | Phase::Fencing { deadline, .. }
            | Phase::Persisting { deadline, .. }
            | Phase::Releasing { deadline } => consider(deadline),
            Phase::Backup | Phase::Holding { .. } => {}
        }
        consider(self.silence_base().saturating_add(self.dead_time()));
        consider(self.retry_at);
        at.saturating_sub(self.clock).clamp(Duration::from_millis(1), self.cfg.interval)
    }

    // ---- time ----

    fn advance(&mut self, now: Duration, out: &mut Vec<Action>) {
        match now.checked_sub(self.last_real) {
            None => {
                ev(out, EventKind::ClockBackwards, format!("time went back {:?}", self.last_real - now));
                self.quiet_since = self.clock;
                self.gaps.forget_last();
            }
            Some(gap) => {
                self.clock = self.clock.saturating_add(gap);
                if gap > self.cfg.stall_limit() {
                    ev(out, EventKind::SelfStall, format!("our loop stalled {gap:?}; that time is not silence"));
                    let shifted = self.silence_base().saturating_add(gap);
                    let grace = self.clock.saturating_sub(self.dead_time()).saturating_add(self.cfg.stall_limit());
                    self.quiet_since = shifted.max(grace).min(self.clock);
                    self.gaps.forget_last();
                }
            }
        }
        self.last_real = now;
    }

    // ---- receiving ----

    fn on_heartbeat(&mut self, ch: usize, hb: Heartbeat, queued: Duration, out: &mut Vec<Action>) {
        if let Err(e) = self.screen(ch, &hb) {
            self.stats.record(&e);
            return;
        }
        let ours = |e: u64| (hb.echo_boot == self.boot && e >= 1 && e <= self.seq).then_some(e);
        let (echo, echo_any) = (ours(hb.echo_seq), ours(hb.echo_any_seq));
        let admission = match self.guard.admit(ch, hb.boot, hb.seq, echo_any) {
            Ok(a) => a,
            Err(e) => {
                self.stats.record(&e);
                return;
            }
        };
        self.stats.accepted += 1;
        if let Admission::NewBoot { previous } = admission {
            self.gaps.forget_last();
            self.links.iter_mut().for_each(Link::reset_peer_boot);
            self.last_rx_any = 0;
            let kind = if previous.is_some() { EventKind::PeerRestarted } else { EventKind::PeerFound };
            ev(out, kind, format!("peer {} boot {:#x} on channel {}", hb.node, hb.boot, self.cfg.channels[ch]));
            if previous.is_none_or(|p| hb.boot > p) {
                out.push(Action::PersistPeerBoot(hb.boot));
            }
        }
        // Jitter is measured at the kernel's arrival, so our own late reading is not in it.
        self.gaps.arrived(self.clock.saturating_sub(queued.min(self.cfg.dead_time_max)));
        let echo_sent_at = echo.and_then(|s| self.sent.sent_at(s));
        self.links[ch].on_receive(hb.seq, self.clock, echo_sent_at);
        self.last_rx_any = self.last_rx_any.max(hb.seq);
        if let Some(sent) = echo_any.and_then(|s| self.sent.sent_at(s))
            && self.heard_us_sent_at.is_none_or(|t| sent > t)
        {
            self.heard_us_sent_at = Some(sent);
        }
        self.observed_term = self.observed_term.max(hb.term);
        let before = self.peer.as_ref().map(|p| p.flags);
        let left = hb.flags.leaving && echo_any.is_some();
        if left && !before.is_some_and(|b| b.leaving) {
            ev(out, EventKind::PeerLeft, format!("peer {} is shutting down; it released the VIP", hb.node));
        }
        if self.peer_lost_reported {
            self.peer_lost_reported = false;
            ev(out, EventKind::PeerFound, format!("peer {} heard again", hb.node));
        }
        self.peer = Some(Peer {
            name: hb.node,
            last_heard: self.clock,
            role: hb.role,
            priority: hb.priority,
            term: hb.term,
            flags: hb.flags,
            left,
        });
        let released =
            before.is_some_and(|b| (b.vip_held && !hb.flags.vip_held) || (!b.releasing && hb.flags.releasing));
        if released && matches!(self.phase, Phase::Holding { .. }) {
            // The loser may have answered ARP last: take the clients back now.
            self.garp = Some(GarpSchedule::start(self.clock));
            ev(out, EventKind::PeerReleased, "peer released the VIP; re-announcing ARP".into());
        }
    }

    fn screen(&self, ch: usize, hb: &Heartbeat) -> Result<(), PacketError> {
        let tag = *self.tags.get(ch).ok_or(PacketError::WrongChannel(ch))?;
        if hb.node == self.cfg.node {
            return Err(PacketError::OwnPacket);
        }
        if let Some(p) = &self.peer
            && p.name != hb.node
        {
            return Err(PacketError::ForeignNode(hb.node.to_string()));
        }
        if hb.channel_tag != tag {
            return Err(PacketError::WrongChannel(ch));
        }
        Ok(())
    }

    // ---- adapter answers ----

    fn on_tiebreaker(&mut self, reachable: bool, out: &mut Vec<Action>) {
        let Phase::Probing { reason, started, .. } = self.phase else { return };
        if reachable {
            self.after_probe(reason, started, out);
        } else {
            self.block("tie-breaker unreachable: we may be the isolated node", out);
        }
    }

    fn on_fence(&mut self, ok: bool, out: &mut Vec<Action>) {
        let Phase::Fencing { reason, started, .. } = self.phase else { return };
        if ok {
            self.persist(reason, started, out);
        } else {
            self.block("fencing the peer failed", out);
        }
    }

    fn on_term_persisted(&mut self, t: u64, out: &mut Vec<Action>) {
        // Whatever the phase, the disk now holds t, so a takeover up to t may go ahead
        // at once. (A term is never reused: the next one is above every term held.)
        self.disk_term = self.disk_term.max(t);
        if self.reserving.is_some_and(|(r, _)| r <= t) {
            self.reserving = None;
        }
        let Phase::Persisting { reason, term, .. } = self.phase else { return };
        if term <= t {
            self.hold(reason, term, out);
        }
    }

    /// Take the VIP at `term`, which is on disk.
    fn hold(&mut self, reason: AcquireReason, term: u64, out: &mut Vec<Action>) {
        self.term = self.term.max(term);
        self.phase = Phase::Holding { term };
        self.garp = Some(GarpSchedule::start(self.clock));
        self.yielding = false;
        self.admin_request_until = None;
        self.admin_force = false;
        self.failback_since = None;
        self.failback_requesting = false;
        self.releasing_until = None;
        self.start_hooks_failed = false;
        self.conflict = false;
        self.one_way_since = None;
        self.send_now = true;
        self.set_alarm(Alarm::TakeoverBlocked, false, String::new(), out);
        out.push(Action::AddVip { term, reason });
        if self.garp.as_mut().is_some_and(|g| g.poll(self.clock)) {
            out.push(Action::SendGarp);
        }
        out.push(Action::RunStartHooks);
        ev(out, EventKind::Takeover, format!("holding the VIP, term {term} ({reason:?})"));
    }

    fn on_start_hooks(&mut self, ok: bool, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Holding { .. }) {
            return;
        }
        self.start_hooks_failed = !ok;
        self.set_alarm(Alarm::StartHooksFailed, !ok, "start hooks failed".into(), out);
        self.send_now = true;
    }

    fn on_stop_hooks(&mut self, ok: bool, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Releasing { .. }) {
            return;
        }
        self.set_alarm(Alarm::StopHooksFailed, !ok, "stop hooks failed".into(), out);
        self.finish_release(out);
    }

    fn on_link(&mut self, up: bool, out: &mut Vec<Action>) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        self.link_down_since = if up { None } else { Some(self.clock) };
        self.send_now = true;
        ev(out, EventKind::Health, format!("public link {}", if up { "up" } else { "down" }));
    }

    fn on_admin_takeover(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Backup) {
            ev(out, EventKind::AdminRefused, format!("takeover refused: already {:?}", self.state()));
            return;
        }
        self.yielding = false;
        if self.peer_dead() {
            // The admin is the tie-breaker; fencing still applies.
            self.admin_force = true;
            self.retry_at = self.clock;
            ev(out, EventKind::Admin, "admin takeover: peer silent, taking over".into());
        } else {
            self.admin_request_until =
                Some(self.clock + self.cfg.dead_time.saturating_mul(4).max(Duration::from_secs(10)));
            self.send_now = true;
            ev(out, EventKind::TakeoverRequested, "admin takeover: asking the peer to hand over".into());
        }
    }

    fn on_admin_release(&mut self, out: &mut Vec<Action>) {
        self.admin_request_until = None;
        self.failback_requesting = false;
        self.failback_since = None;
        match self.phase {
            Phase::Holding { .. } => match self.peer_ready() {
                Ok(()) => {
                    ev(out, EventKind::Admin, "admin release: handing over".into());
                    self.yielding = true;
                    self.release(ReleaseReason::Admin, out);
                }
                Err(why) => ev(out, EventKind::AdminRefused, format!("release refused: {why}")),
            },
            phase => {
                self.yielding = true;
                self.send_now = true;
                ev(out, EventKind::Admin, "admin release: will not take the VIP while the peer can".into());
                if let Phase::Probing { reason: AcquireReason::Coordinated, .. }
                | Phase::Persisting { reason: AcquireReason::Coordinated, .. } = phase
                {
                    self.abort("admin release", out);
                }
            }
        }
    }

    fn on_shutdown(&mut self, out: &mut Vec<Action>) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.send_now = true;
        ev(out, EventKind::Shutdown, format!("shutting down ({:?})", self.state()));
        match self.phase {
            Phase::Holding { .. } => self.release(ReleaseReason::Shutdown, out),
            Phase::Probing { .. } | Phase::Fencing { .. } | Phase::Persisting { .. } => {
                self.abort("shutting down", out)
            }
            Phase::Backup | Phase::Releasing { .. } => {}
        }
    }

    /// The last heartbeats: several rounds, so one lost datagram does not cost the peer a
    /// dead time; each round has its own sequence number, so none looks like a replay.
    fn farewell(&mut self, out: &mut Vec<Action>) {
        for _ in 0..FAREWELL_ROUNDS {
            self.send_round(out);
        }
        self.exited = true;
        ev(out, EventKind::Shutdown, "VIP released, peer told; exiting".into());
        out.push(Action::Exit);
    }

    // ---- the periodic part ----

    fn evaluate(&mut self, out: &mut Vec<Action>) {
        if self.exited {
            return;
        }
        self.check_deadlines(out);
        if !self.leaving {
            self.decide(out);
        } else if matches!(self.phase, Phase::Backup) {
            return self.farewell(out);
        }
        self.update_alarms(out);
        if !self.leaving {
            self.reserve(out);
        }
        if self.send_now || self.clock >= self.next_send {
            self.send_round(out);
        }
        if self.garp.as_mut().is_some_and(|g| g.poll(self.clock)) {
            out.push(Action::SendGarp);
        }
    }

    fn check_deadlines(&mut self, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Probing { deadline, .. } if self.clock >= deadline => {
                self.block("tie-breaker did not answer in time", out);
            }
            Phase::Fencing { deadline, .. } if self.clock >= deadline => self.block("fence timed out", out),
            Phase::Persisting { deadline, term, .. } if self.clock >= deadline => {
                self.block(&format!("term {term} not persisted in time"), out);
            }
            Phase::Releasing { deadline } if self.clock >= deadline => {
                self.set_alarm(Alarm::StopHooksFailed, true, "stop hooks timed out".into(), out);
                self.finish_release(out);
            }
            _ => {}
        }
    }

    fn decide(&mut self, out: &mut Vec<Action>) {
        let dead = self.peer_dead();
        if dead && !self.peer_lost_reported && self.peer.is_some() {
            self.peer_lost_reported = true;
            // Its silence is an outage, not jitter: no gap is measured across it.
            self.gaps.forget_last();
            // A peer that said goodbye is not lost; its silence is expected.
            if !self.peer.as_ref().is_some_and(|p| p.left) {
                ev(out, EventKind::PeerLost, format!("peer silent on every channel for {:?}", self.dead_time()));
            }
        }
        match self.phase {
            Phase::Backup => self.decide_backup(dead, out),
            Phase::Probing { reason, started, .. }
            | Phase::Fencing { reason, started, .. }
            | Phase::Persisting { reason, started, .. } => self.decide_acquiring(reason, started, out),
            Phase::Holding { term } => self.decide_holding(term, out),
            Phase::Releasing { .. } => {}
        }
    }

    fn decide_backup(&mut self, dead: bool, out: &mut Vec<Action>) {
        if self.fresh_peer().is_some_and(|p| p.left && !p.flags.vip_held) {
            if self.clock >= self.retry_at {
                self.begin(AcquireReason::PeerLeft, out);
            }
            return;
        }
        if dead {
            self.failback_since = None;
            self.failback_requesting = false;
            if self.clock >= self.retry_at {
                self.begin(AcquireReason::Failover, out);
            }
            return;
        }
        // Not dead but not heard lately: our own stall; wait for fresh news.
        let Some(peer) = self.fresh_peer().cloned() else { return };
        if peer.flags.vip_held || peer.flags.acquiring {
            self.consider_failback(&peer, out);
            return;
        }
        self.failback_since = None;
        self.failback_requesting = false;
        // Only when the peer hears us too: otherwise it may be about to take over by failover.
        if self.peer_hears_us() && self.we_rank_first(&peer) && self.clock >= self.retry_at {
            self.begin(AcquireReason::Coordinated, out);
        }
    }

    fn consider_failback(&mut self, peer: &Peer, out: &mut Vec<Action>) {
        let eligible = self.cfg.role == Role::Primary
            && !self.yielding
            && self.healthy()
            && peer.flags.vip_held
            && self.peer_hears_us();
        let Failback::Delayed(delay) = self.cfg.failback else { return };
        if !eligible {
            self.failback_since = None;
            self.failback_requesting = false;
            return;
        }
        let since = *self.failback_since.get_or_insert(self.clock);
        if !self.failback_requesting && self.clock.saturating_sub(since) >= delay {
            self.failback_requesting = true;
            self.send_now = true;
            ev(out, EventKind::TakeoverRequested, format!("fail-back: healthy for {delay:?}, asking for the VIP"));
        }
    }

    fn decide_acquiring(&mut self, reason: AcquireReason, started: Duration, out: &mut Vec<Action>) {
        if !self.link_up {
            self.abort("our public link went down", out);
            return;
        }
        let heard_since = self.peer.as_ref().is_some_and(|p| p.last_heard > started);
        match reason {
            AcquireReason::Failover if heard_since => self.abort("peer heard again", out),
            AcquireReason::PeerLeft => {
                if heard_since && self.peer.as_ref().is_some_and(|p| !p.left) {
                    self.abort("peer is back", out);
                }
            }
            AcquireReason::Coordinated => {
                if self.peer_dead() {
                    // Checks for a dead peer (tie-breaker, fence) apply: start over as a failover.
                    self.abort("peer went silent", out);
                } else if let Some(peer) = self.fresh_peer().cloned()
                    && (peer.flags.vip_held || (peer.flags.acquiring && !self.we_rank_first(&peer)))
                {
                    self.abort("peer is taking the VIP", out);
                }
            }
            AcquireReason::Failover => {}
        }
    }

    fn decide_holding(&mut self, term: u64, out: &mut Vec<Action>) {
        let Some(peer) = self.fresh_peer().cloned() else {
            self.conflict = false;
            self.one_way_since = None;
            return self.consider_unhealthy_release(out);
        };
        if peer.flags.vip_held {
            if !self.peer_hears_us() {
                let since = *self.one_way_since.get_or_insert(self.clock);
                if self.clock.saturating_sub(since) >= self.cfg.dead_time {
                    ev(out, EventKind::SplitBrain, "peer holds the VIP and does not hear us: yielding".into());
                    return self.release(ReleaseReason::OneWayYield, out);
                }
                return;
            }
            self.one_way_since = None;
            let theirs = (peer.term, peer.priority, &peer.name);
            let ours = (term, self.cfg.priority, &self.cfg.node);
            if theirs.cmp(&ours) == Ordering::Greater {
                ev(
                    out,
                    EventKind::SplitBrain,
                    format!("peer holds the VIP with {theirs:?} > ours {ours:?}: releasing"),
                );
                return self.release(ReleaseReason::SplitBrainLost, out);
            }
            if !self.conflict {
                self.conflict = true;
                self.garp = Some(GarpSchedule::start(self.clock));
                ev(out, EventKind::SplitBrain, format!("peer holds the VIP too; we win with {ours:?}"));
            }
            return;
        }
        self.conflict = false;
        self.one_way_since = None;
        if peer.flags.requesting && peer.flags.healthy && self.peer_hears_us() {
            ev(out, EventKind::Release, "peer asks for the VIP: handing over".into());
            self.yielding = true;
            return self.release(ReleaseReason::PeerRequested, out);
        }
        self.consider_unhealthy_release(out);
    }

    fn consider_unhealthy_release(&mut self, out: &mut Vec<Action>) {
        let link_long_down = self.link_down_since.is_some_and(|t| self.clock.saturating_sub(t) >= self.cfg.dead_time);
        let broken = !self.failing_monitors.is_empty() || self.start_hooks_failed || link_long_down;
        if !broken {
            self.set_alarm(Alarm::EscalationBlocked, false, String::new(), out);
            return;
        }
        match self.peer_ready() {
            Ok(()) => {
                self.set_alarm(Alarm::EscalationBlocked, false, String::new(), out);
                ev(out, EventKind::Release, "our services are failing and the peer is healthy: handing over".into());
                self.yielding = true;
                self.release(ReleaseReason::Unhealthy, out);
            }
            Err(why) => self.set_alarm(Alarm::EscalationBlocked, true, format!("services failing here but {why}"), out),
        }
    }

    // ---- transitions ----

    fn begin(&mut self, reason: AcquireReason, out: &mut Vec<Action>) {
        if !self.link_up {
            return self.block("our public link is down", out);
        }
        let started = self.clock;
        let why = match reason {
            AcquireReason::Failover => format!("failover: peer silent on every channel for {:?}", self.dead_time()),
            AcquireReason::Coordinated => "coordinated: peer alive, nobody holds the VIP, we rank first".to_string(),
            AcquireReason::PeerLeft => "peer left: it shut down after releasing the VIP".to_string(),
        };
        ev(out, EventKind::TakeoverStarted, why);
        if reason == AcquireReason::Failover && self.cfg.tiebreaker && !self.admin_force {
            self.phase = Phase::Probing { reason, started, deadline: started + self.cfg.tiebreaker_timeout };
            self.send_now = true;
            out.push(Action::ProbeTieBreaker);
        } else {
            self.after_probe(reason, started, out);
        }
    }

    fn after_probe(&mut self, reason: AcquireReason, started: Duration, out: &mut Vec<Action>) {
        if reason == AcquireReason::Failover && self.cfg.fence {
            self.phase = Phase::Fencing { reason, started, deadline: self.clock + self.cfg.fence_timeout };
            self.send_now = true;
            out.push(Action::RunFence);
        } else {
            self.persist(reason, started, out);
        }
    }

    fn persist(&mut self, reason: AcquireReason, started: Duration, out: &mut Vec<Action>) {
        let term = self.next_term();
        if term <= self.disk_term {
            // Reserved ahead: no fsync between the decision and the VIP.
            return self.hold(reason, term, out);
        }
        self.phase = Phase::Persisting { reason, started, deadline: self.clock + self.cfg.persist_timeout, term };
        self.send_now = true;
        out.push(Action::PersistTerm(term));
    }

    /// The term the next takeover uses: above every term held here or seen from the peer.
    fn next_term(&self) -> u64 {
        self.term.max(self.observed_term).saturating_add(1)
    }

    /// Keep the next takeover's term on disk ahead of need, so that taking over does not
    /// wait for an fsync (under I/O load, one can take longer than the dead time). Asked
    /// again after `persist_timeout` without an answer.
    fn reserve(&mut self, out: &mut Vec<Action>) {
        let want = self.next_term();
        if want <= self.disk_term
            || self.reserving.is_some_and(|(r, until)| r >= want && self.clock < until)
            || matches!(self.phase, Phase::Persisting { term, .. } if term >= want)
        {
            return;
        }
        self.reserving = Some((want, self.clock + self.cfg.persist_timeout));
        out.push(Action::ReserveTerm(want));
    }

    fn abort(&mut self, why: &str, out: &mut Vec<Action>) {
        self.phase = Phase::Backup;
        self.admin_force = false;
        self.send_now = true;
        ev(out, EventKind::TakeoverAborted, why.to_string());
    }

    /// A takeover cannot proceed: back to backup, retry later, raise the alarm.
    fn block(&mut self, why: &str, out: &mut Vec<Action>) {
        self.phase = Phase::Backup;
        self.admin_force = false;
        self.send_now = true;
        self.retry_at = self.clock + self.cfg.retry_after();
        if !self.alarms.contains(&Alarm::TakeoverBlocked) {
            ev(out, EventKind::TakeoverAborted, format!("takeover blocked: {why}"));
        }
        self.set_alarm(Alarm::TakeoverBlocked, true, why.to_string(), out);
    }

    fn release(&mut self, reason: ReleaseReason, out: &mut Vec<Action>) {
        self.phase = Phase::Releasing { deadline: self.clock + self.cfg.hook_timeout };
        self.garp = None;
        self.conflict = false;
        self.one_way_since = None;
        self.releasing_until = Some(self.clock + self.cfg.dead_time.saturating_mul(2));
        // Ask the peer not to hand it straight back; fail-back stays with its policy.
        self.retry_at = self.clock + self.cfg.interval;
        self.send_now = true;
        out.push(Action::RemoveVip);
        out.push(Action::RunStopHooks);
        ev(out, EventKind::Release, format!("released the VIP ({reason:?}); stopping services"));
    }

    fn finish_release(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Backup;
        self.releasing_until = Some(self.clock + self.cfg.dead_time.saturating_mul(2));
        self.send_now = true;
        ev(out, EventKind::Release, "services stopped; announced on every channel".into());
    }

    // ---- sending ----

    fn send_round(&mut self, out: &mut Vec<Action>) {
        self.seq += 1;
        self.sent.push(self.seq, self.clock);
        self.next_send = self.clock + self.cfg.interval;
        self.send_now = false;
        let flags = self.flags();
        let echo_boot = self.guard.boot().unwrap_or(0);
        for (ch, link) in self.links.iter().enumerate() {
            let heartbeat = Heartbeat {
                node: self.cfg.node.clone(),
                boot: self.boot,
                seq: self.seq,
                channel_tag: self.tags[ch],
                term: self.term,
                role: self.cfg.role,
                priority: self.cfg.priority,
                flags,
                echo_boot,
                echo_seq: link.last_rx_seq,
                echo_any_seq: self.last_rx_any,
            };
            out.push(Action::Send { channel: ch, heartbeat });
        }
    }

    fn flags(&self) -> Flags {
        Flags {
            vip_held: matches!(self.phase, Phase::Holding { .. } | Phase::Releasing { .. }),
            healthy: self.healthy(),
            releasing: matches!(self.phase, Phase::Releasing { .. })
                || self.releasing_until.is_some_and(|t| self.clock < t),
            yielding: self.yielding,
            requesting: self.requesting(),
            acquiring: matches!(self.phase, Phase::Probing { .. } | Phase::Fencing { .. } | Phase::Persisting { .. }),
            link_up: self.link_up,
            leaving: self.leaving && matches!(self.phase, Phase::Backup),
        }
    }

    // ---- predicates ----

    fn healthy(&self) -> bool {
        self.link_up && self.failing_monitors.is_empty() && !self.start_hooks_failed
    }

    fn requesting(&self) -> bool {
        self.failback_requesting || self.admin_request_until.is_some_and(|t| self.clock < t)
    }

    fn silence_base(&self) -> Duration {
        self.peer.as_ref().map_or(self.quiet_since, |p| p.last_heard.max(self.quiet_since))
    }

    /// Silent on every channel for the dead time, counting only time our loop ran on time.
    fn peer_dead(&self) -> bool {
        self.clock.saturating_sub(self.silence_base()) >= self.dead_time()
    }

    /// The peer, if heard within the dead time (its advertised state is current).
    fn fresh_peer(&self) -> Option<&Peer> {
        let w = self.dead_time();
        self.peer.as_ref().filter(|p| self.clock.saturating_sub(p.last_heard) < w)
    }

    /// The peer echoed one of our recent packets (heard on any channel).
    fn peer_hears_us(&self) -> bool {
        self.heard_us_sent_at.is_some_and(|t| self.clock.saturating_sub(t) < self.dead_time())
    }

    /// The peer could take the VIP from us now.
    fn peer_ready(&self) -> Result<(), &'static str> {
        let Some(p) = self.fresh_peer() else { return Err("the peer is not heard") };
        if !self.peer_hears_us() {
            return Err("the peer does not hear us");
        }
        if !p.flags.healthy {
            return Err("the peer reports itself unhealthy");
        }
        if p.flags.vip_held {
            return Err("the peer holds the VIP");
        }
        if p.flags.leaving {
            return Err("the peer is shutting down");
        }
        Ok(())
    }

    /// Among the two, we are the one that should hold the VIP. Both sides compute the same
    /// order from what they advertise, so at most one of them starts.
    fn we_rank_first(&self, peer: &Peer) -> bool {
        let ours = (
            self.link_up,
            self.healthy(),
            self.requesting(),
            !self.yielding,
            self.cfg.role == Role::Primary,
            self.cfg.priority,
            &self.cfg.node,
        );
        let theirs = (
            peer.flags.link_up,
            peer.flags.healthy,
            peer.flags.requesting,
            !peer.flags.yielding,
            peer.role == Role::Primary,
            peer.priority,
            &peer.name,
        );
        self.link_up && ours > theirs
    }

    // ---- alarms ----

    /// Raise (with `message`) or clear an alarm; only an edge is an action. A cleared
    /// alarm says what is over (the message given for raising it no longer holds).
    fn set_alarm(&mut self, alarm: Alarm, raised: bool, message: String, out: &mut Vec<Action>) {
        let changed = if raised { self.alarms.insert(alarm) } else { self.alarms.remove(&alarm) };
        if changed {
            let message = if raised { message } else { self.cleared_text(alarm) };
            out.push(Action::Alarm { alarm, raised, message });
        }
    }

    /// What a cleared alarm's event says.
    fn cleared_text(&self, alarm: Alarm) -> String {
        match alarm {
            Alarm::ChannelDown(ch) => match self.cfg.channels.get(ch) {
                Some(c) => format!("channel {c} works both ways again"),
                None => format!("channel {ch} works both ways again"),
            },
            Alarm::PeerOneWay => "the peer hears us again".into(),
            Alarm::TakeoverBlocked => "takeover no longer blocked".into(),
            Alarm::EscalationBlocked => "escalation no longer blocked".into(),
            Alarm::StartHooksFailed => "start hooks succeeded".into(),
            Alarm::StopHooksFailed => "stop hooks succeeded".into(),
        }
    }

    fn update_alarms(&mut self, out: &mut Vec<Action>) {
        // Give every channel one dead time after start or a stall before judging it.
        if self.clock.saturating_sub(self.quiet_since) < self.cfg.dead_time {
            return;
        }
        let w = self.cfg.dead_time;
        for ch in 0..self.links.len() {
            let l = &self.links[ch];
            let up = l.up(self.clock, w);
            let msg = if up {
                String::new()
            } else {
                format!(
                    "channel {} not working both ways (heard: {}, confirmed: {}, loss {:.0}%, {} refused packets in total)",
                    self.cfg.channels[ch],
                    l.heard_within(self.clock, w),
                    l.confirmed_within(self.clock, w),
                    l.loss * 100.0,
                    self.stats.rejected()
                )
            };
            self.set_alarm(Alarm::ChannelDown(ch), !up, msg, out);
        }
        if !self.peer_dead() || matches!(self.phase, Phase::Holding { .. }) {
            self.set_alarm(Alarm::TakeoverBlocked, false, String::new(), out);
        }
        let one_way = self.fresh_peer().is_some() && !self.peer_hears_us();
        self.set_alarm(Alarm::PeerOneWay, one_way, "peer heard but it does not echo us".into(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The timings these tests were written for: 100 ms interval, a fixed 500 ms dead time.
    fn cfg(name: &str, role: Role, prio: u8, channels: usize) -> MachineConfig {
        let chans = (0..channels).map(|i| format!("ch{i}")).collect();
        let mut c = MachineConfig::new(NodeName::new(name).unwrap(), role, prio, chans);
        c.interval = ms(100);
        c.dead_time = ms(500);
        c.dead_time_max = ms(500);
        c
    }

    fn init(boot: u64, term: u64) -> MachineInit {
        MachineInit { boot, term, peer_boot_floor: 0, vip_present: false }
    }

    /// A scripted peer that answers with correct echoes.
    struct FakePeer {
        name: NodeName,
        boot: u64,
        seq: u64,
        term: u64,
        role: Role,
        priority: u8,
        flags: Flags,
    }

    impl FakePeer {
        fn new(term: u64) -> FakePeer {
            FakePeer {
                name: NodeName::new("head-a").unwrap(),
                boot: 1000,
                seq: 0,
                term,
                role: Role::Primary,
                priority: 150,
                flags: Flags { healthy: true, link_up: true, ..Flags::default() },
            }
        }

        /// A heartbeat on `ch` that echoes the machine's newest send there.
        fn hb(&mut self, m: &Machine, ch: usize) -> Heartbeat {
            self.seq += 1;
            Heartbeat {
                node: self.name.clone(),
                boot: self.boot,
                seq: self.seq,
                channel_tag: channel_tag(&format!("ch{ch}")),
                term: self.term,
                role: self.role,
                priority: self.priority,
                flags: self.flags,
                echo_boot: m.boot,
                echo_seq: m.seq,
                echo_any_seq: m.seq,
            }
        }
    }

    fn has(out: &[Action], f: impl Fn(&Action) -> bool) -> bool {
        out.iter().any(f)
    }

    fn pos(out: &[Action], f: impl Fn(&Action) -> bool) -> usize {
        out.iter().position(f).unwrap_or_else(|| panic!("action missing from {out:#?}"))
    }

    /// Drive the machine with ticks every 50 ms from `from` to `to`, feeding `peer` packets
    /// on the listed channels every 100 ms; returns every action.
    fn run(m: &mut Machine, peer: &mut FakePeer, chans: &[usize], from: u64, to: u64) -> Vec<Action> {
        let mut all = Vec::new();
        let mut t = from;
        while t < to {
            all.extend(m.handle(Event::Tick, ms(t)));
            if t.is_multiple_of(100) {
                for &ch in chans {
                    let hb = peer.hb(m, ch);
                    all.extend(
                        m.handle(Event::Heartbeat { channel: ch, heartbeat: hb, queued: Duration::ZERO }, ms(t)),
                    );
                }
            }
            t += 50;
        }
        all
    }

    fn standby(channels: usize) -> Machine {
        Machine::new(cfg("head-b", Role::Standby, 100, channels), init(77, 3), ms(0)).0
    }

    fn peer_holding(term: u64) -> FakePeer {
        let mut p = FakePeer::new(term);
        p.flags.vip_held = true;
        p
    }

    #[test]
    fn failover_waits_for_persisted_term() {
        let mut m = standby(2);
        let mut p = peer_holding(5);
        let out = run(&mut m, &mut p, &[0, 1], 0, 2000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_) | Action::AddVip { .. })));
        assert_eq!(m.state(), State::Backup);
        // The peer dies: silence on both channels.
        let out = run(&mut m, &mut p, &[], 2000, 2600);
        let persist = pos(&out, |a| *a == Action::PersistTerm(6));
        assert!(!has(&out, |a| matches!(a, Action::AddVip { .. })), "VIP added before the term is on disk");
        assert_eq!(m.state(), State::Acquiring);
        assert!(has(&out[..persist], |a| matches!(a, Action::RecordEvent { kind: EventKind::PeerLost, .. })));
        let out = m.handle(Event::TermPersisted(6), ms(2610));
        let add = pos(&out, |a| matches!(a, Action::AddVip { term: 6, reason: AcquireReason::Failover }));
        let garp = pos(&out, |a| *a == Action::SendGarp);
        let hooks = pos(&out, |a| *a == Action::RunStartHooks);
        assert!(add < garp && garp < hooks);
        assert_eq!(m.state(), State::Holding);
        assert_eq!(m.term(), 6);
        // The announcement says so at once.
        assert!(has(
            &out,
            |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.vip_held && heartbeat.term == 6)
        ));
    }

    #[test]
    fn a_reserved_term_lets_a_failover_add_the_vip_without_waiting_for_the_disk() {
        let mut m = standby(2);
        let mut p = peer_holding(5);
        // Hearing the holder's term 5, the standby reserves 6, once (no answer yet).
        let out = run(&mut m, &mut p, &[0, 1], 0, 1000);
        assert_eq!(out.iter().filter(|a| **a == Action::ReserveTerm(6)).count(), 1, "{out:#?}");
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        // Unanswered, it is asked again after the persist timeout (5 s).
        let out = run(&mut m, &mut p, &[0, 1], 1000, 5500);
        assert_eq!(out.iter().filter(|a| **a == Action::ReserveTerm(6)).count(), 1, "{out:#?}");
        m.handle(Event::TermPersisted(6), ms(5510));
        assert_eq!((m.term(), m.disk_term()), (3, 6));
        let out = run(&mut m, &mut p, &[0, 1], 5550, 6000);
        assert!(!has(&out, |a| matches!(a, Action::ReserveTerm(_) | Action::PersistTerm(_))));
        // The peer dies: the VIP is added in the step that declares it dead, and the term
        // after it is reserved behind it.
        let out = run(&mut m, &mut p, &[], 6000, 6600);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))), "waited for the disk: {out:#?}");
        let lost = pos(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::PeerLost, .. }));
        let add = pos(&out, |a| matches!(a, Action::AddVip { term: 6, reason: AcquireReason::Failover }));
        let reserve = pos(&out, |a| *a == Action::ReserveTerm(7));
        assert!(lost < add && add < reserve, "{out:#?}");
        assert_eq!((m.state(), m.term()), (State::Holding, 6));
        // A takeover by the peer at a higher term moves the reservation above it.
        let mut m = standby(2);
        let out = run(&mut m, &mut p, &[0, 1], 0, 500);
        assert!(has(&out, |a| *a == Action::ReserveTerm(6)));
        m.handle(Event::TermPersisted(6), ms(510));
        p.term = 9;
        let out = run(&mut m, &mut p, &[0, 1], 550, 1000);
        assert!(has(&out, |a| *a == Action::ReserveTerm(10)), "{out:#?}");
    }

    #[test]
    fn one_channel_alive_means_no_takeover() {
        let mut m = standby(2);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0, 1], 0, 1000);
        let out = run(&mut m, &mut p, &[1], 1000, 10_000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_) | Action::ProbeTieBreaker)));
        assert!(has(&out, |a| matches!(a, Action::Alarm { alarm: Alarm::ChannelDown(0), raised: true, .. })));
        assert_eq!(m.alarms(), vec![Alarm::ChannelDown(0)]);
        let out = run(&mut m, &mut p, &[0, 1], 10_000, 10_500);
        assert!(has(&out, |a| matches!(a, Action::Alarm { alarm: Alarm::ChannelDown(0), raised: false, .. })));
        let cleared = out.iter().find_map(|a| match a {
            Action::Alarm { raised: false, message, .. } => Some(message.clone()),
            _ => None,
        });
        assert!(cleared.is_some_and(|t| t.contains("works both ways again")), "{out:?}");
    }

    /// Heard one way only (the peer does not echo us): still alive, no takeover.
    #[test]
    fn one_way_hearing_is_alive() {
        let mut m = standby(1);
        let mut p = peer_holding(5);
        let mut t = 0;
        while t < 5000 {
            m.handle(Event::Tick, ms(t));
            let mut hb = p.hb(&m, 0);
            hb.echo_boot = 0;
            hb.echo_seq = 0;
            m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(t));
            t += 100;
        }
        assert_eq!(m.state(), State::Backup);
        assert!(m.alarms().contains(&Alarm::PeerOneWay));
    }

    fn adaptive(m: Machine) -> Machine {
        let mut c = m.cfg.clone();
        c.dead_time_max = ms(2000);
        Machine::new(c, init(77, 3), ms(0)).0
    }

    fn feed(m: &mut Machine, p: &mut FakePeer, at: u64, queued: u64) -> Vec<Action> {
        let hb = p.hb(m, 0);
        m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: ms(queued) }, ms(at))
    }

    /// One heartbeat 300 ms late (a 400 ms gap) makes the machine wait 2 x 400 + 100 ms of
    /// silence, and a death after it is still caught at that bound; a steady peer gets the
    /// configured floor.
    #[test]
    fn a_late_heartbeat_lengthens_the_dead_time_and_a_death_is_still_caught() {
        let mut m = adaptive(standby(1));
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 3000);
        assert_eq!(m.dead_time(), ms(500), "a steady peer gets the floor");
        // Last heard at 2900, silent to 3300 (within the floor), then heard again.
        let out = run(&mut m, &mut p, &[], 3000, 3300);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        run(&mut m, &mut p, &[0], 3300, 5000);
        assert_eq!(m.dead_time(), ms(900));
        // It dies after its last heartbeat at 4900: nothing before 5800, a takeover then.
        let out = run(&mut m, &mut p, &[], 5000, 5750);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))), "declared dead inside the lengthened dead time");
        let out = run(&mut m, &mut p, &[], 5750, 5900);
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(6))), "not declared dead at 2 x gap + interval");
    }

    /// A heartbeat that waited in the kernel while our loop was late is measured at its
    /// arrival: our lateness is not the peer's jitter.
    #[test]
    fn time_in_the_kernel_queue_is_not_jitter() {
        for (queued, want) in [(150, 500), (0, 600)] {
            let mut m = adaptive(standby(1));
            let mut p = peer_holding(5);
            run(&mut m, &mut p, &[0], 0, 3000);
            // Sent and arrived at 3000 and 3100, read at 3250 (our loop ran late).
            feed(&mut m, &mut p, 3000, 0);
            m.handle(Event::Tick, ms(3050));
            feed(&mut m, &mut p, 3250, queued);
            assert_eq!(m.dead_time(), ms(want), "queued {queued} ms");
        }
    }

    #[test]
    fn stall_restarts_the_dead_time_window() {
        let mut m = standby(1);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        // Our loop freezes 3 s; the first event after it is a tick.
        let out = m.handle(Event::Tick, ms(4000));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::SelfStall, .. })));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        // The peer's queued packet is then processed and it is alive.
        let out = run(&mut m, &mut p, &[0], 4050, 6000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        // Time going backwards does not count either.
        let out = m.handle(Event::Tick, ms(10));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::ClockBackwards, .. })));
        let out = run(&mut m, &mut p, &[0], 50, 2000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        // A real death is still detected after the window.
        let out = run(&mut m, &mut p, &[], 2000, 2700);
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    /// Silence before a stall counts, the stall does not, and there is a grace of two
    /// intervals after it: a peer that died just before our stall is declared dead
    /// sooner than a whole dead time after it.
    #[test]
    fn stall_time_is_not_silence_but_earlier_silence_is() {
        let mut m = standby(1);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000); // last heard at 900
        let out = run(&mut m, &mut p, &[], 1000, 1200); // last tick at 1150: 250 ms of silence
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        // Our loop freezes 700 ms: alone that would pass for the dead time (500 ms).
        let out = m.handle(Event::Tick, ms(1850));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::SelfStall, .. })));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))), "stall time counted as silence");
        // 250 ms before + 250 ms after = the dead time: dead at 2100, not a dead time after 1850.
        let out = run(&mut m, &mut p, &[], 1900, 2100);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        let out = run(&mut m, &mut p, &[], 2100, 2150);
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(_))), "{out:#?}");
        // After a long stall with little silence before it, the grace (2 intervals) holds.
        let mut m = standby(1);
        run(&mut m, &mut p, &[0], 0, 1000); // last heard at 900
        run(&mut m, &mut p, &[], 1000, 1300); // last tick at 1250: 350 ms of silence
        let out = m.handle(Event::Tick, ms(5000)); // stall of 3.75 s
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        let out = run(&mut m, &mut p, &[], 5050, 5200);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))), "takeover inside the grace after a stall");
        let out = run(&mut m, &mut p, &[], 5200, 5250);
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(_))), "{out:#?}");
    }

    #[test]
    fn tiebreaker_and_fence_gate_the_takeover() {
        let mut c = cfg("head-b", Role::Standby, 100, 1);
        c.tiebreaker = true;
        c.fence = true;
        let (mut m, _) = Machine::new(c, init(77, 3), ms(0));
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        let out = run(&mut m, &mut p, &[], 1000, 1600);
        assert!(has(&out, |a| *a == Action::ProbeTieBreaker));
        assert!(!has(&out, |a| matches!(a, Action::RunFence | Action::PersistTerm(_))));
        let out = m.handle(Event::TieBreakerResult { reachable: false }, ms(1600));
        assert!(has(&out, |a| matches!(a, Action::Alarm { alarm: Alarm::TakeoverBlocked, raised: true, .. })));
        assert_eq!(m.state(), State::Backup);
        // Retried after the back-off.
        let out = run(&mut m, &mut p, &[], 1650, 2700);
        assert!(has(&out, |a| *a == Action::ProbeTieBreaker));
        let out = m.handle(Event::TieBreakerResult { reachable: true }, ms(2700));
        assert!(has(&out, |a| *a == Action::RunFence));
        let out = m.handle(Event::FenceResult { ok: false }, ms(2800));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        assert_eq!(m.state(), State::Backup);
        let out = run(&mut m, &mut p, &[], 2850, 3900);
        assert!(has(&out, |a| *a == Action::ProbeTieBreaker));
        m.handle(Event::TieBreakerResult { reachable: true }, ms(3900));
        let out = m.handle(Event::FenceResult { ok: true }, ms(4000));
        assert!(has(&out, |a| *a == Action::PersistTerm(6)));
        let out = m.handle(Event::TermPersisted(6), ms(4010));
        assert!(has(&out, |a| matches!(a, Action::AddVip { term: 6, .. })));
        assert!(has(&out, |a| matches!(a, Action::Alarm { alarm: Alarm::TakeoverBlocked, raised: false, .. })));
    }

    #[test]
    fn peer_heard_during_checks_aborts() {
        let mut c = cfg("head-b", Role::Standby, 100, 1);
        c.tiebreaker = true;
        let (mut m, _) = Machine::new(c, init(77, 3), ms(0));
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        let out = run(&mut m, &mut p, &[], 1000, 1600);
        assert!(has(&out, |a| *a == Action::ProbeTieBreaker));
        let out = run(&mut m, &mut p, &[0], 1600, 1700);
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::TakeoverAborted, .. })));
        let out = m.handle(Event::TieBreakerResult { reachable: true }, ms(1700));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn link_down_blocks_failover() {
        let mut m = standby(1);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        m.handle(Event::LinkState { up: false }, ms(1000));
        let out = run(&mut m, &mut p, &[], 1050, 3000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        assert!(m.alarms().contains(&Alarm::TakeoverBlocked));
        m.handle(Event::LinkState { up: true }, ms(3000));
        let out = run(&mut m, &mut p, &[], 3050, 4500);
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    fn holding(name: &str, role: Role, prio: u8, term: u64) -> Machine {
        let (mut m, _) = Machine::new(cfg(name, role, prio, 1), init(77, term - 1), ms(0));
        // Nobody around: it takes over after the dead time.
        let mut t = 0;
        while m.state() != State::Acquiring {
            m.handle(Event::Tick, ms(t));
            t += 50;
        }
        m.handle(Event::TermPersisted(term), ms(t));
        assert_eq!(m.state(), State::Holding);
        m
    }

    #[test]
    fn split_brain_higher_term_wins() {
        // We hold at term 4; the peer at term 6: we release and say so.
        let mut m = holding("head-b", Role::Standby, 100, 4);
        let mut p = peer_holding(6);
        let out = run(&mut m, &mut p, &[0], 1000, 1300);
        let rm = pos(&out, |a| *a == Action::RemoveVip);
        let stop = pos(&out, |a| *a == Action::RunStopHooks);
        assert!(rm < stop);
        assert!(has(&out[stop..], |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.releasing)));
        assert_eq!(m.state(), State::Releasing);
        let out = m.handle(Event::StopHooksDone { ok: true }, ms(1310));
        assert!(has(
            &out,
            |a| matches!(a, Action::Send { heartbeat, .. } if !heartbeat.flags.vip_held && heartbeat.flags.releasing)
        ));
        assert_eq!(m.state(), State::Backup);
        // Stays backup while the winner holds.
        let out = run(&mut m, &mut p, &[0], 1350, 5000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn split_brain_winner_keeps_and_reannounces() {
        let mut m = holding("head-a", Role::Primary, 150, 6);
        let mut p = peer_holding(4);
        p.name = NodeName::new("head-b").unwrap();
        let out = run(&mut m, &mut p, &[0], 1000, 1300);
        assert!(!has(&out, |a| *a == Action::RemoveVip));
        assert!(has(&out, |a| *a == Action::SendGarp));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::SplitBrain, .. })));
        // The loser releases: ARP again at once.
        p.flags.releasing = true;
        let hb = p.hb(&m, 0);
        let out = m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(1310));
        assert!(has(&out, |a| *a == Action::SendGarp));
        assert_eq!(m.state(), State::Holding);
    }

    #[test]
    fn split_brain_equal_terms_priority_then_name() {
        let mut m = holding("head-b", Role::Standby, 100, 6);
        let mut p = peer_holding(6); // priority 150
        run(&mut m, &mut p, &[0], 1000, 1300);
        assert_eq!(m.state(), State::Releasing);
        let mut m = holding("head-b", Role::Standby, 150, 6);
        let mut p = peer_holding(6); // "head-a" < "head-b"
        run(&mut m, &mut p, &[0], 1000, 1300);
        assert_eq!(m.state(), State::Holding);
    }

    #[test]
    fn holder_not_heard_by_other_holder_yields() {
        let mut m = holding("head-a", Role::Primary, 150, 9);
        let mut p = peer_holding(4);
        p.name = NodeName::new("head-b").unwrap();
        let mut t = 1000;
        while t < 1400 {
            m.handle(Event::Tick, ms(t));
            let mut hb = p.hb(&m, 0);
            hb.echo_boot = 0;
            m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(t));
            t += 100;
        }
        assert_eq!(m.state(), State::Holding, "yields only after a dead time of one-way hearing");
        while t < 2000 {
            m.handle(Event::Tick, ms(t));
            let mut hb = p.hb(&m, 0);
            hb.echo_boot = 0;
            m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(t));
            t += 100;
        }
        assert_eq!(m.state(), State::Releasing);
    }

    #[test]
    fn planned_switchover_from_the_standby() {
        // The standby asks; the peer (scripted) releases; the standby then acquires.
        let mut m = standby(1);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        let out = m.handle(Event::AdminTakeover, ms(1000));
        assert!(has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.requesting)));
        p.flags.vip_held = false;
        p.flags.releasing = true;
        p.flags.yielding = true;
        let out = run(&mut m, &mut p, &[0], 1050, 1200);
        assert!(has(&out, |a| *a == Action::PersistTerm(6)));
        assert!(!has(&out, |a| *a == Action::ProbeTieBreaker), "coordinated: no failover checks");
        let out = m.handle(Event::TermPersisted(6), ms(1200));
        assert!(has(&out, |a| matches!(a, Action::AddVip { reason: AcquireReason::Coordinated, .. })));
    }

    #[test]
    fn holder_hands_over_on_request_only_to_a_healthy_peer() {
        let mut m = holding("head-a", Role::Primary, 150, 6);
        let mut p = FakePeer::new(5);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.flags.requesting = true;
        p.flags.healthy = false;
        run(&mut m, &mut p, &[0], 1000, 2000);
        assert_eq!(m.state(), State::Holding);
        p.flags.healthy = true;
        let out = run(&mut m, &mut p, &[0], 2000, 2200);
        assert!(has(&out, |a| *a == Action::RemoveVip));
        let out = m.handle(Event::StopHooksDone { ok: true }, ms(2210));
        assert!(has(
            &out,
            |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.yielding && !heartbeat.flags.vip_held)
        ));
        // Having handed over on request, it does not take the VIP back by itself.
        p.flags.requesting = false;
        p.flags.vip_held = true;
        let out = run(&mut m, &mut p, &[0], 2250, 10_000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn admin_release_refused_without_a_ready_peer() {
        let mut m = holding("head-a", Role::Primary, 150, 6);
        let out = m.handle(Event::AdminRelease, ms(1000));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::AdminRefused, .. })));
        assert_eq!(m.state(), State::Holding);
        let mut p = FakePeer::new(5);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        run(&mut m, &mut p, &[0], 1000, 1500);
        let out = m.handle(Event::AdminRelease, ms(1500));
        assert!(has(&out, |a| *a == Action::RemoveVip));
    }

    #[test]
    fn escalation_hands_over_only_when_peer_healthy() {
        let mut m = holding("head-a", Role::Primary, 150, 6);
        let mut p = FakePeer::new(5);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.flags.healthy = false;
        run(&mut m, &mut p, &[0], 1000, 1500);
        let out = m.handle(Event::MonitorEscalation { monitor: "slurmctld".into() }, ms(1500));
        assert!(has(&out, |a| matches!(a, Action::Alarm { alarm: Alarm::EscalationBlocked, raised: true, .. })));
        assert_eq!(m.state(), State::Holding);
        assert!(has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if !heartbeat.flags.healthy)));
        p.flags.healthy = true;
        let out = run(&mut m, &mut p, &[0], 1500, 1700);
        assert!(has(&out, |a| *a == Action::RemoveVip));
    }

    #[test]
    fn delayed_failback() {
        let mut c = cfg("head-a", Role::Primary, 150, 1);
        c.failback = Failback::Delayed(Duration::from_secs(3));
        let (mut m, _) = Machine::new(c, init(77, 3), ms(0));
        let mut p = peer_holding(5);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.priority = 100;
        let out = run(&mut m, &mut p, &[0], 0, 2500);
        assert!(!has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.requesting)));
        let out = run(&mut m, &mut p, &[0], 2500, 4000);
        assert!(has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.requesting)));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))), "asks, never grabs");
        p.flags.vip_held = false;
        p.flags.yielding = true;
        let out = run(&mut m, &mut p, &[0], 4000, 4200);
        assert!(has(&out, |a| *a == Action::PersistTerm(6)));
    }

    #[test]
    fn manual_failback_never_asks() {
        let (mut m, _) = Machine::new(cfg("head-a", Role::Primary, 150, 1), init(77, 3), ms(0));
        let mut p = peer_holding(5);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        let out = run(&mut m, &mut p, &[0], 0, 60_000);
        assert!(!has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.requesting)));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn cold_start_primary_acquires_once_confirmed() {
        let (mut m, _) = Machine::new(cfg("head-a", Role::Primary, 150, 1), init(77, 3), ms(0));
        let mut p = FakePeer::new(3);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.priority = 100;
        let out = run(&mut m, &mut p, &[0], 0, 300);
        assert!(has(&out, |a| *a == Action::PersistTerm(4)));
        // And the standby side of the same situation stays put.
        let mut s = standby(1);
        let mut primary = FakePeer::new(3);
        let out = run(&mut s, &mut primary, &[0], 0, 5000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    /// Nobody holds and we rank first, but the peer does not echo us: it may be about to
    /// take over by failover, so we wait (it will, and we then stay backup).
    #[test]
    fn no_coordinated_acquire_without_confirmation() {
        let (mut m, _) = Machine::new(cfg("head-a", Role::Primary, 150, 1), init(77, 3), ms(0));
        let mut p = FakePeer::new(3);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.priority = 100;
        let mut out = Vec::new();
        for t in (0..3000).step_by(50) {
            out.extend(m.handle(Event::Tick, ms(t)));
            if t % 100 == 0 {
                let mut hb = p.hb(&m, 0);
                hb.echo_any_seq = 0;
                hb.echo_seq = 0;
                out.extend(m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(t)));
            }
        }
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        assert!(m.alarms().contains(&Alarm::PeerOneWay));
        // The any-channel echo alone is enough: each direction may survive on another channel.
        let hb = p.hb(&m, 0);
        let hb = Heartbeat { echo_seq: 0, ..hb };
        let out = m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(3000));
        assert!(has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn admin_release_cancels_a_coordinated_acquisition() {
        let (mut m, _) = Machine::new(cfg("head-a", Role::Primary, 150, 1), init(77, 3), ms(0));
        let mut p = FakePeer::new(3);
        p.name = NodeName::new("head-b").unwrap();
        p.role = Role::Standby;
        p.priority = 100;
        run(&mut m, &mut p, &[0], 0, 100);
        assert_eq!(m.state(), State::Acquiring);
        m.handle(Event::AdminRelease, ms(110));
        assert_eq!(m.state(), State::Backup);
        let out = m.handle(Event::TermPersisted(4), ms(120));
        assert!(!has(&out, |a| matches!(a, Action::AddVip { .. })));
        // On disk, but never held: the next takeover may use it without waiting.
        assert_eq!((m.term(), m.disk_term()), (3, 4));
        // Yielding: it ranks below the standby now and does not retry.
        let out = run(&mut m, &mut p, &[0], 150, 3000);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
    }

    #[test]
    fn leftover_vip_is_removed_at_start() {
        let (m, out) = Machine::new(
            cfg("head-a", Role::Primary, 150, 1),
            MachineInit { boot: 5, term: 3, peer_boot_floor: 0, vip_present: true },
            ms(0),
        );
        assert_eq!(out[0], Action::RemoveVip);
        assert_eq!(out[1], Action::RunStopHooks);
        assert_eq!(m.state(), State::Releasing);
    }

    #[test]
    fn screening_and_replay_counted() {
        let mut m = standby(2);
        let mut p = peer_holding(5);
        let hb = p.hb(&m, 0);
        m.handle(Event::Heartbeat { channel: 0, heartbeat: hb.clone(), queued: Duration::ZERO }, ms(10));
        m.handle(Event::Heartbeat { channel: 0, heartbeat: hb.clone(), queued: Duration::ZERO }, ms(20));
        m.handle(Event::Heartbeat { channel: 1, heartbeat: hb.clone(), queued: Duration::ZERO }, ms(30));
        m.handle(Event::Heartbeat { channel: 5, heartbeat: hb.clone(), queued: Duration::ZERO }, ms(40));
        let mut own = hb.clone();
        own.node = NodeName::new("head-b").unwrap();
        m.handle(Event::Heartbeat { channel: 0, heartbeat: own, queued: Duration::ZERO }, ms(50));
        let mut other = p.hb(&m, 0);
        other.node = NodeName::new("head-c").unwrap();
        m.handle(Event::Heartbeat { channel: 0, heartbeat: other, queued: Duration::ZERO }, ms(60));
        m.handle(Event::Rejected { channel: 0, error: PacketError::Mac(1) }, ms(70));
        let s = m.stats();
        assert_eq!(
            (s.accepted, s.replay, s.wrong_channel, s.own_packet, s.foreign_node, s.mac),
            (1, 1, 2, 1, 1, 1),
            "{s:?}"
        );
    }

    #[test]
    fn shutdown_of_holder_releases_before_saying_goodbye() {
        let mut m = holding("head-a", Role::Primary, 150, 4);
        let mut p = FakePeer::new(4);
        p.name = NodeName::new("head-b").unwrap();
        run(&mut m, &mut p, &[0], 1000, 1300);
        let out = m.handle(Event::Shutdown, ms(1300));
        let rm = pos(&out, |a| *a == Action::RemoveVip);
        assert!(rm < pos(&out, |a| *a == Action::RunStopHooks));
        assert!(!has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.leaving)));
        assert!(!has(&out, |a| *a == Action::Exit));
        // While the stop hooks run, heartbeats still say "held", so the peer waits.
        let out = run(&mut m, &mut p, &[0], 1350, 2500);
        assert!(has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.vip_held)));
        assert!(!has(&out, |a| matches!(a, Action::Send { heartbeat, .. } if heartbeat.flags.leaving)));
        let out = m.handle(Event::StopHooksDone { ok: true }, ms(2500));
        let bye: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send { heartbeat, .. } => Some(heartbeat),
                _ => None,
            })
            .collect();
        assert_eq!(bye.len(), FAREWELL_ROUNDS, "{out:#?}");
        assert!(bye.iter().all(|h| h.flags.leaving && !h.flags.vip_held));
        assert!(bye.windows(2).all(|w| w[0].seq < w[1].seq), "each round is new, never a replay");
        assert_eq!(out.last(), Some(&Action::Exit));
        // Inert afterwards: no sends, no acquisition, whatever comes in.
        let out = run(&mut m, &mut p, &[], 2550, 5000);
        assert!(out.iter().all(|a| !matches!(a, Action::Send { .. } | Action::PersistTerm(_) | Action::Exit)));
    }

    #[test]
    fn shutdown_aborts_an_acquisition_and_exits_at_once() {
        let (mut m, _) = Machine::new(cfg("head-b", Role::Standby, 100, 1), init(77, 3), ms(0));
        let mut t = 0;
        while m.state() != State::Acquiring {
            m.handle(Event::Tick, ms(t));
            t += 50;
        }
        let out = m.handle(Event::Shutdown, ms(t));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::TakeoverAborted, .. })));
        assert_eq!(out.last(), Some(&Action::Exit));
        // The term write that was under way lands: no VIP for a machine on its way out.
        let out = m.handle(Event::TermPersisted(4), ms(t + 10));
        assert!(!has(&out, |a| matches!(a, Action::AddVip { .. })));
    }

    #[test]
    fn leaving_peer_is_replaced_at_once_without_checks() {
        let mut c = cfg("head-b", Role::Standby, 100, 2);
        c.tiebreaker = true;
        c.fence = true;
        let (mut m, _) = Machine::new(c, init(77, 3), ms(0));
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0, 1], 0, 1000);
        // The peer releases (stop hooks), then says goodbye on one channel only.
        p.flags.vip_held = false;
        p.flags.releasing = true;
        let out = run(&mut m, &mut p, &[0, 1], 1000, 1200);
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_) | Action::ProbeTieBreaker)));
        p.flags.leaving = true;
        let hb = p.hb(&m, 1);
        let out = m.handle(Event::Heartbeat { channel: 1, heartbeat: hb, queued: Duration::ZERO }, ms(1210));
        assert!(has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::PeerLeft, .. })));
        assert!(has(&out, |a| *a == Action::PersistTerm(6)), "no dead time, no tie-breaker, no fence: {out:#?}");
        assert!(!has(&out, |a| matches!(a, Action::ProbeTieBreaker | Action::RunFence)));
        let out = m.handle(Event::TermPersisted(6), ms(1220));
        assert!(has(&out, |a| matches!(a, Action::AddVip { term: 6, reason: AcquireReason::PeerLeft })));
        // Its silence afterwards is no "peer lost".
        let out = run(&mut m, &mut p, &[], 1250, 3000);
        assert!(!has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::PeerLost, .. })));
    }

    #[test]
    fn leaving_without_a_fresh_echo_is_ignored() {
        let mut m = standby(1);
        let mut p = peer_holding(5);
        run(&mut m, &mut p, &[0], 0, 1000);
        // A goodbye that does not echo our boot (recorded before we started, say).
        p.flags = Flags { leaving: true, healthy: true, link_up: true, ..Flags::default() };
        let mut hb = p.hb(&m, 0);
        hb.echo_boot = 1;
        let out = m.handle(Event::Heartbeat { channel: 0, heartbeat: hb, queued: Duration::ZERO }, ms(1010));
        assert!(!has(&out, |a| matches!(a, Action::PersistTerm(_))));
        assert!(!has(&out, |a| matches!(a, Action::RecordEvent { kind: EventKind::PeerLeft, .. })));
    }

    #[test]
    fn step_is_deterministic() {
        let script = |m0: Machine| {
            let mut m = m0;
            let mut all = Vec::new();
            for t in (0..3000).step_by(37) {
                let (m2, a) = step(m, Event::Tick, ms(t));
                m = m2;
                all.extend(a);
            }
            format!("{all:?}")
        };
        assert_eq!(script(standby(2)), script(standby(2)));
    }
}
