//! On-disk formats of pack files and their indexes, as plain encode/decode functions.
//!
//! A pack is a header followed by self-describing records, so that a lost or damaged
//! index can be rebuilt from its pack. A record holds either one chunk (raw or one zstd
//! frame) or a solid block of several chunks: the block's table of (chunk id, length),
//! stored uncompressed so it can be read without decompressing, followed by one zstd
//! frame of the chunks' bytes concatenated in table order. Compressing many chunks as one
//! frame is what makes small files compress as well as they do in a tarball.
//!
//! An index lists every chunk of one pack (for a block: the block's record plus the
//! chunk's place inside the decompressed data) and ends in a BLAKE3 checksum of
//! everything before it.

use super::ChunkId;

/// Magic bytes at the start of every pack file.
pub const PACK_MAGIC: &[u8; 8] = b"USPACK\0\0";
/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"USINDEX\0";
/// Format version written into packs. Records are self-describing, so a pack holding
/// block records is still version 1: the store config's format keeps old builds out.
pub const FORMAT_VERSION: u32 = 1;
/// Index version with 45-byte entries, one chunk per record (stores before blocks).
pub const INDEX_VERSION_V1: u32 = 1;
/// Index version written now: entries also carry a chunk's place inside its record.
pub const INDEX_VERSION: u32 = 2;
/// Size of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Size of a record header: id, flags, raw length, stored length.
pub const RECORD_HEADER_LEN: usize = 32 + 1 + 4 + 4;
/// Size of one index entry: id, offset, stored length, raw length, flags, inner offset,
/// record raw length.
pub const INDEX_ENTRY_LEN: usize = INDEX_V1_ENTRY_LEN + 4 + 4;
/// Size of one version 1 index entry: id, offset, stored length, raw length, flags.
pub const INDEX_V1_ENTRY_LEN: usize = 32 + 4 + 4 + 4 + 1;
/// Record flag: payload is stored as is.
pub const FLAG_RAW: u8 = 0;
/// Record flag: payload is one zstd frame.
pub const FLAG_ZSTD: u8 = 1;
/// Record flag: payload is a 32-byte base chunk id, then a zstd frame compressed with
/// that base chunk's bytes as dictionary (a delta against the previous version of the
/// data). Bases are never deltas themselves, so reads recurse at most once.
pub const FLAG_DELTA: u8 = 2;
/// Record flag: payload is a block table followed by one zstd frame of its chunks. Flags
/// are one value per record, not bits: a block's members are plain chunks, never deltas.
pub const FLAG_BLOCK: u8 = 3;
/// Size of one block table entry: chunk id and raw length.
pub const BLOCK_ENTRY_LEN: usize = 32 + 4;
/// Smallest block payload: the chunk count and one table entry.
pub const BLOCK_MIN_STORED: u32 = 4 + BLOCK_ENTRY_LEN as u32;
/// The longest record this build reads, raw or stored: over 16 times the longest this
/// format writes (a 256 KiB chunk; a block of about 2.25 MiB with its table), so that a
/// damaged length in a record header or an index entry cannot make a read allocate
/// gigabytes. Found by fuzzing: a 4 GiB raw length went straight to zstd's output buffer
/// (`scan_pack`), a 4 GiB stored length to the read buffer (`Store::read_record`).
pub const RECORD_RAW_MAX: u32 = 64 << 20;

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
    /// A block's table does not hash to its record id.
    #[error("block table checksum mismatch")]
    BlockChecksum,
    /// A compressed payload does not decompress to its recorded length.
    #[error("zstd: {0}")]
    Decompress(String),
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
    /// Length of the stored payload of the record.
    pub stored_len: u32,
    /// Length of the uncompressed chunk.
    pub raw_len: u32,
    /// FLAG_RAW, FLAG_ZSTD, FLAG_DELTA or FLAG_BLOCK.
    pub flags: u8,
    /// Offset of the chunk in the block's decompressed data (0 unless FLAG_BLOCK).
    pub inner: u32,
    /// Decompressed length of the whole record (equals `raw_len` unless FLAG_BLOCK).
    pub record_raw: u32,
}

impl IndexEntry {
    /// Entry of a record that holds just this chunk.
    pub fn single(id: ChunkId, offset: u32, stored_len: u32, raw_len: u32, flags: u8) -> IndexEntry {
        IndexEntry { id, offset, stored_len, raw_len, flags, inner: 0, record_raw: raw_len }
    }

    /// Check the fields against each other (a writer never produces anything else).
    fn check(&self) -> Result<(), FormatError> {
        if self.record_raw > RECORD_RAW_MAX || self.stored_len > RECORD_RAW_MAX {
            return Err(FormatError::Invalid("index entry length over RECORD_RAW_MAX"));
        }
        let ok = match self.flags {
            FLAG_RAW => self.inner == 0 && self.record_raw == self.raw_len && self.stored_len == self.raw_len,
            FLAG_ZSTD => self.inner == 0 && self.record_raw == self.raw_len,
            FLAG_DELTA => self.inner == 0 && self.record_raw == self.raw_len && self.stored_len >= 32,
            FLAG_BLOCK => {
                self.stored_len >= BLOCK_MIN_STORED
                    && self.inner.checked_add(self.raw_len).is_some_and(|end| end <= self.record_raw)
            }
            _ => false,
        };
        if ok { Ok(()) } else { Err(FormatError::Invalid("index entry")) }
    }
}

/// One chunk inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockChunk {
    /// Chunk id.
    pub id: ChunkId,
    /// Offset of the chunk in the block's decompressed data.
    pub inner: u32,
    /// Chunk length.
    pub len: u32,
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
    if flags > FLAG_BLOCK {
        return Err(FormatError::Invalid("record flags"));
    }
    if flags == FLAG_DELTA && u32::from_le_bytes([h[37], h[38], h[39], h[40]]) < 32 {
        return Err(FormatError::Invalid("delta record without a base"));
    }
    let raw = u32::from_le_bytes([h[33], h[34], h[35], h[36]]);
    let stored = u32::from_le_bytes([h[37], h[38], h[39], h[40]]);
    if raw > RECORD_RAW_MAX || stored > RECORD_RAW_MAX {
        return Err(FormatError::Invalid("record length over RECORD_RAW_MAX"));
    }
    if flags == FLAG_RAW && raw != stored {
        return Err(FormatError::Invalid("raw record length"));
    }
    if flags == FLAG_BLOCK && stored < BLOCK_MIN_STORED {
        return Err(FormatError::Invalid("block record length"));
    }
    Ok((id, flags, raw, stored))
}

/// Encode a block table: chunk count, then each chunk's id and length in data order.
pub fn encode_block_table(chunks: &[(ChunkId, u32)]) -> Vec<u8> {
    let mut t = Vec::with_capacity(4 + chunks.len() * BLOCK_ENTRY_LEN);
    t.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (id, len) in chunks {
        t.extend_from_slice(id);
        t.extend_from_slice(&len.to_le_bytes());
    }
    t
}

/// The header of a block record: its id is the BLAKE3 of the table, so that the table can
/// be trusted before anything is decompressed; `raw_len` is the chunks' total length.
pub fn block_header(table: &[u8], raw_len: u32, frame_len: usize) -> [u8; RECORD_HEADER_LEN] {
    let stored = (table.len() + frame_len) as u32;
    record_header(blake3::hash(table).as_bytes(), FLAG_BLOCK, raw_len, stored)
}

/// Parse and check the table at the start of a block payload. Returns the chunks and the
/// table length (where the zstd frame starts). `id` and `raw_len` come from the record
/// header.
pub fn parse_block_table(payload: &[u8], id: &ChunkId, raw_len: u32) -> Result<(Vec<BlockChunk>, usize), FormatError> {
    if payload.len() < 4 {
        return Err(FormatError::Truncated("block table"));
    }
    let n = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    if n == 0 {
        return Err(FormatError::Invalid("empty block"));
    }
    let table_len =
        n.checked_mul(BLOCK_ENTRY_LEN).and_then(|l| l.checked_add(4)).ok_or(FormatError::Invalid("count"))?;
    if payload.len() < table_len {
        return Err(FormatError::Truncated("block table"));
    }
    let table = &payload[..table_len];
    if blake3::hash(table).as_bytes() != id {
        return Err(FormatError::BlockChecksum);
    }
    let mut out = Vec::with_capacity(n);
    let mut inner = 0u32;
    for e in table[4..].chunks_exact(BLOCK_ENTRY_LEN) {
        let mut cid = [0u8; 32];
        cid.copy_from_slice(&e[..32]);
        let len = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
        out.push(BlockChunk { id: cid, inner, len });
        inner = inner.checked_add(len).ok_or(FormatError::Invalid("block chunk lengths"))?;
    }
    if inner != raw_len {
        return Err(FormatError::Invalid("block chunk lengths"));
    }
    Ok((out, table_len))
}

/// Check a block payload and decompress it: its chunks and their concatenated bytes.
/// Never allocates more than `raw_len` for the output, whatever the input.
pub fn decode_block(payload: &[u8], id: &ChunkId, raw_len: u32) -> Result<(Vec<BlockChunk>, Vec<u8>), FormatError> {
    let (chunks, table_len) = parse_block_table(payload, id, raw_len)?;
    let data = zstd::bulk::decompress(&payload[table_len..], raw_len as usize)
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if data.len() != raw_len as usize {
        return Err(FormatError::Decompress("block is shorter than its recorded length".into()));
    }
    Ok((chunks, data))
}

/// Encode an index for the given entries.
pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * INDEX_ENTRY_LEN + 32);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.push(e.flags);
        out.extend_from_slice(&e.inner.to_le_bytes());
        out.extend_from_slice(&e.record_raw.to_le_bytes());
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
    let entry_len = match v {
        INDEX_VERSION_V1 => INDEX_V1_ENTRY_LEN,
        INDEX_VERSION => INDEX_ENTRY_LEN,
        _ => return Err(FormatError::Version("index", v)),
    };
    let n = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    let rest = &body[16..];
    if rest.len() != n.checked_mul(entry_len).ok_or(FormatError::Invalid("count"))? {
        return Err(FormatError::Truncated("index entries"));
    }
    let mut out = Vec::with_capacity(n);
    for e in rest.chunks_exact(entry_len) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let u = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let entry = if v == INDEX_VERSION_V1 {
            // Written before blocks existed: every record holds one chunk.
            IndexEntry::single(id, u(32), u(36), u(40), e[44])
        } else {
            IndexEntry {
                id,
                offset: u(32),
                stored_len: u(36),
                raw_len: u(40),
                flags: e[44],
                inner: u(45),
                record_raw: u(49),
            }
        };
        if v == INDEX_VERSION_V1 && entry.flags == FLAG_BLOCK {
            return Err(FormatError::Invalid("index entry"));
        }
        entry.check()?;
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::noise as garbage;

    #[test]
    fn lengths_over_the_record_maximum_are_refused() {
        // A zstd record claiming 4 GiB (the fuzzer's find): refused before any read.
        let mut h = vec![7u8; 32];
        h.push(FLAG_ZSTD);
        h.extend_from_slice(&0xffff_0000u32.to_le_bytes());
        h.extend_from_slice(&100u32.to_le_bytes());
        assert!(matches!(parse_record_header(&h), Err(FormatError::Invalid(_))));
        h[33..37].copy_from_slice(&RECORD_RAW_MAX.to_le_bytes());
        assert!(parse_record_header(&h).is_ok());
        h[37..41].copy_from_slice(&(RECORD_RAW_MAX + 1).to_le_bytes());
        assert!(matches!(parse_record_header(&h), Err(FormatError::Invalid(_))));
        // The same lengths in an index entry (the index target's find: a 4 GiB stored
        // length became `read_record`'s buffer).
        let stored = IndexEntry::single([1; 32], 16, RECORD_RAW_MAX + 1, 50, FLAG_ZSTD);
        assert!(decode_index(&encode_index(&[stored])).is_err());
        let big = IndexEntry::single([1; 32], 16, 50, RECORD_RAW_MAX + 1, FLAG_ZSTD);
        assert!(decode_index(&encode_index(&[entry(1), big])).is_err());
        assert!(decode_index(&encode_index(&[IndexEntry::single([1; 32], 16, 50, RECORD_RAW_MAX, FLAG_ZSTD)])).is_ok());
    }

    fn entry(i: u8) -> IndexEntry {
        IndexEntry::single([i; 32], 16 + i as u32 * 100, 50, 80, FLAG_ZSTD)
    }

    fn block_entry(i: u8, inner: u32) -> IndexEntry {
        IndexEntry {
            id: [i; 32],
            offset: 4096,
            stored_len: 900,
            raw_len: 100,
            flags: FLAG_BLOCK,
            inner,
            record_raw: 300,
        }
    }

    fn mixed() -> Vec<IndexEntry> {
        let mut es: Vec<_> = (0..3).map(entry).collect();
        es.push(IndexEntry::single([9; 32], 8000, 64, 64, FLAG_RAW));
        es.push(IndexEntry::single([8; 32], 9000, 40, 5000, FLAG_DELTA));
        es.extend([block_entry(10, 0), block_entry(11, 100), block_entry(12, 200)]);
        es
    }

    fn block(chunks: &[&[u8]]) -> ([u8; RECORD_HEADER_LEN], Vec<u8>) {
        let list: Vec<_> = chunks.iter().map(|c| (*blake3::hash(c).as_bytes(), c.len() as u32)).collect();
        let table = encode_block_table(&list);
        let data = chunks.concat();
        let frame = zstd::bulk::compress(&data, 3).unwrap();
        let hdr = block_header(&table, data.len() as u32, frame.len());
        let mut payload = table;
        payload.extend_from_slice(&frame);
        (hdr, payload)
    }

    /// Header check, block decode and every chunk's hash: what a reader does.
    fn read_block(rec: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
        let (id, flags, raw, stored) = parse_record_header(rec)?;
        if flags != FLAG_BLOCK {
            return Err(FormatError::Invalid("not a block"));
        }
        let payload = rec.get(RECORD_HEADER_LEN..).ok_or(FormatError::Truncated("record"))?;
        if payload.len() != stored as usize {
            return Err(FormatError::Truncated("record"));
        }
        let (chunks, data) = decode_block(payload, &id, raw)?;
        chunks
            .iter()
            .map(|c| {
                let bytes = data[c.inner as usize..(c.inner + c.len) as usize].to_vec();
                if blake3::hash(&bytes).as_bytes() == &c.id { Ok(bytes) } else { Err(FormatError::Checksum) }
            })
            .collect()
    }

    #[test]
    fn index_round_trip() {
        let es: Vec<_> = (0..5).map(entry).collect();
        assert_eq!(decode_index(&encode_index(&es)).unwrap(), es);
        assert_eq!(decode_index(&encode_index(&mixed())).unwrap(), mixed());
        assert_eq!(decode_index(&encode_index(&[])).unwrap(), vec![]);
    }

    #[test]
    fn index_detects_every_single_byte_flip() {
        let enc = encode_index(&mixed());
        for i in 0..enc.len() {
            for bit in [0x01, 0x40, 0x80] {
                let mut bad = enc.clone();
                bad[i] ^= bit;
                assert!(decode_index(&bad).is_err(), "flip {bit:#x} at {i} went unnoticed");
            }
        }
        for n in 0..enc.len() {
            assert!(decode_index(&enc[..n]).is_err());
        }
    }

    #[test]
    fn index_rejects_entries_no_writer_produces() {
        let bad = [
            IndexEntry { flags: FLAG_BLOCK + 1, ..entry(1) },
            IndexEntry { inner: 1, ..IndexEntry::single([1; 32], 0, 40, 500, FLAG_DELTA) },
            IndexEntry::single([1; 32], 0, 31, 500, FLAG_DELTA),
            IndexEntry { inner: 1, ..entry(1) },
            IndexEntry { record_raw: 81, ..entry(1) },
            IndexEntry::single([1; 32], 0, 10, 11, FLAG_RAW),
            block_entry(1, 201),
            IndexEntry { inner: u32::MAX, ..block_entry(1, 0) },
            IndexEntry { stored_len: 3, ..block_entry(1, 0) },
        ];
        for e in bad {
            // A correct checksum does not make an impossible entry acceptable.
            assert_eq!(decode_index(&encode_index(&[e])), Err(FormatError::Invalid("index entry")), "{e:?}");
        }
    }

    /// A version 1 index as stores before blocks wrote it: 45-byte entries.
    fn encode_index_v1(entries: &[IndexEntry]) -> Vec<u8> {
        let mut out = INDEX_MAGIC.to_vec();
        out.extend_from_slice(&INDEX_VERSION_V1.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            out.extend_from_slice(&e.id);
            for v in [e.offset, e.stored_len, e.raw_len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.push(e.flags);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn version_1_indexes_still_read() {
        let es = vec![
            entry(1),
            IndexEntry::single([2; 32], 200, 64, 64, FLAG_RAW),
            IndexEntry::single([3; 32], 300, 40, 900, FLAG_DELTA),
        ];
        let v1 = encode_index_v1(&es);
        assert_eq!(v1.len(), 16 + 3 * INDEX_V1_ENTRY_LEN + 32);
        assert_eq!(decode_index(&v1).unwrap(), es);
        // Blocks did not exist in version 1: such an entry is damage, not data.
        let blocked = encode_index_v1(&[IndexEntry { flags: FLAG_BLOCK, ..entry(1) }]);
        assert_eq!(decode_index(&blocked), Err(FormatError::Invalid("index entry")));
        let mut v3 = encode_index(&es);
        v3[8] = 3;
        let body = v3.len() - 32;
        let sum = *blake3::hash(&v3[..body]).as_bytes();
        v3[body..].copy_from_slice(&sum);
        assert_eq!(decode_index(&v3), Err(FormatError::Version("index", 3)));
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..300u64 {
            let len = (seed as usize * 37) % 700;
            let g = garbage(seed, len);
            assert!(decode_index(&g).is_err());
            let _ = parse_record_header(&g);
            let _ = parse_block_table(&g, &[0; 32], 1000);
            let _ = decode_block(&g, &[0; 32], 1 << 20);
            let _ = read_block(&g);
            // Garbage behind a valid-looking header and a matching table hash.
            let mut t = encode_block_table(&[([1; 32], 500)]);
            let tid = *blake3::hash(&t).as_bytes();
            t.extend_from_slice(&g);
            assert!(decode_block(&t, &tid, 500).is_err());
        }
        // A count that claims more entries than there are bytes.
        let mut t = vec![0xff, 0xff, 0xff, 0xff];
        t.extend_from_slice(&[0u8; 64]);
        assert_eq!(parse_block_table(&t, &[0; 32], 0), Err(FormatError::Truncated("block table")));
        assert_eq!(parse_block_table(&[0, 0, 0, 0], &[0; 32], 0), Err(FormatError::Invalid("empty block")));
    }

    #[test]
    fn block_round_trip() {
        let a = b"first small file\n".repeat(20);
        let b = b"second".to_vec();
        let c = garbage(7, 3000);
        let (hdr, payload) = block(&[&a, &b, &c]);
        let (id, flags, raw, stored) = parse_record_header(&hdr).unwrap();
        assert_eq!((flags, raw, stored as usize), (FLAG_BLOCK, (a.len() + b.len() + c.len()) as u32, payload.len()));
        let (chunks, data) = decode_block(&payload, &id, raw).unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1], BlockChunk { id: *blake3::hash(&b).as_bytes(), inner: a.len() as u32, len: 6 });
        assert_eq!(data, [a.clone(), b.clone(), c.clone()].concat());
        let mut rec = hdr.to_vec();
        rec.extend_from_slice(&payload);
        assert_eq!(read_block(&rec).unwrap(), vec![a, b, c]);
        // The table alone can be read without touching the frame.
        let (t, tlen) = parse_block_table(&payload, &id, raw).unwrap();
        assert_eq!((t, tlen), (chunks, 4 + 3 * BLOCK_ENTRY_LEN));
        // A header that claims another length is refused.
        assert!(decode_block(&payload, &id, raw + 1).is_err());
        assert!(decode_block(&payload, &id, raw - 1).is_err());
    }

    #[test]
    fn block_detects_every_single_byte_flip_and_truncation() {
        let a = b"some text that compresses well, some text that compresses well".to_vec();
        let b = garbage(3, 200);
        let (hdr, payload) = block(&[&a, &b, b"x"]);
        let mut rec = hdr.to_vec();
        rec.extend_from_slice(&payload);
        assert!(read_block(&rec).is_ok());
        for i in 0..rec.len() {
            for bit in [0x01, 0x80] {
                let mut bad = rec.clone();
                bad[i] ^= bit;
                assert!(read_block(&bad).is_err(), "flip {bit:#x} at {i} went unnoticed");
            }
        }
        for n in 0..rec.len() {
            assert!(read_block(&rec[..n]).is_err(), "truncation to {n} went unnoticed");
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
        let short_block = record_header(&[1; 32], FLAG_BLOCK, 10, BLOCK_MIN_STORED - 1);
        assert!(parse_record_header(&short_block).is_err());
        let block = record_header(&[1; 32], FLAG_BLOCK, 10, BLOCK_MIN_STORED);
        assert!(parse_record_header(&block).is_ok());
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
