//! A replica of another server's image: a standby holds the versions of the primary's
//! image it follows in its own store, under the primary's version numbers and creation
//! times, so that after a takeover it serves them itself (`standby add`, `deploy
//! --server`) with no other server.
//!
//! Invariants: a replica version is recorded only once every chunk its manifest names is
//! durable here and the manifest hashes to the primary's id (the chunks come through a
//! [`ChunkSource`], which checks each against its id); an existing version is never
//! overwritten (a different manifest under the same number is a conflict, reported);
//! the store lock is held until the row is written, so gc cannot take the new manifest
//! for garbage in between.

use super::images::{file_count, id_of, stored_bytes};
use super::{Inventory, InventoryError, Result, blocking};
use crate::db::NewImage;
use crate::deploy::ChunkSource;
use crate::store::manifest::{ChunkRef, Manifest};
use crate::store::{self, Store};
use crate::wire::{EventKind, Image};
use std::collections::HashSet;

/// What replicating a version takes, from what is here already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAction {
    /// The version is here with that manifest.
    Have,
    /// The manifest and its chunks are here (an unchanged re-capture): record the row.
    Record,
    /// Pull the manifest and the chunks the store lacks, then record the row.
    Pull,
    /// This number holds another manifest here.
    Conflict(String),
}

/// The action for version `label` with manifest `want` when this server holds
/// `local` (the manifest of that number here, if any) and `stored` (the store has `want`).
pub fn replica_action(label: &str, local: Option<&str>, stored: bool, want: &str) -> ReplicaAction {
    match local {
        Some(m) if m == want => ReplicaAction::Have,
        Some(m) => ReplicaAction::Conflict(format!(
            "{label} exists here with manifest {m}, the primary's has {want}: not replicated (delete it here to \
             take the primary's)"
        )),
        None if stored => ReplicaAction::Record,
        None => ReplicaAction::Pull,
    }
}

/// A version of another server's image to hold here.
#[derive(Debug, Clone)]
pub struct ReplicaOf {
    /// Image name.
    pub name: String,
    /// Its version number there (kept here).
    pub version: i64,
    /// Its creation time there (kept here, RFC 3339).
    pub created: String,
    /// Its manifest id (hex).
    pub manifest: String,
    /// Its recorded disk layout (layout document JSON), if it has one.
    pub layout: Option<String>,
    /// Where it came from (the event and the row's source say so).
    pub server: String,
}

impl ReplicaOf {
    /// `NAME@N`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What one replication did.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// The row recorded here.
    pub image: Image,
    /// Chunks pulled (those the store lacked).
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub bytes: u64,
}

/// Every distinct chunk of `m` that `store` lacks, in manifest order.
pub fn missing_chunks(store: &Store, m: &Manifest) -> Vec<ChunkRef> {
    let mut seen = HashSet::new();
    m.chunk_refs().filter(|(_, c)| seen.insert(c.id) && !store.contains(&c.id)).map(|(_, c)| *c).collect()
}

impl Inventory {
    /// What replicating `of` takes here.
    pub async fn replica_action(&self, of: &ReplicaOf) -> Result<ReplicaAction> {
        let local = self.db.image(&of.name, Some(of.version)).await?.map(|r| r.id);
        if local.is_some() {
            // Asked after every check of the follower: the usual answer needs no store.
            return Ok(replica_action(&of.label(), local.as_deref(), true, &of.manifest));
        }
        let (dd, want) = (self.data_dir.clone(), id_of(&of.manifest)?);
        let stored = blocking(move || Ok(store::manifest_exists(&dd, &want))).await?;
        Ok(replica_action(&of.label(), None, stored, &of.manifest))
    }

    /// Hold `of` here. `m` is its manifest (`None`: the store has it already, as
    /// [`ReplicaAction::Record`] found); `source` is started, on a blocking thread, with
    /// the list of chunks the store lacks (as one file, [`crate::update::fetch_list`])
    /// and gives their verified bytes in that order.
    pub async fn replicate<S, F>(&self, of: &ReplicaOf, m: Option<Manifest>, source: F) -> Result<Replicated>
    where
        S: ChunkSource,
        F: FnOnce(&Manifest) -> S + Send + 'static,
    {
        let want = id_of(&of.manifest)?;
        let dd = self.data_dir.clone();
        let (store, m, chunks, bytes, stored) = blocking(move || {
            let store = Store::open_for_write(&dd)?;
            let m = match m {
                Some(m) => m,
                None => store.read_manifest(&want)?,
            };
            let need = missing_chunks(&store, &m);
            let (chunks, bytes) = (need.len() as u64, need.iter().map(|c| c.len as u64).sum::<u64>());
            if !need.is_empty() {
                let list = crate::update::fetch_list(&m, need.clone());
                let src = source(&list);
                for c in &need {
                    let data = src.read_chunk(&c.id)?;
                    store.put_with_id(c.id, &data)?;
                }
                store.flush()?;
            }
            let id = store.write_manifest(&m)?;
            if id != want {
                return Err(InventoryError::Invalid(format!(
                    "the primary's manifest hashes to {}, not to its id {}",
                    store::hex_id(&id),
                    store::hex_id(&want)
                )));
            }
            let stored = stored_bytes(&store, &m);
            Ok((store, m, chunks, bytes, stored))
        })
        .await?;
        let (label, source_text) = (of.label(), format!("replica of {} from {}", of.label(), of.server));
        let message = format!("replicated {label} from {}: {chunks} chunks ({bytes} bytes) pulled", of.server);
        let row = self
            .db
            .add_image_at(
                &NewImage {
                    name: &of.name,
                    manifest_id: &of.manifest,
                    source: &source_text,
                    entries: m.entries.len() as i64,
                    files: file_count(&m) as i64,
                    bytes: m.total_bytes() as i64,
                    stored_bytes: stored as i64,
                    added_bytes: bytes as i64,
                    layout: of.layout.as_deref(),
                },
                of.version,
                &of.created,
                &EventKind::ImageReplica.as_str(),
                &message,
            )
            .await?;
        drop(store);
        Ok(Replicated { image: row.into(), chunks, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_follows_what_is_here() {
        assert_eq!(replica_action("a@3", Some("m1"), true, "m1"), ReplicaAction::Have);
        assert_eq!(replica_action("a@3", None, true, "m1"), ReplicaAction::Record);
        assert_eq!(replica_action("a@3", None, false, "m1"), ReplicaAction::Pull);
        let ReplicaAction::Conflict(why) = replica_action("a@3", Some("m0"), true, "m1") else {
            panic!("another manifest under the same number is a conflict")
        };
        assert!(why.contains("a@3 exists here with manifest m0") && why.contains("m1"), "{why}");
    }

    /// A store that counts what it was asked for.
    struct Counted(Store, std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl ChunkSource for Counted {
        fn read_chunk(&self, id: &crate::store::ChunkId) -> std::result::Result<Vec<u8>, crate::store::StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read(id)
        }
    }

    #[tokio::test]
    async fn a_replica_holds_the_primarys_versions_and_pulls_only_what_it_lacks() {
        use crate::capture::CaptureOptions;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hostname"), b"head-a\n").unwrap();
        std::fs::write(src.join("etc/big"), (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        let (a, b) = (Inventory::open(&pa).await.unwrap(), Inventory::open(&pb).await.unwrap());
        let quiet = CaptureOptions { quiet: true, default_excludes: false, ..Default::default() };
        let (v1, _) = a.capture("head-a", &src, quiet.clone()).await.unwrap();
        std::fs::write(src.join("etc/new"), b"x").unwrap();
        let (v2, _) = a.capture("head-a", &src, quiet.clone()).await.unwrap();
        let (v3, _) = a.capture("head-a", &src, quiet).await.unwrap();
        let of = |i: &Image| ReplicaOf {
            name: i.name.clone(),
            version: i.version,
            created: i.created.clone(),
            manifest: i.id.clone(),
            layout: None,
            server: "http://primary".into(),
        };
        let pull = |of: ReplicaOf, m: Option<Manifest>| {
            let (b, pa) = (&b, pa.clone());
            async move {
                let asked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let n = asked.clone();
                let r =
                    b.replicate(&of, m, move |_| Counted(Store::open(&pa, store::LockMode::Shared).unwrap(), n)).await;
                (r, asked.load(std::sync::atomic::Ordering::Relaxed))
            }
        };
        let manifest = |i: &Image| {
            let s = Store::open(&pa, store::LockMode::Shared).unwrap();
            s.read_manifest(&id_of(&i.id).unwrap()).unwrap()
        };
        // Version 2 first (a standby that starts following mid-way): every chunk travels.
        assert_eq!(b.replica_action(&of(&v2)).await.unwrap(), ReplicaAction::Pull);
        let (r, asked) = pull(of(&v2), Some(manifest(&v2))).await;
        let r = r.unwrap();
        assert_eq!(
            (r.image.version, r.image.created.as_str(), r.image.id.as_str()),
            (2, v2.created.as_str(), v2.id.as_str())
        );
        assert!(r.chunks >= 2 && asked == r.chunks, "{r:?} asked {asked}");
        assert_eq!(b.replica_action(&of(&v2)).await.unwrap(), ReplicaAction::Have);
        // Version 3 is an unchanged re-capture: the row only, no chunk asked for.
        assert_eq!(b.replica_action(&of(&v3)).await.unwrap(), ReplicaAction::Record);
        let (r, asked) = pull(of(&v3), None).await;
        assert_eq!((r.unwrap().chunks, asked), (0, 0));
        // Version 1 shares all but etc/new: only what is missing travels (nothing).
        let (r, _) = pull(of(&v1), Some(manifest(&v1))).await;
        assert_eq!(r.unwrap().chunks, 0);
        // A manifest that is not the one named is refused, and nothing is recorded.
        let mut bad = of(&v1);
        bad.version = 9;
        let (r, _) = pull(bad.clone(), Some(manifest(&v2))).await;
        let e = r.unwrap_err();
        assert!(matches!(e, InventoryError::Invalid(_)) && e.to_string().contains("not to its id"), "{e}");
        assert!(b.resolve("head-a@9").await.is_err());
        // Another manifest under a number held here is a conflict.
        let mut clash = of(&v1);
        clash.manifest = v2.id.clone();
        assert!(matches!(b.replica_action(&clash).await.unwrap(), ReplicaAction::Conflict(_)));
        // What the replica holds deploys to the primary's tree.
        let dst = dir.path().join("dst");
        let s = Store::open(&pb, store::LockMode::Shared).unwrap();
        let m = s.read_manifest(&id_of(&v3.id).unwrap()).unwrap();
        let quiet = crate::deploy::DeployOptions { quiet: true, ..Default::default() };
        crate::deploy::deploy(&s, &m, &dst, quiet).unwrap();
        assert_eq!(std::fs::read(dst.join("etc/big")).unwrap(), std::fs::read(src.join("etc/big")).unwrap());
        let ev = b.events(&Default::default(), 10, 0).await.unwrap();
        assert_eq!(ev.items.iter().filter(|e| e.kind == "image.replica").count(), 3);
    }
}
