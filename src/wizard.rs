//! `understudy standby add`: HA-OSCAR's install wizard and Webmin pages as one command run
//! on the primary. Each step is shown with its state and time:
//!
//! 1. **image**: `--image`, or a capture of this host's `/` (or, `--no-capture`, the newest
//!    image);
//! 2. **mac**: `--mac`, or MAC collection opened until the standby's PXE request shows up;
//! 3. **node**: the standby registered with the image and MAC;
//! 4. **network**: its network identity (`--interface`, or proposed from the primary's and
//!    checked), shown, confirmed and set;
//! 5. **deploy**: the standby network-boots and the agent installs it (phase, bytes, rate);
//! 6. **join**: the booted standby's heartbeats reach the primary on every channel;
//!
//! then the pair's failover status. Nothing is kept between runs but the inventory itself:
//! every step first looks at what is there (the node, its MAC, its network, its state), so
//! after Ctrl-C the same command resumes where it stopped.
//!
//! Pure here: what the observed state means for each step ([`deploy_view`], [`join_view`],
//! [`new_mac`]). The I/O driver is [`run`].

use crate::failover::status::Status;
use crate::wire::{Deployment, DeploymentStatus, Discovered, Node, NodeState};
use std::time::Duration;

/// The steps, in order.
pub const STEPS: &[&str] = &["image", "mac", "node", "network", "deploy", "join"];

/// Where the standby's deployment is.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployView {
    /// Not network-booted yet (no running deployment).
    WaitingForBoot,
    /// The agent is at `phase`, `done` of `total` bytes.
    Running {
        /// The agent's phase.
        phase: String,
        /// Bytes written.
        done: u64,
        /// Bytes to write.
        total: u64,
    },
    /// Deployed: the standby boots its own disk next.
    Done,
    /// The deploy failed, with the agent's reason.
    Failed(String),
}

/// The node's state and its newest deployment, as the deploy step sees them.
pub fn deploy_view(node: &Node, newest: Option<&Deployment>) -> DeployView {
    match node.state {
        NodeState::Deployed => DeployView::Done,
        NodeState::Failed => {
            DeployView::Failed(newest.and_then(|d| d.error.clone()).unwrap_or_else(|| "the deployment failed".into()))
        }
        NodeState::Deploying => match newest {
            Some(d) if d.status == DeploymentStatus::Running || d.status == DeploymentStatus::Pending => {
                DeployView::Running {
                    phase: if d.phase.is_empty() { "starting".into() } else { d.phase.clone() },
                    done: d.bytes_done.max(0) as u64,
                    total: d.bytes_total.max(0) as u64,
                }
            }
            Some(d) if d.status == DeploymentStatus::Failed => {
                DeployView::Failed(d.error.clone().unwrap_or_else(|| "the deployment failed".into()))
            }
            _ => DeployView::WaitingForBoot,
        },
        NodeState::Discovered | NodeState::Assigned => DeployView::WaitingForBoot,
    }
}

/// Whether the standby has joined: the primary hears `standby` on every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinView {
    /// Not yet: `up` of `total` channels carry its heartbeats (`peer`: who is heard, if anyone).
    Waiting {
        /// Channels up.
        up: usize,
        /// Channels configured.
        total: usize,
        /// The peer heard, if any.
        peer: Option<String>,
    },
    /// Heard on every channel.
    Joined,
}

/// What the primary's failover status says about the standby.
pub fn join_view(s: &Status, standby: &str) -> JoinView {
    let up = s.channels.iter().filter(|c| c.up).count();
    let total = s.channels.len();
    if s.peer.as_deref() == Some(standby) && total > 0 && up == total {
        JoinView::Joined
    } else {
        JoinView::Waiting { up, total, peer: s.peer.clone() }
    }
}

/// The first machine seen network-booting since `since` (RFC 3339, as stored) whose MAC
/// no node owns yet.
pub fn new_mac<'a>(seen: &'a [Discovered], since: &str) -> Option<&'a Discovered> {
    let mut fresh: Vec<&Discovered> =
        seen.iter().filter(|d| d.assigned_to.is_none() && d.last_seen.as_str() >= since).collect();
    fresh.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
    fresh.first().copied()
}

/// Step outcomes as the wizard reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Started.
    Running,
    /// Finished now.
    Done,
    /// Already done (resumed).
    Skipped,
    /// Failed.
    Failed,
}

impl StepState {
    /// The word written.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }
}

/// Writes the steps: a line each for people, or a JSON object per line for tools.
pub struct Reporter {
    /// JSON lines instead of text.
    pub json: bool,
    started: std::time::Instant,
}

impl Reporter {
    /// A reporter; `json` for `--json`.
    pub fn new(json: bool) -> Reporter {
        Reporter { json, started: std::time::Instant::now() }
    }

    /// Report `step` in `state` with `detail`, `took` its own time.
    pub fn step(&self, step: &str, state: StepState, detail: &str, took: Option<Duration>) {
        let n = STEPS.iter().position(|s| *s == step).map(|i| i + 1).unwrap_or(0);
        if self.json {
            let v = serde_json::json!({
                "step": step, "n": n, "state": state.as_str(), "detail": detail,
                "step_ms": took.map(|d| d.as_millis() as u64),
                "elapsed_ms": self.started.elapsed().as_millis() as u64,
            });
            println!("{v}");
            return;
        }
        let mark = match state {
            StepState::Running => "..",
            StepState::Done => "ok",
            StepState::Skipped => "--",
            StepState::Failed => "!!",
        };
        let took = took.map(|d| format!(" ({:.1} s)", d.as_secs_f64())).unwrap_or_default();
        println!("[{mark}] {n}/{} {step:<8} {detail}{took}", STEPS.len());
    }

    /// A note under the current step.
    pub fn note(&self, step: &str, text: &str) {
        if self.json {
            println!("{}", serde_json::json!({"step": step, "note": text}));
        } else {
            for l in text.lines() {
                println!("         {l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::status::ChannelInfo;
    use crate::wire::Role;

    fn node(state: NodeState) -> Node {
        Node {
            name: "standby".into(),
            role: Role::Standby,
            image: Some("head-a".into()),
            state,
            macs: vec![],
            ips: vec![],
            created: String::new(),
            updated: String::new(),
        }
    }

    fn dep(status: DeploymentStatus, phase: &str, error: Option<&str>) -> Deployment {
        Deployment {
            id: 1,
            node: "standby".into(),
            image: "head-a@1".into(),
            manifest_id: String::new(),
            expires: String::new(),
            status,
            phase: phase.into(),
            bytes_done: 10,
            bytes_total: 100,
            files_done: 0,
            files_total: 0,
            created: String::new(),
            started: None,
            finished: None,
            error: error.map(Into::into),
        }
    }

    #[test]
    fn deploy_views() {
        assert_eq!(deploy_view(&node(NodeState::Assigned), None), DeployView::WaitingForBoot);
        let running = dep(DeploymentStatus::Running, "writing", None);
        assert_eq!(
            deploy_view(&node(NodeState::Deploying), Some(&running)),
            DeployView::Running { phase: "writing".into(), done: 10, total: 100 }
        );
        assert_eq!(deploy_view(&node(NodeState::Deployed), Some(&running)), DeployView::Done);
        let failed = dep(DeploymentStatus::Failed, "install", Some("disk too small"));
        assert_eq!(deploy_view(&node(NodeState::Failed), Some(&failed)), DeployView::Failed("disk too small".into()));
        assert_eq!(deploy_view(&node(NodeState::Deploying), None), DeployView::WaitingForBoot);
    }

    #[test]
    fn joined_only_on_every_channel() {
        let ch = |up: bool| ChannelInfo {
            name: "c".into(),
            up,
            last_heard_ms: None,
            loss: 0.0,
            rtt_ms: None,
            send_failures: 0,
        };
        let mut s: Status = serde_json::from_value(serde_json::json!({
            "node": "head-a", "role": "primary", "state": "holding", "holding": true, "holder": "head-a",
            "term": 1, "boot": 1, "peer": null, "peer_last_heard_ms": null, "channels": [], "alarms": [],
            "rejected": 0, "rx": {}, "counters": {}, "monitors": [], "events": [], "updated": "", "updated_unix_ms": 0
        }))
        .unwrap();
        assert_eq!(join_view(&s, "standby"), JoinView::Waiting { up: 0, total: 0, peer: None });
        s.channels = vec![ch(true), ch(false)];
        s.peer = Some("standby".into());
        assert_eq!(join_view(&s, "standby"), JoinView::Waiting { up: 1, total: 2, peer: Some("standby".into()) });
        s.channels = vec![ch(true), ch(true)];
        assert_eq!(join_view(&s, "standby"), JoinView::Joined);
        s.peer = Some("other".into());
        assert!(matches!(join_view(&s, "standby"), JoinView::Waiting { .. }));
    }

    #[test]
    fn the_new_mac_is_the_first_unowned_one_seen_since_the_start() {
        let d = |mac: &str, first: &str, last: &str, owner: Option<&str>| Discovered {
            mac: mac.into(),
            arch: None,
            vendor_class: String::new(),
            interface: String::new(),
            first_seen: first.into(),
            last_seen: last.into(),
            count: 1,
            assigned_to: owner.map(Into::into),
        };
        let seen = vec![
            d("52:54:00:00:00:09", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z", None),
            d("52:54:00:00:00:01", "2026-01-01T00:10:00.000Z", "2026-01-01T00:10:00.000Z", Some("compute1")),
            d("52:54:00:00:00:03", "2026-01-01T00:10:05.000Z", "2026-01-01T00:10:06.000Z", None),
            d("52:54:00:00:00:02", "2026-01-01T00:10:02.000Z", "2026-01-01T00:10:09.000Z", None),
        ];
        assert_eq!(new_mac(&seen, "2026-01-01T00:05:00.000Z").map(|d| d.mac.as_str()), Some("52:54:00:00:00:02"));
        assert!(new_mac(&seen, "2026-01-01T00:20:00.000Z").is_none());
    }
}
