//! What DHCP and network boot ask of the inventory: leases, the MAC collection window,
//! machines seen while collecting, and node reservations.

use super::{Inventory, InventoryError, Result};
use crate::wire::{COLLECT_MAX_MINUTES, CollectState, Discovered, EventKind, Lease};

pub use crate::db::{LeaseRecord, Reservation};

impl Inventory {
    /// All leases.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self.db.leases().await?.into_iter().map(Lease::from).collect())
    }

    /// Lease rows as DHCP restores them.
    pub async fn lease_records(&self) -> Result<Vec<LeaseRecord>> {
        Ok(self.db.leases().await?)
    }

    /// Write and drop leases in one transaction (one fsync for a batch).
    pub async fn apply_leases(&self, puts: &[LeaseRecord], removes: &[String]) -> Result<()> {
        Ok(self.db.apply_leases(puts, removes).await?)
    }

    /// Is MAC collection on at `now` (seconds since the epoch)?
    pub async fn collecting(&self, now: i64) -> Result<bool> {
        Ok(self.db.collect_until().await? > now)
    }

    /// Open MAC collection for `minutes` from now, or close it with 0.
    pub async fn collect(&self, minutes: i64) -> Result<CollectState> {
        if !(0..=COLLECT_MAX_MINUTES).contains(&minutes) {
            return Err(InventoryError::Invalid(format!(
                "minutes must be between 0 and {COLLECT_MAX_MINUTES} (a week)"
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        let until = now + time::Duration::minutes(minutes);
        let msg = if minutes == 0 {
            "MAC collection closed".to_string()
        } else {
            format!("MAC collection open for {minutes} minute(s)")
        };
        let stored = if minutes == 0 { 0 } else { until.unix_timestamp() };
        self.db.set_collect_until(stored, &EventKind::DhcpCollect.as_str(), &msg).await?;
        let until = until
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| InventoryError::Invalid(format!("collection end: {e}")))?;
        Ok(CollectState { collecting: minutes > 0, until })
    }

    /// Record a machine seen while collecting; true when it is new.
    pub async fn record_discovered(
        &self,
        mac: &str,
        arch: Option<u16>,
        vendor_class: &str,
        interface: &str,
    ) -> Result<bool> {
        let event = || {
            format!(
                "discovered {mac} (arch {}, {vendor_class:?}) on {interface}",
                arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            )
        };
        Ok(self
            .db
            .record_discovered(mac, arch, vendor_class, interface, &EventKind::DhcpDiscovered.as_str(), event)
            .await?)
    }

    /// Machines seen while collecting.
    pub async fn discovered(&self) -> Result<Vec<Discovered>> {
        Ok(self.db.discovered().await?.into_iter().map(Discovered::from).collect())
    }

    /// Every node MAC with its node, first IPv4 and state.
    pub async fn reservations(&self) -> Result<Vec<Reservation>> {
        Ok(self.db.reservations().await?)
    }

    /// Every reserved IP.
    pub async fn reserved_ips(&self) -> Result<Vec<String>> {
        Ok(self.db.reserved_ips().await?)
    }
}
