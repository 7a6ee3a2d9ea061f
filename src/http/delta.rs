//! rsync-style deltas of one file of an image, for `understudy update --server`: the body
//! is the fast_rsync signature of the node's old version, the answer the delta that turns
//! it into the image's version (the node verifies the result by BLAKE3 before use). Scoped
//! like the chunk endpoints: the admin token or a deployment token for this image.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiResult, ErrorBody};
use crate::store::Store;
use crate::store::manifest::{Kind, path_cmp};
use crate::update::delta::{self, DELTA_MAX, SIGNATURE_MAX};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(file_delta).layer(axum::extract::DefaultBodyLimit::max(SIGNATURE_MAX)))
}

/// Which file of the image.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct DeltaQuery {
    /// The file's image path as hex of its bytes (paths are raw bytes).
    pub path: String,
}

/// The delta from the node's version of a file (its signature in the body) to the image's.
#[utoipa::path(post, path = "/api/v1/images/{image}/delta", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id"), DeltaQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "fast_rsync signature"),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn file_delta(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(image): ApiPath<String>,
    Query(q): Query<DeltaQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let row = st.inv.resolve(&image).await?;
    caller.image_content(&row.id)?;
    let path = hex::decode(&q.path).map_err(|_| ApiError::bad_request("path: not hex"))?;
    let m = st.inv.manifest(&row).await?;
    let idx = m
        .entries
        .binary_search_by(|e| path_cmp(&e.path, &path))
        .map_err(|_| ApiError::not_found("no such file in this image"))?;
    match &m.entries[idx].kind {
        Kind::File { size, .. } if *size <= DELTA_MAX => {}
        Kind::File { .. } => return Err(ApiError::bad_request(format!("files over {DELTA_MAX} bytes go by chunks"))),
        _ => return Err(ApiError::bad_request("not a regular file")),
    }
    let st2 = st.clone();
    let out = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u8>> {
        let store = Store::open_cached(&st2.data_dir(), &st2.index_cache).map_err(ApiError::internal)?;
        let new = delta::file_bytes(&store, &m.entries[idx]).map_err(ApiError::internal)?;
        delta::make_delta(&body, &new).map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await
    .map_err(ApiError::internal)??;
    st.metrics.bytes_served.fetch_add(out.len() as u64, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
}
