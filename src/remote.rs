//! The client side of the API: inventory calls for the CLI, and a chunk source that
//! pulls an image over HTTP for `deploy --server`, with parallel pipelined requests,
//! bounded memory, every chunk verified, and resumption after dropped connections.

use crate::deploy::ChunkSource;
use crate::store::manifest::Manifest;
use crate::store::{ChunkId, StoreError, hex_id, pack};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Remote errors.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Transport failure.
    #[error("cannot reach server: {0}")]
    Http(#[from] reqwest::Error),
    /// The server sent something malformed.
    #[error("bad response from server: {0}")]
    Protocol(String),
}

impl RemoteError {
    /// What kind of failure this is (from the server's status, or the transport).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            RemoteError::Api { status, .. } => match status {
                400 | 413 | 415 | 422 => K::Invalid,
                401 | 403 => K::Refused,
                404 => K::NotFound,
                409 => K::Conflict,
                _ => K::Internal,
            },
            RemoteError::Http(e) if e.is_connect() || e.is_timeout() => K::Unreachable,
            RemoteError::Http(_) => K::Io,
            RemoteError::Protocol(_) => K::Internal,
        }
    }
}

/// An API client.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://10.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, RemoteError> {
        let http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).pool_max_idle_per_host(16).build()?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http })
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, RemoteError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        Err(RemoteError::Api {
            status,
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
            message: v["error"]["message"].as_str().map(String::from).unwrap_or(text),
        })
    }

    /// Send a request with an optional JSON body and decode a JSON answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        m: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RemoteError> {
        let mut r = self.req(m, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = Self::check(r.send().await?).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(|e| RemoteError::Protocol(e.to_string()));
        }
        resp.json().await.map_err(|e| RemoteError::Protocol(e.to_string()))
    }

    /// GET and decode JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RemoteError> {
        self.call::<(), T>(reqwest::Method::GET, path, None).await
    }

    /// POST raw bytes and return the raw answer (deltas for `update`).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<bytes::Bytes, RemoteError> {
        let r = self.req(reqwest::Method::POST, path).header("content-type", "application/octet-stream").body(body);
        Ok(Self::check(r.send().await?).await?.bytes().await?)
    }

    /// GET the raw answer (single chunks for `update`).
    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes, RemoteError> {
        Ok(Self::check(self.req(reqwest::Method::GET, path).send().await?).await?.bytes().await?)
    }

    /// The stored-block layout of `ids` in `image` (see the server's layout endpoint): one
    /// group number per id, equal for chunks stored in the same block.
    pub async fn block_layout(&self, image: &str, ids: &[ChunkId]) -> Result<Vec<u32>, RemoteError> {
        let want = Some(ids.iter().map(hex_id).collect());
        let resp = self
            .req(reqwest::Method::POST, &format!("/api/v1/images/{}/blocks", encode(image)))
            .json(&crate::wire::StreamRequest { have: vec![], want })
            .send()
            .await?;
        let body = Self::check(resp).await?.bytes().await?;
        parse_layout(&body, ids.len())
    }

    /// Fetch and check an image's manifest; returns it and its id.
    pub async fn manifest(&self, image: &str) -> Result<(Manifest, ChunkId, String), RemoteError> {
        let resp = Self::check(
            self.req(reqwest::Method::GET, &format!("/api/v1/images/{}/manifest", encode(image)))
                .header(reqwest::header::ACCEPT_ENCODING, "zstd")
                .send()
                .await?,
        )
        .await?;
        let label = resp.headers().get("x-understudy-image").and_then(|v| v.to_str().ok()).unwrap_or(image).to_string();
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(|s| s.trim_matches('"').to_string());
        let zstd = resp.headers().get(reqwest::header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() == b"zstd");
        let body = resp.bytes().await?;
        let body = if zstd { unzstd_bounded(&body)? } else { body.to_vec() };
        let id = *blake3::hash(&body).as_bytes();
        if let Some(e) = etag
            && e != hex_id(&id)
        {
            return Err(RemoteError::Protocol(format!("manifest does not hash to its id {e}")));
        }
        let m = Manifest::decode(&body).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        Ok((m, id, label))
    }
}

/// Largest manifest accepted once decompressed (about ten million entries).
const MANIFEST_MAX: u64 = 1 << 30;

/// A zstd-compressed manifest, decompressed up to [`MANIFEST_MAX`].
fn unzstd_bounded(z: &[u8]) -> Result<Vec<u8>, RemoteError> {
    use std::io::Read;
    let bad = |e: std::io::Error| RemoteError::Protocol(format!("compressed manifest: {e}"));
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(z).map_err(bad)?.take(MANIFEST_MAX + 1).read_to_end(&mut out).map_err(bad)?;
    if out.len() as u64 > MANIFEST_MAX {
        return Err(RemoteError::Protocol(format!("manifest larger than {MANIFEST_MAX} bytes")));
    }
    Ok(out)
}

/// A layout answer: `n` u32 LE values.
fn parse_layout(body: &[u8], n: usize) -> Result<Vec<u32>, RemoteError> {
    if body.len() != n * 4 {
        return Err(RemoteError::Protocol(format!("layout of {} bytes for {n} chunks", body.len())));
    }
    Ok(body.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Percent-encode a path segment (image names are plain, but ids and `@` pass through).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Buffers of decompressed blocks, given back once a block's chunks are all written and
/// reused for the next blocks: decompressing into memory already mapped saves a page
/// fault and a page clearing per 4 KiB (a fresh 2 MiB buffer per block cost the writers
/// about 8% of their CPU time). At most [`POOL_BUFFERS`] are kept.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

/// Buffers kept for reuse (of about 2 MiB each, the stored block size).
const POOL_BUFFERS: usize = 8;

impl Buffers {
    /// An empty buffer with room for `cap` bytes.
    fn take(&self, cap: usize) -> Vec<u8> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        b.clear();
        b.reserve(cap);
        b
    }

    /// Keep `b` for reuse, unless enough are kept.
    fn give(&self, b: Vec<u8>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(b);
        }
    }
}

thread_local! {
    /// This writer thread's zstd context (making one per chunk costs more than decompressing
    /// a small one) and its buffer for chunks that arrive compressed on their own.
    static UNZSTD: std::cell::RefCell<(Option<zstd::bulk::Decompressor<'static>>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Decompress one zstd frame of `raw_len` bytes into `out` (emptied first). zstd writes
/// no further than the buffer's capacity, so a frame that claims more cannot make it grow.
fn unzstd_into(
    dctx: &mut Option<zstd::bulk::Decompressor<'static>>,
    frame: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let d = match dctx {
        Some(d) => d,
        None => dctx.insert(zstd::bulk::Decompressor::new()?),
    };
    out.clear();
    out.reserve(raw_len);
    let n = d.decompress_to_buffer(frame, out)?;
    if n != raw_len {
        return Err(std::io::Error::other(format!("{n} bytes where {raw_len} were expected")));
    }
    Ok(())
}

/// A received block, kept compressed until a writer first needs one of its chunks: the
/// writers decompress blocks in parallel, not the task receiving the streams.
struct BlockSlot {
    id: ChunkId,
    raw_len: u32,
    payload: bytes::Bytes,
    decoded: std::sync::OnceLock<Result<Vec<u8>, String>>,
    /// Chunks of the block still held in the window (changed under the window lock).
    held: std::sync::atomic::AtomicU32,
    buffers: Arc<Buffers>,
}

impl BlockSlot {
    /// Bytes the block holds in memory once decompressed (counted in the window).
    fn footprint(&self) -> usize {
        self.payload.len() + self.raw_len as usize + pack::RECORD_HEADER_LEN
    }

    /// The block's decompressed bytes (decompressed once, by the first reader).
    fn data(&self) -> Result<&[u8], String> {
        let d = self.decoded.get_or_init(|| {
            let (_, table_len) =
                pack::parse_block_table(&self.payload, &self.id, self.raw_len).map_err(|e| e.to_string())?;
            let mut out = self.buffers.take(self.raw_len as usize);
            UNZSTD
                .with(|u| {
                    unzstd_into(&mut u.borrow_mut().0, &self.payload[table_len..], self.raw_len as usize, &mut out)
                })
                .map_err(|e| format!("zstd: {e}"))?;
            Ok(out)
        });
        d.as_deref().map_err(|e| e.clone())
    }
}

impl Drop for BlockSlot {
    fn drop(&mut self) {
        if let Some(Ok(buf)) = self.decoded.take() {
            self.buffers.give(buf);
        }
    }
}

/// Where a held chunk's bytes are.
#[derive(Clone)]
enum Held {
    /// A record of its own: raw or one zstd frame.
    Single { flags: u8, raw_len: u32, payload: bytes::Bytes },
    /// `len` bytes at `inner` in a received block.
    InBlock { block: Arc<BlockSlot>, inner: u32, len: u32 },
}

struct Slot {
    held: Held,
    refs: u32,
}

#[derive(Default)]
struct Window {
    slots: HashMap<ChunkId, Slot>,
    /// Every chunk ever put in `slots`: a chunk that arrives twice (a block can carry
    /// chunks another batch also asked for) is kept once, or its refs would never drain.
    delivered: HashSet<ChunkId>,
    /// Chunks writers are blocked on, with how many writers wait for each.
    waiting: HashMap<ChunkId, u32>,
    bytes: usize,
    failed: Option<String>,
    done: bool,
    /// The reader is gone (an update stopped early): fetch nothing more.
    abandoned: bool,
}

impl Window {
    /// Hold a received single-chunk record for the writers, unless it was received before.
    fn deliver(&mut self, id: ChunkId, held: Held, refs: u32) {
        if self.delivered.insert(id) {
            match &held {
                Held::Single { payload, .. } => self.bytes += payload.len() + pack::RECORD_HEADER_LEN,
                Held::InBlock { block, .. } => {
                    if block.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        self.bytes += block.footprint();
                    }
                }
            }
            self.slots.insert(id, Slot { held, refs });
        }
    }

    /// Forget a chunk whose last reference was read.
    fn release(&mut self, id: &ChunkId) {
        let Some(slot) = self.slots.remove(id) else { return };
        match slot.held {
            Held::Single { payload, .. } => {
                self.bytes = self.bytes.saturating_sub(payload.len() + pack::RECORD_HEADER_LEN)
            }
            Held::InBlock { block, .. } => {
                if block.held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
                    self.bytes = self.bytes.saturating_sub(block.footprint());
                }
            }
        }
    }
}

struct Shared {
    w: Mutex<Window>,
    cv: Condvar,
    room: tokio::sync::Notify,
    buffers: Arc<Buffers>,
}

/// Tuning of a remote pull.
#[derive(Debug, Clone, Copy)]
pub struct PullOptions {
    /// Requests in flight at once.
    pub parallel: usize,
    /// Raw bytes asked for per request.
    pub batch_bytes: u64,
    /// Bytes held in memory, waiting for the writers: records as received, and received
    /// blocks at their compressed plus decompressed size.
    pub window_bytes: usize,
    /// Retries of one request after a dropped connection.
    pub retries: u32,
}

impl Default for PullOptions {
    fn default() -> Self {
        // Each request costs the server a pass over the manifest: 32 MiB batches make ~30
        // of them for a 1 GB root. A server that sends blocks as stored outruns the writers,
        // so the window is full most of the time: 128 MiB (plus the requests in flight) kept
        // the client at ~300 MB resident against ~430 MB with 256 MiB; on a 1 GB root the
        // deploy times of the two differed less than the bench machine's noise.
        PullOptions { parallel: 4, batch_bytes: 32 << 20, window_bytes: 128 << 20, retries: 8 }
    }
}

/// Chunks pulled over HTTP ahead of the deploy writers, in manifest order.
pub struct RemoteSource {
    shared: Arc<Shared>,
}

impl RemoteSource {
    /// Start pulling every chunk `m` needs from `image` on the server.
    pub fn start(
        client: Client,
        image: String,
        m: &Manifest,
        opts: PullOptions,
        rt: &tokio::runtime::Handle,
    ) -> RemoteSource {
        let mut order: Vec<(ChunkId, u32)> = Vec::new();
        let mut refs: HashMap<ChunkId, u32> = HashMap::new();
        for (_, c) in m.chunk_refs() {
            let n = refs.entry(c.id).or_insert(0);
            if *n == 0 {
                order.push((c.id, c.len));
            }
            *n += 1;
        }
        let shared = Arc::new(Shared {
            w: Mutex::new(Window::default()),
            cv: Condvar::new(),
            room: tokio::sync::Notify::new(),
            buffers: Arc::default(),
        });
        let sh = shared.clone();
        rt.spawn(async move {
            let res = pull(&client, &image, order, refs, &sh, opts).await;
            let mut w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
            match res {
                Ok(()) => w.done = true,
                Err(e) => w.failed = Some(e.to_string()),
            }
            sh.cv.notify_all();
        });
        RemoteSource { shared }
    }
}

/// Split the chunks (in the order the writers need them) into stream requests of about
/// `max` raw bytes, at most 4096 chunks each, keeping the order. With the server's block
/// layout (`groups`, one value per chunk), every chunk of a stored block goes into the
/// request that holds the block's first chunk, so that the server can send the block as
/// stored rather than recompress the part each request wants; a request takes no more
/// that way once it holds twice `max` (the rest of such a block then goes together with
/// the next request).
fn batches(order: &[(ChunkId, u32)], groups: Option<&[u32]>, max: u64) -> Vec<(Vec<ChunkId>, u64)> {
    let mut out: Vec<(Vec<ChunkId>, u64)> = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0u64;
    // Block group -> the request (index into `out`, or `out.len()` for `cur`) that has it.
    let mut home: HashMap<u32, usize> = HashMap::new();
    for (i, &(id, len)) in order.iter().enumerate() {
        let len = u64::from(len);
        let group = groups.and_then(|g| g.get(i)).copied().filter(|g| *g != crate::http::stream::LAYOUT_ALONE);
        if let Some(g) = group {
            let target = *home.entry(g).or_insert(out.len());
            if let Some(earlier) = out.get_mut(target) {
                if earlier.1 + len <= 2 * max {
                    earlier.0.push(id);
                    earlier.1 += len;
                    continue;
                }
                home.insert(g, out.len());
            }
        }
        cur.push(id);
        size += len;
        if size >= max || cur.len() >= 4096 {
            out.push((std::mem::take(&mut cur), size));
            size = 0;
        }
    }
    if !cur.is_empty() {
        out.push((cur, size));
    }
    out
}

/// Chunks per layout request: a request body (hex ids) stays far below the server's
/// body limit however large the image.
const LAYOUT_SEGMENT: usize = 1 << 16;

/// The block layout of `ids`, asked for in segments of [`LAYOUT_SEGMENT`] chunks. Each
/// answer numbers its blocks from 0: the numbers of later segments are moved past those
/// of earlier ones (a block seen in two segments then counts as two, and its two parts go
/// in different requests, which costs only that block's recompression).
async fn layout_in_segments(client: &Client, image: &str, ids: &[ChunkId]) -> Result<Vec<u32>, RemoteError> {
    let mut out = Vec::with_capacity(ids.len());
    let mut base = 0u32;
    for seg in ids.chunks(LAYOUT_SEGMENT) {
        let groups = client.block_layout(image, seg).await?;
        base = shift_groups(&groups, base, &mut out)
            .ok_or_else(|| RemoteError::Protocol("block layout numbers out of range".into()))?;
    }
    Ok(out)
}

/// Append `groups` to `out` with every block number moved up by `base`; returns the
/// first number not used yet, or `None` on an overflow.
fn shift_groups(groups: &[u32], base: u32, out: &mut Vec<u32>) -> Option<u32> {
    const ALONE: u32 = crate::http::stream::LAYOUT_ALONE;
    let mut next = base;
    for &g in groups {
        if g == ALONE {
            out.push(ALONE);
            continue;
        }
        let v = base.checked_add(g).filter(|v| *v != ALONE)?;
        out.push(v);
        next = next.max(v.checked_add(1)?);
    }
    Some(next)
}

/// Why a pull stopped for good.
#[derive(Debug, thiserror::Error)]
enum PullFault {
    /// The server refused the stream (not a passing condition).
    #[error("server refused the chunk stream: {message} ({status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Every retry failed.
    #[error("gave up after {retries} retries; {missing} chunk(s) missing")]
    GaveUp {
        /// Retries made.
        retries: u32,
        /// Chunks never received.
        missing: usize,
    },
}

async fn pull(
    client: &Client,
    image: &str,
    order: Vec<(ChunkId, u32)>,
    refs: HashMap<ChunkId, u32>,
    sh: &Arc<Shared>,
    opts: PullOptions,
) -> Result<(), PullFault> {
    let refs = Arc::new(refs);
    let ids: Vec<ChunkId> = order.iter().map(|(id, _)| *id).collect();
    let groups = match layout_in_segments(client, image, &ids).await {
        Ok(g) => Some(g),
        // A server without the layout endpoint: requests in plain order, as before.
        Err(e) => {
            tracing::debug!("no block layout from the server ({e}); requests split blocks");
            None
        }
    };
    drop(ids);
    let jobs = batches(&order, groups.as_deref(), opts.batch_bytes);
    drop((order, groups));
    let mut batch_of: HashMap<ChunkId, usize> = HashMap::new();
    for (k, (ids, _)) in jobs.iter().enumerate() {
        batch_of.extend(ids.iter().map(|id| (*id, k)));
    }
    let batch_of = Arc::new(batch_of);
    let mut stream = futures_util::stream::iter(jobs.into_iter().enumerate().map(|(k, (ids, raw))| {
        let (client, sh, refs, batch_of) = (client.clone(), sh.clone(), refs.clone(), batch_of.clone());
        let image = image.to_string();
        async move {
            // Wait for room: the writers consume in manifest order, so the window drains.
            // A request whose chunks a writer is blocked on starts anyway: chunks that
            // came early with their blocks can fill the window while being needed only
            // after this request's.
            loop {
                let notified = sh.room.notified();
                {
                    let w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
                    if w.abandoned {
                        return Ok(());
                    }
                    if w.failed.is_some()
                        || w.bytes + raw as usize / 2 <= opts.window_bytes
                        || w.bytes == 0
                        || w.waiting.keys().any(|id| batch_of.get(id) == Some(&k))
                    {
                        break;
                    }
                }
                notified.await;
            }
            fetch_batch(&client, &image, ids, &sh, &refs, opts.retries).await
        }
    }))
    .buffered(opts.parallel.max(1));
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

async fn fetch_batch(
    client: &Client,
    image: &str,
    ids: Vec<ChunkId>,
    sh: &Shared,
    refs: &HashMap<ChunkId, u32>,
    retries: u32,
) -> Result<(), PullFault> {
    let mut remaining: HashSet<ChunkId> = ids.iter().copied().collect();
    let mut attempt = 0u32;
    loop {
        {
            let w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
            remaining.retain(|id| !w.delivered.contains(id));
        }
        if remaining.is_empty() {
            return Ok(());
        }
        let want: Vec<String> = ids.iter().filter(|i| remaining.contains(*i)).map(hex_id).collect();
        match fetch_once(client, image, want, &mut remaining, sh, refs).await {
            Ok(()) if remaining.is_empty() => return Ok(()),
            Ok(()) => tracing::warn!("stream ended early; {} chunk(s) still missing", remaining.len()),
            Err(RemoteError::Api { status, message, .. }) if status != 503 && status != 408 => {
                return Err(PullFault::Refused { status, message });
            }
            Err(e) => tracing::warn!("chunk stream interrupted: {e}"),
        }
        attempt += 1;
        if attempt > retries {
            return Err(PullFault::GaveUp { retries, missing: remaining.len() });
        }
        tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
        tracing::info!("resuming chunk stream ({} chunk(s) left, attempt {attempt})", remaining.len());
    }
}

async fn fetch_once(
    client: &Client,
    image: &str,
    want: Vec<String>,
    remaining: &mut HashSet<ChunkId>,
    sh: &Shared,
    refs: &HashMap<ChunkId, u32>,
) -> Result<(), RemoteError> {
    let resp = client
        .req(reqwest::Method::POST, &format!("/api/v1/images/{}/stream", encode(image)))
        .json(&crate::wire::StreamRequest { have: vec![], want: Some(want) })
        .send()
        .await?;
    let resp = Client::check(resp).await?;
    let mut body = resp.bytes_stream();
    let mut records = Records::default();
    let mut got = Vec::new();
    while let Some(piece) = body.next().await {
        records.feed(&piece?, &mut got)?;
        for (id, flags, raw, rec) in got.drain(..) {
            let payload = rec.slice(pack::RECORD_HEADER_LEN..);
            if flags == pack::FLAG_BLOCK {
                receive_block(&id, raw, payload, remaining, sh, refs)?;
                continue;
            }
            if flags == pack::FLAG_DELTA {
                // Servers send deltas whole: this side may not have the base.
                return Err(RemoteError::Protocol(format!("server sent chunk {} as a delta", hex_id(&id))));
            }
            if !remaining.remove(&id) {
                return Err(RemoteError::Protocol(format!("server sent chunk {} that was not asked for", hex_id(&id))));
            }
            let mut w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
            w.deliver(id, Held::Single { flags, raw_len: raw, payload }, refs.get(&id).copied().unwrap_or(1));
            sh.cv.notify_all();
        }
    }
    if !records.is_empty() {
        return Err(RemoteError::Protocol("stream ended inside a record".into()));
    }
    Ok(())
}

/// A received record: id, encoding, raw length, and the whole record (header included).
type Received = (ChunkId, u8, u32, bytes::Bytes);

/// Cuts a chunk stream into records, each copied into an allocation of its own size: a
/// record held in the window keeps alive no more memory than the window counts for it
/// (slices of one growing receive buffer kept whole buffers alive).
#[derive(Default)]
struct Records {
    cur: bytes::BytesMut,
    /// Length of the record in `cur` once its header is complete, else 0.
    need: usize,
}

impl Records {
    /// Take in `piece` of the stream; complete records are appended to `out`.
    fn feed(&mut self, mut piece: &[u8], out: &mut Vec<Received>) -> Result<(), RemoteError> {
        let bad = |e: pack::FormatError| RemoteError::Protocol(e.to_string());
        while !piece.is_empty() {
            let want = if self.need == 0 { pack::RECORD_HEADER_LEN } else { self.need };
            let take = (want - self.cur.len()).min(piece.len());
            self.cur.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.need == 0 && self.cur.len() == pack::RECORD_HEADER_LEN {
                let (_, _, raw, stored) = pack::parse_record_header(&self.cur).map_err(bad)?;
                if stored > 64 << 20 || raw > 64 << 20 {
                    return Err(RemoteError::Protocol("oversized chunk record".into()));
                }
                self.need = pack::RECORD_HEADER_LEN + stored as usize;
                self.cur.reserve(stored as usize);
            }
            if self.need != 0 && self.cur.len() == self.need {
                let rec = std::mem::take(&mut self.cur).freeze();
                self.need = 0;
                let (id, flags, raw, _) = pack::parse_record_header(&rec).map_err(bad)?;
                out.push((id, flags, raw, rec));
            }
        }
        Ok(())
    }

    /// No record is half received.
    fn is_empty(&self) -> bool {
        self.cur.is_empty()
    }
}

/// Hold the chunks of a received block (each is verified when the writers take it). Only
/// the block's table is read here (its BLAKE3 is the record id): the first writer that
/// needs one of its chunks decompresses it, so blocks are decompressed in parallel by
/// the writers rather than one after another on the task receiving the streams. The block
/// must hold at least one chunk that was asked for; others the image needs are kept too,
/// the rest ignored.
fn receive_block(
    id: &ChunkId,
    raw: u32,
    payload: bytes::Bytes,
    remaining: &mut HashSet<ChunkId>,
    sh: &Shared,
    refs: &HashMap<ChunkId, u32>,
) -> Result<(), RemoteError> {
    let (chunks, _) = pack::parse_block_table(&payload, id, raw)
        .map_err(|e| RemoteError::Protocol(format!("bad block record: {e}")))?;
    let asked = chunks.iter().filter(|c| remaining.remove(&c.id)).count();
    if asked == 0 {
        return Err(RemoteError::Protocol(format!(
            "server sent block {} with no chunk that was asked for",
            hex_id(id)
        )));
    }
    let block = Arc::new(BlockSlot {
        id: *id,
        raw_len: raw,
        payload,
        decoded: std::sync::OnceLock::new(),
        held: std::sync::atomic::AtomicU32::new(0),
        buffers: sh.buffers.clone(),
    });
    let mut w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
    for c in &chunks {
        let Some(&n) = refs.get(&c.id) else { continue };
        w.deliver(c.id, Held::InBlock { block: block.clone(), inner: c.inner, len: c.len }, n);
    }
    sh.cv.notify_all();
    Ok(())
}

impl Drop for RemoteSource {
    /// A reader that stops early (an update stopped at a safe point) ends the pull:
    /// otherwise it would wait for room in a window nobody drains.
    fn drop(&mut self) {
        let mut w = self.shared.w.lock().unwrap_or_else(|e| e.into_inner());
        w.abandoned = true;
        w.slots.clear();
        w.bytes = 0;
        drop(w);
        self.shared.room.notify_waiters();
    }
}

impl RemoteSource {
    /// Take one reference to a chunk from the window, waiting until it has arrived.
    fn take(&self, id: &ChunkId) -> Result<Held, StoreError> {
        let mut w = self.shared.w.lock().unwrap_or_else(|e| e.into_inner());
        let mut waits = false;
        let got = loop {
            if let Some(s) = w.slots.get_mut(id) {
                s.refs = s.refs.saturating_sub(1);
                let held = s.held.clone();
                if s.refs == 0 {
                    w.release(id);
                    self.shared.room.notify_waiters();
                }
                break Ok(held);
            }
            if let Some(f) = &w.failed {
                break Err(StoreError::Io {
                    what: "pulling chunks from the server".into(),
                    source: std::io::Error::other(f.clone()),
                });
            }
            if w.done {
                break Err(StoreError::ChunkMissing(*id));
            }
            if !waits {
                // Tell the requests waiting for room that a writer is blocked on this.
                waits = true;
                *w.waiting.entry(*id).or_insert(0) += 1;
                self.shared.room.notify_waiters();
            }
            w = self
                .shared
                .cv
                .wait_timeout(w, Duration::from_secs(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        };
        if waits && let Some(n) = w.waiting.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                w.waiting.remove(id);
            }
        }
        got
    }
}

/// `data` is the chunk `id` names, or the error saying it is not.
fn verified<'a>(id: &ChunkId, data: &'a [u8], len: u32) -> Result<&'a [u8], StoreError> {
    if data.len() != len as usize || blake3::hash(data).as_bytes() != id {
        return Err(StoreError::ChunkCorrupt { id: *id, why: "received bytes do not match the chunk id".into() });
    }
    Ok(data)
}

impl ChunkSource for RemoteSource {
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.with_chunk(id, &mut |data| {
            out = data.to_vec();
            Ok(())
        })?
        .map_err(|source| StoreError::Io { what: "copying a received chunk".into(), source })?;
        Ok(out)
    }

    fn with_chunk(
        &self,
        id: &ChunkId,
        f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, StoreError> {
        let corrupt = |why: String| StoreError::ChunkCorrupt { id: *id, why };
        match self.take(id)? {
            Held::Single { flags: pack::FLAG_RAW, raw_len, payload } => Ok(f(verified(id, &payload, raw_len)?)),
            Held::Single { raw_len, payload, .. } => UNZSTD.with(|u| {
                let (dctx, buf) = &mut *u.borrow_mut();
                unzstd_into(dctx, &payload, raw_len as usize, buf).map_err(|e| corrupt(format!("zstd: {e}")))?;
                Ok(f(verified(id, buf, raw_len)?))
            }),
            Held::InBlock { block, inner, len } => {
                let all = block.data().map_err(|e| corrupt(format!("received block: {e}")))?;
                let part = all
                    .get(inner as usize..inner as usize + len as usize)
                    .ok_or_else(|| corrupt("chunk lies outside its block".into()))?;
                Ok(f(verified(id, part, len)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_size_and_keep_order() {
        let order: Vec<(ChunkId, u32)> = (0..10u8).map(|i| ([i; 32], 100)).collect();
        let b = batches(&order, None, 250);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].0, vec![[0; 32], [1; 32], [2; 32]]);
        assert_eq!(b[3].0, vec![[9; 32]]);
    }

    #[test]
    fn batches_keep_each_stored_block_in_the_request_of_its_first_chunk() {
        const ALONE: u32 = crate::http::stream::LAYOUT_ALONE;
        let order: Vec<(ChunkId, u32)> = (0..8u8).map(|i| ([i; 32], 100)).collect();
        // Chunks 0, 3 and 7 share block 0; chunk 4 is alone; the rest share block 1.
        let groups = [0, 1, 1, 0, ALONE, 1, 1, 0];
        let b = batches(&order, Some(&groups), 400);
        let ids = |v: &[u8]| v.iter().map(|i| [*i; 32]).collect::<Vec<ChunkId>>();
        assert_eq!(b.len(), 2, "{:?}", b.iter().map(|x| x.1).collect::<Vec<_>>());
        assert_eq!(b[0].0, ids(&[0, 1, 2, 3, 5, 6, 7]));
        assert_eq!(b[0].1, 700);
        assert_eq!(b[1].0, ids(&[4]));
        // No request grows past twice the batch size: the rest of a block goes on.
        let b = batches(&order, Some(&groups), 150);
        assert!(b.iter().all(|(_, size)| *size <= 300), "{:?}", b.iter().map(|x| x.1).collect::<Vec<_>>());
        let mut all: Vec<ChunkId> = b.iter().flat_map(|(v, _)| v.clone()).collect();
        all.sort();
        assert_eq!(all, ids(&[0, 1, 2, 3, 4, 5, 6, 7]), "every chunk in exactly one request");
    }

    #[test]
    fn layout_segments_do_not_share_block_numbers() {
        const ALONE: u32 = crate::http::stream::LAYOUT_ALONE;
        let mut out = Vec::new();
        let next = shift_groups(&[0, ALONE, 1, 0], 0, &mut out).unwrap();
        assert_eq!(next, 2);
        let next = shift_groups(&[0, 0, ALONE, 1], next, &mut out).unwrap();
        assert_eq!(next, 4);
        assert_eq!(out, vec![0, ALONE, 1, 0, 2, 2, ALONE, 3]);
        assert_eq!(shift_groups(&[ALONE], 7, &mut out), Some(7), "nothing new numbered");
        assert!(shift_groups(&[5], u32::MAX - 3, &mut out).is_none(), "overflow is refused");
    }

    #[test]
    fn layout_answers_are_checked_for_length() {
        assert_eq!(parse_layout(&[1, 0, 0, 0, 255, 255, 255, 255], 2).unwrap(), vec![1, u32::MAX]);
        assert!(parse_layout(&[1, 0, 0], 1).is_err());
        assert!(parse_layout(&[1, 0, 0, 0], 2).is_err());
    }

    /// A block with `chunks` (as bytes), as a server sends it: id, raw length, payload.
    fn block(chunks: &[&[u8]]) -> (ChunkId, u32, bytes::Bytes) {
        let list: Vec<(ChunkId, u32)> = chunks.iter().map(|c| (*blake3::hash(c).as_bytes(), c.len() as u32)).collect();
        let (hdr, payload) = crate::store::encode_block(&list, &chunks.concat()).unwrap();
        let (id, _, raw, _) = pack::parse_record_header(&hdr).unwrap();
        (id, raw, bytes::Bytes::from(payload))
    }

    fn source() -> RemoteSource {
        RemoteSource {
            shared: Arc::new(Shared {
                w: Mutex::new(Window::default()),
                cv: Condvar::new(),
                room: tokio::sync::Notify::new(),
                buffers: Arc::default(),
            }),
        }
    }

    #[test]
    fn block_chunks_are_verified_counted_and_released() {
        let (a, b, c) =
            (b"first chunk".as_slice(), b"second chunk, a little longer".as_slice(), b"unneeded".as_slice());
        let id = |x: &[u8]| *blake3::hash(x).as_bytes();
        let (bid, raw, payload) = block(&[a, b, c]);
        let src = source();
        // The image needs a twice and b once; c is not in it. Only a was asked for.
        let refs: HashMap<ChunkId, u32> = [(id(a), 2), (id(b), 1)].into();
        let mut remaining: HashSet<ChunkId> = [id(a)].into();
        receive_block(&bid, raw, payload.clone(), &mut remaining, &src.shared, &refs).unwrap();
        assert!(remaining.is_empty());
        let footprint = payload.len() + raw as usize + pack::RECORD_HEADER_LEN;
        assert_eq!(src.shared.w.lock().unwrap().bytes, footprint, "the block counts once, whole");
        assert_eq!(src.read_chunk(&id(a)).unwrap(), a);
        assert_eq!(src.read_chunk(&id(b)).unwrap(), b);
        assert_eq!(src.shared.w.lock().unwrap().bytes, footprint, "a is still wanted once more");
        assert_eq!(src.read_chunk(&id(a)).unwrap(), a);
        let w = src.shared.w.lock().unwrap();
        assert_eq!((w.bytes, w.slots.len()), (0, 0), "released once every reference was read");
        assert!(!w.delivered.contains(&id(c)));
    }

    #[test]
    fn a_block_with_nothing_asked_for_or_a_bad_table_is_refused() {
        let (bid, raw, payload) = block(&[b"x", b"y"]);
        let src = source();
        let refs: HashMap<ChunkId, u32> = HashMap::new();
        let mut other: HashSet<ChunkId> = [[7; 32]].into();
        assert!(receive_block(&bid, raw, payload.clone(), &mut other, &src.shared, &refs).is_err());
        let mut want: HashSet<ChunkId> = [*blake3::hash(b"x").as_bytes()].into();
        assert!(receive_block(&[1; 32], raw, payload, &mut want, &src.shared, &refs).is_err(), "table not its id");
    }

    #[test]
    fn a_corrupt_block_fails_the_chunks_read_from_it() {
        let (bid, raw, payload) = block(&[b"some bytes here", b"and more bytes"]);
        // The table is intact, the frame cut short: it cannot be decompressed.
        let bad = payload[..payload.len() - 4].to_vec();
        let src = source();
        let x = *blake3::hash(b"some bytes here").as_bytes();
        let refs: HashMap<ChunkId, u32> = [(x, 1)].into();
        let mut want: HashSet<ChunkId> = [x].into();
        receive_block(&bid, raw, bytes::Bytes::from(bad), &mut want, &src.shared, &refs).unwrap();
        assert!(matches!(src.read_chunk(&x), Err(StoreError::ChunkCorrupt { .. })));
    }

    #[test]
    fn a_frame_longer_than_its_record_says_is_refused() {
        let frame = zstd::bulk::compress(&[7u8; 5000], 3).unwrap();
        let mut out = Vec::new();
        assert!(unzstd_into(&mut None, &frame, 100, &mut out).is_err());
        unzstd_into(&mut None, &frame, 5000, &mut out).unwrap();
        assert_eq!(out, vec![7u8; 5000]);
    }

    #[test]
    fn a_finished_block_gives_its_buffer_back() {
        let (a, b) = (b"one chunk of a block".as_slice(), b"another one".as_slice());
        let (bid, raw, payload) = block(&[a, b]);
        let src = source();
        let id = |x: &[u8]| *blake3::hash(x).as_bytes();
        let refs: HashMap<ChunkId, u32> = [(id(a), 1), (id(b), 1)].into();
        let mut want: HashSet<ChunkId> = [id(a), id(b)].into();
        receive_block(&bid, raw, payload, &mut want, &src.shared, &refs).unwrap();
        let mut seen = Vec::new();
        src.with_chunk(&id(a), &mut |d| {
            seen.extend_from_slice(d);
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(seen, a);
        assert!(src.shared.buffers.0.lock().unwrap().is_empty(), "b still needs the block");
        assert_eq!(src.read_chunk(&id(b)).unwrap(), b);
        let pool = src.shared.buffers.0.lock().unwrap();
        assert_eq!(pool.len(), 1, "the block's buffer is kept for the next block");
        assert!(pool[0].capacity() >= raw as usize);
    }

    #[test]
    fn records_are_cut_from_any_split_of_the_stream() {
        let (a, b) = (b"a chunk sent raw".as_slice(), vec![9u8; 3000]);
        let mut stream = Vec::new();
        for data in [a, &b[..]] {
            stream.extend_from_slice(&pack::record_header(
                blake3::hash(data).as_bytes(),
                pack::FLAG_RAW,
                data.len() as u32,
                data.len() as u32,
            ));
            stream.extend_from_slice(data);
        }
        for step in [1, 7, 41, 100, stream.len()] {
            let (mut r, mut out) = (Records::default(), Vec::new());
            for piece in stream.chunks(step) {
                r.feed(piece, &mut out).unwrap();
            }
            assert!(r.is_empty());
            assert_eq!(out.len(), 2, "pieces of {step}");
            assert_eq!(&out[0].3[pack::RECORD_HEADER_LEN..], a);
            assert_eq!(&out[1].3[pack::RECORD_HEADER_LEN..], &b[..]);
            assert_eq!(out[1].3.len(), pack::RECORD_HEADER_LEN + b.len());
        }
        let (mut r, mut out) = (Records::default(), Vec::new());
        r.feed(&stream[..50], &mut out).unwrap();
        assert!(!r.is_empty(), "a record cut short is noticed");
        let mut huge = pack::record_header(&[1; 32], pack::FLAG_ZSTD, 100 << 20, 100 << 20).to_vec();
        huge.push(0);
        assert!(Records::default().feed(&huge, &mut out).is_err());
    }

    #[test]
    fn encode_escapes_path_separators() {
        assert_eq!(encode("head-a@2"), "head-a@2");
        assert_eq!(encode("../x"), "..%2Fx");
    }
}
