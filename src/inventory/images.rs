//! Image operations that join the store and the inventory: capture, import, list,
//! resolve `NAME`, `NAME@N` or an id, show, delete, verify, gc.

use super::names::{ImageRef, check_name, is_hex_prefix, parse_ref};
use super::{Inventory, InventoryError, Result, blocking, page};
use crate::capture::{CaptureOptions, Captured, capture};
use crate::db::NewImage;
use crate::layout::doc::{Layout, default_layout};
use crate::store::manifest::{Kind, Manifest};
use crate::store::{self, ChunkId, LockMode, Store, StoreError, gc::GcReport, verify::VerifyReport};
use crate::wire::{EventKind, Image, ImageDetail, ImageLayout, Page};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A manifest id from its stored hex form.
pub(super) fn id_of(hex: &str) -> Result<ChunkId> {
    store::parse_id(hex).ok_or_else(|| {
        InventoryError::Store(StoreError::ManifestCorrupt {
            id: [0; 32],
            why: format!("inventory holds a bad id {hex:?}"),
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

/// Name of an entry type.
pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::File { .. } => "file",
        Kind::Dir => "dir",
        Kind::Symlink { .. } => "symlink",
        Kind::Hardlink { .. } => "hardlink",
        Kind::CharDev { .. } => "char",
        Kind::BlockDev { .. } => "block",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

/// Regular files in a manifest.
pub fn file_count(m: &Manifest) -> usize {
    m.entries.iter().filter(|e| matches!(e.kind, Kind::File { .. })).count()
}

/// What a new image version is made of.
struct Record<'a> {
    id: &'a ChunkId,
    source: &'a str,
    m: &'a Manifest,
    stored: u64,
    added: u64,
}

/// Is `p` a mount point (`/`, or on another filesystem than its parent)?
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(canon) = std::fs::canonicalize(p) else { return false };
    let Some(parent) = canon.parent() else { return true };
    match (std::fs::metadata(&canon), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Where an import reads its archive from.
pub enum ImportSource {
    /// Standard input.
    Stdin,
    /// A file.
    File(std::path::PathBuf),
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    /// The new version.
    pub image: Image,
    /// Entries the archive had that an image cannot hold (skipped with a warning).
    pub skipped: u64,
}

impl Inventory {
    /// Resolve `NAME`, `NAME@N` or a manifest id (prefix of at least 8 hex digits).
    pub async fn resolve(&self, s: &str) -> Result<Image> {
        let not_found = || InventoryError::NotFound(format!("no image {s:?}"));
        // A reference that cannot be a name names no image.
        let by_name = match parse_ref(s) {
            Ok(ImageRef::Name(n, v)) => self.db.image(&n, v).await?,
            Err(_) if !is_hex_prefix(s) => return Err(not_found()),
            Err(_) => None,
        };
        if let Some(r) = by_name {
            return Ok(r.into());
        }
        if is_hex_prefix(s) {
            let rows = self.db.image_by_id_prefix(&s.to_ascii_lowercase()).await?;
            let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            return match ids.len() {
                0 => Err(not_found()),
                1 => Ok(rows.into_iter().next().ok_or_else(not_found)?.into()),
                _ => Err(InventoryError::Invalid(format!(
                    "id prefix {s:?} is ambiguous: it starts {} image ids; give more digits",
                    ids.len()
                ))),
            };
        }
        Err(not_found())
    }

    /// Check an image reference for a node: `None` for none (or ""), else it must resolve.
    pub async fn check_image_ref(&self, image: Option<String>) -> Result<Option<String>> {
        match image.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(r) => match self.resolve(&r).await {
                Ok(_) => Ok(Some(r)),
                Err(InventoryError::NotFound(_) | InventoryError::Invalid(_)) => {
                    Err(InventoryError::NotFound(format!("no image {r:?}")))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// All image versions, by name then version.
    pub async fn images(&self) -> Result<Vec<Image>> {
        Ok(self.db.images().await?.into_iter().map(Image::from).collect())
    }

    /// A page of image versions.
    pub async fn images_page(&self, limit: i64, offset: i64) -> Result<Page<Image>> {
        super::check_page(limit, offset)?;
        let (rows, total) = self.db.images_page(limit, offset).await?;
        Ok(page(rows, total, limit, offset))
    }

    /// An image with entry counts by type and its distinct chunks.
    pub async fn image_detail(&self, s: &str) -> Result<(ImageDetail, std::sync::Arc<Manifest>)> {
        let image = self.resolve(s).await?;
        let m = self.manifest(&image).await?;
        let mut kinds = BTreeMap::new();
        for e in &m.entries {
            *kinds.entry(kind_name(&e.kind).to_string()).or_default() += 1;
        }
        let chunks = m.chunk_refs().map(|(_, c)| c.id).collect::<HashSet<_>>().len() as u64;
        Ok((ImageDetail { image, kinds, chunks }, m))
    }

    /// Capture `source` as a new version of `name` (a new version even when nothing
    /// changed, as `understudy capture` does).
    pub async fn capture(&self, name: &str, source: &Path, opts: CaptureOptions) -> Result<(Image, Captured)> {
        self.capture_inner(name, source, opts).await
    }

    async fn capture_inner(&self, name: &str, source: &Path, mut opts: CaptureOptions) -> Result<(Image, Captured)> {
        check_name(name)?;
        if !source.is_dir() {
            return Err(InventoryError::NotFound(format!("capture source {} is not a directory", source.display())));
        }
        let parent_row = self.db.image(name, None).await?;
        let parent = match &parent_row {
            Some(r) => Some(id_of(&r.id)?),
            None => None,
        };
        // The same manifest shares the parent's chunks: its stored size is the parent's.
        let parent_stored = parent_row.as_ref().map(|r| r.stored_bytes.max(0) as u64);
        opts.skip_paths.push(self.data_dir.clone());
        let (dd, src) = (self.data_dir.clone(), source.to_path_buf());
        let (store, mut cap, stored, probed) = blocking(move || {
            let store = Store::open_for_write(&dd)?;
            let cap = capture(&store, &src, parent, &opts)?;
            let stored = match parent_stored {
                Some(s) if Some(cap.id) == parent => s,
                _ => stored_bytes(&store, &cap.manifest),
            };
            // A mounted root (the usual `capture /`) records the layout of its disks.
            let probed = is_mount_point(&src).then(|| crate::layout::probe::probe(&src));
            Ok((store, cap, stored, probed))
        })
        .await?;
        let layout = match probed {
            Some(Ok(l)) => Some(l.to_json()),
            Some(Err(e)) => {
                cap.warnings.push(format!(
                    "disk layout not recorded: {e}; set one with `understudy images layout {name} --from FILE`"
                ));
                None
            }
            // A plain directory has no disks of its own: keep what the last version had.
            None => match &parent_row {
                Some(r) => self.db.image_layout(&r.name, r.version).await?.flatten(),
                None => None,
            },
        };
        // The store lock is held until the image is recorded, so gc cannot see the new
        // manifest as garbage in between.
        let shown = source.display().to_string();
        let rec = Record { id: &cap.id, source: &shown, m: &cap.manifest, stored, added: cap.stats.added_bytes };
        let with_layout = if layout.is_some() { " with its disk layout" } else { "" };
        let row = self
            .record(name, rec, layout.as_deref(), EventKind::ImageCapture, |v| {
                format!("captured {name} version {v} from {shown}{with_layout}")
            })
            .await?;
        drop(store);
        Ok((row, cap))
    }

    /// Delete the versions of `name` older than its newest `keep`, except those a node
    /// names explicitly (`NAME@N`) or a deployment still running uses. Returns the
    /// versions deleted (their chunks go at the next `images gc`). A `keep` of 0 keeps
    /// them all (the `keep` keys of `[capture]` and `[sync]`).
    pub async fn prune(&self, name: &str, keep: usize) -> Result<Vec<i64>> {
        if keep == 0 {
            return Ok(Vec::new());
        }
        let mut versions: Vec<Image> = self.images().await?.into_iter().filter(|r| r.name == name).collect::<Vec<_>>();
        versions.sort_by_key(|r| std::cmp::Reverse(r.version));
        let (nodes, _) = self.db.nodes(i64::MAX, 0).await?;
        let pinned: std::collections::HashSet<String> =
            nodes.into_iter().filter_map(|n| n.image).chain(self.db.active_deployment_images().await?).collect();
        let mut gone = Vec::new();
        for r in versions.into_iter().skip(keep) {
            let label = r.label();
            if pinned.contains(&label) {
                continue;
            }
            let n = self
                .db
                .delete_image(name, Some(r.version), &EventKind::ImageDelete.as_str(), |_| {
                    format!("pruned {label}: older than the newest {keep} versions")
                })
                .await?;
            if n > 0 {
                gone.push(r.version);
            }
        }
        Ok(gone)
    }

    /// Import a tar archive (a debootstrap tree, `docker export`, an export) as a new
    /// version of `name`.
    pub async fn import(&self, name: &str, from: ImportSource, quiet: bool) -> Result<Imported> {
        check_name(name)?;
        let (label, source) = match &from {
            ImportSource::Stdin => ("stdin".to_string(), "import:stdin".to_string()),
            ImportSource::File(p) => (p.display().to_string(), format!("import:{}", p.display())),
        };
        if let ImportSource::File(p) = &from
            && !p.is_file()
        {
            return Err(InventoryError::NotFound(format!("archive {} is not a file", p.display())));
        }
        let dd = self.data_dir.clone();
        let (store, m, id, stats, stored) = blocking(move || {
            let store = Store::open_for_write(&dd)?;
            let (m, stats) = match from {
                ImportSource::Stdin => crate::archive::import(
                    &store,
                    std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock()),
                    quiet,
                )?,
                ImportSource::File(p) => {
                    let f = std::fs::File::open(&p).map_err(store::io_err(format!("opening {}", p.display())))?;
                    crate::archive::import(&store, std::io::BufReader::with_capacity(1 << 20, f), quiet)?
                }
            };
            store.flush()?;
            let id = store.write_manifest(&m)?;
            let stored = stored_bytes(&store, &m);
            Ok((store, m, id, stats, stored))
        })
        .await?;
        let rec = Record { id: &id, source: &source, m: &m, stored, added: stats.added_bytes };
        let image = self
            .record(name, rec, None, EventKind::ImageImport, |v| format!("imported {name}@{v} from {label}"))
            .await?;
        drop(store);
        Ok(Imported { image, skipped: stats.skipped })
    }

    /// Record a stored manifest as a new image version, with its layout and its event.
    async fn record(
        &self,
        name: &str,
        r: Record<'_>,
        layout: Option<&str>,
        kind: EventKind,
        message: impl FnOnce(i64) -> String,
    ) -> Result<Image> {
        let Record { id, source, m, stored, added } = r;
        let hex = store::hex_id(id);
        let row = self
            .db
            .add_image(
                &NewImage {
                    name,
                    manifest_id: &hex,
                    source,
                    entries: m.entries.len() as i64,
                    files: file_count(m) as i64,
                    bytes: m.total_bytes() as i64,
                    stored_bytes: stored as i64,
                    added_bytes: added as i64,
                    layout,
                },
                &kind.as_str(),
                message,
            )
            .await?;
        Ok(row.into())
    }

    /// An image's layout: the recorded one, else the default one it deploys with.
    pub async fn image_layout(&self, s: &str) -> Result<ImageLayout> {
        let image = self.resolve(s).await?;
        let stored = self.db.image_layout(&image.name, image.version).await?.flatten();
        let (recorded, layout) = match stored {
            Some(json) => (
                true,
                Layout::from_json(&json).map_err(|e| {
                    InventoryError::Db(crate::db::DbError::BadValue(format!("layout of {}: {e}", image.label())))
                })?,
            ),
            // Sized as the agent sizes it, so `nodes plan` and the deploy agree on what fits.
            None => (false, default_layout(crate::layout::doc::default_disk_size(image.bytes.max(0) as u64))),
        };
        Ok(ImageLayout { image: image.label(), recorded, layout })
    }

    /// Set an image version's layout (checked first); `None` goes back to the default.
    pub async fn set_image_layout(&self, s: &str, layout: Option<Layout>) -> Result<ImageLayout> {
        let image = self.resolve(s).await?;
        let json = match &layout {
            Some(l) => {
                l.validate().map_err(|e| InventoryError::Invalid(format!("layout: {e}")))?;
                Some(l.to_json())
            }
            None => None,
        };
        let msg = match &layout {
            Some(_) => format!("disk layout of {} set", image.label()),
            None => format!("disk layout of {} cleared (the default layout applies)", image.label()),
        };
        self.db
            .set_image_layout(&image.name, image.version, json.as_deref(), &EventKind::ImageLayout.as_str(), &msg)
            .await?;
        self.image_layout(&image.label()).await
    }

    /// Delete `NAME` (all versions) or `NAME@N`. Data goes at the next gc.
    pub async fn delete(&self, s: &str) -> Result<u64> {
        let ImageRef::Name(n, v) = parse_ref(s)?;
        let count = self
            .db
            .delete_image(&n, v, &EventKind::ImageDelete.as_str(), |c| format!("deleted {s} ({c} version(s))"))
            .await?;
        if count == 0 {
            return Err(InventoryError::NotFound(format!("no image {s:?}")));
        }
        Ok(count)
    }

    /// Verify one image (any reference) or all.
    pub async fn verify(&self, which: Option<&str>) -> Result<VerifyReport> {
        let rows = match which {
            Some(s) => vec![self.resolve(s).await?],
            None => self.images().await?,
        };
        let mut list = Vec::new();
        for r in &rows {
            list.push((r.label(), id_of(&r.id)?));
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
        self.record_event(None, EventKind::ImageGc, &format!("gc freed {} bytes", rep.freed_bytes)).await?;
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capture_resolve_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hostname"), b"head-a\n").unwrap();
        let inv = Inventory::open(&dir.path().join("data")).await.unwrap();
        let quiet = CaptureOptions { quiet: true, default_excludes: false, ..Default::default() };
        let (a1, _) = inv.capture("head-a", &src, quiet.clone()).await.unwrap();
        std::fs::write(src.join("etc/new"), b"x").unwrap();
        let (a2, _) = inv.capture("head-a", &src, quiet.clone()).await.unwrap();
        assert_eq!((a1.version, a2.version), (1, 2));
        assert_eq!(inv.resolve("head-a").await.unwrap().id, a2.id);
        assert_eq!(inv.resolve(&a1.id[..12]).await.unwrap().version, 1);
        assert!(matches!(inv.resolve("nope").await, Err(InventoryError::NotFound(_))));
        assert!(matches!(inv.resolve("../x").await, Err(InventoryError::NotFound(_))));
        let missing = dir.path().join("missing");
        let e = inv.capture("head-a", &missing, quiet.clone()).await.unwrap_err();
        assert!(matches!(e, InventoryError::NotFound(_)) && e.to_string().contains("not a directory"), "{e}");
        assert!(matches!(inv.capture("a b", &src, quiet).await, Err(InventoryError::Invalid(_))));
        let (d, _) = inv.image_detail("head-a@2").await.unwrap();
        assert_eq!((d.kinds["file"], d.kinds["dir"]), (2, 2));
        assert_eq!(inv.delete("head-a@1").await.unwrap(), 1);
        assert!(matches!(inv.delete("head-a@1").await, Err(InventoryError::NotFound(_))));
        let ev = inv.events(&Default::default(), 10, 0).await.unwrap();
        let kinds: Vec<&str> = ev.items.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["image.delete", "image.capture", "image.capture"]);
        assert!(inv.gc().await.unwrap().freed_bytes < u64::MAX);
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_and_what_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let inv = Inventory::open(&dir.path().join("data")).await.unwrap();
        let quiet = CaptureOptions { quiet: true, default_excludes: false, ..Default::default() };
        for v in 1..=4 {
            std::fs::write(src.join("f"), format!("version {v}")).unwrap();
            let (row, _) = inv.capture("img", &src, quiet.clone()).await.unwrap();
            assert_eq!(row.version, v);
        }
        // A node pinned to img@1 keeps it; img@2 and img@3 go.
        let node = crate::wire::NodeCreate {
            name: "n1".into(),
            role: None,
            image: Some("img@1".into()),
            macs: vec![],
            ips: vec![],
        };
        inv.create_node(node).await.unwrap();
        assert_eq!(inv.prune("img", 1).await.unwrap(), vec![3, 2]);
        let left: Vec<i64> = inv.images().await.unwrap().iter().map(|r| r.version).collect();
        assert_eq!(left, vec![1, 4]);
    }
}
