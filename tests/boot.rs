//! Network boot over HTTP against the real server with curl: per-node iPXE scripts by
//! node state, token-scoped kernel and initramfs with Range, and the boot agent installing
//! an image on a real loop device (partition table, filesystems, deployed tree, identity).
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::disk::{Loop, Mount};
use common::*;
use std::process::Command;

const MAC: &str = "52:54:00:12:34:56";

/// A server on loopback with an image `head-a` and a boot environment in place (the
/// kernel and initramfs are opaque files to the HTTP side).
fn setup(sb: &Sandbox, src: &std::path::Path) -> Server {
    std::fs::create_dir_all(src.join("etc/ssh")).unwrap();
    std::fs::write(src.join("etc/fstab"), "UUID=old / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n").unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\thead-a\n").unwrap();
    std::fs::write(src.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(src.join("etc/ssh/ssh_host_ed25519_key"), "primary's secret key\n").unwrap();
    std::fs::create_dir_all(src.join("usr/lib")).unwrap();
    std::fs::write(src.join("usr/lib/big"), noise(3 << 20, 7)).unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    sb.boot_files();
    Server::start(sb, "[boot]\nretries = 3\nretry_interval = \"5s\"\n")
}

fn script(srv: &Server, path: &str) -> String {
    let (code, body) = srv.curl("GET", path, None, None);
    assert_eq!(code, 200, "{path}: {body}");
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    body
}

/// `key=value` from a deploy script's kernel line.
fn arg<'a>(script: &'a str, key: &str) -> &'a str {
    let line = script.lines().find(|l| l.starts_with("kernel ")).expect("kernel line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

/// Register node `standby` here (127.0.0.1) with `head-a` and fetch its deploy script;
/// returns the script and the kernel command line it boots.
fn deploy_boot(sb: &Sandbox, srv: &Server) -> (String, String) {
    sb.ok(&[
        "nodes",
        "add",
        "standby",
        "--mac",
        MAC,
        "--ip",
        "127.0.0.1",
        "--image",
        "head-a",
        "--server",
        &srv.url,
        "--token",
        &srv.token,
    ]);
    let s = script(srv, &format!("/boot/{MAC}.ipxe"));
    let kernel = s.lines().find(|l| l.starts_with("kernel ")).expect("kernel line");
    let cmdline = kernel.split_once(' ').unwrap().1.split(" || ").next().unwrap().to_string();
    (s, cmdline)
}

fn node_state(srv: &Server, name: &str) -> String {
    let (_, body) = srv.curl("GET", &format!("/api/v1/nodes/{name}"), Some(&srv.token), None);
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["state"].as_str().unwrap().to_string()
}

#[test]
fn scripts_follow_the_node_state_and_tokens_guard_the_boot_files() {
    let sb = Sandbox::new();
    let srv = setup(&sb, &sb.path("src"));
    let url = format!("/boot/{MAC}.ipxe");

    // Unknown MAC: wait and ask again, then power off after `retries` checks.
    let s = script(&srv, &url);
    assert!(
        s.contains("not a node")
            && s.contains(&format!("chain --replace --autofree {}.ipxe?attempt=2", MAC.replace(':', "-"))),
        "{s}"
    );
    assert!(script(&srv, &format!("{url}?attempt=3")).contains("\npoweroff || exit\n"));
    // The hyphen form the scripts chain to is the same machine.
    assert!(script(&srv, &format!("/boot/{}.ipxe?attempt=2", MAC.replace(':', "-"))).contains(MAC));
    // With collection on, the MAC is recorded from the script request alone.
    let (c, _) = srv.curl("POST", "/api/v1/discovered/collect", Some(&srv.token), Some(r#"{"minutes": 5}"#));
    assert_eq!(c, 200);
    assert!(script(&srv, &url).contains("was collected"));
    let (_, disc) = srv.curl("GET", "/api/v1/discovered", Some(&srv.token), None);
    assert!(disc.contains(MAC), "{disc}");

    // A node at another address: its script (which carries a token) is refused to us.
    sb.ok(&[
        "nodes", "add", "standby", "--mac", MAC, "--ip", "10.9.9.9", "--image", "head-a", "--server", &srv.url,
        "--token", &srv.token,
    ]);
    assert_eq!(node_state(&srv, "standby"), "assigned");
    let s = script(&srv, &url);
    assert!(s.contains("refused") && !s.contains("token="), "{s}");
    let (_, deps) = srv.curl("GET", "/api/v1/deployments", Some(&srv.token), None);
    assert!(deps.contains("\"total\":0"), "{deps}");

    // From its own address it gets the deploy environment with a fresh deployment.
    sb.ok(&["nodes", "set", "standby", "--ip", "127.0.0.1", "--server", &srv.url, "--token", &srv.token]);
    let s = script(&srv, &url);
    assert!(s.contains("initrd --name initramfs initramfs.img?token="), "{s}");
    let token = arg(&s, "understudy.token").to_string();
    assert_eq!(arg(&s, "understudy.server"), srv.url);
    assert_eq!(arg(&s, "understudy.node"), "standby");
    assert_eq!(node_state(&srv, "standby"), "deploying");
    let first = arg(&s, "understudy.deployment").to_string();

    // Kernel and initramfs: byte-exact, Range honoured, only with the token.
    let k = sb.path("k");
    let o = Command::new("curl")
        .args(["-sf", "-o", k.to_str().unwrap(), &format!("{}/boot/vmlinuz?token={token}", srv.url)])
        .status()
        .unwrap();
    assert!(o.success());
    assert_eq!(std::fs::read(&k).unwrap(), std::fs::read(sb.data().join("boot/vmlinuz")).unwrap());
    let part = Command::new("curl")
        .args([
            "-s",
            "-r",
            "100-199",
            "-w",
            "%{http_code}",
            "-o",
            k.to_str().unwrap(),
            &format!("{}/boot/initramfs.img?token={token}", srv.url),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&part.stdout), "206");
    assert_eq!(std::fs::read(&k).unwrap(), std::fs::read(sb.data().join("boot/initramfs.img")).unwrap()[100..200]);
    assert_eq!(srv.curl("GET", "/boot/vmlinuz", None, None).0, 401);
    assert_eq!(srv.curl("GET", "/boot/vmlinuz?token=nope", None, None).0, 401);
    assert_eq!(srv.curl("GET", "/boot/initramfs.img", Some(&srv.token), None).0, 200);

    // Booting again supersedes the first deployment: its token stops working.
    let s2 = script(&srv, &url);
    assert_ne!(arg(&s2, "understudy.deployment"), first);
    assert_eq!(srv.curl("GET", &format!("/boot/vmlinuz?token={token}"), None, None).0, 401);
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments/{first}"), Some(&srv.token), None);
    assert!(d.contains("superseded"), "{d}");

    // The node's image is deleted: the machine is told why and waits; nothing is issued.
    sb.ok(&["images", "delete", "head-a"]);
    let s3 = script(&srv, &url);
    assert!(s3.contains("cannot be deployed") && s3.contains("head-a") && !s3.contains("token="), "{s3}");

    // Deployed: boot from the local disk (BIOS sanboot, UEFI exit).
    sb.ok(&["nodes", "set", "standby", "--state", "deployed", "--server", &srv.url, "--token", &srv.token]);
    let s = script(&srv, &url);
    assert!(s.contains("sanboot --no-describe --drive 0x80") && s.contains("iseq ${platform} efi && exit"), "{s}");
    // Failed: explain and wait for a redeploy.
    sb.ok(&["nodes", "set", "standby", "--state", "failed", "--server", &srv.url, "--token", &srv.token]);
    assert!(script(&srv, &url).contains("nodes redeploy standby"));

    // Every state change is an event.
    let (_, ev) = srv.curl("GET", "/api/v1/events?node=standby&limit=100", Some(&srv.token), None);
    for kind in ["node.create", "boot.refused", "boot.deploy", "boot.local"] {
        assert!(ev.contains(kind), "{kind} missing: {ev}");
    }

    // Bad requests: a clear error, never a file outside the boot directories.
    assert_eq!(srv.curl("GET", "/boot/not-a-mac.ipxe", None, None).0, 400);
    assert_eq!(srv.curl("GET", "/boot/ff:ff:ff:ff:ff:ff.ipxe", None, None).0, 400);
    for p in ["/boot/..%2f..%2fadmin.token", "/boot/admin.token", "/boot/%2e%2e", "/boot/boot.json"] {
        let (c, body) = srv.curl("GET", p, None, None);
        assert!(c == 404 || c == 400, "{p}: {c} {body}");
        assert!(!body.contains(&srv.token));
    }
    assert_eq!(srv.curl("GET", &format!("{url}?attempt=x"), None, None).0, 400);
}

#[test]
fn agent_installs_on_a_loop_disk_with_the_nodes_own_identity() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    let srv = setup(&sb, &src);
    let (s, cmdline) = deploy_boot(&sb, &srv);
    let disk = Loop::new(&sb.path("disk.img"), 3 << 30);
    let mnt = sb.path("target");
    let (ok, out) = run_agent(&sb, &cmdline, &disk);
    assert!(ok, "agent failed: {out}");
    assert!(out.contains("node standby deployed"), "{out}");
    assert_eq!(node_state(&srv, "standby"), "deployed");
    // The boot environment reported what it found, the disk it installed on among them.
    let (code, hw) = srv.curl("GET", "/api/v1/nodes/standby/hardware", Some(&srv.token), None);
    assert_eq!(code, 200, "{hw}");
    let hw: serde_json::Value = serde_json::from_str(&hw).unwrap();
    let name = disk.0.trim_start_matches("/dev/");
    let mine = hw["hardware"]["disks"].as_array().unwrap().iter().find(|d| d["name"] == name);
    assert_eq!(mine.map(|d| d["size"].as_u64()), Some(Some(3 << 30)), "{hw}");
    let fw = if std::path::Path::new("/sys/firmware/efi").is_dir() { "uefi" } else { "bios" };
    assert_eq!(hw["hardware"]["firmware"], fw);
    let dep = arg(&s, "understudy.deployment");
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments/{dep}"), Some(&srv.token), None);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["status"], "done", "{d}");
    assert_eq!(d["bytes_done"], d["bytes_total"]);

    // The disk: GPT with BIOS boot, ESP (vfat) and root (ext4), as real tools see it.
    let pt = Command::new("sfdisk").args(["--json", &disk.0]).output().unwrap();
    let pt: serde_json::Value = serde_json::from_slice(&pt.stdout).unwrap();
    assert_eq!(pt["partitiontable"]["label"], "gpt");
    assert_eq!(pt["partitiontable"]["partitions"].as_array().unwrap().len(), 3);
    let blkid = |p: &str, tag: &str| {
        let o = Command::new("blkid").args(["-s", tag, "-o", "value", p]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (esp, rootp) = (disk.part(&pt, 2), disk.part(&pt, 3));
    assert_eq!(blkid(&esp.0, "TYPE"), "vfat");
    assert_eq!(blkid(&rootp.0, "TYPE"), "ext4");
    let root_uuid = blkid(&rootp.0, "UUID");
    assert!(!mnt.join("etc").exists(), "the agent left the target mounted");

    // The tree: the image, except for the node's identity.
    let _m = Mount::new(&rootp.0, &mnt);
    // /var holds only the agent's record of the deployment (the image has no /var).
    let diff = rsync_diff(
        &src,
        &mnt,
        &["--omit-dir-times", "--exclude=/etc/", "--exclude=/boot/", "--exclude=/lost+found/", "--exclude=/var/"],
    );
    assert_eq!(diff, "", "deployed tree differs");
    // What `understudy update` will leave alone on this node: what the agent rewrote.
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mnt.join("var/lib/understudy/deployed.json")).unwrap()).unwrap();
    assert_eq!(rec["image"], "head-a@1", "{rec}");
    assert_eq!(rec["deployment"].as_i64().map(|d| d.to_string()).as_deref(), Some(arg(&s, "understudy.deployment")));
    let keep: Vec<&str> = rec["keep"].as_array().unwrap().iter().filter_map(|k| k.as_str()).collect();
    for p in ["/etc/hostname", "/etc/hosts", "/etc/fstab", "/etc/machine-id"] {
        assert!(keep.contains(&p), "{p} not kept: {rec}");
    }
    let fstab = std::fs::read_to_string(mnt.join("etc/fstab")).unwrap();
    assert!(fstab.contains(&format!("UUID={root_uuid} / ext4")), "{fstab}");
    assert!(fstab.contains("# understudy: not on this node's disk: UUID=old / ext4") && fstab.contains("tmpfs /tmp"));
    assert_eq!(std::fs::read_to_string(mnt.join("etc/hostname")).unwrap(), "standby\n");
    assert!(std::fs::read_to_string(mnt.join("etc/hosts")).unwrap().contains("127.0.1.1\tstandby"));
    assert_eq!(std::fs::read_to_string(mnt.join("etc/machine-id")).unwrap(), "");
    assert!(!mnt.join("etc/ssh/ssh_host_ed25519_key").exists(), "the primary's host key was copied");
}

/// Run the agent for `cmdline` on a fresh 3 GiB loop disk; returns its output and success.
fn run_agent(sb: &Sandbox, cmdline: &str, disk: &Loop) -> (bool, String) {
    let file = sb.path("cmdline");
    std::fs::write(&file, format!("{cmdline} understudy.bootloader=none\n")).unwrap();
    let mnt = sb.path("target");
    let o = sb
        .cmd(&[
            "agent",
            "--cmdline",
            file.to_str().unwrap(),
            "--disk",
            &disk.0,
            "--mount-dir",
            mnt.to_str().unwrap(),
            "--no-reboot",
        ])
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The server's connections drop in the middle of the image stream: the agent resumes
/// where it stopped and the deploy completes, every byte accounted for.
#[test]
fn agent_resumes_when_the_server_drops_its_connections() {
    let sb = Sandbox::new();
    let srv = setup(&sb, &sb.path("src"));
    let (s, cmdline) = deploy_boot(&sb, &srv);
    // Every early connection dies after 512 KiB of response: streams are cut mid-record.
    let proxy = flaky_proxy(srv.url.clone(), 512 << 10, 6);
    let cmdline = cmdline.replace(&format!("understudy.server={}", srv.url), &format!("understudy.server={proxy}"));
    assert!(cmdline.contains(&proxy), "{cmdline}");
    let disk = Loop::new(&sb.path("disk.img"), 3 << 30);
    let (ok, out) = run_agent(&sb, &cmdline, &disk);
    assert!(ok && out.contains("node standby deployed"), "agent failed: {out}");
    assert!(out.contains("resuming chunk stream") || out.contains("interrupted"), "no connection was cut: {out}");
    let dep = arg(&s, "understudy.deployment");
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments/{dep}"), Some(&srv.token), None);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["status"], "done", "{d}");
    assert_eq!(d["bytes_done"], d["bytes_total"]);
    assert_eq!(node_state(&srv, "standby"), "deployed");
}

/// A chunk damaged in the server's store: the agent refuses it (every chunk is verified),
/// the deployment fails with the reason, and the node can be redeployed once it is fixed.
#[test]
fn agent_refuses_a_corrupted_chunk_and_the_node_stays_redeployable() {
    let sb = Sandbox::new();
    let srv = setup(&sb, &sb.path("src"));
    let packs: Vec<_> = std::fs::read_dir(sb.data().join("store/packs")).unwrap().map(|e| e.unwrap().path()).collect();
    let pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(pack, &bytes).unwrap();
    let (s, cmdline) = deploy_boot(&sb, &srv);
    let disk = Loop::new(&sb.path("disk.img"), 3 << 30);
    let (ok, out) = run_agent(&sb, &cmdline, &disk);
    assert!(!ok && out.contains("deploy failed"), "a corrupt chunk was accepted: {out}");
    assert_eq!(node_state(&srv, "standby"), "failed");
    let dep = arg(&s, "understudy.deployment");
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments/{dep}"), Some(&srv.token), None);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["status"], "failed", "{d}");
    let why = d["error"].as_str().unwrap_or_default();
    assert!(why.contains("match") || why.contains("corrupt") || why.contains("zstd"), "{why}");
    let (code, body) = srv.curl("POST", "/api/v1/nodes/standby/redeploy", Some(&srv.token), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(node_state(&srv, "standby"), "assigned");
}

#[test]
fn agent_reports_a_failure_and_refuses_a_foreign_command_line() {
    let sb = Sandbox::new();
    let srv = setup(&sb, &sb.path("src"));
    // Not network-booted by understudy: a clear error before touching any disk.
    let file = sb.path("cmdline");
    std::fs::write(&file, "BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet\n").unwrap();
    let err = sb.fails(&["agent", "--cmdline", file.to_str().unwrap(), "--no-reboot"]);
    assert!(err.contains("understudy.server"), "{err}");
    // A disk that does not exist: the deployment is marked failed with the reason.
    let (s, cmdline) = deploy_boot(&sb, &srv);
    std::fs::write(&file, format!("{cmdline} understudy.disk=/dev/understudy-no-such-disk\n")).unwrap();
    let err = sb.fails(&[
        "agent",
        "--cmdline",
        file.to_str().unwrap(),
        "--no-reboot",
        "--mount-dir",
        sb.path("t").to_str().unwrap(),
    ]);
    assert!(err.contains("deploy failed"), "{err}");
    assert_eq!(node_state(&srv, "standby"), "failed");
    let dep = arg(&s, "understudy.deployment");
    let (_, d) = srv.curl("GET", &format!("/api/v1/deployments/{dep}"), Some(&srv.token), None);
    assert!(d.contains("\"status\":\"failed\"") && d.contains("no-such-disk"), "{d}");
    // Its token is spent: a replayed command line gets nowhere.
    let err = sb.fails(&["agent", "--cmdline", file.to_str().unwrap(), "--no-reboot"]);
    assert!(err.contains("expired or already used") || err.contains("401"), "{err}");
}
