//! `understudy capture`: walk a live tree through directory fds and store it as an image.
//!
//! One walker thread stats entries in order and hands regular files to worker threads,
//! which read, chunk, hash, compress and store them. Files whose size, mtime, ctime and
//! inode match the previous capture of the same image are not read again: their chunk
//! lists come from the parent manifest (the metadata cache of the parent capture).

use crate::fsx;
use crate::progress::Progress;
use crate::store::manifest::{ChunkRef, Entry, Extent, Kind, Manifest, Xattr, display_path};
use crate::store::{ChunkId, Store, StoreError, write_atomic};
use crossbeam_channel::Sender;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Excluded on a live `/` unless `--no-default-excludes` is given: contents of virtual,
/// volatile and cache directories (the directories themselves stay, empty).
pub const DEFAULT_ROOT_EXCLUDES: &[&str] = &[
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/*",
    "/tmp/*",
    "/var/tmp/*",
    "/mnt/*",
    "/media/*",
    "/lost+found/*",
    "/var/cache/apt/archives/*.deb",
    "/var/lib/apt/lists/*_*",
    "/swapfile",
    "/swap.img",
];

/// Filesystems whose contents are never captured (their mount point directory is).
const VIRTUAL_FS_MAGIC: &[i64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x1cd1,      // devpts
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x7363_6673, // securityfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0xcafe_4a11, // bpf
    0x6165_676c, // pstore
    0xde5e_81e4, // efivarfs
    0x6265_6570, // configfs
    0x6573_5543, // fusectl
    0x1980_0202, // mqueue
    0x4249_4e4d, // binfmt_misc
    0x6e73_6673, // nsfs
    0x0187,      // autofs
];

/// What to capture and how.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Exclude patterns (see [`Excludes`]).
    pub excludes: Vec<String>,
    /// Apply [`DEFAULT_ROOT_EXCLUDES`] when the source is `/`.
    pub default_excludes: bool,
    /// Do not descend into other filesystems.
    pub one_file_system: bool,
    /// Skip unreadable or vanished files with a warning instead of failing.
    pub skip_unreadable: bool,
    /// Absolute paths skipped entirely (the data dir itself).
    pub skip_paths: Vec<PathBuf>,
    /// Suppress the progress bar.
    pub quiet: bool,
}

impl CaptureOptions {
    /// This host's own root as the standby wizard captures it (CLI and console alike):
    /// the usual root excludes, one filesystem.
    pub fn this_root(quiet: bool) -> CaptureOptions {
        CaptureOptions { default_excludes: true, one_file_system: true, quiet, ..CaptureOptions::default() }
    }
}

/// Counters of one capture.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureStats {
    /// Entries in the image.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Logical bytes of regular files.
    pub bytes: u64,
    /// Bytes actually read from the source.
    pub read_bytes: u64,
    /// Files whose chunk lists came from the parent without reading.
    pub reused_files: u64,
    /// Directories whose listing and xattrs came from the parent without reading.
    pub reused_dirs: u64,
    /// Chunks newly written.
    pub new_chunks: u64,
    /// Bytes newly written to packs.
    pub added_bytes: u64,
}

/// A finished capture.
#[derive(Debug)]
pub struct Captured {
    /// The manifest id.
    pub id: ChunkId,
    /// The manifest.
    pub manifest: Manifest,
    /// Counters.
    pub stats: CaptureStats,
    /// Skipped files and other warnings.
    pub warnings: Vec<String>,
}

/// Capture errors.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source root cannot be opened.
    #[error("cannot open source {path}: {source}")]
    Source {
        /// Source path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An exclude pattern does not parse.
    #[error("bad exclude pattern {pattern:?}: {why}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Parser message.
        why: String,
    },
    /// Files could not be read; no image was created.
    #[error("{} source file(s) could not be read (use --skip-unreadable to capture without them):\n  {}", .0.len(), .0.join("\n  "))]
    Unreadable(Vec<String>),
}

impl CaptureError {
    /// The caller's input is at fault (a missing source, a bad pattern), not the machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            CaptureError::Source { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            CaptureError::Pattern { .. } => true,
            CaptureError::Store(_) | CaptureError::Unreadable(_) => false,
        }
    }
}

/// Exclude patterns, rsync-like: a pattern starting with `/` is anchored at the source
/// root, others match at any depth; `*` stays within one component, `**` crosses them;
/// a trailing `/` matches directories only. An excluded directory is not descended into.
pub struct Excludes {
    any: GlobSet,
    dirs: GlobSet,
}

impl Excludes {
    /// Compile patterns.
    pub fn new(patterns: &[String]) -> Result<Excludes, CaptureError> {
        let mut any = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        for p in patterns {
            let (body, dir_only) = match p.strip_suffix('/') {
                Some(b) if !b.is_empty() => (b, true),
                _ => (p.as_str(), false),
            };
            let glob = if body.starts_with('/') { body.to_string() } else { format!("/**/{body}") };
            let g = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| CaptureError::Pattern { pattern: p.clone(), why: e.to_string() })?;
            if dir_only {
                dirs.add(g)
            } else {
                any.add(g)
            };
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| CaptureError::Pattern { pattern: "(set)".into(), why: e.to_string() })
        };
        Ok(Excludes { any: build(any)?, dirs: build(dirs)? })
    }

    /// Is the image path `rel` (no leading slash) excluded?
    pub fn matches(&self, rel: &[u8], is_dir: bool) -> bool {
        let mut p = Vec::with_capacity(rel.len() + 1);
        p.push(b'/');
        p.extend_from_slice(rel);
        let path = Path::new(std::ffi::OsStr::from_bytes(&p));
        self.any.is_match(path) || (is_dir && self.dirs.is_match(path))
    }
}

/// Capture metadata of one regular file or symlink, used to skip unchanged ones next time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CacheRec {
    #[serde(with = "serde_bytes")]
    path: Vec<u8>,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    ctime: i64,
    ctime_nsec: u32,
    ino: u64,
}

impl CacheRec {
    /// The record of `path` with stat `st`.
    pub(crate) fn new(path: Vec<u8>, st: &rustix::fs::Stat) -> CacheRec {
        CacheRec {
            path,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec as u32,
            ino: st.st_ino,
        }
    }

    /// Its ctime is older than the capture that recorded it by more than the timestamp
    /// granularity, so a later change cannot have kept the same ctime. The kernel stamps
    /// with a coarse clock (one tick, at most 10 ms), and a filesystem with whole-second
    /// times (ctime_nsec 0) is given two seconds; a record newer than that is read again
    /// next time (git's "racily clean" entries).
    pub(crate) fn settled(&self, started_ns: i128) -> bool {
        let margin = if self.ctime_nsec == 0 { 2_000_000_000 } else { 100_000_000 };
        (self.ctime as i128) * 1_000_000_000 + self.ctime_nsec as i128 + margin < started_ns
    }

    /// Its path.
    pub(crate) fn path(&self) -> &[u8] {
        &self.path
    }

    /// `st` has the size, times and inode recorded (without building a record).
    pub(crate) fn same_stat(&self, st: &rustix::fs::Stat) -> bool {
        self.size == st.st_size as u64
            && self.mtime == st.st_mtime
            && self.mtime_nsec == st.st_mtime_nsec as u32
            && self.ctime == st.st_ctime
            && self.ctime_nsec == st.st_ctime_nsec as u32
            && self.ino == st.st_ino
    }
}

/// A directory's stat and its complete listing (before excludes): a directory whose
/// ctime, mtime and inode are unchanged has the same names (adding, removing or renaming
/// an entry moves both), so it is not read again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DirRec {
    stat: CacheRec,
    names: Vec<serde_bytes::ByteBuf>,
}

/// What one capture leaves for the next capture of the same image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Cache {
    /// When that capture started (ns since the epoch): only records settled before it
    /// are trusted.
    started_ns: i128,
    files: Vec<CacheRec>,
    links: Vec<CacheRec>,
    dirs: Vec<DirRec>,
}

impl Cache {
    /// The same records (a new start time alone is not worth a write).
    fn same_records(&self, other: &Cache) -> bool {
        self.files == other.files && self.links == other.links && self.dirs == other.dirs
    }
}

/// Version 2 added symlinks, directories and the start time; a version 1 cache is not
/// read (the next capture reads everything once).
const CACHE_MAGIC: &[u8; 8] = b"USCACHE2";

fn load_cache(store: &Store, id: &ChunkId) -> Option<Cache> {
    let raw = std::fs::read(store.cache_path(id)).ok()?;
    let body = zstd::stream::decode_all(&raw[..]).ok()?;
    let rest = body.strip_prefix(CACHE_MAGIC)?;
    postcard::from_bytes(rest).ok()
}

fn save_cache(store: &Store, id: &ChunkId, recs: &Cache) -> Result<(), StoreError> {
    let mut body = CACHE_MAGIC.to_vec();
    body = postcard::to_extend(recs, body)
        .map_err(|e| StoreError::Io { what: "encoding cache".into(), source: std::io::Error::other(e.to_string()) })?;
    let z = zstd::bulk::compress(&body, 3).map_err(crate::store::io_err("compressing cache"))?;
    write_atomic(&store.tmp_dir(), &store.cache_path(id), &z).map_err(crate::store::io_err("writing capture cache"))
}

struct Job {
    /// The walk part and the index of the file's entry in it.
    part: usize,
    idx: usize,
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    size: u64,
    sparse: bool,
    /// The previous version's chunks of this path as (offset, id), ascending: delta bases.
    bases: Vec<(u64, ChunkId)>,
}

/// The old chunk covering `offset` (or the last one before it): the likeliest previous
/// version of a new chunk cut at that offset.
fn base_for(bases: &[(u64, ChunkId)], offset: u64) -> Option<&ChunkId> {
    let i = bases.partition_point(|(o, _)| *o <= offset);
    bases.get(i.checked_sub(1)?).map(|(_, id)| id)
}

/// (offset, id) of every chunk of a file entry.
fn chunk_offsets(e: &Entry) -> Vec<(u64, ChunkId)> {
    let Kind::File { extents, .. } = &e.kind else { return Vec::new() };
    let mut out = Vec::new();
    for x in extents {
        let mut o = x.offset;
        for ch in &x.chunks {
            out.push((o, ch.id));
            o += ch.len as u64;
        }
    }
    out
}

struct Done {
    part: usize,
    idx: usize,
    res: Result<(Vec<Extent>, Vec<Xattr>, u64), String>,
}

/// Reads `left` bytes from `pos` with pread, so several regions share one fd (capture and
/// update both cut file regions into chunks through it).
pub(crate) struct RegionReader<'a> {
    /// The file.
    pub file: &'a std::fs::File,
    /// Where the next read starts.
    pub pos: u64,
    /// Bytes still to read.
    pub left: u64,
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        self.left -= got as u64;
        Ok(got)
    }
}

fn open_file(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<OwnedFd> {
    let n = fsx::cname(name)?;
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    match rustix::fs::openat(dir, n.as_c_str(), base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::openat(dir, n.as_c_str(), base, Mode::empty())?),
        r => Ok(r?),
    }
}

fn read_file(store: &Store, job: &Job, stats: &Stats) -> Result<(Vec<Extent>, Vec<Xattr>, u64), String> {
    let fd = open_file(job.dir.as_fd(), &job.name).map_err(|e| e.to_string())?;
    let st = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("changed type during capture".into());
    }
    let xattrs = fsx::fd_xattrs(fd.as_fd()).map_err(|e| format!("reading xattrs: {e}"))?;
    let regions = if job.sparse {
        fsx::data_regions(fd.as_fd(), job.size).map_err(|e| e.to_string())?
    } else if job.size > 0 {
        vec![(0, job.size)]
    } else {
        vec![]
    };
    let file = std::fs::File::from(fd);
    let params = store.params();
    let mut extents = Vec::with_capacity(regions.len());
    let mut read = 0u64;
    for (offset, len) in regions {
        let mut chunks = Vec::new();
        let mut store_err = None;
        let mut at = offset;
        let got = params
            .cut_reader(RegionReader { file: &file, pos: offset, left: len }, len, |c| {
                let base = base_for(&job.bases, at);
                at += c.len() as u64;
                let put = store.put_near(c, base);
                match put {
                    Ok((id, put)) => {
                        if put.new {
                            stats.new_chunks.fetch_add(1, Ordering::Relaxed);
                        }
                        chunks.push(ChunkRef { id, len: c.len() as u32 });
                        Ok(())
                    }
                    Err(e) => {
                        store_err = Some(e);
                        Err(std::io::Error::other("store failed"))
                    }
                }
            })
            .map_err(|e| match store_err.take() {
                Some(se) => format!("STORE:{se}"),
                None => e.to_string(),
            })?;
        read += got;
        if !chunks.is_empty() {
            extents.push(Extent { offset, chunks });
        }
    }
    Ok((extents, xattrs, read))
}

#[derive(Default)]
struct Stats {
    new_chunks: AtomicU64,
}

struct Frame {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
}

/// The names in a directory, sorted. Reads the fd itself (a fresh one, at offset 0): the
/// `Dir` type would reopen it, which costs three more syscalls per directory.
fn list_dir(fd: BorrowedFd<'_>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut it = rustix::fs::RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(e) = it.next() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn is_virtual_fs(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).map(|s| VIRTUAL_FS_MAGIC.contains(&{ s.f_type })).unwrap_or(false)
}

/// The parent capture's entry of a path, with what its cache says about it.
struct Prev<'a> {
    entry: &'a Entry,
    /// A settled record of this file or symlink.
    rec: Option<&'a CacheRec>,
    /// A settled record of this directory, with its listing.
    dir: Option<&'a DirRec>,
}

/// Directories this deep (in components) are walked by whichever walker thread takes
/// them; the levels above are walked first, by one thread, in order.
const SPLIT_DEPTH: usize = 2;

/// What the walker threads share (read-only, plus the channel to the readers).
#[derive(Clone)]
struct Walker<'a> {
    store: &'a Store,
    opts: &'a CaptureOptions,
    excludes: &'a Excludes,
    skip: &'a [Vec<u8>],
    root_dev: u64,
    prev: &'a HashMap<&'a [u8], Prev<'a>, foldhash::fast::RandomState>,
    jobs: crossbeam_channel::Sender<Job>,
    progress: &'a Progress,
}

/// A subtree given to another walker thread: part `part` of the result.
struct Task {
    part: usize,
    frame: Frame,
}

/// What walking one part of the tree gave: its entries in walk order and what goes with
/// them. Part 0 is the top of the tree; the subtrees split off it come back as their own
/// parts and are put back in place after the walk.
#[derive(Default)]
struct Part {
    entries: Vec<Entry>,
    /// Entries whose content came from the parent unread.
    reused: Vec<bool>,
    /// Why an entry's file could not be read (set when the readers are done).
    failed: Vec<Option<String>>,
    /// (index, (dev, inode)) of the non-directories with more than one link.
    linked: Vec<(usize, (u64, u64))>,
    cache: Cache,
    errors: Vec<String>,
    warnings: Vec<String>,
    /// (entries.len() at the split, task part number), ascending.
    splits: Vec<(usize, usize)>,
    /// Inodes with several links met in this part: a later name of one is a hard link
    /// whatever the other parts hold, so its data is not read again.
    seen_inodes: std::collections::HashSet<(u64, u64)>,
    reused_dirs: u64,
}

impl Part {
    fn push(&mut self, e: Entry, reused: bool) -> usize {
        self.entries.push(e);
        self.reused.push(reused);
        self.failed.push(None);
        self.entries.len() - 1
    }
}

impl Walker<'_> {
    /// Walk the subtrees handed out until there are no more.
    fn take_tasks(&self, tasks: crossbeam_channel::Receiver<Task>) -> Vec<(usize, Part)> {
        let mut got = Vec::new();
        for t in tasks {
            let mut part = Part::default();
            self.walk(vec![t.frame], t.part, &mut part, None);
            got.push((t.part, part));
        }
        got
    }

    /// Walk `stack` to its end into `part`. With `split`, directories at [`SPLIT_DEPTH`]
    /// are handed out as tasks (numbered from `next_part`) instead of walked here.
    fn walk(&self, mut stack: Vec<Frame>, part_no: usize, part: &mut Part, split: Option<(&Sender<Task>, &mut usize)>) {
        let mut split = split;
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                stack.pop();
                continue;
            };
            let dir = frame.fd.clone();
            let rel = join(&frame.path, &name);
            if self.skip.iter().any(|s| s == &rel) {
                continue;
            }
            let fail = |errors: &mut Vec<String>, what: String| errors.push(format!("{}: {what}", display_path(&rel)));
            let cn = match fsx::cname(&name) {
                Ok(c) => c,
                Err(e) => {
                    fail(&mut part.errors, e.to_string());
                    continue;
                }
            };
            let st = match rustix::fs::statat(dir.as_fd(), cn.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    let why =
                        if e == rustix::io::Errno::NOENT { "vanished during capture".into() } else { e.to_string() };
                    fail(&mut part.errors, why);
                    continue;
                }
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            if self.excludes.matches(&rel, ft == FileType::Directory) {
                continue;
            }
            let linked = (ft != FileType::Directory && st.st_nlink > 1).then_some((st.st_dev, st.st_ino));
            let prev = self.prev.get(rel.as_slice());
            let link_x = |errors: &mut Vec<String>| match fsx::link_xattrs(dir.as_fd(), &name) {
                Ok(x) => Some(x),
                Err(e) => {
                    errors.push(format!("{}: reading xattrs: {e}", display_path(&rel)));
                    None
                }
            };
            let idx = match ft {
                FileType::Directory => {
                    let fd = match fsx::open_dir_at(dir.as_fd(), &name) {
                        Ok(fd) => fd,
                        Err(e) => {
                            fail(&mut part.errors, e.to_string());
                            continue;
                        }
                    };
                    let rec = CacheRec::new(rel.clone(), &st);
                    // Unchanged since the parent: its xattrs and names are the parent's.
                    let hit =
                        prev.and_then(|p| p.dir.filter(|d| d.stat == rec && p.entry.kind == Kind::Dir).map(|d| (p, d)));
                    let (x, listed, cacheable) = match hit {
                        Some((p, d)) => {
                            (p.entry.xattrs.clone(), Some(d.names.iter().map(|n| n.to_vec()).collect()), true)
                        }
                        None => match fsx::fd_xattrs(fd.as_fd()) {
                            Ok(x) => (x, None, true),
                            Err(e) => {
                                fail(&mut part.errors, format!("reading xattrs: {e}"));
                                (vec![], None, false)
                            }
                        },
                    };
                    part.push(meta_entry(rel.clone(), Kind::Dir, &st, x), false);
                    let other_fs = st.st_dev != self.root_dev;
                    if other_fs && (self.opts.one_file_system || is_virtual_fs(fd.as_fd())) {
                        continue;
                    }
                    if hit.is_some() {
                        part.reused_dirs += 1;
                    }
                    let names = match listed {
                        Some(n) => Ok(n),
                        None => list_dir(fd.as_fd()),
                    };
                    let names = match names {
                        Ok(n) => n,
                        Err(e) => {
                            fail(&mut part.errors, format!("listing: {e}"));
                            continue;
                        }
                    };
                    // A directory whose xattrs could not be read is read again next time.
                    if cacheable {
                        let names = names.iter().map(|n| serde_bytes::ByteBuf::from(n.clone())).collect();
                        part.cache.dirs.push(DirRec { stat: rec, names });
                    }
                    let depth = rel.iter().filter(|&&b| b == b'/').count() + 1;
                    let frame = Frame { fd: Arc::new(fd), path: rel, names: names.into_iter() };
                    match split.as_mut() {
                        Some((tasks, next)) if depth >= SPLIT_DEPTH => {
                            part.splits.push((part.entries.len(), **next));
                            // The receivers live as long as the walk; if they are gone the
                            // walk is ending anyway.
                            let _ = tasks.send(Task { part: **next, frame });
                            **next += 1;
                        }
                        _ => stack.push(frame),
                    }
                    continue;
                }
                FileType::Symlink => {
                    let rec = CacheRec::new(rel.clone(), &st);
                    let hit = prev.and_then(|p| match (&p.entry.kind, p.rec) {
                        (Kind::Symlink { target }, Some(c)) if *c == rec => {
                            Some((target.clone(), p.entry.xattrs.clone()))
                        }
                        _ => None,
                    });
                    let (target, x, cacheable) = match hit {
                        Some((t, x)) => (t, x, true),
                        None => {
                            let target = match rustix::fs::readlinkat(dir.as_fd(), cn.as_c_str(), Vec::new()) {
                                Ok(t) => t.into_bytes(),
                                Err(e) => {
                                    fail(&mut part.errors, e.to_string());
                                    continue;
                                }
                            };
                            // Not cached when its xattrs could not be read: read again next time.
                            match link_x(&mut part.errors) {
                                Some(x) => (target, x, true),
                                None => (target, vec![], false),
                            }
                        }
                    };
                    if cacheable {
                        part.cache.links.push(rec);
                    }
                    part.push(meta_entry(rel, Kind::Symlink { target }, &st, x), false)
                }
                FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                    let kind = match ft {
                        FileType::CharacterDevice => Kind::CharDev { rdev: st.st_rdev },
                        FileType::BlockDevice => Kind::BlockDev { rdev: st.st_rdev },
                        FileType::Fifo => Kind::Fifo,
                        _ => Kind::Socket,
                    };
                    let x = link_x(&mut part.errors).unwrap_or_default();
                    part.push(meta_entry(rel, kind, &st, x), false)
                }
                FileType::RegularFile => {
                    let size = st.st_size as u64;
                    let rec = CacheRec::new(rel.clone(), &st);
                    // Same size, mtime, ctime and inode: neither data nor xattrs changed
                    // (setting an xattr updates ctime), so both are reused unread.
                    // A name that was a hard link last time has its data at the link's target.
                    let data = prev.and_then(|p| match &p.entry.kind {
                        Kind::Hardlink { target } => self.prev.get(target.as_slice()).map(|t| t.entry),
                        _ => Some(p.entry),
                    });
                    let hit = prev.and_then(|p| p.rec).zip(data).and_then(|(c, d)| match &d.kind {
                        Kind::File { extents, .. }
                            if *c == rec
                                && extents
                                    .iter()
                                    .all(|x| x.chunks.iter().all(|ch| self.store.locate(&ch.id).is_some())) =>
                        {
                            Some((extents.clone(), d.xattrs.clone()))
                        }
                        _ => None,
                    });
                    part.cache.files.push(rec);
                    let later_link = linked.is_some_and(|key| !part.seen_inodes.insert(key));
                    if later_link {
                        part.push(meta_entry(rel, Kind::File { size, extents: vec![] }, &st, vec![]), false)
                    } else if let Some((extents, x)) = hit {
                        self.progress.add(1, 0);
                        part.push(meta_entry(rel, Kind::File { size, extents }, &st, x), true)
                    } else {
                        let bases = match prev.map(|p| &p.entry.kind) {
                            Some(Kind::File { .. }) => prev.map(|p| chunk_offsets(p.entry)).unwrap_or_default(),
                            _ => Vec::new(),
                        };
                        let idx = part.push(meta_entry(rel, Kind::File { size, extents: vec![] }, &st, vec![]), false);
                        let sparse = (st.st_blocks as u64) * 512 < size;
                        if self.jobs.send(Job { part: part_no, idx, dir, name, size, sparse, bases }).is_err() {
                            break;
                        }
                        idx
                    }
                }
                _ => {
                    part.warnings.push(format!("{}: unknown file type skipped", display_path(&rel)));
                    continue;
                }
            };
            if let Some(key) = linked {
                part.linked.push((idx, key));
            }
        }
    }
}

/// The parts put back in walk order: each task's entries right after the directory it
/// was split at.
fn assemble(mut parts: Vec<Part>) -> Part {
    let mut out = Part::default();
    if parts.is_empty() {
        return out;
    }
    let mut top = std::mem::take(&mut parts[0]);
    let mut pieces: Vec<(usize, usize)> = Vec::new(); // (part, entries of it to take)
    let mut at = 0;
    for &(pos, task) in &top.splits {
        pieces.push((0, pos - at));
        pieces.push((task, usize::MAX));
        at = pos;
    }
    pieces.push((0, usize::MAX));
    out.cache = std::mem::take(&mut top.cache);
    out.errors = std::mem::take(&mut top.errors);
    out.warnings = std::mem::take(&mut top.warnings);
    out.reused_dirs = top.reused_dirs;
    let mut top_entries = std::mem::take(&mut top.entries).into_iter();
    let mut top_reused = std::mem::take(&mut top.reused).into_iter();
    let mut top_failed = std::mem::take(&mut top.failed).into_iter();
    let mut top_linked = std::mem::take(&mut top.linked).into_iter().peekable();
    let mut taken = 0;
    for (p, n) in pieces {
        let base = out.entries.len();
        if p == 0 {
            let n = n.min(top_entries.len());
            out.entries.extend(top_entries.by_ref().take(n));
            out.reused.extend(top_reused.by_ref().take(n));
            out.failed.extend(top_failed.by_ref().take(n));
            while let Some(&(i, key)) = top_linked.peek() {
                if i >= taken + n {
                    break;
                }
                out.linked.push((base + i - taken, key));
                top_linked.next();
            }
            taken += n;
        } else {
            let part = std::mem::take(&mut parts[p]);
            out.linked.extend(part.linked.iter().map(|&(i, key)| (base + i, key)));
            out.entries.extend(part.entries);
            out.reused.extend(part.reused);
            out.failed.extend(part.failed);
            out.errors.extend(part.errors);
            out.warnings.extend(part.warnings);
            out.cache.files.extend(part.cache.files);
            out.cache.links.extend(part.cache.links);
            out.cache.dirs.extend(part.cache.dirs);
            out.reused_dirs += part.reused_dirs;
        }
    }
    out
}

/// Capture `source` into the store. `parent` is the previous version of the same image,
/// whose metadata cache lets unchanged files be skipped.
///
/// The top of the tree is walked by one thread; the subtrees below [`SPLIT_DEPTH`] by
/// several, each into its own part; the parts are put back in order and hard links are
/// resolved over the whole (the first path in order keeps the data), so the manifest is
/// the same whichever thread walked what.
pub fn capture(
    store: &Store,
    source: &Path,
    parent: Option<ChunkId>,
    opts: &CaptureOptions,
) -> Result<Captured, CaptureError> {
    fsx::raise_nofile_limit();
    let written = store.written_bytes();
    let src_err = |e: std::io::Error| CaptureError::Source { path: source.into(), source: e };
    let canonical = std::fs::canonicalize(source).map_err(src_err)?;
    let root_fd = fsx::open_dir(&canonical).map_err(src_err)?;
    let root_st = rustix::fs::fstat(&root_fd).map_err(|e| src_err(e.into()))?;
    let mut patterns = opts.excludes.clone();
    if opts.default_excludes && canonical == Path::new("/") {
        patterns.extend(DEFAULT_ROOT_EXCLUDES.iter().map(|s| s.to_string()));
    }
    // Never capture the store into itself.
    let skip: Vec<Vec<u8>> = opts
        .skip_paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter_map(|p| p.strip_prefix(&canonical).ok().map(|r| r.as_os_str().as_bytes().to_vec()))
        .filter(|r| !r.is_empty())
        .collect();
    let excludes = Excludes::new(&patterns)?;

    let started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default();
    let t0 = std::time::Instant::now();
    // The parent's manifest and cache are read side by side (each is a zstd stream to
    // decode: together a third of an unchanged re-capture when read one after the other).
    let parent_data = parent.and_then(|pid| {
        let (m, cache) = std::thread::scope(|s| {
            let m = s.spawn(|| store.read_manifest(&pid).ok());
            let cache = load_cache(store, &pid);
            (m.join().ok().flatten(), cache)
        });
        Some((m?, cache?))
    });
    // The parent's entries by path (a changed file is stored as deltas against its old
    // chunks), with the cache records that settled before the parent capture started.
    let mut prev: HashMap<&[u8], Prev<'_>, foldhash::fast::RandomState> = HashMap::default();
    if let Some((m, cache)) = &parent_data {
        prev.reserve(m.entries.len());
        for e in &m.entries {
            prev.insert(e.path.as_slice(), Prev { entry: e, rec: None, dir: None });
        }
        let t = cache.started_ns;
        for c in cache.files.iter().chain(&cache.links).filter(|c| c.settled(t)) {
            if let Some(p) = prev.get_mut(c.path.as_slice()) {
                p.rec = Some(c);
            }
        }
        for d in cache.dirs.iter().filter(|d| d.stat.settled(t)) {
            if let Some(p) = prev.get_mut(d.stat.path.as_slice()) {
                p.dir = Some(d);
            }
        }
    }

    let t_parent = t0.elapsed();
    let progress = Progress::new("capture", None, opts.quiet);
    let stats = Stats::default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let workers = cores.clamp(2, 8);
    let walkers = cores.clamp(1, 4);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(1024);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let (task_tx, task_rx) = crossbeam_channel::unbounded::<Task>();

    let root_xattrs = fsx::fd_xattrs(root_fd.as_fd()).map_err(src_err)?;
    let root_names = list_dir(root_fd.as_fd()).map_err(src_err)?;
    let mut top = Part::default();
    top.push(meta_entry(Vec::new(), Kind::Dir, &root_st, root_xattrs), false);
    let root_frame = Frame { fd: Arc::new(root_fd), path: Vec::new(), names: root_names.into_iter() };

    let (all, read_bytes, complete, store_failure) = std::thread::scope(|s| {
        for _ in 0..workers {
            let (rx, tx, stats, progress) = (job_rx.clone(), done_tx.clone(), &stats, &progress);
            s.spawn(move || {
                for job in rx {
                    let res = read_file(store, &job, stats);
                    if let Ok((_, _, n)) = &res {
                        progress.add(1, *n);
                    }
                    if tx.send(Done { part: job.part, idx: job.idx, res }).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let w = Walker {
            store,
            opts,
            excludes: &excludes,
            skip: &skip,
            root_dev: root_st.st_dev,
            prev: &prev,
            jobs: job_tx,
            progress: &progress,
        };
        let helpers: Vec<_> = (1..walkers)
            .map(|_| {
                let (w, rx) = (w.clone(), task_rx.clone());
                s.spawn(move || w.take_tasks(rx))
            })
            .collect();
        let mut next = 1;
        w.walk(vec![root_frame], 0, &mut top, Some((&task_tx, &mut next)));
        drop(task_tx);
        let mut parts: Vec<Part> = (0..next).map(|_| Part::default()).collect();
        let mut returned = 1;
        for (i, p) in w.take_tasks(task_rx) {
            parts[i] = p;
            returned += 1;
        }
        // The readers end once every walker's sender is gone and the queue is empty.
        drop(w);
        for h in helpers {
            // A walker thread only panics on a bug; its parts are then missing and the
            // capture fails below rather than storing a tree with a hole in it.
            if let Ok(got) = h.join() {
                for (i, p) in got {
                    parts[i] = p;
                    returned += 1;
                }
            }
        }
        parts[0] = std::mem::take(&mut top);
        let mut read_bytes = 0;
        let mut store_failure = None;
        for d in done_rx {
            match d.res {
                Ok((extents, xattrs, read)) => {
                    read_bytes += read;
                    let e = &mut parts[d.part].entries[d.idx];
                    if let Kind::File { extents: ex, .. } = &mut e.kind {
                        *ex = extents;
                    }
                    e.xattrs = xattrs;
                }
                Err(msg) => {
                    if let Some(m) = msg.strip_prefix("STORE:") {
                        store_failure.get_or_insert_with(|| m.to_string());
                    }
                    parts[d.part].failed[d.idx] = Some(msg);
                }
            }
        }
        let complete = returned == parts.len();
        (parts, read_bytes, complete, store_failure)
    });
    if let Some(m) = store_failure {
        return Err(CaptureError::Store(StoreError::Io {
            what: "storing chunks".into(),
            source: std::io::Error::other(m),
        }));
    }
    if !complete {
        return Err(CaptureError::Store(StoreError::Io {
            what: "walking the tree".into(),
            source: std::io::Error::other("a walker thread failed"),
        }));
    }
    let t_walk = t0.elapsed();
    let walked = assemble(all);
    let Part { mut entries, reused, mut failed, linked, mut cache, mut errors, mut warnings, reused_dirs, .. } = walked;
    cache.started_ns = started_ns;

    // Hard links: the first path in walk order keeps the data; the others point at it.
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, key) in linked {
        match first.get(&key) {
            None => {
                first.insert(key, i);
            }
            Some(&j) => {
                let target = entries[j].path.clone();
                let e = &mut entries[i];
                e.kind = Kind::Hardlink { target };
                e.xattrs.clear();
                // Its own read (if any) is not needed: the first path holds the data.
                failed[i] = None;
            }
        }
    }
    let mut reused_files = 0;
    for (e, r) in entries.iter().zip(&reused) {
        if *r && matches!(e.kind, Kind::File { .. }) {
            reused_files += 1;
        }
    }
    if failed.iter().any(Option::is_some) {
        let mut drop_paths: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        let mut keep = Vec::with_capacity(entries.len());
        for (e, f) in entries.into_iter().zip(failed) {
            match f {
                Some(msg) => {
                    errors.push(format!("{}: {msg}", display_path(&e.path)));
                    drop_paths.insert(e.path);
                }
                None => keep.push(e),
            }
        }
        entries = keep;
        // A hard link to a file that could not be read has nothing to point at.
        entries.retain(|e| !matches!(&e.kind, Kind::Hardlink { target } if drop_paths.contains(target)));
        cache.files.retain(|c| !drop_paths.contains(&c.path));
    }
    progress.finish();

    if !errors.is_empty() {
        if !opts.skip_unreadable {
            store.flush()?;
            return Err(CaptureError::Unreadable(errors));
        }
        for e in &errors {
            tracing::warn!("skipped {e}");
        }
        warnings.extend(errors.into_iter().map(|e| format!("skipped {e}")));
    }
    // Everything the manifest refers to must be durable before the manifest is.
    store.flush()?;
    let t_flush = t0.elapsed();
    let manifest = Manifest { chunker: store.params(), entries };
    // An unchanged tree gives the parent's manifest again: it was read and validated
    // above, so it needs neither validating nor writing.
    let unchanged = parent.filter(|_| parent_data.as_ref().is_some_and(|(pm, _)| *pm == manifest));
    let id = match unchanged {
        Some(p) => p,
        None => {
            manifest.validate().map_err(|e| StoreError::ManifestCorrupt { id: [0; 32], why: e.to_string() })?;
            store.write_manifest(&manifest)?
        }
    };
    // The cache is rewritten when its records changed, or when some were too fresh for the
    // parent's start time and have settled since (so the next capture can trust them).
    let stale = parent_data.as_ref().is_none_or(|(_, pc)| {
        !pc.same_records(&cache)
            || cache.files.iter().chain(&cache.links).any(|c| !c.settled(pc.started_ns))
            || cache.dirs.iter().any(|d| !d.stat.settled(pc.started_ns))
    });
    let t_manifest = t0.elapsed();
    if unchanged.is_none() || stale {
        save_cache(store, &id, &cache)?;
    }
    tracing::debug!(
        "capture phases (ms since start): parent manifest and cache {:.1}, walk {:.1}, flush {:.1}, \
         manifest {:.1}, cache {:.1}",
        t_parent.as_secs_f64() * 1e3,
        t_walk.as_secs_f64() * 1e3,
        t_flush.as_secs_f64() * 1e3,
        t_manifest.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );
    let files = manifest.entries.iter().filter_map(|e| match e.kind {
        Kind::File { size, .. } => Some(size),
        _ => None,
    });
    let cs = CaptureStats {
        entries: manifest.entries.len() as u64,
        files: files.clone().count() as u64,
        bytes: files.sum(),
        read_bytes,
        reused_files,
        reused_dirs,
        new_chunks: stats.new_chunks.load(Ordering::Relaxed),
        added_bytes: store.written_bytes() - written,
    };
    Ok(Captured { id, manifest, stats: cs, warnings })
}

/// A manifest entry's metadata from a `stat` (capture's and update's walks).
pub(crate) fn meta_entry(path: Vec<u8>, kind: Kind, st: &rustix::fs::Stat, xattrs: Vec<Xattr>) -> Entry {
    Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str]) -> Excludes {
        Excludes::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn anchored_patterns_match_from_the_root_only() {
        let e = ex(&["/proc/*", "/tmp/*"]);
        assert!(e.matches(b"proc/1", true));
        assert!(!e.matches(b"proc", true));
        assert!(!e.matches(b"home/proc/1", false));
        assert!(e.matches(b"tmp/x", false));
    }

    #[test]
    fn unanchored_patterns_match_at_any_depth() {
        let e = ex(&["*.log", "cache/"]);
        assert!(e.matches(b"a.log", false));
        assert!(e.matches(b"var/log/a.log", false));
        assert!(!e.matches(b"var/log/a.log.gz", false));
        assert!(e.matches(b"home/x/cache", true));
        assert!(!e.matches(b"home/x/cache", false), "dir-only pattern must not match a file");
    }

    #[test]
    fn star_stays_in_one_component() {
        let e = ex(&["/var/*.deb"]);
        assert!(e.matches(b"var/a.deb", false));
        assert!(!e.matches(b"var/cache/a.deb", false));
        assert!(ex(&["/var/**/*.deb"]).matches(b"var/cache/apt/a.deb", false));
    }

    #[test]
    fn records_are_trusted_only_once_older_than_the_timestamp_granularity() {
        let rec = |ctime: i64, ctime_nsec: u32| CacheRec {
            path: b"f".to_vec(),
            size: 1,
            mtime: ctime,
            mtime_nsec: ctime_nsec,
            ctime,
            ctime_nsec,
            ino: 1,
        };
        let at = |s: i64, ns: i64| (s as i128) * 1_000_000_000 + ns as i128;
        // Nanosecond timestamps: a tick's margin (100 ms).
        assert!(rec(100, 500_000_000).settled(at(100, 700_000_000)));
        assert!(!rec(100, 500_000_000).settled(at(100, 550_000_000)), "changed 50 ms before the capture");
        // Whole seconds: two seconds.
        assert!(!rec(100, 0).settled(at(101, 900_000_000)));
        assert!(rec(100, 0).settled(at(102, 100_000_000)));
    }

    #[test]
    fn bad_pattern_is_a_clear_error() {
        let err = Excludes::new(&["a[".to_string()]).err().unwrap();
        assert!(err.to_string().contains("a["));
    }
}
