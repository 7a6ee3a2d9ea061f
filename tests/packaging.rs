//! Packaging as an admin installs it: `make install` into a staging root (the binary, the
//! systemd unit, the default config kept once it exists, the network-boot binaries, man
//! pages and completions generated from the argument definitions), and `make deb`.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_understudy");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn make(args: &[&str]) -> String {
    let o = Command::new("make").arg("-s").arg("-C").arg(REPO).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "make {args:?}: {text}");
    text
}

#[test]
fn make_install_stages_a_working_layout_and_make_deb_packages_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let dest = format!("DESTDIR={}", root.display());
    let bin = format!("BIN={BIN}");
    make(&["install", "NO_BUILD=1", &bin, &dest, "PREFIX=/usr"]);
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for f in [
        "/usr/bin/understudy",
        "/usr/lib/systemd/system/understudy.service",
        "/etc/understudy/understudy.toml",
        "/usr/share/man/man1/understudy.1",
        "/usr/share/man/man1/understudy-serve.1",
        "/usr/share/bash-completion/completions/understudy",
        "/usr/share/zsh/vendor-completions/_understudy",
        "/usr/share/fish/vendor_completions.d/understudy.fish",
        "/var/lib/understudy/pxe/undionly.kpxe",
        "/var/lib/understudy/pxe/shimx64.efi",
        "/var/lib/understudy/pxe/grubx64.efi",
    ] {
        assert!(at(f).is_file(), "{f} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(at("/var/lib/understudy")).unwrap().permissions().mode() & 0o777, 0o700);

    // The unit runs the installed binary on the installed config, and systemd parses it.
    let unit = std::fs::read_to_string(at("/usr/lib/systemd/system/understudy.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/understudy --data-dir /var/lib/understudy serve --config /etc/understudy/understudy.toml"),
        "{unit}"
    );
    let o = Command::new("systemd-analyze")
        .args(["verify", &format!("--root={}", root.display()), "/usr/lib/systemd/system/understudy.service"])
        .output()
        .unwrap();
    let verify = String::from_utf8_lossy(&o.stderr);
    for bad in ["Unknown key", "Unknown section", "Failed to parse", "Invalid", "is not executable"] {
        assert!(!verify.contains(bad), "systemd-analyze: {verify}");
    }
    // The default config is valid as shipped.
    let o = Command::new(BIN).args(["config", "check"]).arg(at("/etc/understudy/understudy.toml")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The man pages render, and name the commands the binary has.
    let o = Command::new("man")
        .arg("-l")
        .arg(at("/usr/share/man/man1/understudy.1"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains("understudy") && page.contains("capture"), "{page}");
    let bash = std::fs::read_to_string(at("/usr/share/bash-completion/completions/understudy")).unwrap();
    assert!(bash.contains("complete") && bash.contains("capture"), "bash completion");

    // An admin's config survives a reinstall.
    std::fs::write(at("/etc/understudy/understudy.toml"), "[http]\nlisten = \"10.0.0.1:8080\"\n").unwrap();
    make(&["install", "NO_BUILD=1", &bin, &dest, "PREFIX=/usr"]);
    assert!(std::fs::read_to_string(at("/etc/understudy/understudy.toml")).unwrap().contains("10.0.0.1"));

    // The Debian package: the same files under /usr, the config a conffile, Debian's boot
    // binaries as dependencies, a postinst that copies them into the TFTP root.
    make(&["deb", "NO_BUILD=1", &bin, "DEB_COMPRESS=none"]);
    let deb = Path::new(REPO).join("target/understudy_0.1.0_amd64.deb");
    let field = |f: &str| {
        let o = Command::new("dpkg-deb").args(["--field"]).arg(&deb).arg(f).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "understudy");
    assert!(field("Depends").contains("ipxe") && field("Depends").contains("shim-signed"), "{}", field("Depends"));
    let o = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let contents = String::from_utf8_lossy(&o.stdout);
    for f in ["./usr/bin/understudy", "./lib/systemd/system/understudy.service", "./etc/understudy/understudy.toml"] {
        assert!(contents.contains(f), "{f} not in the package:\n{contents}");
    }
    let ctl = tmp.path().join("ctl");
    assert!(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&ctl).status().unwrap().success());
    assert_eq!(std::fs::read_to_string(ctl.join("conffiles")).unwrap().trim(), "/etc/understudy/understudy.toml");
    assert!(std::fs::read_to_string(ctl.join("postinst")).unwrap().contains("/var/lib/understudy/pxe"));
    let _ = std::fs::remove_file(&deb);
}
