//! Whole network boot with firmware nobody here wrote: QEMU (`-accel tcg`) PXE-boots
//! against `understudy serve` (DHCP, TFTP, HTTP) over a tap device inside a private network
//! namespace, on both firmware paths:
//! - BIOS: SeaBIOS with the NIC's iPXE option ROM (Debian's ipxe-qemu), which asks DHCP
//!   as iPXE and gets the per-node script URL straight away;
//! - UEFI: OVMF's own PXE (NIC without option ROM) fetches snponly.efi over TFTP, which
//!   runs iPXE, which fetches the script.
//!
//! The script boots the deploy environment built by `understudy pxe build` from Debian's
//! kernel; its agent partitions the VM's disk, deploys the image and reports. The test
//! then reads the VM's disk from the host, and boots the VM again to see it sent to its
//! local disk.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::netns::*;
use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A namespace holding the server side of a tap device the VM plugs into.
struct Net {
    _netns: Netns,
    ns: String,
    tap: String,
    subnet: u8,
}

impl Net {
    fn new() -> Net {
        let mut netns = Netns::new("nb");
        let ns = netns.add("s");
        let subnet = netns.subnet;
        let tap = "tap0".to_string();
        netns.tap(&ns, &tap);
        netns.addr(&ns, &tap, &format!("10.{subnet}.0.1/24"));
        Net { _netns: netns, ns, tap, subnet }
    }

    fn ip(&self, last: u8) -> String {
        format!("10.{}.0.{last}", self.subnet)
    }
}

/// A QEMU VM; killed on drop. Its serial console goes to a file.
struct Vm {
    child: Child,
    console: PathBuf,
}

impl Vm {
    fn console(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firmware {
    Bios,
    Uefi,
    /// OVMF with Secure Boot on and Microsoft's keys enrolled (Debian's shim is signed by them).
    SecureBoot,
}

const MAC: &str = "52:54:00:be:ef:01";

fn start_vm(sb: &Sandbox, net: &Net, fw: Firmware, disk: &Path, run: u32) -> Vm {
    start_vm_with(sb, net, fw, &[disk], run, false)
}

/// A VM with these disks; with `reboot`, a reboot restarts it (the firmware boots from
/// the network again) instead of ending QEMU.
fn start_vm_with(sb: &Sandbox, net: &Net, fw: Firmware, disks: &[&Path], run: u32, reboot: bool) -> Vm {
    let console = sb.path(&format!("console-{run}.log"));
    let mut args: Vec<String> = vec![
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        "1024".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap),
    ];
    if !reboot {
        args.push("-no-reboot".into());
    }
    for d in disks {
        args.extend(["-drive".into(), format!("file={},format=raw,if=virtio", d.display())]);
    }
    match fw {
        Firmware::Bios => {
            // The NIC's option ROM is Debian's iPXE (ipxe-qemu); boot from the network first.
            args.extend(["-boot".into(), "order=n".into()]);
            args.extend(["-device".into(), format!("virtio-net-pci,netdev=n0,mac={MAC}")]);
        }
        Firmware::Uefi | Firmware::SecureBoot => {
            let secure = fw == Firmware::SecureBoot;
            let (code, vars_src) = if secure {
                ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
            } else {
                ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd")
            };
            let vars = sb.path("OVMF_VARS.fd");
            if !vars.exists() {
                std::fs::copy(vars_src, &vars).expect("OVMF vars (package ovmf)");
            }
            if secure {
                // The secure-boot build keeps its variables behind SMM: only the firmware writes them.
                args.extend(["-machine".into(), "q35,smm=on".into()]);
                args.extend(["-global".into(), "driver=cfi.pflash01,property=secure,value=on".into()]);
            } else {
                args.extend(["-machine".into(), "q35".into()]);
            }
            args.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
            // No option ROM: the firmware's own PXE runs and must fetch iPXE over TFTP.
            args.extend(["-device".into(), format!("virtio-net-pci,netdev=n0,mac={MAC},romfile=,bootindex=1")]);
        }
    }
    let child = ns_cmd(&net.ns, "qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu");
    Vm { child, console }
}

fn wait_for(what: &str, limit: Duration, vm: &mut Vm, mut ok: impl FnMut(&str) -> bool) {
    let t = Instant::now();
    loop {
        let con = vm.console();
        if ok(&con) {
            return;
        }
        if let Ok(Some(st)) = vm.child.try_wait() {
            panic!("VM exited ({st}) before {what}; console:\n{con}");
        }
        assert!(t.elapsed() < limit, "no {what} after {limit:?}; console:\n{con}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn deployment_status(srv: &NsServer) -> Vec<String> {
    let (_, body) = srv.curl("GET", "/api/v1/deployments?node=vm", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["items"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap().to_string()).collect()
}

/// `serve` with DHCP, TFTP and HTTP inside the namespace, on the tap's subnet, with these
/// extra kernel arguments for the boot environment (and, for `fw`, its first loader).
fn serve_pxe(sb: &Sandbox, net: &Net, fw: Firmware, cmdline: &str) -> NsServer {
    let pxe = sb.path("pxe");
    std::fs::create_dir_all(&pxe).unwrap();
    for f in ["snponly.efi", "undionly.kpxe", "ipxe.efi"] {
        std::fs::copy(Path::new("/usr/lib/ipxe").join(f), pxe.join(f)).expect("iPXE binaries (package ipxe)");
    }
    // Debian's signed shim and GRUB network image (shim-signed, grub-efi-amd64-signed).
    for (from, to) in [
        ("/usr/lib/shim/shimx64.efi.signed", "shimx64.efi"),
        ("/usr/lib/shim/mmx64.efi.signed", "mmx64.efi"),
        ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grubx64.efi"),
    ] {
        std::fs::copy(from, pxe.join(to)).unwrap_or_else(|e| panic!("{from}: {e} (make pxe-binaries)"));
    }
    let loader = if fw == Firmware::SecureBoot { "shim" } else { "ipxe" };
    let cfg = sb.path("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {data:?}\n[http]\nlisten = \"{ip}:8080\"\n[dhcp]\ninterface = \"{tap}\"\nserver_ip = \"{ip}\"\n\
             subnet = \"10.{s}.0.0/24\"\nrange = \"10.{s}.0.100-10.{s}.0.150\"\nuefi_loader = \"{loader}\"\n[tftp]\nlisten = \"{ip}:69\"\nroot = {pxe:?}\n\
             [boot]\ncmdline = \"{cmdline}\"\nretry_interval = \"2s\"\n",
            data = sb.data().to_str().unwrap(),
            ip = net.ip(1),
            tap = net.tap,
            s = net.subnet,
            pxe = pxe.to_str().unwrap(),
        ),
    )
    .unwrap();
    let mut cmd = ns_cmd(&net.ns, bin());
    cmd.args(["--data-dir", sb.data().to_str().unwrap(), "serve", "--config", cfg.to_str().unwrap()]);
    let srv = Server::start_cmd(sb, &mut cmd);
    // curl from inside the namespace (the server listens on the namespace's address).
    NsServer { srv, ns: net.ns.clone() }
}

fn netboot(fw: Firmware) {
    let sb = Sandbox::new();
    let net = Net::new();
    let k = debian_kernel();
    // The image: a small tree with the identity files the agent rewrites.
    let src = sb.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    std::fs::write(src.join("etc/fstab"), "UUID=old / ext4 defaults 0 1\n").unwrap();
    std::fs::create_dir_all(src.join("srv/data")).unwrap();
    std::fs::write(src.join("srv/data/blob"), noise(2 << 20, 3)).unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    let boot = sb.data().join("boot");
    sb.ok(&build_args(&k, &boot));
    let srv = serve_pxe(
        &sb,
        &net,
        fw,
        "console=ttyS0,115200 understudy.bootloader=none understudy.reboot=0 understudy.poweroff=1",
    );
    let disk = sb.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(3 << 30).unwrap();
    let limit = Duration::from_secs(600);
    let add = || srv.ok(&sb, &["nodes", "add", "vm", "--mac", MAC, "--ip", &net.ip(50), "--image", "head-a"]);
    let mut vm = if fw == Firmware::Uefi {
        // Unknown at first, with MAC collection on (the firmware gets iPXE only then): iPXE
        // gets the waiting script and asks again; once the admin adds the node, the next
        // check boots the deploy, with no reboot in between. (This path prints on the
        // serial console; the BIOS NIC ROM's iPXE writes to VGA only.)
        srv.ok(&sb, &["nodes", "collect", "--minutes", "10"]);
        let mut vm = start_vm(&sb, &net, fw, &disk, 1);
        wait_for("a second check of the unknown machine", limit, &mut vm, |c| c.contains("(check 2 of"));
        let (_, disc) = srv.curl("GET", "/api/v1/discovered", None);
        assert!(disc.contains(MAC), "{disc}");
        add();
        vm
    } else {
        add();
        start_vm(&sb, &net, fw, &disk, 1)
    };
    wait_for("the boot environment", limit, &mut vm, |c| c.contains("understudy-init: starting"));
    wait_for("the agent's report", limit, &mut vm, |c| {
        c.contains("understudy-agent: node vm deployed") || c.contains("deploy failed")
    });
    let con = vm.console();
    assert!(con.contains("understudy-agent: node vm deployed"), "console:\n{con}");
    // (On UEFI the NIC has no option ROM, so reaching the agent means the firmware's PXE
    // fetched snponly.efi from our TFTP and iPXE then fetched the script over HTTP.)
    // init powers off after the agent (understudy.poweroff=1); QEMU exits with -no-reboot.
    let t = Instant::now();
    while vm.child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(vm);
    assert_eq!(deployment_status(&srv), ["done"]);
    let (_, node) = srv.curl("GET", "/api/v1/nodes/vm", None);
    assert!(node.contains("\"state\":\"deployed\""), "{node}");

    // The VM's disk, read from the host: GPT, and the image on the root filesystem.
    let pt = Command::new("sfdisk").args(["--json", disk.to_str().unwrap()]).output().unwrap();
    let pt: serde_json::Value = serde_json::from_slice(&pt.stdout).expect("partition table on the VM disk");
    assert_eq!(pt["partitiontable"]["label"], "gpt");
    let p = &pt["partitiontable"]["partitions"][2];
    let (start, size) = (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512);
    let mnt = sb.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = Command::new("mount")
        .args([
            "-o",
            &format!("ro,loop,offset={start},sizelimit={size}"),
            disk.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "mount: {}", String::from_utf8_lossy(&o.stderr));
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let m = Umount(mnt.clone());
    assert_eq!(rsync_diff(&src.join("srv"), &mnt.join("srv"), &[]), "");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/hostname")).unwrap(), "vm\n");
    drop(m);

    // Deployed: the next network boot is sent to the local disk. iPXE (the BIOS NIC's
    // ROM) asks for its script and gets the local-boot one; UEFI firmware PXE gets an
    // offer without a boot file and goes on to its next boot entry.
    let mut vm = start_vm(&sb, &net, fw, &disk, 2);
    let t = Instant::now();
    loop {
        let done = match fw {
            Firmware::Bios => srv.curl("GET", "/api/v1/events?kind=boot.local", None).1.contains("boot from its disk"),
            Firmware::Uefi | Firmware::SecureBoot => vm.console().contains("failed to load Boot0001 \"UEFI PXEv4"),
        };
        if done {
            break;
        }
        assert!(t.elapsed() < limit, "the deployed VM was not sent to its disk; console:\n{}", vm.console());
        assert!(vm.child.try_wait().unwrap().is_none(), "VM exited; console:\n{}", vm.console());
        std::thread::sleep(Duration::from_secs(1));
    }
    if fw == Firmware::Uefi {
        assert!(!vm.console().contains("snponly.efi"), "a deployed node was given iPXE: {}", vm.console());
    }
    assert_eq!(deployment_status(&srv), ["done"], "a deployed node must not start another deployment");
}

/// The server plus the namespace its address lives in.
struct NsServer {
    srv: Server,
    ns: String,
}

impl NsServer {
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.srv.curl_in(Some(&self.ns), method, path, Some(&self.srv.token), body)
    }

    fn ok(&self, sb: &Sandbox, args: &[&str]) {
        let mut c = ns_cmd(&self.ns, bin());
        c.arg("--data-dir").arg(sb.data()).args(args);
        c.args(["--server", &self.srv.url, "--token", &self.srv.token]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// The admin's story end to end on one firmware: a real Debian root (kernel, GRUB, systemd)
/// is captured, the boot environment is built from that root's own kernel, the standby
/// network-boots, the agent lays out its disk, streams the image, installs GRUB and
/// reboots; the server sends the next network boot to the disk, and the standby comes up
/// from its own disk to a login prompt with its own name.
fn standby_boots_its_own_disk(fw: Firmware) {
    let sb = Sandbox::new();
    let net = Net::new();
    let root = standby_root();
    let k = kernel_in(&root, Some(debian_kernel().busybox), "`make standby-root`");
    let t0 = Instant::now();
    sb.ok(&["capture", "--name", "head-a", root.to_str().unwrap()]);
    let boot = sb.data().join("boot");
    sb.ok(&build_args(&k, &boot));
    let prep = t0.elapsed();
    let srv = serve_pxe(&sb, &net, fw, "console=ttyS0,115200");
    let disk = sb.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 30).unwrap();
    srv.ok(&sb, &["nodes", "add", "vm", "--mac", MAC, "--ip", &net.ip(50), "--image", "head-a"]);
    let limit = Duration::from_secs(900);
    let t1 = Instant::now();
    let mut vm = start_vm_with(&sb, &net, fw, &[&disk], 1, true);
    wait_for("the agent", limit, &mut vm, |c| c.contains("understudy-agent: deployment"));
    let to_agent = t1.elapsed();
    wait_for("the agent's report", limit, &mut vm, |c| {
        c.contains("understudy-agent: node vm deployed") || c.contains("deploy failed")
    });
    let con = vm.console();
    assert!(con.contains("understudy-agent: node vm deployed"), "console:\n{con}");
    let deployed = t1.elapsed();
    assert_eq!(deployment_status(&srv), ["done"]);
    wait_for("the deployed system's login prompt", limit, &mut vm, |c| c.contains("vm login:"));
    let login = t1.elapsed();
    // It came up from its own disk: the server told its network boot so, no second
    // deployment was made, and the system itself reports the disk it runs from.
    let (_, ev) = srv.curl("GET", "/api/v1/events?kind=boot.local", None);
    assert!(ev.contains("told to boot from its disk"), "{ev}");
    assert_eq!(deployment_status(&srv), ["done"], "a deployed node must not start another deployment");
    wait_for("the system's own report", Duration::from_secs(120), &mut vm, |c| c.contains("understudy-report: end"));
    let con = vm.console();
    let report = &con[con.rfind("understudy-report: begin").unwrap()..];
    assert!(report.starts_with("understudy-report: begin vm"), "{report}");
    assert!(report.contains("\"mountpoint\": \"/\""), "{report}");
    eprintln!(
        "standby {fw:?}: capture + pxe build {:.0}s; power-on to agent {:.0}s, to deployed {:.0}s, to login {:.0}s",
        prep.as_secs_f64(),
        to_agent.as_secs_f64(),
        deployed.as_secs_f64(),
        login.as_secs_f64()
    );
}

/// Secure Boot on (OVMF's secure-boot build with Microsoft's keys): DHCP hands the firmware
/// Debian's signed shim, which loads the signed GRUB network image, which reads the
/// server's grub.cfg over TFTP and this machine's GRUB script over HTTP, and boots the
/// signed Debian kernel with the understudy initramfs; the agent deploys under lockdown.
#[test]
fn secure_boot_pxe_boots_the_signed_chain_into_the_agent() {
    let sb = Sandbox::new();
    let net = Net::new();
    // The boot environment from a root whose kernel and modules Debian signed.
    let root = standby_root();
    let k = kernel_in(&root, Some(debian_kernel().busybox), "`make standby-root`");
    let src = sb.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    std::fs::write(src.join("srv-blob"), noise(1 << 20, 5)).unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    let boot = sb.data().join("boot");
    sb.ok(&build_args(&k, &boot));
    let fw = Firmware::SecureBoot;
    let cmdline = "console=ttyS0,115200 understudy.bootloader=none understudy.reboot=0 understudy.poweroff=1";
    let srv = serve_pxe(&sb, &net, fw, cmdline);
    let disk = sb.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(3 << 30).unwrap();
    srv.ok(&sb, &["nodes", "add", "vm", "--mac", MAC, "--ip", &net.ip(50), "--image", "head-a"]);
    let t = Instant::now();
    let mut vm = start_vm_with(&sb, &net, fw, &[&disk], 1, false);
    let limit = Duration::from_secs(600);
    wait_for("the agent's report", limit, &mut vm, |c| {
        c.contains("understudy-agent: node vm deployed") || c.contains("deploy failed")
    });
    let con = vm.console();
    assert!(con.contains("understudy-agent: node vm deployed"), "console:\n{con}");
    // GRUB ran the server's script, and the kernel came up with Secure Boot enforced.
    assert!(con.contains("understudy: deploying head-a@1 to vm"), "console:\n{con}");
    assert!(con.contains("Secure boot enabled"), "console:\n{con}");
    assert_eq!(deployment_status(&srv), ["done"]);
    eprintln!("secure boot: power-on to deployed {:.0}s", t.elapsed().as_secs_f64());
}

#[test]
fn bios_standby_boots_its_own_disk_to_login() {
    standby_boots_its_own_disk(Firmware::Bios);
}

#[test]
fn bios_pxe_boots_into_the_agent_and_deploys() {
    netboot(Firmware::Bios);
}

#[test]
fn uefi_pxe_boots_into_the_agent_and_deploys() {
    netboot(Firmware::Uefi);
}
