//! Image manifests: every entry of a tree with its full metadata and chunk lists.
//!
//! Encoding: magic, format version, then postcard. The manifest id is the BLAKE3 hash of
//! that encoding; on disk it is zstd-compressed. Decoding validates the tree so that a
//! hostile manifest can never name a path outside the deploy target.

use super::{ChunkId, chunker::ChunkerParams};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Magic bytes at the start of an encoded manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"USMANIF\0";
/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// A whole image tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Chunker parameters used for the file data.
    pub chunker: ChunkerParams,
    /// Entries in pre-order (a directory before its children), siblings sorted by name.
    pub entries: Vec<Entry>,
}

/// One filesystem object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the image root, `/`-separated raw bytes; empty for the root.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// Type and type-specific data.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds part.
    pub mtime_nsec: u32,
    /// Extended attributes (including ACLs and capabilities), sorted by name.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name, e.g. `security.capability`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Raw value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Entry types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Regular file: its size and its data extents (gaps between extents are holes).
    File {
        /// Logical size in bytes.
        size: u64,
        /// Data regions in ascending offset order.
        extents: Vec<Extent>,
    },
    /// Directory.
    Dir,
    /// Symbolic link with its raw target.
    Symlink {
        /// Link target bytes, stored as is.
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Hard link to another entry of the image (by path).
    Hardlink {
        /// Path of the entry this links to.
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Character device.
    CharDev {
        /// Device number (Linux encoding).
        rdev: u64,
    },
    /// Block device.
    BlockDev {
        /// Device number (Linux encoding).
        rdev: u64,
    },
    /// Named pipe.
    Fifo,
    /// Unix socket (a name only; no live socket is recreated).
    Socket,
}

/// A data region of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset of the region in the file.
    pub offset: u64,
    /// Chunks that make up the region, in order.
    pub chunks: Vec<ChunkRef>,
}

/// A reference to a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Chunk id.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
}

impl Extent {
    /// Total bytes of the region.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len as u64).sum()
    }

    /// True when the region holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Errors decoding or validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a manifest.
    #[error("not an understudy manifest (bad magic)")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported manifest format version {0}")]
    Version(u32),
    /// Postcard could not decode it.
    #[error("malformed manifest: {0}")]
    Decode(String),
    /// A structural rule is broken.
    #[error("invalid manifest entry {path:?}: {why}")]
    Invalid {
        /// The offending path, lossily printed.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Compare two image paths component by component (so a directory sorts directly
/// before its children); this is the order of manifest entries.
pub fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let mut ia = a.split(|&c| c == b'/').filter(|c| !c.is_empty());
    let mut ib = b.split(|&c| c == b'/').filter(|c| !c.is_empty());
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => continue,
                o => return o,
            },
        }
    }
}

/// Split a path into (parent, name); the root has no parent.
pub fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => Some((&path[..i], &path[i + 1..])),
        None => Some((&[][..], path)),
    }
}

/// Check that a path is a clean relative image path: no empty, `.` or `..` components,
/// no NUL, no leading or trailing slash.
pub fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains(&0) {
        return Err("path contains NUL");
    }
    for c in path.split(|&c| c == b'/') {
        match c {
            b"" => return Err("empty path component or leading/trailing slash"),
            b"." | b".." => return Err("path contains . or .. component"),
            _ if c.len() > 255 => return Err("path component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Manifest {
    /// Encode to the canonical bytes whose hash is the manifest id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        // postcard cannot fail on these types when writing to a Vec
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(e) => panic!("postcard encoding into a Vec failed: {e}"),
        }
    }

    /// The id of this manifest.
    pub fn id(&self) -> ChunkId {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Decode and validate.
    pub fn decode(data: &[u8]) -> Result<Manifest, ManifestError> {
        if data.len() < 12 || &data[..8] != MANIFEST_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let v = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if v != MANIFEST_VERSION {
            return Err(ManifestError::Version(v));
        }
        let m: Manifest = postcard::from_bytes(&data[12..]).map_err(|e| ManifestError::Decode(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Check the structural rules deploy relies on: the first entry is the root
    /// directory; paths are clean, strictly increasing in `path_cmp` order; every parent
    /// is an earlier directory; hard links name an earlier-or-later non-directory,
    /// non-hardlink entry; file extents are ordered, non-overlapping and within size.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |p: &[u8], why| ManifestError::Invalid { path: lossy(p), why };
        let Some(root) = self.entries.first() else {
            return Err(bad(b"", "manifest has no root entry"));
        };
        if !root.path.is_empty() || root.kind != Kind::Dir {
            return Err(bad(&root.path, "first entry must be the root directory"));
        }
        // foldhash: paths are not attacker-chosen keys here (a bad manifest is refused
        // either way), and SipHash was a third of the validation time.
        let mut kinds: HashMap<&[u8], &Kind, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(self.entries.len(), Default::default());
        kinds.insert(b"", &root.kind);
        let mut prev: &[u8] = b"";
        for e in &self.entries[1..] {
            check_path(&e.path).map_err(|w| bad(&e.path, w))?;
            if e.path.is_empty() {
                return Err(bad(&e.path, "second root entry"));
            }
            if path_cmp(prev, &e.path) != Ordering::Less {
                return Err(bad(&e.path, "entries out of order or duplicated"));
            }
            prev = &e.path;
            let (parent, _) = split_parent(&e.path).ok_or_else(|| bad(&e.path, "no parent"))?;
            match kinds.get(parent) {
                Some(Kind::Dir) => {}
                _ => return Err(bad(&e.path, "parent is not a directory of the image")),
            }
            if e.mode > 0o7777 {
                return Err(bad(&e.path, "mode has bits outside 0o7777"));
            }
            if let Kind::File { size, extents } = &e.kind {
                let mut end = 0u64;
                for x in extents {
                    if x.offset < end {
                        return Err(bad(&e.path, "overlapping or unordered extents"));
                    }
                    end = x.offset.checked_add(x.len()).ok_or_else(|| bad(&e.path, "extent overflows"))?;
                }
                if end > *size {
                    return Err(bad(&e.path, "extents extend past the file size"));
                }
            }
            kinds.insert(&e.path, &e.kind);
        }
        for e in &self.entries {
            if let Kind::Hardlink { target } = &e.kind {
                match kinds.get(target.as_slice()) {
                    Some(Kind::Dir) | Some(Kind::Hardlink { .. }) | None => {
                        return Err(bad(&e.path, "hard link target is missing, a directory or a link"));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Every chunk reference in entry order.
    pub fn chunk_refs(&self) -> impl Iterator<Item = (&Entry, &ChunkRef)> {
        self.entries.iter().flat_map(|e| {
            let ex: &[Extent] = match &e.kind {
                Kind::File { extents, .. } => extents,
                _ => &[],
            };
            ex.iter().flat_map(move |x| x.chunks.iter().map(move |c| (e, c)))
        })
    }

    /// Sum of logical file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                Kind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }
}

/// Printable form of an image path (lossy; for messages only).
pub fn display_path(p: &[u8]) -> String {
    if p.is_empty() { "/".into() } else { format!("/{}", lossy(p)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Entry {
        Entry {
            path: p.as_bytes().to_vec(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 2,
            xattrs: vec![],
        }
    }

    fn with(p: &str, kind: Kind) -> Entry {
        Entry { kind, ..dir(p) }
    }

    fn m(entries: Vec<Entry>) -> Manifest {
        Manifest { chunker: ChunkerParams::V1, entries }
    }

    #[test]
    fn round_trip_and_stable_id() {
        let a = m(vec![
            dir(""),
            dir("etc"),
            with(
                "etc/f",
                Kind::File {
                    size: 10,
                    extents: vec![Extent { offset: 0, chunks: vec![ChunkRef { id: [1; 32], len: 10 }] }],
                },
            ),
            with("etc/l", Kind::Hardlink { target: b"etc/f".to_vec() }),
        ]);
        let enc = a.encode();
        assert_eq!(Manifest::decode(&enc).unwrap(), a);
        assert_eq!(a.id(), *blake3::hash(&enc).as_bytes());
    }

    #[test]
    fn order_puts_directory_before_children() {
        assert_eq!(path_cmp(b"a", b"a/b"), Ordering::Less);
        assert_eq!(path_cmp(b"a/b", b"a-c"), Ordering::Less); // '/' sorts before '-' per component
        assert_eq!(path_cmp(b"a", b"a"), Ordering::Equal);
        assert_eq!(path_cmp(b"", b"a"), Ordering::Less);
    }

    #[test]
    fn rejects_escapes_and_bad_structure() {
        for bad_path in ["..", "a/../b", "/abs", "a//b", "a/", ".", "a/./b"] {
            let mf = m(vec![dir(""), dir("a"), dir(bad_path)]);
            assert!(mf.validate().is_err(), "{bad_path} accepted");
        }
        // parent is a symlink
        let mf = m(vec![dir(""), with("a", Kind::Symlink { target: b"/etc".to_vec() }), dir("a/x")]);
        assert!(mf.validate().is_err());
        // missing parent
        assert!(m(vec![dir(""), dir("x/y")]).validate().is_err());
        // out of order / duplicate
        assert!(m(vec![dir(""), dir("b"), dir("a")]).validate().is_err());
        assert!(m(vec![dir(""), dir("a"), dir("a")]).validate().is_err());
        // hard link to a directory or a missing path
        assert!(m(vec![dir(""), dir("a"), with("l", Kind::Hardlink { target: b"a".to_vec() })]).validate().is_err());
        assert!(m(vec![dir(""), with("l", Kind::Hardlink { target: b"../x".to_vec() })]).validate().is_err());
        // extents past size
        let f = Kind::File {
            size: 5,
            extents: vec![Extent { offset: 0, chunks: vec![ChunkRef { id: [0; 32], len: 10 }] }],
        };
        assert!(m(vec![dir(""), with("f", f)]).validate().is_err());
        // no root
        assert!(m(vec![dir("a")]).validate().is_err());
        assert!(m(vec![]).validate().is_err());
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let good = m(vec![dir(""), dir("a")]).encode();
        assert!(Manifest::decode(b"").is_err());
        assert!(Manifest::decode(b"USMANIF\0\x02\0\0\0").is_err());
        for n in 0..good.len() {
            let _ = Manifest::decode(&good[..n]);
        }
        let mut x = good.clone();
        for i in 12..x.len() {
            x[i] = x[i].wrapping_add(0x55);
            let _ = Manifest::decode(&x);
        }
        // a huge claimed length must not allocate unboundedly
        let mut huge = good[..12].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Manifest::decode(&huge).is_err());
    }
}
