//! Re-captures read only what changed and store only new chunks.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;

/// Files changed within the timestamp granularity before a capture are read again by the
/// next one (their ctime could hide a later change), so the trees here are left to settle
/// for longer than that first.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(250));
}

#[test]
fn unchanged_recapture_reads_nothing_and_adds_nothing() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, false);
    settle();
    let first = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    assert!(first["read_bytes"].as_u64().unwrap() > 3 << 20);
    let second = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    assert_eq!(second["version"], 2);
    assert_eq!(second["id"], first["id"], "same tree, same manifest");
    assert_eq!(second["read_bytes"], 0, "unchanged files must not be read: {second}");
    assert_eq!(second["added_bytes"], 0);
    assert_eq!(second["reused_files"], second["files"]);
}

#[test]
fn changed_tree_stores_only_new_chunks() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // 40 files of 1 MiB of incompressible data, then change one in the middle.
    for i in 0..40u64 {
        std::fs::write(src.join(format!("f{i:02}")), noise(1 << 20, i + 100)).unwrap();
    }
    settle();
    let first = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    let mut data = noise(1 << 20, 120);
    data.splice(500_000..500_000, b"an insertion that shifts everything after it".iter().copied());
    std::fs::write(src.join("f20"), &data).unwrap();
    let second = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["reused_files"], 39);
    assert_eq!(second["read_bytes"].as_u64().unwrap(), data.len() as u64, "only the changed file is read");
    let added = second["added_bytes"].as_u64().unwrap();
    // Content-defined chunking: only the chunk(s) around the insertion are new.
    assert!(added > 0 && added < 600 << 10, "added {added} bytes for one insertion");

    // Both versions deploy correctly.
    let out1 = sb.path("v1");
    let out2 = sb.path("v2");
    sb.ok(&["deploy", "img@1", out1.to_str().unwrap()]);
    sb.ok(&["deploy", "img", out2.to_str().unwrap()]);
    assert_eq!(std::fs::read(out1.join("f20")).unwrap(), noise(1 << 20, 120));
    assert_eq!(std::fs::read(out2.join("f20")).unwrap(), data);
    assert_eq!(rsync_diff(&src, &out2, &[]), "");
}

#[test]
fn versions_are_addressable_by_name_version_and_id() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"one").unwrap();
    let v1 = sb.json(&["capture", "--name", "x", "--json", src.to_str().unwrap()]);
    std::fs::write(src.join("a"), b"two").unwrap();
    sb.ok(&["capture", "--name", "x", src.to_str().unwrap()]);
    let list = sb.json(&["images", "list", "--json"]);
    let arr = list.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    for k in ["name", "id", "version", "created", "files", "bytes", "stored_bytes"] {
        assert!(arr[0].get(k).is_some(), "images list lacks {k}");
    }
    let id = v1["id"].as_str().unwrap();
    let by_id = sb.json(&["images", "show", &id[..12], "--json"]);
    assert_eq!(by_id["image"]["version"], 1);
    let newest = sb.json(&["images", "show", "x", "--json"]);
    assert_eq!(newest["image"]["version"], 2);
    assert!(sb.fails(&["images", "show", "x@9"]).contains("no image"));
    // Deleting v1 keeps v2 deployable after gc.
    sb.ok(&["images", "delete", "x@1"]);
    let gc = sb.json(&["images", "gc", "--json"]);
    assert_eq!(gc["removed_manifests"], 1);
    let out = sb.path("out");
    sb.ok(&["deploy", "x", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"two");
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    // Versions are never reused after a delete.
    let v3 = sb.json(&["capture", "--name", "x", "--json", src.to_str().unwrap()]);
    assert_eq!(v3["version"], 3);
}

#[test]
fn gc_waits_for_a_running_capture_and_keeps_its_data() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..150u64 {
        std::fs::write(src.join(format!("f{i:03}")), noise(1 << 20, i)).unwrap();
    }
    let old = sb.path("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("x"), noise(1 << 20, 999)).unwrap();
    sb.ok(&["capture", "--name", "old", old.to_str().unwrap()]);
    sb.ok(&["images", "delete", "old"]);

    let capture = sb.cmd(&["capture", "--name", "live", "-q", src.to_str().unwrap()]).spawn().unwrap();
    // Start gc once the capture holds the store lock (a fixed sleep loses on a busy
    // machine): util-linux's flock cannot take it exclusively then.
    let lock = sb.data().join("store/lock");
    let t = std::time::Instant::now();
    while !lock.exists()
        || std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the capture never took the store lock");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let gc = sb.cmd(&["images", "gc", "--json"]).env("RUST_LOG", "info").output().unwrap();
    let out = capture.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert!(
        String::from_utf8_lossy(&gc.stderr).contains("waiting for the store lock"),
        "gc did not wait: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(rep["removed_manifests"], 1, "only the deleted image goes: {rep}");
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    let dst = sb.path("dst");
    sb.ok(&["deploy", "live", dst.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &dst, &[]), "");
}

#[test]
fn small_edits_are_stored_as_deltas_whose_bases_survive_gc() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let text: Vec<u8> = (0..3000)
        .flat_map(|i| format!("line {i}: configuration value {} for host node{}\n", i * 7, i % 13).into_bytes())
        .collect();
    std::fs::write(src.join("config"), &text).unwrap();
    std::fs::write(src.join("log"), &text[..20_000]).unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    // Overwrite 2 KB in the middle of one file, append 2 KB to the other.
    let mut edited = text.clone();
    edited[50_000..52_000].copy_from_slice(&noise(2000, 3));
    std::fs::write(src.join("config"), &edited).unwrap();
    let mut appended = text[..20_000].to_vec();
    appended.extend_from_slice(&noise(2000, 4));
    std::fs::write(src.join("log"), &appended).unwrap();
    let v2 = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    let added = v2["added_bytes"].as_u64().unwrap();
    // 4 KB of incompressible change: whole new chunks would cost far more than this.
    assert!(added < 8_000, "a 4 KB change added {added} bytes");
    // The first version goes; its chunks that v2's deltas stand on must stay.
    sb.ok(&["images", "delete", "img@1"]);
    sb.ok(&["images", "gc"]);
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    let out = sb.path("out");
    sb.ok(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("config")).unwrap(), edited);
    assert_eq!(std::fs::read(out.join("log")).unwrap(), appended);
    // Over HTTP the delta chunks travel whole (the client may lack their bases).
    let srv = Server::start(&sb, "");
    let rout = sb.path("remote");
    sb.ok(&["--server", &srv.url, "--token", &srv.token, "deploy", "img", rout.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &rout, &[]), "");
}

#[test]
fn gc_rewrites_blocks_that_lost_some_of_their_chunks() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Small files share solid blocks; one big incompressible file has records of its own
    // and blocks of its chunks.
    // Incompressible, so that the dead chunks are a large enough share of the pack for
    // gc to rewrite it.
    for i in 0..600u64 {
        std::fs::write(src.join(format!("s{i:03}")), noise(1500 + (i as usize % 7) * 100, 1000 + i)).unwrap();
    }
    std::fs::write(src.join("big"), noise(1 << 20, 7)).unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    // Two thirds of the small files go; v1 is deleted, so their chunks become garbage
    // inside blocks that also hold live chunks.
    for i in (0..600u64).filter(|i| i % 3 != 0) {
        std::fs::remove_file(src.join(format!("s{i:03}"))).unwrap();
    }
    let v2 = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    assert_eq!(v2["added_bytes"], 0, "dropping files adds nothing: {v2}");
    sb.ok(&["images", "delete", "img@1"]);
    let packs_before = allocated_files(&sb.data().join("store/packs"));
    let gc = sb.json(&["images", "gc", "--json"]);
    assert_eq!(gc["removed_manifests"], 1, "{gc}");
    assert!(gc["rewritten_packs"].as_u64().unwrap() >= 1, "{gc}");
    assert!(gc["freed_bytes"].as_u64().unwrap() > 0, "{gc}");
    assert!(allocated_files(&sb.data().join("store/packs")) < packs_before);
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    let out = sb.path("out");
    sb.ok(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "");
    // A second gc finds nothing left to do.
    let again = sb.json(&["images", "gc", "--json"]);
    assert_eq!(again["rewritten_packs"], 0, "{again}");
    assert_eq!(again["removed_packs"], 0, "{again}");
}

/// Total size of the files in a directory.
fn allocated_files(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// Unchanged directories are not listed again, yet every change below them is seen: a
/// file added, removed or renamed deep in the tree, a symlink retargeted, an xattr set on
/// a directory, and a name the last capture excluded.
#[test]
fn unchanged_directories_are_reused_and_every_change_is_seen() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    for d in ["etc/app/conf.d", "usr/lib/x/y", "usr/share/doc/z", "var/lib/state"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/app/conf.d/a.conf"), b"a").unwrap();
    std::fs::write(src.join("usr/lib/x/y/lib.so"), b"lib").unwrap();
    std::fs::write(src.join("usr/share/doc/z/README"), b"readme").unwrap();
    std::fs::write(src.join("var/lib/state/skipme"), b"excluded at first").unwrap();
    std::os::unix::fs::symlink("lib.so", src.join("usr/lib/x/y/lib.so.1")).unwrap();
    settle();
    let s = src.to_str().unwrap();
    let first = sb.json(&["capture", "--name", "img", "--json", "--exclude", "skipme", s]);
    let again = sb.json(&["capture", "--name", "img", "--json", "--exclude", "skipme", s]);
    assert_eq!(again["id"], first["id"]);
    assert!(again["reused_dirs"].as_u64().unwrap() >= 10, "unchanged directories were listed again: {again}");

    std::fs::write(src.join("usr/lib/x/y/new.so"), b"new").unwrap();
    std::fs::remove_file(src.join("usr/share/doc/z/README")).unwrap();
    std::fs::rename(src.join("etc/app/conf.d/a.conf"), src.join("etc/app/conf.d/b.conf")).unwrap();
    std::fs::remove_file(src.join("usr/lib/x/y/lib.so.1")).unwrap();
    std::os::unix::fs::symlink("new.so", src.join("usr/lib/x/y/lib.so.1")).unwrap();
    sh(&format!("setfattr -n user.tag -v blue {}", src.join("var/lib").display()));
    // Without the exclude: the name it hid is captured although its directory is unchanged.
    let changed = sb.json(&["capture", "--name", "img", "--json", s]);
    assert_ne!(changed["id"], first["id"]);
    let out = sb.path("out");
    sb.ok(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "", "the re-capture missed a change");
    assert_eq!(std::fs::read(out.join("var/lib/state/skipme")).unwrap(), b"excluded at first");
}

/// Hard links between subtrees that different walker threads take: the first path in
/// order holds the data whichever thread got there first, the rest link to it, and the
/// manifest is the same on every capture.
#[test]
fn hard_links_across_parallel_subtrees_are_exact_and_deterministic() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    for top in ["a", "m", "z"] {
        for sub in 0..6 {
            let d = src.join(format!("{top}/d{sub}/deep"));
            std::fs::create_dir_all(&d).unwrap();
            for f in 0..20 {
                std::fs::write(d.join(format!("f{f}")), format!("{top}{sub}{f}")).unwrap();
            }
        }
    }
    std::fs::write(src.join("z/d5/deep/shared"), b"one inode, four names").unwrap();
    for link in ["a/d0/deep/shared", "m/d3/shared", "z/d0/deep/shared2"] {
        std::fs::hard_link(src.join("z/d5/deep/shared"), src.join(link)).unwrap();
    }
    let s = src.to_str().unwrap();
    let first = sb.json(&["capture", "--name", "img", "--json", s]);
    assert_eq!(first["files"], 18 * 20 + 1, "one file per inode: {first}");
    for i in 0..3 {
        let again = sb.json(&["capture", "--name", "other", "--json", s]);
        assert_eq!(again["id"], first["id"], "capture {i} gave another manifest");
    }
    let out = sb.path("out");
    sb.ok(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "");
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(out.join(p)).unwrap());
    let first_ino = ino("a/d0/deep/shared");
    for p in ["m/d3/shared", "z/d0/deep/shared2", "z/d5/deep/shared"] {
        assert_eq!(ino(p), first_ino, "{p} is not linked");
    }
}
