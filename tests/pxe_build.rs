//! `understudy pxe build` against Debian's real kernel package (fetched by
//! `make pxe-kernel`): the initramfs holds what it must, builds are reproducible and
//! cached, and the result boots in QEMU to the point where init runs understudy.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::{Sandbox, build_args, debian_kernel};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The initramfs's entry names, listed by the real cpio after zstd -d.
fn cpio_list(img: &Path) -> Vec<String> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | cpio -t --quiet", img.display()))
        .output()
        .expect("sh");
    assert!(o.status.success(), "listing {}: {}", img.display(), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
}

/// The dependencies `modules.dep` lists for a module path.
fn deps_of(modules: &Path, module: &str) -> Vec<String> {
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let line = dep.lines().find(|l| l.starts_with(&format!("{module}:"))).unwrap_or_else(|| panic!("{module}"));
    line.split_once(':').unwrap().1.split_whitespace().map(String::from).collect()
}

#[test]
fn builds_reproducibly_with_the_module_closure() {
    let k = debian_kernel();
    let sb = Sandbox::new();
    let (a, b) = (sb.path("a"), sb.path("b"));
    let t = Instant::now();
    let v = sb.json(&[build_args(&k, &a), vec!["--json"]].concat());
    eprintln!("first build: {:.1}s, initramfs {} bytes", t.elapsed().as_secs_f64(), v["initramfs"]["size"]);
    assert_eq!(v["up_to_date"], false);
    assert_eq!(v["kernel_release"], k.release.as_str());
    assert_eq!(v["compression"], "zstd", "Debian's kernel has CONFIG_RD_ZSTD=y");
    let modules: Vec<&str> = v["modules"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
    assert!(modules.contains(&"virtio_net") && modules.contains(&"ext4"), "{modules:?}");

    let list = cpio_list(&a.join("initramfs.img"));
    for want in ["init", "bin/understudy", "bin/busybox", "bin/sh", "dev/console", "etc/udhcpc.script"] {
        assert!(list.iter().any(|l| l == want), "{want} missing from the initramfs: {list:?}");
    }
    assert!(list.iter().any(|l| l.ends_with("/libc.so.6")), "understudy's libc missing");
    let moddir = format!("lib/modules/{}", k.release);
    for module in ["kernel/drivers/net/virtio_net.ko", "kernel/fs/ext4/ext4.ko"] {
        for m in deps_of(&k.modules, module).iter().chain([&module.to_string()]) {
            assert!(list.contains(&format!("{moddir}/{m}")), "{m} (closure of {module}) missing");
        }
    }
    // The file on disk says the same as --json.
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("boot.json")).unwrap()).unwrap();
    assert_eq!(info["input_hash"], v["input_hash"]);
    assert_eq!(info["initramfs"]["size"].as_u64(), Some(std::fs::metadata(a.join("initramfs.img")).unwrap().len()));

    // Same inputs: byte-identical output elsewhere, and "up to date" in place.
    sb.ok(&build_args(&k, &b));
    for f in ["initramfs.img", "vmlinuz", "boot.json"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs between builds");
    }
    let again = sb.ok(&build_args(&k, &a));
    assert!(again.contains("up to date"), "{again}");

    // A damaged output is rebuilt, not trusted.
    std::fs::write(a.join("initramfs.img"), b"garbage").unwrap();
    let rebuilt = sb.ok(&build_args(&k, &a));
    assert!(rebuilt.starts_with("built "), "{rebuilt}");
    assert!(std::fs::read(a.join("initramfs.img")).unwrap() == std::fs::read(b.join("initramfs.img")).unwrap());
}

#[test]
fn bad_inputs_are_clear_errors() {
    let k = debian_kernel();
    let sb = Sandbox::new();
    let out = sb.path("out");
    let e = sb.fails(&["pxe", "build", "--kernel", "/nonexistent/vmlinuz", "-o", out.to_str().unwrap()]);
    assert!(e.contains("/nonexistent/vmlinuz not found") && !e.contains("panicked"), "{e}");
    let empty = sb.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let args = ["pxe", "build", "--kernel", k.kernel.to_str().unwrap(), "--modules", empty.to_str().unwrap(), "-o"];
    let e = sb.fails(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(e.contains("no modules.dep") && !e.contains("panicked"), "{e}");
    let mut args = build_args(&k, &out);
    let i = args.iter().position(|a| *a == "--busybox").unwrap();
    args[i + 1] = "/nonexistent/busybox";
    let e = sb.fails(&args);
    assert!(e.contains("/nonexistent/busybox") && !e.contains("panicked"), "{e}");
    assert!(!out.join("boot.json").exists());
}

/// Kills QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn boots_in_qemu_and_runs_understudy() {
    let k = debian_kernel();
    let sb = Sandbox::new();
    let out = sb.path("boot");
    sb.ok(&build_args(&k, &out));
    // No network to the outside: one virtio NIC on a hub port that leads nowhere.
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1024", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-device", "virtio-net-pci,netdev=n0", "-netdev", "hubport,id=n0,hubid=0"])
        .arg("-kernel")
        .arg(out.join("vmlinuz"))
        .arg("-initrd")
        .arg(out.join("initramfs.img"))
        .args(["-append", "console=ttyS0 panic=-1 understudy.shell=0 understudy.poweroff=1 understudy.dhcp_tries=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 must be installed (make deps)");
    let stdout = child.stdout.take().unwrap();
    let mut qemu = Qemu(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut console = String::new();
    let mut finished = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                finished = true;
                break;
            }
        }
    }
    let status = if finished { qemu.0.wait().ok() } else { None };
    eprintln!("QEMU boot to power-off: {:.1}s", t.elapsed().as_secs_f64());
    let tail: String =
        console.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(finished, "QEMU did not power off within 240 s; console tail:\n{tail}");
    assert!(status.is_some_and(|s| s.success()), "QEMU exited with {status:?}; console tail:\n{tail}");
    let loaded = console
        .lines()
        .find(|l| l.contains("understudy-init: loaded"))
        .unwrap_or_else(|| panic!("no module line:\n{tail}"));
    for m in ["virtio_net", "ext4", "virtio_blk"] {
        assert!(loaded.split_whitespace().any(|w| w == m), "{m} not loaded: {loaded}");
    }
    let version = format!("understudy-init: understudy {}", env!("CARGO_PKG_VERSION"));
    assert!(console.contains(&version), "init did not run /bin/understudy --version:\n{tail}");
    assert!(console.contains("understudy-init: DHCP on eth0"), "virtio NIC not brought up:\n{tail}");
    assert!(console.contains("not starting the agent") && console.contains("understudy-init: powering off"), "{tail}");
    assert!(!console.contains("Kernel panic"), "{tail}");
}
