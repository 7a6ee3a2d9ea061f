//! TFTP in network namespaces joined by a veth pair, with real clients from Debian:
//! tftp-hpa's `tftp`, `atftp` (blksize, windowsize) and `curl tftp://`, plus a raw client
//! in python3 for what no client does on purpose (an ERROR right after the OACK).
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Two namespaces (server 10.N.0.1, client 10.N.0.2) joined by a veth pair.
struct Net {
    _netns: Netns,
    srv: String,
    cli: String,
    subnet: u8,
}

impl Net {
    fn new() -> Net {
        let mut netns = Netns::new("t");
        let (srv, cli) = (netns.add("s"), netns.add("c"));
        let subnet = netns.subnet;
        netns.veth(&srv, "s0", &cli, "c0");
        netns.addr(&srv, "s0", &format!("10.{subnet}.0.1/24"));
        netns.addr(&cli, "c0", &format!("10.{subnet}.0.2/24"));
        Net { _netns: netns, srv, cli, subnet }
    }

    fn server_ip(&self) -> String {
        format!("10.{}.0.1", self.subnet)
    }

    /// A command run inside the client namespace.
    fn client(&self, prog: &str) -> Command {
        ns_cmd(&self.cli, prog)
    }

    /// tftp-hpa: `get` (or `put`) in binary mode.
    fn tftp_hpa(&self, verb: &str, a: &str, b: &Path) -> Output {
        let mut c = self.client("tftp");
        c.args(["-m", "binary", &self.server_ip(), "-c", verb]);
        if verb == "put" {
            c.arg(b).arg(a);
        } else {
            c.arg(a).arg(b);
        }
        c.output().expect("tftp (make deps installs tftp-hpa)")
    }

    /// atftp with the given `--option`s.
    fn atftp(&self, remote: &str, local: &Path, opts: &[&str]) -> Command {
        let mut c = self.client("atftp");
        for o in opts {
            c.args(["--option", o]);
        }
        c.args(["--tftp-timeout", "1", "-g", "-r", remote, "-l"]).arg(local).arg(self.server_ip());
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn curl(&self, remote: &str, local: &Path) -> Output {
        self.client("curl")
            .args(["-sS", "--max-time", "60", "--tftp-blksize", "1468", "-o"])
            .arg(local)
            .arg(format!("tftp://{}/{remote}", self.server_ip()))
            .output()
            .expect("curl")
    }
}

/// Sandbox, root dir `pxe/` and a server on the namespace address.
fn start(sb: &Sandbox, net: &Net, extra: &str) -> Server {
    let root = sb.path("pxe");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = sb.path("tftp.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[tftp]\nlisten = \"{}:69\"\nroot = {:?}\n{extra}\n",
            sb.data().to_str().unwrap(),
            net.server_ip(),
            root.to_str().unwrap()
        ),
    )
    .unwrap();
    Server::start_cmd(sb, ns_cmd(&net.srv, bin()).args(["serve", "--config", cfg.to_str().unwrap()]))
}

fn out_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn same(got: &Path, want: &[u8], what: &str) {
    let g = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: no output file {}: {e}", got.display()));
    assert!(g.len() == want.len() && g == want, "{what}: got {} bytes, want {}", g.len(), want.len());
}

/// Nothing (or only an empty file) was written locally.
fn no_content(p: &Path, what: &str) {
    let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 0, "{what}: {len} bytes arrived");
}

fn files(sb: &Sandbox) -> Vec<(&'static str, Vec<u8>)> {
    let root = sb.path("pxe");
    std::fs::create_dir_all(root.join("efi")).unwrap();
    let set = vec![
        ("big", noise(5 << 20, 7)),
        ("efi/tiny", b"hello pxe\n".to_vec()),
        ("empty", Vec::new()),
        ("exact512", noise(512 * 3, 8)),
        ("exact1468", noise(1468 * 2, 9)),
    ];
    for (n, d) in &set {
        std::fs::write(root.join(n), d).unwrap();
    }
    set
}

#[test]
fn real_clients_fetch_byte_exact_files() {
    let sb = Sandbox::new();
    let net = Net::new();
    let set = files(&sb);
    let _srv = start(&sb, &net, "");
    let out = sb.path("out");
    std::fs::create_dir_all(&out).unwrap();
    for (name, data) in &set {
        let local = out.join(name.replace('/', "_"));
        let o = net.tftp_hpa("get", name, &local);
        same(&local, data, &format!("tftp-hpa {name}: {}", out_text(&o)));
        std::fs::remove_file(&local).unwrap();
        for opts in [&["blksize 1468", "windowsize 16"][..], &["blksize 9000", "tsize 0"], &[]] {
            let o = net.atftp(name, &local, opts).output().unwrap();
            same(&local, data, &format!("atftp {opts:?} {name}: {}", out_text(&o)));
            std::fs::remove_file(&local).unwrap();
        }
        // curl 7.88 fails every zero-byte TFTP download (getpeername ENOTCONN), from
        // tftpd-hpa just the same; the other clients cover the empty file.
        if data.is_empty() {
            continue;
        }
        let o = net.curl(name, &local);
        same(&local, data, &format!("curl {name}: {}", out_text(&o)));
        std::fs::remove_file(&local).unwrap();
    }
    // The Secure Boot GRUB's config is made by the server (the root has no grub/): it asks
    // for this machine's script, which the server also makes.
    let local = out.join("grub.cfg");
    let o = net.tftp_hpa("get", "grub/grub.cfg", &local);
    let cfg = std::fs::read_to_string(&local).unwrap_or_else(|_| panic!("grub/grub.cfg: {}", out_text(&o)));
    assert!(!sb.path("pxe/grub").exists());
    assert!(cfg.contains("configfile (tftp)/boot/${net_default_mac}.grub"), "{cfg}");
    // An unknown machine's script is a waiting one; boot files need a live deployment token.
    let local = out.join("script.grub");
    // (curl: tftp-hpa reads a colon in a name as host:file.)
    let o = net.curl("boot/52:54:00:aa:bb:cc.grub", &local);
    let script = std::fs::read_to_string(&local).unwrap_or_else(|_| panic!("script: {}", out_text(&o)));
    assert!(script.contains("this machine is not a node") && script.contains("configfile"), "{script}");
    let o = net.tftp_hpa("get", "boot/not-a-token/vmlinuz", &out.join("vmlinuz"));
    assert!(out_text(&o).contains("invalid token"), "{}", out_text(&o));
    // A leading slash means the root, as with tftpd-hpa -s.
    let local = out.join("slash");
    let o = net.tftp_hpa("get", "/efi/tiny", &local);
    same(&local, b"hello pxe\n", &format!("tftp-hpa /efi/tiny: {}", out_text(&o)));
    // Many at once, windowed.
    let t = Instant::now();
    let clients: Vec<(Bg, PathBuf)> = (0..24)
        .map(|i| {
            let p = out.join(format!("par{i}"));
            (Bg(net.atftp("big", &p, &["blksize 1468", "windowsize 8"]).spawn().unwrap()), p)
        })
        .collect();
    for (mut c, p) in clients {
        let st = c.0.wait().unwrap();
        assert!(st.success(), "parallel atftp failed: {st}");
        same(&p, &set[0].1, "parallel atftp");
    }
    eprintln!("24 parallel 5 MiB fetches in {:?}", t.elapsed());
}

#[test]
fn traversal_and_writes_are_refused() {
    let sb = Sandbox::new();
    let net = Net::new();
    std::fs::create_dir_all(sb.path("pxe/sub")).unwrap();
    std::fs::write(sb.path("secret"), b"outside the root").unwrap();
    std::fs::write(sb.path("pxe/sub/file"), b"inside").unwrap();
    std::os::unix::fs::symlink("../secret", sb.path("pxe/escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", sb.path("pxe/passwd")).unwrap();
    std::os::unix::fs::symlink("sub/file", sb.path("pxe/inside")).unwrap();
    let _srv = start(&sb, &net, "");
    let local = sb.path("got");
    // A symlink that stays inside the root is fine.
    let o = net.atftp("inside", &local, &[]).output().unwrap();
    same(&local, b"inside", &format!("inside symlink: {}", out_text(&o)));
    for bad in [
        "../secret",
        "../../../../../../etc/passwd",
        "/etc/passwd",
        "/../secret",
        "escape",
        "passwd",
        "%2e%2e/secret",
        "sub/%2E%2E/%2e%2e/secret",
        "sub\\..\\..\\secret",
        "sub",
    ] {
        let _ = std::fs::remove_file(&local);
        let o = net.tftp_hpa("get", bad, &local);
        let text = out_text(&o);
        assert!(text.contains("Error code"), "tftp-hpa {bad}: no TFTP error: {text}");
        no_content(&local, bad);
        let o = net.atftp(bad, &local, &["blksize 1468"]).output().unwrap();
        assert!(!o.status.success(), "atftp {bad} succeeded");
        no_content(&local, bad);
    }
    // Writes: tftp-hpa put and curl upload both get an error and create nothing.
    let src = sb.path("upload");
    std::fs::write(&src, b"should never land").unwrap();
    let before: Vec<_> =
        std::fs::read_dir(sb.path("pxe")).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    let o = net.tftp_hpa("put", "uploaded", &src);
    let text = out_text(&o);
    assert!(text.contains("Error code 2"), "tftp put: {text}");
    let o = net
        .client("curl")
        .args(["-sS", "--max-time", "10", "-T"])
        .arg(&src)
        .arg(format!("tftp://{}/uploaded2", net.server_ip()))
        .output()
        .unwrap();
    assert!(!o.status.success(), "curl upload succeeded: {}", out_text(&o));
    let after: Vec<_> =
        std::fs::read_dir(sb.path("pxe")).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(before.len(), after.len(), "a write request created a file");
}

/// A raw client: RRQ with tsize and blksize, read the OACK, answer ERROR 8 (what UEFI
/// firmware does after its size probe). Prints the OACK options.
const PROBE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"\x00\x01" + sys.argv[2].encode() + b"\x00octet\x00tsize\x000\x00blksize\x001468\x00", (sys.argv[1], 69))
d, peer = s.recvfrom(2048)
assert d[:2] == b"\x00\x06", d
print(d[2:].split(b"\x00"))
s.sendto(b"\x00\x05\x00\x08tsize probe only\x00", peer)
# Any packet the server sends afterwards would be a retransmission it should not make.
s.settimeout(1.5)
try:
    d, _ = s.recvfrom(2048)
    print("UNEXPECTED", d[:4])
except socket.timeout:
    print("quiet")
"#;

#[test]
fn client_error_after_oack_ends_the_transfer() {
    let sb = Sandbox::new();
    let net = Net::new();
    let set = files(&sb);
    let _srv = start(&sb, &net, "max_transfers = 1\ntimeout = \"300ms\"\nretries = 5\n");
    let o = net.client("python3").args(["-c", PROBE, &net.server_ip(), "big"]).output().unwrap();
    let text = out_text(&o);
    assert!(o.status.success(), "probe failed: {text}");
    assert!(text.contains(&format!("b'tsize', b'{}'", 5 << 20)), "OACK lacks the real tsize: {text}");
    assert!(text.contains("b'blksize', b'1468'") && text.contains("quiet"), "{text}");
    // The slot is free at once (not after 300ms * (1+2+4+8+16+32)).
    let local = sb.path("after");
    let o = net.curl("big", &local);
    same(&local, &set[0].1, &format!("fetch after probe: {}", out_text(&o)));
}

#[test]
fn a_vanished_client_frees_its_slot() {
    let sb = Sandbox::new();
    let net = Net::new();
    std::fs::write(sb.path("pxe-big"), noise(48 << 20, 3)).unwrap();
    std::fs::create_dir_all(sb.path("pxe")).unwrap();
    std::fs::rename(sb.path("pxe-big"), sb.path("pxe/big")).unwrap();
    std::fs::write(sb.path("pxe/tiny"), b"tiny").unwrap();
    // Retry budget: 200ms * (1 + 2 + 4 + 8) = 3s.
    let _srv = start(&sb, &net, "max_transfers = 1\ntimeout = \"200ms\"\nretries = 3\n");
    let local = sb.path("tiny.out");

    // A frozen client sends nothing, not even an ICMP error: only the retry budget frees it.
    let slow = Bg(net.atftp("big", &sb.path("big.out"), &[]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    sh(&format!("kill -STOP {}", slow.0.id()));
    let o = net.atftp("tiny", &local, &[]).output().unwrap();
    assert!(!o.status.success(), "second transfer ran beside the first with max_transfers = 1");
    assert!(out_text(&o).contains("busy"), "{}", out_text(&o));
    std::thread::sleep(Duration::from_millis(3500));
    let o = net.curl("tiny", &local);
    same(&local, b"tiny", &format!("after the retry budget: {}", out_text(&o)));
    drop(slow);

    // A killed client: its slot comes back within the budget.
    let _ = std::fs::remove_file(&local);
    let gone = Bg(net.atftp("big", &sb.path("big2.out"), &[]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    drop(gone);
    let t = Instant::now();
    loop {
        let o = net.curl("tiny", &local);
        if o.status.success() {
            same(&local, b"tiny", "after kill -9");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(6), "slot still taken: {}", out_text(&o));
        std::thread::sleep(Duration::from_millis(200));
    }
}
