//! The failover status: what the API, `/metrics` and `understudy failover status` show,
//! its text form, and the status file the service rewrites every second for the CLI.

use super::config::Channel;
use super::machine::{Alarm, State};
use super::monitor::Health;
use super::packet::RxStats;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The status snapshot file name under the data dir (read by `understudy failover status`;
/// the HTTP API reads the status from the service's [`super::Handle`] instead).
pub const STATUS_FILE: &str = "failover.status.json";

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
    /// The dead time now, in milliseconds (the floor, or longer after irregular heartbeats).
    pub dead_time_ms: u64,
    /// Whether the heartbeat loop runs on its real-time thread (`null`: not reported).
    pub realtime: Option<bool>,
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
        let _ = writeln!(
            o,
            "peer: {} (last heard {heard}; dead after {} ms of silence)",
            self.peer.as_deref().unwrap_or("-"),
            self.dead_time_ms
        );
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

/// Read the status the running service last wrote to the status file (the CLI's view; the
/// HTTP API takes it from the service's handle). None: no file, or unreadable.
pub fn load_status(data_dir: &Path) -> Option<Status> {
    let text = std::fs::read(data_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes each newest status snapshot to `path` for the CLI (not fsynced: it is rewritten
/// every second and losing one is harmless); ends, after the last one, when the service
/// drops its sender. Serialising here keeps the JSON work off the machine's task.
pub(super) async fn status_writer(path: PathBuf, mut rx: tokio::sync::watch::Receiver<Status>) {
    while rx.changed().await.is_ok() {
        let s = rx.borrow_and_update().clone();
        let target = path.clone();
        let r = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?;
            let tmp = target.with_extension("json.tmp");
            std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &target))
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!("failover: cannot write {}: {e}", path.display());
        }
    }
}

/// A monitor's health in the status.
pub(super) fn health_name(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Up => "up",
        Health::Down => "down",
    }
}

/// An alarm's name in the status (`channel_down:NAME`, `peer_one_way`, ...).
pub(super) fn alarm_name(a: Alarm, channels: &[Channel]) -> String {
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

/// A state's name in the status.
pub(super) fn state_name(s: State) -> &'static str {
    match s {
        State::Backup => "backup",
        State::Acquiring => "acquiring",
        State::Holding => "holding",
        State::Releasing => "releasing",
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_writer_writes_the_newest_status_and_the_last_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(STATUS_FILE);
        let (tx, rx) = tokio::sync::watch::channel(Status::default());
        let task = tokio::spawn(status_writer(path.clone(), rx));
        tx.send_replace(Status { node: "head-a".into(), term: 1, ..Status::default() });
        tx.send_replace(Status { node: "head-a".into(), term: 2, ..Status::default() });
        // The last value before the sender goes is written too.
        drop(tx);
        task.await.unwrap();
        let s = load_status(d.path()).unwrap();
        assert_eq!((s.node.as_str(), s.term), ("head-a", 2));
        assert!(!path.with_extension("json.tmp").exists());
    }
}
