//! `understudy images import`: a tar stream (debootstrap tree, `docker export`, our own
//! export) into the store. Paths are confined to the image: `..` is refused, leading `/`
//! is stripped, and no entry may sit below a non-directory (the symlink-escape trick).

use super::{ArchiveError, parse_pax_time};
use crate::progress::Progress;
use crate::store::Store;
use crate::store::manifest::{ChunkRef, Entry, Extent, Kind, Manifest, Xattr, check_path, path_cmp, split_parent};
use std::collections::HashMap;
use std::io::Read;
use tar::EntryType;

/// Counters of an import.
#[derive(Debug, Default, serde::Serialize)]
pub struct ImportStats {
    /// Archive members read.
    pub members: u64,
    /// File bytes read.
    pub bytes: u64,
    /// Bytes added to the store.
    pub added_bytes: u64,
    /// Members of kinds an image cannot hold, skipped.
    pub skipped: u64,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Normalise an archive path into an image path: strip leading `/` and `./`, drop `.`
/// components and trailing slashes; refuse `..`.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => {
                return Err(ArchiveError::Unsafe { path: lossy(raw), why: "path contains '..'".into() });
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    check_path(&out).map_err(|w| ArchiveError::Unsafe { path: lossy(raw), why: w.into() })?;
    Ok(out)
}

/// Largest PAX or long-name member read into memory.
const META_MAX: u64 = 64 << 20;

/// Parse PAX extended header records: `LEN key=value\n`, where LEN counts the whole
/// record, so values may hold any bytes, newlines included.
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().take(20).position(|&b| b == b' ').ok_or("PAX record without a length")?;
        let len: usize =
            std::str::from_utf8(&data[..sp]).ok().and_then(|s| s.parse().ok()).ok_or("PAX record with a bad length")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record length does not match its contents".into());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or("PAX record without '='")?;
        let key = std::str::from_utf8(&rec[..eq]).map_err(|_| "PAX key is not UTF-8")?;
        out.push((key.to_string(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { what: what.to_string(), source }
}

fn default_dir(path: Vec<u8>, mtime: i64) -> Entry {
    Entry { path, kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime, mtime_nsec: 0, xattrs: vec![] }
}

/// Read the PAX sparse 1.0 map at the start of an entry's data: (offset, len) pairs and
/// the number of bytes the map block took.
fn read_sparse_map(r: &mut impl Read, path: &[u8]) -> Result<(Vec<(u64, u64)>, u64), ArchiveError> {
    let bad = |why: &str| ArchiveError::Malformed { path: lossy(path), why: format!("sparse map: {why}") };
    let mut consumed = 0u64;
    let mut line = Vec::new();
    let mut next_num = |r: &mut dyn Read, consumed: &mut u64| -> Result<u64, ArchiveError> {
        line.clear();
        let mut b = [0u8; 1];
        loop {
            r.read_exact(&mut b).map_err(|_| bad("truncated"))?;
            *consumed += 1;
            if b[0] == b'\n' {
                break;
            }
            if line.len() > 20 || !b[0].is_ascii_digit() {
                return Err(bad("not a decimal number"));
            }
            line.push(b[0]);
        }
        std::str::from_utf8(&line).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("not a decimal number"))
    };
    let n = next_num(r, &mut consumed)?;
    if n > 1 << 20 {
        return Err(bad("too many regions"));
    }
    let mut map = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let o = next_num(r, &mut consumed)?;
        let l = next_num(r, &mut consumed)?;
        map.push((o, l));
    }
    let pad = consumed.div_ceil(512) * 512 - consumed;
    std::io::copy(&mut r.take(pad), &mut std::io::sink()).map_err(io("reading sparse map"))?;
    Ok((map, consumed + pad))
}

/// Import a tar stream into the store; returns the manifest (not yet written) and counters.
pub fn import(store: &Store, input: impl Read, quiet: bool) -> Result<(Manifest, ImportStats), ArchiveError> {
    let progress = Progress::new("import", None, quiet);
    let written = store.written_bytes();
    let mut ar = tar::Archive::new(input);
    let mut st = ImportStats::default();
    let mut map: HashMap<Vec<u8>, Entry> = HashMap::new();
    map.insert(Vec::new(), default_dir(Vec::new(), 0));
    let params = store.params();
    // Raw mode: PAX records and GNU long names are parsed here, because the tar crate
    // splits PAX records at newlines and so breaks on binary xattr values.
    let mut global: Vec<(String, Vec<u8>)> = Vec::new();
    let mut local: Option<Vec<(String, Vec<u8>)>> = None;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for member in ar.entries().map_err(io("reading archive"))?.raw(true) {
        let mut member = member.map_err(io("reading archive"))?;
        let ty = member.header().entry_type();
        let header_path = member.path_bytes().into_owned();
        let read_meta = |m: &mut tar::Entry<'_, _>| -> Result<Vec<u8>, ArchiveError> {
            if m.size() > META_MAX {
                return Err(ArchiveError::Malformed {
                    path: lossy(&header_path),
                    why: format!("metadata member of {} bytes", m.size()),
                });
            }
            let mut v = Vec::new();
            m.read_to_end(&mut v).map_err(io("reading archive"))?;
            Ok(v)
        };
        match ty {
            EntryType::XGlobalHeader => {
                global.extend(
                    parse_pax(&read_meta(&mut member)?)
                        .map_err(|why| ArchiveError::Malformed { path: lossy(&header_path), why })?,
                );
                continue;
            }
            EntryType::XHeader => {
                local = Some(
                    parse_pax(&read_meta(&mut member)?)
                        .map_err(|why| ArchiveError::Malformed { path: lossy(&header_path), why })?,
                );
                continue;
            }
            EntryType::GNULongName | EntryType::GNULongLink => {
                let mut v = read_meta(&mut member)?;
                while v.last() == Some(&0) {
                    v.pop();
                }
                if ty == EntryType::GNULongName {
                    long_name = Some(v)
                } else {
                    long_link = Some(v)
                };
                continue;
            }
            _ => {}
        }
        st.members += 1;
        let mut pax = global.clone();
        pax.extend(local.take().unwrap_or_default());
        let long_name = long_name.take();
        let long_link = long_link.take();
        let get = |k: &str| pax.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_slice());
        if get("size").is_some_and(|v| v != member.size().to_string().as_bytes()) {
            return Err(ArchiveError::Malformed {
                path: lossy(&header_path),
                why: "PAX size records (members over 8 GiB written in PAX form) are not supported".into(),
            });
        }
        let link_name: Option<Vec<u8>> = get("linkpath")
            .map(<[u8]>::to_vec)
            .or(long_link)
            .or_else(|| member.header().link_name_bytes().map(|c| c.into_owned()));
        let sparse_v1 = get("GNU.sparse.major") == Some(b"1");
        let raw_path = match get("GNU.sparse.name") {
            Some(n) if sparse_v1 => n.to_vec(),
            _ => get("path").map(<[u8]>::to_vec).or(long_name).unwrap_or(header_path),
        };
        let path = normalize(&raw_path)?;
        let h = member.header().clone();
        let num = |k: &str, fallback: u64| -> Result<u64, ArchiveError> {
            match get(k) {
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ArchiveError::Malformed { path: lossy(&raw_path), why: format!("bad pax {k}") }),
                None => Ok(fallback),
            }
        };
        let hdr_err = |e: std::io::Error| ArchiveError::Malformed { path: lossy(&raw_path), why: e.to_string() };
        let uid = u32::try_from(num("uid", h.uid().map_err(hdr_err)?)?)
            .map_err(|_| ArchiveError::Malformed { path: lossy(&raw_path), why: "uid out of range".into() })?;
        let gid = u32::try_from(num("gid", h.gid().map_err(hdr_err)?)?)
            .map_err(|_| ArchiveError::Malformed { path: lossy(&raw_path), why: "gid out of range".into() })?;
        let (mtime, mtime_nsec) = match get("mtime") {
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(parse_pax_time)
                .ok_or_else(|| ArchiveError::Malformed { path: lossy(&raw_path), why: "bad pax mtime".into() })?,
            None => (h.mtime().map_err(hdr_err)? as i64, 0),
        };
        let mode = h.mode().map_err(hdr_err)? & 0o7777;
        let mut xattrs: Vec<Xattr> = pax
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("SCHILY.xattr.").map(|n| Xattr { name: n.as_bytes().to_vec(), value: v.clone() })
            })
            .collect();
        xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        xattrs.dedup_by(|a, b| a.name == b.name);
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut extents = Vec::new();
                let size;
                let mut add_region =
                    |r: &mut dyn Read, offset: u64, len: u64, st: &mut ImportStats| -> Result<(), ArchiveError> {
                        let mut chunks = Vec::new();
                        let mut store_err = None;
                        let got = params
                            .cut_reader(r.take(len), len, |c| match store.put(c) {
                                Ok((id, _)) => {
                                    chunks.push(ChunkRef { id, len: c.len() as u32 });
                                    Ok(())
                                }
                                Err(e) => {
                                    store_err = Some(e);
                                    Err(std::io::Error::other("store"))
                                }
                            })
                            .map_err(|e| match store_err.take() {
                                Some(se) => ArchiveError::Store(se),
                                None => ArchiveError::Io { what: format!("reading {}", lossy(&raw_path)), source: e },
                            })?;
                        if got != len {
                            return Err(ArchiveError::Malformed {
                                path: lossy(&raw_path),
                                why: "file data truncated".into(),
                            });
                        }
                        st.bytes += got;
                        if !chunks.is_empty() {
                            extents.push(Extent { offset, chunks });
                        }
                        Ok(())
                    };
                if ty == EntryType::GNUSparse {
                    // Old GNU sparse member: up to four regions in the header itself;
                    // extension blocks are not supported (GNU tar writes PAX sparse
                    // with --format=posix).
                    let g = h.as_gnu().ok_or_else(|| ArchiveError::Malformed {
                        path: lossy(&raw_path),
                        why: "sparse member without a GNU header".into(),
                    })?;
                    if g.is_extended() {
                        return Err(ArchiveError::Malformed { path: lossy(&raw_path), why: "old GNU sparse member with more than 4 regions; re-create the archive with tar --format=posix".into() });
                    }
                    size = g.real_size().map_err(hdr_err)?;
                    let mut end = 0u64;
                    for sp in g.sparse.iter() {
                        let (o, l) = (sp.offset().map_err(hdr_err)?, sp.length().map_err(hdr_err)?);
                        if l == 0 {
                            continue;
                        }
                        if o < end || o.checked_add(l).is_none_or(|e| e > size) {
                            return Err(ArchiveError::Malformed {
                                path: lossy(&raw_path),
                                why: "sparse regions overlap or exceed the size".into(),
                            });
                        }
                        add_region(&mut member, o, l, &mut st)?;
                        end = o + l;
                    }
                } else if sparse_v1 {
                    size = num("GNU.sparse.realsize", 0)?;
                    let (regions, _) = read_sparse_map(&mut member, &raw_path)?;
                    let mut end = 0u64;
                    for (o, l) in regions {
                        if o < end || o.checked_add(l).is_none_or(|e| e > size) {
                            return Err(ArchiveError::Malformed {
                                path: lossy(&raw_path),
                                why: "sparse regions overlap or exceed the size".into(),
                            });
                        }
                        add_region(&mut member, o, l, &mut st)?;
                        end = o + l;
                    }
                } else {
                    size = member.size();
                    add_region(&mut member, 0, size, &mut st)?;
                }
                progress.add(1, size);
                Kind::File { size, extents }
            }
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink {
                target: link_name.clone().ok_or_else(|| ArchiveError::Malformed {
                    path: lossy(&raw_path),
                    why: "symlink without target".into(),
                })?,
            },
            EntryType::Link => {
                let t = link_name.clone().ok_or_else(|| ArchiveError::Malformed {
                    path: lossy(&raw_path),
                    why: "hard link without target".into(),
                })?;
                let t = normalize(&t)?;
                match map.get(&t).map(|e| &e.kind) {
                    Some(Kind::Hardlink { target }) => Kind::Hardlink { target: target.clone() },
                    Some(Kind::Dir) | None => {
                        return Err(ArchiveError::Unsafe {
                            path: lossy(&raw_path),
                            why: format!(
                                "hard link to {:?}, which is not an earlier non-directory entry of the archive",
                                lossy(&t)
                            ),
                        });
                    }
                    Some(_) => Kind::Hardlink { target: t },
                }
            }
            EntryType::Char | EntryType::Block => {
                let maj = h.device_major().map_err(hdr_err)?.unwrap_or(0);
                let min = h.device_minor().map_err(hdr_err)?.unwrap_or(0);
                let rdev = rustix::fs::makedev(maj, min);
                if ty == EntryType::Char { Kind::CharDev { rdev } } else { Kind::BlockDev { rdev } }
            }
            EntryType::Fifo => Kind::Fifo,
            EntryType::XGlobalHeader => continue,
            other => {
                tracing::warn!("{}: tar member type {other:?} skipped", lossy(&raw_path));
                st.skipped += 1;
                continue;
            }
        };
        if path.is_empty() && kind != Kind::Dir {
            return Err(ArchiveError::Unsafe {
                path: lossy(&raw_path),
                why: "the image root must be a directory".into(),
            });
        }
        // Every ancestor must be a directory of the image; create missing ones.
        let mut anc = path.as_slice();
        let mut missing = Vec::new();
        while let Some((parent, _)) = split_parent(anc) {
            match map.get(parent).map(|e| &e.kind) {
                Some(Kind::Dir) => break,
                Some(_) => {
                    return Err(ArchiveError::Unsafe {
                        path: lossy(&raw_path),
                        why: format!("{:?} is not a directory (symlink escape?)", lossy(parent)),
                    });
                }
                None => missing.push(parent.to_vec()),
            }
            anc = parent;
        }
        for m in missing {
            map.insert(m.clone(), default_dir(m, mtime));
        }
        let entry = Entry { path: path.clone(), kind, mode, uid, gid, mtime, mtime_nsec, xattrs };
        match map.get(&path).map(|e| &e.kind) {
            Some(Kind::Dir) if entry.kind != Kind::Dir => {
                return Err(ArchiveError::Unsafe {
                    path: lossy(&raw_path),
                    why: "replaces a directory with a non-directory".into(),
                });
            }
            Some(k) if *k != Kind::Dir && entry.kind == Kind::Dir => {
                return Err(ArchiveError::Unsafe {
                    path: lossy(&raw_path),
                    why: "replaces a non-directory with a directory".into(),
                });
            }
            _ => {}
        }
        map.insert(path, entry);
    }
    progress.finish();
    let mut entries: Vec<Entry> = map.into_values().collect();
    entries.sort_by(|a, b| path_cmp(&a.path, &b.path));
    let m = Manifest { chunker: params, entries };
    m.validate().map_err(|e| ArchiveError::Malformed { path: String::new(), why: e.to_string() })?;
    // Small chunks reach packs in blocks, some only at flush: count after it.
    store.flush()?;
    st.added_bytes = store.written_bytes() - written;
    Ok((m, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_confines_paths() {
        assert_eq!(normalize(b"./etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"/etc//passwd/").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"../etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"a/..").is_err());
    }

    #[test]
    fn pax_records_with_binary_values() {
        let rec = |k: &str, v: &[u8]| {
            let body_len = k.len() + v.len() + 2;
            let mut n = body_len + 1;
            while n != body_len + 1 + n.to_string().len() {
                n = body_len + 1 + n.to_string().len();
            }
            let mut r = format!("{n} {k}=").into_bytes();
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        let mut data = rec("SCHILY.xattr.system.posix_acl_access", b"\x02\n\0\n=x");
        data.extend(rec("path", b"a/b"));
        let got = parse_pax(&data).unwrap();
        assert_eq!(got[0].1, b"\x02\n\0\n=x");
        assert_eq!(got[1], ("path".to_string(), b"a/b".to_vec()));
        for bad in [&b"5 a=b\n"[..], b"x a=b\n", b"99 a=b\n", b"6 ab\nxx", b"3 =\n"] {
            assert!(parse_pax(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sparse_map_parses_and_rejects_garbage() {
        let mut block = b"2\n0\n5\n100\n3\n".to_vec();
        block.resize(512, 0);
        block.extend_from_slice(b"datadata");
        let mut r = &block[..];
        let (map, used) = read_sparse_map(&mut r, b"f").unwrap();
        assert_eq!(map, vec![(0, 5), (100, 3)]);
        assert_eq!(used, 512);
        assert_eq!(r, b"datadata");
        assert!(read_sparse_map(&mut &b"x\n"[..], b"f").is_err());
        assert!(read_sparse_map(&mut &b"2\n0\n"[..], b"f").is_err());
        assert!(read_sparse_map(&mut &b"99999999999\n"[..], b"f").is_err());
    }
}
