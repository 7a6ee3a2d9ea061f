//! `images verify`: re-hash every chunk the images reach and name what is damaged.

use super::{ChunkId, Store, StoreError, hex_id, manifest::display_path};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Outcome of a verify run.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Images checked.
    pub images: usize,
    /// Distinct chunks re-hashed.
    pub chunks: usize,
    /// Uncompressed bytes re-hashed.
    pub bytes: u64,
    /// Every fault, one line each, naming the image and path where known.
    pub faults: Vec<String>,
}

/// Paths listed per image and damaged chunk before "and N more".
const PATHS_PER_FAULT: usize = 20;

/// Verify the given images (label, manifest id) against the store.
pub fn verify(store: &Store, images: &[(String, ChunkId)]) -> VerifyReport {
    let mut rep = VerifyReport { images: images.len(), ..Default::default() };
    for p in store.problems() {
        rep.faults.push(format!("store index {}: {}", p.file.display(), p.why));
    }
    let mut manifests = Vec::new();
    for (label, id) in images {
        match store.read_manifest(id) {
            Ok(m) => manifests.push((label, m)),
            Err(e) => rep.faults.push(format!("image {label}: {e}")),
        }
    }
    let mut wanted: HashSet<ChunkId> = HashSet::new();
    for (_, m) in &manifests {
        for (_, c) in m.chunk_refs() {
            wanted.insert(c.id);
        }
    }
    // In pack order (missing chunks first), each thread a contiguous run: neighbours share
    // blocks, so each block is decompressed about once instead of once per chunk.
    let mut wanted: Vec<_> =
        wanted.into_iter().map(|id| (store.locate(&id).map(|l| (l.pack, l.offset, l.inner)), id)).collect();
    wanted.sort_unstable();
    let wanted: Vec<ChunkId> = wanted.into_iter().map(|(_, id)| id).collect();
    let bad: Mutex<HashMap<ChunkId, String>> = Mutex::new(HashMap::new());
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8);
    let per = wanted.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in wanted.chunks(per) {
            let (bad, bytes) = (&bad, &bytes);
            s.spawn(move || {
                for id in part {
                    match store.read(id) {
                        Ok(d) => {
                            bytes.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            let why = match e {
                                StoreError::ChunkMissing(_) => "missing".to_string(),
                                StoreError::ChunkCorrupt { why, .. } => format!("corrupt ({why})"),
                                other => other.to_string(),
                            };
                            bad.lock().unwrap_or_else(|e| e.into_inner()).insert(*id, why);
                        }
                    }
                }
            });
        }
    });
    rep.chunks = wanted.len();
    rep.bytes = bytes.into_inner();
    let bad = bad.into_inner().unwrap_or_else(|e| e.into_inner());
    for (label, m) in &manifests {
        let mut per_chunk: HashMap<ChunkId, (usize, Vec<String>)> = HashMap::new();
        for (e, c) in m.chunk_refs() {
            if bad.contains_key(&c.id) {
                let slot = per_chunk.entry(c.id).or_default();
                let p = display_path(&e.path);
                if slot.1.last() != Some(&p) {
                    slot.0 += 1;
                    if slot.1.len() < PATHS_PER_FAULT {
                        slot.1.push(p);
                    }
                }
            }
        }
        let mut ids: Vec<_> = per_chunk.into_iter().collect();
        ids.sort_by(|a, b| a.1.1.cmp(&b.1.1));
        for (id, (n, paths)) in ids {
            let more = if n > paths.len() { format!(" and {} more", n - paths.len()) } else { String::new() };
            rep.faults.push(format!(
                "image {label}: chunk {} {} — affects {}{more}",
                &hex_id(&id)[..16],
                bad[&id],
                paths.join(", ")
            ));
        }
    }
    rep
}
