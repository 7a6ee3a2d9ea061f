//! Manifest decoding and validation: never panics, and whatever validates re-encodes to
//! the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::store::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode()).expect("a valid manifest round-trips");
        assert_eq!(again, m);
    }
});
