//! QEMU VMs for the network-boot tests: a VM started inside a network namespace with its
//! serial console in a file, killed on drop; waits on what its console shows; and the
//! server plus the namespace its address lives in, for the admin's CLI and curl.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

use super::netns::ns_cmd;
use super::{Sandbox, Server, bin};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// At most this many QEMU VMs run at once on this machine, across test binaries (each
/// wants a core under TCG; `make test` runs the VM binaries side by side).
pub const QEMU_SLOTS: usize = 2;

/// One of the [`QEMU_SLOTS`]: an exclusive lock on its file under the temp dir, given back
/// on drop, and by the kernel when the test process dies.
pub struct Slot {
    _lock: std::fs::File,
}

impl Slot {
    /// Wait for a free slot and take it.
    pub fn take() -> Slot {
        let dir = std::env::temp_dir().join("understudy-qemu-slots");
        std::fs::create_dir_all(&dir).unwrap();
        loop {
            for i in 0..QEMU_SLOTS {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(format!("slot{i}")))
                    .unwrap();
                if f.try_lock().is_ok() {
                    return Slot { _lock: f };
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A QEMU VM; killed on drop. Its serial console goes to a file.
pub struct Vm {
    pub child: Child,
    pub console: PathBuf,
    /// Started under `timeout`: stopped with SIGTERM, which `timeout` hands to QEMU.
    limited: bool,
    _slot: Slot,
}

impl Vm {
    /// `qemu-system-x86_64 ARGS` inside namespace `ns` (where its tap devices are), once a
    /// slot is free; `console` is the file its serial console writes (the args name it).
    pub fn spawn(ns: &str, args: &[String], console: PathBuf) -> Vm {
        let slot = Slot::take();
        let child = ns_cmd(ns, "qemu-system-x86_64")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu");
        Vm { child, console, limited: false, _slot: slot }
    }

    /// As [`Vm::spawn`], and QEMU is killed after `limit` whatever the test does (a hard
    /// limit that holds even when the test process itself is killed).
    pub fn spawn_limited(ns: &str, args: &[String], console: PathBuf, limit: Duration) -> Vm {
        let slot = Slot::take();
        let child = ns_cmd(ns, "timeout")
            .args(["-s", "KILL", &limit.as_secs().to_string(), "qemu-system-x86_64"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("timeout qemu");
        Vm { child, console, limited: true, _slot: slot }
    }

    /// What the serial console showed so far.
    pub fn console(&self) -> String {
        // Firmware and GRUB menus write bytes that are not UTF-8.
        let mut b = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            let _ = f.read_to_end(&mut b);
        }
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.limited && matches!(self.child.try_wait(), Ok(None)) {
            // SIGKILL would end `timeout` and leave QEMU running; SIGTERM reaches both.
            let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let t = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `ok` holds for the console; panics with the console when the VM exits or
/// `limit` passes first.
pub fn wait_for(what: &str, limit: Duration, vm: &mut Vm, mut ok: impl FnMut(&str) -> bool) {
    let t = Instant::now();
    loop {
        let con = vm.console();
        if ok(&con) {
            return;
        }
        if let Ok(Some(st)) = vm.child.try_wait() {
            panic!("VM exited ({st}) before {what}; console:\n{con}");
        }
        assert!(t.elapsed() < limit, "no {what} after {limit:?}; console:\n{con}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The server plus the namespace its address lives in.
pub struct NsServer {
    pub srv: Server,
    pub ns: String,
}

impl NsServer {
    /// curl from inside the namespace, with the admin token.
    pub fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.srv.curl_in(Some(&self.ns), method, path, Some(&self.srv.token), body)
    }

    /// The CLI against the server, from inside the namespace; must succeed; returns stdout.
    pub fn ok(&self, sb: &Sandbox, args: &[&str]) -> String {
        let mut c = ns_cmd(&self.ns, bin());
        c.arg("--data-dir").arg(sb.data()).args(args);
        c.args(["--server", &self.srv.url, "--token", &self.srv.token]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}
