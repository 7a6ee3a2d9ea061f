//! Kernel modules for the boot environment: `modules.dep` / `modules.builtin` parsing,
//! the dependency closure of the wanted modules in load order, and decompression of
//! `.ko.xz` / `.ko.zst` / `.ko.gz` files (busybox insmod takes plain `.ko`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// The modules the agent needs, by name, in the order they should load: checksums
/// first (ext4 and xfs look up crc32c at mount time), then buses, disks, filesystems
/// and network drivers for the virtual and physical machines head nodes run on, then
/// md RAID and device-mapper for replaying RAID and LVM layouts.
pub const WANTED: &[&str] = &[
    "crc32c_generic",
    "crc32c_intel",
    "libcrc32c",
    // virtual machines
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    // disks and controllers
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "sr_mod",
    "megaraid_sas",
    "mpt3sas",
    "smartpqi",
    "hpsa",
    // filesystems
    "ext4",
    "xfs",
    "btrfs",
    "vfat",
    // vfat's default codepage and iocharset on Debian: without them an ESP does not mount
    // ("FAT-fs: IO charset ascii not found").
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
    "efivarfs",
    // md RAID and LVM
    "md_mod",
    "raid0",
    "raid1",
    "raid10",
    "dm_mod",
    // network
    "af_packet",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
    "bnx2",
    "bnxt_en",
];

/// A module as `modules.dep` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Path relative to the modules directory, as in `modules.dep`.
    pub path: String,
    /// Names of the modules it needs loaded first.
    pub deps: Vec<String>,
}

/// `modules.dep` indexed by module name.
pub type DepMap = BTreeMap<String, Module>;

/// A `modules.dep` line that is not `path: [dep ...]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("modules.dep line {line}: {reason}")]
pub struct DepError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// The module name a file path stands for: the file name without `.ko[.xz|.zst|.gz]`,
/// with `-` read as `_` (the kernel treats them alike).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = ["", ".xz", ".zst", ".gz"].iter().find_map(|c| base.strip_suffix(&format!(".ko{c}"))).unwrap_or(base);
    stem.replace('-', "_")
}

/// The path a module gets in the boot environment: compression suffix dropped, since
/// it is stored decompressed.
pub fn plain_path(path: &str) -> &str {
    [".xz", ".zst", ".gz"].iter().find_map(|c| path.strip_suffix(c).filter(|p| p.ends_with(".ko"))).unwrap_or(path)
}

/// Parse `modules.dep`.
pub fn parse_dep(text: &str) -> Result<DepMap, DepError> {
    let mut map = DepMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| DepError { line: i + 1, reason };
        let (path, deps) = line.split_once(':').ok_or(bad("no ':'"))?;
        let path = path.trim();
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(bad("module path must be relative and inside the modules directory"));
        }
        if module_name(path) == path.rsplit('/').next().unwrap_or(path) {
            return Err(bad("module path does not end in .ko"));
        }
        let deps = deps.split_whitespace().map(module_name).collect();
        map.insert(module_name(path), Module { path: path.to_string(), deps });
    }
    Ok(map)
}

/// Parse `modules.builtin` (one path per line) into module names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect()
}

/// What became of the wanted modules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every module to load, each after all of its dependencies.
    pub load: Vec<Module>,
    /// Wanted modules built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted modules this kernel has neither as module nor built in.
    pub missing: Vec<String>,
}

/// The dependency closure of `wanted` in load order (dependencies first, otherwise in
/// the order wanted). A dependency `modules.dep` names but does not list is reported
/// missing rather than loaded.
pub fn resolve(deps: &DepMap, builtin: &BTreeSet<String>, wanted: &[&str]) -> Resolution {
    let mut res = Resolution::default();
    let mut seen = BTreeSet::new();
    for w in wanted {
        let name = module_name(w);
        if deps.contains_key(&name) {
            visit(deps, &name, &mut seen, &mut res);
        } else if builtin.contains(&name) {
            res.builtin.push(name);
        } else {
            res.missing.push(name);
        }
    }
    res
}

/// Post-order depth-first walk; `seen` also breaks cycles a broken file might hold.
fn visit(deps: &DepMap, name: &str, seen: &mut BTreeSet<String>, res: &mut Resolution) {
    if !seen.insert(name.to_string()) {
        return;
    }
    let Some(m) = deps.get(name) else {
        res.missing.push(name.to_string());
        return;
    };
    for d in &m.deps {
        visit(deps, d, seen, res);
    }
    res.load.push(m.clone());
}

/// `modules.dep` for the modules in `load`, with the paths they have in the boot
/// environment, so that busybox modprobe works there too.
pub fn render_dep(load: &[Module], deps: &DepMap) -> String {
    let path_of = |n: &String| deps.get(n).map(|m| plain_path(&m.path).to_string());
    load.iter()
        .map(|m| {
            let ds: Vec<String> = m.deps.iter().filter_map(path_of).collect();
            if ds.is_empty() {
                format!("{}:\n", plain_path(&m.path))
            } else {
                format!("{}: {}\n", plain_path(&m.path), ds.join(" "))
            }
        })
        .collect()
}

/// A compressed module that does not decompress.
#[derive(Debug, thiserror::Error)]
#[error("decompressing {path}: {source}")]
pub struct DecompressError {
    /// The module's path.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

/// The plain `.ko` bytes of a module file, decompressing by its suffix.
pub fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>, DecompressError> {
    let err = |source| DecompressError { path: path.to_string(), source };
    let mut out = Vec::new();
    if path.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(&data[..]).and_then(|mut d| d.read_to_end(&mut out)).map_err(err)?;
    } else if path.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut out).map_err(err)?;
    } else if path.ends_with(".ko.xz") {
        lzma_rs::xz_decompress(&mut &data[..], &mut out)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))?;
    } else {
        return Ok(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/drivers/broken.ko: kernel/drivers/gone.ko
";

    #[test]
    fn names_from_paths() {
        assert_eq!(module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"), "crc32c_intel");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(module_name("kernel/fs/xfs/xfs.ko.zst"), "xfs");
        assert_eq!(module_name("virtio-net"), "virtio_net");
        assert_eq!(plain_path("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(plain_path("kernel/a/b.ko"), "kernel/a/b.ko");
    }

    #[test]
    fn parses_modules_dep() {
        let m = parse_dep(DEP).unwrap();
        assert_eq!(m.len(), 9);
        assert_eq!(m["ext4"].deps, ["crc16", "mbcache", "jbd2"]);
        assert_eq!(m["crc32c_intel"].path, "kernel/arch/x86/crypto/crc32c-intel.ko.xz");
        assert_eq!(parse_dep("no colon here").unwrap_err(), DepError { line: 1, reason: "no ':'" });
        assert_eq!(parse_dep("\n/abs/x.ko:\n").unwrap_err().line, 2);
        assert!(parse_dep("../x.ko:").is_err());
        assert!(parse_dep("kernel/README:").is_err());
    }

    #[test]
    fn closure_in_load_order() {
        let deps = parse_dep(DEP).unwrap();
        let builtin = parse_builtin("kernel/net/packet/af_packet.ko\n");
        let r = resolve(&deps, &builtin, &["virtio_net", "ext4", "af_packet", "no_such", "crc32c-intel", "broken"]);
        let names: Vec<String> = r.load.iter().map(|m| module_name(&m.path)).collect();
        assert_eq!(
            names,
            ["failover", "net_failover", "virtio_net", "crc16", "mbcache", "jbd2", "ext4", "crc32c_intel", "broken"]
        );
        assert_eq!(r.builtin, ["af_packet"]);
        assert_eq!(r.missing, ["no_such", "gone"]);
        // Every module loads after its dependencies.
        for (i, m) in r.load.iter().enumerate() {
            for d in &m.deps {
                if let Some(j) = names.iter().position(|n| n == d) {
                    assert!(j < i, "{d} must load before {}", names[i]);
                }
            }
        }
    }

    #[test]
    fn wanted_has_what_layout_replay_needs() {
        // Debian mounts an ESP with codepage 437 and iocharset ascii; RAID and LVM replay
        // need md and device-mapper.
        for m in ["vfat", "nls_cp437", "nls_ascii", "md_mod", "raid0", "raid1", "raid10", "dm_mod", "xfs", "btrfs"] {
            assert!(WANTED.contains(&m), "{m}");
        }
        let unique: BTreeSet<&str> = WANTED.iter().copied().collect();
        assert_eq!(unique.len(), WANTED.len(), "no module is listed twice");
        assert!(WANTED.iter().all(|m| module_name(m) == *m), "names are in modules.dep's form");
    }

    #[test]
    fn closure_survives_cycles_and_duplicates() {
        let deps = parse_dep("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        let r = resolve(&deps, &BTreeSet::new(), &["a", "b", "a"]);
        assert_eq!(r.load.len(), 2);
    }

    #[test]
    fn renders_subset_dep() {
        let deps = parse_dep(DEP).unwrap();
        let r = resolve(&deps, &BTreeSet::new(), &["crc32c_intel", "ext4"]);
        let text = render_dep(&r.load, &deps);
        assert!(text.contains("kernel/arch/x86/crypto/crc32c-intel.ko:\n"));
        assert!(
            text.contains("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n")
        );
        assert_eq!(parse_dep(&text).unwrap().len(), 5);
    }

    #[test]
    fn decompresses_by_suffix() {
        let plain = b"\x7fELF module bytes".repeat(100);
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        assert_eq!(decompress("a.ko.zst", zst).unwrap(), plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        assert_eq!(decompress("a.ko.gz", gz.finish().unwrap()).unwrap(), plain);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &plain[..], &mut xz).unwrap();
        assert_eq!(decompress("a.ko.xz", xz).unwrap(), plain);
        assert_eq!(decompress("a.ko", plain.clone()).unwrap(), plain);
        assert!(decompress("a.ko.xz", b"not xz".to_vec()).is_err());
    }
}
