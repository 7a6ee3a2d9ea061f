//! Layout capture on the host: filesystems made with known identities on loop devices and
//! mounted as a small root tree; `layout::probe::probe` must report what mkfs set. Runs as
//! root (loop devices, mount); needs e2fsprogs, xfsprogs and util-linux (`make deps`).
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

use std::path::Path;
use std::process::Command;

use understudy::layout::doc::{FsType, PtableType};
use understudy::layout::{plan, probe};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Loop devices and mounts made by this test, undone on drop (mounts first).
#[derive(Default)]
struct Cleanup {
    mounts: Vec<String>,
    loops: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

impl Cleanup {
    fn loop_dev(&mut self, dir: &Path, name: &str, size: &str) -> String {
        let img = dir.join(name);
        sh(&["truncate", "-s", size, img.to_str().unwrap()]);
        let dev = sh(&["losetup", "--find", "--show", img.to_str().unwrap()]);
        self.loops.push(dev.clone());
        dev
    }

    fn mount(&mut self, dev: &str, at: &Path, opts: &str) {
        std::fs::create_dir_all(at).unwrap();
        sh(&["mount", "-o", opts, dev, at.to_str().unwrap()]);
        self.mounts.push(at.to_string_lossy().into_owned());
    }
}

const ROOT_UUID: &str = "0b6c7a4e-91d2-4f1e-8a3b-5c6d7e8f9a01";
const VAR_UUID: &str = "1c7d8b5f-a2e3-4a2f-9b4c-6d7e8f9a0b02";
const SWAP_UUID: &str = "2d8e9c60-b3f4-4b30-8c5d-7e8f9a0b1c03";

#[test]
fn probe_reports_what_mkfs_set() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cleanup::default();
    let root_dev = c.loop_dev(tmp.path(), "root.img", "256M");
    let var_dev = c.loop_dev(tmp.path(), "var.img", "320M");
    let swap_dev = c.loop_dev(tmp.path(), "swap.img", "64M");
    sh(&["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-L", "hostroot", "-I", "256", &root_dev]);
    sh(&["mkfs.xfs", "-q", "-f", "-m", &format!("uuid={VAR_UUID}"), "-L", "hostvar", &var_dev]);
    sh(&["mkswap", "-q", "-U", SWAP_UUID, "-L", "hostswap", &swap_dev]);
    let mnt = tmp.path().join("mnt");
    c.mount(&root_dev, &mnt, "rw");
    c.mount(&var_dev, &mnt.join("var"), "noatime");

    let layout = probe::probe(&mnt).unwrap();
    layout.validate().unwrap();

    // `capture` of that mounted root records the same layout with the image version.
    std::fs::write(mnt.join("etc-hostname"), "head-a\n").unwrap();
    let data = tmp.path().join("data");
    let bin = env!("CARGO_BIN_EXE_understudy");
    let data_s = data.to_str().unwrap();
    sh(&[bin, "--data-dir", data_s, "-q", "capture", "--name", "host", mnt.to_str().unwrap()]);
    let recorded: understudy::layout::doc::Layout =
        serde_json::from_str(&sh(&[bin, "--data-dir", data_s, "images", "layout", "host", "--json"])).unwrap();
    assert_eq!(recorded, layout);

    // The two loop devices holding mounted filesystems, used whole; not the swap loop,
    // which nothing under the root uses.
    let disks: Vec<(String, PtableType, u64)> = layout.disks().map(|d| (d.id.clone(), d.ptable, d.size)).collect();
    let name = |d: &str| d.trim_start_matches("/dev/").to_string();
    assert_eq!(disks, [(name(&root_dev), PtableType::None, 256 << 20), (name(&var_dev), PtableType::None, 320 << 20)]);

    let fs: Vec<(&str, FsType, Option<&str>, Option<&str>)> =
        layout.formats().map(|f| (f.volume.as_str(), f.fstype, f.uuid.as_deref(), f.label.as_deref())).collect();
    assert_eq!(
        fs,
        [
            (name(&root_dev).as_str(), FsType::Ext4, Some(ROOT_UUID), Some("hostroot")),
            (name(&var_dev).as_str(), FsType::Xfs, Some(VAR_UUID), Some("hostvar")),
        ]
    );
    let root_fs = layout.formats().next().unwrap();
    let ext = root_fs.ext.as_ref().expect("dumpe2fs parameters");
    assert_eq!(ext.inode_size, Some(256));
    assert!(ext.features.iter().any(|f| f == "has_journal"), "{:?}", ext.features);
    let xfs = layout.formats().nth(1).unwrap().xfs.as_ref().expect("xfs_info parameters");
    assert_eq!(xfs.options.get("crc"), Some(&1));

    let mounts: Vec<(&str, &str)> = layout.mounts().iter().map(|m| (m.path.as_str(), m.options.as_str())).collect();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert_eq!(mounts[0].0, "/");
    assert_eq!(mounts[1].0, "/var");
    assert!(mounts[1].1.split(',').any(|o| o == "noatime"), "{mounts:?}");

    // blkid, as the probe runs it, on the swap area mkswap made.
    let mut argv = probe::BLKID.to_vec();
    argv.push(&swap_dev);
    let b = probe::parse_blkid(&sh(&argv)).unwrap();
    assert_eq!(b[&swap_dev]["TYPE"], "swap");
    assert_eq!(b[&swap_dev]["UUID"], SWAP_UUID);
    assert_eq!(b[&swap_dev]["LABEL"], "hostswap");

    // The captured layout plans onto two larger disks with the recorded identities.
    let disk = |n: &str, size: u64| plan::TargetDisk {
        name: n.into(),
        size,
        sector_size: 512,
        serial: None,
        wwn: None,
        model: None,
        removable: false,
        read_only: false,
    };
    let p = plan::plan(&layout, &[disk("vda", 1 << 30), disk("vdb", 1 << 30)], "/mnt/target").unwrap();
    let text = p.render();
    assert!(text.contains(&format!("-U {ROOT_UUID} -L hostroot")), "{text}");
    assert!(text.contains(&format!("-m uuid={VAR_UUID}")), "{text}");
    assert!(text.contains("mount -t xfs -o"), "{text}");
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/layout/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The RAID1 + LVM layout captured from the fixtures.
fn raid_lvm() -> understudy::layout::doc::Layout {
    let mut p = probe::Probe {
        root: "/".into(),
        mounts: probe::parse_findmnt(&fixture("findmnt-raid-lvm.json")).unwrap(),
        devices: probe::parse_lsblk(&fixture("lsblk-raid-lvm.json")).unwrap(),
        blkid: probe::parse_blkid(&fixture("blkid-raid-lvm.txt")).unwrap(),
        pvs: probe::parse_pvs(&fixture("pvs.json")).unwrap(),
        vgs: probe::parse_vgs(&fixture("vgs.json")).unwrap(),
        lvs: probe::parse_lvs(&fixture("lvs.json")).unwrap(),
        ..Default::default()
    };
    p.tables.insert("/dev/vda".into(), probe::parse_sfdisk(&fixture("sfdisk-raid-vda.json")).unwrap());
    p.tables.insert("/dev/vdb".into(), probe::parse_sfdisk(&fixture("sfdisk-raid-vdb.json")).unwrap());
    p.md.insert("/dev/md0".into(), probe::parse_mdadm(&fixture("mdadm-md0.txt")).unwrap());
    p.ext.insert("/dev/mapper/vg0-root".into(), probe::parse_dumpe2fs(&fixture("dumpe2fs-root.txt")).unwrap());
    p.xfs.insert("/dev/mapper/vg0-var".into(), probe::parse_xfs_info(&fixture("xfs_info-var.txt")).unwrap());
    probe::assemble(&p).unwrap()
}

/// The plan's own sfdisk scripts and mkfs command lines, run against image files in place
/// of the target's devices (this host's kernel has no md or device-mapper, so mdadm and
/// LVM steps are left to the VM tests): the tables and filesystems that come out carry
/// the recorded ids.
#[test]
fn planned_sfdisk_and_mkfs_commands_make_what_was_recorded() {
    use understudy::layout::doc::Item;
    let tmp = tempfile::tempdir().unwrap();
    let layout = raid_lvm();
    let target = |n: &str| plan::TargetDisk {
        name: n.into(),
        size: 30 << 30,
        sector_size: 512,
        serial: None,
        wwn: None,
        model: None,
        removable: false,
        read_only: false,
    };
    let p = plan::plan(&layout, &[target("vda"), target("vdb")], "/mnt/target").unwrap();
    let mut tables = 0;
    let mut filesystems = 0;
    for step in &p.steps {
        let plan::Step::Run { argv, input, .. } = step else { continue };
        let dev = argv.last().unwrap();
        let img = tmp.path().join(dev.trim_start_matches("/dev/").replace('/', "_"));
        let mut args: Vec<String> = argv.clone();
        *args.last_mut().unwrap() = img.to_string_lossy().into_owned();
        match argv[0].as_str() {
            "sfdisk" => {
                sh(&["truncate", "-s", &(30u64 << 30).to_string(), img.to_str().unwrap()]);
                let mut child =
                    Command::new("sfdisk").args(&args[1..]).stdin(std::process::Stdio::piped()).spawn().unwrap();
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_ref().unwrap().as_bytes())
                    .unwrap();
                assert!(child.wait().unwrap().success(), "{argv:?}");
                let t = probe::parse_sfdisk(&sh(&["sfdisk", "--json", img.to_str().unwrap()])).unwrap();
                let disk = layout.disks().find(|d| d.hints.path.as_deref() == Some(dev.as_str())).unwrap();
                assert_eq!(t.id.as_deref(), disk.ptable_id.as_deref());
                let recorded = layout.partitions_of(&disk.id);
                assert_eq!(t.partitions.len(), recorded.len());
                for (got, want) in t.partitions.iter().zip(recorded) {
                    let v = p.volumes.iter().find(|v| v.id == want.id).unwrap();
                    assert_eq!(got.start * 512, want.start.unwrap());
                    assert_eq!(got.size * 512, v.size, "{}", want.id);
                    assert_eq!(got.part_type, want.part_type);
                    assert_eq!(got.uuid, want.uuid);
                    assert_eq!(got.name, want.name);
                }
                tables += 1;
            }
            "mkfs.ext4" | "mkfs.xfs" | "mkswap" => {
                sh(&["truncate", "-s", "320M", img.to_str().unwrap()]);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                sh(&refs);
                let f = layout
                    .items
                    .iter()
                    .find_map(|i| match i {
                        Item::Format(f) if p.volumes.iter().any(|v| v.id == f.volume && &v.device == dev) => Some(f),
                        _ => None,
                    })
                    .unwrap();
                let b = probe::parse_blkid(&sh(&["blkid", "--probe", "--output", "export", img.to_str().unwrap()]))
                    .unwrap();
                let b = b.values().next().unwrap();
                assert_eq!(b["TYPE"], f.fstype.name());
                assert_eq!(b.get("UUID"), f.uuid.as_ref());
                assert_eq!(b.get("LABEL"), f.label.as_ref());
                filesystems += 1;
            }
            _ => {}
        }
    }
    assert_eq!((tables, filesystems), (2, 3));
}
