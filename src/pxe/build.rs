//! `understudy pxe build`: find the inputs, hash them, and (unless the output already
//! matches that hash) write `vmlinuz`, `initramfs.img` and `boot.json`. The output is
//! reproducible: the same inputs give the same bytes.

use super::BuildError;
use super::cpio::Entry;
use super::initramfs::{self, Inputs, Plan, Source};
use super::kernel::{self, Compression};
use super::modules;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Bumped when the builder's output changes for the same inputs.
const FORMAT: u32 = 1;
/// zstd level: close to the smallest output while a build stays in seconds.
const ZSTD_LEVEL: i32 = 15;

/// What to build from and where to.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Kernel image; default `/boot/vmlinuz-$(uname -r)`.
    pub kernel: Option<PathBuf>,
    /// Modules directory; default `/lib/modules/<the kernel's release>`.
    pub modules: Option<PathBuf>,
    /// busybox binary; default the first `busybox` on PATH.
    pub busybox: Option<PathBuf>,
    /// Output directory.
    pub output: PathBuf,
    /// Rebuild even when the output is up to date.
    pub force: bool,
}

/// A built file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3, hex.
    pub blake3: String,
}

/// `boot.json`: what was built, from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    /// Builder output format.
    pub format: u32,
    /// The builder's version.
    pub builder: String,
    /// BLAKE3 over every input; unchanged inputs mean nothing to rebuild.
    pub input_hash: String,
    /// The kernel's release.
    pub kernel_release: String,
    /// The kernel file it was copied from.
    pub kernel_source: PathBuf,
    /// The modules directory.
    pub modules_dir: PathBuf,
    /// `vmlinuz`.
    pub kernel: FileInfo,
    /// `initramfs.img`.
    pub initramfs: FileInfo,
    /// How the initramfs is compressed.
    pub compression: Compression,
    /// Size of the cpio archive before compression.
    pub uncompressed_size: u64,
    /// Entries in the archive.
    pub entries: u64,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Wanted modules built into the kernel.
    pub modules_builtin: Vec<String>,
    /// Wanted modules the kernel lacks.
    pub modules_missing: Vec<String>,
    /// Tools included: name → host path.
    pub tools: BTreeMap<String, PathBuf>,
    /// Tools not found on the host.
    pub tools_missing: Vec<String>,
    /// Size of /bin/understudy in the initramfs (after stripping).
    pub understudy_size: u64,
    /// mtime of every entry.
    pub source_date_epoch: u32,
}

/// The result of a build.
#[derive(Debug)]
pub struct Outcome {
    /// What is in the output directory now.
    pub info: BootInfo,
    /// True when nothing was rebuilt.
    pub up_to_date: bool,
    /// Things a user should know (missing tools or modules, unstripped binary).
    pub warnings: Vec<String>,
}

fn read(p: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(p).map_err(|e| BuildError::io(format!("reading {}", p.display()), e))
}

/// The running kernel's release.
fn host_release() -> Result<String, BuildError> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| BuildError::io("reading /proc/sys/kernel/osrelease", e))?;
    Ok(r.trim().to_string())
}

fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(d.into());
        }
    }
    dirs
}

/// Everything the build reads, resolved from the options and the host.
struct Resolved {
    kernel_path: PathBuf,
    kernel: Vec<u8>,
    compression: Compression,
    inputs: Inputs,
    epoch: u32,
    warnings: Vec<String>,
}

fn resolve(opts: &BuildOptions) -> Result<Resolved, BuildError> {
    let mut warnings = vec![];
    let kernel_path = match &opts.kernel {
        Some(k) => k.clone(),
        None => PathBuf::from(format!("/boot/vmlinuz-{}", host_release()?)),
    };
    if !kernel_path.is_file() {
        return Err(BuildError::Input(format!(
            "kernel {} not found: pass --kernel FILE (and --modules DIR) to build from another kernel",
            kernel_path.display()
        )));
    }
    let kernel = read(&kernel_path)?;
    let release = kernel::release(&kernel);
    let modules_dir = match (&opts.modules, &release) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => PathBuf::from(format!("/lib/modules/{r}")),
        (None, None) => {
            return Err(BuildError::Input(format!(
                "cannot read the release of kernel {} (not an x86 bzImage?): pass --modules DIR",
                kernel_path.display()
            )));
        }
    };
    if !modules_dir.join("modules.dep").is_file() {
        return Err(BuildError::Input(format!(
            "no modules.dep in {}: pass --modules DIR naming the kernel's modules directory (run depmod there if it lacks modules.dep)",
            modules_dir.display()
        )));
    }
    let dir_name = modules_dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let release = match release {
        Some(r) => {
            if dir_name.as_deref() != Some(&r) {
                warnings.push(format!("kernel release {r} differs from modules directory {}", modules_dir.display()));
            }
            r
        }
        None => dir_name.ok_or_else(|| BuildError::Input(format!("{} names no release", modules_dir.display())))?,
    };
    // The kernel's config says whether it unpacks zstd; look beside the kernel, then /boot.
    let config =
        [kernel_path.with_file_name(format!("config-{release}")), PathBuf::from(format!("/boot/config-{release}"))]
            .into_iter()
            .find_map(|p| std::fs::read_to_string(p).ok());
    if config.is_none() {
        warnings.push(format!("no config-{release} beside the kernel: using gzip, which every kernel unpacks"));
    }
    let tool_dirs = search_path();
    let busybox = match &opts.busybox {
        Some(b) => b.clone(),
        None => initramfs::find_tool("busybox", &tool_dirs).ok_or_else(|| {
            BuildError::Input("no busybox on PATH: install busybox-static (or busybox), or pass --busybox FILE".into())
        })?,
    };
    let understudy = std::env::current_exe().map_err(|e| BuildError::io("finding the running executable", e))?;
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Ok(Resolved {
        kernel_path,
        kernel,
        compression: kernel::compression(config.as_deref()),
        inputs: Inputs { release, modules_dir, busybox, understudy, tool_dirs },
        epoch,
        warnings,
    })
}

/// BLAKE3 over the builder version, settings, kernel and every initramfs entry with its
/// source file's content.
fn input_hash(r: &Resolved, plan: &Plan) -> Result<String, BuildError> {
    let mut h = blake3::Hasher::new();
    h.update(
        format!("understudy pxe build {FORMAT} {}\0{:?}\0{}\0", env!("CARGO_PKG_VERSION"), r.compression, r.epoch)
            .as_bytes(),
    );
    h.update(&(r.kernel.len() as u64).to_le_bytes());
    h.update(&r.kernel);
    for (path, entry) in plan.archive.iter() {
        h.update(path.as_bytes());
        h.update(format!("\0{entry:?}\0").as_bytes());
        if let Entry::File { content, .. } = entry
            && let Some(p) = content.path()
        {
            let f = std::fs::File::open(p).map_err(|e| BuildError::io(format!("reading {}", p.display()), e))?;
            h.update_reader(f).map_err(|e| BuildError::io(format!("reading {}", p.display()), e))?;
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn file_info(p: &Path) -> Result<FileInfo, BuildError> {
    let mut f = std::fs::File::open(p).map_err(|e| BuildError::io(format!("reading {}", p.display()), e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| BuildError::io(format!("reading {}", p.display()), e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileInfo { size, blake3: h.finalize().to_hex().to_string() })
}

/// The existing output, if it was built from exactly these inputs and is intact.
fn existing(out: &Path, hash: &str) -> Option<BootInfo> {
    let info: BootInfo = serde_json::from_slice(&std::fs::read(out.join("boot.json")).ok()?).ok()?;
    let intact = info.input_hash == hash
        && file_info(&out.join("vmlinuz")).ok()? == info.kernel
        && file_info(&out.join("initramfs.img")).ok()? == info.initramfs;
    intact.then_some(info)
}

/// A binary without debug information: `objcopy --strip-debug` into a temporary file,
/// or the binary as it is (with a warning) when objcopy is missing or fails.
fn stripped(src: &Path, tmp: &Path, warnings: &mut Vec<String>) -> std::io::Result<Vec<u8>> {
    let res = std::process::Command::new("objcopy").arg("--strip-debug").arg(src).arg(tmp).output();
    let data = match res {
        Ok(o) if o.status.success() => std::fs::read(tmp),
        Ok(o) => {
            warnings.push(format!(
                "objcopy --strip-debug failed, {} copied unstripped: {}",
                src.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            std::fs::read(src)
        }
        Err(e) => {
            warnings.push(format!("objcopy not available ({e}): {} copied unstripped", src.display()));
            std::fs::read(src)
        }
    };
    let _ = std::fs::remove_file(tmp);
    data
}

/// Write the cpio archive through the compressor into `dest`; returns (cpio bytes,
/// entries, size of /bin/understudy).
fn write_initramfs(
    plan: &Plan,
    r: &Resolved,
    dest: &Path,
    warnings: &mut Vec<String>,
) -> std::io::Result<(u64, u64, u64)> {
    let f = std::fs::File::create(dest)?;
    let w = BufWriter::with_capacity(1 << 20, f);
    let strip_tmp = dest.with_extension("strip.tmp");
    let mut understudy_size = 0;
    let mut load = |path: &str, src: &Source| -> std::io::Result<Vec<u8>> {
        let ctx = |e: std::io::Error, p: &Path| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        match src {
            Source::Inline(b) => Ok(b.clone()),
            Source::Copy(p) => std::fs::read(p).map_err(|e| ctx(e, p)),
            Source::Module(p) => {
                let data = std::fs::read(p).map_err(|e| ctx(e, p))?;
                modules::decompress(&p.to_string_lossy(), data)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
            }
            Source::Strip(p) => {
                let data = stripped(p, &strip_tmp, warnings).map_err(|e| ctx(e, p))?;
                if path == "bin/understudy" {
                    understudy_size = data.len() as u64;
                }
                Ok(data)
            }
        }
    };
    let (w, stats) = match r.compression {
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
            enc.include_checksum(true)?;
            let (enc, stats) = plan.archive.write(enc, r.epoch, &mut load)?;
            (enc.finish()?, stats)
        }
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(w, flate2::Compression::best());
            let (enc, stats) = plan.archive.write(enc, r.epoch, &mut load)?;
            (enc.finish()?, stats)
        }
    };
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok((stats.bytes, stats.entries, understudy_size))
}

fn write_file(dest: &Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = dest.with_extension("tmp");
    let res = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    res.and_then(|()| std::fs::rename(&tmp, dest)).map_err(|e| BuildError::io(format!("writing {}", dest.display()), e))
}

/// Build the boot environment (or find it up to date).
pub fn build(opts: &BuildOptions) -> Result<Outcome, BuildError> {
    let r = resolve(opts)?;
    let plan = initramfs::plan(&r.inputs)?;
    let hash = input_hash(&r, &plan)?;
    let mut warnings = r.warnings.clone();
    warnings.extend(
        plan.tools_missing.iter().map(|t| format!("{t} not found on this host: the boot environment will lack it")),
    );
    warnings.extend(plan.modules.missing.iter().map(|m| format!("module {m} is not in this kernel")));
    let out = &opts.output;
    if !opts.force
        && let Some(info) = existing(out, &hash)
    {
        return Ok(Outcome { info, up_to_date: true, warnings });
    }
    std::fs::create_dir_all(out).map_err(|e| BuildError::io(format!("creating {}", out.display()), e))?;
    let img = out.join("initramfs.img");
    let tmp = out.join("initramfs.img.tmp");
    let written = write_initramfs(&plan, &r, &tmp, &mut warnings).and_then(|v| std::fs::rename(&tmp, &img).map(|()| v));
    let (uncompressed_size, entries, understudy_size) = written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        BuildError::io(format!("writing {}", img.display()), e)
    })?;
    write_file(&out.join("vmlinuz"), &r.kernel)?;
    let name = |m: &modules::Module| modules::module_name(&m.path);
    let info = BootInfo {
        format: FORMAT,
        builder: format!("understudy {}", env!("CARGO_PKG_VERSION")),
        input_hash: hash,
        kernel_release: r.inputs.release.clone(),
        kernel_source: r.kernel_path.clone(),
        modules_dir: r.inputs.modules_dir.clone(),
        kernel: file_info(&out.join("vmlinuz"))?,
        initramfs: file_info(&img)?,
        compression: r.compression,
        uncompressed_size,
        entries,
        modules: plan.modules.load.iter().map(name).collect(),
        modules_builtin: plan.modules.builtin.clone(),
        modules_missing: plan.modules.missing.clone(),
        tools: plan.tools.clone(),
        tools_missing: plan.tools_missing.clone(),
        understudy_size,
        source_date_epoch: r.epoch,
    };
    let mut json = serde_json::to_vec_pretty(&info).map_err(|e| BuildError::io("encoding boot.json", e.into()))?;
    json.push(b'\n');
    write_file(&out.join("boot.json"), &json)?;
    Ok(Outcome { info, up_to_date: false, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let opts =
            BuildOptions { kernel: Some(d.path().join("vmlinuz")), output: d.path().join("out"), ..Default::default() };
        let e = build(&opts).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("--kernel"), "{e}");
    }

    #[test]
    fn unknown_kernel_needs_modules_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vmlinuz"), "not a kernel").unwrap();
        let opts =
            BuildOptions { kernel: Some(d.path().join("vmlinuz")), output: d.path().join("out"), ..Default::default() };
        let e = build(&opts).unwrap_err().to_string();
        assert!(e.contains("--modules"), "{e}");
        let opts = BuildOptions { modules: Some(d.path().to_path_buf()), ..opts };
        let e = build(&opts).unwrap_err().to_string();
        assert!(e.contains("no modules.dep"), "{e}");
    }
}
