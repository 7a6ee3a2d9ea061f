//! The domain layer: every rule about images, nodes, deployments and the event log, over
//! the store and the inventory database. The HTTP API, the CLI, DHCP and network boot
//! call it; none of them writes SQL or decides a state transition.
//!
//! Invariants:
//! - a state transition is decided by [`rules`] (pure functions) and written with its
//!   event in one database transaction, so the log never misses a change or tells of one
//!   that did not happen;
//! - a deployment token is returned once, stored only as its BLAKE3 hash, scoped to one
//!   node and one manifest, and dies when its deployment finishes, fails, expires or is
//!   superseded by the node's next network boot;
//! - an image version exists only once its manifest is in the store; the store lock is
//!   held until the row is written, so gc never sees a new manifest as garbage;
//! - what the inventory hands out is the [`crate::wire`] form; database rows stay inside.

pub mod dhcp;
pub mod hardware;
pub mod images;
pub mod names;
pub mod network;
pub mod nodes;
pub mod replica;
pub mod rules;
pub mod tokens;

mod deployments;
mod events;

pub use deployments::NewToken;
pub use events::EventQuery;

use crate::db::{self, Db, DbError};
use crate::store::StoreError;
use crate::store::manifest::Manifest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the inventory: what the caller did wrong (invalid, not found, conflict) or
/// what failed underneath (database, store, capture, import).
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The request names something invalid (a bad name, MAC, state, ...).
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Db(DbError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A capture failed.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// An import failed.
    #[error(transparent)]
    Import(#[from] crate::archive::ArchiveError),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Join(String),
}

impl InventoryError {
    /// What kind of failure this is (for HTTP statuses and exit codes).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            InventoryError::Invalid(_) => K::Invalid,
            InventoryError::NotFound(_) => K::NotFound,
            InventoryError::Conflict(_) => K::Conflict,
            InventoryError::Import(e) if e.is_bad_input() => K::Invalid,
            InventoryError::Capture(e) if e.is_bad_input() => K::Invalid,
            InventoryError::Store(_) | InventoryError::Capture(_) | InventoryError::Import(_) => K::Io,
            InventoryError::Db(_) | InventoryError::Join(_) => K::Internal,
        }
    }
}

impl From<DbError> for InventoryError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(m) => InventoryError::Conflict(m),
            DbError::NotFound(m) => InventoryError::NotFound(m),
            other => InventoryError::Db(other),
        }
    }
}

impl From<names::NameError> for InventoryError {
    fn from(e: names::NameError) -> Self {
        InventoryError::Invalid(e.to_string())
    }
}

impl From<rules::RuleError> for InventoryError {
    fn from(e: rules::RuleError) -> Self {
        InventoryError::Conflict(e.to_string())
    }
}

impl From<crate::wire::UnknownValue> for InventoryError {
    fn from(e: crate::wire::UnknownValue) -> Self {
        InventoryError::Invalid(e.to_string())
    }
}

/// Result type of the inventory.
pub type Result<T> = std::result::Result<T, InventoryError>;

/// Recently used manifests kept decoded.
const MANIFEST_CACHE: usize = 16;

/// The data dir: the store plus the inventory database, and the rules over both.
#[derive(Clone)]
pub struct Inventory {
    /// Data directory.
    pub data_dir: PathBuf,
    db: Db,
    manifests: Arc<Mutex<HashMap<String, Arc<Manifest>>>>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| InventoryError::Join(e.to_string()))?
}

impl Inventory {
    /// Open the data dir (creating it) and its database.
    pub async fn open(data_dir: &Path) -> Result<Inventory> {
        std::fs::create_dir_all(data_dir)
            .map_err(crate::store::io_err(format!("creating data dir {}", data_dir.display())))?;
        let db = Db::open(data_dir).await?;
        Ok(Inventory { data_dir: data_dir.into(), db, manifests: Default::default() })
    }

    /// An image's manifest, decoded once and cached.
    pub async fn manifest(&self, row: &crate::wire::Image) -> Result<Arc<Manifest>> {
        if let Some(m) = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&row.id) {
            return Ok(m.clone());
        }
        let id = images::id_of(&row.id)?;
        let dd = self.data_dir.clone();
        let m = Arc::new(
            blocking(move || Ok(crate::store::Store::open(&dd, crate::store::LockMode::Shared)?.read_manifest(&id)?))
                .await?,
        );
        let mut c = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= MANIFEST_CACHE {
            c.clear();
        }
        c.insert(row.id.clone(), m.clone());
        Ok(m)
    }
}

// ---------------------------------------------------------------- row -> wire

impl From<db::ImageRecord> for crate::wire::Image {
    fn from(r: db::ImageRecord) -> Self {
        crate::wire::Image {
            name: r.name,
            version: r.version,
            id: r.id,
            created: r.created,
            source: r.source,
            entries: r.entries,
            files: r.files,
            bytes: r.bytes,
            stored_bytes: r.stored_bytes,
            added_bytes: r.added_bytes,
        }
    }
}

impl From<db::NodeRecord> for crate::wire::Node {
    fn from(r: db::NodeRecord) -> Self {
        crate::wire::Node {
            name: r.name,
            role: r.role,
            image: r.image,
            state: r.state,
            macs: r.macs,
            ips: r.ips,
            created: r.created,
            updated: r.updated,
        }
    }
}

impl From<db::DeploymentRecord> for crate::wire::Deployment {
    fn from(r: db::DeploymentRecord) -> Self {
        crate::wire::Deployment {
            id: r.id,
            node: r.node,
            image: r.image,
            manifest_id: r.manifest_id,
            expires: r.expires,
            status: r.status,
            phase: r.phase,
            bytes_done: r.bytes_done,
            bytes_total: r.bytes_total,
            files_done: r.files_done,
            files_total: r.files_total,
            created: r.created,
            started: r.started,
            finished: r.finished,
            error: r.error,
        }
    }
}

impl From<db::EventRecord> for crate::wire::Event {
    fn from(r: db::EventRecord) -> Self {
        crate::wire::Event { id: r.id, ts: r.ts, node: r.node, kind: r.kind, message: r.message }
    }
}

impl From<db::LeaseRecord> for crate::wire::Lease {
    fn from(r: db::LeaseRecord) -> Self {
        crate::wire::Lease { ip: r.ip, mac: r.mac, expires: r.expires, state: r.state }
    }
}

impl From<db::DiscoveredRecord> for crate::wire::Discovered {
    fn from(r: db::DiscoveredRecord) -> Self {
        crate::wire::Discovered {
            mac: r.mac,
            arch: r.arch,
            vendor_class: r.vendor_class,
            interface: r.interface,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            count: r.count,
            assigned_to: r.assigned_to,
        }
    }
}

/// Convert a page of rows.
fn page<R, W: From<R>>(rows: Vec<R>, total: i64, limit: i64, offset: i64) -> crate::wire::Page<W> {
    crate::wire::Page { items: rows.into_iter().map(W::from).collect(), total, limit, offset }
}

/// Check paging parameters.
pub fn check_page(limit: i64, offset: i64) -> Result<()> {
    if !(1..=1000).contains(&limit) {
        return Err(InventoryError::Invalid("limit must be between 1 and 1000".into()));
    }
    if offset < 0 {
        return Err(InventoryError::Invalid("offset must not be negative".into()));
    }
    Ok(())
}
