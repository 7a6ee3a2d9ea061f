//! Index files. The trailing BLAKE3 stops nearly every random input, so each input is
//! tried as it is and re-checksummed here (its last 32 bytes replaced by the hash of the
//! rest), which lets the fuzzer reach the entry checks. An index that decodes re-encodes
//! to the same entries (to the same bytes for the current version), and a store that
//! opens it over a real pack reads each listed chunk with the right bytes or an error,
//! however the entries lie about offsets, lengths and encodings.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use understudy::store::pack::{INDEX_VERSION, decode_index, encode_index};

fn real_pack() -> &'static Vec<u8> {
    static PACK: OnceLock<Vec<u8>> = OnceLock::new();
    PACK.get_or_init(|| understudy_fuzz::sample_pack().0)
}

fn check(data: &[u8]) {
    let Ok(entries) = decode_index(data) else { return };
    let again = encode_index(&entries);
    assert_eq!(decode_index(&again).as_deref(), Ok(&entries[..]));
    if data[8..12] == INDEX_VERSION.to_le_bytes() {
        assert_eq!(again, data);
    }
    let dir = understudy_fuzz::scratch();
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    understudy_fuzz::read_back(dir.path(), real_pack(), data, &ids);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 48 {
        let mut v = data.to_vec();
        let body = v.len() - 32;
        let sum = *blake3::hash(&v[..body]).as_bytes();
        v[body..].copy_from_slice(&sum);
        check(&v);
    }
});
