//! Standby freshness: the primary re-captures on a schedule (`[capture]`, [`schedule`]),
//! and a standby's `serve` follows it (`[sync]`, [`follow`]): it asks the primary's image
//! API for the newest version every `sync.interval` and applies each new one with the
//! update module (chunks it lacks, rsync deltas for changed files), keeping its own
//! identity and [`config::ALWAYS_KEPT`].
//!
//! Announcing by polling, on purpose: one small authenticated GET per interval needs no
//! connection kept open, survives restarts of either side and network cuts without any
//! reconnection logic, and bounds the standby's delay by the interval, which is small
//! against the capture interval (minutes).
//!
//! A takeover never starts in the middle of an update: the failover service closes the
//! [`gate::Gate`] before it adds the VIP, which stops a running update at its next safe
//! point (between files, or between the chunks of a file, whose temporary is then
//! dropped). A partial update leaves `deployed.json` naming the old version and the
//! status naming the version it stopped short of ([`status::SyncStatus::partial`]); the
//! next update completes it.
//!
//! The pair heals itself: with `sync.replicate` (the default) the follower also holds each
//! version it follows in this node's own store ([`crate::inventory::replica`]: the chunks
//! it lacks, verified, under the primary's version numbers), so that after a takeover the
//! new primary serves the image itself and can re-provision the failed head.
//!
//! The primary sees its standbys' freshness too: each follower reports its status after
//! every check ([`board`]).
//!
//! - [`config`]: the two sections; [`decide`]: the pure decisions (what to do, the lag,
//!   the alarm); [`gate`]: the safe point; [`status`]: status, status file and metrics.

pub mod board;
pub mod config;
pub mod decide;
pub mod follow;
pub mod gate;
pub mod schedule;
pub mod status;

pub use config::{ALWAYS_KEPT, CaptureConfig, SyncConfig};
pub use gate::Gate;
pub use status::{CaptureStatus, SyncReport, SyncStatus};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Sync and capture errors.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The token file cannot be read.
    #[error("sync token file {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the primary failed.
    #[error("asking the primary: {0}")]
    Remote(#[from] crate::remote::RemoteError),
    /// The primary answered something unusable.
    #[error("the primary's answer: {0}")]
    Answer(String),
    /// The update failed (each path is still old or new).
    #[error("update: {0}")]
    Update(#[from] crate::update::UpdateError),
    /// The update's thread went away.
    #[error("update task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The status file cannot be read or written.
    #[error("sync status file in {dir}: {source}")]
    StatusFile {
        /// The data dir.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A scheduled capture failed.
    #[error("capture: {0}")]
    Capture(#[from] crate::inventory::InventoryError),
    /// Replicating the primary's image into this node's store failed.
    #[error("replica: {0}")]
    Replica(#[source] crate::inventory::InventoryError),
}

/// What the HTTP service sees of the sync and capture tasks of this process.
#[derive(Debug, Clone, Default)]
pub struct Handle {
    /// The follower's status and its gate (a standby with `[sync]`).
    pub follow: Option<(watch::Receiver<SyncStatus>, Gate, Arc<tokio::sync::Notify>)>,
    /// The capture schedule's status and its "run now" trigger (a primary with `[capture]`).
    pub capture: Option<(watch::Receiver<CaptureStatus>, Arc<tokio::sync::Notify>)>,
    /// The last report of each standby following this server (a primary).
    pub standbys: board::Board,
}

impl Handle {
    /// Both statuses now.
    pub fn report(&self) -> SyncReport {
        SyncReport {
            follow: self.follow.as_ref().map(|(rx, _, _)| rx.borrow().clone()),
            capture: self.capture.as_ref().map(|(rx, _)| rx.borrow().clone()),
            standbys: self.standbys.list(now_ms()),
        }
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 now.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
