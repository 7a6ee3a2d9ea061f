//! What the service runs outside itself: monitor checks (process, unit, TCP, HTTP,
//! command), hooks, the fence command and the tie-breaker probe. Each one is bounded by a
//! timeout and reports a plain `bool`, so the callers turn it into an [`super::Event`].

use super::{Check, Hook};
use std::net::IpAddr;
use std::time::Duration;

/// Run one monitor check (the caller applies the timeout).
pub(super) async fn check(c: &Check) -> bool {
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

/// Run `argv` (no shell, stdin closed); true when it exits 0.
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
pub(super) async fn probe_tiebreaker(addrs: Vec<IpAddr>, timeout: Duration) -> bool {
    let probes = addrs.into_iter().map(|a| async move {
        command_ok(&["ping".into(), "-c1".into(), "-W1".into(), "-n".into(), "-q".into(), a.to_string()]).await
    });
    let all = futures_util::future::join_all(probes);
    tokio::time::timeout(timeout, all).await.is_ok_and(|r| r.into_iter().any(|ok| ok))
}

/// Fence the peer with the configured command (none configured: nothing to do, success).
pub(super) async fn run_fence(argv: Option<Vec<String>>, timeout: Duration) -> bool {
    let Some(argv) = argv else { return true };
    tracing::warn!("failover: fencing the peer: {argv:?}");
    tokio::time::timeout(timeout, command_ok(&argv)).await.unwrap_or(false)
}

/// Run one hook (`systemctl VERB UNIT`, or the command) within `timeout`; true on success.
pub(super) async fn run_hook(h: &Hook, verb: &str, timeout: Duration) -> bool {
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
pub(super) async fn run_hooks(hooks: &[Hook], verb: &str, timeout: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_are_not_running() {
        assert!(stat_is_zombie("42 (sleep) Z 1 42 42 0 -1"));
        assert!(stat_is_zombie("42 (a) Z) b) Z 1"));
        assert!(!stat_is_zombie("42 (a) Z) b) S 1"));
        assert!(!stat_is_zombie("42 (sleep) S 1 42"));
        assert!(!stat_is_zombie("garbage"));
    }
}
