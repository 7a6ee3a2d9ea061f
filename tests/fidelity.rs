//! Capture then deploy reproduces a tree exactly, as rsync (a tool we did not write)
//! sees it, and as a second capture of the deployed tree sees it.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;

#[test]
fn capture_deploy_round_trip_is_exact() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, true);
    let cap = sb.json(&["capture", "--name", "tricky", "--json", src.to_str().unwrap()]);
    assert_eq!(cap["version"], 1);
    assert!(cap["warnings"].as_array().unwrap().is_empty(), "{cap}");
    let out = sb.path("out");
    sb.ok(&["deploy", "tricky", out.to_str().unwrap()]);

    // rsync cannot walk paths beyond PATH_MAX, so it compares everything but that chain.
    let diff = rsync_diff(&src, &out, &["--exclude=/deep/*"]);
    assert_eq!(diff, "", "rsync sees differences");
    assert_eq!(read_deep(&out), b"at the bottom of a very long path");
    // Sparse files stay sparse.
    assert!(allocated(&out.join("sparse")) < 2 << 20, "sparse file was filled in: {}", allocated(&out.join("sparse")));
    assert!(allocated(&out.join("all-hole")) < 64 << 10);

    // The deployed tree, captured again, is the same image down to the manifest id:
    // every name, type, mode, owner, nanosecond mtime, xattr, hole and link (the long
    // path included) matches.
    let again = sb.json(&["capture", "--name", "tricky-deployed", "--json", out.to_str().unwrap()]);
    assert_eq!(again["id"], cap["id"]);
    assert_eq!(again["added_bytes"], 0, "deployed data should dedupe completely");
}

#[test]
fn export_import_round_trip_is_exact() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, true);
    let cap = sb.json(&["capture", "--name", "t", "--json", src.to_str().unwrap()]);
    let tar = sb.path("t.tar");
    sb.ok(&["images", "export", "t", "-o", tar.to_str().unwrap()]);

    // Our own import gives back the same image, except for the socket tar cannot hold.
    let imp = sb.json(&["images", "import", "--name", "back", "--json", tar.to_str().unwrap()]);
    assert_eq!(imp["entries"].as_i64().unwrap(), cap["entries"].as_i64().unwrap() - 1);
    let out = sb.path("from-import");
    sb.ok(&["deploy", "back", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &["--exclude=/deep/*", "--exclude=/sock"]), "");
    assert_eq!(read_deep(&out), b"at the bottom of a very long path");
    assert!(allocated(&out.join("sparse")) < 2 << 20);
}

#[test]
fn gnu_tar_extracts_our_export() {
    // GNU tar (which, like rsync, stops at PATH_MAX) reads our archive: content, owners,
    // modes, links, devices, holes, nanosecond times and xattrs.
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, false);
    sb.ok(&["capture", "--name", "t", src.to_str().unwrap()]);
    let tar = sb.path("t.tar");
    sb.ok(&["images", "export", "t", "-o", tar.to_str().unwrap()]);
    let gnu = sb.path("gnu");
    std::fs::create_dir(&gnu).unwrap();
    sh(&format!("tar --xattrs --xattrs-include='*' --numeric-owner -xpf '{}' -C '{}'", tar.display(), gnu.display()));
    assert_eq!(rsync_diff(&src, &gnu, &["--exclude=/sock"]), "");
    assert!(allocated(&gnu.join("sparse")) < 2 << 20, "GNU tar filled the holes");
}

#[test]
fn gnu_tar_archive_imports_with_everything() {
    // A tar made by GNU tar (the way a debootstrap tree is packed) imports intact.
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, false);
    let tar = sb.path("gnu.tar");
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --acls --sparse --numeric-owner -cpf '{}' -C '{}' .",
        tar.display(),
        src.display()
    ));
    sb.ok(&["images", "import", "--name", "gnu", tar.to_str().unwrap()]);
    let out = sb.path("out");
    sb.ok(&["deploy", "gnu", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &["--exclude=/sock"]), "");
}
