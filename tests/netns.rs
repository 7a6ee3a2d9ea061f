//! The namespace fixture of tests/common/netns.rs itself: names unique per fixture,
//! commands that run inside, and a teardown that leaves nothing behind when a test panics.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether the named namespace still exists (`ip netns add` binds it under /run/netns).
fn listed(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Whether `pid` is still a live process (a zombie is dead; it only waits to be reaped).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn a_panicking_test_leaves_no_namespace_or_process_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let run = std::thread::spawn(move || {
        let mut n = Netns::new("x");
        let (a, b) = (n.add("a"), n.add("b"));
        n.veth(&a, "va", &b, "vb");
        n.bridge(&b, "br0");
        n.attach(&b, "vb", "br0");
        n.tap(&a, "tap0");
        n.addr(&a, "va", &format!("10.{}.0.1/24", n.subnet));
        // A daemon the test never gets a handle to: only the namespace knows it.
        let pid = ns_out(&a, &["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]).trim().to_string();
        assert!(alive(&pid), "no daemon started ({pid:?})");
        tx.send((a, b, pid)).unwrap();
        panic!("the test fails here");
    });
    assert!(run.join().is_err(), "the test thread did not panic");
    let (a, b, pid) = rx.recv().unwrap();
    assert!(!listed(&a) && !listed(&b), "namespaces {a} {b} left behind");
    let t = Instant::now();
    while alive(&pid) {
        assert!(t.elapsed() < Duration::from_secs(5), "process {pid} from {a} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn names_are_unique_and_commands_run_inside() {
    let (mut x, mut y) = (Netns::new("x"), Netns::new("x"));
    let (a, b) = (x.add("a"), y.add("a"));
    assert_ne!(a, b, "two fixtures share a namespace name");
    assert_ne!(x.subnet, y.subnet);
    assert_eq!(x.spaces(), std::slice::from_ref(&a));
    let c = x.add("c");
    x.veth(&a, "va", &c, "vc");
    x.addr(&a, "va", &format!("10.{}.0.1/24", x.subnet));
    x.addr(&c, "vc", &format!("10.{}.0.2/24", x.subnet));
    // Inside `a`: its loopback and its end of the pair, nothing of the host's.
    let links = ns_out(&a, &["ip", "-br", "link"]);
    let names: Vec<&str> =
        links.lines().filter_map(|l| l.split_whitespace().next()).map(|n| n.split('@').next().unwrap_or(n)).collect();
    assert_eq!(names, ["lo", "va"], "{links}");
    // The pair carries traffic between the namespaces.
    ns_sh(&a, &format!("ping -c1 -W2 10.{}.0.2 >/dev/null", x.subnet));
    let (a2, c2) = (a.clone(), c.clone());
    drop(x);
    assert!(!listed(&a2) && !listed(&c2), "dropped fixture left {a2} or {c2}");
    assert!(listed(&b), "dropping one fixture removed another's namespace");
}
