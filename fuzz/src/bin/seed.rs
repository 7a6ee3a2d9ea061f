//! Writes the generated seed corpora (run by `fuzz/seed.sh`): everything here is made by
//! the product's own encoders and stores from real inputs, so the fuzzers start from the
//! shapes the server really sees. Usage: `seed OUT_DIR TREE_DIR`, where TREE_DIR is a
//! small file tree (seed.sh makes one with links, xattrs and sparse files).
use std::fs;
use std::path::{Path, PathBuf};
use understudy::capture::{CaptureOptions, capture};
use understudy::failover::packet::{Flags, Heartbeat, Keyring, NodeName, Role, encode, generate_key_file};
use understudy::store::Store;
use understudy::wire::{StreamRequest, cmdline};

fn put(out: &Path, target: &str, name: &str, data: &[u8]) {
    let d = out.join(target);
    fs::create_dir_all(&d).expect("creating a seed dir");
    fs::write(d.join(name), data).expect("writing a seed");
}

fn heartbeats(out: &Path) {
    let keys = Keyring::new(&[(1, understudy_fuzz::HEARTBEAT_KEY)]).expect("the fuzz key");
    let node = |s: &str| NodeName::new(s).expect("a node name");
    let base = Heartbeat {
        node: node("head1"),
        boot: 1_764_600_000_000_000,
        seq: 1,
        channel_tag: understudy::failover::packet::channel_tag("eth1"),
        term: 0,
        role: Role::Primary,
        priority: 100,
        flags: Flags::default(),
        echo_boot: 0,
        echo_seq: 0,
        echo_any_seq: 0,
    };
    let held = Flags { vip_held: true, healthy: true, link_up: true, ..Flags::default() };
    let variants = [
        base.clone(),
        Heartbeat {
            seq: 42,
            term: 3,
            flags: held,
            echo_boot: 1_764_600_000_000_123,
            echo_seq: 41,
            echo_any_seq: 41,
            ..base.clone()
        },
        Heartbeat {
            node: node("standby-01.example"),
            role: Role::Standby,
            priority: 50,
            flags: Flags { requesting: true, link_up: true, ..Flags::default() },
            ..base.clone()
        },
        Heartbeat {
            flags: Flags { releasing: true, yielding: true, acquiring: true, leaving: true, ..Flags::default() },
            channel_tag: understudy::failover::packet::channel_tag("bond0.12"),
            ..base.clone()
        },
        Heartbeat { node: node(&"n".repeat(32)), seq: u64::MAX, boot: u64::MAX, ..base },
    ];
    for (i, hb) in variants.iter().enumerate() {
        put(out, "heartbeat", &format!("encode-{i}"), &encode(hb, &keys));
    }
    let file = generate_key_file(1, understudy_fuzz::HEARTBEAT_KEY).expect("a key file");
    put(out, "heartbeat", "keyfile", file.as_bytes());
    // During a rotation: the new key signs, the old one still verifies.
    let mut new = [0u8; 32];
    new.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(37));
    let ring = Keyring::new(&[(2, new), (1, understudy_fuzz::HEARTBEAT_KEY)]).expect("a rotation keyring");
    put(out, "heartbeat", "keyfile-rotation", understudy::failover::packet::format_key_file(&ring).as_bytes());
}

fn cmdlines(out: &Path) {
    let extra = understudy::config::BootConfig::default().cmdline;
    let line = cmdline::render(&extra, "http://10.0.0.1:8080", 7, "node01", "a8f3k2q9z0", "52:54:00:12:34:56")
        .expect("a rendered line");
    put(out, "kernel_cmdline", "rendered", format!("{line}\n{extra}").as_bytes());
    let full = format!(
        "BOOT_IMAGE=vmlinuz initrd=initramfs {line} understudy.disk=/dev/nvme0n1 understudy.bootloader=none understudy.keep_ssh_keys=1 understudy.reboot=0\nquiet splash"
    );
    put(out, "kernel_cmdline", "all-keys", full.as_bytes());
    let v6 = cmdline::render("", "https://[fd00::1]:8443/understudy", 123456, "gpu-17", "Z", "aa:bb:cc:dd:ee:ff")
        .expect("a rendered line");
    put(out, "kernel_cmdline", "ipv6", v6.as_bytes());
}

fn templates(out: &Path) {
    // NUL-separated, in the target's order: message node image cmdline mac deployment
    // kernel_url initrd_url retry_secs script_url attempt retries next_url.
    let line = cmdline::render(
        "console=tty0 console=ttyS0,115200",
        "http://10.0.0.1:8080",
        7,
        "node01",
        "a8f3k2q9z0",
        "52:54:00:12:34:56",
    )
    .expect("a rendered line");
    let ipxe = [
        "this machine is not a node",
        "node01",
        "rocky9@3",
        &line,
        "52:54:00:12:34:56",
        "7",
        "http://10.0.0.1:8080/boot/vmlinuz?token=a8f3k2q9z0",
        "http://10.0.0.1:8080/boot/initramfs?token=a8f3k2q9z0",
        "30",
        "http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe?attempt=1",
        "1",
        "120",
        "http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe?attempt=2",
    ];
    put(out, "ipxe_template", "deploy-ipxe", ipxe.join("\0").as_bytes());
    let grub = ipxe.map(|v| v.replace("http://10.0.0.1:8080/", "(http,10.0.0.1:8080)/").replace(".ipxe", ".grub"));
    put(out, "ipxe_template", "deploy-grub", grub.join("\0").as_bytes());
    let mut refused = ipxe.map(String::from);
    refused[0] = "refused: this request came from 10.0.0.9, which is not an address of node node01".into();
    put(out, "ipxe_template", "refused", refused.join("\0").as_bytes());
}

fn stream_requests(out: &Path) {
    let hex = |i: u8| understudy::store::hex_id(&understudy_fuzz::stream_chunk(i));
    let bodies = [
        StreamRequest { have: vec![], want: None },
        StreamRequest { have: vec![hex(0), hex(3)], want: None },
        StreamRequest { have: vec![], want: Some(vec![hex(2), hex(0), hex(5)]) },
        StreamRequest { have: vec![hex(5)], want: Some(vec![hex(5), hex(1), hex(1), hex(4)]) },
        StreamRequest { have: vec![], want: Some(vec![understudy::store::hex_id(&[0xab; 32])]) },
    ];
    for (i, b) in bodies.iter().enumerate() {
        put(out, "stream_request", &format!("body-{i}"), &serde_json::to_vec(b).expect("json"));
    }
}

fn store_seeds(out: &Path, tree: &Path) {
    let dir = understudy_fuzz::scratch();
    let store = Store::open_for_write(dir.path()).expect("a new store");
    let opts = CaptureOptions { quiet: true, ..CaptureOptions::default() };
    let c = capture(&store, tree, None, &opts).expect("capturing the seed tree");
    store.flush().expect("flush");
    let mut tar = Vec::new();
    understudy::archive::export(&store, &c.manifest, &mut tar, true).expect("exporting the seed tree");
    put(out, "tar_import", "understudy-export.tar", &tar);
    put(out, "manifest", "capture.mf", &c.manifest.encode());
    for (sub, target) in [("packs", "pack"), ("index", "index")] {
        let files: Vec<PathBuf> =
            fs::read_dir(dir.path().join("store").join(sub)).expect("listing").flatten().map(|e| e.path()).collect();
        for (i, f) in files.iter().enumerate() {
            put(out, target, &format!("capture-{i}"), &fs::read(f).expect("reading a store file"));
        }
    }
    let (pack, index) = understudy_fuzz::sample_pack();
    put(out, "pack", "sample", &pack);
    put(out, "index", "sample", &index);
}

fn tftp_requests(out: &Path) {
    // What PXE ROMs, iPXE and GRUB send (the client captures come from seed.sh).
    use understudy::tftp::packet::request_bytes;
    let reqs: [(&str, &[(&str, &str)]); 3] = [
        ("undionly.kpxe", &[("tsize", "0")]),
        ("/grubx64.efi", &[("blksize", "1432"), ("tsize", "0"), ("windowsize", "16")]),
        ("pxelinux.cfg/01-52-54-00-12-34-56", &[("blksize", "1468"), ("timeout", "5")]),
    ];
    for (i, (f, o)) in reqs.iter().enumerate() {
        put(out, "tftp_packet", &format!("encode-{i}"), &request_bytes(false, f, "octet", o));
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), Some(tree)) = (args.next(), args.next()) else {
        eprintln!("usage: seed OUT_DIR TREE_DIR");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    heartbeats(&out);
    cmdlines(&out);
    templates(&out);
    stream_requests(&out);
    tftp_requests(&out);
    store_seeds(&out, Path::new(&tree));
}
