//! Replaying an image's disk layout on this machine: the layout fetched from the server,
//! planned onto the disks the agent reports (nothing is written when it does not fit),
//! then the plan's steps run in order. What the boot environment lacks compared with a
//! full system (udev, a kernel that shows partitions) is made up for here: partitions the
//! kernel does not show are reached through loop devices at their offsets, LVM runs
//! through the one `lvm` binary with udev synchronisation off and makes its own device
//! nodes, and `/dev/disk/by-uuid` links are made for the new filesystems so that GRUB's
//! configuration names them by UUID as the image's own system would.

use super::Mounts;
use super::disk::{self, BlockDev};
use crate::layout::doc::{FsType, Layout, default_layout};
use crate::layout::plan::{self, LVM_DIR, Plan, PlanError, Step, TargetDisk};
use crate::remote::{Client, RemoteError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the server says about an image's layout (`GET /api/v1/images/{image}/layout`).
pub use crate::wire::ImageLayout;

/// Why the layout cannot be replayed here. Nothing has been written when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The server would not give the layout.
    #[error("cannot get the layout of {image} from the server: {source}")]
    Fetch {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: RemoteError,
    },
    /// The named disk is not on this machine.
    #[error("understudy.disk={disk}: no such disk on this machine (disks: {have})")]
    NoSuchDisk {
        /// The disk asked for.
        disk: String,
        /// The disks seen.
        have: String,
    },
    /// The layout does not fit this machine's disks.
    #[error("the layout of {image} does not fit this machine's disks, nothing was written: {source}")]
    DoesNotFit {
        /// The image.
        image: String,
        /// What does not fit.
        #[source]
        source: PlanError,
    },
}

/// Fetch the image's layout; a server that predates layouts (404 on the path) gets the
/// default layout, as an imported image would.
pub async fn fetch(client: &Client, image: &str) -> Result<ImageLayout, ReplayError> {
    let path = format!("/api/v1/images/{image}/layout");
    match client.get::<ImageLayout>(&path).await {
        Ok(l) => Ok(l),
        Err(RemoteError::Api { status: 404, .. }) => {
            println!("understudy-agent: the server has no layout for {image}: using the default layout");
            Ok(ImageLayout { image: image.to_string(), recorded: false, layout: default_layout(0) })
        }
        Err(source) => Err(ReplayError::Fetch { image: image.to_string(), source }),
    }
}

/// The targets to plan on: every reported disk, or only the one named by
/// `understudy.disk=` (`/dev/vdb`, `vdb`, or a symlink such as `/dev/disk/by-id/...`).
pub fn targets(disks: &[BlockDev], only: Option<&str>) -> Result<Vec<TargetDisk>, ReplayError> {
    let all: Vec<TargetDisk> = disks.iter().map(TargetDisk::from).collect();
    let Some(want) = only else { return Ok(all) };
    let resolved = std::fs::canonicalize(want).ok().map(|p| p.to_string_lossy().into_owned());
    let name = |s: &str| s.trim_start_matches("/dev/").to_string();
    let names = [Some(name(want)), resolved.as_deref().map(name)];
    let hit: Vec<TargetDisk> = all.iter().filter(|t| names.iter().flatten().any(|n| *n == t.name)).cloned().collect();
    if hit.is_empty() {
        return Err(ReplayError::NoSuchDisk {
            disk: want.to_string(),
            have: all.iter().filter(|t| t.size > 0).map(|t| t.name.clone()).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(hit)
}

/// The layout to replay: a recorded one as it is; the default layout (an imported image)
/// sized by [`crate::layout::doc::default_disk_size`], as the server's `nodes plan` sizes it,
/// so every disk an imported image was deployed on before layouts still fits. Filesystems
/// without a UUID get a fresh one, so the agent knows every identity before mkfs.
pub fn prepare(mut l: ImageLayout, image_bytes: u64) -> (Layout, bool) {
    if !l.recorded {
        l.layout = default_layout(crate::layout::doc::default_disk_size(image_bytes));
    }
    l.layout.fill_missing_uuids(rand::random);
    (l.layout, l.recorded)
}

/// Plan the layout on the targets; with a named disk, any writable device will do.
pub fn make_plan(
    layout: &Layout,
    targets: &[TargetDisk],
    chosen: bool,
    mount_dir: &Path,
    image: &str,
) -> Result<Plan, ReplayError> {
    let dir = mount_dir.to_string_lossy();
    let p = if chosen { plan::plan_chosen(layout, targets, &dir) } else { plan::plan(layout, targets, &dir) };
    p.map_err(|source| ReplayError::DoesNotFit { image: image.to_string(), source })
}

/// LVM commands the plan names by their usual names; the boot environment has only the
/// `lvm` binary, which runs them as subcommands.
const LVM_COMMANDS: &[&str] = &["pvcreate", "vgcfgrestore", "vgchange", "vgmknodes", "lvs", "vgs", "pvs"];

/// LVM settings for a system without udev: device-mapper nodes are made by LVM itself,
/// devices are found by scanning /dev, and no backup or archive is written to the boot
/// environment's /etc.
pub const LVM_CONFIG: &str = "activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0 use_devicesfile=0} backup{backup=0 archive=0}";

/// The argv that really runs for a plan step: device paths replaced by their aliases
/// (partitions reached through loop devices), LVM commands through `lvm` with
/// [`LVM_CONFIG`].
pub fn effective_argv(argv: &[String], aliases: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = argv.iter().map(|a| aliases.get(a).cloned().unwrap_or_else(|| a.clone())).collect();
    if let Some(first) = out.first()
        && LVM_COMMANDS.contains(&first.as_str())
    {
        let sub = out.remove(0);
        let mut v = vec!["lvm".to_string(), sub, "--config".to_string(), LVM_CONFIG.to_string()];
        v.append(&mut out);
        out = v;
    }
    out
}

/// Partition nodes and their byte ranges from `sfdisk --json`.
pub fn parse_nodes(json: &str) -> Result<Vec<(String, u64, u64)>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("sfdisk --json: {e}"))?;
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let parts = t["partitions"].as_array().ok_or("sfdisk --json: no partitions")?;
    parts
        .iter()
        .map(|p| match (p["node"].as_str(), p["start"].as_u64(), p["size"].as_u64()) {
            (Some(n), Some(s), Some(z)) => Ok((n.to_string(), s * sector, z * sector)),
            _ => Err("sfdisk --json: a partition without node, start or size".to_string()),
        })
        .collect()
}

/// The devices a replay made and mounted; dropped in reverse: mounts, then loop devices.
pub struct Replay {
    /// Mounts under the target, undone on drop.
    pub mounts: Mounts,
    /// Plan device path → the device really used (a loop device for a partition).
    pub aliases: BTreeMap<String, String>,
    /// vfat mounts made after the image is written: (argv, mount point). FAT cannot hold
    /// the owners and modes the image's files carry, so the ESP is mounted once the tree
    /// is written, for the bootloader.
    pub deferred: Vec<(Vec<String>, PathBuf)>,
    loops: Vec<String>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.mounts.release_quietly();
        for l in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
    }
}

impl Replay {
    /// The device really used for a plan device path.
    pub fn dev(&self, plan_dev: &str) -> String {
        self.aliases.get(plan_dev).cloned().unwrap_or_else(|| plan_dev.to_string())
    }

    /// Mount what was deferred ([`Replay::deferred`]).
    pub fn mount_deferred(&mut self) -> anyhow::Result<()> {
        for (argv, dir) in std::mem::take(&mut self.deferred) {
            std::fs::create_dir_all(&dir)?;
            println!("understudy-agent: $ {}", argv.join(" "));
            disk::run_cmd(Command::new(&argv[0]).args(&argv[1..]))?;
            self.mounts.push(dir);
        }
        Ok(())
    }
}

/// Run the plan's steps. Everything on the planned disks is lost. With `links`, the new
/// filesystems get `/dev/disk/by-uuid` links (the boot environment has no udev to make
/// them, and GRUB's configuration needs them).
pub fn run(plan: &Plan, layout: &Layout, links: bool) -> anyhow::Result<Replay> {
    let mut r = Replay { mounts: Mounts::default(), aliases: BTreeMap::new(), deferred: vec![], loops: vec![] };
    if layout.volgroups().next().is_some() {
        // LVM's file locks live here; the boot environment's /run starts empty.
        std::fs::create_dir_all("/run/lock/lvm")?;
    }
    let vfat: Vec<String> = layout.formats().filter(|f| f.fstype == FsType::Vfat).map(|f| f.volume.clone()).collect();
    let vfat_devs: Vec<String> =
        plan.volumes.iter().filter(|v| vfat.contains(&v.id)).map(|v| v.device.clone()).collect();
    for (i, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Write { what, path, content } => {
                let text = match vg_of(path, layout) {
                    // Re-rendered from the PVs' measured sizes (md arrays may come out a
                    // little smaller than the plan's estimate).
                    Some(vg) => measured_vg_metadata(plan, layout, vg, &r)?,
                    None => content.clone(),
                };
                println!("understudy-agent: step {}: {what}: write {path}", i + 1);
                if let Some(dir) = Path::new(path).parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(path, text)?;
            }
            Step::Run { what, argv, input } => {
                let real = effective_argv(argv, &r.aliases);
                let Some(cmd) = real.first() else { continue };
                if cmd == "mount" && argv.iter().any(|a| vfat_devs.contains(a)) {
                    if let Some(dir) = argv.last() {
                        r.deferred.push((real.clone(), PathBuf::from(dir)));
                    }
                    println!("understudy-agent: step {}: {what}: after the image is written", i + 1);
                    continue;
                }
                println!("understudy-agent: step {}: {what}\n  $ {}", i + 1, real.join(" "));
                let mut c = Command::new(cmd);
                c.args(&real[1..]);
                disk::run_with_input(&mut c, input.as_deref())?;
                match cmd.as_str() {
                    "sfdisk" => {
                        if let Some(d) = argv.last() {
                            partitions_ready(&mut r, d)?;
                        }
                    }
                    "lvm" if real.get(1).map(String::as_str) == Some("vgchange") => {
                        if let Some(vg) = argv.last() {
                            lv_nodes_ready(layout, vg)?;
                        }
                    }
                    "mount" => {
                        if let Some(dir) = argv.last() {
                            r.mounts.push(PathBuf::from(dir));
                            // mkfs.ext4's empty lost+found: the image brings its own.
                            let _ = std::fs::remove_dir(Path::new(dir).join("lost+found"));
                        }
                    }
                    c if links && (c.starts_with("mkfs") || c == "mkswap") => {
                        if let Some(dev) = real.last() {
                            by_uuid_link(layout, argv.last().map(String::as_str).unwrap_or(""), dev, plan);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(r)
}

/// The VG whose metadata file `path` is.
fn vg_of<'a>(path: &str, layout: &'a Layout) -> Option<&'a crate::layout::doc::VolumeGroup> {
    let rest = path.strip_prefix(LVM_DIR)?.strip_prefix('/')?.strip_suffix(".vg")?;
    layout.volgroups().find(|v| v.name == rest)
}

fn measured_vg_metadata(
    plan: &Plan,
    layout: &Layout,
    vg: &crate::layout::doc::VolumeGroup,
    r: &Replay,
) -> anyhow::Result<String> {
    let mut devs = Vec::new();
    let mut sizes = Vec::new();
    for pv in &vg.devices {
        let Some(v) = plan.volumes.iter().find(|v| v.id == pv.device) else {
            anyhow::bail!("volume group {}: the plan has no device for {}", vg.name, pv.device);
        };
        let real = r.dev(&v.device);
        sizes.push(device_size(&real)?);
        devs.push(v.device.clone());
    }
    Ok(plan::vg_metadata(layout, vg, &devs, &sizes)?)
}

/// A block device's size in bytes (what `blockdev --getsize64` says).
pub fn device_size(dev: &str) -> anyhow::Result<u64> {
    use std::io::Seek;
    let mut f = std::fs::File::open(dev).map_err(|e| anyhow::anyhow!("opening {dev}: {e}"))?;
    Ok(f.seek(std::io::SeekFrom::End(0))?)
}

/// After sfdisk: wait for the kernel's partition nodes, or map each partition with a loop
/// device at its offset when the kernel shows none (no partition-table support).
fn partitions_ready(r: &mut Replay, d: &str) -> anyhow::Result<()> {
    let real = r.dev(d);
    let out = Command::new("sfdisk").args(["--json", &real]).output()?;
    let nodes = parse_nodes(&String::from_utf8_lossy(&out.stdout)).map_err(anyhow::Error::msg)?;
    let names: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
    if disk::wait_for(&names) {
        return Ok(());
    }
    println!("understudy-agent: the kernel shows no partitions on {d}: mapping them with loop devices");
    for (node, start, size) in &nodes {
        let o = Command::new("losetup")
            .args(["-f", "--show", "-o", &start.to_string(), "--sizelimit", &size.to_string(), &real])
            .output()?;
        if !o.status.success() {
            anyhow::bail!("losetup for {node}: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        let l = String::from_utf8_lossy(&o.stdout).trim().to_string();
        r.loops.push(l.clone());
        r.aliases.insert(node.clone(), l);
    }
    Ok(())
}

/// After activation: every LV of the VG has its /dev/mapper node (LVM makes them itself
/// without udev; `vgmknodes` is the fallback).
fn lv_nodes_ready(layout: &Layout, vg_name: &str) -> anyhow::Result<()> {
    let Some(vg) = layout.volgroups().find(|v| v.name == vg_name) else { return Ok(()) };
    let paths: Vec<String> = layout.lvs_of(&vg.id).iter().map(|l| plan::lv_dev(&vg.name, &l.name)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    if disk::wait_for(&refs) {
        return Ok(());
    }
    let argv = effective_argv(&["vgmknodes".to_string(), vg_name.to_string()], &BTreeMap::new());
    disk::run_cmd(Command::new(&argv[0]).args(&argv[1..]))?;
    if let Some(missing) = paths.iter().find(|p| !Path::new(p).exists()) {
        anyhow::bail!("volume group {vg_name} is active but {missing} does not exist");
    }
    Ok(())
}

/// `/dev/disk/by-uuid/UUID` for a filesystem just made on plan device `plan_dev` (really
/// `dev`): grub-mkconfig names the root by UUID only when that link exists.
fn by_uuid_link(layout: &Layout, plan_dev: &str, dev: &str, plan: &Plan) {
    let Some(v) = plan.volumes.iter().find(|v| v.device == plan_dev) else { return };
    let Some(uuid) = layout.formats().find(|f| f.volume == v.id).and_then(|f| f.uuid.clone()) else { return };
    let dir = Path::new("/dev/disk/by-uuid");
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let link = dir.join(&uuid);
    let _ = std::fs::remove_file(&link);
    let _ = std::os::unix::fs::symlink(dev, &link);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::doc::DEFAULT_DISK_SIZE;

    fn bd(name: &str, gib: u64) -> BlockDev {
        BlockDev {
            name: name.into(),
            size: gib << 30,
            logical_sector_size: 512,
            model: String::new(),
            serial: "S1".into(),
            wwid: String::new(),
            removable: false,
            read_only: false,
        }
    }

    #[test]
    fn lvm_commands_run_through_lvm_and_aliases_apply() {
        let a: BTreeMap<String, String> = [("/dev/loop0p2".to_string(), "/dev/loop9".to_string())].into();
        let argv: Vec<String> = ["pvcreate", "--uuid", "U", "/dev/loop0p2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(effective_argv(&argv, &a), ["lvm", "pvcreate", "--config", LVM_CONFIG, "--uuid", "U", "/dev/loop9"]);
        let argv: Vec<String> = ["mkfs.ext4", "-F", "/dev/vda3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(effective_argv(&argv, &a), argv);
    }

    #[test]
    fn targets_follow_understudy_disk() {
        let disks = vec![bd("vda", 10), bd("vdb", 20), bd("loop3", 3)];
        assert_eq!(targets(&disks, None).unwrap().len(), 3);
        let t = targets(&disks, Some("/dev/vdb")).unwrap();
        assert_eq!(t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["vdb"]);
        assert_eq!(t[0].serial.as_deref(), Some("S1"));
        assert_eq!(t[0].wwn, None);
        let e = targets(&disks, Some("/dev/sdz")).unwrap_err().to_string();
        assert_eq!(e, "understudy.disk=/dev/sdz: no such disk on this machine (disks: vda, vdb, loop3)");
    }

    #[test]
    fn a_named_loop_disk_is_planned_an_unnamed_one_is_not() {
        let (l, recorded) = prepare(
            ImageLayout { image: "x@1".into(), recorded: false, layout: default_layout(DEFAULT_DISK_SIZE) },
            100 << 20,
        );
        assert!(!recorded);
        assert!(l.formats().all(|f| f.uuid.is_some()));
        let t = targets(&[bd("loop3", 3)], Some("/dev/loop3")).unwrap();
        let p = make_plan(&l, &t, true, Path::new("/mnt/target"), "x@1").unwrap();
        assert_eq!(p.disks[0].target, "/dev/loop3");
        let e = make_plan(&l, &t, false, Path::new("/mnt/target"), "x@1").unwrap_err().to_string();
        assert!(e.starts_with("the layout of x@1 does not fit this machine's disks, nothing was written"), "{e}");
    }

    #[test]
    fn a_recorded_layout_is_kept_and_too_small_is_refused() {
        let mut big = default_layout(DEFAULT_DISK_SIZE);
        big.fill_missing_uuids(|| [7; 16]);
        let kept = big.clone();
        let (l, recorded) = prepare(ImageLayout { image: "x@1".into(), recorded: true, layout: big }, 1);
        assert!(recorded);
        assert_eq!(l, kept);
        let e = make_plan(&l, &targets(&[bd("vda", 2)], None).unwrap(), false, Path::new("/t"), "x@1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk disk0 needs 4.00 GiB"), "{e}");
    }

    #[test]
    fn sfdisk_nodes() {
        let j = r#"{"partitiontable": {"label": "gpt", "sectorsize": 512, "partitions": [
            {"node": "/dev/loop0p1", "start": 2048, "size": 2048}]}}"#;
        assert_eq!(parse_nodes(j).unwrap(), vec![("/dev/loop0p1".to_string(), 1 << 20, 1 << 20)]);
        assert!(parse_nodes(r#"{"partitiontable": {"partitions": [{"start": 1}]}}"#).is_err());
    }
}
