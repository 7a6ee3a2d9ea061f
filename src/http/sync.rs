//! Standby freshness over HTTP: the follower's and the capture schedule's status, and
//! the admin's pause, resume and "capture now" (through the in-process [`crate::sync::Handle`]).

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::sync::SyncReport;
use crate::sync::board::StandbyReport;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type St = State<Arc<AppState>>;

/// All routes of this module.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(sync_status))
        .routes(routes!(sync_pause))
        .routes(routes!(sync_resume))
        .routes(routes!(sync_capture))
        .routes(routes!(standby_report))
}

fn configured(st: &AppState) -> ApiResult<&crate::sync::Handle> {
    st.sync
        .as_ref()
        .filter(|h| h.follow.is_some() || h.capture.is_some() || !h.standbys.is_empty())
        .ok_or_else(|| ApiError::not_found("neither [sync] nor [capture] is configured on this server"))
}

/// The standby's freshness (`follow`: what it runs, the primary's newest version, lag,
/// bytes still to apply, alarm) and the primary's capture schedule (`capture`). Admin only.
#[utoipa::path(get, path = "/api/v1/sync", tag = "system",
    responses((status = 200, body = SyncReport), (status = 404, body = ErrorBody)))]
async fn sync_status(State(st): St, caller: Caller) -> ApiResult<Json<SyncReport>> {
    caller.admin()?;
    Ok(Json(configured(&st)?.report()))
}

fn follower(
    st: &AppState,
) -> ApiResult<&(tokio::sync::watch::Receiver<crate::sync::SyncStatus>, crate::sync::Gate, Arc<tokio::sync::Notify>)> {
    configured(st)?.follow.as_ref().ok_or_else(|| ApiError::not_found("[sync] is not configured on this server"))
}

/// Pause the follower: a running update stops at its next safe point, no new one starts
/// (the lag is still measured). Not kept across restarts. Admin only.
#[utoipa::path(post, path = "/api/v1/sync/pause", tag = "system",
    responses((status = 200, body = SyncReport), (status = 404, body = ErrorBody)))]
async fn sync_pause(State(st): St, caller: Caller) -> ApiResult<Json<SyncReport>> {
    caller.admin()?;
    let (_, gate, wake) = follower(&st)?;
    gate.set_paused(true);
    wake.notify_one();
    Ok(Json(configured(&st)?.report()))
}

/// Resume the follower and check the primary at once. Admin only.
#[utoipa::path(post, path = "/api/v1/sync/resume", tag = "system",
    responses((status = 200, body = SyncReport), (status = 404, body = ErrorBody)))]
async fn sync_resume(State(st): St, caller: Caller) -> ApiResult<Json<SyncReport>> {
    caller.admin()?;
    let (_, gate, wake) = follower(&st)?;
    gate.set_paused(false);
    wake.notify_one();
    Ok(Json(configured(&st)?.report()))
}

/// Run the scheduled capture now (after the running one, if one runs). Admin only.
#[utoipa::path(post, path = "/api/v1/sync/capture", tag = "system",
    responses((status = 202, body = SyncReport), (status = 404, body = ErrorBody)))]
async fn sync_capture(State(st): St, caller: Caller) -> ApiResult<(StatusCode, Json<SyncReport>)> {
    caller.admin()?;
    let (_, now) = configured(&st)?
        .capture
        .as_ref()
        .ok_or_else(|| ApiError::not_found("[capture] is not configured on this server"))?;
    now.notify_one();
    Ok((StatusCode::ACCEPTED, Json(configured(&st)?.report())))
}

/// A standby's follower reports its status after each check, so the primary's console,
/// API (`standbys` of `GET /api/v1/sync`) and metrics show its freshness. The admin or
/// the followers' sync token.
#[utoipa::path(post, path = "/api/v1/sync/standby", tag = "system",
    request_body = StandbyReport,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn standby_report(State(st): St, caller: Caller, ApiJson(r): ApiJson<StandbyReport>) -> ApiResult<StatusCode> {
    caller.follower()?;
    let h = st.sync.as_ref().ok_or_else(|| ApiError::not_found("this server keeps no standby reports"))?;
    let size = serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(usize::MAX);
    r.validate(size).map_err(|e| ApiError::bad_request(e.to_string()))?;
    h.standbys.put(r, crate::sync::now_ms());
    Ok(StatusCode::NO_CONTENT)
}
