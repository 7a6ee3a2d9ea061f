//! The layout document: typed items with ids that refer to each other, its validation and
//! the default layout. The format is described in the module doc of [`crate::layout`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The document version this code reads and writes.
pub const VERSION: u32 = 1;

/// One MiB, the alignment partitions and LVM metadata use.
pub const MIB: u64 = 1 << 20;

/// The largest size or offset a document may give (1 PiB): far beyond a head node's
/// disks, and small enough that no sum over a document's items can overflow.
pub const MAX_BYTES: u64 = 1 << 50;

/// The most items a document may hold.
pub const MAX_ITEMS: usize = 4096;

/// GPT partition type: BIOS boot (GRUB's core image on a GPT disk).
pub const GPT_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// GPT partition type: EFI system partition.
pub const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT partition type: Linux filesystem.
pub const GPT_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// GPT partition type: Linux swap.
pub const GPT_SWAP: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";
/// GPT partition type: Linux RAID.
pub const GPT_RAID: &str = "A19D880F-05FC-4D3B-A006-743F0F84911E";
/// GPT partition type: Linux LVM.
pub const GPT_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// A whole layout: what the disks held, how the machine booted, and how to boot it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Document version, [`VERSION`].
    pub version: u32,
    /// Firmware boot mode.
    pub boot_mode: BootMode,
    /// The bootloader to install.
    pub bootloader: Bootloader,
    /// Disks, partitions, RAID, LVM, filesystems and mounts, in any order.
    pub items: Vec<Item>,
}

/// Firmware boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Legacy BIOS (or UEFI CSM).
    Bios,
    /// UEFI.
    Uefi,
}

/// The bootloader the image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// GRUB for BIOS, installed on every disk marked `grub_device`.
    GrubPc,
    /// GRUB for UEFI on the ESP.
    GrubEfi,
    /// Signed shim chaining to signed GRUB on the ESP (Secure Boot).
    ShimGrub,
    /// No bootloader is installed (the disks are data disks, or the admin handles it).
    None,
}

/// One item of the layout, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// A whole disk.
    Disk(Disk),
    /// A partition of a disk.
    Partition(Partition),
    /// An md RAID array.
    Raid(Raid),
    /// An LVM volume group.
    LvmVolgroup(VolumeGroup),
    /// An LVM logical volume.
    LvmPartition(LogicalVolume),
    /// A filesystem or swap area on a volume.
    Format(Format),
    /// Where a filesystem is mounted.
    Mount(Mount),
}

/// A whole disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Unique id other items refer to.
    pub id: String,
    /// What identified the disk on the recorded machine (the standby's names may differ).
    #[serde(default, rename = "match", skip_serializing_if = "DiskMatch::is_empty")]
    pub hints: DiskMatch,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    #[serde(default = "default_sector")]
    pub sector_size: u32,
    /// Partition table type.
    pub ptable: PtableType,
    /// GPT disk GUID or msdos disk identifier (`0x5e1c0b2a`), kept on replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptable_id: Option<String>,
    /// The BIOS bootloader is installed on this disk (every RAID1 member, typically).
    #[serde(default, skip_serializing_if = "is_false")]
    pub grub_device: bool,
}

fn default_sector() -> u32 {
    512
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Hints that identified a disk when it was recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMatch {
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// World-wide name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Model string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Device path on the recorded machine (`/dev/sda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl DiskMatch {
    /// No hint at all.
    pub fn is_empty(&self) -> bool {
        self.serial.is_none() && self.wwn.is_none() && self.model.is_none() && self.path.is_none()
    }
}

/// Partition table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PtableType {
    /// GUID partition table.
    Gpt,
    /// MBR / DOS partition table.
    Msdos,
    /// No partition table: the disk is used whole (a RAID member, a PV, a filesystem).
    None,
}

/// A partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Unique id.
    pub id: String,
    /// The disk's id.
    pub device: String,
    /// Partition number (1-based; msdos logical partitions are 5 and up).
    pub number: u32,
    /// Start offset in bytes; absent: right after the previous partition, 1 MiB aligned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Size in bytes.
    pub size: u64,
    /// GPT type GUID or msdos type code in hex (`83`, `82`, `fd`, `8e`, `ef`, `5`).
    pub part_type: String,
    /// GPT partition name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GPT partition GUID (PARTUUID), kept on replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// GPT attribute bits as sfdisk names them (`LegacyBIOSBootable`, `GUID:63`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<String>,
    /// What the partition is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<PartFlag>,
    /// On a larger disk this partition takes the extra space (at most one per disk; if
    /// none is marked, the last partition grows).
    #[serde(default, skip_serializing_if = "is_false")]
    pub grow: bool,
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartFlag {
    /// GRUB's BIOS boot partition.
    BiosGrub,
    /// EFI system partition.
    Esp,
    /// md RAID member.
    Raid,
    /// LVM physical volume.
    Lvm,
    /// msdos active (bootable) flag.
    Boot,
    /// Swap.
    Swap,
    /// msdos extended partition (holds the logical ones).
    Extended,
}

impl PartFlag {
    /// The name the document uses.
    pub fn name(self) -> &'static str {
        match self {
            PartFlag::BiosGrub => "bios_grub",
            PartFlag::Esp => "esp",
            PartFlag::Raid => "raid",
            PartFlag::Lvm => "lvm",
            PartFlag::Boot => "boot",
            PartFlag::Swap => "swap",
            PartFlag::Extended => "extended",
        }
    }
}

/// md RAID level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum RaidLevel {
    /// Striping.
    Raid0,
    /// Mirroring.
    Raid1,
    /// Striped mirrors (near-2 layout).
    Raid10,
}

impl TryFrom<u8> for RaidLevel {
    type Error = crate::config::ValueError;
    fn try_from(v: u8) -> Result<Self, crate::config::ValueError> {
        match v {
            0 => Ok(RaidLevel::Raid0),
            1 => Ok(RaidLevel::Raid1),
            10 => Ok(RaidLevel::Raid10),
            n => Err(format!("RAID level {n} is not replayed (0, 1 and 10 are)").into()),
        }
    }
}

impl From<RaidLevel> for u8 {
    fn from(l: RaidLevel) -> u8 {
        match l {
            RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => 1,
            RaidLevel::Raid10 => 10,
        }
    }
}

/// An md RAID array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raid {
    /// Unique id.
    pub id: String,
    /// Device name under /dev/md/ (`0`, `root`), as `MD_DEVNAME` reports it.
    pub name: String,
    /// Array name stored in the superblock (`MD_NAME`, `host:0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md_name: Option<String>,
    /// RAID level: 0, 1 or 10.
    pub level: RaidLevel,
    /// Member volume ids (partitions or disks), in role order.
    pub devices: Vec<String>,
    /// Spare member ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spare_devices: Vec<String>,
    /// Superblock version (`1.2`, `1.0`, `0.90`).
    pub metadata: String,
    /// Array UUID in mdadm's form (`xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`), kept on replay.
    pub uuid: String,
    /// Array size in bytes when recorded (the planner keeps the recorded superblock
    /// overhead when members change size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// An LVM volume group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeGroup {
    /// Unique id.
    pub id: String,
    /// VG name.
    pub name: String,
    /// VG UUID, kept on replay (see the module doc: restored with vgcfgrestore).
    pub uuid: String,
    /// Physical volumes.
    pub devices: Vec<PhysicalVolume>,
    /// Extent size in bytes.
    pub extent_size: u64,
}

/// A physical volume of a VG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicalVolume {
    /// The volume id (partition, disk or RAID) holding the PV.
    pub device: String,
    /// PV UUID, kept on replay.
    pub uuid: String,
    /// Offset of the first extent in bytes (LVM's default is 1 MiB).
    #[serde(default = "default_pe_start")]
    pub pe_start: u64,
}

fn default_pe_start() -> u64 {
    MIB
}

/// LV kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LvKind {
    /// Plain linear (possibly multi-segment) volume: replayed.
    Linear,
    /// Thin pool: recorded, refused by the planner.
    ThinPool,
    /// Thin volume in the LV `pool` names: recorded, refused by the planner.
    Thin,
}

impl LvKind {
    /// The name the document uses.
    pub fn name(self) -> &'static str {
        match self {
            LvKind::Linear => "linear",
            LvKind::ThinPool => "thin_pool",
            LvKind::Thin => "thin",
        }
    }
}

/// An LVM logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalVolume {
    /// Unique id.
    pub id: String,
    /// The VG's id.
    pub volgroup: String,
    /// LV name.
    pub name: String,
    /// LV UUID, kept on replay.
    pub uuid: String,
    /// Size in bytes (a multiple of the VG's extent size).
    pub size: u64,
    /// What kind of LV it is.
    pub kind: LvKind,
    /// The thin pool's id (thin LVs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// On a larger VG this LV takes the extra extents (at most one per VG; if none is
    /// marked, the last linear LV grows).
    #[serde(default, skip_serializing_if = "is_false")]
    pub grow: bool,
}

/// Filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4.
    Ext4,
    /// ext3.
    Ext3,
    /// ext2.
    Ext2,
    /// XFS.
    Xfs,
    /// FAT (an ESP).
    Vfat,
    /// Btrfs.
    Btrfs,
    /// Swap area.
    Swap,
}

impl FsType {
    /// The name blkid and mount use.
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Ext2 => "ext2",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Btrfs => "btrfs",
            FsType::Swap => "swap",
        }
    }

    /// From blkid's TYPE.
    pub fn from_name(s: &str) -> Option<FsType> {
        Some(match s {
            "ext4" => FsType::Ext4,
            "ext3" => FsType::Ext3,
            "ext2" => FsType::Ext2,
            "xfs" => FsType::Xfs,
            "vfat" => FsType::Vfat,
            "btrfs" => FsType::Btrfs,
            "swap" => FsType::Swap,
            _ => return None,
        })
    }
}

/// A filesystem (or swap area) on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    /// Unique id.
    pub id: String,
    /// The volume id: a partition, disk, RAID array or LV.
    pub volume: String,
    /// Filesystem type.
    pub fstype: FsType,
    /// Filesystem UUID (vfat: the volume id, `1A2B-3C4D`), kept on replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// ext2/3/4 parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<ExtParams>,
    /// XFS parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfs: Option<XfsParams>,
    /// FAT parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfat: Option<VfatParams>,
}

/// mkfs.ext4 parameters that matter for a faithful replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtParams {
    /// Filesystem features (`has_journal`, `metadata_csum`, `64bit`, ...), as dumpe2fs
    /// lists them, state flags like `needs_recovery` left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Inode size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode_size: Option<u32>,
    /// Block size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// mkfs.xfs parameters that matter for a faithful replay (each as xfs_info reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XfsParams {
    /// Data block size in bytes (`-b size=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Inode size in bytes (`-i size=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode_size: Option<u32>,
    /// Metadata options (`-m crc=1,finobt=1,rmapbt=0,reflink=1,bigtime=1,inobtcount=1`)
    /// and `sparse` (`-i sparse=`), name to 0/1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, u8>,
}

/// mkfs.vfat parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfatParams {
    /// FAT size: 12, 16 or 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fat_size: Option<u8>,
}

/// Where a filesystem is mounted. Mounts are made in path order, a parent before its
/// children, so the document carries no order that could contradict the tree. Swap areas
/// need no mount item: the image's fstab enables them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Unique id.
    pub id: String,
    /// The format's id.
    pub device: String,
    /// Absolute mount point inside the image (`/`, `/var`, `/boot/efi`).
    pub path: String,
    /// Mount options as recorded (`noatime`, `umask=0077`).
    #[serde(default = "default_options")]
    pub options: String,
}

fn default_options() -> String {
    "defaults".into()
}

/// Item kinds, for error messages and reference checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// [`Item::Disk`].
    Disk,
    /// [`Item::Partition`].
    Partition,
    /// [`Item::Raid`].
    Raid,
    /// [`Item::LvmVolgroup`].
    VolumeGroup,
    /// [`Item::LvmPartition`].
    LogicalVolume,
    /// [`Item::Format`].
    Format,
    /// [`Item::Mount`].
    Mount,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Disk => "disk",
            Kind::Partition => "partition",
            Kind::Raid => "raid",
            Kind::VolumeGroup => "lvm_volgroup",
            Kind::LogicalVolume => "lvm_partition",
            Kind::Format => "format",
            Kind::Mount => "mount",
        })
    }
}

/// Why a layout document is refused. Every variant names the item at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The text is not a layout document.
    #[error("layout document: {0}")]
    Json(#[from] serde_json::Error),
    /// A version this code does not read.
    #[error("layout version {found} is not supported (this understudy reads version {VERSION})")]
    Version {
        /// The document's version.
        found: u32,
    },
    /// An empty id.
    #[error("a {kind} item has an empty id")]
    EmptyId {
        /// Its kind.
        kind: Kind,
    },
    /// Two items share an id.
    #[error("id {id:?} is used by more than one item")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A reference to an id no item has.
    #[error("{item}: {field} refers to {target:?}, which no item has")]
    UnknownRef {
        /// The referring item.
        item: String,
        /// The field.
        field: &'static str,
        /// The missing id.
        target: String,
    },
    /// A reference to an item of the wrong kind.
    #[error("{item}: {field} refers to {target:?}, a {found}, where {expected} is needed")]
    WrongRefKind {
        /// The referring item.
        item: String,
        /// The field.
        field: &'static str,
        /// The id referred to.
        target: String,
        /// Its kind.
        found: Kind,
        /// What is allowed there.
        expected: &'static str,
    },
    /// Items that refer to each other in a ring.
    #[error("reference cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A volume used by two items (a partition both formatted and a RAID member).
    #[error("{volume} is used by both {first} and {second}")]
    UsedTwice {
        /// The volume.
        volume: String,
        /// One user.
        first: String,
        /// Another.
        second: String,
    },
    /// A size or offset that cannot be right.
    #[error("{item}: {reason}")]
    BadSize {
        /// The item.
        item: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed identifier (UUID, type code, name).
    #[error("{item}: {field} {value:?} is not valid: {reason}")]
    BadValue {
        /// The item.
        item: String,
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// No mount at `/`.
    #[error("no mount has path \"/\": a layout needs exactly one root filesystem")]
    NoRoot,
    /// Two mounts at the same path.
    #[error("mounts {first} and {second} both have path {path:?}")]
    DuplicateMount {
        /// The path.
        path: String,
        /// One mount.
        first: String,
        /// Another.
        second: String,
    },
}

/// An id's item, with its kind.
pub struct Index<'a> {
    items: BTreeMap<&'a str, &'a Item>,
}

impl<'a> Index<'a> {
    /// The item with this id.
    pub fn get(&self, id: &str) -> Option<&'a Item> {
        self.items.get(id).copied()
    }
}

impl Item {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            Item::Disk(x) => &x.id,
            Item::Partition(x) => &x.id,
            Item::Raid(x) => &x.id,
            Item::LvmVolgroup(x) => &x.id,
            Item::LvmPartition(x) => &x.id,
            Item::Format(x) => &x.id,
            Item::Mount(x) => &x.id,
        }
    }

    /// The item's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Item::Disk(_) => Kind::Disk,
            Item::Partition(_) => Kind::Partition,
            Item::Raid(_) => Kind::Raid,
            Item::LvmVolgroup(_) => Kind::VolumeGroup,
            Item::LvmPartition(_) => Kind::LogicalVolume,
            Item::Format(_) => Kind::Format,
            Item::Mount(_) => Kind::Mount,
        }
    }

    /// The ids this item refers to, with the field name and the kinds allowed there.
    fn refs(&self) -> Vec<(&'static str, &str, &'static [Kind], &'static str)> {
        const VOLUME: &[Kind] = &[Kind::Disk, Kind::Partition, Kind::Raid];
        const FS_VOLUME: &[Kind] = &[Kind::Disk, Kind::Partition, Kind::Raid, Kind::LogicalVolume];
        match self {
            Item::Disk(_) => vec![],
            Item::Partition(p) => vec![("device", p.device.as_str(), &[Kind::Disk], "a disk")],
            Item::Raid(r) => r
                .devices
                .iter()
                .chain(&r.spare_devices)
                .map(|d| ("devices", d.as_str(), VOLUME, "a disk, partition or raid"))
                .collect(),
            Item::LvmVolgroup(v) => {
                v.devices.iter().map(|d| ("devices", d.device.as_str(), VOLUME, "a disk, partition or raid")).collect()
            }
            Item::LvmPartition(l) => {
                let mut r = vec![("volgroup", l.volgroup.as_str(), &[Kind::VolumeGroup][..], "an lvm_volgroup")];
                if let Some(pool) = &l.pool {
                    r.push(("pool", pool.as_str(), &[Kind::LogicalVolume], "an lvm_partition"));
                }
                r
            }
            Item::Format(f) => {
                vec![("volume", f.volume.as_str(), FS_VOLUME, "a disk, partition, raid or lvm_partition")]
            }
            Item::Mount(m) => vec![("device", m.device.as_str(), &[Kind::Format], "a format")],
        }
    }
}

impl Layout {
    /// Parse and validate a document.
    pub fn from_json(text: &str) -> Result<Layout, LayoutError> {
        let layout: Layout = serde_json::from_str(text)?;
        layout.validate()?;
        Ok(layout)
    }

    /// The document as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Items by id (ids are unique once [`Layout::validate`] passed).
    pub fn index(&self) -> Index<'_> {
        Index { items: self.items.iter().map(|i| (i.id(), i)).collect() }
    }

    /// Disks, in document order.
    pub fn disks(&self) -> impl Iterator<Item = &Disk> {
        self.items.iter().filter_map(|i| if let Item::Disk(d) = i { Some(d) } else { None })
    }

    /// Partitions of `disk`, by number.
    pub fn partitions_of(&self, disk: &str) -> Vec<&Partition> {
        let mut v: Vec<&Partition> = self
            .items
            .iter()
            .filter_map(|i| if let Item::Partition(p) = i { Some(p) } else { None })
            .filter(|p| p.device == disk)
            .collect();
        v.sort_by_key(|p| p.number);
        v
    }

    /// RAID arrays, in document order.
    pub fn raids(&self) -> impl Iterator<Item = &Raid> {
        self.items.iter().filter_map(|i| if let Item::Raid(r) = i { Some(r) } else { None })
    }

    /// Volume groups, in document order.
    pub fn volgroups(&self) -> impl Iterator<Item = &VolumeGroup> {
        self.items.iter().filter_map(|i| if let Item::LvmVolgroup(v) = i { Some(v) } else { None })
    }

    /// LVs of `vg`, in document order.
    pub fn lvs_of(&self, vg: &str) -> Vec<&LogicalVolume> {
        self.items
            .iter()
            .filter_map(|i| if let Item::LvmPartition(l) = i { Some(l) } else { None })
            .filter(|l| l.volgroup == vg)
            .collect()
    }

    /// Formats, in document order.
    pub fn formats(&self) -> impl Iterator<Item = &Format> {
        self.items.iter().filter_map(|i| if let Item::Format(f) = i { Some(f) } else { None })
    }

    /// Mounts in the order they are made: by path depth, then path.
    pub fn mounts(&self) -> Vec<&Mount> {
        let mut v: Vec<&Mount> =
            self.items.iter().filter_map(|i| if let Item::Mount(m) = i { Some(m) } else { None }).collect();
        v.sort_by(|a, b| depth(&a.path).cmp(&depth(&b.path)).then(a.path.cmp(&b.path)));
        v
    }

    /// Give every format without a UUID a fresh one from `random` (16 bytes per call), so
    /// that the agent knows each filesystem's identity before mkfs runs and can write it to
    /// fstab; returns the ids of the formats filled. UUIDs are version 4; vfat volume ids
    /// take the first 4 bytes.
    pub fn fill_missing_uuids(&mut self, mut random: impl FnMut() -> [u8; 16]) -> Vec<String> {
        let mut filled = Vec::new();
        for it in &mut self.items {
            if let Item::Format(f) = it
                && f.uuid.is_none()
            {
                let mut b = random();
                f.uuid = Some(if f.fstype == FsType::Vfat {
                    format!("{:02X}{:02X}-{:02X}{:02X}", b[0], b[1], b[2], b[3])
                } else {
                    b[6] = (b[6] & 0x0f) | 0x40;
                    b[8] = (b[8] & 0x3f) | 0x80;
                    let h = hex::encode(b);
                    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
                });
                filled.push(f.id.clone());
            }
        }
        filled
    }

    /// The layout as an indented tree for people (`images show`, `images layout --show`):
    /// each disk, then what is built on it; an item on several volumes (a RAID1 array, a
    /// VG on two PVs) shows once, under the first.
    pub fn render(&self) -> String {
        let mut children: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
        for it in &self.items {
            let mut parents: Vec<&str> = it.refs().into_iter().map(|(_, t, _, _)| t).collect();
            parents.dedup();
            for p in parents {
                children.entry(p).or_default().push(it);
            }
        }
        let mut out = format!(
            "layout v{}: boot {}, bootloader {}\n",
            self.version,
            match self.boot_mode {
                BootMode::Bios => "bios",
                BootMode::Uefi => "uefi",
            },
            match self.bootloader {
                Bootloader::GrubPc => "grub-pc",
                Bootloader::GrubEfi => "grub-efi",
                Bootloader::ShimGrub => "shim-grub",
                Bootloader::None => "none",
            }
        );
        fn line(it: &Item) -> String {
            let opt = |label: &str, v: &Option<String>| v.as_ref().map(|v| format!(" {label} {v}")).unwrap_or_default();
            match it {
                Item::Disk(d) => format!(
                    "disk {} {} {}{}{}{}",
                    d.id,
                    human(d.size),
                    match d.ptable {
                        PtableType::Gpt => "gpt",
                        PtableType::Msdos => "msdos",
                        PtableType::None => "no partition table",
                    },
                    opt("serial", &d.hints.serial),
                    opt("was", &d.hints.path),
                    if d.grub_device { " [bootloader]" } else { "" }
                ),
                Item::Partition(p) => {
                    let flags: Vec<&str> = p.flags.iter().map(|f| f.name()).collect();
                    format!(
                        "partition {} #{} {}{}{}{}{}",
                        p.id,
                        p.number,
                        human(p.size),
                        if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(",")) },
                        opt("name", &p.name),
                        opt("partuuid", &p.uuid),
                        if p.grow { " (grows)" } else { "" }
                    )
                }
                Item::Raid(r) => format!(
                    "raid {} /dev/md/{} raid{} on {} metadata {} uuid {}",
                    r.id,
                    r.name,
                    u8::from(r.level),
                    r.devices.join("+"),
                    r.metadata,
                    r.uuid
                ),
                Item::LvmVolgroup(v) => format!(
                    "volume group {} on {} extents {} uuid {}",
                    v.name,
                    v.devices.iter().map(|d| d.device.as_str()).collect::<Vec<_>>().join("+"),
                    human(v.extent_size),
                    v.uuid
                ),
                Item::LvmPartition(l) => format!(
                    "logical volume {} {} {}{}",
                    l.name,
                    human(l.size),
                    l.kind.name(),
                    if l.grow { " (grows)" } else { "" }
                ),
                Item::Format(f) => format!("{}{}{}", f.fstype.name(), opt("uuid", &f.uuid), opt("label", &f.label)),
                Item::Mount(m) => format!("mounted at {} ({})", m.path, m.options),
            }
        }
        fn walk<'a>(
            it: &'a Item,
            depth: usize,
            children: &BTreeMap<&str, Vec<&'a Item>>,
            seen: &mut BTreeSet<&'a str>,
            out: &mut String,
        ) {
            if !seen.insert(it.id()) || depth > 16 {
                return;
            }
            out.push_str(&"  ".repeat(depth));
            out.push_str(&line(it));
            out.push('\n');
            for c in children.get(it.id()).map(Vec::as_slice).unwrap_or_default() {
                walk(c, depth + 1, children, seen, out);
            }
        }
        let mut seen = BTreeSet::new();
        for it in self.items.iter().filter(|i| i.kind() == Kind::Disk) {
            walk(it, 0, &children, &mut seen, &mut out);
        }
        // Anything not reached from a disk (an invalid document) still shows.
        for it in &self.items {
            walk(it, 0, &children, &mut seen, &mut out);
        }
        out
    }

    /// Check everything the format promises: version, unique ids, resolving references
    /// of the right kinds, no cycles, each volume used once, sane sizes, well-formed
    /// identifiers, and a mount tree with exactly one `/`.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.version != VERSION {
            return Err(LayoutError::Version { found: self.version });
        }
        if self.items.len() > MAX_ITEMS {
            return Err(LayoutError::BadSize {
                item: "items".into(),
                reason: format!("{} items, more than the {MAX_ITEMS} a layout may hold", self.items.len()),
            });
        }
        for it in &self.items {
            let sizes: Vec<u64> = match it {
                Item::Disk(d) => vec![d.size],
                Item::Partition(p) => vec![p.size, p.start.unwrap_or(0)],
                Item::Raid(r) => vec![r.size.unwrap_or(0)],
                Item::LvmVolgroup(v) => v.devices.iter().map(|d| d.pe_start).chain([v.extent_size]).collect(),
                Item::LvmPartition(l) => vec![l.size],
                Item::Format(_) | Item::Mount(_) => vec![],
            };
            if let Some(n) = sizes.into_iter().find(|n| *n > MAX_BYTES) {
                return Err(LayoutError::BadSize {
                    item: it.id().into(),
                    reason: format!("{n} bytes is more than the largest size a layout may give ({})", human(MAX_BYTES)),
                });
            }
        }
        let mut ids = BTreeMap::new();
        for it in &self.items {
            if it.id().is_empty() {
                return Err(LayoutError::EmptyId { kind: it.kind() });
            }
            if ids.insert(it.id(), it).is_some() {
                return Err(LayoutError::DuplicateId { id: it.id().to_string() });
            }
        }
        for it in &self.items {
            for (field, target, kinds, expected) in it.refs() {
                let Some(t) = ids.get(target) else {
                    return Err(LayoutError::UnknownRef { item: it.id().into(), field, target: target.into() });
                };
                if !kinds.contains(&t.kind()) {
                    return Err(LayoutError::WrongRefKind {
                        item: it.id().into(),
                        field,
                        target: target.into(),
                        found: t.kind(),
                        expected,
                    });
                }
            }
        }
        self.check_cycles(&ids)?;
        self.check_users()?;
        for it in &self.items {
            self.check_item(it, &ids)?;
        }
        self.check_mounts()
    }

    fn check_cycles(&self, ids: &BTreeMap<&str, &Item>) -> Result<(), LayoutError> {
        // 0 = unvisited, 1 = on the current path, 2 = done.
        fn visit<'a>(
            id: &'a str,
            ids: &BTreeMap<&'a str, &'a Item>,
            state: &mut BTreeMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), LayoutError> {
            match state.get(id) {
                Some(2) => return Ok(()),
                Some(1) => {
                    let from = path.iter().position(|p| *p == id).unwrap_or(0);
                    let mut ring: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
                    ring.push(id.to_string());
                    return Err(LayoutError::Cycle(ring));
                }
                _ => {}
            }
            state.insert(id, 1);
            path.push(id);
            if let Some(it) = ids.get(id) {
                for (_, t, _, _) in it.refs() {
                    visit(t, ids, state, path)?;
                }
            }
            path.pop();
            state.insert(id, 2);
            Ok(())
        }
        let mut state = BTreeMap::new();
        for it in &self.items {
            visit(it.id(), ids, &mut state, &mut Vec::new())?;
        }
        Ok(())
    }

    /// A volume holds one thing: a partition is a RAID member, a PV or a filesystem,
    /// never two of them (a disk may hold partitions, which are not "users" here).
    fn check_users(&self) -> Result<(), LayoutError> {
        let claim = |volume: &str, user: &str, owned: &mut BTreeMap<String, String>| {
            if let Some(first) = owned.get(volume) {
                return Err(LayoutError::UsedTwice {
                    volume: volume.into(),
                    first: first.clone(),
                    second: user.into(),
                });
            }
            owned.insert(volume.into(), user.into());
            Ok(())
        };
        let mut owned: BTreeMap<String, String> = BTreeMap::new();
        for it in &self.items {
            match it {
                Item::Raid(r) => {
                    for d in r.devices.iter().chain(&r.spare_devices) {
                        claim(d, &r.id, &mut owned)?;
                    }
                }
                Item::LvmVolgroup(v) => {
                    for d in &v.devices {
                        claim(&d.device, &v.id, &mut owned)?;
                    }
                }
                Item::Format(f) => claim(&f.volume, &f.id, &mut owned)?,
                Item::Mount(m) => claim(&m.device, &m.id, &mut owned)?,
                _ => {}
            }
        }
        // A whole disk that is claimed must not also have partitions.
        for it in &self.items {
            if let Item::Partition(p) = it
                && let Some(user) = owned.get(&p.device)
            {
                return Err(LayoutError::UsedTwice {
                    volume: p.device.clone(),
                    first: user.clone(),
                    second: p.id.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_item(&self, it: &Item, ids: &BTreeMap<&str, &Item>) -> Result<(), LayoutError> {
        let bad = |reason: String| LayoutError::BadSize { item: it.id().into(), reason };
        let value = |field, value: &str, reason| LayoutError::BadValue {
            item: it.id().into(),
            field,
            value: value.into(),
            reason,
        };
        match it {
            Item::Disk(d) => {
                if !matches!(d.sector_size, 512 | 1024 | 2048 | 4096) {
                    return Err(bad(format!("sector size {} is not 512, 1024, 2048 or 4096", d.sector_size)));
                }
                if d.size == 0 || d.size % u64::from(d.sector_size) != 0 {
                    return Err(bad(format!("size {} is not a positive multiple of the sector size", d.size)));
                }
                if let Some(id) = &d.ptable_id {
                    let ok = match d.ptable {
                        PtableType::Gpt => is_uuid(id),
                        PtableType::Msdos => {
                            id.strip_prefix("0x").is_some_and(|h| h.len() == 8 && u32::from_str_radix(h, 16).is_ok())
                        }
                        PtableType::None => false,
                    };
                    if !ok {
                        return Err(value(
                            "ptable_id",
                            id,
                            "a GUID for gpt, 0x and 8 hex digits for msdos, none without a table",
                        ));
                    }
                }
                self.check_partitions(d)?;
            }
            Item::Partition(p) => {
                let Some(Item::Disk(d)) = ids.get(p.device.as_str()) else { return Ok(()) };
                match d.ptable {
                    PtableType::Gpt => {
                        if !is_uuid(&p.part_type) {
                            return Err(value("part_type", &p.part_type, "a GPT type GUID"));
                        }
                        if !(1..=128).contains(&p.number) {
                            return Err(value("number", &p.number.to_string(), "1 to 128 on gpt"));
                        }
                        if p.flags.contains(&PartFlag::Extended) {
                            return Err(value("flags", "extended", "msdos only"));
                        }
                    }
                    PtableType::Msdos => {
                        if p.part_type.is_empty()
                            || p.part_type.len() > 2
                            || u8::from_str_radix(&p.part_type, 16).is_err()
                        {
                            return Err(value(
                                "part_type",
                                &p.part_type,
                                "an msdos type code in hex (83, 82, fd, 8e, ef)",
                            ));
                        }
                        if p.number == 0 || p.number > 60 {
                            return Err(value("number", &p.number.to_string(), "1 to 4 primary, 5 and up logical"));
                        }
                        if p.uuid.is_some() || p.name.is_some() {
                            return Err(value(
                                "uuid",
                                p.uuid.as_deref().unwrap_or(""),
                                "msdos partitions have no GUID or name",
                            ));
                        }
                    }
                    PtableType::None => {
                        return Err(bad(format!("disk {} has no partition table", d.id)));
                    }
                }
                if let Some(u) = &p.uuid
                    && !is_uuid(u)
                {
                    return Err(value("uuid", u, "a GUID"));
                }
                // Both go into an sfdisk script between double quotes.
                if let Some(n) = &p.name
                    && (n.encode_utf16().count() > 36 || n.contains(['"', '\\']) || n.chars().any(char::is_control))
                {
                    return Err(value(
                        "name",
                        n,
                        "at most 36 characters, without quotes, backslashes or control characters",
                    ));
                }
                if let Some(a) = &p.attrs
                    && !a.chars().all(|c| c.is_ascii_alphanumeric() || " :,".contains(c))
                {
                    return Err(value("attrs", a, "sfdisk attribute names and GUID:N bits"));
                }
            }
            Item::Raid(r) => {
                let min = match r.level {
                    RaidLevel::Raid0 | RaidLevel::Raid1 => 2,
                    RaidLevel::Raid10 => 2,
                };
                if r.devices.len() < min {
                    return Err(bad(format!("RAID{} needs at least {min} devices", u8::from(r.level))));
                }
                if !is_md_uuid(&r.uuid) {
                    return Err(value("uuid", &r.uuid, "mdadm's form, four groups of 8 hex digits joined by ':'"));
                }
                if !matches!(r.metadata.as_str(), "0.90" | "1.0" | "1.1" | "1.2") {
                    return Err(value("metadata", &r.metadata, "0.90, 1.0, 1.1 or 1.2"));
                }
                if r.name.is_empty() || r.name.contains('/') || r.name.contains(char::is_whitespace) {
                    return Err(value("name", &r.name, "a device name under /dev/md/"));
                }
            }
            Item::LvmVolgroup(v) => {
                if !is_lvm_name(&v.name) {
                    return Err(value("name", &v.name, "an LVM name (letters, digits, + _ . -)"));
                }
                if !is_lvm_uuid(&v.uuid) {
                    return Err(value("uuid", &v.uuid, "LVM's 32-character id, dashes allowed"));
                }
                if v.extent_size < 4096 || !v.extent_size.is_power_of_two() {
                    return Err(bad(format!("extent size {} is not a power of two of at least 4 KiB", v.extent_size)));
                }
                if v.devices.is_empty() {
                    return Err(bad("a volume group needs at least one physical volume".into()));
                }
                for pv in &v.devices {
                    if !is_lvm_uuid(&pv.uuid) {
                        return Err(value("devices.uuid", &pv.uuid, "LVM's 32-character id, dashes allowed"));
                    }
                    if pv.pe_start % 512 != 0 {
                        return Err(bad(format!("pe_start {} of {} is not a multiple of 512", pv.pe_start, pv.device)));
                    }
                }
                let lvs = self.lvs_of(&v.id);
                let mut names = BTreeSet::new();
                for l in &lvs {
                    if !names.insert(l.name.as_str()) {
                        return Err(value("name", &l.name, "unique within its volume group"));
                    }
                }
                if lvs.iter().filter(|l| l.grow).count() > 1 {
                    return Err(bad("more than one logical volume is marked grow".into()));
                }
                let used: u64 = lvs.iter().filter(|l| l.kind != LvKind::Thin).map(|l| l.size).sum();
                let cap = self.vg_capacity(v);
                if let Some(cap) = cap
                    && used > cap
                {
                    return Err(bad(format!(
                        "logical volumes need {} but the physical volumes hold {}",
                        human(used),
                        human(cap)
                    )));
                }
            }
            Item::LvmPartition(l) => {
                if !is_lvm_name(&l.name) {
                    return Err(value("name", &l.name, "an LVM name (letters, digits, + _ . -)"));
                }
                if !is_lvm_uuid(&l.uuid) {
                    return Err(value("uuid", &l.uuid, "LVM's 32-character id, dashes allowed"));
                }
                if (l.kind == LvKind::Thin) != l.pool.is_some() {
                    return Err(value(
                        "pool",
                        l.pool.as_deref().unwrap_or(""),
                        "given for thin LVs, and only for them",
                    ));
                }
                if let Some(Item::LvmVolgroup(v)) = ids.get(l.volgroup.as_str())
                    && (l.size == 0 || l.size % v.extent_size != 0)
                {
                    return Err(bad(format!(
                        "size {} is not a positive multiple of the extent size {}",
                        l.size, v.extent_size
                    )));
                }
            }
            Item::Format(f) => {
                if let Some(u) = &f.uuid {
                    let ok = match f.fstype {
                        FsType::Vfat => is_vfat_id(u),
                        _ => is_uuid(u),
                    };
                    if !ok {
                        return Err(value("uuid", u, "a UUID (vfat: a volume id like 1A2B-3C4D)"));
                    }
                }
                if let Some(l) = &f.label {
                    let max = match f.fstype {
                        FsType::Vfat => 11,
                        FsType::Xfs => 12,
                        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 | FsType::Swap => 16,
                        FsType::Btrfs => 255,
                    };
                    if l.len() > max || l.contains('\n') {
                        return Err(value("label", l, "too long for this filesystem"));
                    }
                }
                if let Some(v) = &f.vfat
                    && let Some(n) = v.fat_size
                    && !matches!(n, 12 | 16 | 32)
                {
                    return Err(value("vfat.fat_size", &n.to_string(), "12, 16 or 32"));
                }
                let wrong = (f.ext.is_some() && !matches!(f.fstype, FsType::Ext4 | FsType::Ext3 | FsType::Ext2))
                    || (f.xfs.is_some() && f.fstype != FsType::Xfs)
                    || (f.vfat.is_some() && f.fstype != FsType::Vfat);
                if wrong {
                    return Err(value("fstype", f.fstype.name(), "does not match the parameters given"));
                }
            }
            Item::Mount(m) => {
                if let Some(Item::Format(f)) = ids.get(m.device.as_str())
                    && f.fstype == FsType::Swap
                {
                    return Err(value("device", &m.device, "a filesystem (swap needs no mount item)"));
                }
                if !m.path.starts_with('/')
                    || (m.path.len() > 1 && m.path.ends_with('/'))
                    || m.path.split('/').any(|c| c == "." || c == "..")
                    || m.path.contains("//")
                    || m.path.contains(char::is_whitespace)
                {
                    return Err(value("path", &m.path, "an absolute, normalized path without spaces"));
                }
                if m.options.is_empty() || m.options.contains(char::is_whitespace) {
                    return Err(value("options", &m.options, "comma-separated mount options"));
                }
            }
        }
        Ok(())
    }

    /// Partitions of a disk fit it, do not overlap, have unique numbers, and at most one
    /// grows; msdos logical partitions sit in the one extended partition.
    fn check_partitions(&self, d: &Disk) -> Result<(), LayoutError> {
        let parts = self.partitions_of(&d.id);
        let sector = u64::from(d.sector_size);
        let end = usable_end(d);
        let mut cursor = first_usable(d);
        let mut numbers = BTreeSet::new();
        let mut extended: Option<(u64, u64)> = None;
        // Checked in disk order (numbers need not follow it), primaries before the
        // logical partitions inside the extended one.
        let logical_of = |p: &Partition| d.ptable == PtableType::Msdos && p.number >= 5;
        let mut placed: Vec<(&Partition, u64)> = parts.iter().copied().zip(partition_starts(d, &parts)).collect();
        placed.sort_by_key(|(p, start)| (logical_of(p), *start, p.number));
        let mut logical_cursor = 0;
        for (p, start) in placed {
            let bad = |reason: String| LayoutError::BadSize { item: p.id.clone(), reason };
            if !numbers.insert(p.number) {
                return Err(bad(format!("partition number {} is used twice on {}", p.number, d.id)));
            }
            if p.size == 0 || p.size % sector != 0 {
                return Err(bad(format!("size {} is not a positive multiple of the sector size {sector}", p.size)));
            }
            if logical_of(p) {
                let Some((es, ee)) = extended else {
                    return Err(bad("a logical partition needs an extended partition".into()));
                };
                // Each logical partition is preceded by its EBR sector.
                if start < logical_cursor.max(es) + sector || start.saturating_add(p.size) > ee {
                    return Err(bad(format!(
                        "{} at {} does not fit in the extended partition ({}..{}) after the logical partitions before it",
                        human(p.size),
                        start,
                        es,
                        ee
                    )));
                }
                logical_cursor = start + p.size;
                continue;
            }
            if start % sector != 0 {
                return Err(bad(format!("start {start} is not a multiple of the sector size {sector}")));
            }
            if start < cursor {
                return Err(bad(format!("starts at {start}, inside the partition before it (which ends at {cursor})")));
            }
            if start.saturating_add(p.size) > end {
                return Err(bad(format!(
                    "ends at {} but disk {} ({}) has room up to {}",
                    start.saturating_add(p.size),
                    d.id,
                    human(d.size),
                    end
                )));
            }
            if p.flags.contains(&PartFlag::Extended) {
                if extended.is_some() {
                    return Err(bad("a disk has at most one extended partition".into()));
                }
                extended = Some((start, start + p.size));
            }
            cursor = start + p.size;
        }
        if parts.iter().filter(|p| p.grow).count() > 1 {
            return Err(LayoutError::BadSize {
                item: d.id.clone(),
                reason: "more than one partition is marked grow".into(),
            });
        }
        Ok(())
    }

    /// Bytes a VG's PVs hold in whole extents, when every PV's size is known.
    pub fn vg_capacity(&self, v: &VolumeGroup) -> Option<u64> {
        let mut total = 0;
        for pv in &v.devices {
            let size = self.volume_size(&pv.device)?;
            total += size.saturating_sub(pv.pe_start) / v.extent_size * v.extent_size;
        }
        Some(total)
    }

    /// Size in bytes of a disk, partition, RAID array (its recorded size, or computed from
    /// its members when not recorded) or LV.
    pub fn volume_size(&self, id: &str) -> Option<u64> {
        match self.index().get(id)? {
            Item::Disk(d) => Some(d.size),
            Item::Partition(p) => Some(p.size),
            Item::LvmPartition(l) => Some(l.size),
            Item::Raid(r) => match r.size {
                Some(s) => Some(s),
                None => {
                    let sizes: Option<Vec<u64>> = r.devices.iter().map(|d| self.volume_size(d)).collect();
                    let sizes = sizes?;
                    let min = sizes.iter().copied().min()?;
                    let member = min.saturating_sub(md_overhead(min));
                    Some(raid_size(r.level, r.devices.len() as u64, member))
                }
            },
            _ => None,
        }
    }

    fn check_mounts(&self) -> Result<(), LayoutError> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for m in self.mounts() {
            if let Some(first) = seen.insert(&m.path, &m.id) {
                return Err(LayoutError::DuplicateMount {
                    path: m.path.clone(),
                    first: first.into(),
                    second: m.id.clone(),
                });
            }
        }
        if !seen.contains_key("/") {
            return Err(LayoutError::NoRoot);
        }
        Ok(())
    }
}

/// RAID array size from the usable size of one member.
pub fn raid_size(level: RaidLevel, members: u64, member: u64) -> u64 {
    match level {
        RaidLevel::Raid0 => member * members,
        RaidLevel::Raid1 => member,
        RaidLevel::Raid10 => member * members / 2,
    }
}

/// An estimate of what md's superblock and data offset take from a member: mdadm
/// reserves up to 128 MiB of headroom before the data on metadata 1.1/1.2, less on
/// small devices. Used only where the document did not record the array's size.
pub fn md_overhead(member: u64) -> u64 {
    let mut headroom = 128 * MIB;
    while headroom > MIB && headroom * 1000 > member {
        headroom /= 2;
    }
    headroom + MIB
}

/// The first byte a partition may start at (after the MBR, or the GPT header and array).
pub fn first_usable(d: &Disk) -> u64 {
    let sector = u64::from(d.sector_size);
    match d.ptable {
        PtableType::Gpt => 34 * sector.max(512),
        _ => sector,
    }
}

/// One past the last byte a partition may use (GPT keeps a backup array at the end).
pub fn usable_end(d: &Disk) -> u64 {
    let sector = u64::from(d.sector_size);
    match d.ptable {
        PtableType::Gpt => d.size.saturating_sub(33 * sector),
        _ => d.size,
    }
}

/// Each partition's start in bytes, `parts` in number order: as recorded, or (absent)
/// right after the previous partition, 1 MiB aligned (an msdos logical partition after
/// its predecessor's end plus its EBR sector, inside the extended partition).
pub fn partition_starts(d: &Disk, parts: &[&Partition]) -> Vec<u64> {
    let sector = u64::from(d.sector_size);
    let mut cursor = first_usable(d);
    let mut logical_cursor: u64 = 0;
    let mut out = Vec::new();
    for p in parts {
        let logical = d.ptable == PtableType::Msdos && p.number >= 5;
        let start = if logical {
            p.start.unwrap_or(align_up(logical_cursor.saturating_add(sector), MIB))
        } else {
            p.start.unwrap_or(align_up(cursor, MIB))
        };
        if logical {
            logical_cursor = start.saturating_add(p.size);
        } else {
            cursor = start.saturating_add(p.size);
            if p.flags.contains(&PartFlag::Extended) {
                logical_cursor = start;
            }
        }
        out.push(start);
    }
    out
}

/// `n` rounded up to a multiple of `a`.
pub fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Bytes for people: `256 MiB`, `1.5 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 { format!("{v:.0} {}", UNITS[u]) } else { format!("{v:.2} {}", UNITS[u]) }
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

/// `8-4-4-4-12` hex digits.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// mdadm's UUID form: four groups of 8 hex digits joined by `:`.
pub fn is_md_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 4 && parts.iter().all(|p| p.len() == 8 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// LVM's id: 32 characters from its alphabet, optionally as `6-4-4-4-4-4-6` with dashes.
pub fn is_lvm_uuid(s: &str) -> bool {
    let plain: String = s.chars().filter(|c| *c != '-').collect();
    plain.len() == 32 && plain.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A FAT volume id: `XXXX-XXXX` hex.
pub fn is_vfat_id(s: &str) -> bool {
    s.len() == 9 && s.as_bytes()[4] == b'-' && s.chars().enumerate().all(|(i, c)| i == 4 || c.is_ascii_hexdigit())
}

fn is_lvm_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c))
}

/// The disk size the default layout is planned with for an image of `image_bytes`: the
/// image and a quarter, plus 1 GiB, at least 2 GiB (what the agent always needed). The
/// server's `nodes plan` and the agent both use it, so they agree on what fits.
pub fn default_disk_size(image_bytes: u64) -> u64 {
    (image_bytes.saturating_mul(5) / 4 + (1 << 30)).max(2 << 30)
}

/// The layout an image imported from a tar gets: today's agent layout on one disk. GPT
/// with a 1 MiB BIOS boot partition (GRUB on BIOS), a 256 MiB ESP (vfat, GRUB on UEFI),
/// and an ext4 root that grows over the rest of the disk; GRUB for BIOS. Labels are the
/// agent's (`EFI`, `root`). `disk_size` is
/// the size recorded for the disk (the smallest disk it fits is what the planner
/// compares with); 4 GiB is a fair minimum for a head node's root.
/// Filesystem UUIDs are left out: the agent makes fresh ones
/// ([`Layout::fill_missing_uuids`]) before planning and writes them to fstab.
pub fn default_layout(disk_size: u64) -> Layout {
    let part = |id: &str, number, size, part_type: &str, name: &str, flags: Vec<PartFlag>, grow| {
        Item::Partition(Partition {
            id: id.into(),
            device: "disk0".into(),
            number,
            start: None,
            size,
            part_type: part_type.into(),
            name: Some(name.into()),
            uuid: None,
            attrs: None,
            flags,
            grow,
        })
    };
    // 1 MiB before the first partition and 1 MiB at the end for GPT's backup, aligned.
    let root_size = align_up(disk_size, MIB).saturating_sub(259 * MIB).max(MIB);
    Layout {
        version: VERSION,
        boot_mode: BootMode::Bios,
        bootloader: Bootloader::GrubPc,
        items: vec![
            Item::Disk(Disk {
                id: "disk0".into(),
                hints: DiskMatch::default(),
                size: align_up(disk_size, MIB),
                sector_size: 512,
                ptable: PtableType::Gpt,
                ptable_id: None,
                grub_device: true,
            }),
            part("bios", 1, MIB, GPT_BIOS_BOOT, "bios", vec![PartFlag::BiosGrub], false),
            part("esp", 2, 256 * MIB, GPT_ESP, "esp", vec![PartFlag::Esp], false),
            part("root", 3, root_size, GPT_LINUX, "root", vec![], true),
            Item::Format(Format {
                id: "esp-fs".into(),
                volume: "esp".into(),
                fstype: FsType::Vfat,
                uuid: None,
                label: Some("EFI".into()),
                ext: None,
                xfs: None,
                vfat: Some(VfatParams { fat_size: Some(32) }),
            }),
            Item::Format(Format {
                id: "root-fs".into(),
                volume: "root".into(),
                fstype: FsType::Ext4,
                uuid: None,
                label: Some("root".into()),
                ext: None,
                xfs: None,
                vfat: None,
            }),
            Item::Mount(Mount {
                id: "root-mount".into(),
                device: "root-fs".into(),
                path: "/".into(),
                options: "defaults".into(),
            }),
            Item::Mount(Mount {
                id: "esp-mount".into(),
                device: "esp-fs".into(),
                path: "/boot/efi".into(),
                options: "umask=0077".into(),
            }),
        ],
    }
}

/// The disk size [`default_layout`] records when nothing better is known: 4 GiB.
pub const DEFAULT_DISK_SIZE: u64 = 4 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Layout {
        default_layout(DEFAULT_DISK_SIZE)
    }

    fn with(mut l: Layout, f: impl FnOnce(&mut Vec<Item>)) -> Layout {
        f(&mut l.items);
        l
    }

    fn err(l: &Layout) -> String {
        l.validate().unwrap_err().to_string()
    }

    #[test]
    fn default_layout_is_valid_and_round_trips() {
        let l = base();
        l.validate().unwrap();
        let text = l.to_json();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(text.contains("\"type\": \"partition\""), "{text}");
        let back = Layout::from_json(&text).unwrap();
        assert_eq!(back, l);
        assert_eq!(l.partitions_of("disk0").len(), 3);
        assert_eq!(l.volume_size("root"), Some(DEFAULT_DISK_SIZE - 259 * MIB));
        assert_eq!(l.mounts().iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["/", "/boot/efi"]);
    }

    #[test]
    fn raid_lvm_renders_each_item_once() {
        let l = Layout::from_json(
            &std::fs::read_to_string(format!(
                "{}/tests/fixtures/layout/layout-raid1-lvm.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        let text = l.render();
        assert_eq!(text.matches("raid md0 /dev/md/0 raid1 on vda2+vdb2").count(), 1, "{text}");
        assert!(text.contains("      volume group vg0 on md0 extents 4 MiB"), "{text}");
        assert!(text.contains("        logical volume var 6 GiB linear"), "{text}");
        assert!(text.contains("          xfs uuid 8d2e6b10-4c3a-4f5e-9b7d-1a2c3e4f5a02 label var"), "{text}");
        assert_eq!(text.lines().count(), 1 + l.items.len(), "{text}");
    }

    #[test]
    fn fresh_uuids_fill_only_what_is_missing() {
        let mut l = base();
        let mut n = 0u8;
        let filled = l.fill_missing_uuids(|| {
            n += 1;
            [n; 16]
        });
        assert_eq!(filled, ["esp-fs", "root-fs"]);
        let uuids: Vec<&str> = l.formats().filter_map(|f| f.uuid.as_deref()).collect();
        assert_eq!(uuids, ["0101-0101", "02020202-0202-4202-8202-020202020202"]);
        l.validate().unwrap();
        assert!(l.fill_missing_uuids(|| [9; 16]).is_empty(), "recorded UUIDs are kept");
    }

    #[test]
    fn renders_as_a_tree() {
        let text = base().render();
        assert_eq!(
            text,
            "layout v1: boot bios, bootloader grub-pc\n\
             disk disk0 4 GiB gpt [bootloader]\n\
             \x20 partition bios #1 1 MiB [bios_grub] name bios\n\
             \x20 partition esp #2 256 MiB [esp] name esp\n\
             \x20   vfat label EFI\n\
             \x20     mounted at /boot/efi (umask=0077)\n\
             \x20 partition root #3 3.75 GiB name root (grows)\n\
             \x20   ext4 label root\n\
             \x20     mounted at / (defaults)\n"
        );
    }

    #[test]
    fn version_and_unknown_fields_are_refused() {
        let mut v: serde_json::Value = serde_json::from_str(&base().to_json()).unwrap();
        v["version"] = 2.into();
        let e = Layout::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(e, LayoutError::Version { found: 2 }), "{e}");
        v["version"] = 1.into();
        v["items"][0]["colour"] = "blue".into();
        assert!(Layout::from_json(&v.to_string()).unwrap_err().to_string().contains("colour"));
        assert!(Layout::from_json("{\"version\": 1, \"items\": [").is_err());
        let unknown = r#"{"version":1,"boot_mode":"bios","bootloader":"grub-pc","items":[{"type":"tape","id":"t"}]}"#;
        assert!(Layout::from_json(unknown).unwrap_err().to_string().contains("tape"));
        let level = r#"{"version":1,"boot_mode":"bios","bootloader":"grub-pc","items":[{"type":"raid","id":"r","name":"0","level":5,"devices":[],"metadata":"1.2","uuid":"x"}]}"#;
        assert!(Layout::from_json(level).unwrap_err().to_string().contains("RAID level 5"));
    }

    #[test]
    fn ids_and_references() {
        let l = with(base(), |i| {
            if let Item::Format(f) = &mut i[4] {
                f.id = "root".into();
            }
        });
        assert!(matches!(l.validate(), Err(LayoutError::DuplicateId { id }) if id == "root"));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.device = "disk9".into();
            }
        });
        assert_eq!(err(&l), "root: device refers to \"disk9\", which no item has");
        let l = with(base(), |i| {
            if let Item::Mount(m) = &mut i[6] {
                m.device = "root".into();
            }
        });
        assert_eq!(err(&l), "root-mount: device refers to \"root\", a partition, where a format is needed");
        let l = with(base(), |i| {
            if let Item::Disk(d) = &mut i[0] {
                d.id = String::new();
            }
        });
        assert!(matches!(l.validate(), Err(LayoutError::EmptyId { kind: Kind::Disk })));
    }

    #[test]
    fn cycles_are_found() {
        let raid = |id: &str, devs: [&str; 2]| {
            Item::Raid(Raid {
                id: id.into(),
                name: id.into(),
                md_name: None,
                level: RaidLevel::Raid1,
                devices: devs.iter().map(|s| s.to_string()).collect(),
                spare_devices: vec![],
                metadata: "1.2".into(),
                uuid: "00000000:00000000:00000000:00000001".into(),
                size: None,
            })
        };
        let l = with(base(), |i| {
            i.push(raid("md0", ["md1", "esp"]));
            i.push(raid("md1", ["md0", "bios"]));
        });
        match l.validate() {
            Err(LayoutError::Cycle(ring)) => assert_eq!(ring, ["md0", "md1", "md0"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_volume_is_used_once() {
        let l = with(base(), |i| {
            i.push(Item::Format(Format {
                id: "again".into(),
                volume: "root".into(),
                fstype: FsType::Xfs,
                uuid: None,
                label: None,
                ext: None,
                xfs: None,
                vfat: None,
            }))
        });
        assert_eq!(err(&l), "root is used by both root-fs and again");
    }

    #[test]
    fn sizes_are_checked() {
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.size += MIB;
            }
        });
        let e = err(&l);
        assert!(e.starts_with("root: ends at") && e.contains("disk disk0 (4 GiB)"), "{e}");
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[2] {
                p.start = Some(0);
            }
        });
        assert!(err(&l).starts_with("esp: starts at 0, inside"), "{}", err(&l));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[1] {
                p.size = 1000;
            }
        });
        assert!(err(&l).contains("not a positive multiple of the sector size"));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[2] {
                p.grow = true;
            }
        });
        assert_eq!(err(&l), "disk0: more than one partition is marked grow");
    }

    #[test]
    fn identifiers_are_checked() {
        let l = with(base(), |i| {
            if let Item::Format(f) = &mut i[4] {
                f.uuid = Some("6f1c8c47-2b8e-4d4a-9a51-2f0e7d6c5b01".into());
            }
        });
        assert!(err(&l).contains("vfat: a volume id"));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[1] {
                p.part_type = "83".into();
            }
        });
        assert!(err(&l).contains("a GPT type GUID"));
        let l = with(base(), |i| {
            if let Item::Format(f) = &mut i[5] {
                f.label = Some("a label that is far too long".into());
            }
        });
        assert!(err(&l).starts_with("root-fs: label"));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.name = Some("root\"\n/dev/vda9 : size=1".into());
            }
        });
        assert!(err(&l).starts_with("root: name"), "{}", err(&l));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.attrs = Some("RequiredPartition\nx".into());
            }
        });
        assert!(err(&l).starts_with("root: attrs"), "{}", err(&l));
        assert!(is_md_uuid("3b4d0b4a:1c2b8d9e:5f6a7b8c:9d0e1f2a"));
        assert!(is_lvm_uuid("Jx3qMb-5Hc8-9Lf2-Kd7a-Pq4r-Wz1y-Nb6e0T"));
        assert!(!is_lvm_uuid("short"));
        assert!(is_vfat_id("1A2B-3C4D") && !is_vfat_id("1A2B3C4D"));
    }

    #[test]
    fn mount_tree_needs_one_root() {
        let l = with(base(), |i| {
            i.retain(|x| x.id() != "root-mount");
        });
        assert!(matches!(l.validate(), Err(LayoutError::NoRoot)));
        let l = with(base(), |i| {
            if let Item::Mount(m) = &mut i[7] {
                m.path = "/".into();
            }
        });
        assert_eq!(err(&l), "mounts root-mount and esp-mount both have path \"/\"");
        let l = with(base(), |i| {
            if let Item::Mount(m) = &mut i[7] {
                m.path = "boot/efi".into();
            }
        });
        assert!(err(&l).starts_with("esp-mount: path"));
    }

    #[test]
    fn absurd_sizes_are_refused_without_overflow() {
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.size = u64::MAX;
            }
        });
        assert!(err(&l).starts_with("root: 18446744073709551615 bytes is more than"), "{}", err(&l));
        let l = with(base(), |i| {
            if let Item::Partition(p) = &mut i[3] {
                p.start = Some(MAX_BYTES);
            }
        });
        assert!(err(&l).starts_with("root: ends at"), "{}", err(&l));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(256 * MIB), "256 MiB");
        assert_eq!(human(3 * MIB / 2), "1.50 MiB");
        assert_eq!(md_overhead(200 << 30), 128 * MIB + MIB);
        assert_eq!(md_overhead(100 << 30), 64 * MIB + MIB);
        assert_eq!(md_overhead(4 << 30), 4 * MIB + MIB);
    }
}
