//! The `update` command's arguments and handler (the binary's edge: errors are `anyhow`).

use super::{Prepared, UpdateOptions, UpdateReport};
use crate::deploy::ChunkSource;
use crate::remote::{Client, PullOptions, RemoteSource};
use crate::store::manifest::Manifest;
use crate::store::{LockMode, Store, hex_id};
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
    let opts = UpdateOptions { excludes: a.excludes.clone(), dry_run: a.dry_run, sync: !a.no_sync };
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
        rep.stats = apply(&p, &m, &source, &rt, &l2, &id2, opts.sync)?;
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
    let (reuse, needed, hashed) = p.reuse(m)?;
    let src: Box<dyn ChunkSource> = match source {
        Source::Local(dd) => Box::new(Store::open(dd, LockMode::Shared)?),
        Source::Remote(client) => {
            let list = super::fetch_list(m, needed);
            Box::new(RemoteSource::start(client.clone(), id.to_string(), &list, PullOptions::default(), rt))
        }
    };
    let mut stats = p.apply(m, &reuse, src.as_ref(), label, id, sync)?;
    stats.bytes_hashed = hashed;
    Ok(stats)
}
