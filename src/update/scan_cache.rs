//! What one listing of a target leaves for the next: per path its stat and the parts of
//! its entry that cost a system call beyond the `stat` (extended attributes, which for a
//! non-directory go through a `/proc/self/fd` path walk; a symlink's target; a
//! directory's names). An entry whose size, times and inode are unchanged, and whose
//! ctime had settled before that listing started, has the same xattrs, target and names
//! (changing any of them moves the ctime), so the next listing takes them from here: on
//! an unchanged 45k-entry root that is most of the listing's work.
//!
//! The cache lives in this machine's data dir (never in the target), one file per target
//! (named by the BLAKE3 of its canonical path) that also records the target root's
//! device and inode, so a different filesystem mounted at the same path starts afresh.
//! A damaged or foreign file is ignored: the listing then reads everything, as without.

use crate::capture::CacheRec;
use crate::store::manifest::Xattr;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"USSCAN01";

/// The cache files' directory in a data dir.
pub const CACHE_DIR: &str = "update-cache";

/// One entry as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRec {
    /// Its path and stat.
    pub(crate) stat: CacheRec,
    /// Its extended attributes.
    pub xattrs: Vec<Xattr>,
    /// A symlink's target.
    pub target: Option<ByteBuf>,
    /// A directory's complete, sorted listing.
    pub names: Option<Vec<ByteBuf>>,
}

/// A target's last listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanCache {
    /// The target root's (device, inode).
    pub root: (u64, u64),
    /// When that listing started (ns since the epoch): only records settled before are used.
    pub started_ns: i128,
    /// Its entries.
    pub recs: Vec<ScanRec>,
}

/// The records of a cache that may be trusted, by path.
pub struct Lookup<'a> {
    map: HashMap<&'a [u8], &'a ScanRec, foldhash::fast::RandomState>,
}

impl<'a> Lookup<'a> {
    /// The settled records of `c` if it is the cache of the root `root` (device, inode).
    pub fn new(c: Option<&'a ScanCache>, root: (u64, u64)) -> Lookup<'a> {
        let mut map = HashMap::default();
        if let Some(c) = c.filter(|c| c.root == root) {
            map.reserve(c.recs.len());
            for r in c.recs.iter().filter(|r| r.stat.settled(c.started_ns)) {
                map.insert(r.stat.path(), r);
            }
        }
        Lookup { map }
    }

    /// The record of `path` when `st` is still what it recorded.
    pub fn hit(&self, path: &[u8], st: &rustix::fs::Stat) -> Option<&'a ScanRec> {
        self.map.get(path).copied().filter(|r| r.stat.same_stat(st))
    }
}

/// The cache file of `target` (canonical) in `dir`.
pub fn path_for(dir: &Path, target: &Path) -> PathBuf {
    let h = blake3::hash(target.as_os_str().as_encoded_bytes());
    dir.join(format!("{}.scan", &h.to_hex()[..32]))
}

/// Read a cache file; `None` when it is missing, damaged or of another format.
pub fn load(file: &Path) -> Option<ScanCache> {
    let raw = std::fs::read(file).ok()?;
    let body = zstd::stream::decode_all(&raw[..]).ok()?;
    postcard::from_bytes(body.strip_prefix(MAGIC)?).ok()
}

/// Write a cache file (a temporary renamed into place; it is only a cache, so not synced).
pub fn save(file: &Path, c: &ScanCache) -> std::io::Result<()> {
    let dir = file.parent().ok_or_else(|| std::io::Error::other("cache file without a directory"))?;
    std::fs::create_dir_all(dir)?;
    let body = postcard::to_extend(c, MAGIC.to_vec()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let z = zstd::bulk::compress(&body, 1)?;
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, z)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_used_only_while_its_stat_holds_and_settled() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let st = rustix::fs::stat(&f).unwrap();
        let rec = ScanRec {
            stat: CacheRec::new(b"f".to_vec(), &st),
            xattrs: vec![Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() }],
            target: None,
            names: None,
        };
        let now = |extra: i128| (st.st_ctime as i128) * 1_000_000_000 + st.st_ctime_nsec as i128 + extra;
        let c = ScanCache { root: (1, 2), started_ns: now(3_000_000_000), recs: vec![rec.clone()] };
        assert_eq!(Lookup::new(Some(&c), (1, 2)).hit(b"f", &st), Some(&c.recs[0]));
        // Another root, a record too fresh for its listing, a changed file: not used.
        assert_eq!(Lookup::new(Some(&c), (1, 3)).hit(b"f", &st), None);
        let fresh = ScanCache { started_ns: now(1), ..c.clone() };
        assert_eq!(Lookup::new(Some(&fresh), (1, 2)).hit(b"f", &st), None);
        std::fs::write(&f, b"xy").unwrap();
        let st2 = rustix::fs::stat(&f).unwrap();
        assert_eq!(Lookup::new(Some(&c), (1, 2)).hit(b"f", &st2), None);
        // The file round-trips; a damaged one is no cache.
        let file = path_for(d.path(), Path::new("/srv/root"));
        save(&file, &c).unwrap();
        assert_eq!(load(&file), Some(c));
        std::fs::write(&file, b"garbage").unwrap();
        assert_eq!(load(&file), None);
        assert_ne!(path_for(d.path(), Path::new("/a")), path_for(d.path(), Path::new("/b")));
    }
}
