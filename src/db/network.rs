//! A node's network identity: its interfaces and their addresses.

use super::{Db, DbError, Result, now};

/// The settings key of the config file `serve` runs with.
const SERVE_CONFIG: &str = "serve.config";

/// One stored interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRecord {
    /// Kernel name, when known.
    pub name: Option<String>,
    /// MAC (lowercase colon form), when known.
    pub mac: Option<String>,
    /// Addresses as `ip/prefix`, in order.
    pub addresses: Vec<String>,
    /// Gateway.
    pub gateway: Option<String>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// Role (`private`, `public` or a network name).
    pub role: String,
}

/// Who holds an address: a node's interface or its DHCP reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwner {
    /// The address (no prefix).
    pub ip: String,
    /// The node.
    pub node: String,
}

impl Db {
    /// A node's interfaces and force flag (`None`: no such node).
    pub async fn network(&self, node: &str) -> Result<Option<(Vec<InterfaceRecord>, bool)>> {
        let force: Option<(i64,)> = sqlx::query_as("SELECT network_force FROM nodes WHERE name = ?")
            .bind(node)
            .fetch_optional(&self.pool)
            .await?;
        let Some((force,)) = force else { return Ok(None) };
        type Row = (i64, Option<String>, Option<String>, Option<String>, String, String);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT position, name, mac, gateway, dns, role FROM node_interfaces WHERE node = ? ORDER BY position",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        let addrs: Vec<(i64, String, i64)> =
            sqlx::query_as("SELECT position, ip, prefix FROM node_if_addrs WHERE node = ? ORDER BY position, seq")
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (pos, name, mac, gateway, dns, role) in rows {
            let dns: Vec<String> = serde_json::from_str(&dns)
                .map_err(|_| DbError::BadValue(format!("DNS list {dns:?} of node {node}")))?;
            let addresses = addrs.iter().filter(|a| a.0 == pos).map(|(_, ip, p)| format!("{ip}/{p}")).collect();
            out.push(InterfaceRecord { name, mac, addresses, gateway, dns, role });
        }
        Ok(Some((out, force != 0)))
    }

    /// Replace a node's interfaces and force flag, refusing an address another node holds
    /// (on an interface or as its reservation) or that is leased to another machine; the
    /// change and its event are one transaction.
    pub async fn set_network(
        &self,
        node: &str,
        interfaces: &[InterfaceRecord],
        force: bool,
        kind: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE nodes SET network_force = ?, updated = ? WHERE name = ?")
            .bind(i64::from(force))
            .bind(now())
            .bind(node)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("no node {node}")));
        }
        sqlx::query("DELETE FROM node_interfaces WHERE node = ?").bind(node).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM node_if_addrs WHERE node = ?").bind(node).execute(&mut *tx).await?;
        for (pos, i) in interfaces.iter().enumerate() {
            let dns = serde_json::to_string(&i.dns).map_err(|e| DbError::BadValue(e.to_string()))?;
            sqlx::query(
                "INSERT INTO node_interfaces (node, position, name, mac, gateway, dns, role) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(node)
            .bind(pos as i64)
            .bind(&i.name)
            .bind(&i.mac)
            .bind(&i.gateway)
            .bind(&dns)
            .bind(&i.role)
            .execute(&mut *tx)
            .await?;
            for (seq, a) in i.addresses.iter().enumerate() {
                let (ip, prefix) = a.split_once('/').ok_or_else(|| DbError::BadValue(format!("address {a:?}")))?;
                let prefix: i64 = prefix.parse().map_err(|_| DbError::BadValue(format!("address {a:?}")))?;
                let owner: Option<(String,)> = sqlx::query_as(
                    "SELECT node FROM node_if_addrs WHERE ip = ? UNION SELECT node FROM node_ips WHERE ip = ? AND node != ?",
                )
                .bind(ip)
                .bind(ip)
                .bind(node)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((owner,)) = owner {
                    return Err(DbError::Conflict(format!("address {ip} already belongs to node {owner}")));
                }
                let lease: Option<(String,)> = sqlx::query_as(
                    "SELECT mac FROM leases WHERE ip = ? AND expires > strftime('%s','now') AND mac NOT IN (SELECT mac FROM node_macs WHERE node = ?)",
                )
                .bind(ip)
                .bind(node)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((mac,)) = lease {
                    return Err(DbError::Conflict(format!("address {ip} is leased to {mac} (another machine)")));
                }
                sqlx::query("INSERT INTO node_if_addrs (ip, node, position, seq, prefix) VALUES (?, ?, ?, ?, ?)")
                    .bind(ip)
                    .bind(node)
                    .bind(pos as i64)
                    .bind(seq as i64)
                    .bind(prefix)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        super::events::insert(&mut tx, &now(), Some(node), kind, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The config file `serve` last started with (its networks and `[failover]` are the
    /// primary's), if it had one.
    pub async fn serve_config(&self) -> Result<Option<String>> {
        self.setting(SERVE_CONFIG).await.map(|v| v.filter(|p| !p.is_empty()))
    }

    /// Record the config file `serve` runs with (`None`: its embedded defaults).
    pub async fn set_serve_config(&self, path: Option<&str>) -> Result<()> {
        self.set_setting(SERVE_CONFIG, path.unwrap_or("")).await
    }

    /// Every address some node holds: on its interfaces, reserved, or leased (live leases).
    pub async fn held_addresses(&self) -> Result<Vec<AddressOwner>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT ip, node FROM node_if_addrs UNION SELECT ip, node FROM node_ips
             UNION SELECT l.ip, COALESCE((SELECT node FROM node_macs m WHERE m.mac = l.mac), l.mac)
               FROM leases l WHERE l.expires > strftime('%s','now')",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(ip, node)| AddressOwner { ip, node }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::InterfaceRecord;
    use crate::db::DbError;
    use crate::db::testing::{db, node};

    fn iface(role: &str, addrs: &[&str]) -> InterfaceRecord {
        InterfaceRecord {
            name: Some("ens3".into()),
            mac: Some("52:54:00:00:01:01".into()),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            gateway: Some("10.0.0.254".into()),
            dns: vec!["10.0.0.254".into()],
            role: role.into(),
        }
    }

    #[tokio::test]
    async fn interfaces_round_trip_and_addresses_belong_to_one_node() {
        let (db, _d) = db().await;
        assert!(db.network("a").await.unwrap().is_none());
        assert!(matches!(db.set_network("a", &[], false, "node.network", "").await, Err(DbError::NotFound(_))));
        db.create_node(&node("a", &["52:54:00:00:01:01"], &[]), "node.create", "a").await.unwrap();
        db.create_node(&node("b", &[], &["10.0.0.7"]), "node.create", "b").await.unwrap();
        assert_eq!(db.network("a").await.unwrap(), Some((vec![], false)));
        let set = vec![iface("private", &["10.0.0.2/24", "fd00::2/64"]), iface("public", &["192.0.2.11/24"])];
        db.set_network("a", &set, true, "node.network", "set").await.unwrap();
        assert_eq!(db.network("a").await.unwrap(), Some((set.clone(), true)));
        // b cannot take a's address, nor a take b's reservation; a refused change leaves a as it was.
        let e = db.set_network("b", &[iface("private", &["10.0.0.2/24"])], false, "node.network", "").await;
        assert_eq!(e.unwrap_err().to_string(), "address 10.0.0.2 already belongs to node a");
        let e = db.set_network("a", &[iface("private", &["10.0.0.7/24"])], false, "node.network", "").await;
        assert_eq!(e.unwrap_err().to_string(), "address 10.0.0.7 already belongs to node b");
        assert_eq!(db.network("a").await.unwrap(), Some((set, true)));
        let held = db.held_addresses().await.unwrap();
        assert!(held.iter().any(|h| h.ip == "192.0.2.11" && h.node == "a"), "{held:?}");
        assert!(held.iter().any(|h| h.ip == "10.0.0.7" && h.node == "b"), "{held:?}");
        // Setting again replaces; deleting the node frees its addresses.
        db.set_network("a", &[iface("private", &["10.0.0.3/24"])], false, "node.network", "").await.unwrap();
        db.set_network("b", &[iface("private", &["10.0.0.2/24"])], false, "node.network", "").await.unwrap();
        db.delete_node("b", "node.delete", "").await.unwrap();
        assert!(!db.held_addresses().await.unwrap().iter().any(|h| h.node == "b"));
    }
}
