//! TFTP datagrams as the server receives them: decode never panics; a request re-encodes
//! to a datagram that decodes to the same request; negotiation stays inside the limits
//! and its OACK decodes back to itself; a sanitised file name stays below the root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Component;
use understudy::tftp::packet::{self, BLKSIZE_RANGE, Limits, Packet, decode, negotiate};
use understudy::tftp::path::sanitize;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = decode(data) else { return };
    match &p {
        Packet::Read(r) | Packet::Write(r) => {
            let opts: Vec<(&str, &str)> = r.options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let again = decode(&packet::request_bytes(matches!(p, Packet::Write(_)), &r.filename, &r.mode, &opts))
                .expect("a decoded request re-encodes");
            assert_eq!(again, p);
            let lim = Limits { max_blksize: 1468, max_windowsize: 16 };
            for size in [0, 1 << 20, u64::MAX] {
                let n = negotiate(&r.options, size, lim);
                assert!(BLKSIZE_RANGE.contains(&n.blksize) && n.blksize <= lim.max_blksize);
                assert!((1..=lim.max_windowsize).contains(&n.windowsize));
                assert!(n.timeout_secs != Some(0));
                assert!(n.oack.iter().all(|(k, _)| r.options.iter().any(|(rk, _)| rk == k)));
                // No accepted option means no OACK at all (DATA starts at once).
                if !n.oack.is_empty() {
                    assert_eq!(decode(&packet::oack(&n.oack)), Ok(Packet::Oack(n.oack.clone())));
                }
            }
            if let Ok(rel) = sanitize(&r.filename) {
                assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
            }
        }
        Packet::Ack(b) => assert_eq!(packet::ack(*b), data),
        Packet::Error(code, msg) if !msg.contains(['\0', '\u{fffd}']) => {
            assert_eq!(decode(&packet::error(*code, msg)), Ok(p.clone()));
        }
        _ => {}
    }
});
