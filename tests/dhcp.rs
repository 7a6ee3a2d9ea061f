//! DHCP in network namespaces joined by a veth pair, with real clients: busybox udhcpc
//! and ISC dhclient.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use common::*;
use std::path::Path;
use std::process::Command;

/// Two namespaces (server 10.N.0.1, client without an address) joined by a veth pair.
struct Net {
    _netns: Netns,
    srv: String,
    cli: String,
    sif: String,
    cif: String,
    subnet: u8,
}

impl Net {
    fn new() -> Net {
        let mut netns = Netns::new("d");
        let (srv, cli) = (netns.add("s"), netns.add("c"));
        let (sif, cif) = ("d0s".to_string(), "d0c".to_string());
        let subnet = netns.subnet;
        netns.veth(&srv, &sif, &cli, &cif);
        netns.addr(&srv, &sif, &format!("10.{subnet}.0.1/24"));
        netns.up(&cli, &cif);
        Net { _netns: netns, srv, cli, sif, cif, subnet }
    }

    fn client_mac(&self) -> String {
        let o = Command::new("ip").args(["-n", &self.cli, "-br", "link", "show", &self.cif]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap().to_string()
    }

    fn ip(&self, last: u8) -> String {
        format!("10.{}.0.{last}", self.subnet)
    }

    /// busybox udhcpc once; returns the address it bound, if any.
    fn udhcpc(&self, dir: &Path, extra: &[&str]) -> Option<String> {
        let script = dir.join("udhcpc.sh");
        let out = dir.join("udhcpc.out");
        std::fs::write(&script, format!("#!/bin/sh\necho \"$1 $ip $subnet $router $lease\" >> {}\n", out.display()))
            .unwrap();
        sh(&format!("chmod +x {}", script.display()));
        let _ = std::fs::remove_file(&out);
        let mut c = ns_cmd(&self.cli, "busybox");
        c.args([
            "udhcpc",
            "-i",
            &self.cif,
            "-n",
            "-q",
            "-f",
            "-t",
            "4",
            "-T",
            "1",
            "-A",
            "1",
            "-s",
            script.to_str().unwrap(),
        ]);
        c.args(extra);
        let _ = c.output().unwrap();
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.lines().find(|l| l.starts_with("bound")).and_then(|l| l.split_whitespace().nth(1)).map(String::from)
    }
}

fn start(sb: &Sandbox, net: &Net, mode: &str) -> Server {
    // The server runs inside the server namespace.
    let cfg = sb.path("dhcp.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[dhcp]\ninterface = \"{}\"\nserver_ip = \"{}\"\nsubnet = \"10.{}.0.0/24\"\nrange = \"{}-{}\"\nrouter = \"{}\"\ndns = [\"{}\"]\nlease_time = \"10m\"\nmode = \"{mode}\"\n",
            sb.data().to_str().unwrap(),
            net.sif,
            net.ip(1),
            net.subnet,
            net.ip(100),
            net.ip(110),
            net.ip(1),
            net.ip(1)
        ),
    )
    .unwrap();
    Server::start_cmd(sb, ns_cmd(&net.srv, bin()).args(["serve", "--config", cfg.to_str().unwrap()]))
}

#[test]
fn udhcpc_gets_a_lease_then_its_reservation_and_keeps_it_across_restarts() {
    let sb = Sandbox::new();
    let net = Net::new();
    let mut srv = start(&sb, &net, "server");
    let ip = net.udhcpc(sb.dir.path(), &[]).expect("udhcpc got no lease");
    let n: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!((100..=110).contains(&n), "{ip} outside the pool");
    // That address is now leased: a node cannot reserve it.
    let err = sb.fails(&["nodes", "add", "other", "--mac", "52:54:00:00:00:77", "--ip", &ip]);
    assert!(err.contains("is leased to"), "{err}");
    // Assign the client: it gets its reserved address from now on.
    let mac = net.client_mac();
    sb.ok(&["nodes", "add", "standby", "--mac", &mac, "--ip", &net.ip(50), "--role", "standby"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(net.udhcpc(sb.dir.path(), &[]).as_deref(), Some(net.ip(50).as_str()));
    // Leases live in sqlite: a restarted server still knows this one.
    srv.stop();
    let _srv = start(&sb, &net, "server");
    let db_leases =
        Command::new("sqlite3").arg(sb.data().join("understudy.db")).arg("SELECT ip, state FROM leases").output();
    if let Ok(o) = db_leases {
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(t.is_empty() || t.contains(&net.ip(50)), "{t}");
    }
    assert_eq!(net.udhcpc(sb.dir.path(), &["-r", &net.ip(50)]).as_deref(), Some(net.ip(50).as_str()));
    let err = sb.fails(&["nodes", "add", "other", "--mac", "52:54:00:00:00:77", "--ip", &net.ip(50)]);
    assert!(err.contains("reserved for node standby"), "{err}");
}

#[test]
fn dhclient_gets_renews_and_releases() {
    let sb = Sandbox::new();
    let net = Net::new();
    let _srv = start(&sb, &net, "server");
    let lf = sb.path("dhclient.leases");
    let pf = sb.path("dhclient.pid");
    // Our own dhclient script: configure the address in the client namespace only (the
    // stock script would also rewrite /etc/resolv.conf).
    let script = sb.path("dhclient.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$reason\" in\n BOUND|RENEW|REBIND|REBOOT) ip addr flush dev \"$interface\"; ip addr add \"$new_ip_address/24\" dev \"$interface\" ;;\n RELEASE|EXPIRE|STOP) ip addr flush dev \"$interface\" ;;\nesac\nexit 0\n",
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    let run = |args: &[&str]| {
        let o = ns_cmd(&net.cli, "dhclient")
            .args([
                "-v",
                "-1",
                "-sf",
                script.to_str().unwrap(),
                "-lf",
                lf.to_str().unwrap(),
                "-pf",
                pf.to_str().unwrap(),
            ])
            .args(args)
            .arg(&net.cif)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let log = run(&[]);
    let bound = log.lines().find(|l| l.contains("bound to")).unwrap_or_else(|| panic!("dhclient did not bind: {log}"));
    let ip = bound.split_whitespace().nth(2).unwrap().to_string();
    assert!(ip.starts_with(&format!("10.{}.0.1", net.subnet)), "{ip}");
    // A second run with the lease file renews the same address (INIT-REBOOT).
    let _ = Command::new("sh").arg("-c").arg(format!("kill $(cat {}) 2>/dev/null", pf.display())).status();
    let log = run(&[]);
    assert!(log.contains(&format!("bound to {ip}")), "{log}");
    let rel = run(&["-r"]);
    assert!(rel.contains("DHCPRELEASE"), "{rel}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let leases: serde_json::Value = serde_json::from_str(&srv_leases(&sb)).unwrap();
    assert!(leases.as_array().unwrap().iter().all(|l| l["ip"] != ip.as_str()), "lease not released: {leases}");
}

fn srv_leases(sb: &Sandbox) -> String {
    // The local CLI reads the same sqlite inventory the server writes.
    let o = Command::new("sqlite3")
        .arg("-json")
        .arg(sb.data().join("understudy.db"))
        .arg("SELECT ip, mac, state FROM leases")
        .output();
    match o {
        Ok(o) if o.status.success() => {
            let t = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if t.is_empty() { "[]".into() } else { t }
        }
        _ => "[]".into(),
    }
}

#[test]
fn mac_collection_sees_pxe_clients_and_flags_duplicates() {
    let sb = Sandbox::new();
    let net = Net::new();
    let _srv = start(&sb, &net, "server");
    // Not collecting yet: nothing is recorded.
    net.udhcpc(sb.dir.path(), &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    assert_eq!(sb.json(&["nodes", "discovered", "--json"]).as_array().unwrap().len(), 0);
    assert!(sb.ok(&["nodes", "collect", "--minutes", "5"]).contains("collecting"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    net.udhcpc(sb.dir.path(), &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    net.udhcpc(sb.dir.path(), &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    let d = sb.json(&["nodes", "discovered", "--json"]);
    let arr = d.as_array().unwrap();
    assert_eq!(arr.len(), 1, "one machine, recorded once: {d}");
    let mac = net.client_mac();
    assert_eq!(arr[0]["mac"], mac.as_str());
    assert_eq!(arr[0]["arch"], 0);
    assert!(arr[0]["vendor_class"].as_str().unwrap().starts_with("PXEClient"));
    assert!(arr[0]["count"].as_i64().unwrap() >= 2, "{d}");
    // Once assigned, it is flagged as such.
    sb.ok(&["nodes", "add", "standby", "--mac", &mac]);
    let d = sb.json(&["nodes", "discovered", "--json"]);
    assert_eq!(d[0]["assigned_to"], "standby");
    assert!(sb.ok(&["nodes", "discovered"]).contains("already assigned to node standby"));
}

/// A PXE probe (Python, standard library only): sends DHCPDISCOVER with or without the
/// PXE vendor class and prints the OFFER's yiaddr and boot file, or "none".
const PROBE: &str = r#"
import socket, struct, sys, os
iface, pxe = sys.argv[1], sys.argv[2] == "pxe"
mac = bytes(int(x, 16) for x in sys.argv[3].split(":"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())
s.bind(("0.0.0.0", 68))
s.settimeout(2)
xid = os.getpid()
pkt = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0"*4, b"\0"*4, b"\0"*4, b"\0"*4, mac + b"\0"*10, b"", b"")
opts = b"\x63\x82\x53\x63" + b"\x35\x01\x01"
if pxe:
    vc = b"PXEClient:Arch:00000:UNDI:002001"
    opts += bytes([60, len(vc)]) + vc + bytes([93, 2, 0, 0])
opts += b"\xff"
s.sendto(pkt + opts, ("255.255.255.255", 67))
try:
    while True:
        data, _ = s.recvfrom(2048)
        if struct.unpack("!I", data[4:8])[0] != xid:
            continue
        yi = socket.inet_ntoa(data[16:20])
        f = data[108:236].split(b"\0")[0].decode()
        print(yi, f or "-")
        break
except socket.timeout:
    print("none")
"#;

#[test]
fn proxy_dhcp_answers_pxe_clients_only_with_boot_info() {
    let sb = Sandbox::new();
    let net = Net::new();
    // A node that is to be deployed, so firmware gets a boot file.
    let mac = net.client_mac();
    sb.ok(&["nodes", "add", "standby", "--mac", &mac]);
    sb.ok(&["nodes", "set", "standby", "--state", "assigned"]);
    let _srv = start(&sb, &net, "proxy");
    let probe = |kind: &str| {
        let o = ns_cmd(&net.cli, "python3").args(["-c", PROBE, &net.cif, kind, &mac]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(probe("plain"), "none", "proxyDHCP must ignore non-PXE clients");
    let r = probe("pxe");
    assert_eq!(r, "0.0.0.0 undionly.kpxe", "proxyDHCP gives boot info and never an address");
    // And a plain udhcpc never gets an address from it.
    assert_eq!(net.udhcpc(sb.dir.path(), &[]), None);
}
