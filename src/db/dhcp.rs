//! What the DHCP server keeps: leases, machines seen while collecting MACs, the
//! collection window, and the node reservations it hands out.

use super::{Db, Result, now, parse_stored};
use crate::wire::{LeaseState, NodeState};
use sqlx::FromRow;

/// A DHCP lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Leased address.
    pub ip: String,
    /// Client MAC.
    pub mac: String,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
    /// Offered or bound.
    pub state: LeaseState,
}

/// A machine seen during MAC collection.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct DiscoveredRecord {
    /// MAC address.
    pub mac: String,
    /// PXE client architecture (option 93), when sent.
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
    /// The node that already owns this MAC, if any.
    pub assigned_to: Option<String>,
}

/// A node's reservation as DHCP needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The MAC.
    pub mac: String,
    /// The node owning it.
    pub node: String,
    /// The node's first IPv4 address, if any.
    pub ipv4: Option<String>,
    /// The node's state.
    pub state: NodeState,
}

const COLLECT_UNTIL: &str = "collect_until";

/// A batch as one JSON text bound to `json_each`.
fn json(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| sqlx::Error::Encode(Box::new(e)).into())
}

impl Db {
    /// All leases.
    pub async fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let rows: Vec<(String, String, i64, String)> =
            sqlx::query_as("SELECT ip, mac, expires, state FROM leases ORDER BY ip").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(ip, mac, expires, state)| {
                Ok(LeaseRecord { ip, mac, expires, state: parse_stored(&state, "lease state")? })
            })
            .collect()
    }

    /// Write and drop leases in one transaction (group commit: one fsync for a batch).
    /// The batch goes in as JSON arrays in one multi-statement query, so it costs the
    /// same three round trips to the connection's thread (begin, body, commit) however
    /// many leases it holds. A MAC holds one lease: a put replaces the MAC's other
    /// addresses, and of several puts for one MAC in a batch the last counts.
    pub async fn apply_leases(&self, puts: &[LeaseRecord], removes: &[String]) -> Result<()> {
        if puts.is_empty() && removes.is_empty() {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::with_capacity(puts.len());
        let mut rows: Vec<(&str, &str, i64, &str)> = puts
            .iter()
            .rev()
            .filter(|l| seen.insert(l.mac.as_str()))
            .map(|l| (l.ip.as_str(), l.mac.as_str(), l.expires, l.state.as_str()))
            .collect();
        rows.reverse();
        let mut tx = self.write_tx().await?;
        // ?1 the removed addresses, ?2 the puts as [ip, mac, expires, state], ?3 the time.
        // `WHERE true` lets sqlite tell the upsert's ON CONFLICT from a join constraint.
        sqlx::query(
            "DELETE FROM leases WHERE ip IN (SELECT value FROM json_each(?1));
             DELETE FROM leases WHERE rowid IN (SELECT l.rowid FROM json_each(?2) j JOIN leases l ON l.mac = j.value->>1 AND l.ip != j.value->>0);
             INSERT INTO leases (ip, mac, expires, state, updated) SELECT value->>0, value->>1, value->>2, value->>3, ?3 FROM json_each(?2) WHERE true
             ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, expires = excluded.expires, state = excluded.state, updated = excluded.updated",
        )
        .bind(json(&removes)?)
        .bind(json(&rows)?)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The MAC collection window end (seconds since the epoch); 0 when never opened.
    pub async fn collect_until(&self) -> Result<i64> {
        Ok(self.setting(COLLECT_UNTIL).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Open (or close, with 0) the MAC collection window, and record the event.
    pub async fn set_collect_until(&self, until: i64, kind: &str, message: &str) -> Result<()> {
        self.set_setting(COLLECT_UNTIL, &until.to_string()).await?;
        self.event(None, kind, message).await
    }

    /// Record a machine seen during collection (counted once per MAC); `event` is
    /// recorded the first time a MAC is seen. Returns whether it was new.
    pub async fn record_discovered(
        &self,
        mac: &str,
        arch: Option<u16>,
        vendor_class: &str,
        interface: &str,
        kind: &str,
        event: impl FnOnce() -> String,
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
            super::events::insert(&mut tx, &ts, None, kind, &event()).await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// Discovered machines, with the node that owns the MAC when it is already assigned.
    pub async fn discovered(&self) -> Result<Vec<DiscoveredRecord>> {
        Ok(sqlx::query_as(
            "SELECT d.mac, d.arch, d.vendor_class, d.interface, d.first_seen, d.last_seen, d.count, m.node AS assigned_to
             FROM discovered d LEFT JOIN node_macs m ON m.mac = d.mac ORDER BY d.first_seen",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every node MAC with its node, first reserved IPv4 and state.
    pub async fn reservations(&self) -> Result<Vec<Reservation>> {
        let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT m.mac, n.name, (SELECT ip FROM node_ips i WHERE i.node = n.name AND ip NOT LIKE '%:%' ORDER BY ip LIMIT 1), n.state
             FROM node_macs m JOIN nodes n ON n.name = m.node",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(mac, node, ipv4, state)| {
                Ok(Reservation { mac, node, ipv4, state: parse_stored(&state, "node state")? })
            })
            .collect()
    }

    /// Every reserved IP.
    pub async fn reserved_ips(&self) -> Result<Vec<String>> {
        let r: Vec<(String,)> = sqlx::query_as("SELECT ip FROM node_ips").fetch_all(&self.pool).await?;
        Ok(r.into_iter().map(|x| x.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseRecord;
    use crate::db::{NodeRecord, testing::db};
    use crate::wire::{LeaseState, NodeState, Role};

    #[tokio::test]
    async fn a_batch_ends_as_its_removes_then_its_puts_one_by_one() {
        let (db, _d) = db().await;
        let l = |ip: &str, mac: &str, expires, state| LeaseRecord { ip: ip.into(), mac: mac.into(), expires, state };
        let (x, y, z) = ("52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c");
        db.apply_leases(
            &[
                l("10.0.0.1", x, 10, LeaseState::Bound),
                l("10.0.0.3", y, 10, LeaseState::Bound),
                l("10.0.0.9", z, 10, LeaseState::Bound),
            ],
            &[],
        )
        .await
        .unwrap();
        // One batch: 10.0.0.9 removed and put again (the put wins); x moves twice (the
        // last address counts, its old one goes); 10.0.0.3 passes from y to z (z's other
        // address goes); a new client.
        db.apply_leases(
            &[
                l("10.0.0.9", z, 20, LeaseState::Offered),
                l("10.0.0.2", x, 20, LeaseState::Offered),
                l("10.0.0.4", x, 30, LeaseState::Bound),
                l("10.0.0.3", z, 30, LeaseState::Bound),
                l("10.0.0.5", "52:54:00:00:00:0d", 30, LeaseState::Bound),
            ],
            &["10.0.0.9".into()],
        )
        .await
        .unwrap();
        let mut got = db.leases().await.unwrap();
        got.sort_by(|a, b| a.ip.cmp(&b.ip));
        assert_eq!(
            got,
            vec![
                l("10.0.0.3", z, 30, LeaseState::Bound),
                l("10.0.0.4", x, 30, LeaseState::Bound),
                l("10.0.0.5", "52:54:00:00:00:0d", 30, LeaseState::Bound),
            ]
        );
        // Names that need quoting in JSON go through unchanged.
        db.apply_leases(&[l("10.0.0.6", "a\"b\\c", 1, LeaseState::Bound)], &["x\"y".into()]).await.unwrap();
        assert!(db.leases().await.unwrap().iter().any(|r| r.mac == "a\"b\\c"));
    }

    #[tokio::test]
    async fn leases_discovered_and_reservations() {
        let (db, _d) = db().await;
        let l = |ip: &str, mac: &str, state| LeaseRecord { ip: ip.into(), mac: mac.into(), expires: 100, state };
        db.apply_leases(&[l("10.0.0.10", "52:54:00:00:00:01", LeaseState::Offered)], &[]).await.unwrap();
        // A client holds one lease: a new address for the same MAC replaces the old one.
        db.apply_leases(&[l("10.0.0.11", "52:54:00:00:00:01", LeaseState::Bound)], &[]).await.unwrap();
        assert_eq!(db.leases().await.unwrap(), vec![l("10.0.0.11", "52:54:00:00:00:01", LeaseState::Bound)]);
        db.apply_leases(&[], &["10.0.0.11".into()]).await.unwrap();
        assert!(db.leases().await.unwrap().is_empty());

        assert_eq!(db.collect_until().await.unwrap(), 0);
        db.set_collect_until(1234, "dhcp.collect", "open").await.unwrap();
        assert_eq!(db.collect_until().await.unwrap(), 1234);
        assert!(
            db.record_discovered("52:54:00:00:00:02", Some(7), "PXEClient", "eth0", "dhcp.discovered", || "new".into())
                .await
                .unwrap()
        );
        assert!(
            !db.record_discovered("52:54:00:00:00:02", None, "PXEClient", "eth0", "dhcp.discovered", || "again".into())
                .await
                .unwrap()
        );
        let d = db.discovered().await.unwrap();
        assert_eq!((d.len(), d[0].count, d[0].arch), (1, 2, Some(7)), "arch is kept when a later packet has none");
        let n = NodeRecord {
            name: "n".into(),
            role: Role::Standby,
            image: None,
            state: NodeState::Discovered,
            macs: vec!["52:54:00:00:00:02".into()],
            ips: vec!["fd00::5".into(), "10.0.0.5".into()],
            created: String::new(),
            updated: String::new(),
        };
        db.create_node(&n, "node.create", "").await.unwrap();
        assert_eq!(db.discovered().await.unwrap()[0].assigned_to.as_deref(), Some("n"));
        let r = db.reservations().await.unwrap();
        assert_eq!(
            (r[0].node.as_str(), r[0].ipv4.as_deref(), r[0].state),
            ("n", Some("10.0.0.5"), NodeState::Discovered)
        );
        let mut ips = db.reserved_ips().await.unwrap();
        ips.sort();
        assert_eq!(ips, vec!["10.0.0.5", "fd00::5"]);
        let (ev, _) = db.events(&Default::default(), 10, 0).await.unwrap();
        assert_eq!(ev.iter().filter(|e| e.kind == "dhcp.discovered").count(), 1);
    }
}
