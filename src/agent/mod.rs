//! The installer that runs in the boot environment (`understudy agent`, started by the
//! initramfs's /init): it reads its deployment from the kernel command line, tells the
//! server it booted, plans the image's disk layout on this machine's disks (refusing before
//! anything is written when it does not fit), replays it, streams the image (every chunk
//! verified), gives the node its own identity and network configuration (and a standby its
//! side of the failover pair), installs the bootloader, reports the outcome and reboots.

pub mod boot;
pub mod disk;
pub mod identity;
pub mod network;
pub mod nics;
pub mod replay;

use crate::deploy::DeployCounters;
use crate::pull::report;
use crate::remote::Client;
use crate::wire::ProgressStatus::{self, Done, Failed, Running};
use crate::wire::cmdline::{self, BootArgs as AgentArgs};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// How the agent runs (defaults fit the boot environment; tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Kernel command line file.
    pub cmdline: PathBuf,
    /// Install on this disk (overrides `understudy.disk`).
    pub disk: Option<String>,
    /// Where the new root is mounted while it is written.
    pub mount_dir: PathBuf,
    /// Do not reboot at the end (overrides `understudy.reboot`).
    pub no_reboot: bool,
    /// Where block devices are listed.
    pub sys_block: PathBuf,
    /// Where UEFI firmware shows itself (absent under BIOS).
    pub efi_dir: PathBuf,
    /// Where network interfaces are listed.
    pub sys_net: PathBuf,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            cmdline: PathBuf::from("/proc/cmdline"),
            disk: None,
            mount_dir: PathBuf::from("/mnt/target"),
            no_reboot: false,
            sys_block: PathBuf::from("/sys/block"),
            efi_dir: PathBuf::from("/sys/firmware/efi"),
            sys_net: PathBuf::from("/sys/class/net"),
        }
    }
}

/// Run the whole install; the outcome is reported to the server either way.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&opts.cmdline).with_context(|| format!("reading {}", opts.cmdline.display()))?;
    let mut a = cmdline::parse(&text)?;
    if opts.disk.is_some() {
        a.disk = opts.disk.clone();
    }
    if opts.no_reboot {
        a.reboot = false;
    }
    println!("understudy-agent: deployment {} for node {} from {}", a.deployment, a.node, a.server);
    let client = Client::new(&a.server, Some(a.token.clone()))?;
    let counters = Arc::new(DeployCounters::default());
    booted(&client, &a).await?;
    report_hardware(&client, &a, &opts).await;
    let res = install(&client, &a, &counters, &opts).await;
    match &res {
        Ok(()) => {
            report(&client, a.deployment, Done, "done", &counters, None).await;
            println!("understudy-agent: node {} deployed", a.node);
        }
        Err(e) => {
            report(&client, a.deployment, Failed, "install", &counters, Some(format!("{e:#}"))).await;
            eprintln!("understudy-agent: deploy failed: {e:#}");
        }
    }
    res?;
    if a.reboot {
        println!("understudy-agent: rebooting into the deployed system");
        // Sync first so nothing written is lost.
        rustix::fs::sync();
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
            anyhow::bail!("reboot failed: {e}");
        }
    }
    Ok(())
}

/// Tell the server the boot environment is up (the node becomes `deploying`). The network
/// may still be settling right after DHCP, so this retries for a minute.
async fn booted(client: &Client, a: &AgentArgs) -> anyhow::Result<()> {
    let mut last = None;
    let none = DeployCounters::default();
    for attempt in 0..30 {
        match crate::pull::post_progress(client, a.deployment, ProgressStatus::Running, "booted", &none, None).await {
            Ok(()) => {
                println!("understudy-agent: reported to {}", a.server);
                return Ok(());
            }
            // The server answered: retrying will not change its mind (expired token, ...).
            Err(e @ crate::remote::RemoteError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("server not reachable yet (attempt {}): {e}", attempt + 1);
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(anyhow::anyhow!("cannot reach the server at {}: {}", a.server, last.map(|e| e.to_string()).unwrap_or_default()))
}

/// What this machine has, for the server to plan the image's layout on; a failed report
/// is logged, not fatal (the install does not depend on it).
async fn report_hardware(client: &Client, a: &AgentArgs, opts: &AgentOptions) {
    let disks = match disk::list_disks(&opts.sys_block) {
        // Unused loop and ram devices are empty: nothing to plan on.
        Ok(d) => d.into_iter().filter(|d| d.size > 0).take(crate::wire::DISKS_MAX).collect(),
        Err(e) => {
            tracing::warn!("cannot list disks in {}: {e}", opts.sys_block.display());
            return;
        }
    };
    let (firmware, secure_boot) = firmware(&opts.efi_dir);
    let nics = nics::list(&opts.sys_net).unwrap_or_else(|e| {
        tracing::warn!("cannot list interfaces in {}: {e}", opts.sys_net.display());
        Vec::new()
    });
    let hw = crate::wire::Hardware { firmware, secure_boot, disks, nics };
    let path = format!("/api/v1/deployments/{}/hardware", a.deployment);
    if let Err(e) = client.call::<_, serde_json::Value>(reqwest::Method::POST, &path, Some(&hw)).await {
        tracing::warn!("could not report the hardware: {e}");
    }
}

/// How this machine booted, from `/sys/firmware/efi` (present only under UEFI) and the
/// SecureBoot variable (its last byte is 1 when Secure Boot is on).
pub fn firmware(efi_dir: &Path) -> (crate::wire::Firmware, bool) {
    if !efi_dir.is_dir() {
        return (crate::wire::Firmware::Bios, false);
    }
    let var = efi_dir.join("efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c");
    let on = std::fs::read(var).ok().and_then(|b| b.last().copied()) == Some(1);
    (crate::wire::Firmware::Uefi, on)
}

async fn install(
    client: &Client,
    a: &AgentArgs,
    counters: &Arc<DeployCounters>,
    opts: &AgentOptions,
) -> anyhow::Result<()> {
    let mut phases = Phases::start();
    let d: crate::wire::Deployment = client.get(&format!("/api/v1/deployments/{}", a.deployment)).await?;
    let fetched = replay::fetch(client, &d.image).await?;
    let (layout, recorded) = replay::prepare(fetched, d.bytes_total.max(0) as u64);
    let disks = disk::list_disks(&opts.sys_block)?;
    let targets = replay::targets(&disks, a.disk.as_deref())?;
    // Planned before anything is written: a layout that does not fit is refused here.
    let plan = replay::make_plan(&layout, &targets, a.disk.is_some(), &opts.mount_dir, &d.image)?;
    println!(
        "understudy-agent: installing {} with its {} layout:\n{}",
        d.image,
        if recorded { "recorded" } else { "default" },
        plan.render()
    );
    let targets_text = plan.disks.iter().map(|m| m.target.as_str()).collect::<Vec<_>>().join(", ");
    report(client, a.deployment, Running, &format!("partitioning {targets_text}"), counters, None).await;
    let mut rep = {
        let (plan, layout, links) = (plan.clone(), layout.clone(), a.bootloader);
        tokio::task::spawn_blocking(move || replay::run(&plan, &layout, links)).await??
    };
    phases.done("partition");
    let root = opts.mount_dir.clone();
    // The other filesystems' mount points exist already; the image's directories there
    // are written into them.
    let mount_points: Vec<String> =
        layout.mounts().iter().filter(|m| m.path != "/").map(|m| m.path.trim_start_matches('/').to_string()).collect();
    let dopts =
        crate::deploy::DeployOptions { quiet: true, sync: true, counters: Some(counters.clone()), mount_points };
    let pulled = crate::pull::pull_into(client, &d.image, root.clone(), Some(a.deployment), dopts).await?;
    println!("understudy-agent: wrote {} files, {} bytes", pulled.stats.files, pulled.stats.bytes);
    phases.done("stream");
    report(client, a.deployment, Running, "identity", counters, None).await;
    let source = if recorded {
        identity::FstabSource::Recorded(&layout)
    } else {
        identity::FstabSource::Default(default_filesystems(&layout)?)
    };
    let ssh_before = crate::update::record::list_prefixed(&root, "/etc/ssh", "ssh_host_");
    for line in identity::apply(&root, &a.node, &source, a.keep_ssh_keys)? {
        println!("understudy-agent: identity: {line}");
    }
    report(client, a.deployment, Running, "network", counters, None).await;
    let net: crate::wire::NetworkPlan = client
        .get(&format!("/api/v1/deployments/{}/network", a.deployment))
        .await
        .context("fetching the deployment's network plan")?;
    let applied = network::apply_recorded(&root, &net)?;
    for line in &applied.lines {
        println!("understudy-agent: network: {line}");
    }
    // What this node owns, so that `understudy update` leaves it alone.
    crate::update::record::record_deployment(
        &root,
        &pulled.label,
        &pulled.id,
        a.deployment,
        a.keep_ssh_keys,
        ssh_before,
        &applied.paths,
    )?;
    phases.done("identity");
    let mut mounts = Mounts::default();
    let wants_loader = layout.bootloader != crate::layout::doc::Bootloader::None;
    if a.bootloader && wants_loader {
        report(client, a.deployment, Running, "bootloader", counters, None).await;
        // The ESP, mounted now that the tree is written (see replay::Replay::deferred).
        rep.mount_deferred()?;
        let uefi = opts.efi_dir.is_dir();
        for line in boot::install(&root, &plan, &layout, &rep, uefi, &mut mounts)? {
            println!("understudy-agent: bootloader: {line}");
        }
    } else if a.bootloader {
        println!("understudy-agent: the layout says bootloader none: no bootloader installed");
    }
    mounts.release()?;
    rep.mounts.release()?;
    phases.done("bootloader");
    println!("understudy-agent: phases: {}", phases.render());
    Ok(())
}

/// How long each step of the install took, printed on the console as it ends (the admin
/// sees where the time goes; the boot benchmark reads these lines).
struct Phases {
    since: std::time::Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Phases {
        Phases { since: std::time::Instant::now(), done: Vec::new() }
    }

    /// The phase `name` ends now; the next one starts.
    fn done(&mut self, name: &'static str) {
        let took = self.since.elapsed();
        self.since = std::time::Instant::now();
        println!("understudy-agent: phase {name} took {:.1}s", took.as_secs_f64());
        self.done.push((name, took));
    }

    /// `partition 2.1s, stream 40.3s, ...`
    fn render(&self) -> String {
        self.done.iter().map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
    }
}

/// The identities the default layout's fstab is written with (`/` and the ESP).
fn default_filesystems(layout: &crate::layout::doc::Layout) -> anyhow::Result<disk::Filesystems> {
    let uuid_at = |path: &str| {
        layout
            .mounts()
            .into_iter()
            .find(|m| m.path == path)
            .and_then(|m| layout.formats().find(|f| f.id == m.device))
            .and_then(|f| f.uuid.clone())
    };
    match (uuid_at("/"), uuid_at("/boot/efi")) {
        (Some(root_uuid), Some(esp_id)) => Ok(disk::Filesystems { root_uuid, esp_id }),
        _ => anyhow::bail!("the default layout has no / or /boot/efi filesystem with a UUID"),
    }
}

/// Mounts made during the install, undone in reverse order (also on error).
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Mount `src` on `dir` (made if missing) with these extra `mount` arguments.
    pub fn mount(&mut self, src: &str, dir: &Path, opts: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        disk::run_cmd(Command::new("mount").args(opts).arg(src).arg(dir))?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    /// Take over a mount made elsewhere.
    pub fn push(&mut self, dir: PathBuf) {
        self.0.push(dir);
    }

    /// Unmount everything, newest first; the first failure is returned.
    pub fn release(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while let Some(d) = self.0.pop() {
            if let Err(e) = disk::run_cmd(Command::new("umount").arg(&d)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Unmount everything lazily, ignoring errors (an error path must not leave the
    /// target mounted).
    pub fn release_quietly(&mut self) {
        while let Some(d) = self.0.pop() {
            let _ = Command::new("umount").arg("-l").arg(&d).status();
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.release_quietly();
    }
}
