//! The installer that runs in the boot environment (`understudy agent`, started by the
//! initramfs's /init): it reads its deployment from the kernel command line, tells the
//! server it booted, lays out the disk, streams the image (every chunk verified), gives the
//! node its own identity, installs the bootloader, reports the outcome and reboots.

pub mod disk;
pub mod identity;

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
    let hw = crate::wire::Hardware { firmware, secure_boot, disks };
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
    let d: crate::wire::Deployment = client.get(&format!("/api/v1/deployments/{}", a.deployment)).await?;
    let need = (d.bytes_total.max(0) as u64).saturating_mul(5) / 4 + (1 << 30);
    let disk = match &a.disk {
        Some(d) => d.clone(),
        None => disk::choose_disk(&disk::list_disks(&opts.sys_block)?, need)?,
    };
    println!("understudy-agent: installing {} on {disk}", d.image);
    report(client, a.deployment, Running, &format!("partitioning {disk}"), counters, None).await;
    let fs = disk::Filesystems::random();
    let parts = {
        let (disk, fs) = (disk.clone(), fs.clone());
        tokio::task::spawn_blocking(move || disk::apply(&disk, &fs)).await??
    };
    let root = opts.mount_dir.clone();
    let mut mounts = Mounts::default();
    std::fs::create_dir_all(&root)?;
    mounts.mount(&parts.root, &root, &[])?;
    // mkfs.ext4 leaves an empty lost+found; the deploy wants an empty root (the image has its own).
    let _ = std::fs::remove_dir(root.join("lost+found"));
    let pulled =
        crate::pull::pull(client, &d.image, root.clone(), Some(a.deployment), counters.clone(), true, true).await?;
    println!("understudy-agent: wrote {} files, {} bytes", pulled.stats.files, pulled.stats.bytes);
    report(client, a.deployment, Running, "identity", counters, None).await;
    identity::apply(&root, &a.node, &fs, a.keep_ssh_keys)?;
    if a.bootloader {
        report(client, a.deployment, Running, "bootloader", counters, None).await;
        mounts.mount(&parts.esp, &root.join("boot/efi"), &[])?;
        bootloader(&root, &disk, &mut mounts)?;
    }
    mounts.release()?;
    Ok(())
}

/// Install GRUB from the image itself (its version matches its kernel): for BIOS into the
/// disk's BIOS boot partition, for UEFI as the removable-media loader, which firmware finds
/// without NVRAM entries; then generate its menu.
fn bootloader(root: &Path, disk: &str, mounts: &mut Mounts) -> anyhow::Result<()> {
    let grub = ["usr/sbin/grub-install", "sbin/grub-install"].iter().find(|p| root.join(p).exists());
    if grub.is_none() {
        anyhow::bail!(
            "the image has no grub-install: install grub in the primary, or boot with understudy.bootloader=none"
        );
    }
    for d in ["dev", "proc", "sys", "run"] {
        mounts.mount(&format!("/{d}"), &root.join(d), &["--bind"])?;
    }
    let chroot = || {
        let mut c = Command::new("chroot");
        c.arg(root);
        c
    };
    let efi = Path::new("/sys/firmware/efi").exists();
    if efi {
        disk::run_cmd(chroot().args([
            "grub-install",
            "--target=x86_64-efi",
            "--efi-directory=/boot/efi",
            "--removable",
            "--no-nvram",
        ]))?;
    } else {
        disk::run_cmd(chroot().args(["grub-install", "--target=i386-pc", disk]))?;
    }
    disk::run_cmd(chroot().args(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]))?;
    Ok(())
}

/// Mounts made during the install, undone in reverse order (also on error).
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, src: &str, dir: &Path, opts: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        disk::run_cmd(Command::new("mount").args(opts).arg(src).arg(dir))?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    fn release(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while let Some(d) = self.0.pop() {
            if let Err(e) = disk::run_cmd(Command::new("umount").arg(&d)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(d) = self.0.pop() {
            // Lazy: an error path must not leave the target mounted.
            let _ = Command::new("umount").arg("-l").arg(&d).status();
        }
    }
}
