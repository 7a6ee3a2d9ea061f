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
//! [`new_mac`], [`node_image`], [`network_settled`]), and all steps at once from what the
//! inventory holds ([`steps`], the web console's wizard page). The command's I/O driver is
//! in `cli.rs`; both use these functions, so both resume from the same facts.

use crate::failover::status::Status;
use crate::wire::{Deployment, DeploymentStatus, Discovered, Node, NodeNetwork, NodeState};
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

/// The image step is done when the node has an image already (a resumed run keeps it).
pub fn node_image(node: Option<&Node>) -> Option<&str> {
    node.and_then(|n| n.image.as_deref())
}

/// The MAC step is done when the node has a MAC already.
pub fn node_macs(node: Option<&Node>) -> Option<&[String]> {
    node.map(|n| n.macs.as_slice()).filter(|m| !m.is_empty())
}

/// The network step is done when the node has an identity and the admin asks for no other:
/// no new interfaces given, and not forcing one that is not forced yet.
pub fn network_settled(cur: &NodeNetwork, new_interfaces: bool, force: bool) -> bool {
    !cur.interfaces.is_empty() && !new_interfaces && (cur.force || !force)
}

/// One line for a network identity: `role name addresses` per interface.
pub fn network_line(n: &NodeNetwork) -> String {
    n.interfaces
        .iter()
        .map(|i| format!("{} {} {}", i.role, i.name.as_deref().unwrap_or("-"), i.addresses.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The node's newest deployment (the highest id: a later network boot supersedes).
pub fn newest(ds: &[Deployment]) -> Option<&Deployment> {
    ds.iter().max_by_key(|d| d.id)
}

/// What the inventory (and the failover service) holds about one standby, as [`steps`]
/// reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed<'a> {
    /// The standby's name.
    pub name: &'a str,
    /// Its node, once registered.
    pub node: Option<&'a Node>,
    /// The image picked for a node not registered yet (`NAME` or `NAME@N`).
    pub chosen_image: Option<&'a str>,
    /// A capture of this host's `/` is running under this name.
    pub capturing: Option<&'a str>,
    /// MAC collection is open.
    pub collecting: bool,
    /// The machine that network-booted since collection opened, if any ([`new_mac`]).
    pub candidate: Option<&'a Discovered>,
    /// The node's network identity.
    pub network: Option<&'a NodeNetwork>,
    /// The node's newest deployment ([`newest`]).
    pub newest: Option<&'a Deployment>,
    /// The primary's failover status (`None`: no failover runs here).
    pub failover: Option<&'a Status>,
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Done (now or in an earlier run).
    Done,
    /// Nothing to do here (no failover: nothing to join).
    Skipped,
    /// Under way: waiting for the machine, the capture or the heartbeats.
    Running,
    /// Waiting for the admin (pick, confirm).
    Action,
    /// Failed (the admin can start it again).
    Failed,
    /// An earlier step is not done yet.
    Later,
}

impl Mark {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Done => "done",
            Mark::Skipped => "skipped",
            Mark::Running => "running",
            Mark::Action => "your turn",
            Mark::Failed => "failed",
            Mark::Later => "later",
        }
    }
}

/// One step as [`steps`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepView {
    /// The step's name (one of [`STEPS`]).
    pub step: &'static str,
    /// Where it is.
    pub mark: Mark,
    /// What it holds or waits for.
    pub detail: String,
    /// The deploy step's progress while the agent runs.
    pub deploy: Option<DeployView>,
}

/// Every step from what is there, in the command's order: the first step that is not done
/// is the current one, the steps after it wait. Decided by the same functions the command
/// uses, so the page and `understudy standby add` agree on where a standby is.
pub fn steps(o: &Observed) -> Vec<StepView> {
    let name = o.name;
    let v = |step, mark, detail: String| StepView { step, mark, detail, deploy: None };
    let image = match (node_image(o.node), o.chosen_image, o.capturing) {
        (Some(img), _, _) => v("image", Mark::Done, format!("{img} (the node's)")),
        (None, Some(img), _) => v("image", Mark::Done, format!("{img} (chosen)")),
        (None, None, Some(c)) => v("image", Mark::Running, format!("capturing / as {c}")),
        (None, None, None) => v("image", Mark::Action, "pick an image, or capture this host's /".into()),
    };
    let mac = match (node_macs(o.node), o.collecting, o.candidate) {
        (Some(m), _, _) => v("mac", Mark::Done, format!("{} (the node's)", m.join(","))),
        (None, true, Some(d)) => {
            v("mac", Mark::Action, format!("{} network-booted on {}: use it for {name}?", d.mac, d.interface))
        }
        (None, true, None) => v("mac", Mark::Running, format!("MAC collection open: network-boot {name} now (PXE)")),
        (None, false, _) => v("mac", Mark::Action, "open MAC collection, or enter the MAC".into()),
    };
    let node = match o.node {
        Some(n) => v("node", Mark::Done, format!("{} ({}, {})", n.name, n.role, n.state)),
        None => v("node", Mark::Action, "registered as a standby with its image and MAC".into()),
    };
    let network = match o.network {
        Some(net) if network_settled(net, false, false) => v("network", Mark::Done, network_line(net)),
        _ => v("network", Mark::Action, "the identity proposed from the primary's networks, to confirm".into()),
    };
    let deploy = match o.node.map(|n| deploy_view(n, o.newest)) {
        Some(DeployView::Done) => v("deploy", Mark::Done, "deployed; it boots its own disk".into()),
        Some(DeployView::Failed(why)) => v("deploy", Mark::Failed, why),
        Some(DeployView::Running { phase, done, total }) => {
            let h = crate::layout::doc::human;
            let detail = format!("{phase}: {} of {}", h(done), h(total));
            StepView {
                step: "deploy",
                mark: Mark::Running,
                detail,
                deploy: Some(DeployView::Running { phase, done, total }),
            }
        }
        Some(DeployView::WaitingForBoot) | None => {
            let img = node_image(o.node).or(o.chosen_image).unwrap_or("its image");
            v("deploy", Mark::Running, format!("network-boot {name} now; it installs {img} and reboots into its disk"))
        }
    };
    let join = match o.failover {
        None => v("join", Mark::Skipped, "this primary runs no [failover]: nothing to join".into()),
        Some(s) => match join_view(s, name) {
            JoinView::Joined => v("join", Mark::Done, format!("{name} heard on every channel")),
            JoinView::Waiting { up, total, peer } => v(
                "join",
                Mark::Running,
                format!("{up}/{total} channels up, peer {}", peer.as_deref().unwrap_or("not heard yet")),
            ),
        },
    };
    let mut out = vec![image, mac, node, network, deploy, join];
    let mut blocked = false;
    for s in &mut out {
        if blocked {
            s.mark = Mark::Later;
            s.deploy = None;
            s.detail = later_words(s.step, o.failover.is_some()).into();
        } else if !matches!(s.mark, Mark::Done | Mark::Skipped) {
            blocked = true;
        }
    }
    out
}

/// What a step that waits for an earlier one will do.
fn later_words(step: &str, failover: bool) -> &'static str {
    match step {
        "mac" => "the standby's MAC: collected from its PXE request, or given",
        "node" => "registered as a standby with its image and MAC",
        "network" => "its addresses, proposed from the primary's networks and checked",
        "deploy" => "its next network boot installs the image and reboots into its disk",
        "join" if failover => "its heartbeats reach this primary on every channel",
        "join" => "this primary runs no [failover]: nothing to join",
        _ => "",
    }
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

    #[test]
    fn steps_resume_from_what_is_there() {
        let marks = |o: &Observed| steps(o).iter().map(|s| s.mark).collect::<Vec<_>>();
        use Mark::*;
        // Nothing yet: pick an image; everything after waits.
        let o = Observed { name: "standby", ..Observed::default() };
        assert_eq!(marks(&o), [Action, Later, Later, Later, Later, Later]);
        // Capturing, then picked: the MAC step is next, collection open waits for the boot.
        let o = Observed { capturing: Some("head-a"), ..o };
        assert_eq!(marks(&o)[0], Running);
        let o = Observed { chosen_image: Some("head-a@2"), collecting: true, ..o };
        let s = steps(&o);
        assert_eq!((s[0].mark, s[1].mark, s[2].mark), (Done, Running, Later));
        assert_eq!(s[0].detail, "head-a@2 (chosen)");
        let seen = Discovered {
            mac: "52:54:00:00:00:07".into(),
            arch: Some(0),
            vendor_class: "PXEClient".into(),
            interface: "eth1".into(),
            first_seen: String::new(),
            last_seen: String::new(),
            count: 1,
            assigned_to: None,
        };
        let o = Observed { candidate: Some(&seen), ..o };
        let s = steps(&o);
        assert_eq!(s[1].mark, Action);
        assert!(s[1].detail.contains("52:54:00:00:00:07 network-booted on eth1"), "{s:?}");
        // The node exists (a resumed run): image, MAC, node done; the network is to confirm.
        let with_mac = |state| Node { macs: vec!["52:54:00:00:00:07".into()], ..node(state) };
        let n = with_mac(NodeState::Assigned);
        let empty = NodeNetwork::default();
        let o = Observed { name: "standby", node: Some(&n), network: Some(&empty), ..Observed::default() };
        let s = steps(&o);
        assert_eq!(marks(&o), [Done, Done, Done, Action, Later, Later]);
        assert_eq!(s[0].detail, "head-a (the node's)");
        // With an identity: waiting for the network boot, then the agent's progress.
        let net = NodeNetwork {
            interfaces: vec![crate::wire::NetInterface::parse_spec("role=private,address=10.0.0.2/24").unwrap()],
            force: false,
        };
        let o = Observed { network: Some(&net), ..o };
        let s = steps(&o);
        assert_eq!(marks(&o), [Done, Done, Done, Done, Running, Later]);
        assert_eq!(s[3].detail, "private - 10.0.0.2/24");
        assert!(s[4].detail.starts_with("network-boot standby now"), "{s:?}");
        let dn = with_mac(NodeState::Deploying);
        let running = dep(DeploymentStatus::Running, "chunks", None);
        let o = Observed { node: Some(&dn), newest: Some(&running), ..o };
        let s = steps(&o);
        assert_eq!(s[4].mark, Running);
        assert!(matches!(s[4].deploy, Some(DeployView::Running { done: 10, total: 100, .. })), "{s:?}");
        let failed = dep(DeploymentStatus::Failed, "install", Some("disk too small"));
        let fnode = with_mac(NodeState::Failed);
        let o = Observed { node: Some(&fnode), newest: Some(&failed), ..o };
        assert_eq!((steps(&o)[4].mark, steps(&o)[4].detail.as_str()), (Failed, "disk too small"));
        // Deployed: without failover there is nothing to join; with it, the channels decide.
        let done = with_mac(NodeState::Deployed);
        let o = Observed { node: Some(&done), newest: None, ..o };
        assert_eq!(marks(&o), [Done, Done, Done, Done, Done, Skipped]);
        let st: Status = serde_json::from_value(serde_json::json!({
            "node": "head-a", "role": "primary", "state": "holding", "holding": true, "holder": "head-a",
            "term": 1, "boot": 1, "peer": null, "peer_last_heard_ms": null, "channels": [], "alarms": [],
            "rejected": 0, "rx": {}, "counters": {}, "monitors": [], "events": [], "updated": "", "updated_unix_ms": 0
        }))
        .unwrap();
        let o = Observed { failover: Some(&st), ..o };
        assert_eq!(steps(&o)[5].mark, Running);
        assert_eq!(steps(&o)[5].detail, "0/0 channels up, peer not heard yet");
    }

    #[test]
    fn the_network_step_is_settled_as_the_command_decides() {
        let none = NodeNetwork::default();
        let one = NodeNetwork {
            interfaces: vec![crate::wire::NetInterface::parse_spec("role=private,address=10.0.0.2/24").unwrap()],
            force: false,
        };
        assert!(!network_settled(&none, false, false));
        assert!(network_settled(&one, false, false));
        assert!(!network_settled(&one, true, false), "new interfaces given replace it");
        assert!(!network_settled(&one, false, true), "forcing an unforced one sets it again");
        assert!(network_settled(&NodeNetwork { force: true, ..one }, false, true));
    }
}
