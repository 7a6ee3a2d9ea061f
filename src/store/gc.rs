//! `images gc`: remove what no image reaches. Runs under the exclusive store lock, so it
//! never races a capture, and refuses to run when any live manifest cannot be read.

use super::{ChunkId, Loc, Result, Store, StoreError, io_err, pack, pack::IndexEntry};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    keep_delta_bases(store, &mut reachable)?;
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
        let Some(n) = store.index.read().unwrap_or_else(|e| e.into_inner()).packs.iter().position(|p| *p == pid) else {
            continue;
        };
        // One record may hold many chunks (a block): weigh each record once, and count a
        // block's live bytes by the share of its raw bytes that is still reachable.
        let mut records: BTreeMap<u32, Vec<&IndexEntry>> = BTreeMap::new();
        for e in &entries {
            records.entry(e.offset).or_default().push(e);
        }
        let (mut total, mut live_bytes, mut any_live) = (0u64, 0u64, false);
        for chunks in records.values() {
            let stored = chunks[0].stored_len as u64;
            let live_raw: u64 = chunks.iter().filter(|e| reachable.contains(&e.id)).map(|e| e.raw_len as u64).sum();
            let all_raw = (chunks[0].record_raw as u64).max(1);
            total += stored;
            live_bytes += stored * live_raw.min(all_raw) / all_raw;
            any_live |= chunks.iter().any(|e| reachable.contains(&e.id));
        }
        let before = file_len(&pp) + file_len(&ip);
        if !any_live {
            forget_pack(store, n as u32);
            fs::remove_file(&ip).map_err(io_err("removing index"))?;
            fs::remove_file(&pp).map_err(io_err("removing pack"))?;
            rep.freed_bytes += before;
            rep.removed_packs += 1;
            continue;
        }
        if total == 0 || (total - live_bytes) as f64 / total as f64 <= REPACK_WASTE {
            continue;
        }
        // Copy single records and wholly live blocks as they are (still compressed); put
        // the live chunks of partly dead blocks again, which packs them into new blocks.
        // Make all of it durable, and only then drop the old pack.
        let mut copies = Vec::new();
        let mut reput = Vec::new();
        for chunks in records.values() {
            let e = chunks[0];
            if !chunks.iter().any(|e| reachable.contains(&e.id)) {
                continue;
            }
            let rec = store.read_record(&e.id, Loc::new(n as u32, e))?;
            if rec.flags != pack::FLAG_BLOCK {
                copies.push((rec, vec![(e.id, 0, e.raw_len)]));
                continue;
            }
            let corrupt = |why: String| StoreError::ChunkCorrupt { id: e.id, why };
            let (table, _) = pack::parse_block_table(&rec.payload, &rec.id, rec.raw_len)
                .map_err(|x| corrupt(format!("block: {x}")))?;
            if table.iter().all(|c| reachable.contains(&c.id)) {
                let list = table.iter().map(|c| (c.id, c.inner, c.len)).collect();
                copies.push((rec, list));
                continue;
            }
            let (table, data) =
                pack::decode_block(&rec.payload, &rec.id, rec.raw_len).map_err(|x| corrupt(format!("block: {x}")))?;
            for c in table.iter().filter(|c| reachable.contains(&c.id)) {
                let bytes = data[c.inner as usize..(c.inner + c.len) as usize].to_vec();
                if blake3::hash(&bytes).as_bytes() != &c.id {
                    return Err(StoreError::ChunkCorrupt { id: c.id, why: "content does not match its hash".into() });
                }
                reput.push((c.id, bytes));
            }
        }
        forget_pack(store, n as u32);
        let written = store.written_bytes();
        for (rec, chunks) in &copies {
            let hdr = pack::record_header(&rec.id, rec.flags, rec.raw_len, rec.payload.len() as u32);
            store.append(&hdr, &rec.payload, rec.raw_len, chunks)?;
        }
        for (id, bytes) in &reput {
            store.put_with_id(*id, bytes)?;
        }
        store.flush()?;
        fs::remove_file(&ip).map_err(io_err("removing index"))?;
        fs::remove_file(&pp).map_err(io_err("removing pack"))?;
        store.files.lock().unwrap_or_else(|e| e.into_inner()).clear();
        rep.freed_bytes += before.saturating_sub(store.written_bytes() - written);
        rep.rewritten_packs += 1;
    }
    rep.live_chunks = reachable.len();
    super::sync_dir(&store.root.join("packs")).map_err(io_err("syncing packs"))?;
    Ok(rep)
}

/// Add the base of every delta record of a reachable chunk to `reachable`. Every record
/// counts, not only the indexed one: two threads that store one chunk at once may leave
/// two records of it, and a later open may index the other one. A base can itself have
/// such a duplicate that is a delta, so this runs until nothing new is added.
fn keep_delta_bases(store: &Store, reachable: &mut HashSet<ChunkId>) -> Result<()> {
    let mut deltas: HashMap<ChunkId, Vec<Loc>> = HashMap::new();
    for pid in store.pack_ids()? {
        let Some(entries) = fs::read(store.index_path(&pid)).ok().and_then(|b| pack::decode_index(&b).ok()) else {
            continue;
        };
        let Some(n) = store.index.read().unwrap_or_else(|e| e.into_inner()).packs.iter().position(|p| *p == pid) else {
            continue;
        };
        for e in entries.iter().filter(|e| e.flags == pack::FLAG_DELTA) {
            deltas.entry(e.id).or_default().push(Loc::new(n as u32, e));
        }
    }
    let mut todo: Vec<ChunkId> = reachable.iter().filter(|id| deltas.contains_key(*id)).copied().collect();
    while let Some(id) = todo.pop() {
        for loc in deltas.remove(&id).unwrap_or_default() {
            let rec = store.read_record(&id, loc)?;
            let base = rec
                .payload
                .first_chunk::<32>()
                .copied()
                .ok_or(StoreError::ChunkCorrupt { id, why: "delta without base".into() })?;
            if reachable.insert(base) && deltas.contains_key(&base) {
                todo.push(base);
            }
        }
    }
    Ok(())
}

/// Drop every index entry that points into pack `n`, which is about to go: chunks that
/// live on are put again (or are found in another pack), dead ones must not be reported as
/// stored by `contains`.
fn forget_pack(store: &Store, n: u32) {
    store.index.write().unwrap_or_else(|e| e.into_inner()).map.retain(|_, l| l.pack != n);
    store.cache.clear();
}
