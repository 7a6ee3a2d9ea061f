//! REST handlers: images, jobs, nodes, deployments, events, DHCP collection and leases.
//! Each handler checks who is calling, then calls the inventory, which owns every rule.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::inventory::EventQuery as Filter;
use crate::wire::{
    CallerRole, Collect, CollectState, Deleted, Deployment, DeploymentCreate, DeploymentCreated, Discovered, Event,
    Hardware, HardwareReport, Image, ImageDetail, ImageLayout, Job, JobKind, JobState, Lease, NetworkPlan, Node,
    NodeCreate, NodeNetwork, NodePatch, NodePlan, Page, Progress, WhoAmI,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type St = State<Arc<AppState>>;

/// All routes of this module.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_images))
        .routes(routes!(show_image, delete_image))
        .routes(routes!(verify_image))
        .routes(routes!(get_layout, put_layout, delete_layout))
        .routes(routes!(node_plan))
        .routes(routes!(start_gc))
        .routes(routes!(get_job))
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(get_node, update_node, delete_node))
        .routes(routes!(redeploy_node))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment))
        .routes(routes!(report_progress))
        .routes(routes!(report_hardware))
        .routes(routes!(node_hardware))
        .routes(routes!(get_network, put_network))
        .routes(routes!(propose_network))
        .routes(routes!(deployment_network))
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
    fn get(&self) -> (i64, i64) {
        (self.limit.unwrap_or(100), self.offset.unwrap_or(0))
    }
}

// ---------------------------------------------------------------- images

/// List image versions.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(PageQuery),
    responses((status = 200, body = Page<Image>), (status = 401, body = ErrorBody)))]
async fn list_images(State(st): St, caller: Caller, ApiQuery(q): ApiQuery<PageQuery>) -> ApiResult<Json<Page<Image>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = q.get();
    Ok(Json(st.inv.images_page(limit, offset).await?))
}

/// Show one image: `NAME`, `NAME@N` or a manifest id (prefix of 8+ hex digits).
#[utoipa::path(get, path = "/api/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 200, body = ImageDetail), (status = 404, body = ErrorBody)))]
async fn show_image(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<ImageDetail>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.image_detail(&image).await?.0))
}

/// Delete `NAME` (all versions) or `NAME@N`; space is freed by gc.
#[utoipa::path(delete, path = "/api/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "NAME or NAME@N", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[1-9][0-9]{0,8})?$")),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_image(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<Deleted>> {
    caller.admin()?;
    Ok(Json(Deleted { deleted: st.inv.delete(&image).await? }))
}

/// An image's disk layout (the recorded one, or the default it deploys with): the admin,
/// or a deployment token of that image (the agent plans it onto the node's disks).
#[utoipa::path(get, path = "/api/v1/images/{image}/layout", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")),
    responses((status = 200, body = ImageLayout), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_layout(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<ImageLayout>> {
    let row = st.inv.resolve(&image).await?;
    caller.image_content(&row.id)?;
    Ok(Json(st.inv.image_layout(&row.label()).await?))
}

/// Set an image version's disk layout (checked: references, sizes, one `/`).
#[utoipa::path(put, path = "/api/v1/images/{image}/layout", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")),
    request_body(content = Object, description = "a layout document (see `understudy images layout`)"),
    responses((status = 200, body = ImageLayout), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_layout(
    State(st): St,
    caller: Caller,
    ApiPath(image): ApiPath<String>,
    ApiJson(layout): ApiJson<crate::layout::doc::Layout>,
) -> ApiResult<Json<ImageLayout>> {
    caller.admin()?;
    Ok(Json(st.inv.set_image_layout(&image, Some(layout)).await?))
}

/// Clear an image version's disk layout: it deploys with the default layout again.
#[utoipa::path(delete, path = "/api/v1/images/{image}/layout", tag = "images",
    params(("image" = String, Path, description = "NAME, NAME@N or id")),
    responses((status = 200, body = ImageLayout), (status = 404, body = ErrorBody)))]
async fn delete_layout(State(st): St, caller: Caller, ApiPath(image): ApiPath<String>) -> ApiResult<Json<ImageLayout>> {
    caller.admin()?;
    Ok(Json(st.inv.set_image_layout(&image, None).await?))
}

/// Jobs of this server process.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Job>>,
    /// The newest verify job of each image version (`NAME@N`), for the console's images page.
    verifies: Mutex<HashMap<String, u64>>,
}

const JOBS_KEPT: usize = 1000;

impl Jobs {
    fn start(&self, kind: JobKind) -> Job {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let j = Job {
            id,
            kind,
            state: JobState::Running,
            started: crate::db::now(),
            finished: None,
            result: None,
            error: None,
        };
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= JOBS_KEPT {
            let oldest: Vec<u64> = m.values().filter(|j| j.state != JobState::Running).map(|j| j.id).collect();
            for id in oldest.into_iter().take(JOBS_KEPT / 2) {
                m.remove(&id);
            }
        }
        m.insert(id, j.clone());
        j
    }

    fn finish<T: Serialize, E: std::fmt::Display>(&self, id: u64, r: Result<T, E>) {
        if let Some(j) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            j.finished = Some(crate::db::now());
            match r.map_err(|e| e.to_string()).and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string())) {
                Ok(v) => {
                    j.state = JobState::Done;
                    j.result = Some(v);
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(e);
                }
            }
        }
    }

    fn get(&self, id: u64) -> Option<Job> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// The newest verify job of image version `label` since the server started.
    pub(crate) fn verify_of(&self, label: &str) -> Option<Job> {
        let id = *self.verifies.lock().unwrap_or_else(|e| e.into_inner()).get(label)?;
        self.get(id)
    }

    /// The `n` most recent jobs, newest first (the console's jobs table).
    pub(crate) fn recent(&self, n: usize) -> Vec<Job> {
        let mut v: Vec<Job> = self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.id));
        v.truncate(n);
        v
    }
}

/// Start a verify job of one image version (`label` is `NAME@N`); the API and the console
/// both start it here.
pub(crate) fn spawn_verify(st: &Arc<AppState>, label: String) -> Job {
    let job = st.jobs.start(JobKind::Verify);
    st.jobs.verifies.lock().unwrap_or_else(|e| e.into_inner()).insert(label.clone(), job.id);
    let (st2, id) = (st.clone(), job.id);
    tokio::spawn(async move {
        let res = st2.inv.verify(Some(&label)).await;
        st2.jobs.finish(id, res);
    });
    job
}

/// Start a garbage-collection job.
pub(crate) fn spawn_gc(st: &Arc<AppState>) -> Job {
    let job = st.jobs.start(JobKind::Gc);
    let (st2, id) = (st.clone(), job.id);
    tokio::spawn(async move {
        let res = st2.inv.gc().await;
        st2.jobs.finish(id, res);
    });
    job
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
    Ok((StatusCode::ACCEPTED, Json(spawn_verify(&st, row.label()))))
}

/// Start garbage collection; poll the job.
#[utoipa::path(post, path = "/api/v1/gc", tag = "images", responses((status = 202, body = Job), (status = 401, body = ErrorBody)))]
async fn start_gc(State(st): St, caller: Caller) -> ApiResult<(StatusCode, Json<Job>)> {
    caller.admin()?;
    Ok((StatusCode::ACCEPTED, Json(spawn_gc(&st))))
}

/// A job's state.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "images", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(State(st): St, caller: Caller, ApiPath(id): ApiPath<u64>) -> ApiResult<Json<Job>> {
    caller.admin()?;
    st.jobs.get(id).map(Json).ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

// ---------------------------------------------------------------- nodes

/// List nodes.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(PageQuery), responses((status = 200, body = Page<Node>)))]
async fn list_nodes(State(st): St, caller: Caller, ApiQuery(q): ApiQuery<PageQuery>) -> ApiResult<Json<Page<Node>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = q.get();
    Ok(Json(st.inv.nodes(limit, offset).await?))
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
    Ok((StatusCode::CREATED, Json(st.inv.create_node(b).await?)))
}

/// One node.
#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn get_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Node>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.node(&name).await?))
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
    Ok(Json(st.inv.update_node(&name, p).await?))
}

/// Delete a node.
#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<StatusCode> {
    caller.admin()?;
    st.inv.delete_node(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mark a node for deployment again (state assigned; its next network boot installs).
#[utoipa::path(post, path = "/api/v1/nodes/{name}/redeploy", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Node), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn redeploy_node(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Node>> {
    caller.admin()?;
    Ok(Json(st.inv.redeploy(&name).await?))
}

// ---------------------------------------------------------------- deployments

/// Create a deployment and its scoped token.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body = DeploymentCreate,
    responses((status = 201, body = DeploymentCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_deployment(
    State(st): St,
    caller: Caller,
    ApiJson(b): ApiJson<DeploymentCreate>,
) -> ApiResult<(StatusCode, Json<DeploymentCreated>)> {
    caller.admin()?;
    let t = st.inv.create_deployment(b, st.cfg.deploy_token_ttl).await?;
    Ok((StatusCode::CREATED, Json(DeploymentCreated { deployment: t.deployment, token: t.token })))
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
    let (limit, offset) = PageQuery { limit: q.limit, offset: q.offset }.get();
    Ok(Json(st.inv.deployments(q.node.as_deref(), limit, offset).await?))
}

/// One deployment (the admin, or that deployment's own token).
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", params(("id" = i64, Path)),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody)))]
async fn get_deployment(State(st): St, caller: Caller, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<Deployment>> {
    match &caller {
        Caller::Deploy(d) if d.id == id => {}
        _ => caller.read(st.cfg.public_reads)?,
    }
    Ok(Json(st.inv.deployment(id).await?))
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
    Ok(Json(st.inv.report_progress(id, &p).await?))
}

/// The boot environment reports what it found (that deployment's token, or the admin):
/// kept with the node, for planning its disk layout.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/hardware", tag = "deployments", params(("id" = i64, Path)), request_body = Hardware,
    responses((status = 200, body = HardwareReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn report_hardware(
    State(st): St,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
    ApiJson(h): ApiJson<Hardware>,
) -> ApiResult<Json<HardwareReport>> {
    match &caller {
        Caller::Deploy(d) if d.id == id => {}
        Caller::Deploy(_) => return Err(ApiError::forbidden("this token belongs to another deployment")),
        _ => caller.admin()?,
    }
    let d = st.inv.deployment(id).await?;
    Ok(Json(st.inv.report_hardware(&d.node, Some(id), &h).await?))
}

/// The node's image layout planned onto its reported disks: what the agent will do.
#[utoipa::path(get, path = "/api/v1/nodes/{name}/plan", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = NodePlan), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn node_plan(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<NodePlan>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.node_plan(&name).await?))
}

/// Whether to probe the LAN (ARP/ND) for the addresses.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProbeQuery {
    /// Ask the LAN whether an address answers (default true); false skips it (the address
    /// is still checked against the primary, DHCP, other nodes and leases).
    pub probe: Option<bool>,
}

/// A node's network identity: its interfaces, addresses, gateways, DNS and networks' roles.
#[utoipa::path(get, path = "/api/v1/nodes/{name}/network", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = NodeNetwork), (status = 404, body = ErrorBody)))]
async fn get_network(State(st): St, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<Json<NodeNetwork>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.network(&name).await?))
}

/// Set a node's network identity (replaces it). Refused: an address the primary holds (its
/// own, a VIP, the DHCP server's or pool's), one another node holds or is leased to another
/// machine, one answering on the LAN from a MAC that is not the node's.
#[utoipa::path(put, path = "/api/v1/nodes/{name}/network", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ProbeQuery),
    request_body = NodeNetwork,
    responses((status = 200, body = NodeNetwork), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn put_network(
    State(st): St,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProbeQuery>,
    ApiJson(n): ApiJson<NodeNetwork>,
) -> ApiResult<Json<NodeNetwork>> {
    caller.admin()?;
    Ok(Json(st.inv.set_network(&name, n, q.probe.unwrap_or(true)).await?))
}

/// The network identity proposed for a node from the primary's own (same networks, the next
/// free address on each); nothing is changed.
#[utoipa::path(get, path = "/api/v1/nodes/{name}/network/proposal", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ProbeQuery),
    responses((status = 200, body = NodeNetwork), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn propose_network(
    State(st): St,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProbeQuery>,
) -> ApiResult<Json<NodeNetwork>> {
    // Probing sends packets on the LAN: only the admin asks for it.
    caller.admin()?;
    Ok(Json(st.inv.propose_network(&name, q.probe.unwrap_or(true)).await?))
}

/// What the deployment's agent rewrites in the written root: the primary's and the node's
/// network identities, the VIPs, and the standby's failover configuration with its key and
/// the token its `[sync]` reads the primary's images with (that deployment's token, or the
/// admin: another deployment's token is refused).
#[utoipa::path(get, path = "/api/v1/deployments/{id}/network", tag = "deployments", params(("id" = i64, Path)),
    responses((status = 200, body = NetworkPlan), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn deployment_network(State(st): St, caller: Caller, ApiPath(id): ApiPath<i64>) -> ApiResult<Json<NetworkPlan>> {
    match &caller {
        Caller::Deploy(d) if d.id == id => {}
        Caller::Deploy(_) => return Err(ApiError::forbidden("this token belongs to another deployment")),
        _ => caller.admin()?,
    }
    Ok(Json(st.inv.network_plan(id).await?))
}

/// A node's hardware as its boot environment last reported it.
#[utoipa::path(get, path = "/api/v1/nodes/{name}/hardware", tag = "nodes", params(("name" = String, Path, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = HardwareReport), (status = 404, body = ErrorBody)))]
async fn node_hardware(
    State(st): St,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<HardwareReport>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.hardware(&name).await?))
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

/// List events, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery), responses((status = 200, body = Page<Event>)))]
async fn list_events(State(st): St, caller: Caller, ApiQuery(q): ApiQuery<EventQuery>) -> ApiResult<Json<Page<Event>>> {
    caller.read(st.cfg.public_reads)?;
    let (limit, offset) = PageQuery { limit: q.limit, offset: q.offset }.get();
    let f = Filter { node: q.node, kind: q.kind, since: q.since, until: q.until };
    Ok(Json(st.inv.events(&f, limit, offset).await?))
}

/// Identify the caller's token.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system", security((), ("bearer" = [])), responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller {
        Caller::Admin => WhoAmI { role: CallerRole::Admin, deployment: None },
        Caller::Deploy(d) => WhoAmI { role: CallerRole::Deploy, deployment: Some(*d) },
        Caller::Follower => WhoAmI { role: CallerRole::Follower, deployment: None },
        Caller::Anonymous => WhoAmI { role: CallerRole::Anonymous, deployment: None },
    })
}

// ---------------------------------------------------------------- DHCP: collection, leases

/// Machines seen while collecting.
#[utoipa::path(get, path = "/api/v1/discovered", tag = "nodes", responses((status = 200, body = Vec<Discovered>)))]
async fn list_discovered(State(st): St, caller: Caller) -> ApiResult<Json<Vec<Discovered>>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.discovered().await?))
}

/// Open (minutes > 0) or close (0) MAC collection.
#[utoipa::path(post, path = "/api/v1/discovered/collect", tag = "nodes", request_body = Collect, responses((status = 200, body = CollectState)))]
async fn collect(State(st): St, caller: Caller, ApiJson(b): ApiJson<Collect>) -> ApiResult<Json<CollectState>> {
    caller.admin()?;
    Ok(Json(st.inv.collect(b.minutes).await?))
}

/// DHCP leases.
#[utoipa::path(get, path = "/api/v1/leases", tag = "nodes", responses((status = 200, body = Vec<Lease>)))]
async fn list_leases(State(st): St, caller: Caller) -> ApiResult<Json<Vec<Lease>>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(st.inv.leases().await?))
}
