//! Planning before erasing: the recorded layout mapped onto a target's disks, every
//! volume's final size, and the exact commands the agent runs, as a pure function of the
//! layout and the target's disk inventory. Nothing is written until a plan exists, so a
//! disk that is too small or missing is an error before the first command.
//!
//! Disk mapping is deterministic: a target disk whose serial or WWN equals a recorded
//! disk's takes it first; the other recorded disks, largest need first (document order
//! among equals), each take the smallest free target disk that fits (name order among
//! equals). A disk "fits" when it holds every recorded partition where it was (or the
//! whole recorded size, for a disk used without a partition table). On a larger disk the
//! partition marked `grow` (else the one that ends the disk) takes the extra space, whole
//! MiB, and the partitions after it move up; md arrays follow their members; in a VG on grown PVs the
//! LV marked `grow` (else the last linear one) takes the extra extents.
//!
//! Volume groups keep their UUIDs through vgcfgrestore (see the module doc of
//! [`crate::layout`]): the plan writes the VG's text metadata ([`render_vg_metadata`]),
//! creates each PV with `pvcreate --uuid U --restorefile FILE` (the PV's data area then
//! matches the file), and restores the VG with `vgcfgrestore --file FILE VG`. The sizes in
//! that file come from the plan; for a PV on an md array the array's size is the recorded
//! one adjusted by the members' change, which mdadm may round differently (its data offset
//! grows with the member size, up to 128 MiB), so the agent re-renders the file with
//! [`vg_metadata`] and the PVs' measured sizes (`blockdev --getsize64`) right before
//! writing it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::doc::{
    Disk, Format, FsType, Item, Layout, LayoutError, LogicalVolume, LvKind, MIB, PartFlag, Partition, PtableType, Raid,
    VolumeGroup, first_usable, human, partition_starts, raid_size, usable_end,
};

/// A disk of the target machine, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TargetDisk {
    /// Kernel name (`vda`, `sda`, `nvme0n1`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    pub sector_size: u32,
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// World-wide name.
    #[serde(default)]
    pub wwn: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Removable media: never used.
    #[serde(default)]
    pub removable: bool,
    /// Read-only: never used.
    #[serde(default)]
    pub read_only: bool,
}

impl From<&crate::wire::Disk> for TargetDisk {
    /// A disk as the boot environment reported it (empty strings: not known).
    fn from(d: &crate::wire::Disk) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        TargetDisk {
            name: d.name.clone(),
            size: d.size,
            sector_size: d.logical_sector_size,
            serial: some(&d.serial),
            wwn: some(&d.wwid),
            model: some(&d.model),
            removable: d.removable,
            read_only: d.read_only,
        }
    }
}

impl TargetDisk {
    /// `/dev/NAME`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// A disk the agent may write: fixed, writable, not a virtual or optical device, of a
    /// size and sector size a layout can describe.
    pub fn usable(&self) -> bool {
        const SKIP: &[&str] = &["loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"];
        self.writable() && !SKIP.iter().any(|p| self.name.starts_with(p))
    }

    /// A disk that may be written when the admin named it (`understudy.disk=`): fixed and
    /// writable, of a size and sector size a layout can describe, whatever kind of device
    /// it is (a loop device in a test, say).
    pub fn writable(&self) -> bool {
        !self.removable
            && !self.read_only
            && self.size <= super::doc::MAX_BYTES
            && matches!(self.sector_size, 512 | 1024 | 2048 | 4096)
            && self.size > 0
            && !self.name.contains("boot")
            && !self.name.contains("rpmb")
    }
}

/// Why a layout cannot be planned onto the target. Nothing has been written.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The layout itself is not valid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A recorded disk has no target disk at all.
    #[error(transparent)]
    MissingDisk(Box<MissingDisk>),
    /// No free target disk is large enough for a recorded disk.
    #[error(transparent)]
    TooSmall(Box<TooSmall>),
    /// A VG's LVs do not fit its PVs on the target.
    #[error(
        "volume group {vg} needs {need} for its logical volumes, its physical volumes on the target hold {have}: {short} short"
    )]
    VgTooSmall {
        /// The VG.
        vg: String,
        /// Bytes the LVs need.
        need: String,
        /// Bytes the PVs hold.
        have: String,
        /// The difference.
        short: String,
    },
    /// A target disk's sector size does not divide the recorded offsets.
    #[error("{item} starts or ends off the {sector}-byte sectors of target disk {target}")]
    Misaligned {
        /// The partition.
        item: String,
        /// The target disk.
        target: String,
        /// Its sector size.
        sector: u32,
    },
    /// Recorded, but not replayed.
    #[error("{item}: {what}")]
    Unsupported {
        /// The item.
        item: String,
        /// What is refused and why.
        what: String,
    },
}

/// A recorded disk without a target disk.
#[derive(Debug, thiserror::Error)]
#[error(
    "disk {disk} ({size}, holding {holds}) has no target disk: the target has {have} usable disk(s) for {need} recorded ({targets})"
)]
pub struct MissingDisk {
    /// The recorded disk.
    pub disk: String,
    /// Its recorded size.
    pub size: String,
    /// What it holds.
    pub holds: String,
    /// Recorded disks.
    pub need: usize,
    /// Usable target disks.
    pub have: usize,
    /// The target's usable disks.
    pub targets: String,
}

/// A recorded disk that no free target disk is large enough for.
#[derive(Debug, thiserror::Error)]
#[error("disk {disk} needs {need} ({why}); the largest free target disk {target} has {have}: {short} short")]
pub struct TooSmall {
    /// The recorded disk.
    pub disk: String,
    /// Bytes it needs.
    pub need: String,
    /// What needs that much.
    pub why: String,
    /// The best target candidate.
    pub target: String,
    /// Its size.
    pub have: String,
    /// The difference.
    pub short: String,
}

/// Which target disk a recorded disk becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskMap {
    /// Recorded disk id.
    pub disk: String,
    /// Recorded size in bytes.
    pub recorded_size: u64,
    /// Target device (`/dev/vda`).
    pub target: String,
    /// Target size in bytes.
    pub target_size: u64,
    /// Why this target: `serial`, `wwn` or `size`.
    pub matched_by: &'static str,
}

/// A volume's final place and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Item id.
    pub id: String,
    /// Item kind (`partition`, `raid`, `lvm_partition`).
    pub kind: String,
    /// Target device path.
    pub device: String,
    /// Recorded size in bytes.
    pub recorded_size: u64,
    /// Final size in bytes (for an md array or a PV on one: the planner's estimate).
    pub size: u64,
    /// It takes the extra space.
    pub grown: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Run a command.
    Run {
        /// What it is for.
        what: String,
        /// The exact argv.
        argv: Vec<String>,
        /// Its standard input, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<String>,
    },
    /// Write a file (in the boot environment, not on the target).
    Write {
        /// What it is for.
        what: String,
        /// Absolute path.
        path: String,
        /// Content.
        content: String,
    },
}

/// A plan, shown before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Recorded disk → target disk.
    pub disks: Vec<DiskMap>,
    /// Every partition, array and LV with its final size.
    pub volumes: Vec<Volume>,
    /// Target disks the BIOS bootloader goes on.
    pub bootloader_disks: Vec<String>,
    /// The ordered steps.
    pub steps: Vec<Step>,
}

/// Where the plan writes VG metadata files for vgcfgrestore.
pub const LVM_DIR: &str = "/run/understudy/lvm";

fn run(what: impl Into<String>, argv: &[&str]) -> Step {
    Step::Run { what: what.into(), argv: argv.iter().map(|s| s.to_string()).collect(), input: None }
}

/// Partition `n` of a target disk device (`/dev/vda` → `/dev/vda1`, `/dev/nvme0n1` →
/// `/dev/nvme0n1p1`).
pub fn part_dev(disk: &str, n: u32) -> String {
    crate::agent::disk::part_dev(disk, n)
}

/// The device-mapper node of an LV: dashes in names are doubled.
pub fn lv_dev(vg: &str, lv: &str) -> String {
    format!("/dev/mapper/{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// What a disk must hold on the target: every partition where it was recorded (the
/// partition table's tail included), or its whole recorded size when used whole.
fn disk_need(layout: &Layout, d: &Disk) -> (u64, String) {
    let parts = layout.partitions_of(&d.id);
    if d.ptable == PtableType::None || parts.is_empty() {
        return (d.size, "used whole".into());
    }
    let starts = partition_starts(d, &parts);
    let (end, last) = parts
        .iter()
        .zip(&starts)
        .map(|(p, s)| (s + p.size, p.id.as_str()))
        .max()
        .unwrap_or((first_usable(d), d.id.as_str()));
    let tail = d.size - usable_end(d);
    (end + tail, format!("partition {last} ends at {end}"))
}

fn what_holds(layout: &Layout, d: &Disk) -> String {
    let parts = layout.partitions_of(&d.id);
    if parts.is_empty() {
        return "the disk used whole".into();
    }
    parts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
}

/// Map recorded disks to target disks (see the module doc for the rule).
pub fn map_disks(layout: &Layout, targets: &[TargetDisk]) -> Result<Vec<DiskMap>, PlanError> {
    map_disks_where(layout, targets, TargetDisk::usable)
}

/// [`map_disks`] over the targets that `usable` accepts.
fn map_disks_where(
    layout: &Layout,
    targets: &[TargetDisk],
    usable: fn(&TargetDisk) -> bool,
) -> Result<Vec<DiskMap>, PlanError> {
    let recorded: Vec<&Disk> = layout.disks().collect();
    let mut free: Vec<&TargetDisk> = targets.iter().filter(|t| usable(t)).collect();
    free.sort_by(|a, b| a.name.cmp(&b.name));
    let usable_list = || {
        if free.is_empty() {
            "none".to_string()
        } else {
            targets
                .iter()
                .filter(|t| usable(t))
                .map(|t| format!("{} {}", t.name, human(t.size)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let usable_count = free.len();
    let targets_text = usable_list();
    let mut chosen: BTreeMap<String, (&TargetDisk, &'static str)> = BTreeMap::new();
    // Identity first: the same disk (a redeploy) or a hint that names it.
    for d in &recorded {
        let hit = free.iter().position(|t| {
            (d.hints.serial.is_some() && t.serial == d.hints.serial) || (d.hints.wwn.is_some() && t.wwn == d.hints.wwn)
        });
        if let Some(i) = hit
            && free[i].size >= disk_need(layout, d).0
        {
            let t = free.remove(i);
            let by = if d.hints.serial.is_some() && t.serial == d.hints.serial { "serial" } else { "wwn" };
            chosen.insert(d.id.clone(), (t, by));
        }
    }
    // Then best fit, largest need first.
    let mut rest: Vec<&&Disk> = recorded.iter().filter(|d| !chosen.contains_key(&d.id)).collect();
    rest.sort_by_key(|d| std::cmp::Reverse(disk_need(layout, d).0));
    for d in rest {
        let (need, why) = disk_need(layout, d);
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, t)| t.size >= need)
            .min_by(|a, b| a.1.size.cmp(&b.1.size).then(a.1.name.cmp(&b.1.name)))
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let t = free.remove(i);
                chosen.insert(d.id.clone(), (t, "size"));
            }
            None => {
                let Some(best) = free.iter().max_by(|a, b| a.size.cmp(&b.size).then(b.name.cmp(&a.name))) else {
                    return Err(PlanError::MissingDisk(Box::new(MissingDisk {
                        disk: d.id.clone(),
                        size: human(d.size),
                        holds: what_holds(layout, d),
                        need: recorded.len(),
                        have: usable_count,
                        targets: targets_text,
                    })));
                };
                return Err(PlanError::TooSmall(Box::new(TooSmall {
                    disk: d.id.clone(),
                    need: human(need),
                    why,
                    target: best.name.clone(),
                    have: human(best.size),
                    short: human(need - best.size),
                })));
            }
        }
    }
    Ok(recorded
        .iter()
        .filter_map(|d| {
            chosen.get(&d.id).map(|(t, by)| DiskMap {
                disk: d.id.clone(),
                recorded_size: d.size,
                target: t.path(),
                target_size: t.size,
                matched_by: by,
            })
        })
        .collect())
}

/// Final placement of one partition.
#[derive(Debug, Clone)]
struct Placed<'a> {
    part: &'a Partition,
    start: u64,
    size: u64,
    grown: bool,
}

fn place_partitions<'a>(layout: &'a Layout, d: &Disk, t: &TargetDisk) -> Result<Vec<Placed<'a>>, PlanError> {
    let parts = layout.partitions_of(&d.id);
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let starts = partition_starts(d, &parts);
    let target_disk = Disk { size: t.size, sector_size: t.sector_size, ..d.clone() };
    let new_end = usable_end(&target_disk);
    let old_end = usable_end(d);
    // The grow partition: marked, else the one that ends the disk (on msdos, possibly a
    // logical one, whose extended partition then grows with it). Extended partitions are
    // containers, never the default.
    let last = parts
        .iter()
        .zip(&starts)
        .enumerate()
        .filter(|(_, (p, _))| !p.flags.contains(&PartFlag::Extended))
        .max_by_key(|(_, (p, s))| (**s, p.number))
        .map(|(i, _)| i)
        .unwrap_or(parts.len() - 1);
    let grow_idx = parts.iter().position(|p| p.grow).unwrap_or(last);
    let extra = new_end.saturating_sub(old_end);
    let grow_is_last = parts.iter().zip(&starts).all(|(p, s)| *s <= starts[grow_idx] || p.id == parts[grow_idx].id);
    let delta = if grow_is_last { extra } else { extra / MIB * MIB };
    let grow_logical = d.ptable == PtableType::Msdos && parts[grow_idx].number >= 5;
    let mut out = Vec::new();
    for (i, (p, s)) in parts.iter().zip(&starts).enumerate() {
        let mut start = *s;
        let mut size = p.size;
        let is_ext = p.flags.contains(&PartFlag::Extended);
        if i == grow_idx || (grow_logical && is_ext) {
            size += delta;
            if grow_is_last && (i == grow_idx || is_ext) {
                // Whole MiB at the end, as sfdisk aligns the last partition.
                size = ((start + size).min(new_end) / MIB * MIB).saturating_sub(start).max(p.size);
            }
        } else if *s > starts[grow_idx] {
            // Everything physically after the growing partition moves up.
            start += delta;
        }
        if start.saturating_add(size) > new_end {
            return Err(PlanError::TooSmall(Box::new(TooSmall {
                disk: d.id.clone(),
                need: human(start + size + (t.size - new_end)),
                why: format!("partition {} ends at {}", p.id, start + size),
                target: t.name.clone(),
                have: human(t.size),
                short: human(start + size - new_end),
            })));
        }
        let sector = u64::from(t.sector_size);
        if start % sector != 0 || size % sector != 0 {
            return Err(PlanError::Misaligned { item: p.id.clone(), target: t.name.clone(), sector: t.sector_size });
        }
        out.push(Placed { part: p, start, size, grown: (i == grow_idx || (grow_logical && is_ext)) && size > p.size });
    }
    Ok(out)
}

/// The sfdisk script for a disk's partitions on the target.
fn sfdisk_script(d: &Disk, target: &str, placed: &[Placed<'_>], sector: u64) -> String {
    let mut s = String::new();
    let label = if d.ptable == PtableType::Gpt { "gpt" } else { "dos" };
    let _ = writeln!(s, "label: {label}");
    if let Some(id) = &d.ptable_id {
        let _ = writeln!(s, "label-id: {id}");
    }
    let _ = writeln!(s, "unit: sectors");
    let _ = writeln!(s, "sector-size: {sector}");
    let _ = writeln!(s);
    for p in placed {
        let mut fields = vec![
            format!("start={}", p.start / sector),
            format!("size={}", p.size / sector),
            format!("type={}", p.part.part_type),
        ];
        if let Some(u) = &p.part.uuid {
            fields.push(format!("uuid={u}"));
        }
        if let Some(n) = &p.part.name {
            fields.push(format!("name=\"{}\"", n.replace('"', "")));
        }
        if let Some(a) = &p.part.attrs {
            fields.push(format!("attrs=\"{}\"", a.replace('"', "")));
        }
        if p.part.flags.contains(&PartFlag::Boot) && d.ptable == PtableType::Msdos {
            fields.push("bootable".into());
        }
        let _ = writeln!(s, "{} : {}", part_dev(target, p.part.number), fields.join(", "));
    }
    s
}

/// The ext4/xfs/vfat/btrfs/swap command that makes a format, with its recorded identity.
pub fn mkfs_argv(f: &Format, dev: &str) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let push = |a: &mut Vec<String>, s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    match f.fstype {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
            push(&mut a, &[&format!("mkfs.{}", f.fstype.name()), "-F", "-q"]);
            if let Some(u) = &f.uuid {
                push(&mut a, &["-U", u]);
            }
            if let Some(l) = &f.label {
                push(&mut a, &["-L", l]);
            }
            if let Some(e) = &f.ext {
                if let Some(n) = e.inode_size {
                    push(&mut a, &["-I", &n.to_string()]);
                }
                if let Some(n) = e.block_size {
                    push(&mut a, &["-b", &n.to_string()]);
                }
                if !e.features.is_empty() {
                    // "none" first: exactly the recorded features, whatever this mke2fs's
                    // defaults are.
                    push(&mut a, &["-O", &format!("none,{}", e.features.join(","))]);
                }
            }
        }
        FsType::Xfs => {
            push(&mut a, &["mkfs.xfs", "-f", "-q"]);
            let mut m: Vec<String> = f.uuid.iter().map(|u| format!("uuid={u}")).collect();
            let mut i: Vec<String> = Vec::new();
            if let Some(x) = &f.xfs {
                for (k, v) in &x.options {
                    if k == "sparse" {
                        i.push(format!("sparse={v}"));
                    } else {
                        m.push(format!("{k}={v}"));
                    }
                }
                if let Some(n) = x.inode_size {
                    i.insert(0, format!("size={n}"));
                }
                if let Some(n) = x.block_size {
                    push(&mut a, &["-b", &format!("size={n}")]);
                }
            }
            if !m.is_empty() {
                push(&mut a, &["-m", &m.join(",")]);
            }
            if !i.is_empty() {
                push(&mut a, &["-i", &i.join(",")]);
            }
            if let Some(l) = &f.label {
                push(&mut a, &["-L", l]);
            }
        }
        FsType::Vfat => {
            push(&mut a, &["mkfs.vfat"]);
            if let Some(n) = f.vfat.as_ref().and_then(|v| v.fat_size) {
                push(&mut a, &["-F", &n.to_string()]);
            }
            if let Some(u) = &f.uuid {
                push(&mut a, &["-i", &u.replace('-', "")]);
            }
            if let Some(l) = &f.label {
                push(&mut a, &["-n", l]);
            }
        }
        FsType::Btrfs => {
            push(&mut a, &["mkfs.btrfs", "-f", "-q"]);
            if let Some(u) = &f.uuid {
                push(&mut a, &["-U", u]);
            }
            if let Some(l) = &f.label {
                push(&mut a, &["-L", l]);
            }
        }
        FsType::Swap => {
            push(&mut a, &["mkswap", "-f"]);
            if let Some(u) = &f.uuid {
                push(&mut a, &["-U", u]);
            }
            if let Some(l) = &f.label {
                push(&mut a, &["-L", l]);
            }
        }
    }
    a.push(dev.to_string());
    a
}

/// LVM text metadata for vgcfgrestore: the VG with its recorded VG, PV and LV UUIDs,
/// `pv_sizes[i]` the byte size of PV `i`'s device on the target and `lv_sizes` each LV's
/// final size, LVs allocated linearly in document order across the PVs.
pub fn render_vg_metadata(
    vg: &VolumeGroup,
    pv_devices: &[String],
    pv_sizes: &[u64],
    lvs: &[(&LogicalVolume, u64)],
) -> Result<String, PlanError> {
    let ext = vg.extent_size;
    let mut s = String::new();
    let _ = writeln!(s, "# understudy: {} as recorded, for vgcfgrestore", vg.name);
    let _ = writeln!(s, "{} {{", vg.name);
    let _ = writeln!(s, "\tid = \"{}\"", vg.uuid);
    let _ = writeln!(s, "\tseqno = 1");
    let _ = writeln!(s, "\tformat = \"lvm2\"");
    let _ = writeln!(s, "\tstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]");
    let _ = writeln!(s, "\tflags = []");
    let _ = writeln!(s, "\textent_size = {}", ext / 512);
    let _ = writeln!(s, "\tmax_lv = 0\n\tmax_pv = 0\n\tmetadata_copies = 0\n");
    let _ = writeln!(s, "\tphysical_volumes {{\n");
    let mut free: Vec<(usize, u64, u64)> = Vec::new(); // (pv index, next extent, pe_count)
    for (i, pv) in vg.devices.iter().enumerate() {
        let size = pv_sizes.get(i).copied().unwrap_or(0);
        let count = size.saturating_sub(pv.pe_start) / ext;
        free.push((i, 0, count));
        let _ = writeln!(s, "\t\tpv{i} {{");
        let _ = writeln!(s, "\t\t\tid = \"{}\"", pv.uuid);
        let _ = writeln!(s, "\t\t\tdevice = \"{}\"", pv_devices.get(i).map(String::as_str).unwrap_or(""));
        let _ = writeln!(s, "\t\t\tstatus = [\"ALLOCATABLE\"]\n\t\t\tflags = []");
        let _ = writeln!(s, "\t\t\tdev_size = {}", size / 512);
        let _ = writeln!(s, "\t\t\tpe_start = {}", pv.pe_start / 512);
        let _ = writeln!(s, "\t\t\tpe_count = {count}");
        let _ = writeln!(s, "\t\t}}\n");
    }
    let _ = writeln!(s, "\t}}\n\n\tlogical_volumes {{\n");
    let mut pv = 0;
    for (lv, size) in lvs {
        let mut need = size / ext;
        let mut segs: Vec<(u64, u64, usize, u64)> = Vec::new(); // (start_extent, count, pv, pv extent)
        let mut le = 0;
        while need > 0 {
            let Some(f) = free.get_mut(pv) else {
                return Err(PlanError::VgTooSmall {
                    vg: vg.name.clone(),
                    need: human(lvs.iter().map(|(_, s)| *s).sum()),
                    have: human(free.iter().map(|f| f.2 * ext).sum()),
                    short: human(need * ext),
                });
            };
            let take = need.min(f.2 - f.1);
            if take == 0 {
                pv += 1;
                continue;
            }
            segs.push((le, take, f.0, f.1));
            f.1 += take;
            le += take;
            need -= take;
        }
        let _ = writeln!(s, "\t\t{} {{", lv.name);
        let _ = writeln!(s, "\t\t\tid = \"{}\"", lv.uuid);
        let _ = writeln!(s, "\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []");
        let _ = writeln!(s, "\t\t\tsegment_count = {}\n", segs.len());
        for (n, (start, count, p, at)) in segs.iter().enumerate() {
            let _ = writeln!(s, "\t\t\tsegment{} {{", n + 1);
            let _ = writeln!(s, "\t\t\t\tstart_extent = {start}\n\t\t\t\textent_count = {count}\n");
            let _ = writeln!(s, "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n");
            let _ = writeln!(s, "\t\t\t\tstripes = [\n\t\t\t\t\t\"pv{p}\", {at}\n\t\t\t\t]");
            let _ = writeln!(s, "\t\t\t}}");
        }
        let _ = writeln!(s, "\t\t}}\n");
    }
    let _ = writeln!(s, "\t}}\n}}\n");
    let _ = writeln!(s, "contents = \"Text Format Volume Group\"\nversion = 1\n");
    let _ = writeln!(s, "description = \"understudy replay of {}\"\n", vg.name);
    let _ = writeln!(s, "creation_host = \"understudy\"\ncreation_time = 0");
    Ok(s)
}

/// Each LV of `vg` with its size on PVs of `pv_sizes` bytes (in the VG's PV order): as
/// recorded, except that the LV marked `grow` (else the last one) takes the extents the
/// PVs hold beyond what they held when recorded. Errors when the recorded LVs do not fit.
pub fn size_lvs<'a>(
    layout: &'a Layout,
    vg: &VolumeGroup,
    pv_sizes: &[u64],
) -> Result<Vec<(&'a LogicalVolume, u64)>, PlanError> {
    let cap: u64 = vg
        .devices
        .iter()
        .zip(pv_sizes)
        .map(|(p, s)| s.saturating_sub(p.pe_start) / vg.extent_size * vg.extent_size)
        .sum();
    // The grow LV takes the extents the target adds, not the VG's recorded free space.
    let extra = cap.saturating_sub(layout.vg_capacity(vg).unwrap_or(cap));
    let lvs = layout.lvs_of(&vg.id);
    let grow = lvs.iter().position(|l| l.grow).or(lvs.len().checked_sub(1));
    let recorded: u64 = lvs.iter().map(|l| l.size).sum();
    if cap < recorded {
        return Err(PlanError::VgTooSmall {
            vg: vg.name.clone(),
            need: human(recorded),
            have: human(cap),
            short: human(recorded - cap),
        });
    }
    Ok(lvs.iter().enumerate().map(|(i, l)| (*l, if Some(i) == grow { l.size + extra } else { l.size })).collect())
}

/// The vgcfgrestore metadata for `vg` on PV devices of measured sizes: what the agent
/// writes right before `pvcreate`, once the PVs (md arrays in particular) exist and
/// `blockdev --getsize64` has told their exact sizes. The plan shows the same file
/// rendered with its estimated sizes.
pub fn vg_metadata(
    layout: &Layout,
    vg: &VolumeGroup,
    pv_devices: &[String],
    pv_sizes: &[u64],
) -> Result<String, PlanError> {
    let sized = size_lvs(layout, vg, pv_sizes)?;
    render_vg_metadata(vg, pv_devices, pv_sizes, &sized)
}

/// Items in dependency order (what an item refers to comes before it).
fn ordered_raids(layout: &Layout) -> Vec<&Raid> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    let raids: Vec<&Raid> = layout.raids().collect();
    while out.len() < raids.len() {
        let before = out.len();
        for r in &raids {
            if done.contains(r.id.as_str()) {
                continue;
            }
            let ready = r
                .devices
                .iter()
                .chain(&r.spare_devices)
                .all(|d| !matches!(layout.index().get(d), Some(Item::Raid(_))) || done.contains(d.as_str()));
            if ready {
                done.insert(&r.id);
                out.push(*r);
            }
        }
        if out.len() == before {
            break; // a cycle; validation has refused it already
        }
    }
    out
}

/// Plan `layout` onto `targets`, mounting the new tree under `mount_dir`.
pub fn plan(layout: &Layout, targets: &[TargetDisk], mount_dir: &str) -> Result<Plan, PlanError> {
    plan_where(layout, targets, mount_dir, TargetDisk::usable)
}

/// [`plan`] onto disks the admin chose (`understudy.disk=`): every target that is
/// [`TargetDisk::writable`] may be used, loop and other virtual devices included.
pub fn plan_chosen(layout: &Layout, targets: &[TargetDisk], mount_dir: &str) -> Result<Plan, PlanError> {
    plan_where(layout, targets, mount_dir, TargetDisk::writable)
}

fn plan_where(
    layout: &Layout,
    targets: &[TargetDisk],
    mount_dir: &str,
    usable: fn(&TargetDisk) -> bool,
) -> Result<Plan, PlanError> {
    layout.validate()?;
    for it in &layout.items {
        if let Item::LvmPartition(l) = it
            && l.kind != LvKind::Linear
        {
            return Err(PlanError::Unsupported {
                item: l.id.clone(),
                what: "thin pools and thin LVs are recorded but not replayed (their data and metadata cannot be rebuilt as recorded)".into(),
            });
        }
    }
    let disks = map_disks_where(layout, targets, usable)?;
    let by_name: BTreeMap<String, &TargetDisk> = targets.iter().map(|t| (t.path(), t)).collect();
    let mut dev: BTreeMap<String, String> = BTreeMap::new();
    let mut size: BTreeMap<String, u64> = BTreeMap::new();
    let mut volumes = Vec::new();
    let mut steps = Vec::new();
    let mut bootloader_disks = Vec::new();

    // Disks and partitions.
    let mut partition_steps = Vec::new();
    for m in &disks {
        let (Some(d), Some(t)) = (layout.disks().find(|d| d.id == m.disk), by_name.get(&m.target)) else { continue };
        dev.insert(d.id.clone(), m.target.clone());
        size.insert(d.id.clone(), t.size);
        if d.grub_device {
            bootloader_disks.push(m.target.clone());
        }
        steps.push(run(format!("clear old signatures on {}", m.target), &["wipefs", "--all", "--force", &m.target]));
        let placed = place_partitions(layout, d, t)?;
        if placed.is_empty() {
            continue;
        }
        let script = sfdisk_script(d, &m.target, &placed, u64::from(t.sector_size));
        partition_steps.push(Step::Run {
            what: format!(
                "partition {} ({}) as recorded for {}",
                m.target,
                if d.ptable == PtableType::Gpt { "gpt" } else { "msdos" },
                d.id
            ),
            argv: ["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", &m.target]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            input: Some(script),
        });
        for p in &placed {
            let path = part_dev(&m.target, p.part.number);
            dev.insert(p.part.id.clone(), path.clone());
            size.insert(p.part.id.clone(), p.size);
            volumes.push(Volume {
                id: p.part.id.clone(),
                kind: "partition".into(),
                device: path.clone(),
                recorded_size: p.part.size,
                size: p.size,
                grown: p.grown,
            });
            if !p.part.flags.contains(&PartFlag::Extended) {
                partition_steps
                    .push(run(format!("clear old signatures on {path}"), &["wipefs", "--all", "--force", &path]));
            }
        }
    }
    steps.extend(partition_steps);

    // md arrays.
    for r in ordered_raids(layout) {
        let members: Vec<String> =
            r.devices.iter().chain(&r.spare_devices).filter_map(|d| dev.get(d).cloned()).collect();
        let path = format!("/dev/md/{}", r.name);
        let min_new = r.devices.iter().filter_map(|d| size.get(d)).min().copied().unwrap_or(0);
        let min_old = r.devices.iter().filter_map(|d| layout.volume_size(d)).min().unwrap_or(0);
        let n = r.devices.len() as u64;
        let recorded = layout.volume_size(&r.id).unwrap_or(0);
        // Keep the recorded superblock overhead; scale the members' change by the level.
        let new = if min_new >= min_old {
            recorded + raid_size(r.level, n, min_new - min_old)
        } else {
            recorded.saturating_sub(raid_size(r.level, n, min_old - min_new))
        };
        let mut argv: Vec<String> = [
            "mdadm",
            "--create",
            &path,
            "--run",
            &format!("--metadata={}", r.metadata),
            &format!("--level={}", u8::from(r.level)),
            &format!("--raid-devices={}", r.devices.len()),
            &format!("--uuid={}", r.uuid),
            // The members are new partitions: nothing on them is worth a resync, which
            // would copy every block of the first member over the second while the image
            // streams (and, on RAID1 of a just-zeroed disk, keep it busy for hours).
            "--assume-clean",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match r.md_name.as_deref().and_then(|n| n.split_once(':')) {
            Some((host, name)) => {
                argv.push(format!("--homehost={host}"));
                argv.push(format!("--name={name}"));
            }
            None => {
                // No host part: keep the boot environment's hostname out of the name.
                argv.push("--homehost=<none>".into());
                argv.push(format!("--name={}", r.md_name.as_deref().unwrap_or(&r.name)));
            }
        }
        if !r.spare_devices.is_empty() {
            argv.push(format!("--spare-devices={}", r.spare_devices.len()));
        }
        argv.extend(members);
        steps.push(Step::Run {
            what: format!("create RAID{} {} ({})", u8::from(r.level), path, r.id),
            argv,
            input: None,
        });
        dev.insert(r.id.clone(), path.clone());
        size.insert(r.id.clone(), new);
        volumes.push(Volume {
            id: r.id.clone(),
            kind: "raid".into(),
            device: path,
            recorded_size: recorded,
            size: new,
            grown: new > recorded,
        });
    }

    // LVM.
    for vg in layout.volgroups() {
        let pv_devices: Vec<String> = vg.devices.iter().filter_map(|p| dev.get(&p.device).cloned()).collect();
        let pv_sizes: Vec<u64> = vg.devices.iter().map(|p| size.get(&p.device).copied().unwrap_or(0)).collect();
        let sized = size_lvs(layout, vg, &pv_sizes)?;
        let file = format!("{LVM_DIR}/{}.vg", vg.name);
        let content = render_vg_metadata(vg, &pv_devices, &pv_sizes, &sized)?;
        steps.push(Step::Write {
            what: format!("LVM metadata of {} (UUIDs as recorded)", vg.name),
            path: file.clone(),
            content,
        });
        for (pv, path) in vg.devices.iter().zip(&pv_devices) {
            steps.push(run(
                format!("physical volume {} on {path}", pv.uuid),
                &["pvcreate", "--yes", "--force", "--uuid", &pv.uuid, "--restorefile", &file, path],
            ));
        }
        steps.push(run(format!("restore volume group {}", vg.name), &["vgcfgrestore", "--file", &file, &vg.name]));
        steps.push(run(format!("activate {}", vg.name), &["vgchange", "--activate", "y", &vg.name]));
        for (l, s) in &sized {
            let path = lv_dev(&vg.name, &l.name);
            dev.insert(l.id.clone(), path.clone());
            size.insert(l.id.clone(), *s);
            volumes.push(Volume {
                id: l.id.clone(),
                kind: "lvm_partition".into(),
                device: path,
                recorded_size: l.size,
                size: *s,
                grown: *s > l.size,
            });
        }
    }

    // Filesystems and swap.
    for f in layout.formats() {
        let Some(path) = dev.get(&f.volume) else { continue };
        let what = match (&f.uuid, &f.label) {
            (Some(u), Some(l)) => format!("{} on {path}, UUID {u}, label {l}", f.fstype.name()),
            (Some(u), None) => format!("{} on {path}, UUID {u}", f.fstype.name()),
            (None, Some(l)) => format!("{} on {path}, new UUID, label {l}", f.fstype.name()),
            (None, None) => format!("{} on {path}, new UUID", f.fstype.name()),
        };
        steps.push(Step::Run { what, argv: mkfs_argv(f, path), input: None });
    }

    // Mounts, parents first.
    let root = mount_dir.trim_end_matches('/');
    let formats: BTreeMap<&str, &Format> = layout.formats().map(|f| (f.id.as_str(), f)).collect();
    for m in layout.mounts() {
        let Some(f) = formats.get(m.device.as_str()) else { continue };
        let Some(path) = dev.get(&f.volume) else { continue };
        let at = if m.path == "/" { root.to_string() } else { format!("{root}{}", m.path) };
        steps.push(run(format!("mount point {}", m.path), &["mkdir", "-p", &at]));
        steps.push(run(
            format!("mount {} at {}", f.fstype.name(), m.path),
            &["mount", "-t", f.fstype.name(), "-o", &m.options, path, &at],
        ));
    }
    Ok(Plan { disks, volumes, bootloader_disks, steps })
}

/// An argument as a shell would need it quoted, for display.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Plan {
    /// The plan as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The plan as text for people (`understudy nodes plan NODE`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Disks:");
        for d in &self.disks {
            let _ = writeln!(
                s,
                "  {} ({}) -> {} ({}), matched by {}",
                d.disk,
                human(d.recorded_size),
                d.target,
                human(d.target_size),
                d.matched_by
            );
        }
        let _ = writeln!(s, "Volumes:");
        for v in &self.volumes {
            let grown = if v.grown { format!(" (grown from {})", human(v.recorded_size)) } else { String::new() };
            let _ = writeln!(s, "  {:<13} {:<20} {:<24} {}{grown}", v.kind, v.id, v.device, human(v.size));
        }
        if !self.bootloader_disks.is_empty() {
            let _ = writeln!(s, "BIOS bootloader on: {}", self.bootloader_disks.join(", "));
        }
        let _ = writeln!(s, "Steps:");
        for (i, st) in self.steps.iter().enumerate() {
            match st {
                Step::Run { what, argv, input } => {
                    let cmd = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
                    let _ = writeln!(s, "  {:>2}. {what}\n      $ {cmd}", i + 1);
                    if let Some(text) = input {
                        for l in text.lines() {
                            let _ = writeln!(s, "      < {l}");
                        }
                    }
                }
                Step::Write { what, path, content } => {
                    let _ =
                        writeln!(s, "  {:>2}. {what}\n      write {path} ({} lines)", i + 1, content.lines().count());
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::doc::{DEFAULT_DISK_SIZE, default_layout};
    use crate::layout::probe;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, size: u64) -> TargetDisk {
        TargetDisk {
            name: name.into(),
            size,
            sector_size: 512,
            serial: None,
            wwn: None,
            model: None,
            removable: false,
            read_only: false,
        }
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/layout/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The RAID1 + LVM layout captured from the fixtures.
    fn raid_lvm() -> Layout {
        let mut p = probe::Probe {
            root: "/".into(),
            mounts: probe::parse_findmnt(&fixture("findmnt-raid-lvm.json")).unwrap(),
            devices: probe::parse_lsblk(&fixture("lsblk-raid-lvm.json")).unwrap(),
            blkid: probe::parse_blkid(&fixture("blkid-raid-lvm.txt")).unwrap(),
            pvs: probe::parse_pvs(&fixture("pvs.json")).unwrap(),
            vgs: probe::parse_vgs(&fixture("vgs.json")).unwrap(),
            lvs: probe::parse_lvs(&fixture("lvs.json")).unwrap(),
            boot: probe::BootFacts { grub_pc: true, ..Default::default() },
            ..Default::default()
        };
        p.tables.insert("/dev/vda".into(), probe::parse_sfdisk(&fixture("sfdisk-raid-vda.json")).unwrap());
        p.tables.insert("/dev/vdb".into(), probe::parse_sfdisk(&fixture("sfdisk-raid-vdb.json")).unwrap());
        p.md.insert("/dev/md0".into(), probe::parse_mdadm(&fixture("mdadm-md0.txt")).unwrap());
        p.ext.insert("/dev/mapper/vg0-root".into(), probe::parse_dumpe2fs(&fixture("dumpe2fs-root.txt")).unwrap());
        p.xfs.insert("/dev/mapper/vg0-var".into(), probe::parse_xfs_info(&fixture("xfs_info-var.txt")).unwrap());
        probe::assemble(&p).unwrap()
    }

    /// An msdos layout from the real sfdisk fixture, with filesystems on it.
    fn msdos() -> Layout {
        let t = probe::parse_sfdisk(&fixture("sfdisk-msdos.json")).unwrap();
        let mut items = vec![Item::Disk(Disk {
            id: "sda".into(),
            hints: Default::default(),
            size: 512 * MIB,
            sector_size: 512,
            ptable: PtableType::Msdos,
            ptable_id: t.id.clone(),
            grub_device: true,
        })];
        for p in &t.partitions {
            let number = probe::partition_number(&p.node).unwrap();
            let mut flags = vec![];
            if p.part_type == "5" {
                flags.push(PartFlag::Extended);
            }
            if p.bootable {
                flags.push(PartFlag::Boot);
            }
            items.push(Item::Partition(Partition {
                id: format!("sda{number}"),
                device: "sda".into(),
                number,
                start: Some(p.start * 512),
                size: p.size * 512,
                part_type: p.part_type.clone(),
                name: None,
                uuid: None,
                attrs: None,
                flags,
                grow: false,
            }));
        }
        let fs = |id: &str, vol: &str, t: FsType, uuid: &str| {
            Item::Format(Format {
                id: id.into(),
                volume: vol.into(),
                fstype: t,
                uuid: Some(uuid.into()),
                label: None,
                ext: None,
                xfs: None,
                vfat: None,
            })
        };
        items.push(fs("fs1", "sda1", FsType::Ext4, "11111111-2222-4333-8444-555555555555"));
        items.push(fs("fs2", "sda2", FsType::Swap, "66666666-2222-4333-8444-555555555555"));
        items.push(fs("fs5", "sda5", FsType::Ext4, "77777777-2222-4333-8444-555555555555"));
        items.push(Item::Mount(crate::layout::doc::Mount {
            id: "m1".into(),
            device: "fs1".into(),
            path: "/".into(),
            options: "defaults".into(),
        }));
        items.push(Item::Mount(crate::layout::doc::Mount {
            id: "m5".into(),
            device: "fs5".into(),
            path: "/home".into(),
            options: "nodev".into(),
        }));
        let l = Layout {
            version: 1,
            boot_mode: crate::layout::doc::BootMode::Bios,
            bootloader: crate::layout::doc::Bootloader::GrubPc,
            items,
        };
        l.validate().unwrap();
        l
    }

    fn argvs(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Run { argv, .. } => Some(argv.join(" ")),
                Step::Write { .. } => None,
            })
            .collect()
    }

    fn input_of<'a>(p: &'a Plan, target: &str) -> &'a str {
        p.steps
            .iter()
            .find_map(|s| match s {
                Step::Run { argv, input: Some(i), .. } if argv.last().map(String::as_str) == Some(target) => {
                    Some(i.as_str())
                }
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn default_layout_on_a_blank_disk() {
        let l = default_layout(DEFAULT_DISK_SIZE);
        let p = plan(&l, &[disk("sr0", GIB), disk("vda", 20 * GIB)], "/mnt/target").unwrap();
        assert_eq!(p.disks.len(), 1);
        assert_eq!(p.disks[0].target, "/dev/vda");
        let root = p.volumes.iter().find(|v| v.id == "root").unwrap();
        assert!(root.grown);
        // 20 GiB less 1 MiB in front, the BIOS boot and ESP partitions, and the GPT tail
        // rounded to a whole MiB.
        assert_eq!(root.size, 20 * GIB - 259 * MIB);
        let script = input_of(&p, "/dev/vda");
        assert!(script.starts_with("label: gpt\n"), "{script}");
        assert!(
            script.contains(
                "/dev/vda1 : start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\""
            ),
            "{script}"
        );
        assert!(script.contains("/dev/vda3 : start=528384, size=41412608, type=0FC63DAF"), "{script}");
        let a = argvs(&p);
        assert!(a.contains(&"mkfs.vfat -F 32 -n EFI /dev/vda2".to_string()), "{a:?}");
        assert!(a.contains(&"mkfs.ext4 -F -q -L root /dev/vda3".to_string()), "{a:?}");
        let mounts: Vec<&String> = a.iter().filter(|s| s.starts_with("mount ")).collect();
        assert_eq!(
            mounts,
            [
                "mount -t ext4 -o defaults /dev/vda3 /mnt/target",
                "mount -t vfat -o umask=0077 /dev/vda2 /mnt/target/boot/efi"
            ]
        );
        assert_eq!(p.bootloader_disks, ["/dev/vda"]);
        let text = p.render();
        assert!(text.contains("partition     root"), "{text}");
        assert!(text.contains("(grown from"), "{text}");
        assert!(text.contains("$ sfdisk --quiet --wipe always --wipe-partitions always /dev/vda"), "{text}");
        let j: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(j["steps"][0]["op"], "run");
        assert_eq!(j["disks"][0]["target"], "/dev/vda");
    }

    #[test]
    fn gpt_same_size_keeps_everything() {
        let l = raid_lvm();
        let p = plan(&l, &[disk("vdb", 20 * GIB), disk("vda", 20 * GIB)], "/t").unwrap();
        let maps: Vec<(&str, &str)> = p.disks.iter().map(|d| (d.disk.as_str(), d.target.as_str())).collect();
        assert_eq!(maps, [("vda", "/dev/vda"), ("vdb", "/dev/vdb")]);
        assert!(p.volumes.iter().all(|v| !v.grown && v.size == v.recorded_size), "{:?}", p.volumes);
        let script = input_of(&p, "/dev/vda");
        assert!(script.contains("label-id: 7A3F2C10-0D4E-4B8A-9C61-000000000001"), "{script}");
        assert!(
            script.contains("/dev/vda2 : start=4096, size=41936896, type=A19D880F-05FC-4D3B-A006-743F0F84911E, uuid=5D1E0A00-0000-4000-8000-000000000012, name=\"raid\""),
            "{script}"
        );
        assert_eq!(p.bootloader_disks, ["/dev/vda", "/dev/vdb"]);
    }

    #[test]
    fn two_disk_raid1_lvm_steps() {
        let l = raid_lvm();
        let p = plan(&l, &[disk("vda", 20 * GIB), disk("vdb", 20 * GIB)], "/mnt/target").unwrap();
        let a = argvs(&p);
        let mdadm = a.iter().find(|s| s.starts_with("mdadm")).unwrap();
        assert_eq!(
            mdadm,
            "mdadm --create /dev/md/0 --run --metadata=1.2 --level=1 --raid-devices=2 --uuid=3b4d0b4a:1c2b8d9e:5f6a7b8c:9d0e1f2a --assume-clean --homehost=head-a --name=0 /dev/vda2 /dev/vdb2"
        );
        assert!(a.contains(
            &"pvcreate --yes --force --uuid pV7Rk2-Yc3D-8fQe-Lm1N-4sTb-Hx9W-zJ0aUg --restorefile /run/understudy/lvm/vg0.vg /dev/md/0"
                .to_string()
        ));
        assert!(a.contains(&"vgcfgrestore --file /run/understudy/lvm/vg0.vg vg0".to_string()));
        assert!(
            a.contains(&"mkswap -f -U 2b7c9e4d-5a6f-4e3b-8c1d-0e9f8a7b6c03 -L swap /dev/mapper/vg0-swap".to_string())
        );
        let xfs = a.iter().find(|s| s.starts_with("mkfs.xfs")).unwrap();
        assert_eq!(
            xfs,
            "mkfs.xfs -f -q -b size=4096 -m uuid=8d2e6b10-4c3a-4f5e-9b7d-1a2c3e4f5a02,bigtime=1,crc=1,finobt=1,inobtcount=1,reflink=1,rmapbt=0 -i size=512,sparse=1 -L var /dev/mapper/vg0-var"
        );
        let ext = a.iter().find(|s| s.starts_with("mkfs.ext4")).unwrap();
        assert!(
            ext.starts_with(
                "mkfs.ext4 -F -q -U 6f1c8c47-2b8e-4d4a-9a51-2f0e7d6c5b01 -L root -I 256 -b 1024 -O none,has_journal,"
            ),
            "{ext}"
        );
        // Order: partitions, then md, then LVM, then mkfs, then mounts.
        let pos = |prefix: &str| a.iter().position(|s| s.starts_with(prefix)).unwrap();
        assert!(pos("sfdisk") < pos("mdadm") && pos("mdadm") < pos("pvcreate"));
        assert!(pos("vgcfgrestore") < pos("vgchange") && pos("vgchange") < pos("mkfs.ext4"));
        assert!(pos("mkswap") < pos("mount -t ext4") && pos("mount -t ext4") < pos("mount -t xfs"));
        let meta = p
            .steps
            .iter()
            .find_map(|s| if let Step::Write { content, .. } = s { Some(content.clone()) } else { None })
            .unwrap();
        assert!(meta.contains("id = \"Jx3qMb-5Hc8-9Lf2-Kd7a-Pq4r-Wz1y-Nb6e0T\""), "{meta}");
        assert!(meta.contains("extent_size = 8192"), "{meta}");
        assert!(meta.contains("pe_count = 5114"), "{meta}");
        // root 8 GiB = 2048 extents, swap 512, var 1536 (the VG's free extents stay free).
        assert!(meta.contains("extent_count = 2048"), "{meta}");
        assert!(meta.contains("extent_count = 1536"), "{meta}");
        assert!(meta.contains("\"pv0\", 2560"), "{meta}");
    }

    #[test]
    fn larger_disks_grow_the_last_partition_and_lv() {
        let l = raid_lvm();
        let p = plan(&l, &[disk("vda", 30 * GIB), disk("vdb", 30 * GIB)], "/t").unwrap();
        let v: BTreeMap<&str, &Volume> = p.volumes.iter().map(|v| (v.id.as_str(), v)).collect();
        assert!(v["vda2"].grown && v["vdb2"].grown);
        assert_eq!(v["vda2"].size, v["vda2"].recorded_size + 10 * GIB);
        assert!(!v["vda1"].grown);
        assert_eq!(v["md0"].size, v["md0"].recorded_size + 10 * GIB);
        // The last LV (var) takes the new extents; root and swap keep their sizes.
        assert_eq!(v["lvm-vg0-root"].size, 8 * GIB);
        assert_eq!(v["lvm-vg0-swap"].size, 2 * GIB);
        assert!(v["lvm-vg0-var"].grown);
        assert_eq!(v["lvm-vg0-var"].size, v["lvm-vg0-var"].recorded_size + 10 * GIB);
        // A marked LV grows instead.
        let mut l2 = l.clone();
        for it in &mut l2.items {
            if let Item::LvmPartition(x) = it
                && x.name == "root"
            {
                x.grow = true;
            }
        }
        let p = plan(&l2, &[disk("vda", 30 * GIB), disk("vdb", 30 * GIB)], "/t").unwrap();
        let v: BTreeMap<&str, &Volume> = p.volumes.iter().map(|v| (v.id.as_str(), v)).collect();
        assert!(v["lvm-vg0-root"].grown && !v["lvm-vg0-var"].grown);
    }

    #[test]
    fn a_marked_partition_in_the_middle_grows_and_the_rest_moves() {
        let mut l = default_layout(DEFAULT_DISK_SIZE);
        for it in &mut l.items {
            if let Item::Partition(x) = it {
                x.grow = x.id == "esp";
            }
        }
        let p = plan(&l, &[disk("vda", DEFAULT_DISK_SIZE + GIB)], "/t").unwrap();
        let v: BTreeMap<&str, &Volume> = p.volumes.iter().map(|v| (v.id.as_str(), v)).collect();
        assert_eq!(v["esp"].size, 256 * MIB + GIB);
        assert_eq!(v["root"].size, v["root"].recorded_size);
        let script = input_of(&p, "/dev/vda");
        assert!(script.contains(&format!("/dev/vda3 : start={}", (258 * MIB + GIB) / 512)), "{script}");
    }

    #[test]
    fn smaller_disk_is_an_error_naming_what_does_not_fit() {
        let l = raid_lvm();
        let e = plan(&l, &[disk("vda", 10 * GIB), disk("vdb", 20 * GIB)], "/t").unwrap_err().to_string();
        assert_eq!(
            e,
            "disk vdb needs 20.00 GiB (partition vdb2 ends at 21473787904); the largest free target disk vda has 10 GiB: 10.00 GiB short"
        );
        let l = default_layout(DEFAULT_DISK_SIZE);
        let e = plan(&l, &[disk("sda", 2 * GIB)], "/t").unwrap_err();
        assert!(matches!(&e, PlanError::TooSmall(t) if t.disk == "disk0"), "{e}");
        assert!(e.to_string().contains("partition root ends at"), "{e}");
    }

    #[test]
    fn missing_second_disk_for_raid1() {
        let l = raid_lvm();
        let mut usb = disk("sdb", 20 * GIB);
        usb.removable = true;
        let e = plan(&l, &[disk("vda", 20 * GIB), usb], "/t").unwrap_err().to_string();
        assert_eq!(
            e,
            "disk vdb (20 GiB, holding vdb1, vdb2) has no target disk: the target has 1 usable disk(s) for 2 recorded (vda 20 GiB)"
        );
    }

    #[test]
    fn matching_prefers_identity_then_best_fit() {
        let mut l = default_layout(DEFAULT_DISK_SIZE);
        for it in &mut l.items {
            if let Item::Disk(d) = it {
                d.hints.serial = Some("S-2".into());
            }
        }
        let mut b = disk("sdb", 100 * GIB);
        b.serial = Some("S-2".into());
        let p = plan(&l, &[disk("sda", 8 * GIB), b.clone()], "/t").unwrap();
        assert_eq!((p.disks[0].target.as_str(), p.disks[0].matched_by), ("/dev/sdb", "serial"));
        // Without hints: the smallest disk that fits, name order among equals.
        let l = default_layout(DEFAULT_DISK_SIZE);
        let p = plan(&l, &[disk("sdc", 100 * GIB), disk("sdb", 8 * GIB), disk("sda", 8 * GIB)], "/t").unwrap();
        assert_eq!(p.disks[0].target, "/dev/sda");
    }

    #[test]
    fn msdos_layout_with_logical_partition() {
        let l = msdos();
        let p = plan(&l, &[disk("sda", 512 * MIB)], "/t").unwrap();
        let script = input_of(&p, "/dev/sda");
        assert!(script.starts_with("label: dos\nlabel-id: 0x5e1c0b2a\n"), "{script}");
        assert!(script.contains("/dev/sda1 : start=2048, size=614400, type=83, bootable"), "{script}");
        assert!(script.contains("/dev/sda3 : start=747520, size=301056, type=5"), "{script}");
        assert!(script.contains("/dev/sda5 : start=749568, size=299008, type=83"), "{script}");
        assert!(!script.contains("uuid="));
        // Larger: the last (logical) partition grows, and its extended partition with it.
        let p = plan(&l, &[disk("sda", GIB)], "/t").unwrap();
        let v: BTreeMap<&str, &Volume> = p.volumes.iter().map(|v| (v.id.as_str(), v)).collect();
        assert_eq!(v["sda5"].size, GIB - 749568 * 512);
        assert_eq!(v["sda3"].size, GIB - 747520 * 512);
        assert_eq!(v["sda1"].size, v["sda1"].recorded_size);
        assert!(!argvs(&p).iter().any(|a| a == "wipefs --all --force /dev/sda3"), "the extended partition holds EBRs");
    }

    #[test]
    fn the_example_document_is_the_captured_raid1_lvm_layout() {
        // tests/fixtures/layout/layout-raid1-lvm.json is what `images layout --from` takes.
        let path = format!("{}/tests/fixtures/layout/layout-raid1-lvm.json", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UNDERSTUDY_WRITE_FIXTURES").is_some() {
            std::fs::write(&path, raid_lvm().to_json() + "\n").unwrap();
        }
        assert_eq!(Layout::from_json(&fixture("layout-raid1-lvm.json")).unwrap(), raid_lvm());
    }

    #[test]
    fn the_partition_that_ends_the_disk_grows_whatever_its_number() {
        let mut l = default_layout(DEFAULT_DISK_SIZE);
        for it in &mut l.items {
            if let Item::Partition(x) = it {
                x.grow = false;
                x.start = Some(match x.number {
                    1 => MIB,
                    2 => 2 * MIB,
                    _ => 258 * MIB,
                });
                // Number the root partition 1 and the BIOS boot partition 3, where they are.
                x.number = match x.number {
                    1 => 3,
                    3 => 1,
                    n => n,
                };
            }
        }
        l.validate().unwrap_or_else(|e| panic!("{e}"));
        let p = plan(&l, &[disk("vda", 2 * DEFAULT_DISK_SIZE)], "/t").unwrap();
        let grown: Vec<&str> = p.volumes.iter().filter(|v| v.grown).map(|v| v.id.as_str()).collect();
        assert_eq!(grown, ["root"]);
    }

    #[test]
    fn four_k_sector_disks() {
        let l = default_layout(DEFAULT_DISK_SIZE);
        let mut d = disk("nvme0n1", 20 * GIB);
        d.sector_size = 4096;
        let p = plan(&l, &[d.clone()], "/t").unwrap();
        let script = input_of(&p, "/dev/nvme0n1");
        assert!(script.contains("sector-size: 4096"), "{script}");
        assert!(script.contains("/dev/nvme0n1p1 : start=256, size=256,"), "{script}");
        assert!(argvs(&p).contains(&"mkfs.ext4 -F -q -L root /dev/nvme0n1p3".to_string()));
        // A recorded start that is not a whole 4 KiB sector cannot be replayed there.
        let mut l = l;
        for it in &mut l.items {
            if let Item::Partition(x) = it
                && x.id == "bios"
            {
                x.start = Some(34 * 512);
            }
        }
        let e = plan(&l, &[d], "/t").unwrap_err().to_string();
        assert_eq!(e, "bios starts or ends off the 4096-byte sectors of target disk nvme0n1");
    }

    #[test]
    fn thin_lvs_are_refused() {
        let mut l = raid_lvm();
        for it in &mut l.items {
            if let Item::LvmPartition(x) = it
                && x.name == "var"
            {
                x.kind = LvKind::ThinPool;
            }
        }
        let e = plan(&l, &[disk("vda", 20 * GIB), disk("vdb", 20 * GIB)], "/t").unwrap_err().to_string();
        assert!(e.starts_with("lvm-vg0-var: thin pools"), "{e}");
    }

    #[test]
    fn vg_metadata_from_measured_sizes() {
        let l = raid_lvm();
        let vg = l.volgroups().next().unwrap();
        let devs = vec!["/dev/md/0".to_string()];
        let recorded = l.volume_size("md0").unwrap();
        // mdadm made the array 64 MiB smaller than estimated on 30 GiB members: the
        // growing LV gets what is really there.
        let measured = recorded + 10 * GIB - 64 * MIB;
        let m = vg_metadata(&l, vg, &devs, &[measured]).unwrap();
        assert!(m.contains("dev_size = "), "{m}");
        assert!(m.contains(&format!("extent_count = {}", 1536 + 2560 - 16)), "{m}");
        let e = vg_metadata(&l, vg, &devs, &[10 * GIB]).unwrap_err().to_string();
        assert!(e.starts_with("volume group vg0 needs 16 GiB for its logical volumes"), "{e}");
    }

    #[test]
    fn vg_metadata_spans_pvs() {
        let vg = VolumeGroup {
            id: "vg".into(),
            name: "data".into(),
            uuid: "Jx3qMb-5Hc8-9Lf2-Kd7a-Pq4r-Wz1y-Nb6e0T".into(),
            devices: vec![
                crate::layout::doc::PhysicalVolume { device: "a".into(), uuid: "A".repeat(32), pe_start: MIB },
                crate::layout::doc::PhysicalVolume { device: "b".into(), uuid: "B".repeat(32), pe_start: MIB },
            ],
            extent_size: 4 * MIB,
        };
        let lv = LogicalVolume {
            id: "lv".into(),
            volgroup: "vg".into(),
            name: "big".into(),
            uuid: "C".repeat(32),
            size: 12 * MIB,
            kind: LvKind::Linear,
            pool: None,
            grow: false,
        };
        let devs = vec!["/dev/a".to_string(), "/dev/b".to_string()];
        let m = render_vg_metadata(&vg, &devs, &[9 * MIB, 9 * MIB], &[(&lv, 12 * MIB)]).unwrap();
        assert!(m.contains("segment_count = 2"), "{m}");
        assert!(m.contains("\"pv0\", 0") && m.contains("\"pv1\", 0"), "{m}");
        let e = render_vg_metadata(&vg, &devs, &[5 * MIB, 5 * MIB], &[(&lv, 12 * MIB)]).unwrap_err();
        assert!(matches!(e, PlanError::VgTooSmall { .. }), "{e}");
    }
}
