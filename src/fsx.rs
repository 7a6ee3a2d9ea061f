//! Thin helpers over *at() system calls: everything capture and deploy do to a tree goes
//! through directory file descriptors, so path length is unlimited and no symlink is
//! ever followed.

use crate::store::manifest::Xattr;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;

/// A NUL-terminated name for *at() calls.
pub fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

/// Open a directory relative to `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let n = cname(name)?;
    Ok(rustix::fs::openat(
        dir,
        n.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open a directory by path (any length).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Walk `rel` (an image path, `/`-separated) from `root`, one component at a time,
/// refusing symlinks; returns the directory's fd.
pub fn open_rel_dir(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
    for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        cur = open_dir_at(cur.as_fd(), c)?;
    }
    Ok(cur)
}

/// Path that reaches `name` inside `dir` through /proc, for the l*xattr calls that have
/// no *at() form. The final component is not followed by those calls.
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

fn split_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|n| !n.is_empty())
}

fn grow_read(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>, mut size: usize) -> io::Result<Vec<u8>> {
    // The attribute can change between the size query and the read: retry on ERANGE.
    for _ in 0..8 {
        let mut buf = vec![0u8; size.max(1)];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => size = size.max(64) * 2,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("extended attribute keeps changing size"))
}

/// Read all xattrs of an open file or directory, sorted by name.
pub fn fd_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<Xattr>> {
    let size = match rustix::fs::flistxattr_query(fd) {
        Ok(s) => s,
        Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(vec![]);
    }
    let list = grow_read(|b| rustix::fs::flistxattr(fd, b), size)?;
    let mut out = Vec::new();
    for name in split_names(&list) {
        let n = OsStr::from_bytes(name);
        let sz = match rustix::fs::fgetxattr_query(fd, n) {
            Ok(s) => s,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        match grow_read(|b| rustix::fs::fgetxattr(fd, n, b), sz) {
            Ok(value) => out.push(Xattr { name: name.to_vec(), value }),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => continue,
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Read all xattrs of `name` in `dir` without following it (symlinks, devices, fifos).
pub fn link_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<Xattr>> {
    let p = proc_path(dir, name);
    let p = OsStr::from_bytes(&p);
    let size = match rustix::fs::llistxattr_query(p) {
        Ok(s) => s,
        Err(e) if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::PERM => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(vec![]);
    }
    let list = grow_read(|b| rustix::fs::llistxattr(p, b), size)?;
    let mut out = Vec::new();
    for name in split_names(&list) {
        let n = OsStr::from_bytes(name);
        let sz = match rustix::fs::lgetxattr_query(p, n) {
            Ok(s) => s,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        match grow_read(|b| rustix::fs::lgetxattr(p, n, b), sz) {
            Ok(value) => out.push(Xattr { name: name.to_vec(), value }),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => continue,
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Set xattrs on an open file or directory.
pub fn set_fd_xattrs(fd: BorrowedFd<'_>, xs: &[Xattr]) -> io::Result<()> {
    for x in xs {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(&x.name), &x.value, rustix::fs::XattrFlags::empty()).map_err(
            |e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("setting xattr {}: {e}", String::from_utf8_lossy(&x.name)),
                )
            },
        )?;
    }
    Ok(())
}

/// Set xattrs on `name` in `dir` without following it.
pub fn set_link_xattrs(dir: BorrowedFd<'_>, name: &[u8], xs: &[Xattr]) -> io::Result<()> {
    if xs.is_empty() {
        return Ok(());
    }
    let p = proc_path(dir, name);
    for x in xs {
        rustix::fs::lsetxattr(
            OsStr::from_bytes(&p),
            OsStr::from_bytes(&x.name),
            &x.value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("setting xattr {}: {e}", String::from_utf8_lossy(&x.name)),
            )
        })?;
    }
    Ok(())
}

/// Data regions of an open regular file as (offset, length), using SEEK_DATA/SEEK_HOLE.
/// Falls back to one region when the filesystem does not report holes.
pub fn data_regions(fd: BorrowedFd<'_>, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(fd, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(e) => return Err(e.into()),
        };
        if end > start {
            out.push((start, end - start));
        }
        pos = end;
    }
    rustix::fs::seek(fd, SeekFrom::Start(0))?;
    Ok(out)
}

/// Set mtime (and atime to the same value) on `name` in `dir` without following it.
pub fn set_times_at(dir: BorrowedFd<'_>, name: &[u8], sec: i64, nsec: u32) -> io::Result<()> {
    let ts = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    let t = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
    let n = cname(if name.is_empty() { b"." } else { name })?;
    rustix::fs::utimensat(dir, n.as_c_str(), &t, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Set mtime on an open file.
pub fn set_times_fd(fd: BorrowedFd<'_>, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    rustix::fs::futimens(fd, &rustix::fs::Timestamps { last_access: ts, last_modification: ts })?;
    Ok(())
}

/// Raise the soft open-files limit to the hard limit (deep trees hold one fd per level).
pub fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Is this error "no space left"?
pub fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
}
