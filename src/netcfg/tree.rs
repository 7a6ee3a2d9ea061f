//! The I/O edge: find the stacks a cloned root uses and rewrite their files in place.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::NetcfgError;
use super::model::Mapping;
use super::report::{FileReport, Refusal, Report, Stack};
use super::{ifupdown, rewrite_text, text};

/// How many symlinks one path may go through (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;
/// How deep ifupdown `source` lines may nest before we stop following them.
const MAX_SOURCE_DEPTH: usize = 8;
/// The stale rule file: it pins the primary's MACs to interface names.
const UDEV_RULES: &str = "/etc/udev/rules.d/70-persistent-net.rules";

/// Resolve `image_path` (absolute inside the image) under `root` the way a chroot would: a
/// symlink's absolute target is taken inside the root and `..` stops at the root, so nothing
/// outside `root` is ever reached. None when the path does not exist.
pub fn resolve(root: &Path, image_path: &Path) -> Result<Option<PathBuf>, NetcfgError> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let push_front = |todo: &mut VecDeque<OsString>, p: &Path| {
        let comps: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        for c in comps.into_iter().rev() {
            todo.push_front(c);
        }
    };
    push_front(&mut todo, image_path);
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&c);
        match fs::symlink_metadata(&here) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NetcfgError::io("stat", here)(e)),
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(NetcfgError::SymlinkLoop { file: image_path.to_path_buf() });
                }
                let target = fs::read_link(&here).map_err(NetcfgError::io("readlink", &here))?;
                if target.is_absolute() {
                    done.clear();
                }
                push_front(&mut todo, &target);
            }
            Ok(_) => done.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(Some(out))
}

/// The regular files directly in image directory `dir`, sorted, as image paths.
fn list(root: &Path, dir: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, NetcfgError> {
    let Some(host) = resolve(root, Path::new(dir))? else { return Ok(Vec::new()) };
    if !host.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in fs::read_dir(&host).map_err(NetcfgError::io("list", &host))? {
        let e = e.map_err(NetcfgError::io("list", &host))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if name.starts_with('.') || !keep(&name) {
            continue;
        }
        out.push(Path::new(dir).join(name));
    }
    out.sort();
    Ok(out)
}

/// Write `data` over the regular file `host`: a temporary file in the same directory with the
/// original's mode and owner (NetworkManager ignores keyfiles readable by others), fsync, rename,
/// fsync the directory.
fn write_atomic(host: &Path, data: &[u8]) -> Result<(), NetcfgError> {
    let md = fs::metadata(host).map_err(NetcfgError::io("stat", host))?;
    let dir = host.parent().unwrap_or(Path::new("/"));
    let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.understudy-tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(NetcfgError::io("remove", &tmp)(e)),
        _ => {}
    }
    let mode = md.permissions().mode() & 0o7777;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(NetcfgError::io("create", &tmp))?;
    let result = (|| {
        f.write_all(data).map_err(NetcfgError::io("write", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(NetcfgError::io("chmod", &tmp))?;
        let now = f.metadata().map_err(NetcfgError::io("stat", &tmp))?;
        if now.uid() != md.uid() || now.gid() != md.gid() {
            std::os::unix::fs::chown(&tmp, Some(md.uid()), Some(md.gid())).map_err(NetcfgError::io("chown", &tmp))?;
        }
        f.sync_all().map_err(NetcfgError::io("fsync", &tmp))?;
        fs::rename(&tmp, host).map_err(NetcfgError::io("rename", host))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(NetcfgError::io("fsync", dir))
}

/// Follow an interfaces file's `source` and `source-directory` lines (image paths).
fn ifupdown_sources(image_file: &Path, text: &str, root: &Path, notes: &mut Vec<String>) -> Vec<PathBuf> {
    let Ok(incs) = ifupdown::includes(text) else { return Vec::new() };
    let base = image_file.parent().unwrap_or(Path::new("/etc/network"));
    let mut out = Vec::new();
    for (directory, path) in incs {
        let p = if path.starts_with('/') { PathBuf::from(&path) } else { base.join(&path) };
        let (dir, pattern) = if directory {
            (p, None)
        } else {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            if dir.to_string_lossy().contains(['*', '?', '[']) {
                notes.push(format!(
                    "{}: source {path}: wildcards before the last component not followed",
                    image_file.display()
                ));
                continue;
            }
            if !name.contains(['*', '?', '[']) {
                out.push(p);
                continue;
            }
            (dir, Some(name))
        };
        let glob = match pattern.as_deref().map(globset::Glob::new).transpose() {
            Ok(g) => g.map(|g| g.compile_matcher()),
            Err(e) => {
                notes.push(format!("{}: source {path}: bad pattern ({e})", image_file.display()));
                continue;
            }
        };
        let dir_s = dir.to_string_lossy().into_owned();
        // source-directory takes run-parts names only; source takes what the glob matches.
        let keep = |n: &str| match &glob {
            Some(g) => g.is_match(n),
            None => n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        };
        match list(root, &dir_s, keep) {
            Ok(files) => out.extend(files),
            Err(e) => notes.push(format!("{}: source {path}: {e}", image_file.display())),
        }
    }
    out
}

/// Rewrite every network configuration file of the cloned root at `root` for the standby, in
/// place. Returns what was rewritten and removed, per-file reports, notes, and `refused` entries
/// when the standby would still come up with an address the primary holds (the caller refuses
/// the deploy unless forced). Errors only when the mapping is inconsistent or the file system
/// fails; a file that cannot be parsed is left alone and reported.
pub fn rewrite_tree(root: &Path, mapping: &Mapping) -> Result<Report, NetcfgError> {
    mapping.validate()?;
    let mut report = Report::default();
    let mut todo: Vec<(PathBuf, Stack)> = Vec::new();

    // ifupdown: the main file and whatever it sources, depth-first.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut stack = vec![(PathBuf::from("/etc/network/interfaces"), 0usize)];
    while let Some((p, depth)) = stack.pop() {
        let Some(host) = resolve(root, &p)? else { continue };
        if !host.is_file() || !seen.insert(host.clone()) {
            continue;
        }
        todo.push((p.clone(), Stack::Ifupdown));
        if depth >= MAX_SOURCE_DEPTH {
            report.notes.push(format!("{}: sources nested too deep; not followed", p.display()));
            continue;
        }
        if let Ok(t) = fs::read_to_string(&host) {
            let mut inc = ifupdown_sources(&p, &t, root, &mut report.notes);
            inc.reverse();
            stack.extend(inc.into_iter().map(|i| (i, depth + 1)));
        }
    }
    for p in list(root, "/etc/netplan", |n| n.ends_with(".yaml"))? {
        todo.push((p, Stack::Netplan));
    }
    for p in list(root, "/etc/NetworkManager/system-connections", |n| !n.ends_with('~'))? {
        todo.push((p, Stack::NetworkManager));
    }
    for p in list(root, "/etc/systemd/network", |n| {
        n.ends_with(".network") || n.ends_with(".link") || n.ends_with(".netdev")
    })? {
        todo.push((p, Stack::Networkd));
    }
    for dir in ["/etc/sysconfig/network-scripts", "/etc/sysconfig/network"] {
        for p in list(root, dir, |n| n.starts_with("ifcfg-") && n != "ifcfg-lo" && !n.ends_with('~'))? {
            todo.push((p, Stack::Ifcfg));
        }
    }

    let mut stacks: Vec<Stack> = Vec::new();
    for (p, st) in todo {
        if !stacks.contains(&st) {
            stacks.push(st);
        }
        rewrite_file(root, &p, st, mapping, &mut report)?;
    }

    // Stale udev rules pin the primary's MACs to names: the standby's NICs would be renamed.
    let udev = Path::new(UDEV_RULES);
    if let Some(dir) = resolve(root, udev.parent().unwrap_or(Path::new("/")))? {
        let host = dir.join("70-persistent-net.rules");
        match fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_file() => {
                fs::remove_file(&host).map_err(NetcfgError::io("remove", &host))?;
                report.removed.push(udev.to_path_buf());
                report.files.push(FileReport {
                    path: udev.to_path_buf(),
                    stack: Stack::Udev,
                    changes: Default::default(),
                    error: None,
                });
            }
            Ok(_) => report.notes.push(format!("{UDEV_RULES} is not a regular file (a mask?); left alone")),
            Err(_) => {}
        }
    }
    remove_stale_state(root, &mut report)?;
    if stacks.is_empty() {
        report.notes.push("no network configuration found in the image".into());
    } else {
        let names: Vec<String> = stacks.iter().map(|s| format!("{s:?}")).collect();
        report.notes.push(format!("network stacks found: {}", names.join(", ")));
    }
    Ok(report)
}

/// DHCP client state copied from the primary: dhclient's lease files (which hold its client id,
/// and for DHCPv6 its `default-duid`), NetworkManager's leases, and NetworkManager's
/// `secret_key` (from which it derives stable-privacy IPv6 addresses and `stable` DUIDs: with the
/// primary's key and the same connection the standby would compute the primary's addresses).
/// The DHCP *server*'s `dhcpd.leases` is the primary's data and is never touched.
fn remove_stale_state(root: &Path, report: &mut Report) -> Result<(), NetcfgError> {
    let dhclient = |n: &str| n.starts_with("dhclient") && (n.ends_with(".leases") || n.ends_with(".lease"));
    let nm = |n: &str| n.ends_with(".lease") || n == "secret_key";
    let mut victims = list(root, "/var/lib/dhcp", dhclient)?;
    victims.extend(list(root, "/var/lib/dhclient", dhclient)?);
    victims.extend(list(root, "/var/lib/NetworkManager", nm)?);
    for p in victims {
        // `list` resolved the directory inside the root; the entry itself must be a plain file.
        let Some(dir) = resolve(root, p.parent().unwrap_or(Path::new("/")))? else { continue };
        let Some(name) = p.file_name() else { continue };
        let host = dir.join(name);
        if fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_file()) {
            fs::remove_file(&host).map_err(NetcfgError::io("remove", &host))?;
            report.removed.push(p);
        }
    }
    Ok(())
}

fn rewrite_file(root: &Path, p: &Path, st: Stack, m: &Mapping, report: &mut Report) -> Result<(), NetcfgError> {
    let Some(host) = resolve(root, p)? else { return Ok(()) };
    if !host.is_file() {
        return Ok(());
    }
    let bytes = fs::read(&host).map_err(NetcfgError::io("read", &host))?;
    let refuse_raw = |text: &str, report: &mut Report| {
        for (line, reason) in text::scan_raw(text, m) {
            report.refused.push(Refusal { path: p.to_path_buf(), line, reason });
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let err = NetcfgError::NotText { file: p.to_path_buf() };
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            refuse_raw(&lossy, report);
            report.files.push(FileReport {
                path: p.into(),
                stack: st,
                changes: Default::default(),
                error: Some(err.to_string()),
            });
            return Ok(());
        }
    };
    match rewrite_text(st, &text, m) {
        Err(source) => {
            let err = NetcfgError::Syntax { file: p.to_path_buf(), source };
            refuse_raw(&text, report);
            report.files.push(FileReport {
                path: p.into(),
                stack: st,
                changes: Default::default(),
                error: Some(err.to_string()),
            });
        }
        Ok(r) => {
            for n in &r.changes.refused {
                report.refused.push(Refusal { path: p.to_path_buf(), line: n.line, reason: n.what.clone() });
            }
            if r.obsolete {
                fs::remove_file(&host).map_err(NetcfgError::io("remove", &host))?;
                report.removed.push(p.to_path_buf());
            } else if r.text != text {
                write_atomic(&host, r.text.as_bytes())?;
                report.rewritten.push(p.to_path_buf());
            }
            report.files.push(FileReport { path: p.into(), stack: st, changes: r.changes, error: None });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/netcfg");

    fn put(root: &Path, image: &str, fixture: &str, mode: u32) {
        let dst = root.join(image.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(Path::new(FIX).join(fixture), &dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        put(&root, "/etc/network/interfaces", "ifupdown/interfaces", 0o644);
        put(&root, "/etc/network/interfaces.d/public", "ifupdown/interfaces.d/public", 0o644);
        put(&root, "/etc/netplan/50-cloud-init.yaml", "netplan/50-cloud-init.yaml", 0o600);
        put(&root, "/etc/NetworkManager/system-connections/private.nmconnection", "nm/private.nmconnection", 0o600);
        put(&root, "/etc/systemd/network/10-private.network", "networkd/10-private.network", 0o644);
        put(&root, "/etc/systemd/network/20-public.network", "networkd/20-public.network", 0o644);
        put(&root, "/etc/systemd/network/10-private.link", "networkd/10-private.link", 0o644);
        put(&root, "/etc/sysconfig/network-scripts/ifcfg-eth0", "ifcfg/ifcfg-eth0", 0o644);
        put(&root, "/etc/sysconfig/network-scripts/ifcfg-eth1:0", "ifcfg/ifcfg-eth1:0", 0o644);
        for (f, t) in [
            ("var/lib/dhcp/dhclient6.eth0.leases", "default-duid \"\\000\\001\\000\\001\";\n"),
            ("var/lib/dhcp/dhcpd.leases", "lease 10.0.0.50 {\n}\n"),
            ("var/lib/NetworkManager/internal-7f1c2a9e-eth0.lease", "ADDRESS=10.0.0.1\n"),
            ("var/lib/NetworkManager/secret_key", "k"),
        ] {
            fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            fs::write(root.join(f), t).unwrap();
        }
        let udev = root.join("etc/udev/rules.d");
        fs::create_dir_all(&udev).unwrap();
        fs::write(
            udev.join("70-persistent-net.rules"),
            "SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"52:54:00:00:00:01\", NAME=\"eth0\"\n",
        )
        .unwrap();
        (tmp, root)
    }

    #[test]
    fn rewrites_one_of_each_stack_in_place_and_is_idempotent() {
        let (_tmp, root) = tree();
        let m = crate::netcfg::tests::mapping();
        let r = rewrite_tree(&root, &m).unwrap();
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        let rewritten: Vec<String> = r.rewritten.iter().map(|p| p.display().to_string()).collect();
        for p in [
            "/etc/network/interfaces",
            "/etc/network/interfaces.d/public",
            "/etc/netplan/50-cloud-init.yaml",
            "/etc/NetworkManager/system-connections/private.nmconnection",
            "/etc/systemd/network/10-private.network",
            "/etc/systemd/network/20-public.network",
            "/etc/systemd/network/10-private.link",
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
        ] {
            assert!(rewritten.contains(&p.to_string()), "{p} not in {rewritten:?}");
        }
        assert_eq!(
            r.removed,
            vec![
                PathBuf::from("/etc/sysconfig/network-scripts/ifcfg-eth1:0"),
                PathBuf::from("/etc/udev/rules.d/70-persistent-net.rules"),
                PathBuf::from("/var/lib/dhcp/dhclient6.eth0.leases"),
                PathBuf::from("/var/lib/NetworkManager/internal-7f1c2a9e-eth0.lease"),
                PathBuf::from("/var/lib/NetworkManager/secret_key"),
            ]
        );
        assert!(root.join("var/lib/dhcp/dhcpd.leases").exists(), "the DHCP server's leases stay");
        assert!(!root.join("etc/udev/rules.d/70-persistent-net.rules").exists());
        let np = root.join("etc/netplan/50-cloud-init.yaml");
        assert!(fs::read_to_string(&np).unwrap().contains("10.0.0.2/24"));
        assert_eq!(fs::metadata(&np).unwrap().permissions().mode() & 0o777, 0o600, "mode kept");
        // No primary address or VIP is left anywhere a stack reads.
        for p in &r.rewritten {
            let t = fs::read_to_string(root.join(p.strip_prefix("/").unwrap())).unwrap();
            for bad in ["10.0.0.1/", "10.0.0.1\n", "192.0.2.10/", "192.0.2.10\n", "192.0.2.100", "fd00::1/"] {
                assert!(!t.contains(bad), "{} still holds {bad}:\n{t}", p.display());
            }
        }
        assert!(r.notes.iter().any(|n| n.contains("Netplan") && n.contains("Ifcfg")), "{:?}", r.notes);

        let again = rewrite_tree(&root, &m).unwrap();
        assert!(again.rewritten.is_empty(), "{:?}", again.rewritten);
        assert!(again.removed.is_empty());
        assert!(again.refused.is_empty());
    }

    #[test]
    fn unparsable_file_with_a_primary_address_is_refused_and_left_alone() {
        let (_tmp, root) = tree();
        let broken = "network:\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24,\n";
        fs::write(root.join("etc/netplan/60-broken.yaml"), broken).unwrap();
        fs::write(root.join("etc/systemd/network/30-blob.network"), b"\x7fELF\0\0\x01garbage").unwrap();
        let r = rewrite_tree(&root, &crate::netcfg::tests::mapping()).unwrap();
        assert!(r.is_refused());
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert_eq!(r.refused[0].path, PathBuf::from("/etc/netplan/60-broken.yaml"));
        assert_eq!(fs::read_to_string(root.join("etc/netplan/60-broken.yaml")).unwrap(), broken);
        let blob = r.files.iter().find(|f| f.path.ends_with("30-blob.network")).unwrap();
        assert!(blob.error.as_deref().unwrap_or_default().contains("binary"), "{blob:?}");
    }

    #[test]
    fn symlinks_never_leave_the_root() {
        let (tmp, root) = tree();
        let outside = tmp.path().join("outside.yaml");
        let text = "network:\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24]\n";
        fs::write(&outside, text).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/netplan/70-abs.yaml")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../outside.yaml", root.join("etc/netplan/71-rel.yaml"))
            .unwrap();
        // An in-root symlink is followed and its target rewritten; the link itself stays.
        fs::create_dir_all(root.join("srv")).unwrap();
        fs::write(root.join("srv/real.yaml"), text).unwrap();
        std::os::unix::fs::symlink("/srv/real.yaml", root.join("etc/netplan/72-in.yaml")).unwrap();
        let r = rewrite_tree(&root, &crate::netcfg::tests::mapping()).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), text, "the host file is untouched");
        assert!(r.rewritten.contains(&PathBuf::from("/etc/netplan/72-in.yaml")));
        assert!(fs::symlink_metadata(root.join("etc/netplan/72-in.yaml")).unwrap().file_type().is_symlink());
        assert!(fs::read_to_string(root.join("srv/real.yaml")).unwrap().contains("10.0.0.2/24"));
        assert_eq!(resolve(&root, Path::new("/etc/netplan/71-rel.yaml")).unwrap(), None);
        std::os::unix::fs::symlink("loop", root.join("etc/loop")).unwrap();
        assert!(matches!(resolve(&root, Path::new("/etc/loop")), Err(NetcfgError::SymlinkLoop { .. })));
    }

    #[test]
    fn inconsistent_mapping_is_an_error() {
        let (_tmp, root) = tree();
        let mut m = crate::netcfg::tests::mapping();
        m.vips.push("10.0.0.1".parse().unwrap());
        assert!(matches!(rewrite_tree(&root, &m), Err(NetcfgError::Mapping { .. })));
    }

    #[test]
    fn ifupdown_sources_follow_relative_paths_globs_and_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let net = root.join("etc/network");
        fs::create_dir_all(net.join("interfaces.d")).unwrap();
        fs::create_dir_all(net.join("extra")).unwrap();
        for f in ["interfaces.d/a.cfg", "interfaces.d/b.txt", "extra/eth5", "extra/skip.me", "machine"] {
            fs::write(net.join(f), "iface x inet dhcp\n").unwrap();
        }
        let text = "source interfaces.d/*.cfg\nsource machine\nsource-directory extra\nsource-directory /nowhere\n";
        let mut notes = Vec::new();
        let got = ifupdown_sources(Path::new("/etc/network/interfaces"), text, root, &mut notes);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/etc/network/interfaces.d/a.cfg"),
                PathBuf::from("/etc/network/machine"),
                PathBuf::from("/etc/network/extra/eth5"),
            ]
        );
    }
}
