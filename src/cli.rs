//! The command line: argument definitions and the handlers that wire them to the
//! library. This is the binary's edge, so errors are `anyhow` here.

use crate::archive;
use crate::capture::CaptureOptions;
use crate::deploy::{self, DeployOptions};
use crate::images::{self, Inventory};
use crate::store::{LockMode, Store};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// understudy: clone the primary head node onto a standby and keep it ready to take over.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about)]
pub struct Cli {
    /// Data directory: the image store and the inventory database.
    #[arg(
        long,
        global = true,
        env = "UNDERSTUDY_DATA_DIR",
        default_value = "/var/lib/understudy"
    )]
    pub data_dir: PathBuf,
    /// Only warnings and errors on stderr, and no progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture a directory tree (a live `/` included) as a new image version.
    Capture(CaptureArgs),
    /// Inspect and manage stored images.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Write an image into an empty or new directory.
    Deploy(DeployArgs),
}

/// `capture` arguments.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Image name; capturing an existing name makes a new version.
    #[arg(long)]
    pub name: String,
    /// Exclude a pattern (`/x` anchored at SOURCE, `*.log` anywhere, trailing `/` = dirs only).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Do not descend into other mounted filesystems.
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Do not apply the default excludes for a live `/`.
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Skip unreadable or vanishing files with a warning instead of failing.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// The directory to capture.
    pub source: PathBuf,
}

/// `images` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// List image versions.
    List {
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one image (NAME, NAME@N or id).
    Show {
        /// Image reference.
        image: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every chunk an image (or every image) reaches; non-zero exit on faults.
    Verify {
        /// Image reference; all images when omitted.
        image: Option<String>,
        /// JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete NAME (every version) or NAME@N; space is freed by `images gc`.
    Delete {
        /// NAME or NAME@N.
        image: String,
    },
    /// Remove chunks and manifests that no image reaches.
    Gc {
        /// JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write an image as a tar archive (xattrs, hard links, devices, sparse files).
    Export {
        /// Image reference.
        image: String,
        /// Output file, `-` for stdout.
        #[arg(short, long, default_value = "-")]
        output: String,
    },
    /// Import a tar archive (debootstrap tree, `docker export`, an export) as an image.
    Import {
        /// Image name.
        #[arg(long)]
        name: String,
        /// Input file, `-` for stdin.
        file: String,
        /// JSON summary on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `deploy` arguments.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Image reference (NAME, NAME@N or id).
    pub image: String,
    /// Target directory (created if missing; must be empty).
    pub target: PathBuf,
    /// Skip the final syncfs.
    #[arg(long)]
    pub no_sync: bool,
    /// JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Run a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let inv = Inventory::open(&cli.data_dir)
        .await
        .with_context(|| format!("opening data dir {}", cli.data_dir.display()))?;
    match cli.command {
        Command::Capture(a) => {
            let mut excludes = a.excludes.clone();
            for f in &a.exclude_from {
                let text =
                    std::fs::read_to_string(f).with_context(|| format!("reading exclude file {}", f.display()))?;
                excludes.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            }
            let opts = CaptureOptions {
                excludes,
                default_excludes: !a.no_default_excludes,
                one_file_system: a.one_file_system,
                skip_unreadable: a.skip_unreadable,
                skip_paths: vec![],
                quiet: cli.quiet || a.json,
            };
            let t = Instant::now();
            let (row, cap) = inv.capture(&a.name, &a.source, opts).await?;
            let secs = t.elapsed().as_secs_f64();
            if a.json {
                print_json(&json!({
                    "name": row.name, "version": row.version, "id": row.id, "created": row.created,
                    "entries": row.entries, "files": row.files, "bytes": row.bytes,
                    "stored_bytes": row.stored_bytes, "added_bytes": row.added_bytes,
                    "read_bytes": cap.stats.read_bytes, "new_chunks": cap.stats.new_chunks,
                    "reused_files": cap.stats.reused_files, "seconds": secs, "warnings": cap.warnings,
                }))?;
            } else {
                println!(
                    "captured {}@{} ({}): {} entries, {} files, {}; read {}, added {} to the store in {:.1}s",
                    row.name,
                    row.version,
                    &row.id[..16],
                    row.entries,
                    row.files,
                    human(row.bytes as u64),
                    human(cap.stats.read_bytes),
                    human(row.added_bytes as u64),
                    secs
                );
            }
            Ok(0)
        }
        Command::Images(cmd) => images_cmd(&inv, cmd, cli.quiet).await,
        Command::Deploy(a) => {
            let row = inv.resolve(&a.image).await?;
            let m = inv.manifest(&row).await?;
            let dd = inv.data_dir.clone();
            let t = Instant::now();
            let opts = DeployOptions {
                quiet: cli.quiet || a.json,
                sync: !a.no_sync,
            };
            let target = a.target.clone();
            let stats = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let store = Store::open(&dd, LockMode::Shared)?;
                Ok(deploy::deploy(&store, &m, &target, opts)?)
            })
            .await??;
            let secs = t.elapsed().as_secs_f64();
            if a.json {
                print_json(
                    &json!({"image": format!("{}@{}", row.name, row.version), "id": row.id, "target": a.target, "entries": stats.entries, "files": stats.files, "bytes": stats.bytes, "seconds": secs}),
                )?;
            } else {
                println!(
                    "deployed {}@{} into {}: {} entries, {} in {:.1}s",
                    row.name,
                    row.version,
                    a.target.display(),
                    stats.entries,
                    human(stats.bytes),
                    secs
                );
            }
            Ok(0)
        }
    }
}

async fn images_cmd(inv: &Inventory, cmd: ImagesCmd, quiet: bool) -> anyhow::Result<i32> {
    match cmd {
        ImagesCmd::List { json } => {
            let rows = inv.db.images().await?;
            if json {
                print_json(&rows)?;
            } else {
                println!(
                    "{:<24} {:>4} {:<16} {:<24} {:>8} {:>10} {:>10}",
                    "NAME", "VER", "ID", "CREATED", "FILES", "SIZE", "STORED"
                );
                for r in rows {
                    println!(
                        "{:<24} {:>4} {:<16} {:<24} {:>8} {:>10} {:>10}",
                        r.name,
                        r.version,
                        &r.id[..16],
                        r.created,
                        r.files,
                        human(r.bytes as u64),
                        human(r.stored_bytes as u64)
                    );
                }
            }
            Ok(0)
        }
        ImagesCmd::Show { image, json } => {
            let row = inv.resolve(&image).await?;
            let m = inv.manifest(&row).await?;
            let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
            for e in &m.entries {
                use crate::store::manifest::Kind::*;
                let k = match e.kind {
                    File { .. } => "file",
                    Dir => "dir",
                    Symlink { .. } => "symlink",
                    Hardlink { .. } => "hardlink",
                    CharDev { .. } => "char",
                    BlockDev { .. } => "block",
                    Fifo => "fifo",
                    Socket => "socket",
                };
                *kinds.entry(k).or_default() += 1;
            }
            let chunks: std::collections::HashSet<_> = m.chunk_refs().map(|(_, c)| c.id).collect();
            if json {
                print_json(&json!({"image": row, "kinds": kinds, "chunks": chunks.len(), "chunker": m.chunker}))?;
            } else {
                println!(
                    "image     {}@{}\nid        {}\ncreated   {}\nsource    {}",
                    row.name, row.version, row.id, row.created, row.source
                );
                println!(
                    "size      {} in {} files ({} entries)",
                    human(row.bytes as u64),
                    row.files,
                    row.entries
                );
                println!(
                    "stored    {} in {} chunks; this version added {}",
                    human(row.stored_bytes as u64),
                    chunks.len(),
                    human(row.added_bytes as u64)
                );
                println!(
                    "types     {}",
                    kinds
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(0)
        }
        ImagesCmd::Verify { image, json } => {
            let rep = inv.verify(image.as_deref()).await?;
            if json {
                print_json(&rep)?;
            } else {
                for f in &rep.faults {
                    println!("FAULT {f}");
                }
                println!(
                    "verified {} image(s), {} chunks, {}: {} fault(s)",
                    rep.images,
                    rep.chunks,
                    human(rep.bytes),
                    rep.faults.len()
                );
            }
            Ok(if rep.faults.is_empty() { 0 } else { 1 })
        }
        ImagesCmd::Delete { image } => {
            let n = inv.delete(&image).await?;
            println!("deleted {n} version(s) of {image}; run `understudy images gc` to free the space");
            Ok(0)
        }
        ImagesCmd::Gc { json } => {
            let rep = inv.gc().await?;
            if json {
                print_json(&rep)?;
            } else {
                println!(
                    "gc freed {}: {} pack(s) removed, {} rewritten, {} manifest(s) removed; {} chunks live",
                    human(rep.freed_bytes),
                    rep.removed_packs,
                    rep.rewritten_packs,
                    rep.removed_manifests,
                    rep.live_chunks
                );
            }
            Ok(0)
        }
        ImagesCmd::Export { image, output } => {
            let row = inv.resolve(&image).await?;
            let m = inv.manifest(&row).await?;
            let dd = inv.data_dir.clone();
            let stats = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let store = Store::open(&dd, LockMode::Shared)?;
                if output == "-" {
                    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                    Ok(archive::export(&store, &m, out, quiet)?)
                } else {
                    let tmp = format!("{output}.partial");
                    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {tmp}"))?;
                    let res = archive::export(&store, &m, std::io::BufWriter::with_capacity(1 << 20, &f), quiet);
                    match res {
                        Ok(s) => {
                            f.sync_all()?;
                            std::fs::rename(&tmp, &output).with_context(|| format!("renaming to {output}"))?;
                            Ok(s)
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            Err(e.into())
                        }
                    }
                }
            })
            .await??;
            tracing::info!(
                "exported {}@{}: {} entries, {}",
                row.name,
                row.version,
                stats.entries,
                human(stats.bytes)
            );
            Ok(0)
        }
        ImagesCmd::Import { name, file, json } => {
            images::check_name(&name)?;
            let dd = inv.data_dir.clone();
            let src = file.clone();
            let (store, m, id, stats, stored) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let store = Store::open_for_write(&dd)?;
                let (m, stats) = if src == "-" {
                    archive::import(
                        &store,
                        std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock()),
                        quiet,
                    )?
                } else {
                    let f = std::fs::File::open(&src).with_context(|| format!("opening {src}"))?;
                    archive::import(&store, std::io::BufReader::with_capacity(1 << 20, f), quiet)?
                };
                store.flush()?;
                let id = store.write_manifest(&m)?;
                let stored = images::stored_bytes(&store, &m);
                Ok((store, m, id, stats, stored))
            })
            .await??;
            let source = if file == "-" {
                "import:stdin".to_string()
            } else {
                format!("import:{file}")
            };
            let row = inv.record(&name, &id, &source, &m, stored, stats.added_bytes).await?;
            drop(store);
            inv.db
                .event(
                    None,
                    "image.import",
                    &format!("imported {}@{} from {file}", row.name, row.version),
                )
                .await?;
            if json {
                print_json(
                    &json!({"name": row.name, "version": row.version, "id": row.id, "entries": row.entries, "files": row.files, "bytes": row.bytes, "stored_bytes": row.stored_bytes, "added_bytes": row.added_bytes, "skipped": stats.skipped}),
                )?;
            } else {
                println!(
                    "imported {}@{} ({}): {} entries, {}; added {}",
                    row.name,
                    row.version,
                    &row.id[..16],
                    row.entries,
                    human(row.bytes as u64),
                    human(row.added_bytes as u64)
                );
            }
            Ok(0)
        }
    }
}

/// Reject a command line that can only be a mistake before touching the data dir.
pub fn preflight(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Capture(a) = &cli.command
        && !a.source.is_dir()
    {
        bail!("capture source {} is not a directory", a.source.display());
    }
    Ok(())
}
