//! Network boot decisions as plain functions: the checks of the admin's boot settings,
//! the server URL a booting machine is given, who may fetch a deploy script, and when a
//! waiting machine gives up. Which script a node's state gets is
//! [`crate::inventory::rules::boot_plan`]; the kernel command line is
//! [`crate::wire::cmdline`]; the templates and their (checked) rendering live in
//! [`crate::pxe::template`].

use crate::wire::cmdline;
use std::net::IpAddr;

pub use crate::pxe::template::{
    DEPLOY as DEPLOY_TEMPLATE, LOCAL as LOCAL_TEMPLATE, POWEROFF as POWEROFF_TEMPLATE, WAIT as WAIT_TEMPLATE, render,
};

/// A boot setting the server will not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BootSettingError(pub String);

/// Check the admin's extra kernel arguments (`boot.cmdline`).
pub fn check_cmdline(s: &str) -> Result<(), BootSettingError> {
    if s.len() > 1024 {
        return Err(BootSettingError("longer than 1024 bytes".into()));
    }
    if let Some(why) = crate::pxe::template::unsafe_value(s) {
        return Err(BootSettingError(why.into()));
    }
    if let Some(k) =
        s.split_whitespace().find_map(|w| cmdline::RESERVED.iter().find(|k| w.split('=').next() == Some(**k)))
    {
        return Err(BootSettingError(format!("{k} is set by the server")));
    }
    // The agent reads the optional keys strictly: a value it would refuse fails here.
    cmdline::options(s).map_err(setting_error)?;
    Ok(())
}

fn setting_error(e: cmdline::CmdlineError) -> BootSettingError {
    match e {
        cmdline::CmdlineError::Invalid(m) => BootSettingError(m),
        other => BootSettingError(other.to_string()),
    }
}

/// Check a server URL (`boot.server_url`).
pub fn check_server_url(u: &str) -> Result<(), BootSettingError> {
    cmdline::check_server_url(u).map_err(setting_error)
}

/// The server URL as seen by the booting machine: the configured one, else the Host it
/// fetched its script from (that address reached us, so the agent can use it too).
pub fn server_url(configured: Option<&str>, host_header: Option<&str>) -> Option<String> {
    if let Some(u) = configured {
        return Some(u.trim_end_matches('/').to_string());
    }
    host_header.filter(|h| cmdline::usable_host(h)).map(|h| format!("http://{h}"))
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

    #[test]
    fn cmdline_and_urls() {
        assert!(check_cmdline("console=ttyS0,115200 quiet").is_ok());
        assert!(check_cmdline("understudy.token=x").is_err());
        assert!(check_cmdline("a\nb").is_err());
        assert!(check_cmdline("init=\"/bin/sh\"").is_err());
        // What the agent would refuse at boot is refused here (the fuzzer's find: a
        // `boot.cmdline` with understudy.keep_ssh_keys=2 was accepted, then every node's
        // agent stopped on it).
        assert!(check_cmdline("understudy.bootloader=none understudy.reboot=0 understudy.disk=/dev/vdb").is_ok());
        for bad in [
            "understudy.keep_ssh_keys=2",
            "understudy.reboot=maybe",
            "understudy.bootloader=grub",
            "understudy.disk=vda",
        ] {
            let e = check_cmdline(&format!("quiet {bad}")).expect_err(bad);
            assert!(e.0.contains(bad.split('=').next().unwrap_or(bad)) || e.0.contains("disk"), "{bad}: {}", e.0);
        }
        assert!(check_server_url("http://10.0.0.1:8080").is_ok());
        assert!(check_server_url("ftp://x").is_err());
        assert_eq!(server_url(None, Some("10.0.0.1:8080")).as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(server_url(Some("http://h:1/"), Some("x")).as_deref(), Some("http://h:1"));
        assert_eq!(server_url(None, Some("evil host")), None);
        assert_eq!(server_url(None, None), None);
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
