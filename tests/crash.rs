//! A capture killed with SIGKILL at any moment leaves a store that verifies, lists no
//! partial image, and is reused by the next capture.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;
use std::time::Duration;

fn packs(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.data().join("store/packs")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn killed_captures_leave_a_consistent_reusable_store() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..120u64 {
        std::fs::write(src.join(format!("big{i:03}")), noise(1 << 20, i)).unwrap();
    }
    for i in 0..2000u64 {
        std::fs::write(
            src.join("small").join(format!("s{i}")),
            format!("small file {i}\n").repeat(i as usize % 50 + 1),
        )
        .unwrap();
    }
    // How long a whole capture of this tree takes here and now (in a store of its own), so
    // the kills land inside one on a fast machine and on a loaded one alike.
    let probe = Sandbox::new();
    let t = std::time::Instant::now();
    probe.ok(&["capture", "--name", "big", "-q", src.to_str().unwrap()]);
    let full = t.elapsed().as_millis() as u64;
    // Kill at increasing fractions of it; the later ones land after some packs are sealed.
    // A round that beats its kill leaves a complete image (and a warm cache, which makes
    // the next rounds faster), so the largest fractions come last.
    let mut killed = 0;
    for (round, ms) in [1u64, 5, 12, 25, 40, 60, 80].map(|pct| (full * pct / 100).max(2)).into_iter().enumerate() {
        let mut child = sb.cmd(&["capture", "--name", "big", "-q", src.to_str().unwrap()]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let list = sb.json(&["images", "list", "--json"]);
        let n = list.as_array().unwrap().len();
        if finished {
            // It beat the kill: that is allowed, but then it is complete.
            assert_eq!(n, 1, "round {round}");
            sb.ok(&["images", "delete", "big"]);
        } else {
            assert_eq!(n, 0, "round {round}: a killed capture left an image: {list}");
            killed += 1;
        }
        let v = sb.run(&["images", "verify"]);
        assert!(
            v.status.success(),
            "round {round} (kill at {ms} ms): verify failed:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    assert!(killed >= 3, "only {killed} captures were killed mid-way");
    let sealed = packs(&sb);
    eprintln!("{killed} captures killed; {sealed} packs survived them");
    let cap = sb.json(&["capture", "--name", "big", "--json", src.to_str().unwrap()]);
    let stored = cap["stored_bytes"].as_u64().unwrap();
    let added = cap["added_bytes"].as_u64().unwrap();
    if sealed > 0 {
        assert!(added < stored, "packs written by killed captures were not reused ({added} of {stored})");
    }
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    let out = sb.path("out");
    sb.ok(&["deploy", "big", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "");
    // Leftovers of the killed runs are gone once gc has run.
    sb.ok(&["images", "gc"]);
    assert_eq!(std::fs::read_dir(sb.data().join("store/tmp")).unwrap().count(), 0);
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
}
