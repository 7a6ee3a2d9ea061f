//! Hostile archives, unreadable sources, a full disk and bad names: clear errors, nothing
//! written outside the target, and a consistent store afterwards.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;
use std::process::Command;

/// Build a tar with Python's tarfile module (a writer we did not write).
fn py_tar(path: &std::path::Path, script: &str) {
    let prog = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT)\n\
         def f(name, data=b'x', **kw):\n    i = tarfile.TarInfo(name); i.size = len(data)\n    for k, v in kw.items(): setattr(i, k, v)\n    t.addfile(i, io.BytesIO(data))\n\
         def d(name):\n    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\n\
         def sl(name, target):\n    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)\n\
         def hl(name, target):\n    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)\n\
         {script}\nt.close()\n",
        path.to_str().unwrap()
    );
    let o = Command::new("python3").arg("-c").arg(&prog).output().expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn hostile_tars_are_rejected_or_confined() {
    let sb = Sandbox::new();
    let cases = [
        ("dotdot", "d('a')\nf('a/../../escaped')", "'..'"),
        ("symlink-escape", "sl('link', '/tmp')\nf('link/pwned')", "not a directory"),
        ("symlink-escape-rel", "sl('up', '../..')\nf('up/pwned')", "not a directory"),
        ("hardlink-escape", "hl('h', '../../etc/passwd')", "'..'"),
        ("hardlink-missing", "hl('h', 'nowhere')", "hard link"),
        ("hardlink-to-dir", "d('x')\nhl('h', 'x')", "hard link"),
        ("dir-over-file", "f('a')\nd('a')", "replaces"),
    ];
    for (name, script, why) in cases {
        let tar = sb.path(&format!("{name}.tar"));
        py_tar(&tar, script);
        let err = sb.fails(&["images", "import", "--name", name, tar.to_str().unwrap()]);
        assert!(err.contains("rejected") && err.contains(why), "{name}: {err}");
    }
    assert_eq!(sb.json(&["images", "list", "--json"]).as_array().unwrap().len(), 0);
    assert!(!sb.dir.path().join("escaped").exists());

    // Absolute paths are confined to the image, as GNU tar does.
    let tar = sb.path("abs.tar");
    py_tar(&tar, "f('/etc/evil', b'confined')");
    sb.ok(&["images", "import", "--name", "abs", tar.to_str().unwrap()]);
    let out = sb.path("out");
    sb.ok(&["deploy", "abs", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("etc/evil")).unwrap(), b"confined");

    // Garbage and truncated archives: an error, not a panic.
    let junk = sb.path("junk.tar");
    std::fs::write(&junk, noise(10_000, 5)).unwrap();
    let err = sb.fails(&["images", "import", "--name", "junk", junk.to_str().unwrap()]);
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    let whole = sb.path("whole.tar");
    py_tar(&whole, "f('big', b'y' * 100000)");
    let good = std::fs::read(&whole).unwrap();
    let cut = sb.path("cut.tar");
    std::fs::write(&cut, &good[..50_000]).unwrap();
    let err = sb.fails(&["images", "import", "--name", "cut", cut.to_str().unwrap()]);
    assert!(err.contains("big") && !err.contains("panicked"), "{err}");
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
}

#[test]
fn bad_names_and_targets_are_refused() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    for bad in ["../x", "a/b", ".hidden", "", "x y"] {
        let err = sb.fails(&["capture", "--name", bad, src.to_str().unwrap()]);
        assert!(err.contains("invalid image name"), "{bad:?}: {err}");
    }
    let err = sb.fails(&["capture", "--name", "ok", sb.path("missing").to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    sb.ok(&["capture", "--name", "ok", src.to_str().unwrap()]);
    let full = sb.path("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), b"mine").unwrap();
    let err = sb.fails(&["deploy", "ok", full.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"mine");
    assert!(sb.fails(&["deploy", "nope", sb.path("o").to_str().unwrap()]).contains("no image"));
    let err = sb.fails(&["capture", "--name", "p", "--exclude", "a[", src.to_str().unwrap()]);
    assert!(err.contains("bad exclude pattern"), "{err}");
}

#[test]
fn unreadable_files_are_listed_or_skipped_with_a_warning() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("readable"), b"ok").unwrap();
    std::fs::write(src.join("d/secret"), b"root only").unwrap();
    sh(&format!("chmod 600 '{0}/d/secret' && chmod 755 '{0}' '{0}/d' && chmod 644 '{0}/readable'", src.display()));
    std::fs::create_dir_all(sb.data()).unwrap();
    sh(&format!("chown -R 65534:65534 '{}' && chmod 755 '{}'", sb.data().display(), sb.dir.path().display()));
    // Run as nobody, for whom d/secret is unreadable.
    let run = |extra: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .arg("--data-dir")
            .arg(sb.data())
            .arg("capture")
            .args(["--name", "n"])
            .args(extra)
            .arg(&src);
        c.output().unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("/d/secret") && err.contains("--skip-unreadable"), "{err}");
    let o = run(&["--skip-unreadable", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["warnings"][0].as_str().unwrap().contains("/d/secret"), "{v}");
    assert_eq!(v["files"], 1);
}

/// A tmpfs mounted for one test, unmounted even if the test fails.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_the_store_stays_consistent() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small"), b"fits").unwrap();
    let data = sb.data();
    std::fs::create_dir_all(&data).unwrap();
    sh(&format!("mount -t tmpfs -o size=6m understudy-test '{}'", data.display()));
    let _m = Mount(data.clone());
    sb.ok(&["capture", "--name", "small", src.to_str().unwrap()]);
    for i in 0..12u64 {
        std::fs::write(src.join(format!("big{i}")), noise(1 << 20, i)).unwrap();
    }
    let err = sb.fails(&["capture", "--name", "big", src.to_str().unwrap()]);
    assert!(err.contains("No space left on device"), "{err}");
    let list = sb.json(&["images", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(sb.ok(&["images", "verify"]).contains("0 fault"));
    sb.ok(&["images", "gc"]);
    let out = sb.path("out");
    sb.ok(&["deploy", "small", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("small")).unwrap(), b"fits");
}
