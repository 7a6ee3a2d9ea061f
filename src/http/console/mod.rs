//! The admin's web console at `/`, on the API's listener: server-side pages (maud), assets
//! compiled into the binary, a session cookie after logging in with the admin token, a
//! CSRF token in every form, and a server-sent-events stream of the event log that the
//! page script uses to refresh its tables in place (the pages are whole without it).
//!
//! The console calls the same domain layer as the API ([`crate::inventory`], the
//! failover [`crate::failover::Handle`], the API's job runner); it decides nothing itself.

pub mod layout_view;
pub mod node_edit;
pub mod pages;
pub mod rate;
pub mod session;
pub mod standby;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::config::HttpConfig;
use crate::failover::AdminRequest;
use crate::inventory::{EventQuery, InventoryError};
use crate::wire::{NodeCreate, NodeState};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use pages::{Ctx, Page};
use serde::Deserialize;
use session::{COOKIE, Flash, LOGIN_COOKIE, SESSION_TTL, Sessions, cookie_value, same_secret, set_cookie};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type St = State<Arc<AppState>>;

/// The login page.
pub const LOGIN_PATH: &str = "/console/login";
/// How often the event stream looks for new events.
const EVENT_POLL: Duration = Duration::from_secs(1);
/// How often the event stream tells failover pages to refresh.
const FAILOVER_TICKS: u32 = 3;
/// Events shown on the overview.
const OVERVIEW_EVENTS: i64 = 15;
/// How long the login form's CSRF cookie lives.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's own state: the sessions.
#[derive(Default)]
pub struct Console {
    sessions: Mutex<Sessions>,
    /// Running deployments' progress as the console read it (for rate and time left).
    samples: Mutex<rate::Samples>,
    /// The wizard's capture of this host's root, if one ran since the server started.
    pub(crate) capture: Mutex<Option<standby::CaptureRun>>,
}

impl Console {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sample the running deployments among `deps` and give each its rate.
    pub(crate) fn rates(&self, deps: &[crate::wire::Deployment]) -> std::collections::HashMap<i64, rate::Rate> {
        let now = Instant::now();
        let unix = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::collections::HashMap::new();
        for d in deps.iter().filter(|d| d.status == crate::wire::DeploymentStatus::Running) {
            s.record(d.id, now, d.bytes_done);
            let since = d.started.as_deref().and_then(|t| rate::since(t, unix));
            if let Some(r) = s.rate(d.id, now, d.bytes_done, d.bytes_total, since) {
                out.insert(d.id, r);
            }
        }
        out
    }
}

/// The console's routes (none when `[http] console = false`).
pub fn routes(cfg: &HttpConfig) -> Router<Arc<AppState>> {
    if !cfg.console {
        return Router::new();
    }
    Router::new()
        .route("/", get(overview))
        .route(LOGIN_PATH, get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/images", get(images_page))
        .route("/console/images/verify", post(verify))
        .route("/console/gc", post(gc))
        .route("/console/nodes", get(nodes_page))
        .route("/console/nodes/add", post(add_node))
        .route("/console/nodes/redeploy", post(redeploy))
        .route("/console/collect", post(collect))
        .route("/console/discovered/assign", post(assign))
        .route("/console/nodes/edit", get(node_edit::page).post(node_edit::save))
        .route("/console/nodes/propose", post(node_edit::propose))
        .route("/console/standby", get(standby::page))
        .route("/console/standby/image", post(standby::image))
        .route("/console/standby/capture", post(standby::capture))
        .route("/console/standby/collect", post(standby::collect))
        .route("/console/standby/node", post(standby::node))
        .route("/console/standby/network", post(standby::network))
        .route("/console/standby/redeploy", post(standby::redeploy))
        .route("/console/deployments", get(deployments_page))
        .route("/console/failover", get(failover_page))
        .route("/console/failover/confirm", get(confirm_switchover))
        .route("/console/failover/{action}", post(switchover))
        .route("/console/events", get(events))
        .route("/console/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/console/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .layer(axum::Extension(Arc::new(Console::default())))
        .layer(axum::middleware::from_fn(security_headers))
}

fn asset(ty: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// Headers on every console answer: nothing from elsewhere runs or frames it, pages are
/// not cached (they show live state and carry the CSRF token).
async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cache-control", "no-store");
    r
}

/// Reached over https (through a TLS-terminating proxy): the cookies get `Secure`.
fn over_https(h: &HeaderMap) -> bool {
    h.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| cookie_value(v, name))
}

pub(crate) fn html(status: StatusCode, m: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], m.into_string()).into_response()
}

fn redirect_with_cookie(to: &str, cookies: &[String]) -> Response {
    let mut r = Redirect::to(to).into_response();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A failure as a page: the API's status and message (internal details stay in the log).
pub(crate) fn failure(e: InventoryError) -> Response {
    let a = ApiError::from(e);
    html(a.status, pages::refused("That did not work", &a.message))
}

/// A logged-in admin's request: the session id, its CSRF token and the pending message.
pub struct Admin {
    console: Arc<Console>,
    id: String,
    csrf: String,
    flash: Option<Flash>,
}

impl Admin {
    pub(crate) fn ctx(&self) -> Ctx {
        Ctx { csrf: self.csrf.clone(), flash: self.flash.clone() }
    }

    /// Leave a message for the next page and go there.
    fn done(&self, to: Page, r: Result<String, String>) -> Response {
        self.done_at(to.path(), r)
    }

    /// Leave a message for the next page and go to `path` (a console path with its query).
    pub(crate) fn done_at(&self, path: &str, r: Result<String, String>) -> Response {
        let flash = match r {
            Ok(text) => Flash { error: false, text },
            Err(text) => Flash { error: true, text },
        };
        if let Some(s) = self.console.sessions().get(&self.id, Instant::now()) {
            s.flash = Some(flash);
        }
        Redirect::to(path).into_response()
    }
}

fn console_of(parts: &Parts) -> Option<Arc<Console>> {
    parts.extensions.get::<Arc<Console>>().cloned()
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let Some(console) = console_of(parts) else {
            return Err(ApiError::internal("console state missing").into_response());
        };
        let found = cookie(&parts.headers, COOKIE).and_then(|id| {
            let mut s = console.sessions();
            let sess = s.get(id, Instant::now())?;
            Some((id.to_string(), sess.csrf.clone(), sess.flash.take()))
        });
        match found {
            Some((id, csrf, flash)) => Ok(Admin { console, id, csrf, flash }),
            None => Err(Redirect::to(LOGIN_PATH).into_response()),
        }
    }
}

/// A form posted by a logged-in admin, its CSRF token checked before anything else.
pub struct Posted<T>(pub Admin, pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<AppState>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let admin = Admin::from_request_parts(&mut parts, st).await?;
        let body =
            Bytes::from_request(Request::from_parts(parts, body), st).await.map_err(IntoResponse::into_response)?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let sent = pairs.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        if sent.is_empty() || !same_secret(sent, &admin.csrf) {
            return Err(html(
                StatusCode::FORBIDDEN,
                pages::refused(
                    "Form refused",
                    "This form did not carry this session's CSRF token. Go back, reload the page and try again.",
                ),
            ));
        }
        let form = serde_urlencoded::from_bytes(&body).map_err(|e| {
            html(StatusCode::BAD_REQUEST, pages::refused("Form refused", &format!("The form is malformed: {e}")))
        })?;
        Ok(Posted(admin, form))
    }
}

// ---------------------------------------------------------------- login, logout

async fn login_page(headers: HeaderMap, parts: axum::Extension<Arc<Console>>) -> Response {
    if cookie(&headers, COOKIE).is_some_and(|id| parts.sessions().get(id, Instant::now()).is_some()) {
        return Redirect::to(Page::Overview.path()).into_response();
    }
    let csrf = crate::inventory::tokens::new_token();
    let mut r = html(StatusCode::OK, pages::login(&csrf, None));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &csrf, LOGIN_FORM_TTL, over_https(&headers))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(State(st): St, headers: HeaderMap, console: axum::Extension<Arc<Console>>, body: Bytes) -> Response {
    let f: LoginForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return html(StatusCode::BAD_REQUEST, pages::refused("Form refused", &format!("malformed: {e}"))),
    };
    // The login form's token is the one its page set as a cookie (a page elsewhere
    // cannot read it, so it cannot post this form for the admin's browser).
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if f.csrf.is_empty() || expected.is_empty() || !same_secret(&f.csrf, expected) {
        return html(
            StatusCode::FORBIDDEN,
            pages::refused(
                "Form refused",
                "The login form has expired or came from elsewhere. Open the login page again.",
            ),
        );
    }
    let again = |status, why: &str| html(status, pages::login(&f.csrf, Some(why)));
    let token = f.token.trim();
    if token.is_empty() || token.len() > 256 {
        return again(StatusCode::UNAUTHORIZED, "Enter the admin token.");
    }
    match Caller::from_token(&st, token).await {
        Ok(Caller::Admin) => {
            let (id, _) = console.sessions().create(Instant::now());
            let secure = over_https(&headers);
            tracing::info!("console: admin logged in");
            redirect_with_cookie(
                Page::Overview.path(),
                &[set_cookie(COOKIE, &id, SESSION_TTL, secure), set_cookie(LOGIN_COOKIE, "", Duration::ZERO, secure)],
            )
        }
        Ok(Caller::Deploy(_)) => {
            again(StatusCode::FORBIDDEN, "A deployment token cannot open the console; log in with the admin token.")
        }
        Ok(Caller::Follower) => {
            again(StatusCode::FORBIDDEN, "The sync token cannot open the console; log in with the admin token.")
        }
        Ok(Caller::Anonymous) | Err(_) => again(StatusCode::UNAUTHORIZED, "That is not the admin token."),
    }
}

#[derive(Deserialize)]
struct Empty {}

async fn logout(headers: HeaderMap, Posted(admin, _): Posted<Empty>) -> Response {
    admin.console.sessions().remove(&admin.id);
    redirect_with_cookie(LOGIN_PATH, &[set_cookie(COOKIE, "", Duration::ZERO, over_https(&headers))])
}

// ---------------------------------------------------------------- pages

async fn overview(State(st): St, admin: Admin) -> Response {
    let load = async {
        let nodes = st.inv.nodes(1000, 0).await?;
        let mut node_states = Vec::new();
        for s in NodeState::ALL {
            let n = nodes.items.iter().filter(|n| n.state == *s).count();
            if n > 0 {
                node_states.push((*s, n));
            }
        }
        Ok::<_, InventoryError>(pages::Overview {
            failover: st.failover.as_ref().map(|h| h.status()),
            node_states,
            nodes_total: nodes.total,
            collecting: st.inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await?,
            running: st.inv.running_deployments().await?,
            events: st.inv.events(&EventQuery::default(), OVERVIEW_EVENTS, 0).await?.items,
            standbys: standby_deployments(&st, &nodes.items).await?,
            sync: st.sync.as_ref().map(|h| h.report()).unwrap_or_default(),
        })
    };
    match load.await {
        Ok(o) => html(StatusCode::OK, pages::overview(&admin.ctx(), &o)),
        Err(e) => failure(e),
    }
}

/// Each standby node with the deployment it runs: its newest one that finished (done).
async fn standby_deployments(
    st: &AppState,
    nodes: &[crate::wire::Node],
) -> Result<Vec<(crate::wire::Node, Option<crate::wire::Deployment>)>, InventoryError> {
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n.role == crate::wire::Role::Standby) {
        let ds = st.inv.deployments(Some(&n.name), 100, 0).await?.items;
        let done = ds.into_iter().filter(|d| d.status == crate::wire::DeploymentStatus::Done).max_by_key(|d| d.id);
        out.push((n.clone(), done));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct LayoutQuery {
    #[serde(default)]
    layout: String,
}

async fn images_page(State(st): St, admin: Admin, Query(q): Query<LayoutQuery>) -> Response {
    let p = match st.inv.images_page(1000, 0).await {
        Ok(p) => p,
        Err(e) => return failure(e),
    };
    let mut images = p.items;
    images.sort_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)));
    let verifies = images.iter().filter_map(|i| Some((i.label(), st.jobs.verify_of(&i.label())?))).collect();
    // The version asked for, else the newest of the first name.
    let pick = if q.layout.is_empty() { images.first().map(|i| i.label()) } else { Some(q.layout.clone()) };
    let layout = match pick {
        Some(l) => Some(st.inv.image_layout(&l).await.map_err(|e| ApiError::from(e).message)),
        None => None,
    };
    let d = pages::Images {
        images,
        jobs: st.jobs.recent(20),
        verifies,
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
        layout,
    };
    html(StatusCode::OK, pages::images(&admin.ctx(), &d))
}

async fn nodes_page(State(st): St, admin: Admin) -> Response {
    let load = async {
        let images = st.inv.images_page(1000, 0).await?.items;
        let mut image_names: Vec<String> = images.into_iter().map(|i| i.name).collect();
        image_names.sort();
        image_names.dedup();
        let nodes = st.inv.nodes(1000, 0).await?.items;
        let mut addresses = std::collections::HashMap::new();
        for n in &nodes {
            let mut a = n.ips.clone();
            for i in st.inv.network(&n.name).await?.interfaces {
                // A reserved IP and the same address with its prefix are one address.
                let host = |x: &str| x.split('/').next().unwrap_or_default().to_string();
                let fresh: Vec<String> =
                    i.addresses.into_iter().filter(|x| !a.iter().any(|y| host(y) == host(x))).collect();
                a.extend(fresh);
            }
            addresses.insert(n.name.clone(), a);
        }
        Ok::<_, InventoryError>(pages::Nodes {
            nodes,
            addresses,
            collecting: st.inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await?,
            discovered: st.inv.discovered().await?,
            image_names,
        })
    };
    match load.await {
        Ok(d) => html(StatusCode::OK, pages::nodes(&admin.ctx(), &d)),
        Err(e) => failure(e),
    }
}

async fn deployments_page(State(st): St, admin: Admin) -> Response {
    match st.inv.deployments(None, 100, 0).await {
        Ok(p) => {
            let rates = admin.console.rates(&p.items);
            html(StatusCode::OK, pages::deployments(&admin.ctx(), &p.items, &rates))
        }
        Err(e) => failure(e),
    }
}

async fn failover_page(State(st): St, admin: Admin) -> Response {
    let s = st.failover.as_ref().map(|h| h.status());
    html(StatusCode::OK, pages::failover(&admin.ctx(), s.as_ref()))
}

#[derive(Deserialize)]
struct ActionQuery {
    #[serde(default)]
    action: String,
}

async fn confirm_switchover(State(st): St, admin: Admin, Query(q): Query<ActionQuery>) -> Response {
    let Some(h) = st.failover.as_ref() else { return Redirect::to(Page::Failover.path()).into_response() };
    if pages::switchover_words(&q.action).is_none() {
        return html(StatusCode::NOT_FOUND, pages::refused("No such action", "Only takeover and release exist."));
    }
    html(StatusCode::OK, pages::confirm_switchover(&admin.ctx(), &q.action, &h.status()))
}

// ---------------------------------------------------------------- actions

pub(crate) fn said<T>(r: Result<T, InventoryError>, ok: impl FnOnce(T) -> String) -> Result<String, String> {
    r.map(ok).map_err(|e| ApiError::from(e).message)
}

#[derive(Deserialize)]
struct ImageForm {
    image: String,
}

async fn verify(State(st): St, Posted(admin, f): Posted<ImageForm>) -> Response {
    let r = match st.inv.resolve(&f.image).await {
        Ok(row) => {
            let job = super::api::spawn_verify(&st, row.label());
            Ok(format!("Verifying {} (job {}).", row.label(), job.id))
        }
        Err(e) => said::<()>(Err(e), |_| String::new()),
    };
    admin.done(Page::Images, r)
}

async fn gc(State(st): St, Posted(admin, _): Posted<Empty>) -> Response {
    let job = super::api::spawn_gc(&st);
    admin.done(Page::Images, Ok(format!("Garbage collection started (job {}).", job.id)))
}

#[derive(Deserialize)]
struct AddForm {
    name: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    image: String,
}

pub(crate) fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

async fn add_node(State(st): St, Posted(admin, f): Posted<AddForm>) -> Response {
    let b = NodeCreate {
        name: f.name.trim().to_string(),
        role: some(&f.role),
        image: some(&f.image),
        macs: some(&f.mac).into_iter().collect(),
        ips: some(&f.ip).into_iter().collect(),
    };
    let r = said(st.inv.create_node(b).await, |n| format!("Node {} added ({}).", n.name, n.state));
    admin.done(Page::Nodes, r)
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn redeploy(State(st): St, Posted(admin, f): Posted<NameForm>) -> Response {
    let r = said(st.inv.redeploy(&f.name).await, |n| {
        format!("Node {} is {}: its next network boot installs its image.", n.name, n.state)
    });
    admin.done(Page::Nodes, r)
}

#[derive(Deserialize)]
struct CollectForm {
    minutes: i64,
}

async fn collect(State(st): St, Posted(admin, f): Posted<CollectForm>) -> Response {
    let r = said(st.inv.collect(f.minutes).await, |c| {
        if c.collecting {
            format!("Collecting MAC addresses until {}.", c.until)
        } else {
            "MAC collection stopped.".to_string()
        }
    });
    admin.done(Page::Nodes, r)
}

#[derive(Deserialize)]
struct AssignForm {
    mac: String,
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    image: String,
}

/// Assign a discovered machine: the node with its MAC, then the network identity the
/// inventory proposes from the primary's (probed on the LAN), checked as it is set. A
/// refused identity takes the new node away again, as `nodes add --from-primary` does.
async fn assign(State(st): St, Posted(admin, f): Posted<AssignForm>) -> Response {
    let name = f.name.trim().to_string();
    let b = NodeCreate {
        name: name.clone(),
        role: some(&f.role),
        image: some(&f.image),
        macs: vec![f.mac.trim().to_string()],
        ips: vec![],
    };
    if let Err(e) = st.inv.create_node(b).await {
        return admin.done(Page::Nodes, said::<()>(Err(e), |_| String::new()));
    }
    let identity = async {
        let proposal = st.inv.propose_network(&name, true).await?;
        // The proposal was just probed on the LAN; setting it checks everything else again.
        st.inv.set_network(&name, proposal, false).await
    };
    let r = match identity.await {
        Ok(net) => {
            let addrs: Vec<String> = net.interfaces.iter().flat_map(|i| i.addresses.iter().cloned()).collect();
            Ok(format!(
                "Node {name} assigned to {}, addresses {}.",
                f.mac.trim(),
                if addrs.is_empty() { "none".into() } else { addrs.join(", ") }
            ))
        }
        Err(e) => {
            let why = ApiError::from(e).message;
            if let Err(e) = st.inv.delete_node(&name).await {
                tracing::warn!("console: could not take node {name} away again: {e}");
            }
            Err(format!("Node {name} not added: {why}"))
        }
    };
    admin.done(Page::Nodes, r)
}

async fn switchover(
    State(st): St,
    axum::extract::Path(action): axum::extract::Path<String>,
    Posted(admin, _): Posted<Empty>,
) -> Response {
    let req = match action.as_str() {
        "takeover" => AdminRequest::Takeover,
        "release" => AdminRequest::Release,
        _ => return html(StatusCode::NOT_FOUND, pages::refused("No such action", "Only takeover and release exist.")),
    };
    let r = match st.failover.as_ref() {
        None => Err("Failover is not running on this server.".to_string()),
        Some(h) => match h.request(req).await {
            Ok(()) => Ok(format!(
                "The failover service took the {} request; the VIP moves only with the peer's agreement.",
                req.word()
            )),
            Err(e) => Err(e.to_string()),
        },
    };
    admin.done(Page::Failover, r)
}

// ---------------------------------------------------------------- live updates

/// What the event stream's loop carries from one step to the next.
struct Feed {
    st: Arc<AppState>,
    console: Arc<Console>,
    session: String,
    last_id: i64,
    tick: u32,
    started: bool,
}

/// The newest event id (0 when the log is empty).
async fn newest_event(st: &AppState) -> Result<i64, InventoryError> {
    Ok(st.inv.events(&EventQuery::default(), 1, 0).await?.items.first().map(|e| e.id).unwrap_or(0))
}

impl Feed {
    /// The next message: `ready` first, then `change` with the kinds of new events, and
    /// `failover` every few seconds when failover runs here. `None` ends the stream (the
    /// server stops, or the session ended).
    async fn next(mut self) -> Option<(Result<SseEvent, std::convert::Infallible>, Feed)> {
        if !self.started {
            self.started = true;
            return Some((Ok(SseEvent::default().event("ready").data("live")), self));
        }
        loop {
            tokio::select! {
                _ = self.st.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(EVENT_POLL) => {}
            }
            // The session ended (logout, expiry): so does its stream.
            self.console.sessions().get(&self.session, Instant::now())?;
            self.tick += 1;
            match self.st.inv.events(&EventQuery::default(), 50, 0).await {
                Ok(p) => {
                    let new: Vec<&crate::wire::Event> = p.items.iter().filter(|e| e.id > self.last_id).collect();
                    if let Some(top) = new.first() {
                        self.last_id = top.id;
                        let kinds: Vec<&str> = new.iter().map(|e| e.kind.as_str()).collect();
                        let data = serde_json::json!({ "id": self.last_id, "kinds": kinds }).to_string();
                        return Some((
                            Ok(SseEvent::default().event("change").id(self.last_id.to_string()).data(data)),
                            self,
                        ));
                    }
                }
                Err(e) => tracing::warn!("console event stream: {e}"),
            }
            if self.st.failover.is_some() && self.tick.is_multiple_of(FAILOVER_TICKS) {
                return Some((Ok(SseEvent::default().event("failover").data("status")), self));
            }
        }
    }
}

/// Server-sent events: the event log as it grows (the pages refresh their tables).
async fn events(State(st): St, admin: Admin) -> Response {
    let last_id = match newest_event(&st).await {
        Ok(id) => id,
        Err(e) => return failure(e),
    };
    let feed = Feed { st, console: admin.console.clone(), session: admin.id.clone(), last_id, tick: 0, started: false };
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::Status;
    use crate::failover::handle::{self, ServiceEnd};
    use tower::ServiceExt;

    struct App {
        _dir: tempfile::TempDir,
        router: Router,
        token: String,
        inv: crate::inventory::Inventory,
    }

    async fn app(failover: Option<crate::failover::Handle>) -> App {
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::Inventory::open(dir.path()).await.unwrap();
        let token = crate::inventory::tokens::new_token();
        let st = AppState::new(inv.clone(), HttpConfig::default(), &token, tokio_util::sync::CancellationToken::new())
            .with_failover(failover);
        App { _dir: dir, router: super::super::router(Arc::new(st)), token, inv }
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    impl Answer {
        fn cookie(&self, name: &str) -> Option<String> {
            self.headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(&format!("{name}=")).map(|r| r.split(';').next().unwrap().to_string()))
        }

        fn csrf(&self) -> String {
            let (_, rest) = self.body.split_once(r#"name="csrf" value=""#).unwrap();
            rest.split('"').next().unwrap().to_string()
        }

        fn location(&self) -> &str {
            self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
        }
    }

    impl App {
        async fn call(&self, method: &str, path: &str, cookie: Option<&str>, form: Option<String>) -> Answer {
            let mut req = axum::http::Request::builder().method(method).uri(path);
            if let Some(c) = cookie {
                req = req.header(header::COOKIE, c);
            }
            let body = match form {
                Some(f) => {
                    req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                    axum::body::Body::from(f)
                }
                None => axum::body::Body::empty(),
            };
            let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
        }

        /// Log in through the form: the session cookie header and the session's CSRF token.
        async fn login(&self) -> (String, String) {
            let page = self.call("GET", LOGIN_PATH, None, None).await;
            let lc = page.cookie(LOGIN_COOKIE).unwrap();
            let form = format!("csrf={}&token={}", page.csrf(), self.token);
            let r = self.call("POST", LOGIN_PATH, Some(&format!("{LOGIN_COOKIE}={lc}")), Some(form)).await;
            assert_eq!((r.status, r.location()), (303, "/"), "{}", r.body);
            let jar = format!("{COOKIE}={}", r.cookie(COOKIE).unwrap());
            let home = self.call("GET", "/", Some(&jar), None).await;
            assert_eq!(home.status, 200, "{}", home.body);
            (jar, home.csrf())
        }
    }

    #[tokio::test]
    async fn a_switchover_is_confirmed_then_goes_through_the_handle() {
        let initial = Status {
            node: "head-b".into(),
            state: "backup".into(),
            holder: Some("head-a".into()),
            term: 4,
            ..Status::default()
        };
        let (h, ServiceEnd { status: _publish, mut requests }) = handle::channel(initial);
        let a = app(Some(h)).await;
        let (jar, csrf) = a.login().await;

        let page = a.call("GET", "/console/failover", Some(&jar), None).await;
        assert!(page.body.contains("head-a") && page.body.contains("backup"), "{}", page.body);
        let c = a.call("GET", "/console/failover/confirm?action=takeover", Some(&jar), None).await;
        assert_eq!(c.status, 200, "{}", c.body);
        assert!(c.body.contains("asks its peer to hand the VIP over"), "{}", c.body);
        assert!(c.body.contains(r#"action="/console/failover/takeover""#), "{}", c.body);
        assert!(c.body.contains("<strong>head-a</strong> holds the VIP"), "{}", c.body);
        assert_eq!(a.call("GET", "/console/failover/confirm?action=reboot", Some(&jar), None).await.status, 404);

        // Without the CSRF token nothing reaches the service.
        let r = a.call("POST", "/console/failover/takeover", Some(&jar), Some(String::new())).await;
        assert_eq!(r.status, 403);
        assert!(requests.try_recv().is_err(), "a refused form asked the failover service");

        let service = tokio::spawn(async move {
            let r = requests.recv().await.unwrap();
            let asked = r.req;
            let _ = r.reply.send(Ok(()));
            asked
        });
        let r = a.call("POST", "/console/failover/takeover", Some(&jar), Some(format!("csrf={csrf}"))).await;
        assert_eq!((r.status, r.location()), (303, "/console/failover"), "{}", r.body);
        assert_eq!(service.await.unwrap(), AdminRequest::Takeover);
        let page = a.call("GET", "/console/failover", Some(&jar), None).await;
        assert!(page.body.contains("took the takeover request"), "{}", page.body);
    }

    /// Version `n` of head-a as the follower knows it.
    fn sync_version(n: i64) -> crate::sync::decide::Version {
        crate::sync::decide::Version {
            label: format!("head-a@{n}"),
            version: n,
            manifest: format!("{n:064}"),
            created: String::new(),
            created_unix_ms: 0,
        }
    }

    #[tokio::test]
    async fn the_overview_shows_the_standbys_freshness() {
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::Inventory::open(dir.path()).await.unwrap();
        let token = crate::inventory::tokens::new_token();
        let v = sync_version;
        let status = crate::sync::SyncStatus {
            image: "head-a".into(),
            state: "behind".into(),
            applied: Some(v(7)),
            newest: Some(v(9)),
            lag_seconds: 1200.0,
            max_lag_seconds: 900.0,
            alarm: true,
            pending_bytes: 3 << 20,
            replica: Some(v(8)),
            ..Default::default()
        };
        let (_tx, rx) = tokio::sync::watch::channel(status);
        let handle = crate::sync::Handle {
            follow: Some((rx, crate::sync::Gate::default(), Arc::new(tokio::sync::Notify::new()))),
            capture: None,
            standbys: Default::default(),
        };
        let st = AppState::new(inv.clone(), HttpConfig::default(), &token, tokio_util::sync::CancellationToken::new())
            .with_sync(Some(handle));
        let a = App { _dir: dir, router: super::super::router(Arc::new(st)), token, inv };
        let (jar, _) = a.login().await;
        let page = a.call("GET", "/", Some(&jar), None).await;
        let b = &page.body;
        assert!(b.contains("Freshness (this standby)"), "{b}");
        assert!(b.contains("<strong>head-a@7</strong>") && b.contains("head-a@9"), "{b}");
        assert!(b.contains("1200 s") && b.contains("behind more than 900 s"), "{b}");
        assert!(b.contains("head-a@8 (served from here after a takeover)"), "{b}");
        assert!(!b.contains("Scheduled capture"), "{b}");
    }

    #[tokio::test]
    async fn the_primarys_overview_shows_what_its_standby_reported() {
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::Inventory::open(dir.path()).await.unwrap();
        let token = crate::inventory::tokens::new_token();
        let handle = crate::sync::Handle::default();
        let st = AppState::new(inv.clone(), HttpConfig::default(), &token, tokio_util::sync::CancellationToken::new())
            .with_sync(Some(handle.clone()));
        let a = App { _dir: dir, router: super::super::router(Arc::new(st)), token, inv };
        let (jar, _) = a.login().await;
        let v = sync_version;
        let status = crate::sync::SyncStatus {
            image: "head-a".into(),
            state: "current".into(),
            applied: Some(v(4)),
            newest: Some(v(5)),
            replica: Some(v(5)),
            lag_seconds: 60.0,
            last_error: Some("<b>disk</b> full".into()),
            ..Default::default()
        };
        let body = serde_json::json!({"node": "head-b", "interval_seconds": 30.0, "status": status}).to_string();
        // The admin's token only (the follower holds the primary's); a bad report is refused.
        let post = |tok: Option<String>, body: String| {
            let r = &a.router;
            async move {
                let mut req =
                    axum::http::Request::post("/api/v1/sync/standby").header("content-type", "application/json");
                if let Some(t) = tok {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let resp = tower::ServiceExt::oneshot(r.clone(), req.body(axum::body::Body::from(body)).unwrap())
                    .await
                    .unwrap();
                resp.status().as_u16()
            }
        };
        assert_eq!(post(None, body.clone()).await, 401);
        let bad = body.replace("\"head-b\"", "\"../x\"");
        assert_eq!(post(Some(a.token.clone()), bad).await, 400);
        assert_eq!(post(Some(a.token.clone()), "{\"node\":1}".into()).await, 422);
        assert_eq!(post(Some(a.token.clone()), body).await, 204);
        let page = a.call("GET", "/", Some(&jar), None).await;
        let b = &page.body;
        assert!(b.contains("Freshness of standby head-b"), "{b}");
        assert!(b.contains("<strong>head-a@4</strong>") && b.contains("head-a@5") && b.contains("60 s"), "{b}");
        assert!(b.contains("&lt;b&gt;disk&lt;/b&gt; full") && !b.contains("<b>disk</b>"), "{b}");
        assert!(!b.contains("overdue"), "{b}");
        let r = handle.report();
        assert_eq!((r.standbys.len(), r.standbys[0].node.as_str()), (1, "head-b"));
    }

    #[tokio::test]
    async fn without_failover_the_pages_say_so_and_actions_refuse() {
        let a = app(None).await;
        let (jar, csrf) = a.login().await;
        let page = a.call("GET", "/console/failover", Some(&jar), None).await;
        assert!(page.body.contains("Failover is not running on this server"), "{}", page.body);
        let r = a.call("POST", "/console/failover/release", Some(&jar), Some(format!("csrf={csrf}"))).await;
        assert_eq!(r.status, 303);
        let page = a.call("GET", "/console/failover", Some(&jar), None).await;
        assert!(page.body.contains("flash error"), "{}", page.body);
    }

    #[tokio::test]
    async fn the_event_stream_needs_a_session_and_starts_ready() {
        let a = app(None).await;
        let r = a.call("GET", "/console/events", None, None).await;
        assert_eq!((r.status, r.location()), (303, LOGIN_PATH));
        let (jar, csrf) = a.login().await;
        let req = axum::http::Request::builder()
            .uri("/console/events")
            .header(header::COOKIE, &jar)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = a.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers().get(header::CONTENT_TYPE).unwrap(), "text/event-stream");
        let mut body = resp.into_body().into_data_stream();
        use futures_util::StreamExt;
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&first), "event: ready\ndata: live\n\n");
        // A change in the domain (a node added through the console) comes down the stream.
        let r = a.call("POST", "/console/nodes/add", Some(&jar), Some(format!("csrf={csrf}&name=n1"))).await;
        assert_eq!((r.status, r.location()), (303, "/console/nodes"));
        let next = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
        let text = String::from_utf8_lossy(&next);
        assert!(text.starts_with("event: change\n") && text.contains("node.create"), "{text}");
    }

    #[tokio::test]
    async fn the_wizard_walks_its_steps_through_csrf_forms() {
        let a = app(None).await;
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"data").unwrap();
        // The wizard's own capture (of a directory here, of / in use) runs in the background.
        let console = Arc::new(Console::default());
        spawn_capture_and_wait(&console, &a.inv, src.path()).await;
        let (jar, csrf) = a.login().await;

        let start = a.call("GET", "/console/standby", Some(&jar), None).await;
        assert!(start.body.contains(r#"<label for="standby-name">Standby name</label>"#), "{}", start.body);
        let bad = a.call("GET", "/console/standby?name=%3Cb%3E", Some(&jar), None).await;
        assert!(bad.body.contains("&quot;&lt;b&gt;&quot; is not a node name"), "{}", bad.body);
        let p = a.call("GET", "/console/standby?name=sb1", Some(&jar), None).await;
        assert!(p.body.contains(r#"id="step-image" data-mark="your turn""#), "{}", p.body);
        assert!(p.body.contains(r#"id="step-mac" data-mark="later""#), "{}", p.body);

        for action in ["image", "capture", "collect", "node", "network", "redeploy"] {
            let path = format!("/console/standby/{action}");
            let r = a.call("POST", &path, Some(&jar), Some("name=sb1&image=cap&mac=52:54:00:00:00:09".into())).await;
            assert_eq!(r.status, 403, "{action} without the token");
            let r = a.call("POST", &path, None, Some(format!("csrf={csrf}&name=sb1"))).await;
            assert_eq!((r.status, r.location()), (303, LOGIN_PATH), "{action} without a session");
        }
        assert!(a.inv.node("sb1").await.is_err(), "refused forms did nothing");
        assert!(!a.inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await.unwrap());

        let r =
            a.call("POST", "/console/standby/image", Some(&jar), Some(format!("csrf={csrf}&name=sb1&image=cap"))).await;
        assert_eq!((r.status, r.location()), (303, "/console/standby?name=sb1&image=cap"), "{}", r.body);
        let p = a.call("GET", r.location(), Some(&jar), None).await;
        assert!(
            p.body.contains("cap (chosen)") && p.body.contains(r#"id="step-mac" data-mark="your turn""#),
            "{}",
            p.body
        );
        let r = a
            .call("POST", "/console/standby/collect", Some(&jar), Some(format!("csrf={csrf}&name=sb1&image=cap")))
            .await;
        assert!(r.location().starts_with("/console/standby?name=sb1&image=cap&since="), "{}", r.location());
        let p = a.call("GET", r.location(), Some(&jar), None).await;
        assert!(p.body.contains(r#"id="step-mac" data-mark="running""#), "{}", p.body);
        assert!(p.body.contains("MAC collection open until"), "{}", p.body);

        let r = a
            .call(
                "POST",
                "/console/standby/node",
                Some(&jar),
                Some(format!("csrf={csrf}&name=sb1&image=cap&mac=52:54:00:00:00:09")),
            )
            .await;
        assert_eq!((r.status, r.location()), (303, "/console/standby?name=sb1"), "{}", r.body);
        let n = a.inv.node("sb1").await.unwrap();
        assert_eq!(
            (n.role, n.image.as_deref(), n.macs.as_slice()),
            (crate::wire::Role::Standby, Some("cap"), &["52:54:00:00:00:09".to_string()][..])
        );
        assert!(
            !a.inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await.unwrap(),
            "collection closed"
        );
        // Resumed from the inventory alone: the page needs only the name now.
        let p = a.call("GET", "/console/standby?name=sb1", Some(&jar), None).await;
        for (step, mark) in
            [("image", "done"), ("mac", "done"), ("node", "done"), ("network", "your turn"), ("deploy", "later")]
        {
            assert!(p.body.contains(&format!(r#"id="step-{step}" data-mark="{mark}""#)), "{step} {mark}: {}", p.body);
        }
        assert!(p.body.contains("Node sb1 registered"), "{}", p.body);
        // A refused identity says why.
        let bad = serde_json::json!({"interfaces": [{"role": "private", "addresses": ["300.1.1.1/24"]}]}).to_string();
        let form = serde_urlencoded::to_string([("csrf", csrf.as_str()), ("name", "sb1"), ("identity", &bad)]).unwrap();
        let r = a.call("POST", "/console/standby/network", Some(&jar), Some(form)).await;
        assert_eq!(r.status, 303);
        let p = a.call("GET", r.location(), Some(&jar), None).await;
        assert!(p.body.contains("flash error") && p.body.contains("300.1.1.1"), "{}", p.body);
    }

    async fn spawn_capture_and_wait(console: &Arc<Console>, inv: &crate::inventory::Inventory, root: &std::path::Path) {
        standby::spawn_capture(console, inv.clone(), "cap".into(), root.to_path_buf()).unwrap();
        let again = standby::spawn_capture(console, inv.clone(), "cap".into(), root.to_path_buf());
        assert!(again.unwrap_err().contains("running already"));
        for _ in 0..200 {
            let r = console.capture.lock().unwrap().as_ref().and_then(|c| c.result.clone());
            if let Some(r) = r {
                assert_eq!(r.unwrap(), "cap@1");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the capture did not finish");
    }
}
