//! The deployed node's own identity: fstab for its new disk, its hostname, a fresh
//! machine-id and (unless asked to keep them) its own ssh host keys. The text rewrites are
//! plain functions; `apply` edits the deployed tree.

use super::disk::Filesystems;
use crate::layout::doc::{FsType, Item, Layout};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Rewrite the image's fstab for the new disk: `/` and `/boot/efi` point at the new
/// filesystems; other local-disk entries (the primary's extra disks, swap) are commented
/// out with a note, because those disks (and volume groups) do not exist here and a missing
/// one would stop the boot; everything else (tmpfs, NFS, bind mounts) is kept as it was.
pub fn fstab(old: &str, fs: &Filesystems) -> String {
    let mut out = String::from("# Rewritten by understudy for this node's disk; the image's entries are kept below.\n");
    out.push_str(&format!("UUID={} / ext4 errors=remount-ro 0 1\n", fs.root_uuid));
    out.push_str(&format!("UUID={} /boot/efi vfat umask=0077 0 1\n", fs.esp_id));
    for line in old.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0].starts_with('#') || f.len() < 2 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (src, mnt) = (f[0], f[1]);
        let local = ["UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=", "/dev/"].iter().any(|p| src.starts_with(p));
        let replaced = mnt == "/" || mnt == "/boot/efi";
        if replaced || local {
            out.push_str(&format!("# understudy: not on this node's disk: {line}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// What fstab is made from.
#[derive(Debug, Clone)]
pub enum FstabSource<'a> {
    /// The default layout (an imported image): fstab is rewritten for these filesystems.
    Default(Filesystems),
    /// A recorded layout, replayed with its UUIDs: the image's fstab stays valid and is
    /// kept, except for what the layout cannot provide.
    Recorded(&'a Layout),
}

/// The image's fstab checked against a recorded layout that was replayed with its UUIDs:
/// entries for local devices the layout provides (by UUID, LABEL, PARTUUID, PARTLABEL,
/// /dev/mapper, /dev/VG/LV or /dev/md path) are kept as they are; local entries it does
/// not provide are commented out (the device does not exist here and would stop the
/// boot); the layout's mounts and swap areas that the image's fstab does not mention are
/// added by UUID. Returns the new text and one note per change, or `None` when nothing
/// changes.
pub fn fstab_recorded(old: &str, layout: &Layout) -> Option<(String, Vec<String>)> {
    let idx = layout.index();
    // Source spec -> format id, for every way an fstab line can name a filesystem here.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for f in layout.formats() {
        if let Some(u) = &f.uuid {
            names.insert(format!("UUID={u}"), f.id.clone());
            names.insert(format!("/dev/disk/by-uuid/{u}"), f.id.clone());
        }
        if let Some(l) = &f.label {
            names.insert(format!("LABEL={l}"), f.id.clone());
            names.insert(format!("/dev/disk/by-label/{l}"), f.id.clone());
        }
        match idx.get(&f.volume) {
            Some(Item::Partition(p)) => {
                if let Some(u) = &p.uuid {
                    names.insert(format!("PARTUUID={u}"), f.id.clone());
                    names.insert(format!("PARTUUID={}", u.to_lowercase()), f.id.clone());
                    names.insert(format!("/dev/disk/by-partuuid/{}", u.to_lowercase()), f.id.clone());
                }
                if let Some(n) = &p.name {
                    names.insert(format!("PARTLABEL={n}"), f.id.clone());
                }
            }
            Some(Item::LvmPartition(l)) => {
                if let Some(vg) = layout.volgroups().find(|v| v.id == l.volgroup) {
                    names.insert(crate::layout::plan::lv_dev(&vg.name, &l.name), f.id.clone());
                    names.insert(format!("/dev/{}/{}", vg.name, l.name), f.id.clone());
                }
            }
            Some(Item::Raid(r)) => {
                names.insert(format!("/dev/md/{}", r.name), f.id.clone());
            }
            _ => {}
        }
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut mounted: BTreeSet<String> = BTreeSet::new();
    let mut notes = Vec::new();
    let mut out = String::new();
    for line in old.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0].starts_with('#') || f.len() < 2 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (src, mnt) = (f[0], f[1]);
        let local = ["UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=", "/dev/"].iter().any(|p| src.starts_with(p));
        let key = src.to_string();
        let hit = names.get(&key).or_else(|| names.get(&key.to_lowercase()));
        match hit {
            Some(id) => {
                used.insert(id.clone());
                mounted.insert(mnt.to_string());
                out.push_str(line);
                out.push('\n');
            }
            None if local => {
                notes.push(format!("disabled {src} on {mnt}: not in this node's layout"));
                out.push_str(&format!("# understudy: not in this node's layout: {line}\n"));
            }
            None => {
                mounted.insert(mnt.to_string());
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let formats: BTreeMap<&str, &crate::layout::doc::Format> = layout.formats().map(|f| (f.id.as_str(), f)).collect();
    for m in layout.mounts() {
        let Some(f) = formats.get(m.device.as_str()) else { continue };
        if mounted.contains(&m.path) || used.contains(&f.id) {
            continue;
        }
        let Some(u) = &f.uuid else { continue };
        let pass = if m.path == "/" { 1 } else { 2 };
        out.push_str(&format!("UUID={u} {} {} {} 0 {pass}\n", m.path, f.fstype.name(), m.options));
        notes.push(format!("added UUID={u} on {} ({}) from the layout", m.path, f.fstype.name()));
    }
    for f in layout.formats().filter(|f| f.fstype == FsType::Swap) {
        if used.contains(&f.id) {
            continue;
        }
        let Some(u) = &f.uuid else { continue };
        out.push_str(&format!("UUID={u} none swap sw 0 0\n"));
        notes.push(format!("added swap UUID={u} from the layout"));
    }
    if notes.is_empty() { None } else { Some((out, notes)) }
}

/// Point the `127.0.1.1` line (Debian's own-hostname line) at `node`; add one if missing.
pub fn hosts(old: &str, node: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = old
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") {
                found = true;
                format!("127.0.1.1\t{node}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("127.0.1.1\t{node}"));
    }
    out.join("\n") + "\n"
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    // Never follow a symlink out of the target: the image is data, not trusted paths.
    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Give the deployed tree at `root` this node's identity; returns what was rewritten, one
/// line per file (and per fstab change).
pub fn apply(root: &Path, node: &str, fs: &FstabSource<'_>, keep_ssh_keys: bool) -> anyhow::Result<Vec<String>> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let mut done = Vec::new();
    let old = std::fs::read_to_string(etc.join("fstab")).unwrap_or_default();
    match fs {
        FstabSource::Default(ids) => {
            write(&etc.join("fstab"), &fstab(&old, ids))?;
            done.push(format!("/etc/fstab: rewritten for the default layout (/ is UUID={})", ids.root_uuid));
        }
        FstabSource::Recorded(layout) => match fstab_recorded(&old, layout) {
            Some((text, notes)) => {
                write(&etc.join("fstab"), &text)?;
                done.extend(notes.into_iter().map(|n| format!("/etc/fstab: {n}")));
            }
            None => done.push("/etc/fstab: kept (the layout's UUIDs were replayed)".to_string()),
        },
    }
    write(&etc.join("hostname"), &format!("{node}\n"))?;
    done.push(format!("/etc/hostname: {node}"));
    let old = std::fs::read_to_string(etc.join("hosts")).unwrap_or_default();
    write(&etc.join("hosts"), &hosts(&old, node))?;
    done.push(format!("/etc/hosts: 127.0.1.1 {node}"));
    // An empty machine-id makes systemd generate a new one at first boot.
    if etc.join("machine-id").exists() {
        write(&etc.join("machine-id"), "")?;
        done.push("/etc/machine-id: emptied (a new one at first boot)".to_string());
    }
    let dbus = root.join("var/lib/dbus/machine-id");
    if dbus.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
        std::fs::remove_file(&dbus)?;
        done.push("/var/lib/dbus/machine-id: removed".to_string());
    }
    if !keep_ssh_keys && let Ok(rd) = std::fs::read_dir(etc.join("ssh")) {
        let mut removed = 0;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())?;
                removed += 1;
            }
        }
        if removed > 0 && root.join("usr/bin/ssh-keygen").exists() {
            super::disk::run_cmd(std::process::Command::new("chroot").arg(root).args(["/usr/bin/ssh-keygen", "-A"]))?;
        }
        if removed > 0 {
            done.push(format!("/etc/ssh: {removed} host key files replaced by this node's own"));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Filesystems {
        Filesystems { root_uuid: "11111111-2222-4333-a444-555555555555".into(), esp_id: "ABCD-EF01".into() }
    }

    #[test]
    fn fstab_points_at_the_new_disk_and_keeps_network_mounts() {
        let old = "# /etc/fstab\nUUID=aaaa / ext4 defaults 0 1\nUUID=bbbb /boot/efi vfat umask=0077 0 1\n\
                   UUID=cccc none swap sw 0 0\n/dev/sdb1 /data xfs defaults 0 2\n\
                   tmpfs /tmp tmpfs defaults 0 0\nnfs:/home /home nfs rw 0 0\n/dev/mapper/vg-x /x ext4 defaults 0 2\n";
        let new = fstab(old, &ids());
        let active: Vec<&str> = new.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert_eq!(
            active,
            [
                "UUID=11111111-2222-4333-a444-555555555555 / ext4 errors=remount-ro 0 1",
                "UUID=ABCD-EF01 /boot/efi vfat umask=0077 0 1",
                "tmpfs /tmp tmpfs defaults 0 0",
                "nfs:/home /home nfs rw 0 0",
            ]
        );
        assert!(new.contains("# understudy: not on this node's disk: /dev/sdb1 /data xfs defaults 0 2"));
        assert!(new.contains("# understudy: not on this node's disk: UUID=cccc none swap sw 0 0"));
        assert!(fstab("", &ids()).lines().count() == 3);
    }

    #[test]
    fn recorded_fstab_is_kept_where_the_layout_provides_it() {
        let mut l = crate::layout::doc::default_layout(crate::layout::doc::DEFAULT_DISK_SIZE);
        l.fill_missing_uuids(|| [0x11; 16]);
        let root = l.formats().find(|f| f.id == "root-fs").and_then(|f| f.uuid.clone()).unwrap();
        let esp = l.formats().find(|f| f.id == "esp-fs").and_then(|f| f.uuid.clone()).unwrap();
        // All provided: nothing changes.
        let old = format!("UUID={root} / ext4 errors=remount-ro 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 1\n");
        assert_eq!(fstab_recorded(&old, &l), None);
        // An extra disk and an unknown swap are disabled; network mounts stay.
        let old2 =
            format!("{old}/dev/sdb1 /data xfs defaults 0 2\nUUID=dead none swap sw 0 0\nnfs:/h /home nfs rw 0 0\n");
        let (text, notes) = fstab_recorded(&old2, &l).unwrap();
        assert!(text.starts_with(&old), "{text}");
        assert!(text.contains("# understudy: not in this node's layout: /dev/sdb1 /data xfs defaults 0 2"));
        assert!(text.contains("# understudy: not in this node's layout: UUID=dead none swap sw 0 0"));
        assert!(text.contains("\nnfs:/h /home nfs rw 0 0\n"));
        assert_eq!(notes.len(), 2, "{notes:?}");
        // An image whose fstab does not mention the layout's filesystems gets them added.
        let (text, notes) = fstab_recorded("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n", &l).unwrap();
        assert!(text.contains(&format!("UUID={root} / ext4 defaults 0 1\n")), "{text}");
        assert!(text.contains(&format!("UUID={esp} /boot/efi vfat umask=0077 0 2\n")), "{text}");
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn recorded_fstab_adds_swap_and_knows_lvm_names() {
        let path = format!("{}/tests/fixtures/layout/layout-raid1-lvm.json", env!("CARGO_MANIFEST_DIR"));
        let l = Layout::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        let old = "/dev/mapper/vg0-root / ext4 errors=remount-ro 0 1\n/dev/vg0/var /var xfs defaults 0 2\n";
        let (text, notes) = fstab_recorded(old, &l).unwrap();
        assert!(text.starts_with(old), "{text}");
        assert!(text.contains("UUID=2b7c9e4d-5a6f-4e3b-8c1d-0e9f8a7b6c03 none swap sw 0 0"), "{text}");
        assert_eq!(notes, ["added swap UUID=2b7c9e4d-5a6f-4e3b-8c1d-0e9f8a7b6c03 from the layout"]);
    }

    #[test]
    fn hosts_names_the_node() {
        assert_eq!(
            hosts("127.0.0.1\tlocalhost\n127.0.1.1\thead-a\n", "standby"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tstandby\n"
        );
        assert_eq!(hosts("127.0.0.1 localhost", "s"), "127.0.0.1 localhost\n127.0.1.1\ts\n");
    }
}
