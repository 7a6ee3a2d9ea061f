//! `understudy images export`: an image as a tar stream.

use super::{ArchiveError, pax_time};
use crate::deploy::ChunkSource;
use crate::progress::Progress;
use crate::store::manifest::{ChunkRef, Entry, Extent, Kind, Manifest};
use std::collections::HashMap;
use std::io::{Read, Write};
use tar::{EntryType, Header};

/// Counters of an export.
#[derive(Debug, Default, serde::Serialize)]
pub struct ExportStats {
    /// Entries written.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Entries that tar cannot hold (sockets), skipped.
    pub skipped: u64,
}

/// Streams the chunks of a list of extents in order, each verified by the source.
struct ChunkReader<'a> {
    src: &'a dyn ChunkSource,
    chunks: std::vec::IntoIter<ChunkRef>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.next() else { return Ok(0) };
            self.buf = self.src.read_chunk(&c.id).map_err(|e| std::io::Error::other(e.to_string()))?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn set_name(h: &mut Header, path: &[u8], dir: bool, pax: &mut Vec<(String, Vec<u8>)>) {
    let mut p = if path.is_empty() { b".".to_vec() } else { path.to_vec() };
    if dir {
        p.push(b'/');
    }
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    if p.len() <= name.len() {
        name[..p.len()].copy_from_slice(&p);
    } else {
        // Too long for the header: the PAX `path` record carries it (raw bytes).
        let n = name.len();
        name.copy_from_slice(&p[..n]);
        pax.push(("path".into(), p));
    }
}

fn set_link(h: &mut Header, target: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let l = &mut h.as_old_mut().linkname;
    l.fill(0);
    if target.len() <= l.len() {
        l[..target.len()].copy_from_slice(target);
    } else {
        pax.push(("linkpath".into(), target.to_vec()));
    }
}

fn base_header(e: &Entry, ty: EntryType, pax: &mut Vec<(String, Vec<u8>)>) -> Header {
    // POSIX ustar plus PAX records: GNU tar only honours PAX sparse maps in ustar members.
    let mut h = Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(e.mode);
    // Numbers too large for octal fields are written base-256, as GNU tar reads them.
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_size(0);
    if e.mtime_nsec != 0 || e.mtime < 0 {
        pax.push(("mtime".into(), pax_time(e.mtime, e.mtime_nsec).into_bytes()));
    }
    for x in &e.xattrs {
        match std::str::from_utf8(&x.name) {
            Ok(n) => pax.push((format!("SCHILY.xattr.{n}"), x.value.clone())),
            Err(_) => tracing::warn!("xattr with a non-UTF-8 name cannot be exported"),
        }
    }
    h
}

fn io(what: &str) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { what: what.to_string(), source }
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    pax: &[(String, Vec<u8>)],
    h: &mut Header,
    data: impl Read,
) -> Result<(), ArchiveError> {
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(io("writing archive"))?;
    }
    h.set_cksum();
    b.append(h, data).map_err(io("writing archive"))
}

fn is_dense(size: u64, extents: &[Extent]) -> bool {
    match extents {
        [] => size == 0,
        [x] => x.offset == 0 && x.len() == size,
        _ => false,
    }
}

/// Write `m` as a tar stream to `out`.
pub fn export<W: Write>(src: &dyn ChunkSource, m: &Manifest, out: W, quiet: bool) -> Result<ExportStats, ArchiveError> {
    let progress = Progress::new("export", Some(m.total_bytes()), quiet);
    let mut b = tar::Builder::new(out);
    let mut st = ExportStats::default();
    let by_path: HashMap<&[u8], &Entry> = m.entries.iter().map(|e| (e.path.as_slice(), e)).collect();
    // A hard link must follow the file it names in a tar stream. The first member of each
    // link group in manifest order carries the data; the others link to it.
    let mut first_of_group: HashMap<&[u8], &[u8]> = HashMap::new();
    for e in &m.entries {
        let group = match &e.kind {
            Kind::Hardlink { target } => target.as_slice(),
            _ => e.path.as_slice(),
        };
        first_of_group.entry(group).or_insert(e.path.as_slice());
    }
    for e in &m.entries {
        let mut pax = Vec::new();
        let group = match &e.kind {
            Kind::Hardlink { target } => target.as_slice(),
            _ => e.path.as_slice(),
        };
        let first = first_of_group.get(group).copied().unwrap_or(e.path.as_slice());
        // The entry whose data and metadata are written for this inode.
        let (data_entry, link_to) =
            if !matches!(e.kind, Kind::Hardlink { .. } | Kind::File { .. }) && first == e.path.as_slice() {
                (e, None)
            } else if first == e.path.as_slice() {
                (by_path.get(group).copied().unwrap_or(e), None)
            } else {
                (e, Some(first))
            };
        st.entries += 1;
        if let Some(t) = link_to {
            let mut h = base_header(by_path.get(group).copied().unwrap_or(e), EntryType::Link, &mut pax);
            pax.retain(|(k, _)| !k.starts_with("SCHILY.xattr."));
            set_name(&mut h, &e.path, false, &mut pax);
            set_link(&mut h, t, &mut pax);
            append(&mut b, &pax, &mut h, std::io::empty())?;
            continue;
        }
        match &data_entry.kind {
            Kind::Dir => {
                let mut h = base_header(data_entry, EntryType::Directory, &mut pax);
                set_name(&mut h, &e.path, true, &mut pax);
                append(&mut b, &pax, &mut h, std::io::empty())?;
            }
            Kind::Symlink { target } => {
                let mut h = base_header(data_entry, EntryType::Symlink, &mut pax);
                set_name(&mut h, &e.path, false, &mut pax);
                set_link(&mut h, target, &mut pax);
                append(&mut b, &pax, &mut h, std::io::empty())?;
            }
            Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
                let ty =
                    if matches!(data_entry.kind, Kind::CharDev { .. }) { EntryType::Char } else { EntryType::Block };
                let mut h = base_header(data_entry, ty, &mut pax);
                set_name(&mut h, &e.path, false, &mut pax);
                h.set_device_major(rustix::fs::major(*rdev)).map_err(io("device number"))?;
                h.set_device_minor(rustix::fs::minor(*rdev)).map_err(io("device number"))?;
                append(&mut b, &pax, &mut h, std::io::empty())?;
            }
            Kind::Fifo => {
                let mut h = base_header(data_entry, EntryType::Fifo, &mut pax);
                set_name(&mut h, &e.path, false, &mut pax);
                append(&mut b, &pax, &mut h, std::io::empty())?;
            }
            Kind::Socket => {
                tracing::warn!(
                    "{}: sockets cannot be stored in tar; skipped",
                    crate::store::manifest::display_path(&e.path)
                );
                st.entries -= 1;
                st.skipped += 1;
            }
            Kind::Hardlink { .. } => unreachable!("a group's data entry is never a link"),
            Kind::File { size, extents } => {
                let chunks: Vec<ChunkRef> = extents.iter().flat_map(|x| x.chunks.iter().copied()).collect();
                let data_len: u64 = extents.iter().map(|x| x.len()).sum();
                let mut h = base_header(data_entry, EntryType::Regular, &mut pax);
                let reader = ChunkReader { src, chunks: chunks.into_iter(), buf: Vec::new(), pos: 0 };
                if is_dense(*size, extents) {
                    set_name(&mut h, &e.path, false, &mut pax);
                    h.set_size(*size);
                    append(&mut b, &pax, &mut h, reader)?;
                } else {
                    // PAX sparse 1.0: a map of (offset, length) pairs at the start of the data.
                    let mut map: Vec<(u64, u64)> = extents.iter().map(|x| (x.offset, x.len())).collect();
                    if map.last().is_none_or(|&(o, l)| o + l < *size) {
                        map.push((*size, 0));
                    }
                    let mut text = format!("{}\n", map.len());
                    for (o, l) in &map {
                        text.push_str(&format!("{o}\n{l}\n"));
                    }
                    let mut block = text.into_bytes();
                    block.resize(block.len().div_ceil(512) * 512, 0);
                    pax.push(("GNU.sparse.major".into(), b"1".to_vec()));
                    pax.push(("GNU.sparse.minor".into(), b"0".to_vec()));
                    pax.push(("GNU.sparse.name".into(), e.path.clone()));
                    pax.push(("GNU.sparse.realsize".into(), size.to_string().into_bytes()));
                    let base = e.path.rsplit(|&c| c == b'/').next().unwrap_or(b"f");
                    let mut fake = b"GNUSparseFile.0/".to_vec();
                    fake.extend_from_slice(base);
                    fake.truncate(100);
                    let mut ignored = Vec::new();
                    set_name(&mut h, &fake, false, &mut ignored);
                    h.set_size(block.len() as u64 + data_len);
                    append(&mut b, &pax, &mut h, std::io::Cursor::new(block).chain(reader))?;
                }
                st.bytes += data_len;
                progress.add(1, data_len);
            }
        }
    }
    b.finish().map_err(io("finishing archive"))?;
    b.into_inner().map_err(io("finishing archive"))?.flush().map_err(io("flushing archive"))?;
    progress.finish();
    Ok(st)
}
