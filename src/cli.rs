//! The command line: argument definitions and the handlers that wire them to the
//! library. This is the binary's edge, so errors are `anyhow` here.

use crate::archive;
use crate::capture::CaptureOptions;
use crate::config::Config;
use crate::deploy::{self, DeployOptions};
use crate::inventory::images::{ImportSource, kind_name};
use crate::inventory::{Inventory, InventoryError};
use crate::pull::report;
use crate::remote::{Client, encode};
use crate::store::{LockMode, Store};
use crate::wire::{
    Collect, CollectState, Deployment, DeploymentCreate, DeploymentCreated, Discovered, Event, EventKind,
    HardwareReport, Image, ImageDetail, Job, JobState, NetInterface, Node, NodeCreate, NodeNetwork, NodePatch, Page,
    ProgressStatus, WhoAmI,
};
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
    #[arg(long, global = true, env = "UNDERSTUDY_DATA_DIR", default_value = "/var/lib/understudy")]
    pub data_dir: PathBuf,
    /// Talk to a running server instead of the local data dir (inventory and deploy).
    #[arg(long, global = true, env = "UNDERSTUDY_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for --server: the admin token or a deployment token.
    #[arg(long, global = true, env = "UNDERSTUDY_TOKEN", value_name = "T", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Write an image into an empty or new directory (from a server with --server).
    Deploy(DeployArgs),
    /// Bring a live or mounted root to an image, leaving the node's identity alone.
    Update(crate::update::cli::UpdateArgs),
    /// Run the configured services (HTTP API, DHCP, TFTP, failover).
    Serve {
        /// TOML config file; embedded defaults when omitted.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Manage nodes (the standby and compute machines).
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Make a standby: capture, find its MAC, register it with its own addresses, deploy it
    /// by network boot, and wait until it joins failover (resumable; see `standby add --help`).
    #[command(subcommand)]
    Standby(StandbyCmd),
    /// Create and follow deployments.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// Show the event log, newest first.
    Events(EventsArgs),
    /// Heartbeat and failover: keys, status, planned switchover.
    #[command(subcommand)]
    Failover(FailoverCmd),
    /// The installer of the boot environment: partition, deploy, identity, bootloader, reboot.
    /// Reads its deployment from the kernel command line; everything on the disk is lost.
    Agent(AgentCmdArgs),
    /// Network boot: build the boot environment (kernel + initramfs with the agent).
    #[command(subcommand)]
    Pxe(PxeCmd),
    /// Disk layouts of this machine.
    #[command(subcommand)]
    Layout(LayoutCmd),
    /// Write the man pages and shell completions (for packaging; `make install` runs it).
    #[command(hide = true)]
    Generate {
        /// Man pages (`man1/understudy*.1`) and completions (`completions/`) go under here.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `agent` arguments (the boot environment's /init runs it without any).
#[derive(Debug, Args)]
pub struct AgentCmdArgs {
    /// Kernel command line to read the deployment from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Install on this disk instead of `understudy.disk` or the first suitable one.
    #[arg(long, value_name = "DEV")]
    pub disk: Option<String>,
    /// Where the new root is mounted during the install.
    #[arg(long, value_name = "DIR", default_value = "/mnt/target")]
    pub mount_dir: PathBuf,
    /// Stay up after the install instead of rebooting.
    #[arg(long)]
    pub no_reboot: bool,
}

/// `layout` subcommands.
#[derive(Debug, Subcommand)]
pub enum LayoutCmd {
    /// The layout `capture` records for a mounted root, probed now from this machine's disks
    /// (partition tables, md RAID, LVM, filesystems, swap, boot mode, bootloader); nothing is
    /// stored.
    Probe {
        /// The mounted root.
        #[arg(default_value = "/")]
        root: PathBuf,
        /// The layout document (JSON) instead of the tree.
        #[arg(long)]
        json: bool,
    },
}

/// `pxe` subcommands.
#[derive(Debug, Subcommand)]
pub enum PxeCmd {
    /// Build vmlinuz + initramfs.img from the host's own kernel and modules (or the given ones).
    Build(PxeBuildArgs),
}

/// `pxe build` arguments.
#[derive(Debug, Args)]
pub struct PxeBuildArgs {
    /// Kernel image [default: /boot/vmlinuz-$(uname -r)].
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Modules directory with modules.dep [default: /lib/modules/<the kernel's release>].
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// busybox binary, static preferred [default: busybox on PATH].
    #[arg(long, value_name = "FILE")]
    pub busybox: Option<PathBuf>,
    /// Output directory [default: <data dir>/boot].
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Rebuild even when the output matches the inputs.
    #[arg(long)]
    pub force: bool,
    /// JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `failover` subcommands.
#[derive(Debug, Subcommand)]
pub enum FailoverCmd {
    /// Write a new random heartbeat key file (0600); copy it to the peer.
    Keygen {
        /// The key file to create (refuses to overwrite).
        file: PathBuf,
    },
    /// Show the running service's status (its status file under the data dir).
    Status {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Ask the local service to take the VIP (planned switchover).
    Takeover,
    /// Ask the local service to give the VIP to the peer.
    Release,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Check a config file; errors name the key and line.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `nodes` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Add a node.
    Add {
        /// Node name.
        name: String,
        /// MAC address (repeatable).
        #[arg(long = "mac")]
        macs: Vec<String>,
        /// Reserved IP address (repeatable).
        #[arg(long = "ip")]
        ips: Vec<String>,
        /// Image to deploy (NAME, NAME@N or id).
        #[arg(long)]
        image: Option<String>,
        /// standby or compute.
        #[arg(long, default_value = "standby")]
        role: String,
        /// An interface of its network identity (repeatable):
        /// `role=private,name=ens3,mac=M,address=10.0.0.2/24[,address=…][,gateway=G][,dns=D]`.
        #[arg(long = "interface", value_name = "SPEC", conflicts_with = "from_primary")]
        interfaces: Vec<String>,
        /// Propose its network identity from the primary's (same networks, the next free
        /// address on each, checked on the LAN) and set it.
        #[arg(long)]
        from_primary: bool,
        /// Deploy even when the image's network configuration cannot be fully rewritten.
        #[arg(long)]
        force_network: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show or set a node's network identity: its interfaces, addresses, gateways and
    /// networks (private, public, …), which the agent writes into the deployed system.
    Network {
        /// Node name.
        name: String,
        /// Replace its interfaces (repeatable; see `nodes add --interface`).
        #[arg(long = "set", value_name = "SPEC", conflicts_with = "from_primary")]
        set: Vec<String>,
        /// Propose it from the primary's own networks and set it.
        #[arg(long)]
        from_primary: bool,
        /// With --from-primary: show the proposal, change nothing.
        #[arg(long, requires = "from_primary")]
        dry_run: bool,
        /// Deploy even when the image's network configuration cannot be fully rewritten.
        #[arg(long, conflicts_with = "no_force")]
        force: bool,
        /// Stop forcing (the default).
        #[arg(long)]
        no_force: bool,
        /// Do not ask the LAN (ARP/ND) whether the addresses are in use.
        #[arg(long)]
        no_probe: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List nodes.
    List {
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one node.
    Show {
        /// Node name.
        name: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Change a node; options not given stay as they are.
    Set {
        /// Node name.
        name: String,
        /// Replace the MACs (repeatable).
        #[arg(long = "mac")]
        macs: Vec<String>,
        /// Replace the IPs (repeatable).
        #[arg(long = "ip")]
        ips: Vec<String>,
        /// Image reference ("" clears it).
        #[arg(long)]
        image: Option<String>,
        /// standby or compute.
        #[arg(long)]
        role: Option<String>,
        /// New state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Delete a node.
    Delete {
        /// Node name.
        name: String,
    },
    /// Deploy the node's image again at its next network boot.
    Redeploy {
        /// Node name.
        name: String,
        /// Deploy even when the image's network configuration cannot be fully rewritten
        /// (sets the node's force flag; `nodes network NAME --no-force` clears it).
        #[arg(long)]
        force_network: bool,
    },
    /// Open the MAC collection window: PXE-booting machines are recorded as discovered.
    Collect {
        /// How long to collect.
        #[arg(long, default_value_t = 30)]
        minutes: i64,
        /// Close the window now instead.
        #[arg(long)]
        stop: bool,
    },
    /// What the agent will do on the node's disks: its image's layout planned onto the
    /// disks it reported (a layout that does not fit is refused here, and by the agent).
    Plan {
        /// Node name.
        name: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// What the node's boot environment found when it last booted: firmware and disks.
    Hardware {
        /// Node name.
        name: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Machines seen while collecting (flagged when their MAC already belongs to a node).
    Discovered {
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `standby` subcommands.
#[derive(Debug, Subcommand)]
pub enum StandbyCmd {
    /// The whole flow on the primary, each step shown with its state and time: image
    /// (capture of `/`, or --image), the standby's MAC (MAC collection until it PXE-boots, or
    /// --mac), the node, its network identity (proposed from the primary's, checked,
    /// confirmed), the deployment (network-boot it when asked), and its first heartbeats on
    /// every failover channel; then the pair's status. After Ctrl-C, run it again: it
    /// resumes from what the inventory holds.
    Add(StandbyAddArgs),
}

/// `standby add` arguments.
#[derive(Debug, Args)]
pub struct StandbyAddArgs {
    /// The standby's node name.
    pub name: String,
    /// Deploy this image (NAME, NAME@N or id) instead of capturing `/`.
    #[arg(long, conflicts_with = "no_capture")]
    pub image: Option<String>,
    /// Use the newest image in the store instead of capturing `/`.
    #[arg(long)]
    pub no_capture: bool,
    /// Name of the image captured from `/` [default: this host's name].
    #[arg(long, value_name = "NAME")]
    pub capture_name: Option<String>,
    /// The standby's MAC (skips MAC collection).
    #[arg(long)]
    pub mac: Option<String>,
    /// Its network identity instead of the proposal (repeatable; see `nodes add --interface`).
    #[arg(long = "interface", value_name = "SPEC")]
    pub interfaces: Vec<String>,
    /// Deploy even where the image's network configuration cannot be fully rewritten.
    #[arg(long)]
    pub force_network: bool,
    /// Do not ask for confirmation (scripts).
    #[arg(long, short)]
    pub yes: bool,
    /// One JSON object per line: `{step, n, state, detail, step_ms, elapsed_ms}` and notes.
    #[arg(long)]
    pub json: bool,
    /// How long each waiting step (its PXE request, the deployment, the join) may take.
    #[arg(long, default_value = "2h", value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,
}

/// `deployments` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeploymentsCmd {
    /// Create a deployment; prints its scoped token once.
    Create {
        /// Target node.
        #[arg(long)]
        node: String,
        /// Image (defaults to the node's).
        #[arg(long)]
        image: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List deployments.
    List {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one deployment.
    Show {
        /// Deployment id.
        id: i64,
    },
}

/// `events` arguments.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this kind (a trailing `.` matches a prefix, e.g. `image.`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Not before this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// JSON array on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// Show an image's disk layout, or set it from a layout document (`--from`), or go back
    /// to the default layout (`--clear`).
    Layout {
        /// Image reference.
        image: String,
        /// Set the layout from this JSON file (`-` for stdin); checked before it is kept.
        #[arg(long, value_name = "FILE", conflicts_with = "clear")]
        from: Option<String>,
        /// Forget the recorded layout: the image deploys with the default layout.
        #[arg(long)]
        clear: bool,
        /// Show it (what the command does without `--from` or `--clear`).
        #[arg(long, conflicts_with_all = ["from", "clear"])]
        show: bool,
        /// Print the layout document (JSON) instead of the table.
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
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Run a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve { config } => return serve_cmd(&cli.data_dir, config.as_deref()).await,
        Command::Config(ConfigCmd::Check { file }) => {
            let cfg = Config::load(&file)?;
            println!("{}: ok ({})", file.display(), if cfg.http.is_some() { "http" } else { "no services" });
            return Ok(0);
        }
        Command::Failover(cmd) => return failover_cmd(&cli.data_dir, cmd),
        Command::Agent(a) => {
            let opts = crate::agent::AgentOptions {
                cmdline: a.cmdline,
                disk: a.disk,
                mount_dir: a.mount_dir,
                no_reboot: a.no_reboot,
                ..Default::default()
            };
            crate::agent::run(opts).await?;
            return Ok(0);
        }
        Command::Pxe(PxeCmd::Build(a)) => return pxe_build_cmd(&cli.data_dir, a).await,
        Command::Layout(LayoutCmd::Probe { root, json }) => {
            let l = tokio::task::spawn_blocking(move || crate::layout::probe::probe(&root)).await??;
            if json {
                print_json(&l)?;
            } else {
                print!("{}", l.render());
            }
            return Ok(0);
        }
        Command::Update(a) => {
            return crate::update::cli::run(&cli.data_dir, cli.server.as_deref(), cli.token.clone(), a, cli.quiet)
                .await;
        }
        Command::Generate { out } => {
            generate(&out)?;
            return Ok(0);
        }
        _ => {}
    }
    if let Some(server) = &cli.server {
        let client = Client::new(server, cli.token.clone())?;
        return remote_cmd(&client, cli.command, cli.quiet).await;
    }
    let inv =
        Inventory::open(&cli.data_dir).await.with_context(|| format!("opening data dir {}", cli.data_dir.display()))?;
    match cli.command {
        Command::Serve { .. }
        | Command::Config(_)
        | Command::Failover(_)
        | Command::Agent(_)
        | Command::Pxe(_)
        | Command::Layout(_)
        | Command::Update(_)
        | Command::Generate { .. } => {
            unreachable!("handled above")
        }
        Command::Nodes(cmd) => nodes_cmd(&Api::local(inv), cmd).await,
        Command::Standby(StandbyCmd::Add(a)) => {
            standby_add(&Api::local(inv.clone()), Some(&inv), &cli.data_dir, a, cli.quiet).await
        }
        Command::Deployments(cmd) => deployments_cmd(&Api::local(inv), cmd).await,
        Command::Events(a) => events_cmd(&Api::local(inv), a).await,
        Command::Capture(a) => {
            let mut excludes = a.excludes.clone();
            for f in &a.exclude_from {
                let text =
                    std::fs::read_to_string(f).with_context(|| format!("reading exclude file {}", f.display()))?;
                excludes.extend(
                    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
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
                    "reused_files": cap.stats.reused_files, "reused_dirs": cap.stats.reused_dirs, "seconds": secs, "warnings": cap.warnings,
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
            let opts =
                DeployOptions { quiet: cli.quiet || a.json, sync: !a.no_sync, counters: None, mount_points: vec![] };
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
            let rows = inv.images().await?;
            if rows.is_empty() && !json {
                // Most often the wrong data dir (`make run` uses images/): say which one this is.
                eprintln!("no images in {} (capture one, or name another with --data-dir)", inv.data_dir.display());
            }
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
                let k = kind_name(&e.kind);
                *kinds.entry(k).or_default() += 1;
            }
            let chunks: std::collections::HashSet<_> = m.chunk_refs().map(|(_, c)| c.id).collect();
            let layout = inv.image_layout(&row.label()).await?;
            if json {
                print_json(
                    &json!({"image": row, "kinds": kinds, "chunks": chunks.len(), "chunker": m.chunker, "layout": layout}),
                )?;
            } else {
                println!(
                    "image     {}@{}\nid        {}\ncreated   {}\nsource    {}",
                    row.name, row.version, row.id, row.created, row.source
                );
                println!("size      {} in {} files ({} entries)", human(row.bytes as u64), row.files, row.entries);
                println!(
                    "stored    {} in {} chunks; this version added {}",
                    human(row.stored_bytes as u64),
                    chunks.len(),
                    human(row.added_bytes as u64)
                );
                println!("types     {}", kinds.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
                print_layout(&layout);
            }
            Ok(0)
        }
        ImagesCmd::Layout { image, from, clear, json, .. } => {
            let l = match (from, clear) {
                (Some(f), _) => inv.set_image_layout(&image, Some(read_layout(&f)?)).await?,
                (None, true) => inv.set_image_layout(&image, None).await?,
                (None, false) => inv.image_layout(&image).await?,
            };
            if json {
                print_json(&l.layout)?
            } else {
                print_layout(&l)
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
            tracing::info!("exported {}@{}: {} entries, {}", row.name, row.version, stats.entries, human(stats.bytes));
            Ok(0)
        }
        ImagesCmd::Import { name, file, json } => {
            let from = if file == "-" { ImportSource::Stdin } else { ImportSource::File(PathBuf::from(&file)) };
            let imp = inv.import(&name, from, quiet).await?;
            let row = imp.image;
            if json {
                print_json(
                    &json!({"name": row.name, "version": row.version, "id": row.id, "entries": row.entries, "files": row.files, "bytes": row.bytes, "stored_bytes": row.stored_bytes, "added_bytes": row.added_bytes, "skipped": imp.skipped}),
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

/// Read a layout document from a file or stdin (`-`), with errors that name the problem.
fn read_layout(f: &str) -> anyhow::Result<crate::layout::doc::Layout> {
    let text = if f == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the layout from stdin")?
    } else {
        std::fs::read_to_string(f).with_context(|| format!("reading layout {f}"))?
    };
    crate::layout::doc::Layout::from_json(&text).map_err(|e| InventoryError::Invalid(format!("layout {f}: {e}")).into())
}

fn print_layout(l: &crate::wire::ImageLayout) {
    let how = if l.recorded { "recorded" } else { "default (none recorded; set one with `images layout --from`)" };
    println!("layout    {how}");
    for line in l.layout.render().lines() {
        println!("  {line}");
    }
}

/// Reject a command line that can only be a mistake before touching the data dir.
pub fn preflight(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Capture(a) = &cli.command
        && !a.source.is_dir()
    {
        let why = format!("capture source {} is not a directory", a.source.display());
        return Err(InventoryError::NotFound(why).into());
    }
    Ok(())
}

// ---------------------------------------------------------------- API-backed commands

/// Where inventory commands go: a remote server, or the API served in-process over the
/// local data dir (one code path for both).
enum Api {
    Remote(Client),
    Local(axum::Router, String),
}

impl Api {
    fn local(inv: Inventory) -> Api {
        let token = crate::http::auth::new_token();
        let state = std::sync::Arc::new(crate::http::AppState::new(
            inv,
            crate::config::HttpConfig::default(),
            &token,
            tokio_util::sync::CancellationToken::new(),
        ));
        Api::Local(crate::http::router(state), token)
    }

    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        match self {
            Api::Remote(c) => Ok(c.call(method, path, body).await?),
            Api::Local(router, token) => {
                use tower::ServiceExt;
                let mut req = axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
                let body = match body {
                    Some(b) => {
                        req = req.header(axum::http::header::CONTENT_TYPE, "application/json");
                        axum::body::Body::from(serde_json::to_vec(b)?)
                    }
                    None => axum::body::Body::empty(),
                };
                let resp = router.clone().oneshot(req.body(body)?).await?;
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
                if !status.is_success() {
                    // The same API in-process: its error is the inventory's own, so it reads
                    // (and exits) as it would without the HTTP layer.
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    let m = v["error"]["message"].as_str().unwrap_or("request failed").to_string();
                    return Err(match status.as_u16() {
                        400 | 413 | 415 | 422 => InventoryError::Invalid(m),
                        404 => InventoryError::NotFound(m),
                        409 => InventoryError::Conflict(m),
                        _ => InventoryError::Join(m),
                    }
                    .into());
                }
                let v: serde_json::Value =
                    if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes)? };
                Ok(serde_json::from_value(v)?)
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call::<(), T>(reqwest::Method::GET, path, None).await
    }

    /// Every item of a paged list.
    async fn all<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        loop {
            let page: Page<T> = self.get(&format!("{path}{sep}limit=1000&offset={}", out.len())).await?;
            let n = page.items.len();
            out.extend(page.items);
            if n == 0 || out.len() as i64 >= page.total {
                return Ok(out);
            }
        }
    }
}

/// `--interface`/`--set` specs as wire interfaces.
fn parse_specs(specs: &[String]) -> anyhow::Result<Vec<NetInterface>> {
    specs
        .iter()
        .map(|s| {
            NetInterface::parse_spec(s).map_err(|e| InventoryError::Invalid(format!("--interface {s:?}: {e}")).into())
        })
        .collect()
}

fn print_network(n: &NodeNetwork) {
    if n.interfaces.is_empty() {
        println!("no network identity (set one with --from-primary or --set)");
        return;
    }
    println!("{:<10} {:<10} {:<18} {:<34} {:<16} DNS", "ROLE", "NAME", "MAC", "ADDRESSES", "GATEWAY");
    for i in &n.interfaces {
        println!(
            "{:<10} {:<10} {:<18} {:<34} {:<16} {}",
            i.role,
            i.name.as_deref().unwrap_or("-"),
            i.mac.as_deref().unwrap_or("-"),
            if i.addresses.is_empty() { "-".to_string() } else { i.addresses.join(",") },
            i.gateway.as_deref().unwrap_or("-"),
            if i.dns.is_empty() { "-".to_string() } else { i.dns.join(",") },
        );
    }
    if n.force {
        println!("force: the next deploy goes on even where the network configuration cannot be rewritten");
    }
}

fn print_nodes(nodes: &[Node]) {
    println!("{:<20} {:<8} {:<11} {:<20} {:<36} IPS", "NAME", "ROLE", "STATE", "IMAGE", "MACS");
    for n in nodes {
        println!(
            "{:<20} {:<8} {:<11} {:<20} {:<36} {}",
            n.name,
            n.role,
            n.state,
            n.image.as_deref().unwrap_or("-"),
            n.macs.join(","),
            n.ips.join(",")
        );
    }
}

async fn nodes_cmd(api: &Api, cmd: NodesCmd) -> anyhow::Result<i32> {
    use reqwest::Method;
    match cmd {
        NodesCmd::Add { name, macs, ips, image, role, interfaces, from_primary, force_network, json } => {
            let interfaces = parse_specs(&interfaces)?;
            let create = NodeCreate { name: name.clone(), role: Some(role), image, macs, ips };
            let n: Node = api.call(Method::POST, "/api/v1/nodes", Some(&create)).await?;
            let path = format!("/api/v1/nodes/{}/network", encode(&name));
            let net = if from_primary {
                let p: NodeNetwork = api.get(&format!("{path}/proposal")).await?;
                Some(NodeNetwork { force: force_network, ..p })
            } else if !interfaces.is_empty() || force_network {
                Some(NodeNetwork { interfaces, force: force_network })
            } else {
                None
            };
            if let Some(net) = net {
                // The node and its identity go together: a refused identity takes the new
                // node away again, so the command can simply be run again.
                // A proposal was probed a moment ago: no second round of ARP.
                let put = if from_primary { format!("{path}?probe=false") } else { path.clone() };
                let set: anyhow::Result<NodeNetwork> = api.call(Method::PUT, &put, Some(&net)).await;
                if let Err(e) = set {
                    let _ = api
                        .call::<(), serde_json::Value>(
                            Method::DELETE,
                            &format!("/api/v1/nodes/{}", encode(&name)),
                            None,
                        )
                        .await;
                    return Err(e.context(format!("node {name} not added")));
                }
            }
            if json {
                print_json(&n)?
            } else {
                print_nodes(&[n]);
                if let Some(net) = api.get::<NodeNetwork>(&path).await.ok().filter(|n| !n.interfaces.is_empty()) {
                    print_network(&net);
                }
            }
        }
        NodesCmd::Network { name, set, from_primary, dry_run, force, no_force, no_probe, json } => {
            let path = format!("/api/v1/nodes/{}/network", encode(&name));
            let probe = if no_probe { "?probe=false" } else { "" };
            let cur: NodeNetwork = api.get(&path).await?;
            let force = if force {
                true
            } else if no_force {
                false
            } else {
                cur.force
            };
            let next = if from_primary {
                let p: NodeNetwork = api.get(&format!("{path}/proposal{probe}")).await?;
                Some(NodeNetwork { force, ..p })
            } else if !set.is_empty() {
                Some(NodeNetwork { interfaces: parse_specs(&set)?, force })
            } else if force != cur.force {
                Some(NodeNetwork { force, ..cur.clone() })
            } else {
                None
            };
            let shown = match next {
                Some(n) if dry_run => n,
                Some(n) => api.call(Method::PUT, &format!("{path}{probe}"), Some(&n)).await?,
                None => cur,
            };
            if json {
                print_json(&shown)?
            } else {
                if dry_run {
                    println!("proposed for {name} (not set; run again without --dry-run to set it):");
                }
                print_network(&shown);
            }
        }
        NodesCmd::List { json } => {
            let nodes: Vec<Node> = api.all("/api/v1/nodes").await?;
            if json { print_json(&nodes)? } else { print_nodes(&nodes) }
        }
        NodesCmd::Show { name, json } => {
            let n: Node = api.get(&format!("/api/v1/nodes/{}", encode(&name))).await?;
            if json { print_json(&n)? } else { print_nodes(&[n]) }
        }
        NodesCmd::Set { name, macs, ips, image, role, state } => {
            let p = NodePatch {
                role,
                image,
                state,
                macs: (!macs.is_empty()).then_some(macs),
                ips: (!ips.is_empty()).then_some(ips),
            };
            let n: Node = api.call(Method::PATCH, &format!("/api/v1/nodes/{}", encode(&name)), Some(&p)).await?;
            print_nodes(&[n]);
        }
        NodesCmd::Delete { name } => {
            api.call::<(), serde_json::Value>(Method::DELETE, &format!("/api/v1/nodes/{}", encode(&name)), None)
                .await?;
            println!("deleted node {name}");
        }
        NodesCmd::Collect { minutes, stop } => {
            let body = Collect { minutes: if stop { 0 } else { minutes } };
            let r: CollectState = api.call(Method::POST, "/api/v1/discovered/collect", Some(&body)).await?;
            if r.collecting {
                println!(
                    "collecting MAC addresses until {}; PXE-boot the machines now, then `understudy nodes discovered`",
                    r.until
                );
            } else {
                println!("MAC collection is off");
            }
        }
        NodesCmd::Discovered { json } => {
            let d: Vec<Discovered> = api.get("/api/v1/discovered").await?;
            if json {
                print_json(&d)?;
            } else {
                println!(
                    "{:<18} {:>5} {:<24} {:<10} {:>6} {:<24} NOTE",
                    "MAC", "ARCH", "VENDOR CLASS", "IFACE", "SEEN", "LAST SEEN"
                );
                for x in d {
                    let note =
                        x.assigned_to.as_ref().map(|n| format!("already assigned to node {n}")).unwrap_or_default();
                    let arch = x.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<18} {:>5} {:<24} {:<10} {:>6} {:<24} {note}",
                        x.mac, arch, x.vendor_class, x.interface, x.count, x.last_seen
                    );
                }
            }
        }
        NodesCmd::Plan { name, json } => {
            let p: serde_json::Value = api.get(&format!("/api/v1/nodes/{}/plan", encode(&name))).await?;
            if json {
                print_json(&p)?;
            } else {
                let how = if p["recorded"] == true { "recorded layout" } else { "default layout" };
                println!("{name}: {} ({how})", p["image"].as_str().unwrap_or("?"));
                print!("{}", p["text"].as_str().unwrap_or_default());
            }
        }
        NodesCmd::Hardware { name, json } => {
            let r: HardwareReport = api.get(&format!("/api/v1/nodes/{}/hardware", encode(&name))).await?;
            if json {
                print_json(&r)?;
            } else {
                let h = &r.hardware;
                let sb = if h.secure_boot { ", Secure Boot on" } else { "" };
                println!(
                    "{name}: {}{sb}; reported {} (deployment {})",
                    h.firmware,
                    r.reported,
                    r.deployment.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
                );
                println!("{:<12} {:>10} {:>6} {:<24} {:<20} NOTE", "DISK", "SIZE", "SECTOR", "MODEL", "SERIAL");
                for d in &h.disks {
                    let note = [(d.removable, "removable"), (d.read_only, "read-only")]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, w)| *w)
                        .collect::<Vec<_>>()
                        .join(", ");
                    println!(
                        "{:<12} {:>10} {:>6} {:<24} {:<20} {note}",
                        d.name,
                        human(d.size),
                        d.logical_sector_size,
                        d.model,
                        d.serial
                    );
                }
            }
        }
        NodesCmd::Redeploy { name, force_network } => {
            if force_network {
                let path = format!("/api/v1/nodes/{}/network", encode(&name));
                let cur: NodeNetwork = api.get(&path).await?;
                let _: NodeNetwork = api
                    .call(Method::PUT, &format!("{path}?probe=false"), Some(&NodeNetwork { force: true, ..cur }))
                    .await?;
            }
            let n: Node =
                api.call::<(), Node>(Method::POST, &format!("/api/v1/nodes/{}/redeploy", encode(&name)), None).await?;
            print_nodes(&[n]);
        }
    }
    Ok(0)
}

/// Ask a yes/no question on the terminal (default yes); refuses without one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(InventoryError::Invalid(format!("{question}: no terminal to ask on; pass --yes")).into());
    }
    print!("{question} [Y/n] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(!matches!(line.trim(), "n" | "N" | "no" | "No"))
}

/// `standby add`, with Ctrl-C saying how to resume.
async fn standby_add(
    api: &Api,
    inv: Option<&Inventory>,
    data_dir: &std::path::Path,
    a: StandbyAddArgs,
    quiet: bool,
) -> anyhow::Result<i32> {
    let name = a.name.clone();
    tokio::select! {
        r = standby_steps(api, inv, data_dir, a, quiet) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted; `understudy standby add {name}` resumes from here");
            Ok(130)
        }
    }
}

async fn standby_steps(
    api: &Api,
    inv: Option<&Inventory>,
    data_dir: &std::path::Path,
    a: StandbyAddArgs,
    quiet: bool,
) -> anyhow::Result<i32> {
    use crate::wizard::{DeployView, JoinView, Reporter, StepState as S, network_line};
    use reqwest::Method;
    let rep = Reporter::new(a.json);
    let name = a.name.clone();
    crate::inventory::names::check_node_name(&name).map_err(|e| InventoryError::Invalid(e.to_string()))?;
    let node_path = format!("/api/v1/nodes/{}", encode(&name));
    let existing: Option<Node> = match api.get::<Node>(&node_path).await {
        Ok(n) => Some(n),
        Err(e) if crate::error::kind_of(&e) == crate::error::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let poll = std::time::Duration::from_secs(1);

    // 1. image
    let t = Instant::now();
    let image = if let Some(img) = crate::wizard::node_image(existing.as_ref()) {
        rep.step("image", S::Skipped, &format!("{img} (the node's)"), None);
        img.to_string()
    } else if let Some(i) = &a.image {
        let d: ImageDetail = api.get(&format!("/api/v1/images/{}", encode(i))).await?;
        rep.step(
            "image",
            S::Done,
            &format!("{} ({} files, {})", d.image.label(), d.image.files, human(d.image.bytes as u64)),
            Some(t.elapsed()),
        );
        i.clone()
    } else if a.no_capture {
        let rows: Vec<Image> = api.all("/api/v1/images").await?;
        let newest = rows.iter().max_by(|x, y| x.created.cmp(&y.created)).ok_or_else(|| {
            InventoryError::NotFound("no image in the store: capture one, or drop --no-capture".into())
        })?;
        rep.step("image", S::Done, &format!("{} (the newest)", newest.label()), Some(t.elapsed()));
        newest.label()
    } else {
        let Some(inv) = inv else {
            bail!("capturing / runs on the primary against its data dir: omit --server, or pass --image");
        };
        let cname = match &a.capture_name {
            Some(n) => n.clone(),
            None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
        };
        rep.step("image", S::Running, &format!("capturing / as {cname}"), None);
        let opts = CaptureOptions::this_root(quiet || a.json);
        let (row, _) = inv.capture(&cname, std::path::Path::new("/"), opts).await?;
        rep.step(
            "image",
            S::Done,
            &format!("captured {} ({} files, {})", row.label(), row.files, human(row.bytes as u64)),
            Some(t.elapsed()),
        );
        row.label()
    };

    // 2. mac
    let t = Instant::now();
    let macs = match (crate::wizard::node_macs(existing.as_ref()), &a.mac) {
        (Some(m), _) => {
            rep.step("mac", S::Skipped, &format!("{} (the node's)", m.join(",")), None);
            m.to_vec()
        }
        (_, Some(m)) => {
            rep.step("mac", S::Done, m, None);
            vec![m.clone()]
        }
        _ => {
            let since = crate::db::now();
            let _: CollectState =
                api.call(Method::POST, "/api/v1/discovered/collect", Some(&Collect { minutes: 60 })).await?;
            rep.step("mac", S::Running, &format!("MAC collection open: network-boot {name} now (PXE)"), None);
            let mut shown = std::collections::HashSet::new();
            let found = loop {
                let seen: Vec<Discovered> = api.get("/api/v1/discovered").await?;
                for d in seen.iter().filter(|d| d.last_seen >= since && shown.insert(d.mac.clone())) {
                    let owner = d.assigned_to.as_deref().map(|o| format!(" (node {o})")).unwrap_or_default();
                    rep.note("mac", &format!("seen {} on {} ({}){owner}", d.mac, d.interface, d.vendor_class));
                }
                if let Some(d) = crate::wizard::new_mac(&seen, &since) {
                    if a.yes || confirm(&format!("use {} for {name}?", d.mac))? {
                        break d.mac.clone();
                    }
                    shown.clear();
                }
                if t.elapsed() > a.timeout {
                    bail!("no new machine network-booted within {:?}; check its boot order, or pass --mac", a.timeout);
                }
                tokio::time::sleep(poll).await;
            };
            let _: CollectState =
                api.call(Method::POST, "/api/v1/discovered/collect", Some(&Collect { minutes: 0 })).await?;
            rep.step("mac", S::Done, &found, Some(t.elapsed()));
            vec![found]
        }
    };

    // 3. node
    let t = Instant::now();
    let node = match existing {
        Some(n) => {
            rep.step("node", S::Skipped, &format!("{} ({}, {})", n.name, n.role, n.state), None);
            n
        }
        None => {
            let body = NodeCreate {
                name: name.clone(),
                role: Some("standby".into()),
                image: Some(image.clone()),
                macs,
                ips: vec![],
            };
            let n: Node = api.call(Method::POST, "/api/v1/nodes", Some(&body)).await?;
            rep.step("node", S::Done, &format!("{} ({}, {})", n.name, n.role, n.state), Some(t.elapsed()));
            n
        }
    };

    // 4. network
    let t = Instant::now();
    let net_path = format!("{node_path}/network");
    let cur: NodeNetwork = api.get(&net_path).await?;
    if crate::wizard::network_settled(&cur, !a.interfaces.is_empty(), a.force_network) {
        rep.step("network", S::Skipped, &network_line(&cur), None);
    } else {
        let mut next = if a.interfaces.is_empty() {
            rep.step("network", S::Running, "proposing from the primary's networks (probing the LAN)", None);
            api.get::<NodeNetwork>(&format!("{net_path}/proposal")).await?
        } else {
            NodeNetwork { interfaces: parse_specs(&a.interfaces)?, force: false }
        };
        next.force = a.force_network;
        if !a.json {
            print_network(&next);
        }
        if !a.yes && !confirm(&format!("give {name} this network identity?"))? {
            bail!(
                "stopped before setting the network; set it with `understudy nodes network {name} --set …` and run again"
            );
        }
        // A proposal set at once was probed a moment ago; after a question, probe again.
        let put = if a.interfaces.is_empty() && a.yes { format!("{net_path}?probe=false") } else { net_path.clone() };
        let set: NodeNetwork = api.call(Method::PUT, &put, Some(&next)).await?;
        rep.step("network", S::Done, &network_line(&set), Some(t.elapsed()));
    }

    // 5. deploy
    let t = Instant::now();
    let mut state = node.state;
    if state == crate::wire::NodeState::Failed {
        let n: Node = api.call::<(), Node>(Method::POST, &format!("{node_path}/redeploy"), None).await?;
        rep.note("deploy", "the last deployment failed: deploying again");
        state = n.state;
    }
    if state == crate::wire::NodeState::Deployed {
        rep.step("deploy", S::Skipped, "deployed", None);
    } else {
        rep.step(
            "deploy",
            S::Running,
            &format!("network-boot {name} now; it installs {image} and reboots into its disk"),
            None,
        );
        let bar = (!a.json && !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(st) = indicatif::ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                b.set_style(st.progress_chars("=> "));
            }
            b
        });
        let mut last_phase = String::new();
        loop {
            let n: Node = api.get(&node_path).await?;
            let ds: Vec<Deployment> = api.all(&format!("/api/v1/deployments?node={}", encode(&name))).await?;
            match crate::wizard::deploy_view(&n, crate::wizard::newest(&ds)) {
                DeployView::Done => break,
                DeployView::Failed(why) => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    rep.step("deploy", S::Failed, &why, Some(t.elapsed()));
                    bail!(
                        "the deploy of {name} failed: {why}\n(fix it, then `understudy standby add {name}` deploys again)"
                    );
                }
                DeployView::Running { phase, done, total } => {
                    if let Some(b) = &bar {
                        b.set_length(total);
                        b.set_position(done);
                        b.set_message(phase.clone());
                    } else if phase != last_phase {
                        rep.note("deploy", &format!("{phase}: {} of {}", human(done), human(total)));
                    }
                    last_phase = phase;
                }
                DeployView::WaitingForBoot => {}
            }
            if t.elapsed() > a.timeout {
                bail!(
                    "{name} was not deployed within {:?} (is it network-booting? see `understudy events --node {name}`)",
                    a.timeout
                );
            }
            tokio::time::sleep(poll).await;
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        rep.step("deploy", S::Done, "deployed; booting its own disk", Some(t.elapsed()));
    }

    // 6. join
    let t = Instant::now();
    let Some(mut s) = failover_status(api, data_dir).await? else {
        rep.step("join", S::Skipped, "this primary runs no [failover]: nothing to join", None);
        return Ok(0);
    };
    rep.step("join", S::Running, &format!("waiting for {name}'s heartbeats on {} channel(s)", s.channels.len()), None);
    let mut last = None;
    loop {
        match crate::wizard::join_view(&s, &name) {
            JoinView::Joined => break,
            w @ JoinView::Waiting { .. } => {
                if last.as_ref() != Some(&w) {
                    if let JoinView::Waiting { up, total, peer } = &w {
                        rep.note(
                            "join",
                            &format!("{up}/{total} channels up, peer {}", peer.as_deref().unwrap_or("not heard yet")),
                        );
                    }
                    last = Some(w);
                }
            }
        }
        if t.elapsed() > a.timeout {
            bail!("{name} did not join failover within {:?}; on it, see `journalctl -u understudy`", a.timeout);
        }
        tokio::time::sleep(poll).await;
        s = failover_status(api, data_dir).await?.ok_or_else(|| anyhow::anyhow!("the failover status went away"))?;
    }
    rep.step("join", S::Done, &format!("{name} heard on every channel"), Some(t.elapsed()));
    if a.json {
        print_json(&s)?;
    } else {
        print!("{}", s.render_text());
    }
    Ok(0)
}

/// The primary's failover status: from the server, or (the in-process API runs no
/// failover) from the local service's status file; `None` when no failover runs.
async fn failover_status(api: &Api, data_dir: &std::path::Path) -> anyhow::Result<Option<crate::failover::Status>> {
    match api.get::<crate::failover::Status>("/api/v1/failover").await {
        Ok(s) => Ok(Some(s)),
        Err(e) if crate::error::kind_of(&e) == crate::error::ErrorKind::NotFound => {
            if data_dir.as_os_str().is_empty() {
                return Ok(None);
            }
            let f = data_dir.join(crate::failover::status::STATUS_FILE);
            Ok(std::fs::read_to_string(&f).ok().and_then(|text| serde_json::from_str(&text).ok()))
        }
        Err(e) => Err(e),
    }
}

fn print_deployments(ds: &[Deployment]) {
    println!(
        "{:>5} {:<16} {:<20} {:<8} {:<12} {:>12} {:>8}",
        "ID", "NODE", "IMAGE", "STATUS", "PHASE", "BYTES", "FILES"
    );
    for d in ds {
        println!(
            "{:>5} {:<16} {:<20} {:<8} {:<12} {:>12} {:>8}",
            d.id, d.node, d.image, d.status, d.phase, d.bytes_done, d.files_done
        );
    }
}

async fn deployments_cmd(api: &Api, cmd: DeploymentsCmd) -> anyhow::Result<i32> {
    match cmd {
        DeploymentsCmd::Create { node, image, json } => {
            let c: DeploymentCreated =
                api.call(reqwest::Method::POST, "/api/v1/deployments", Some(&DeploymentCreate { node, image })).await?;
            if json {
                print_json(&c)?;
            } else {
                print_deployments(std::slice::from_ref(&c.deployment));
                println!("token (shown only now, valid until {}): {}", c.deployment.expires, c.token);
            }
        }
        DeploymentsCmd::List { node, json } => {
            let path = match node {
                Some(n) => format!("/api/v1/deployments?node={}", encode(&n)),
                None => "/api/v1/deployments".into(),
            };
            let ds: Vec<Deployment> = api.all(&path).await?;
            if json { print_json(&ds)? } else { print_deployments(&ds) }
        }
        DeploymentsCmd::Show { id } => {
            let d: Deployment = api.get(&format!("/api/v1/deployments/{id}")).await?;
            print_json(&d)?;
        }
    }
    Ok(0)
}

async fn events_cmd(api: &Api, a: EventsArgs) -> anyhow::Result<i32> {
    let mut q = format!("/api/v1/events?limit={}", a.limit.clamp(1, 1000));
    for (k, v) in [("node", &a.node), ("kind", &a.kind), ("since", &a.since)] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let page: Page<Event> = api.get(&q).await?;
    if a.json {
        print_json(&page.items)?;
    } else {
        for e in page.items {
            println!("{} {:<16} {:<14} {}", e.ts, e.kind, e.node.as_deref().unwrap_or("-"), e.message);
        }
    }
    Ok(0)
}

async fn wait_job(api: &Api, job: Job) -> anyhow::Result<Job> {
    let mut j = job;
    while j.state == JobState::Running {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        j = api.get(&format!("/api/v1/jobs/{}", j.id)).await?;
    }
    if let Some(e) = &j.error {
        bail!("{} job failed: {e}", j.kind);
    }
    Ok(j)
}

/// Commands against a running server.
async fn remote_cmd(client: &Client, cmd: Command, quiet: bool) -> anyhow::Result<i32> {
    let api = Api::Remote(client.clone());
    match cmd {
        Command::Nodes(c) => nodes_cmd(&api, c).await,
        Command::Standby(StandbyCmd::Add(a)) => standby_add(&api, None, std::path::Path::new(""), a, quiet).await,
        Command::Deployments(c) => deployments_cmd(&api, c).await,
        Command::Events(a) => events_cmd(&api, a).await,
        Command::Images(ImagesCmd::List { json }) => {
            let rows: Vec<Image> = api.all("/api/v1/images").await?;
            if json {
                print_json(&rows)?;
            } else {
                for r in rows {
                    println!(
                        "{:<24} {:>4} {:<16} {:<24} {:>8} {:>10}",
                        r.name,
                        r.version,
                        &r.id[..16],
                        r.created,
                        r.files,
                        human(r.bytes as u64)
                    );
                }
            }
            Ok(0)
        }
        Command::Images(ImagesCmd::Show { image, json }) => {
            let d: ImageDetail = api.get(&format!("/api/v1/images/{}", encode(&image))).await?;
            if json {
                print_json(&d)?;
            } else {
                println!(
                    "image     {}@{}\nid        {}\ncreated   {}",
                    d.image.name, d.image.version, d.image.id, d.image.created
                );
                println!("size      {} in {} files; {} chunks", human(d.image.bytes as u64), d.image.files, d.chunks);
            }
            Ok(0)
        }
        Command::Images(ImagesCmd::Layout { image, from, clear, json, .. }) => {
            let path = format!("/api/v1/images/{}/layout", encode(&image));
            let l: crate::wire::ImageLayout = match (from, clear) {
                (Some(f), _) => api.call(reqwest::Method::PUT, &path, Some(&read_layout(&f)?)).await?,
                (None, true) => api.call::<(), _>(reqwest::Method::DELETE, &path, None).await?,
                (None, false) => api.get(&path).await?,
            };
            if json {
                print_json(&l.layout)?
            } else {
                print_layout(&l)
            }
            Ok(0)
        }
        Command::Images(ImagesCmd::Delete { image }) => {
            let v: serde_json::Value =
                api.call::<(), _>(reqwest::Method::DELETE, &format!("/api/v1/images/{}", encode(&image)), None).await?;
            println!("deleted {} version(s) of {image}", v["deleted"]);
            Ok(0)
        }
        Command::Images(ImagesCmd::Verify { image, json }) => {
            let Some(image) = image else { bail!("with --server, name the image to verify") };
            let job: Job = api
                .call::<(), _>(reqwest::Method::POST, &format!("/api/v1/images/{}/verify", encode(&image)), None)
                .await?;
            let j = wait_job(&api, job).await?;
            let rep = j.result.unwrap_or_default();
            let faults = rep["faults"].as_array().cloned().unwrap_or_default();
            if json {
                print_json(&rep)?;
            } else {
                for f in &faults {
                    println!("FAULT {}", f.as_str().unwrap_or_default());
                }
                println!("verified {image}: {} chunks, {} fault(s)", rep["chunks"], faults.len());
            }
            Ok(if faults.is_empty() { 0 } else { 1 })
        }
        Command::Images(ImagesCmd::Gc { json }) => {
            let job: Job = api.call::<(), _>(reqwest::Method::POST, "/api/v1/gc", None).await?;
            let j = wait_job(&api, job).await?;
            let rep = j.result.unwrap_or_default();
            if json {
                print_json(&rep)?
            } else {
                println!("gc freed {} bytes", rep["freed_bytes"])
            }
            Ok(0)
        }
        Command::Deploy(a) => deploy_remote(client, a, quiet).await,
        Command::Capture(_) | Command::Images(_) => {
            bail!("capture, import and export run on the server host against its data dir (omit --server)")
        }
        Command::Serve { .. }
        | Command::Config(_)
        | Command::Failover(_)
        | Command::Agent(_)
        | Command::Pxe(_)
        | Command::Layout(_)
        | Command::Update(_)
        | Command::Generate { .. } => {
            unreachable!("handled before")
        }
    }
}

/// `deploy --server`: pull the image over HTTP and write it like a local deploy.
async fn deploy_remote(client: &Client, a: DeployArgs, quiet: bool) -> anyhow::Result<i32> {
    let who: WhoAmI = client.get("/api/v1/whoami").await?;
    let counters = std::sync::Arc::new(crate::deploy::DeployCounters::default());
    let dep = who.deployment.map(|d| d.id);
    if let Some(d) = dep {
        report(client, d, ProgressStatus::Running, "writing", &counters, None).await;
    }
    let t = Instant::now();
    let res =
        crate::pull::pull(client, &a.image, a.target.clone(), dep, counters.clone(), quiet || a.json, !a.no_sync).await;
    match res {
        Ok(p) => {
            if let Some(d) = dep {
                report(client, d, ProgressStatus::Done, "done", &counters, None).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let stats = p.stats;
            if a.json {
                print_json(
                    &json!({"image": p.label, "id": p.id, "target": a.target, "entries": stats.entries, "files": stats.files, "bytes": stats.bytes, "seconds": secs}),
                )?;
            } else {
                println!(
                    "deployed {} from the server into {}: {} entries, {} in {secs:.1}s",
                    p.label,
                    a.target.display(),
                    stats.entries,
                    human(stats.bytes)
                );
            }
            Ok(0)
        }
        Err(e) => {
            if let Some(d) = dep {
                report(client, d, ProgressStatus::Failed, "writing", &counters, Some(format!("{e:#}"))).await;
            }
            Err(e)
        }
    }
}

// ---------------------------------------------------------------- serve

/// Read a token file (the admin's or the followers'), or create it (0600); a new one is
/// printed once when `shown` names it (the followers' token travels with the join instead).
fn token_file(data_dir: &std::path::Path, file: &std::path::Path, shown: Option<&str>) -> anyhow::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.len() < 16 {
                bail!(
                    "token file {} holds no usable token (16+ characters); delete it to make a new one",
                    path.display()
                );
            }
            if std::fs::metadata(&path)?.permissions().mode() & 0o077 != 0 {
                tracing::warn!("token file {} is readable by others; chmod 600 it", path.display());
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = crate::http::auth::new_token();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(format!("{t}\n").as_bytes())?;
            f.sync_all()?;
            if let Some(what) = shown {
                println!("{what} (saved to {}, shown only now): {t}", path.display());
            }
            Ok(t)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `failover` commands work on local files only, so they run without the inventory and
/// while the service holds its sockets.
fn failover_cmd(data_dir: &std::path::Path, cmd: FailoverCmd) -> anyhow::Result<i32> {
    use crate::failover::request::deliver_request;
    use crate::failover::status::STATUS_FILE;
    use crate::failover::{AdminRequest, Status};
    match cmd {
        FailoverCmd::Keygen { file } => {
            use std::os::unix::fs::OpenOptionsExt;
            let text = crate::failover::generate_key_file(1, rand::random())?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("creating key file {}", file.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            println!("wrote {} (0600); copy it to the peer's data dir", file.display());
        }
        FailoverCmd::Status { json } => {
            let path = data_dir.join(STATUS_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("reading {} (is `understudy serve` with [failover] running?)", path.display())
            })?;
            let s: Status = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            // The `[sync]` follower's status file, when this node runs one.
            let sync = crate::sync::SyncStatus::read_file(data_dir)
                .with_context(|| format!("reading {}", data_dir.join(crate::sync::status::SYNC_FILE).display()))?;
            if json {
                let mut v = serde_json::to_value(&s)?;
                if let Some(f) = &sync {
                    v["sync"] = serde_json::to_value(f)?;
                }
                print_json(&v)?;
            } else {
                print!("{}", s.render_text());
                if let Some(f) = &sync {
                    print!("{}", f.render_line());
                }
            }
        }
        // The CLI's path to the service is the request file, so it works without HTTP.
        c @ (FailoverCmd::Takeover | FailoverCmd::Release) => {
            let req = if matches!(c, FailoverCmd::Takeover) { AdminRequest::Takeover } else { AdminRequest::Release };
            deliver_request(data_dir, req, std::time::Duration::from_secs(2))
                .with_context(|| format!("failover {} (data dir {})", req.word(), data_dir.display()))?;
            println!("the service took the {} request (see `understudy failover status`)", req.word());
        }
    }
    Ok(0)
}

async fn serve_cmd(data_dir_flag: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    let data_dir = cfg.data_dir.clone().unwrap_or_else(|| data_dir_flag.to_path_buf());
    let inv = Inventory::open(&data_dir).await.with_context(|| format!("opening data dir {}", data_dir.display()))?;
    // The node network rules read the primary's networks and [failover] from this file.
    inv.set_serve_config(config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
        });
    }
    for w in cfg.warnings() {
        eprintln!("understudy: {w}");
        tracing::warn!("{w}");
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut failover = None;
    // The standby's follower updates only through this gate, which a takeover closes.
    let sync_gate = cfg.sync.as_ref().map(|s| (crate::sync::Gate::default(), s.stop_timeout));
    if let Some(f) = cfg.failover.clone() {
        let node = f.node.clone();
        let mut prepared = crate::failover::prepare(f, &data_dir).await.context("starting failover")?;
        if let Some((g, limit)) = &sync_gate {
            prepared = prepared.with_sync_gate(g.clone(), *limit);
        }
        let (sink, mut logged) = tokio::sync::mpsc::unbounded_channel::<crate::failover::LogEvent>();
        let (handle, service) = crate::failover::start(prepared, sink, &shutdown);
        failover = Some(handle);
        // Its own task, so event-log writes never run on the machine's task; it ends once
        // the service has ended and dropped its sender, after logging everything.
        let inv = inv.clone();
        let log = tokio::spawn(async move {
            while let Some(e) = logged.recv().await {
                let res = match e.kind.parse::<EventKind>() {
                    Ok(k) => inv.record_event(None, k, &e.message).await.map_err(|x| x.to_string()),
                    Err(x) => Err(x.to_string()),
                };
                if let Err(err) = res {
                    tracing::warn!("failover: event log: {err}");
                }
            }
        });
        tasks.spawn(async move {
            let r = service.await;
            let _ = log.await;
            r.with_context(|| format!("failover {node}"))
        });
    }
    let mut sync_handle = crate::sync::Handle::default();
    if let Some(c) = cfg.capture.clone() {
        let (sched, rx, now) = crate::sync::schedule::Schedule::new(c, inv.clone());
        sync_handle.capture = Some((rx, now));
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            sched.run(shutdown).await;
            Ok(())
        });
    }
    if let (Some(c), Some((gate, _))) = (cfg.sync.clone(), sync_gate) {
        // The primary shows this standby under its failover node name (its host name
        // without failover).
        let node = match &cfg.failover {
            Some(f) => f.node.clone(),
            None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
        };
        let (follower, rx, wake) =
            crate::sync::follow::Follower::new(node, c, data_dir.clone(), gate.clone(), inv.clone())
                .context("starting [sync]")?;
        sync_handle.follow = Some((rx, gate, wake));
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            follower.run(shutdown).await;
            Ok(())
        });
    }
    let mut http_state = None;
    if let Some(h) = cfg.http.clone() {
        let token = token_file(&data_dir, &h.admin_token_file, Some("admin token"))?;
        // The standbys' token: it reads images and reports freshness, nothing else.
        let sync_token = token_file(&data_dir, &h.sync_token_file, None)?;
        let listener =
            tokio::net::TcpListener::bind(h.listen).await.with_context(|| format!("binding HTTP to {}", h.listen))?;
        let addr = listener.local_addr()?;
        println!("understudy: HTTP API on http://{addr} (data dir {})", data_dir.display());
        std::io::stdout().flush()?;
        tracing::info!("HTTP API listening on http://{addr}");
        let state = crate::http::AppState::new(inv.clone(), h, &token, shutdown.clone())
            .with_boot(cfg.boot.clone(), cfg.tftp.as_ref().map(|t| t.root.clone()))
            .with_failover(failover.clone())
            .with_sync(Some(sync_handle.clone()))
            .with_sync_token(&sync_token);
        let state = std::sync::Arc::new(state);
        http_state = Some((state.clone(), addr));
        tasks.spawn(async move { crate::http::serve(state, listener).await.context("HTTP service") });
    }
    if let Some(d) = cfg.dhcp.clone() {
        let http_port = cfg.http.as_ref().map(|h| h.listen.port());
        let (inv, shutdown) = (inv.clone(), shutdown.clone());
        // Bind now, so a bad interface fails the start rather than later.
        crate::dhcp::bind(&d.interface, 67)?;
        tasks.spawn(async move { crate::dhcp::serve(inv, d, http_port, shutdown).await.context("DHCP service") });
    }
    if let Some(t) = cfg.tftp.clone() {
        // Bind and open the root now, so a bad address or root fails the start.
        let mut svc = crate::tftp::Service::bind(&t)?;
        // The signed GRUB of the Secure Boot chain reads grub/grub.cfg from the TFTP root:
        // it asks the HTTP service for this machine's script, like iPXE does.
        // Debian's signed GRUB network image speaks TFTP only: its script and the boot
        // environment come from the HTTP service's own decisions, served over TFTP.
        if let Some((state, addr)) = &http_state {
            svc = svc.with_generated("grub/grub.cfg", GRUB_CFG.as_bytes())?;
            // The agent is told the HTTP address the machine can reach: the one TFTP
            // answers on (or the DHCP server's), at the HTTP port.
            let ip = match svc.local_addr().ip() {
                ip if !ip.is_unspecified() => Some(ip),
                _ => cfg.dhcp.as_ref().map(|d| std::net::IpAddr::V4(d.server_ip)),
            };
            let host = ip.map(|ip| std::net::SocketAddr::new(ip, addr.port()).to_string());
            svc = svc.with_resolver(std::sync::Arc::new(crate::http::boot::BootFiles::new(state.clone(), host)))?;
        }
        let shutdown = shutdown.clone();
        tasks.spawn(async move { svc.run(shutdown).await.context("TFTP service") });
    }
    if tasks.is_empty() {
        bail!("nothing to serve: the configuration enables no service");
    }
    inv.record_event(None, EventKind::ServerStart, "understudy serve started").await?;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r? {
            shutdown.cancel();
            return Err(e);
        }
    }
    inv.record_event(None, EventKind::ServerStop, "understudy serve stopped").await?;
    Ok(0)
}

/// The Secure Boot GRUB's first config (`grub/grub.cfg` on TFTP): this machine's script.
const GRUB_CFG: &str =
    "# understudy: Secure Boot network boot (shim, this GRUB, then the server's script for this machine).
set timeout=0
echo \"understudy: asking the server for this machine's script\"
configfile (tftp)/boot/${net_default_mac}.grub
";

/// Man pages for the command and every subcommand, and bash, zsh and fish completions,
/// all from the argument definitions above (so they cannot drift from the binary).
fn generate(out: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = out.join("man1");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "understudy", &comp)
            .with_context(|| format!("writing {shell} completions to {}", comp.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- pxe

async fn pxe_build_cmd(data_dir: &std::path::Path, a: PxeBuildArgs) -> anyhow::Result<i32> {
    let opts = crate::pxe::build::BuildOptions {
        kernel: a.kernel,
        modules: a.modules,
        busybox: a.busybox,
        output: a.output.unwrap_or_else(|| data_dir.join("boot")),
        force: a.force,
    };
    let t = Instant::now();
    let out = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || crate::pxe::build::build(&opts)).await??
    };
    let secs = t.elapsed().as_secs_f64();
    for w in &out.warnings {
        tracing::warn!("{w}");
    }
    let i = &out.info;
    if a.json {
        let mut v = serde_json::to_value(i)?;
        v["up_to_date"] = json!(out.up_to_date);
        v["output"] = json!(opts.output);
        v["warnings"] = json!(out.warnings);
        v["seconds"] = json!(secs);
        print_json(&v)?;
    } else if out.up_to_date {
        println!("boot environment in {} is up to date (input {})", opts.output.display(), &i.input_hash[..16]);
    } else {
        println!(
            "built {}: vmlinuz {} ({}), initramfs.img {} {} ({} unpacked, {} entries, understudy {}), {} modules, tools: {}; in {:.1}s",
            opts.output.display(),
            i.kernel_release,
            human(i.kernel.size),
            serde_json::to_value(i.compression)?.as_str().unwrap_or("?"),
            human(i.initramfs.size),
            human(i.uncompressed_size),
            i.entries,
            human(i.understudy_size),
            i.modules.len(),
            i.tools.keys().cloned().collect::<Vec<_>>().join(" "),
            secs
        );
    }
    Ok(0)
}
