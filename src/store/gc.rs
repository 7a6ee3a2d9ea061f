//! `images gc`: remove what no image reaches. Runs under the exclusive store lock, so it
//! never races a capture, and refuses to run when any live manifest cannot be read.

use super::{ChunkId, Result, Store, StoreError, io_err, pack};
use std::collections::HashSet;
use std::fs;

/// Packs with more than this share of unreachable bytes are rewritten.
const REPACK_WASTE: f64 = 0.2;

/// What gc did.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Bytes freed on disk.
    pub freed_bytes: u64,
    /// Packs deleted because nothing in them was reachable.
    pub removed_packs: usize,
    /// Packs rewritten without their unreachable chunks.
    pub rewritten_packs: usize,
    /// Manifests (and their caches) removed.
    pub removed_manifests: usize,
    /// Chunks that stay.
    pub live_chunks: usize,
}

fn file_len(p: &std::path::Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Collect garbage, keeping every chunk reachable from `live` manifests.
pub fn gc(store: &Store, live: &[ChunkId]) -> Result<GcReport> {
    let mut rep = GcReport::default();
    let live_set: HashSet<ChunkId> = live.iter().copied().collect();
    let mut reachable: HashSet<ChunkId> = HashSet::new();
    for id in live {
        // Any unreadable live manifest stops gc: we could not know what it reaches.
        let m = store.read_manifest(id)?;
        reachable.extend(m.chunk_refs().map(|(_, c)| c.id));
    }
    // Delta chunks keep their bases alive (bases are never deltas: one pass suffices).
    let mut bases = Vec::new();
    for id in &reachable {
        if let Some(b) = store.delta_base(id)? {
            bases.push(b);
        }
    }
    reachable.extend(bases);
    for id in store.manifest_ids()? {
        if !live_set.contains(&id) {
            let p = store.manifest_path(&id);
            rep.freed_bytes += file_len(&p);
            fs::remove_file(&p).map_err(io_err("removing manifest"))?;
            rep.removed_manifests += 1;
        }
    }
    for e in fs::read_dir(store.root.join("cache")).map_err(io_err("listing cache"))?.flatten() {
        let name = e.file_name();
        let keep = name
            .to_str()
            .and_then(|n| n.strip_suffix(".cache"))
            .and_then(super::parse_id)
            .is_some_and(|id| live_set.contains(&id));
        if !keep {
            let _ = fs::remove_file(e.path());
        }
    }
    for pid in store.pack_ids()? {
        let ip = store.index_path(&pid);
        let pp = store.pack_path(&pid);
        let entries = match fs::read(&ip).ok().and_then(|b| pack::decode_index(&b).ok()) {
            Some(e) => e,
            None => continue, // recover() already rebuilt what it could; leave the rest alone
        };
        let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
        let live_entries: Vec<_> = entries.iter().filter(|e| reachable.contains(&e.id)).collect();
        let live_bytes: u64 = live_entries.iter().map(|e| e.stored_len as u64).sum();
        let before = file_len(&pp) + file_len(&ip);
        if live_entries.is_empty() {
            fs::remove_file(&ip).map_err(io_err("removing index"))?;
            fs::remove_file(&pp).map_err(io_err("removing pack"))?;
            rep.freed_bytes += before;
            rep.removed_packs += 1;
            continue;
        }
        if total == 0 || (total - live_bytes) as f64 / total as f64 <= REPACK_WASTE {
            continue;
        }
        // Copy the live records (still compressed) into new packs, make those durable,
        // and only then drop the old pack.
        let mut records = Vec::with_capacity(live_entries.len());
        for e in &live_entries {
            let loc = store.locate(&e.id).ok_or(StoreError::ChunkMissing(e.id))?;
            records.push((e.id, store.read_payload(&e.id, loc)?));
        }
        {
            let mut idx = store.index.write().unwrap_or_else(|e| e.into_inner());
            for (id, _) in &records {
                idx.map.remove(id);
            }
        }
        for (id, (flags, raw, payload)) in &records {
            store.append_record(*id, *flags, *raw, payload)?;
        }
        store.flush()?;
        fs::remove_file(&ip).map_err(io_err("removing index"))?;
        fs::remove_file(&pp).map_err(io_err("removing pack"))?;
        store.files.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let added: u64 = records.iter().map(|(_, (_, _, p))| (p.len() + pack::RECORD_HEADER_LEN) as u64).sum();
        rep.freed_bytes += before.saturating_sub(added);
        rep.rewritten_packs += 1;
    }
    rep.live_chunks = reachable.len();
    super::sync_dir(&store.root.join("packs")).map_err(io_err("syncing packs"))?;
    Ok(rep)
}
