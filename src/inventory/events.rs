//! The event log: recording (every kind is a [`EventKind`]) and listing with filters.

use super::{Inventory, InventoryError, Result, page};
use crate::db::EventFilter;
use crate::wire::{Event, EventKind, Page};

/// Which events to list. Empty strings mean "no filter".
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this node.
    pub node: Option<String>,
    /// Only this kind, or kinds starting with it when it ends in `.`.
    pub kind: Option<String>,
    /// Not before (RFC 3339).
    pub since: Option<String>,
    /// Before (RFC 3339).
    pub until: Option<String>,
}

fn check_time(t: &Option<String>) -> Result<()> {
    if let Some(t) = t
        && time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_err()
    {
        return Err(InventoryError::Invalid(format!("{t:?} is not an RFC 3339 time (such as 2026-12-01T09:00:00Z)")));
    }
    Ok(())
}

impl Inventory {
    /// Append an event.
    pub async fn record_event(&self, node: Option<&str>, kind: EventKind, message: &str) -> Result<()> {
        Ok(self.db.event(node, &kind.as_str(), message).await?)
    }

    /// Events matching a query, newest first.
    pub async fn events(&self, q: &EventQuery, limit: i64, offset: i64) -> Result<Page<Event>> {
        super::check_page(limit, offset)?;
        let some = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let (since, until) = (some(&q.since), some(&q.until));
        check_time(&since)?;
        check_time(&until)?;
        let f = EventFilter { node: some(&q.node), kind: some(&q.kind), since, until };
        let (rows, total) = self.db.events(&f, limit, offset).await?;
        Ok(page(rows, total, limit, offset))
    }
}
