//! Layout capture: the layout document built from the system tools' machine-readable
//! output. The parsers and [`assemble`] are pure functions over the tools' text; [`probe`]
//! is the I/O edge that runs the tools for a mounted root.
//!
//! Which tool is the authority for what:
//! - `findmnt` ([`FINDMNT`]): what is mounted under the root, with options;
//! - `lsblk` ([`LSBLK`]): the device tree (which disks hold a mounted filesystem, through
//!   partitions, md and device-mapper), disk sizes, sector sizes and match hints;
//! - `sfdisk --json` ([`SFDISK`]): partition tables (label, ids, start, size, type, name,
//!   PARTUUID, attributes);
//! - `blkid --probe` ([`BLKID`]): filesystem type, UUID and label (read from the device,
//!   not from udev's database, which a boot environment or container may lack);
//! - `mdadm --detail --export` ([`MDADM`]): RAID level, members and their roles,
//!   metadata version, UUID, name;
//! - `pvs`/`vgs`/`lvs` with `--reportformat json` ([`PVS`], [`VGS`], [`LVS`]): LVM;
//! - `dumpe2fs -h` ([`DUMPE2FS`]) and `xfs_info` ([`XFS_INFO`]): the mkfs parameters that
//!   matter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::doc::{
    BootMode, Bootloader, Disk, DiskMatch, ExtParams, Format, FsType, GPT_BIOS_BOOT, GPT_ESP, GPT_LVM, GPT_RAID,
    GPT_SWAP, Item, Layout, LayoutError, LogicalVolume, LvKind, Mount, PartFlag, Partition, PhysicalVolume, PtableType,
    Raid, RaidLevel, VERSION, VfatParams, VolumeGroup, XfsParams,
};

/// `findmnt` command line: every mount, flat, with the columns used.
pub const FINDMNT: &[&str] =
    &["findmnt", "--json", "--list", "--output", "TARGET,SOURCE,FSTYPE,OPTIONS,MAJ:MIN,FSROOT"];
/// `lsblk` command line: the whole device tree in bytes, with the columns used.
pub const LSBLK: &[&str] = &[
    "lsblk",
    "--json",
    "--bytes",
    "--output",
    "NAME,KNAME,PATH,MAJ:MIN,TYPE,SIZE,LOG-SEC,PHY-SEC,RM,RO,SERIAL,WWN,MODEL,PTTYPE,PTUUID,PARTUUID,PARTTYPE,PARTLABEL,PARTFLAGS,FSTYPE,FSVER,UUID,LABEL,MOUNTPOINTS",
];
/// `sfdisk` command line, followed by the disk.
pub const SFDISK: &[&str] = &["sfdisk", "--json"];
/// `blkid` command line, followed by one device (blkid stops at the first device without
/// a signature, so it runs once per device; exit status 2 means "nothing found").
pub const BLKID: &[&str] = &["blkid", "--probe", "--output", "export"];
/// `mdadm` command line, followed by the array.
pub const MDADM: &[&str] = &["mdadm", "--detail", "--export"];
/// `pvs` command line.
pub const PVS: &[&str] =
    &["pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pv_name,pv_uuid,vg_name,dev_size,pe_start"];
/// `vgs` command line.
pub const VGS: &[&str] =
    &["vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,vg_uuid,vg_extent_size,vg_size"];
/// `lvs` command line (LV fields only, so there is one row per LV, not per segment).
pub const LVS: &[&str] = &[
    "lvs",
    "--reportformat",
    "json",
    "--units",
    "b",
    "--nosuffix",
    "-o",
    "lv_name,vg_name,lv_uuid,lv_size,lv_layout,pool_lv,lv_dm_path",
];
/// `dumpe2fs` command line, followed by the device.
pub const DUMPE2FS: &[&str] = &["dumpe2fs", "-h"];
/// `xfs_info` command line, followed by the mount point or device.
pub const XFS_INFO: &[&str] = &["xfs_info"];

/// Why a layout could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A tool's JSON does not parse or lacks a required field.
    #[error("{tool} output: {source}")]
    Json {
        /// The tool.
        tool: &'static str,
        /// The parse error (names the missing field or the position).
        source: serde_json::Error,
    },
    /// A tool's text output is not what it documents.
    #[error("{tool} output: {reason}")]
    Malformed {
        /// The tool.
        tool: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Something on the disks that cannot be replayed faithfully.
    #[error("{device}: {what} cannot be replayed")]
    Unsupported {
        /// The device or item.
        device: String,
        /// What it is.
        what: String,
    },
    /// No mounted block-device filesystem under the root.
    #[error("nothing under {0} is mounted from a block device")]
    NothingMounted(String),
    /// A device the tools name that the device tree does not have.
    #[error("{tool} names {device}, which lsblk does not list")]
    UnknownDevice {
        /// The tool.
        tool: &'static str,
        /// The device.
        device: String,
    },
    /// The assembled document does not validate.
    #[error("captured layout is not valid: {0}")]
    Layout(#[from] LayoutError),
    /// A tool could not be run.
    #[error("running {cmd}: {source}")]
    Run {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

fn json<'a, T: Deserialize<'a>>(tool: &'static str, text: &'a str) -> Result<T, ProbeError> {
    serde_json::from_str(text).map_err(|source| ProbeError::Json { tool, source })
}

/// Numbers that some tool versions print as JSON numbers and others as strings.
fn de_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        N(u64),
        S(String),
    }
    match N::deserialize(d)? {
        N::N(n) => Ok(n),
        N::S(s) => s.trim().parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}

fn de_opt_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        N(u64),
        S(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::N(n)) => Ok(Some(n)),
        Some(N::S(s)) if s.trim().is_empty() => Ok(None),
        Some(N::S(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number")))
        }
    }
}

/// Booleans that older lsblk prints as `"0"`/`"1"`.
fn de_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
        Num(u8),
    }
    Ok(match Option::<Flag>::deserialize(d)? {
        None => false,
        Some(Flag::Bool(b)) => b,
        Some(Flag::Text(s)) => s == "1",
        Some(Flag::Num(n)) => n == 1,
    })
}

// ---------------------------------------------------------------------------------------
// sfdisk

/// `sfdisk --json` output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskTable {
    /// `gpt` or `dos`.
    pub label: String,
    /// Disk GUID or `0x` identifier.
    #[serde(default)]
    pub id: Option<String>,
    /// The disk.
    pub device: String,
    /// Always `sectors`.
    pub unit: String,
    /// Logical sector size (sfdisk 2.35 and later).
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub sectorsize: Option<u64>,
    /// Partitions.
    #[serde(default)]
    pub partitions: Vec<SfdiskPartition>,
}

/// One partition in `sfdisk --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskPartition {
    /// Device node (`/dev/sda1`).
    pub node: String,
    /// Start sector.
    #[serde(deserialize_with = "de_u64")]
    pub start: u64,
    /// Size in sectors.
    #[serde(deserialize_with = "de_u64")]
    pub size: u64,
    /// Type GUID or msdos hex code.
    #[serde(rename = "type")]
    pub part_type: String,
    /// PARTUUID (GPT).
    #[serde(default)]
    pub uuid: Option<String>,
    /// Name (GPT).
    #[serde(default)]
    pub name: Option<String>,
    /// Attribute bits (GPT).
    #[serde(default)]
    pub attrs: Option<String>,
    /// Active flag (msdos).
    #[serde(default)]
    pub bootable: bool,
}

#[derive(Deserialize)]
struct SfdiskOutput {
    partitiontable: SfdiskTable,
}

/// Parse `sfdisk --json DEV`.
pub fn parse_sfdisk(text: &str) -> Result<SfdiskTable, ProbeError> {
    let t = json::<SfdiskOutput>("sfdisk", text)?.partitiontable;
    if t.unit != "sectors" {
        return Err(ProbeError::Malformed { tool: "sfdisk", reason: format!("unit {:?}, expected sectors", t.unit) });
    }
    if !matches!(t.label.as_str(), "gpt" | "dos") {
        return Err(ProbeError::Unsupported {
            device: t.device.clone(),
            what: format!("a {} partition table", t.label),
        });
    }
    Ok(t)
}

/// The partition number in a device node: `/dev/sda12` → 12, `/dev/nvme0n1p2` → 2.
pub fn partition_number(node: &str) -> Option<u32> {
    let digits: String = node.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

fn flags_for(ptable: PtableType, part: &SfdiskPartition) -> Vec<PartFlag> {
    let t = part.part_type.to_ascii_uppercase();
    let mut f = Vec::new();
    let is = |guid: &str, codes: &[&str]| match ptable {
        PtableType::Gpt => t == guid,
        _ => codes.contains(&t.trim_start_matches("0X")),
    };
    if is(GPT_BIOS_BOOT, &[]) {
        f.push(PartFlag::BiosGrub);
    }
    if is(GPT_ESP, &["EF"]) {
        f.push(PartFlag::Esp);
    }
    if is(GPT_RAID, &["FD"]) {
        f.push(PartFlag::Raid);
    }
    if is(GPT_LVM, &["8E"]) {
        f.push(PartFlag::Lvm);
    }
    if is(GPT_SWAP, &["82"]) {
        f.push(PartFlag::Swap);
    }
    if ptable == PtableType::Msdos && matches!(t.trim_start_matches("0X"), "5" | "05" | "F" | "0F" | "85") {
        f.push(PartFlag::Extended);
    }
    if part.bootable {
        f.push(PartFlag::Boot);
    }
    f
}

// ---------------------------------------------------------------------------------------
// lsblk

/// One device in `lsblk --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockDevice {
    /// Name (`sda1`, `vg0-root`).
    pub name: String,
    /// Kernel name (`sda1`, `dm-0`).
    #[serde(default)]
    pub kname: Option<String>,
    /// Device node (`/dev/sda1`, `/dev/mapper/vg0-root`).
    pub path: String,
    /// `major:minor`.
    #[serde(rename = "maj:min", default)]
    pub maj_min: Option<String>,
    /// `disk`, `part`, `raid1`, `lvm`, `loop`, `rom`, ...
    #[serde(rename = "type")]
    pub dev_type: String,
    /// Size in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub size: u64,
    /// Logical sector size.
    #[serde(rename = "log-sec", default, deserialize_with = "de_opt_u64")]
    pub log_sec: Option<u64>,
    /// Removable.
    #[serde(default, deserialize_with = "de_bool")]
    pub rm: bool,
    /// Read-only.
    #[serde(default, deserialize_with = "de_bool")]
    pub ro: bool,
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// World-wide name.
    #[serde(default)]
    pub wwn: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Partition table type.
    #[serde(default)]
    pub pttype: Option<String>,
    /// Filesystem type (from udev: may be missing where udev does not run).
    #[serde(default)]
    pub fstype: Option<String>,
    /// Children (partitions, arrays and LVs built on this device).
    #[serde(default)]
    pub children: Vec<BlockDevice>,
}

#[derive(Deserialize)]
struct LsblkOutput {
    blockdevices: Vec<BlockDevice>,
}

/// Parse `lsblk --json` ([`LSBLK`]).
pub fn parse_lsblk(text: &str) -> Result<Vec<BlockDevice>, ProbeError> {
    Ok(json::<LsblkOutput>("lsblk", text)?.blockdevices)
}

impl BlockDevice {
    /// This device and every descendant.
    pub fn walk(&self) -> Vec<&BlockDevice> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// blkid

/// Parse `blkid --probe --output export` for one or more devices (blocks separated by blank
/// lines, each starting with `DEVNAME=`) into device → key → value.
pub fn parse_blkid(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, ProbeError> {
    let mut out = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut kv = BTreeMap::new();
        for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((k, v)) = line.split_once('=') else {
                return Err(ProbeError::Malformed { tool: "blkid", reason: format!("line {line:?} is not KEY=value") });
            };
            kv.insert(k.to_string(), v.to_string());
        }
        if kv.is_empty() {
            continue;
        }
        let Some(dev) = kv.get("DEVNAME").cloned() else {
            return Err(ProbeError::Malformed { tool: "blkid", reason: "a block has no DEVNAME".into() });
        };
        out.insert(dev, kv);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// mdadm

/// `mdadm --detail --export` of one array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdDetail {
    /// `MD_LEVEL` (`raid1`).
    pub level: String,
    /// `MD_DEVICES`: the number of raid devices.
    pub raid_devices: u32,
    /// `MD_METADATA` (`1.2`).
    pub metadata: String,
    /// `MD_UUID`, colon form.
    pub uuid: String,
    /// `MD_DEVNAME`: the name under /dev/md/.
    pub devname: Option<String>,
    /// `MD_NAME`: the superblock name.
    pub name: Option<String>,
    /// Active members `(role, device)`, in role order.
    pub members: Vec<(u32, String)>,
    /// Spare members.
    pub spares: Vec<String>,
}

/// Parse `mdadm --detail --export DEV`.
pub fn parse_mdadm(text: &str) -> Result<MdDetail, ProbeError> {
    let mut kv = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return Err(ProbeError::Malformed { tool: "mdadm", reason: format!("line {line:?} is not KEY=value") });
        };
        kv.insert(k.to_string(), v.to_string());
    }
    let need =
        |k: &str| kv.get(k).cloned().ok_or_else(|| ProbeError::Malformed { tool: "mdadm", reason: format!("no {k}") });
    let level = need("MD_LEVEL")?;
    let raid_devices = need("MD_DEVICES")?
        .parse()
        .map_err(|_| ProbeError::Malformed { tool: "mdadm", reason: "MD_DEVICES is not a number".into() })?;
    // Members: MD_DEVICE_<sysname>_ROLE and MD_DEVICE_<sysname>_DEV, keyed by sysname.
    let mut roles: BTreeMap<&str, &str> = BTreeMap::new();
    let mut devs: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &kv {
        if let Some(rest) = k.strip_prefix("MD_DEVICE_") {
            if let Some(sys) = rest.strip_suffix("_ROLE") {
                roles.insert(sys, v);
            } else if let Some(sys) = rest.strip_suffix("_DEV") {
                devs.insert(sys, v);
            }
        }
    }
    let mut members = Vec::new();
    let mut spares = Vec::new();
    for (sys, role) in &roles {
        let dev = devs.get(sys).ok_or_else(|| ProbeError::Malformed {
            tool: "mdadm",
            reason: format!("MD_DEVICE_{sys}_DEV is missing"),
        })?;
        match *role {
            "spare" => spares.push(dev.to_string()),
            r => {
                let n = r.parse().map_err(|_| ProbeError::Malformed {
                    tool: "mdadm",
                    reason: format!("MD_DEVICE_{sys}_ROLE={r} is neither a number nor spare"),
                })?;
                members.push((n, dev.to_string()));
            }
        }
    }
    members.sort();
    Ok(MdDetail {
        level,
        raid_devices,
        metadata: need("MD_METADATA")?,
        uuid: need("MD_UUID")?,
        devname: kv.get("MD_DEVNAME").cloned(),
        name: kv.get("MD_NAME").cloned(),
        members,
        spares,
    })
}

// ---------------------------------------------------------------------------------------
// LVM

/// A row of [`PVS`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PvRow {
    /// Device (`/dev/md0`).
    pub pv_name: String,
    /// PV UUID.
    pub pv_uuid: String,
    /// VG name (empty when the PV is in no VG).
    #[serde(default)]
    pub vg_name: String,
    /// Device size in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub dev_size: u64,
    /// Offset of the first extent in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub pe_start: u64,
}

/// A row of [`VGS`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VgRow {
    /// VG name.
    pub vg_name: String,
    /// VG UUID.
    pub vg_uuid: String,
    /// Extent size in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub vg_extent_size: u64,
    /// Size in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub vg_size: u64,
}

/// A row of [`LVS`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LvRow {
    /// LV name.
    pub lv_name: String,
    /// VG name.
    pub vg_name: String,
    /// LV UUID.
    pub lv_uuid: String,
    /// Size in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub lv_size: u64,
    /// Layout (`linear`, `thin,pool`, `thin,sparse`, `striped`, `raid,raid1`, ...).
    pub lv_layout: String,
    /// The thin pool of a thin LV.
    #[serde(default)]
    pub pool_lv: String,
    /// `/dev/mapper/VG-LV`.
    #[serde(default)]
    pub lv_dm_path: String,
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}
#[derive(Deserialize)]
struct PvReport {
    pv: Vec<PvRow>,
}
#[derive(Deserialize)]
struct VgReport {
    vg: Vec<VgRow>,
}
#[derive(Deserialize)]
struct LvReport {
    lv: Vec<LvRow>,
}

/// Parse [`PVS`] output.
pub fn parse_pvs(text: &str) -> Result<Vec<PvRow>, ProbeError> {
    Ok(json::<Report<PvReport>>("pvs", text)?.report.into_iter().flat_map(|r| r.pv).collect())
}

/// Parse [`VGS`] output.
pub fn parse_vgs(text: &str) -> Result<Vec<VgRow>, ProbeError> {
    Ok(json::<Report<VgReport>>("vgs", text)?.report.into_iter().flat_map(|r| r.vg).collect())
}

/// Parse [`LVS`] output.
pub fn parse_lvs(text: &str) -> Result<Vec<LvRow>, ProbeError> {
    Ok(json::<Report<LvReport>>("lvs", text)?.report.into_iter().flat_map(|r| r.lv).collect())
}

// ---------------------------------------------------------------------------------------
// findmnt

/// One mount in [`FINDMNT`] output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MountEntry {
    /// Mount point.
    pub target: String,
    /// Source (`/dev/sda1`, `/dev/sda1[/sub]` for a bind mount, `tmpfs`).
    pub source: String,
    /// Filesystem type.
    pub fstype: String,
    /// Options.
    pub options: String,
    /// `major:minor`.
    #[serde(rename = "maj:min", default)]
    pub maj_min: Option<String>,
    /// Root of the mount within the filesystem (`/` unless a bind mount).
    #[serde(default)]
    pub fsroot: Option<String>,
}

#[derive(Deserialize)]
struct FindmntOutput {
    filesystems: Vec<MountEntry>,
}

/// Parse [`FINDMNT`] output.
pub fn parse_findmnt(text: &str) -> Result<Vec<MountEntry>, ProbeError> {
    Ok(json::<FindmntOutput>("findmnt", text)?.filesystems)
}

/// Read-only image filesystems (snaps, ISO images, live media) that are mounted from loop
/// devices, not laid out on disks: not part of a layout.
pub const IMAGE_FSTYPES: &[&str] = &["squashfs", "iso9660", "udf", "erofs", "cramfs"];

/// The block-device mounts under `root`, as `(path inside the image, entry)`, shortest
/// path first; bind mounts, read-only images ([`IMAGE_FSTYPES`]) and second mounts of the
/// same device are left out.
pub fn mounts_under<'a>(mounts: &'a [MountEntry], root: &str) -> Vec<(String, &'a MountEntry)> {
    let root = if root.len() > 1 { root.trim_end_matches('/') } else { root };
    let mut out: Vec<(String, &MountEntry)> = mounts
        .iter()
        .filter(|m| m.source.starts_with("/dev/") && !m.source.contains('['))
        .filter(|m| !IMAGE_FSTYPES.contains(&m.fstype.as_str()))
        .filter(|m| m.fsroot.as_deref().is_none_or(|r| r == "/"))
        .filter_map(|m| {
            let rel = if root == "/" {
                m.target.clone()
            } else if m.target == root {
                "/".to_string()
            } else {
                m.target.strip_prefix(root)?.strip_prefix('/').map(|r| format!("/{r}"))?
            };
            Some((rel, m))
        })
        .collect();
    out.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.0.cmp(&b.0)));
    let mut seen = BTreeSet::new();
    out.retain(|(_, m)| seen.insert(m.source.clone()));
    out
}

// ---------------------------------------------------------------------------------------
// mkfs parameters

/// ext features that describe state, not a choice made at mkfs time.
const EXT_STATE_FEATURES: &[&str] = &["needs_recovery", "orphan_present", "mmp"];

/// Parse `dumpe2fs -h` (its `Key:  value` lines) into the parameters that matter.
pub fn parse_dumpe2fs(text: &str) -> Result<ExtParams, ProbeError> {
    let mut p = ExtParams::default();
    let mut found = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.trim() {
            "Filesystem features" => {
                found = true;
                p.features =
                    v.split_whitespace().filter(|f| !EXT_STATE_FEATURES.contains(f)).map(String::from).collect();
            }
            "Inode size" => p.inode_size = v.parse().ok(),
            "Block size" => p.block_size = v.parse().ok(),
            _ => {}
        }
    }
    if !found {
        return Err(ProbeError::Malformed { tool: "dumpe2fs", reason: "no \"Filesystem features\" line".into() });
    }
    Ok(p)
}

/// Parse `xfs_info` (sections of `key=value` tokens) into the parameters that matter.
pub fn parse_xfs_info(text: &str) -> Result<XfsParams, ProbeError> {
    let mut p = XfsParams::default();
    let mut section = "";
    let mut found = false;
    for line in text.lines() {
        let (head, rest) = match line.split_once('=') {
            Some((h, r)) => (h.trim(), r),
            None => continue,
        };
        if !head.is_empty() && !head.contains(' ') {
            section = if head == "meta-data" { "meta-data" } else { head };
        }
        // Tokens like "isize=512", "crc=1", "bsize=4096"; the section's own name sits
        // before the first '=' and is not a token.
        let tokens = rest.split([' ', ',']).filter(|t| t.contains('='));
        for t in tokens {
            let Some((k, v)) = t.split_once('=') else { continue };
            let v = v.trim();
            match (section, k.trim()) {
                ("meta-data", "isize") => {
                    found = true;
                    p.inode_size = v.parse().ok();
                }
                ("meta-data", k @ ("crc" | "finobt" | "sparse" | "rmapbt" | "reflink" | "bigtime" | "inobtcount")) => {
                    if let Ok(n) = v.parse() {
                        p.options.insert(k.to_string(), n);
                    }
                }
                ("data", "bsize") => p.block_size = v.parse().ok(),
                _ => {}
            }
        }
    }
    if !found {
        return Err(ProbeError::Malformed { tool: "xfs_info", reason: "no meta-data isize".into() });
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// boot

/// What the root holds that tells the bootloader apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootFacts {
    /// The firmware is UEFI (`/sys/firmware/efi` exists).
    pub efi_firmware: bool,
    /// A signed shim is installed (`shimx64.efi` under /boot/efi/EFI or /usr/lib/shim).
    pub shim: bool,
    /// GRUB's EFI platform files are installed (`/usr/lib/grub/x86_64-efi`).
    pub grub_efi: bool,
    /// GRUB's BIOS platform files are installed (`/usr/lib/grub/i386-pc`).
    pub grub_pc: bool,
}

/// Boot mode and bootloader from the facts: the firmware decides the mode; the image's
/// packages decide the loader (shim over plain GRUB on UEFI).
pub fn boot_from(f: BootFacts) -> (BootMode, Bootloader) {
    if f.efi_firmware {
        let loader = if f.shim {
            Bootloader::ShimGrub
        } else if f.grub_efi {
            Bootloader::GrubEfi
        } else {
            Bootloader::None
        };
        (BootMode::Uefi, loader)
    } else {
        (BootMode::Bios, if f.grub_pc { Bootloader::GrubPc } else { Bootloader::None })
    }
}

// ---------------------------------------------------------------------------------------
// assembly

/// Every tool output a capture needs, keyed by device path where per device.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The mounted root being captured (`/` or `/mnt/primary`).
    pub root: String,
    /// [`FINDMNT`].
    pub mounts: Vec<MountEntry>,
    /// [`LSBLK`].
    pub devices: Vec<BlockDevice>,
    /// [`SFDISK`] per disk path.
    pub tables: BTreeMap<String, SfdiskTable>,
    /// [`BLKID`] per device path.
    pub blkid: BTreeMap<String, BTreeMap<String, String>>,
    /// [`MDADM`] per array path.
    pub md: BTreeMap<String, MdDetail>,
    /// [`PVS`].
    pub pvs: Vec<PvRow>,
    /// [`VGS`].
    pub vgs: Vec<VgRow>,
    /// [`LVS`].
    pub lvs: Vec<LvRow>,
    /// [`DUMPE2FS`] per device path.
    pub ext: BTreeMap<String, ExtParams>,
    /// [`XFS_INFO`] per device path.
    pub xfs: BTreeMap<String, XfsParams>,
    /// Boot facts.
    pub boot: BootFacts,
}

/// The top-level devices (disks) that hold the filesystems mounted under the root, in
/// lsblk order: every disk whose tree holds a mounted device, closed over shared children
/// (both members of a RAID1, every PV of a VG that reaches a mounted LV).
pub fn holding_disks<'a>(devices: &'a [BlockDevice], mounted: &BTreeSet<String>) -> Vec<&'a BlockDevice> {
    let trees: Vec<(usize, BTreeSet<&str>)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (i, d.walk().iter().skip(1).map(|n| n.path.as_str()).collect()))
        .collect();
    let mut chosen: BTreeSet<usize> = devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.walk().iter().any(|n| mounted.contains(&n.path)))
        .map(|(i, _)| i)
        .collect();
    loop {
        let reach: BTreeSet<&str> = chosen.iter().flat_map(|i| trees[*i].1.iter().copied()).collect();
        let more: Vec<usize> = trees
            .iter()
            .filter(|(i, t)| !chosen.contains(i) && t.iter().any(|p| reach.contains(p)))
            .map(|(i, _)| *i)
            .collect();
        if more.is_empty() {
            break;
        }
        chosen.extend(more);
    }
    chosen.into_iter().map(|i| &devices[i]).collect()
}

/// The mounts keyed by the lsblk path of their device: a mount source may be an alias
/// (`/dev/md/NAME`, `/dev/disk/by-...`), so the device is found by `major:minor` first.
pub fn mounted_devices<'a>(
    mounted: &[(String, &'a MountEntry)],
    devices: &[BlockDevice],
) -> BTreeMap<String, (String, &'a MountEntry)> {
    let by_majmin: BTreeMap<&str, &str> = devices
        .iter()
        .flat_map(|d| d.walk())
        .filter_map(|n| n.maj_min.as_deref().map(|m| (m, n.path.as_str())))
        .collect();
    let mut out = BTreeMap::new();
    for (rel, m) in mounted {
        let path = m
            .maj_min
            .as_deref()
            .and_then(|mm| by_majmin.get(mm))
            .map(|s| s.to_string())
            .unwrap_or_else(|| m.source.clone());
        // The shortest path wins when one device shows under two names.
        out.entry(path).or_insert((rel.clone(), *m));
    }
    out
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn mount_id(path: &str) -> String {
    if path == "/" { "mnt-root".into() } else { format!("mnt{}", path.replace('/', "-")) }
}

/// Build the layout document from the tools' outputs.
pub fn assemble(p: &Probe) -> Result<Layout, ProbeError> {
    let mounted = mounts_under(&p.mounts, &p.root);
    if mounted.is_empty() {
        return Err(ProbeError::NothingMounted(p.root.clone()));
    }
    let sources = mounted_devices(&mounted, &p.devices);
    let wanted: BTreeSet<String> = sources.keys().cloned().collect();
    let disks = holding_disks(&p.devices, &wanted);
    for s in &wanted {
        if !disks.iter().any(|d| d.walk().iter().any(|n| &n.path == s)) {
            return Err(ProbeError::UnknownDevice { tool: "findmnt", device: s.clone() });
        }
    }
    let (boot_mode, bootloader) = boot_from(p.boot);
    let mut items = Vec::new();
    // Device path → item id of the volume it is.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();

    for d in &disks {
        let table = p.tables.get(&d.path);
        let ptable = match table.map(|t| t.label.as_str()) {
            Some("gpt") => PtableType::Gpt,
            Some(_) => PtableType::Msdos,
            None => PtableType::None,
        };
        let sector = table.and_then(|t| t.sectorsize).or(d.log_sec).unwrap_or(512);
        let id = base_name(&d.path).to_string();
        let mut parts = Vec::new();
        if let Some(t) = table {
            for sp in &t.partitions {
                let number = partition_number(&sp.node).ok_or_else(|| ProbeError::Malformed {
                    tool: "sfdisk",
                    reason: format!("partition node {:?} has no number", sp.node),
                })?;
                // lsblk names the partition node; fall back to sfdisk's (the same on a
                // real disk).
                let node = d
                    .children
                    .iter()
                    .find(|c| c.dev_type == "part" && partition_number(&c.path) == Some(number))
                    .map(|c| c.path.clone())
                    .unwrap_or_else(|| sp.node.clone());
                let pid = base_name(&node).to_string();
                let bytes = |sectors: u64| {
                    sectors.checked_mul(sector).ok_or_else(|| ProbeError::Malformed {
                        tool: "sfdisk",
                        reason: format!("{}: {sectors} sectors is out of range", sp.node),
                    })
                };
                ids.insert(node, pid.clone());
                let gpt = ptable == PtableType::Gpt;
                parts.push(Item::Partition(Partition {
                    id: pid,
                    device: id.clone(),
                    number,
                    start: Some(bytes(sp.start)?),
                    size: bytes(sp.size)?,
                    part_type: if gpt { sp.part_type.to_ascii_uppercase() } else { sp.part_type.to_ascii_lowercase() },
                    name: sp.name.clone().filter(|n| gpt && !n.is_empty()),
                    uuid: sp.uuid.clone().filter(|_| gpt).map(|u| u.to_ascii_uppercase()),
                    attrs: sp.attrs.clone().filter(|a| gpt && !a.is_empty()),
                    flags: flags_for(ptable, sp),
                    grow: false,
                }));
            }
        }
        let grub_device = bootloader == Bootloader::GrubPc
            && (ptable == PtableType::Msdos
                || parts.iter().any(|i| matches!(i, Item::Partition(x) if x.flags.contains(&PartFlag::BiosGrub))));
        ids.insert(d.path.clone(), id.clone());
        items.push(Item::Disk(Disk {
            id,
            hints: DiskMatch {
                serial: d.serial.clone().filter(|s| !s.is_empty()),
                wwn: d.wwn.clone().filter(|s| !s.is_empty()),
                model: d.model.clone().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
                path: Some(d.path.clone()),
            },
            size: d.size,
            sector_size: u32::try_from(sector).unwrap_or(512),
            ptable,
            ptable_id: table
                .and_then(|t| t.id.clone())
                .map(|i| if ptable == PtableType::Gpt { i.to_ascii_uppercase() } else { i.to_ascii_lowercase() }),
            grub_device,
        }));
        items.extend(parts);
    }

    // Every node on the chosen disks, once (a RAID1 array shows under each member).
    let mut nodes: Vec<&BlockDevice> = Vec::new();
    let mut seen = BTreeSet::new();
    for d in &disks {
        for n in d.walk() {
            if seen.insert(n.path.as_str()) {
                nodes.push(n);
            }
        }
    }

    // md arrays, members before the arrays built on them (lsblk's tree order).
    for n in nodes.iter().filter(|n| n.dev_type.starts_with("raid") || n.dev_type == "md") {
        let md = p.md.get(&n.path).ok_or_else(|| ProbeError::Malformed {
            tool: "mdadm",
            reason: format!("no --detail --export output for {}", n.path),
        })?;
        let level = match md.level.as_str() {
            "raid0" => RaidLevel::Raid0,
            "raid1" => RaidLevel::Raid1,
            "raid10" => RaidLevel::Raid10,
            other => return Err(ProbeError::Unsupported { device: n.path.clone(), what: format!("md level {other}") }),
        };
        if md.members.len() as u32 != md.raid_devices {
            return Err(ProbeError::Unsupported {
                device: n.path.clone(),
                what: format!("a degraded array ({} of {} devices)", md.members.len(), md.raid_devices),
            });
        }
        let member = |dev: &String| {
            ids.get(dev).cloned().ok_or_else(|| ProbeError::UnknownDevice { tool: "mdadm", device: dev.clone() })
        };
        let devices = md.members.iter().map(|(_, d)| member(d)).collect::<Result<Vec<_>, _>>()?;
        let spare_devices = md.spares.iter().map(member).collect::<Result<Vec<_>, _>>()?;
        let id = n.kname.clone().unwrap_or_else(|| base_name(&n.path).to_string());
        ids.insert(n.path.clone(), id.clone());
        items.push(Item::Raid(Raid {
            id,
            name: md.devname.clone().unwrap_or_else(|| base_name(&n.path).to_string()),
            md_name: md.name.clone(),
            level,
            devices,
            spare_devices,
            metadata: md.metadata.clone(),
            uuid: md.uuid.clone(),
            size: Some(n.size),
        }));
    }

    // LVM: the VGs whose PVs are on the chosen disks.
    let pvs: Vec<&PvRow> = p.pvs.iter().filter(|pv| ids.contains_key(&pv.pv_name)).collect();
    let vg_names: BTreeSet<&str> = pvs.iter().map(|pv| pv.vg_name.as_str()).filter(|v| !v.is_empty()).collect();
    for vg_name in vg_names {
        let vg = p.vgs.iter().find(|v| v.vg_name == vg_name).ok_or_else(|| ProbeError::Malformed {
            tool: "vgs",
            reason: format!("volume group {vg_name} (named by pvs) is not listed"),
        })?;
        let vid = format!("lvm-{vg_name}");
        let devices = pvs
            .iter()
            .filter(|pv| pv.vg_name == vg_name)
            .map(|pv| PhysicalVolume {
                device: ids[&pv.pv_name].clone(),
                uuid: pv.pv_uuid.clone(),
                pe_start: pv.pe_start,
            })
            .collect();
        // Every PV of the VG must be on the chosen disks, or the VG cannot be rebuilt.
        if let Some(pv) = p.pvs.iter().find(|pv| pv.vg_name == vg_name && !ids.contains_key(&pv.pv_name)) {
            return Err(ProbeError::UnknownDevice { tool: "pvs", device: pv.pv_name.clone() });
        }
        items.push(Item::LvmVolgroup(VolumeGroup {
            id: vid.clone(),
            name: vg_name.to_string(),
            uuid: vg.vg_uuid.clone(),
            devices,
            extent_size: vg.vg_extent_size,
        }));
        let lvs: Vec<&LvRow> = p.lvs.iter().filter(|l| l.vg_name == vg_name).collect();
        for l in &lvs {
            let lid = format!("lvm-{vg_name}-{}", l.lv_name);
            let (kind, pool) = match l.lv_layout.as_str() {
                "linear" => (LvKind::Linear, None),
                "thin,pool" | "pool,thin" => (LvKind::ThinPool, None),
                "thin,sparse" | "sparse,thin" => (LvKind::Thin, Some(format!("lvm-{vg_name}-{}", l.pool_lv))),
                other => {
                    return Err(ProbeError::Unsupported {
                        device: format!("{vg_name}/{}", l.lv_name),
                        what: format!("an LV with layout {other:?}"),
                    });
                }
            };
            if !l.lv_dm_path.is_empty() {
                ids.insert(l.lv_dm_path.clone(), lid.clone());
            }
            // lsblk names a device-mapper node /dev/mapper/VG-LV too (dashes doubled).
            let dm = format!("/dev/mapper/{}-{}", vg_name.replace('-', "--"), l.lv_name.replace('-', "--"));
            ids.insert(dm, lid.clone());
            items.push(Item::LvmPartition(LogicalVolume {
                id: lid,
                volgroup: vid.clone(),
                name: l.lv_name.clone(),
                uuid: l.lv_uuid.clone(),
                size: l.lv_size,
                kind,
                pool,
                grow: false,
            }));
        }
    }

    // Filesystems and swap on every node.
    let mut format_of: BTreeMap<String, String> = BTreeMap::new();
    for n in &nodes {
        let Some(b) = p.blkid.get(&n.path) else { continue };
        let Some(t) = b.get("TYPE") else { continue };
        if matches!(t.as_str(), "linux_raid_member" | "LVM2_member") {
            continue;
        }
        let fstype = FsType::from_name(t)
            .ok_or_else(|| ProbeError::Unsupported { device: n.path.clone(), what: format!("a {t} volume") })?;
        let Some(vol) = ids.get(&n.path) else {
            return Err(ProbeError::UnknownDevice { tool: "blkid", device: n.path.clone() });
        };
        let fid = format!("fs-{vol}");
        format_of.insert(n.path.clone(), fid.clone());
        let vfat = (fstype == FsType::Vfat).then(|| VfatParams {
            fat_size: b.get("VERSION").and_then(|v| v.strip_prefix("FAT")).and_then(|v| v.parse().ok()),
        });
        items.push(Item::Format(Format {
            id: fid,
            volume: vol.clone(),
            fstype,
            uuid: b.get("UUID").cloned(),
            label: b.get("LABEL").cloned(),
            ext: p.ext.get(&n.path).cloned().filter(|_| matches!(fstype, FsType::Ext4 | FsType::Ext3 | FsType::Ext2)),
            xfs: p.xfs.get(&n.path).cloned().filter(|_| fstype == FsType::Xfs),
            vfat,
        }));
    }

    for (path, (rel, m)) in &sources {
        let fid = format_of.get(path).ok_or_else(|| ProbeError::Malformed {
            tool: "blkid",
            reason: format!("{path} is mounted at {} as {} but blkid found no filesystem on it", m.target, m.fstype),
        })?;
        items.push(Item::Mount(Mount {
            id: mount_id(rel),
            device: fid.clone(),
            path: rel.clone(),
            options: m.options.clone(),
        }));
    }

    let layout = Layout { version: VERSION, boot_mode, bootloader, items };
    layout.validate()?;
    Ok(layout)
}

// ---------------------------------------------------------------------------------------
// I/O edge

fn run(argv: &[&str], extra: &[&str], ok_codes: &[i32]) -> Result<Option<String>, ProbeError> {
    let cmd = argv.iter().chain(extra).copied().collect::<Vec<_>>().join(" ");
    let (prog, args) = argv.split_first().ok_or_else(|| ProbeError::Run {
        cmd: cmd.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let out = std::process::Command::new(prog)
        .args(args)
        .args(extra)
        // The messages [`probe`] matches (sfdisk's "no partition table") are the C locale's.
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ProbeError::Run { cmd: cmd.clone(), source })?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(c) if ok_codes.contains(&c) => Ok(None),
        _ => Err(ProbeError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

fn must(argv: &[&str], extra: &[&str]) -> Result<String, ProbeError> {
    run(argv, extra, &[]).map(|o| o.unwrap_or_default())
}

/// Capture the layout of the disks holding the filesystems mounted under `root`: runs
/// findmnt and lsblk, then sfdisk for each disk with a partition table, blkid for every
/// device on those disks, mdadm for each array, the LVM reports when LVM is in use, and
/// dumpe2fs/xfs_info for the mkfs parameters; then [`assemble`].
pub fn probe(root: &Path) -> Result<Layout, ProbeError> {
    let root_s = root.to_string_lossy().into_owned();
    let mounts = parse_findmnt(&must(FINDMNT, &[])?)?;
    let devices = parse_lsblk(&must(LSBLK, &[])?)?;
    let mut p = Probe { root: root_s.clone(), mounts, devices, ..Probe::default() };
    let wanted: BTreeSet<String> = mounted_devices(&mounts_under(&p.mounts, &root_s), &p.devices).into_keys().collect();
    let disks: Vec<BlockDevice> = holding_disks(&p.devices, &wanted).into_iter().cloned().collect();
    let mut lvm = false;
    let mut seen = BTreeSet::new();
    for d in &disks {
        // A disk without a partition table is used whole; any other sfdisk failure is one.
        match run(SFDISK, &[&d.path], &[]) {
            Ok(text) => {
                p.tables.insert(d.path.clone(), parse_sfdisk(&text.unwrap_or_default())?);
            }
            Err(ProbeError::Failed { stderr, .. })
                if stderr.contains("does not contain a recognized partition table") => {}
            Err(e) => return Err(e),
        }
        for n in d.walk() {
            if !seen.insert(n.path.clone()) {
                continue;
            }
            if let Some(text) = run(BLKID, &[&n.path], &[2])? {
                p.blkid.extend(parse_blkid(&text)?);
            }
            if n.dev_type.starts_with("raid") || n.dev_type == "md" {
                p.md.insert(n.path.clone(), parse_mdadm(&must(MDADM, &[&n.path])?)?);
            }
            if n.dev_type == "lvm" {
                lvm = true;
            }
        }
    }
    lvm |= p.blkid.values().any(|b| b.get("TYPE").is_some_and(|t| t == "LVM2_member"));
    if lvm {
        // pvs may name a PV by a symlink (/dev/md/0); lsblk names kernel nodes
        // (/dev/md127). Resolve to the name lsblk uses where the link leads to one.
        let known: BTreeSet<String> = p.devices.iter().flat_map(|d| d.walk()).map(|n| n.path.clone()).collect();
        p.pvs = parse_pvs(&must(PVS, &[])?)?;
        for pv in &mut p.pvs {
            if !known.contains(&pv.pv_name)
                && let Ok(real) = std::fs::canonicalize(&pv.pv_name)
                && known.contains(real.to_string_lossy().as_ref())
            {
                pv.pv_name = real.to_string_lossy().into_owned();
            }
        }
        p.vgs = parse_vgs(&must(VGS, &[])?)?;
        p.lvs = parse_lvs(&must(LVS, &[])?)?;
    }
    let mountpoint: BTreeMap<String, String> =
        mounts_under(&p.mounts, &root_s).iter().map(|(_, m)| (m.source.clone(), m.target.clone())).collect();
    for (dev, b) in &p.blkid {
        match b.get("TYPE").map(String::as_str) {
            Some("ext4" | "ext3" | "ext2") => {
                p.ext.insert(dev.clone(), parse_dumpe2fs(&must(DUMPE2FS, &[dev])?)?);
            }
            Some("xfs") => {
                let at = mountpoint.get(dev).unwrap_or(dev);
                p.xfs.insert(dev.clone(), parse_xfs_info(&must(XFS_INFO, &[at])?)?);
            }
            _ => {}
        }
    }
    p.boot = BootFacts {
        efi_firmware: Path::new("/sys/firmware/efi").exists(),
        shim: ["boot/efi/EFI/debian/shimx64.efi", "usr/lib/shim/shimx64.efi.signed", "usr/lib/shim/shimx64.efi"]
            .iter()
            .any(|f| root.join(f).exists()),
        grub_efi: root.join("usr/lib/grub/x86_64-efi").is_dir(),
        grub_pc: root.join("usr/lib/grub/i386-pc").is_dir(),
    };
    assemble(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/layout/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn sfdisk_gpt_real() {
        let t = parse_sfdisk(&fixture("sfdisk-gpt.json")).unwrap();
        assert_eq!(t.label, "gpt");
        assert_eq!(t.id.as_deref(), Some("3E6B0B0E-1C51-4D0A-9F3C-5A2B7E0C9D11"));
        assert_eq!(t.sectorsize, Some(512));
        assert_eq!(t.partitions.len(), 5);
        let p = &t.partitions[1];
        assert_eq!((p.start, p.size), (4096, 131072));
        assert_eq!(p.part_type, GPT_ESP);
        assert_eq!(p.name.as_deref(), Some("esp"));
        assert_eq!(flags_for(PtableType::Gpt, &t.partitions[0]), [PartFlag::BiosGrub]);
        assert_eq!(flags_for(PtableType::Gpt, p), [PartFlag::Esp]);
        assert_eq!(flags_for(PtableType::Gpt, &t.partitions[4]), [PartFlag::Swap]);
        assert_eq!(t.partitions[4].attrs.as_deref(), Some("LegacyBIOSBootable"));
    }

    #[test]
    fn sfdisk_msdos_real() {
        let t = parse_sfdisk(&fixture("sfdisk-msdos.json")).unwrap();
        assert_eq!(t.label, "dos");
        assert_eq!(t.id.as_deref(), Some("0x5e1c0b2a"));
        let nums: Vec<u32> = t.partitions.iter().filter_map(|p| partition_number(&p.node)).collect();
        assert_eq!(nums, [1, 2, 3, 5]);
        assert_eq!(flags_for(PtableType::Msdos, &t.partitions[0]), [PartFlag::Boot]);
        assert_eq!(flags_for(PtableType::Msdos, &t.partitions[1]), [PartFlag::Swap]);
        assert_eq!(flags_for(PtableType::Msdos, &t.partitions[2]), [PartFlag::Extended]);
    }

    #[test]
    fn sfdisk_bad_output() {
        assert!(matches!(parse_sfdisk("{\"partitiontable\": {\"label\": \"gpt\""), Err(ProbeError::Json { .. })));
        let e = parse_sfdisk(r#"{"partitiontable":{"label":"gpt","device":"/dev/x","unit":"sectors","partitions":[{"node":"/dev/x1","start":1}]}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `size`"), "{e}");
        let e = parse_sfdisk(r#"{"partitiontable":{"label":"sun","device":"/dev/x","unit":"sectors"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "/dev/x: a sun partition table cannot be replayed");
        let e = parse_sfdisk(r#"{"partitiontable":{"label":"gpt","device":"/dev/x","unit":"cylinders"}}"#).unwrap_err();
        assert!(e.to_string().contains("cylinders"));
        assert!(parse_sfdisk("").is_err());
    }

    #[test]
    fn partition_numbers() {
        assert_eq!(partition_number("/dev/sda12"), Some(12));
        assert_eq!(partition_number("/dev/nvme0n1p2"), Some(2));
        assert_eq!(partition_number("/dev/sda"), None);
    }

    #[test]
    fn lsblk_real_and_bad() {
        let d = parse_lsblk(&fixture("lsblk-loops.json")).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[1].path, "/dev/loop1");
        assert_eq!(d[1].size, 268435456);
        assert_eq!(d[1].log_sec, Some(512));
        assert!(!d[1].ro && !d[1].rm);
        // Older lsblk prints numbers and booleans as strings.
        let old =
            r#"{"blockdevices":[{"name":"sda","path":"/dev/sda","type":"disk","size":"1024","rm":"0","ro":"1"}]}"#;
        let d = parse_lsblk(old).unwrap();
        assert_eq!((d[0].size, d[0].rm, d[0].ro), (1024, false, true));
        let bad = r#"{"blockdevices":[{"name":"sda","path":"/dev/sda","type":"disk","size":"big"}]}"#;
        assert!(parse_lsblk(bad).unwrap_err().to_string().contains("\"big\" is not a number"));
        assert!(parse_lsblk(r#"{"blockdevices":[{"name":"sda"#).is_err());
        assert!(parse_lsblk(r#"{"devices":[]}"#).unwrap_err().to_string().contains("blockdevices"));
    }

    #[test]
    fn blkid_real_and_bad() {
        let b = parse_blkid(&fixture("blkid-loops.txt")).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b["/dev/loop0"]["TYPE"], "vfat");
        assert_eq!(b["/dev/loop0"]["UUID"], "1A2B-3C4D");
        assert_eq!(b["/dev/loop0"]["VERSION"], "FAT32");
        assert_eq!(b["/dev/loop1"]["UUID"], "6f1c8c47-2b8e-4d4a-9a51-2f0e7d6c5b01");
        assert_eq!(b["/dev/loop2"]["LABEL"], "var");
        assert_eq!(b["/dev/loop3"]["TYPE"], "swap");
        assert!(parse_blkid("TYPE=ext4\n").unwrap_err().to_string().contains("no DEVNAME"));
        assert!(parse_blkid("DEVNAME=/dev/x\ngarbage\n").unwrap_err().to_string().contains("garbage"));
        assert!(parse_blkid("").unwrap().is_empty());
    }

    #[test]
    fn findmnt_real_and_mounts_under() {
        let m = parse_findmnt(&fixture("findmnt-loops.json")).unwrap();
        let under = mounts_under(&m, "/mnt/capture/mnt/");
        let got: Vec<(&str, &str)> = under.iter().map(|(r, e)| (r.as_str(), e.source.as_str())).collect();
        assert_eq!(got, [("/", "/dev/loop1"), ("/var", "/dev/loop2")]);
        assert_eq!(under[1].1.options, "rw,noatime,inode64,logbufs=8,logbsize=32k,noquota");
        // Bind mounts, pseudo filesystems, paths outside the root and a second mount of a
        // device are left out.
        let extra = r#"{"filesystems":[
            {"target":"/","source":"/dev/sda2","fstype":"ext4","options":"rw","fsroot":"/"},
            {"target":"/proc","source":"proc","fstype":"proc","options":"rw"},
            {"target":"/srv","source":"/dev/sda2[/srv]","fstype":"ext4","options":"rw","fsroot":"/srv"},
            {"target":"/mnt/again","source":"/dev/sda2","fstype":"ext4","options":"rw","fsroot":"/"},
            {"target":"/snap/core/1","source":"/dev/loop3","fstype":"squashfs","options":"ro","fsroot":"/"},
            {"target":"/rootfoo","source":"/dev/sdb1","fstype":"ext4","options":"rw","fsroot":"/"}]}"#;
        let m = parse_findmnt(extra).unwrap();
        let got: Vec<String> = mounts_under(&m, "/").iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(got, ["/", "/rootfoo"]);
        assert!(mounts_under(&m, "/root").is_empty());
        assert!(parse_findmnt(r#"{"filesystems":[{"target":"/"}]}"#).unwrap_err().to_string().contains("source"));
    }

    #[test]
    fn dumpe2fs_real() {
        let p = parse_dumpe2fs(&fixture("dumpe2fs-root.txt")).unwrap();
        assert_eq!(p.inode_size, Some(256));
        assert_eq!(p.block_size, Some(1024));
        assert!(p.features.contains(&"metadata_csum".to_string()));
        assert!(p.features.contains(&"has_journal".to_string()));
        assert!(!p.features.contains(&"needs_recovery".to_string()), "state flags are not mkfs features");
        assert!(parse_dumpe2fs("dumpe2fs 1.47.0\nBad magic number\n").is_err());
    }

    #[test]
    fn xfs_info_real() {
        let p = parse_xfs_info(&fixture("xfs_info-var.txt")).unwrap();
        assert_eq!(p.inode_size, Some(512));
        assert_eq!(p.block_size, Some(4096));
        assert_eq!(p.options.get("crc"), Some(&1));
        assert_eq!(p.options.get("reflink"), Some(&1));
        assert_eq!(p.options.get("rmapbt"), Some(&0));
        assert_eq!(p.options.get("sparse"), Some(&1));
        assert_eq!(p.options.get("bigtime"), Some(&1));
        assert!(!p.options.contains_key("sectsz"));
        assert!(parse_xfs_info("not xfs\n").is_err());
    }

    #[test]
    fn mdadm_reconstructed() {
        let m = parse_mdadm(&fixture("mdadm-md0.txt")).unwrap();
        assert_eq!(m.level, "raid1");
        assert_eq!(m.raid_devices, 2);
        assert_eq!(m.metadata, "1.2");
        assert_eq!(m.uuid, "3b4d0b4a:1c2b8d9e:5f6a7b8c:9d0e1f2a");
        assert_eq!(m.devname.as_deref(), Some("0"));
        assert_eq!(m.name.as_deref(), Some("head-a:0"));
        assert_eq!(m.members, [(0, "/dev/vda2".to_string()), (1, "/dev/vdb2".to_string())]);
        assert!(parse_mdadm("MD_LEVEL=raid1\n").unwrap_err().to_string().contains("MD_DEVICES"));
        let bad = "MD_LEVEL=raid1\nMD_DEVICES=2\nMD_METADATA=1.2\nMD_UUID=a\nMD_DEVICE_dev_vda2_ROLE=x\nMD_DEVICE_dev_vda2_DEV=/dev/vda2\n";
        assert!(parse_mdadm(bad).unwrap_err().to_string().contains("neither a number nor spare"));
        let nodev = "MD_LEVEL=raid1\nMD_DEVICES=2\nMD_METADATA=1.2\nMD_UUID=a\nMD_DEVICE_dev_vda2_ROLE=0\n";
        assert!(parse_mdadm(nodev).unwrap_err().to_string().contains("_DEV is missing"));
    }

    #[test]
    fn lvm_reconstructed() {
        let pvs = parse_pvs(&fixture("pvs.json")).unwrap();
        assert_eq!(pvs.len(), 1);
        assert_eq!(pvs[0].pv_name, "/dev/md0");
        assert_eq!(pvs[0].pe_start, 1048576);
        let vgs = parse_vgs(&fixture("vgs.json")).unwrap();
        assert_eq!(vgs[0].vg_extent_size, 4194304);
        let lvs = parse_lvs(&fixture("lvs.json")).unwrap();
        let names: Vec<&str> = lvs.iter().map(|l| l.lv_name.as_str()).collect();
        assert_eq!(names, ["root", "swap", "var"]);
        assert!(parse_lvs(r#"{"report":[{"lv":[{"lv_name":"x"}]}]}"#).unwrap_err().to_string().contains("vg_name"));
        assert!(
            parse_vgs(r#"{"report":[{"vg":[{"vg_name":"v","vg_uuid":"u","vg_extent_size":"4m","vg_size":"1"}]}]}"#)
                .unwrap_err()
                .to_string()
                .contains("\"4m\" is not a number")
        );
    }

    fn raid_lvm_probe() -> Probe {
        let mut p = Probe {
            root: "/".into(),
            mounts: parse_findmnt(&fixture("findmnt-raid-lvm.json")).unwrap(),
            devices: parse_lsblk(&fixture("lsblk-raid-lvm.json")).unwrap(),
            blkid: parse_blkid(&fixture("blkid-raid-lvm.txt")).unwrap(),
            pvs: parse_pvs(&fixture("pvs.json")).unwrap(),
            vgs: parse_vgs(&fixture("vgs.json")).unwrap(),
            lvs: parse_lvs(&fixture("lvs.json")).unwrap(),
            boot: BootFacts { grub_pc: true, ..BootFacts::default() },
            ..Probe::default()
        };
        p.tables.insert("/dev/vda".into(), parse_sfdisk(&fixture("sfdisk-raid-vda.json")).unwrap());
        p.tables.insert("/dev/vdb".into(), parse_sfdisk(&fixture("sfdisk-raid-vdb.json")).unwrap());
        p.md.insert("/dev/md0".into(), parse_mdadm(&fixture("mdadm-md0.txt")).unwrap());
        p.ext.insert("/dev/mapper/vg0-root".into(), parse_dumpe2fs(&fixture("dumpe2fs-root.txt")).unwrap());
        p.xfs.insert("/dev/mapper/vg0-var".into(), parse_xfs_info(&fixture("xfs_info-var.txt")).unwrap());
        p
    }

    #[test]
    fn assembles_raid1_lvm() {
        let l = assemble(&raid_lvm_probe()).unwrap();
        assert_eq!((l.boot_mode, l.bootloader), (BootMode::Bios, Bootloader::GrubPc));
        let disks: Vec<&Disk> = l.disks().collect();
        assert_eq!(disks.len(), 2, "both RAID1 members' disks are captured");
        assert!(disks.iter().all(|d| d.grub_device && d.ptable == PtableType::Gpt));
        assert_eq!(disks[0].hints.serial.as_deref(), Some("QM00001"));
        let md: Vec<&Raid> = l.raids().collect();
        assert_eq!(md.len(), 1);
        assert_eq!(md[0].devices, ["vda2", "vdb2"]);
        assert_eq!(md[0].level, RaidLevel::Raid1);
        assert_eq!(md[0].uuid, "3b4d0b4a:1c2b8d9e:5f6a7b8c:9d0e1f2a");
        let vg: Vec<&VolumeGroup> = l.volgroups().collect();
        assert_eq!(vg[0].name, "vg0");
        assert_eq!(vg[0].devices[0].device, "md0");
        assert_eq!(vg[0].devices[0].uuid, "pV7Rk2-Yc3D-8fQe-Lm1N-4sTb-Hx9W-zJ0aUg");
        let lvs = l.lvs_of("lvm-vg0");
        assert_eq!(lvs.len(), 3);
        let fs: BTreeMap<&str, (&str, FsType, Option<&str>)> =
            l.formats().map(|f| (f.volume.as_str(), (f.id.as_str(), f.fstype, f.label.as_deref()))).collect();
        assert_eq!(fs["lvm-vg0-root"].1, FsType::Ext4);
        assert_eq!(fs["lvm-vg0-var"], ("fs-lvm-vg0-var", FsType::Xfs, Some("var")));
        assert_eq!(fs["lvm-vg0-swap"].1, FsType::Swap);
        let root = l.formats().find(|f| f.volume == "lvm-vg0-root").unwrap();
        assert_eq!(root.ext.as_ref().unwrap().inode_size, Some(256));
        let mounts: Vec<(&str, &str)> = l.mounts().iter().map(|m| (m.path.as_str(), m.device.as_str())).collect();
        assert_eq!(mounts, [("/", "fs-lvm-vg0-root"), ("/var", "fs-lvm-vg0-var")]);
        // The document round-trips through its own JSON.
        assert_eq!(Layout::from_json(&l.to_json()).unwrap(), l);
    }

    #[test]
    fn assembly_refuses_what_it_cannot_replay() {
        let mut p = raid_lvm_probe();
        p.lvs[2].lv_layout = "striped".into();
        let e = assemble(&p).unwrap_err().to_string();
        assert_eq!(e, "vg0/var: an LV with layout \"striped\" cannot be replayed");
        let mut p = raid_lvm_probe();
        if let Some(m) = p.md.get_mut("/dev/md0") {
            m.level = "raid5".into();
        }
        assert_eq!(assemble(&p).unwrap_err().to_string(), "/dev/md0: md level raid5 cannot be replayed");
        let mut p = raid_lvm_probe();
        p.md.clear();
        assert!(assemble(&p).unwrap_err().to_string().contains("no --detail --export output for /dev/md0"));
        let mut p = raid_lvm_probe();
        if let Some(b) = p.blkid.get_mut("/dev/mapper/vg0-var") {
            b.insert("TYPE".into(), "crypto_LUKS".into());
        }
        assert_eq!(
            assemble(&p).unwrap_err().to_string(),
            "/dev/mapper/vg0-var: a crypto_LUKS volume cannot be replayed"
        );
        let mut p = raid_lvm_probe();
        p.root = "/nowhere".into();
        assert!(matches!(assemble(&p), Err(ProbeError::NothingMounted(_))));
        let mut p = raid_lvm_probe();
        p.vgs.clear();
        assert!(assemble(&p).unwrap_err().to_string().contains("vg0 (named by pvs) is not listed"));
    }

    #[test]
    fn assembles_loops_without_partition_tables() {
        let p = Probe {
            root: "/mnt/capture/mnt".into(),
            mounts: parse_findmnt(&fixture("findmnt-loops.json")).unwrap(),
            devices: parse_lsblk(&fixture("lsblk-loops.json")).unwrap(),
            blkid: parse_blkid(&fixture("blkid-loops.txt")).unwrap(),
            ..Probe::default()
        };
        let l = assemble(&p).unwrap();
        // Only the loops holding mounted filesystems: loop1 (/) and loop2 (/var).
        let disks: Vec<(&str, PtableType)> = l.disks().map(|d| (d.id.as_str(), d.ptable)).collect();
        assert_eq!(disks, [("loop1", PtableType::None), ("loop2", PtableType::None)]);
        let fs: Vec<(&str, FsType, Option<&str>)> =
            l.formats().map(|f| (f.volume.as_str(), f.fstype, f.uuid.as_deref())).collect();
        assert_eq!(
            fs,
            [
                ("loop1", FsType::Ext4, Some("6f1c8c47-2b8e-4d4a-9a51-2f0e7d6c5b01")),
                ("loop2", FsType::Xfs, Some("8d2e6b10-4c3a-4f5e-9b7d-1a2c3e4f5a02"))
            ]
        );
        assert_eq!(l.bootloader, Bootloader::None);
    }

    #[test]
    fn truncated_outputs_are_errors_not_panics() {
        type Parses = fn(&str) -> bool;
        let cases: &[(&str, Parses)] = &[
            ("sfdisk-gpt.json", |t| parse_sfdisk(t).is_ok()),
            ("sfdisk-msdos.json", |t| parse_sfdisk(t).is_ok()),
            ("lsblk-loops.json", |t| parse_lsblk(t).is_ok()),
            ("lsblk-raid-lvm.json", |t| parse_lsblk(t).is_ok()),
            ("findmnt-raid-lvm.json", |t| parse_findmnt(t).is_ok()),
            ("pvs.json", |t| parse_pvs(t).is_ok()),
            ("vgs.json", |t| parse_vgs(t).is_ok()),
            ("lvs.json", |t| parse_lvs(t).is_ok()),
            ("blkid-raid-lvm.txt", |t| parse_blkid(t).is_ok()),
            ("mdadm-md0.txt", |t| parse_mdadm(t).is_ok()),
            ("dumpe2fs-root.txt", |t| parse_dumpe2fs(t).is_ok()),
            ("xfs_info-var.txt", |t| parse_xfs_info(t).is_ok()),
        ];
        for (name, parse) in cases {
            let text = fixture(name);
            assert!(parse(&text), "{name} parses whole");
            let mut cut = 0;
            for n in (0..text.len()).filter(|n| text.is_char_boundary(*n)) {
                if !parse(&text[..n]) {
                    cut += 1;
                }
            }
            // JSON cut anywhere is an error; line formats may still parse a prefix, but
            // the empty prefix and most cuts are refused.
            assert!(cut > 0, "{name}: some truncation must be refused");
        }
        // Unknown types in otherwise good output.
        let e = parse_sfdisk(
            r#"{"partitiontable":{"label":"gpt","device":"/dev/x","unit":"sectors","partitions":[{"node":"/dev/x1","start":"a","size":1,"type":"t"}]}}"#,
        );
        assert!(e.unwrap_err().to_string().contains("\"a\" is not a number"));
    }

    #[test]
    fn assembles_msdos_with_a_logical_partition() {
        let part = |n: u32, mm: u32, size: u64| {
            format!(
                r#"{{"name":"sda{n}","kname":"sda{n}","path":"/dev/sda{n}","maj:min":"8:{mm}","type":"part","size":{size}}}"#
            )
        };
        let lsblk = format!(
            r#"{{"blockdevices":[{{"name":"sda","kname":"sda","path":"/dev/sda","maj:min":"8:0","type":"disk","size":536870912,"log-sec":512,"serial":"WD-1","model":"WDC  ","children":[{},{},{},{}]}}]}}"#,
            part(1, 1, 314572800),
            part(2, 2, 67108864),
            part(3, 3, 1024),
            part(5, 5, 153092096)
        );
        let mounts = r#"{"filesystems":[
            {"target":"/","source":"/dev/sda1","fstype":"ext4","options":"rw,relatime","maj:min":"8:1","fsroot":"/"},
            {"target":"/home","source":"/dev/sda5","fstype":"ext4","options":"rw,nodev","maj:min":"8:5","fsroot":"/"}]}"#;
        let blkid = "DEVNAME=/dev/sda1\nUUID=11111111-2222-4333-8444-555555555555\nTYPE=ext4\n\n\
                     DEVNAME=/dev/sda2\nUUID=66666666-2222-4333-8444-555555555555\nTYPE=swap\n\n\
                     DEVNAME=/dev/sda5\nUUID=77777777-2222-4333-8444-555555555555\nLABEL=home\nTYPE=ext4\n";
        let mut p = Probe {
            root: "/".into(),
            mounts: parse_findmnt(mounts).unwrap(),
            devices: parse_lsblk(&lsblk).unwrap(),
            blkid: parse_blkid(blkid).unwrap(),
            boot: BootFacts { grub_pc: true, ..BootFacts::default() },
            ..Probe::default()
        };
        p.tables.insert("/dev/sda".into(), parse_sfdisk(&fixture("sfdisk-msdos.json")).unwrap());
        let l = assemble(&p).unwrap();
        let d = l.disks().next().unwrap();
        assert_eq!((d.ptable, d.ptable_id.as_deref(), d.grub_device), (PtableType::Msdos, Some("0x5e1c0b2a"), true));
        assert_eq!(d.hints.model.as_deref(), Some("WDC"));
        let parts: Vec<(u32, &str, Vec<PartFlag>)> =
            l.partitions_of("sda").iter().map(|p| (p.number, p.part_type.as_str(), p.flags.clone())).collect();
        assert_eq!(
            parts,
            [
                (1, "83", vec![PartFlag::Boot]),
                (2, "82", vec![PartFlag::Swap]),
                (3, "5", vec![PartFlag::Extended]),
                (5, "83", vec![])
            ]
        );
        let swap = l.formats().find(|f| f.fstype == FsType::Swap).unwrap();
        assert_eq!(swap.volume, "sda2");
        let mounts: Vec<(&str, &str)> = l.mounts().iter().map(|m| (m.path.as_str(), m.device.as_str())).collect();
        assert_eq!(mounts, [("/", "fs-sda1"), ("/home", "fs-sda5")]);
    }

    #[test]
    fn boot_facts() {
        let f = BootFacts::default();
        assert_eq!(boot_from(BootFacts { grub_pc: true, ..f }), (BootMode::Bios, Bootloader::GrubPc));
        assert_eq!(
            boot_from(BootFacts { efi_firmware: true, grub_efi: true, grub_pc: true, ..f }),
            (BootMode::Uefi, Bootloader::GrubEfi)
        );
        assert_eq!(
            boot_from(BootFacts { efi_firmware: true, grub_efi: true, shim: true, ..f }),
            (BootMode::Uefi, Bootloader::ShimGrub)
        );
        assert_eq!(boot_from(f), (BootMode::Bios, Bootloader::None));
    }
}
