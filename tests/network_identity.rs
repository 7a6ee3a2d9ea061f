//! A node's network identity through the real binary, in a namespace lab: the primary runs
//! `serve` with DHCP on its private LAN and `[failover]` with a VIP on its public LAN; a
//! neighbour on the private LAN holds an address (it answers ARP). A standby's identity is
//! proposed from the primary's (the neighbour's address skipped), clashing addresses are
//! refused with the reason, and the deployment's agent gets its network plan, with the
//! standby's failover configuration and key, only with that deployment's token.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::netns::{Netns, ns_cmd, ns_sh};
use common::*;
use serde_json::Value;
use std::process::Output;

struct Lab {
    _net: Netns,
    ns: String,
    s: u8,
    sb: Sandbox,
    srv: Server,
}

impl Lab {
    fn new() -> Lab {
        let mut net = Netns::new("nid");
        let s = net.subnet;
        let ns = net.add("primary");
        let nb = net.add("neighbour");
        let cl = net.add("client");
        net.veth(&ns, "ens3", &nb, "eth0");
        net.veth(&ns, "ens4", &cl, "eth0");
        net.addr(&ns, "ens3", &format!("10.{s}.1.1/24"));
        net.addr(&ns, "ens4", &format!("10.{s}.2.1/24"));
        net.addr(&nb, "eth0", &format!("10.{s}.1.2/24"));
        net.addr(&cl, "eth0", &format!("10.{s}.2.2/24"));
        ns_sh(&ns, &format!("ip route add default via 10.{s}.2.254 dev ens4 onlink"));
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.data()).unwrap();
        sb.ok(&["failover", "keygen", sb.data().join("failover.key").to_str().unwrap()]);
        let cfg = sb.path("serve.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
                 [dhcp]\ninterface = \"ens3\"\nserver_ip = \"10.{s}.1.1\"\nsubnet = \"10.{s}.1.0/24\"\n\
                 range = \"10.{s}.1.100-10.{s}.1.150\"\n\
                 [failover]\nnode = \"head-a\"\nrole = \"primary\"\n\
                 # the standby's addresses, as the admin planned them\n\
                 [[failover.channel]]\nname = \"private\"\nlocal = \"10.{s}.1.1\"\npeer = \"10.{s}.1.3\"\n\
                 [[failover.channel]]\nname = \"public\"\nlocal = \"10.{s}.2.1\"\npeer = \"10.{s}.2.3\"\n\
                 [[failover.vip]]\naddress = \"10.{s}.2.100/24\"\ninterface = \"ens4\"\n",
                data = sb.data().to_str().unwrap()
            ),
        )
        .unwrap();
        let mut cmd = ns_cmd(&ns, bin());
        cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
        let srv = Server::start_cmd(&sb, &mut cmd);
        Lab { _net: net, ns, s, sb, srv }
    }

    /// The CLI against the server, run inside the primary's namespace.
    fn cli(&self, args: &[&str]) -> Output {
        ns_cmd(&self.ns, bin())
            .args([
                "--data-dir",
                self.sb.data().to_str().unwrap(),
                "--server",
                &self.srv.url,
                "--token",
                &self.srv.token,
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Refused with `code`; returns stderr.
    fn refused(&self, args: &[&str], code: i32) -> String {
        let o = self.cli(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        err
    }

    fn curl(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.srv.curl_in(Some(&self.ns), method, path, token, None)
    }
}

/// The node with `mac` network-boots from inside `ns`: its deploy script (curl), then the
/// real agent on `disk` with that script's kernel command line; returns success and output.
fn network_boot(srv: &Server, ns: &str, sb: &Sandbox, mac: &str, disk: &common::disk::Loop) -> (bool, String) {
    let (code, script) = srv.curl_in(Some(ns), "GET", &format!("/boot/{mac}.ipxe"), None, None);
    assert_eq!(code, 200, "{script}");
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("{script}"));
    let cmdline = kernel.split_once(' ').unwrap().1.split(" || ").next().unwrap().to_string();
    let file = sb.path("cmdline");
    std::fs::write(&file, format!("{cmdline} understudy.bootloader=none\n")).unwrap();
    let o = ns_cmd(ns, bin())
        .args(["agent", "--cmdline", file.to_str().unwrap(), "--disk", &disk.0, "--no-reboot"])
        .args(["--mount-dir", sb.path("target").to_str().unwrap()])
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn identities_are_proposed_checked_and_planned_for_the_agent() {
    let lab = Lab::new();
    let s = lab.s;
    let src = lab.sb.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    lab.sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);

    // Proposed from the primary: the same two networks, the next free address on each (the
    // neighbour answers ARP for .2 on the private LAN, the client holds .2 on the public).
    lab.ok(&["nodes", "add", "standby", "--mac", "52:54:00:00:01:01", "--image", "head-a", "--from-primary"]);
    let net: Value = serde_json::from_str(&lab.ok(&["nodes", "network", "standby", "--json"])).unwrap();
    let ifs = net["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{net}");
    let private = ifs.iter().find(|i| i["role"] == "private").unwrap();
    let public = ifs.iter().find(|i| i["role"] == "public").unwrap();
    assert_eq!(private["name"], "ens3");
    assert_eq!(private["addresses"], serde_json::json!([format!("10.{s}.1.3/24")]), "{net}");
    assert_eq!(private["mac"], "52:54:00:00:01:01", "the MAC it network-boots with is the private one");
    assert_eq!(public["addresses"], serde_json::json!([format!("10.{s}.2.3/24")]), "{net}");
    assert_eq!(public["gateway"], format!("10.{s}.2.254"));
    let shown = lab.ok(&["nodes", "network", "standby"]);
    assert!(shown.contains(&format!("10.{s}.1.3/24")) && shown.contains("public"), "{shown}");

    // Clashes are refused with the reason; the node is not left half-made.
    let add = |addr: String| {
        let spec = format!("role=private,name=ens3,address={addr}");
        lab.refused(&["nodes", "add", "other", "--interface", &spec], 4)
    };
    assert!(add(format!("10.{s}.1.1/24")).contains("primary's own address"));
    assert!(add(format!("10.{s}.1.2/24")).contains("in use on the LAN"));
    assert!(add(format!("10.{s}.1.120/24")).contains("DHCP pool"));
    assert!(add(format!("10.{s}.1.3/24")).contains("belongs to node standby"));
    let vip =
        lab.refused(&["nodes", "add", "other", "--interface", &format!("role=public,address=10.{s}.2.100/24")], 4);
    assert!(vip.contains("VIP"), "{vip}");
    let bad = lab.refused(&["nodes", "add", "other", "--interface", "role=private,address=10.0.0.1"], 2);
    assert!(bad.contains("address with prefix"), "{bad}");
    assert!(lab.refused(&["nodes", "show", "other"], 3).contains("no node other"));
    // A free address by hand is kept; without probing nothing is sent, the rest still checked.
    lab.ok(&[
        "nodes",
        "add",
        "other",
        "--image",
        "head-a",
        "--interface",
        &format!("role=private,name=ens3,address=10.{s}.1.9/24"),
    ]);
    lab.refused(
        &["nodes", "network", "other", "--no-probe", "--set", &format!("role=private,address=10.{s}.1.3/24")],
        4,
    );
    let ev = lab.ok(&["events", "--kind", "node.network"]);
    assert!(ev.contains(&format!("node standby network: private 10.{s}.1.3/24")), "{ev}");

    // The agent's network plan: only that deployment's token (or the admin) reads it.
    let created: Value =
        serde_json::from_str(&lab.ok(&["deployments", "create", "--node", "standby", "--json"])).unwrap();
    let id = created["deployment"]["id"].as_i64().unwrap();
    let token = created["token"].as_str().unwrap();
    let other: Value = serde_json::from_str(&lab.ok(&["deployments", "create", "--node", "other", "--json"])).unwrap();
    let path = format!("/api/v1/deployments/{id}/network");
    assert_eq!(lab.curl("GET", &path, None).0, 401);
    assert_eq!(lab.curl("GET", &path, Some(other["token"].as_str().unwrap())).0, 403);
    let (code, body) = lab.curl("GET", &path, Some(token));
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["vips"], serde_json::json!([format!("10.{s}.2.100")]));
    let primary = plan["primary"].as_array().unwrap();
    assert!(
        primary.iter().any(|i| i["name"] == "ens4"
            && i["role"] == "public"
            && i["addresses"] == serde_json::json!([format!("10.{s}.2.1/24")])),
        "the primary's public interface without its VIP: {plan}"
    );
    assert!(primary.iter().any(|i| i["name"] == "ens3" && i["role"] == "private"), "{plan}");
    assert_eq!(plan["standby"].as_array().unwrap().len(), 2);
    let f = &plan["failover"];
    assert_eq!(f["config_path"], "/etc/understudy/understudy.toml");
    let key = std::fs::read_to_string(lab.sb.data().join("failover.key")).unwrap();
    assert_eq!(f["key"].as_str().unwrap(), key, "the standby gets the pair's key");
    let cfg: toml::Value = toml::from_str(f["config"].as_str().unwrap()).unwrap();
    let fo = &cfg["failover"];
    assert_eq!(fo["role"].as_str(), Some("standby"));
    assert_eq!(fo["node"].as_str(), Some("standby"));
    let ch = fo["channel"].as_array().unwrap();
    assert_eq!(ch[0]["local"].as_str(), Some(format!("10.{s}.1.3").as_str()));
    assert_eq!(ch[0]["peer"].as_str(), Some(format!("10.{s}.1.1").as_str()));
    assert_eq!(ch[1]["local"].as_str(), Some(format!("10.{s}.2.3").as_str()));
    assert!(cfg.get("dhcp").is_none() && cfg.get("http").is_none(), "the standby runs only [failover]: {cfg}");
}

/// An image whose network configuration cannot be parsed: the agent refuses it, naming the
/// file and what to do; forced (`nodes redeploy --force-network`), it deploys and reports
/// what it left alone.
#[test]
fn an_unparsable_network_configuration_is_refused_unless_forced() {
    let lab = Lab::new();
    let s = lab.s;
    let src = lab.sb.path("src");
    std::fs::create_dir_all(src.join("etc/netplan")).unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    std::fs::write(
        src.join("etc/netplan/01-primary.yaml"),
        format!("network:\n  ethernets:\n    ens3: {{addresses: [10.{s}.1.1/24\n"),
    )
    .unwrap();
    lab.sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    lab.sb.boot_files();
    let mac = "52:54:00:00:01:01";
    lab.ok(&["nodes", "add", "standby", "--mac", mac, "--ip", "127.0.0.1", "--image", "head-a", "--from-primary"]);
    let disk = common::disk::Loop::new(&lab.sb.path("disk.img"), 3 << 30);
    let deploy = || network_boot(&lab.srv, &lab.ns, &lab.sb, mac, &disk);
    let (ok, out) = deploy();
    assert!(!ok, "{out}");
    assert!(out.contains("/etc/netplan/01-primary.yaml") && out.contains("--force"), "{out}");
    let node: Value = serde_json::from_str(&lab.ok(&["nodes", "show", "standby", "--json"])).unwrap();
    assert_eq!(node["state"], "failed");
    lab.ok(&["nodes", "redeploy", "standby", "--force-network"]);
    assert!(lab.ok(&["nodes", "network", "standby"]).contains("force:"));
    let (ok, out) = deploy();
    assert!(ok, "forced deploy failed: {out}");
    assert!(out.contains("forced") && out.contains("01-primary.yaml"), "{out}");
    // This image carries no understudy: its failover configuration is written, and a note
    // says nothing will run it (no unit enabled).
    assert!(out.contains("the image has no understudy binary or unit"), "{out}");
    let node: Value = serde_json::from_str(&lab.ok(&["nodes", "show", "standby", "--json"])).unwrap();
    assert_eq!(node["state"], "deployed");
}

/// Every network stack at once, through the real agent on a loop disk: an image holding the
/// primary's configuration as ifupdown (with a sourced file), netplan, a NetworkManager
/// keyfile, systemd-networkd (.network and .link) and RHEL ifcfg files (the fixtures the
/// rewriters' unit tests use), deployed to a node with its own identity. Each file comes out
/// with the node's addresses and MACs, none of the primary's, no VIP; the alias file that
/// only held the VIP is gone.
#[test]
fn the_agent_rewrites_every_stack_in_the_image() {
    let mut net = Netns::new("nst");
    let ns = net.add("primary");
    let peer = net.add("lan");
    net.veth(&ns, "eth0", &peer, "p0");
    net.veth(&ns, "eth1", &peer, "p1");
    // The primary as the fixtures describe it.
    ns_sh(&ns, "ip link set eth0 address 52:54:00:00:00:01 && ip link set eth1 address 52:54:00:00:00:02");
    net.addr(&ns, "eth0", "10.0.0.1/24");
    ns_sh(&ns, "ip addr add fd00::1/64 dev eth0 nodad");
    net.addr(&ns, "eth1", "192.0.2.10/24");
    ns_sh(&ns, "ip route add default via 192.0.2.1 dev eth1 onlink");
    net.up(&peer, "p0");
    net.up(&peer, "p1");
    let sb = Sandbox::new();
    sb.boot_files();
    sb.ok(&["failover", "keygen", sb.data().join("failover.key").to_str().unwrap()]);
    let cfg = sb.path("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [dhcp]\ninterface = \"eth0\"\nserver_ip = \"10.0.0.1\"\nsubnet = \"10.0.0.0/24\"\nrange = \"10.0.0.100-10.0.0.150\"\n\
             [failover]\nnode = \"head-a\"\nrole = \"primary\"\n\
             [[failover.channel]]\nname = \"private\"\nlocal = \"10.0.0.1\"\npeer = \"10.0.0.2\"\n\
             [[failover.channel]]\nname = \"public\"\nlocal = \"192.0.2.10\"\npeer = \"192.0.2.11\"\n\
             [[failover.vip]]\naddress = \"192.0.2.100/24\"\ninterface = \"eth1\"\n",
            data = sb.data().to_str().unwrap()
        ),
    )
    .unwrap();
    // The image: the fixtures where each stack keeps them.
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netcfg");
    let src = sb.path("src");
    let files = [
        ("ifupdown/interfaces", "etc/network/interfaces"),
        ("ifupdown/interfaces.d/public", "etc/network/interfaces.d/public"),
        ("netplan/50-cloud-init.yaml", "etc/netplan/50-cloud-init.yaml"),
        ("nm/private.nmconnection", "etc/NetworkManager/system-connections/private.nmconnection"),
        ("networkd/10-private.network", "etc/systemd/network/10-private.network"),
        ("networkd/10-private.link", "etc/systemd/network/10-private.link"),
        ("networkd/20-public.network", "etc/systemd/network/20-public.network"),
        ("ifcfg/ifcfg-eth0", "etc/sysconfig/network-scripts/ifcfg-eth0"),
        ("ifcfg/ifcfg-eth1:0", "etc/sysconfig/network-scripts/ifcfg-eth1:0"),
    ];
    for (from, to) in files {
        let dst = src.join(to);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fx.join(from), &dst).unwrap();
    }
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    let mut cmd = ns_cmd(&ns, bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
    let srv = Server::start_cmd(&sb, &mut cmd);
    let cli = |args: &[&str]| {
        let o = ns_cmd(&ns, bin())
            .args(["--data-dir", sb.data().to_str().unwrap(), "--server", &srv.url, "--token", &srv.token])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let mac = "52:54:00:00:01:01";
    cli(&[
        "nodes",
        "add",
        "standby",
        "--mac",
        mac,
        "--ip",
        "127.0.0.1",
        "--image",
        "head-a",
        "--interface",
        "role=private,name=eth0,mac=52:54:00:00:01:01,address=10.0.0.2/24,address=fd00::2/64",
        "--interface",
        "role=public,name=eth1,mac=52:54:00:00:01:02,address=192.0.2.11/24,gateway=192.0.2.1",
    ]);
    let disk = common::disk::Loop::new(&sb.path("disk.img"), 3 << 30);
    let (ok, out) = network_boot(&srv, &ns, &sb, mac, &disk);
    assert!(ok, "agent failed:\n{out}");

    let table = disk.table();
    let rootp = disk.part(&table, 3);
    let root = sb.path("root");
    let _m = common::disk::Mount::new(&rootp.0, &root);
    for (_, to) in files {
        let p = root.join(to);
        if to.ends_with("ifcfg-eth1:0") {
            assert!(!p.exists(), "the alias that only held the VIP is still there:\n{out}");
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for primary in
            ["10.0.0.1/", "10.0.0.1\n", "192.0.2.10/", "192.0.2.10\n", "192.0.2.100", "52:54:00:00:00:01", "fd00::1/"]
        {
            assert!(!text.contains(primary), "{to} still holds {primary:?}:\n{text}\n{out}");
        }
        assert!(
            text.contains("10.0.0.2") || text.contains("192.0.2.11") || text.contains("52:54:00:00:01:01"),
            "{to} was not given the node's identity:\n{text}"
        );
    }
}
