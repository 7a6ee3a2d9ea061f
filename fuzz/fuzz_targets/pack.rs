//! Pack files: the record scanner that rebuilds a lost index (`scan_pack`, also used by
//! gc), record headers and block records. Whatever the bytes: what the scanner finds lies
//! inside the file and makes a valid index; a store opened over the pack with that index
//! reads back each of those chunks with the right bytes or an error (never wrong bytes, as
//! a delta whose base is missing or a block whose frame is damaged must fail). A block
//! payload is also decoded on its own, with its id computed from its table (the fuzzer
//! cannot guess a BLAKE3), so the decompression behind the table check is reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::store::pack::{
    self, BLOCK_ENTRY_LEN, FLAG_BLOCK, PACK_HEADER_LEN, RECORD_HEADER_LEN, decode_block, decode_index, encode_index,
    parse_record_header,
};
use understudy::store::scan_pack;

fuzz_target!(|data: &[u8]| {
    let dir = understudy_fuzz::scratch();
    let path = dir.path().join("p.pack");
    std::fs::write(&path, data).expect("writing the pack");
    let entries = scan_pack(&path).expect("scanning a readable file");
    if !entries.is_empty() {
        assert!(pack::check_pack_header(data).is_ok());
    }
    for e in &entries {
        let at = e.offset as usize;
        assert!(at >= PACK_HEADER_LEN && at + RECORD_HEADER_LEN + e.stored_len as usize <= data.len(), "{e:?}");
        let (id, flags, raw, stored) = parse_record_header(&data[at..]).expect("an indexed record header parses");
        assert_eq!((flags, raw, stored), (e.flags, e.record_raw, e.stored_len));
        assert!(flags == FLAG_BLOCK || id == e.id);
    }
    let index = encode_index(&entries);
    assert_eq!(decode_index(&index).as_deref(), Ok(&entries[..]), "the rebuilt index decodes");
    let mut ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let read = understudy_fuzz::read_back(&dir.path().join("data"), data, &index, &ids);
    // Raw, zstd and block chunks were checked by the scan; only deltas need their base.
    let checked = ids.iter().filter(|id| entries.iter().all(|e| e.id != **id || e.flags != pack::FLAG_DELTA)).count();
    assert!(read >= checked, "{read} of {checked} scanned chunks read back");

    // The input as one block payload: u32 LE raw length, then the payload.
    if data.len() >= 8 {
        let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & 0x00ff_ffff;
        let payload = &data[4..];
        let n = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        let table_len = n.saturating_mul(BLOCK_ENTRY_LEN).saturating_add(4).min(payload.len());
        let id = *blake3::hash(&payload[..table_len]).as_bytes();
        if let Ok((chunks, bytes)) = decode_block(payload, &id, raw_len) {
            assert_eq!(bytes.len(), raw_len as usize);
            let mut at = 0u32;
            for c in &chunks {
                assert_eq!(c.inner, at);
                at += c.len;
            }
            assert_eq!(at, raw_len);
        }
    }
});
