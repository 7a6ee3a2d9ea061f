//! Carry out a [`Plan`] on the target: removals first (deepest first), then every entry
//! the image writes in manifest order, then hard links, then directory metadata (deepest
//! first, after their contents). Every file is written to a temporary in its own directory
//! and renamed into place once all its chunks are verified and its data is on disk, so a
//! crash or a full disk leaves each path either old or new.
//!
//! Files are made durable in batches ([`Batch`]: up to [`BATCH_FILES`] files or
//! [`BATCH_BYTES`]): one `syncfs` per filesystem the batch wrote to, then its renames.
//! A journal commit per file (`fdatasync` each) cost more than the rest of a small
//! update; a batch keeps the rule (no rename before its data is durable) at one commit.
//!
//! File data comes from chunks the target already has ([`Reuse`]: the old versions of the
//! files being replaced or removed, cut with the image's chunker and re-hashed) and the
//! rest from a [`ChunkSource`] (the local store or the server), verified by its id.

use super::plan::{Change, Plan};
use crate::deploy::ChunkSource;
use crate::fsx;
use crate::store::chunker::ChunkerParams;
use crate::store::manifest::{Entry, Kind, Manifest, Xattr, display_path, split_parent};
use crate::store::{ChunkId, StoreError};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Applying failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file system operation on an entry failed.
    #[error("{path}: {source}")]
    Entry {
        /// Image path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A chunk could not be had or failed verification; the old entry is still in place.
    #[error("{path}: {source} (the old version is left in place)")]
    Chunk {
        /// Image path.
        path: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Asked to stop ([`Control::stop`]) and stopped at a safe point: every entry is
    /// either old or new, and `done` says what was changed before.
    #[error("stopped before the end: every path is either its old or its new version")]
    Stopped {
        /// What was done before the stop.
        done: ApplyStats,
    },
}

/// How a caller steers a running [`apply_with`]: a flag checked between entries and
/// between the chunks of a file (a file cut short is its temporary, removed: the old
/// version stays), and a counter of the file bytes written so far.
#[derive(Debug, Default)]
pub struct Control {
    /// Set to stop at the next safe point.
    pub stop: std::sync::atomic::AtomicBool,
    /// File bytes written (renamed into place) so far.
    pub done_bytes: AtomicU64,
}

impl Control {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What an update did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyStats {
    /// Entries created.
    pub created: u64,
    /// Entries removed.
    pub removed: u64,
    /// Entries changed (content, type, metadata or hard link).
    pub changed: u64,
    /// File bytes fetched from the store or the server.
    pub bytes_transferred: u64,
    /// File bytes taken from what the target had.
    pub bytes_reused: u64,
    /// Bytes of old files read to find reusable chunks.
    pub bytes_hashed: u64,
}

impl ApplyStats {
    /// Add another pass's counters.
    pub fn add(&mut self, o: &ApplyStats) {
        self.created += o.created;
        self.removed += o.removed;
        self.changed += o.changed;
        self.bytes_transferred += o.bytes_transferred;
        self.bytes_reused += o.bytes_reused;
        self.bytes_hashed += o.bytes_hashed;
    }
}

/// Chunks the target has: id -> (file, offset, length), each checked again when used.
#[derive(Default)]
pub struct Reuse {
    files: Vec<std::fs::File>,
    map: HashMap<ChunkId, (usize, u64, u32)>,
}

impl Reuse {
    /// Cut the open regular file `file` (`size` bytes) with `params` and remember its chunks.
    /// Returns the bytes read.
    pub fn add_file(&mut self, file: std::fs::File, size: u64, params: &ChunkerParams) -> std::io::Result<u64> {
        let st = rustix::fs::fstat(&file)?;
        let regions = if (st.st_blocks as u64) * 512 < size {
            fsx::data_regions(file.as_fd(), size)?
        } else if size > 0 {
            vec![(0, size)]
        } else {
            vec![]
        };
        let fi = self.files.len();
        let mut read = 0u64;
        for (offset, len) in regions {
            let mut at = offset;
            let map = &mut self.map;
            read +=
                params.cut_reader(crate::capture::RegionReader { file: &file, pos: offset, left: len }, len, |c| {
                    map.entry(*blake3::hash(c).as_bytes()).or_insert((fi, at, c.len() as u32));
                    at += c.len() as u64;
                    Ok(())
                })?;
        }
        self.files.push(file);
        Ok(read)
    }

    /// Whether the target has chunk `id`.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }

    /// The chunk's bytes from the target, if it still has them unchanged.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let &(fi, off, len) = self.map.get(id)?;
        let mut buf = vec![0u8; len as usize];
        self.files.get(fi)?.read_exact_at(&mut buf, off).ok()?;
        (blake3::hash(&buf).as_bytes() == id).then_some(buf)
    }
}

/// The chunk references the plan's file writes need from the source (not in `reuse`, and
/// not of the files in `whole`, ascending image indexes sent otherwise), in the order
/// [`apply`] reads them.
pub fn needed_chunks(
    m: &Manifest,
    plan: &Plan,
    reuse: &Reuse,
    whole: &[usize],
) -> Vec<crate::store::manifest::ChunkRef> {
    let mut out = Vec::new();
    for c in &plan.changes {
        let (Change::Create { idx } | Change::Replace { idx, .. }) = c else { continue };
        if whole.binary_search(idx).is_ok() {
            continue;
        }
        if let Kind::File { extents, .. } = &m.entries[*idx].kind {
            out.extend(extents.iter().flat_map(|x| x.chunks.iter()).filter(|r| !reuse.has(&r.id)).copied());
        }
    }
    out
}

fn name_of(e: &Entry) -> &[u8] {
    split_parent(&e.path).map(|(_, n)| n).unwrap_or(b"")
}

fn entry_err(p: &[u8]) -> impl Fn(std::io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Entry { path: display_path(p), source }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary name in the entry's own directory (short: any name must fit in 255 bytes).
fn tmp_name() -> Vec<u8> {
    format!(".ustmp.{}.{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)).into_bytes()
}

/// Directory fds by image path, the last few kept open.
struct Dirs<'a> {
    root: BorrowedFd<'a>,
    cache: HashMap<Vec<u8>, OwnedFd>,
}

impl Dirs<'_> {
    fn get(&mut self, path: &[u8]) -> std::io::Result<BorrowedFd<'_>> {
        if !self.cache.contains_key(path) {
            if self.cache.len() > 64 {
                self.cache.clear();
            }
            let fd = fsx::open_rel_dir(self.root, path)?;
            self.cache.insert(path.to_vec(), fd);
        }
        match self.cache.get(path) {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(std::io::Error::other("directory cache lost an entry")),
        }
    }
}

/// A whole file's verified content by other means than chunks (an rsync delta), with the
/// bytes that crossed the wire; `None` when the file goes by chunks.
pub type WholeFile<'a> = &'a dyn Fn(usize) -> Option<Result<(Vec<u8>, u64), StoreError>>;

/// Apply `plan` (made against `m`) to the target open at `root`.
pub fn apply(
    root: BorrowedFd<'_>,
    m: &Manifest,
    plan: &Plan,
    reuse: &Reuse,
    src: &dyn ChunkSource,
    whole: WholeFile<'_>,
    as_root: bool,
) -> Result<ApplyStats, ApplyError> {
    apply_with(root, m, plan, (reuse, src, whole), as_root, &Control::default())
}

/// [`apply`], stopping at the next safe point once `ctl.stop` is set (then
/// [`ApplyError::Stopped`]; directory times are left for the next run to set).
pub fn apply_with(
    root: BorrowedFd<'_>,
    m: &Manifest,
    plan: &Plan,
    (reuse, src, whole): (&Reuse, &dyn ChunkSource, WholeFile<'_>),
    as_root: bool,
    ctl: &Control,
) -> Result<ApplyStats, ApplyError> {
    let mut st = ApplyStats::default();
    let mut dirs = Dirs { root, cache: HashMap::new() };
    let entries = &m.entries;
    // Directories whose entries change: their mtime is set again at the end.
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    let mut parent_of = |p: &[u8]| {
        if let Some((parent, _)) = split_parent(p) {
            touched.insert(parent.to_vec());
        }
    };
    for c in &plan.changes {
        let Change::Remove { path, dir } = c else { continue };
        if ctl.stopped() {
            return Err(ApplyError::Stopped { done: st });
        }
        let (parent, name) = split_parent(path).unwrap_or((b"", path));
        let d = dirs.get(parent).map_err(entry_err(path))?;
        let cn = fsx::cname(name).map_err(entry_err(path))?;
        let flags = if *dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
        match rustix::fs::unlinkat(d, cn.as_c_str(), flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(entry_err(path)(e.into())),
        }
        if *dir {
            dirs.cache.retain(|k, _| !(k == path || (k.starts_with(path) && k.get(path.len()) == Some(&b'/'))));
        }
        parent_of(path);
        st.removed += 1;
    }
    let mut meta_dirs: Vec<usize> = Vec::new();
    let mut links: Vec<usize> = Vec::new();
    let mut batch = Batch::default();
    // The files written before a failure are whole and verified: they go into place
    // (the failing one keeps its old version), so the next run has less to do.
    let written = (|| -> Result<(), ApplyError> {
        for c in &plan.changes {
            if ctl.stopped() {
                // The files written so far are whole: they go into place before the stop.
                batch.commit(ctl)?;
                return Err(ApplyError::Stopped { done: st.clone() });
            }
            let (idx, create) = match c {
                Change::Create { idx } => (*idx, true),
                Change::Replace { idx, .. } => (*idx, false),
                Change::Meta { idx, .. } => {
                    let e = &entries[*idx];
                    if e.kind == Kind::Dir {
                        meta_dirs.push(*idx);
                    } else {
                        let (parent, _) = split_parent(&e.path).unwrap_or((b"", b""));
                        let d = dirs.get(parent).map_err(entry_err(&e.path))?;
                        meta_in_place(d, e, as_root).map_err(entry_err(&e.path))?;
                    }
                    st.changed += 1;
                    continue;
                }
                Change::Link { idx } => {
                    links.push(*idx);
                    continue;
                }
                Change::Remove { .. } => continue,
            };
            let e = &entries[idx];
            if create {
                st.created += 1;
            } else {
                st.changed += 1;
            }
            parent_of(&e.path);
            let (parent, _) = split_parent(&e.path).unwrap_or((b"", b""));
            let d = dirs.get(parent).map_err(entry_err(&e.path))?;
            match &e.kind {
                Kind::Dir => {
                    let cn = fsx::cname(name_of(e)).map_err(entry_err(&e.path))?;
                    match rustix::fs::mkdirat(d, cn.as_c_str(), Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(x) => return Err(entry_err(&e.path)(x.into())),
                    }
                    meta_dirs.push(idx);
                }
                Kind::File { .. } => {
                    let content = match whole(idx) {
                        Some(Ok(c)) => Some(c),
                        Some(Err(source)) => return Err(ApplyError::Chunk { path: display_path(&e.path), source }),
                        None => None,
                    };
                    let (staged, fetched, reused) = match write_file(d, e, reuse, src, content, as_root, ctl) {
                        Err(ApplyError::Stopped { .. }) => {
                            // Counted as begun above; it was not changed.
                            if create {
                                st.created -= 1
                            } else {
                                st.changed -= 1
                            }
                            batch.commit(ctl)?;
                            return Err(ApplyError::Stopped { done: st.clone() });
                        }
                        r => r?,
                    };
                    st.bytes_transferred += fetched;
                    st.bytes_reused += reused;
                    batch.add(staged);
                    if batch.full() {
                        batch.commit(ctl)?;
                    }
                }
                Kind::Hardlink { .. } => links.push(idx),
                _ => write_special(d, e, as_root).map_err(entry_err(&e.path))?,
            }
        }
        Ok(())
    })();
    if let Err(e) = written {
        if !matches!(e, ApplyError::Stopped { .. })
            && let Err(c) = batch.commit(ctl)
        {
            tracing::warn!("update: putting the files written before the failure in place: {c}");
        }
        return Err(e);
    }
    // Hard links name their targets by path: every file is in place first.
    batch.commit(ctl)?;
    for idx in links {
        if ctl.stopped() {
            return Err(ApplyError::Stopped { done: st });
        }
        let e = &entries[idx];
        let Kind::Hardlink { target } = &e.kind else { continue };
        let (tp, tn) = split_parent(target).unwrap_or((b"", target));
        let (lp, ln) = split_parent(&e.path).unwrap_or((b"", &e.path));
        let tdir = fsx::open_rel_dir(root, tp).map_err(entry_err(&e.path))?;
        let ldir = fsx::open_rel_dir(root, lp).map_err(entry_err(&e.path))?;
        let tmp = fsx::cname(&tmp_name()).map_err(entry_err(&e.path))?;
        let (tn, ln) = (fsx::cname(tn).map_err(entry_err(&e.path))?, fsx::cname(ln).map_err(entry_err(&e.path))?);
        rustix::fs::linkat(&tdir, tn.as_c_str(), &ldir, tmp.as_c_str(), AtFlags::empty())
            .map_err(|x| entry_err(&e.path)(x.into()))?;
        if let Err(x) = rustix::fs::renameat(&ldir, tmp.as_c_str(), &ldir, ln.as_c_str()) {
            let _ = rustix::fs::unlinkat(&ldir, tmp.as_c_str(), AtFlags::empty());
            return Err(entry_err(&e.path)(x.into()));
        }
        parent_of(&e.path);
        st.changed += 1;
    }
    // Directory metadata last, deepest first: every directory the image changes, and every
    // one whose entries changed (that moved its mtime).
    let mut all: Vec<usize> = meta_dirs;
    for p in &touched {
        if let Ok(i) = entries.binary_search_by(|e| crate::store::manifest::path_cmp(&e.path, p))
            && entries[i].kind == Kind::Dir
        {
            all.push(i);
        }
    }
    all.sort_unstable();
    all.dedup();
    for &idx in all.iter().rev() {
        let e = &entries[idx];
        let fd = fsx::open_rel_dir(root, &e.path).map_err(entry_err(&e.path))?;
        fd_meta(fd.as_fd(), e, as_root).map_err(entry_err(&e.path))?;
    }
    Ok(st)
}

/// Owner, mode, xattrs (extra ones removed) and times of an open file or directory.
fn fd_meta(fd: BorrowedFd<'_>, e: &Entry, as_root: bool) -> std::io::Result<()> {
    if as_root {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(e.uid)), Some(rustix::fs::Gid::from_raw(e.gid)))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
    // After chown: changing the owner clears security.capability.
    let have = fsx::fd_xattrs(fd)?;
    for x in stale(&have, &e.xattrs) {
        match rustix::fs::fremovexattr(fd, OsStr::from_bytes(&x.name)) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(err) => return Err(err.into()),
        }
    }
    fsx::set_fd_xattrs(fd, &missing(&have, &e.xattrs))?;
    fsx::set_times_fd(fd, e.mtime, e.mtime_nsec)
}

/// Attributes `have` holds that `want` does not.
fn stale<'a>(have: &'a [Xattr], want: &[Xattr]) -> Vec<&'a Xattr> {
    have.iter().filter(|h| !want.iter().any(|w| w.name == h.name)).collect()
}

/// Attributes of `want` that `have` lacks or holds with another value.
fn missing(have: &[Xattr], want: &[Xattr]) -> Vec<Xattr> {
    want.iter().filter(|w| !have.contains(w)).cloned().collect()
}

/// Metadata of a non-directory, changed where it stands.
fn meta_in_place(dir: BorrowedFd<'_>, e: &Entry, as_root: bool) -> std::io::Result<()> {
    let name = name_of(e);
    if let Kind::File { .. } = e.kind {
        let cn = fsx::cname(name)?;
        let fd = rustix::fs::openat(
            dir,
            cn.as_c_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::other("changed type during the update"));
        }
        return fd_meta(fd.as_fd(), e, as_root);
    }
    finish_special(dir, name, e, as_root)
}

/// Owner, mode (not for symlinks), xattrs and times of `name` in `dir`, not followed.
fn finish_special(dir: BorrowedFd<'_>, name: &[u8], e: &Entry, as_root: bool) -> std::io::Result<()> {
    crate::deploy::set_owner_mode(dir, name, e, as_root, !matches!(e.kind, Kind::Symlink { .. }))?;
    let have = fsx::link_xattrs(dir, name)?;
    let p = fsx::proc_path(dir, name);
    for x in stale(&have, &e.xattrs) {
        match rustix::fs::lremovexattr(OsStr::from_bytes(&p), OsStr::from_bytes(&x.name)) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(err) => return Err(err.into()),
        }
    }
    fsx::set_link_xattrs(dir, name, &missing(&have, &e.xattrs))?;
    fsx::set_times_at(dir, name, e.mtime, e.mtime_nsec)
}

/// A symlink, device, fifo or socket made under a temporary name and renamed into place.
fn write_special(dir: BorrowedFd<'_>, e: &Entry, as_root: bool) -> std::io::Result<()> {
    let tmp = tmp_name();
    let ct = fsx::cname(&tmp)?;
    match &e.kind {
        Kind::Symlink { target } => {
            let t = fsx::cname(target)?;
            rustix::fs::symlinkat(t.as_c_str(), dir, ct.as_c_str())?;
        }
        Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
            let ft =
                if matches!(e.kind, Kind::CharDev { .. }) { FileType::CharacterDevice } else { FileType::BlockDevice };
            rustix::fs::mknodat(dir, ct.as_c_str(), ft, Mode::from_raw_mode(0o600), *rdev)?;
        }
        Kind::Fifo | Kind::Socket => {
            let ft = if e.kind == Kind::Fifo { FileType::Fifo } else { FileType::Socket };
            rustix::fs::mknodat(dir, ct.as_c_str(), ft, Mode::from_raw_mode(0o600), 0)?;
        }
        _ => return Err(std::io::Error::other("not a special entry")),
    }
    let res = (|| {
        finish_special(dir, &tmp, e, as_root)?;
        let cn = fsx::cname(name_of(e))?;
        rustix::fs::renameat(dir, ct.as_c_str(), dir, cn.as_c_str())?;
        Ok(())
    })();
    if res.is_err() {
        let _ = rustix::fs::unlinkat(dir, ct.as_c_str(), AtFlags::empty());
    }
    res
}

/// Write a regular file under a temporary name, every chunk verified; returns it staged
/// for its [`Batch`] with (bytes fetched, bytes reused).
fn write_file(
    dir: BorrowedFd<'_>,
    e: &Entry,
    reuse: &Reuse,
    src: &dyn ChunkSource,
    content: Option<(Vec<u8>, u64)>,
    as_root: bool,
    ctl: &Control,
) -> Result<(Staged, u64, u64), ApplyError> {
    let Kind::File { size, extents } = &e.kind else {
        return Err(entry_err(&e.path)(std::io::Error::other("not a regular file")));
    };
    let tmp = tmp_name();
    let ct = fsx::cname(&tmp).map_err(entry_err(&e.path))?;
    let fd = rustix::fs::openat(
        dir,
        ct.as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|x| entry_err(&e.path)(x.into()))?;
    let file = std::fs::File::from(fd);
    let res = (|| -> Result<(u64, u64), ApplyError> {
        let (mut fetched, mut reused) = (0u64, 0u64);
        if let Some((data, wire)) = &content {
            // Verified against every chunk id already; only the data regions are written,
            // so holes stay holes.
            for x in extents {
                let (a, b) = (x.offset as usize, (x.offset + x.len()) as usize);
                let piece = data.get(a..b).ok_or_else(|| ApplyError::Chunk {
                    path: display_path(&e.path),
                    source: StoreError::ChunkCorrupt { id: [0; 32], why: "whole-file content too short".into() },
                })?;
                file.write_all_at(piece, x.offset).map_err(entry_err(&e.path))?;
            }
            fetched = *wire;
            reused = size.saturating_sub(*wire);
        }
        for x in extents.iter().filter(|_| content.is_none()) {
            let mut off = x.offset;
            for c in &x.chunks {
                if ctl.stopped() {
                    return Err(ApplyError::Stopped { done: ApplyStats::default() });
                }
                let data = match reuse.has(&c.id).then(|| reuse.get(&c.id)) {
                    Some(Some(d)) => {
                        reused += d.len() as u64;
                        d
                    }
                    // Listed as the target's, but that file changed since it was read.
                    Some(None) => {
                        return Err(ApplyError::Chunk {
                            path: display_path(&e.path),
                            source: StoreError::ChunkCorrupt {
                                id: c.id,
                                why: "the target's copy changed during the update; run it again".into(),
                            },
                        });
                    }
                    None => {
                        let d = src
                            .read_chunk(&c.id)
                            .map_err(|source| ApplyError::Chunk { path: display_path(&e.path), source })?;
                        fetched += d.len() as u64;
                        d
                    }
                };
                if data.len() != c.len as usize {
                    return Err(ApplyError::Chunk {
                        path: display_path(&e.path),
                        source: StoreError::ChunkCorrupt { id: c.id, why: "length differs from the manifest".into() },
                    });
                }
                file.write_all_at(&data, off).map_err(entry_err(&e.path))?;
                off += data.len() as u64;
            }
        }
        file.set_len(*size).map_err(entry_err(&e.path))?;
        fd_meta(file.as_fd(), e, as_root).map_err(entry_err(&e.path))?;
        Ok((fetched, reused))
    })();
    drop(file);
    let staged = res.and_then(|(fetched, reused)| {
        let cn = fsx::cname(name_of(e)).map_err(entry_err(&e.path))?;
        let own = rustix::io::fcntl_dupfd_cloexec(dir, 0).map_err(|x| entry_err(&e.path)(x.into()))?;
        let dev = rustix::fs::fstat(&own).map_err(|x| entry_err(&e.path)(x.into()))?.st_dev;
        Ok((Staged { dir: own, dev, tmp: ct.clone(), name: cn, path: e.path.clone(), size: *size }, fetched, reused))
    });
    if staged.is_err() {
        let _ = rustix::fs::unlinkat(dir, ct.as_c_str(), AtFlags::empty());
    }
    staged
}

/// Files a batch holds at most before it is made durable and renamed into place.
pub const BATCH_FILES: usize = 128;
/// File bytes a batch holds at most (bounds the data one `syncfs` waits for).
pub const BATCH_BYTES: u64 = 32 << 20;

/// A file written under its temporary name, waiting for its batch.
struct Staged {
    dir: OwnedFd,
    dev: u64,
    tmp: std::ffi::CString,
    name: std::ffi::CString,
    path: Vec<u8>,
    size: u64,
}

/// Files written, not yet renamed into place. Dropped uncommitted (an error), their
/// temporaries are removed: those paths keep their old version.
#[derive(Default)]
struct Batch {
    files: Vec<Staged>,
    bytes: u64,
}

impl Batch {
    fn add(&mut self, s: Staged) {
        self.bytes += s.size;
        self.files.push(s);
    }

    fn full(&self) -> bool {
        self.files.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES
    }

    /// Make every file durable (one `syncfs` per filesystem written to), then rename each
    /// into place, counting its bytes in `ctl.done_bytes`.
    fn commit(&mut self, ctl: &Control) -> Result<(), ApplyError> {
        let mut synced: Vec<u64> = Vec::new();
        for s in &self.files {
            if !synced.contains(&s.dev) {
                rustix::fs::syncfs(&s.dir).map_err(|x| entry_err(&s.path)(x.into()))?;
                synced.push(s.dev);
            }
        }
        let mut files = std::mem::take(&mut self.files).into_iter();
        self.bytes = 0;
        while let Some(s) = files.next() {
            if let Err(x) = rustix::fs::renameat(&s.dir, s.tmp.as_c_str(), &s.dir, s.name.as_c_str()) {
                let _ = rustix::fs::unlinkat(&s.dir, s.tmp.as_c_str(), AtFlags::empty());
                // The rest keep their old version: dropping the batch removes their temporaries.
                self.files = files.collect();
                return Err(entry_err(&s.path)(x.into()));
            }
            ctl.done_bytes.fetch_add(s.size, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for s in self.files.drain(..) {
            let _ = rustix::fs::unlinkat(&s.dir, s.tmp.as_c_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_finds_the_chunks_of_an_old_file_and_checks_them_again() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("old");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let params = ChunkerParams::V1;
        let mut r = Reuse::default();
        let n = r.add_file(std::fs::File::open(&p).unwrap(), data.len() as u64, &params).unwrap();
        assert_eq!(n, data.len() as u64);
        let mut first = None;
        params
            .cut_slice(&data, |c: &[u8]| -> Result<(), ()> {
                first.get_or_insert_with(|| c.to_vec());
                Ok(())
            })
            .unwrap();
        let first = first.unwrap();
        let id = *blake3::hash(&first).as_bytes();
        assert_eq!(r.get(&id).as_deref(), Some(&first[..]));
        // The file changes under it: the chunk is no longer offered.
        std::fs::write(&p, vec![0u8; data.len()]).unwrap();
        assert_eq!(r.get(&id), None);
        assert!(!r.has(&[9; 32]));
    }

    #[test]
    fn xattr_sets_are_compared_by_name_and_value() {
        let x = |n: &str, v: u8| Xattr { name: n.as_bytes().to_vec(), value: vec![v] };
        let have = vec![x("user.a", 1), x("user.b", 1)];
        let want = vec![x("user.b", 2), x("user.c", 1)];
        assert_eq!(stale(&have, &want), vec![&have[0]]);
        assert_eq!(missing(&have, &want), want);
        assert!(missing(&want, &want).is_empty());
    }
}
