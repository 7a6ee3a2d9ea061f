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
    params(("file" = String, Path, description = "`<mac>.ipxe` (iPXE), `<mac>.grub` (the Secure Boot GRUB), `vmlinuz`, `initramfs.img` or an iPXE binary"),
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
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let attempt = q.attempt.unwrap_or(1);
    let r = if let Some(mac) = file.strip_suffix(".ipxe") {
        script(&st, Flavor::Ipxe, mac, attempt, host, peer).await.map(ipxe)
    } else if let Some(mac) = file.strip_suffix(".grub") {
        script(&st, Flavor::Grub, mac, attempt, host, peer).await.map(ipxe)
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

/// Which boot loader asks: iPXE (`.ipxe`), or the signed GRUB of the Secure Boot chain
/// (`.grub`). Both get the same decisions in their own syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Ipxe,
    Grub,
}

impl Flavor {
    fn template(self, which: Script) -> &'static str {
        use crate::pxe::template::grub;
        match (self, which) {
            (Flavor::Ipxe, Script::Deploy) => boot::DEPLOY_TEMPLATE,
            (Flavor::Ipxe, Script::Local) => boot::LOCAL_TEMPLATE,
            (Flavor::Ipxe, Script::Wait) => boot::WAIT_TEMPLATE,
            (Flavor::Ipxe, Script::Poweroff) => boot::POWEROFF_TEMPLATE,
            (Flavor::Grub, Script::Deploy) => grub::DEPLOY,
            (Flavor::Grub, Script::Local) => grub::LOCAL,
            (Flavor::Grub, Script::Wait) => grub::WAIT,
            (Flavor::Grub, Script::Poweroff) => grub::POWEROFF,
        }
    }

    fn render(self, which: Script, vars: &[(&str, &str)]) -> ApiResult<String> {
        let t = self.template(which);
        let r = match self {
            Flavor::Ipxe => boot::render(t, vars),
            Flavor::Grub => crate::pxe::template::render_grub(t, vars),
        };
        r.map_err(ApiError::internal)
    }

    /// A boot environment file under a deployment token. iPXE fetches it over HTTP,
    /// relative to its script; Debian's signed GRUB network image has no http module, so
    /// it fetches over TFTP, where the token is a path component ([`BootFiles`]).
    fn boot_file_url(self, file: &str, token: &str) -> String {
        match self {
            Flavor::Ipxe => format!("{file}?token={token}"),
            Flavor::Grub => format!("(tftp)/boot/{token}/{file}"),
        }
    }

    /// This machine's script, by MAC, for check `attempt` (iPXE: hyphens, since it reads a
    /// colon as a URI scheme).
    fn script_url(self, mac: &str, attempt: u32) -> String {
        match (self, attempt) {
            (Flavor::Ipxe, 1) => format!("{}.ipxe", mac.replace(':', "-")),
            (Flavor::Ipxe, n) => format!("{}.ipxe?attempt={n}", mac.replace(':', "-")),
            (Flavor::Grub, 1) => format!("(tftp)/boot/{mac}.grub"),
            (Flavor::Grub, n) => format!("(tftp)/boot/{mac}.{n}.grub"),
        }
    }
}

/// The four scripts a booting machine can get.
#[derive(Debug, Clone, Copy)]
enum Script {
    Deploy,
    Local,
    Wait,
    Poweroff,
}

/// The script a booting machine gets for check `attempt`: decided by the node's state
/// ([`rules::boot_plan`]), in the loader's syntax. `host` is the server's address as the
/// machine reached it (the agent is told to use it unless `boot.server_url` is set).
async fn script(
    st: &AppState,
    flavor: Flavor,
    mac: &str,
    attempt: u32,
    host: Option<&str>,
    peer: Option<IpAddr>,
) -> ApiResult<String> {
    let mac = normalize_mac(mac).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let inv = &st.inv;
    let node = inv.node_by_mac(&mac).await?;
    let collecting = inv.collecting(time::OffsetDateTime::now_utc().unix_timestamp()).await?;
    if node.is_none() && collecting {
        // iPXE started elsewhere (or proxyDHCP) may never have asked our DHCP: collect here too.
        inv.record_discovered(&mac, None, "iPXE", "http").await?;
    }
    let attempt = attempt.max(1);
    let server = boot::server_url(st.boot.server_url.as_deref(), host);
    let plan = rules::boot_plan(node.as_ref().map(|n| (n.name.as_str(), n.state, n.image.is_some())), collecting);
    let wait = |message: String| -> ApiResult<String> {
        let message = crate::pxe::template::scrub(&message);
        let retries = st.boot.retries;
        let secs = st.boot.retry_interval.as_secs().to_string();
        let (a, r) = (attempt.to_string(), retries.to_string());
        let Some(next) = boot::next_attempt(attempt, retries) else {
            let vars = [("message", message.as_str()), ("mac", mac.as_str()), ("retries", r.as_str())];
            return flavor.render(Script::Poweroff, &vars);
        };
        let next_url = flavor.script_url(&mac, next);
        let vars = [
            ("message", message.as_str()),
            ("mac", mac.as_str()),
            ("retry_secs", secs.as_str()),
            ("attempt", a.as_str()),
            ("retries", r.as_str()),
            ("next_url", next_url.as_str()),
        ];
        flavor.render(Script::Wait, &vars)
    };
    let n = match (plan, node) {
        (BootPlan::Wait(m), _) => return wait(m),
        (BootPlan::Local, Some(n)) => {
            let msg = format!("{} network-booted; told to boot from its disk", n.name);
            inv.record_event(Some(&n.name), EventKind::BootLocal, &msg).await?;
            return flavor.render(Script::Local, &[("node", &n.name)]);
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
    let Some(server) = server else {
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
    let cmdline =
        cmdline::render(&st.boot.cmdline, &server, d.id, &n.name, &token, &mac).map_err(ApiError::internal)?;
    let kernel_url = flavor.boot_file_url(KERNEL, &token);
    let initrd_url = flavor.boot_file_url(INITRAMFS, &token);
    let (id, secs) = (d.id.to_string(), st.boot.retry_interval.as_secs().to_string());
    let script_url = flavor.script_url(&mac, 1);
    flavor.render(
        Script::Deploy,
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
        Caller::Follower => Err(ApiError::forbidden("the sync token does not open the boot environment")),
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

/// The Secure Boot GRUB's files over TFTP (Debian's signed GRUB network image has TFTP but
/// no HTTP): `boot/MAC.grub` and `boot/MAC.N.grub` (this machine's script, check N) and
/// `boot/TOKEN/vmlinuz`, `boot/TOKEN/initramfs.img` (the boot environment, for a live
/// deployment token only). Decisions and checks are the HTTP boot files' own.
pub struct BootFiles {
    st: Arc<AppState>,
    host: Option<String>,
}

impl BootFiles {
    /// Files for the TFTP service; `host` is the server's HTTP address as booting machines
    /// reach it (`IP:PORT`), told to the agent unless `boot.server_url` is set.
    pub fn new(st: Arc<AppState>, host: Option<String>) -> BootFiles {
        BootFiles { st, host }
    }

    async fn make(&self, rel: &std::path::Path, peer: IpAddr) -> crate::tftp::Resolved {
        use crate::tftp::path::PathError;
        let denied = |m: String| PathError::Denied(std::io::Error::new(std::io::ErrorKind::PermissionDenied, m));
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
        match parts.as_slice() {
            ["boot", name] if name.ends_with(".grub") => {
                let stem = &name[..name.len() - ".grub".len()];
                let (mac, attempt) = match stem.rsplit_once('.').map(|(m, n)| (m, n.parse::<u32>())) {
                    Some((m, Ok(n))) => (m, n),
                    _ => (stem, 1),
                };
                let text = script(&self.st, Flavor::Grub, mac, attempt, self.host.as_deref(), Some(peer)).await;
                Some(match text {
                    Ok(t) => crate::tftp::memory_file(t.as_bytes()).map_err(PathError::Denied),
                    Err(e) => Err(denied(e.message)),
                })
            }
            ["boot", token, file] if *file == KERNEL || *file == INITRAMFS => {
                if token.is_empty() || token.len() > 256 {
                    return Some(Err(denied("invalid token".into())));
                }
                match self.st.inv.deployment_for_token(token).await {
                    Ok(Some(_)) => {
                        let path = self.st.boot_dir().join(file);
                        Some(
                            std::fs::File::open(&path)
                                .and_then(|f| Ok((f.metadata()?.len(), f)))
                                .map(|(n, f)| (f, n))
                                .map_err(|e| {
                                    if e.kind() == std::io::ErrorKind::NotFound {
                                        PathError::NotFound
                                    } else {
                                        PathError::Denied(e)
                                    }
                                }),
                        )
                    }
                    Ok(None) => Some(Err(denied("invalid token".into()))),
                    Err(e) => Some(Err(denied(e.to_string()))),
                }
            }
            _ => None,
        }
    }
}

impl crate::tftp::Resolver for BootFiles {
    fn resolve<'a>(
        &'a self,
        rel: &'a std::path::Path,
        peer: IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::tftp::Resolved> + Send + 'a>> {
        Box::pin(self.make(rel, peer))
    }
}
