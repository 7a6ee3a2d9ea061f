//! Loop devices and mounts a test makes, undone on drop (a failing test too).
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

use std::path::{Path, PathBuf};
use std::process::Command;

/// Loop device over a file, detached on drop.
pub struct Loop(pub String);

impl Loop {
    /// A sparse file of `size` bytes at `file` behind a new loop device (partition scan on).
    pub fn new(file: &Path, size: u64) -> Loop {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(size).unwrap();
        let o = Command::new("losetup").args(["-f", "--show", "-P", file.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Partition `n` (1-based) of this disk through its own loop device: works whether or
    /// not the kernel scans partition tables (this machine's does not).
    pub fn part(&self, table: &serde_json::Value, n: usize) -> Loop {
        let p = &table["partitiontable"]["partitions"][n - 1];
        let (start, size) = (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512);
        let o = Command::new("losetup")
            .args(["-f", "--show", "-o", &start.to_string(), "--sizelimit", &size.to_string(), &self.0])
            .output()
            .unwrap();
        assert!(o.status.success());
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The partition table as `sfdisk --json` shows it.
    pub fn table(&self) -> serde_json::Value {
        let o = Command::new("sfdisk").args(["--json", &self.0]).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount, lazily unmounted on drop.
pub struct Mount(pub PathBuf);

impl Mount {
    /// Mount `dev` on `dir` (made if missing).
    pub fn new(dev: &str, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        assert!(Command::new("mount").args([dev, dir.to_str().unwrap()]).status().unwrap().success(), "mount {dev}");
        Mount(dir.to_path_buf())
    }
}

impl Mount {
    /// A tmpfs of `size` (mount's syntax: `4m`) on `dir` (made if missing): a small
    /// filesystem to fill up.
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let o = format!("size={size}");
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &o, "tmpfs", dir.to_str().unwrap()]).status();
        assert!(ok.unwrap().success(), "mount tmpfs on {}", dir.display());
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A writable view of a directory tree that leaves it untouched (overlayfs: the changes
/// go to `upper` beside it), so the cached root is not copied; unmounted on drop.
pub struct Overlay {
    /// The merged view.
    pub merged: PathBuf,
}

impl Overlay {
    /// `lower` seen writable at `dir/merged` (changes in `dir/upper`).
    pub fn new(lower: &Path, dir: &Path) -> Overlay {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let o = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged).output().unwrap();
        assert!(o.status.success(), "mount overlay: {}", String::from_utf8_lossy(&o.stderr));
        Overlay { merged }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.merged).status().is_ok_and(|s| s.success());
        if !ok {
            // Busy (a tool still inside it): detach now, gone once it lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        }
    }
}
