//! `understudy deploy`: write an image into a directory, every chunk verified first.
//!
//! Everything is created through directory fds with O_NOFOLLOW/O_EXCL, so a manifest can
//! never write outside the target. A file whose data cannot be verified is removed before
//! the error is returned: no corrupt file is ever left in place silently.

use crate::fsx;
use crate::progress::Progress;
use crate::store::manifest::{Entry, Kind, Manifest, display_path, split_parent};
use crate::store::{ChunkId, Store, StoreError};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where deploy gets verified chunk bytes from.
pub trait ChunkSource: Sync {
    /// The uncompressed bytes of a chunk, already checked against its id.
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError>;

    /// Hand the uncompressed bytes of a chunk, already checked against its id, to `f`,
    /// and return what `f` returned. A source that holds the bytes already (a received
    /// block) lends them instead of copying them into a new buffer first.
    fn with_chunk(
        &self,
        id: &ChunkId,
        f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, StoreError> {
        let data = self.read_chunk(id)?;
        Ok(f(&data))
    }
}

impl ChunkSource for Store {
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.read(id)
    }
}

/// Live counters of a running deploy, for progress reports to the server.
#[derive(Debug, Default)]
pub struct DeployCounters {
    /// Files written.
    pub files: std::sync::atomic::AtomicU64,
    /// File bytes written.
    pub bytes: std::sync::atomic::AtomicU64,
}

/// Deploy options.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Suppress the progress bar.
    pub quiet: bool,
    /// syncfs() the target at the end, so "deployed" means "on disk".
    pub sync: bool,
    /// Counters updated as files finish.
    pub counters: Option<Arc<DeployCounters>>,
    /// Directories under the target (relative, `var`, `boot/efi`) that exist already as
    /// mount points of the new system's other filesystems: the target may hold them (and
    /// their parents) and the image's directories there are written into them.
    pub mount_points: Vec<String>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions { quiet: false, sync: true, counters: None, mount_points: vec![] }
    }
}

/// `path` (relative, as the manifest has it) is one of `mount_points` or a parent of one.
fn on_mount_path(path: &[u8], mount_points: &[String]) -> bool {
    mount_points.iter().any(|m| {
        let m = m.trim_matches('/').as_bytes();
        m == path || (m.len() > path.len() && m.starts_with(path) && m[path.len()] == b'/')
    })
}

/// Counters of one deploy.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeployStats {
    /// Entries created.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Deploy errors.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The target cannot be used.
    #[error("target {path}: {source}")]
    Target {
        /// Target path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The target directory has entries already.
    #[error("target {0} is not empty; deploy writes into an empty or new directory")]
    NotEmpty(PathBuf),
    /// The manifest is invalid.
    #[error("manifest rejected: {0}")]
    Manifest(String),
    /// Creating an entry failed.
    #[error("{path}: {source}")]
    Entry {
        /// Image path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A chunk could not be read or failed verification; the file was removed.
    #[error("{path}: {source} (the partial file was removed)")]
    Chunk {
        /// Image path.
        path: String,
        /// The error.
        source: StoreError,
    },
}

struct FileJob {
    idx: usize,
    dir: Arc<OwnedFd>,
}

fn name_of(e: &Entry) -> &[u8] {
    split_parent(&e.path).map(|(_, n)| n).unwrap_or(b"")
}

fn entry_err(e: &Entry) -> impl Fn(std::io::Error) -> DeployError + '_ {
    move |source| DeployError::Entry { path: display_path(&e.path), source }
}

fn errno(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

/// Deploy `manifest` into `target` (created if missing; must be empty).
pub fn deploy(
    src: &dyn ChunkSource,
    manifest: &Manifest,
    target: &Path,
    opts: DeployOptions,
) -> Result<DeployStats, DeployError> {
    manifest.validate().map_err(|e| DeployError::Manifest(e.to_string()))?;
    fsx::raise_nofile_limit();
    let terr = |source| DeployError::Target { path: target.into(), source };
    std::fs::create_dir_all(target).map_err(terr)?;
    let root = fsx::open_dir(target).map_err(terr)?;
    if rustix::fs::Dir::read_from(&root).map_err(|e| terr(e.into()))?.any(|e| {
        e.is_ok_and(|e| {
            let n = e.file_name().to_bytes();
            !matches!(n, b"." | b"..") && !on_mount_path(n, &opts.mount_points)
        })
    }) {
        return Err(DeployError::NotEmpty(target.into()));
    }
    let as_root = rustix::process::geteuid().is_root();
    if !as_root {
        tracing::warn!("not running as root: ownership, device nodes and privileged xattrs cannot be restored");
    }
    let total = manifest.total_bytes();
    let progress = Progress::new("deploy", Some(total), opts.quiet);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8) + 1;
    let (tx, rx) = crossbeam_channel::bounded::<FileJob>(1024);
    let mut stats = DeployStats::default();
    let entries = &manifest.entries;
    let mut hardlinks: Vec<usize> = Vec::new();
    let mut dirs: Vec<usize> = Vec::new();
    let root = Arc::new(root);

    let worker_errors = std::thread::scope(|s| -> Result<Vec<DeployError>, DeployError> {
        let (etx, erx) = crossbeam_channel::unbounded::<DeployError>();
        for _ in 0..workers {
            let (rx, etx, progress, counters) = (rx.clone(), etx.clone(), &progress, opts.counters.clone());
            s.spawn(move || {
                for job in rx {
                    let e = &entries[job.idx];
                    match write_file(src, job.dir.as_fd(), e, as_root) {
                        Ok(n) => {
                            progress.add(1, n);
                            if let Some(c) = &counters {
                                c.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                c.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Err(err) => {
                            let _ = etx.send(err);
                            return;
                        }
                    }
                }
            });
        }
        drop(etx);
        drop(rx);
        let walk = (|| -> Result<(), DeployError> {
            let mut stack: Vec<(&[u8], Arc<OwnedFd>)> = vec![(b"", root.clone())];
            for (idx, e) in entries.iter().enumerate().skip(1) {
                let Some((parent, name)) = split_parent(&e.path) else {
                    continue;
                };
                while stack.last().is_some_and(|(p, _)| *p != parent) {
                    stack.pop();
                }
                let Some((_, dir)) = stack.last() else {
                    return Err(DeployError::Manifest(format!("{}: parent not open", display_path(&e.path))));
                };
                let dir = dir.clone();
                stats.entries += 1;
                let cn = fsx::cname(name).map_err(entry_err(e))?;
                match &e.kind {
                    Kind::Dir => {
                        match rustix::fs::mkdirat(dir.as_fd(), cn.as_c_str(), Mode::from_raw_mode(0o700)) {
                            Ok(()) => {}
                            // A mount point made for one of the new system's filesystems.
                            Err(rustix::io::Errno::EXIST) if on_mount_path(&e.path, &opts.mount_points) => {}
                            Err(x) => return Err(entry_err(e)(errno(x))),
                        }
                        let fd = fsx::open_dir_at(dir.as_fd(), name).map_err(entry_err(e))?;
                        stack.push((&e.path, Arc::new(fd)));
                        dirs.push(idx);
                    }
                    Kind::File { size, .. } => {
                        stats.files += 1;
                        stats.bytes += size;
                        if !erx.is_empty() {
                            return Ok(());
                        }
                        if tx.send(FileJob { idx, dir }).is_err() {
                            return Ok(());
                        }
                    }
                    Kind::Hardlink { .. } => hardlinks.push(idx),
                    Kind::Symlink { target } => {
                        let t = fsx::cname(target).map_err(entry_err(e))?;
                        rustix::fs::symlinkat(t.as_c_str(), dir.as_fd(), cn.as_c_str())
                            .map_err(|x| entry_err(e)(errno(x)))?;
                        finish_special(dir.as_fd(), e, as_root, false).map_err(entry_err(e))?;
                    }
                    Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
                        let ft = if matches!(e.kind, Kind::CharDev { .. }) {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        rustix::fs::mknodat(dir.as_fd(), cn.as_c_str(), ft, Mode::from_raw_mode(0o600), *rdev)
                            .map_err(|x| entry_err(e)(errno(x)))?;
                        finish_special(dir.as_fd(), e, as_root, true).map_err(entry_err(e))?;
                    }
                    Kind::Fifo | Kind::Socket => {
                        let ft = if e.kind == Kind::Fifo { FileType::Fifo } else { FileType::Socket };
                        rustix::fs::mknodat(dir.as_fd(), cn.as_c_str(), ft, Mode::from_raw_mode(0o600), 0)
                            .map_err(|x| entry_err(e)(errno(x)))?;
                        finish_special(dir.as_fd(), e, as_root, true).map_err(entry_err(e))?;
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let mut errs: Vec<DeployError> = erx.iter().collect();
        if let Err(w) = walk {
            errs.insert(0, w);
        }
        Ok(errs)
    })?;
    progress.finish();
    if let Some(first) = worker_errors.into_iter().next() {
        return Err(first);
    }
    for idx in hardlinks {
        let e = &entries[idx];
        let Kind::Hardlink { target: t } = &e.kind else {
            continue;
        };
        let (tp, tn) = split_parent(t).unwrap_or((b"", t));
        let (lp, ln) = split_parent(&e.path).unwrap_or((b"", &e.path));
        let tdir = fsx::open_rel_dir(root.as_fd(), tp).map_err(entry_err(e))?;
        let ldir = fsx::open_rel_dir(root.as_fd(), lp).map_err(entry_err(e))?;
        let (tn, ln) = (fsx::cname(tn).map_err(entry_err(e))?, fsx::cname(ln).map_err(entry_err(e))?);
        rustix::fs::linkat(&tdir, tn.as_c_str(), &ldir, ln.as_c_str(), AtFlags::empty())
            .map_err(|x| entry_err(e)(errno(x)))?;
    }
    // Directory metadata last, deepest first, so creating children does not disturb mtimes.
    for &idx in dirs.iter().rev() {
        let e = &entries[idx];
        let fd = fsx::open_rel_dir(root.as_fd(), &e.path).map_err(entry_err(e))?;
        apply_fd_meta(fd.as_fd(), e, as_root).map_err(entry_err(e))?;
    }
    apply_fd_meta(root.as_fd(), &entries[0], as_root).map_err(entry_err(&entries[0]))?;
    if opts.sync {
        rustix::fs::syncfs(root.as_fd()).map_err(|e| terr(e.into()))?;
    }
    stats.entries += 1;
    Ok(stats)
}

fn apply_fd_meta(fd: BorrowedFd<'_>, e: &Entry, as_root: bool) -> std::io::Result<()> {
    if as_root {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
    // After chown: changing the owner clears security.capability.
    fsx::set_fd_xattrs(fd, &e.xattrs)?;
    fsx::set_times_fd(fd, e.mtime, e.mtime_nsec)
}

fn finish_special(dir: BorrowedFd<'_>, e: &Entry, as_root: bool, chmod: bool) -> std::io::Result<()> {
    let name = name_of(e);
    set_owner_mode(dir, name, e, as_root, chmod)?;
    fsx::set_link_xattrs(dir, name, &e.xattrs)?;
    fsx::set_times_at(dir, name, e.mtime, e.mtime_nsec)
}

/// The entry's owner (as root; a symlink itself, not followed) and, with `chmod`, its mode
/// on `name` in `dir`: shared by deploy and update.
pub(crate) fn set_owner_mode(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    as_root: bool,
    chmod: bool,
) -> std::io::Result<()> {
    let cn = fsx::cname(name)?;
    if as_root {
        rustix::fs::chownat(
            dir,
            cn.as_c_str(),
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if chmod {
        rustix::fs::chmodat(dir, cn.as_c_str(), Mode::from_raw_mode(e.mode), AtFlags::empty())?;
    }
    Ok(())
}

fn write_file(src: &dyn ChunkSource, dir: BorrowedFd<'_>, e: &Entry, as_root: bool) -> Result<u64, DeployError> {
    let Kind::File { size, extents } = &e.kind else {
        return Ok(0);
    };
    let name = name_of(e);
    let cn = fsx::cname(name).map_err(entry_err(e))?;
    let fd = rustix::fs::openat(
        dir,
        cn.as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|x| entry_err(e)(errno(x)))?;
    let file = std::fs::File::from(fd);
    let res = (|| -> Result<u64, DeployError> {
        let mut end = 0u64;
        for x in extents {
            let mut off = x.offset;
            for c in &x.chunks {
                // Written only when its length is the manifest's (the bytes are verified).
                let mut got = 0usize;
                src.with_chunk(&c.id, &mut |data| {
                    got = data.len();
                    if got == c.len as usize { file.write_all_at(data, off) } else { Ok(()) }
                })
                .map_err(|source| DeployError::Chunk { path: display_path(&e.path), source })?
                .map_err(entry_err(e))?;
                if got != c.len as usize {
                    return Err(DeployError::Chunk {
                        path: display_path(&e.path),
                        source: StoreError::ChunkCorrupt { id: c.id, why: "length differs from the manifest".into() },
                    });
                }
                off += got as u64;
            }
            end = off;
        }
        if end != *size {
            file.set_len(*size).map_err(entry_err(e))?;
        }
        apply_fd_meta(file.as_fd(), e, as_root).map_err(entry_err(e))?;
        Ok(*size)
    })();
    if res.is_err() {
        drop(file);
        let _ = rustix::fs::unlinkat(dir, cn.as_c_str(), AtFlags::empty());
    }
    res
}

#[cfg(test)]
mod mount_point_tests {
    use super::on_mount_path;

    #[test]
    fn mount_points_and_their_parents() {
        let m = vec!["var".to_string(), "/boot/efi".to_string()];
        assert!(on_mount_path(b"var", &m) && on_mount_path(b"boot", &m) && on_mount_path(b"boot/efi", &m));
        assert!(!on_mount_path(b"va", &m) && !on_mount_path(b"var/log", &m) && !on_mount_path(b"boot/grub", &m));
        assert!(!on_mount_path(b"etc", &[]));
    }
}
