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
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
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

    /// Record a new version of an image; returns the row.
    pub async fn add_image(&self, img: &NewImage<'_>) -> Result<ImageRow> {
        let mut tx = self.pool.begin().await?;
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
        self.image(img.name, Some(version))
            .await?
            .ok_or(DbError::Sqlx(sqlx::Error::RowNotFound))
    }

    /// All image versions, by name then version.
    pub async fn images(&self) -> Result<Vec<ImageRow>> {
        Ok(sqlx::query_as(image_select!("ORDER BY name, version"))
            .fetch_all(&self.pool)
            .await?)
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
        Ok(sqlx::query_as(image_select!(
            "WHERE substr(manifest_id, 1, ?) = ? ORDER BY created DESC"
        ))
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
            None => {
                sqlx::query("DELETE FROM images WHERE name = ?")
                    .bind(name)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(r.rows_affected())
    }

    /// Distinct manifest ids referenced by any image.
    pub async fn live_manifests(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT manifest_id FROM images")
            .fetch_all(&self.pool)
            .await?;
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
