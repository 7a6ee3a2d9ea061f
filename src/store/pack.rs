//! On-disk formats of pack files and their indexes, as plain encode/decode functions.
//!
//! A pack is a header followed by self-describing chunk records, so that a lost or
//! damaged index can be rebuilt from its pack. An index lists every record of one pack
//! and ends in a BLAKE3 checksum of everything before it.

use super::ChunkId;

/// Magic bytes at the start of every pack file.
pub const PACK_MAGIC: &[u8; 8] = b"USPACK\0\0";
/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"USINDEX\0";
/// Format version written into packs and indexes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Size of a record header: id, flags, raw length, stored length.
pub const RECORD_HEADER_LEN: usize = 32 + 1 + 4 + 4;
/// Size of one index entry: id, offset, stored length, raw length, flags.
pub const INDEX_ENTRY_LEN: usize = 32 + 4 + 4 + 4 + 1;
/// Record flag: payload is stored as is.
pub const FLAG_RAW: u8 = 0;
/// Record flag: payload is one zstd frame.
pub const FLAG_ZSTD: u8 = 1;
/// Record flag: payload is a 32-byte base chunk id, then a zstd frame compressed with
/// that base chunk's bytes as dictionary (a delta against the previous version of the
/// data). Bases are never deltas themselves, so reads recurse at most once.
pub const FLAG_DELTA: u8 = 2;

/// Errors decoding a pack or index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The magic bytes are wrong: not a file of this kind.
    #[error("bad magic (not an understudy {0})")]
    BadMagic(&'static str),
    /// Written by a format version this build does not read.
    #[error("unsupported {0} format version {1}")]
    Version(&'static str, u32),
    /// The file ends in the middle of a structure.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The trailing checksum does not match.
    #[error("index checksum mismatch")]
    Checksum,
    /// A field has a value no writer produces.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// One chunk's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// BLAKE3 of the uncompressed bytes.
    pub id: ChunkId,
    /// Offset of the record header in the pack.
    pub offset: u32,
    /// Length of the stored payload.
    pub stored_len: u32,
    /// Length of the uncompressed chunk.
    pub raw_len: u32,
    /// FLAG_RAW, FLAG_ZSTD or FLAG_DELTA.
    pub flags: u8,
}

/// The pack header bytes.
pub fn pack_header() -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..8].copy_from_slice(PACK_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Check a pack header.
pub fn check_pack_header(h: &[u8]) -> Result<(), FormatError> {
    if h.len() < PACK_HEADER_LEN {
        return Err(FormatError::Truncated("pack header"));
    }
    if &h[..8] != PACK_MAGIC {
        return Err(FormatError::BadMagic("pack"));
    }
    let v = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if v != FORMAT_VERSION {
        return Err(FormatError::Version("pack", v));
    }
    Ok(())
}

/// Encode a record header.
pub fn record_header(id: &ChunkId, flags: u8, raw_len: u32, stored_len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..32].copy_from_slice(id);
    h[32] = flags;
    h[33..37].copy_from_slice(&raw_len.to_le_bytes());
    h[37..41].copy_from_slice(&stored_len.to_le_bytes());
    h
}

/// Decode a record header: (id, flags, raw_len, stored_len).
pub fn parse_record_header(h: &[u8]) -> Result<(ChunkId, u8, u32, u32), FormatError> {
    if h.len() < RECORD_HEADER_LEN {
        return Err(FormatError::Truncated("record header"));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[..32]);
    let flags = h[32];
    if flags > FLAG_DELTA {
        return Err(FormatError::Invalid("record flags"));
    }
    if flags == FLAG_DELTA && u32::from_le_bytes([h[37], h[38], h[39], h[40]]) < 32 {
        return Err(FormatError::Invalid("delta record without a base"));
    }
    let raw = u32::from_le_bytes([h[33], h[34], h[35], h[36]]);
    let stored = u32::from_le_bytes([h[37], h[38], h[39], h[40]]);
    if flags == FLAG_RAW && raw != stored {
        return Err(FormatError::Invalid("raw record length"));
    }
    Ok((id, flags, raw, stored))
}

/// Encode an index for the given entries.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * INDEX_ENTRY_LEN + 32);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.push(e.flags);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decode and check an index.
pub fn decode_index(data: &[u8]) -> Result<Vec<IndexEntry>, FormatError> {
    if data.len() < 16 + 32 {
        return Err(FormatError::Truncated("index"));
    }
    if &data[..8] != INDEX_MAGIC {
        return Err(FormatError::BadMagic("index"));
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(FormatError::Checksum);
    }
    let v = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if v != FORMAT_VERSION {
        return Err(FormatError::Version("index", v));
    }
    let n = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    let rest = &body[16..];
    if rest.len() != n.checked_mul(INDEX_ENTRY_LEN).ok_or(FormatError::Invalid("count"))? {
        return Err(FormatError::Truncated("index entries"));
    }
    let mut out = Vec::with_capacity(n);
    for e in rest.chunks_exact(INDEX_ENTRY_LEN) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let u = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let flags = e[44];
        if flags > FLAG_DELTA {
            return Err(FormatError::Invalid("index flags"));
        }
        out.push(IndexEntry { id, offset: u(32), stored_len: u(36), raw_len: u(40), flags });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> IndexEntry {
        IndexEntry { id: [i; 32], offset: 16 + i as u32 * 100, stored_len: 50, raw_len: 80, flags: FLAG_ZSTD }
    }

    #[test]
    fn index_round_trip() {
        let es: Vec<_> = (0..5).map(entry).collect();
        assert_eq!(decode_index(&encode_index(&es)).unwrap(), es);
    }

    #[test]
    fn index_detects_every_single_byte_flip() {
        let enc = encode_index(&[entry(1), entry(2)]);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x40;
            assert!(decode_index(&bad).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..enc.len() {
            assert!(decode_index(&enc[..n]).is_err());
        }
    }

    #[test]
    fn record_header_round_trip_and_rejects_garbage() {
        let h = record_header(&[7; 32], FLAG_ZSTD, 1000, 300);
        assert_eq!(parse_record_header(&h).unwrap(), ([7; 32], FLAG_ZSTD, 1000, 300));
        let mut bad = h;
        bad[32] = 9;
        assert!(parse_record_header(&record_header(&[1; 32], FLAG_DELTA, 100, 10)).is_err(), "delta without base id");
        assert!(parse_record_header(&record_header(&[1; 32], FLAG_DELTA, 100, 40)).is_ok());
        assert!(parse_record_header(&bad).is_err());
        assert!(parse_record_header(&h[..10]).is_err());
        let raw_mismatch = record_header(&[1; 32], FLAG_RAW, 10, 11);
        assert!(parse_record_header(&raw_mismatch).is_err());
    }

    #[test]
    fn pack_header_checks() {
        assert!(check_pack_header(&pack_header()).is_ok());
        let mut h = pack_header();
        h[8] = 2;
        assert_eq!(check_pack_header(&h), Err(FormatError::Version("pack", 2)));
        assert!(check_pack_header(b"garbage!garbage!").is_err());
    }
}
