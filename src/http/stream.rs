//! Image content for deploy clients: the manifest, single chunks, and one streaming
//! endpoint that sends every chunk a client lacks in a single response.
//!
//! Stream wire format (`application/x-understudy-chunks`): a sequence of records, each a
//! 41-byte header (32-byte id, 1-byte encoding, u32 LE raw length, u32 LE stored length)
//! followed by the stored bytes, exactly as records are stored in packs. Encodings:
//! 0 = one raw chunk, 1 = one chunk as a zstd frame, 3 = a block of chunks: a table (u32
//! LE count, then per chunk its 32-byte id and u32 LE length) followed by one zstd frame
//! of the chunks' bytes in table order; the record id is the BLAKE3 of the table and the
//! raw length the sum of the chunk lengths. The client verifies every chunk's BLAKE3.
//! Stored deltas (2) are never sent as such: the client may lack their base, so a delta
//! chunk goes out raw.
//!
//! A stored block is sent as it is when every chunk in it was asked for; when only some
//! were, the server decompresses it and sends a new block of just those (so a client never
//! receives what it did not ask for, and batch boundaries cost no duplicate bytes). Each
//! chunk is sent at most once per response.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorBody};
use crate::config::HttpConfig;
use crate::store::manifest::Manifest;
use crate::store::{self, ChunkId, Record, Store, hex_id, pack, parse_id};
use crate::wire::StreamRequest;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Media type of a chunk stream.
pub const CHUNKS_MEDIA_TYPE: &str = "application/x-understudy-chunks";
/// Bytes gathered before a stream write.
const BATCH: usize = 1 << 20;

/// Routes of this module.
pub fn routes(cfg: &HttpConfig) -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(get_manifest))
        .routes(routes!(get_chunk))
        .routes(routes!(chunk_layout).layer(axum::extract::DefaultBodyLimit::max(cfg.stream_body_limit as usize)))
        .routes(routes!(stream_chunks).layer(axum::extract::DefaultBodyLimit::max(cfg.stream_body_limit as usize)))
}

fn parse_ids(v: &[String], what: &str) -> ApiResult<Vec<ChunkId>> {
    v.iter()
        .map(|s| {
            parse_id(s).ok_or_else(|| ApiError::bad_request(format!("{what}: {s:?} is not a 64-digit hex chunk id")))
        })
        .collect()
}

/// The image's manifest in its canonical encoding; its BLAKE3 is the image id.
#[utoipa::path(get, path = "/api/v1/images/{image}/manifest", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "the encoding, zstd-compressed (Content-Encoding: zstd) when Accept-Encoding allows"), (status = 304, description = "If-None-Match names this manifest's id"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_manifest(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: header::HeaderMap,
    ApiPath(image): ApiPath<String>,
) -> ApiResult<Response> {
    let row = st.inv.resolve(&image).await?;
    caller.image_content(&row.id)?;
    let etag = format!("\"{}\"", row.id);
    let label = format!("{}@{}", row.name, row.version);
    let image_hdr = header::HeaderName::from_static("x-understudy-image");
    // A client that holds this manifest already (its id is the ETag) gets no body.
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag));
    if held {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (image_hdr, label)]).into_response());
    }
    let m = st.inv.manifest(&row).await?;
    let body = m.encode();
    // A manifest is a few MB for a full root and compresses about 5x: sent compressed to
    // a client that takes zstd (the ETag stays the id of the encoding inside).
    let zstd = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim() == "zstd")));
    let (body, encoding) = if zstd {
        let z = tokio::task::spawn_blocking(move || zstd::bulk::compress(&body, 3))
            .await
            .map_err(|e| ApiError::internal(format!("compressing the manifest: {e}")))?
            .map_err(|e| ApiError::internal(format!("compressing the manifest: {e}")))?;
        (z, Some("zstd"))
    } else {
        (body, None)
    };
    st.metrics.bytes_served.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ETAG, etag),
            (image_hdr, label),
            (header::VARY, "accept-encoding".to_string()),
        ],
        body,
    )
        .into_response();
    if let Some(e) = encoding {
        resp.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static(e));
    }
    Ok(resp)
}

/// One chunk of an image, uncompressed and verified.
#[utoipa::path(get, path = "/api/v1/images/{image}/chunks/{id}", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id"), ("id" = String, Path, description = "chunk id (hex)")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody)))]
async fn get_chunk(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((image, id)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let row = st.inv.resolve(&image).await?;
    caller.image_content(&row.id)?;
    let id = parse_id(&id).ok_or_else(|| ApiError::not_found("no such chunk (ids are 64 hex digits)"))?;
    let m = st.inv.manifest(&row).await?;
    if !m.chunk_refs().any(|(_, c)| c.id == id) {
        return Err(ApiError::not_found("no such chunk in this image"));
    }
    let st2 = st.clone();
    let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, crate::store::StoreError> {
        let store = Store::open_cached(&st2.data_dir(), &st2.index_cache)?;
        store.read(&id)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    st.metrics.bytes_served.fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// The chunks a stream request names, in order, each once: its `want` (every chunk of
/// the image when absent) minus its `have`. A wanted chunk outside the image is refused.
pub fn requested(m: &Manifest, req: &StreamRequest, label: &str) -> ApiResult<Vec<ChunkId>> {
    let have: HashSet<ChunkId> = parse_ids(&req.have, "have")?.into_iter().collect();
    let mut seen = HashSet::new();
    let in_image: Vec<ChunkId> = m.chunk_refs().map(|(_, c)| c.id).filter(|id| seen.insert(*id)).collect();
    Ok(match &req.want {
        Some(w) => {
            let want = parse_ids(w, "want")?;
            if let Some(bad) = want.iter().find(|id| !seen.contains(*id)) {
                return Err(ApiError::not_found(format!("chunk {} is not part of image {label}", hex_id(bad))));
            }
            let mut dedup = HashSet::new();
            want.into_iter().filter(|id| !have.contains(id) && dedup.insert(*id)).collect()
        }
        None => in_image.into_iter().filter(|id| !have.contains(id)).collect(),
    })
}

/// The image a stream or blocks request is about (checked for the caller) and the chunks
/// it names.
async fn named_chunks(
    st: &AppState,
    caller: &Caller,
    image: &str,
    req: &StreamRequest,
) -> ApiResult<(crate::wire::Image, Vec<ChunkId>)> {
    let row = st.inv.resolve(image).await?;
    caller.image_content(&row.id)?;
    let m = st.inv.manifest(&row).await?;
    let list = requested(&m, req, &row.label())?;
    Ok((row, list))
}

/// Layout value of a chunk stored in a record of its own (not in a block).
pub const LAYOUT_ALONE: u32 = u32::MAX;

/// Number the stored blocks that `places` (each chunk's block as (pack, offset), or
/// `None` for a chunk stored alone) fall in, densely in order of first appearance: the
/// layout answer, one value per chunk, [`LAYOUT_ALONE`] for a chunk not in a block.
fn block_groups(places: impl IntoIterator<Item = Option<(u32, u32)>>) -> Vec<u32> {
    let mut groups: HashMap<(u32, u32), u32> = HashMap::new();
    places
        .into_iter()
        .map(|p| match p {
            Some(key) => {
                let next = groups.len() as u32;
                *groups.entry(key).or_insert(next)
            }
            None => LAYOUT_ALONE,
        })
        .collect()
}

/// Which stored block each chunk a stream request names lies in. A client that asks for
/// all of a block's chunks in one stream request gets the block as it is stored; one
/// that splits a block over several requests makes the server decompress it and
/// recompress the part each request wants.
#[utoipa::path(post, path = "/api/v1/images/{image}/blocks", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")), request_body = StreamRequest,
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "one u32 LE per chunk the request names, in its order: the number of the stored block holding it (blocks numbered from 0 in order of first appearance), 4294967295 for a chunk stored on its own"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn chunk_layout(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(image): ApiPath<String>,
    ApiJson(req): ApiJson<StreamRequest>,
) -> ApiResult<Response> {
    let (_, list) = named_chunks(&st, &caller, &image, &req).await?;
    let st2 = st.clone();
    let groups = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, StreamFault> {
        let store = Store::open_cached(&st2.data_dir(), &st2.index_cache)?;
        let places = list
            .iter()
            .map(|id| {
                let loc = store.locate(id).ok_or(StreamFault::Missing(*id))?;
                Ok((loc.flags == pack::FLAG_BLOCK).then_some((loc.pack, loc.offset)))
            })
            .collect::<Result<Vec<_>, StreamFault>>()?;
        Ok(block_groups(places))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let body: Vec<u8> = groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    st.metrics.bytes_served.fetch_add(body.len() as u64, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Stream every chunk of the image the client lacks (or only those it wants), in
/// manifest order, in one response.
#[utoipa::path(post, path = "/api/v1/images/{image}/stream", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")), request_body = StreamRequest,
    responses((status = 200, content_type = "application/x-understudy-chunks", body = Vec<u8>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn stream_chunks(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(image): ApiPath<String>,
    ApiJson(req): ApiJson<StreamRequest>,
) -> ApiResult<Response> {
    let (row, list) = named_chunks(&st, &caller, &image, &req).await?;
    let count = list.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stall = st.cfg.stream_stall_timeout;
    let st2 = st.clone();
    let label = format!("{}@{}", row.name, row.version);
    let rt = tokio::runtime::Handle::current();
    st.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut sent = 0u64;
        let send = |b: Result<Bytes, std::io::Error>| -> bool {
            match rt.block_on(tokio::time::timeout(stall, tx.send(b))) {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false, // client went away
                Err(_) => {
                    tracing::warn!(image = %label, "stream client stopped reading; closing the stream");
                    false
                }
            }
        };
        let res = (|| -> Result<(), StreamFault> {
            let store = Store::open_cached(&st2.data_dir(), &st2.index_cache)?;
            let mut locs = Vec::with_capacity(list.len());
            let mut wanted_in: HashMap<(u32, u32), HashSet<ChunkId>> = HashMap::new();
            for id in &list {
                let loc = store.locate(id).ok_or(StreamFault::Missing(*id))?;
                if loc.flags == pack::FLAG_BLOCK {
                    wanted_in.entry((loc.pack, loc.offset)).or_default().insert(*id);
                }
                locs.push(loc);
            }
            let mut sent_blocks = HashSet::new();
            // Blocks sent as stored, and blocks of which only a part was wanted (recompressed).
            let (mut whole, mut recoded) = (0u32, 0u32);
            let mut batch = Vec::with_capacity(BATCH + (1 << 18));
            for (id, loc) in list.iter().zip(locs) {
                if st2.shutdown.is_cancelled() {
                    return Err(StreamFault::ShuttingDown);
                }
                let key = (loc.pack, loc.offset);
                if loc.flags == pack::FLAG_BLOCK && !sent_blocks.insert(key) {
                    continue; // went out with an earlier chunk of the same block
                }
                let rec = store.read_record(id, loc)?;
                let (hdr, payload) = match wanted_in.get(&key) {
                    Some(wanted) if loc.flags == pack::FLAG_BLOCK => {
                        let (hdr, payload, as_stored) = block_record(rec, wanted)?;
                        if as_stored {
                            whole += 1;
                        } else {
                            recoded += 1;
                        }
                        (hdr, payload)
                    }
                    // A delta needs its base, which the client may not have: send it whole.
                    _ if rec.flags == pack::FLAG_DELTA => {
                        let data = store.read(id)?;
                        (pack::record_header(id, pack::FLAG_RAW, rec.raw_len, data.len() as u32), data)
                    }
                    _ => (pack::record_header(id, rec.flags, rec.raw_len, rec.payload.len() as u32), rec.payload),
                };
                batch.extend_from_slice(&hdr);
                batch.extend_from_slice(&payload);
                if batch.len() >= BATCH {
                    sent += batch.len() as u64;
                    if !send(Ok(Bytes::from(std::mem::take(&mut batch)))) {
                        return Ok(());
                    }
                    batch.reserve(BATCH + (1 << 18));
                }
            }
            if !batch.is_empty() {
                sent += batch.len() as u64;
                send(Ok(Bytes::from(batch)));
            }
            tracing::debug!(image = %label, chunks = count, blocks_as_stored = whole, blocks_recompressed = recoded, "chunk stream sent");
            Ok(())
        })();
        if let Err(e) = res {
            tracing::error!(image = %label, "chunk stream failed: {e}");
            send(Err(std::io::Error::other(e)));
        }
        st2.metrics.streams_active.fetch_sub(1, Ordering::Relaxed);
        st2.metrics.stream_done(sent, t.elapsed().as_micros() as u64);
    });
    let body = Body::from_stream(tokio_stream_wrapper(rx));
    Ok((
        [
            (header::CONTENT_TYPE, CHUNKS_MEDIA_TYPE.to_string()),
            (header::HeaderName::from_static("x-understudy-chunks"), count.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Why a chunk stream stopped early.
#[derive(Debug, thiserror::Error)]
enum StreamFault {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A chunk the manifest names is not in the store.
    #[error("chunk {} missing from the store", hex_id(.0))]
    Missing(ChunkId),
    /// A stored block does not decode.
    #[error("{0}")]
    Block(String),
    /// The server is stopping.
    #[error("server shutting down")]
    ShuttingDown,
}

/// The record to send for a stored block of which the client wants `wanted`: the block
/// as stored if that is all of it, else a new block of just the wanted chunks; and
/// whether it went as stored.
fn block_record(
    rec: Record,
    wanted: &HashSet<ChunkId>,
) -> Result<([u8; pack::RECORD_HEADER_LEN], Vec<u8>, bool), StreamFault> {
    let bad = |e: pack::FormatError| StreamFault::Block(format!("stored block {}: {e}", hex_id(&rec.id)));
    let (table, _) = pack::parse_block_table(&rec.payload, &rec.id, rec.raw_len).map_err(bad)?;
    let held: HashSet<ChunkId> = table.iter().map(|c| c.id).collect();
    if let Some(lost) = wanted.iter().find(|id| !held.contains(*id)) {
        return Err(StreamFault::Block(format!("chunk {} is not in the block its index entry names", hex_id(lost))));
    }
    if held.len() == wanted.len() {
        let hdr = pack::record_header(&rec.id, rec.flags, rec.raw_len, rec.payload.len() as u32);
        return Ok((hdr, rec.payload, true));
    }
    let (table, data) = pack::decode_block(&rec.payload, &rec.id, rec.raw_len).map_err(bad)?;
    let mut list = Vec::new();
    let mut bytes = Vec::new();
    for c in table.iter().filter(|c| wanted.contains(&c.id)) {
        list.push((c.id, c.len));
        bytes.extend_from_slice(&data[c.inner as usize..(c.inner + c.len) as usize]);
    }
    let (hdr, payload) =
        store::encode_block(&list, &bytes).map_err(|e| StreamFault::Block(format!("compressing block: {e}")))?;
    Ok((hdr, payload, false))
}

fn tokio_stream_wrapper(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_groups_number_blocks_in_order_of_first_appearance() {
        let places = [Some((0, 16)), None, Some((1, 16)), Some((0, 16)), Some((0, 900)), None, Some((1, 16))];
        assert_eq!(block_groups(places), vec![0, LAYOUT_ALONE, 1, 0, 2, LAYOUT_ALONE, 1]);
        assert!(block_groups([]).is_empty());
    }
}
