//! An image's disk layout ([`crate::layout::doc`]) as a table for people: each disk with
//! its partitions under it, then the RAID arrays, then each volume group with its logical
//! volumes; every row says what the volume holds (a filesystem with its mount point, a
//! RAID member, an LVM physical volume) and its size in human units.

use crate::layout::doc::{BootMode, Bootloader, Item, Layout, PartFlag, PtableType, human};
use maud::{Markup, html};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Nesting: 0 for a disk, array or volume group; 1 for what is on it.
    pub depth: u8,
    /// The device as the admin knows it (`/dev/sda` as recorded, `#2`, `/dev/md/0`, `vg0/root`).
    pub device: String,
    /// What it is: `disk (gpt)`, `partition`, `raid1`, `volume group`, `logical volume`.
    pub kind: String,
    /// Size, human-readable, when known.
    pub size: String,
    /// What it holds: `ext4`, `RAID member of /dev/md/0`, `LVM PV of vg0`, flags.
    pub holds: String,
    /// Mount point and options (`/ (noatime)`), or empty.
    pub mount: String,
    /// Label and UUID of its filesystem, or the identifier kept on replay.
    pub ids: String,
}

fn boot_words(l: &Layout) -> (&'static str, &'static str) {
    let mode = match l.boot_mode {
        BootMode::Bios => "BIOS",
        BootMode::Uefi => "UEFI",
    };
    let loader = match l.bootloader {
        Bootloader::GrubPc => "GRUB (BIOS)",
        Bootloader::GrubEfi => "GRUB (UEFI)",
        Bootloader::ShimGrub => "shim + GRUB (Secure Boot)",
        Bootloader::None => "none",
    };
    (mode, loader)
}

/// What the volume `id` holds, its mount and its filesystem's identifiers.
fn contents(l: &Layout, id: &str) -> (String, String, String) {
    if let Some(f) = l.formats().find(|f| f.volume == id) {
        let mount = l
            .mounts()
            .into_iter()
            .find(|m| m.device == f.id)
            .map(|m| if m.options == "defaults" { m.path.clone() } else { format!("{} ({})", m.path, m.options) })
            .unwrap_or_default();
        let mut ids = Vec::new();
        if let Some(label) = &f.label {
            ids.push(format!("label {label}"));
        }
        if let Some(u) = &f.uuid {
            ids.push(format!("UUID {u}"));
        }
        return (f.fstype.name().to_string(), mount, ids.join(", "));
    }
    if let Some(r) = l.raids().find(|r| r.devices.iter().any(|d| d == id)) {
        return (format!("RAID member of /dev/md/{}", r.name), String::new(), String::new());
    }
    if let Some(r) = l.raids().find(|r| r.spare_devices.iter().any(|d| d == id)) {
        return (format!("RAID spare of /dev/md/{}", r.name), String::new(), String::new());
    }
    if let Some(v) = l.volgroups().find(|v| v.devices.iter().any(|p| p.device == id)) {
        return (format!("LVM physical volume of {}", v.name), String::new(), String::new());
    }
    (String::new(), String::new(), String::new())
}

/// The table's rows (see the module doc for the order).
pub fn rows(l: &Layout) -> Vec<Row> {
    let mut out = Vec::new();
    let size = |id: &str| l.volume_size(id).map(human).unwrap_or_else(|| "-".into());
    for d in l.disks() {
        let (holds, mount, ids) = contents(l, &d.id);
        let mut kind = format!(
            "disk ({})",
            match d.ptable {
                PtableType::Gpt => "GPT",
                PtableType::Msdos => "MBR",
                PtableType::None => "no partition table",
            }
        );
        if d.grub_device {
            kind.push_str(", bootloader");
        }
        let mut was = Vec::new();
        if let Some(m) = &d.hints.model {
            was.push(m.clone());
        }
        if let Some(s) = &d.hints.serial {
            was.push(format!("serial {s}"));
        }
        out.push(Row {
            depth: 0,
            device: d.hints.path.clone().unwrap_or_else(|| d.id.clone()),
            kind,
            size: human(d.size),
            holds: if holds.is_empty() { was.join(", ") } else { holds },
            mount,
            ids: if ids.is_empty() {
                d.ptable_id.clone().map(|i| format!("table id {i}")).unwrap_or_default()
            } else {
                ids
            },
        });
        for p in l.partitions_of(&d.id) {
            let (mut holds, mount, ids) = contents(l, &p.id);
            // Flags a filesystem or member does not already say (an ESP's vfat, a BIOS boot).
            let flags: Vec<&str> =
                p.flags.iter().filter(|f| !matches!(f, PartFlag::Raid | PartFlag::Lvm)).map(|f| f.name()).collect();
            if holds.is_empty() {
                holds = p.flags.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
            } else if !flags.is_empty() {
                holds = format!("{holds} ({})", flags.join(", "));
            }
            let mut kind = "partition".to_string();
            if let Some(n) = &p.name {
                kind.push_str(&format!(" \u{201c}{n}\u{201d}"));
            }
            if p.grow {
                kind.push_str(", grows");
            }
            out.push(Row { depth: 1, device: format!("#{}", p.number), kind, size: human(p.size), holds, mount, ids });
        }
    }
    for r in l.raids() {
        let (holds, mount, ids) = contents(l, &r.id);
        out.push(Row {
            depth: 0,
            device: format!("/dev/md/{}", r.name),
            kind: format!("raid{} on {} device(s), metadata {}", u8::from(r.level), r.devices.len(), r.metadata),
            size: size(&r.id),
            holds,
            mount,
            ids: if ids.is_empty() { format!("array UUID {}", r.uuid) } else { ids },
        });
    }
    for v in l.volgroups() {
        out.push(Row {
            depth: 0,
            device: v.name.clone(),
            kind: format!("volume group on {} PV(s)", v.devices.len()),
            size: l.vg_capacity(v).map(human).unwrap_or_else(|| "-".into()),
            holds: format!("extents of {}", human(v.extent_size)),
            mount: String::new(),
            ids: format!("UUID {}", v.uuid),
        });
        for lv in l.lvs_of(&v.id) {
            let (holds, mount, ids) = contents(l, &lv.id);
            let mut kind = format!("logical volume ({})", lv.kind.name().replace('_', " "));
            if lv.grow {
                kind.push_str(", grows");
            }
            out.push(Row {
                depth: 1,
                device: format!("{}/{}", v.name, lv.name),
                kind,
                size: human(lv.size),
                holds,
                mount,
                ids,
            });
        }
    }
    out
}

/// The layout's section: boot mode, bootloader, and the table.
pub fn table(label: &str, recorded: bool, l: &Layout) -> Markup {
    let (mode, loader) = boot_words(l);
    let rows = rows(l);
    html! {
        p {
            @if recorded {
                "Recorded with " strong { (label) } ": "
            } @else {
                "No layout was recorded with " strong { (label) } "; it deploys with the default one: "
            }
            "boot mode " strong { (mode) } ", bootloader " strong { (loader) } "."
        }
        div.scroll {
            table.layout {
                caption.visually-hidden { "Disk layout of " (label) }
                thead { tr {
                    th scope="col" { "Device" } th scope="col" { "What" } th scope="col" { "Size" }
                    th scope="col" { "Holds" } th scope="col" { "Mount point" } th scope="col" { "Identity" }
                } }
                tbody {
                    @for r in &rows {
                        tr class=(if r.depth > 0 { "sub" } else { "top" }) {
                            th scope="row" { @if r.depth > 0 { span.indent aria-hidden="true" { "└ " } } (r.device) }
                            td { (r.kind) }
                            td.num { (r.size) }
                            td { (r.holds) }
                            td { @if r.mount.is_empty() { "-" } @else { code { (r.mount) } } }
                            td.msg { (r.ids) }
                        }
                    }
                }
            }
        }
    }
}

/// Whether `item` is something the table shows as a row of its own.
pub fn is_row(item: &Item) -> bool {
    matches!(item, Item::Disk(_) | Item::Partition(_) | Item::Raid(_) | Item::LvmVolgroup(_) | Item::LvmPartition(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAID_LVM: &str = r#"{
      "version": 1, "boot_mode": "uefi", "bootloader": "grub-efi",
      "items": [
        {"type": "disk", "id": "d1", "size": 21474836480, "ptable": "gpt", "match": {"path": "/dev/vda", "serial": "S1"}},
        {"type": "disk", "id": "d2", "size": 21474836480, "ptable": "gpt", "match": {"path": "/dev/vdb"}},
        {"type": "partition", "id": "esp", "device": "d1", "number": 1, "size": 536870912, "part_type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "flags": ["esp"]},
        {"type": "partition", "id": "p1", "device": "d1", "number": 2, "size": 10737418240, "part_type": "A19D880F-05FC-4D3B-A006-743F0F84911E", "flags": ["raid"]},
        {"type": "partition", "id": "p2", "device": "d2", "number": 1, "size": 10737418240, "part_type": "A19D880F-05FC-4D3B-A006-743F0F84911E", "flags": ["raid"]},
        {"type": "raid", "id": "md0", "name": "0", "level": 1, "devices": ["p1", "p2"], "metadata": "1.2", "uuid": "11111111:22222222:33333333:44444444"},
        {"type": "lvm_volgroup", "id": "vg", "name": "vg0", "uuid": "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg", "devices": [{"device": "md0", "uuid": "hhhhhh-iiii-jjjj-kkkk-llll-mmmm-nnnnnn"}], "extent_size": 4194304},
        {"type": "lvm_partition", "id": "lvroot", "volgroup": "vg", "name": "root", "uuid": "oooooo-pppp-qqqq-rrrr-ssss-tttt-uuuuuu", "size": 4294967296, "kind": "linear"},
        {"type": "format", "id": "fesp", "volume": "esp", "fstype": "vfat", "uuid": "1A2B-3C4D"},
        {"type": "format", "id": "froot", "volume": "lvroot", "fstype": "ext4", "label": "root<&>", "uuid": "0e7a1c8e-1b1d-4c59-9d5e-0123456789ab"},
        {"type": "mount", "id": "mroot", "device": "froot", "path": "/", "options": "noatime"},
        {"type": "mount", "id": "mesp", "device": "fesp", "path": "/boot/efi", "options": "umask=0077"}
      ]}"#;

    #[test]
    fn disks_partitions_raid_and_lvm_in_one_table() {
        let l: Layout = serde_json::from_str(RAID_LVM).unwrap();
        l.validate().unwrap();
        let rows = rows(&l);
        let dev: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(dev, ["/dev/vda", "#1", "#2", "/dev/vdb", "#1", "/dev/md/0", "vg0", "vg0/root"]);
        assert_eq!(rows[0].size, human(21474836480));
        assert!(rows[0].holds.contains("serial S1"), "{:?}", rows[0]);
        assert_eq!((rows[1].holds.as_str(), rows[1].mount.as_str()), ("vfat (esp)", "/boot/efi (umask=0077)"));
        assert_eq!(rows[2].holds, "RAID member of /dev/md/0");
        assert!(rows[5].kind.starts_with("raid1 on 2 device(s)"), "{:?}", rows[5]);
        assert_eq!(rows[5].holds, "LVM physical volume of vg0");
        assert_eq!(rows[7].depth, 1);
        assert_eq!((rows[7].holds.as_str(), rows[7].mount.as_str()), ("ext4", "/ (noatime)"));
        assert!(rows[7].ids.contains("label root<&>") && rows[7].ids.contains("UUID 0e7a1c8e"), "{:?}", rows[7]);
        assert!(l.items.iter().filter(|i| is_row(i)).count() == rows.len());
        let html = table("head-a@3", true, &l).into_string();
        assert!(html.contains("Recorded with <strong>head-a@3</strong>") && html.contains("UEFI"), "{html}");
        assert!(html.contains("label root&lt;&amp;&gt;"), "escaped: {html}");
        assert!(html.contains("<th scope=\"col\">Mount point</th>"), "{html}");
    }

    #[test]
    fn the_default_layout_says_it_is_the_default() {
        let l = crate::layout::doc::default_layout(8 << 30);
        let html = table("base@1", false, &l).into_string();
        assert!(html.contains("No layout was recorded with <strong>base@1</strong>"), "{html}");
        let rows = rows(&l);
        assert!(rows.iter().any(|r| r.mount.starts_with('/')), "{rows:?}");
    }
}
