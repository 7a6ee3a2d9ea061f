//! The inventory database: sqlite through sqlx, schema in `migrations/`, one module per
//! table group. Only [`crate::inventory`] uses it: the rules (which transitions are
//! allowed, what a change records in the event log) live there; this layer keeps the
//! rows and makes each multi-row change one transaction.
//!
//! Invariants kept here:
//! - every write that reads first runs in a `BEGIN IMMEDIATE` transaction, so a second
//!   writer waits instead of failing with "database is locked";
//! - a MAC or IP belongs to at most one node (checked inside the same transaction);
//! - states, statuses and roles are stored as the `as_str` of their [`crate::wire`] enum,
//!   and a stored value that does not parse is an error, never a default.

mod deployments;
mod dhcp;
mod events;
mod hardware;
mod images;
mod network;
mod nodes;

pub use deployments::{DeploymentRecord, NewDeployment, ProgressUpdate, Supersede};
pub use dhcp::{DiscoveredRecord, LeaseRecord, Reservation};
pub use events::{EventFilter, EventRecord};
pub use hardware::HardwareRecord;
pub use images::{ImageRecord, NewImage};
pub use network::{AddressOwner, InterfaceRecord};
pub use nodes::NodeRecord;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
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
    /// The change conflicts with a row that exists (a MAC of another node, ...).
    #[error("{0}")]
    Conflict(String),
    /// The row the change is about does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored value is not one this version knows (a newer server wrote it?).
    #[error("inventory database holds {0}")]
    BadValue(String),
}

/// Result type of the database layer.
pub type Result<T> = std::result::Result<T, DbError>;

/// Current time as RFC 3339 UTC with milliseconds (the format of every stored time, so
/// that text comparison is time comparison).
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// A time in the stored format.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

/// Parse a stored closed-set value.
fn parse_stored<T: std::str::FromStr>(v: &str, what: &str) -> Result<T> {
    v.parse().map_err(|_| DbError::BadValue(format!("{what} {v:?}")))
}

/// The inventory database.
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
        // No ping before handing out a connection: a local file does not go stale, and
        // the ping is a round trip to the connection's thread on every transaction.
        let pool = SqlitePoolOptions::new().max_connections(4).test_before_acquire(false).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool })
    }

    /// A write transaction. IMMEDIATE takes the write lock up front (waiting up to the
    /// busy timeout), where a deferred one that reads first fails with "database is
    /// locked" when another writer got in between.
    async fn write_tx(&self) -> std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// A small server-wide setting.
    async fn setting(&self, key: &str) -> Result<Option<String>> {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?;
        Ok(r.map(|v| v.0))
    }

    /// Set a small server-wide setting.
    async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{Db, NodeRecord};
    use crate::wire::{NodeState, Role};

    /// A discovered standby with these MACs and IPs.
    pub fn node(name: &str, macs: &[&str], ips: &[&str]) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            role: Role::Standby,
            image: None,
            state: NodeState::Discovered,
            macs: macs.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            created: String::new(),
            updated: String::new(),
        }
    }

    /// A database in a fresh temporary directory (kept alive by the returned guard).
    pub async fn db() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).await.expect("open db");
        (db, dir)
    }
}
