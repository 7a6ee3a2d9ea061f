//! Turning a requested file name into an open file under the TFTP root, and nothing
//! outside it.
//!
//! Policy: leading `/` are stripped (firmware and GRUB often ask for `/grubx64.efi`;
//! tftpd-hpa with `-s` treats the root the same way), so `/etc/passwd` means
//! `ROOT/etc/passwd`. Refused outright: NUL and control characters, backslashes,
//! percent-encoded bytes (`%2e%2e`; TFTP has no URL encoding, so a client sending one is
//! probing), `..` components and over-long names. The file is then opened with
//! `openat2(RESOLVE_BENEATH)` relative to the root directory, so the kernel refuses any
//! symlink (or `..` hidden in a symlink) that leaves the root, without a check-then-open
//! race; symlinks that stay inside are followed. Kernels without openat2 fall back to
//! canonicalising and checking the prefix.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Longest accepted file name, in bytes.
pub const MAX_NAME: usize = 1024;

/// Why a name is not served.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The name is malformed or tries to leave the root.
    #[error("refused file name: {0}")]
    Refused(&'static str),
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// The file exists but is not a regular file.
    #[error("not a regular file")]
    NotRegular,
    /// Opening failed otherwise (permission, symlink leaving the root, ...).
    #[error("access denied: {0}")]
    Denied(std::io::Error),
}

/// Check a requested name; returns the path relative to the root.
pub fn sanitize(raw: &str) -> Result<PathBuf, PathError> {
    if raw.len() > MAX_NAME {
        return Err(PathError::Refused("name too long"));
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(PathError::Refused("control character"));
    }
    if raw.contains('\\') {
        return Err(PathError::Refused("backslash"));
    }
    let b = raw.as_bytes();
    if b.windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()) {
        return Err(PathError::Refused("percent-encoded byte"));
    }
    let mut out = PathBuf::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathError::Refused("parent directory component")),
            c if c.len() > 255 => return Err(PathError::Refused("component too long")),
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Refused("empty name"));
    }
    Ok(out)
}

/// The TFTP root: an open directory and its canonical path.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    canon: PathBuf,
}

impl Root {
    /// Open the root directory (relative paths resolve against the current directory).
    pub fn open(p: &Path) -> std::io::Result<Root> {
        let canon = std::fs::canonicalize(p)?;
        let dir = rustix::fs::open(&canon, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Root { dir, canon })
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.canon
    }

    /// Open a sanitised relative path for reading; returns the file and its size.
    pub fn open_file(&self, rel: &Path) -> Result<(File, u64), PathError> {
        // NONBLOCK: opening a FIFO someone left in the root must not hang the transfer.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat2(
            &self.dir,
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOSYS) => self.open_fallback(rel, flags)?,
            Err(e) => return Err(errno(e)),
        };
        let f = File::from(fd);
        let meta = f.metadata().map_err(PathError::Denied)?;
        if !meta.is_file() {
            return Err(PathError::NotRegular);
        }
        Ok((f, meta.len()))
    }

    fn open_fallback(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, PathError> {
        let canon = std::fs::canonicalize(self.canon.join(rel)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PathError::NotFound,
            _ => PathError::Denied(e),
        })?;
        if !canon.starts_with(&self.canon) {
            return Err(PathError::Refused("symlink leaves the root"));
        }
        rustix::fs::open(&canon, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(errno)
    }
}

fn errno(e: rustix::io::Errno) -> PathError {
    match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => PathError::NotFound,
        // RESOLVE_BENEATH reports an escape as EXDEV.
        rustix::io::Errno::XDEV => PathError::Refused("path leaves the root"),
        e => PathError::Denied(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize("pxelinux.0").unwrap(), Path::new("pxelinux.0"));
        assert_eq!(sanitize("/efi//./grubx64.efi").unwrap(), Path::new("efi/grubx64.efi"));
        assert_eq!(sanitize("100%").unwrap(), Path::new("100%"));
        for bad in [
            "",
            "/",
            "../etc/passwd",
            "a/../../b",
            "a/..",
            "%2e%2e/etc/passwd",
            "%2E%2E%2Fx",
            "a\\..\\b",
            "a\nb",
            "a\u{7f}",
            &"x".repeat(2000),
            &"y".repeat(300),
        ] {
            assert!(sanitize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_may_not_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(t.path().join("secret"), b"secret").unwrap();
        std::fs::write(root.join("sub/file"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("outside")).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("absolute")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        let r = Root::open(&root).unwrap();
        let (_, len) = r.open_file(&sanitize("inside").unwrap()).unwrap();
        assert_eq!(len, 5);
        assert!(r.open_file(Path::new("sub/up/sub/file")).is_ok(), "a symlink that stays inside is followed");
        for bad in ["outside", "absolute", "sub/up/../secret"] {
            let rel = PathBuf::from(bad);
            assert!(r.open_file(&rel).is_err(), "{bad}");
        }
        assert!(matches!(r.open_file(Path::new("missing")), Err(PathError::NotFound)));
        assert!(matches!(r.open_file(Path::new("sub")), Err(PathError::NotRegular)));
        // The fallback path gives the same answers.
        let f = OFlags::RDONLY | OFlags::CLOEXEC;
        assert!(r.open_fallback(Path::new("inside"), f).is_ok());
        assert!(r.open_fallback(Path::new("outside"), f).is_err());
        assert!(r.open_fallback(Path::new("absolute"), f).is_err());
    }
}
