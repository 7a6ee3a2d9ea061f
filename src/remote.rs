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

struct Slot {
    flags: u8,
    raw_len: u32,
    payload: bytes::Bytes,
    refs: u32,
}

#[derive(Default)]
struct Window {
    slots: HashMap<ChunkId, Slot>,
    /// Every chunk ever put in `slots`: a chunk that arrives twice (a block can carry
    /// chunks another batch also asked for) is kept once, or its refs would never drain.
    delivered: HashSet<ChunkId>,
    bytes: usize,
    failed: Option<String>,
    done: bool,
    /// The reader is gone (an update stopped early): fetch nothing more.
    abandoned: bool,
}

impl Window {
    /// Hold a received chunk for the writers, unless it was received before.
    fn deliver(&mut self, id: ChunkId, slot: Slot) {
        if self.delivered.insert(id) {
            self.bytes += slot.payload.len() + pack::RECORD_HEADER_LEN;
            self.slots.insert(id, slot);
        }
    }
}

struct Shared {
    w: Mutex<Window>,
    cv: Condvar,
    room: tokio::sync::Notify,
}

/// Tuning of a remote pull.
#[derive(Debug, Clone, Copy)]
pub struct PullOptions {
    /// Requests in flight at once.
    pub parallel: usize,
    /// Raw bytes asked for per request.
    pub batch_bytes: u64,
    /// Compressed bytes held in memory, waiting for the writers.
    pub window_bytes: usize,
    /// Retries of one request after a dropped connection.
    pub retries: u32,
}

impl Default for PullOptions {
    fn default() -> Self {
        // A batch that starts or ends inside a stored block makes the server recompress the
        // part it wants: 32 MiB batches keep that to ~1/16 of the data with 2 MiB blocks
        // (server CPU for a 1 GB root: 1.7 s, against 4.1 s with 8 MiB batches).
        PullOptions { parallel: 4, batch_bytes: 32 << 20, window_bytes: 256 << 20, retries: 8 }
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
        let shared =
            Arc::new(Shared { w: Mutex::new(Window::default()), cv: Condvar::new(), room: tokio::sync::Notify::new() });
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

fn batches(order: Vec<(ChunkId, u32)>, max: u64) -> Vec<(Vec<ChunkId>, u64)> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0u64;
    for (id, len) in order {
        cur.push(id);
        size += len as u64;
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
    let jobs = batches(order, opts.batch_bytes);
    let mut stream = futures_util::stream::iter(jobs.into_iter().map(|(ids, raw)| {
        let (client, sh, refs) = (client.clone(), sh.clone(), refs.clone());
        let image = image.to_string();
        async move {
            // Wait for room: the writers consume in manifest order, so the window drains.
            loop {
                let notified = sh.room.notified();
                {
                    let w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
                    if w.abandoned {
                        return Ok(());
                    }
                    if w.failed.is_some() || w.bytes + raw as usize / 2 <= opts.window_bytes || w.bytes == 0 {
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
    let mut buf = bytes::BytesMut::new();
    while let Some(piece) = body.next().await {
        buf.extend_from_slice(&piece?);
        while buf.len() >= pack::RECORD_HEADER_LEN {
            let (id, flags, raw, stored) =
                pack::parse_record_header(&buf).map_err(|e| RemoteError::Protocol(e.to_string()))?;
            if stored > 64 << 20 || raw > 64 << 20 {
                return Err(RemoteError::Protocol("oversized chunk record".into()));
            }
            let need = pack::RECORD_HEADER_LEN + stored as usize;
            if buf.len() < need {
                break;
            }
            let rec = buf.split_to(need).freeze();
            let payload = rec.slice(pack::RECORD_HEADER_LEN..);
            if flags == pack::FLAG_BLOCK {
                receive_block(&id, raw, &payload, remaining, sh, refs)?;
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
            w.deliver(id, Slot { flags, raw_len: raw, payload, refs: refs.get(&id).copied().unwrap_or(1) });
            sh.cv.notify_all();
        }
    }
    if !buf.is_empty() {
        return Err(RemoteError::Protocol("stream ended inside a record".into()));
    }
    Ok(())
}

/// Split a received block into its chunks (each is verified when the writers take it).
/// The block must hold at least one chunk that was asked for; others the image needs are
/// kept too, the rest ignored.
fn receive_block(
    id: &ChunkId,
    raw: u32,
    payload: &[u8],
    remaining: &mut HashSet<ChunkId>,
    sh: &Shared,
    refs: &HashMap<ChunkId, u32>,
) -> Result<(), RemoteError> {
    // Decompressed here, on the receiving task: a block is at most a few hundred KiB to a
    // few MiB, and every chunk in it would otherwise need the whole frame again.
    let (chunks, data) =
        pack::decode_block(payload, id, raw).map_err(|e| RemoteError::Protocol(format!("bad block record: {e}")))?;
    let asked = chunks.iter().filter(|c| remaining.remove(&c.id)).count();
    if asked == 0 {
        return Err(RemoteError::Protocol(format!(
            "server sent block {} with no chunk that was asked for",
            hex_id(id)
        )));
    }
    let mut w = sh.w.lock().unwrap_or_else(|e| e.into_inner());
    for c in &chunks {
        let Some(&n) = refs.get(&c.id) else { continue };
        let bytes = bytes::Bytes::copy_from_slice(&data[c.inner as usize..(c.inner + c.len) as usize]);
        w.deliver(c.id, Slot { flags: pack::FLAG_RAW, raw_len: c.len, payload: bytes, refs: n });
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

impl ChunkSource for RemoteSource {
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let (flags, raw_len, payload) = {
            let mut w = self.shared.w.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(s) = w.slots.get_mut(id) {
                    s.refs = s.refs.saturating_sub(1);
                    let out = (s.flags, s.raw_len, s.payload.clone());
                    if s.refs == 0 {
                        w.slots.remove(id);
                        w.bytes = w.bytes.saturating_sub(out.2.len() + pack::RECORD_HEADER_LEN);
                        self.shared.room.notify_waiters();
                    }
                    break out;
                }
                if let Some(f) = &w.failed {
                    return Err(StoreError::Io {
                        what: "pulling chunks from the server".into(),
                        source: std::io::Error::other(f.clone()),
                    });
                }
                if w.done {
                    return Err(StoreError::ChunkMissing(*id));
                }
                w = self
                    .shared
                    .cv
                    .wait_timeout(w, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        let data = match flags {
            pack::FLAG_RAW => payload.to_vec(),
            _ => zstd::bulk::decompress(&payload, raw_len as usize)
                .map_err(|e| StoreError::ChunkCorrupt { id: *id, why: format!("zstd: {e}") })?,
        };
        if data.len() != raw_len as usize || blake3::hash(&data).as_bytes() != id {
            return Err(StoreError::ChunkCorrupt { id: *id, why: "received bytes do not match the chunk id".into() });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_size_and_keep_order() {
        let order: Vec<(ChunkId, u32)> = (0..10u8).map(|i| ([i; 32], 100)).collect();
        let b = batches(order, 250);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].0, vec![[0; 32], [1; 32], [2; 32]]);
        assert_eq!(b[3].0, vec![[9; 32]]);
    }

    #[test]
    fn encode_escapes_path_separators() {
        assert_eq!(encode("head-a@2"), "head-a@2");
        assert_eq!(encode("../x"), "..%2Fx");
    }
}
