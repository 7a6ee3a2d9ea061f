//! The adapter's view for the status: what it learns from events and actions (the peer as
//! seen in heartbeats, alarms, recent events, counters) combined with the machine's own
//! state into a [`Status`], published to the handle's watch channel.

use super::FailoverConfig;
use super::config::Channel;
use super::machine::{Alarm, Event, Machine, State};
use super::status::{ChannelInfo, Counters, EventInfo, MonitorInfo, Status, alarm_name, state_name, wall_micros};
use super::tasks::SharedMonitors;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How many recent events the status keeps.
const RECENT_EVENTS: usize = 50;

/// The adapter's bookkeeping for the status: the peer as seen in heartbeats, alarms, events.
pub(super) struct View {
    /// Where each status goes (the handle's watch channel).
    status: watch::Sender<Status>,
    node: String,
    channels: Vec<Channel>,
    role: String,
    /// Whether the loop got its real-time thread (set by the service at start).
    pub(super) realtime: bool,
    peer: Option<(String, bool, Duration)>,
    /// Raised alarms.
    pub(super) alarms: BTreeSet<Alarm>,
    events: VecDeque<EventInfo>,
    origin: tokio::time::Instant,
    /// What the service did.
    pub(super) counters: Counters,
    /// Datagrams from strangers, counted by the receiver tasks.
    pub(super) foreign: Arc<AtomicU64>,
    /// Monitors' status, kept by their tasks.
    pub(super) monitors: SharedMonitors,
}

impl View {
    /// Nothing seen yet; statuses go to `status`.
    pub(super) fn new(cfg: &FailoverConfig, status: watch::Sender<Status>) -> View {
        View {
            status,
            node: cfg.node.clone(),
            channels: cfg.channels.clone(),
            role: format!("{:?}", cfg.role).to_lowercase(),
            realtime: false,
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

    /// Note what the status needs from an event before the machine takes it.
    pub(super) fn observe(&mut self, e: &Event) {
        if let Event::Heartbeat { heartbeat, .. } = e {
            self.peer = Some((heartbeat.node.as_str().to_string(), heartbeat.flags.vip_held, self.origin.elapsed()));
        }
    }

    /// Keep a recent event.
    pub(super) fn event(&mut self, kind: String, message: String) {
        if self.events.len() >= RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(EventInfo { ts: crate::db::now(), kind, message });
    }

    /// Publish the status now.
    pub(super) fn publish(&self, m: &Machine) {
        let holding = m.state() == State::Holding;
        let since = self.peer.as_ref().map(|(_, _, t)| self.origin.elapsed().saturating_sub(*t));
        let peer_alive = since.is_some_and(|d| d < m.dead_time());
        let peer_holds = peer_alive && self.peer.as_ref().is_some_and(|p| p.1);
        let node = self.node.clone();
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
            dead_time_ms: u64::try_from(m.dead_time().as_millis()).unwrap_or(u64::MAX),
            realtime: Some(self.realtime),
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
            counters: Counters { foreign_source: self.foreign.load(Ordering::Relaxed), ..self.counters.clone() },
            monitors: self.monitors.lock().map(|g| g.clone()).unwrap_or_default(),
            events: self.events.clone(),
            updated: crate::db::now(),
            updated_unix_ms: wall_micros() / 1000,
        };
        // Readers (the handle, the status file writer) copy it out; the JSON and the file
        // I/O happen in the writer task, so a slow disk never delays the machine.
        self.status.send_replace(s);
    }
}
