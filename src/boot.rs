//! Network boot decisions as plain functions: which iPXE script a machine gets for its
//! node's state and the kernel command line that carries the agent's deployment. The
//! templates and their (checked) rendering live in [`crate::pxe::template`].

use crate::db::Node;
use std::net::IpAddr;

pub use crate::pxe::template::{
    DEPLOY as DEPLOY_TEMPLATE, LOCAL as LOCAL_TEMPLATE, POWEROFF as POWEROFF_TEMPLATE, WAIT as WAIT_TEMPLATE, render,
};

/// Kernel command-line keys the agent reads; reserved, so the admin's extra arguments
/// cannot override them.
pub const CMDLINE_KEYS: &[&str] =
    &["understudy.server", "understudy.deployment", "understudy.node", "understudy.token"];

/// What a network-booting machine should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Start a deployment of the node's image: boot the deploy environment.
    Deploy,
    /// The node is deployed: boot from its disk.
    Local,
    /// Known or unknown, but nothing to do yet: say why and ask again later.
    Wait(String),
}

/// Decide from the node (if the MAC belongs to one) and whether MAC collection is on.
pub fn plan(node: Option<&Node>, collecting: bool) -> Plan {
    let Some(n) = node else {
        return Plan::Wait(if collecting {
            "this machine is not a node yet; its MAC was collected: assign it with `understudy nodes add`".into()
        } else {
            "this machine is not a node; turn on MAC collection or add it with `understudy nodes add`".into()
        });
    };
    match (n.state.as_str(), n.image.is_some()) {
        ("deployed", _) => Plan::Local,
        ("assigned" | "deploying", true) => Plan::Deploy,
        ("failed", _) => Plan::Wait(format!(
            "the last deployment of node {} failed; see `understudy events --node {}`, then `understudy nodes redeploy {}`",
            n.name, n.name, n.name
        )),
        _ => Plan::Wait(format!(
            "node {} has no image to deploy; set one with `understudy nodes set {} --image NAME`",
            n.name, n.name
        )),
    }
}

/// Check the admin's extra kernel arguments (`boot.cmdline`).
pub fn check_cmdline(s: &str) -> Result<(), String> {
    if s.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if let Some(why) = crate::pxe::template::unsafe_value(s) {
        return Err(why.into());
    }
    if let Some(k) = s.split_whitespace().find_map(|w| CMDLINE_KEYS.iter().find(|k| w.split('=').next() == Some(**k))) {
        return Err(format!("{k} is set by the server"));
    }
    Ok(())
}

fn host_chars(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// Check a server URL (`boot.server_url`): `http://` or `https://`, a host, an optional port and path.
pub fn check_server_url(u: &str) -> Result<(), String> {
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")).ok_or("must start with http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !host_chars(host) {
        return Err(format!("{u:?} has no valid host"));
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b)) {
        return Err(format!("{u:?} has characters that do not belong in a path"));
    }
    Ok(())
}

/// The server URL as seen by the booting machine: the configured one, else the Host it
/// fetched its script from (that address reached us, so the agent can use it too).
pub fn server_url(configured: Option<&str>, host_header: Option<&str>) -> Option<String> {
    if let Some(u) = configured {
        return Some(u.trim_end_matches('/').to_string());
    }
    host_header.filter(|h| host_chars(h) && h.len() <= 255).map(|h| format!("http://{h}"))
}

/// The kernel command line of the deploy environment.
pub fn kernel_cmdline(extra: &str, server: &str, deployment: i64, node: &str, token: &str) -> String {
    let mut s = String::from(extra.trim());
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str(&format!(
        "understudy.server={server} understudy.deployment={deployment} understudy.node={node} understudy.token={token}"
    ));
    s
}

/// May a machine at `peer` get a deploy for this node? When the node has known addresses
/// (reserved or leased), the request must come from one of them: the script carries a
/// deployment token, so a neighbour asking for someone else's MAC gets nothing. A node
/// with no known address (proxyDHCP, addresses from another server) is matched by MAC only.
pub fn peer_allowed(peer: Option<IpAddr>, known: &[String]) -> bool {
    if known.is_empty() {
        return true;
    }
    let Some(p) = peer else { return false };
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let p = match p {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(p),
        v4 => v4,
    };
    known.iter().any(|k| k.parse::<IpAddr>().is_ok_and(|k| k == p))
}

/// The next check's number and whether the machine should give up instead.
pub fn next_attempt(attempt: u32, retries: u32) -> Option<u32> {
    (attempt < retries).then_some(attempt + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: &str, image: Option<&str>) -> Node {
        Node {
            name: "standby".into(),
            role: "standby".into(),
            image: image.map(Into::into),
            state: state.into(),
            macs: vec!["52:54:00:00:00:01".into()],
            ips: vec![],
            created: String::new(),
            updated: String::new(),
        }
    }

    #[test]
    fn plans_follow_the_state() {
        assert_eq!(plan(Some(&node("assigned", Some("head-a"))), false), Plan::Deploy);
        assert_eq!(plan(Some(&node("deploying", Some("head-a"))), false), Plan::Deploy);
        assert_eq!(plan(Some(&node("deployed", Some("head-a"))), false), Plan::Local);
        assert!(matches!(plan(Some(&node("failed", Some("head-a"))), false), Plan::Wait(m) if m.contains("redeploy")));
        assert!(matches!(plan(Some(&node("discovered", None)), false), Plan::Wait(m) if m.contains("no image")));
        assert!(matches!(plan(Some(&node("assigned", None)), false), Plan::Wait(_)));
        assert!(matches!(plan(None, true), Plan::Wait(m) if m.contains("collected")));
        assert!(matches!(plan(None, false), Plan::Wait(m) if m.contains("turn on MAC collection")));
    }

    #[test]
    fn cmdline_and_urls() {
        assert!(check_cmdline("console=ttyS0,115200 quiet").is_ok());
        assert!(check_cmdline("understudy.token=x").is_err());
        assert!(check_cmdline("a\nb").is_err());
        assert!(check_cmdline("init=\"/bin/sh\"").is_err());
        assert!(check_server_url("http://10.0.0.1:8080").is_ok());
        assert!(check_server_url("https://head.example/understudy").is_ok());
        assert!(check_server_url("ftp://x").is_err());
        assert!(check_server_url("http://a b").is_err());
        assert!(check_server_url("http://").is_err());
        assert_eq!(server_url(None, Some("10.0.0.1:8080")).as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(server_url(Some("http://h:1/"), Some("x")).as_deref(), Some("http://h:1"));
        assert_eq!(server_url(None, Some("evil host")), None);
        assert_eq!(server_url(None, None), None);
        let c = kernel_cmdline(" console=ttyS0 ", "http://h", 3, "n", "t");
        assert_eq!(
            c,
            "console=ttyS0 understudy.server=http://h understudy.deployment=3 understudy.node=n understudy.token=t"
        );
        assert!(kernel_cmdline("", "http://h", 3, "n", "t").starts_with("understudy.server="));
    }

    #[test]
    fn peers_must_come_from_the_node_address() {
        let known = vec!["10.0.0.5".to_string()];
        assert!(peer_allowed(Some("10.0.0.5".parse().unwrap()), &known));
        assert!(peer_allowed(Some("::ffff:10.0.0.5".parse().unwrap()), &known));
        assert!(!peer_allowed(Some("10.0.0.6".parse().unwrap()), &known));
        assert!(!peer_allowed(None, &known));
        assert!(peer_allowed(Some("10.0.0.6".parse().unwrap()), &[]));
    }

    #[test]
    fn attempts_end() {
        assert_eq!(next_attempt(1, 3), Some(2));
        assert_eq!(next_attempt(3, 3), None);
    }
}
