//! The append-only event log.

use super::{Db, Result, now};
use sqlx::FromRow;

/// An event row.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct EventRecord {
    /// Event id (increasing).
    pub id: i64,
    /// Time.
    pub ts: String,
    /// Node concerned, if any.
    pub node: Option<String>,
    /// Kind, dotted.
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

/// Append an event inside a transaction (so it commits with the change it describes).
pub(super) async fn insert(
    tx: &mut sqlx::SqliteConnection,
    ts: &str,
    node: Option<&str>,
    kind: &str,
    message: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO events (ts, node, kind, message) VALUES (?, ?, ?, ?)")
        .bind(ts)
        .bind(node)
        .bind(kind)
        .bind(message)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

impl Db {
    /// Append an event.
    pub async fn event(&self, node: Option<&str>, kind: &str, message: &str) -> Result<()> {
        let mut c = self.pool.acquire().await?;
        insert(&mut c, &now(), node, kind, message).await?;
        Ok(())
    }

    /// Events matching a filter, newest first, and how many match.
    pub async fn events(&self, f: &EventFilter, limit: i64, offset: i64) -> Result<(Vec<EventRecord>, i64)> {
        let kind_exact = f.kind.as_deref().filter(|k| !k.ends_with('.'));
        let kind_prefix = f.kind.as_deref().filter(|k| k.ends_with('.')).map(|k| format!("{k}%"));
        let rows: Vec<EventRecord> = sqlx::query_as(
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
}

#[cfg(test)]
mod tests {
    use super::EventFilter;
    use crate::db::testing::db;

    #[tokio::test]
    async fn filters_by_node_kind_prefix_and_time() {
        let (db, _d) = db().await;
        db.event(Some("n1"), "boot.local", "one").await.unwrap();
        db.event(None, "image.capture", "two").await.unwrap();
        db.event(Some("n1"), "boot.deploy", "three").await.unwrap();
        let all = |f: EventFilter| {
            let db = db.clone();
            async move { db.events(&f, 100, 0).await.unwrap() }
        };
        let (ev, n) = all(EventFilter::default()).await;
        assert_eq!((n, ev[0].message.as_str()), (3, "three"));
        let (ev, n) = all(EventFilter { node: Some("n1".into()), ..Default::default() }).await;
        assert_eq!((n, ev.len()), (2, 2));
        let (_, n) = all(EventFilter { kind: Some("boot.".into()), ..Default::default() }).await;
        assert_eq!(n, 2);
        let (_, n) = all(EventFilter { kind: Some("boot".into()), ..Default::default() }).await;
        assert_eq!(n, 0, "a kind without a trailing dot matches exactly");
        let (_, n) = all(EventFilter { since: Some("2999-01-01T00:00:00Z".into()), ..Default::default() }).await;
        assert_eq!(n, 0);
        let (ev, n) = db.events(&EventFilter::default(), 1, 2).await.unwrap();
        assert_eq!((n, ev[0].message.as_str()), (3, "one"));
    }
}
