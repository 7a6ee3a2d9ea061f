//! `[capture]`: the primary re-captures its root on a schedule, with the capture the
//! `capture` command uses (unchanged files cost a stat; an unchanged root makes a new
//! version with the same manifest, which the standby recognises and only relabels). A
//! run starts every `interval` after the previous one started; a run still going when
//! the next is due (or when one is asked for) is not doubled: the next starts after it.

use super::config::CaptureConfig;
use super::status::CaptureStatus;
use crate::capture::CaptureOptions;
use crate::inventory::Inventory;
use crate::wire::EventKind;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The schedule, ready to run.
pub struct Schedule {
    cfg: CaptureConfig,
    inv: Inventory,
    status: watch::Sender<CaptureStatus>,
    now: Arc<Notify>,
}

impl Schedule {
    /// A schedule for `cfg`; its status receiver and "run now" trigger go to the HTTP service.
    pub fn new(cfg: CaptureConfig, inv: Inventory) -> (Schedule, watch::Receiver<CaptureStatus>, Arc<Notify>) {
        let initial = CaptureStatus {
            image: cfg.image.clone(),
            source: cfg.source.display().to_string(),
            interval_seconds: cfg.interval.as_secs_f64(),
            ..CaptureStatus::default()
        };
        let (tx, rx) = watch::channel(initial);
        let now = Arc::new(Notify::new());
        (Schedule { cfg, inv, status: tx, now: now.clone() }, rx, now)
    }

    /// Run until `shutdown`: one capture at once, then one every interval (or when asked).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            self.run_once().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(started + self.cfg.interval) => {}
                _ = self.now.notified() => {}
            }
        }
    }

    async fn run_once(&self) {
        self.status.send_modify(|s| s.running = true);
        let opts = CaptureOptions {
            excludes: self.cfg.exclude.clone(),
            default_excludes: true,
            one_file_system: false,
            skip_unreadable: false,
            skip_paths: vec![],
            quiet: true,
        };
        let t = Instant::now();
        // The capture records its own `image.capture` event; the inventory runs it on a
        // blocking thread.
        let r = self.inv.capture(&self.cfg.image, &self.cfg.source, opts).await;
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok((row, cap)) => {
                tracing::info!("capture: {} in {secs:.1}s ({} bytes added)", row.label(), row.added_bytes);
                for w in &cap.warnings {
                    tracing::warn!("capture {}: {w}", row.label());
                }
                // Every run makes a version (an unchanged one shares its parent's manifest
                // and chunks: it is how the standby knows it is still current); the old
                // ones go.
                let pruned = match self.inv.prune(&self.cfg.image, self.cfg.keep).await {
                    Ok(gone) => gone.len() as u64,
                    Err(e) => {
                        tracing::warn!("capture: pruning old versions of {}: {e}", self.cfg.image);
                        0
                    }
                };
                self.status.send_modify(|s| {
                    s.running = false;
                    s.runs += 1;
                    s.pruned += pruned;
                    s.last_version = Some(row.label());
                    s.last_seconds = secs;
                    s.last_added_bytes = row.added_bytes.max(0) as u64;
                    s.last_error = None;
                });
            }
            Err(e) => {
                let msg =
                    format!("scheduled capture of {} into {} failed: {e}", self.cfg.source.display(), self.cfg.image);
                tracing::error!("{msg}");
                if let Err(x) = self.inv.record_event(None, EventKind::ImageCaptureFailed, &msg).await {
                    tracing::warn!("capture: event log: {x}");
                }
                self.status.send_modify(|s| {
                    s.running = false;
                    s.runs += 1;
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_at_start_and_when_asked_and_reports_failures() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), b"one").unwrap();
        let inv = Inventory::open(&t.path().join("data")).await.unwrap();
        let cfg = CaptureConfig {
            image: "head-a".into(),
            source: root.clone(),
            interval: Duration::from_secs(3600),
            exclude: vec![],
            keep: 2,
        };
        let (sched, mut rx, now) = Schedule::new(cfg, inv.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(sched.run(stop.clone()));
        rx.wait_for(|s| s.runs == 1).await.unwrap();
        assert_eq!(rx.borrow().last_version.as_deref(), Some("head-a@1"));
        std::fs::write(root.join("etc/motd"), b"two").unwrap();
        now.notify_one();
        rx.wait_for(|s| s.runs == 2).await.unwrap();
        assert_eq!(rx.borrow().last_version.as_deref(), Some("head-a@2"));
        let rows = inv.images().await.unwrap();
        assert_ne!(rows[0].id, rows[1].id, "the change makes another manifest");
        // A third version: the oldest goes (keep = 2).
        now.notify_one();
        rx.wait_for(|s| s.runs == 3).await.unwrap();
        let versions: Vec<i64> = inv.images().await.unwrap().iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(rx.borrow().pruned, 1);
        // The source gone: a failure, reported and logged, and the schedule goes on.
        std::fs::remove_dir_all(&root).unwrap();
        now.notify_one();
        rx.wait_for(|s| s.runs == 4).await.unwrap();
        let s = rx.borrow().clone();
        assert_eq!((s.failures, s.running), (1, false));
        assert!(s.last_error.as_deref().unwrap_or("").contains("not a directory"), "{s:?}");
        let ev = inv.events(&Default::default(), 50, 0).await.unwrap();
        assert!(ev.items.iter().any(|e| e.kind == "image.capture_failed"), "{:?}", ev.items);
        stop.cancel();
        task.await.unwrap();
    }
}
