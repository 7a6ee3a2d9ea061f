//! The inventory database (sqlite through sqlx; schema in `migrations/`).

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};
use std::path::Path;
use std::time::Duration;

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// sqlx failed.
    #[error("inventory database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("inventory database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result type of the database layer.
pub type Result<T> = std::result::Result<T, DbError>;

/// An image version row.
#[derive(Debug, Clone, FromRow, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ImageRow {
    /// Image name.
    pub name: String,
    /// Version, counting from 1 per name.
    pub version: i64,
    /// Manifest id (hex).
    pub id: String,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// What was captured or imported.
    pub source: String,
    /// Entries of all types.
    pub entries: i64,
    /// Regular files.
    pub files: i64,
    /// Logical bytes of regular files.
    pub bytes: i64,
    /// Compressed bytes of the distinct chunks the image references.
    pub stored_bytes: i64,
    /// Bytes this version added to the store when it was made.
    pub added_bytes: i64,
}

/// A new image version to record.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// Image name.
    pub name: &'a str,
    /// Manifest id (hex).
    pub manifest_id: &'a str,
    /// What was captured or imported.
    pub source: &'a str,
    /// Entries of all types.
    pub entries: i64,
    /// Regular files.
    pub files: i64,
    /// Logical bytes.
    pub bytes: i64,
    /// Compressed bytes referenced.
    pub stored_bytes: i64,
    /// Bytes added to the store.
    pub added_bytes: i64,
}

/// Columns of an [`ImageRow`], as a literal so queries stay static strings.
macro_rules! image_select {
    ($rest:literal) => {
        concat!("SELECT name, version, manifest_id AS id, created, source, entries, files, bytes, stored_bytes, added_bytes FROM images ", $rest)
    };
}

/// Columns of a [`Deployment`], as a literal so queries stay static strings.
macro_rules! deployment_cols {
    () => {
        "id, node, image, manifest_id, expires, status, phase, bytes_done, bytes_total, files_done, files_total, created, started, finished, error"
    };
}

/// Current time as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::now_utc().format(&f).unwrap_or_default()
}

/// The inventory.
#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Open (creating if needed) `understudy.db` in `data_dir` and apply migrations.
    pub async fn open(data_dir: &Path) -> Result<Db> {
        let opts = SqliteConnectOptions::new()
            .filename(data_dir.join("understudy.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction. IMMEDIATE takes the write lock up front (waiting up to the
    /// busy timeout), where a deferred one that reads first fails with "database is
    /// locked" when another writer got in between.
    async fn write_tx(&self) -> std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Record a new version of an image; returns the row.
    pub async fn add_image(&self, img: &NewImage<'_>) -> Result<ImageRow> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO image_names (name, next_version) VALUES (?, 1) ON CONFLICT(name) DO NOTHING")
            .bind(img.name)
            .execute(&mut *tx)
            .await?;
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE image_names SET next_version = next_version + 1 WHERE name = ? RETURNING next_version - 1",
        )
        .bind(img.name)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO images (name, version, manifest_id, created, source, entries, files, bytes, stored_bytes, added_bytes)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(img.name)
        .bind(version)
        .bind(img.manifest_id)
        .bind(now())
        .bind(img.source)
        .bind(img.entries)
        .bind(img.files)
        .bind(img.bytes)
        .bind(img.stored_bytes)
        .bind(img.added_bytes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.image(img.name, Some(version)).await?.ok_or(DbError::Sqlx(sqlx::Error::RowNotFound))
    }

    /// All image versions, by name then version.
    pub async fn images(&self) -> Result<Vec<ImageRow>> {
        Ok(sqlx::query_as(image_select!("ORDER BY name, version")).fetch_all(&self.pool).await?)
    }

    /// One version (the newest when `version` is None).
    pub async fn image(&self, name: &str, version: Option<i64>) -> Result<Option<ImageRow>> {
        let row = match version {
            Some(v) => {
                sqlx::query_as(image_select!("WHERE name = ? AND version = ?"))
                    .bind(name)
                    .bind(v)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as(image_select!("WHERE name = ? ORDER BY version DESC LIMIT 1"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        Ok(row)
    }

    /// The newest version whose manifest id starts with `prefix`.
    pub async fn image_by_id_prefix(&self, prefix: &str) -> Result<Vec<ImageRow>> {
        Ok(sqlx::query_as(image_select!("WHERE substr(manifest_id, 1, ?) = ? ORDER BY created DESC"))
            .bind(prefix.len() as i64)
            .bind(prefix)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Delete one version, or every version of a name when `version` is None.
    pub async fn delete_image(&self, name: &str, version: Option<i64>) -> Result<u64> {
        let r = match version {
            Some(v) => {
                sqlx::query("DELETE FROM images WHERE name = ? AND version = ?")
                    .bind(name)
                    .bind(v)
                    .execute(&self.pool)
                    .await?
            }
            None => sqlx::query("DELETE FROM images WHERE name = ?").bind(name).execute(&self.pool).await?,
        };
        Ok(r.rows_affected())
    }

    /// Distinct manifest ids referenced by any image.
    pub async fn live_manifests(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT manifest_id FROM images").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Append an event.
    pub async fn event(&self, node: Option<&str>, kind: &str, message: &str) -> Result<()> {
        sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, ?, ?)")
            .bind(now())
            .bind(node)
            .bind(kind)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A node with its addresses.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// `standby` or `compute`.
    pub role: String,
    /// Image to deploy (a reference: NAME, NAME@N or id), if any.
    pub image: Option<String>,
    /// discovered, assigned, deploying, deployed or failed.
    pub state: String,
    /// MAC addresses, lowercase colon form.
    pub macs: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Creation time.
    pub created: String,
    /// Last change.
    pub updated: String,
}

#[derive(FromRow)]
struct NodeRow {
    name: String,
    role: String,
    image: Option<String>,
    state: String,
    created: String,
    updated: String,
}

/// A deployment row.
#[derive(Debug, Clone, FromRow, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    /// Deployment id.
    pub id: i64,
    /// Target node.
    pub node: String,
    /// Image reference as resolved (NAME@N).
    pub image: String,
    /// Manifest id the token is scoped to.
    pub manifest_id: String,
    /// Token expiry.
    pub expires: String,
    /// pending, running, done or failed.
    pub status: String,
    /// Current phase (free text from the deploy client: fetching, writing, ...).
    pub phase: String,
    /// Bytes written so far.
    pub bytes_done: i64,
    /// Bytes to write.
    pub bytes_total: i64,
    /// Files written so far.
    pub files_done: i64,
    /// Files to write.
    pub files_total: i64,
    /// Creation time.
    pub created: String,
    /// When the client started.
    pub started: Option<String>,
    /// When it finished or failed.
    pub finished: Option<String>,
    /// Failure message.
    pub error: Option<String>,
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    /// Target node.
    pub node: &'a str,
    /// Resolved image label (NAME@N).
    pub image: &'a str,
    /// Manifest id the token is scoped to.
    pub manifest_id: &'a str,
    /// BLAKE3 of the token (hex).
    pub token_hash: &'a str,
    /// Expiry (RFC 3339).
    pub expires: &'a str,
    /// Bytes to write.
    pub bytes_total: i64,
    /// Files to write.
    pub files_total: i64,
    /// Started by the node's network boot: earlier unfinished deployments of the node are
    /// superseded (the machine rebooted, so they cannot finish) and the node is deploying.
    pub boot: bool,
}

/// An event row.
#[derive(Debug, Clone, FromRow, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Event id (increasing).
    pub id: i64,
    /// Time, RFC 3339 UTC.
    pub ts: String,
    /// Node concerned, if any.
    pub node: Option<String>,
    /// Kind, dotted (image.capture, node.create, deploy.done, ...).
    pub kind: String,
    /// Human-readable text.
    pub message: String,
}

/// Filter for listing events.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this node.
    pub node: Option<String>,
    /// Only this kind (exact) or kind prefix ending in `.`.
    pub kind: Option<String>,
    /// Not before this time (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
}

/// Why a write to the inventory was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Something with that key exists already.
    #[error("{0}")]
    Conflict(String),
    /// The named row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A database failure.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Db(DbError::Sqlx(e))
    }
}

impl Db {
    async fn node_addrs(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let macs: Vec<(String,)> = sqlx::query_as("SELECT mac FROM node_macs WHERE node = ? ORDER BY mac")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        let ips: Vec<(String,)> = sqlx::query_as("SELECT ip FROM node_ips WHERE node = ? ORDER BY ip")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        Ok((macs.into_iter().map(|m| m.0).collect(), ips.into_iter().map(|i| i.0).collect()))
    }

    async fn node_from(&self, r: NodeRow) -> Result<Node> {
        let (macs, ips) = self.node_addrs(&r.name).await?;
        Ok(Node {
            name: r.name,
            role: r.role,
            image: r.image,
            state: r.state,
            macs,
            ips,
            created: r.created,
            updated: r.updated,
        })
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<Option<Node>> {
        let r: Option<NodeRow> =
            sqlx::query_as("SELECT name, role, image, state, created, updated FROM nodes WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        match r {
            Some(r) => Ok(Some(self.node_from(r).await?)),
            None => Ok(None),
        }
    }

    /// The node that owns a MAC.
    pub async fn node_by_mac(&self, mac: &str) -> Result<Option<Node>> {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT node FROM node_macs WHERE mac = ?").bind(mac).fetch_optional(&self.pool).await?;
        match r {
            Some((n,)) => self.node(&n).await,
            None => Ok(None),
        }
    }

    /// A page of nodes by name, and the total count.
    pub async fn nodes(&self, limit: i64, offset: i64) -> Result<(Vec<Node>, i64)> {
        let rows: Vec<NodeRow> = sqlx::query_as(
            "SELECT name, role, image, state, created, updated FROM nodes ORDER BY name LIMIT ? OFFSET ?",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM nodes").fetch_one(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.node_from(r).await?);
        }
        Ok((out, total))
    }

    /// Write a node's MACs and IPs inside a transaction, refusing ones another node owns.
    async fn set_addrs(
        tx: &mut sqlx::SqliteConnection,
        name: &str,
        macs: &[String],
        ips: &[String],
    ) -> std::result::Result<(), Refused> {
        sqlx::query("DELETE FROM node_macs WHERE node = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM node_ips WHERE node = ?").bind(name).execute(&mut *tx).await?;
        for m in macs {
            if let Some((owner,)) = sqlx::query_as::<_, (String,)>("SELECT node FROM node_macs WHERE mac = ?")
                .bind(m)
                .fetch_optional(&mut *tx)
                .await?
            {
                return Err(Refused::Conflict(format!("MAC {m} already belongs to node {owner}")));
            }
            sqlx::query("INSERT INTO node_macs (mac, node) VALUES (?, ?)").bind(m).bind(name).execute(&mut *tx).await?;
        }
        for ip in ips {
            if let Some((owner,)) = sqlx::query_as::<_, (String,)>("SELECT node FROM node_ips WHERE ip = ?")
                .bind(ip)
                .fetch_optional(&mut *tx)
                .await?
            {
                return Err(Refused::Conflict(format!("IP {ip} is already reserved for node {owner}")));
            }
            let lease: Option<(String,)> = sqlx::query_as(
                "SELECT mac FROM leases WHERE ip = ? AND expires > strftime('%s','now') AND mac NOT IN (SELECT mac FROM node_macs WHERE node = ?)",
            )
            .bind(ip)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((mac,)) = lease {
                return Err(Refused::Conflict(format!("IP {ip} is leased to {mac} (another machine)")));
            }
            sqlx::query("INSERT INTO node_ips (ip, node) VALUES (?, ?)").bind(ip).bind(name).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Create a node.
    pub async fn create_node(&self, n: &Node) -> std::result::Result<Node, Refused> {
        let mut tx = self.write_tx().await?;
        if sqlx::query_as::<_, (String,)>("SELECT name FROM nodes WHERE name = ?")
            .bind(&n.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(Refused::Conflict(format!("node {} exists", n.name)));
        }
        let ts = now();
        sqlx::query("INSERT INTO nodes (name, role, image, state, created, updated) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&n.name)
            .bind(&n.role)
            .bind(&n.image)
            .bind(&n.state)
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await?;
        Self::set_addrs(&mut tx, &n.name, &n.macs, &n.ips).await?;
        sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, 'node.create', ?)")
            .bind(&ts)
            .bind(&n.name)
            .bind(format!("node {} created ({}, state {})", n.name, n.role, n.state))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.node(&n.name).await?.ok_or_else(|| Refused::NotFound(n.name.clone()))
    }

    /// Replace a node's fields (name stays).
    pub async fn update_node(&self, n: &Node) -> std::result::Result<Node, Refused> {
        let mut tx = self.write_tx().await?;
        let old: Option<(String,)> =
            sqlx::query_as("SELECT state FROM nodes WHERE name = ?").bind(&n.name).fetch_optional(&mut *tx).await?;
        let Some((old_state,)) = old else { return Err(Refused::NotFound(format!("no node {}", n.name))) };
        let ts = now();
        sqlx::query("UPDATE nodes SET role = ?, image = ?, state = ?, updated = ? WHERE name = ?")
            .bind(&n.role)
            .bind(&n.image)
            .bind(&n.state)
            .bind(&ts)
            .bind(&n.name)
            .execute(&mut *tx)
            .await?;
        Self::set_addrs(&mut tx, &n.name, &n.macs, &n.ips).await?;
        let msg = if old_state != n.state {
            format!("node {} updated; state {old_state} -> {}", n.name, n.state)
        } else {
            format!("node {} updated", n.name)
        };
        sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, 'node.update', ?)")
            .bind(&ts)
            .bind(&n.name)
            .bind(msg)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.node(&n.name).await?.ok_or_else(|| Refused::NotFound(n.name.clone()))
    }

    /// Delete a node (its addresses and deployments go with it).
    pub async fn delete_node(&self, name: &str) -> std::result::Result<(), Refused> {
        let r = sqlx::query("DELETE FROM nodes WHERE name = ?").bind(name).execute(&self.pool).await?;
        if r.rows_affected() == 0 {
            return Err(Refused::NotFound(format!("no node {name}")));
        }
        self.event(Some(name), "node.delete", &format!("node {name} deleted")).await?;
        Ok(())
    }

    /// Events matching a filter, newest first.
    pub async fn events(&self, f: &EventFilter, limit: i64, offset: i64) -> Result<(Vec<Event>, i64)> {
        let kind_exact = f.kind.as_deref().filter(|k| !k.ends_with('.'));
        let kind_prefix = f.kind.as_deref().filter(|k| k.ends_with('.')).map(|k| format!("{k}%"));
        let rows: Vec<Event> = sqlx::query_as(
            "SELECT id, ts, node, kind, message FROM events
             WHERE (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR kind LIKE ?3)
               AND (?4 IS NULL OR ts >= ?4) AND (?5 IS NULL OR ts < ?5)
             ORDER BY id DESC LIMIT ?6 OFFSET ?7",
        )
        .bind(&f.node)
        .bind(kind_exact)
        .bind(&kind_prefix)
        .bind(&f.since)
        .bind(&f.until)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events
             WHERE (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR kind LIKE ?3)
               AND (?4 IS NULL OR ts >= ?4) AND (?5 IS NULL OR ts < ?5)",
        )
        .bind(&f.node)
        .bind(kind_exact)
        .bind(&kind_prefix)
        .bind(&f.since)
        .bind(&f.until)
        .fetch_one(&self.pool)
        .await?;
        Ok((rows, total))
    }

    /// Create a deployment for a node and image with a hashed token.
    pub async fn create_deployment(&self, d: &NewDeployment<'_>) -> std::result::Result<Deployment, Refused> {
        let ts = now();
        let NewDeployment { node, image, manifest_id, token_hash, expires, bytes_total, files_total, boot } = *d;
        let mut tx = self.write_tx().await?;
        if sqlx::query_as::<_, (String,)>("SELECT name FROM nodes WHERE name = ?")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Err(Refused::NotFound(format!("no node {node}")));
        }
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO deployments (node, image, manifest_id, token_hash, expires, status, bytes_total, files_total, created)
             VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING id",
        )
        .bind(node)
        .bind(image)
        .bind(manifest_id)
        .bind(token_hash)
        .bind(expires)
        .bind(bytes_total)
        .bind(files_total)
        .bind(&ts)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, 'deploy.create', ?)")
            .bind(&ts)
            .bind(node)
            .bind(format!("deployment {id} of {image} to {node} created"))
            .execute(&mut *tx)
            .await?;
        if boot {
            let old: Vec<(i64,)> = sqlx::query_as(
                "UPDATE deployments SET status = 'failed', finished = ?, error = ?
                 WHERE node = ? AND id != ? AND status IN ('pending', 'running') RETURNING id",
            )
            .bind(&ts)
            .bind(format!("superseded by deployment {id}: the node network-booted again"))
            .bind(node)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let prev: (String,) =
                sqlx::query_as("SELECT state FROM nodes WHERE name = ?").bind(node).fetch_one(&mut *tx).await?;
            sqlx::query("UPDATE nodes SET state = 'deploying', updated = ? WHERE name = ?")
                .bind(&ts)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            let mut msg = format!("{node} network-booted into deployment {id}; state {} -> deploying", prev.0);
            if !old.is_empty() {
                let ids: Vec<String> = old.iter().map(|o| o.0.to_string()).collect();
                msg.push_str(&format!("; superseded deployment {}", ids.join(", ")));
            }
            sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, 'boot.deploy', ?)")
                .bind(&ts)
                .bind(node)
                .bind(msg)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.deployment(id).await?.ok_or_else(|| Refused::NotFound(format!("deployment {id}")))
    }

    /// One deployment.
    pub async fn deployment(&self, id: i64) -> Result<Option<Deployment>> {
        Ok(sqlx::query_as(concat!("SELECT ", deployment_cols!(), " FROM deployments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The deployment a token hash belongs to.
    pub async fn deployment_by_token(&self, token_hash: &str) -> Result<Option<Deployment>> {
        Ok(sqlx::query_as(concat!("SELECT ", deployment_cols!(), " FROM deployments WHERE token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Deployments, newest first, optionally of one node.
    pub async fn deployments(&self, node: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<Deployment>, i64)> {
        let rows = sqlx::query_as(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE (?1 IS NULL OR node = ?1) ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(node)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments WHERE (?1 IS NULL OR node = ?1)")
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
        Ok((rows, total))
    }

    /// Record progress reported by a deploy client; moves the node's state along.
    pub async fn deployment_progress(
        &self,
        id: i64,
        status: &str,
        phase: &str,
        bytes_done: i64,
        files_done: i64,
        error: Option<&str>,
    ) -> std::result::Result<Deployment, Refused> {
        let ts = now();
        let mut tx = self.write_tx().await?;
        let cur: Option<(String, String)> = sqlx::query_as("SELECT status, node FROM deployments WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((old, node)) = cur else { return Err(Refused::NotFound(format!("no deployment {id}"))) };
        if old == "done" || old == "failed" {
            return Err(Refused::Conflict(format!("deployment {id} is already {old}")));
        }
        let finished = matches!(status, "done" | "failed").then(|| ts.clone());
        sqlx::query(
            "UPDATE deployments SET status = ?, phase = ?, bytes_done = ?, files_done = ?, error = ?,
             started = COALESCE(started, ?), finished = ? WHERE id = ?",
        )
        .bind(status)
        .bind(phase)
        .bind(bytes_done)
        .bind(files_done)
        .bind(error)
        .bind(&ts)
        .bind(&finished)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let node_state = match status {
            "running" => Some("deploying"),
            "done" => Some("deployed"),
            "failed" => Some("failed"),
            _ => None,
        };
        if let Some(s) = node_state {
            sqlx::query("UPDATE nodes SET state = ?, updated = ? WHERE name = ? AND state != ?")
                .bind(s)
                .bind(&ts)
                .bind(&node)
                .bind(s)
                .execute(&mut *tx)
                .await?;
        }
        if old != status {
            let msg = match error {
                Some(e) => format!("deployment {id}: {old} -> {status}: {e}"),
                None => format!("deployment {id}: {old} -> {status}"),
            };
            sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, ?, ?)")
                .bind(&ts)
                .bind(&node)
                .bind(format!("deploy.{status}"))
                .bind(msg)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.deployment(id).await?.ok_or_else(|| Refused::NotFound(format!("deployment {id}")))
    }

    /// Image versions, paged, and the total count.
    pub async fn images_page(&self, limit: i64, offset: i64) -> Result<(Vec<ImageRow>, i64)> {
        let rows = sqlx::query_as(image_select!("ORDER BY name, version LIMIT ? OFFSET ?"))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM images").fetch_one(&self.pool).await?;
        Ok((rows, total))
    }
}

/// A DHCP lease row.
#[derive(Debug, Clone, FromRow, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LeaseRow {
    /// Leased address.
    pub ip: String,
    /// Client MAC.
    pub mac: String,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
    /// offered or bound.
    pub state: String,
}

/// A machine seen during MAC collection.
#[derive(Debug, Clone, FromRow, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Discovered {
    /// MAC address.
    pub mac: String,
    /// PXE client architecture (DHCP option 93), when sent.
    pub arch: Option<i64>,
    /// Vendor class (option 60).
    pub vendor_class: String,
    /// Interface it was seen on.
    pub interface: String,
    /// First seen.
    pub first_seen: String,
    /// Last seen.
    pub last_seen: String,
    /// DHCP packets seen.
    pub count: i64,
    /// The node that already owns this MAC, if any (then it is flagged, not collected).
    #[sqlx(default)]
    pub assigned_to: Option<String>,
}

impl Db {
    /// All leases.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>> {
        Ok(sqlx::query_as("SELECT ip, mac, expires, state FROM leases ORDER BY ip").fetch_all(&self.pool).await?)
    }

    /// Write and drop leases in one transaction (group commit: one fsync for a batch).
    pub async fn apply_leases(&self, puts: &[LeaseRow], removes: &[String]) -> Result<()> {
        if puts.is_empty() && removes.is_empty() {
            return Ok(());
        }
        let ts = now();
        let mut tx = self.write_tx().await?;
        for ip in removes {
            sqlx::query("DELETE FROM leases WHERE ip = ?").bind(ip).execute(&mut *tx).await?;
        }
        for l in puts {
            sqlx::query("DELETE FROM leases WHERE mac = ? AND ip != ?")
                .bind(&l.mac)
                .bind(&l.ip)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO leases (ip, mac, expires, state, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, expires = excluded.expires, state = excluded.state, updated = excluded.updated")
                .bind(&l.ip)
                .bind(&l.mac)
                .bind(l.expires)
                .bind(&l.state)
                .bind(&ts)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The MAC collection window end (seconds since the epoch), if one was opened.
    pub async fn collect_until(&self) -> Result<i64> {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE key = 'collect_until'").fetch_optional(&self.pool).await?;
        Ok(r.and_then(|v| v.0.parse().ok()).unwrap_or(0))
    }

    /// Open (or close, with 0) the MAC collection window.
    pub async fn set_collect_until(&self, until: i64) -> Result<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ('collect_until', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(until.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record a machine seen during collection (counted once per MAC).
    pub async fn record_discovered(
        &self,
        mac: &str,
        arch: Option<u16>,
        vendor_class: &str,
        interface: &str,
    ) -> Result<bool> {
        let ts = now();
        let mut tx = self.write_tx().await?;
        let fresh = sqlx::query_as::<_, (String,)>("SELECT mac FROM discovered WHERE mac = ?")
            .bind(mac)
            .fetch_optional(&mut *tx)
            .await?
            .is_none();
        sqlx::query(
            "INSERT INTO discovered (mac, arch, vendor_class, interface, first_seen, last_seen, count) VALUES (?, ?, ?, ?, ?, ?, 1)
             ON CONFLICT(mac) DO UPDATE SET last_seen = excluded.last_seen, count = count + 1, arch = COALESCE(excluded.arch, arch)",
        )
        .bind(mac)
        .bind(arch.map(i64::from))
        .bind(vendor_class)
        .bind(interface)
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        if fresh {
            sqlx::query("INSERT INTO events (ts, kind, message) VALUES (?, 'dhcp.discovered', ?)")
                .bind(&ts)
                .bind(format!(
                    "discovered {mac} (arch {}, {vendor_class:?}) on {interface}",
                    arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
                ))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// Discovered machines, with the node that owns the MAC when it is already assigned.
    pub async fn discovered(&self) -> Result<Vec<Discovered>> {
        Ok(sqlx::query_as(
            "SELECT d.mac, d.arch, d.vendor_class, d.interface, d.first_seen, d.last_seen, d.count, m.node AS assigned_to
             FROM discovered d LEFT JOIN node_macs m ON m.mac = d.mac ORDER BY d.first_seen",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// MAC -> (node, reserved IPv4, state) for every node with a MAC.
    pub async fn reservations(&self) -> Result<Vec<(String, String, Option<String>, String)>> {
        Ok(sqlx::query_as(
            "SELECT m.mac, n.name, (SELECT ip FROM node_ips i WHERE i.node = n.name AND ip NOT LIKE '%:%' ORDER BY ip LIMIT 1), n.state
             FROM node_macs m JOIN nodes n ON n.name = m.node",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every reserved IP.
    pub async fn reserved_ips(&self) -> Result<Vec<String>> {
        let r: Vec<(String,)> = sqlx::query_as("SELECT ip FROM node_ips").fetch_all(&self.pool).await?;
        Ok(r.into_iter().map(|x| x.0).collect())
    }
}
