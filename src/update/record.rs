//! What a deployed root says about itself: `/var/lib/understudy/deployed.json`, written by
//! the agent after it gave the node its identity, and by `update` after each update. It
//! names the image and manifest the root holds and every path the agent rewrote or removed
//! (identity, network, failover files): an update leaves those alone.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's path inside a deployed root.
pub const RECORD_PATH: &str = "var/lib/understudy/deployed.json";

/// Kept when a root has no record: the files the agent rewrites on every node.
pub const DEFAULT_KEEP: &[&str] = &[
    "/etc/fstab",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/understudy/understudy.toml",
    "/var/lib/understudy/failover.key",
];

/// The contents of `deployed.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The image as the server named it (`NAME@N`).
    pub image: String,
    /// The manifest id (hex) of what the root holds.
    pub manifest: String,
    /// The deployment that wrote the root, when the agent did.
    #[serde(default)]
    pub deployment: Option<i64>,
    /// Image paths (absolute, `/etc/hostname`) the node owns: rewritten or removed at deploy
    /// time; an update neither changes, creates nor removes them.
    #[serde(default)]
    pub keep: Vec<String>,
    /// Patterns (capture's exclude syntax) the node owns besides `keep`: what an update of
    /// a root without a record keeps ([`DEFAULT_KEEP`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_globs: Vec<String>,
}

/// Reading or writing the record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("{path}: not a deployment record: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Deployed {
    /// The record of the root at `root`, `None` when it has none. The record is reached
    /// without following symlinks (the root is the image's data, not trusted paths).
    pub fn read(root: &Path) -> Result<Option<Deployed>, RecordError> {
        let path = root.join(RECORD_PATH);
        let io = |op, source| RecordError::Io { op, path: path.clone(), source };
        let Some(dir) = open_parent(root, false).map_err(|e| io("open", e))? else { return Ok(None) };
        let fd = match rustix::fs::openat(
            &dir,
            c"deployed.json",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io("open", e.into())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).map_err(|e| io("read", e))?;
        serde_json::from_str(&text).map(Some).map_err(|source| RecordError::Parse { path: path.clone(), source })
    }

    /// Write the record into the root at `root` (atomically: a temporary, then rename).
    pub fn write(&self, root: &Path) -> Result<(), RecordError> {
        let path = root.join(RECORD_PATH);
        let io = |op, source| RecordError::Io { op, path: path.clone(), source };
        let dir = open_parent(root, true).map_err(|e| io("open", e))?.ok_or_else(|| {
            io("open", std::io::Error::new(std::io::ErrorKind::NotFound, "var/lib/understudy missing"))
        })?;
        let mut text = serde_json::to_string_pretty(self).map_err(|e| io("encode", std::io::Error::other(e)))?;
        text.push('\n');
        let tmp = c".deployed.json.tmp";
        keeping_times(
            &dir,
            |e| io("keep times", e),
            || {
                let _ = rustix::fs::unlinkat(&dir, tmp, rustix::fs::AtFlags::empty());
                let fd = rustix::fs::openat(
                    &dir,
                    tmp,
                    rustix::fs::OFlags::WRONLY
                        | rustix::fs::OFlags::CREATE
                        | rustix::fs::OFlags::EXCL
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .map_err(|e| io("create", e.into()))?;
                let f = std::fs::File::from(fd);
                std::io::Write::write_all(&mut &f, text.as_bytes()).map_err(|e| io("write", e))?;
                f.sync_all().map_err(|e| io("fsync", e))?;
                rustix::fs::renameat(&dir, tmp, &dir, c"deployed.json").map_err(|e| io("rename", e.into()))
            },
        )
    }

    /// Every path an update keeps, as exclude patterns: the record's paths (glob
    /// metacharacters escaped: they are literal), its patterns and the record itself.
    pub fn keep_patterns(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keep.iter().map(|p| escape_glob(p)).collect();
        v.extend(self.keep_globs.iter().cloned());
        v.push(format!("/{RECORD_PATH}"));
        v.push(format!("/{RECORD_PATH}.tmp"));
        v.push("/var/lib/understudy/.deployed.json.tmp".into());
        v
    }
}

/// The files the agent's identity step rewrites or removes on every node (ssh host keys
/// aside: those are listed as found, see [`record_deployment`]).
pub const IDENTITY_FILES: &[&str] =
    &["/etc/fstab", "/etc/hostname", "/etc/hosts", "/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Write the record of a deployment the agent just finished: the image, its manifest, and
/// every path it made the node's own: [`IDENTITY_FILES`], the ssh host keys the image had
/// (`ssh_before`, removed) and the node got (unless the image's keys were kept), and what
/// the network step touched (`network`).
pub fn record_deployment(
    root: &Path,
    image: &str,
    manifest: &str,
    deployment: i64,
    keep_ssh_keys: bool,
    ssh_before: Vec<String>,
    network: &[PathBuf],
) -> Result<Deployed, RecordError> {
    let mut keep: Vec<String> = IDENTITY_FILES.iter().map(|s| s.to_string()).collect();
    if !keep_ssh_keys {
        keep.extend(ssh_before);
        keep.extend(list_prefixed(root, "/etc/ssh", "ssh_host_"));
    }
    keep.extend(network.iter().map(|p| p.display().to_string()));
    keep.sort();
    keep.dedup();
    let rec = Deployed {
        image: image.to_string(),
        manifest: manifest.to_string(),
        deployment: Some(deployment),
        keep,
        keep_globs: vec![],
    };
    rec.write(root)?;
    Ok(rec)
}

/// `p` as a glob pattern that matches only itself.
pub fn escape_glob(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for ch in p.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Open `var/lib/understudy` under `root` without following symlinks; with `create`, the
/// missing directories are made (0755).
/// Run `f`, which adds or replaces entries in `dir`, and give `dir` its times back: the
/// record is understudy's own bookkeeping, and the directories above it belong to the
/// image, whose mtimes an update (or deploy) has just set.
fn keeping_times<T, E>(
    dir: &rustix::fd::OwnedFd,
    err: impl Fn(std::io::Error) -> E,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let st = rustix::fs::fstat(dir).map_err(|e| err(e.into()))?;
    let out = f()?;
    crate::fsx::set_times_fd(rustix::fd::AsFd::as_fd(dir), st.st_mtime, st.st_mtime_nsec as u32).map_err(err)?;
    Ok(out)
}

fn open_parent(root: &Path, create: bool) -> std::io::Result<Option<rustix::fd::OwnedFd>> {
    let mut cur = crate::fsx::open_dir(root)?;
    for c in ["var", "lib", "understudy"] {
        match crate::fsx::open_dir_at(rustix::fd::AsFd::as_fd(&cur), c.as_bytes()) {
            Ok(fd) => cur = fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let n = crate::fsx::cname(c.as_bytes())?;
                keeping_times(
                    &cur,
                    |e| e,
                    || match rustix::fs::mkdirat(&cur, n.as_c_str(), rustix::fs::Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
                        Err(e) => Err(std::io::Error::from(e)),
                    },
                )?;
                cur = crate::fsx::open_dir_at(rustix::fd::AsFd::as_fd(&cur), c.as_bytes())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(cur))
}

/// Image paths (absolute) of the files below `dir` (an image path like `/etc/ssh`) whose
/// names start with `prefix`, as the root at `root` has them now.
pub fn list_prefixed(root: &Path, dir: &str, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else { return Vec::new() };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Deployed::read(t.path()).unwrap(), None);
        let r = Deployed {
            image: "head@3".into(),
            manifest: "ab".repeat(32),
            deployment: Some(4),
            keep: vec!["/etc/hostname".into(), "/etc/a[1]".into()],
            keep_globs: vec![],
        };
        r.write(t.path()).unwrap();
        assert_eq!(Deployed::read(t.path()).unwrap(), Some(r.clone()));
        let pats = r.keep_patterns();
        assert!(pats.contains(&"/var/lib/understudy/deployed.json".to_string()));
        let ex = crate::capture::Excludes::new(&pats).unwrap();
        assert!(ex.matches(b"etc/a[1]", false) && !ex.matches(b"etc/a1", false));
        std::fs::write(t.path().join(RECORD_PATH), "{not json").unwrap();
        assert!(matches!(Deployed::read(t.path()), Err(RecordError::Parse { .. })));
    }

    #[test]
    fn writing_the_record_leaves_the_image_directories_times_alone() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("var")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for d in ["", "var"] {
            std::fs::File::open(t.path().join(d)).unwrap().set_modified(old).unwrap();
        }
        // var/lib and var/lib/understudy are made, the record renamed into place.
        Deployed { image: "head@1".into(), ..Deployed::default() }.write(t.path()).unwrap();
        for d in ["", "var"] {
            let m = std::fs::metadata(t.path().join(d)).unwrap().modified().unwrap();
            assert_eq!(m, old, "/{d} got a new mtime");
        }
    }

    #[test]
    fn making_the_record_directory_keeps_the_image_directories_times() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("var/lib")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for d in ["", "var/lib"] {
            std::fs::File::open(t.path().join(d)).unwrap().set_modified(old).unwrap();
        }
        Deployed::default().write(t.path()).unwrap();
        for d in ["", "var/lib"] {
            assert_eq!(std::fs::metadata(t.path().join(d)).unwrap().modified().unwrap(), old, "{d:?}");
        }
        assert!(Deployed::read(t.path()).unwrap().is_some());
        // A root without var/: every directory made leaves its parent's time alone.
        let t = tempfile::tempdir().unwrap();
        std::fs::File::open(t.path()).unwrap().set_modified(old).unwrap();
        Deployed::default().write(t.path()).unwrap();
        assert_eq!(std::fs::metadata(t.path()).unwrap().modified().unwrap(), old);
    }

    #[test]
    fn a_deployment_records_identity_ssh_and_network_paths() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc/ssh")).unwrap();
        std::fs::write(t.path().join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        let before = vec!["/etc/ssh/ssh_host_dsa_key".to_string()];
        let net = [PathBuf::from("/etc/systemd/network/10-eth0.network")];
        let r = record_deployment(t.path(), "head@2", "00", 7, false, before.clone(), &net).unwrap();
        for p in [
            "/etc/hostname",
            "/etc/ssh/ssh_host_dsa_key",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/systemd/network/10-eth0.network",
        ] {
            assert!(r.keep.iter().any(|k| k == p), "{p} missing from {:?}", r.keep);
        }
        assert_eq!(Deployed::read(t.path()).unwrap(), Some(r));
        let kept = record_deployment(t.path(), "head@2", "00", 7, true, before, &[]).unwrap();
        assert!(!kept.keep.iter().any(|k| k.contains("ssh_host")), "{:?}", kept.keep);
    }

    #[test]
    fn a_symlinked_record_directory_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("var")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("var/lib")).unwrap();
        assert!(Deployed::default().write(t.path()).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
