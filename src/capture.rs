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

/// Capture metadata of one regular file, used to skip unchanged files next time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct CacheRec {
    #[serde(with = "serde_bytes")]
    path: Vec<u8>,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    ctime: i64,
    ctime_nsec: u32,
    ino: u64,
}

const CACHE_MAGIC: &[u8; 8] = b"USCACHE1";

fn load_cache(store: &Store, id: &ChunkId) -> Option<Vec<CacheRec>> {
    let raw = std::fs::read(store.cache_path(id)).ok()?;
    let body = zstd::stream::decode_all(&raw[..]).ok()?;
    let rest = body.strip_prefix(CACHE_MAGIC)?;
    postcard::from_bytes(rest).ok()
}

fn save_cache(store: &Store, id: &ChunkId, recs: &[CacheRec]) -> Result<(), StoreError> {
    let mut body = CACHE_MAGIC.to_vec();
    body = postcard::to_extend(&recs, body)
        .map_err(|e| StoreError::Io { what: "encoding cache".into(), source: std::io::Error::other(e.to_string()) })?;
    let z = zstd::bulk::compress(&body, 3).map_err(crate::store::io_err("compressing cache"))?;
    write_atomic(&store.tmp_dir(), &store.cache_path(id), &z).map_err(crate::store::io_err("writing capture cache"))
}

struct Job {
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

fn list_dir(fd: BorrowedFd<'_>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
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

/// Capture `source` into the store. `parent` is the previous version of the same image,
/// whose metadata cache lets unchanged files be skipped.
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

    // Parent metadata cache: path -> (cache record, parent extents).
    let parent_data = parent.and_then(|pid| {
        let m = store.read_manifest(&pid).ok()?;
        let cache = load_cache(store, &pid)?;
        Some((m, cache))
    });
    let mut reuse: HashMap<&[u8], (&CacheRec, &Entry)> = HashMap::new();
    // Files of the previous version by path: a changed file is stored as deltas against
    // its old chunks.
    let parent_files: HashMap<&[u8], &Entry> = parent_data
        .as_ref()
        .map(|(m, _)| {
            m.entries.iter().filter(|e| matches!(e.kind, Kind::File { .. })).map(|e| (e.path.as_slice(), e)).collect()
        })
        .unwrap_or_default();
    if let Some((m, cache)) = &parent_data {
        let by_path: HashMap<&[u8], &Entry> = m.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
        for c in cache {
            if let Some(e) = by_path.get(c.path.as_slice()) {
                reuse.insert(&c.path, (c, e));
            }
        }
    }

    let progress = Progress::new("capture", None, opts.quiet);
    let stats = Stats::default();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(1024);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();

    let mut entries: Vec<Entry> = Vec::new();
    let mut cache_out: Vec<CacheRec> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut cs = CaptureStats::default();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();

    std::thread::scope(|s| -> Result<(), CaptureError> {
        for _ in 0..workers {
            let (rx, tx, stats, progress) = (job_rx.clone(), done_tx.clone(), &stats, &progress);
            s.spawn(move || {
                for job in rx {
                    let res = read_file(store, &job, stats);
                    if let Ok((_, _, n)) = &res {
                        progress.add(1, *n);
                    }
                    if tx.send(Done { idx: job.idx, res }).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let walk = (|| -> Result<(), CaptureError> {
            let root_xattrs = fsx::fd_xattrs(root_fd.as_fd()).map_err(src_err)?;
            entries.push(meta_entry(Vec::new(), Kind::Dir, &root_st, root_xattrs));
            let names = list_dir(root_fd.as_fd()).map_err(src_err)?;
            let mut stack = vec![Frame { fd: Arc::new(root_fd), path: Vec::new(), names: names.into_iter() }];
            while let Some(frame) = stack.last_mut() {
                let Some(name) = frame.names.next() else {
                    stack.pop();
                    continue;
                };
                let dir = frame.fd.clone();
                let rel = join(&frame.path, &name);
                if skip.iter().any(|s| s == &rel) {
                    continue;
                }
                let fail =
                    |errors: &mut Vec<String>, what: String| errors.push(format!("{}: {what}", display_path(&rel)));
                let cn = match fsx::cname(&name) {
                    Ok(c) => c,
                    Err(e) => {
                        fail(&mut errors, e.to_string());
                        continue;
                    }
                };
                let st = match rustix::fs::statat(dir.as_fd(), cn.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(e) => {
                        fail(
                            &mut errors,
                            if e == rustix::io::Errno::NOENT {
                                "vanished during capture".into()
                            } else {
                                e.to_string()
                            },
                        );
                        continue;
                    }
                };
                let ft = FileType::from_raw_mode(st.st_mode);
                if excludes.matches(&rel, ft == FileType::Directory) {
                    continue;
                }
                if ft != FileType::Directory && st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(target) = inodes.get(&key) {
                        entries.push(meta_entry(rel, Kind::Hardlink { target: target.clone() }, &st, vec![]));
                        continue;
                    }
                    inodes.insert(key, rel.clone());
                }
                let link_x = |errors: &mut Vec<String>| match fsx::link_xattrs(dir.as_fd(), &name) {
                    Ok(x) => x,
                    Err(e) => {
                        errors.push(format!("{}: reading xattrs: {e}", display_path(&rel)));
                        vec![]
                    }
                };
                match ft {
                    FileType::Directory => {
                        let fd = match fsx::open_dir_at(dir.as_fd(), &name) {
                            Ok(fd) => fd,
                            Err(e) => {
                                fail(&mut errors, e.to_string());
                                continue;
                            }
                        };
                        let x = match fsx::fd_xattrs(fd.as_fd()) {
                            Ok(x) => x,
                            Err(e) => {
                                fail(&mut errors, format!("reading xattrs: {e}"));
                                vec![]
                            }
                        };
                        entries.push(meta_entry(rel.clone(), Kind::Dir, &st, x));
                        let other_fs = st.st_dev != root_st.st_dev;
                        if other_fs && (opts.one_file_system || is_virtual_fs(fd.as_fd())) {
                            continue;
                        }
                        match list_dir(fd.as_fd()) {
                            Ok(names) => stack.push(Frame { fd: Arc::new(fd), path: rel, names: names.into_iter() }),
                            Err(e) => fail(&mut errors, format!("listing: {e}")),
                        }
                    }
                    FileType::Symlink => {
                        let target = match rustix::fs::readlinkat(dir.as_fd(), cn.as_c_str(), Vec::new()) {
                            Ok(t) => t.into_bytes(),
                            Err(e) => {
                                fail(&mut errors, e.to_string());
                                continue;
                            }
                        };
                        let x = link_x(&mut errors);
                        entries.push(meta_entry(rel, Kind::Symlink { target }, &st, x));
                    }
                    FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                        let kind = match ft {
                            FileType::CharacterDevice => Kind::CharDev { rdev: st.st_rdev },
                            FileType::BlockDevice => Kind::BlockDev { rdev: st.st_rdev },
                            FileType::Fifo => Kind::Fifo,
                            _ => Kind::Socket,
                        };
                        let x = link_x(&mut errors);
                        entries.push(meta_entry(rel, kind, &st, x));
                    }
                    FileType::RegularFile => {
                        let size = st.st_size as u64;
                        cs.files += 1;
                        cs.bytes += size;
                        let rec = CacheRec {
                            path: rel.clone(),
                            size,
                            mtime: st.st_mtime,
                            mtime_nsec: st.st_mtime_nsec as u32,
                            ctime: st.st_ctime,
                            ctime_nsec: st.st_ctime_nsec as u32,
                            ino: st.st_ino,
                        };
                        // Same size, mtime, ctime and inode: neither data nor xattrs changed
                        // (setting an xattr updates ctime), so both are reused unread.
                        let hit = reuse.get(rel.as_slice()).and_then(|(c, e)| match &e.kind {
                            Kind::File { extents, .. }
                                if **c == rec
                                    && extents
                                        .iter()
                                        .all(|x| x.chunks.iter().all(|ch| store.locate(&ch.id).is_some())) =>
                            {
                                Some((extents.clone(), e.xattrs.clone()))
                            }
                            _ => None,
                        });
                        cache_out.push(rec);
                        if let Some((extents, x)) = hit {
                            entries.push(meta_entry(rel, Kind::File { size, extents }, &st, x));
                            cs.reused_files += 1;
                            progress.add(1, 0);
                            continue;
                        }
                        let idx = entries.len();
                        let bases = parent_files.get(rel.as_slice()).map(|e| chunk_offsets(e)).unwrap_or_default();
                        entries.push(meta_entry(rel, Kind::File { size, extents: vec![] }, &st, vec![]));
                        let sparse = (st.st_blocks as u64) * 512 < size;
                        if job_tx.send(Job { idx, dir, name, size, sparse, bases }).is_err() {
                            break;
                        }
                    }
                    _ => warnings.push(format!("{}: unknown file type skipped", display_path(&rel))),
                }
            }
            Ok(())
        })();
        drop(job_tx);
        // Collect worker results even if the walk failed, so the scope can end.
        let mut store_failure = None;
        let mut failed_idx = Vec::new();
        for d in done_rx {
            match d.res {
                Ok((extents, xattrs, read)) => {
                    cs.read_bytes += read;
                    let e = &mut entries[d.idx];
                    if let Kind::File { extents: ex, .. } = &mut e.kind {
                        *ex = extents;
                    }
                    e.xattrs = xattrs;
                }
                Err(msg) => {
                    if let Some(m) = msg.strip_prefix("STORE:") {
                        store_failure.get_or_insert_with(|| m.to_string());
                    } else {
                        errors.push(format!("{}: {msg}", display_path(&entries[d.idx].path)));
                    }
                    failed_idx.push(d.idx);
                }
            }
        }
        walk?;
        if let Some(m) = store_failure {
            return Err(CaptureError::Store(StoreError::Io {
                what: "storing chunks".into(),
                source: std::io::Error::other(m),
            }));
        }
        if !failed_idx.is_empty() {
            failed_idx.sort_unstable();
            let drop_paths: std::collections::HashSet<Vec<u8>> =
                failed_idx.iter().map(|&i| entries[i].path.clone()).collect();
            for i in failed_idx.into_iter().rev() {
                entries.remove(i);
            }
            // A hard link to a file that could not be read has nothing to point at.
            entries.retain(|e| !matches!(&e.kind, Kind::Hardlink { target } if drop_paths.contains(target)));
            cache_out.retain(|c| !drop_paths.contains(&c.path));
        }
        Ok(())
    })?;
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
    let manifest = Manifest { chunker: store.params(), entries };
    manifest.validate().map_err(|e| StoreError::ManifestCorrupt { id: [0; 32], why: e.to_string() })?;
    // An unchanged tree gives the parent's manifest again: it was read and verified
    // above, so neither it nor an identical cache needs writing.
    let unchanged = parent.filter(|_| parent_data.as_ref().is_some_and(|(pm, _)| *pm == manifest));
    let id = match unchanged {
        Some(p) => p,
        None => store.write_manifest(&manifest)?,
    };
    if unchanged.is_none() || parent_data.as_ref().is_none_or(|(_, pc)| *pc != cache_out) {
        save_cache(store, &id, &cache_out)?;
    }
    cs.entries = manifest.entries.len() as u64;
    cs.new_chunks = stats.new_chunks.load(Ordering::Relaxed);
    cs.added_bytes = store.written_bytes() - written;
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
    fn bad_pattern_is_a_clear_error() {
        let err = Excludes::new(&["a[".to_string()]).err().unwrap();
        assert!(err.to_string().contains("a["));
    }
}
