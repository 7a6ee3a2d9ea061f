//! Whether an address is in use on a LAN this host is on: the kernel's own neighbour
//! discovery (ARP for IPv4, ND for IPv6) is asked, and `ip -j neigh` read.
//!
//! The entry for the address is flushed first (a stale entry would tell of a machine that is
//! gone), then one UDP datagram to the discard port makes the kernel resolve it: a reply
//! makes the entry `REACHABLE` with the answering MAC; silence makes it `FAILED` after the
//! kernel's solicitations (3 by default, 1 s apart).

use super::error::NetcfgError;
use super::model::Mac;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

#[derive(Deserialize)]
struct Neigh {
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// What one `ip -j neigh show to IP` says: `Some(Some(mac))` answered, `Some(None)` nobody
/// answered, `None` not decided yet.
pub fn read_neigh(json: &str) -> Option<Option<Mac>> {
    let text = if json.trim().is_empty() { "[]" } else { json };
    let v: Vec<Neigh> = serde_json::from_str(text).ok()?;
    let n = v.first()?;
    let has = |s: &str| n.state.iter().any(|x| x == s);
    if has("FAILED") {
        return Some(None);
    }
    if has("REACHABLE") || has("PERMANENT") || has("NOARP") {
        return n.lladdr.as_deref().and_then(|m| m.parse().ok()).map(Some);
    }
    None
}

/// The MAC answering for `ip`, or `None` when nothing answers within `wait`.
pub async fn answering(ip: IpAddr, wait: Duration) -> Result<Option<Mac>, NetcfgError> {
    let ip_s = ip.to_string();
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .map_err(|e| NetcfgError::Mapping { reason: format!("running ip {}: {e}", args.join(" ")) })
    };
    // Flushing may be refused without CAP_NET_ADMIN; the probe still works, it may only
    // take longer to decide about a stale entry.
    let _ = run(vec!["neigh".into(), "flush".into(), "to".into(), ip_s.clone()]).await;
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| NetcfgError::Mapping { reason: format!("probing {ip}: {e}") })?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut sent = false;
    loop {
        if !sent {
            // An error here (no route, host unreachable) is itself the answer the kernel's
            // neighbour table records.
            sent = sock.send_to(b"understudy address probe", (ip, 9)).await.is_ok();
        }
        let out = run(vec!["-j".into(), "neigh".into(), "show".into(), "to".into(), ip_s.clone()]).await?;
        if let Some(r) = read_neigh(&String::from_utf8_lossy(&out.stdout)) {
            return Ok(r);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_states() {
        let r = r#"[{"dst":"10.0.0.2","dev":"ens3","lladdr":"52:54:00:00:01:01","state":["REACHABLE"]}]"#;
        assert_eq!(read_neigh(r), Some(Some("52:54:00:00:01:01".parse().unwrap())));
        assert_eq!(read_neigh(r#"[{"dst":"10.0.0.2","dev":"ens3","state":["FAILED"]}]"#), Some(None));
        assert_eq!(read_neigh(r#"[{"dst":"10.0.0.2","dev":"ens3","state":["INCOMPLETE"]}]"#), None);
        assert_eq!(read_neigh(""), None);
        assert_eq!(read_neigh("[]"), None);
        assert_eq!(read_neigh("garbage"), None);
    }
}
