//! The bootloader of the deployed disk, from the image itself (its GRUB matches its
//! kernel): on BIOS, GRUB on every disk the layout marks (every RAID1 member); on UEFI,
//! GRUB (or shim and the signed GRUB, when the image has them) on the ESP under the
//! image's own directory and the removable path, and a firmware boot entry placed right
//! after the IPv4 network entry, so network boot stays first and the server stays in
//! charge, and the disk comes before the slow IPv6 and HTTP network entries. The NVRAM
//! decisions are plain functions over `efibootmgr`'s output.

use super::Mounts;
use super::disk;
use super::replay::Replay;
use crate::layout::doc::{Item, Layout, PartFlag};
use crate::layout::plan::Plan;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One `BootXXXX` entry as `efibootmgr` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The entry number.
    pub num: u16,
    /// Its label.
    pub label: String,
}

/// What `efibootmgr` prints: the boot order and the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootVars {
    /// `BootOrder`.
    pub order: Vec<u16>,
    /// `BootXXXX` entries.
    pub entries: Vec<BootEntry>,
}

/// Parse `efibootmgr`'s listing (`BootOrder: 0001,0000`, `Boot0001* UEFI PXEv4 (...)`;
/// later efibootmgr versions put the device path after a tab).
pub fn parse_efibootmgr(text: &str) -> BootVars {
    let mut v = BootVars::default();
    for line in text.lines() {
        if let Some(o) = line.strip_prefix("BootOrder:") {
            v.order = o.trim().split(',').filter_map(|n| u16::from_str_radix(n.trim(), 16).ok()).collect();
        } else if let Some(rest) = line.strip_prefix("Boot")
            && rest.len() > 4
            && rest.is_char_boundary(4)
            && let Ok(num) = u16::from_str_radix(&rest[..4], 16)
        {
            let label = rest[4..].trim_start_matches('*').trim();
            let label = label.split('\t').next().unwrap_or("").trim().to_string();
            v.entries.push(BootEntry { num, label });
        }
    }
    v
}

/// A network boot entry over IPv4 (PXE or otherwise), by the names firmware gives them.
fn is_ipv4_net(label: &str) -> bool {
    let l = label.to_ascii_lowercase();
    let v6 = l.contains("v6") || l.contains("ipv6");
    let http = l.contains("http");
    (l.contains("pxev4") || l.contains("ipv4") || (l.contains("pxe") && !v6)) && !http
}

/// The boot order: the first IPv4 network entry first (the server decides every boot:
/// deploy, or "boot from disk"), `new` right after it (ahead of the IPv6 and HTTP network
/// entries, which would each wait for their own timeouts, and of the firmware's own disk
/// and DVD entries); `new` first when the firmware lists no IPv4 network entry. Every
/// other entry keeps its relative order.
pub fn boot_order(vars: &BootVars, new: u16) -> Vec<u16> {
    let label = |n: u16| vars.entries.iter().find(|e| e.num == n).map(|e| e.label.as_str()).unwrap_or("");
    let mut rest: Vec<u16> = vars.order.iter().copied().filter(|n| *n != new).collect();
    let mut out = Vec::with_capacity(rest.len() + 1);
    if let Some(i) = rest.iter().position(|n| is_ipv4_net(label(*n))) {
        out.push(rest.remove(i));
    }
    out.push(new);
    out.extend(rest);
    out
}

/// Entries carrying `label` (what an earlier deploy made), to delete before making a new one.
pub fn same_label(vars: &BootVars, label: &str) -> Vec<u16> {
    vars.entries.iter().filter(|e| e.label == label).map(|e| e.num).collect()
}

/// The label of the firmware entry for the deployed system.
pub fn entry_label(os_name: &str) -> String {
    let name = if os_name.trim().is_empty() { "Linux" } else { os_name.trim() };
    format!("{name} (understudy)")
}

/// `NAME=` of an os-release file.
pub fn os_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

/// Install the bootloader for the firmware this machine booted with; returns what was
/// done, one line each, for the console.
pub fn install(
    root: &Path,
    plan: &Plan,
    layout: &Layout,
    replay: &Replay,
    uefi: bool,
    mounts: &mut Mounts,
) -> anyhow::Result<Vec<String>> {
    if !["usr/sbin/grub-install", "sbin/grub-install"].iter().any(|p| root.join(p).exists()) {
        anyhow::bail!(
            "the image has no grub-install: install grub in the primary, or boot with understudy.bootloader=none"
        );
    }
    for d in ["dev", "proc", "sys", "run"] {
        mounts.mount(&format!("/{d}"), &root.join(d), &["--bind"])?;
    }
    let mut done = Vec::new();
    if uefi {
        done.extend(uefi_install(root, plan, layout, replay, mounts)?);
    } else {
        let disks: Vec<String> = if plan.bootloader_disks.is_empty() {
            plan.disks.iter().take(1).map(|d| d.target.clone()).collect()
        } else {
            plan.bootloader_disks.clone()
        };
        for d in &disks {
            let dev = replay.dev(d);
            chroot(root, &["grub-install", "--target=i386-pc", &dev])?;
            done.push(format!("GRUB for BIOS on {dev}"));
        }
    }
    chroot(root, &["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])?;
    done.push("GRUB menu /boot/grub/grub.cfg".to_string());
    Ok(done)
}

fn chroot(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    println!("understudy-agent: $ chroot {} {}", root.display(), args.join(" "));
    disk::run_cmd(Command::new("chroot").arg(root).args(args))
}

/// The ESP: the partition flagged `esp` with a vfat format (or the vfat mounted at
/// /boot/efi), its plan device, the disk it is on and its number.
fn esp(layout: &Layout, plan: &Plan) -> Option<(String, String, u32)> {
    let idx = layout.index();
    let flagged = layout.items.iter().find_map(|i| match i {
        Item::Partition(p) if p.flags.contains(&PartFlag::Esp) => Some(p),
        _ => None,
    });
    let mounted = layout.mounts().into_iter().find(|m| m.path == "/boot/efi").and_then(|m| {
        let f = layout.formats().find(|f| f.id == m.device)?;
        match idx.get(&f.volume) {
            Some(Item::Partition(p)) => Some(p),
            _ => None,
        }
    });
    let p = flagged.or(mounted)?;
    let dev = plan.volumes.iter().find(|v| v.id == p.id)?.device.clone();
    let disk = plan.disks.iter().find(|d| d.disk == p.device)?.target.clone();
    Some((dev, disk, p.number))
}

fn uefi_install(
    root: &Path,
    plan: &Plan,
    layout: &Layout,
    replay: &Replay,
    mounts: &mut Mounts,
) -> anyhow::Result<Vec<String>> {
    let Some((esp_dev, esp_disk, esp_part)) = esp(layout, plan) else {
        anyhow::bail!("this machine boots with UEFI but the image's layout has no EFI system partition");
    };
    let efi_dir = root.join("boot/efi");
    if !is_mountpoint(&efi_dir) {
        mounts.mount(&replay.dev(&esp_dev), &efi_dir, &[])?;
    }
    let signed = root.join("usr/lib/shim/shimx64.efi.signed").exists()
        && root.join("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed").exists();
    let mut args = vec!["grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram"];
    // Debian's grub-install copies shim, the signed GRUB and MokManager when asked to, and
    // with --force-extra-removable also to the removable path (EFI/BOOT/BOOTX64.EFI).
    args.push(if signed { "--uefi-secure-boot" } else { "--no-uefi-secure-boot" });
    args.push("--force-extra-removable");
    chroot(root, &args)?;
    let mut done = vec![format!("GRUB for UEFI on {}{}", esp_dev, if signed { " (shim, signed GRUB)" } else { "" })];
    let efi = efi_dir.join("EFI");
    // The image's own directory under EFI/ (from GRUB_DISTRIBUTOR: debian).
    let vendor = std::fs::read_dir(&efi)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| !n.eq_ignore_ascii_case("BOOT") && efi.join(n).join("grubx64.efi").exists());
    let Some(vendor) = vendor else { anyhow::bail!("grub-install left no EFI/<name>/grubx64.efi on the ESP") };
    if signed {
        // Older or non-Debian grub-install: put shim, GRUB and MokManager there ourselves.
        let copies = [
            ("usr/lib/shim/shimx64.efi.signed", format!("{vendor}/shimx64.efi")),
            ("usr/lib/shim/mmx64.efi.signed", format!("{vendor}/mmx64.efi")),
            ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", format!("{vendor}/grubx64.efi")),
            ("usr/lib/shim/shimx64.efi.signed", "BOOT/BOOTX64.EFI".to_string()),
            ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "BOOT/grubx64.efi".to_string()),
        ];
        for (src, dst) in copies {
            let (s, d) = (root.join(src), efi.join(&dst));
            if s.exists() && !d.exists() {
                std::fs::create_dir_all(d.parent().unwrap_or(&efi))?;
                std::fs::copy(&s, &d)?;
            }
        }
    }
    if !efi.join("BOOT/BOOTX64.EFI").exists() {
        anyhow::bail!("no removable-path loader EFI/BOOT/BOOTX64.EFI on the ESP after grub-install");
    }
    done.push("removable path EFI/BOOT/BOOTX64.EFI".to_string());
    let loader_file = if efi.join(&vendor).join("shimx64.efi").exists() { "shimx64.efi" } else { "grubx64.efi" };
    let loader = format!("\\EFI\\{vendor}\\{loader_file}");
    let label = entry_label(&os_name(&std::fs::read_to_string(root.join("etc/os-release")).unwrap_or_default()));
    done.push(nvram_entry(&replay.dev(&esp_disk), esp_part, &loader, &label)?);
    Ok(done)
}

fn is_mountpoint(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(want.as_ref())))
        .unwrap_or(false)
}

fn efibootmgr(args: &[&str]) -> anyhow::Result<String> {
    println!("understudy-agent: $ efibootmgr {}", args.join(" "));
    let o = Command::new("efibootmgr")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run efibootmgr (is it in the boot environment?): {e}"))?;
    if !o.status.success() {
        anyhow::bail!("efibootmgr {} failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The firmware entry for the deployed system: old entries with the same label deleted
/// (a redeploy makes no duplicate), a new one for `loader` on the ESP, and the boot order
/// with it right after the IPv4 network entry.
fn nvram_entry(disk: &str, part: u32, loader: &str, label: &str) -> anyhow::Result<String> {
    let vars_dir = PathBuf::from("/sys/firmware/efi/efivars");
    if std::fs::read_dir(&vars_dir).map(|mut d| d.next().is_none()).unwrap_or(true) {
        disk::run_cmd(Command::new("mount").args(["-t", "efivarfs", "efivarfs"]).arg(&vars_dir))?;
    }
    let before = parse_efibootmgr(&efibootmgr(&[])?);
    for n in same_label(&before, label) {
        efibootmgr(&["--quiet", "--bootnum", &format!("{n:04X}"), "--delete-bootnum"])?;
    }
    let part = part.to_string();
    let created = parse_efibootmgr(&efibootmgr(&[
        "--quiet", "--create", "--disk", disk, "--part", &part, "--loader", loader, "--label", label,
    ])?);
    // --quiet prints nothing: list again to find the new entry and the current order.
    let now = if created.entries.is_empty() { parse_efibootmgr(&efibootmgr(&[])?) } else { created };
    let Some(new) = now.entries.iter().find(|e| e.label == label).map(|e| e.num) else {
        anyhow::bail!("efibootmgr made no entry labelled {label:?}");
    };
    let order = boot_order(&now, new);
    let text = order.iter().map(|n| format!("{n:04X}")).collect::<Vec<_>>().join(",");
    let after = efibootmgr(&["--bootorder", &text])?;
    let check = parse_efibootmgr(&after);
    if check.order != order {
        anyhow::bail!("the firmware kept BootOrder {:?}, not {text}", check.order);
    }
    for l in after.lines() {
        println!("understudy-agent: efibootmgr: {l}");
    }
    Ok(format!("firmware entry Boot{new:04X} {label:?} ({loader} on {disk} partition {part}), BootOrder {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVMF: &str = "BootCurrent: 0001\nTimeout: 0 seconds\nBootOrder: 0001,0002,0003,0004,0000\n\
        Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n\
        Boot0001* UEFI PXEv4 (MAC:525400BEEF01)\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400beef01,1)/IPv4(0.0.0.0)\n\
        Boot0002* UEFI PXEv6 (MAC:525400BEEF01)\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400beef01,1)/IPv6([::])\n\
        Boot0003* UEFI HTTPv4 (MAC:525400BEEF01)\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400beef01,1)/IPv4(0.0.0.0)/Uri()\n\
        Boot0004* UEFI HTTPv6 (MAC:525400BEEF01)\tPciRoot(0x0)/Pci(0x2,0x0)/MAC(525400beef01,1)/IPv6([::])/Uri()\n\
        Boot0005* Debian GNU/Linux (understudy)\tHD(2,GPT,...)/File(\\EFI\\debian\\shimx64.efi)\n";

    #[test]
    fn parses_ovmf_listing() {
        let v = parse_efibootmgr(OVMF);
        assert_eq!(v.order, [1, 2, 3, 4, 0]);
        assert_eq!(v.entries.len(), 6);
        assert_eq!(v.entries[1], BootEntry { num: 1, label: "UEFI PXEv4 (MAC:525400BEEF01)".into() });
        assert_eq!(v.entries[5].label, "Debian GNU/Linux (understudy)");
        // efibootmgr 17 without device paths, and BootNext/BootCurrent are not entries.
        let v = parse_efibootmgr("BootNext: 0003\nBootOrder: 000A\nBoot000A* Linux Boot Manager\n");
        assert_eq!(v.order, [10]);
        assert_eq!(v.entries, [BootEntry { num: 10, label: "Linux Boot Manager".into() }]);
        assert_eq!(parse_efibootmgr("garbage\nBootÄÖ\nBoot12\n"), BootVars::default());
    }

    #[test]
    fn new_entry_goes_right_after_ipv4_network_boot() {
        let v = parse_efibootmgr(OVMF);
        // efibootmgr --create puts the new entry first; it moves behind PXEv4.
        let mut v2 = v.clone();
        v2.order.insert(0, 5);
        assert_eq!(boot_order(&v2, 5), [1, 5, 2, 3, 4, 0]);
        assert_eq!(boot_order(&v, 5), [1, 5, 2, 3, 4, 0]);
        // OVMF without a boot device named by QEMU: its DVD and disk entries come first;
        // network boot goes ahead of them.
        let ovmf = parse_efibootmgr(
            "BootOrder: 0006,0001,0002,0003,0004,0005,0000\nBoot0000* UiApp\nBoot0001* UEFI QEMU DVD-ROM QM00005 \n\
             Boot0002* UEFI Misc Device\nBoot0003* UEFI PXEv4 (MAC:525400BEEF01)\nBoot0004* UEFI PXEv6 (MAC:525400BEEF01)\n\
             Boot0005* EFI Internal Shell\nBoot0006* Debian GNU/Linux (understudy)\n",
        );
        assert_eq!(boot_order(&ovmf, 6), [3, 6, 1, 2, 4, 5, 0]);
        // Real firmware names.
        let hw = BootVars {
            order: vec![3, 1, 2],
            entries: vec![
                BootEntry { num: 1, label: "IBA GE Slot 0100 v1585 IPv6".into() },
                BootEntry { num: 2, label: "PXE IPv4 Intel(R) Ethernet".into() },
                BootEntry { num: 3, label: "Hard Drive".into() },
            ],
        };
        assert_eq!(boot_order(&hw, 9), [2, 9, 3, 1]);
        // No network entry: the disk first.
        let none = BootVars { order: vec![0], entries: vec![BootEntry { num: 0, label: "UiApp".into() }] };
        assert_eq!(boot_order(&none, 7), [7, 0]);
    }

    #[test]
    fn redeploy_deletes_the_old_entry() {
        let v = parse_efibootmgr(OVMF);
        assert_eq!(same_label(&v, "Debian GNU/Linux (understudy)"), [5]);
        assert!(same_label(&v, "Other (understudy)").is_empty());
        assert_eq!(
            entry_label(&os_name("PRETTY_NAME=\"x\"\nNAME=\"Debian GNU/Linux\"\n")),
            "Debian GNU/Linux (understudy)"
        );
        assert_eq!(entry_label(""), "Linux (understudy)");
    }
}
