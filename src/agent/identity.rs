//! The deployed node's own identity: fstab for its new disk, its hostname, a fresh
//! machine-id and (unless asked to keep them) its own ssh host keys. The text rewrites are
//! plain functions; `apply` edits the deployed tree.

use super::disk::Filesystems;
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

/// Give the deployed tree at `root` this node's identity.
pub fn apply(root: &Path, node: &str, fs: &Filesystems, keep_ssh_keys: bool) -> anyhow::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let old = std::fs::read_to_string(etc.join("fstab")).unwrap_or_default();
    write(&etc.join("fstab"), &fstab(&old, fs))?;
    write(&etc.join("hostname"), &format!("{node}\n"))?;
    let old = std::fs::read_to_string(etc.join("hosts")).unwrap_or_default();
    write(&etc.join("hosts"), &hosts(&old, node))?;
    // An empty machine-id makes systemd generate a new one at first boot.
    if etc.join("machine-id").exists() {
        write(&etc.join("machine-id"), "")?;
    }
    let dbus = root.join("var/lib/dbus/machine-id");
    if dbus.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
        std::fs::remove_file(&dbus)?;
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
    }
    Ok(())
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
    fn hosts_names_the_node() {
        assert_eq!(
            hosts("127.0.0.1\tlocalhost\n127.0.1.1\thead-a\n", "standby"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tstandby\n"
        );
        assert_eq!(hosts("127.0.0.1 localhost", "s"), "127.0.0.1 localhost\n127.0.1.1\ts\n");
    }
}
