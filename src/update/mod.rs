//! `understudy update IMAGE [TARGET]`: bring a live or mounted root to an image, changing
//! only what differs and leaving the node's identity alone.
//!
//! The target is listed ([`scan`]), compared with the manifest ([`plan`]), and the changes
//! applied ([`apply`]) with file data from chunks the target already has and the rest from
//! the local store or a server. The paths the agent rewrote at deploy time, recorded in the
//! root's `deployed.json` ([`record`]), and the `--exclude` patterns are not touched.

pub mod apply;
pub mod cli;
pub mod delta;
pub mod plan;
pub mod record;
pub mod scan_cache;

use crate::capture::{CaptureError, DEFAULT_ROOT_EXCLUDES, Excludes};
use crate::deploy::ChunkSource;
use crate::fsx;
use crate::store::manifest::{ChunkRef, Entry, Extent, Kind, Manifest, display_path};
pub use apply::{ApplyError, ApplyStats, Control, Reuse};
use plan::{Change, Plan, PlanError};
use record::{Deployed, RecordError};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Update errors.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The manifest breaks a structural rule (a path outside the target, say).
    #[error("manifest rejected: {0}")]
    Manifest(String),
    /// The target cannot be used.
    #[error("target {path}: {source}")]
    Target {
        /// Target path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Listing the target failed.
    #[error("listing the target at {path}: {source}")]
    Scan {
        /// Image path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An exclude pattern does not parse.
    #[error(transparent)]
    Pattern(#[from] CaptureError),
    /// No plan can be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Applying failed (every entry is still either old or new).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The deployment record cannot be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// How to update.
#[derive(Debug, Clone, Default)]
pub struct UpdateOptions {
    /// Extra paths left alone (capture's pattern syntax).
    pub excludes: Vec<String>,
    /// List the changes and change nothing.
    pub dry_run: bool,
    /// syncfs() the target at the end.
    pub sync: bool,
    /// Absolute paths left alone with everything under them when they are inside the
    /// target (this machine's own data dir: its store and inventory).
    pub skip_paths: Vec<PathBuf>,
    /// Where the target's listing is cached for the next update ([`scan_cache`]; this
    /// machine's data dir), if anywhere.
    pub cache_dir: Option<PathBuf>,
}

/// What an update did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpdateReport {
    /// The image (`NAME@N`).
    pub image: String,
    /// Its manifest id (hex).
    pub manifest: String,
    /// Only listed.
    pub dry_run: bool,
    /// The changes, one `rsync -i` style line each.
    pub changes: Vec<String>,
    /// Counters.
    #[serde(flatten)]
    pub stats: ApplyStats,
    /// Notes and warnings.
    pub notes: Vec<String>,
}

/// The target's entries in manifest order, as [`plan::plan`] takes them: regular files
/// with their size and no chunks, the second and later paths of a hard-linked inode as
/// [`Kind::Hardlink`]. Kept paths are listed but not descended into; the contents of
/// virtual filesystems (proc, sysfs, ...) are not listed.
pub fn scan(root: BorrowedFd<'_>, keep: &dyn Fn(&[u8], bool) -> bool) -> Result<Vec<Entry>, UpdateError> {
    scan_with_mounts(root, keep, None).map(|s| s.entries)
}

/// What [`scan_with_mounts`] found.
pub struct Scanned {
    /// The target's entries.
    pub entries: Vec<Entry>,
    /// Where virtual filesystems are mounted.
    pub mounts: Vec<Vec<u8>>,
    /// This listing, for the next one.
    pub cache: scan_cache::ScanCache,
}

/// [`scan`], also returning the paths where virtual filesystems are mounted (a live root's
/// `/proc`, `/sys`, ...: an update leaves those directories alone entirely) and this
/// listing as a cache; with the last one's `cache`, what it holds for an unchanged entry
/// is not read again.
pub fn scan_with_mounts(
    root: BorrowedFd<'_>,
    keep: &dyn Fn(&[u8], bool) -> bool,
    cache: Option<&scan_cache::ScanCache>,
) -> Result<Scanned, UpdateError> {
    use scan_cache::ScanRec;
    use serde_bytes::ByteBuf;
    let started_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    let mut virtual_mounts: Vec<Vec<u8>> = Vec::new();
    let serr = |p: &[u8]| {
        let path = display_path(p);
        move |source: std::io::Error| UpdateError::Scan { path: path.clone(), source }
    };
    let root_st = rustix::fs::fstat(root).map_err(|e| serr(b"")(e.into()))?;
    let lookup = scan_cache::Lookup::new(cache, (root_st.st_dev, root_st.st_ino));
    let mut recs: Vec<ScanRec> = Vec::new();
    let mut out =
        vec![crate::capture::meta_entry(Vec::new(), Kind::Dir, &root_st, fsx::fd_xattrs(root).map_err(serr(b""))?)];
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let root_fd = rustix::io::fcntl_dupfd_cloexec(root, 0).map_err(|e| serr(b"")(e.into()))?;
    let names = list_dir(root_fd.as_fd()).map_err(serr(b""))?;
    let mut stack: Vec<(OwnedFd, Vec<u8>, std::vec::IntoIter<Vec<u8>>)> =
        vec![(root_fd, Vec::new(), names.into_iter())];
    while let Some((dir, path, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let rel = if path.is_empty() { name.clone() } else { [path.as_slice(), b"/", &name].concat() };
        let cn = fsx::cname(&name).map_err(serr(&rel))?;
        let st = match rustix::fs::statat(dir.as_fd(), cn.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // A live root: gone since it was listed.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(serr(&rel)(e.into())),
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        let is_dir = ft == FileType::Directory;
        let kept = keep(&rel, is_dir);
        if !is_dir && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(t) = inodes.get(&key) {
                out.push(crate::capture::meta_entry(rel, Kind::Hardlink { target: t.clone() }, &st, vec![]));
                continue;
            }
            inodes.insert(key, rel.clone());
        }
        let hit = lookup.hit(&rel, &st);
        let xattrs = |hit: Option<&ScanRec>| match hit {
            Some(h) => Ok(h.xattrs.clone()),
            None => fsx::link_xattrs(dir.as_fd(), &name).map_err(serr(&rel)),
        };
        let kind = match ft {
            FileType::Directory => {
                let fd = match fsx::open_dir_at(dir.as_fd(), &name) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(serr(&rel)(e)),
                };
                let hit = hit.filter(|h| h.target.is_none() && h.names.is_some());
                let x = match hit {
                    Some(h) => h.xattrs.clone(),
                    None => fsx::fd_xattrs(fd.as_fd()).map_err(serr(&rel))?,
                };
                out.push(crate::capture::meta_entry(rel.clone(), Kind::Dir, &st, x.clone()));
                let virt = st.st_dev != root_st.st_dev && is_virtual_fs(fd.as_fd());
                if virt {
                    virtual_mounts.push(rel.clone());
                } else if !kept {
                    let names = match hit.and_then(|h| h.names.as_ref()) {
                        Some(n) => n.iter().map(|b| b.to_vec()).collect(),
                        None => list_dir(fd.as_fd()).map_err(serr(&rel))?,
                    };
                    recs.push(ScanRec {
                        stat: crate::capture::CacheRec::new(rel.clone(), &st),
                        xattrs: x,
                        target: None,
                        names: Some(names.iter().map(|n| ByteBuf::from(n.clone())).collect()),
                    });
                    stack.push((fd, rel, names.into_iter()));
                }
                continue;
            }
            FileType::Symlink => {
                let hit = hit.filter(|h| h.target.is_some());
                let target = match hit.and_then(|h| h.target.as_ref()) {
                    Some(t) => t.to_vec(),
                    None => match rustix::fs::readlinkat(dir.as_fd(), cn.as_c_str(), Vec::new()) {
                        Ok(t) => t.into_bytes(),
                        Err(rustix::io::Errno::NOENT) => continue,
                        Err(e) => return Err(serr(&rel)(e.into())),
                    },
                };
                let x = xattrs(hit)?;
                recs.push(ScanRec {
                    stat: crate::capture::CacheRec::new(rel.clone(), &st),
                    xattrs: x.clone(),
                    target: Some(ByteBuf::from(target.clone())),
                    names: None,
                });
                out.push(crate::capture::meta_entry(rel, Kind::Symlink { target }, &st, x));
                continue;
            }
            FileType::RegularFile => Kind::File { size: st.st_size as u64, extents: vec![] },
            FileType::CharacterDevice => Kind::CharDev { rdev: st.st_rdev },
            FileType::BlockDevice => Kind::BlockDev { rdev: st.st_rdev },
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::Unknown => continue,
        };
        let x = xattrs(hit.filter(|h| h.target.is_none() && h.names.is_none()))?;
        recs.push(ScanRec {
            stat: crate::capture::CacheRec::new(rel.clone(), &st),
            xattrs: x.clone(),
            target: None,
            names: None,
        });
        out.push(crate::capture::meta_entry(rel, kind, &st, x));
    }
    let cache = scan_cache::ScanCache { root: (root_st.st_dev, root_st.st_ino), started_ns, recs };
    Ok(Scanned { entries: out, mounts: virtual_mounts, cache })
}

fn is_virtual_fs(fd: BorrowedFd<'_>) -> bool {
    // proc, sysfs, devpts, cgroup2, securityfs, debugfs, tracefs, bpf, efivarfs, mqueue
    const VIRTUAL: &[i64] = &[
        0x9fa0,
        0x6265_6572,
        0x1cd1,
        0x6367_7270,
        0x7363_6673,
        0x6462_6720,
        0x7472_6163,
        0xcafe_4a11,
        0xde5e_81e4,
        0x1980_0202,
    ];
    rustix::fs::fstatfs(fd).map(|s| VIRTUAL.contains(&{ s.f_type })).unwrap_or(false)
}

fn list_dir(fd: BorrowedFd<'_>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(fd)? {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Where an update's file data comes from.
pub struct Sources<'a> {
    /// Chunks the target has.
    pub reuse: &'a Reuse,
    /// The rest of the chunks (the store or the server).
    pub chunks: &'a dyn ChunkSource,
    /// Whole files sent otherwise (rsync deltas).
    pub whole: apply::WholeFile<'a>,
}

/// An update in progress: the target open, listed and planned.
pub struct Prepared {
    root: OwnedFd,
    target: PathBuf,
    /// The target's entries.
    pub current: Vec<Entry>,
    /// The changes.
    pub plan: Plan,
    /// The target's deployment record, when it has one.
    pub record: Option<Deployed>,
    /// Notes for the report.
    pub notes: Vec<String>,
}

/// Open, list and plan the update of `target` to `m`.
pub fn prepare(target: &Path, m: &Manifest, opts: &UpdateOptions) -> Result<Prepared, UpdateError> {
    // Refused before anything is looked at: a manifest that names a path outside the root.
    m.validate().map_err(|e| UpdateError::Manifest(e.to_string()))?;
    let terr = |source| UpdateError::Target { path: target.into(), source };
    let canonical = std::fs::canonicalize(target).map_err(terr)?;
    let root = fsx::open_dir(&canonical).map_err(terr)?;
    let record = Deployed::read(&canonical)?;
    let mut notes = Vec::new();
    let mut patterns = opts.excludes.clone();
    match &record {
        Some(r) => patterns.extend(r.keep_patterns()),
        None => {
            notes.push(format!(
                "{} has no deployment record ({}): keeping the usual identity files ({})",
                canonical.display(),
                record::RECORD_PATH,
                record::DEFAULT_KEEP.join(", ")
            ));
            let d = Deployed {
                keep_globs: record::DEFAULT_KEEP.iter().map(|s| s.to_string()).collect(),
                ..Deployed::default()
            };
            patterns.extend(d.keep_patterns());
        }
    }
    for sp in &opts.skip_paths {
        if let Ok(c) = std::fs::canonicalize(sp)
            && let Ok(rel) = c.strip_prefix(&canonical)
            && !rel.as_os_str().is_empty()
        {
            patterns.push(record::escape_glob(&format!("/{}", rel.display())));
        }
    }
    if canonical == Path::new("/") {
        patterns.extend(DEFAULT_ROOT_EXCLUDES.iter().map(|s| s.to_string()));
    }
    let ex = Excludes::new(&patterns)?;
    let cache_file = opts.cache_dir.as_ref().map(|d| scan_cache::path_for(d, &canonical));
    let last = cache_file.as_deref().and_then(scan_cache::load);
    let Scanned { entries: current, mounts, cache } =
        scan_with_mounts(root.as_fd(), &|p: &[u8], d: bool| ex.matches(p, d), last.as_ref())?;
    // Rewritten when its records changed, or when some were too fresh to be trusted by
    // the last listing and have settled since.
    let stale =
        last.as_ref().is_none_or(|l| l.recs != cache.recs || l.recs.iter().any(|r| !r.stat.settled(l.started_ns)));
    if let Some(f) = cache_file.filter(|_| stale)
        && let Err(e) = scan_cache::save(&f, &cache)
    {
        tracing::warn!("update: writing the listing cache {}: {e}", f.display());
    }
    // Their metadata belongs to the mounted filesystem, not to the image.
    patterns.extend(mounts.iter().map(|p| record::escape_glob(&format!("/{}", String::from_utf8_lossy(p)))));
    let ex = Excludes::new(&patterns)?;
    let keep = |p: &[u8], d: bool| ex.matches(p, d);
    let plan = plan::plan(&current, &m.entries, &keep)?;
    notes.extend(plan.notes.iter().cloned());
    Ok(Prepared { root, target: canonical, current, plan, record, notes })
}

impl Prepared {
    /// The change list, one `rsync -i` line per change.
    pub fn itemize(&self, m: &Manifest) -> Vec<String> {
        self.plan.changes.iter().map(|c| plan::itemize(c, &m.entries)).collect()
    }

    /// File bytes the plan writes (the sizes of the files it creates or replaces).
    pub fn bytes_to_write(&self, m: &Manifest) -> u64 {
        self.plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Create { idx } | Change::Replace { idx, .. } => match &m.entries[*idx].kind {
                    Kind::File { size, .. } => Some(*size),
                    _ => None,
                },
                _ => None,
            })
            .sum()
    }

    /// Find the chunks the target already has: the old versions of replaced files and the
    /// removed files (a renamed file's data is there under its old name). Returns the
    /// index and the bytes read to make it.
    pub fn reuse(&self, m: &Manifest) -> Result<(Reuse, u64), UpdateError> {
        let mut reuse = Reuse::default();
        let mut hashed = 0u64;
        let by_path = |p: &[u8]| {
            self.current
                .binary_search_by(|e| crate::store::manifest::path_cmp(&e.path, p))
                .ok()
                .map(|i| &self.current[i])
        };
        for c in &self.plan.changes {
            let path: &[u8] = match c {
                Change::Replace { idx, .. } if matches!(m.entries[*idx].kind, Kind::File { .. }) => {
                    &m.entries[*idx].path
                }
                Change::Remove { path, dir: false } => path,
                _ => continue,
            };
            let Some(cur) = by_path(path) else { continue };
            let size = match &cur.kind {
                Kind::File { size, .. } => *size,
                Kind::Hardlink { target } => match by_path(target).map(|t| &t.kind) {
                    Some(Kind::File { size, .. }) => *size,
                    _ => continue,
                },
                _ => continue,
            };
            let Some(file) = open_regular(self.root.as_fd(), path) else { continue };
            hashed += reuse
                .add_file(file, size, &m.chunker)
                .map_err(|source| UpdateError::Scan { path: display_path(path), source })?;
        }
        Ok((reuse, hashed))
    }

    /// Replaced files worth an rsync delta: the old version is a regular file, both
    /// versions are at most [`delta::DELTA_MAX`] bytes, and at least
    /// [`delta::DELTA_MIN_MISSING`] bytes of the new one are not among `reuse`'s chunks.
    /// Returns their image indexes, ascending.
    pub fn delta_candidates(&self, m: &Manifest, reuse: &Reuse) -> Vec<usize> {
        let mut out = Vec::new();
        for c in &self.plan.changes {
            let Change::Replace { idx, retype: false, .. } = c else { continue };
            let Kind::File { size, extents } = &m.entries[*idx].kind else { continue };
            let missing: u64 =
                extents.iter().flat_map(|x| &x.chunks).filter(|r| !reuse.has(&r.id)).map(|r| r.len as u64).sum();
            let old = self
                .current
                .binary_search_by(|e| crate::store::manifest::path_cmp(&e.path, &m.entries[*idx].path))
                .ok()
                .map(|i| &self.current[i].kind);
            if let Some(Kind::File { size: old_size, .. }) = old
                && *size <= delta::DELTA_MAX
                && *old_size <= delta::DELTA_MAX
                && missing >= delta::DELTA_MIN_MISSING
            {
                out.push(*idx);
            }
        }
        out.sort_unstable();
        out
    }

    /// The old version of the file at image path `path`, read whole (at most
    /// [`delta::DELTA_MAX`] bytes); `None` when it is not a regular file any more.
    pub fn old_content(&self, path: &[u8]) -> Option<Vec<u8>> {
        let f = open_regular(self.root.as_fd(), path)?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&f, delta::DELTA_MAX + 1), &mut buf).ok()?;
        (buf.len() as u64 <= delta::DELTA_MAX).then_some(buf)
    }

    /// Apply the plan with data from `src`, then record the new image (`NAME@N`, manifest
    /// id) in the target's `deployed.json`.
    pub fn apply(
        &self,
        m: &Manifest,
        src: Sources<'_>,
        (image, manifest_id): (&str, &str),
        sync: bool,
    ) -> Result<ApplyStats, UpdateError> {
        self.apply_with(m, src, (image, manifest_id), sync, &Control::default())
    }

    /// [`Prepared::apply`] under `ctl`: once `ctl.stop` is set it stops at the next safe
    /// point with [`ApplyError::Stopped`] and leaves `deployed.json` naming the old image
    /// (the root is then partly updated, each path old or new).
    pub fn apply_with(
        &self,
        m: &Manifest,
        src: Sources<'_>,
        (image, manifest_id): (&str, &str),
        sync: bool,
        ctl: &Control,
    ) -> Result<ApplyStats, UpdateError> {
        let as_root = rustix::process::geteuid().is_root();
        let stats =
            apply::apply_with(self.root.as_fd(), m, &self.plan, (src.reuse, src.chunks, src.whole), as_root, ctl)?;
        let mut rec = self.record.clone().unwrap_or_else(|| Deployed {
            keep_globs: record::DEFAULT_KEEP.iter().map(|s| s.to_string()).collect(),
            ..Deployed::default()
        });
        rec.image = image.to_string();
        rec.manifest = manifest_id.to_string();
        // An update that changed nothing leaves the target as it was, record included
        // (and has nothing of its own to sync).
        let same = self.record.as_ref() == Some(&rec) && self.plan.changes.is_empty();
        if !same {
            rec.write(&self.target)?;
        }
        if sync && !same {
            rustix::fs::syncfs(&self.root)
                .map_err(|e| UpdateError::Target { path: self.target.clone(), source: e.into() })?;
        }
        Ok(stats)
    }
}

/// Open a regular file by image path without following symlinks; `None` when it is not one.
fn open_regular(root: BorrowedFd<'_>, path: &[u8]) -> Option<std::fs::File> {
    let (parent, name) = crate::store::manifest::split_parent(path)?;
    let dir = fsx::open_rel_dir(root, parent).ok()?;
    let cn = fsx::cname(name).ok()?;
    let fd = rustix::fs::openat(
        &dir,
        cn.as_c_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| std::fs::File::from(fd))
}

/// A manifest that lists `chunks` as one file: what [`crate::remote::RemoteSource`] pulls
/// for an update (only the chunks the target lacks, in the order they are read).
pub fn fetch_list(m: &Manifest, chunks: Vec<ChunkRef>) -> Manifest {
    let size = chunks.iter().map(|c| c.len as u64).sum();
    let root = Entry {
        path: Vec::new(),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    let file = Entry {
        path: b"chunks".to_vec(),
        kind: Kind::File { size, extents: vec![Extent { offset: 0, chunks }] },
        ..root.clone()
    };
    Manifest { chunker: m.chunker, entries: vec![root, file] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunker::ChunkerParams;

    fn dir_entry(p: &[u8]) -> Entry {
        Entry {
            path: p.to_vec(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    #[test]
    fn a_manifest_naming_a_path_outside_the_target_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("keep"), b"x").unwrap();
        for bad in [&b"../escape"[..], b"/abs", b"a/../../b"] {
            let e = Entry { kind: Kind::File { size: 0, extents: vec![] }, ..dir_entry(bad) };
            let m = Manifest { chunker: ChunkerParams::V1, entries: vec![dir_entry(b""), e] };
            let err = prepare(t.path(), &m, &UpdateOptions::default()).err();
            assert!(matches!(err, Some(UpdateError::Manifest(_))), "{bad:?}: {err:?}");
        }
        assert!(t.path().join("keep").exists());
    }

    #[test]
    fn scan_lists_in_manifest_order_with_hard_links_and_kept_dirs_unopened() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join("kept/deep")).unwrap();
        std::fs::write(r.join("a/b/f"), b"12345").unwrap();
        std::fs::hard_link(r.join("a/b/f"), r.join("a/z")).unwrap();
        std::os::unix::fs::symlink("b/f", r.join("a/l")).unwrap();
        std::fs::write(r.join("a-c"), b"").unwrap();
        let root = fsx::open_dir(r).unwrap();
        let list = scan(root.as_fd(), &|p: &[u8], _| p == b"kept").unwrap();
        let paths: Vec<&[u8]> = list.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, [&b""[..], b"a", b"a/b", b"a/b/f", b"a/l", b"a/z", b"a-c", b"kept"]);
        assert_eq!(list[3].kind, Kind::File { size: 5, extents: vec![] });
        assert_eq!(list[4].kind, Kind::Symlink { target: b"b/f".to_vec() });
        assert_eq!(list[5].kind, Kind::Hardlink { target: b"a/b/f".to_vec() });
    }

    /// A chunk source that sets the stop flag after `after` chunks.
    struct StopAfter<'a> {
        store: &'a crate::store::Store,
        ctl: &'a Control,
        after: std::sync::atomic::AtomicUsize,
    }

    impl ChunkSource for StopAfter<'_> {
        fn read_chunk(&self, id: &crate::store::ChunkId) -> Result<Vec<u8>, crate::store::StoreError> {
            if self.after.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                self.ctl.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.store.read_chunk(id)
        }
    }

    #[test]
    fn a_stopped_update_leaves_every_file_old_or_new_and_the_record_old() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        // Files of several chunks each, so the stop can land inside one.
        let file = |seed: u64| super::delta::tests::noise(400_000, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for i in 0..6u64 {
            std::fs::write(src.join(format!("f{i}")), file(i)).unwrap();
            std::fs::write(dst.join(format!("f{i}")), b"old").unwrap();
        }
        // The roots' own times alike: a metadata change of dst itself would count as
        // changed without being a file (and the two can fall in different clock ticks).
        let src_mtime = std::fs::metadata(&src).unwrap().modified().unwrap();
        std::fs::File::open(&dst).unwrap().set_modified(src_mtime).unwrap();
        let store = crate::store::Store::open_for_write(&t.path().join("data")).unwrap();
        let cap = crate::capture::capture(&store, &src, None, &crate::capture::CaptureOptions::default()).unwrap();
        store.flush().unwrap();
        let m = cap.manifest;
        let p = prepare(&dst, &m, &UpdateOptions::default()).unwrap();
        assert_eq!(p.bytes_to_write(&m), 6 * 400_000);
        let ctl = Control::default();
        let src_chunks = StopAfter { store: &store, ctl: &ctl, after: 10.into() };
        let reuse = Reuse::default();
        let r = p.apply_with(
            &m,
            Sources { reuse: &reuse, chunks: &src_chunks, whole: &|_| None },
            ("img@2", "ab"),
            false,
            &ctl,
        );
        let Err(UpdateError::Apply(ApplyError::Stopped { done })) = r else { panic!("not stopped: {r:?}") };
        let mut new = 0;
        for i in 0..6u64 {
            let got = std::fs::read(dst.join(format!("f{i}"))).unwrap();
            assert!(got == b"old" || got == file(i), "f{i} is neither old nor new");
            new += usize::from(got != b"old");
        }
        assert!(new < 6, "the stop came before the end");
        assert_eq!(done.changed as usize, new);
        assert_eq!(ctl.done_bytes.load(std::sync::atomic::Ordering::SeqCst), new as u64 * 400_000);
        let names: Vec<_> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(".ustmp")), "{names:?}");
        assert!(record::Deployed::read(&dst).unwrap().is_none(), "a partial update records nothing");
        // The next (unstopped) update finishes it.
        let p = prepare(&dst, &m, &UpdateOptions::default()).unwrap();
        p.apply(&m, Sources { reuse: &reuse, chunks: &store, whole: &|_| None }, ("img@2", "ab"), false).unwrap();
        for i in 0..6u64 {
            assert_eq!(std::fs::read(dst.join(format!("f{i}"))).unwrap(), file(i));
        }
        assert_eq!(record::Deployed::read(&dst).unwrap().unwrap().image, "img@2");
    }
}
