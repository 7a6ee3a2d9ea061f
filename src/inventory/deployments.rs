//! Deployments: issuing them with their scoped token (by the admin, or by a node's
//! network boot, which supersedes the node's unfinished ones), progress reports, and
//! finding the live deployment a token belongs to.

use super::tokens::{new_token, token_hash};
use super::{Inventory, InventoryError, Result, images::file_count, page, rules};
use crate::db::{NewDeployment, ProgressUpdate, Supersede};
use crate::wire::{Deployment, DeploymentCreate, EventKind, NodeState, Page, Progress, ProgressStatus};
use std::time::Duration;

/// A deployment and its token (the token is shown once and stored hashed).
#[derive(Debug)]
pub struct NewToken {
    /// The deployment.
    pub deployment: Deployment,
    /// The bearer token.
    pub token: String,
}

impl Inventory {
    /// The admin creates a deployment of `b.image` (or the node's image) to a node.
    pub async fn create_deployment(&self, b: DeploymentCreate, ttl: Duration) -> Result<NewToken> {
        let node = self.node(&b.node).await?;
        let image = b
            .image
            .or(node.image)
            .ok_or_else(|| InventoryError::Conflict(format!("node {} has no image; name one", b.node)))?;
        self.issue(&b.node, &image, ttl, false).await
    }

    /// A node network-booted into its deployment: a new deployment and token, the node's
    /// unfinished deployments superseded, the node deploying.
    pub async fn boot_deployment(&self, node: &str, image: &str, ttl: Duration) -> Result<NewToken> {
        self.issue(node, image, ttl, true).await
    }

    async fn issue(&self, node: &str, image: &str, ttl: Duration, boot: bool) -> Result<NewToken> {
        let row = self.resolve(image).await?;
        let m = self.manifest(&row).await?;
        let token = new_token();
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY);
        let expires = crate::db::format_time(time::OffsetDateTime::now_utc() + ttl);
        let label = row.label();
        let hash = token_hash(&token).to_hex();
        let d = NewDeployment {
            node,
            image: &label,
            manifest_id: &row.id,
            token_hash: &hash,
            expires: &expires,
            bytes_total: m.total_bytes() as i64,
            files_total: file_count(&m) as i64,
        };
        let boot_msg = |id: i64, prev: NodeState, old: &[i64]| {
            let mut msg = format!("{node} network-booted into deployment {id}; state {prev} -> {}", rules::BOOTED);
            if !old.is_empty() {
                let ids: Vec<String> = old.iter().map(|o| o.to_string()).collect();
                msg.push_str(&format!("; superseded deployment {}", ids.join(", ")));
            }
            msg
        };
        let boot_kind = EventKind::BootDeploy.as_str();
        let sup = Supersede { state: rules::BOOTED, kind: &boot_kind };
        let kind = EventKind::DeployCreate.as_str();
        let rec = if boot {
            self.db.create_deployment(&d, &kind, Some((sup, &boot_msg))).await?
        } else {
            self.db.create_deployment(&d, &kind, None).await?
        };
        Ok(NewToken { deployment: rec.into(), token })
    }

    /// One deployment.
    pub async fn deployment(&self, id: i64) -> Result<Deployment> {
        self.db
            .deployment(id)
            .await?
            .map(Deployment::from)
            .ok_or_else(|| InventoryError::NotFound(format!("no deployment {id}")))
    }

    /// Deployments, newest first, optionally of one node.
    pub async fn deployments(&self, node: Option<&str>, limit: i64, offset: i64) -> Result<Page<Deployment>> {
        super::check_page(limit, offset)?;
        let (rows, total) = self.db.deployments(node.filter(|n| !n.is_empty()), limit, offset).await?;
        Ok(page(rows, total, limit, offset))
    }

    /// Deployments whose client is writing now.
    pub async fn running_deployments(&self) -> Result<i64> {
        Ok(self.db.running_deployments().await?)
    }

    /// The live deployment a token belongs to: `Ok(None)` for a token that is no
    /// deployment's, an error for one that expired or whose deployment finished.
    pub async fn deployment_for_token(&self, token: &str) -> Result<Option<Deployment>> {
        match self.db.deployment_by_token(&token_hash(token).to_hex()).await? {
            Some(d) if d.expires.as_str() > crate::db::now().as_str() && !d.status.is_final() => Ok(Some(d.into())),
            Some(d) if d.error.as_deref().is_some_and(|e| e.starts_with("superseded")) => {
                Err(InventoryError::Conflict("deployment token superseded by a newer network boot".into()))
            }
            Some(_) => Err(InventoryError::Conflict("deployment token expired or already used".into())),
            None => Ok(None),
        }
    }

    /// Apply a client's progress report: the deployment and its node move by the rules.
    pub async fn report_progress(&self, id: i64, p: &Progress) -> Result<Deployment> {
        let status: ProgressStatus =
            p.status.parse().map_err(|_| InventoryError::Invalid("status must be running, done or failed".into()))?;
        if p.bytes_done < 0
            || p.files_done < 0
            || p.phase.len() > crate::wire::PHASE_MAX
            || p.error.as_ref().is_some_and(|e| e.len() > crate::wire::ERROR_MAX)
        {
            return Err(InventoryError::Invalid("counters must not be negative; phase and error must be short".into()));
        }
        let cur = self.deployment(id).await?;
        let (new, node_state) = rules::progress(id, cur.status, status)?;
        let up = ProgressUpdate {
            status: new,
            phase: &p.phase,
            bytes_done: p.bytes_done,
            files_done: p.files_done,
            error: p.error.as_deref(),
            node_state: Some(node_state),
        };
        let error = p.error.clone();
        let event = move |old| match error {
            Some(e) => format!("deployment {id}: {old} -> {new}: {e}"),
            None => format!("deployment {id}: {old} -> {new}"),
        };
        Ok(self.db.deployment_progress(id, &up, &EventKind::Deploy(new).as_str(), event).await?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureOptions;
    use crate::wire::{DeploymentStatus, NodeCreate};

    #[tokio::test]
    async fn tokens_live_until_done_or_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        let inv = Inventory::open(&dir.path().join("data")).await.unwrap();
        inv.capture("img", &src, CaptureOptions { quiet: true, ..Default::default() }).await.unwrap();
        let create = NodeCreate { name: "n".into(), role: None, image: Some("img".into()), macs: vec![], ips: vec![] };
        inv.create_node(create).await.unwrap();
        let day = Duration::from_secs(86400);
        let a = inv.create_deployment(DeploymentCreate { node: "n".into(), image: None }, day).await.unwrap();
        assert_eq!((a.deployment.image.as_str(), a.deployment.files_total), ("img@1", 1));
        assert_eq!(inv.deployment_for_token(&a.token).await.unwrap().unwrap().id, a.deployment.id);
        assert!(inv.deployment_for_token("nope").await.unwrap().is_none());
        let b = inv.boot_deployment("n", "img", day).await.unwrap();
        assert_eq!(inv.node("n").await.unwrap().state, NodeState::Deploying);
        let e = inv.deployment_for_token(&a.token).await.unwrap_err();
        assert!(e.to_string().contains("superseded"), "{e}");
        let p = |s: &str| Progress { status: s.into(), phase: "x".into(), bytes_done: 1, files_done: 1, error: None };
        assert!(matches!(inv.report_progress(b.deployment.id, &p("paused")).await, Err(InventoryError::Invalid(_))));
        let d = inv.report_progress(b.deployment.id, &p("done")).await.unwrap();
        assert_eq!(d.status, DeploymentStatus::Done);
        assert_eq!(inv.node("n").await.unwrap().state, NodeState::Deployed);
        assert!(matches!(inv.report_progress(b.deployment.id, &p("running")).await, Err(InventoryError::Conflict(_))));
        assert!(inv.deployment_for_token(&b.token).await.is_err(), "a finished deployment's token is spent");
        let expired =
            inv.create_deployment(DeploymentCreate { node: "n".into(), image: None }, Duration::ZERO).await.unwrap();
        assert!(inv.deployment_for_token(&expired.token).await.is_err());
    }
}
