//! Deploys under CPU and I/O stress (stress-ng beside them) give trees identical to the
//! image, locally and from a server, and so do captures and updates: a late write into a
//! directory after its mtime was set, a file's metadata applied before its data, or a
//! chunk read racing its write would each show up as an rsync line here.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// stress-ng in its own process group, stopped (the whole group) on drop.
struct Stress(Child);

impl Stress {
    fn start(dir: &Path) -> Stress {
        std::fs::create_dir_all(dir).unwrap();
        let mut c = Command::new("stress-ng");
        c.args(["--cpu", "2", "--hdd", "1", "--hdd-bytes", "32M", "--iomix", "1", "--iomix-bytes", "16M"])
            .args(["--timeout", "300s", "--temp-path", dir.to_str().unwrap(), "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        Stress(c.spawn().expect("stress-ng must be installed (make deps)"))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        let pgid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
        let _ = self.0.wait();
    }
}

/// Many directories (so many directory mtimes to get right), files of many sizes, hard
/// links across directories, and the awkward cases of `tricky_tree`.
fn busy_tree(root: &Path) {
    tricky_tree(&root.join("tricky"), false);
    for d in 0..40u64 {
        let dir = root.join(format!("d{:02}/sub{}/leaf", d % 8, d));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..25u64 {
            let n = ((d * 25 + f) * 7919) % 200_000;
            std::fs::write(dir.join(format!("f{f:02}")), noise(n as usize, d * 100 + f)).unwrap();
        }
        if d > 0 {
            std::fs::hard_link(root.join("d00/sub0/leaf/f00"), dir.join("link-to-first")).unwrap();
        }
    }
    // Directory times that differ from "now", as a real root's do.
    sh(&format!("find {} -type d -exec touch -d '2024-02-03 04:05:06.123456789' {{}} +", root.display()));
}

#[test]
fn deploys_captures_and_updates_under_stress_give_identical_trees() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    busy_tree(&src);
    let s = src.to_str().unwrap();
    let _stress = Stress::start(&sb.path("stress"));
    sb.ok(&["capture", "--name", "img", s]);
    let srv = Server::start(&sb, "");
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (out, url, token) = (sb.path(&format!("out{i}")), srv.url.clone(), srv.token.clone());
            let cmd = if i % 2 == 0 {
                sb.cmd(&["deploy", "img", out.to_str().unwrap(), "-q"])
            } else {
                sb.cmd(&["--server", &url, "--token", &token, "deploy", "img", out.to_str().unwrap(), "-q"])
            };
            std::thread::spawn(move || {
                let mut cmd = cmd;
                let o = cmd.output().unwrap();
                assert!(o.status.success(), "deploy {i}: {}", String::from_utf8_lossy(&o.stderr));
                out
            })
        })
        .collect();
    for t in threads {
        let out = t.join().unwrap();
        assert_eq!(rsync_diff(&src, &out, &[]), "", "{} differs from the image", out.display());
    }

    // A re-capture after changes, under the same load, and an update of a deployed tree to
    // it: again identical.
    std::fs::write(src.join("d03/sub3/leaf/f07"), noise(123_457, 42)).unwrap();
    std::fs::remove_file(src.join("d05/sub5/leaf/f01")).unwrap();
    std::fs::create_dir_all(src.join("d06/new-dir")).unwrap();
    std::fs::write(src.join("d06/new-dir/new"), b"new").unwrap();
    sb.ok(&["capture", "--name", "img", s]);
    let again = sb.path("again");
    sb.ok(&["deploy", "img", again.to_str().unwrap(), "-q"]);
    assert_eq!(rsync_diff(&src, &again, &[]), "", "the re-capture differs from its tree");
    let updated = sb.path("out0");
    sb.ok(&["update", "img", updated.to_str().unwrap(), "-q"]);
    assert_eq!(rsync_diff(&src, &updated, &["--exclude=/var/"]), "", "the updated tree differs from the image");
}
