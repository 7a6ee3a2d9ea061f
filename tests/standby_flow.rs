//! The whole standby flow in namespaces, without a VM: `understudy standby add` runs on a
//! primary that serves DHCP and network boot on its private LAN and `[failover]` with a VIP
//! on its public LAN. The "standby" is a namespace with two NICs: busybox udhcpc makes its
//! PXE request (MAC collection picks it up), it fetches its deploy script with curl and
//! runs the real agent on a loop disk. The disk it wrote is then read like the standby's
//! boot would: systemd-networkd's files (matched by MAC) give the namespace its addresses,
//! the written `understudy.toml` and key start its failover service. The wizard sees the
//! heartbeats on both channels and ends; the primary is crashed and the client on the
//! public LAN finds the VIP at the standby's MAC.
//!
//! The QEMU test (`standby_join`) proves the same with the standby's own kernel, systemd
//! and understudy.service; this one shows the wizard's steps and the rewritten files.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::disk::{Loop, Mount};
use common::netns::{Bg, Netns, ns_cmd, ns_out, ns_sh};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// MACs: the primary's NICs and the standby's.
fn macs(s: u8) -> [String; 4] {
    [
        format!("52:54:00:a0:{s:02x}:03"),
        format!("52:54:00:a0:{s:02x}:04"),
        format!("52:54:00:b0:{s:02x}:03"),
        format!("52:54:00:b0:{s:02x}:04"),
    ]
}

/// Wait until `ok` holds, or fail saying what did not happen.
fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The addresses a systemd-networkd `.network` file gives the interface with `mac`.
fn networkd_addresses(text: &str) -> (Option<String>, Vec<String>) {
    let mut mac = None;
    let mut addrs = Vec::new();
    for l in text.lines().map(str::trim) {
        if let Some(m) = l.strip_prefix("MACAddress=") {
            mac = Some(m.trim().to_ascii_lowercase());
        }
        if let Some(a) = l.strip_prefix("Address=") {
            addrs.push(a.trim().to_string());
        }
    }
    (mac, addrs)
}

#[test]
fn standby_add_deploys_a_standby_that_joins_and_takes_over() {
    let t0 = Instant::now();
    let mut net = Netns::new("sfl");
    let s = net.subnet;
    let [pm3, pm4, sm3, sm4] = macs(s);
    let sw = net.add("switch");
    let p = net.add("primary");
    let st = net.add("standby");
    let cl = net.add("client");
    net.bridge(&sw, "priv");
    net.bridge(&sw, "pub");
    for (ns, ifc, port, br, mac) in [
        (&p, "ens3", "p3", "priv", Some(&pm3)),
        (&p, "ens4", "p4", "pub", Some(&pm4)),
        (&st, "ens3", "s3", "priv", Some(&sm3)),
        (&st, "ens4", "s4", "pub", Some(&sm4)),
        (&cl, "eth0", "c0", "pub", None),
    ] {
        net.veth(ns, ifc, &sw, port);
        net.attach(&sw, port, br);
        if let Some(m) = mac {
            ns_sh(ns, &format!("ip link set {ifc} address {m}"));
        }
        net.up(ns, ifc);
    }
    net.addr(&p, "ens3", &format!("10.{s}.1.1/24"));
    net.addr(&p, "ens4", &format!("10.{s}.2.1/24"));
    net.addr(&cl, "eth0", &format!("10.{s}.2.2/24"));

    // The primary's configuration, as its admin wrote it (the standby's planned addresses as
    // the channels' peers), and its root as a capture would hold it.
    let sb = Sandbox::new();
    sb.boot_files();
    sb.ok(&["failover", "keygen", sb.data().join("failover.key").to_str().unwrap()]);
    let config = format!(
        "data_dir = {data:?}\n[http]\nlisten = \"10.{s}.1.1:8080\"\n\
         [dhcp]\ninterface = \"ens3\"\nserver_ip = \"10.{s}.1.1\"\nsubnet = \"10.{s}.1.0/24\"\n\
         range = \"10.{s}.1.100-10.{s}.1.150\"\n[boot]\nretries = 3\nretry_interval = \"5s\"\n\
         [failover]\nnode = \"head-a\"\nrole = \"primary\"\ninterval = \"100ms\"\ndead_time = \"600ms\"\n\
         [[failover.channel]]\nname = \"private\"\nlocal = \"10.{s}.1.1\"\npeer = \"10.{s}.1.3\"\n\
         [[failover.channel]]\nname = \"public\"\nlocal = \"10.{s}.2.1\"\npeer = \"10.{s}.2.3\"\n\
         [[failover.vip]]\naddress = \"10.{s}.2.100/24\"\ninterface = \"ens4\"\n\
         [capture]\nimage = \"head-a\"\nsource = {src:?}\ninterval = \"20s\"\n",
        data = sb.data().to_str().unwrap(),
        src = sb.path("src").to_str().unwrap(),
    );
    let cfg = sb.path("serve.toml");
    std::fs::write(&cfg, &config).unwrap();
    let src = sb.path("src");
    let put = |rel: &str, text: &str| {
        let f = src.join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    };
    put("etc/hostname", "head-a\n");
    put("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\thead-a\n");
    put("etc/fstab", "UUID=old / ext4 defaults 0 1\n");
    put(
        "etc/systemd/network/10-private.network",
        &format!("[Match]\nMACAddress={pm3}\n\n[Network]\nAddress=10.{s}.1.1/24\n"),
    );
    put(
        "etc/systemd/network/20-public.network",
        &format!(
            "[Match]\nMACAddress={pm4}\n\n[Network]\nAddress=10.{s}.2.1/24\n# the alias, up at boot\nAddress=10.{s}.2.100/24\nGateway=10.{s}.2.254\n"
        ),
    );
    put("etc/understudy/understudy.toml", &config);
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/understudy.service")).unwrap();
    put("etc/systemd/system/understudy.service", &unit.replace("@BINDIR@", "/usr/local/bin"));
    std::fs::create_dir_all(src.join("usr/local/bin")).unwrap();
    std::fs::copy(bin(), src.join("usr/local/bin/understudy")).unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);

    let mut cmd = ns_cmd(&p, bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
    let mut srv = Server::start_cmd(&sb, &mut cmd);
    let t_ready = t0.elapsed();

    // The admin's one command; no --mac: the standby's first DHCP request is collected.
    let wiz_out = sb.path("wizard.jsonl");
    let wizard = Bg(ns_cmd(&p, bin())
        .args(["--data-dir", sb.data().to_str().unwrap(), "--server", &srv.url, "--token", &srv.token])
        .args(["standby", "add", "standby", "--image", "head-a", "--yes", "--json", "--timeout", "4m"])
        .args(["--interface", &format!("role=private,name=ens3,mac={sm3},address=10.{s}.1.3/24")])
        .args(["--interface", &format!("role=public,name=ens4,mac={sm4},address=10.{s}.2.3/24,gateway=10.{s}.2.254")])
        .stdout(std::fs::File::create(&wiz_out).unwrap())
        .stderr(std::fs::File::create(sb.path("wizard.err")).unwrap())
        .spawn()
        .unwrap());
    let mut wizard = wizard;
    let wiz = || std::fs::read_to_string(&wiz_out).unwrap_or_default();
    let step = |text: &str, name: &str, state: &str| -> Option<Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["step"] == name && v["state"] == state)
    };

    // The standby network-boots: DHCP until it has a lease (the first requests are only
    // collected), then its deploy script.
    let hook = sb.path("udhcpc.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$subnet\" dev \"$interface\";; esac\n",
    )
    .unwrap();
    sh(&format!("chmod +x {}", hook.display()));
    let t = Instant::now();
    let udhcpc = || {
        let o = ns_cmd(&st, "busybox")
            .args(["udhcpc", "-i", "ens3", "-n", "-q", "-f", "-t", "3", "-T", "1", "-A", "1", "-s"])
            .arg(&hook)
            .output()
            .unwrap();
        o.status.success() && ns_out(&st, &["ip", "-4", "-o", "addr", "show", "ens3"]).contains("inet ")
    };
    // Until the wizard has registered it, the standby's boot script is "wait" (iPXE loops
    // on it); its DHCP requests meanwhile are what MAC collection records.
    wait_until("the wizard to collect the standby's MAC and register it", Duration::from_secs(90), || {
        let _ = udhcpc();
        step(&wiz(), "network", "done").is_some() || wizard.0.try_wait().unwrap().is_some()
    });
    let err = || std::fs::read_to_string(sb.path("wizard.err")).unwrap_or_default();
    assert_eq!(
        step(&wiz(), "mac", "done").map(|v| v["detail"].clone()),
        Some(Value::from(sm3.as_str())),
        "{}{}",
        wiz(),
        err()
    );
    wait_until("the standby's DHCP lease", Duration::from_secs(30), udhcpc);
    let t_pxe = t.elapsed();
    let script = ns_out(&st, &["curl", "-s", &format!("{}/boot/{sm3}.ipxe", srv.url)]);
    let kernel =
        script.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("not a deploy script: {script}"));
    let cmdline = kernel.split_once(' ').unwrap().1.split(" || ").next().unwrap().to_string();
    let cmdfile = sb.path("cmdline");
    std::fs::write(&cmdfile, format!("{cmdline} understudy.bootloader=none\n")).unwrap();

    // The agent, on the standby, onto its disk.
    let t = Instant::now();
    let disk = Loop::new(&sb.path("disk.img"), 3 << 30);
    let o = ns_cmd(&st, bin())
        .args(["agent", "--cmdline", cmdfile.to_str().unwrap(), "--disk", &disk.0])
        .args(["--mount-dir", sb.path("target").to_str().unwrap(), "--no-reboot"])
        .output()
        .unwrap();
    let agent = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "agent failed:\n{agent}");
    assert!(agent.contains("understudy-agent: network: "), "{agent}");
    let t_deploy = t.elapsed();

    // What the standby boots with.
    let table = disk.table();
    let rootp = disk.part(&table, 3);
    let root = sb.path("root");
    let mnt = Mount::new(&rootp.0, &root);
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let private = read("etc/systemd/network/10-private.network");
    let public = read("etc/systemd/network/20-public.network");
    assert_eq!(networkd_addresses(&private), (Some(sm3.clone()), vec![format!("10.{s}.1.3/24")]), "{private}");
    assert_eq!(networkd_addresses(&public), (Some(sm4.clone()), vec![format!("10.{s}.2.3/24")]), "{public}");
    for primary_addr in [format!("10.{s}.1.1/"), format!("10.{s}.2.1/"), format!("10.{s}.2.100")] {
        assert!(
            !private.contains(&primary_addr) && !public.contains(&primary_addr),
            "{primary_addr}:\n{private}\n{public}"
        );
    }
    let standby_cfg = read("etc/understudy/understudy.toml");
    let parsed: toml::Value = toml::from_str(&standby_cfg).unwrap();
    assert_eq!(parsed["failover"]["role"].as_str(), Some("standby"), "{standby_cfg}");
    assert_eq!(parsed["failover"]["node"].as_str(), Some("standby"));
    assert!(parsed.get("dhcp").is_none() && parsed.get("http").is_none(), "{standby_cfg}");
    let key_in_root = root.join(sb.data().strip_prefix("/").unwrap()).join("failover.key");
    let key = std::fs::read_to_string(&key_in_root).unwrap();
    assert_eq!(key, std::fs::read_to_string(sb.data().join("failover.key")).unwrap());
    // The primary has [capture]: the standby follows it, at the primary's address on the LAN
    // it booted from (the capture's 20 s interval gives a 2 s check and a 60 s alarm).
    let sync = &parsed["sync"];
    assert_eq!(sync["server"].as_str(), Some(format!("http://10.{s}.1.1:8080").as_str()), "{standby_cfg}");
    assert_eq!(
        (sync["image"].as_str(), sync["target"].as_str(), sync["token_file"].as_str()),
        (Some("head-a"), Some("/"), Some("primary.token"))
    );
    assert_eq!((sync["interval"].as_str(), sync["max_lag"].as_str()), (Some("2s"), Some("1m")));
    assert!(parsed.get("capture").is_none(), "{standby_cfg}");
    assert!(agent.contains("follows the primary's image head-a"), "{agent}");
    // Its token: the primary's sync token (it reads images and reports freshness, nothing
    // else; never the admin token), root's, 0600, in the data dir beside the key, and never
    // in the agent's log.
    let token_in_root = key_in_root.with_file_name("primary.token");
    let sync_token = std::fs::read_to_string(sb.data().join("sync.token")).unwrap().trim().to_string();
    assert_eq!(std::fs::read_to_string(&token_in_root).unwrap().trim(), sync_token);
    assert_ne!(sync_token, srv.token);
    assert_eq!(srv.curl_in(Some(&p), "GET", "/api/v1/images/head-a/manifest", Some(&sync_token), None).0, 200);
    assert_eq!(srv.curl_in(Some(&p), "DELETE", "/api/v1/images/no-such", Some(&sync_token), None).0, 403);
    assert!(!agent.contains(&sync_token), "the agent logged the token:\n{agent}");
    let md = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&token_in_root).unwrap());
    assert_eq!(md & 0o7777, 0o600, "{}", token_in_root.display());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&token_in_root).unwrap()), 0);
    assert!(!agent.contains(&srv.token), "the agent logged the token:\n{agent}");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/understudy.service");
    assert_eq!(std::fs::read_link(&wants).unwrap(), Path::new("/etc/systemd/system/understudy.service"));
    assert_eq!(read("etc/hostname"), "standby\n");

    // Its "boot": networkd's files give it its addresses (by MAC), its understudy starts with
    // the written configuration (its data dir moved: this is one machine pretending two).
    ns_sh(&st, "ip addr flush dev ens3");
    let links: Value = serde_json::from_str(&ns_out(&st, &["ip", "-j", "link"])).unwrap();
    for text in [&private, &public] {
        let (mac, addrs) = networkd_addresses(text);
        let ifc = links.as_array().unwrap().iter().find(|l| l["address"].as_str() == mac.as_deref()).unwrap();
        for a in addrs {
            ns_sh(&st, &format!("ip addr add {a} dev {}", ifc["ifname"].as_str().unwrap()));
        }
    }
    let sbd = Sandbox::new();
    std::fs::create_dir_all(sbd.data()).unwrap();
    std::fs::copy(&key_in_root, sbd.data().join("failover.key")).unwrap();
    let moved = standby_cfg.replace(
        &format!("data_dir = {:?}", sb.data().to_str().unwrap()),
        &format!("data_dir = {:?}", sbd.data().to_str().unwrap()),
    );
    assert_ne!(moved, standby_cfg, "the standby's data_dir line: {standby_cfg}");
    std::fs::copy(&token_in_root, sbd.data().join("primary.token")).unwrap();
    // Its root stays mounted: [sync]'s target "/" is the standby's disk, here `root`. The
    // standby also serves HTTP (on its private address) to show its sync status.
    let moved = moved.replace("target = \"/\"", &format!("target = {:?}", root.to_str().unwrap()));
    assert!(moved.contains(&format!("target = {:?}", root.to_str().unwrap())), "{moved}");
    let moved = format!("{moved}\n[http]\nlisten = \"10.{s}.1.3:8080\"\n");
    let scfg = sbd.path("understudy.toml");
    std::fs::write(&scfg, moved).unwrap();
    let t = Instant::now();
    let mut standby_cmd = ns_cmd(&st, bin());
    standby_cmd
        .args(["serve", "--config", scfg.to_str().unwrap()])
        .stderr(std::fs::File::create(sbd.path("serve.log")).unwrap());
    let standby = Server::start_cmd(&sbd, &mut standby_cmd);

    // The wizard ends once both channels carry the standby's heartbeats.
    wait_until("the wizard to finish", Duration::from_secs(60), || wizard.0.try_wait().unwrap().is_some());
    let t_join = t.elapsed();
    let status = wizard.0.wait().unwrap();
    let out = wiz();
    assert!(status.success(), "wizard: {out}\n{}", std::fs::read_to_string(sb.path("wizard.err")).unwrap());
    for (name, state) in [
        ("image", "done"),
        ("mac", "done"),
        ("node", "done"),
        ("network", "done"),
        ("deploy", "done"),
        ("join", "done"),
    ] {
        assert!(step(&out, name, state).is_some(), "no {name} {state} in:\n{out}");
    }
    let (code, body) = srv.curl_in(Some(&p), "GET", "/api/v1/failover", Some(&srv.token), None);
    assert_eq!(code, 200, "{body}");
    let fo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fo["peer"], "standby", "{fo}");
    assert!(fo["channels"].as_array().unwrap().iter().all(|c| c["up"] == true), "{fo}");
    assert_eq!(fo["holder"], "head-a");

    // The network plan: the deployment's own token or the admin only; another deployment's
    // token is refused.
    let deployment = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("understudy.deployment="))
        .unwrap_or_else(|| panic!("no deployment id in {cmdline}"))
        .to_string();
    let plan_path = format!("/api/v1/deployments/{deployment}/network");
    let (code, body) = srv.curl_in(
        Some(&p),
        "POST",
        "/api/v1/nodes",
        Some(&srv.token),
        Some(r#"{"name":"other","role":"compute","image":"head-a"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) =
        srv.curl_in(Some(&p), "POST", "/api/v1/deployments", Some(&srv.token), Some(r#"{"node":"other"}"#));
    assert_eq!(code, 201, "{body}");
    let other: Value = serde_json::from_str(&body).unwrap();
    let (code, body) = srv.curl_in(Some(&p), "GET", &plan_path, other["token"].as_str(), None);
    assert_eq!(code, 403, "another deployment's token read the plan: {body}");
    assert!(!body.contains(&srv.token), "{body}");
    let (code, body) = srv.curl_in(Some(&p), "GET", &plan_path, None, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = srv.curl_in(Some(&p), "GET", &plan_path, Some(&srv.token), None);
    assert_eq!(code, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["failover"]["sync"]["token_path"], format!("{}/primary.token", sb.data().display()));

    // The standby follows the primary by itself: it starts as running what it was deployed
    // with, then a file changed on the primary and captured shows up in its root.
    let sync_of = |srv: &Server, ns: &str| -> Value {
        let (code, body) = srv.curl_in(Some(ns), "GET", "/api/v1/sync", Some(&srv.token), None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let serve_log = || std::fs::read_to_string(sbd.path("serve.log")).unwrap_or_default();
    let current = |want: Option<i64>| {
        let f = sync_of(&standby, &st)["follow"].clone();
        f["state"] == "current"
            && f["applied"]["manifest"] == f["newest"]["manifest"]
            && want.is_none_or(|v| {
                f["applied"]["version"].as_i64() >= Some(v) && f["newest"]["version"].as_i64() >= Some(v)
            })
    };
    wait_until("the standby's [sync] to be current", Duration::from_secs(60), || current(None));
    let t = Instant::now();
    put("etc/motd", "changed on the primary\n");
    // A run already going may have started before the change: the one asked for comes after it.
    let cap = sync_of(&srv, &p)["capture"].clone();
    let before = cap["runs"].as_u64().unwrap() + u64::from(cap["running"] == true);
    let (code, body) = srv.curl_in(Some(&p), "POST", "/api/v1/sync/capture", Some(&srv.token), None);
    assert_eq!(code, 202, "{body}");
    wait_until("the primary's capture of the change", Duration::from_secs(60), || {
        sync_of(&srv, &p)["capture"]["runs"].as_u64() > Some(before)
    });
    let newest = sync_of(&srv, &p)["capture"]["last_version"].clone();
    let version: i64 = newest
        .as_str()
        .and_then(|l| l.rsplit_once('@')?.1.parse().ok())
        .unwrap_or_else(|| panic!("capture.last_version {newest}"));
    wait_until("the standby to apply the new version", Duration::from_secs(60), || current(Some(version)));
    let t_sync = t.elapsed();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap_or_default(),
        "changed on the primary\n",
        "{}",
        serve_log()
    );
    // Its own identity and understudy stay.
    assert_eq!(read("etc/hostname"), "standby\n");
    assert_eq!(read("etc/understudy/understudy.toml"), standby_cfg);
    let (_, metrics) = standby.curl_in(Some(&st), "GET", "/metrics", None, None);
    let lag = metrics.lines().find_map(|l| l.strip_prefix("understudy_sync_lag_seconds ")?.trim().parse::<f64>().ok());
    assert_eq!(lag, Some(0.0), "{metrics}");

    // The primary dies: its links go down and its process is killed.
    ns_sh(&p, "ip link set ens3 down; ip link set ens4 down");
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let t = Instant::now();
    let vip = format!("10.{s}.2.100");
    wait_until("the VIP to answer from the standby", Duration::from_secs(20), || {
        let _ = ns_cmd(&cl, "ping").args(["-c", "1", "-W", "1", &vip]).output();
        let n: Value = serde_json::from_str(&ns_out(&cl, &["ip", "-j", "neigh", "show", &vip])).unwrap_or_default();
        n[0]["lladdr"].as_str() == Some(sm4.as_str())
    });
    let t_takeover = t.elapsed();
    drop(standby);
    drop(mnt);
    eprintln!(
        "standby flow: server ready {t_ready:?}, PXE request collected and leased {t_pxe:?}, agent {t_deploy:?}, \
         join {t_join:?}, sync of a change {t_sync:?}, takeover {t_takeover:?}, total {:?}",
        t0.elapsed()
    );
}
