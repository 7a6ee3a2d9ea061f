//! The `update` command's arguments and handler (the binary's edge: errors are `anyhow`).

use super::{Prepared, UpdateOptions, UpdateReport};
use crate::remote::{Client, PullOptions, RemoteSource, encode};
use crate::store::manifest::{Kind, Manifest, display_path};
use crate::store::{LockMode, Store, StoreError, hex_id};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `update` arguments.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Image reference (NAME, NAME@N or id); from the server with --server.
    pub image: String,
    /// The root to bring to the image (a live `/` or a mounted one).
    #[arg(default_value = "/")]
    pub target: PathBuf,
    /// List the changes (like `rsync -i`) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave these paths alone too (capture's exclude syntax; repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Skip the final syncfs.
    #[arg(long)]
    pub no_sync: bool,
    /// A JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Run `update`: against the local data dir, or a server when `server` is given.
pub async fn run(
    data_dir: &Path,
    server: Option<&str>,
    token: Option<String>,
    a: UpdateArgs,
    quiet: bool,
) -> anyhow::Result<i32> {
    let opts = UpdateOptions {
        excludes: a.excludes.clone(),
        dry_run: a.dry_run,
        sync: !a.no_sync,
        skip_paths: vec![data_dir.to_path_buf()],
        cache_dir: Some(data_dir.join(super::scan_cache::CACHE_DIR)),
    };
    let (m, id, label, source) = match server {
        Some(url) => {
            let client = Client::new(url, token)?;
            let (m, id, label) = client.manifest(&a.image).await?;
            (Arc::new(m), hex_id(&id), label, Source::Remote(client))
        }
        None => {
            let inv = crate::inventory::Inventory::open(data_dir)
                .await
                .with_context(|| format!("opening data dir {}", data_dir.display()))?;
            let row = inv.resolve(&a.image).await?;
            let m = inv.manifest(&row).await?;
            (m, row.id.clone(), format!("{}@{}", row.name, row.version), Source::Local(data_dir.to_path_buf()))
        }
    };
    let rt = tokio::runtime::Handle::current();
    let target = a.target.clone();
    let (l2, id2) = (label.clone(), id.clone());
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<UpdateReport> {
        let p = super::prepare(&target, &m, &opts)?;
        let mut rep = UpdateReport {
            image: l2.clone(),
            manifest: id2.clone(),
            dry_run: opts.dry_run,
            changes: p.itemize(&m),
            notes: p.notes.clone(),
            ..Default::default()
        };
        if opts.dry_run {
            return Ok(rep);
        }
        // The target is live: something may change it while the update runs. It is listed
        // again afterwards; what differs then is applied again, a few times at most.
        // Not as root, owners and privileged xattrs stay as they are: the list would never
        // come out empty, so it is applied once.
        if !rustix::process::geteuid().is_root() {
            rep.stats = apply(&p, &m, &source, &rt, &l2, &id2, opts.sync)?;
            return Ok(rep);
        }
        let mut p = p;
        for attempt in 1..=CONVERGE_ATTEMPTS {
            let stats = apply(&p, &m, &source, &rt, &l2, &id2, opts.sync);
            if p.plan.changes.is_empty() {
                // Nothing was to be done (the record is rewritten): nothing to list again.
                rep.stats.add(&stats?);
                return Ok(rep);
            }
            let again = super::prepare(&target, &m, &opts)?;
            match stats {
                Ok(s) => rep.stats.add(&s),
                // A change under the update can also make a step fail (a directory to
                // remove gained an entry, a file vanished): listed again and retried.
                Err(e) if attempt < CONVERGE_ATTEMPTS && changed_under_us(&e) && !again.plan.changes.is_empty() => {
                    rep.notes.push(format!("the target changed during the update ({e:#}); applying again"));
                }
                Err(e) => return Err(e),
            }
            if again.plan.changes.is_empty() {
                return Ok(rep);
            }
            let busy = again.itemize(&m);
            if attempt == CONVERGE_ATTEMPTS {
                anyhow::bail!(
                    "{} keeps changing while it is updated: {} entr{} still differ{} from {l2} after {attempt} passes ({}); update again when it is quieter",
                    target.display(),
                    busy.len(),
                    if busy.len() == 1 { "y" } else { "ies" },
                    if busy.len() == 1 { "s" } else { "" },
                    busy.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                );
            }
            rep.notes.push(format!(
                "the target changed during the update: {} entr{} differ{} again ({}); applying again",
                busy.len(),
                if busy.len() == 1 { "y" } else { "ies" },
                if busy.len() == 1 { "s" } else { "" },
                busy.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
            rep.changes.extend(busy);
            p = again;
        }
        Ok(rep)
    })
    .await??;
    for n in &report.notes {
        if !quiet {
            eprintln!("note: {n}");
        }
    }
    if a.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        if a.dry_run || !quiet {
            for l in &report.changes {
                println!("{l}");
            }
        }
        let s = &report.stats;
        if a.dry_run {
            println!(
                "{} change(s) to bring {} to {label} (dry run: nothing changed)",
                report.changes.len(),
                a.target.display()
            );
        } else {
            println!(
                "updated {} to {label}: {} created, {} removed, {} changed; {} bytes transferred, {} reused",
                a.target.display(),
                s.created,
                s.removed,
                s.changed,
                s.bytes_transferred,
                s.bytes_reused
            );
        }
    }
    Ok(0)
}

/// A failure that a change of the target under the update explains (an entry gone, a
/// directory to remove no longer empty, a name taken meanwhile): worth a second pass. A
/// lost server, a bad chunk or a full disk is not: the next pass would fail the same way.
fn changed_under_us(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::{AlreadyExists, DirectoryNotEmpty, NotADirectory, NotFound};
    matches!(
        e.downcast_ref::<super::UpdateError>(),
        Some(super::UpdateError::Apply(super::ApplyError::Entry { source, .. }))
            if matches!(source.kind(), NotFound | DirectoryNotEmpty | AlreadyExists | NotADirectory)
    )
}

/// Passes over a target that changes while it is updated before the update gives up.
const CONVERGE_ATTEMPTS: usize = 3;

/// Where chunks the target lacks come from.
enum Source {
    /// The store in this data dir.
    Local(PathBuf),
    /// A server.
    Remote(Client),
}

fn apply(
    p: &Prepared,
    m: &Manifest,
    source: &Source,
    rt: &tokio::runtime::Handle,
    label: &str,
    id: &str,
    sync: bool,
) -> anyhow::Result<super::ApplyStats> {
    let (reuse, hashed) = p.reuse(m)?;
    let mut stats = match source {
        Source::Local(dd) => {
            let store = Store::open(dd, LockMode::Shared)?;
            // Every chunk is on this machine: a delta would save nothing.
            p.apply(m, super::Sources { reuse: &reuse, chunks: &store, whole: &|_| None }, (label, id), sync)?
        }
        Source::Remote(client) => {
            apply_remote(p, m, &reuse, (client, rt), (label, id), sync, &super::Control::default())?
        }
    };
    stats.bytes_hashed = hashed;
    Ok(stats)
}

/// Apply `p` with what the target lacks from the server behind `client` (chunks, and
/// rsync deltas for changed files), under `ctl` (see [`Prepared::apply_with`]); `reuse`
/// is [`Prepared::reuse`]'s index. Runs on a blocking thread; `rt` runs the transfers.
pub fn apply_remote(
    p: &Prepared,
    m: &Manifest,
    reuse: &super::Reuse,
    (client, rt): (&Client, &tokio::runtime::Handle),
    (label, id): (&str, &str),
    sync: bool,
    ctl: &super::Control,
) -> Result<super::ApplyStats, super::UpdateError> {
    let cands = p.delta_candidates(m, reuse);
    let needed = super::apply::needed_chunks(m, &p.plan, reuse, &cands);
    let src =
        RemoteSource::start(client.clone(), id.to_string(), &super::fetch_list(m, needed), PullOptions::default(), rt);
    let ready = std::sync::Mutex::new(prefetch_deltas(p, m, &cands, (client, rt), id, reuse, ctl));
    let whole = |idx: usize| {
        cands.binary_search(&idx).ok()?;
        let got = ready.lock().unwrap_or_else(|e| e.into_inner()).remove(&idx);
        Some(got.unwrap_or_else(|| by_delta(p, m, idx, client, rt, id, reuse)))
    };
    p.apply_with(m, super::Sources { reuse, chunks: &src, whole: &whole }, (label, id), sync, ctl)
}

/// Deltas in flight at once: each is a round trip in which the server reads the file and
/// computes the delta, so several overlap the network, the server and this side.
const DELTA_WORKERS: usize = 6;
/// New content held from deltas fetched ahead of the apply.
const DELTA_AHEAD_BYTES: u64 = 256 << 20;

/// The deltas of the first candidates (up to [`DELTA_AHEAD_BYTES`] of new content),
/// fetched by [`DELTA_WORKERS`] threads before the apply needs them; the rest are fetched
/// when their turn comes. Nothing is written here, so a stop request only ends it early.
fn prefetch_deltas(
    p: &Prepared,
    m: &Manifest,
    cands: &[usize],
    (client, rt): (&Client, &tokio::runtime::Handle),
    id: &str,
    reuse: &super::Reuse,
    ctl: &super::Control,
) -> std::collections::HashMap<usize, Result<(Vec<u8>, u64), StoreError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut budget = DELTA_AHEAD_BYTES;
    let ahead: Vec<usize> = cands
        .iter()
        .copied()
        .take_while(|&i| {
            let size = match &m.entries[i].kind {
                Kind::File { size, .. } => *size,
                _ => 0,
            };
            let fits = size <= budget;
            budget = budget.saturating_sub(size);
            fits
        })
        .collect();
    if ahead.len() < 2 {
        return Default::default();
    }
    let next = AtomicUsize::new(0);
    let done = std::sync::Mutex::new(std::collections::HashMap::new());
    std::thread::scope(|s| {
        for _ in 0..DELTA_WORKERS.min(ahead.len()) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&idx) = ahead.get(n) else { return };
                    if ctl.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = by_delta(p, m, idx, client, rt, id, reuse);
                    done.lock().unwrap_or_else(|e| e.into_inner()).insert(idx, r);
                }
            });
        }
    });
    done.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The image's version of file `idx` by an rsync delta against the target's old version;
/// when that fails (the server refuses, the result does not verify), by its chunks one at
/// a time. Returns the content (verified) and the bytes that crossed the wire.
fn by_delta(
    p: &Prepared,
    m: &Manifest,
    idx: usize,
    client: &Client,
    rt: &tokio::runtime::Handle,
    id: &str,
    reuse: &super::Reuse,
) -> Result<(Vec<u8>, u64), StoreError> {
    let e = &m.entries[idx];
    if let Some(old) = p.old_content(&e.path) {
        let sig = super::delta::signature(&old);
        let sent = sig.len() as u64;
        let path = format!("/api/v1/images/{}/delta?path={}", encode(id), hex::encode(&e.path));
        match rt.block_on(client.post_bytes(&path, sig)) {
            Ok(d) => match super::delta::apply_delta(&old, &d, e) {
                Ok(data) => return Ok((data, sent + d.len() as u64)),
                Err(err) => tracing::warn!("{}: {err}; fetching its chunks instead", display_path(&e.path)),
            },
            Err(err) => {
                tracing::warn!("{}: no delta from the server ({err}); fetching its chunks", display_path(&e.path))
            }
        }
    }
    let Kind::File { size, extents } = &e.kind else { return Ok((Vec::new(), 0)) };
    let mut out = vec![0u8; *size as usize];
    let mut wire = 0u64;
    for x in extents {
        let mut off = x.offset as usize;
        for c in &x.chunks {
            let data = match reuse.get(&c.id) {
                Some(d) => d,
                None => {
                    let path = format!("/api/v1/images/{}/chunks/{}", encode(id), hex_id(&c.id));
                    let d = rt.block_on(client.get_bytes(&path)).map_err(|err| StoreError::Io {
                        what: "fetching a chunk from the server".into(),
                        source: std::io::Error::other(err.to_string()),
                    })?;
                    if blake3::hash(&d).as_bytes() != &c.id {
                        return Err(StoreError::ChunkCorrupt {
                            id: c.id,
                            why: "received bytes do not match the chunk id".into(),
                        });
                    }
                    wire += d.len() as u64;
                    d.to_vec()
                }
            };
            let dst = out
                .get_mut(off..off + data.len())
                .ok_or_else(|| StoreError::ChunkCorrupt { id: c.id, why: "past the file size".into() })?;
            dst.copy_from_slice(&data);
            off += data.len();
        }
    }
    Ok((out, wire))
}
