//! Failover over HTTP: the status and planned switchover, through the in-process
//! [`Handle`] of the failover service running in this server (no files, no polling).

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::failover::{AdminRequest, Handle, Refused, Status};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type St = State<Arc<AppState>>;

/// All routes of this module.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(failover_status))
        .routes(routes!(failover_takeover))
        .routes(routes!(failover_release))
}

/// The failover service's handle, or 404 when this server runs none.
fn handle(st: &AppState) -> ApiResult<&Handle> {
    st.failover
        .as_ref()
        .ok_or_else(|| ApiError::not_found("failover is not running on this server (no [failover] section)"))
}

/// Heartbeat and failover status: role, state, holder, term, channels with loss and
/// last-heard age, alarms and recent events, as the failover service last published them.
#[utoipa::path(get, path = "/api/v1/failover", tag = "system",
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn failover_status(State(st): St, caller: Caller) -> ApiResult<Json<Status>> {
    caller.read(st.cfg.public_reads)?;
    Ok(Json(handle(&st)?.status()))
}

/// A planned-switchover request the failover service has taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FailoverRequested {
    /// `takeover` or `release`.
    pub request: String,
    /// What happens next.
    pub message: String,
}

/// Hand a planned-switchover request to the failover service through its handle; the
/// answer says at once whether it took it.
async fn failover_request(
    st: &AppState,
    caller: Caller,
    req: AdminRequest,
) -> ApiResult<(StatusCode, Json<FailoverRequested>)> {
    caller.admin()?;
    match handle(st)?.request(req).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(FailoverRequested {
                request: req.word().into(),
                message: "the failover service took the request; the VIP moves only with the peer's agreement \
                          (see GET /api/v1/failover)"
                    .into(),
            }),
        )),
        Err(e @ (Refused::NotRunning | Refused::ShuttingDown | Refused::NoAnswer(_))) => {
            Err(ApiError::conflict(e.to_string()))
        }
    }
}

/// Planned switchover: this node asks the peer to hand the VIP over (or takes it at once
/// when the peer is silent; fencing still applies). Admin only.
#[utoipa::path(post, path = "/api/v1/failover/takeover", tag = "system",
    responses((status = 202, body = FailoverRequested), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn failover_takeover(State(st): St, caller: Caller) -> ApiResult<(StatusCode, Json<FailoverRequested>)> {
    failover_request(&st, caller, AdminRequest::Takeover).await
}

/// Planned switchover: this node hands the VIP to the peer if the peer is ready (heard
/// both ways, healthy); otherwise it refuses and records why. Admin only.
#[utoipa::path(post, path = "/api/v1/failover/release", tag = "system",
    responses((status = 202, body = FailoverRequested), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn failover_release(State(st): St, caller: Caller) -> ApiResult<(StatusCode, Json<FailoverRequested>)> {
    failover_request(&st, caller, AdminRequest::Release).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::handle::{self, ServiceEnd};
    use crate::failover::request::{REQUEST_FILE, Request};
    use crate::failover::status::STATUS_FILE;
    use serde_json::Value;
    use tower::ServiceExt;

    struct App {
        dir: tempfile::TempDir,
        router: axum::Router,
        token: String,
    }

    async fn app(failover: Option<Handle>) -> App {
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::Inventory::open(dir.path()).await.unwrap();
        let token = super::super::auth::new_token();
        let cfg = crate::config::HttpConfig::default();
        let st = AppState::new(inv, cfg, &token, tokio_util::sync::CancellationToken::new()).with_failover(failover);
        App { dir, router: super::super::router(Arc::new(st)), token }
    }

    impl App {
        async fn call(&self, method: &str, path: &str, admin: bool) -> (u16, String) {
            let mut req = axum::http::Request::builder().method(method).uri(path);
            if admin {
                req = req.header(axum::http::header::AUTHORIZATION, format!("Bearer {}", self.token));
            }
            let resp = self.router.clone().oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        fn no_files(&self) {
            for f in [REQUEST_FILE, STATUS_FILE] {
                assert!(!self.dir.path().join(f).exists(), "{f} appeared in the data dir");
            }
        }
    }

    fn code(body: &str) -> String {
        let v: Value = serde_json::from_str(body).unwrap_or_default();
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    /// A fake service end: answers each request with the next of `answers`, checking that
    /// no request file exists when the request arrives; returns what it was asked.
    fn fake_service(
        mut requests: tokio::sync::mpsc::Receiver<Request>,
        answers: Vec<Result<(), Refused>>,
        data_dir: std::path::PathBuf,
    ) -> tokio::task::JoinHandle<Vec<AdminRequest>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for answer in answers {
                let Some(r) = requests.recv().await else { break };
                assert!(!data_dir.join(REQUEST_FILE).exists(), "the request came with a request file");
                seen.push(r.req);
                let _ = r.reply.send(answer);
            }
            seen
        })
    }

    #[tokio::test]
    async fn switchover_and_status_go_through_the_handle_without_files() {
        let initial = Status { node: "head-b".into(), state: "backup".into(), term: 4, ..Status::default() };
        let (h, ServiceEnd { status: publish, requests }) = handle::channel(initial);
        let a = app(Some(h)).await;
        let answers = vec![Ok(()), Ok(()), Err(Refused::ShuttingDown)];
        let service = fake_service(requests, answers, a.dir.path().to_path_buf());

        assert_eq!(a.call("POST", "/api/v1/failover/takeover", false).await.0, 401);
        let (s, b) = a.call("POST", "/api/v1/failover/takeover", true).await;
        assert_eq!(s, 202, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["request"], "takeover", "{b}");
        a.no_files();

        // The status and the metrics are the service's latest publication.
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        publish.send_replace(Status {
            node: "head-b".into(),
            state: "holding".into(),
            holding: true,
            holder: Some("head-b".into()),
            term: 5,
            updated_unix_ms: now_ms,
            ..Status::default()
        });
        let (s, b) = a.call("GET", "/api/v1/failover", true).await;
        assert_eq!(s, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["term"].as_u64(), v["holder"].as_str()),
            (Some("holding"), Some(5), Some("head-b"))
        );
        let (s, m) = a.call("GET", "/metrics", false).await;
        assert_eq!(s, 200);
        assert!(m.lines().any(|l| l == "understudy_failover_holding 1"), "{m}");
        assert!(m.lines().any(|l| l == "understudy_failover_term 5"), "{m}");

        let (s, b) = a.call("POST", "/api/v1/failover/release", true).await;
        assert_eq!(s, 202, "{b}");
        // The service's refusal comes back as it is.
        let (s, b) = a.call("POST", "/api/v1/failover/takeover", true).await;
        assert_eq!((s, code(&b).as_str()), (409, "conflict"), "{b}");
        assert!(b.contains("shutting down"), "{b}");
        assert_eq!(service.await.unwrap(), vec![AdminRequest::Takeover, AdminRequest::Release, AdminRequest::Takeover]);
        // The service is gone now: 409, not a hang; its last status stays readable.
        let (s, b) = a.call("POST", "/api/v1/failover/release", true).await;
        assert_eq!((s, code(&b).as_str()), (409, "conflict"), "{b}");
        assert!(b.contains("not running"), "{b}");
        assert_eq!(a.call("GET", "/api/v1/failover", true).await.0, 200);
        a.no_files();
    }

    #[tokio::test]
    async fn without_failover_the_endpoints_say_not_found() {
        let a = app(None).await;
        let (s, b) = a.call("GET", "/api/v1/failover", true).await;
        assert_eq!((s, code(&b).as_str()), (404, "not_found"), "{b}");
        for action in ["takeover", "release"] {
            let path = format!("/api/v1/failover/{action}");
            assert_eq!(a.call("POST", &path, false).await.0, 401);
            let (s, b) = a.call("POST", &path, true).await;
            assert_eq!((s, code(&b).as_str()), (404, "not_found"), "{b}");
        }
        let (_, m) = a.call("GET", "/metrics", false).await;
        assert!(!m.contains("understudy_failover_"), "{m}");
        // A status file left in the data dir is not the API's source.
        std::fs::write(a.dir.path().join(STATUS_FILE), serde_json::to_vec(&Status::default()).unwrap()).unwrap();
        assert_eq!(a.call("GET", "/api/v1/failover", true).await.0, 404);
    }
}
