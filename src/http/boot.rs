//! Network boot over HTTP: the per-node iPXE script (`/boot/{mac}.ipxe`), the deploy
//! environment's kernel and initramfs (deployment token or admin; Range requests), and
//! the iPXE binaries for UEFI HTTP boot.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::boot;
use crate::inventory::InventoryError;
use crate::inventory::names::normalize_mac;
use crate::inventory::rules::{self, BootPlan};
use crate::wire::{EventKind, cmdline};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tower::ServiceExt;

/// The kernel file name under `boot.dir` (what `understudy pxe build` writes).
pub const KERNEL: &str = "vmlinuz";
/// The initramfs file name under `boot.dir`.
pub const INITRAMFS: &str = "initramfs.img";
/// iPXE binaries anyone on the boot network may fetch (public Debian builds, no secrets).
const FIRMWARE: &[&str] = &["ipxe.efi", "snponly.efi", "undionly.kpxe", "ipxe-arm64.efi"];

/// Query of boot requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootQuery {
    /// Which check a waiting machine is on (scripts chain to themselves with `attempt + 1`).
    attempt: Option<u32>,
    /// Deployment token (iPXE cannot send an Authorization header).
    token: Option<String>,
}

/// Network boot: `{mac}.ipxe` (the machine's script), `vmlinuz` and `initramfs.img`
/// (deployment token or admin; Range), `ipxe.efi`, `snponly.efi`, `undionly.kpxe`.
#[utoipa::path(get, path = "/boot/{file}", tag = "boot", security((), ("bearer" = [])),
    params(("file" = String, Path, description = "`<mac>.ipxe`, `vmlinuz`, `initramfs.img` or an iPXE binary"),
           ("attempt" = Option<u32>, Query, description = "check number of a waiting machine"),
           ("token" = Option<String>, Query, description = "deployment token for the kernel and initramfs")),
    responses((status = 200, description = "the script or file", content_type = "application/octet-stream"),
              (status = 206, description = "part of the file (Range)"),
              (status = 416, description = "unsatisfiable Range")))]
pub async fn boot_file(
    State(st): State<Arc<AppState>>,
    ApiPath(file): ApiPath<String>,
    ApiQuery(q): ApiQuery<BootQuery>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let r = if let Some(mac) = file.strip_suffix(".ipxe") {
        script(&st, mac, &q, &headers, peer).await
    } else if file == KERNEL || file == INITRAMFS {
        boot_env_file(&st, &file, &q, req).await
    } else if FIRMWARE.contains(&file.as_str()) {
        send_file(st.boot_pxe_dir().join(&file), req).await
    } else {
        Err(ApiError::not_found(format!("no boot file {file:?}")))
    };
    r.unwrap_or_else(IntoResponse::into_response)
}

fn ipxe(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], text).into_response()
}

fn rendered(template: &str, vars: &[(&str, &str)]) -> ApiResult<Response> {
    boot::render(template, vars).map(ipxe).map_err(ApiError::internal)
}

async fn script(
    st: &AppState,
    mac: &str,
    q: &BootQuery,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> ApiResult<Response> {
    let mac = normalize_mac(mac).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let inv = &st.inv;
    let node = inv.node_by_mac(&mac).await?;
    let collecting = inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await?;
    if node.is_none() && collecting {
        // iPXE started elsewhere (or proxyDHCP) may never have asked our DHCP: collect here too.
        inv.record_discovered(&mac, None, "iPXE", "http").await?;
    }
    let attempt = q.attempt.unwrap_or(1).max(1);
    let plan = rules::boot_plan(node.as_ref().map(|n| (n.name.as_str(), n.state, n.image.is_some())), collecting);
    let wait = |message: String| -> ApiResult<Response> {
        let message = crate::pxe::template::scrub(&message);
        let retries = st.boot.retries;
        let secs = st.boot.retry_interval.as_secs().to_string();
        let (a, r) = (attempt.to_string(), retries.to_string());
        let Some(next) = boot::next_attempt(attempt, retries) else {
            let vars = [("message", message.as_str()), ("mac", mac.as_str()), ("retries", r.as_str())];
            return rendered(boot::POWEROFF_TEMPLATE, &vars);
        };
        // No colons in relative URLs: iPXE takes everything before the first ':' as the scheme.
        let next_url = format!("{}.ipxe?attempt={next}", mac.replace(':', "-"));
        let vars = [
            ("message", message.as_str()),
            ("mac", mac.as_str()),
            ("retry_secs", secs.as_str()),
            ("attempt", a.as_str()),
            ("retries", r.as_str()),
            ("next_url", next_url.as_str()),
        ];
        rendered(boot::WAIT_TEMPLATE, &vars)
    };
    let n = match (plan, node) {
        (BootPlan::Wait(m), _) => return wait(m),
        (BootPlan::Local, Some(n)) => {
            let msg = format!("{} network-booted; told to boot from its disk", n.name);
            inv.record_event(Some(&n.name), EventKind::BootLocal, &msg).await?;
            return rendered(boot::LOCAL_TEMPLATE, &[("node", &n.name)]);
        }
        (BootPlan::Deploy, Some(n)) => n,
        (_, None) => return wait("this machine is not a node".into()),
    };
    // The script carries a deployment token: only the node's own address gets one.
    let mut known = n.ips.clone();
    known.extend(inv.leases().await?.into_iter().filter(|l| n.macs.contains(&l.mac)).map(|l| l.ip));
    if !boot::peer_allowed(peer, &known) {
        let from = peer.map(|p| p.to_string()).unwrap_or_else(|| "an unknown address".into());
        tracing::warn!("boot script for {} refused: request from {from}, node addresses {known:?}", n.name);
        let msg = format!("deploy script for {} refused to {from}", n.name);
        inv.record_event(Some(&n.name), EventKind::BootRefused, &msg).await?;
        return wait(format!("refused: this request came from {from}, which is not an address of node {}", n.name));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Some(server) = boot::server_url(st.boot.server_url.as_deref(), host) else {
        return wait("the server does not know its own URL: set boot.server_url".into());
    };
    let dir = st.boot_dir();
    if !dir.join(KERNEL).is_file() || !dir.join(INITRAMFS).is_file() {
        let msg = "no boot environment: run `understudy pxe build`";
        inv.record_event(Some(&n.name), EventKind::BootMissing, msg).await?;
        return wait(format!("the server has no boot environment in {}: run `understudy pxe build`", dir.display()));
    }
    let image = n.image.clone().unwrap_or_default();
    let t = match inv.boot_deployment(&n.name, &image, st.cfg.deploy_token_ttl).await {
        Ok(x) => x,
        // The node names an image that is gone: say so on its console and wait for the admin.
        Err(InventoryError::NotFound(m)) => {
            inv.record_event(Some(&n.name), EventKind::BootMissing, &format!("cannot deploy {image}: {m}")).await?;
            return wait(format!("node {} cannot be deployed: {m}", n.name));
        }
        Err(e) => return Err(e.into()),
    };
    let (d, token) = (t.deployment, t.token);
    let cmdline = cmdline::render(&st.boot.cmdline, &server, d.id, &n.name, &token).map_err(ApiError::internal)?;
    let (kernel_url, initrd_url) = (format!("{KERNEL}?token={token}"), format!("{INITRAMFS}?token={token}"));
    let (id, secs) = (d.id.to_string(), st.boot.retry_interval.as_secs().to_string());
    let script_url = format!("{}.ipxe", mac.replace(':', "-"));
    rendered(
        boot::DEPLOY_TEMPLATE,
        &[
            ("deployment", &id),
            ("image", &d.image),
            ("node", &n.name),
            ("kernel_url", &kernel_url),
            ("initrd_url", &initrd_url),
            ("cmdline", &cmdline),
            ("retry_secs", &secs),
            ("script_url", &script_url),
        ],
    )
}

async fn boot_env_file(st: &AppState, file: &str, q: &BootQuery, req: Request) -> ApiResult<Response> {
    let token = match q.token.as_deref() {
        Some(t) if t.is_empty() || t.len() > 256 => return Err(ApiError::unauthorized("invalid token")),
        Some(t) => Some(t),
        None => super::auth::bearer(req.headers())?,
    };
    let caller = match token {
        Some(t) => Caller::from_token(st, t).await?,
        None => Caller::Anonymous,
    };
    match caller {
        Caller::Admin | Caller::Deploy(_) => send_file(st.boot_dir().join(file), req).await,
        Caller::Anonymous => Err(ApiError::unauthorized("the boot environment needs a deployment token")),
    }
}

/// Serve a file with Range and conditional requests.
async fn send_file(path: std::path::PathBuf, req: Request) -> ApiResult<Response> {
    if !path.is_file() {
        return Err(ApiError::not_found(format!("{} is missing on the server", path.display())));
    }
    let resp = tower_http::services::ServeFile::new(&path).oneshot(req).await.map_err(ApiError::internal)?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(format!("{} is missing on the server", path.display())));
    }
    Ok(resp.map(axum::body::Body::new))
}
