//! The DHCP packet path: decode, decide (server and proxy mode), encode the reply.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::dhcp::policy::{Known, Leases, Settings, decode, destination, encode, handle};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode(data) else { return };
    for (proxy, uefi_shim) in [(false, false), (true, false), (false, true)] {
        let s = Settings {
            server_ip: [10, 0, 0, 1].into(),
            net: [10, 0, 0, 0].into(),
            prefix: 24,
            range: ([10, 0, 0, 100].into(), [10, 0, 0, 110].into()),
            router: Some([10, 0, 0, 1].into()),
            dns: vec![[10, 0, 0, 1].into()],
            lease_secs: 3600,
            proxy,
            http_base: "http://10.0.0.1:8080".into(),
            uefi_shim,
        };
        let out = handle(&s, &m, &Known { collecting: true, ..Default::default() }, &Leases::default(), 1000);
        if let Some(r) = out.reply {
            let _ = destination(&m, &r);
            let bytes = encode(&r).expect("our own replies always encode");
            assert!(bytes.len() >= 300);
        }
    }
});
