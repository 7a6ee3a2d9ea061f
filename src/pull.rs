//! Pull an image from a server into a directory (`deploy --server` and the boot agent),
//! reporting progress to the deployment the token belongs to.

use crate::deploy::{self, DeployCounters, DeployOptions, DeployStats};
use crate::remote::{Client, PullOptions, RemoteSource};
use crate::wire::{Progress, ProgressStatus};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    /// Counts of what was written.
    pub stats: DeployStats,
    /// The image as the server named it (NAME@N).
    pub label: String,
    /// Manifest id (hex).
    pub id: String,
}

/// Post progress of deployment `id`.
pub async fn post_progress(
    client: &Client,
    id: i64,
    status: ProgressStatus,
    phase: &str,
    c: &DeployCounters,
    error: Option<String>,
) -> Result<(), crate::remote::RemoteError> {
    let body = Progress::new(status, phase, c.bytes.load(Ordering::Relaxed), c.files.load(Ordering::Relaxed), error);
    let path = format!("/api/v1/deployments/{id}/progress");
    client.call::<_, serde_json::Value>(reqwest::Method::POST, &path, Some(&body)).await.map(drop)
}

/// Report progress of deployment `id`; failures are logged, not fatal (the deploy goes on).
pub async fn report(
    client: &Client,
    id: i64,
    status: ProgressStatus,
    phase: &str,
    c: &DeployCounters,
    error: Option<String>,
) {
    if let Err(e) = post_progress(client, id, status, phase, c, error).await {
        tracing::warn!("could not report progress: {e}");
    }
}

/// Pull `image` into `target` (empty or new). With `dep`, progress is reported as phase
/// `writing` every 2 s; the caller reports the outcome.
pub async fn pull(
    client: &Client,
    image: &str,
    target: PathBuf,
    dep: Option<i64>,
    counters: Arc<DeployCounters>,
    quiet: bool,
    sync: bool,
) -> anyhow::Result<Pulled> {
    let opts = DeployOptions { quiet, sync, counters: Some(counters), mount_points: vec![] };
    pull_into(client, image, target, dep, opts).await
}

/// [`pull`] with every deploy option, such as a target that already holds mount points of
/// the new system's other filesystems ([`DeployOptions::mount_points`]).
pub async fn pull_into(
    client: &Client,
    image: &str,
    target: PathBuf,
    dep: Option<i64>,
    opts: DeployOptions,
) -> anyhow::Result<Pulled> {
    let (m, id, label) = client.manifest(image).await?;
    let src = RemoteSource::start(
        client.clone(),
        crate::store::hex_id(&id),
        &m,
        PullOptions::default(),
        &tokio::runtime::Handle::current(),
    );
    let counters = opts.counters.clone().unwrap_or_default();
    let stop = tokio_util::sync::CancellationToken::new();
    let ticker = dep.map(|d| {
        let (client, counters, stop) = (client.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => report(&client, d, ProgressStatus::Running, "writing", &counters, None).await,
                }
            }
        })
    });
    let res = tokio::task::spawn_blocking(move || deploy::deploy(&src, &m, &target, opts)).await;
    stop.cancel();
    if let Some(t) = ticker {
        let _ = t.await;
    }
    Ok(Pulled { stats: res??, label, id: crate::store::hex_id(&id) })
}
