//! Disks for a deploy: the machine's block devices, partition device names, the default
//! GPT, and running the tools. Decisions are plain functions.

use std::path::Path;
use std::process::Command;

/// A block device as `/sys/block` describes it (the form the agent reports).
pub use crate::wire::Disk as BlockDev;

/// Smallest disk the agent will install on.
pub const MIN_DISK: u64 = 2 << 30;
/// EFI system partition size.
pub const ESP_MIB: u64 = 256;

/// Why no disk can be installed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoDisk {
    /// No fixed, writable disk at all.
    #[error("no fixed, writable disk found (pass understudy.disk=/dev/...)")]
    None,
    /// Disks, but all too small.
    #[error("no disk is large enough: need {need_mib} MiB, have {have}")]
    TooSmall {
        /// MiB needed.
        need_mib: u64,
        /// The disks seen, with sizes.
        have: String,
    },
}

/// The disk to install on: the first fixed, writable disk of a usable size, in name order
/// (so `sda` before `sdb`, as admins expect). Virtual devices are never chosen.
pub fn choose_disk(devs: &[BlockDev], need: u64) -> Result<String, NoDisk> {
    let skip = ["loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"];
    let mut ok: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| !skip.iter().any(|p| d.name.starts_with(p)) && !d.name.contains("boot") && !d.name.contains("rpmb"))
        .filter(|d| !d.removable && !d.read_only)
        .collect();
    ok.sort_by(|a, b| a.name.cmp(&b.name));
    let min = need.max(MIN_DISK);
    match ok.iter().find(|d| d.size >= min) {
        Some(d) => Ok(format!("/dev/{}", d.name)),
        None if ok.is_empty() => Err(NoDisk::None),
        None => Err(NoDisk::TooSmall {
            need_mib: min >> 20,
            have: ok.iter().map(|d| format!("{} ({} MiB)", d.name, d.size >> 20)).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Read `/sys/block`.
pub fn list_disks(sys_block: &Path) -> std::io::Result<Vec<BlockDev>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(sys_block)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let read =
            |f: &str| std::fs::read_to_string(e.path().join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
        let sectors: u64 = read("size").parse().unwrap_or(0);
        // Where each fact lives differs by driver (SCSI/SATA under device/, virtio and
        // NVMe at the top or under device/); the first non-empty one wins.
        let first = |fs: &[&str]| fs.iter().map(|f| read(f)).find(|v| !v.is_empty()).unwrap_or_default();
        let sector = read("queue/logical_block_size").parse().ok().filter(|s| matches!(s, 512 | 1024 | 2048 | 4096));
        let clip = |mut v: String, n: usize| {
            v.retain(|c| !c.is_control());
            v.chars().take(n).collect::<String>()
        };
        out.push(BlockDev {
            size: sectors * 512,
            logical_sector_size: sector.unwrap_or(512),
            model: clip(first(&["device/model"]), 128),
            serial: clip(first(&["serial", "device/serial"]), 128),
            wwid: clip(first(&["wwid", "device/wwid"]), 256),
            removable: read("removable") == "1",
            read_only: read("ro") == "1",
            name,
        });
    }
    Ok(out)
}

/// Partition `n` of `disk` (`/dev/vda` -> `/dev/vda1`; `/dev/nvme0n1`, `/dev/loop0` -> `p1`).
pub fn part_dev(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) { format!("{disk}p{n}") } else { format!("{disk}{n}") }
}

/// The GPT the agent writes: a BIOS boot partition (GRUB on BIOS with GPT), an EFI system
/// partition and the root filesystem on the rest. One layout boots on both firmware types,
/// so a standby can move between BIOS and UEFI without a reinstall.
pub fn sfdisk_script() -> String {
    format!(
        "label: gpt\n\
         size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
         size={ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
         type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n"
    )
}

/// Filesystem identities chosen before mkfs, so fstab can be written without probing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystems {
    /// Root ext4 UUID.
    pub root_uuid: String,
    /// ESP FAT volume id, `XXXX-XXXX`.
    pub esp_id: String,
}

impl Filesystems {
    /// New random identities.
    pub fn random() -> Filesystems {
        let r: [u8; 16] = rand::random();
        let h = hex::encode(r);
        let root_uuid = format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32]);
        let v: [u8; 4] = rand::random();
        let esp_id = format!("{:02X}{:02X}-{:02X}{:02X}", v[0], v[1], v[2], v[3]);
        Filesystems { root_uuid, esp_id }
    }
}

fn run(cmd: &mut Command, input: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    let what = format!("{cmd:?}");
    tracing::info!("running {what}");
    let mut child = cmd
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {what}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that fails early (no such disk) closes its input: its exit status and
        // stderr below say why, not the broken pipe.
        if let Err(e) = stdin.write_all(text.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(e.into());
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Run a command (its stderr goes into the error).
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    run(cmd, None)
}

/// Run a command with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> anyhow::Result<()> {
    run(cmd, input)
}

/// Partitions as (byte offset, byte length) from `sfdisk --json`.
pub fn parse_table(json: &str) -> Result<Vec<(u64, u64)>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("sfdisk --json: {e}"))?;
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let parts = t["partitions"].as_array().ok_or("sfdisk --json: no partitions")?;
    parts
        .iter()
        .map(|p| match (p["start"].as_u64(), p["size"].as_u64()) {
            (Some(s), Some(n)) => Ok((s * sector, n * sector)),
            _ => Err("sfdisk --json: a partition without start or size".to_string()),
        })
        .collect()
}

/// The kernel creates partition nodes on devtmpfs a moment after the table is re-read.
pub fn wait_for(devs: &[&str]) -> bool {
    for _ in 0..50 {
        if devs.iter().all(|d| Path::new(d).exists()) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, gib: u64) -> BlockDev {
        BlockDev {
            name: name.into(),
            size: gib << 30,
            logical_sector_size: 512,
            model: String::new(),
            serial: String::new(),
            wwid: String::new(),
            removable: false,
            read_only: false,
        }
    }

    #[test]
    fn picks_the_first_fixed_disk_big_enough() {
        let devs = vec![dev("sdb", 100), dev("loop0", 100), dev("sda", 100), dev("sr0", 1), dev("zram0", 8)];
        assert_eq!(choose_disk(&devs, 0).unwrap(), "/dev/sda");
        let mut usb = dev("sda", 100);
        usb.removable = true;
        assert_eq!(choose_disk(&[usb, dev("sdb", 100)], 0).unwrap(), "/dev/sdb");
        assert_eq!(choose_disk(&[dev("vda", 1), dev("vdb", 20)], 0).unwrap(), "/dev/vdb");
        assert!(choose_disk(&[dev("vda", 10)], 30 << 30).unwrap_err().to_string().contains("large enough"));
        assert!(choose_disk(&[dev("loop0", 10)], 0).unwrap_err().to_string().contains("no fixed"));
        assert!(choose_disk(&[dev("mmcblk0boot0", 10)], 0).is_err());
    }

    #[test]
    fn partition_names() {
        assert_eq!(part_dev("/dev/vda", 3), "/dev/vda3");
        assert_eq!(part_dev("/dev/nvme0n1", 1), "/dev/nvme0n1p1");
        assert_eq!(part_dev("/dev/loop7", 2), "/dev/loop7p2");
    }

    #[test]
    fn layout_and_ids() {
        let s = sfdisk_script();
        assert!(s.starts_with("label: gpt\n") && s.lines().count() == 4);
        assert!(s.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
        let f = Filesystems::random();
        assert_eq!(f.root_uuid.len(), 36);
        assert!(uuid_like(&f.root_uuid));
        assert_eq!(f.esp_id.len(), 9);
        assert_ne!(Filesystems::random(), f);
    }

    #[test]
    fn partition_table_json() {
        let j = r#"{"partitiontable": {"label": "gpt", "sectorsize": 512, "partitions": [
            {"node": "/dev/loop0p1", "start": 2048, "size": 2048},
            {"node": "/dev/loop0p2", "start": 4096, "size": 524288}]}}"#;
        assert_eq!(parse_table(j).unwrap(), vec![(1 << 20, 1 << 20), (2 << 20, 256 << 20)]);
        assert!(parse_table("{}").is_err());
        assert!(parse_table("not json").is_err());
        assert!(parse_table(r#"{"partitiontable": {"partitions": [{"start": 1}]}}"#).is_err());
    }

    fn uuid_like(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    }
}
