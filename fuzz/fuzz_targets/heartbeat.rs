//! Heartbeat datagrams and key files. A random datagram almost never carries a valid MAC,
//! so the input is tried twice: as received (must be refused or be genuine), and with the
//! first 94 bytes signed here with the test key, which lets the fuzzer reach the field
//! checks behind the MAC. Whatever decodes must re-encode to exactly the same bytes (one
//! encoding per heartbeat). Key files that parse must format and parse back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::failover::packet::{Keyring, PACKET_LEN, decode, encode, format_key_file, parse_key_file};

use understudy_fuzz::HEARTBEAT_KEY as KEY;

const MAC_AT: usize = 94;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = Keyring::new(&[(1, KEY)]) else { return };
    let check = |buf: &[u8]| {
        if let Ok(d) = decode(buf, &keys) {
            assert_eq!(d.key_id, 1);
            assert_eq!(&encode(&d.heartbeat, &keys)[..], buf, "{d:?}");
        }
    };
    check(data);
    if data.len() >= MAC_AT {
        let mut b = [0u8; PACKET_LEN];
        b[..MAC_AT].copy_from_slice(&data[..MAC_AT]);
        let mac = blake3::keyed_hash(&KEY, &b[..MAC_AT]);
        b[MAC_AT..].copy_from_slice(mac.as_bytes());
        check(&b);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(ring) = parse_key_file(text)
    {
        assert_eq!(parse_key_file(&format_key_file(&ring)), Ok(ring));
    }
});
