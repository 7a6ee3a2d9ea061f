//! Image operations that join the store and the inventory: capture, import, list,
//! resolve `NAME`, `NAME@N` or an id, delete, verify, gc.

use crate::capture::{CaptureOptions, Captured, capture};
use crate::db::{Db, DbError, ImageRow, NewImage};
use crate::store::manifest::Manifest;
use crate::store::{self, ChunkId, LockMode, Store, StoreError, gc::GcReport, verify::VerifyReport};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Inventory failure.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Capture failure.
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// Import failure.
    #[error(transparent)]
    Import(#[from] crate::archive::ArchiveError),
    /// Bad image name.
    #[error("invalid image name {0:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    /// No such image.
    #[error("no image {0:?}")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Join(String),
}

/// Result type of image operations.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Check an image name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(ImageError::BadName(name.into())) }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `NAME` (newest) or `NAME@N`.
    Name(String, Option<i64>),
}

/// Parse `NAME` or `NAME@N`; an id prefix is tried by [`Inventory::resolve`] when no
/// image has that name.
pub fn parse_ref(s: &str) -> Result<ImageRef> {
    match s.rsplit_once('@') {
        Some((n, v)) => {
            check_name(n)?;
            let v: i64 = v.parse().map_err(|_| ImageError::BadName(s.into()))?;
            if v < 1 {
                return Err(ImageError::BadName(s.into()));
            }
            Ok(ImageRef::Name(n.into(), Some(v)))
        }
        None => {
            check_name(s)?;
            Ok(ImageRef::Name(s.into(), None))
        }
    }
}

/// The data dir: store plus inventory.
#[derive(Clone)]
pub struct Inventory {
    /// Data directory.
    pub data_dir: PathBuf,
    /// The inventory database.
    pub db: Db,
}

fn id_of(row: &ImageRow) -> Result<ChunkId> {
    store::parse_id(&row.id).ok_or_else(|| {
        ImageError::Store(StoreError::ManifestCorrupt {
            id: [0; 32],
            why: format!("inventory holds a bad id {:?}", row.id),
        })
    })
}

/// Compressed bytes of the distinct chunks a manifest references.
pub fn stored_bytes(store: &Store, m: &Manifest) -> u64 {
    let mut seen = HashSet::new();
    m.chunk_refs()
        .filter(|(_, c)| seen.insert(c.id))
        .map(|(_, c)| store.locate(&c.id).map(|l| l.stored_share()).unwrap_or(0))
        .sum()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Join(e.to_string()))?
}

impl Inventory {
    /// Open the data dir (creating it).
    pub async fn open(data_dir: &Path) -> Result<Inventory> {
        std::fs::create_dir_all(data_dir)
            .map_err(store::io_err(format!("creating data dir {}", data_dir.display())))?;
        let db = Db::open(data_dir).await?;
        Ok(Inventory { data_dir: data_dir.into(), db })
    }

    /// Resolve `NAME`, `NAME@N` or a manifest id (prefix of at least 8 hex digits).
    pub async fn resolve(&self, s: &str) -> Result<ImageRow> {
        // A reference that cannot be a name names no image.
        let by_name = match parse_ref(s) {
            Ok(ImageRef::Name(n, v)) => self.db.image(&n, v).await?,
            Err(_) if !is_hex_prefix(s) => return Err(ImageError::NotFound(s.into())),
            Err(_) => None,
        };
        if let Some(r) = by_name {
            return Ok(r);
        }
        if is_hex_prefix(s) {
            let rows = self.db.image_by_id_prefix(&s.to_ascii_lowercase()).await?;
            let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            return match ids.len() {
                0 => Err(ImageError::NotFound(s.into())),
                1 => Ok(rows.into_iter().next().ok_or_else(|| ImageError::NotFound(s.into()))?),
                _ => Err(ImageError::Ambiguous(s.into())),
            };
        }
        Err(ImageError::NotFound(s.into()))
    }

    /// Capture `source` as a new version of `name`.
    pub async fn capture(&self, name: &str, source: &Path, mut opts: CaptureOptions) -> Result<(ImageRow, Captured)> {
        check_name(name)?;
        let parent = match self.db.image(name, None).await? {
            Some(r) => Some(id_of(&r)?),
            None => None,
        };
        opts.skip_paths.push(self.data_dir.clone());
        let (dd, src) = (self.data_dir.clone(), source.to_path_buf());
        let (store, cap, stored) = blocking(move || {
            let store = Store::open_for_write(&dd)?;
            let cap = capture(&store, &src, parent, &opts)?;
            let stored = stored_bytes(&store, &cap.manifest);
            Ok((store, cap, stored))
        })
        .await?;
        // The store lock is held until the image is recorded, so gc cannot see the new
        // manifest as garbage in between.
        let row = self
            .record(name, &cap.id, &source.display().to_string(), &cap.manifest, stored, cap.stats.added_bytes)
            .await?;
        drop(store);
        self.db
            .event(
                None,
                "image.capture",
                &format!("captured {} version {} from {}", row.name, row.version, source.display()),
            )
            .await?;
        Ok((row, cap))
    }

    /// Record a stored manifest as a new image version.
    pub async fn record(
        &self,
        name: &str,
        id: &ChunkId,
        source: &str,
        m: &Manifest,
        stored: u64,
        added: u64,
    ) -> Result<ImageRow> {
        let files = m.entries.iter().filter(|e| matches!(e.kind, store::manifest::Kind::File { .. })).count();
        let hex = store::hex_id(id);
        Ok(self
            .db
            .add_image(&NewImage {
                name,
                manifest_id: &hex,
                source,
                entries: m.entries.len() as i64,
                files: files as i64,
                bytes: m.total_bytes() as i64,
                stored_bytes: stored as i64,
                added_bytes: added as i64,
            })
            .await?)
    }

    /// Read an image's manifest.
    pub async fn manifest(&self, row: &ImageRow) -> Result<Manifest> {
        let id = id_of(row)?;
        let dd = self.data_dir.clone();
        blocking(move || Ok(Store::open(&dd, LockMode::Shared)?.read_manifest(&id)?)).await
    }

    /// Delete `NAME` (all versions) or `NAME@N`. Data goes at the next gc.
    pub async fn delete(&self, s: &str) -> Result<u64> {
        let ImageRef::Name(n, v) = parse_ref(s)?;
        let count = self.db.delete_image(&n, v).await?;
        if count == 0 {
            return Err(ImageError::NotFound(s.into()));
        }
        self.db.event(None, "image.delete", &format!("deleted {s} ({count} version(s))")).await?;
        Ok(count)
    }

    /// Verify one image (any reference) or all.
    pub async fn verify(&self, which: Option<&str>) -> Result<VerifyReport> {
        let rows = match which {
            Some(s) => vec![self.resolve(s).await?],
            None => self.db.images().await?,
        };
        let mut list = Vec::new();
        for r in &rows {
            list.push((format!("{}@{}", r.name, r.version), id_of(r)?));
        }
        let dd = self.data_dir.clone();
        blocking(move || {
            let store = Store::open(&dd, LockMode::Shared)?;
            Ok(store::verify::verify(&store, &list))
        })
        .await
    }

    /// Collect garbage.
    pub async fn gc(&self) -> Result<GcReport> {
        let dd = self.data_dir.clone();
        let db = self.db.clone();
        // Take the exclusive lock first, then read the live set: a capture that finished
        // before we got the lock has recorded its image by then.
        let store = blocking(move || Ok(Store::open(&dd, LockMode::Exclusive)?)).await?;
        let live: Vec<ChunkId> = db.live_manifests().await?.iter().filter_map(|h| store::parse_id(h)).collect();
        let rep = blocking(move || Ok(store::gc::gc(&store, &live)?)).await?;
        self.db.event(None, "image.gc", &format!("gc freed {} bytes", rep.freed_bytes)).await?;
        Ok(rep)
    }
}

fn is_hex_prefix(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["head-a", "a", "x.y_z-1", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"a".repeat(65), "a\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refs() {
        assert_eq!(parse_ref("head-a").unwrap(), ImageRef::Name("head-a".into(), None));
        assert_eq!(parse_ref("head-a@3").unwrap(), ImageRef::Name("head-a".into(), Some(3)));
        assert!(parse_ref("head-a@0").is_err());
        assert!(parse_ref("head-a@x").is_err());
        assert!(parse_ref("../x@1").is_err());
    }
}
