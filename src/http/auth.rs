//! Who is calling: the admin (bearer token from the token file), a deploy client
//! (per-deployment token, scoped to one node and one image, expiring), or nobody.
//! Tokens are compared as BLAKE3 hashes (constant-time equality) and never logged.

use super::AppState;
use super::error::ApiError;
use crate::wire::Deployment;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::sync::Arc;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No Authorization header.
    Anonymous,
    /// The admin token.
    Admin,
    /// A valid, unexpired deployment token.
    Deploy(Box<Deployment>),
    /// The followers' token: a standby's `[sync]`, which reads images (to follow and
    /// replicate them) and reports its freshness, and may do nothing else.
    Follower,
}

pub use crate::inventory::tokens::{new_token, token_hash};

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        match bearer(&parts.headers)? {
            Some(token) => Caller::from_token(state, token).await,
            None => Ok(Caller::Anonymous),
        }
    }
}

/// The bearer token of a request, if it has an Authorization header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(h) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    h.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))
}

impl Caller {
    /// The caller a bearer token stands for (also used for tokens carried in boot URLs,
    /// where iPXE cannot send headers).
    pub async fn from_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
        let hash = token_hash(token);
        // blake3::Hash equality is constant-time.
        if hash == state.admin_hash {
            return Ok(Caller::Admin);
        }
        if state.sync_hash == Some(hash) {
            return Ok(Caller::Follower);
        }
        match state.inv.deployment_for_token(token).await {
            Ok(Some(d)) => Ok(Caller::Deploy(Box::new(d))),
            Ok(None) => Err(ApiError::unauthorized("invalid token")),
            // A spent, expired or superseded token: the inventory says which.
            Err(crate::inventory::InventoryError::Conflict(m)) => Err(ApiError::unauthorized(m)),
            Err(e) => Err(e.into()),
        }
    }

    /// Mutations and anything revealing image content need the admin.
    pub fn admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Anonymous => Err(ApiError::unauthorized("this needs the admin token")),
            Caller::Deploy(_) => Err(ApiError::forbidden("a deployment token cannot do this")),
            Caller::Follower => {
                Err(ApiError::forbidden("the sync token only reads images and reports a standby's freshness"))
            }
        }
    }

    /// A standby's report of its freshness: the admin or the followers' token.
    pub fn follower(&self) -> Result<(), ApiError> {
        match self {
            Caller::Follower => Ok(()),
            _ => self.admin(),
        }
    }

    /// Inventory reads: the admin, or anyone when `public_reads` is on.
    pub fn read(&self, public_reads: bool) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Follower => Ok(()),
            _ if public_reads => Ok(()),
            Caller::Anonymous => Err(ApiError::unauthorized("this needs a token (or http.public_reads = true)")),
            Caller::Deploy(_) => Err(ApiError::forbidden("a deployment token cannot do this")),
        }
    }

    /// Image content (manifest, chunks, layout, deltas): the admin, a follower (it holds a
    /// whole copy of the primary anyway), or the deployment of that image.
    pub fn image_content(&self, manifest_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Follower => Ok(()),
            Caller::Deploy(d) if d.manifest_id == manifest_id => Ok(()),
            Caller::Deploy(_) => Err(ApiError::forbidden("this deployment token is for another image")),
            Caller::Anonymous => {
                Err(ApiError::unauthorized("image content needs the admin token or a deployment token"))
            }
        }
    }
}
