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
//!
//! Small chunks are not written one by one: `put` gathers them into one shared open block
//! that is compressed as a single zstd frame once it is full (by the thread whose chunk
//! filled it, outside every lock, so workers keep compressing in parallel). A chunk is
//! visible to dedup (`contains`) from the moment it is staged, through the time its record
//! sits in the open pack or a pack being sealed ("pending"), until its pack is indexed;
//! `flush` writes the open block and waits for blocks being compressed and packs being
//! sealed, so whatever `contains` has vouched for is durable once `flush` returns.
//!
//! Blocks and deltas: a changed chunk may be stored as a delta against the previous
//! version's chunk (`put_near`). A delta is always a record of its own and never a block
//! member; its base must already be indexed (so durable before the delta) and may be a
//! block member, whose block `read` then decodes first. Bases are never deltas.

pub mod chunker;
pub mod gc;
pub mod manifest;
pub mod pack;
pub mod verify;

use chunker::ChunkerParams;
use manifest::Manifest;
use pack::{BlockChunk, FLAG_BLOCK, FLAG_DELTA, FLAG_RAW, FLAG_ZSTD, IndexEntry, RECORD_HEADER_LEN};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

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

/// Whether the store in `data_dir` holds manifest `id` (a hint, read without the lock:
/// whoever then uses the manifest opens the store and reads it).
pub fn manifest_exists(data_dir: &Path, id: &ChunkId) -> bool {
    data_dir.join("store").join("manifests").join(format!("{}.mf", hex_id(id))).exists()
}

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
/// Store format written into `store/config`: 2 has solid blocks (record flag 3) and
/// version 2 indexes. Version 1 stores (single-chunk records and deltas, version 1
/// indexes) are read as they are and upgraded when first written to.
pub const STORE_FORMAT: u32 = 2;
/// The store format before solid blocks.
pub const STORE_FORMAT_V1: u32 = 1;
/// zstd level for chunks.
pub const ZSTD_LEVEL: i32 = 3;
/// Chunks shorter than this go into solid blocks; longer ones get a record of their own.
/// With the V1 chunker that leaves alone only chunks cut at its 256 KiB maximum: blocking
/// those too gained nothing measurable on a Debian root (324.72 vs 324.77 MB), and alone
/// they stay cheap to read one by one.
pub const BLOCK_CHUNK_MAX: usize = 256 << 10;
/// An open block is compressed and written once its chunks add up to this many bytes.
/// zstd needs context: on a Debian root (987 MB) the store was 1.038x `tar | zstd -3`
/// with 256 KiB blocks of chunks under 32 KiB, 0.971x with 1 MiB blocks of all chunks,
/// 0.956x with 2 MiB and 0.946x with 4 MiB (0.964x with 2 MiB and the smaller match
/// tables `compress` uses). 2 MiB is where the gain flattens while a single-chunk read
/// still decompresses only ~2 MiB.
pub const BLOCK_TARGET: usize = 2 << 20;
/// Decompressed blocks a store keeps for reads of neighbouring chunks (deploy, verify).
const BLOCK_CACHE_SLOTS: usize = 8;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Index into `packs`.
    pub pack: u32,
    /// Record offset.
    pub offset: u32,
    /// Stored payload length of the record.
    pub stored_len: u32,
    /// Uncompressed length of the chunk.
    pub raw_len: u32,
    /// Payload encoding.
    pub flags: u8,
    /// Offset of the chunk in its block's decompressed data (0 unless a block).
    pub inner: u32,
    /// Decompressed length of the whole record.
    pub record_raw: u32,
}

impl Loc {
    fn new(pack: u32, e: &IndexEntry) -> Loc {
        Loc {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            flags: e.flags,
            inner: e.inner,
            record_raw: e.record_raw,
        }
    }

    /// Pack bytes attributable to this chunk: its whole record, or its share of a block.
    pub fn stored_share(&self) -> u64 {
        let record = self.stored_len as u64 + RECORD_HEADER_LEN as u64;
        if self.flags == FLAG_BLOCK && self.record_raw > 0 {
            record * self.raw_len as u64 / self.record_raw as u64
        } else {
            record
        }
    }
}

/// One record read back from a pack, header checked against the index.
#[derive(Debug, Clone)]
pub struct Record {
    /// Record id: the chunk id, or the hash of a block's table.
    pub id: ChunkId,
    /// Payload encoding.
    pub flags: u8,
    /// Decompressed length of the payload (for a block: of its chunks together).
    pub raw_len: u32,
    /// The stored payload.
    pub payload: Vec<u8>,
}

#[derive(Default)]
struct Index {
    map: IdMap<Loc>,
    packs: Vec<ChunkId>,
}

impl Index {
    /// Publish a pack's entries; a chunk already indexed elsewhere keeps its first place.
    fn add_pack(&mut self, pid: ChunkId, entries: &[IndexEntry]) {
        let n = self.packs.len() as u32;
        self.packs.push(pid);
        self.map.reserve(entries.len());
        for e in entries {
            self.map.entry(e.id).or_insert(Loc::new(n, e));
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
}

/// Small chunks waiting to be compressed together.
#[derive(Default)]
struct OpenBlock {
    chunks: Vec<(ChunkId, u32)>,
    data: Vec<u8>,
}

/// The block side of the writer, under its own mutex so that staging a chunk never waits
/// for a pack write.
#[derive(Default)]
struct Blocks {
    open: OpenBlock,
    /// Chunks in the open block or in blocks being compressed: already "stored" for dedup.
    staged: HashSet<ChunkId>,
    /// Sequence numbers of blocks taken out of `open` and not yet appended to a pack.
    in_flight: BTreeSet<u64>,
    next_seq: u64,
}

impl Blocks {
    /// Take the open block for compression, registering it as in flight.
    fn take_open(&mut self, capacity: usize) -> (u64, OpenBlock) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq);
        let fresh = OpenBlock { chunks: Vec::new(), data: Vec::with_capacity(capacity) };
        (seq, std::mem::replace(&mut self.open, fresh))
    }
}

/// Block grouping parameters (constants in production; smaller in tests).
#[derive(Debug, Clone, Copy)]
struct BlockParams {
    chunk_max: usize,
    target: usize,
}

/// A decompressed block: its table and its chunks' bytes.
struct DecodedBlock {
    chunks: Vec<BlockChunk>,
    data: Vec<u8>,
}

/// Why a stored block could not be decoded (kept in the cache slot, so it is `Clone`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockFault(String);

type BlockSlot = Arc<OnceLock<std::result::Result<Arc<DecodedBlock>, BlockFault>>>;

/// The last few decompressed blocks, shared by all reading threads: deploy hands
/// neighbouring files to different threads, and they should not each decompress the same
/// block. A slot is filled once; threads that want it meanwhile wait for that one
/// decompression instead of repeating it.
#[derive(Default)]
struct BlockCache {
    slots: Mutex<VecDeque<((u32, u32), BlockSlot)>>,
}

impl BlockCache {
    fn get(
        &self,
        key: (u32, u32),
        load: impl FnOnce() -> std::result::Result<DecodedBlock, BlockFault>,
    ) -> std::result::Result<Arc<DecodedBlock>, BlockFault> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let hit = slots.iter().position(|(k, _)| *k == key).and_then(|i| slots.remove(i));
            let entry = hit.unwrap_or_else(|| (key, Arc::new(OnceLock::new())));
            let slot = entry.1.clone();
            slots.push_back(entry);
            while slots.len() > BLOCK_CACHE_SLOTS {
                slots.pop_front();
            }
            slot
        };
        let res = slot.get_or_init(|| load().map(Arc::new)).clone();
        if res.is_err() {
            // Do not keep failures: a later read may succeed (a transient I/O error).
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, s)| !Arc::ptr_eq(s, &slot));
        }
        res
    }

    fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The store, opened with its lock held for the life of the value.
pub struct Store {
    root: PathBuf,
    params: ChunkerParams,
    /// Format in the store config: [`STORE_FORMAT_V1`] until this value first writes.
    format: Mutex<u32>,
    _lock: File,
    index: Arc<RwLock<Index>>,
    writer: Mutex<Option<PackWriter>>,
    /// Packs being made durable in the background; joined by `flush`.
    sealing: Mutex<Vec<std::thread::JoinHandle<Result<()>>>>,
    /// Chunks written to the open pack or to a pack being sealed, not yet in the index.
    /// Kept apart from `writer` so that dedup checks never wait for a pack write.
    pending: Arc<Mutex<HashSet<ChunkId>>>,
    blocks: Mutex<Blocks>,
    /// Signalled whenever an in-flight block has been appended (or has failed).
    block_done: Condvar,
    block_params: BlockParams,
    cache: BlockCache,
    /// Bytes appended to packs through this value.
    written: AtomicU64,
    /// Set when a write failed after other puts may have deduplicated against the lost
    /// data: `flush` then fails, so no manifest can refer to it.
    failed: Mutex<Option<String>>,
    files: Mutex<HashMap<u32, Arc<File>>>,
    problems: Vec<OpenProblem>,
}

/// Statistics of a chunk put.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutStats {
    /// The chunk was not stored yet (bytes reach packs when its block is written; see
    /// [`Store::written_bytes`]).
    pub new: bool,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            let mut z = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            // Level 3 sizes its match tables for large inputs at 2^17/2^16 entries; on
            // 2 MiB blocks that made compression 9% slower than one frame per chunk was.
            // 2^16/2^15 is as fast as before, for 1% more output (Debian root: 320.6 vs
            // 317.2 MB; one frame per chunk: 357.5 MB).
            z.set_parameter(zstd::zstd_safe::CParameter::HashLog(16))?;
            z.set_parameter(zstd::zstd_safe::CParameter::ChainLog(15))?;
            *c = Some(z);
        }
        match c.as_mut() {
            Some(c) => c.compress(data),
            None => Err(std::io::Error::other("zstd compressor unavailable")),
        }
    })
}

/// Build a block record from chunks given as (id, length) plus their bytes concatenated:
/// the record header and the payload (table, then one zstd frame of `data`).
pub fn encode_block(chunks: &[(ChunkId, u32)], data: &[u8]) -> std::io::Result<([u8; RECORD_HEADER_LEN], Vec<u8>)> {
    let raw = u32::try_from(data.len()).map_err(|_| std::io::Error::other("block larger than 4 GiB"))?;
    let mut payload = pack::encode_block_table(chunks);
    let table_len = payload.len();
    let frame = compress(data)?;
    payload.extend_from_slice(&frame);
    let hdr = pack::block_header(&payload[..table_len], raw, frame.len());
    Ok((hdr, payload))
}

/// A chunk's length as stored in record headers.
fn chunk_len(id: &ChunkId, data: &[u8]) -> Result<u32> {
    u32::try_from(data.len()).map_err(|_| StoreError::ChunkCorrupt { id: *id, why: "chunk larger than 4 GiB".into() })
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
        let (params, format) = Self::load_config(&root)?;
        let mut store = Store {
            root,
            params,
            format: Mutex::new(format),
            _lock: lock,
            index: Arc::new(RwLock::new(Index::default())),
            writer: Mutex::new(None),
            sealing: Mutex::new(Vec::new()),
            pending: Arc::new(Mutex::new(HashSet::new())),
            blocks: Mutex::new(Blocks::default()),
            block_done: Condvar::new(),
            block_params: BlockParams { chunk_max: BLOCK_CHUNK_MAX, target: BLOCK_TARGET },
            cache: BlockCache::default(),
            written: AtomicU64::new(0),
            failed: Mutex::new(None),
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
                // Nobody else is in the store: take it exclusively to recover, then keep
                // it shared. The kernel converts a flock under one lock of the inode, so
                // no gc can slip in between and the index just loaded stays true (a
                // failed conversion drops the store and opens it afresh).
                let s = Store::open(data_dir, LockMode::Exclusive)?;
                if rustix::fs::flock(&s._lock, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
                    return Ok(s);
                }
                drop(s);
            }
        }
        Store::open(data_dir, LockMode::Shared)
    }

    /// Read the store config (creating it for a new store): its chunker and format.
    fn load_config(root: &Path) -> Result<(ChunkerParams, u32)> {
        let path = root.join("config");
        match fs::read(&path) {
            Ok(b) => {
                let c: StoreConfig = serde_json::from_slice(&b)
                    .map_err(|e| StoreError::Config { path: path.clone(), why: e.to_string() })?;
                if !(STORE_FORMAT_V1..=STORE_FORMAT).contains(&c.format) {
                    return Err(StoreError::Config { path, why: format!("unsupported store format {}", c.format) });
                }
                Ok((c.chunker, c.format))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let c = StoreConfig { format: STORE_FORMAT, chunker: ChunkerParams::V1 };
                Self::write_config(root, &c)?;
                Ok((c.chunker, c.format))
            }
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_config(root: &Path, c: &StoreConfig) -> Result<()> {
        let path = root.join("config");
        let body =
            serde_json::to_vec_pretty(c).map_err(|e| StoreError::Config { path: path.clone(), why: e.to_string() })?;
        write_atomic(&root.join("tmp"), &path, &body).map_err(io_err("writing store config"))
    }

    /// Mark a version 1 store as the current format before the first file only this
    /// build reads (an index with block entries, a pack with block records) is written, so
    /// that older builds refuse the store instead of misreading it. Reading never upgrades.
    fn upgrade_format(&self) -> Result<()> {
        let mut f = self.format.lock().unwrap_or_else(|e| e.into_inner());
        if *f < STORE_FORMAT {
            Self::write_config(&self.root, &StoreConfig { format: STORE_FORMAT, chunker: self.params })?;
            tracing::info!(store = %self.root.display(), "store format upgraded to {STORE_FORMAT} (solid blocks)");
            *f = STORE_FORMAT;
        }
        Ok(())
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
            idx.add_pack(pid, &entries);
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
            self.upgrade_format()?;
            write_atomic(&tmp, &ip, &pack::encode_index(&entries)).map_err(io_err("writing rebuilt index"))?;
        }
        Ok(())
    }

    /// Is this chunk stored, or staged or pending so that `flush` will store it?
    pub fn contains(&self, id: &ChunkId) -> bool {
        // A chunk moves staged -> pending -> indexed and enters each set before it leaves
        // the previous one, so looking in that order never misses it; the index is looked
        // at first only because that is where almost every hit is.
        self.indexed(id)
            || self.blocks.lock().unwrap_or_else(|e| e.into_inner()).staged.contains(id)
            || self.pending(id)
            || self.indexed(id)
    }

    fn indexed(&self, id: &ChunkId) -> bool {
        self.index.read().unwrap_or_else(|e| e.into_inner()).map.contains_key(id)
    }

    fn pending(&self, id: &ChunkId) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// Location of a stored chunk.
    pub fn locate(&self, id: &ChunkId) -> Option<Loc> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).map.get(id).copied()
    }

    /// Number of chunks in the index.
    pub fn chunk_count(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    /// Bytes appended to packs through this store value (record headers included).
    pub fn written_bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Store a chunk unless it is already there. Returns its id and whether it was new.
    pub fn put(&self, data: &[u8]) -> Result<(ChunkId, PutStats)> {
        let id = *blake3::hash(data).as_bytes();
        let added = self.put_with_id(id, data)?;
        Ok((id, added))
    }

    /// Store a chunk whose id the caller has computed (and verified).
    pub fn put_with_id(&self, id: ChunkId, data: &[u8]) -> Result<PutStats> {
        if self.locate(&id).is_some() {
            return Ok(PutStats::default());
        }
        let raw_len = chunk_len(&id, data)?;
        if data.len() >= self.block_params.chunk_max {
            if self.contains(&id) {
                return Ok(PutStats::default());
            }
            let compressed = compress(data).map_err(io_err("compressing chunk"))?;
            return self.append_single(id, raw_len, data, &compressed);
        }
        self.stage(id, raw_len, data)
    }

    /// Add a small chunk to the open block, writing the block out once it is full.
    fn stage(&self, id: ChunkId, raw_len: u32, data: &[u8]) -> Result<PutStats> {
        let full = {
            let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            // Lock order: blocks, then pending (never the other way round).
            if b.staged.contains(&id) || self.pending(&id) || self.indexed(&id) {
                return Ok(PutStats::default());
            }
            b.staged.insert(id);
            b.open.chunks.push((id, raw_len));
            b.open.data.extend_from_slice(data);
            if b.open.data.len() >= self.block_params.target {
                Some(b.take_open(self.block_params.target + self.block_params.chunk_max))
            } else {
                None
            }
        };
        if let Some((seq, block)) = full {
            // Compressed here, outside every lock: other workers keep staging meanwhile.
            self.write_block(seq, block)?;
        }
        Ok(PutStats { new: true })
    }

    /// Append a chunk as a record of its own: `compressed` unless that is no smaller.
    fn append_single(&self, id: ChunkId, raw_len: u32, data: &[u8], compressed: &[u8]) -> Result<PutStats> {
        if compressed.len() < data.len() {
            self.append_record(id, FLAG_ZSTD, raw_len, compressed)
        } else {
            self.append_record(id, FLAG_RAW, raw_len, data)
        }
    }

    /// Store a chunk, as a delta against `base` (the previous version of the same data)
    /// when that is smaller than compressing it alone. A delta is always a record of its
    /// own, never a block member; its base may sit in a block.
    pub fn put_near(&self, data: &[u8], base: Option<&ChunkId>) -> Result<(ChunkId, PutStats)> {
        let id = *blake3::hash(data).as_bytes();
        if self.contains(&id) {
            return Ok((id, PutStats::default()));
        }
        // The base must be indexed, so it is durable before the delta that needs it.
        let base =
            base.filter(|b| **b != id && data.len() >= 256 && self.locate(b).is_some_and(|l| l.flags != FLAG_DELTA));
        let Some(base) = base else { return Ok((id, self.put_with_id(id, data)?)) };
        let raw_len = chunk_len(&id, data)?;
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
        } else if data.len() < self.block_params.chunk_max {
            // The base does not help: a small chunk compresses better among others.
            self.stage(id, raw_len, data)?
        } else {
            self.append_single(id, raw_len, data, &plain)?
        };
        Ok((id, added))
    }

    /// Turn a single-chunk record's payload back into the chunk's bytes (not yet
    /// hash-checked). Blocks are decoded by `read`.
    pub fn decode_payload(&self, id: &ChunkId, flags: u8, raw_len: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
        let corrupt = |why: String| StoreError::ChunkCorrupt { id: *id, why };
        match flags {
            FLAG_RAW => Ok(payload),
            FLAG_ZSTD => zstd::bulk::decompress(&payload, raw_len as usize).map_err(|e| corrupt(format!("zstd: {e}"))),
            FLAG_DELTA => {
                let (base, frame) =
                    payload.split_first_chunk::<32>().ok_or_else(|| corrupt("delta without base".into()))?;
                if self.locate(base).is_some_and(|l| l.flags == FLAG_DELTA) {
                    return Err(corrupt("delta base is itself a delta".into()));
                }
                // The base may be a block member: `read` decodes (and caches) its block.
                let base_data = self.read(base).map_err(|e| corrupt(format!("its delta base: {e}")))?;
                zstd::bulk::Decompressor::with_dictionary(&base_data)
                    .and_then(|mut d| d.decompress(frame, raw_len as usize))
                    .map_err(|e| corrupt(format!("zstd delta: {e}")))
            }
            _ => Err(corrupt("a block is not the payload of one chunk".into())),
        }
    }

    /// The base a delta chunk depends on.
    pub fn delta_base(&self, id: &ChunkId) -> Result<Option<ChunkId>> {
        match self.locate(id) {
            Some(loc) if loc.flags == FLAG_DELTA => Ok(self.read_record(id, loc)?.payload.first_chunk::<32>().copied()),
            _ => Ok(None),
        }
    }

    /// Compress a block taken out of `open` and append it; then it is no longer in flight.
    fn write_block(&self, seq: u64, block: OpenBlock) -> Result<()> {
        let res = (|| {
            let (hdr, payload) = encode_block(&block.chunks, &block.data).map_err(io_err("compressing block"))?;
            let raw = block.data.len() as u32;
            let mut inner = 0u32;
            let chunks: Vec<(ChunkId, u32, u32)> = block
                .chunks
                .iter()
                .map(|&(id, len)| {
                    let c = (id, inner, len);
                    inner += len;
                    c
                })
                .collect();
            self.append(&hdr, &payload, raw, &chunks)
        })();
        // The chunks are pending now (or lost, and the store is marked failed).
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        for (id, _) in &block.chunks {
            b.staged.remove(id);
        }
        b.in_flight.remove(&seq);
        drop(b);
        self.block_done.notify_all();
        if let Err(e) = &res {
            self.fail(e);
        }
        res.map(|_| ())
    }

    fn fail(&self, e: &StoreError) {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| e.to_string());
    }

    /// Append a record holding a single chunk, unless that chunk is already stored.
    fn append_record(&self, id: ChunkId, flags: u8, raw_len: u32, payload: &[u8]) -> Result<PutStats> {
        let hdr = pack::record_header(&id, flags, raw_len, payload.len() as u32);
        let res = self.append(&hdr, payload, raw_len, &[(id, 0, raw_len)]);
        if let Err(e) = &res {
            self.fail(e);
        }
        Ok(PutStats { new: res? > 0 })
    }

    /// Append one record to the open pack and make the chunks it holds, given as (id,
    /// inner offset, length), pending. A single-chunk record whose chunk is already stored
    /// is skipped (returns 0); otherwise returns the bytes written.
    fn append(
        &self,
        hdr: &[u8; RECORD_HEADER_LEN],
        payload: &[u8],
        record_raw: u32,
        chunks: &[(ChunkId, u32, u32)],
    ) -> Result<u64> {
        let flags = hdr[32];
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let [(id, _, _)] = chunks
            && flags != FLAG_BLOCK
            && (self.pending(id) || self.indexed(id))
        {
            return Ok(0);
        }
        if guard.is_none() {
            *guard = Some(self.new_pack_writer()?);
        }
        let Some(w) = guard.as_mut() else { unreachable!("writer was just created") };
        let offset = w.len as u32;
        let stored_len = payload.len();
        if let Err(e) = w.out.write_all(hdr).and_then(|_| w.out.write_all(payload)) {
            // A partial record would corrupt everything after it: give up this pack.
            let what = format!("writing pack {}", w.tmp_path.display());
            if let Some(w) = guard.take() {
                let _ = fs::remove_file(&w.tmp_path);
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for e in &w.entries {
                    p.remove(&e.id);
                }
            }
            return Err(io_err(what)(e));
        }
        w.hasher.update(hdr);
        w.hasher.update(payload);
        let added = (RECORD_HEADER_LEN + stored_len) as u64;
        w.len += added;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for &(id, inner, raw_len) in chunks {
            w.entries.push(IndexEntry { id, offset, stored_len: stored_len as u32, raw_len, flags, inner, record_raw });
            p.insert(id);
        }
        drop(p);
        self.written.fetch_add(added, Ordering::Relaxed);
        if w.len >= PACK_TARGET
            && let Some(w) = guard.take()
        {
            drop(guard);
            // fsync takes long: seal in the background so workers keep going.
            let (root, index, pending) = (self.root.clone(), self.index.clone(), self.pending.clone());
            let h = std::thread::spawn(move || seal_pack(&root, &index, &pending, w));
            self.sealing.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        }
        Ok(added)
    }

    fn new_pack_writer(&self) -> Result<PackWriter> {
        self.upgrade_format()?;
        let tmp_path = self.tmp_dir().join(format!("pack-{}-{}", std::process::id(), rand::random::<u64>()));
        let f = File::create(&tmp_path).map_err(io_err(format!("creating {}", tmp_path.display())))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let hdr = pack::pack_header();
        out.write_all(&hdr).map_err(io_err("writing pack header"))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hdr);
        Ok(PackWriter { tmp_path, out, hasher, len: hdr.len() as u64, entries: Vec::new() })
    }

    /// Write out the open block, wait for blocks being compressed, and seal the open pack,
    /// so that everything put (or vouched for by `contains`) so far is durable.
    pub fn flush(&self) -> Result<()> {
        let (open, upto) = {
            let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            let open = if b.open.chunks.is_empty() { None } else { Some(b.take_open(0)) };
            (open, b.next_seq)
        };
        let mut res = match open {
            Some((seq, block)) => self.write_block(seq, block),
            None => Ok(()),
        };
        {
            // Blocks other threads took before this flush must reach the pack first.
            let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            while b.in_flight.range(..upto).next().is_some() {
                b = self.block_done.wait(b).unwrap_or_else(|e| e.into_inner());
            }
        }
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let r = match w {
            Some(w) if !w.entries.is_empty() => seal_pack(&self.root, &self.index, &self.pending, w),
            Some(w) => {
                let _ = fs::remove_file(&w.tmp_path);
                Ok(())
            }
            None => Ok(()),
        };
        if res.is_ok() {
            res = r;
        }
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
        if res.is_ok()
            && let Some(why) = self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
        {
            res = Err(StoreError::Io {
                what: "storing chunks".into(),
                source: std::io::Error::other(format!("an earlier write failed: {why}")),
            });
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
        let corrupt = |why: &str| StoreError::ChunkCorrupt { id: *id, why: why.into() };
        let data = match loc.flags {
            FLAG_BLOCK => {
                let block = self
                    .cache
                    .get((loc.pack, loc.offset), || self.decode_block(id, loc))
                    .map_err(|why| corrupt(&why.0))?;
                let first = block.chunks.partition_point(|c| c.inner < loc.inner);
                let c = block.chunks[first..]
                    .iter()
                    .take_while(|c| c.inner == loc.inner)
                    .find(|c| c.id == *id && c.len == loc.raw_len)
                    .ok_or_else(|| corrupt("block table does not match its index entry"))?;
                let (start, end) = (c.inner as usize, c.inner as usize + c.len as usize);
                block.data.get(start..end).ok_or_else(|| corrupt("chunk lies outside its block"))?.to_vec()
            }
            _ => {
                let rec = self.read_record(id, loc)?;
                self.decode_payload(id, rec.flags, rec.raw_len, rec.payload)?
            }
        };
        if data.len() != loc.raw_len as usize {
            return Err(corrupt("wrong length after decompression"));
        }
        if blake3::hash(&data).as_bytes() != id {
            return Err(corrupt("content does not match its hash"));
        }
        Ok(data)
    }

    fn decode_block(&self, id: &ChunkId, loc: Loc) -> std::result::Result<DecodedBlock, BlockFault> {
        let rec = self.read_record(id, loc).map_err(|e| match e {
            StoreError::ChunkCorrupt { why, .. } => BlockFault(why),
            other => BlockFault(other.to_string()),
        })?;
        let (chunks, data) =
            pack::decode_block(&rec.payload, &rec.id, rec.raw_len).map_err(|e| BlockFault(format!("block: {e}")))?;
        Ok(DecodedBlock { chunks, data })
    }

    /// The stored record that holds a chunk (for a block: the whole block), its header
    /// checked against the index entry.
    pub fn read_record(&self, id: &ChunkId, loc: Loc) -> Result<Record> {
        let f = self.pack_file(loc.pack)?;
        let mut buf = vec![0u8; RECORD_HEADER_LEN + loc.stored_len as usize];
        f.read_exact_at(&mut buf, loc.offset as u64)
            .map_err(|e| StoreError::ChunkCorrupt { id: *id, why: format!("reading pack: {e}") })?;
        let (rid, flags, raw, stored) =
            pack::parse_record_header(&buf).map_err(|e| StoreError::ChunkCorrupt { id: *id, why: e.to_string() })?;
        // A block's id is its table's hash, checked when the table is parsed.
        let id_ok = flags == FLAG_BLOCK || rid == *id;
        if !id_ok || flags != loc.flags || raw != loc.record_raw || stored != loc.stored_len {
            return Err(StoreError::ChunkCorrupt { id: *id, why: "pack record does not match its index entry".into() });
        }
        buf.drain(..RECORD_HEADER_LEN);
        Ok(Record { id: rid, flags, raw_len: raw, payload: buf })
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
fn seal_pack(root: &Path, index: &RwLock<Index>, pending: &Mutex<HashSet<ChunkId>>, w: PackWriter) -> Result<()> {
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
    let forget = |entries: &[IndexEntry]| {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            p.remove(&e.id);
        }
    };
    let pid = match res {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            // Lost: later puts must store these chunks again (the error reaches `flush`).
            forget(&entries);
            return Err(e);
        }
    };
    index.write().unwrap_or_else(|e| e.into_inner()).add_pack(pid, &entries);
    // Indexed first, then no longer pending: `contains` sees the chunks all along.
    forget(&entries);
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

/// Read a pack's records from the start, checking every chunk's hash; stops at the first
/// damaged or truncated record. Used to rebuild an index and by gc.
pub fn scan_pack(path: &Path) -> Result<Vec<IndexEntry>> {
    let data = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut out = Vec::new();
    if pack::check_pack_header(&data).is_err() {
        return Ok(out);
    }
    let mut off = pack::PACK_HEADER_LEN;
    while off + RECORD_HEADER_LEN <= data.len() && off <= u32::MAX as usize {
        let Ok((id, flags, raw, stored)) = pack::parse_record_header(&data[off..]) else {
            break;
        };
        let start = off + RECORD_HEADER_LEN;
        let Some(end) = start.checked_add(stored as usize).filter(|&e| e <= data.len()) else {
            break;
        };
        let payload = &data[start..end];
        let offset = off as u32;
        let single = || vec![IndexEntry::single(id, offset, stored, raw, flags)];
        let entries = match flags {
            FLAG_RAW => (blake3::hash(payload).as_bytes() == &id).then(single),
            FLAG_ZSTD => zstd::bulk::decompress(payload, raw as usize)
                .is_ok_and(|d| blake3::hash(&d).as_bytes() == &id)
                .then(single),
            // A delta needs its base to check; `images verify` does that after re-indexing.
            FLAG_DELTA => (payload.len() >= 32).then(single),
            _ => pack::decode_block(payload, &id, raw).ok().and_then(|(chunks, d)| {
                chunks
                    .iter()
                    .map(|c| {
                        let bytes = &d[c.inner as usize..(c.inner + c.len) as usize];
                        (blake3::hash(bytes).as_bytes() == &c.id).then_some(IndexEntry {
                            id: c.id,
                            offset,
                            stored_len: stored,
                            raw_len: c.len,
                            flags,
                            inner: c.inner,
                            record_raw: raw,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
            }),
        };
        let Some(entries) = entries else { break };
        out.extend(entries);
        off = end;
    }
    Ok(out)
}

/// Deterministic incompressible bytes (xorshift) for the store's tests, which need no
/// extra crate for it.
#[cfg(test)]
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_opened_for_write_holds_the_lock_shared() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), LockMode::Shared).unwrap());
        let try_lock = |op| {
            let f = OpenOptions::new().write(true).open(dir.path().join("store/lock")).unwrap();
            rustix::fs::flock(&f, op).is_ok()
        };
        // Alone in the store, it recovered exclusively and kept the lock, now shared:
        // other writers get in, gc does not.
        let s = Store::open_for_write(dir.path()).unwrap();
        assert!(try_lock(rustix::fs::FlockOperation::NonBlockingLockShared));
        assert!(!try_lock(rustix::fs::FlockOperation::NonBlockingLockExclusive));
        let (id, _) = s.put(b"still writable").unwrap();
        s.flush().unwrap();
        assert_eq!(s.read(&id).unwrap(), b"still writable");
        drop(s);
        assert!(try_lock(rustix::fs::FlockOperation::NonBlockingLockExclusive));
    }

    /// A store whose blocks are tiny, so that tests cross block and pack boundaries.
    fn store(dir: &Path, chunk_max: usize, target: usize) -> Store {
        store_in(dir, LockMode::Shared, chunk_max, target)
    }

    fn store_in(dir: &Path, mode: LockMode, chunk_max: usize, target: usize) -> Store {
        let mut s = Store::open(dir, mode).unwrap();
        s.block_params = BlockParams { chunk_max, target };
        s
    }

    /// `data` with a few bytes changed in the middle: the next version of a file.
    fn edited(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        let mid = v.len() / 2;
        v[mid..mid + 8].copy_from_slice(b"EDITED!!");
        v
    }

    /// Write a manifest of one-chunk files named by their chunks' positions in `files`.
    fn image(s: &Store, files: &[&[u8]]) -> ChunkId {
        let meta = |path: &str, kind| manifest::Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            mtime_nsec: 0,
            xattrs: vec![],
        };
        let mut entries = vec![meta("", manifest::Kind::Dir)];
        for (i, data) in files.iter().enumerate() {
            let chunk = manifest::ChunkRef { id: *blake3::hash(data).as_bytes(), len: data.len() as u32 };
            let extents = vec![manifest::Extent { offset: 0, chunks: vec![chunk] }];
            entries.push(meta(&format!("f{i:03}"), manifest::Kind::File { size: data.len() as u64, extents }));
        }
        s.write_manifest(&Manifest { chunker: s.params(), entries }).unwrap()
    }

    /// A base in a block, 30 other block members, and the next version of the base put
    /// as a delta against it: (base, fillers, edited).
    fn delta_on_block_member(s: &Store) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
        let base = noise(1, 900);
        let fillers: Vec<_> = (0..30).map(|i| noise(100 + i, 300)).collect();
        s.put(&base).unwrap();
        for f in &fillers {
            s.put(f).unwrap();
        }
        s.flush().unwrap();
        let next = edited(&base);
        let (id, st) = s.put_near(&next, Some(blake3::hash(&base).as_bytes())).unwrap();
        assert!(st.new);
        s.flush().unwrap();
        assert_eq!(s.locate(blake3::hash(&base).as_bytes()).unwrap().flags, FLAG_BLOCK);
        assert_eq!(s.locate(&id).unwrap().flags, FLAG_DELTA, "a delta is a record of its own, never a block member");
        (base, fillers, next)
    }

    fn chunk(i: u32, len: usize) -> Vec<u8> {
        let mut v = format!("chunk {i} ").into_bytes().repeat(len / 8 + 1);
        v.truncate(len);
        v
    }

    fn packs(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir.join("store/packs")).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[test]
    fn small_chunks_share_blocks_and_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 4000);
        let mut ids = Vec::new();
        for i in 0..50 {
            // Mostly small (blocked), every fifth large (a record of its own).
            let data = chunk(i, if i % 5 == 0 { 3000 } else { 100 + i as usize * 7 });
            let (id, st) = s.put(&data).unwrap();
            assert!(st.new);
            assert!(s.contains(&id), "a staged chunk must count as stored");
            ids.push((id, data));
        }
        let (_, again) = s.put(&ids[3].1).unwrap();
        assert!(!again.new, "a staged chunk was stored twice");
        s.flush().unwrap();
        let written = s.written_bytes();
        assert_eq!(written, fs::metadata(&packs(dir.path())[0]).unwrap().len() - pack::PACK_HEADER_LEN as u64);
        drop(s);
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        let mut blocks = HashSet::new();
        for (id, data) in &ids {
            assert_eq!(&s.read(id).unwrap(), data);
            let loc = s.locate(id).unwrap();
            if data.len() < 1000 {
                assert_eq!(loc.flags, FLAG_BLOCK);
                blocks.insert(loc.offset);
            } else {
                assert_ne!(loc.flags, FLAG_BLOCK);
            }
        }
        assert!(blocks.len() >= 3 && blocks.len() < 40, "{} blocks", blocks.len());
        // The index written at seal time equals the one rebuilt from the pack alone.
        let pp = &packs(dir.path())[0];
        let idx = dir.path().join("store/index").join(pp.file_name().unwrap()).with_extension("idx");
        assert_eq!(pack::decode_index(&fs::read(idx).unwrap()).unwrap(), scan_pack(pp).unwrap());
        // Stored shares add up to the pack's records.
        let share: u64 = ids.iter().map(|(id, _)| s.locate(id).unwrap().stored_share()).sum();
        assert!(share <= written && share + 50 >= written, "{share} vs {written}");
    }

    #[test]
    fn flush_writes_a_partial_block_and_an_empty_flush_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 1 << 20);
        s.flush().unwrap();
        assert!(packs(dir.path()).is_empty());
        let (id, _) = s.put(b"lonely").unwrap();
        assert_eq!(s.written_bytes(), 0, "nothing is written before the block fills or a flush");
        s.flush().unwrap();
        assert!(s.written_bytes() > 0);
        drop(s);
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        assert_eq!(s.read(&id).unwrap(), b"lonely");
    }

    #[test]
    fn concurrent_puts_lose_nothing_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 2000, 8000);
        // Four threads put overlapping sets of chunks at once.
        std::thread::scope(|sc| {
            for t in 0..4u32 {
                let s = &s;
                sc.spawn(move || {
                    for i in 0..400u32 {
                        let n = (i * 7 + t * 100) % 600;
                        let (id, _) = s.put(&chunk(n, 50 + (n as usize * 13) % 3000)).unwrap();
                        assert!(s.contains(&id));
                    }
                });
            }
        });
        s.flush().unwrap();
        drop(s);
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        let mut expected = 0;
        for n in 0..600u32 {
            let data = chunk(n, 50 + (n as usize * 13) % 3000);
            let id = *blake3::hash(&data).as_bytes();
            if (0..4u32).any(|t| (0..400u32).any(|i| (i * 7 + t * 100) % 600 == n)) {
                assert_eq!(s.read(&id).unwrap(), data);
                expected += 1;
            }
        }
        let entries: usize = packs(dir.path()).iter().map(|p| scan_pack(p).unwrap().len()).sum();
        assert_eq!(s.chunk_count(), expected);
        // Dedup holds across threads, but a chunk caught mid-move may be stored twice.
        assert!(entries < expected + expected / 20, "{entries} records for {expected} chunks");
    }

    #[test]
    fn a_corrupt_block_damages_exactly_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 2000);
        let ids: Vec<_> = (0..30).map(|i| (s.put(&chunk(i, 300)).unwrap().0, chunk(i, 300))).collect();
        s.flush().unwrap();
        let victim = s.locate(&ids[10].0).unwrap();
        drop(s);
        let pp = packs(dir.path()).remove(0);
        let mut bytes = fs::read(&pp).unwrap();
        let at = victim.offset as usize + RECORD_HEADER_LEN + victim.stored_len as usize - 3;
        bytes[at] ^= 0x55;
        fs::write(&pp, &bytes).unwrap();
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        for (id, data) in &ids {
            let loc = s.locate(id).unwrap();
            match s.read(id) {
                Ok(d) => {
                    assert_ne!(loc.offset, victim.offset, "a chunk of the damaged block read fine");
                    assert_eq!(&d, data);
                }
                Err(StoreError::ChunkCorrupt { .. }) => assert_eq!(loc.offset, victim.offset),
                Err(e) => panic!("{e}"),
            }
        }
        // A rebuilt index keeps the records before the damaged one.
        let rebuilt = scan_pack(&pp).unwrap();
        assert!(!rebuilt.is_empty() && rebuilt.iter().all(|e| e.offset < victim.offset));
    }

    #[test]
    fn block_cache_serves_neighbours_from_one_decompression() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 100_000);
        let ids: Vec<_> = (0..20).map(|i| s.put(&chunk(i, 500)).unwrap().0).collect();
        s.flush().unwrap();
        let loc = s.locate(&ids[0]).unwrap();
        let mut loads = 0;
        for id in &ids {
            assert!(s.read(id).is_ok());
        }
        let _ = s.cache.get((loc.pack, loc.offset), || {
            loads += 1;
            Err(BlockFault("not expected".into()))
        });
        assert_eq!(loads, 0, "the block was not cached");
    }

    #[test]
    fn a_delta_whose_base_sits_in_a_block_reads_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 4000);
        let (base, _, next) = delta_on_block_member(&s);
        let (bid, nid) = (*blake3::hash(&base).as_bytes(), *blake3::hash(&next).as_bytes());
        assert_eq!(s.delta_base(&nid).unwrap(), Some(bid));
        assert!(s.locate(&nid).unwrap().stored_len < 200, "the delta is not small");
        // Where the base does not help, a small chunk joins a block like any other.
        let (other, _) = s.put_near(&noise(9, 600), Some(&bid)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.locate(&other).unwrap().flags, FLAG_BLOCK);
        // A delta is never a base: a chunk near it is stored on its own merits.
        let (third, _) = s.put_near(&edited(&next[1..]), Some(&nid)).unwrap();
        s.flush().unwrap();
        assert_ne!(s.locate(&third).unwrap().flags, FLAG_DELTA);
        drop(s);
        // A fresh value has an empty block cache: the delta's read decodes the base's block.
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        assert_eq!(s.read(&nid).unwrap(), next);
        assert_eq!(s.read(&bid).unwrap(), base);
        let pp = &packs(dir.path())[0];
        let idx = dir.path().join("store/index").join(pp.file_name().unwrap()).with_extension("idx");
        assert_eq!(pack::decode_index(&fs::read(idx).unwrap()).unwrap(), scan_pack(pp).unwrap());
    }

    #[test]
    fn gc_keeps_the_block_member_a_live_delta_stands_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), LockMode::Exclusive, 1000, 4000);
        let (base, fillers, next) = delta_on_block_member(&s);
        let mut v1: Vec<&[u8]> = vec![&base];
        v1.extend(fillers.iter().map(|f| f.as_slice()));
        let _old = image(&s, &v1);
        let new = image(&s, &[&next]);
        // v1 goes: its fillers are garbage inside the blocks, the base is not.
        let rep = gc::gc(&s, &[new]).unwrap();
        assert_eq!(rep.removed_manifests, 1);
        assert!(rep.rewritten_packs + rep.removed_packs >= 1, "{rep:?}");
        assert_eq!(rep.live_chunks, 2, "the delta and its base");
        drop(s);
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        let nid = *blake3::hash(&next).as_bytes();
        assert_eq!(s.read(&nid).unwrap(), next);
        assert_eq!(s.read(blake3::hash(&base).as_bytes()).unwrap(), base);
        assert!(fillers.iter().all(|f| s.locate(blake3::hash(f).as_bytes()).is_none()), "dead chunks survived");
        assert_eq!(s.locate(&nid).unwrap().flags, FLAG_DELTA);
        let rep = verify::verify(&s, &[("img@2".into(), new)]);
        assert!(rep.faults.is_empty(), "{:?}", rep.faults);
    }

    #[test]
    fn a_damaged_block_fails_the_deltas_on_its_members_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000, 100_000);
        let (base, fillers, next) = delta_on_block_member(&s);
        let mut v1: Vec<&[u8]> = vec![&base];
        v1.extend(fillers.iter().map(|f| f.as_slice()));
        let old = image(&s, &v1);
        let new = image(&s, &[&next]);
        let victim = s.locate(blake3::hash(&base).as_bytes()).unwrap();
        drop(s);
        let pp = packs(dir.path()).remove(0);
        let mut bytes = fs::read(&pp).unwrap();
        // A table entry: the block no longer hashes to its id.
        bytes[victim.offset as usize + RECORD_HEADER_LEN + 10] ^= 0x20;
        fs::write(&pp, &bytes).unwrap();
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        let rep = verify::verify(&s, &[("img@1".into(), old), ("img@2".into(), new)]);
        let named = |label: &str| {
            let mut v: Vec<String> = rep
                .faults
                .iter()
                .filter(|f| f.starts_with(&format!("image {label}:")))
                .filter_map(|f| f.rsplit("affects ").next().map(str::to_string))
                .collect();
            v.sort();
            v
        };
        // Every file of the block, and the next version's file through its delta's base.
        let all: Vec<String> = (0..31).map(|i| format!("/f{i:03}")).collect();
        assert_eq!(named("img@1"), all, "{:?}", rep.faults);
        assert_eq!(named("img@2"), vec!["/f000".to_string()], "{:?}", rep.faults);
        assert!(
            rep.faults.iter().any(|f| f.starts_with("image img@2:") && f.contains("delta base")),
            "{:?}",
            rep.faults
        );
    }

    #[test]
    fn version_1_stores_read_as_they_are_and_upgrade_on_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        let (a, _) = s.put_near(&noise(1, 300_000), None).unwrap();
        s.flush().unwrap();
        drop(s);
        // Turn it into a store as the build before blocks left it: format 1, v1 index.
        let cfg = dir.path().join("store/config");
        let text = fs::read_to_string(&cfg).unwrap().replace(&format!("\"format\": {STORE_FORMAT}"), "\"format\": 1");
        fs::write(&cfg, &text).unwrap();
        let pp = packs(dir.path()).remove(0);
        let ip = dir.path().join("store/index").join(pp.file_name().unwrap()).with_extension("idx");
        let es = pack::decode_index(&fs::read(&ip).unwrap()).unwrap();
        let mut v1 = pack::INDEX_MAGIC.to_vec();
        v1.extend_from_slice(&pack::INDEX_VERSION_V1.to_le_bytes());
        v1.extend_from_slice(&(es.len() as u32).to_le_bytes());
        for e in &es {
            v1.extend_from_slice(&e.id);
            for x in [e.offset, e.stored_len, e.raw_len] {
                v1.extend_from_slice(&x.to_le_bytes());
            }
            v1.push(e.flags);
        }
        let sum = *blake3::hash(&v1).as_bytes();
        v1.extend_from_slice(&sum);
        fs::write(&ip, &v1).unwrap();
        // Reading leaves it alone.
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        assert!(s.problems().is_empty());
        assert_eq!(s.read(&a).unwrap(), noise(1, 300_000));
        s.flush().unwrap();
        assert!(fs::read_to_string(&cfg).unwrap().contains("\"format\": 1"));
        // The first write marks it, before any pack lands.
        s.put(b"small").unwrap();
        s.flush().unwrap();
        assert!(fs::read_to_string(&cfg).unwrap().contains(&format!("\"format\": {STORE_FORMAT}")));
        drop(s);
        let s = Store::open(dir.path(), LockMode::Exclusive).unwrap();
        assert_eq!(s.read(&a).unwrap(), noise(1, 300_000));
        assert_eq!(s.read(blake3::hash(b"small").as_bytes()).unwrap(), b"small");
        // A format from the future is refused.
        drop(s);
        fs::write(&cfg, text.replace("\"format\": 1", "\"format\": 3")).unwrap();
        assert!(matches!(Store::open(dir.path(), LockMode::Shared), Err(StoreError::Config { .. })));
    }

    #[test]
    fn gc_keeps_the_base_of_a_duplicate_delta_record_too() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_in(dir.path(), LockMode::Exclusive, 1000, 4000);
        let base = noise(1, 900);
        let bid = *blake3::hash(&base).as_bytes();
        s.put(&base).unwrap();
        let next = edited(&base);
        let nid = *blake3::hash(&next).as_bytes();
        // `next` stored twice, as two racing threads may: a block member, then a delta.
        s.put(&next).unwrap();
        s.flush().unwrap();
        let in_block = s.locate(&nid).unwrap();
        assert_eq!(in_block.flags, FLAG_BLOCK);
        s.index.write().unwrap().map.remove(&nid);
        s.put_near(&next, Some(&bid)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.locate(&nid).unwrap().flags, FLAG_DELTA);
        // Indexed now is the block copy; the delta copy is what another open may index.
        s.index.write().unwrap().map.insert(nid, in_block);
        let live = image(&s, &[&next]);
        gc::gc(&s, &[live]).unwrap();
        drop(s);
        let s = Store::open(dir.path(), LockMode::Shared).unwrap();
        assert_eq!(s.read(&bid).unwrap(), base, "the delta copy's base was collected");
        let mut deltas = 0;
        for pp in packs(dir.path()) {
            let n = s
                .index
                .read()
                .unwrap()
                .packs
                .iter()
                .position(|p| hex_id(p) == pp.file_stem().unwrap().to_str().unwrap());
            for e in scan_pack(&pp).unwrap().iter().filter(|e| e.flags == FLAG_DELTA) {
                let rec = s.read_record(&e.id, Loc::new(n.unwrap() as u32, e)).unwrap();
                assert_eq!(s.decode_payload(&e.id, rec.flags, rec.raw_len, rec.payload).unwrap(), next);
                deltas += 1;
            }
        }
        assert_eq!(deltas, 1);
    }
}
