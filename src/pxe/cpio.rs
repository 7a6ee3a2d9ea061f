//! An initramfs tree held as data and written as a reproducible newc cpio archive:
//! entries sorted by path (so parents come before children), inode numbers counted
//! from 1, one fixed mtime, owner root.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive entry; `C` says where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<C> {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Where its bytes come from (loaded only when writing).
        content: C,
    },
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node (e.g. /dev/console, so the kernel can open it for init).
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Adding an entry below something that is not a directory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A parent of the path exists and is not a directory.
    #[error("initramfs path {path}: {parent} is not a directory")]
    NotADir {
        /// The path being added.
        path: String,
        /// The offending parent.
        parent: String,
    },
    /// Empty, absolute-after-trim, or with `.`/`..` components.
    #[error("bad initramfs path {0:?}")]
    BadPath(String),
}

/// The archive's entries by path (relative, no leading `/`).
#[derive(Debug, Clone)]
pub struct Archive<C> {
    entries: BTreeMap<String, Entry<C>>,
}

impl<C> Default for Archive<C> {
    fn default() -> Self {
        Archive { entries: BTreeMap::new() }
    }
}

/// What writing produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Entries written (the trailer not counted).
    pub entries: u64,
    /// Uncompressed archive size in bytes.
    pub bytes: u64,
}

fn clean(path: &str) -> Result<String, TreeError> {
    let p = path.trim_start_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(TreeError::BadPath(path.to_string()));
    }
    Ok(p.to_string())
}

impl<C> Archive<C> {
    /// Add (or replace) an entry, creating missing parent directories (0755).
    pub fn insert(&mut self, path: &str, entry: Entry<C>) -> Result<(), TreeError> {
        let p = clean(path)?;
        let mut end = 0;
        while let Some(i) = p[end..].find('/') {
            let parent = &p[..end + i];
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(parent.to_string(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(TreeError::NotADir { path: p.clone(), parent: parent.to_string() }),
            }
            end += i + 1;
        }
        if let Some(Entry::Dir { .. }) = self.entries.get(&p)
            && let Entry::Dir { .. } = entry
        {
            return Ok(());
        }
        self.entries.insert(p, entry);
        Ok(())
    }

    /// Whether the path (leading `/` optional) has an entry.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Entries in archive order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry<C>)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the archive as newc cpio, loading each file's bytes with `load`.
    pub fn write<W: Write>(
        &self,
        w: W,
        mtime: u32,
        mut load: impl FnMut(&str, &C) -> io::Result<Vec<u8>>,
    ) -> io::Result<(W, WriteStats)> {
        let mut w = Counting { inner: w, n: 0 };
        for (ino, (path, e)) in (1u32..).zip(&self.entries) {
            let b = cpio::newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(mtime);
            let (b, data): (_, Vec<u8>) = match e {
                Entry::Dir { mode } => (b.mode(0o040000 | mode).nlink(2), vec![]),
                Entry::File { mode, content } => (b.mode(0o100000 | mode), load(path, content)?),
                Entry::Symlink(t) => (b.mode(0o120777), t.as_bytes().to_vec()),
                Entry::CharDev { mode, major, minor } => {
                    (b.mode(0o020000 | mode).rdev_major(*major).rdev_minor(*minor), vec![])
                }
            };
            let size = u32::try_from(data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: larger than 4 GiB")))?;
            let mut fw = b.write(w, size);
            fw.write_all(&data)?;
            w = fw.finish()?;
        }
        let w = cpio::newc::trailer(w)?;
        Ok((w.inner, WriteStats { entries: self.entries.len() as u64, bytes: w.n }))
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive<Vec<u8>> {
        let mut a = Archive::default();
        a.insert("/bin/busybox", Entry::File { mode: 0o755, content: b"bb".to_vec() }).unwrap();
        a.insert("/init", Entry::File { mode: 0o755, content: b"#!/bin/sh\n".to_vec() }).unwrap();
        a.insert("/bin/sh", Entry::Symlink("busybox".into())).unwrap();
        a.insert("/dev/console", Entry::CharDev { mode: 0o600, major: 5, minor: 1 }).unwrap();
        a.insert("/lib/modules/6.1/kernel/fs/ext4.ko", Entry::File { mode: 0o644, content: vec![7; 1000] }).unwrap();
        a
    }

    fn bytes(a: &Archive<Vec<u8>>) -> Vec<u8> {
        a.write(Vec::new(), 0, |_, c| Ok(c.clone())).unwrap().0
    }

    #[test]
    fn parents_are_created_and_sorted_first() {
        let a = sample();
        let paths: Vec<&String> = a.iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/fs",
                "lib/modules/6.1/kernel/fs/ext4.ko"
            ]
        );
        assert!(a.contains("/bin/sh") && a.contains("init"));
    }

    #[test]
    fn bad_paths_and_file_parents_are_refused() {
        let mut a = sample();
        assert!(matches!(a.insert("/init/x", Entry::Dir { mode: 0o755 }), Err(TreeError::NotADir { .. })));
        for bad in ["", "/", "a/../b", "a//b", "./a"] {
            assert_eq!(a.insert(bad, Entry::Dir { mode: 0o755 }), Err(TreeError::BadPath(bad.into())));
        }
    }

    #[test]
    fn writes_newc_that_reads_back() {
        let a = sample();
        let (out, stats) = a.write(Vec::new(), 42, |_, c| Ok(c.clone())).unwrap();
        assert_eq!(stats.bytes, out.len() as u64);
        assert_eq!(stats.entries, 12);
        let mut r = &out[..];
        let mut seen = vec![];
        loop {
            let mut rd = cpio::newc::Reader::new(r).unwrap();
            let e = rd.entry().clone();
            if e.is_trailer() {
                break;
            }
            assert_eq!((e.uid(), e.gid(), e.mtime()), (0, 0, 42));
            let mut data = vec![];
            std::io::Read::read_to_end(&mut rd, &mut data).unwrap();
            if e.name() == "bin/sh" {
                assert_eq!((e.mode(), &data[..]), (0o120777, &b"busybox"[..]));
            }
            if e.name() == "dev/console" {
                assert_eq!((e.mode(), e.rdev_major(), e.rdev_minor()), (0o020600, 5, 1));
            }
            seen.push((e.name().to_string(), data.len()));
            r = rd.finish().unwrap();
        }
        assert_eq!(seen.len(), 12);
        assert!(seen.contains(&("lib/modules/6.1/kernel/fs/ext4.ko".into(), 1000)));
    }

    #[test]
    fn output_is_reproducible() {
        // Insertion order does not matter; the bytes depend only on the content.
        let mut b = Archive::default();
        b.insert("/lib/modules/6.1/kernel/fs/ext4.ko", Entry::File { mode: 0o644, content: vec![7; 1000] }).unwrap();
        b.insert("/dev/console", Entry::CharDev { mode: 0o600, major: 5, minor: 1 }).unwrap();
        b.insert("/bin/sh", Entry::Symlink("busybox".into())).unwrap();
        b.insert("/init", Entry::File { mode: 0o755, content: b"#!/bin/sh\n".to_vec() }).unwrap();
        b.insert("/bin/busybox", Entry::File { mode: 0o755, content: b"bb".to_vec() }).unwrap();
        assert_eq!(bytes(&sample()), bytes(&b));
    }

    #[test]
    fn load_errors_propagate() {
        let a = sample();
        let e = a.write(Vec::new(), 0, |p, _| Err(io::Error::other(format!("cannot read {p}")))).unwrap_err();
        assert!(e.to_string().contains("cannot read bin/busybox"));
    }
}
