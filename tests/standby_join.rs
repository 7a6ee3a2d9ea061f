//! The mission end to end, QEMU under TCG: a primary head node (a namespace running
//! `understudy serve` with DHCP/TFTP/HTTP on its private NIC and `[failover]` on two
//! channels with a VIP on its public NIC) is captured as an image that looks like the real
//! primary's disk (understudy installed, its configuration, its systemd-networkd files
//! matching its NICs by MAC); a two-NIC standby VM is deployed from it by network boot
//! through the admin's CLI (`nodes add` with the standby's network identity), boots from
//! its own disk with its own addresses (the agent rewrote the networkd files and wrote the
//! standby's failover configuration and key, and enabled the unit), and its understudy
//! joins: the primary's `failover status` shows the peer up on both channels. Then the
//! primary is crashed (links down, SIGKILL) and the client reaches the VIP at the VM's
//! public MAC. Each phase's time is printed.
//!
//! Lab (every link inside namespaces this test creates):
//! - `sw`: the switch, two bridges that nothing routes between: `brpriv`, the cluster's
//!   private LAN 10.N.0.0/24, and `brpub`, the public LAN 10.N.1.0/24. The VM's two taps
//!   hang off them (QEMU runs in `sw`: a process opens taps in its own namespace only);
//! - `p`: the primary, `ens3` on the private LAN (10.N.0.1), `ens4` on the public one
//!   (10.N.1.1, the VIP 10.N.1.10 while it holds it);
//! - `c`: a client on the public LAN (10.N.1.100).
//!
//! The standby's own addresses are 10.N.0.2 and 10.N.1.2. nftables counters on the
//! primary's NICs count every frame from the VM's MACs, and those claiming an address of
//! the primary or the VIP (ARP sender or IP source): the latter must stay at zero.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::disk::Overlay;
use common::netns::*;
use common::qemu::*;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The VM's NIC on the private LAN (it network-boots from it).
const MAC_PRIV: &str = "52:54:00:5b:00:01";
/// The VM's NIC on the public LAN.
const MAC_PUB: &str = "52:54:00:5b:00:02";
/// The standby's node name (its hostname once deployed).
const NODE: &str = "standby";

/// The namespaces and links (removed on drop, with every process inside).
struct Lab {
    _netns: Netns,
    sw: String,
    p: String,
    c: String,
    n: u8,
}

impl Lab {
    fn new() -> Lab {
        let mut netns = Netns::new("sj");
        let (sw, p, c) = (netns.add("sw"), netns.add("p"), netns.add("c"));
        let n = netns.subnet;
        netns.bridge(&sw, "brpriv");
        netns.bridge(&sw, "brpub");
        for (ns, ifc, port, br, cidr) in [
            (&p, "ens3", "pp", "brpriv", format!("10.{n}.0.1/24")),
            (&p, "ens4", "pq", "brpub", format!("10.{n}.1.1/24")),
            (&c, "eth0", "pc", "brpub", format!("10.{n}.1.100/24")),
        ] {
            netns.veth(ns, ifc, &sw, port);
            netns.attach(&sw, port, br);
            netns.addr(ns, ifc, &cidr);
        }
        for (tap, br) in [("tpriv", "brpriv"), ("tpub", "brpub")] {
            netns.tap(&sw, tap);
            netns.attach(&sw, tap, br);
        }
        Lab { _netns: netns, sw, p, c, n }
    }

    /// The primary's address on `net` (0 private, 1 public).
    fn primary(&self, net: u8) -> String {
        format!("10.{}.{net}.1", self.n)
    }

    /// The standby's own address on `net`.
    fn standby(&self, net: u8) -> String {
        format!("10.{}.{net}.2", self.n)
    }

    fn vip(&self) -> String {
        format!("10.{}.1.10", self.n)
    }

    /// The MAC of `ifc` in `ns` (sysfs shows the namespace that mounted it: read from inside).
    fn mac(&self, ns: &str, ifc: &str) -> String {
        ns_out(ns, &["cat", &format!("/sys/class/net/{ifc}/address")]).trim().to_string()
    }

    /// Ping the VIP from the client once; when it answered, the MAC the client's
    /// neighbour table holds for it.
    fn client_sees_vip_at(&self) -> Option<String> {
        let ping = ns_cmd(&self.c, "ping").args(["-c1", "-W1", &self.vip()]).output().ok()?;
        if !ping.status.success() {
            return None;
        }
        let v: serde_json::Value =
            serde_json::from_str(&ns_out(&self.c, &["ip", "-j", "neigh", "show", &self.vip()])).ok()?;
        v.as_array()?.iter().find_map(|e| e["lladdr"].as_str().map(String::from))
    }

    /// Count, on both of the primary's NICs, every frame from the VM's MACs (`seen`), the
    /// ARP packets from them whose sender is the standby's own address (`own`), and those
    /// whose ARP sender or IP source is an address of the primary or the VIP (`claims`).
    fn watch_vm_frames(&self) {
        let macs = format!("{{ {MAC_PRIV}, {MAC_PUB} }}");
        let theirs = format!("{{ {}, {}, {} }}", self.primary(0), self.primary(1), self.vip());
        let own = format!("{{ {}, {} }}", self.standby(0), self.standby(1));
        let chain = |ifc: &str| {
            format!(
                " chain {ifc} {{\n  type filter hook ingress device \"{ifc}\" priority 0;\n  \
                 ether saddr {macs} counter name \"seen\"\n  \
                 ether saddr {macs} arp saddr ip {own} counter name \"own\"\n  \
                 ether saddr {macs} arp saddr ip {theirs} counter name \"claims\"\n  \
                 ether saddr {macs} ip saddr {theirs} counter name \"claims\"\n }}\n"
            )
        };
        let script = format!(
            "table netdev watch {{\n counter seen {{}}\n counter own {{}}\n counter claims {{}}\n{}{}}}\n",
            chain("ens3"),
            chain("ens4")
        );
        use std::io::Write;
        let mut c = ns_cmd(&self.p, "nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft");
        c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "nft refused:\n{script}");
    }

    /// Packets counted by the named counter of [`Lab::watch_vm_frames`].
    fn counted(&self, name: &str) -> u64 {
        let out = ns_out(&self.p, &["nft", "-j", "list", "counter", "netdev", "watch", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j: {e}: {out}"));
        v["nftables"]
            .as_array()
            .and_then(|a| a.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no counter {name}: {out}"))
    }
}

/// The primary's configuration file, as its admin would keep it in
/// /etc/understudy/understudy.toml (no data dir in it: the service passes `--data-dir`).
fn primary_config(lab: &Lab) -> String {
    let n = lab.n;
    format!(
        "[http]\nlisten = \"10.{n}.0.1:8080\"\n\
         [dhcp]\ninterface = \"ens3\"\nserver_ip = \"10.{n}.0.1\"\nsubnet = \"10.{n}.0.0/24\"\n\
         range = \"10.{n}.0.100-10.{n}.0.150\"\n\
         [tftp]\nlisten = \"10.{n}.0.1:69\"\n\
         [boot]\ncmdline = \"console=ttyS0,115200\"\nretry_interval = \"2s\"\n\
         [failover]\nnode = \"head-a\"\nrole = \"primary\"\nkey_file = \"failover.key\"\n\
         interval = \"200ms\"\ndead_time = \"3s\"\n\
         [[failover.channel]]\nname = \"private\"\nlocal = \"10.{n}.0.1\"\npeer = \"10.{n}.0.2\"\n\
         [[failover.channel]]\nname = \"public\"\nlocal = \"10.{n}.1.1\"\npeer = \"10.{n}.1.2\"\n\
         [[failover.vip]]\naddress = \"10.{n}.1.10/24\"\ninterface = \"ens4\"\n"
    )
}

/// A oneshot unit's script that reports the booted system's links and IPv4 addresses on
/// the console once systemd-networkd is done with every Ethernet link (an IPv4 address
/// set, or unmanaged when no .network file matches it; at most 60 s), and whether the
/// installed understudy runs. It runs before the serial getty, whose hangup of the
/// console would cut it off.
const NET_REPORT: &str = r#"#!/bin/sh
n=0
while [ $n -lt 60 ]; do
    pending=0
    for d in /sys/class/net/*; do
        [ -e "$d/device" ] && [ "$(cat "$d/type")" = 1 ] || continue
        st=$(sed -n 's/^ADMIN_STATE=//p' "/run/systemd/netif/links/$(cat "$d/ifindex")" 2>/dev/null)
        case "$st" in
            configured|unmanaged|failed|linger) ;;
            *) ip -4 -o addr show dev "${d##*/}" scope global | grep -q inet || pending=1 ;;
        esac
    done
    [ $pending = 0 ] && break
    n=$((n + 1))
    sleep 1
done
echo "understudy-net: begin $(hostname) after ${n}s"
for d in /sys/class/net/*; do
    [ -e "$d/device" ] || continue
    i=${d##*/}
    st=$(sed -n 's/^ADMIN_STATE=//p' "/run/systemd/netif/links/$(cat "$d/ifindex")" 2>/dev/null)
    echo "understudy-net: link $i $(cat "$d/address") networkd=${st:-none} addr=$(ip -4 -o addr show dev "$i" scope global | awk '{printf "%s,", $4}')"
done
echo "understudy-net: $(/usr/local/bin/understudy --version 2>&1 | head -n1)"
echo "understudy-net: units $(systemctl is-active systemd-networkd-wait-online.service understudy.service | tr '\n' ' ')"
echo "understudy-net: end"
"#;

/// The primary's disk as a directory: the cached Debian root with understudy installed as
/// `make install` would (binary, unit not enabled, the primary's configuration) and the
/// primary's network configuration as systemd-networkd files matching its NICs by MAC.
fn primary_root(sb: &Sandbox, lab: &Lab, config: &str) -> Overlay {
    let ov = Overlay::new(&standby_root(), &sb.path("primary"));
    let root = ov.merged.clone();
    let w = |p: &str, text: &str, mode: u32| {
        let f = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    install_understudy(&root);
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/understudy.service"))
        .unwrap()
        .replace("@BINDIR@", "/usr/local/bin");
    w("/usr/local/lib/systemd/system/understudy.service", &unit, 0o644);
    w("/etc/understudy/understudy.toml", config, 0o644);
    for (file, ifc, net) in [("10-private.network", "ens3", 0), ("10-public.network", "ens4", 1)] {
        let text =
            format!("[Match]\nMACAddress={}\n\n[Network]\nAddress={}/24\n", lab.mac(&lab.p, ifc), lab.primary(net));
        w(&format!("/etc/systemd/network/{file}"), &text, 0o644);
    }
    let o = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(["enable", "systemd-networkd.service", "systemd-networkd-wait-online.service"])
        .output()
        .unwrap();
    assert!(o.status.success(), "systemctl --root enable: {}", String::from_utf8_lossy(&o.stderr));
    // The test's window into the booted system (like understudy-report.service).
    w("/usr/local/sbin/understudy-net-report", NET_REPORT, 0o755);
    w(
        "/etc/systemd/system/understudy-net-report.service",
        "[Unit]\nDescription=Report this system's links and addresses on the console (understudy tests)\n\
         After=systemd-networkd.service\nBefore=serial-getty@ttyS0.service\n[Service]\nType=oneshot\nStandardOutput=tty\nTTYPath=/dev/ttyS0\n\
         ExecStart=/usr/local/sbin/understudy-net-report\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    std::os::unix::fs::symlink(
        "/etc/systemd/system/understudy-net-report.service",
        root.join("etc/systemd/system/multi-user.target.wants/understudy-net-report.service"),
    )
    .unwrap();
    ov
}

/// The standby VM: BIOS (SeaBIOS, the private NIC's iPXE ROM first), the private NIC at
/// PCI slot 3 and the public one at slot 4 (so the deployed system names them ens3 and
/// ens4, as the primary's are), one virtio disk; a reboot restarts it.
fn start_vm(sb: &Sandbox, lab: &Lab, disk: &Path, limit: Duration) -> Vm {
    let console = sb.path("console.log");
    let args: Vec<String> = [
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-display",
        "none",
        "-serial",
        &format!("file:{}", console.display()),
        "-boot",
        "order=n",
        "-netdev",
        "tap,id=n0,ifname=tpriv,script=no,downscript=no",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={MAC_PRIV},addr=0x3"),
        "-netdev",
        "tap,id=n1,ifname=tpub,script=no,downscript=no",
        // No option ROM: only the private NIC network-boots.
        "-device",
        &format!("virtio-net-pci,netdev=n1,mac={MAC_PUB},addr=0x4,romfile="),
        "-drive",
        &format!("file={},format=raw,if=none,id=d0", disk.display()),
        "-device",
        "virtio-blk-pci,drive=d0,addr=0x5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Vm::spawn_limited(&lab.sw, &args, console, limit)
}

/// The deployed system's `understudy-net: link` lines: (name, MAC, networkd state, IPv4
/// addresses with prefix).
fn links(report: &str) -> Vec<(String, String, String, Vec<String>)> {
    report
        .lines()
        .filter_map(|l| l.split("understudy-net: link ").nth(1))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, mac) = (w.next()?.to_string(), w.next()?.to_string());
            let state = w.next()?.strip_prefix("networkd=")?.to_string();
            let addrs = w.next()?.strip_prefix("addr=")?.split(',').filter(|a| !a.is_empty()).map(String::from);
            Some((name, mac, state, addrs.collect()))
        })
        .collect()
}

/// The admin's story on the primary, from capture to a standby booted from its own disk
/// with its own addresses and joined on both channels, what the network saw of it, and
/// the standby taking the VIP when the primary dies.
#[test]
fn standby_deployed_by_network_boot_joins_on_both_channels_and_takes_over_the_vip() {
    let t0 = Instant::now();
    let sb = Sandbox::new();
    let lab = Lab::new();
    let config = primary_config(&lab);

    // The primary's disk, captured; the boot environment from its own kernel.
    let primary = primary_root(&sb, &lab, &config);
    let root = primary.merged.clone();
    sb.ok(&["capture", "--name", "head-a", root.to_str().unwrap()]);
    let k = kernel_in(&root, Some(debian_kernel().busybox), "`make standby-root`");
    sb.ok(&build_args(&k, &sb.data().join("boot")));
    drop(primary);
    let key = sb.data().join("failover.key");
    sb.ok(&["failover", "keygen", key.to_str().unwrap()]);
    let pxe = sb.data().join("pxe");
    std::fs::create_dir_all(&pxe).unwrap();
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        std::fs::copy(Path::new("/usr/lib/ipxe").join(f), pxe.join(f)).expect("iPXE binaries (package ipxe)");
    }
    let prep = t0.elapsed();

    // The primary runs the service as its unit would.
    let cfg = sb.path("understudy.toml");
    std::fs::write(&cfg, &config).unwrap();
    let mut cmd = ns_cmd(&lab.p, bin());
    cmd.args(["--data-dir", sb.data().to_str().unwrap(), "serve", "--config", cfg.to_str().unwrap()]);
    let srv = NsServer { srv: Server::start_cmd(&sb, &mut cmd), ns: lab.p.clone() };
    let status = || -> serde_json::Value {
        // Null until the service wrote its first status file.
        let o = sb.run(&["failover", "status", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    let t = Instant::now();
    while !(status()["holding"] == true) {
        assert!(t.elapsed() < Duration::from_secs(20), "the primary does not hold the VIP: {}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let primary_pub_mac = lab.mac(&lab.p, "ens4");
    let t = Instant::now();
    while lab.client_sees_vip_at().as_deref() != Some(primary_pub_mac.as_str()) {
        assert!(t.elapsed() < Duration::from_secs(10), "the client does not reach the VIP at the primary");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.watch_vm_frames();

    // The admin's one command: the standby by its private MAC, its own addresses, the image.
    // It runs while the VM network-boots and ends once the standby's heartbeats arrive on
    // both channels. `make demo` shows its output as it goes.
    let demo = std::env::var_os("UNDERSTUDY_DEMO").is_some();
    let (ifc_priv, ifc_pub) = (
        format!("role=private,name=ens3,mac={MAC_PRIV},address={}/24", lab.standby(0)),
        format!("role=public,name=ens4,mac={MAC_PUB},address={}/24", lab.standby(1)),
    );
    let wiz_out = sb.path("standby-add.out");
    let mut wizard = ns_cmd(&lab.p, bin());
    wizard
        .arg("--data-dir")
        .arg(sb.data())
        .args(["--server", &srv.srv.url, "--token", &srv.srv.token])
        .args(["standby", "add", NODE, "--image", "head-a", "--mac", MAC_PRIV, "--yes", "--timeout", "15m"])
        .args(["--interface", &ifc_priv, "--interface", &ifc_pub]);
    if demo {
        println!(
            "\n$ understudy standby add {NODE} --image head-a --mac {MAC_PRIV} --interface {ifc_priv} --interface {ifc_pub}"
        );
    } else {
        wizard.arg("--json").stdout(std::fs::File::create(&wiz_out).unwrap());
    }
    let mut wizard = Bg(wizard.stderr(std::fs::File::create(sb.path("standby-add.err")).unwrap()).spawn().unwrap());
    let t = Instant::now();
    // The VM is switched on once the node and its addresses are in (its first PXE request
    // then gets the deploy script).
    while !srv.curl("GET", &format!("/api/v1/nodes/{NODE}/network"), None).1.contains(&lab.standby(1)) {
        assert!(t.elapsed() < Duration::from_secs(60), "standby add did not register the node");
        assert!(
            wizard.0.try_wait().unwrap().is_none(),
            "standby add ended early: {}",
            std::fs::read_to_string(sb.path("standby-add.err")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let disk = sb.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 30).unwrap();
    let limit = Duration::from_secs(600);
    let t1 = Instant::now();
    let mut vm = start_vm(&sb, &lab, &disk, Duration::from_secs(900));
    let deployed_line = format!("understudy-agent: node {NODE} deployed");
    wait_for("the agent's report", limit, &mut vm, |c| c.contains(&deployed_line) || c.contains("deploy failed"));
    let con = vm.console();
    assert!(con.contains(&deployed_line), "console:\n{con}");
    let deploy = t1.elapsed();
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments?node={NODE}"), None);
    assert!(d.contains("\"status\":\"done\""), "{d}");

    // It boots from its own disk (the server sends its next network boot there).
    wait_for("the deployed system's network report", limit, &mut vm, |c| {
        c[c.find(&deployed_line).unwrap()..].contains("understudy-net: end")
    });
    let boot = t1.elapsed() - deploy;
    let (_, ev) = srv.curl("GET", "/api/v1/events?kind=boot.local", None);
    assert!(ev.contains("told to boot from its disk"), "{ev}");
    let con = vm.console();
    let after = &con[con.find(&deployed_line).unwrap()..];
    let report = &after[after.find("understudy-net: begin").unwrap()..];
    assert!(report.starts_with(&format!("understudy-net: begin {NODE} ")), "{report}");
    // understudy came along and runs on the standby.
    assert!(report.contains(&format!("understudy-net: understudy {}", env!("CARGO_PKG_VERSION"))), "{report}");
    eprintln!("{}", &report[..report.find("understudy-net: end").unwrap()]);
    let links = links(report);
    let names: Vec<(&str, &str)> = links.iter().map(|(n, m, _, _)| (n.as_str(), m.as_str())).collect();
    assert_eq!(names, [("ens3", MAC_PRIV), ("ens4", MAC_PUB)], "{report}");
    for (name, _, _, addrs) in &links {
        for a in addrs {
            let ip = a.split('/').next().unwrap();
            assert!(
                ip != lab.primary(0) && ip != lab.primary(1) && ip != lab.vip(),
                "{name} came up with the primary's address {a}:\n{report}"
            );
        }
    }

    // Its own addresses, on the NICs they belong to, and on the wire.
    let addrs: Vec<(&str, Vec<String>)> = links.iter().map(|(n, _, _, a)| (n.as_str(), a.clone())).collect();
    assert_eq!(
        addrs,
        [("ens3", vec![format!("{}/24", lab.standby(0))]), ("ens4", vec![format!("{}/24", lab.standby(1))])],
        "{report}"
    );

    // The standby's understudy joins by itself: the primary hears it on both channels.
    let t2 = Instant::now();
    let joined = |st: &serde_json::Value| {
        st["peer"] == NODE
            && st["channels"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["up"] == true))
    };
    loop {
        let st = status();
        if joined(&st) {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(120),
            "the standby never joined on both channels: {st}\nconsole:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let join = t2.elapsed();
    // The wizard saw it too, and ended with the pair's status.
    let t = Instant::now();
    while wizard.0.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "standby add did not end after the join");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended = wizard.0.wait().unwrap();
    assert!(ended.success(), "standby add failed: {}", std::fs::read_to_string(sb.path("standby-add.err")).unwrap());
    if !demo {
        let out = std::fs::read_to_string(&wiz_out).unwrap();
        for step in ["image", "mac", "node", "network", "deploy", "join"] {
            let seen = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| v["step"] == step && (v["state"] == "done" || v["state"] == "skipped"));
            assert!(seen, "standby add did not report {step}:\n{out}");
        }
    }
    let st = status();
    let names: Vec<&str> = st["channels"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["private", "public"], "{st}");
    assert!(lab.counted("own") > 0, "the standby's own addresses were never seen on the wire");

    // What the primary saw of the VM: its frames, none claiming the primary's addresses.
    assert!(lab.counted("seen") > 0, "the counters never saw the VM");
    assert_eq!(lab.counted("claims"), 0, "the VM used an address of the primary or the VIP");
    let neigh: serde_json::Value = serde_json::from_str(&ns_out(&lab.p, &["ip", "-j", "neigh"])).unwrap();
    for e in neigh.as_array().unwrap() {
        let mac = e["lladdr"].as_str().unwrap_or("");
        let dst = e["dst"].as_str().unwrap_or("");
        if mac == MAC_PRIV || mac == MAC_PUB {
            assert!(dst != lab.primary(0) && dst != lab.primary(1) && dst != lab.vip(), "{neigh}");
        }
    }
    // The primary still holds the VIP alone.
    assert_eq!(lab.client_sees_vip_at().as_deref(), Some(primary_pub_mac.as_str()));
    assert_eq!(status()["holding"], true);

    // The primary dies: links dark, the service killed. The client reaches the VIP at the
    // standby's public NIC (its gratuitous ARP corrects the client's cache).
    let NsServer { srv: mut primary, .. } = srv;
    sh(&format!("ip -n {0} link set ens3 down && ip -n {0} link set ens4 down", lab.p));
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    let t3 = Instant::now();
    while lab.client_sees_vip_at().as_deref() != Some(MAC_PUB) {
        assert!(
            t3.elapsed() < Duration::from_secs(60),
            "the client does not reach the VIP at the standby ({:?}); console:\n{}",
            lab.client_sees_vip_at(),
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let takeover = t3.elapsed();
    if demo {
        println!(
            "\nthe primary died (links down, SIGKILL); the client on the public LAN reaches the VIP {} at {} (the standby's public NIC) after {:.1} s",
            lab.vip(),
            MAC_PUB,
            takeover.as_secs_f64()
        );
    }
    eprintln!(
        "standby join: capture + pxe build {:.0}s; deploy (power-on to deployed) {:.0}s; boot (to the booted \
         disk's network report) {:.0}s; join (peer up on both channels) {:.1}s; takeover (crash to the client \
         reaching the VIP at the standby) {:.1}s",
        prep.as_secs_f64(),
        deploy.as_secs_f64(),
        boot.as_secs_f64(),
        join.as_secs_f64(),
        takeover.as_secs_f64()
    );
    drop(vm);
}
