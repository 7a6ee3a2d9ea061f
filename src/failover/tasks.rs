//! The service's helper tasks: heartbeat receivers, the carrier poller, the monitors, the
//! VIP worker and one-shot reports (tie-breaker, fence). They do the I/O and talk to the
//! machine's task only through its event queue; the token-driven ones stop when the
//! service's helper token is cancelled, the queue-driven ones when their queue closes.

use super::FailoverConfig;
use super::checks::{check, run_hook, run_hooks};
use super::config::MonitorConfig;
use super::machine::Event;
use super::monitor::{MonitorAction, MonitorTracker};
use super::net;
use super::packet::{Keyring, decode};
use super::stamp;
use super::status::{MonitorInfo, health_name};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Monitors' status, written by their tasks, read when the status is published.
pub(super) type SharedMonitors = Arc<std::sync::Mutex<Vec<MonitorInfo>>>;

/// Work for the VIP task, done strictly in order: hooks run after the VIP change before
/// them, so a start hook finds the address present and a stop hook finds it gone.
#[derive(Debug)]
pub(super) enum VipOp {
    /// Add the VIPs.
    Add,
    /// Remove the VIPs.
    Remove,
    /// One round of gratuitous ARP / unsolicited neighbour advertisements.
    Garp,
    /// Run the start hooks, then report [`Event::StartHooksDone`].
    StartHooks,
    /// Run the stop hooks, then report [`Event::StopHooksDone`].
    StopHooks,
}

/// Run `fut` as a helper task and report its result as an event; dropped (a command in it
/// is killed) if the service stops first.
pub(super) fn spawn_report<F, T>(
    tasks: &TaskTracker,
    events: &mpsc::UnboundedSender<Event>,
    stop: &CancellationToken,
    fut: F,
    wrap: fn(T) -> Event,
) where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (events, stop) = (events.clone(), stop.clone());
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            r = fut => {
                let _ = events.send(wrap(r));
            }
        }
    });
}

/// One reader per channel: only the configured peer is heard; everything is decoded here
/// so the machine task only sees events.
pub(super) fn spawn_receivers(
    tasks: &TaskTracker,
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
                let queued = stamp::queued(sock.as_ref());
                let Some(e) = datagram_event(channel, &buf[..n], from, peer, &keys, queued, &foreign) else { continue };
                if events.send(e).is_err() {
                    return;
                }
            }
        });
    }
}

/// The event for a datagram from `from` on `channel`: none (counted in `foreign`) unless
/// it comes from the configured peer.
pub(super) fn datagram_event(
    channel: usize,
    bytes: &[u8],
    from: SocketAddr,
    peer: IpAddr,
    keys: &Keyring,
    queued: Duration,
    foreign: &AtomicU64,
) -> Option<Event> {
    if from.ip() != peer {
        foreign.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    Some(match decode(bytes, keys) {
        Ok(d) => Event::Heartbeat { channel, heartbeat: d.heartbeat, queued },
        Err(error) => Event::Rejected { channel, error },
    })
}

/// Poll the carrier of the VIP interfaces once per interval; report changes (and the first
/// reading). Down if any VIP interface has no carrier.
pub(super) fn spawn_link_poller(
    tasks: &TaskTracker,
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

/// One task per monitor: run the check every interval, feed [`MonitorTracker`], restart
/// and escalate as it says.
pub(super) fn spawn_monitors(
    tasks: &TaskTracker,
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

/// Carries out [`VipOp`]s in order; ends when the service drops its sender.
/// With a sync gate, a takeover first stops a running update at its next safe point
/// (waiting at most the gate's limit), and a release lets updates run again.
pub(super) async fn vip_worker(
    cfg: FailoverConfig,
    mut rx: mpsc::UnboundedReceiver<VipOp>,
    events: mpsc::UnboundedSender<Event>,
    gate: Option<(crate::sync::Gate, Duration)>,
) {
    let vips = &cfg.vips;
    while let Some(op) = rx.recv().await {
        let r = match op {
            VipOp::Add => {
                if let Some((g, limit)) = &gate {
                    if g.close_for_takeover(*limit).await {
                        tracing::info!("failover: no update runs: taking over");
                    } else {
                        tracing::warn!(
                            "failover: the running update did not stop within {limit:?}; taking over anyway \
                             (each path is old or new)"
                        );
                    }
                }
                net::add_vips(vips).await
            }
            VipOp::Remove => {
                let r = net::remove_vips(vips).await;
                if let Some((g, _)) = &gate {
                    g.open_after_release();
                }
                r
            }
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
