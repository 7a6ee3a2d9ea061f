//! Failover between two real `understudy serve` processes in network namespaces.
//!
//! Topology (every link inside namespaces this test creates):
//! - `b`: a bridge `br` for the public LAN 10.N.1.0/24; primary (.1), standby (.2) and
//!   client (.100) hang off it through veth pairs; the VIP is 10.N.1.10 on `pub`;
//! - a direct veth pair `priv` between primary (10.N.2.1) and standby (10.N.2.2).
//!
//! Both heartbeat channels are used (private and public), the client is the tie-breaker.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use common::*;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The namespaces and links (removed on drop, with every process inside).
struct Net {
    _netns: Netns,
    p: String,
    s: String,
    c: String,
    n: u8,
}

impl Net {
    fn new() -> Net {
        let mut netns = Netns::new("f");
        let (p, s, c, b) = (netns.add("p"), netns.add("s"), netns.add("c"), netns.add("b"));
        let n = netns.subnet;
        netns.bridge(&b, "lan0");
        for (ns, tag, host) in [(&p, "p", 1), (&s, "s", 2), (&c, "c", 100)] {
            netns.veth(ns, "pub", &b, &format!("b{tag}"));
            netns.attach(&b, &format!("b{tag}"), "lan0");
            netns.addr(ns, "pub", &format!("10.{n}.1.{host}/24"));
        }
        netns.veth(&p, "priv", &s, "priv");
        for (ns, host) in [(&p, 1), (&s, 2)] {
            netns.addr(ns, "priv", &format!("10.{n}.2.{host}/24"));
        }
        Net { _netns: netns, p, s, c, n }
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

    /// SIGTERM, then wait for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node runs");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        c.wait().expect("wait for serve")
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What differs between the tests' node configurations.
#[derive(Clone, Default)]
struct Opts {
    /// The client is the tie-breaker.
    tiebreaker: bool,
    /// More keys for the `[failover]` table.
    keys: String,
    /// More tables, appended at the end (`[[failover.monitor]]`, `[http]`).
    tables: String,
}

impl Opts {
    fn tb() -> Opts {
        Opts { tiebreaker: true, ..Opts::default() }
    }
}

fn config(net: &Net, data: &PathBuf, node: &str, role: &str, me: u8, peer: u8, o: &Opts) -> String {
    let n = net.n;
    let tb = if o.tiebreaker { format!("tiebreaker = [\"10.{n}.1.100\"]\n") } else { String::new() };
    format!(
        "data_dir = {data:?}\n[failover]\nnode = \"{node}\"\nrole = \"{role}\"\ninterval = \"100ms\"\n\
         dead_time = \"600ms\"\n{tb}{}\n\
         [[failover.channel]]\nname = \"private\"\nlocal = \"10.{n}.2.{me}\"\npeer = \"10.{n}.2.{peer}\"\n\
         [[failover.channel]]\nname = \"public\"\nlocal = \"10.{n}.1.{me}\"\npeer = \"10.{n}.1.{peer}\"\n\
         [[failover.vip]]\naddress = \"10.{n}.1.10/24\"\ninterface = \"pub\"\nlabel = \"pub:1\"\n{}\n",
        o.keys, o.tables
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

/// Two sandboxes sharing a key from `understudy failover keygen`.
fn keyed_sandboxes() -> (Sandbox, Sandbox) {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for sb in [&a, &b] {
        std::fs::create_dir_all(sb.data()).unwrap();
    }
    let key = a.data().join("failover.key");
    a.ok(&["failover", "keygen", key.to_str().unwrap()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    std::fs::copy(&key, b.data().join("failover.key")).unwrap();
    (a, b)
}

/// Both nodes started with the client as tie-breaker; waits for the primary to hold.
fn pair(net: &Net) -> (Node, Node) {
    pair_with(net, &Opts::tb(), &Opts::tb())
}

/// Both nodes started (primary `po`, standby `so`); waits for the primary to hold alone.
fn pair_with(net: &Net, po: &Opts, so: &Opts) -> (Node, Node) {
    let (a, b) = keyed_sandboxes();
    let (da, db) = (a.data(), b.data());
    let p = start(a, &net.p, config(net, &da, "head-a", "primary", 1, 2, po), "head-a");
    let s = start(b, &net.s, config(net, &db, "head-b", "standby", 2, 1, so), "head-b");
    wait(
        Duration::from_secs(10),
        "the primary to hold the VIP alone",
        || p.holding() && net.has_vip(&net.p) && !net.has_vip(&net.s),
        &p,
        &s,
    );
    assert!(!s.holding(), "{}", s.status());
    (p, s)
}

/// Apply an nftables script inside `ns` (fed on stdin: no shell quoting).
fn nft(ns: &str, script: &str) {
    use std::io::Write;
    let mut c =
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft");
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "nft in {ns} refused:\n{script}");
}

fn events(st: &Value) -> Vec<(String, String)> {
    st["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (e["kind"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_event(st: &Value, kind: &str, text: &str) -> bool {
    events(st).iter().any(|(k, m)| k == kind && m.contains(text))
}

fn has_alarm(st: &Value, alarm: &str) -> bool {
    st["alarms"].as_array().is_some_and(|a| a.iter().any(|x| x == alarm))
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

/// Wait until `holder` holds the VIP (its status and its interface) and `other` does not.
fn wait_sole_holder(net: &Net, holder: &Node, other: &Node, limit: Duration, what: &str) {
    let ok = || holder.holding() && !other.holding() && net.has_vip(&holder.ns) && !net.has_vip(&other.ns);
    let (p, s) = if holder.ns == net.p { (holder, other) } else { (other, holder) };
    wait(limit, what, ok, p, s);
}

/// For `limit`, every 100 ms: the primary holds the VIP alone.
fn primary_keeps_holding(net: &Net, limit: Duration, p: &Node, s: &Node) {
    let t = Instant::now();
    while t.elapsed() < limit {
        assert!(p.holding() && net.has_vip(&net.p), "primary lost the VIP: {}", p.status());
        assert!(!s.holding() && !net.has_vip(&net.s), "standby took over: {}", s.status());
        std::thread::sleep(Duration::from_millis(100));
    }
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
    wait_sole_holder(&net, &s, &p, Duration::from_secs(10), "the VIP to move to the standby");
    client_sees_within(&net, &smac, Duration::from_secs(8), &p, &s);
    let out = s.sb.ok(&["failover", "status"]);
    assert!(out.contains("holder: head-b"), "{out}");
}

/// Half the heartbeats lost both ways on the private channel for several seconds: the
/// public one carries the pair, so nobody takes over, and the loss shows in the status.
#[test]
fn loss_on_one_channel_never_takes_over() {
    let net = Net::new();
    let (p, s) = pair(&net);
    let lossy = "table inet loss {\n chain in {\n  type filter hook input priority 0;\n  \
                 iifname \"priv\" udp dport 694 numgen random mod 100 < 50 drop\n }\n}\n";
    nft(&net.p, lossy);
    nft(&net.s, lossy);
    let t = Instant::now();
    let mut worst: f64 = 0.0;
    while t.elapsed() < Duration::from_secs(8) {
        primary_keeps_holding(&net, Duration::from_millis(500), &p, &s);
        let loss = s.status()["channels"][0]["loss"].as_f64().unwrap_or(0.0);
        worst = worst.max(loss);
    }
    // Proof the loss was really there (the test must be able to fail).
    assert!(worst > 0.2, "private channel loss never showed: {}", s.status());
    let st = s.status();
    assert_eq!(st["channels"][1]["up"], true, "{st}");
    assert!(!has_event(&st, "failover.takeover_started", ""), "{st}");
}

/// Every packet between the nodes dropped, no tie-breaker: both take the VIP (warned at
/// start); at the heal the higher term keeps it, the other releases, and the client is
/// sent to the winner.
#[test]
fn full_partition_without_tiebreaker_heals_to_the_higher_term() {
    let net = Net::new();
    let (p, s) = pair_with(&net, &Opts::default(), &Opts::default());
    assert!(s.log().contains("neither tiebreaker nor fence"), "no warning at start:\n{}", s.log());
    let n = net.n;
    nft(
        &net.s,
        &format!(
            "table inet cut {{\n chain in {{\n  type filter hook input priority 0;\n  \
             ip saddr {{ 10.{n}.1.1, 10.{n}.2.1 }} drop\n }}\n chain out {{\n  type filter hook output priority 0;\n  \
             ip daddr {{ 10.{n}.1.1, 10.{n}.2.1 }} drop\n }}\n}}\n"
        ),
    );
    wait(Duration::from_secs(10), "both to hold in the partition", || s.holding() && p.holding(), &p, &s);
    let (tp, ts) = (p.status()["term"].as_u64().unwrap(), s.status()["term"].as_u64().unwrap());
    assert!(ts > tp, "the standby's failover term {ts} must exceed the primary's {tp}");
    ns_sh(&net.s, "nft delete table inet cut");
    wait_sole_holder(&net, &s, &p, Duration::from_secs(10), "the higher term to keep the VIP alone");
    client_sees_within(&net, &net.mac(&net.s), Duration::from_secs(8), &p, &s);
    wait(
        Duration::from_secs(3),
        "the loser to record the release",
        || has_event(&p.status(), "failover.split_brain", "releasing"),
        &p,
        &s,
    );
}

/// The standby loses every network (heartbeats and the tie-breaker): it must not take the
/// VIP, and says why; after the heal nothing moves.
#[test]
fn isolated_standby_with_tiebreaker_never_takes_over() {
    let net = Net::new();
    let (p, s) = pair(&net);
    nft(
        &net.s,
        "table inet iso {\n chain in {\n  type filter hook input priority 0;\n  iifname != \"lo\" drop\n }\n \
         chain out {\n  type filter hook output priority 0;\n  oifname != \"lo\" drop\n }\n}\n",
    );
    wait(
        Duration::from_secs(10),
        "the standby to report the takeover blocked",
        || has_alarm(&s.status(), "takeover_blocked"),
        &p,
        &s,
    );
    primary_keeps_holding(&net, Duration::from_secs(3), &p, &s);
    assert!(has_event(&s.status(), "failover.takeover_aborted", "tie-breaker"), "{}", s.status());
    ns_sh(&net.s, "nft delete table inet iso");
    wait(
        Duration::from_secs(10),
        "the alarm to clear after the heal",
        || {
            !has_alarm(&s.status(), "takeover_blocked")
                && s.status()["peer_last_heard_ms"].as_u64().is_some_and(|m| m < 500)
        },
        &p,
        &s,
    );
    primary_keeps_holding(&net, Duration::from_secs(1), &p, &s);
}

/// A process the test started and kills on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The primary's service dies and every restart crashes again: it is restarted exactly
/// `restart_budget` times, then the primary escalates; while the standby reports itself
/// unhealthy the escalation waits (alarm), once it is healthy the VIP moves to it.
#[test]
fn service_crash_loop_restarts_then_escalates() {
    let net = Net::new();
    let (a, b) = keyed_sandboxes();
    // A uniquely named symlink to sleep is "the service" (a process check matches its name,
    // and the kernel names a process after the path it was started by). A symlink rather
    // than a copy: a copy's write descriptor can leak into a child another test thread forks
    // meanwhile, and exec then fails with ETXTBSY.
    let comm = format!("usfsv{}{}", std::process::id() % 100_000, net.n);
    let svc = a.path(&comm);
    std::os::unix::fs::symlink("/bin/sleep", &svc).unwrap();
    let svc_s = svc.to_str().unwrap().to_string();
    let mut running = Proc(Command::new(&svc).arg("1000").spawn().unwrap());
    let restarts = a.path("restarts.log");
    let ready = b.path("ready");
    let po = Opts {
        tiebreaker: true,
        tables: format!(
            "[[failover.monitor]]\nname = \"svc\"\nprocess = \"{comm}\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
             fall = 2\nrise = 2\nrestart_budget = 2\nbackoff = \"200ms\"\nbackoff_max = \"400ms\"\n\
             restart = {{ command = [\"/bin/sh\", \"-c\", \"echo restart >> {}; exec {svc_s} 0.05\"] }}\n",
            restarts.display()
        ),
        ..Opts::default()
    };
    let so = Opts {
        tiebreaker: true,
        tables: format!(
            "[[failover.monitor]]\nname = \"ready\"\ncommand = [\"test\", \"-e\", \"{}\"]\ninterval = \"200ms\"\n\
             timeout = \"200ms\"\nfall = 1\nrise = 1\n",
            ready.display()
        ),
        ..Opts::default()
    };
    let (da, db) = (a.data(), b.data());
    let p = start(a, &net.p, config(&net, &da, "head-a", "primary", 1, 2, &po), "head-a");
    let s = start(b, &net.s, config(&net, &db, "head-b", "standby", 2, 1, &so), "head-b");
    let mon = |n: &Node, key: &str| n.status()["monitors"][0][key].clone();
    wait(
        Duration::from_secs(10),
        "the primary to hold with its service up, the standby unhealthy",
        || p.holding() && mon(&p, "health") == "up" && mon(&s, "escalated") == true,
        &p,
        &s,
    );
    let _ = running.0.kill();
    let _ = running.0.wait();
    wait(
        Duration::from_secs(15),
        "the escalation to be blocked by the unhealthy standby",
        || has_alarm(&p.status(), "escalation_blocked"),
        &p,
        &s,
    );
    let count = || std::fs::read_to_string(&restarts).unwrap_or_default().lines().count();
    assert_eq!(count(), 2, "restarted exactly restart_budget times before escalating");
    assert_eq!(mon(&p, "escalated"), true, "{}", p.status());
    primary_keeps_holding(&net, Duration::from_secs(1), &p, &s);
    std::fs::write(&ready, "").unwrap();
    wait_sole_holder(&net, &s, &p, Duration::from_secs(10), "the VIP to move to the healthy standby");
    client_sees_within(&net, &net.mac(&net.s), Duration::from_secs(8), &p, &s);
    assert_eq!(count(), 2, "no restarts after the escalation");
    assert!(has_event(&p.status(), "failover.health", "monitor svc escalated"), "{}", p.status());
}

/// SIGTERM on the holder: VIP removed, then the standby is told and takes over at once,
/// without fencing the primary (which is not dead, only stopping) and without a "peer lost".
#[test]
fn sigterm_on_the_holder_hands_over_without_fencing() {
    let net = Net::new();
    let fenced = std::env::temp_dir().join(format!("usf-fenced-{}-{}", std::process::id(), net.n));
    let _ = std::fs::remove_file(&fenced);
    let so = Opts {
        tiebreaker: true,
        keys: format!("fence = [\"/bin/sh\", \"-c\", \"touch {}\"]\n", fenced.display()),
        ..Opts::default()
    };
    let (mut p, s) = pair_with(&net, &Opts::tb(), &so);
    let smac = net.mac(&net.s);
    let code = p.terminate();
    assert!(code.success(), "serve exited with {code}:\n{}", p.log());
    assert!(!net.has_vip(&net.p), "the stopped primary still has the VIP");
    wait(Duration::from_secs(10), "the standby to take over", || s.holding() && net.has_vip(&net.s), &p, &s);
    client_sees_within(&net, &smac, Duration::from_secs(8), &p, &s);
    let st = s.status();
    assert!(has_event(&st, "failover.peer_left", ""), "{st}");
    assert!(has_event(&st, "failover.takeover", "PeerLeft"), "{st}");
    assert!(!has_event(&st, "failover.peer_lost", ""), "{st}");
    assert!(!fenced.exists(), "a cleanly stopped primary was fenced");
    assert!(p.log().contains("VIP released, peer told"), "{}", p.log());
}

/// `curl` inside `ns`: (status, body).
fn ns_curl(ns: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut args = vec!["netns", "exec", ns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method];
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let url = format!("http://127.0.0.1:8080{path}");
    args.push(&url);
    let o = Command::new("ip").args(&args).output().expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Planned switchover both ways over the REST API (admin token), and failover metrics.
#[test]
fn takeover_and_release_over_http_and_metrics() {
    let net = Net::new();
    let so = Opts { tiebreaker: true, tables: "[http]\nlisten = \"127.0.0.1:8080\"\n".into(), ..Opts::default() };
    let (p, s) = pair_with(&net, &Opts::tb(), &so);
    wait(Duration::from_secs(5), "the HTTP API", || ns_curl(&net.s, "GET", "/api/v1/failover", None).0 == 401, &p, &s);
    let token = std::fs::read_to_string(s.sb.data().join("admin.token")).unwrap().trim().to_string();
    let t = Some(token.as_str());
    assert_eq!(ns_curl(&net.s, "POST", "/api/v1/failover/takeover", None).0, 401);
    let (code, body) = ns_curl(&net.s, "POST", "/api/v1/failover/takeover", t);
    assert_eq!(code, 202, "{body}");
    wait_sole_holder(&net, &s, &p, Duration::from_secs(10), "the VIP to move to the standby");
    wait(
        Duration::from_secs(5),
        "metrics to show the holder",
        || ns_curl(&net.s, "GET", "/metrics", None).1.contains("\nunderstudy_failover_holding 1\n"),
        &p,
        &s,
    );
    let m = ns_curl(&net.s, "GET", "/metrics", None).1;
    for want in [
        "understudy_failover_state{state=\"holding\"} 1",
        "understudy_failover_channel_up{channel=\"private\"} 1",
        "understudy_failover_channel_up{channel=\"public\"} 1",
        "understudy_failover_takeovers_total 1",
    ] {
        assert!(m.lines().any(|l| l == want), "{want:?} missing from\n{m}");
    }
    let (code, body) = ns_curl(&net.s, "POST", "/api/v1/failover/release", t);
    assert_eq!(code, 202, "{body}");
    wait_sole_holder(&net, &p, &s, Duration::from_secs(10), "the VIP to move back to the primary");
    let (code, body) = ns_curl(&net.s, "GET", "/api/v1/failover", t);
    assert_eq!(code, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert!(st["rx"]["accepted"].as_u64().is_some_and(|n| n > 0), "{st}");
    // The heartbeat loop runs on its own thread, at SCHED_FIFO (permitted: root), and says so.
    assert_eq!(st["realtime"], Value::Bool(true), "{st}");
    let pid = s.child.as_ref().expect("standby runs").id();
    assert_eq!(thread_policy(pid, "failover"), Some(1), "no SCHED_FIFO thread named failover in {pid}");
    // The dead time now: never below the configured floor (600 ms here).
    assert!(st["dead_time_ms"].as_u64().is_some_and(|d| d >= 600), "{st}");
    let m = ns_curl(&net.s, "GET", "/metrics", None).1;
    let dead = m.lines().find_map(|l| l.strip_prefix("understudy_failover_dead_time_seconds "));
    assert!(dead.and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 0.6), "{dead:?}");
}

/// The scheduling policy (field 41 of its stat) of the thread of `pid` named `name`.
fn thread_policy(pid: u32, name: &str) -> Option<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        if !head.ends_with(&format!("({name}")) {
            return None;
        }
        // Fields after the command start at field 3.
        rest.split_whitespace().nth(41 - 3)?.parse().ok()
    })
}

/// Sniffs one heartbeat the standby sends on `priv`, then sends from the standby's own
/// address (so the source check passes): garbage, truncated, oversized, re-signed-wrong
/// and replayed datagrams, and a flood of garbage.
const HOSTILE: &str = r#"
import os, socket, sys, time
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
raw.bind(("priv", 0))
raw.settimeout(5)
while True:
    pkt, addr = raw.recvfrom(65535)
    ip = pkt[14:]
    if addr[2] != socket.PACKET_OUTGOING or ip[0] >> 4 != 4 or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    if int.from_bytes(udp[2:4], "big") == port:
        hb = bytes(udp[8:])
        break
time.sleep(0.5)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((src, 0))
to = (dst, port)
for _ in range(5):
    u.sendto(os.urandom(len(hb)), to)            # magic
    u.sendto(hb[:60], to)                        # truncated
    u.sendto(hb + os.urandom(2000), to)          # oversized
    u.sendto(hb[:-1] + bytes([hb[-1] ^ 1]), to)  # bad MAC
    u.sendto(hb, to)                             # replay
    u.sendto(b"", to)                            # empty
for _ in range(20000):
    try:
        u.sendto(os.urandom(40), to)
    except OSError:
        pass
print(len(hb))
"#;

/// Hostile datagrams on the real heartbeat port: each kind counted under its reason, the
/// strangers' too; nothing crashes and nothing moves.
#[test]
fn bad_datagrams_are_counted_and_ignored() {
    let net = Net::new();
    let (mut p, s) = pair(&net);
    let n = net.n;
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.s,
            "python3",
            "-c",
            HOSTILE,
            &format!("10.{n}.2.2"),
            &format!("10.{n}.2.1"),
            "694",
        ])
        .output()
        .expect("python3");
    assert!(o.status.success(), "sender failed: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "126", "the sniffed heartbeat is not one");
    // Strangers: the right size, from an address that is not the peer's.
    let stranger = "import socket,sys\ns=socket.socket(2,2)\nfor _ in range(10): s.sendto(b'x'*126,(sys.argv[1],694))";
    let o = Command::new("ip")
        .args(["netns", "exec", &net.c, "python3", "-c", stranger, &format!("10.{n}.1.1")])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let at_least = |st: &Value, path: &[&str], min: u64| {
        let v = path.iter().fold(st.clone(), |v, k| v[*k].clone());
        v.as_u64().is_some_and(|x| x >= min)
    };
    wait(
        Duration::from_secs(10),
        "every refusal to be counted",
        || {
            let st = p.status();
            at_least(&st, &["rx", "magic"], 5)
                && at_least(&st, &["rx", "length"], 15)
                && at_least(&st, &["rx", "mac"], 5)
                && at_least(&st, &["rx", "replay"], 5)
                && at_least(&st, &["counters", "foreign_source"], 10)
        },
        &p,
        &s,
    );
    assert!(p.alive(), "the primary died:\n{}", p.log());
    primary_keeps_holding(&net, Duration::from_secs(2), &p, &s);
    let st = p.status();
    assert!(st["rx"]["accepted"].as_u64().is_some_and(|a| a > 0), "{st}");
    assert!(!has_event(&s.status(), "failover.takeover_started", ""), "{}", s.status());
}

/// The standby starts with the VIP on its interface (left by a crash while it held it):
/// it removes it rather than answering for an address the running primary holds.
#[test]
fn vip_left_on_the_standby_is_removed_at_start() {
    let net = Net::new();
    sh(&format!("ip -n {} addr add {}/24 dev pub label pub:1", net.s, net.vip()));
    assert!(net.has_vip(&net.s));
    let (p, s) = pair(&net);
    client_sees_within(&net, &net.mac(&net.p), Duration::from_secs(8), &p, &s);
    wait(
        Duration::from_secs(3),
        "the standby to record the removal",
        || has_event(&s.status(), "failover.release", "Startup"),
        &p,
        &s,
    );
    assert!(s.log().contains("already on its interface at start"), "{}", s.log());
}
