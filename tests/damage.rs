//! Damaged packs, indexes and manifests are found by verify, named by image and path, and
//! never produce a silently corrupt deploy.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

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

#[test]
fn a_damaged_block_names_every_file_whose_chunk_it_holds() {
    use std::collections::{BTreeSet, HashMap};
    use understudy::store::pack;
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Small files, one chunk each (id = BLAKE3 of the file), spread over a few blocks.
    let mut by_id = HashMap::new();
    for i in 0..400u64 {
        let body = format!("file {i} says hello\n").repeat(300 + i as usize);
        by_id.insert(*blake3::hash(body.as_bytes()).as_bytes(), format!("/f{i:03}"));
        std::fs::write(src.join(format!("f{i:03}")), body).unwrap();
    }
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let pack_path = files_in(&sb.data().join("store/packs")).remove(0);
    let good = std::fs::read(&pack_path).unwrap();
    // The first block record: the files it holds, where its table and its frame are.
    let mut off = pack::PACK_HEADER_LEN;
    let (victims, table_at, frame_at) = loop {
        let (id, flags, raw, stored) = pack::parse_record_header(&good[off..]).unwrap();
        let start = off + pack::RECORD_HEADER_LEN;
        let payload = &good[start..start + stored as usize];
        if flags == pack::FLAG_BLOCK {
            let (table, table_len) = pack::parse_block_table(payload, &id, raw).unwrap();
            let names: BTreeSet<String> = table.iter().map(|c| by_id[&c.id].clone()).collect();
            break (names, start + 4 + 40, start + table_len + (stored as usize - table_len) / 2);
        }
        off = start + stored as usize;
    };
    assert!(victims.len() > 1 && victims.len() < 400, "{} files in the block", victims.len());
    let named_after_flip = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&pack_path, &bad).unwrap();
        let o = sb.run(&["images", "verify"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(!o.status.success(), "verify passed a damaged block");
        let named: BTreeSet<String> = by_id
            .values()
            .filter(|p| text.lines().any(|l| l.contains("image img@1") && l.ends_with(&format!("affects {p}"))))
            .cloned()
            .collect();
        (named, text)
    };
    // A damaged table makes the whole block unreadable: every file in it is named.
    let (named, text) = named_after_flip(table_at);
    assert_eq!(named, victims, "verify must name exactly the files of the damaged block:\n{text}");
    // Damage inside the compressed data is caught by zstd or by the chunk hashes; either
    // way only files of that block are named.
    let (named, text) = named_after_flip(frame_at);
    assert!(!named.is_empty() && named.is_subset(&victims), "{text}");
    std::fs::write(&pack_path, &good).unwrap();
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
}
