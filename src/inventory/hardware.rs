//! Node hardware as the boot environment found it: kept per node, so the image's disk
//! layout can be planned for that node before anything is erased.

use super::{Inventory, InventoryError, Result};
use crate::layout::plan::{TargetDisk, plan};
use crate::wire::{Hardware, HardwareReport, NodePlan};

impl Inventory {
    /// Keep what a node's boot environment found (checked first).
    pub async fn report_hardware(&self, node: &str, deployment: Option<i64>, h: &Hardware) -> Result<HardwareReport> {
        h.check().map_err(|e| InventoryError::Invalid(e.to_string()))?;
        let json = serde_json::to_string(h).map_err(|e| InventoryError::Invalid(format!("hardware report: {e}")))?;
        let r = self.db.set_hardware(node, deployment, &json).await?;
        Ok(HardwareReport { reported: r.reported, deployment: r.deployment, hardware: h.clone() })
    }

    /// A node's last hardware report.
    pub async fn hardware(&self, node: &str) -> Result<HardwareReport> {
        self.node(node).await?;
        let r = self.db.hardware(node).await?.ok_or_else(|| {
            InventoryError::NotFound(format!(
                "node {node} has not reported its hardware yet (it does when it network-boots into the installer)"
            ))
        })?;
        let hardware: Hardware = serde_json::from_str(&r.report)
            .map_err(|e| InventoryError::Db(crate::db::DbError::BadValue(format!("hardware report: {e}"))))?;
        Ok(HardwareReport { reported: r.reported, deployment: r.deployment, hardware })
    }
}

impl Inventory {
    /// The node's image layout planned onto the disks its boot environment reported: what
    /// the agent will do, shown before it runs (an error names what does not fit).
    pub async fn node_plan(&self, name: &str) -> Result<NodePlan> {
        let node = self.node(name).await?;
        let image = node
            .image
            .ok_or_else(|| InventoryError::Conflict(format!("node {name} has no image; set one with `nodes set`")))?;
        let mut l = self.image_layout(&image).await?;
        let hw = self.hardware(name).await?;
        let targets: Vec<TargetDisk> = hw.hardware.disks.iter().map(TargetDisk::from).collect();
        // UUIDs the layout leaves open are made fresh at deploy; these only show the shape.
        l.layout.fill_missing_uuids(rand::random);
        let p = plan(&l.layout, &targets, "/mnt/target")
            .map_err(|e| InventoryError::Conflict(format!("{} does not fit node {name}: {e}", l.image)))?;
        Ok(NodePlan { node: name.into(), image: l.image, recorded: l.recorded, text: p.render(), plan: p })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Disk, Firmware, NodeCreate};

    #[tokio::test]
    async fn reports_are_checked_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let inv = Inventory::open(d.path()).await.unwrap();
        inv.create_node(NodeCreate { name: "n".into(), role: None, image: None, macs: vec![], ips: vec![] })
            .await
            .unwrap();
        assert!(matches!(inv.hardware("n").await, Err(InventoryError::NotFound(_))));
        let disk = |name: &str| Disk {
            name: name.into(),
            size: 8 << 30,
            logical_sector_size: 512,
            model: String::new(),
            serial: "s1".into(),
            wwid: String::new(),
            removable: false,
            read_only: false,
        };
        let h = Hardware {
            firmware: Firmware::Uefi,
            secure_boot: false,
            disks: vec![disk("vda"), disk("vdb")],
            nics: vec![],
        };
        inv.report_hardware("n", Some(3), &h).await.unwrap();
        let r = inv.hardware("n").await.unwrap();
        assert_eq!((r.deployment, r.hardware), (Some(3), h));
        let bad = Hardware { firmware: Firmware::Bios, secure_boot: false, disks: vec![disk("../sda")], nics: vec![] };
        let e = inv.report_hardware("n", None, &bad).await.unwrap_err();
        assert!(e.to_string().contains("not a kernel disk name"), "{e}");
        assert!(matches!(inv.hardware("nobody").await, Err(InventoryError::NotFound(_))));
    }
}
