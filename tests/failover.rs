//! Failover between two real `understudy serve` processes in network namespaces.
//!
//! Topology (every link inside namespaces this test creates):
//! - `b`: a bridge `br` for the public LAN 10.N.1.0/24; primary (.1), standby (.2) and
//!   client (.100) hang off it through veth pairs; the VIP is 10.N.1.10 on `pub`;
//! - a direct veth pair `priv` between primary (10.N.2.1) and standby (10.N.2.2).
//!
//! Both heartbeat channels are used (private and public), the client is the tie-breaker.

mod common;
use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The namespaces and links, removed on drop.
struct Net {
    p: String,
    s: String,
    c: String,
    b: String,
    n: u8,
}

fn ns_sh(ns: &str, cmd: &str) {
    sh(&format!("ip netns exec {ns} sh -c '{cmd}'"));
}

fn ns_out(ns: &str, args: &[&str]) -> String {
    let o = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Net {
    fn new() -> Net {
        let k = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}{k}", std::process::id() & 0xfff);
        let net = Net {
            p: format!("usf-{id}-p"),
            s: format!("usf-{id}-s"),
            c: format!("usf-{id}-c"),
            b: format!("usf-{id}-b"),
            n: 100 + (k as u8 % 50),
        };
        for ns in [&net.p, &net.s, &net.c, &net.b] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        let b = &net.b;
        sh(&format!("ip -n {b} link add name lan0 type bridge && ip -n {b} link set lan0 up"));
        for (ns, tag, host) in [(&net.p, "p", 1), (&net.s, "s", 2), (&net.c, "c", 100)] {
            sh(&format!("ip -n {ns} link add pub type veth peer name b{tag} netns {b}"));
            sh(&format!("ip -n {b} link set b{tag} master lan0 && ip -n {b} link set b{tag} up"));
            sh(&format!("ip -n {ns} addr add 10.{}.1.{host}/24 dev pub && ip -n {ns} link set pub up", net.n));
        }
        sh(&format!("ip -n {} link add priv type veth peer name priv netns {}", net.p, net.s));
        for (ns, host) in [(&net.p, 1), (&net.s, 2)] {
            sh(&format!("ip -n {ns} addr add 10.{}.2.{host}/24 dev priv && ip -n {ns} link set priv up", net.n));
        }
        net
    }

    fn vip(&self) -> String {
        format!("10.{}.1.10", self.n)
    }

    fn has_vip(&self, ns: &str) -> bool {
        ns_out(ns, &["ip", "-br", "addr", "show", "dev", "pub"]).contains(&format!("{}/24", self.vip()))
    }

    fn mac(&self, ns: &str) -> String {
        // sysfs shows the namespace of the process that mounted it, so read it from inside.
        ns_out(ns, &["cat", "/sys/class/net/pub/address"]).trim().to_string()
    }

    /// Ping the VIP from the client once and return the MAC its neighbour table now holds.
    fn client_sees(&self) -> Option<String> {
        let _ = Command::new("ip").args(["netns", "exec", &self.c, "ping", "-c1", "-W1", &self.vip()]).output();
        let out = ns_out(&self.c, &["ip", "neigh", "show", &self.vip()]);
        let mut it = out.split_whitespace();
        it.position(|w| w == "lladdr")?;
        it.next().map(String::from)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.p, &self.s, &self.c, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One node: its sandbox and its running `serve`, killed on drop.
struct Node {
    sb: Sandbox,
    child: Option<Child>,
    ns: String,
}

impl Node {
    fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.sb.data().join("failover.status.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn holding(&self) -> bool {
        self.status()["holding"] == Value::Bool(true)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.sb.path("serve.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(net: &Net, data: &PathBuf, node: &str, role: &str, me: u8, peer: u8) -> String {
    let n = net.n;
    format!(
        "data_dir = {data:?}\n[failover]\nnode = \"{node}\"\nrole = \"{role}\"\ninterval = \"100ms\"\n\
         dead_time = \"600ms\"\ntiebreaker = [\"10.{n}.1.100\"]\n\
         [[failover.channel]]\nname = \"private\"\nlocal = \"10.{n}.2.{me}\"\npeer = \"10.{n}.2.{peer}\"\n\
         [[failover.channel]]\nname = \"public\"\nlocal = \"10.{n}.1.{me}\"\npeer = \"10.{n}.1.{peer}\"\n\
         [[failover.vip]]\naddress = \"10.{n}.1.10/24\"\ninterface = \"pub\"\nlabel = \"pub:1\"\n"
    )
}

/// Start `serve` inside `ns` and wait for its readiness line.
fn start(sb: Sandbox, ns: &str, cfg_text: String, node: &str) -> Node {
    let cfg = sb.path("serve.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let log = std::fs::File::create(sb.path("serve.log")).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start serve");
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let want = format!("understudy: failover {node} running");
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l == want);
    std::thread::spawn(move || for _ in lines {});
    let node = Node { sb, child: Some(child), ns: ns.to_string() };
    assert!(ready, "{} did not start:\n{}", node.ns, node.log());
    node
}

/// Keys from `understudy failover keygen`, both nodes started; waits for the primary to hold.
fn pair(net: &Net) -> (Node, Node) {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for sb in [&a, &b] {
        std::fs::create_dir_all(sb.data()).unwrap();
    }
    let key = a.data().join("failover.key");
    a.ok(&["failover", "keygen", key.to_str().unwrap()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    std::fs::copy(&key, b.data().join("failover.key")).unwrap();
    let (da, db) = (a.data(), b.data());
    let p = start(a, &net.p, config(net, &da, "head-a", "primary", 1, 2), "head-a");
    let s = start(b, &net.s, config(net, &db, "head-b", "standby", 2, 1), "head-b");
    wait(Duration::from_secs(10), "the primary to hold the VIP", || p.holding() && net.has_vip(&net.p), &p, &s);
    assert!(!s.holding() && !net.has_vip(&net.s));
    (p, s)
}

fn wait(limit: Duration, what: &str, mut ok: impl FnMut() -> bool, p: &Node, s: &Node) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for {what}\nprimary status {}\nstandby status {}\nprimary log:\n{}\nstandby log:\n{}",
        p.status(),
        s.status(),
        p.log(),
        s.log()
    );
}

fn client_sees_within(net: &Net, mac: &str, limit: Duration, p: &Node, s: &Node) {
    wait(limit, &format!("the client to reach the VIP at {mac}"), || net.client_sees().as_deref() == Some(mac), p, s);
}

#[test]
fn primary_crash_moves_the_vip_to_the_standby_mac() {
    let net = Net::new();
    let (mut p, s) = pair(&net);
    let (pmac, smac) = (net.mac(&net.p), net.mac(&net.s));
    assert_ne!(pmac, smac);
    client_sees_within(&net, &pmac, Duration::from_secs(5), &p, &s);
    // The whole machine dies: process gone, links dark.
    p.kill();
    sh(&format!("ip -n {0} link set pub down && ip -n {0} link set priv down", net.p));
    let t = Instant::now();
    wait(Duration::from_secs(10), "the standby to take over", || s.holding() && net.has_vip(&net.s), &p, &s);
    eprintln!("takeover after {:?}", t.elapsed());
    // The client's cache still says the primary: only gratuitous ARP can correct it.
    client_sees_within(&net, &smac, Duration::from_secs(8), &p, &s);
    let st = s.status();
    assert_eq!(st["holder"], "head-b", "{st}");
    assert!(st["events"].as_array().unwrap().iter().any(|e| e["kind"] == "failover.takeover"), "{st}");
    // The event log in the inventory has it too.
    let ev = s.sb.ok(&["events", "--kind", "failover.", "--json"]);
    assert!(ev.contains("failover.takeover"), "{ev}");
}

#[test]
fn one_channel_cut_raises_an_alarm_without_takeover() {
    let net = Net::new();
    let (p, s) = pair(&net);
    ns_sh(
        &net.s,
        "nft add table inet t && nft add chain inet t in { type filter hook input priority 0 \\; } && \
         nft add rule inet t in iifname priv udp dport 694 drop",
    );
    wait(
        Duration::from_secs(5),
        "a channel alarm on the standby",
        || s.status()["alarms"].as_array().is_some_and(|a| a.iter().any(|x| x == "channel_down:private")),
        &p,
        &s,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(p.holding() && net.has_vip(&net.p), "primary lost the VIP: {}", p.status());
    assert!(!s.holding() && !net.has_vip(&net.s), "standby took over: {}", s.status());
}

#[test]
fn partition_heal_leaves_exactly_one_holder() {
    let net = Net::new();
    let (p, s) = pair(&net);
    // Every heartbeat into the standby is dropped: it thinks the primary died.
    ns_sh(
        &net.s,
        "nft add table inet t && nft add chain inet t in { type filter hook input priority 0 \\; } && \
         nft add rule inet t in udp dport 694 drop",
    );
    wait(Duration::from_secs(10), "the standby to take over in the partition", || s.holding(), &p, &s);
    ns_sh(&net.s, "nft delete table inet t");
    wait(
        Duration::from_secs(10),
        "exactly one holder after the heal",
        || (p.holding() as u8 + s.holding() as u8) == 1 && (net.has_vip(&net.p) != net.has_vip(&net.s)),
        &p,
        &s,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.holding() as u8 + s.holding() as u8, 1, "{} / {}", p.status(), s.status());
    assert_ne!(net.has_vip(&net.p), net.has_vip(&net.s));
}

#[test]
fn planned_switchover_moves_the_vip() {
    let net = Net::new();
    let (p, s) = pair(&net);
    let smac = net.mac(&net.s);
    s.sb.ok(&["failover", "takeover"]);
    wait(
        Duration::from_secs(10),
        "the VIP to move to the standby",
        || s.holding() && net.has_vip(&net.s) && !net.has_vip(&net.p) && !p.holding(),
        &p,
        &s,
    );
    client_sees_within(&net, &smac, Duration::from_secs(8), &p, &s);
    let out = s.sb.ok(&["failover", "status"]);
    assert!(out.contains("holder: head-b"), "{out}");
}
