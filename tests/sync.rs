//! Standby freshness between two real `understudy serve` processes in network
//! namespaces: the primary re-captures a tree on its `[capture]` schedule, the standby's
//! `[sync]` follows it into a target directory; the lag goes up while the standby is
//! behind and back to zero once it applied the newest version; a takeover during an
//! update stops it at a safe point.
//!
//! Topology: namespaces `p` (10.N.1.1) and `s` (10.N.1.2) joined by a veth pair `lan`
//! (HTTP; the VIP of the takeover test is 10.N.1.10 on it) and a veth pair `priv`
//! (10.N.2.x: the heartbeats, so that throttling `lan` never looks like a dead peer).
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Net {
    _netns: Netns,
    p: String,
    s: String,
    n: u8,
}

impl Net {
    fn new() -> Net {
        let mut netns = Netns::new("y");
        let (p, s) = (netns.add("p"), netns.add("s"));
        let n = netns.subnet;
        netns.veth(&p, "lan", &s, "lan");
        netns.addr(&p, "lan", &format!("10.{n}.1.1/24"));
        netns.addr(&s, "lan", &format!("10.{n}.1.2/24"));
        netns.veth(&p, "priv", &s, "priv");
        netns.addr(&p, "priv", &format!("10.{n}.2.1/24"));
        netns.addr(&s, "priv", &format!("10.{n}.2.2/24"));
        Net { _netns: netns, p, s, n }
    }

    fn has_vip(&self, ns: &str) -> bool {
        ns_out(ns, &["ip", "-br", "addr", "show", "dev", "lan"]).contains(&format!("10.{}.1.10/24", self.n))
    }
}

/// `serve` with `config` (data_dir is added) inside `ns`.
fn serve(sb: &Sandbox, ns: &str, config: &str) -> Server {
    std::fs::create_dir_all(sb.data()).unwrap();
    let cfg = sb.path("serve.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n{config}", sb.data())).unwrap();
    let log = std::fs::File::create(sb.path("serve.log")).unwrap();
    let mut c = ns_cmd(ns, bin());
    c.args(["serve", "--config", cfg.to_str().unwrap()]).stderr(log);
    Server::start_cmd(sb, &mut c)
}

fn log(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.path("serve.log")).unwrap_or_default()
}

fn api(srv: &Server, ns: &str, method: &str, path: &str) -> Value {
    let (code, body) = srv.curl_in(Some(ns), method, path, Some(&srv.token), None);
    assert!((200..300).contains(&code), "{method} {path}: {code} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A sample of the standby's `/metrics`: the value of `name` (a line `name VALUE`).
fn metric(srv: &Server, ns: &str, name: &str) -> Option<f64> {
    let (_, body) = srv.curl_in(Some(ns), "GET", "/metrics", None, None);
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait(what: &str, limit: Duration, logs: &[&Sandbox], mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > limit {
            let l: Vec<String> = logs.iter().map(|sb| log(sb)).collect();
            panic!("timed out waiting for {what}\n{}", l.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tree the primary captures; `round` changes it the way a live root changes.
fn tree(root: &Path, round: u32) {
    let p = |s: &str| root.join(s);
    match round {
        0 => {
            for d in ["etc/understudy", "usr/bin", "usr/lib/x", "var/lib/app", "srv/data"] {
                std::fs::create_dir_all(p(d)).unwrap();
            }
            std::fs::write(p("etc/motd"), b"welcome\n").unwrap();
            // The primary's own understudy config: never copied onto the standby.
            std::fs::write(p("etc/understudy/understudy.toml"), b"[failover]\nrole = \"primary\"\n").unwrap();
            std::fs::write(p("usr/bin/tool"), noise(300_000, 1)).unwrap();
            sh(&format!("chmod 0755 {}", p("usr/bin/tool").display()));
            std::fs::write(p("usr/lib/x/lib.so"), noise(2 << 20, 2)).unwrap();
            std::fs::write(p("var/lib/app/old.db"), noise(50_000, 3)).unwrap();
            std::os::unix::fs::symlink("../lib/x/lib.so", p("usr/bin/lib-link")).unwrap();
            std::fs::hard_link(p("usr/bin/tool"), p("usr/bin/tool-alias")).unwrap();
            xattr(&p("srv/data"), "user.owner", b"app");
        }
        1 => {
            // Append, a new file, a removal, metadata only.
            let mut f = std::fs::OpenOptions::new().append(true).open(p("etc/motd")).unwrap();
            std::io::Write::write_all(&mut f, b"maintenance on friday\n").unwrap();
            std::fs::write(p("srv/data/new.csv"), noise(120_000, 4)).unwrap();
            std::fs::remove_file(p("var/lib/app/old.db")).unwrap();
            sh(&format!("chmod 0700 {0} && chown 1234:2345 {0}", p("usr/lib/x/lib.so").display()));
            xattr(&p("srv/data"), "user.owner", b"ops");
        }
        _ => {
            // A changed middle of a large file, a new directory, a removed symlink.
            let mut lib = std::fs::read(p("usr/lib/x/lib.so")).unwrap();
            lib[1 << 20..(1 << 20) + 4096].copy_from_slice(&noise(4096, 5));
            std::fs::write(p("usr/lib/x/lib.so"), lib).unwrap();
            std::fs::create_dir_all(p("opt/new/bin")).unwrap();
            std::fs::write(p("opt/new/bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
            std::fs::remove_file(p("usr/bin/lib-link")).unwrap();
        }
    }
}

/// What differs between the primary's tree and the standby's target, leaving out what
/// the standby keeps as its own (its understudy config and state).
fn diff(src: &Path, dst: &Path) -> String {
    rsync_diff(src, dst, &["--exclude=/etc/understudy/", "--exclude=/var/lib/understudy/"])
}

struct Pair {
    net: Net,
    a: Sandbox,
    b: Sandbox,
    p: Server,
    s: Server,
    root: PathBuf,
    target: PathBuf,
}

impl Pair {
    /// The primary captures `root` every second; the standby follows into `target`,
    /// checking every 200 ms; with `failover`, both run it (the primary holding the VIP).
    fn start(failover: bool, max_lag: &str, sync_extra: &str, setup: impl FnOnce(&Path)) -> Pair {
        let net = Net::new();
        let n = net.n;
        let (a, b) = (Sandbox::new(), Sandbox::new());
        let (mut extra_p, mut extra_s) = (String::new(), String::new());
        if failover {
            std::fs::create_dir_all(a.data()).unwrap();
            std::fs::create_dir_all(b.data()).unwrap();
            let key = a.data().join("failover.key");
            a.ok(&["failover", "keygen", key.to_str().unwrap()]);
            std::fs::copy(&key, b.data().join("failover.key")).unwrap();
            let f = |node: &str, role: &str, me: u8, peer: u8| {
                format!(
                    "[failover]\nnode = \"{node}\"\nrole = \"{role}\"\ninterval = \"100ms\"\ndead_time = \"1s\"\n\
                     [[failover.channel]]\nname = \"private\"\nlocal = \"10.{n}.2.{me}\"\npeer = \"10.{n}.2.{peer}\"\n\
                     [[failover.vip]]\naddress = \"10.{n}.1.10/24\"\ninterface = \"lan\"\n"
                )
            };
            extra_p = f("head-a", "primary", 1, 2);
            extra_s = f("head-b", "standby", 2, 1);
        }
        let root = a.path("root");
        std::fs::create_dir_all(&root).unwrap();
        setup(&root);
        let p = serve(
            &a,
            &net.p,
            &format!(
                "[http]\nlisten = \"10.{n}.1.1:8080\"\n[capture]\nimage = \"head-a\"\nsource = {root:?}\n\
                 interval = \"1s\"\n{extra_p}"
            ),
        );
        // The primary's sync token, copied to the standby (as the join does): it reads image
        // content and reports freshness, nothing else.
        std::fs::create_dir_all(b.data()).unwrap();
        std::fs::copy(a.data().join("sync.token"), b.data().join("primary.token")).unwrap();
        let target = b.path("target");
        std::fs::create_dir_all(&target).unwrap();
        let s = serve(
            &b,
            &net.s,
            &format!(
                "[http]\nlisten = \"10.{n}.1.2:8080\"\n[sync]\nserver = \"http://10.{n}.1.1:8080\"\n\
                 token_file = \"primary.token\"\nimage = \"head-a\"\ntarget = {target:?}\ninterval = \"200ms\"\n\
                 max_lag = \"{max_lag}\"\n{sync_extra}{extra_s}"
            ),
        );
        Pair { net, a, b, p, s, root, target }
    }

    /// Stop the standby, forget its status file, start it again on the same config.
    fn restart_standby_without_its_status(&mut self) {
        self.s.stop();
        std::fs::remove_file(self.b.data().join("sync.json")).unwrap();
        let log = std::fs::File::options().append(true).open(self.b.path("serve.log")).unwrap();
        let mut c = ns_cmd(&self.net.s, bin());
        c.args(["serve", "--config", self.b.path("serve.toml").to_str().unwrap()]).stderr(log);
        self.s = Server::start_cmd(&self.b, &mut c);
    }

    fn lag(&self) -> Option<f64> {
        metric(&self.s, &self.net.s, "understudy_sync_lag_seconds")
    }

    fn follow(&self) -> Value {
        api(&self.s, &self.net.s, "GET", "/api/v1/sync")["follow"].clone()
    }

    fn capture_runs(&self) -> u64 {
        api(&self.p, &self.net.p, "GET", "/api/v1/sync")["capture"]["runs"].as_u64().unwrap()
    }

    /// Wait for two more scheduled captures: the second started after the change.
    fn wait_captures(&self) {
        let runs = self.capture_runs();
        wait("two more captures", Duration::from_secs(20), &[&self.a], || self.capture_runs() >= runs + 2);
    }

    fn wait_current(&self, what: &str) {
        wait(what, Duration::from_secs(30), &[&self.a, &self.b], || {
            let f = self.follow();
            self.lag() == Some(0.0) && f["state"] == "current" && f["partial"].is_null()
        });
    }
}

#[test]
fn a_standby_follows_two_successive_captures_and_its_lag_returns_to_zero() {
    let mut t = Pair::start(false, "2s", "", |r| tree(r, 0));
    t.wait_current("the first version applied");
    assert_eq!(diff(&t.root, &t.target), "", "{}", log(&t.b));
    assert!(!t.target.join("etc/understudy").exists(), "the primary's understudy config was copied");
    let first = t.follow()["applied"]["version"].as_i64().unwrap();
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(t.target.join("var/lib/understudy/deployed.json")).unwrap())
            .unwrap();
    assert!(rec["image"].as_str().unwrap().starts_with("head-a@"), "{rec}");

    for round in [1, 2] {
        // Paused, the standby still measures: it falls behind while the primary captures.
        t.s.curl_in(Some(&t.net.s), "POST", "/api/v1/sync/pause", Some(&t.s.token), None);
        let before = std::fs::read(t.target.join("etc/motd")).unwrap();
        tree(&t.root, round);
        t.wait_captures();
        wait("the lag to go up", Duration::from_secs(20), &[&t.a, &t.b], || t.lag().is_some_and(|l| l > 0.0));
        let f = t.follow();
        assert_eq!(f["state"], "paused", "{f}");
        assert_ne!(f["applied"]["manifest"], f["newest"]["manifest"], "{f}");
        assert_eq!(std::fs::read(t.target.join("etc/motd")).unwrap(), before, "a paused standby changed its root");
        assert_ne!(diff(&t.root, &t.target), "", "round {round}: the trees differ while paused");
        // Two captures behind a 2 s threshold: the alarm is raised.
        wait("the lag alarm", Duration::from_secs(20), &[&t.a, &t.b], || {
            metric(&t.s, &t.net.s, "understudy_sync_alarm") == Some(1.0)
        });
        t.s.curl_in(Some(&t.net.s), "POST", "/api/v1/sync/resume", Some(&t.s.token), None);
        t.wait_current(&format!("round {round} applied"));
        assert_eq!(diff(&t.root, &t.target), "", "round {round}\n{}", log(&t.b));
        assert_eq!(metric(&t.s, &t.net.s, "understudy_sync_alarm"), Some(0.0));
        assert_eq!(metric(&t.s, &t.net.s, "understudy_sync_pending_bytes"), Some(0.0));
    }
    let f = t.follow();
    assert!(f["applied"]["version"].as_i64().unwrap() > first + 3, "{f}");
    assert!(f["updates"].as_u64().unwrap() >= 3, "{f}");
    let (_, m) = t.s.curl_in(Some(&t.net.s), "GET", "/metrics", None, None);
    let v = f["applied"]["version"].as_i64().unwrap();
    assert!(
        m.lines().any(|l| l.starts_with("understudy_sync_applied_info{image=\"head-a\",") && l.contains("version=\"")),
        "{m}"
    );
    assert!(v > 0);
    let ev = t.b.json(&["events", "--kind", "sync.", "--json"]);
    let kinds: Vec<&str> = ev.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["sync.applied", "sync.lag_alarm", "sync.lag_cleared"] {
        assert!(kinds.contains(&k), "{k}: {kinds:?}");
    }
    // Started afresh, the standby learns what its root holds from deployed.json: current
    // at once, without an update.
    t.restart_standby_without_its_status();
    t.wait_current("the restarted standby current");
    let f = t.follow();
    assert_eq!(f["updates"], 0, "{f}");
    assert_eq!(f["applied"]["manifest"], f["newest"]["manifest"], "{f}");
    assert_eq!(diff(&t.root, &t.target), "");
    // The endpoint holds the primary's token: it is for the admin only.
    assert_eq!(t.s.curl_in(Some(&t.net.s), "GET", "/api/v1/sync", None, None).0, 401);
    assert_eq!(t.p.curl_in(Some(&t.net.p), "GET", "/api/v1/images/head-a/manifest", None, None).0, 401);
}

/// Every regular file of `dir`, relative.
fn files(dir: &Path) -> Vec<PathBuf> {
    let o = std::process::Command::new("find").arg(dir).args(["-type", "f", "-printf", "%P\\n"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from).collect()
}

#[test]
fn a_takeover_during_an_update_stops_it_at_a_safe_point() {
    // Without the replica, the update itself pulls the change from the primary (with it,
    // the replica would hold the bulk already and the update read it locally in a blink).
    let t = Pair::start(true, "1h", "replicate = false\n", |r| tree(r, 0));
    wait("the primary to hold the VIP", Duration::from_secs(15), &[&t.a, &t.b], || t.net.has_vip(&t.net.p));
    t.wait_current("the first version applied");
    // Unchanged captures go on every second: the standby relabels, the content stays.
    let old_manifest = t.follow()["applied"]["manifest"].as_str().unwrap().to_string();
    let old = t.a.path("old");
    sh(&format!("cp -a {}/. {}", t.root.display(), old.display()));

    // A large change, pulled over a throttled link: the update runs for seconds.
    t.s.curl_in(Some(&t.net.s), "POST", "/api/v1/sync/pause", Some(&t.s.token), None);
    std::fs::create_dir_all(t.root.join("srv/bulk")).unwrap();
    for i in 0..160u64 {
        std::fs::write(t.root.join(format!("srv/bulk/f{i:03}")), noise(256 << 10, 100 + i)).unwrap();
    }
    std::fs::write(t.root.join("etc/motd"), b"new motd\n").unwrap();
    t.wait_captures();
    ns_sh(&t.net.p, "tc qdisc add dev lan root tbf rate 40mbit burst 32kbit latency 50ms");
    t.s.curl_in(Some(&t.net.s), "POST", "/api/v1/sync/resume", Some(&t.s.token), None);
    wait("the update to run", Duration::from_secs(20), &[&t.b], || {
        metric(&t.s, &t.net.s, "understudy_sync_pending_bytes").is_some_and(|b| b > 0.0)
    });
    t.b.ok(&["failover", "takeover"]);
    wait("the standby to take over", Duration::from_secs(20), &[&t.a, &t.b], || {
        t.net.has_vip(&t.net.s) && !t.net.has_vip(&t.net.p)
    });
    wait("the update to stop", Duration::from_secs(20), &[&t.b], || t.follow()["state"] == "held");
    let f = t.follow();
    assert_eq!(f["applied"]["manifest"], old_manifest.as_str(), "{f}");
    assert_eq!(f["partial"]["manifest"], f["newest"]["manifest"], "{f}");
    let old_label = f["applied"]["label"].as_str().unwrap().to_string();
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(t.target.join("var/lib/understudy/deployed.json")).unwrap())
            .unwrap();
    assert_eq!(rec["image"], old_label.as_str(), "deployed.json names the version run completely");
    assert_eq!(rec["manifest"], old_manifest.as_str());
    // Every path is its old or its new version; nothing half-written is left.
    let got = files(&t.target);
    let bulk = got.iter().filter(|p| p.starts_with("srv/bulk")).count();
    assert!(bulk < 160, "the update was not stopped before its end");
    for p in &got {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with(".ustmp"), "a temporary is left: {}", p.display());
        if p.starts_with("var/lib/understudy") {
            continue;
        }
        let data = std::fs::read(t.target.join(p)).unwrap();
        let was = std::fs::read(old.join(p)).ok();
        let is = std::fs::read(t.root.join(p)).ok();
        assert!(Some(&data) == was.as_ref() || Some(&data) == is.as_ref(), "{} is neither old nor new", p.display());
    }
    // Holding the VIP, the standby follows nobody: the partial update stays as it is.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(files(&t.target).len(), got.len());
    let out = t.b.ok(&["failover", "status"]);
    assert!(out.contains("sync head-a") && out.contains("PARTIAL update to"), "{out}");
    let ev = t.b.json(&["events", "--kind", "sync.stopped", "--json"]);
    let msg = ev[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("safe point (for a takeover)") && msg.contains(&old_label), "{ev}");

    // Handed back, the standby finishes the update.
    ns_sh(&t.net.p, "tc qdisc del dev lan root");
    t.b.ok(&["failover", "release"]);
    wait("the primary to hold again", Duration::from_secs(20), &[&t.a, &t.b], || {
        t.net.has_vip(&t.net.p) && !t.net.has_vip(&t.net.s)
    });
    t.wait_current("the update completed after the release");
    assert_eq!(diff(&t.root, &t.target), "");
}

/// The pair heals itself: the standby holds the versions it follows in its own store, so
/// once the primary is dead and the standby took over, it serves the image to a fresh
/// deploy with no other server.
#[test]
fn after_a_takeover_the_new_primary_serves_the_image_from_its_replica() {
    let mut t = Pair::start(true, "1h", "", |r| tree(r, 0));
    wait("the primary to hold the VIP", Duration::from_secs(15), &[&t.a, &t.b], || t.net.has_vip(&t.net.p));
    t.wait_current("the first version applied");
    let replica_current = |t: &Pair| {
        let f = t.follow();
        !f["replica"].is_null()
            && f["replica"]["manifest"] == f["newest"]["manifest"]
            && metric(&t.s, &t.net.s, "understudy_sync_replica_current") == Some(1.0)
    };
    wait("the first replica", Duration::from_secs(30), &[&t.a, &t.b], || replica_current(&t));
    let first = t.follow()["replicated_bytes"].as_u64().unwrap();
    assert!(first > 2 << 20, "the first replica pulls the whole image: {}", t.follow());
    // A change: the replica takes only the chunks it lacks.
    tree(&t.root, 2);
    t.wait_captures();
    t.wait_current("the change applied");
    wait("the changed replica", Duration::from_secs(30), &[&t.a, &t.b], || replica_current(&t));
    let f = t.follow();
    let more = f["replicated_bytes"].as_u64().unwrap() - first;
    assert!(more > 0 && more < 1 << 20, "the change pulled {more} bytes: {f}");
    // The update read the change from the replica: it crossed the network once.
    let ev = t.b.json(&["events", "--kind", "sync.applied", "--json"]);
    assert!(ev[0]["message"].as_str().unwrap_or_default().contains("(from this node's replica)"), "{ev}");
    assert_eq!(diff(&t.root, &t.target), "");
    // The replica keeps the primary's numbers, creation times and layout state.
    let label = f["replica"]["label"].as_str().unwrap().to_string();
    let there = api(&t.p, &t.net.p, "GET", &format!("/api/v1/images/{label}"));
    let here = api(&t.s, &t.net.s, "GET", &format!("/api/v1/images/{label}"));
    for k in ["id", "version", "created", "entries", "bytes"] {
        assert_eq!(here["image"][k], there["image"][k], "{k}: {here} vs {there}");
    }
    assert!(here["image"]["source"].as_str().unwrap().starts_with("replica of head-a@"), "{here}");
    let ev = t.b.json(&["events", "--kind", "image.replica", "--json"]);
    assert!(!ev.as_array().unwrap().is_empty(), "{ev}");
    // The primary sees its standby's freshness: the standby reports after every check.
    wait("the standby's report on the primary", Duration::from_secs(10), &[&t.a, &t.b], || {
        let r = api(&t.p, &t.net.p, "GET", "/api/v1/sync");
        let s = &r["standbys"][0];
        s["node"] == "head-b"
            && s["status"]["applied"]["manifest"] == f["newest"]["manifest"]
            && s["status"]["replica"]["manifest"] == f["newest"]["manifest"]
    });
    let (_, m) = t.p.curl_in(Some(&t.net.p), "GET", "/metrics", None, None);
    assert!(m.contains("understudy_standby_lag_seconds{standby=\"head-b\",image=\"head-a\"} 0.000"), "{m}");
    // The standby's token follows and reports, and does nothing else on the primary.
    let follower = std::fs::read_to_string(t.b.data().join("primary.token")).unwrap().trim().to_string();
    let (code, who) = t.p.curl_in(Some(&t.net.p), "GET", "/api/v1/whoami", Some(&follower), None);
    assert!(code == 200 && who.contains("\"follower\""), "{code} {who}");
    for (method, path) in
        [("DELETE", "/api/v1/images/head-a"), ("POST", "/api/v1/failover/takeover"), ("GET", "/api/v1/sync")]
    {
        assert_eq!(t.p.curl_in(Some(&t.net.p), method, path, Some(&follower), None).0, 403, "{method} {path}");
    }

    // The primary dies; the standby takes over.
    t.p.child.kill().unwrap();
    let _ = t.p.child.wait();
    wait("the standby to take over", Duration::from_secs(20), &[&t.b], || t.net.has_vip(&t.net.s));
    // A fresh machine on the LAN (the dead primary's namespace) deploys from the new primary.
    let dest = t.a.path("fresh");
    let url = format!("http://10.{}.1.2:8080", t.net.n);
    let mut deploy = ns_cmd(&t.net.p, bin());
    deploy.args(["--server", &url, "--token", &t.s.token, "deploy", "head-a", dest.to_str().unwrap()]);
    let out = deploy.env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), log(&t.b));
    assert_eq!(rsync_diff(&t.root, &dest, &[]), "", "the deployed tree is not the primary's");
    // And it holds the version the old primary made last, under the same name.
    let newest = api(&t.s, &t.net.s, "GET", "/api/v1/images/head-a");
    assert_eq!(newest["image"]["id"], f["newest"]["manifest"], "{newest}");
}
