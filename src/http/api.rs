//! REST handlers: images, jobs, nodes, deployments, events.

use super::AppState;
use super::auth::{Caller, new_token, token_hash};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::db::{Deployment, Event, EventFilter, ImageRow, Node};
use crate::nodes;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type St = State<Arc<AppState>>;

/// All routes of this module.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_images))
        .routes(routes!(show_image, delete_image))
        .routes(routes!(verify_image))
        .routes(routes!(start_gc))
        .routes(routes!(get_job))
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(get_node, update_node, delete_node))
        .routes(routes!(redeploy_node))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment))
        .routes(routes!(report_progress))
        .routes(routes!(list_events))
        .routes(routes!(whoami))
        .routes(routes!(list_discovered))
        .routes(routes!(collect))
        .routes(routes!(list_leases))
}

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl PageQuery {
    fn get(&self) -> ApiResult<(i64, i64)> {
        let limit = self.limit.unwrap_or(100);
        let offset = self.offset.unwrap_or(0);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        if offset < 0 {
            return Err(ApiError::bad_request("offset must not be negative"));
        }
        Ok((limit, offset))
    }
}

/// One page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Items in the whole list.
    pub total: i64,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

// ---------------------------------------------------------------- images

/// List image versions.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(PageQuery),
    responses((status = 200, body = Page<ImageRow>), (status = 401, body = ErrorBody)))]
async fn list_images(
    State(st): St,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<ImageRow>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = q.get()?;
    let (items, total) = st.inv.db.images_page(limit, offset).await?;
    Ok(Json(Page { items, total, limit, offset }))
}

/// An image with what it holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageDetail {
    /// The version row.
    pub image: ImageRow,
    /// Entry counts by type.
    pub kinds: BTreeMap<String, u64>,
    /// Distinct chunks.
    pub chunks: u64,
}

/// Show one image: `NAME`, `NAME@N` or a manifest id (prefix of 8+ hex digits).
#[utoipa::path(get, path = "/api/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 200, body = ImageDetail), (status = 404, body = ErrorBody)))]
async fn show_image(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<ImageDetail>> {
    caller.read(st.cfg.public_reads)?;
    let row = st.inv.resolve(&image).await?;
    let m = st.manifest(&row).await?;
    let mut kinds = BTreeMap::new();
    for e in &m.entries {
        *kinds.entry(kind_name(&e.kind).to_string()).or_default() += 1;
    }
    let chunks = m.chunk_refs().map(|(_, c)| c.id).collect::<std::collections::HashSet<_>>().len() as u64;
    Ok(Json(ImageDetail { image: row, kinds, chunks }))
}

/// Name of an entry type.
pub fn kind_name(k: &crate::store::manifest::Kind) -> &'static str {
    use crate::store::manifest::Kind::*;
    match k {
        File { .. } => "file",
        Dir => "dir",
        Symlink { .. } => "symlink",
        Hardlink { .. } => "hardlink",
        CharDev { .. } => "char",
        BlockDev { .. } => "block",
        Fifo => "fifo",
        Socket => "socket",
    }
}

/// Result of a delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// Versions deleted.
    pub deleted: u64,
}

/// Delete `NAME` (all versions) or `NAME@N`; space is freed by gc.
#[utoipa::path(delete, path = "/api/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "NAME or NAME@N", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_image(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<Deleted>> {
    caller.admin()?;
    Ok(Json(Deleted { deleted: st.inv.delete(&image).await? }))
}

/// A background job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// verify or gc.
    pub kind: String,
    /// running, done or failed.
    pub state: String,
    /// Start time.
    pub started: String,
    /// End time.
    pub finished: Option<String>,
    /// The report when done.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The error when failed.
    pub error: Option<String>,
}

/// Jobs of this server process.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Job>>,
}

const JOBS_KEPT: usize = 1000;

impl Jobs {
    fn start(&self, kind: &str) -> Job {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let j = Job {
            id,
            kind: kind.into(),
            state: "running".into(),
            started: crate::db::now(),
            finished: None,
            result: None,
            error: None,
        };
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= JOBS_KEPT {
            let oldest: Vec<u64> = m.values().filter(|j| j.state != "running").map(|j| j.id).collect();
            for id in oldest.into_iter().take(JOBS_KEPT / 2) {
                m.remove(&id);
            }
        }
        m.insert(id, j.clone());
        j
    }

    fn finish(&self, id: u64, r: Result<serde_json::Value, String>) {
        if let Some(j) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            j.finished = Some(crate::db::now());
            match r {
                Ok(v) => {
                    j.state = "done".into();
                    j.result = Some(v);
                }
                Err(e) => {
                    j.state = "failed".into();
                    j.error = Some(e);
                }
            }
        }
    }

    fn get(&self, id: u64) -> Option<Job> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}

/// Start re-hashing every chunk an image reaches; poll the job.
#[utoipa::path(post, path = "/api/v1/images/{image}/verify", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 202, body = Job), (status = 404, body = ErrorBody)))]
async fn verify_image(
    State(st): St,
    caller: Caller,
    ApiPath(image): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    caller.admin()?;
    let row = st.inv.resolve(&image).await?;
    let job = st.jobs.start("verify");
    let (st2, id, r) = (st.clone(), job.id, format!("{}@{}", row.name, row.version));
    tokio::spawn(async move {
        let res = st2
            .inv
            .verify(Some(&r))
            .await
            .map_err(|e| e.to_string())
            .and_then(|rep| serde_json::to_value(rep).map_err(|e| e.to_string()));
        st2.jobs.finish(id, res);
    });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Start garbage collection; poll the job.
#[utoipa::path(post, path = "/api/v1/gc", tag = "images", responses((status = 202, body = Job), (status = 401, body = ErrorBody)))]
async fn start_gc(State(st): St, caller: Caller) -> ApiResult<(StatusCode, Json<Job>)> {
    caller.admin()?;
    let job = st.jobs.start("gc");
    let (st2, id) = (st.clone(), job.id);
    tokio::spawn(async move {
        let res = st2
            .inv
            .gc()
            .await
            .map_err(|e| e.to_string())
            .and_then(|rep| serde_json::to_value(rep).map_err(|e| e.to_string()));
        st2.jobs.finish(id, res);
    });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A job's state.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "images", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(State(st): St, caller: Caller, ApiPath(id): ApiPath<u64>) -> ApiResult<Json<Job>> {
    caller.admin()?;
    st.jobs.get(id).map(Json).ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

// ---------------------------------------------------------------- nodes

/// A node to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCreate {
    /// Node name (letters, digits, `.`, `_`, `-`).
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: String,
    /// standby (default) or compute.
    #[schema(pattern = "^(standby|compute)$")]
    pub role: Option<String>,
    /// Image reference to deploy.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")]
    pub image: Option<String>,
    /// MAC addresses (unicast; `:`, `-` or no separators).
    #[serde(default)]
    #[schema(value_type = Vec<MacAddr>)]
    pub macs: Vec<String>,
    /// IP addresses (static reservations).
    #[serde(default)]
    #[schema(value_type = Vec<IpAddress>)]
    pub ips: Vec<String>,
}

/// A unicast MAC address.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9A-Fa-f][02468aceACE]([:-]?[0-9A-Fa-f]{2}){5}$")]
pub struct MacAddr(#[allow(dead_code)] String);

/// An IP address a node can hold (IPv4 or IPv6; not unspecified, not multicast).
#[derive(ToSchema)]
#[schema(format = Ipv4, pattern = r"^(?!0\.0\.0\.0$)(?!2(2[4-9]|3[0-9])\.)[0-9a-fA-F.:]+$")]
pub struct IpAddress(#[allow(dead_code)] String);

/// Fields to change on a node; absent fields stay.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    /// standby or compute.
    #[schema(pattern = "^(standby|compute)$")]
    pub role: Option<String>,
    /// Image reference; an empty string clears it.
    #[schema(pattern = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?)?$")]
    pub image: Option<String>,
    /// New state.
    #[schema(pattern = "^(discovered|assigned|deploying|deployed|failed)$")]
    pub state: Option<String>,
    /// Replace the MACs.
    #[schema(value_type = Option<Vec<MacAddr>>)]
    pub macs: Option<Vec<String>>,
    /// Replace the IPs.
    #[schema(value_type = Option<Vec<IpAddress>>)]
    pub ips: Option<Vec<String>>,
}

async fn check_image_ref(st: &AppState, image: Option<String>) -> ApiResult<Option<String>> {
    match image.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(r) => match st.inv.resolve(&r).await {
            Ok(_) => Ok(Some(r)),
            Err(crate::images::ImageError::NotFound(_) | crate::images::ImageError::BadName(_)) => {
                Err(ApiError::not_found(format!("no image {r:?}")))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// List nodes.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(PageQuery), responses((status = 200, body = Page<Node>)))]
async fn list_nodes(State(st): St, caller: Caller, ApiQuery(q): ApiQuery<PageQuery>) -> ApiResult<Json<Page<Node>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = q.get()?;
    let (items, total) = st.inv.db.nodes(limit, offset).await?;
    Ok(Json(Page { items, total, limit, offset }))
}

/// Create a node.
#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = NodeCreate,
    responses((status = 201, body = Node), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_node(
    State(st): St,
    caller: Caller,
    ApiJson(b): ApiJson<NodeCreate>,
) -> ApiResult<(StatusCode, Json<Node>)> {
    caller.admin()?;
    crate::images::check_name(&b.name).map_err(|_| ApiError::bad_request(format!("invalid node name {:?}", b.name)))?;
    let role = b.role.unwrap_or_else(|| "standby".into());
    nodes::check_role(&role).map_err(ApiError::bad_request)?;
    let macs = nodes::normalize_list(&b.macs, nodes::normalize_mac).map_err(ApiError::bad_request)?;
    let ips = nodes::normalize_list(&b.ips, nodes::normalize_ip).map_err(ApiError::bad_request)?;
    if b.image.as_deref() == Some("") {
        return Err(ApiError::bad_request("image must not be empty (omit it for none)"));
    }
    let image = check_image_ref(&st, b.image).await?;
    let state = if image.is_some() { "assigned" } else { "discovered" };
    let n = Node {
        name: b.name,
        role,
        image,
        state: state.into(),
        macs,
        ips,
        created: String::new(),
        updated: String::new(),
    };
    Ok((StatusCode::CREATED, Json(st.inv.db.create_node(&n).await?)))
}

/// One node.
#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn get_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Node>> {
    caller.read(st.cfg.public_reads)?;
    st.inv.db.node(&name).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("no node {name}")))
}

/// Change a node.
#[utoipa::path(patch, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")), request_body = NodePatch,
    responses((status = 200, body = Node), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_node(
    State(st): St,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(p): ApiJson<NodePatch>,
) -> ApiResult<Json<Node>> {
    caller.admin()?;
    let mut n = st.inv.db.node(&name).await?.ok_or_else(|| ApiError::not_found(format!("no node {name}")))?;
    if let Some(r) = p.role {
        nodes::check_role(&r).map_err(ApiError::bad_request)?;
        n.role = r;
    }
    if let Some(i) = p.image {
        n.image = check_image_ref(&st, Some(i)).await?;
        if n.image.is_some() && n.state == "discovered" {
            n.state = "assigned".into();
        }
    }
    if let Some(s) = p.state {
        nodes::check_state(&s).map_err(ApiError::bad_request)?;
        n.state = s;
    }
    if let Some(m) = p.macs {
        n.macs = nodes::normalize_list(&m, nodes::normalize_mac).map_err(ApiError::bad_request)?;
    }
    if let Some(i) = p.ips {
        n.ips = nodes::normalize_list(&i, nodes::normalize_ip).map_err(ApiError::bad_request)?;
    }
    Ok(Json(st.inv.db.update_node(&n).await?))
}

/// Delete a node.
#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<StatusCode> {
    caller.admin()?;
    st.inv.db.delete_node(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mark a node for deployment again (state assigned; its next network boot installs).
#[utoipa::path(post, path = "/api/v1/nodes/{name}/redeploy", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Node), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn redeploy_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Node>> {
    caller.admin()?;
    let mut n = st.inv.db.node(&name).await?.ok_or_else(|| ApiError::not_found(format!("no node {name}")))?;
    if n.image.is_none() {
        return Err(ApiError::conflict(format!("node {name} has no image to deploy")));
    }
    n.state = "assigned".into();
    Ok(Json(st.inv.db.update_node(&n).await?))
}

// ---------------------------------------------------------------- deployments

/// A deployment to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentCreate {
    /// Target node.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub node: String,
    /// Image reference; defaults to the node's image.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")]
    pub image: Option<String>,
}

/// A created deployment and its token (shown only here).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DeploymentCreated {
    /// The deployment.
    pub deployment: Deployment,
    /// Bearer token for the deploy client, scoped to this node and image.
    pub token: String,
}

/// Create a deployment and its scoped token.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = DeploymentCreate,
    responses((status = 201, body = DeploymentCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_deployment(
    State(st): St,
    caller: Caller,
    ApiJson(b): ApiJson<DeploymentCreate>,
) -> ApiResult<(StatusCode, Json<DeploymentCreated>)> {
    caller.admin()?;
    let node = st.inv.db.node(&b.node).await?.ok_or_else(|| ApiError::not_found(format!("no node {}", b.node)))?;
    let image =
        b.image.or(node.image).ok_or_else(|| ApiError::conflict(format!("node {} has no image; name one", b.node)))?;
    let (d, token) = issue_deployment(&st, &b.node, &image, false).await?;
    Ok((StatusCode::CREATED, Json(DeploymentCreated { deployment: d, token })))
}

/// Create a deployment of `image` to `node` and its scoped token (returned once; stored hashed).
pub(crate) async fn issue_deployment(
    st: &AppState,
    node: &str,
    image: &str,
    boot: bool,
) -> ApiResult<(Deployment, String)> {
    let row = st.inv.resolve(image).await?;
    let m = st.manifest(&row).await?;
    let files = m.entries.iter().filter(|e| matches!(e.kind, crate::store::manifest::Kind::File { .. })).count() as i64;
    let token = new_token();
    let ttl = time::Duration::try_from(st.cfg.deploy_token_ttl).unwrap_or(time::Duration::DAY);
    let expires = (time::OffsetDateTime::now_utc() + ttl)
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .map_err(ApiError::internal)?;
    let label = format!("{}@{}", row.name, row.version);
    let hash = token_hash(&token).to_hex();
    let d = st
        .inv
        .db
        .create_deployment(&crate::db::NewDeployment {
            node,
            image: &label,
            manifest_id: &row.id,
            token_hash: &hash,
            expires: &expires,
            bytes_total: m.total_bytes() as i64,
            files_total: files,
            boot,
        })
        .await?;
    Ok((d, token))
}

/// Filter for deployments.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeploymentQuery {
    /// Only this node.
    pub node: Option<String>,
    /// Items per page, 1 to 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// List deployments, newest first.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(DeploymentQuery), responses((status = 200, body = Page<Deployment>)))]
async fn list_deployments(
    State(st): St,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeploymentQuery>,
) -> ApiResult<Json<Page<Deployment>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = PageQuery { limit: q.limit, offset: q.offset }.get()?;
    let (items, total) = st.inv.db.deployments(q.node.as_deref(), limit, offset).await?;
    Ok(Json(Page { items, total, limit, offset }))
}

/// One deployment (the admin, or that deployment's own token).
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", params(("id" = i64, Path)),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody)))]
async fn get_deployment(State(st): St, caller: Caller, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<Deployment>> {
    match &caller {
        Caller::Deploy(d) if d.id == id => {}
        _ => caller.read(st.cfg.public_reads)?,
    }
    st.inv.db.deployment(id).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("no deployment {id}")))
}

/// Progress reported by a deploy client.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// running, done or failed.
    #[schema(pattern = "^(running|done|failed)$")]
    pub status: String,
    /// Free-text phase.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub phase: String,
    /// Bytes written so far.
    #[serde(default, deserialize_with = "de_count")]
    #[schema(minimum = 0)]
    pub bytes_done: i64,
    /// Files written so far.
    #[serde(default, deserialize_with = "de_count")]
    #[schema(minimum = 0)]
    pub files_done: i64,
    /// Failure message.
    #[schema(max_length = 4000)]
    pub error: Option<String>,
}

/// A count that JSON may spell as an integral float (`123.0`).
fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Number::deserialize(d)?;
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!("{v} is not a whole number"))),
    }
}

/// Report deploy progress (that deployment's token, or the admin).
#[utoipa::path(post, path = "/api/v1/deployments/{id}/progress", tag = "deployments", params(("id" = i64, Path)), request_body = Progress,
    responses((status = 200, body = Deployment), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn report_progress(
    State(st): St,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(p): ApiJson<Progress>,
) -> ApiResult<Json<Deployment>> {
    match &caller {
        Caller::Deploy(d) if d.id == id => {}
        Caller::Deploy(_) => return Err(ApiError::forbidden("this token belongs to another deployment")),
        _ => caller.admin()?,
    }
    if !matches!(p.status.as_str(), "running" | "done" | "failed") {
        return Err(ApiError::bad_request("status must be running, done or failed"));
    }
    if p.bytes_done < 0 || p.files_done < 0 || p.phase.len() > 200 || p.error.as_ref().is_some_and(|e| e.len() > 4000) {
        return Err(ApiError::bad_request("counters must not be negative; phase and error must be short"));
    }
    Ok(Json(
        st.inv.db.deployment_progress(id, &p.status, &p.phase, p.bytes_done, p.files_done, p.error.as_deref()).await?,
    ))
}

// ---------------------------------------------------------------- events, whoami

/// Filter for events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this node.
    pub node: Option<String>,
    /// Only this kind, or kinds starting with it when it ends in `.`.
    pub kind: Option<String>,
    /// Not before (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Before (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Items per page, 1 to 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

fn check_time(t: &Option<String>) -> ApiResult<()> {
    if let Some(t) = t
        && time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_err()
    {
        return Err(ApiError::bad_request(format!("{t:?} is not an RFC 3339 time")));
    }
    Ok(())
}

/// List events, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery), responses((status = 200, body = Page<Event>)))]
async fn list_events(State(st): St, caller: Caller, ApiQuery(q): ApiQuery<EventQuery>) -> ApiResult<Json<Page<Event>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = PageQuery { limit: q.limit, offset: q.offset }.get()?;
    check_time(&q.since)?;
    check_time(&q.until)?;
    // Empty query values mean "no filter".
    let some = |v: Option<String>| v.filter(|s| !s.is_empty());
    let f = EventFilter { node: some(q.node), kind: some(q.kind), since: q.since, until: q.until };
    let (items, total) = st.inv.db.events(&f, limit, offset).await?;
    Ok(Json(Page { items, total, limit, offset }))
}

/// Who the caller is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// admin, deploy or anonymous.
    pub role: String,
    /// The deployment, for a deployment token.
    pub deployment: Option<Deployment>,
}

/// Identify the caller's token.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system", security((), ("bearer" = [])), responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller {
        Caller::Admin => WhoAmI { role: "admin".into(), deployment: None },
        Caller::Deploy(d) => WhoAmI { role: "deploy".into(), deployment: Some(*d) },
        Caller::Anonymous => WhoAmI { role: "anonymous".into(), deployment: None },
    })
}

// ---------------------------------------------------------------- DHCP: collection, leases

/// Open or close the MAC collection window.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    /// Minutes to collect from now; 0 closes the window.
    #[schema(minimum = 0, maximum = 10080)]
    pub minutes: i64,
}

/// The collection window.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CollectState {
    /// Whether collection is on.
    pub collecting: bool,
    /// Until when (RFC 3339), when on.
    pub until: String,
}

/// Machines seen while collecting.
#[utoipa::path(get, path = "/api/v1/discovered", tag = "nodes", responses((status = 200, body = Vec<crate::db::Discovered>)))]
async fn list_discovered(State(st): St, caller: Caller) -> ApiResult<Json<Vec<crate::db::Discovered>>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.db.discovered().await?))
}

/// Open (minutes > 0) or close (0) MAC collection.
#[utoipa::path(post, path = "/api/v1/discovered/collect", tag = "nodes", request_body = Collect, responses((status = 200, body = CollectState)))]
async fn collect(State(st): St, caller: Caller, ApiJson(b): ApiJson<Collect>) -> ApiResult<Json<CollectState>> {
    caller.admin()?;
    if !(0..=10080).contains(&b.minutes) {
        return Err(ApiError::bad_request("minutes must be between 0 and 10080 (a week)"));
    }
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::minutes(b.minutes);
    st.inv.db.set_collect_until(if b.minutes == 0 { 0 } else { until.unix_timestamp() }).await?;
    let msg = if b.minutes == 0 {
        "MAC collection closed".to_string()
    } else {
        format!("MAC collection open for {} minute(s)", b.minutes)
    };
    st.inv.db.event(None, "dhcp.collect", &msg).await?;
    let until = until.format(&time::format_description::well_known::Rfc3339).map_err(ApiError::internal)?;
    Ok(Json(CollectState { collecting: b.minutes > 0, until }))
}

/// DHCP leases.
#[utoipa::path(get, path = "/api/v1/leases", tag = "nodes", responses((status = 200, body = Vec<crate::db::LeaseRow>)))]
async fn list_leases(State(st): St, caller: Caller) -> ApiResult<Json<Vec<crate::db::LeaseRow>>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.db.leases().await?))
}
