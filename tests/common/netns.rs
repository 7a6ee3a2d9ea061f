//! The one network-namespace fixture of the integration tests. A [`Netns`] owns the
//! namespaces one test creates, and with them everything inside: veth pairs, bridges, taps
//! and the processes started there. Names are unique per fixture (test binary's pid and a
//! counter), so tests run in parallel, within one binary and across binaries. Links are
//! created inside the namespaces, never in the host's, so removing the namespaces removes
//! them all; [`Drop`] kills every process still inside first (a namespace lives as long as
//! one process is in it) and runs on a panicking test too.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

use super::sh;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Namespaces owned by one test, removed (with their links and processes) on drop.
pub struct Netns {
    prefix: String,
    spaces: Vec<String>,
    /// A number unique among this binary's fixtures (20..=219), for `10.<subnet>.x.y`
    /// addresses and names that must differ between tests.
    pub subnet: u8,
}

impl Netns {
    /// A fixture without namespaces yet; `tag` (a few letters) starts every namespace name,
    /// so a leftover shows which test file made it.
    pub fn new(tag: &str) -> Netns {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        Netns {
            prefix: format!("us{tag}-{:x}-{seq}", std::process::id()),
            spaces: Vec::new(),
            subnet: 20 + (seq % 200) as u8,
        }
    }

    /// Create namespace `role` with its loopback up; returns its name.
    pub fn add(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        // Owned before it exists: a half-made namespace is removed too.
        self.spaces.push(name.clone());
        sh(&format!("ip netns add {name} && ip -n {name} link set lo up"));
        name
    }

    /// The namespaces created so far, in order.
    pub fn spaces(&self) -> &[String] {
        &self.spaces
    }

    /// A veth pair: `a_if` in namespace `a`, its peer `b_if` in `b` (both down).
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        sh(&format!("ip -n {a} link add {a_if} type veth peer name {b_if} netns {b}"));
    }

    /// A bridge `name` in `ns`, up.
    pub fn bridge(&self, ns: &str, name: &str) {
        sh(&format!("ip -n {ns} link add name {name} type bridge && ip -n {ns} link set {name} up"));
    }

    /// Put `ifc` into `bridge` (both in `ns`) and bring it up.
    pub fn attach(&self, ns: &str, ifc: &str, bridge: &str) {
        sh(&format!("ip -n {ns} link set {ifc} master {bridge} && ip -n {ns} link set {ifc} up"));
    }

    /// A tap device `name` in `ns` (down), for a VM started inside `ns`.
    pub fn tap(&self, ns: &str, name: &str) {
        sh(&format!("ip -n {ns} tuntap add dev {name} mode tap"));
    }

    /// Address `cidr` on `ifc` in `ns`, and the link up.
    pub fn addr(&self, ns: &str, ifc: &str, cidr: &str) {
        sh(&format!("ip -n {ns} addr add {cidr} dev {ifc} && ip -n {ns} link set {ifc} up"));
    }

    /// Bring `ifc` in `ns` up.
    pub fn up(&self, ns: &str, ifc: &str) {
        sh(&format!("ip -n {ns} link set {ifc} up"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.spaces.iter().rev() {
            kill_inside(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// SIGKILL every process in `ns` until none is left (a process may fork while we look).
fn kill_inside(ns: &str) {
    for _ in 0..50 {
        let pids: Vec<String> = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `prog` run inside namespace `ns`.
pub fn ns_cmd(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog);
    c
}

/// Run a shell `script` inside `ns`; it must succeed.
pub fn ns_sh(ns: &str, script: &str) {
    let o = ns_cmd(ns, "sh").args(["-c", script]).output().expect("ip netns exec");
    assert!(o.status.success(), "in {ns}: {script}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The standard output of `args` run inside `ns` (whatever its exit status).
pub fn ns_out(ns: &str, args: &[&str]) -> String {
    let o = ns_cmd(ns, args[0]).args(&args[1..]).output().expect("ip netns exec");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A background process, killed and reaped on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
