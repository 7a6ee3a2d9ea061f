//! rsync-style deltas for `update --server` (fast_rsync): the node sends the signature of
//! its old version of a file, the server answers with a delta against the image's version,
//! and the node applies it and checks the result against every chunk id of the manifest
//! before it is written. fast_rsync's strong hash is MD4, so the BLAKE3 check is what makes
//! a delta trustworthy; a result that fails it is thrown away.
//!
//! Both sides hold one file in memory: deltas are used only for files up to
//! [`DELTA_MAX`] bytes (old and new); larger ones go by chunks.

use crate::store::manifest::{Entry, Kind};

/// Largest file (old or new version) sent by delta.
pub const DELTA_MAX: u64 = 64 << 20;
/// Largest signature a server accepts (a [`DELTA_MAX`] file has ~400 KiB of signature).
pub const SIGNATURE_MAX: usize = 4 << 20;
/// Below this many bytes still to fetch, a delta round trip is not worth it.
pub const DELTA_MIN_MISSING: u64 = 16 << 10;

const OPTIONS: fast_rsync::SignatureOptions = fast_rsync::SignatureOptions { block_size: 2048, crypto_hash_size: 8 };

/// A delta could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The signature does not parse.
    #[error("bad signature")]
    Signature,
    /// fast_rsync could not make the delta.
    #[error("making the delta: {0}")]
    Diff(String),
    /// The delta does not apply.
    #[error("applying the delta: {0}")]
    Apply(String),
    /// The result does not match the manifest.
    #[error("the delta's result does not match the image's chunks ({0})")]
    Mismatch(&'static str),
    /// The entry is not a regular file or is too large.
    #[error("not a regular file of at most {DELTA_MAX} bytes")]
    NotEligible,
}

/// The signature of `old` (the node's version of a file).
pub fn signature(old: &[u8]) -> Vec<u8> {
    fast_rsync::Signature::calculate(old, OPTIONS).into_serialized()
}

/// The delta that turns the data behind `sig` into `new` (server side).
pub fn make_delta(sig: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    if sig.len() > SIGNATURE_MAX {
        return Err(DeltaError::Signature);
    }
    let sig = fast_rsync::Signature::deserialize(sig.to_vec()).map_err(|_| DeltaError::Signature)?;
    let mut out = Vec::new();
    fast_rsync::diff(&sig.index(), new, &mut out).map_err(|e| DeltaError::Diff(e.to_string()))?;
    Ok(out)
}

/// Apply `delta` to `old` and check the result against `e` (the image's entry): its size,
/// every chunk's BLAKE3, and zeros in its holes. Returns the new content.
pub fn apply_delta(old: &[u8], delta: &[u8], e: &Entry) -> Result<Vec<u8>, DeltaError> {
    let Kind::File { size, extents } = &e.kind else { return Err(DeltaError::NotEligible) };
    if *size > DELTA_MAX {
        return Err(DeltaError::NotEligible);
    }
    let mut out = Vec::with_capacity(*size as usize);
    fast_rsync::apply_limited(old, delta, &mut out, *size as usize).map_err(|e| DeltaError::Apply(e.to_string()))?;
    if out.len() as u64 != *size {
        return Err(DeltaError::Mismatch("size"));
    }
    let mut end = 0usize;
    for x in extents {
        let start = x.offset as usize;
        if out.get(end..start).is_none_or(|gap| gap.iter().any(|&b| b != 0)) {
            return Err(DeltaError::Mismatch("hole"));
        }
        let mut off = start;
        for c in &x.chunks {
            let piece = out.get(off..off + c.len as usize).ok_or(DeltaError::Mismatch("length"))?;
            if blake3::hash(piece).as_bytes() != &c.id {
                return Err(DeltaError::Mismatch("chunk"));
            }
            off += c.len as usize;
        }
        end = off;
    }
    if out[end..].iter().any(|&b| b != 0) {
        return Err(DeltaError::Mismatch("hole"));
    }
    Ok(out)
}

/// A file's content assembled from verified chunks (holes as zeros), for the server.
pub fn file_bytes(src: &dyn crate::deploy::ChunkSource, e: &Entry) -> Result<Vec<u8>, crate::store::StoreError> {
    let Kind::File { size, extents } = &e.kind else { return Ok(Vec::new()) };
    let mut out = vec![0u8; (*size).min(DELTA_MAX) as usize];
    for x in extents {
        let mut off = x.offset as usize;
        for c in &x.chunks {
            let d = src.read_chunk(&c.id)?;
            let Some(dst) = out.get_mut(off..off + d.len()) else {
                return Err(crate::store::StoreError::ChunkCorrupt { id: c.id, why: "past the file size".into() });
            };
            dst.copy_from_slice(&d);
            off += d.len();
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::chunker::ChunkerParams;
    use crate::store::manifest::{ChunkRef, Extent};

    fn entry(data: &[u8]) -> Entry {
        let mut chunks = Vec::new();
        ChunkerParams::V1
            .cut_slice(data, |c: &[u8]| -> Result<(), ()> {
                chunks.push(ChunkRef { id: *blake3::hash(c).as_bytes(), len: c.len() as u32 });
                Ok(())
            })
            .unwrap();
        Entry {
            path: b"f".to_vec(),
            kind: Kind::File { size: data.len() as u64, extents: vec![Extent { offset: 0, chunks }] },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    /// Deterministic incompressible bytes (xorshift), for the update tests.
    pub(crate) fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_small_edit_travels_as_a_small_delta_and_is_verified() {
        let old = noise(500_000, 7);
        let mut new = old.clone();
        new.splice(250_000..250_004, b"an edit in the middle".iter().copied());
        let delta = make_delta(&signature(&old), &new).unwrap();
        assert!(delta.len() < 16 << 10, "delta of {} bytes", delta.len());
        assert_eq!(apply_delta(&old, &delta, &entry(&new)).unwrap(), new);
        // Against another version's manifest the result is refused.
        let other = noise(new.len(), 8);
        assert!(matches!(apply_delta(&old, &delta, &entry(&other)), Err(DeltaError::Mismatch("chunk"))));
        // One of another size: the delta writes past it and is stopped.
        assert!(apply_delta(&old, &delta, &entry(&old)).is_err());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(matches!(make_delta(b"not a signature", b"x"), Err(DeltaError::Signature)));
        let e = entry(b"hello");
        assert!(apply_delta(b"old", b"\x72\x73\x02\x36\xff\xff", &e).is_err());
        assert!(apply_delta(b"old", b"", &e).is_err());
    }
}
