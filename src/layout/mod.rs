//! Disk layouts: record how the primary's disks are laid out, and plan that layout onto
//! the standby's disks before anything is written.
//!
//! - [`doc`]: the layout document (typed, versioned JSON), its validation, its rendering
//!   as a tree for people ([`doc::Layout::render`]) and the default layout for an image
//!   imported from a tar.
//! - [`probe`]: the document built from the system tools' machine-readable output (pure
//!   parsers), and the I/O edge that runs those tools for a mounted root.
//! - [`plan`]: the recorded layout mapped onto a target's disks, with every size and the
//!   exact commands the agent runs.
//!
//! # The layout document, version 1
//!
//! This is the format `understudy images layout IMAGE --from FILE` accepts and `--show`
//! prints. It is modelled on curtin's storage config: a flat list of typed items with
//! unique ids, where items refer to each other by id. Sizes and offsets are in bytes.
//!
//! ```json
//! {
//!   "version": 1,
//!   "boot_mode": "bios",            // "bios" | "uefi"
//!   "bootloader": "grub-pc",        // "grub-pc" | "grub-efi" | "shim-grub" | "none"
//!   "items": [
//!     {"type": "disk", "id": "disk0", "size": 21474836480, "sector_size": 512,
//!      "ptable": "gpt", "ptable_id": "3E6B0B0E-1C51-4D0A-9F3C-5A2B7E0C9D11",
//!      "match": {"serial": "S1", "wwn": "0x5000c500a1b2c3d4", "path": "/dev/sda"},
//!      "grub_device": true},
//!     {"type": "partition", "id": "sda1", "device": "disk0", "number": 1,
//!      "start": 1048576, "size": 1048576,
//!      "part_type": "21686148-6449-6E6F-744E-656564454649", "name": "bios",
//!      "uuid": "0C6F2A52-4B1D-4E0E-8E57-8E1B2A3C4D01", "flags": ["bios_grub"]},
//!     {"type": "partition", "id": "sda2", "device": "disk0", "number": 2,
//!      "size": 21471690752, "part_type": "A19D880F-05FC-4D3B-A006-743F0F84911E",
//!      "flags": ["raid"], "grow": true},
//!     {"type": "raid", "id": "md0", "name": "0", "md_name": "head-a:0", "level": 1,
//!      "devices": ["sda2", "sdb2"], "metadata": "1.2",
//!      "uuid": "3b4d0b4a:1c2b8d9e:5f6a7b8c:9d0e1f2a", "size": 21336424448},
//!     {"type": "lvm_volgroup", "id": "vg0", "name": "vg0",
//!      "uuid": "Jx3qMb-5Hc8-9Lf2-Kd7a-Pq4r-Wz1y-Nb6e0T", "extent_size": 4194304,
//!      "devices": [{"device": "md0", "uuid": "pvUUID...", "pe_start": 1048576}]},
//!     {"type": "lvm_partition", "id": "lv-root", "volgroup": "vg0", "name": "root",
//!      "uuid": "lvUUID...", "size": 10737418240, "kind": "linear", "grow": true},
//!     {"type": "format", "id": "fs-root", "volume": "lv-root", "fstype": "ext4",
//!      "uuid": "6f1c8c47-2b8e-4d4a-9a51-2f0e7d6c5b01", "label": "root",
//!      "ext": {"features": ["has_journal", "extent", "64bit"], "inode_size": 256}},
//!     {"type": "mount", "id": "m-root", "device": "fs-root", "path": "/",
//!      "options": "errors=remount-ro"}
//!   ]
//! }
//! ```
//!
//! Item types and fields (optional fields may be left out):
//!
//! - `disk`: `id`, `size`, `sector_size` (logical, default 512), `ptable` (`gpt`,
//!   `msdos`, `none` for a disk used whole), `ptable_id` (GPT disk GUID or msdos
//!   `0xXXXXXXXX`, kept on replay), `match` (`serial`, `wwn`, `model`, `path`: how the
//!   disk was identified when recorded; the standby's disk names may differ), `grub_device`
//!   (BIOS GRUB goes on this disk).
//! - `partition`: `id`, `device` (a disk), `number`, `start` (absent: right after the
//!   previous partition, 1 MiB aligned), `size`, `part_type` (GPT type GUID, or msdos
//!   type code in hex), `name` and `uuid` (GPT name and PARTUUID, kept), `attrs` (GPT
//!   attribute bits as sfdisk names them), `flags` (`bios_grub`, `esp`, `raid`, `lvm`,
//!   `boot`, `swap`, `extended`), `grow` (takes a larger disk's extra space; at most one
//!   per disk, and when none is marked the last partition grows).
//! - `raid`: `id`, `name` (under /dev/md/), `md_name` (superblock name, `host:name`),
//!   `level` (0, 1 or 10), `devices` and `spare_devices` (volume ids, in role order),
//!   `metadata` (`1.2`, `1.0`, `1.1`, `0.90`), `uuid` (mdadm's colon form, kept), `size`
//!   (array size when recorded).
//! - `lvm_volgroup`: `id`, `name`, `uuid` (kept), `extent_size`, `devices` (each
//!   `device`: a volume id, `uuid`: the PV UUID, kept, `pe_start`: default 1 MiB).
//! - `lvm_partition`: `id`, `volgroup`, `name`, `uuid` (kept), `size` (a multiple of the
//!   extent size), `kind` (`linear`; `thin_pool` and `thin` with `pool` are recorded but
//!   not replayed: the planner refuses them), `grow` (at most one per VG; when none is
//!   marked the last linear LV grows).
//! - `format`: `id`, `volume` (disk, partition, raid or lvm_partition), `fstype` (`ext4`,
//!   `ext3`, `ext2`, `xfs`, `vfat`, `btrfs`, `swap`), `uuid` (vfat: the volume id
//!   `XXXX-XXXX`; absent: a fresh one is made), `label`, and the mkfs parameters that
//!   matter: `ext` (`features`, `inode_size`, `block_size`), `xfs` (`block_size`,
//!   `inode_size`, `options` such as `crc`, `finobt`, `reflink`, `bigtime`, `sparse` as
//!   0/1), `vfat` (`fat_size` 12, 16 or 32).
//! - `mount`: `id`, `device` (a format that is not swap), `path` (absolute, inside the
//!   image), `options` (default `defaults`). Mounts are made in path order, parents
//!   first; swap needs no mount item (the image's fstab enables it).
//!
//! A document is valid when: the version is 1; ids are non-empty and unique; every
//! reference resolves to an item of an allowed kind; references form no cycle; each
//! volume holds one thing (a filesystem, a RAID membership, a PV, or partitions); sizes
//! are positive multiples of the sector size (LVs: of the extent size); partitions fit
//! their disk without overlapping (GPT's backup header kept free); LVs fit their VG;
//! identifiers are well formed; and the mounts have exactly one `/` and no path twice.
//! Every error names the item at fault.
//!
//! The default layout for an image imported from a tar ([`doc::default_layout`]) is the
//! agent's long-standing one: GPT, a 1 MiB BIOS boot partition, a 256 MiB ESP (FAT32,
//! mounted at /boot/efi) and an ext4 root growing over the rest of the disk, GRUB for
//! BIOS; fresh filesystem UUIDs.
//!
//! # How UUIDs are kept on replay
//!
//! Partition table ids, PARTUUIDs, md array UUIDs, filesystem UUIDs and labels are given
//! to the tools that make them (sfdisk script, `mdadm --create --uuid`, `mkfs -U`). LVM
//! cannot set a VG UUID at vgcreate time (and `vgchange --uuid` only draws a new random
//! one), so a volume group is replayed the way vgcfgbackup/vgcfgrestore restore one:
//! [`plan::render_vg_metadata`] renders the VG's text metadata (VG, PV and LV UUIDs,
//! extent size, pe_start, linear segments), each PV is made with
//! `pvcreate --uuid PVUUID --restorefile FILE` (rather than `--norestorefile`, so that the
//! PV's data area matches what the file says), `vgcfgrestore --file FILE VG` writes the
//! metadata, and `vgchange --activate y` activates the LVs. So VG, PV and LV UUIDs all stay
//! as recorded, and fstab, grub.cfg's `lvmid/` hints and initramfs configuration stay valid.

pub mod doc;
pub mod plan;
pub mod probe;
