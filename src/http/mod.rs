//! The HTTP service: REST API under `/api/v1`, its OpenAPI document, image content for
//! deploy clients, `/metrics`, and the admin's web console at `/`.

pub mod api;
pub mod auth;
pub mod boot;
pub mod console;
pub mod delta;
pub mod error;
pub mod failover;
pub mod metrics;
pub mod stream;
pub mod sync;

use crate::config::{BootConfig, HttpConfig};
use crate::inventory::Inventory;
use crate::store::IndexCache;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Shared state of the HTTP service.
pub struct AppState {
    /// The inventory and store.
    pub inv: Inventory,
    /// `[http]` settings.
    pub cfg: HttpConfig,
    /// BLAKE3 of the admin token.
    pub admin_hash: blake3::Hash,
    /// BLAKE3 of the followers' token (`http.sync_token_file`), when this server has one.
    pub sync_hash: Option<blake3::Hash>,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Background jobs (verify, gc).
    pub jobs: api::Jobs,
    /// Store indexes shared by requests.
    pub index_cache: IndexCache,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// `[boot]` settings.
    pub boot: BootConfig,
    /// Where the iPXE binaries are (the TFTP root unless `boot.pxe_dir` says otherwise).
    pub pxe_dir: PathBuf,
    /// The failover service running in this process, if any (status and admin requests).
    pub failover: Option<crate::failover::Handle>,
    /// The `[sync]` follower and `[capture]` schedule running in this process, if any.
    pub sync: Option<crate::sync::Handle>,
}

impl AppState {
    /// New state.
    pub fn new(inv: Inventory, cfg: HttpConfig, admin_token: &str, shutdown: CancellationToken) -> AppState {
        AppState {
            inv,
            cfg,
            admin_hash: auth::token_hash(admin_token),
            sync_hash: None,
            metrics: metrics::Metrics::default(),
            jobs: api::Jobs::default(),
            index_cache: IndexCache::default(),
            shutdown,
            boot: BootConfig::default(),
            pxe_dir: PathBuf::from("pxe"),
            failover: None,
            sync: None,
        }
    }

    /// Accept `token` as the followers' token ([`auth::Caller::Follower`]).
    pub fn with_sync_token(mut self, token: &str) -> AppState {
        self.sync_hash = Some(auth::token_hash(token));
        self
    }

    /// Serve the failover endpoints and metrics from this service's handle (`None`: the
    /// endpoints answer that failover is not running here).
    pub fn with_failover(mut self, failover: Option<crate::failover::Handle>) -> AppState {
        self.failover = failover;
        self
    }

    /// Serve the sync endpoints and metrics from these tasks' handle.
    pub fn with_sync(mut self, sync: Option<crate::sync::Handle>) -> AppState {
        self.sync = sync;
        self
    }

    /// Use these network-boot settings; `tftp_root` is the default home of the iPXE binaries.
    pub fn with_boot(mut self, boot: BootConfig, tftp_root: Option<PathBuf>) -> AppState {
        self.pxe_dir = boot.pxe_dir.clone().or(tftp_root).unwrap_or_else(|| PathBuf::from("pxe"));
        self.boot = boot;
        self
    }

    /// Where the deploy environment's kernel and initramfs are.
    pub fn boot_dir(&self) -> PathBuf {
        self.inv.data_dir.join(&self.boot.dir)
    }

    /// Where the iPXE binaries are.
    pub fn boot_pxe_dir(&self) -> PathBuf {
        self.pxe_dir.clone()
    }

    /// Data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.inv.data_dir.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "understudy", description = "Image server, network boot and failover for cluster head nodes."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "images"), (name = "nodes"), (name = "deployments"), (name = "events"), (name = "boot"), (name = "system"))
)]
struct ApiDoc;

struct BearerAuth;

/// Document the error answers any operation can give (bad input, auth, limits).
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let resp = |d: &str| {
            ResponseBuilder::new()
                .description(d)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        let common = [
            ("400", "Malformed request"),
            ("401", "Missing or invalid token"),
            ("403", "The token does not allow this"),
            ("404", "No such object"),
            ("408", "Request took too long"),
            ("409", "Conflicts with the current state"),
            ("413", "Body too large"),
            ("415", "Body is not JSON"),
            ("422", "JSON does not match the schema"),
        ];
        for item in api.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete, &mut item.put].into_iter().flatten()
            {
                for (code, d) in common {
                    op.responses.responses.entry(code.to_string()).or_insert_with(|| resp(d).into());
                }
            }
        }
    }
}

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.request(&route, &method, status);
    tracing::debug!(%method, %route, status, ms = t.elapsed().as_millis() as u64, "request");
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let running = match st.inv.running_deployments().await {
        Ok(n) => n,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut body = st.metrics.render(running);
    // The failover service in this process publishes its status at least every second;
    // nothing until its first publication (a status never dated has no meaningful age).
    if let Some(s) = st.failover.as_ref().map(|h| h.status()).filter(|s| s.updated_unix_ms > 0) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        body.push_str(&crate::failover::metrics::render(&s, now.as_millis() as u64));
    }
    if let Some(h) = &st.sync {
        body.push_str(&crate::sync::status::render_metrics(&h.report()));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Build the router.
pub fn router(state: Arc<AppState>) -> Router {
    let (api_router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::routes())
        .merge(failover::routes())
        .merge(sync::routes())
        .merge(stream::routes(&state.cfg))
        .merge(delta::routes())
        .routes(utoipa_axum::routes!(boot::boot_file))
        .split_for_parts();
    // Applied after the routes are merged, so it sees every operation.
    utoipa::Modify::modify(&CommonErrors, &mut openapi);
    let doc = Arc::new(openapi);
    let timeout = state.cfg.request_timeout;
    let limit = state.cfg.body_limit as usize;
    Router::new()
        .merge(api_router)
        .route("/api/v1/openapi.json", axum::routing::get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .route("/metrics", axum::routing::get(metrics))
        .merge(console::routes(&state.cfg))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(tower::limit::ConcurrencyLimitLayer::new(state.cfg.max_concurrent_requests))
        .with_state(state)
}

/// Serve until `shutdown` is cancelled.
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let app = router(state);
    // Peer addresses matter: a deploy script is only handed to the node's own address.
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
