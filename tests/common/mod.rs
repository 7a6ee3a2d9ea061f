//! Shared helpers for the integration tests: run the real binary against a private data
//! dir, build a tree with every awkward thing a root filesystem can hold, and compare
//! trees with rsync; network namespaces for the network tests are in [`netns`].
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves
#![allow(dead_code)]

pub mod disk;
pub mod netns;
pub mod qemu;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde_json::Value;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_understudy"))
}

/// A private temporary directory with a data dir inside.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        // Under target/ rather than /tmp: same disk, and user xattrs work everywhere.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        Sandbox { dir: tempfile::Builder::new().prefix("us-").tempdir_in(base).expect("tempdir") }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn data(&self) -> PathBuf {
        self.path("data")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data-dir").arg(self.data()).args(args).env("RUST_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running understudy")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "understudy {args:?} failed: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run and require failure; returns stdout + stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "understudy {args:?} unexpectedly succeeded");
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }
}

/// `rsync -naHAXc --numeric-ids --delete -i SRC/ DST/` output (empty = identical).
pub fn rsync_diff(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let o = Command::new("rsync")
        .args(["-naHAXc", "--numeric-ids", "--delete", "-i"])
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync must be installed (make deps)");
    assert!(o.status.success(), "rsync failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

fn name(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn open_dir(p: &Path) -> OwnedFd {
    rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open dir")
}

fn write_at(dir: &OwnedFd, n: &[u8], data: &[u8]) {
    let fd =
        rustix::fs::openat(dir, name(n), OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, Mode::from_raw_mode(0o644))
            .expect("create");
    let f = std::fs::File::from(fd);
    use std::io::Write;
    (&f).write_all(data).expect("write");
}

/// Deterministic pseudo-random bytes (xorshift64), the tests' one data generator:
/// the same `seed` gives the same bytes, different seeds give unrelated ones.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_time(dir: &OwnedFd, n: &[u8], sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    let t = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
    rustix::fs::utimensat(dir, name(n), &t, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// Depth and name length of the directory chain that makes a path longer than 4096 bytes.
pub const DEEP_LEVELS: usize = 24;
pub const DEEP_NAME: usize = 200;

/// Build a tree with every kind of entry and metadata capture must keep. `with_long_path`
/// adds a directory chain whose full path exceeds PATH_MAX (rsync cannot compare it).
pub fn tricky_tree(root: &Path, with_long_path: bool) {
    std::fs::create_dir_all(root).expect("mkdir root");
    let d = open_dir(root);
    // Regular files of awkward sizes and contents.
    write_at(&d, b"empty", b"");
    write_at(&d, b"one", b"x");
    write_at(&d, b"text", &b"hello world\n".repeat(5000));
    write_at(&d, b"random-3m", &noise(3 << 20, 1));
    write_at(&d, b"dup-of-text", &b"hello world\n".repeat(5000));
    // Permission bits: setuid, setgid, sticky.
    write_at(&d, b"suid", b"#!/bin/sh\n");
    rustix::fs::chmodat(&d, name(b"suid"), Mode::from_raw_mode(0o4755), AtFlags::empty()).unwrap();
    write_at(&d, b"sgid", b"#!/bin/sh\n");
    rustix::fs::chmodat(&d, name(b"sgid"), Mode::from_raw_mode(0o2711), AtFlags::empty()).unwrap();
    rustix::fs::mkdirat(&d, name(b"sticky"), Mode::from_raw_mode(0o755)).unwrap();
    rustix::fs::chmodat(&d, name(b"sticky"), Mode::from_raw_mode(0o1777), AtFlags::empty()).unwrap();
    write_at(&d, b"noperm", b"secret");
    rustix::fs::chmodat(&d, name(b"noperm"), Mode::from_raw_mode(0o000), AtFlags::empty()).unwrap();
    // Numeric owners that exist nowhere.
    write_at(&d, b"owned", b"owned by nobody we know");
    rustix::fs::chownat(
        &d,
        name(b"owned"),
        Some(rustix::fs::Uid::from_raw(12345)),
        Some(rustix::fs::Gid::from_raw(54321)),
        AtFlags::empty(),
    )
    .unwrap();
    // Names: not UTF-8, with a newline, 255 bytes long.
    write_at(&d, b"bad-\xff\xfe-utf8", b"latin1");
    write_at(&d, b"new\nline", b"nl");
    let long = vec![b'L'; 255];
    write_at(&d, &long, b"long name");
    // Links.
    rustix::fs::symlinkat("text", &d, name(b"rel-link")).unwrap();
    rustix::fs::symlinkat("/etc/passwd", &d, name(b"abs-link")).unwrap();
    rustix::fs::symlinkat("does/not/exist", &d, name(b"dangling")).unwrap();
    rustix::fs::chownat(
        &d,
        name(b"rel-link"),
        Some(rustix::fs::Uid::from_raw(7)),
        Some(rustix::fs::Gid::from_raw(8)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    rustix::fs::mkdirat(&d, name(b"sub"), Mode::from_raw_mode(0o750)).unwrap();
    write_at(&d, b"hard-a", b"one inode, three names");
    rustix::fs::linkat(&d, name(b"hard-a"), &d, name(b"hard-b"), AtFlags::empty()).unwrap();
    rustix::fs::linkat(&d, name(b"hard-a"), &d, name(b"sub/hard-c"), AtFlags::empty()).unwrap();
    // Special files.
    rustix::fs::mknodat(
        &d,
        name(b"null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        &d,
        name(b"loop9"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 9),
    )
    .unwrap();
    rustix::fs::mknodat(&d, name(b"fifo"), FileType::Fifo, Mode::from_raw_mode(0o620), 0).unwrap();
    rustix::fs::mknodat(&d, name(b"sock"), FileType::Socket, Mode::from_raw_mode(0o777), 0).unwrap();
    // Sparse files: data islands in holes, and one that is all hole.
    {
        let fd = rustix::fs::openat(&d, name(b"sparse"), OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o600))
            .unwrap();
        let f = std::fs::File::from(fd);
        use std::os::unix::fs::FileExt;
        f.write_all_at(&noise(100_000, 2), 0).unwrap();
        f.write_all_at(&noise(70_000, 3), 40 << 20).unwrap();
        f.set_len(100 << 20).unwrap();
        let fd = rustix::fs::openat(&d, name(b"all-hole"), OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o600))
            .unwrap();
        std::fs::File::from(fd).set_len(1 << 30).unwrap();
    }
    // xattrs, ACLs and file capabilities.
    let p = |n: &str| root.join(n);
    xattr(&p("text"), "user.comment", b"a user xattr");
    xattr(&p("sub"), "user.dir", b"on a directory");
    xattr(&p("one"), "trusted.t", b"\x00\x01binary\xff");
    sh(&format!("setcap cap_net_raw+ep '{}'", p("suid").display()));
    sh(&format!("chmod 4755 '{}'", p("suid").display()));
    sh(&format!("setfacl -m u:1000:rwx,g:2000:r '{}'", p("random-3m").display()));
    sh(&format!("setfacl -d -m u:1000:rx '{}'", p("sub").display()));
    sh(&format!("setfattr -h -n trusted.onlink -v yes '{}'", p("abs-link").display()));
    // A path longer than PATH_MAX.
    if with_long_path {
        rustix::fs::mkdirat(&d, name(b"deep"), Mode::from_raw_mode(0o755)).unwrap();
        let mut cur = rustix::fs::openat(&d, name(b"deep"), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for i in 0..DEEP_LEVELS {
            let n = format!("{i:02}{}", "d".repeat(DEEP_NAME - 2));
            rustix::fs::mkdirat(&cur, name(n.as_bytes()), Mode::from_raw_mode(0o755)).unwrap();
            cur = rustix::fs::openat(&cur, name(n.as_bytes()), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
        }
        write_at(&cur, b"bottom", b"at the bottom of a very long path");
    }
    // Times to the nanosecond, directories last (creating children changes them).
    for (n, s, ns) in [
        (&b"text"[..], 1_600_000_000, 123_456_789),
        (b"empty", 1, 1),
        (b"sparse", 1_700_000_000, 999_999_999),
        (b"rel-link", 1_500_000_000, 5),
        (b"fifo", 1_234_567_890, 42),
        (b"bad-\xff\xfe-utf8", 1_000_000_000, 1),
    ] {
        set_time(&d, n, s, ns);
    }
    set_time(&d, b"sub", 1_400_000_000, 777);
    set_time(&d, b"sticky", 1_300_000_000, 888);
    let rootfd = open_dir(root);
    let ts = rustix::fs::Timespec { tv_sec: 1_650_000_000, tv_nsec: 314_159_265 };
    rustix::fs::futimens(rootfd.as_fd(), &rustix::fs::Timestamps { last_access: ts, last_modification: ts }).unwrap();
}

pub fn xattr(p: &Path, n: &str, v: &[u8]) {
    rustix::fs::setxattr(p, n, v, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {n} on {}: {e}", p.display()));
}

/// Read the file at the bottom of the long-path chain.
pub fn read_deep(root: &Path) -> Vec<u8> {
    let mut cur = open_dir(&root.join("deep"));
    for i in 0..DEEP_LEVELS {
        let n = format!("{i:02}{}", "d".repeat(DEEP_NAME - 2));
        cur = rustix::fs::openat(&cur, name(n.as_bytes()), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .expect("deep dir");
    }
    let fd = rustix::fs::openat(&cur, name(b"bottom"), OFlags::RDONLY, Mode::empty()).expect("bottom");
    let mut v = Vec::new();
    use std::io::Read;
    std::fs::File::from(fd).read_to_end(&mut v).unwrap();
    v
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().blocks() * 512
}

/// A running `understudy serve`, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
}

impl Server {
    /// Start the real binary with `config` (TOML; `data_dir` is added) on an ephemeral port.
    pub fn start(sb: &Sandbox, extra_http: &str) -> Server {
        let cfg = sb.path("serve.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{extra_http}\n", sb.data().to_str().unwrap()),
        )
        .unwrap();
        let mut c = Command::new(bin());
        c.args(["serve", "--config", cfg.to_str().unwrap()]);
        Server::start_cmd(sb, &mut c)
    }

    /// Start a prepared `serve` command line.
    pub fn start_cmd(sb: &Sandbox, cmd: &mut Command) -> Server {
        use std::io::BufRead;
        let mut child = cmd.env("RUST_LOG", "warn").stdout(std::process::Stdio::piped()).spawn().expect("start server");
        let out = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("understudy: HTTP API on ") {
                url = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let url = url.expect("server did not announce its address");
        let token = std::fs::read_to_string(sb.data().join("admin.token")).unwrap().trim().to_string();
        Server { child, url, token }
    }

    /// curl (an HTTP client we did not write): returns (status, body).
    pub fn curl(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        self.curl_in(None, method, path, token, body)
    }

    /// curl, run inside network namespace `ns` when the server listens there.
    pub fn curl_in(
        &self,
        ns: Option<&str>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, &format!("{}{path}", self.url)]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let o = c.output().expect("curl");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Debian's kernel package extracted with `dpkg -x` (plus depmod and busybox-static).
pub struct DebianKernel {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub busybox: PathBuf,
    pub release: String,
}

pub fn debian_kernel() -> DebianKernel {
    let root = std::env::var_os("UNDERSTUDY_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/understudy-test/debian-kernel/root"));
    kernel_in(&root, None, "`make pxe-kernel` (or set UNDERSTUDY_TEST_KERNEL)")
}

/// The bootable Debian root the standby tests capture (`make standby-root`).
pub fn standby_root() -> PathBuf {
    let root = std::env::var_os("UNDERSTUDY_TEST_STANDBY_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/understudy-test/standby-bookworm/root"));
    assert!(
        root.join("boot/grub").is_dir() || root.join("usr/sbin/grub-install").is_file(),
        "no bootable root at {}: run `make standby-root` (or set UNDERSTUDY_TEST_STANDBY_ROOT)",
        root.display()
    );
    root
}

/// The kernel and modules of a root filesystem; busybox from `busybox` or the root itself.
pub fn kernel_in(root: &Path, busybox: Option<PathBuf>, fix: &str) -> DebianKernel {
    let missing = |what: &str| -> ! { panic!("{what} missing under {}: run {fix}", root.display()) };
    let kernel = std::fs::read_dir(root.join("boot"))
        .unwrap_or_else(|_| missing("boot/"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .unwrap_or_else(|| missing("boot/vmlinuz-*"));
    let release = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules = root.join("lib/modules").join(&release);
    if !modules.join("modules.dep").is_file() {
        missing(&format!("lib/modules/{release}/modules.dep"));
    }
    let busybox = busybox.unwrap_or_else(|| root.join("bin/busybox"));
    if !busybox.is_file() {
        missing("bin/busybox (busybox-static)");
    }
    DebianKernel { kernel, modules, busybox, release }
}

pub fn build_args<'a>(k: &'a DebianKernel, out: &'a Path) -> Vec<&'a str> {
    vec![
        "pxe",
        "build",
        "--kernel",
        k.kernel.to_str().unwrap(),
        "--modules",
        k.modules.to_str().unwrap(),
        "--busybox",
        k.busybox.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
}

/// A TCP proxy that cuts each of the first `cuts` connections after `after` bytes
/// from the server, to simulate dropped connections.
pub fn flaky_proxy(upstream: String, after: usize, cuts: usize) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let up = upstream.trim_start_matches("http://").to_string();
            let Ok(server) = std::net::TcpStream::connect(&up) else { continue };
            let cut = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < cuts;
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
            });
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut sent = 0usize;
                let mut buf = vec![0u8; 65536];
                while let Ok(k) = server.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let k = if cut { k.min(after.saturating_sub(sent)) } else { k };
                    if k == 0 || client.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    format!("http://{addr}")
}

impl Sandbox {
    /// A stand-in boot environment in the data dir (the kernel and initramfs are opaque
    /// files to the HTTP side), so the server hands out deploy scripts.
    pub fn boot_files(&self) {
        let boot = self.data().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("vmlinuz"), noise(200_000, 1)).unwrap();
        std::fs::write(boot.join("initramfs.img"), noise(300_000, 2)).unwrap();
    }
}

/// Install the binary under test into a root at `/usr/local/bin/understudy`, without its
/// debug information (as `pxe build` does), for images that carry understudy.
pub fn install_understudy(root: &Path) {
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    let o = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(bin())
        .arg(root.join("usr/local/bin/understudy"))
        .output()
        .expect("objcopy (package binutils)");
    assert!(o.status.success(), "objcopy: {}", String::from_utf8_lossy(&o.stderr));
}
