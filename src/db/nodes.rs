//! Nodes with their MACs and IPs (each address owned by at most one node).

use super::{Db, DbError, Result, now, parse_stored};
use crate::wire::{NodeState, Role};
use sqlx::FromRow;

/// A node row with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Image reference, if any.
    pub image: Option<String>,
    /// State.
    pub state: NodeState,
    /// MACs, lowercase colon form, sorted.
    pub macs: Vec<String>,
    /// IPs, sorted.
    pub ips: Vec<String>,
    /// Creation time.
    pub created: String,
    /// Last change.
    pub updated: String,
}

#[derive(FromRow)]
struct Row {
    name: String,
    role: String,
    image: Option<String>,
    state: String,
    created: String,
    updated: String,
}

/// Columns of a node row, as a literal so queries stay static strings.
macro_rules! node_select {
    ($rest:literal) => {
        concat!("SELECT name, role, image, state, created, updated FROM nodes ", $rest)
    };
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

    async fn node_from(&self, r: Row) -> Result<NodeRecord> {
        let (macs, ips) = self.node_addrs(&r.name).await?;
        Ok(NodeRecord {
            role: parse_stored(&r.role, "role")?,
            state: parse_stored(&r.state, "node state")?,
            name: r.name,
            image: r.image,
            macs,
            ips,
            created: r.created,
            updated: r.updated,
        })
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<Option<NodeRecord>> {
        let r: Option<Row> =
            sqlx::query_as(node_select!("WHERE name = ?")).bind(name).fetch_optional(&self.pool).await?;
        match r {
            Some(r) => Ok(Some(self.node_from(r).await?)),
            None => Ok(None),
        }
    }

    /// The node that owns a MAC.
    pub async fn node_by_mac(&self, mac: &str) -> Result<Option<NodeRecord>> {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT node FROM node_macs WHERE mac = ?").bind(mac).fetch_optional(&self.pool).await?;
        match r {
            Some((n,)) => self.node(&n).await,
            None => Ok(None),
        }
    }

    /// A page of nodes by name, and the total count.
    pub async fn nodes(&self, limit: i64, offset: i64) -> Result<(Vec<NodeRecord>, i64)> {
        let rows: Vec<Row> = sqlx::query_as(node_select!("ORDER BY name LIMIT ? OFFSET ?"))
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

    /// Write a node's MACs and IPs inside a transaction, refusing ones another node owns
    /// and IPs leased to another machine.
    async fn set_addrs(tx: &mut sqlx::SqliteConnection, name: &str, macs: &[String], ips: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM node_macs WHERE node = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM node_ips WHERE node = ?").bind(name).execute(&mut *tx).await?;
        for m in macs {
            if let Some((owner,)) = sqlx::query_as::<_, (String,)>("SELECT node FROM node_macs WHERE mac = ?")
                .bind(m)
                .fetch_optional(&mut *tx)
                .await?
            {
                return Err(DbError::Conflict(format!("MAC {m} already belongs to node {owner}")));
            }
            sqlx::query("INSERT INTO node_macs (mac, node) VALUES (?, ?)").bind(m).bind(name).execute(&mut *tx).await?;
        }
        for ip in ips {
            if let Some((owner,)) = sqlx::query_as::<_, (String,)>(
                "SELECT node FROM node_ips WHERE ip = ? UNION SELECT node FROM node_if_addrs WHERE ip = ? AND node != ?",
            )
            .bind(ip)
            .bind(ip)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            {
                return Err(DbError::Conflict(format!("IP {ip} is already reserved for node {owner}")));
            }
            let lease: Option<(String,)> = sqlx::query_as(
                "SELECT mac FROM leases WHERE ip = ? AND expires > strftime('%s','now') AND mac NOT IN (SELECT mac FROM node_macs WHERE node = ?)",
            )
            .bind(ip)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((mac,)) = lease {
                return Err(DbError::Conflict(format!("IP {ip} is leased to {mac} (another machine)")));
            }
            sqlx::query("INSERT INTO node_ips (ip, node) VALUES (?, ?)").bind(ip).bind(name).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Create a node and record `message` as its `node.create` event, in one transaction.
    pub async fn create_node(&self, n: &NodeRecord, kind: &str, message: &str) -> Result<NodeRecord> {
        let mut tx = self.write_tx().await?;
        if sqlx::query_as::<_, (String,)>("SELECT name FROM nodes WHERE name = ?")
            .bind(&n.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(DbError::Conflict(format!("node {} exists", n.name)));
        }
        let ts = now();
        sqlx::query("INSERT INTO nodes (name, role, image, state, created, updated) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&n.name)
            .bind(n.role.as_str())
            .bind(&n.image)
            .bind(n.state.as_str())
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await?;
        Self::set_addrs(&mut tx, &n.name, &n.macs, &n.ips).await?;
        super::events::insert(&mut tx, &ts, Some(&n.name), kind, message).await?;
        tx.commit().await?;
        self.node(&n.name).await?.ok_or_else(|| DbError::NotFound(format!("node {} vanished", n.name)))
    }

    /// Replace a node's fields (the name stays) if its state is still `expected` (so a
    /// concurrent change is not overwritten by a rule decided on stale data); the event
    /// message is made from the old state.
    pub async fn update_node(
        &self,
        n: &NodeRecord,
        expected: NodeState,
        kind: &str,
        message: impl FnOnce(NodeState) -> String,
    ) -> Result<NodeRecord> {
        let mut tx = self.write_tx().await?;
        let old: Option<(String,)> =
            sqlx::query_as("SELECT state FROM nodes WHERE name = ?").bind(&n.name).fetch_optional(&mut *tx).await?;
        let Some((old,)) = old else { return Err(DbError::NotFound(format!("no node {}", n.name))) };
        let old: NodeState = parse_stored(&old, "node state")?;
        if old != expected {
            return Err(DbError::Conflict(format!(
                "node {} changed meanwhile (state {old}, not {expected}); try again",
                n.name
            )));
        }
        let ts = now();
        sqlx::query("UPDATE nodes SET role = ?, image = ?, state = ?, updated = ? WHERE name = ?")
            .bind(n.role.as_str())
            .bind(&n.image)
            .bind(n.state.as_str())
            .bind(&ts)
            .bind(&n.name)
            .execute(&mut *tx)
            .await?;
        Self::set_addrs(&mut tx, &n.name, &n.macs, &n.ips).await?;
        super::events::insert(&mut tx, &ts, Some(&n.name), kind, &message(old)).await?;
        tx.commit().await?;
        self.node(&n.name).await?.ok_or_else(|| DbError::NotFound(format!("node {} vanished", n.name)))
    }

    /// Delete a node (its addresses and deployments go with it) and record the event.
    pub async fn delete_node(&self, name: &str, kind: &str, message: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM nodes WHERE name = ?").bind(name).execute(&mut *tx).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("no node {name}")));
        }
        super::events::insert(&mut tx, &now(), Some(name), kind, message).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::db::testing::{db, node};
    use crate::db::{DbError, LeaseRecord};
    use crate::wire::{LeaseState, NodeState};

    #[tokio::test]
    async fn addresses_belong_to_one_node_and_conflicts_change_nothing() {
        let (db, _d) = db().await;
        let a = db.create_node(&node("a", &["52:54:00:00:00:01"], &["10.0.0.5"]), "node.create", "a").await.unwrap();
        assert_eq!((a.macs.len(), a.ips.len(), a.state), (1, 1, NodeState::Discovered));
        assert!(matches!(db.create_node(&node("a", &[], &[]), "node.create", "").await, Err(DbError::Conflict(_))));
        let e = db.create_node(&node("b", &["52:54:00:00:00:01"], &[]), "node.create", "").await.unwrap_err();
        assert_eq!(e.to_string(), "MAC 52:54:00:00:00:01 already belongs to node a");
        assert!(db.node("b").await.unwrap().is_none(), "the failed create left nothing behind");
        let e = db.create_node(&node("b", &[], &["10.0.0.5"]), "node.create", "").await.unwrap_err();
        assert_eq!(e.to_string(), "IP 10.0.0.5 is already reserved for node a");
        // An IP leased to another machine is refused; one leased to the node itself is not.
        let far = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let lease = |ip: &str, mac: &str| LeaseRecord {
            ip: ip.into(),
            mac: mac.into(),
            expires: far,
            state: LeaseState::Bound,
        };
        db.apply_leases(&[lease("10.0.0.9", "52:54:00:00:00:99"), lease("10.0.0.8", "52:54:00:00:00:01")], &[])
            .await
            .unwrap();
        let e = db.create_node(&node("b", &[], &["10.0.0.9"]), "node.create", "").await.unwrap_err();
        assert!(e.to_string().contains("leased to 52:54:00:00:00:99"), "{e}");
        let mut a2 = a.clone();
        a2.ips.push("10.0.0.8".into());
        let a2 = db.update_node(&a2, NodeState::Discovered, "node.update", |old| format!("from {old}")).await.unwrap();
        assert_eq!(a2.ips, vec!["10.0.0.5", "10.0.0.8"]);
        assert_eq!(db.node_by_mac("52:54:00:00:00:01").await.unwrap().unwrap().name, "a");
        // A rule decided on a stale state is refused.
        let e = db.update_node(&a2, NodeState::Deployed, "node.update", |_| String::new()).await.unwrap_err();
        assert!(matches!(e, DbError::Conflict(_)), "{e}");
        db.delete_node("a", "node.delete", "gone").await.unwrap();
        assert!(matches!(db.delete_node("a", "node.delete", "").await, Err(DbError::NotFound(_))));
        assert!(db.node_by_mac("52:54:00:00:00:01").await.unwrap().is_none());
        let (ev, _) = db.events(&Default::default(), 10, 0).await.unwrap();
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["node.delete", "node.update", "node.create"]);
    }

    #[tokio::test]
    async fn a_stored_state_this_version_does_not_know_is_an_error() {
        let (db, _d) = db().await;
        db.create_node(&node("a", &[], &[]), "node.create", "").await.unwrap();
        sqlx::query("UPDATE nodes SET state = 'levitating'").execute(&db.pool).await.unwrap();
        let e = db.node("a").await.unwrap_err();
        assert!(e.to_string().contains("node state \"levitating\""), "{e}");
    }
}
