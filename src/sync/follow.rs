//! `[sync]`: the standby's follower. Every `interval` (or when woken) it asks the
//! primary for the newest version of the image, works out the lag and the alarm, and
//! does what [`decide`] says: nothing, relabel, or an update through the [`Gate`].
//!
//! What the root holds is kept in the status file ([`SYNC_FILE`] in the data dir) and in
//! the root's own `deployed.json`, which names the last version applied completely
//! (the update writes it only at the end).

use super::board::StandbyReport;
use super::config::SyncConfig;
use super::decide::{self, Action, Held, Version};
use super::gate::{Closed, Gate};
use super::status::{SYNC_FILE, SyncStatus};
use super::{SyncError, now_ms, now_rfc3339};
use crate::inventory::Inventory;
use crate::inventory::replica::{ReplicaAction, ReplicaOf};
use crate::remote::{Client, PullOptions, RemoteSource, encode};
use crate::store::hex_id;
use crate::update::record::{DEFAULT_KEEP, Deployed};
use crate::update::{ApplyError, UpdateError, UpdateOptions};
use crate::wire::{EventKind, ImageDetail, ImageLayout};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The follower, ready to run.
pub struct Follower {
    cfg: SyncConfig,
    data_dir: PathBuf,
    client: Client,
    gate: Gate,
    inv: Inventory,
    status: watch::Sender<SyncStatus>,
    wake: Arc<Notify>,
    held: Held,
    /// The last replication failed (its event is recorded once until one succeeds).
    replica_failing: bool,
    /// This node's name in its reports to the primary.
    node: String,
}

/// What one check ended with, for the status.
enum Outcome {
    Current,
    Updated,
    Stopped(Closed),
    Held(Closed),
}

impl Follower {
    /// A follower for `cfg` (validated) that updates only through `gate` and reports to
    /// the primary as `node`. Reads what the root holds from the status file. Returns it
    /// with its status receiver and wake-up.
    pub fn new(
        node: String,
        cfg: SyncConfig,
        data_dir: PathBuf,
        gate: Gate,
        inv: Inventory,
    ) -> Result<(Follower, watch::Receiver<SyncStatus>, Arc<Notify>), SyncError> {
        let token = cfg.read_token(&data_dir)?;
        let client = Client::new(&cfg.server, Some(token))?;
        let before = match SyncStatus::read_file(&data_dir) {
            Ok(s) => s,
            // Only a cache of what the root holds: without it the first update compares
            // the whole root, which is slower but as safe.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!("sync: ignoring a damaged {}: {e}", data_dir.join(SYNC_FILE).display());
                None
            }
            Err(source) => return Err(SyncError::StatusFile { dir: data_dir.clone(), source }),
        };
        let mut held = before.map(|s| s.held()).unwrap_or_default();
        // The root's own record wins over ours: it may have been updated by hand or
        // redeployed since (then what we knew is stale).
        let rec = Deployed::read(&cfg.target).ok().flatten();
        if held.applied.as_ref().map(|a| a.manifest.as_str()) != rec.as_ref().map(|r| r.manifest.as_str()) {
            held = Held { applied: None, partial: held.partial };
        }
        let initial = SyncStatus {
            image: cfg.image.clone(),
            server: cfg.server.clone(),
            target: cfg.target.display().to_string(),
            state: "starting".into(),
            applied: held.applied.clone(),
            partial: held.partial.clone(),
            max_lag_seconds: cfg.max_lag.as_secs_f64(),
            updated_unix_ms: now_ms(),
            ..SyncStatus::default()
        };
        let (tx, rx) = watch::channel(initial);
        let wake = Arc::new(Notify::new());
        let f = Follower {
            cfg,
            data_dir,
            client,
            gate,
            inv,
            status: tx,
            wake: wake.clone(),
            held,
            replica_failing: false,
            node,
        };
        Ok((f, rx, wake))
    }

    /// Run until `shutdown` (a running update is stopped at its next safe point first).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failing = false;
        let gate = self.gate.clone();
        // The status file is written off the async workers (its fsync must not stall the
        // failover loop sharing them), each time the status changes.
        let writer = tokio::spawn(status_writer(self.data_dir.clone(), self.status.subscribe()));
        loop {
            // Holding the VIP, this node is the primary now: it follows nobody (the old
            // primary may well be dead) until it released the VIP.
            if gate.closed() == Some(Closed::Takeover) && !gate.busy() {
                if self.status.borrow().state != "held" {
                    tracing::info!("sync: this node holds the VIP: following nobody until it releases it");
                    self.publish(|s| {
                        s.state = "held".into();
                        s.pending_bytes = 0;
                    });
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(self.cfg.interval) => {}
                    _ = self.wake.notified() => {}
                }
                continue;
            }
            let r = tokio::select! {
                r = self.check() => r,
                _ = shutdown.cancelled() => {
                    // The update's thread sees the flag and stops at a safe point.
                    gate.set_paused(true);
                    break;
                }
            };
            match r {
                Ok(o) => {
                    if failing {
                        failing = false;
                        self.event(EventKind::SyncRecovered, format!("sync of {} works again", self.cfg.image)).await;
                    }
                    let state = match (o, gate.closed()) {
                        (Outcome::Stopped(Closed::Takeover) | Outcome::Held(Closed::Takeover), _)
                        | (_, Some(Closed::Takeover)) => "held",
                        (Outcome::Stopped(Closed::Paused) | Outcome::Held(Closed::Paused), _)
                        | (_, Some(Closed::Paused)) => "paused",
                        (Outcome::Current | Outcome::Updated, None) => "current",
                    };
                    self.publish(|s| {
                        s.state = state.into();
                        s.last_error = None;
                    });
                    if state != "held" {
                        self.report().await;
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::warn!("sync {}: {msg}", self.cfg.image);
                    if !failing {
                        failing = true;
                        self.event(
                            EventKind::SyncFailed,
                            format!("sync of {} from {}: {msg}", self.cfg.image, self.cfg.server),
                        )
                        .await;
                    }
                    self.publish(|s| {
                        s.state = "error".into();
                        s.failures += 1;
                        s.last_error = Some(msg);
                    });
                    self.report().await;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = self.wake.notified() => {}
            }
        }
        drop(self);
        let _ = writer.await;
    }

    /// Update the status and its timestamp (the writer task writes the file).
    fn publish(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.applied = self.held.applied.clone();
            s.partial = self.held.partial.clone();
            s.updated_unix_ms = now_ms();
        });
    }

    /// Tell the primary how fresh this node is (its console and metrics show it). Best
    /// effort: a primary that does not listen, or a slow one, changes nothing here.
    async fn report(&self) {
        let body = StandbyReport {
            node: self.node.clone(),
            interval_seconds: self.cfg.interval.as_secs_f64(),
            status: self.status.borrow().clone(),
        };
        let call = self.client.call::<_, serde_json::Value>(reqwest::Method::POST, "/api/v1/sync/standby", Some(&body));
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("sync: reporting to the primary: {e}"),
            Err(_) => tracing::debug!("sync: reporting to the primary: no answer in 2 s"),
        }
    }

    async fn event(&self, kind: EventKind, msg: String) {
        tracing::info!("{kind}: {msg}");
        if let Err(e) = self.inv.record_event(None, kind, &msg).await {
            tracing::warn!("sync: event log: {e}");
        }
    }

    /// The primary's newest version of the image.
    async fn newest(&self) -> Result<Version, SyncError> {
        let d: ImageDetail = self.client.get(&format!("/api/v1/images/{}", encode(&self.cfg.image))).await?;
        version_of(&d.image)
    }

    /// A root the agent deployed (or `update` brought to a version) says which version it
    /// holds in `deployed.json`: when the primary still has that version with that
    /// manifest, it is what the root runs (the first check then needs no update if it is
    /// the newest). Anything else leaves it unknown: the next update compares the root.
    async fn adopt_record(&mut self) {
        let target = self.cfg.target.clone();
        let Ok(Ok(Some(rec))) = tokio::task::spawn_blocking(move || Deployed::read(&target)).await else { return };
        if rec.image.is_empty() {
            return;
        }
        let Ok(d) = self.client.get::<ImageDetail>(&format!("/api/v1/images/{}", encode(&rec.image))).await else {
            return;
        };
        if let Ok(v) = version_of(&d.image)
            && v.manifest == rec.manifest
            && d.image.name == self.cfg.image
        {
            tracing::info!("sync: {} holds {} (its deployed.json)", self.cfg.target.display(), v.label);
            self.held.applied = Some(v);
        }
    }

    /// Work out the lag and the alarm against `newest`, and publish them.
    async fn observe(&self, newest: &Version) {
        let lag = decide::lag_ms(&self.held, newest, now_ms());
        let raised = self.status.borrow().alarm;
        let max = self.cfg.max_lag.as_millis() as u64;
        let change = decide::alarm(raised, lag, max);
        self.publish(|s| {
            s.newest = Some(newest.clone());
            s.lag_seconds = lag as f64 / 1000.0;
            s.last_check = Some(now_rfc3339());
            if let Some(a) = change {
                s.alarm = a;
            }
        });
        match change {
            Some(true) => {
                let applied = self.held.applied.as_ref().map(|v| v.label.as_str()).unwrap_or("nothing");
                self.event(
                    EventKind::SyncLagAlarm,
                    format!(
                        "standby lag {:.0}s is above sync.max_lag {:.0}s: it runs {applied}, the primary has {}",
                        lag as f64 / 1000.0,
                        self.cfg.max_lag.as_secs_f64(),
                        newest.label
                    ),
                )
                .await
            }
            Some(false) => {
                self.event(EventKind::SyncLagCleared, format!("standby lag back to {:.0}s", lag as f64 / 1000.0)).await
            }
            None => {}
        }
    }

    /// One round: ask, keep the replica (unless a takeover holds it), decide, act.
    async fn check(&mut self) -> Result<Outcome, SyncError> {
        let newest = self.newest().await?;
        if self.held.applied.is_none() && self.held.partial.is_none() {
            self.adopt_record().await;
        }
        self.observe(&newest).await;
        // The replica first: an update then takes every chunk from this machine's store,
        // so nothing crosses the network twice. Not while this node holds the VIP.
        if self.cfg.replicate && self.gate.closed() != Some(Closed::Takeover) {
            self.keep_replica(&newest).await;
        }
        let outcome = match decide::decide(&self.held, &newest, self.gate.closed()) {
            Action::Current => Outcome::Current,
            Action::Hold(c) => Outcome::Held(c),
            Action::Relabel => {
                let (target, v) = (self.cfg.target.clone(), newest.clone());
                tokio::task::spawn_blocking(move || relabel(&target, &v)).await??;
                tracing::info!("sync: {} has the content of the applied version: relabelled", newest.label);
                self.held.applied = Some(newest.clone());
                self.observe(&newest).await;
                Outcome::Current
            }
            Action::Update => self.update(newest.clone()).await?,
        };
        Ok(outcome)
    }

    /// Replicate `newest` into this node's store; the outcome goes to the status (and an
    /// event when it starts or stops failing), never to the root's sync state.
    async fn keep_replica(&mut self, newest: &Version) {
        match self.replicate(newest).await {
            Ok(pulled) => {
                if self.replica_failing {
                    self.replica_failing = false;
                    let msg = format!("the replica of {} holds {} again", self.cfg.image, newest.label);
                    self.event(EventKind::SyncRecovered, msg).await;
                }
                self.publish(|s| {
                    s.replica = Some(newest.clone());
                    s.replicated_bytes += pulled;
                    s.replica_error = None;
                });
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!("sync: replicating {}: {msg}", newest.label);
                if !self.replica_failing {
                    self.replica_failing = true;
                    let text =
                        format!("replicating {} from {} into this node's store: {msg}", newest.label, self.cfg.server);
                    self.event(EventKind::SyncReplicaFailed, text).await;
                }
                self.publish(|s| s.replica_error = Some(msg));
            }
        }
    }

    /// Hold `newest` in this node's store (the chunks it lacks); returns the bytes pulled.
    async fn replicate(&self, newest: &Version) -> Result<u64, SyncError> {
        let mut of = ReplicaOf {
            name: self.cfg.image.clone(),
            version: newest.version,
            created: newest.created.clone(),
            manifest: newest.manifest.clone(),
            layout: None,
            server: self.cfg.server.clone(),
        };
        let m = match self.inv.replica_action(&of).await.map_err(SyncError::Replica)? {
            ReplicaAction::Have => return Ok(0),
            ReplicaAction::Conflict(why) => {
                return Err(SyncError::Replica(crate::inventory::InventoryError::Conflict(why)));
            }
            ReplicaAction::Record => None,
            ReplicaAction::Pull => {
                let (m, id, _) = self.client.manifest(&newest.label).await?;
                if hex_id(&id) != newest.manifest {
                    return Err(SyncError::Answer(format!(
                        "{} has manifest {}, the image list said {}",
                        newest.label,
                        hex_id(&id),
                        newest.manifest
                    )));
                }
                Some(m)
            }
        };
        // The layout travels with the version (a re-provisioned head is laid out the same).
        let l: ImageLayout = self.client.get(&format!("/api/v1/images/{}/layout", encode(&newest.label))).await?;
        of.layout = l.recorded.then(|| l.layout.to_json());
        let (client, image, rt) = (self.client.clone(), newest.manifest.clone(), tokio::runtime::Handle::current());
        let r = self
            .inv
            .replicate(&of, m, move |list| RemoteSource::start(client, image, list, PullOptions::default(), &rt))
            .await
            .map_err(SyncError::Replica)?;
        tracing::info!("sync: the store holds {} ({} chunks, {} bytes pulled)", r.image.label(), r.chunks, r.bytes);
        match self.inv.prune(&self.cfg.image, self.cfg.keep).await {
            Ok(gone) if !gone.is_empty() => tracing::info!("sync: replica versions pruned: {gone:?}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("sync: pruning replica versions of {}: {e}", self.cfg.image),
        }
        Ok(r.bytes)
    }

    async fn update(&mut self, newest: Version) -> Result<Outcome, SyncError> {
        let Some(pass) = self.gate.enter() else {
            // Closed since decide looked.
            return Ok(Outcome::Held(self.gate.closed().unwrap_or(Closed::Paused)));
        };
        // With the replica holding this version, its chunks are all on this machine.
        let replica = self.status.borrow().replica.as_ref().is_some_and(|r| r.manifest == newest.manifest);
        let (m, id, label, store) = if self.cfg.replicate && replica {
            let (dd, want) = (self.data_dir.clone(), newest.manifest.clone());
            let (m, store) = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
                let store = crate::store::Store::open(&dd, crate::store::LockMode::Shared)?;
                let id = crate::store::parse_id(&want).ok_or(crate::store::StoreError::ManifestMissing([0; 32]))?;
                Ok((store.read_manifest(&id)?, store))
            })
            .await?
            .map_err(|e| SyncError::Replica(e.into()))?;
            (m, newest.manifest.clone(), newest.label.clone(), Some(store))
        } else {
            let (m, id, label) = self.client.manifest(&newest.label).await?;
            (m, hex_id(&id), label, None)
        };
        if id != newest.manifest {
            return Err(SyncError::Answer(format!(
                "{} has manifest {id}, the image list said {}",
                newest.label, newest.manifest
            )));
        }
        let opts = UpdateOptions {
            excludes: self.cfg.kept_patterns(),
            dry_run: false,
            sync: true,
            skip_paths: vec![self.data_dir.clone()],
            cache_dir: Some(self.data_dir.join(crate::update::scan_cache::CACHE_DIR)),
        };
        let from = if store.is_some() { "this node's replica" } else { "the primary" };
        // u64::MAX until the plan is made.
        let planned = Arc::new(AtomicU64::new(u64::MAX));
        let ctl = pass.ctl.clone();
        let (target, client, rt) = (self.cfg.target.clone(), self.client.clone(), tokio::runtime::Handle::current());
        let (planned2, ctl2, label2) = (planned.clone(), ctl.clone(), label.clone());
        let mut job = tokio::task::spawn_blocking(move || -> Result<crate::update::ApplyStats, UpdateError> {
            let m = Arc::new(m);
            let p = crate::update::prepare(&target, &m, &opts)?;
            planned2.store(p.bytes_to_write(&m), Ordering::SeqCst);
            let (reuse, hashed) = p.reuse(&m)?;
            let mut st = match &store {
                // Every chunk is here: a delta would save nothing.
                Some(store) => {
                    let src = crate::update::Sources { reuse: &reuse, chunks: store, whole: &|_| None };
                    p.apply_with(&m, src, (&label2, &id), true, &ctl2)?
                }
                None => crate::update::cli::apply_remote(&p, &m, &reuse, (&client, &rt), (&label2, &id), true, &ctl2)?,
            };
            st.bytes_hashed = hashed;
            Ok(st)
        });
        tracing::info!("sync: updating {} to {label} from {from}", self.cfg.target.display());
        let pending = || {
            let p = planned.load(Ordering::SeqCst);
            if p == u64::MAX { 0 } else { p.saturating_sub(ctl.done_bytes.load(Ordering::Relaxed)) }
        };
        self.publish(|s| s.state = "updating".into());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let r = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = tick.tick() => {
                    let pb = pending();
                    self.status.send_modify(|s| {
                        s.pending_bytes = pb;
                        s.updated_unix_ms = now_ms();
                    });
                }
            }
        };
        let stopped_by = self.gate.closed().unwrap_or(Closed::Paused);
        drop(pass);
        match r? {
            Ok(st) => {
                self.held = Held { applied: Some(newest.clone()), partial: None };
                self.publish(|s| {
                    s.pending_bytes = 0;
                    s.updates += 1;
                });
                self.observe(&newest).await;
                self.event(
                    EventKind::SyncApplied,
                    format!(
                        "{} is now {label} (from {from}): {} created, {} removed, {} changed; {} bytes transferred, \
                         {} reused",
                        self.cfg.target.display(),
                        st.created,
                        st.removed,
                        st.changed,
                        st.bytes_transferred,
                        st.bytes_reused
                    ),
                )
                .await;
                Ok(Outcome::Updated)
            }
            Err(UpdateError::Apply(ApplyError::Stopped { done })) => {
                self.held.partial = Some(newest.clone());
                let left = pending();
                self.publish(|s| s.pending_bytes = 0);
                self.observe(&newest).await;
                let why = match stopped_by {
                    Closed::Takeover => "for a takeover",
                    Closed::Paused => "paused",
                };
                let runs = self.held.applied.as_ref().map(|v| v.label.clone()).unwrap_or_else(|| "nothing".into());
                self.event(
                    EventKind::SyncStopped,
                    format!(
                        "update of {} to {label} stopped at a safe point ({why}) after {} created, {} removed, \
                         {} changed, {left} bytes short: each path is its {runs} or its {label} version; \
                         deployed.json still names {runs}",
                        self.cfg.target.display(),
                        done.created,
                        done.removed,
                        done.changed
                    ),
                )
                .await;
                Ok(Outcome::Stopped(stopped_by))
            }
            Err(e) => {
                self.publish(|s| s.pending_bytes = 0);
                Err(e.into())
            }
        }
    }
}

/// Record `newest` in the root's `deployed.json` (its content is the applied one's).
fn relabel(target: &std::path::Path, newest: &Version) -> Result<(), SyncError> {
    let mut rec = Deployed::read(target).map_err(UpdateError::from)?.unwrap_or_else(|| Deployed {
        keep_globs: DEFAULT_KEEP.iter().map(|s| s.to_string()).collect(),
        ..Deployed::default()
    });
    rec.image = newest.label.clone();
    rec.manifest = newest.manifest.clone();
    rec.write(target).map_err(UpdateError::from)?;
    Ok(())
}

/// Write the status file each time the status changes (the latest one when several
/// came meanwhile); ends when the follower drops its sender.
async fn status_writer(data_dir: PathBuf, mut rx: watch::Receiver<SyncStatus>) {
    loop {
        let s = rx.borrow_and_update().clone();
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || s.write_file(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("sync: writing {}: {e}", data_dir.join(SYNC_FILE).display()),
            Err(e) => tracing::warn!("sync: status writer: {e}"),
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A version from the primary's image row.
pub fn version_of(i: &crate::wire::Image) -> Result<Version, SyncError> {
    let t = time::OffsetDateTime::parse(&i.created, &time::format_description::well_known::Rfc3339)
        .map_err(|e| SyncError::Answer(format!("{}: bad creation time {:?}: {e}", i.label(), i.created)))?;
    let ms = (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Ok(Version {
        label: i.label(),
        version: i.version,
        manifest: i.id.clone(),
        created: i.created.clone(),
        created_unix_ms: ms,
    })
}
