//! The I/O side of failover: one tokio task owns the [`Machine`] and translates between
//! the world (UDP heartbeats, rtnetlink, ARP, hook processes, the state file) and
//! [`Event`]/[`Action`], following the adapter contract in [`super`].
//!
//! Side effects that take time (disk writes, netlink, hooks, probes) run in helper tasks
//! that report back through one event queue, so the machine task never waits on I/O.
//!
//! Files under the data dir:
//! - `failover.state`: `term`, `boot`, `peer_boot` (written atomically, fsynced);
//! - `failover.status.json`: the [`Status`] snapshot, rewritten every second (read by
//!   `understudy failover status`);
//! - `failover.request`: an admin request (`takeover` or `release`) dropped there by
//!   `understudy failover takeover|release`; the service consumes and deletes it.

use super::config::{Channel, Hook, MonitorConfig};
use super::machine::{Action, Alarm, Event, Machine, MachineInit, State};
use super::monitor::{MonitorAction, MonitorTracker};
use super::net;
use super::packet::{Keyring, RxStats, decode, encode, next_boot_id, parse_key_file};
use super::{Check, FailoverConfig};
use crate::inventory::Inventory;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The state file name under the data dir.
pub const STATE_FILE: &str = "failover.state";
/// The status snapshot file name under the data dir.
pub const STATUS_FILE: &str = "failover.status.json";
/// The admin request file name under the data dir.
pub const REQUEST_FILE: &str = "failover.request";
/// How many recent events the status keeps.
const RECENT_EVENTS: usize = 50;

/// Failover service errors.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The configuration cannot be used.
    #[error("failover config: {0}")]
    Config(String),
    /// The key file is missing or bad.
    #[error("failover key file {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A heartbeat socket cannot be set up.
    #[error("failover channel {channel} ({addr}): {source}")]
    Socket {
        /// Channel name.
        channel: String,
        /// Local address and port.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The state file cannot be read or written.
    #[error("failover state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// rtnetlink failed.
    #[error("failover netlink: {0}")]
    Net(#[from] net::NetError),
}

/// What survives a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The last term persisted.
    pub term: u64,
    /// The last boot id we used.
    pub boot: u64,
    /// The highest peer boot id seen.
    pub peer_boot: u64,
}

impl Persisted {
    /// Parse `key value` lines; unknown keys are ignored so older binaries read newer files.
    pub fn parse(text: &str) -> Persisted {
        let mut p = Persisted::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
            match k {
                "term" => p.term = v,
                "boot" => p.boot = v,
                "peer_boot" => p.peer_boot = v,
                _ => {}
            }
        }
        p
    }

    fn render(&self) -> String {
        format!("term {}\nboot {}\npeer_boot {}\n", self.term, self.boot, self.peer_boot)
    }
}

/// Write `data` to `path` atomically and durably: temp file, fsync, rename, fsync the dir.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One channel in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Channel name.
    pub name: String,
    /// Works both ways.
    pub up: bool,
    /// Milliseconds since the peer was last heard on it.
    pub last_heard_ms: Option<u64>,
    /// Estimated loss of the peer's packets (0-1).
    pub loss: f64,
    /// Last round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Failed sends.
    pub send_failures: u64,
}

/// One recent event in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventInfo {
    /// RFC 3339 time.
    pub ts: String,
    /// Kind (`failover.takeover`, ...).
    pub kind: String,
    /// Details.
    pub message: String,
}

/// One service monitor in the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorInfo {
    /// Monitor name.
    pub name: String,
    /// `unknown`, `up` or `down`.
    pub health: String,
    /// Out of restarts and handed to the state machine (until it passes again).
    pub escalated: bool,
    /// Restarts since the service started.
    pub restarts: u64,
    /// Checks run.
    pub checks: u64,
    /// Checks failed.
    pub failures: u64,
}

/// Monitors' status, written by their tasks, read when the status is published.
type SharedMonitors = Arc<std::sync::Mutex<Vec<MonitorInfo>>>;

/// Counts of what the service did since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// VIP additions (takeovers).
    pub takeovers: u64,
    /// VIP removals (releases).
    pub releases: u64,
    /// Gratuitous ARP rounds.
    pub garps: u64,
    /// Datagrams on a heartbeat port from an address that is not the peer's (dropped unread).
    pub foreign_source: u64,
}

/// The failover status shown by the API and the CLI.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Configured role.
    pub role: String,
    /// `backup`, `acquiring`, `holding` or `releasing`.
    pub state: String,
    /// We hold the VIP.
    pub holding: bool,
    /// Who holds the VIP as far as we know (`null`: nobody, or unknown).
    pub holder: Option<String>,
    /// Our term.
    pub term: u64,
    /// Our boot id.
    pub boot: u64,
    /// The peer's name, once heard.
    pub peer: Option<String>,
    /// Milliseconds since the peer was last heard on any channel.
    pub peer_last_heard_ms: Option<u64>,
    /// Per-channel health.
    pub channels: Vec<ChannelInfo>,
    /// Raised alarms.
    pub alarms: Vec<String>,
    /// Heartbeats refused (bad MAC, replay, ...).
    pub rejected: u64,
    /// Heartbeats accepted, and refused by reason.
    pub rx: RxStats,
    /// What the service did.
    pub counters: Counters,
    /// Service monitors.
    pub monitors: Vec<MonitorInfo>,
    /// Recent events, oldest first.
    pub events: VecDeque<EventInfo>,
    /// When this snapshot was taken (RFC 3339).
    pub updated: String,
    /// The same, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
}

impl Status {
    /// The human-readable form (`understudy failover status`).
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "node {} ({}): {}, term {}", self.node, self.role, self.state, self.term);
        let _ = writeln!(o, "holder: {}", self.holder.as_deref().unwrap_or("nobody (or unknown)"));
        let heard = self.peer_last_heard_ms.map(|m| format!("{m} ms ago")).unwrap_or_else(|| "never".into());
        let _ = writeln!(o, "peer: {} (last heard {heard})", self.peer.as_deref().unwrap_or("-"));
        for c in &self.channels {
            let last = c.last_heard_ms.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "channel {}: {} loss {:.1}% last heard {last} send failures {}",
                c.name,
                if c.up { "up" } else { "DOWN" },
                c.loss * 100.0,
                c.send_failures
            );
        }
        for m in &self.monitors {
            let esc = if m.escalated { ", ESCALATED" } else { "" };
            let _ = writeln!(
                o,
                "monitor {}: {}{esc} ({} restarts, {} of {} checks failed)",
                m.name, m.health, m.restarts, m.failures, m.checks
            );
        }
        let _ = writeln!(
            o,
            "heartbeats: {} accepted, {} refused, {} from strangers",
            self.rx.accepted, self.rejected, self.counters.foreign_source
        );
        for a in &self.alarms {
            let _ = writeln!(o, "ALARM {a}");
        }
        for e in self.events.iter().rev().take(10).collect::<Vec<_>>().into_iter().rev() {
            let _ = writeln!(o, "{} {} {}", e.ts, e.kind, e.message);
        }
        let _ = writeln!(o, "updated {}", self.updated);
        o
    }
}

/// Read the status the running service last wrote (None: no file, or unreadable).
pub fn load_status(data_dir: &Path) -> Option<Status> {
    let text = std::fs::read(data_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The status shared with the HTTP API.
pub type SharedStatus = Arc<RwLock<Status>>;

/// An admin request, delivered through [`REQUEST_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRequest {
    /// Take the VIP.
    Takeover,
    /// Give the VIP away.
    Release,
}

impl AdminRequest {
    /// The word in the request file.
    pub fn word(self) -> &'static str {
        match self {
            AdminRequest::Takeover => "takeover",
            AdminRequest::Release => "release",
        }
    }
}

/// Drop an admin request for a running service (atomically, so it never reads half).
pub fn submit_request(data_dir: &Path, req: AdminRequest) -> std::io::Result<()> {
    write_durably(&data_dir.join(REQUEST_FILE), req.word().as_bytes())
}

/// Why an admin request did not reach the service.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No status file: failover is not configured here, or never ran.
    #[error("failover is not running on this server (no [failover] section)")]
    NotRunning,
    /// The status file is old: the service is not running now.
    #[error("the failover service is not running (its status is {0} s old)")]
    Stale(u64),
    /// The service did not take the request in time.
    #[error("the failover service did not pick up the request within {0:?}")]
    NotPickedUp(Duration),
    /// The request file cannot be written.
    #[error("writing the request: {0}")]
    Io(#[from] std::io::Error),
}

/// Hand `req` to the running service and wait until it took it (at most `wait`); a
/// request it did not take is withdrawn, so it cannot act by surprise later. Blocking.
pub fn deliver_request(data_dir: &Path, req: AdminRequest, wait: Duration) -> Result<(), RequestError> {
    let status = load_status(data_dir).ok_or(RequestError::NotRunning)?;
    let age_ms = (wall_micros() / 1000).saturating_sub(status.updated_unix_ms);
    // The service rewrites it every second; a few seconds of slack for a busy machine.
    if age_ms > 5000 {
        return Err(RequestError::Stale(age_ms / 1000));
    }
    submit_request(data_dir, req)?;
    let path = data_dir.join(REQUEST_FILE);
    let start = std::time::Instant::now();
    while start.elapsed() < wait {
        if !path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match std::fs::remove_file(&path) {
        // Taken between the last look and now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(RequestError::NotPickedUp(wait)),
    }
}

/// Read and delete a pending admin request, if any.
fn take_request(data_dir: &Path) -> Option<AdminRequest> {
    let path = data_dir.join(REQUEST_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match text.trim() {
        "takeover" => Some(AdminRequest::Takeover),
        "release" => Some(AdminRequest::Release),
        other => {
            tracing::warn!("failover: ignoring unknown admin request {other:?}");
            None
        }
    }
}

fn alarm_name(a: Alarm, channels: &[Channel]) -> String {
    match a {
        Alarm::ChannelDown(i) => {
            format!("channel_down:{}", channels.get(i).map(|c| c.name.as_str()).unwrap_or("?"))
        }
        Alarm::PeerOneWay => "peer_one_way".into(),
        Alarm::TakeoverBlocked => "takeover_blocked".into(),
        Alarm::EscalationBlocked => "escalation_blocked".into(),
        Alarm::StartHooksFailed => "start_hooks_failed".into(),
        Alarm::StopHooksFailed => "stop_hooks_failed".into(),
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Backup => "backup",
        State::Acquiring => "acquiring",
        State::Holding => "holding",
        State::Releasing => "releasing",
    }
}

fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Everything checked and opened before the service runs, so a bad setup fails the start.
pub struct Prepared {
    cfg: FailoverConfig,
    data_dir: PathBuf,
    keys: Keyring,
    sockets: Vec<Arc<UdpSocket>>,
    init: MachineInit,
    persisted: Persisted,
    status: SharedStatus,
}

impl Prepared {
    /// The status the running service keeps up to date.
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }
}

/// Validate, read the key and the state file, bind the sockets, look at the VIPs, and
/// persist the new boot id (before any heartbeat leaves).
pub async fn prepare(cfg: FailoverConfig, data_dir: &Path) -> Result<Prepared, FailoverError> {
    cfg.validate().map_err(FailoverError::Config)?;
    let keys = read_keys(&data_dir.join(&cfg.key_file))?;
    let sockets = cfg.channels.iter().map(bind_channel).collect::<Result<Vec<_>, _>>()?;
    let state_path = data_dir.join(STATE_FILE);
    let mut persisted = match std::fs::read_to_string(&state_path) {
        Ok(t) => Persisted::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
        Err(source) => return Err(FailoverError::State { path: state_path, source }),
    };
    persisted.boot = next_boot_id(persisted.boot, wall_micros());
    write_durably(&state_path, persisted.render().as_bytes())
        .map_err(|source| FailoverError::State { path: state_path.clone(), source })?;
    let vip_present = net::any_vip_present(&cfg.vips).await?;
    if vip_present {
        // Adopting it would be a guess: the peer may have taken over while we were down.
        tracing::warn!(
            "failover: a VIP is already on its interface at start (left by an earlier process, or added by \
             hand); removing it: the pair decides afresh who holds it"
        );
    }
    let init =
        MachineInit { boot: persisted.boot, term: persisted.term, peer_boot_floor: persisted.peer_boot, vip_present };
    let status = Arc::new(RwLock::new(Status { node: cfg.node.clone(), ..Status::default() }));
    Ok(Prepared { cfg, data_dir: data_dir.to_path_buf(), keys, sockets, init, persisted, status })
}

fn read_keys(path: &Path) -> Result<Keyring, FailoverError> {
    let bad = |message: String| FailoverError::Key { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!("{e}; create one with `understudy failover keygen {}` and copy it to the peer", path.display()))
    })?;
    parse_key_file(&text).map_err(|e| bad(e.to_string()))
}

/// A UDP socket bound to the channel's local address (not 0.0.0.0, so heartbeats only
/// ever leave and arrive on that network).
fn bind_channel(c: &Channel) -> Result<Arc<UdpSocket>, FailoverError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(c.local, c.port);
    let err = |source| FailoverError::Socket { channel: c.name.clone(), addr, source };
    let domain = if c.local.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s.into()).map(Arc::new).map_err(err)
}

/// Work for the VIP task, done strictly in order: hooks run after the VIP change before
/// them, so a start hook finds the address present and a stop hook finds it gone.
#[derive(Debug)]
enum VipOp {
    Add,
    Remove,
    Garp,
    StartHooks,
    StopHooks,
}

/// Handles to the helper tasks the machine task hands work to.
struct Helpers {
    events: mpsc::UnboundedSender<Event>,
    persist: mpsc::UnboundedSender<(Persisted, Option<u64>)>,
    vip: mpsc::UnboundedSender<VipOp>,
    log: mpsc::UnboundedSender<(String, String)>,
}

/// Run the service until `shutdown`. Then the machine shuts down ([`Event::Shutdown`]): a
/// held VIP is removed and the stop hooks run while heartbeats go on, then `leaving`
/// heartbeats tell the peer to take over at once. A stopped service never leaves the
/// kernel answering ARP for the VIP.
pub async fn serve(p: Prepared, inv: Inventory, shutdown: CancellationToken) -> Result<(), FailoverError> {
    let Prepared { cfg, data_dir, keys, sockets, init, mut persisted, status } = p;
    let mcfg = cfg.machine_config().map_err(FailoverError::Config)?;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let tasks = tokio_util::task::TaskTracker::new();
    let helper_stop = CancellationToken::new();
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let status_task = tokio::spawn(status_writer(data_dir.join(STATUS_FILE), status_rx));
    let mut view = View::new(&cfg, &status, status_tx);
    spawn_receivers(&tasks, &cfg, &sockets, &keys, &ev_tx, &helper_stop, &view.foreign);
    spawn_link_poller(&tasks, &cfg, &ev_tx, &helper_stop);
    spawn_monitors(&tasks, &cfg.monitors, &ev_tx, &helper_stop, &view.monitors);
    spawn_request_poller(&tasks, &data_dir, &ev_tx, &helper_stop);
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let persist_task = tokio::spawn(persister(data_dir.join(STATE_FILE), persist_rx, ev_tx.clone()));
    let (vip_tx, vip_rx) = mpsc::unbounded_channel();
    let vip_task = tokio::spawn(vip_worker(cfg.clone(), vip_rx, ev_tx.clone()));
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let log_task = tokio::spawn(event_logger(inv, log_rx));
    let h = Helpers { events: ev_tx.clone(), persist: persist_tx, vip: vip_tx, log: log_tx };

    let origin = tokio::time::Instant::now();
    let now = || origin.elapsed();
    let (mut m, first) = Machine::new(mcfg, init, now());
    println!("understudy: failover {} running", cfg.node);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tracing::info!("failover: node {} ({:?}) boot {} term {}", cfg.node, cfg.role, m.boot(), m.term());
    let mut pending: VecDeque<Event> = VecDeque::new();
    run_actions(first, &cfg, &keys, &sockets, &h, &mut persisted, &mut view, &mut pending);
    let mut status_every = tokio::time::interval(Duration::from_secs(1));
    status_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set at shutdown: the machine's own release deadline (hook_timeout) ends it sooner.
    let mut hard_stop: Option<tokio::time::Instant> = None;
    'run: loop {
        while let Some(e) = pending.pop_front() {
            view.observe(&e);
            let acts = m.handle(e, now());
            if run_actions(acts, &cfg, &keys, &sockets, &h, &mut persisted, &mut view, &mut pending) {
                break 'run;
            }
        }
        let wait = m.next_wakeup_in();
        let event = tokio::select! {
            _ = shutdown.cancelled(), if hard_stop.is_none() => {
                hard_stop = Some(tokio::time::Instant::now() + cfg.hook_timeout + Duration::from_secs(5));
                Event::Shutdown
            }
            _ = async { tokio::time::sleep_until(hard_stop.unwrap_or_else(tokio::time::Instant::now)).await },
                if hard_stop.is_some() => {
                tracing::error!("failover: shutdown did not complete in time; stopping anyway");
                break;
            }
            e = ev_rx.recv() => match e { Some(e) => e, None => break },
            _ = tokio::time::sleep(wait) => Event::Tick,
            _ = status_every.tick() => {
                view.publish(&m);
                continue;
            }
        };
        pending.push_back(event);
    }
    helper_stop.cancel();
    tasks.close();
    drop(h);
    drop(ev_tx);
    // Let queued VIP work finish first, so a late add cannot follow our removal.
    let _ = vip_task.await;
    // The machine removed it already; this covers a shutdown that ran out of time.
    if let Err(e) = net::remove_vips(&cfg.vips).await {
        tracing::error!("failover: removing the VIP at shutdown: {e}");
    }
    view.publish(&m);
    drop(view);
    let _ = status_task.await;
    let _ = persist_task.await;
    let _ = log_task.await;
    tasks.wait().await;
    Ok(())
}

/// The adapter's bookkeeping for the status: the peer as seen in heartbeats, alarms, events.
struct View {
    status: SharedStatus,
    channels: Vec<Channel>,
    role: String,
    dead_time: Duration,
    peer: Option<(String, bool, Duration)>,
    alarms: std::collections::BTreeSet<Alarm>,
    events: VecDeque<EventInfo>,
    origin: tokio::time::Instant,
    counters: Counters,
    /// Datagrams from strangers, counted by the receiver tasks.
    foreign: Arc<std::sync::atomic::AtomicU64>,
    monitors: SharedMonitors,
    /// The newest status snapshot for [`status_writer`].
    writer: tokio::sync::watch::Sender<Option<Vec<u8>>>,
}

impl View {
    fn new(cfg: &FailoverConfig, status: &SharedStatus, writer: tokio::sync::watch::Sender<Option<Vec<u8>>>) -> View {
        View {
            writer,
            status: status.clone(),
            channels: cfg.channels.clone(),
            role: format!("{:?}", cfg.role).to_lowercase(),
            dead_time: cfg.dead_time,
            peer: None,
            alarms: Default::default(),
            events: VecDeque::new(),
            origin: tokio::time::Instant::now(),
            counters: Counters::default(),
            foreign: Default::default(),
            monitors: Arc::new(std::sync::Mutex::new(
                cfg.monitors
                    .iter()
                    .map(|m| MonitorInfo { name: m.name.clone(), health: "unknown".into(), ..Default::default() })
                    .collect(),
            )),
        }
    }

    fn observe(&mut self, e: &Event) {
        if let Event::Heartbeat { heartbeat, .. } = e {
            self.peer = Some((heartbeat.node.as_str().to_string(), heartbeat.flags.vip_held, self.origin.elapsed()));
        }
    }

    fn event(&mut self, kind: String, message: String) {
        if self.events.len() >= RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(EventInfo { ts: crate::db::now(), kind, message });
    }

    fn publish(&self, m: &Machine) {
        let holding = m.state() == State::Holding;
        let since = self.peer.as_ref().map(|(_, _, t)| self.origin.elapsed().saturating_sub(*t));
        let peer_alive = since.is_some_and(|d| d < self.dead_time);
        let peer_holds = peer_alive && self.peer.as_ref().is_some_and(|p| p.1);
        let node = self.status.read().map(|s| s.node.clone()).unwrap_or_default();
        let holder = if holding {
            Some(node.clone())
        } else if peer_holds {
            self.peer.as_ref().map(|p| p.0.clone())
        } else {
            None
        };
        let s = Status {
            node,
            role: self.role.clone(),
            state: state_name(m.state()).into(),
            holding,
            holder,
            term: m.term(),
            boot: m.boot(),
            peer: self.peer.as_ref().map(|p| p.0.clone()),
            peer_last_heard_ms: since.map(|d| d.as_millis() as u64),
            channels: m
                .channels()
                .into_iter()
                .map(|c| ChannelInfo {
                    name: c.name,
                    up: c.up,
                    last_heard_ms: c.last_heard_ago.map(|d| d.as_millis() as u64),
                    loss: c.loss,
                    rtt_ms: c.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    send_failures: c.send_failures,
                })
                .collect(),
            alarms: self.alarms.iter().map(|a| alarm_name(*a, &self.channels)).collect(),
            rejected: m.stats().rejected(),
            rx: m.stats().clone(),
            counters: Counters {
                foreign_source: self.foreign.load(std::sync::atomic::Ordering::Relaxed),
                ..self.counters.clone()
            },
            monitors: self.monitors.lock().map(|g| g.clone()).unwrap_or_default(),
            events: self.events.clone(),
            updated: crate::db::now(),
            updated_unix_ms: wall_micros() / 1000,
        };
        if let Ok(json) = serde_json::to_vec_pretty(&s) {
            // The writer task does the file I/O, so a slow disk never delays the machine.
            let _ = self.writer.send(Some(json));
        }
        if let Ok(mut g) = self.status.write() {
            *g = s;
        }
    }
}

/// Carry out the machine's actions; true when it asks to exit.
#[allow(clippy::too_many_arguments)]
fn run_actions(
    actions: Vec<Action>,
    cfg: &FailoverConfig,
    keys: &Keyring,
    sockets: &[Arc<UdpSocket>],
    h: &Helpers,
    persisted: &mut Persisted,
    view: &mut View,
    pending: &mut VecDeque<Event>,
) -> bool {
    let mut exit = false;
    for a in actions {
        match a {
            Action::Send { channel, heartbeat } => {
                let (Some(sock), Some(c)) = (sockets.get(channel), cfg.channels.get(channel)) else { continue };
                let buf = encode(&heartbeat, keys);
                // try_send_to never waits: a full socket buffer counts as a failed send.
                if sock.try_send_to(&buf, SocketAddr::new(c.peer, c.port)).is_err() {
                    pending.push_back(Event::ChannelSendFailed { channel });
                }
            }
            Action::PersistTerm(t) => {
                persisted.term = t;
                let _ = h.persist.send((*persisted, Some(t)));
            }
            Action::PersistPeerBoot(b) => {
                persisted.peer_boot = b;
                let _ = h.persist.send((*persisted, None));
            }
            Action::ProbeTieBreaker => {
                spawn_report(&h.events, probe_tiebreaker(cfg.tiebreaker.clone(), cfg.tiebreaker_timeout), |reachable| {
                    Event::TieBreakerResult { reachable }
                })
            }
            Action::RunFence => {
                spawn_report(&h.events, run_fence(cfg.fence.clone(), cfg.fence_timeout), |ok| Event::FenceResult { ok })
            }
            Action::AddVip { term, reason } => {
                view.counters.takeovers += 1;
                tracing::warn!("failover: taking the VIP (term {term}, {reason:?})");
                let _ = h.vip.send(VipOp::Add);
            }
            Action::RemoveVip => {
                view.counters.releases += 1;
                tracing::warn!("failover: releasing the VIP");
                let _ = h.vip.send(VipOp::Remove);
            }
            Action::SendGarp => {
                view.counters.garps += 1;
                let _ = h.vip.send(VipOp::Garp);
            }
            Action::RunStartHooks => {
                let _ = h.vip.send(VipOp::StartHooks);
            }
            Action::RunStopHooks => {
                let _ = h.vip.send(VipOp::StopHooks);
            }
            Action::Exit => exit = true,
            Action::RecordEvent { kind, message } => {
                let kind = format!("failover.{}", snake(&format!("{kind:?}")));
                tracing::info!("failover: {kind}: {message}");
                view.event(kind.clone(), message.clone());
                let _ = h.log.send((kind, message));
            }
            Action::Alarm { alarm, raised, message } => {
                if raised {
                    tracing::warn!("failover alarm raised: {message}");
                    view.alarms.insert(alarm);
                } else {
                    tracing::info!("failover alarm cleared: {message}");
                    view.alarms.remove(&alarm);
                }
                let kind = if raised { "failover.alarm" } else { "failover.alarm_cleared" };
                view.event(kind.into(), message.clone());
                let _ = h.log.send((kind.into(), message));
            }
        }
    }
    exit
}

/// `TakeoverStarted` -> `takeover_started`.
fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn_report<F, T>(events: &mpsc::UnboundedSender<Event>, fut: F, wrap: fn(T) -> Event)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let events = events.clone();
    tokio::spawn(async move {
        let r = fut.await;
        let _ = events.send(wrap(r));
    });
}

/// One reader per channel: only the configured peer is heard; everything is decoded here
/// so the machine task only sees events.
fn spawn_receivers(
    tasks: &tokio_util::task::TaskTracker,
    cfg: &FailoverConfig,
    sockets: &[Arc<UdpSocket>],
    keys: &Keyring,
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    foreign: &Arc<std::sync::atomic::AtomicU64>,
) {
    for (channel, (sock, c)) in sockets.iter().zip(&cfg.channels).enumerate() {
        let (sock, keys, events, stop, peer) = (sock.clone(), keys.clone(), events.clone(), stop.clone(), c.peer);
        let foreign = foreign.clone();
        tasks.spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = sock.recv_from(&mut buf) => r,
                };
                let Ok((n, from)) = r else { continue };
                if from.ip() != peer {
                    foreign.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let e = match decode(&buf[..n], &keys) {
                    Ok(d) => Event::Heartbeat { channel, heartbeat: d.heartbeat },
                    Err(error) => Event::Rejected { channel, error },
                };
                if events.send(e).is_err() {
                    return;
                }
            }
        });
    }
}

/// Poll the carrier of the VIP interfaces once per interval; report changes (and the first
/// reading). Down if any VIP interface has no carrier.
fn spawn_link_poller(
    tasks: &tokio_util::task::TaskTracker,
    cfg: &FailoverConfig,
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) {
    let mut ifaces: Vec<String> = cfg.vips.iter().map(|v| v.interface.clone()).collect();
    ifaces.dedup();
    let (events, stop, every) = (events.clone(), stop.clone(), cfg.interval);
    tasks.spawn(async move {
        let mut last = None;
        loop {
            // Reading carrier in sysfs takes the kernel's RTNL lock, which link changes hold
            // for a while (hundreds of ms on a busy machine): never on an async worker,
            // where it would stall the machine's loop into a false "self stall".
            let ifs = ifaces.clone();
            let up = tokio::task::spawn_blocking(move || ifs.iter().all(|i| net::carrier(i))).await.unwrap_or(true);
            if last != Some(up) {
                last = Some(up);
                if events.send(Event::LinkState { up }).is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

fn spawn_request_poller(
    tasks: &tokio_util::task::TaskTracker,
    data_dir: &Path,
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
) {
    let (dir, events, stop) = (data_dir.to_path_buf(), events.clone(), stop.clone());
    // A stale request from before this process started must not act now.
    let _ = std::fs::remove_file(dir.join(REQUEST_FILE));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let e = match take_request(&dir) {
                Some(AdminRequest::Takeover) => Event::AdminTakeover,
                Some(AdminRequest::Release) => Event::AdminRelease,
                None => continue,
            };
            tracing::info!("failover: admin request {e:?}");
            if events.send(e).is_err() {
                return;
            }
        }
    });
}

/// One task per monitor: run the check every interval, feed [`MonitorTracker`], restart
/// and escalate as it says.
fn spawn_monitors(
    tasks: &tokio_util::task::TaskTracker,
    monitors: &[MonitorConfig],
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    shared: &SharedMonitors,
) {
    for (i, mc) in monitors.iter().enumerate() {
        let (mc, events, stop, shared) = (mc.clone(), events.clone(), stop.clone(), shared.clone());
        tasks.spawn(async move {
            let origin = tokio::time::Instant::now();
            let mut t = MonitorTracker::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(mc.interval) => {}
                }
                let ok = tokio::time::timeout(mc.timeout, check(&mc.check)).await.unwrap_or(false);
                let actions = t.observe(&mc.policy, ok, origin.elapsed());
                if let Ok(mut g) = shared.lock()
                    && let Some(info) = g.get_mut(i)
                {
                    info.checks += 1;
                    info.failures += u64::from(!ok);
                    info.restarts +=
                        actions.iter().filter(|a| matches!(a, MonitorAction::Restart { .. })).count() as u64;
                    info.escalated = t.escalated();
                    info.health = health_name(t.health()).into();
                }
                for a in actions {
                    let e = match a {
                        MonitorAction::Escalate => Event::MonitorEscalation { monitor: mc.name.clone() },
                        MonitorAction::Recovered => Event::MonitorRecovered { monitor: mc.name.clone() },
                        MonitorAction::Restart { attempt } => {
                            tracing::warn!("failover monitor {}: restarting (attempt {attempt})", mc.name);
                            if let Some(h) = &mc.restart {
                                run_hook(h, "restart", mc.interval.max(Duration::from_secs(30))).await;
                            }
                            continue;
                        }
                        other => {
                            tracing::warn!("failover monitor {}: {other:?}", mc.name);
                            continue;
                        }
                    };
                    if events.send(e).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn health_name(h: super::Health) -> &'static str {
    match h {
        super::Health::Unknown => "unknown",
        super::Health::Up => "up",
        super::Health::Down => "down",
    }
}

async fn check(c: &Check) -> bool {
    match c {
        Check::Process(name) => {
            let name = name.clone();
            tokio::task::spawn_blocking(move || process_exists(&name)).await.unwrap_or(false)
        }
        Check::Unit(u) => command_ok(&["systemctl".into(), "is-active".into(), "--quiet".into(), u.clone()]).await,
        Check::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str()).await.is_ok(),
        Check::Http { url, expect_status } => {
            reqwest::get(url.as_str()).await.is_ok_and(|r| r.status().as_u16() == *expect_status)
        }
        Check::Command(argv) => command_ok(argv).await,
    }
}

/// A live process with this name: a zombie (dead, not yet reaped by its parent) is not one.
fn process_exists(name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else { return false };
    rd.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| !stat_is_zombie(&st))
    })
}

/// `/proc/PID/stat` says the process is a zombie (state `Z`, after the parenthesised name,
/// which may itself hold spaces and parentheses).
fn stat_is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

async fn command_ok(argv: &[String]) -> bool {
    let Some((prog, args)) = argv.split_first() else { return false };
    tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Any tie-breaker answers one `ping -c1 -W1` (ICMP, so it works against routers and
/// switches that run no TCP service; ping is setuid or has the capability it needs).
async fn probe_tiebreaker(addrs: Vec<IpAddr>, timeout: Duration) -> bool {
    let probes = addrs.into_iter().map(|a| async move {
        command_ok(&["ping".into(), "-c1".into(), "-W1".into(), "-n".into(), "-q".into(), a.to_string()]).await
    });
    let all = futures_util::future::join_all(probes);
    tokio::time::timeout(timeout, all).await.is_ok_and(|r| r.into_iter().any(|ok| ok))
}

async fn run_fence(argv: Option<Vec<String>>, timeout: Duration) -> bool {
    let Some(argv) = argv else { return true };
    tracing::warn!("failover: fencing the peer: {argv:?}");
    tokio::time::timeout(timeout, command_ok(&argv)).await.unwrap_or(false)
}

async fn run_hook(h: &Hook, verb: &str, timeout: Duration) -> bool {
    let argv = match h {
        Hook::Unit(u) => vec!["systemctl".into(), verb.into(), u.clone()],
        Hook::Command(c) => c.clone(),
    };
    let ok = tokio::time::timeout(timeout, command_ok(&argv)).await.unwrap_or(false);
    if !ok {
        tracing::error!("failover hook {argv:?} failed");
    }
    ok
}

/// Run hooks in order under one time limit; the first failure stops the list.
async fn run_hooks(hooks: &[Hook], verb: &str, timeout: Duration) -> bool {
    let all = async {
        for h in hooks {
            if !run_hook(h, verb, timeout).await {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(timeout, all).await.unwrap_or(false)
}

/// Writes each newest status snapshot (not fsynced: it is rewritten every second and losing
/// one is harmless); ends, after the last one, when the sender goes.
async fn status_writer(path: PathBuf, mut rx: tokio::sync::watch::Receiver<Option<Vec<u8>>>) {
    while rx.changed().await.is_ok() {
        let Some(json) = rx.borrow_and_update().clone() else { continue };
        let path = path.clone();
        let r = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| (path, e))
        })
        .await;
        if let Ok(Err((path, e))) = r {
            tracing::warn!("failover: cannot write {}: {e}", path.display());
        }
    }
}

/// Writes the state file in request order; acknowledges terms once they are on disk.
async fn persister(
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<(Persisted, Option<u64>)>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some((p, ack)) = rx.recv().await {
        let path = path.clone();
        let r = tokio::task::spawn_blocking(move || write_durably(&path, p.render().as_bytes())).await;
        match r {
            Ok(Ok(())) => {
                if let Some(t) = ack {
                    let _ = events.send(Event::TermPersisted(t));
                }
            }
            // No answer: the machine times out and retries.
            Ok(Err(e)) => tracing::error!("failover: writing the state file: {e}"),
            Err(e) => tracing::error!("failover: state writer: {e}"),
        }
    }
}

async fn vip_worker(cfg: FailoverConfig, mut rx: mpsc::UnboundedReceiver<VipOp>, events: mpsc::UnboundedSender<Event>) {
    let vips = &cfg.vips;
    while let Some(op) = rx.recv().await {
        let r = match op {
            VipOp::Add => net::add_vips(vips).await,
            VipOp::Remove => net::remove_vips(vips).await,
            VipOp::Garp => {
                // Blocking socket and sysfs calls (see the link poller): off the async workers.
                let vs = vips.clone();
                let sent = tokio::task::spawn_blocking(move || {
                    for v in &vs {
                        if let Err(e) = net::send_garp(v) {
                            tracing::warn!("failover: gratuitous ARP for {} on {}: {e}", v.address, v.interface);
                        }
                    }
                });
                let _ = sent.await;
                Ok(())
            }
            VipOp::StartHooks => {
                let ok = run_hooks(&cfg.start_hooks, "start", cfg.hook_timeout).await;
                let _ = events.send(Event::StartHooksDone { ok });
                Ok(())
            }
            VipOp::StopHooks => {
                let ok = run_hooks(&cfg.stop_hooks, "stop", cfg.hook_timeout).await;
                let _ = events.send(Event::StopHooksDone { ok });
                Ok(())
            }
        };
        if let Err(e) = r {
            tracing::error!("failover: {op:?} VIP: {e}");
        }
    }
}

async fn event_logger(inv: Inventory, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
    while let Some((kind, message)) = rx.recv().await {
        let res = match kind.parse::<crate::wire::EventKind>() {
            Ok(k) => inv.record_event(None, k, &message).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = res {
            tracing::warn!("failover: event log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trip_and_tolerance() {
        let p = Persisted { term: 7, boot: 1_700_000_000_000_000, peer_boot: 42 };
        assert_eq!(Persisted::parse(&p.render()), p);
        assert_eq!(
            Persisted::parse("garbage\nterm x\nterm 3\nfuture 9\n"),
            Persisted { term: 3, ..Default::default() }
        );
    }

    #[test]
    fn zombies_are_not_running() {
        assert!(stat_is_zombie("42 (sleep) Z 1 42 42 0 -1"));
        assert!(stat_is_zombie("42 (a) Z) b) Z 1"));
        assert!(!stat_is_zombie("42 (a) Z) b) S 1"));
        assert!(!stat_is_zombie("42 (sleep) S 1 42"));
        assert!(!stat_is_zombie("garbage"));
    }

    #[test]
    fn event_kinds_are_snake_case() {
        assert_eq!(snake("TakeoverStarted"), "takeover_started");
        assert_eq!(snake("Release"), "release");
    }

    #[test]
    fn admin_requests_go_through_the_file_once() {
        let d = tempfile::tempdir().unwrap();
        submit_request(d.path(), AdminRequest::Takeover).unwrap();
        assert_eq!(take_request(d.path()), Some(AdminRequest::Takeover));
        assert_eq!(take_request(d.path()), None);
        std::fs::write(d.path().join(REQUEST_FILE), "nonsense").unwrap();
        assert_eq!(take_request(d.path()), None);
    }

    #[test]
    fn delivering_a_request_needs_a_live_service() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let wait = Duration::from_millis(300);
        let r = deliver_request(&dir, AdminRequest::Takeover, wait);
        assert!(matches!(r, Err(RequestError::NotRunning)), "{r:?}");
        let write_status = |ms: u64| {
            let s = Status { updated_unix_ms: ms, ..Status::default() };
            std::fs::write(dir.join(STATUS_FILE), serde_json::to_vec(&s).unwrap()).unwrap();
        };
        write_status(wall_micros() / 1000 - 60_000);
        assert!(matches!(deliver_request(&dir, AdminRequest::Takeover, wait), Err(RequestError::Stale(60))));
        // Fresh status but nobody reads requests: refused, and nothing is left behind.
        write_status(wall_micros() / 1000);
        let r = deliver_request(&dir, AdminRequest::Release, wait);
        assert!(matches!(r, Err(RequestError::NotPickedUp(_))), "{r:?}");
        assert!(!dir.join(REQUEST_FILE).exists());
        // A reader that takes it: delivered, and it read the right word.
        let reader = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if let Some(r) = take_request(&dir) {
                        return Some(r);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                None
            })
        };
        deliver_request(&dir, AdminRequest::Release, Duration::from_secs(2)).unwrap();
        assert_eq!(reader.join().unwrap(), Some(AdminRequest::Release));
    }
}
