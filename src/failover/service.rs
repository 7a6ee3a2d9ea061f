//! The failover service: one tokio task owns the [`Machine`] and translates between the
//! world and [`Event`]/[`Action`], following the adapter contract in [`super`]. This module
//! holds the start (checks, key, state file, sockets) and the machine's loop; the I/O it
//! hands out lives in `tasks`, `checks`, [`super::state_file`], [`super::status`] and
//! [`super::request`], so the loop never waits on I/O.
//!
//! What goes in and out:
//! - the [`Handle`] returned by [`start`]: the latest [`super::Status`] (published at least
//!   every second) and admin requests with an immediate answer;
//! - [`LogEvent`]s on the [`EventSink`] given to [`start`] (the caller writes them to the
//!   event log);
//! - files under the data dir: `failover.state` ([`super::state_file`]), the status file
//!   for the CLI ([`super::status::STATUS_FILE`], rewritten every second) and the CLI's
//!   request file ([`super::request::REQUEST_FILE`], consumed and deleted).
//!
//! Cancellation: [`start`] derives the service's own token from the caller's (a child
//! token: cancelling the caller's starts the service's shutdown, and nothing the service
//! does reaches the caller's other services). The helper tasks (receivers, pollers,
//! monitors, the request intake, one-shot reports) stop on the service's helper token,
//! which the service cancels once its loop has ended, or when its future is dropped; the
//! queue-driven ones (status writer, state writer, VIP worker) end when their queues
//! close, which happens then too. The helper token is not a child of the shutdown token
//! on purpose: the release that follows the shutdown request still needs heartbeats
//! heard and carrier watched, until the machine says it is done.

use super::config::Channel;
use super::handle::{self, Handle, ServiceEnd};
use super::machine::{Action, Event, Machine, MachineInit};
use super::net;
use super::packet::{Keyring, encode, next_boot_id, parse_key_file};
use super::request::{spawn_request_file_poller, spawn_request_intake};
use super::state_file::{Persisted, STATE_FILE, persister, write_durably};
use super::status::{STATUS_FILE, Status, status_writer, wall_micros};
use super::tasks::{
    VipOp, datagram_event, spawn_link_poller, spawn_monitors, spawn_receivers, spawn_report, vip_worker,
};
use super::view::View;
use super::{FailoverConfig, checks, rt, stamp};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// One entry for the event log, as the service emits it: the kind (`failover.takeover`,
/// `failover.alarm`, ...) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// `failover.` and the event's kind.
    pub kind: String,
    /// Details.
    pub message: String,
}

/// Where the service sends its [`LogEvent`]s; it drops its sender when it ends, so a
/// reader that runs until the channel closes has logged them all.
pub type EventSink = mpsc::UnboundedSender<LogEvent>;

/// Everything checked and opened before the service runs, so a bad setup fails the start.
pub struct Prepared {
    cfg: FailoverConfig,
    data_dir: PathBuf,
    keys: Keyring,
    /// Bound and non-blocking; registered with the loop's own runtime once it runs.
    sockets: Vec<std::net::UdpSocket>,
    init: MachineInit,
    persisted: Persisted,
    /// Closed before the VIP is added, opened after it is removed (see [`Prepared::with_sync_gate`]).
    gate: Option<(crate::sync::Gate, Duration)>,
}

impl Prepared {
    /// Before taking the VIP over, stop the `[sync]` update running through `gate` at its
    /// next safe point, waiting at most `limit` for it; after giving the VIP up, let
    /// updates run again. The machine is not involved: the VIP worker does this in order
    /// with the VIP changes and hooks.
    pub fn with_sync_gate(mut self, gate: crate::sync::Gate, limit: Duration) -> Prepared {
        self.gate = Some((gate, limit));
        self
    }
}

/// Validate, read the key and the state file, bind the sockets, look at the VIPs, and
/// persist the new boot id (before any heartbeat leaves).
pub async fn prepare(cfg: FailoverConfig, data_dir: &Path) -> Result<Prepared, FailoverError> {
    cfg.validate().map_err(|e| FailoverError::Config(e.to_string()))?;
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
    Ok(Prepared { cfg, data_dir: data_dir.to_path_buf(), keys, sockets, init, persisted, gate: None })
}

fn read_keys(path: &Path) -> Result<Keyring, FailoverError> {
    let bad = |message: String| FailoverError::Key { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!("{e}; create one with `understudy failover keygen {}` and copy it to the peer", path.display()))
    })?;
    parse_key_file(&text).map_err(|e| bad(e.to_string()))
}

/// A UDP socket bound to the channel's local address (not 0.0.0.0, so heartbeats only
/// ever leave and arrive on that network), with receive timestamps on.
fn bind_channel(c: &Channel) -> Result<std::net::UdpSocket, FailoverError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(c.local, c.port);
    let err = |source| FailoverError::Socket { channel: c.name.clone(), addr, source };
    let domain = if c.local.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    let s: std::net::UdpSocket = s.into();
    stamp::enable(&s);
    Ok(s)
}

/// Handles to the helper tasks the machine task hands work to.
struct Helpers {
    events: mpsc::UnboundedSender<Event>,
    persist: mpsc::UnboundedSender<(Persisted, Option<u64>)>,
    vip: mpsc::UnboundedSender<VipOp>,
    log: EventSink,
    /// Where one-shot reports (tie-breaker, fence) run, and their stop.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Start the service: its [`Handle`] at once, and the future that runs it (spawn it; a
/// request sent before it runs waits in the queue). It runs until `parent` is cancelled
/// (the service watches a child token of it). Then the machine shuts down
/// ([`Event::Shutdown`]): a held VIP is removed and the stop hooks run while heartbeats go
/// on, then `leaving` heartbeats tell the peer to take over at once. A stopped service
/// never leaves the kernel answering ARP for the VIP.
///
/// The service runs on its own thread ([`rt`]); the returned future only waits for it, so
/// dropping that future does not stop the service: cancel `parent`.
pub fn start(
    p: Prepared,
    events: EventSink,
    parent: &CancellationToken,
) -> (Handle, impl Future<Output = Result<(), FailoverError>> + Send + 'static) {
    let (handle, end) = handle::channel(Status { node: p.cfg.node.clone(), ..Status::default() });
    let shutdown = parent.child_token();
    let realtime = p.cfg.realtime;
    let run = rt::on_own_thread("failover", realtime, move |elevation| serve(p, end, events, shutdown, elevation));
    (
        handle,
        async move { run.await.map_err(|e| FailoverError::Config(format!("cannot start the failover thread: {e}")))? },
    )
}

async fn serve(
    p: Prepared,
    end: ServiceEnd,
    log: EventSink,
    shutdown: CancellationToken,
    elevation: Option<rt::Elevation>,
) -> Result<(), FailoverError> {
    let Prepared { cfg, data_dir, keys, sockets, init, mut persisted, gate } = p;
    let ServiceEnd { status, requests } = end;
    let mcfg = cfg.machine_config().map_err(|e| FailoverError::Config(e.to_string()))?;
    let sockets = cfg
        .channels
        .iter()
        .zip(sockets)
        .map(|(c, s)| {
            let addr = SocketAddr::new(c.local, c.port);
            UdpSocket::from_std(s).map(Arc::new).map_err(|source| FailoverError::Socket {
                channel: c.name.clone(),
                addr,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let tasks = TaskTracker::new();
    // Token-driven helpers stop with it: after the loop, or if this future is dropped.
    let helper_stop = CancellationToken::new();
    let _stop_helpers = helper_stop.clone().drop_guard();
    let status_task = tasks.spawn(status_writer(data_dir.join(STATUS_FILE), status.subscribe()));
    let mut view = View::new(&cfg, status);
    view.realtime = elevation.is_some_and(|e| e.fifo);
    spawn_receivers(&tasks, &cfg, &sockets, &keys, &ev_tx, &helper_stop, &view.foreign);
    spawn_link_poller(&tasks, &cfg, &ev_tx, &helper_stop);
    spawn_monitors(&tasks, &cfg.monitors, &ev_tx, &helper_stop, &view.monitors);
    spawn_request_intake(&tasks, requests, &ev_tx, &shutdown, &helper_stop);
    spawn_request_file_poller(&tasks, &data_dir, &ev_tx, &helper_stop);
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let persist_task = tasks.spawn(persister(data_dir.join(STATE_FILE), persist_rx, ev_tx.clone()));
    let (vip_tx, vip_rx) = mpsc::unbounded_channel();
    let vip_task = tasks.spawn(vip_worker(cfg.clone(), vip_rx, ev_tx.clone(), gate));
    let h = Helpers {
        events: ev_tx.clone(),
        persist: persist_tx,
        vip: vip_tx,
        log,
        tasks: tasks.clone(),
        stop: helper_stop.clone(),
    };

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
        // Biased: input already queued is taken before a tick, and a tick first reads
        // what the sockets hold, so nothing that arrived in time is judged as silence.
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if hard_stop.is_none() => {
                hard_stop = Some(tokio::time::Instant::now() + cfg.hook_timeout + Duration::from_secs(5));
                Event::Shutdown
            }
            _ = async { tokio::time::sleep_until(hard_stop.unwrap_or_else(tokio::time::Instant::now)).await },
                if hard_stop.is_some() => {
                tracing::error!("failover: shutdown did not complete in time; stopping anyway");
                break;
            }
            // Before the input, so a flood of datagrams cannot starve the status.
            _ = status_every.tick() => {
                view.publish(&m);
                continue;
            }
            e = ev_rx.recv() => match e { Some(e) => e, None => break },
            _ = tokio::time::sleep(wait) => {
                drain_sockets(&cfg, &sockets, &keys, &view.foreign, &mut pending);
                Event::Tick
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
    tasks.wait().await;
    Ok(())
}

/// Read every datagram waiting on the channels' sockets without waiting (the receiver
/// tasks read the rest; on this single-threaded runtime they never run meanwhile).
fn drain_sockets(
    cfg: &FailoverConfig,
    sockets: &[Arc<UdpSocket>],
    keys: &Keyring,
    foreign: &std::sync::atomic::AtomicU64,
    pending: &mut VecDeque<Event>,
) {
    let mut buf = [0u8; 512];
    for (channel, (sock, c)) in sockets.iter().zip(&cfg.channels).enumerate() {
        while let Ok((n, from)) = sock.try_recv_from(&mut buf) {
            let queued = stamp::queued(sock.as_ref());
            if let Some(e) = datagram_event(channel, &buf[..n], from, c.peer, keys, queued, foreign) {
                pending.push_back(e);
            }
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
            Action::PersistTerm(t) | Action::ReserveTerm(t) => {
                // The file's term never goes down (a later boot starts above it).
                persisted.term = persisted.term.max(t);
                let _ = h.persist.send((*persisted, Some(t)));
            }
            Action::PersistPeerBoot(b) => {
                persisted.peer_boot = b;
                let _ = h.persist.send((*persisted, None));
            }
            Action::ProbeTieBreaker => {
                let probe = checks::probe_tiebreaker(cfg.tiebreaker.clone(), cfg.tiebreaker_timeout);
                spawn_report(&h.tasks, &h.events, &h.stop, probe, |reachable| Event::TieBreakerResult { reachable })
            }
            Action::RunFence => {
                let fence = checks::run_fence(cfg.fence.clone(), cfg.fence_timeout);
                spawn_report(&h.tasks, &h.events, &h.stop, fence, |ok| Event::FenceResult { ok })
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
                let _ = h.log.send(LogEvent { kind, message });
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
                let _ = h.log.send(LogEvent { kind: kind.into(), message });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_are_snake_case() {
        assert_eq!(snake("TakeoverStarted"), "takeover_started");
        assert_eq!(snake("Release"), "release");
    }
}
