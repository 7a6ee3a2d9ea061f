//! Damaged packs, indexes and manifests are found by verify, named by image and path, and
//! never produce a silently corrupt deploy.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn setup() -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), noise(4 << 20, 9)).unwrap();
    std::fs::write(src.join("small"), b"tiny").unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    (sb, src)
}

#[test]
fn flipped_byte_in_a_pack_is_named_and_blocks_deploy() {
    let (sb, _src) = setup();
    let pack = files_in(&sb.data().join("store/packs")).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();

    let o = sb.run(&["images", "verify"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "verify passed a corrupt pack");
    assert!(text.contains("image img@1") && text.contains("/big") && text.contains("corrupt"), "{text}");
    assert!(!text.contains("/small"), "the intact file was blamed: {text}");

    let out = sb.path("out");
    let err = sb.fails(&["deploy", "img", out.to_str().unwrap()]);
    assert!(err.contains("/big") && err.contains("removed"), "{err}");
    assert!(!out.join("big").exists(), "a corrupt file was left in place");
}

#[test]
fn damaged_index_is_reported_then_rebuilt_from_its_pack() {
    let (sb, src) = setup();
    let idx = files_in(&sb.data().join("store/index")).remove(0);
    std::fs::write(&idx, b"garbage that is not an index").unwrap();
    let o = sb.run(&["images", "verify"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(text.contains("store index") && text.contains("missing") && text.contains("/big"), "{text}");
    // The next writer rebuilds the index from the self-describing pack.
    sb.ok(&["capture", "--name", "other", src.to_str().unwrap()]);
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    let out = sb.path("out");
    sb.ok(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "");
}

#[test]
fn truncated_pack_and_corrupt_manifest_are_faults_not_panics() {
    let (sb, _src) = setup();
    let pack = files_in(&sb.data().join("store/packs")).remove(0);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 3).unwrap();
    let o = sb.run(&["images", "verify"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("/big"));

    let mf = files_in(&sb.data().join("store/manifests")).remove(0);
    std::fs::write(&mf, b"\x28\xb5\x2f\xfd garbage").unwrap();
    let o = sb.run(&["images", "verify"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() && text.contains("manifest") && text.contains("img@1"), "{text}");
    let err = sb.fails(&["deploy", "img", sb.path("out").to_str().unwrap()]);
    assert!(err.contains("manifest"), "{err}");
    // gc refuses to run when it cannot read what an image reaches.
    let err = sb.fails(&["images", "gc"]);
    assert!(err.contains("manifest"), "{err}");
}
