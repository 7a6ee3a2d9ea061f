//! Nodes: create, change, redeploy, delete, list; the rules in [`super::rules`].

use super::names::{check_node_name, normalize_ip, normalize_list, normalize_mac};
use super::{Inventory, InventoryError, Result, page, rules};
use crate::db::NodeRecord;
use crate::wire::{EventKind, Node, NodeCreate, NodePatch, NodeState, Page, Role};

impl Inventory {
    /// One node.
    pub async fn node(&self, name: &str) -> Result<Node> {
        self.db.node(name).await?.map(Node::from).ok_or_else(|| InventoryError::NotFound(format!("no node {name}")))
    }

    /// The node that owns a MAC (normalised first).
    pub async fn node_by_mac(&self, mac: &str) -> Result<Option<Node>> {
        Ok(self.db.node_by_mac(mac).await?.map(Node::from))
    }

    /// A page of nodes by name.
    pub async fn nodes(&self, limit: i64, offset: i64) -> Result<Page<Node>> {
        super::check_page(limit, offset)?;
        let (rows, total) = self.db.nodes(limit, offset).await?;
        Ok(page(rows, total, limit, offset))
    }

    /// Create a node: names and addresses checked, its image resolved, its state from the rules.
    pub async fn create_node(&self, b: NodeCreate) -> Result<Node> {
        check_node_name(&b.name)?;
        let role: Role = b.role.as_deref().unwrap_or("standby").parse()?;
        let macs = normalize_list(&b.macs, normalize_mac)?;
        let ips = normalize_list(&b.ips, normalize_ip)?;
        if b.image.as_deref() == Some("") {
            return Err(InventoryError::Invalid("image must not be empty (omit it for none)".into()));
        }
        let image = self.check_image_ref(b.image).await?;
        let state = rules::initial_state(image.is_some());
        let n =
            NodeRecord { name: b.name, role, image, state, macs, ips, created: String::new(), updated: String::new() };
        let msg = format!("node {} created ({}, state {})", n.name, n.role, n.state);
        Ok(self.db.create_node(&n, &EventKind::NodeCreate.as_str(), &msg).await?.into())
    }

    /// Change a node; absent fields stay.
    pub async fn update_node(&self, name: &str, p: NodePatch) -> Result<Node> {
        let cur = self.db.node(name).await?.ok_or_else(|| InventoryError::NotFound(format!("no node {name}")))?;
        let mut n = cur.clone();
        if let Some(r) = p.role {
            n.role = r.parse()?;
        }
        if let Some(i) = p.image {
            n.image = self.check_image_ref(Some(i)).await?;
            n.state = rules::after_image_set(n.state, n.image.is_some());
        }
        if let Some(s) = p.state {
            n.state = s.parse::<NodeState>()?;
        }
        if let Some(m) = p.macs {
            n.macs = normalize_list(&m, normalize_mac)?;
        }
        if let Some(i) = p.ips {
            n.ips = normalize_list(&i, normalize_ip)?;
        }
        self.write_node(&n, cur.state).await
    }

    /// Mark a node for deployment again (its next network boot installs).
    pub async fn redeploy(&self, name: &str) -> Result<Node> {
        let cur = self.db.node(name).await?.ok_or_else(|| InventoryError::NotFound(format!("no node {name}")))?;
        let mut n = cur.clone();
        n.state = rules::redeploy(name, n.image.is_some())?;
        self.write_node(&n, cur.state).await
    }

    async fn write_node(&self, n: &NodeRecord, expected: NodeState) -> Result<Node> {
        let (name, new) = (n.name.clone(), n.state);
        let msg = move |old: NodeState| {
            if old != new {
                format!("node {name} updated; state {old} -> {new}")
            } else {
                format!("node {name} updated")
            }
        };
        Ok(self.db.update_node(n, expected, &EventKind::NodeUpdate.as_str(), msg).await?.into())
    }

    /// Delete a node (its addresses and deployments go with it).
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        Ok(self.db.delete_node(name, &EventKind::NodeDelete.as_str(), &format!("node {name} deleted")).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn inv() -> (Inventory, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        (Inventory::open(d.path()).await.unwrap(), d)
    }

    fn create(name: &str, macs: &[&str]) -> NodeCreate {
        NodeCreate {
            name: name.into(),
            role: None,
            image: None,
            macs: macs.iter().map(|s| s.to_string()).collect(),
            ips: vec![],
        }
    }

    #[tokio::test]
    async fn create_update_redeploy_follow_the_rules() {
        let (inv, _d) = inv().await;
        let n = inv.create_node(create("standby", &["52-54-00-00-00-01", "525400000001"])).await.unwrap();
        assert_eq!((n.role, n.state, n.macs.len()), (Role::Standby, NodeState::Discovered, 1));
        for (bad, want) in [
            (create("s p", &[]), "invalid node name \"s p\": use 1-64"),
            (create("x", &["52:54:00:12:34"]), "invalid MAC address \"52:54:00:12:34\": use six hex pairs"),
            (
                NodeCreate { role: Some("primary".into()), ..create("x", &[]) },
                "invalid role \"primary\": use standby or compute",
            ),
            (NodeCreate { image: Some("nosuch".into()), ..create("x", &[]) }, "no image \"nosuch\""),
        ] {
            let e = inv.create_node(bad).await.unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
        let e = inv.redeploy("standby").await.unwrap_err();
        assert!(matches!(e, InventoryError::Conflict(_)) && e.to_string().contains("no image"), "{e}");
        let e = inv.update_node("standby", NodePatch { state: Some("gone".into()), ..Default::default() }).await;
        assert!(matches!(e, Err(InventoryError::Invalid(_))));
        let n = inv
            .update_node("standby", NodePatch { state: Some("deployed".into()), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(n.state, NodeState::Deployed);
        assert!(matches!(inv.node("nobody").await, Err(InventoryError::NotFound(_))));
        inv.delete_node("standby").await.unwrap();
        assert!(matches!(inv.delete_node("standby").await, Err(InventoryError::NotFound(_))));
        let ev = inv.events(&Default::default(), 10, 0).await.unwrap();
        assert!(ev.items.iter().any(|e| e.message == "node standby updated; state discovered -> deployed"), "{ev:?}");
    }
}
