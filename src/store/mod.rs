//! The content-addressed store: chunks in pack files with indexes, and manifests.
//!
//! Layout under `<data_dir>/store`: `config` (format and chunker parameters), `lock`
//! (flock: captures hold it shared, gc exclusive), `packs/<id>.pack`, `index/<id>.idx`,
//! `manifests/<id>.mf`, `cache/<manifest id>.cache` (capture metadata cache) and `tmp/`.
//!
//! Crash safety: a pack is written under `tmp/`, fsynced, renamed into `packs/` and only
//! then is its index written the same way; a manifest is written only after every pack
//! it refers to is durable. A pack left without an index by a crash is re-indexed from
//! its self-describing records by the next writer that gets the lock alone.

pub mod chunker;
pub mod gc;
pub mod manifest;
pub mod pack;
pub mod verify;

use chunker::ChunkerParams;
use manifest::Manifest;
use pack::{FLAG_DELTA, FLAG_RAW, FLAG_ZSTD, IndexEntry, RECORD_HEADER_LEN};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A chunk or manifest id: BLAKE3 of the uncompressed bytes.
pub type ChunkId = [u8; 32];

/// Hashes a chunk id by its first eight bytes: ids are BLAKE3 outputs, already uniform,
/// so SipHash over all 32 bytes is wasted work on the hottest maps of the store.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(b) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*b);
        } else {
            for &x in bytes {
                self.0 = self.0.rotate_left(8) ^ x as u64;
            }
        }
    }

    fn write_usize(&mut self, _: usize) {
        // The length prefix of a [u8; 32] is always 32: nothing to mix in.
    }
}

/// A map keyed by chunk id.
pub type IdMap<V> = HashMap<ChunkId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hex form of an id.
pub fn hex_id(id: &ChunkId) -> String {
    hex::encode(id)
}

/// Parse a full hex id.
pub fn parse_id(s: &str) -> Option<ChunkId> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// Packs are closed once they reach this size.
pub const PACK_TARGET: u64 = 32 << 20;
/// zstd level for chunks.
pub const ZSTD_LEVEL: i32 = 3;
/// The largest manifest this build will decompress (guards against zstd bombs).
pub const MANIFEST_MAX: u64 = 4 << 30;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A chunk is not in any index.
    #[error("chunk {} is missing from the store", hex_id(.0))]
    ChunkMissing(ChunkId),
    /// A chunk's bytes do not hash to its id, or its record is damaged.
    #[error("chunk {} is corrupt: {why}", hex_id(id))]
    ChunkCorrupt {
        /// The chunk id.
        id: ChunkId,
        /// What was found.
        why: String,
    },
    /// A manifest file is missing.
    #[error("manifest {} is missing", hex_id(.0))]
    ManifestMissing(ChunkId),
    /// A manifest is damaged or invalid.
    #[error("manifest {} is corrupt: {why}", hex_id(id))]
    ManifestCorrupt {
        /// The manifest id.
        id: ChunkId,
        /// What was found.
        why: String,
    },
    /// The store config is unreadable or of another format.
    #[error("store config {path}: {why}")]
    Config {
        /// The config path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Result type of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Attach context to an io::Error.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreConfig {
    format: u32,
    chunker: ChunkerParams,
}

/// How the store lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Readers and writers that add data (capture, import, deploy, verify).
    Shared,
    /// Operations that remove data (gc).
    Exclusive,
}

/// Where a chunk lives.
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    /// Index into `packs`.
    pub pack: u32,
    /// Record offset.
    pub offset: u32,
    /// Stored payload length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Payload encoding.
    pub flags: u8,
}

#[derive(Default)]
struct Index {
    map: IdMap<Loc>,
    packs: Vec<ChunkId>,
}

impl Index {
    /// Publish a pack's entries; a chunk already indexed elsewhere keeps its first place.
    fn add_pack(&mut self, pid: ChunkId, entries: Vec<IndexEntry>) {
        let n = self.packs.len() as u32;
        self.packs.push(pid);
        self.map.reserve(entries.len());
        for e in entries {
            self.map.entry(e.id).or_insert(Loc {
                pack: n,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                flags: e.flags,
            });
        }
    }
}

/// Indexes shared between `Store` values of one long-running process.
#[derive(Default)]
pub struct IndexCache {
    inner: Mutex<Option<CachedIndex>>,
}

struct CachedIndex {
    ids: Vec<ChunkId>,
    index: Arc<RwLock<Index>>,
    problems: Vec<OpenProblem>,
}

/// A problem found while opening the store (a damaged index, say); the store still opens.
#[derive(Debug, Clone)]
pub struct OpenProblem {
    /// The file concerned.
    pub file: PathBuf,
    /// What is wrong.
    pub why: String,
}

struct PackWriter {
    tmp_path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<IndexEntry>,
    pending: HashSet<ChunkId>,
}

/// The store, opened with its lock held for the life of the value.
pub struct Store {
    root: PathBuf,
    params: ChunkerParams,
    _lock: File,
    index: Arc<RwLock<Index>>,
    writer: Mutex<Option<PackWriter>>,
    /// Packs being made durable in the background; joined by `flush`.
    sealing: Mutex<Vec<std::thread::JoinHandle<Result<()>>>>,
    files: Mutex<HashMap<u32, Arc<File>>>,
    problems: Vec<OpenProblem>,
}

/// Statistics of a chunk put.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutStats {
    /// Bytes this put added to packs (0 when the chunk was already stored).
    pub added: u64,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        match c.as_mut() {
            Some(c) => c.compress(data),
            None => Err(std::io::Error::other("zstd compressor unavailable")),
        }
    })
}

/// fsync a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `data` to `dest` atomically and durably via a temporary file in `tmp_dir`.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_dir.join(format!("w-{}-{}", std::process::id(), rand::random::<u64>()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        if let Some(d) = dest.parent() {
            sync_dir(d)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

impl Store {
    /// Create the store layout if needed and open it with the lock held in `mode`.
    pub fn open(data_dir: &Path, mode: LockMode) -> Result<Store> {
        Store::open_with(data_dir, mode, None)
    }

    /// Open shared for reading, reusing indexes already loaded into `cache` when the set
    /// of index files is unchanged (the server opens the store once per request).
    pub fn open_cached(data_dir: &Path, cache: &IndexCache) -> Result<Store> {
        Store::open_with(data_dir, LockMode::Shared, Some(cache))
    }

    fn open_with(data_dir: &Path, mode: LockMode, cache: Option<&IndexCache>) -> Result<Store> {
        let root = data_dir.join("store");
        for d in ["packs", "index", "manifests", "cache", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(format!("creating {}", root.join(d).display())))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(io_err("opening store lock"))?;
        let op = match mode {
            LockMode::Shared => rustix::fs::FlockOperation::LockShared,
            LockMode::Exclusive => rustix::fs::FlockOperation::LockExclusive,
        };
        if rustix::fs::flock(&lock, nonblocking(op)).is_err() {
            tracing::info!(
                "waiting for the store lock ({})",
                if mode == LockMode::Exclusive { "running captures must finish" } else { "gc is running" }
            );
            rustix::fs::flock(&lock, op).map_err(|e| io_err("locking store")(e.into()))?;
        }
        let params = Self::load_config(&root)?;
        let mut store = Store {
            root,
            params,
            _lock: lock,
            index: Arc::new(RwLock::new(Index::default())),
            writer: Mutex::new(None),
            sealing: Mutex::new(Vec::new()),
            files: Mutex::new(HashMap::new()),
            problems: Vec::new(),
        };
        if mode == LockMode::Exclusive {
            store.recover()?;
        }
        store.load_index(cache)?;
        Ok(store)
    }

    /// Open shared, but first repair crash leftovers if no one else holds the lock.
    pub fn open_for_write(data_dir: &Path) -> Result<Store> {
        let root = data_dir.join("store");
        if root.join("lock").exists() {
            let f = OpenOptions::new().write(true).open(root.join("lock")).map_err(io_err("opening store lock"))?;
            let excl = rustix::fs::FlockOperation::NonBlockingLockExclusive;
            if rustix::fs::flock(&f, excl).is_ok() {
                drop(f);
                // Nobody else is in the store: take it exclusively to recover, then reopen shared.
                let s = Store::open(data_dir, LockMode::Exclusive)?;
                drop(s);
            }
        }
        Store::open(data_dir, LockMode::Shared)
    }

    fn load_config(root: &Path) -> Result<ChunkerParams> {
        let path = root.join("config");
        match fs::read(&path) {
            Ok(b) => {
                let c: StoreConfig = serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Config { path: path.clone(), why: e.to_string() })?;
                if c.format != pack::FORMAT_VERSION {
                    return Err(StoreError::Config { path, why: format!("unsupported store format {}", c.format) });
                }
                Ok(c.chunker)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = StoreConfig { format: pack::FORMAT_VERSION, chunker: ChunkerParams::V1 };
                let body = serde_json::to_vec_pretty(&c)
                    .map_err(|e| StoreError::Config { path: path.clone(), why: e.to_string() })?;
                write_atomic(&root.join("tmp"), &path, &body).map_err(io_err("writing store config"))?;
                Ok(c.chunker)
            }
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    /// The chunker parameters of this store.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Root directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Problems seen while opening (damaged indexes and the like).
    pub fn problems(&self) -> &[OpenProblem] {
        &self.problems
    }

    fn pack_path(&self, id: &ChunkId) -> PathBuf {
        self.root.join("packs").join(format!("{}.pack", hex_id(id)))
    }

    fn index_path(&self, id: &ChunkId) -> PathBuf {
        self.root.join("index").join(format!("{}.idx", hex_id(id)))
    }

    fn manifest_path(&self, id: &ChunkId) -> PathBuf {
        self.root.join("manifests").join(format!("{}.mf", hex_id(id)))
    }

    /// Path of the capture metadata cache that belongs to a manifest.
    pub fn cache_path(&self, id: &ChunkId) -> PathBuf {
        self.root.join("cache").join(format!("{}.cache", hex_id(id)))
    }

    /// Directory for temporary files of this store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Ids of files named `<hex>.<ext>` in a store subdirectory.
    fn list_ids(&self, dir: &str, ext: &str) -> Result<Vec<ChunkId>> {
        let d = self.root.join(dir);
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err(format!("listing {}", d.display())))? {
            let e = e.map_err(io_err(format!("listing {}", d.display())))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(ext).and_then(|s| s.strip_suffix('.'))
                && let Some(id) = parse_id(stem)
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Ids of all packs on disk.
    pub fn pack_ids(&self) -> Result<Vec<ChunkId>> {
        self.list_ids("packs", "pack")
    }

    /// Ids of all manifests on disk.
    pub fn manifest_ids(&self) -> Result<Vec<ChunkId>> {
        self.list_ids("manifests", "mf")
    }

    fn load_index(&mut self, cache: Option<&IndexCache>) -> Result<()> {
        let ids = self.list_ids("index", "idx")?;
        if let Some(c) = cache {
            let guard = c.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = guard.as_ref()
                && c.ids == ids
            {
                self.index = c.index.clone();
                self.problems = c.problems.clone();
                return Ok(());
            }
        }
        let mut idx = Index::default();
        let mut problems = Vec::new();
        for pid in ids.iter().copied() {
            let p = self.index_path(&pid);
            let entries = match fs::read(&p) {
                Ok(b) => match pack::decode_index(&b) {
                    Ok(e) => e,
                    Err(e) => {
                        problems.push(OpenProblem { file: p, why: e.to_string() });
                        continue;
                    }
                },
                Err(e) => {
                    problems.push(OpenProblem { file: p, why: e.to_string() });
                    continue;
                }
            };
            idx.add_pack(pid, entries);
        }
        for p in &problems {
            tracing::warn!(file = %p.file.display(), "damaged store index: {}", p.why);
        }
        self.index = Arc::new(RwLock::new(idx));
        if let Some(c) = cache {
            *c.inner.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(CachedIndex { ids, index: self.index.clone(), problems: problems.clone() });
        }
        self.problems = problems;
        Ok(())
    }

    /// Remove temporary files and rebuild indexes of packs that lack a valid one.
    /// Needs the exclusive lock.
    fn recover(&mut self) -> Result<()> {
        let tmp = self.tmp_dir();
        for e in fs::read_dir(&tmp).map_err(io_err("listing store tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        for pid in self.pack_ids()? {
            let ip = self.index_path(&pid);
            let ok = fs::read(&ip).ok().map(|b| pack::decode_index(&b).is_ok()).unwrap_or(false);
            if ok {
                continue;
            }
            let pp = self.pack_path(&pid);
            let entries = scan_pack(&pp)?;
            if entries.is_empty() {
                tracing::warn!(pack = %pp.display(), "removing pack with no intact records");
                fs::remove_file(&pp).map_err(io_err("removing empty pack"))?;
                continue;
            }
            tracing::warn!(pack = %pp.display(), records = entries.len(), "rebuilt missing or damaged index");
            write_atomic(&tmp, &ip, &pack::encode_index(&entries)).map_err(io_err("writing rebuilt index"))?;
        }
        Ok(())
    }

    /// Is this chunk stored (or pending in the open pack)?
    pub fn contains(&self, id: &ChunkId) -> bool {
        if self.index.read().unwrap_or_else(|e| e.into_inner()).map.contains_key(id) {
            return true;
        }
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref().is_some_and(|w| w.pending.contains(id))
    }

    /// Location of a stored chunk.
    pub fn locate(&self, id: &ChunkId) -> Option<Loc> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).map.get(id).copied()
    }

    /// Number of chunks in the index.
    pub fn chunk_count(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    /// Store a chunk unless it is already there. Returns its id and the bytes added.
    pub fn put(&self, data: &[u8]) -> Result<(ChunkId, PutStats)> {
        let id = *blake3::hash(data).as_bytes();
        let added = self.put_with_id(id, data)?;
        Ok((id, added))
    }

    /// Store a chunk whose id the caller has computed (and verified).
    pub fn put_with_id(&self, id: ChunkId, data: &[u8]) -> Result<PutStats> {
        if self.contains(&id) {
            return Ok(PutStats::default());
        }
        let raw_len = u32::try_from(data.len())
            .map_err(|_| StoreError::ChunkCorrupt { id, why: "chunk larger than 4 GiB".into() })?;
        let compressed = compress(data).map_err(io_err("compressing chunk"))?;
        let (flags, payload): (u8, &[u8]) =
            if compressed.len() < data.len() { (FLAG_ZSTD, &compressed) } else { (FLAG_RAW, data) };
        self.append_record(id, flags, raw_len, payload)
    }

    /// Store a chunk, as a delta against `base` (the previous version of the same data)
    /// when that is smaller than compressing it alone.
    pub fn put_near(&self, data: &[u8], base: Option<&ChunkId>) -> Result<(ChunkId, PutStats)> {
        let id = *blake3::hash(data).as_bytes();
        if self.contains(&id) {
            return Ok((id, PutStats::default()));
        }
        let base =
            base.filter(|b| **b != id && data.len() >= 256 && self.locate(b).is_some_and(|l| l.flags != FLAG_DELTA));
        let Some(base) = base else { return Ok((id, self.put_with_id(id, data)?)) };
        let raw_len = u32::try_from(data.len())
            .map_err(|_| StoreError::ChunkCorrupt { id, why: "chunk larger than 4 GiB".into() })?;
        let base_data = self.read(base)?;
        let plain = compress(data).map_err(io_err("compressing chunk"))?;
        let delta = zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, &base_data)
            .and_then(|mut c| c.compress(data))
            .map_err(io_err("delta-compressing chunk"))?;
        let added = if delta.len() + 32 < plain.len().min(data.len()) {
            let mut payload = Vec::with_capacity(32 + delta.len());
            payload.extend_from_slice(base);
            payload.extend_from_slice(&delta);
            self.append_record(id, FLAG_DELTA, raw_len, &payload)?
        } else if plain.len() < data.len() {
            self.append_record(id, FLAG_ZSTD, raw_len, &plain)?
        } else {
            self.append_record(id, FLAG_RAW, raw_len, data)?
        };
        Ok((id, added))
    }

    /// Turn a stored payload back into the chunk's bytes (not yet hash-checked).
    pub fn decode_payload(&self, id: &ChunkId, flags: u8, raw_len: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
        let corrupt = |why: String| StoreError::ChunkCorrupt { id: *id, why };
        match flags {
            FLAG_RAW => Ok(payload),
            FLAG_ZSTD => zstd::bulk::decompress(&payload, raw_len as usize).map_err(|e| corrupt(format!("zstd: {e}"))),
            _ => {
                let (base, frame) =
                    payload.split_first_chunk::<32>().ok_or_else(|| corrupt("delta without base".into()))?;
                if self.locate(base).is_some_and(|l| l.flags == FLAG_DELTA) {
                    return Err(corrupt("delta base is itself a delta".into()));
                }
                let base_data = self.read(base).map_err(|e| corrupt(format!("its delta base: {e}")))?;
                zstd::bulk::Decompressor::with_dictionary(&base_data)
                    .and_then(|mut d| d.decompress(frame, raw_len as usize))
                    .map_err(|e| corrupt(format!("zstd delta: {e}")))
            }
        }
    }

    /// The base a delta chunk depends on.
    pub fn delta_base(&self, id: &ChunkId) -> Result<Option<ChunkId>> {
        match self.locate(id) {
            Some(loc) if loc.flags == FLAG_DELTA => {
                let (_, _, p) = self.read_payload(id, loc)?;
                Ok(p.first_chunk::<32>().copied())
            }
            _ => Ok(None),
        }
    }

    fn append_record(&self, id: ChunkId, flags: u8, raw_len: u32, payload: &[u8]) -> Result<PutStats> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|w| w.pending.contains(&id)) || self.locate(&id).is_some() {
            return Ok(PutStats::default());
        }
        if guard.is_none() {
            *guard = Some(self.new_pack_writer()?);
        }
        let Some(w) = guard.as_mut() else { unreachable!("writer was just created") };
        let hdr = pack::record_header(&id, flags, raw_len, payload.len() as u32);
        let offset = w.len as u32;
        let what = || format!("writing pack {}", w.tmp_path.display());
        w.out.write_all(&hdr).map_err(io_err(what()))?;
        w.out.write_all(payload).map_err(io_err(what()))?;
        w.hasher.update(&hdr);
        w.hasher.update(payload);
        let added = (RECORD_HEADER_LEN + payload.len()) as u64;
        w.len += added;
        w.entries.push(IndexEntry { id, offset, stored_len: payload.len() as u32, raw_len, flags });
        w.pending.insert(id);
        if w.len >= PACK_TARGET
            && let Some(w) = guard.take()
        {
            drop(guard);
            // fsync takes long: seal in the background so workers keep going.
            let (root, index) = (self.root.clone(), self.index.clone());
            let h = std::thread::spawn(move || seal_pack(&root, &index, w));
            self.sealing.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        }
        Ok(PutStats { added })
    }

    fn new_pack_writer(&self) -> Result<PackWriter> {
        let tmp_path = self.tmp_dir().join(format!("pack-{}-{}", std::process::id(), rand::random::<u64>()));
        let f = File::create(&tmp_path).map_err(io_err(format!("creating {}", tmp_path.display())))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let hdr = pack::pack_header();
        out.write_all(&hdr).map_err(io_err("writing pack header"))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hdr);
        Ok(PackWriter { tmp_path, out, hasher, len: hdr.len() as u64, entries: Vec::new(), pending: HashSet::new() })
    }

    /// Seal the open pack, if any, so that everything put so far is durable.
    pub fn flush(&self) -> Result<()> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut res = match w {
            Some(w) if !w.entries.is_empty() => seal_pack(&self.root, &self.index, w),
            Some(w) => {
                let _ = fs::remove_file(&w.tmp_path);
                Ok(())
            }
            None => Ok(()),
        };
        let handles: Vec<_> = self.sealing.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for h in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(StoreError::Io {
                    what: "sealing pack".into(),
                    source: std::io::Error::other("sealer thread panicked"),
                })
            });
            if res.is_ok() {
                res = r;
            }
        }
        res
    }

    fn pack_file(&self, n: u32) -> Result<Arc<File>> {
        if let Some(f) = self.files.lock().unwrap_or_else(|e| e.into_inner()).get(&n) {
            return Ok(f.clone());
        }
        let pid = self.index.read().unwrap_or_else(|e| e.into_inner()).packs.get(n as usize).copied();
        let Some(pid) = pid else {
            return Err(StoreError::Io {
                what: "pack lookup".into(),
                source: std::io::Error::other("bad pack number"),
            });
        };
        let p = self.pack_path(&pid);
        let f = Arc::new(File::open(&p).map_err(io_err(format!("opening pack {}", p.display())))?);
        self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(n, f.clone());
        Ok(f)
    }

    /// Read, decompress and verify a chunk.
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(id).ok_or(StoreError::ChunkMissing(*id))?;
        let (flags, raw_len, payload) = self.read_payload(id, loc)?;
        let data = self.decode_payload(id, flags, raw_len, payload)?;
        if data.len() != raw_len as usize {
            return Err(StoreError::ChunkCorrupt { id: *id, why: "wrong length after decompression".into() });
        }
        if blake3::hash(&data).as_bytes() != id {
            return Err(StoreError::ChunkCorrupt { id: *id, why: "content does not match its hash".into() });
        }
        Ok(data)
    }

    /// The stored record of a chunk as (flags, raw_len, payload), header checked.
    pub fn read_payload(&self, id: &ChunkId, loc: Loc) -> Result<(u8, u32, Vec<u8>)> {
        let f = self.pack_file(loc.pack)?;
        let mut buf = vec![0u8; RECORD_HEADER_LEN + loc.stored_len as usize];
        f.read_exact_at(&mut buf, loc.offset as u64)
            .map_err(|e| StoreError::ChunkCorrupt { id: *id, why: format!("reading pack: {e}") })?;
        let (rid, flags, raw, stored) =
            pack::parse_record_header(&buf).map_err(|e| StoreError::ChunkCorrupt { id: *id, why: e.to_string() })?;
        if rid != *id || flags != loc.flags || raw != loc.raw_len || stored != loc.stored_len {
            return Err(StoreError::ChunkCorrupt { id: *id, why: "pack record does not match its index entry".into() });
        }
        buf.drain(..RECORD_HEADER_LEN);
        Ok((flags, raw, buf))
    }

    /// Write a manifest durably; returns its id.
    pub fn write_manifest(&self, m: &Manifest) -> Result<ChunkId> {
        let enc = m.encode();
        let id = *blake3::hash(&enc).as_bytes();
        let path = self.manifest_path(&id);
        if self.manifest_intact(&id) {
            return Ok(id);
        }
        let z = zstd::bulk::compress(&enc, ZSTD_LEVEL).map_err(io_err("compressing manifest"))?;
        write_atomic(&self.tmp_dir(), &path, &z).map_err(io_err("writing manifest"))?;
        Ok(id)
    }

    /// Is the stored manifest present and does it hash to its id? (No decode.)
    fn manifest_intact(&self, id: &ChunkId) -> bool {
        let Ok(f) = File::open(self.manifest_path(id)) else { return false };
        let Ok(dec) = zstd::stream::read::Decoder::new(f) else { return false };
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut dec.take(MANIFEST_MAX), &mut h).is_ok() && h.finalize().as_bytes() == id
    }

    /// Read, check and decode a manifest.
    pub fn read_manifest(&self, id: &ChunkId) -> Result<Manifest> {
        let path = self.manifest_path(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::ManifestMissing(*id)),
            Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
        };
        let corrupt = |why: String| StoreError::ManifestCorrupt { id: *id, why };
        let dec = zstd::stream::read::Decoder::new(f).map_err(|e| corrupt(e.to_string()))?;
        let mut enc = Vec::new();
        dec.take(MANIFEST_MAX).read_to_end(&mut enc).map_err(|e| corrupt(format!("decompressing: {e}")))?;
        if blake3::hash(&enc).as_bytes() != id {
            return Err(corrupt("content does not match its id".into()));
        }
        Manifest::decode(&enc).map_err(|e| corrupt(e.to_string()))
    }

    /// Whether a manifest file exists.
    pub fn has_manifest(&self, id: &ChunkId) -> bool {
        self.manifest_path(id).exists()
    }
}

/// Make a finished pack durable, then its index, then publish its chunks.
fn seal_pack(root: &Path, index: &RwLock<Index>, w: PackWriter) -> Result<()> {
    let PackWriter { tmp_path, out, hasher, entries, .. } = w;
    let res = (|| {
        let f = out.into_inner().map_err(|e| io_err("flushing pack")(e.into_error()))?;
        f.sync_all().map_err(io_err("syncing pack"))?;
        drop(f);
        let pid = *hasher.finalize().as_bytes();
        let dest = root.join("packs").join(format!("{}.pack", hex_id(&pid)));
        fs::rename(&tmp_path, &dest).map_err(io_err("publishing pack"))?;
        sync_dir(&root.join("packs")).map_err(io_err("syncing packs directory"))?;
        write_atomic(
            &root.join("tmp"),
            &root.join("index").join(format!("{}.idx", hex_id(&pid))),
            &pack::encode_index(&entries),
        )
        .map_err(io_err("writing pack index"))?;
        Ok(pid)
    })();
    let pid = match res {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
    };
    index.write().unwrap_or_else(|e| e.into_inner()).add_pack(pid, entries);
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        // Background sealers finish before the lock is released.
        let handles: Vec<_> = self.sealing.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

fn nonblocking(op: rustix::fs::FlockOperation) -> rustix::fs::FlockOperation {
    use rustix::fs::FlockOperation as F;
    match op {
        F::LockShared => F::NonBlockingLockShared,
        F::LockExclusive => F::NonBlockingLockExclusive,
        o => o,
    }
}

/// Read a pack's records from the start, checking each record's hash; stops at the first
/// damaged or truncated record. Used to rebuild an index and by gc.
pub fn scan_pack(path: &Path) -> Result<Vec<IndexEntry>> {
    let data = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut out = Vec::new();
    if pack::check_pack_header(&data).is_err() {
        return Ok(out);
    }
    let mut off = pack::PACK_HEADER_LEN;
    while off + RECORD_HEADER_LEN <= data.len() {
        let Ok((id, flags, raw, stored)) = pack::parse_record_header(&data[off..]) else {
            break;
        };
        let start = off + RECORD_HEADER_LEN;
        let Some(end) = start.checked_add(stored as usize).filter(|&e| e <= data.len()) else {
            break;
        };
        let payload = &data[start..end];
        let ok = match flags {
            FLAG_RAW => blake3::hash(payload).as_bytes() == &id,
            FLAG_ZSTD => zstd::bulk::decompress(payload, raw as usize)
                .map(|d| blake3::hash(&d).as_bytes() == &id)
                .unwrap_or(false),
            // A delta needs its base to check; `images verify` does that after re-indexing.
            _ => payload.len() >= 32,
        };
        if !ok || off > u32::MAX as usize {
            break;
        }
        out.push(IndexEntry { id, offset: off as u32, stored_len: stored, raw_len: raw, flags });
        off = end;
    }
    Ok(out)
}
