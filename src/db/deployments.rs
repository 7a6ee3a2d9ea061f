//! Deployments with their scoped tokens (stored as BLAKE3 hashes) and progress.

use super::{Db, DbError, Result, now, parse_stored};
use crate::wire::{DeploymentStatus, NodeState};
use sqlx::FromRow;

/// A deployment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// Deployment id.
    pub id: i64,
    /// Target node.
    pub node: String,
    /// Image as resolved (NAME@N).
    pub image: String,
    /// Manifest id the token is scoped to.
    pub manifest_id: String,
    /// Token expiry.
    pub expires: String,
    /// Status.
    pub status: DeploymentStatus,
    /// Current phase (free text from the client).
    pub phase: String,
    /// Bytes written so far.
    pub bytes_done: i64,
    /// Bytes to write.
    pub bytes_total: i64,
    /// Files written so far.
    pub files_done: i64,
    /// Files to write.
    pub files_total: i64,
    /// Creation time.
    pub created: String,
    /// When the client started.
    pub started: Option<String>,
    /// When it finished or failed.
    pub finished: Option<String>,
    /// Failure message.
    pub error: Option<String>,
}

#[derive(FromRow)]
struct Row {
    id: i64,
    node: String,
    image: String,
    manifest_id: String,
    expires: String,
    status: String,
    phase: String,
    bytes_done: i64,
    bytes_total: i64,
    files_done: i64,
    files_total: i64,
    created: String,
    started: Option<String>,
    finished: Option<String>,
    error: Option<String>,
}

impl TryFrom<Row> for DeploymentRecord {
    type Error = DbError;
    fn try_from(r: Row) -> Result<Self> {
        Ok(DeploymentRecord {
            status: parse_stored(&r.status, "deployment status")?,
            id: r.id,
            node: r.node,
            image: r.image,
            manifest_id: r.manifest_id,
            expires: r.expires,
            phase: r.phase,
            bytes_done: r.bytes_done,
            bytes_total: r.bytes_total,
            files_done: r.files_done,
            files_total: r.files_total,
            created: r.created,
            started: r.started,
            finished: r.finished,
            error: r.error,
        })
    }
}

/// Columns of a deployment, as a literal so queries stay static strings.
macro_rules! deployment_cols {
    () => {
        "id, node, image, manifest_id, expires, status, phase, bytes_done, bytes_total, files_done, files_total, created, started, finished, error"
    };
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    /// Target node.
    pub node: &'a str,
    /// Resolved image label (NAME@N).
    pub image: &'a str,
    /// Manifest id the token is scoped to.
    pub manifest_id: &'a str,
    /// BLAKE3 of the token (hex).
    pub token_hash: &'a str,
    /// Expiry (stored time format).
    pub expires: &'a str,
    /// Bytes to write.
    pub bytes_total: i64,
    /// Files to write.
    pub files_total: i64,
}

/// What a boot-started deployment does besides creating its row: the node's earlier
/// unfinished deployments are superseded and the node moves to `state`.
#[derive(Debug, Clone, Copy)]
pub struct Supersede<'a> {
    /// The node's new state.
    pub state: NodeState,
    /// Event kind of the boot.
    pub kind: &'a str,
}

/// Makes the boot event's text from (new id, the node's old state, superseded ids).
pub type BootMessage<'a> = dyn Fn(i64, NodeState, &[i64]) -> String + Sync + 'a;

/// A progress report to apply.
#[derive(Debug, Clone)]
pub struct ProgressUpdate<'a> {
    /// New status.
    pub status: DeploymentStatus,
    /// Phase text.
    pub phase: &'a str,
    /// Bytes written.
    pub bytes_done: i64,
    /// Files written.
    pub files_done: i64,
    /// Failure message.
    pub error: Option<&'a str>,
    /// The node's state to set, if the status moves it.
    pub node_state: Option<NodeState>,
}

impl Db {
    /// Create a deployment (and its `deploy.create` event). With `boot`, the node's earlier
    /// unfinished deployments are failed as superseded and the node's state is set, all in
    /// one transaction; `boot_message` gets (new id, old state, superseded ids).
    pub async fn create_deployment(
        &self,
        d: &NewDeployment<'_>,
        create_kind: &str,
        boot: Option<(Supersede<'_>, &BootMessage<'_>)>,
    ) -> Result<DeploymentRecord> {
        let ts = now();
        let NewDeployment { node, image, manifest_id, token_hash, expires, bytes_total, files_total } = *d;
        let mut tx = self.write_tx().await?;
        let Some((prev,)) = sqlx::query_as::<_, (String,)>("SELECT state FROM nodes WHERE name = ?")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(DbError::NotFound(format!("no node {node}")));
        };
        let prev: NodeState = parse_stored(&prev, "node state")?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO deployments (node, image, manifest_id, token_hash, expires, status, bytes_total, files_total, created)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(node)
        .bind(image)
        .bind(manifest_id)
        .bind(token_hash)
        .bind(expires)
        .bind(DeploymentStatus::Pending.as_str())
        .bind(bytes_total)
        .bind(files_total)
        .bind(&ts)
        .fetch_one(&mut *tx)
        .await?;
        let msg = format!("deployment {id} of {image} to {node} created");
        super::events::insert(&mut tx, &ts, Some(node), create_kind, &msg).await?;
        if let Some((sup, message)) = boot {
            let old: Vec<(i64,)> = sqlx::query_as(
                "UPDATE deployments SET status = ?, finished = ?, error = ?
                 WHERE node = ? AND id != ? AND status IN (?, ?) RETURNING id",
            )
            .bind(DeploymentStatus::Failed.as_str())
            .bind(&ts)
            .bind(format!("superseded by deployment {id}: the node network-booted again"))
            .bind(node)
            .bind(id)
            .bind(DeploymentStatus::Pending.as_str())
            .bind(DeploymentStatus::Running.as_str())
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("UPDATE nodes SET state = ?, updated = ? WHERE name = ?")
                .bind(sup.state.as_str())
                .bind(&ts)
                .bind(node)
                .execute(&mut *tx)
                .await?;
            let ids: Vec<i64> = old.iter().map(|o| o.0).collect();
            super::events::insert(&mut tx, &ts, Some(node), sup.kind, &message(id, prev, &ids)).await?;
        }
        tx.commit().await?;
        self.deployment(id).await?.ok_or_else(|| DbError::NotFound(format!("deployment {id} vanished")))
    }

    /// One deployment.
    pub async fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>> {
        let r: Option<Row> = sqlx::query_as(concat!("SELECT ", deployment_cols!(), " FROM deployments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(DeploymentRecord::try_from).transpose()
    }

    /// The deployment a token hash belongs to.
    pub async fn deployment_by_token(&self, token_hash: &str) -> Result<Option<DeploymentRecord>> {
        let r: Option<Row> =
            sqlx::query_as(concat!("SELECT ", deployment_cols!(), " FROM deployments WHERE token_hash = ?"))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        r.map(DeploymentRecord::try_from).transpose()
    }

    /// Deployments, newest first, optionally of one node, and how many there are.
    pub async fn deployments(
        &self,
        node: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<DeploymentRecord>, i64)> {
        let rows: Vec<Row> = sqlx::query_as(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE (?1 IS NULL OR node = ?1) ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(node)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments WHERE (?1 IS NULL OR node = ?1)")
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
        Ok((rows.into_iter().map(DeploymentRecord::try_from).collect::<Result<_>>()?, total))
    }

    /// The images (`NAME@N`) of the deployments not finished yet (pending or running).
    pub async fn active_deployment_images(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT image FROM deployments WHERE status IN (?, ?)")
            .bind(DeploymentStatus::Pending.as_str())
            .bind(DeploymentStatus::Running.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Deployments whose client is writing now.
    pub async fn running_deployments(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments WHERE status = ?")
            .bind(DeploymentStatus::Running.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Apply a progress report, refusing one for a finished deployment; `event` gets the
    /// old status and is recorded when the status changes.
    pub async fn deployment_progress(
        &self,
        id: i64,
        p: &ProgressUpdate<'_>,
        kind: &str,
        event: impl FnOnce(DeploymentStatus) -> String,
    ) -> Result<DeploymentRecord> {
        let ts = now();
        let mut tx = self.write_tx().await?;
        let cur: Option<(String, String)> = sqlx::query_as("SELECT status, node FROM deployments WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((old, node)) = cur else { return Err(DbError::NotFound(format!("no deployment {id}"))) };
        let old: DeploymentStatus = parse_stored(&old, "deployment status")?;
        if old.is_final() {
            return Err(DbError::Conflict(format!("deployment {id} is already {old}")));
        }
        let finished = p.status.is_final().then(|| ts.clone());
        sqlx::query(
            "UPDATE deployments SET status = ?, phase = ?, bytes_done = ?, files_done = ?, error = ?,
             started = COALESCE(started, ?), finished = ? WHERE id = ?",
        )
        .bind(p.status.as_str())
        .bind(p.phase)
        .bind(p.bytes_done)
        .bind(p.files_done)
        .bind(p.error)
        .bind(&ts)
        .bind(&finished)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(s) = p.node_state {
            sqlx::query("UPDATE nodes SET state = ?, updated = ? WHERE name = ? AND state != ?")
                .bind(s.as_str())
                .bind(&ts)
                .bind(&node)
                .bind(s.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if old != p.status {
            super::events::insert(&mut tx, &ts, Some(&node), kind, &event(old)).await?;
        }
        tx.commit().await?;
        self.deployment(id).await?.ok_or_else(|| DbError::NotFound(format!("deployment {id} vanished")))
    }
}

#[cfg(test)]
mod tests {
    use super::{NewDeployment, ProgressUpdate, Supersede};
    use crate::db::{DbError, NodeRecord, testing::db};
    use crate::wire::{DeploymentStatus, NodeState, Role};

    fn new<'a>(hash: &'a str) -> NewDeployment<'a> {
        NewDeployment {
            node: "n",
            image: "img@1",
            manifest_id: "abcd",
            token_hash: hash,
            expires: "2999-01-01T00:00:00.000Z",
            bytes_total: 10,
            files_total: 1,
        }
    }

    #[tokio::test]
    async fn boots_supersede_and_progress_moves_the_node() {
        let (db, _d) = db().await;
        let n = NodeRecord {
            name: "n".into(),
            role: Role::Standby,
            image: Some("img".into()),
            state: NodeState::Assigned,
            macs: vec![],
            ips: vec![],
            created: String::new(),
            updated: String::new(),
        };
        db.create_node(&n, "node.create", "n").await.unwrap();
        assert!(matches!(
            db.create_deployment(&NewDeployment { node: "nobody", ..new("h0") }, "deploy.create", None).await,
            Err(DbError::NotFound(_))
        ));
        let d1 = db.create_deployment(&new("h1"), "deploy.create", None).await.unwrap();
        assert_eq!(d1.status, DeploymentStatus::Pending);
        let msg = |id: i64, prev: NodeState, old: &[i64]| format!("{id} from {prev} superseding {old:?}");
        let sup = Supersede { state: NodeState::Deploying, kind: "boot.deploy" };
        let d2 = db.create_deployment(&new("h2"), "deploy.create", Some((sup, &msg))).await.unwrap();
        assert_eq!(db.deployment(d1.id).await.unwrap().unwrap().status, DeploymentStatus::Failed);
        assert_eq!(db.node("n").await.unwrap().unwrap().state, NodeState::Deploying);
        assert_eq!(db.deployment_by_token("h2").await.unwrap().unwrap().id, d2.id);
        let (ev, _) = db.events(&Default::default(), 1, 0).await.unwrap();
        assert_eq!(ev[0].message, format!("{} from assigned superseding [{}]", d2.id, d1.id));
        let up = |status, node_state| ProgressUpdate {
            status,
            phase: "writing",
            bytes_done: 5,
            files_done: 0,
            error: None,
            node_state,
        };
        let r = db
            .deployment_progress(d2.id, &up(DeploymentStatus::Running, None), "deploy.running", |o| o.to_string())
            .await
            .unwrap();
        assert_eq!((r.status, r.bytes_done, r.started.is_some()), (DeploymentStatus::Running, 5, true));
        assert_eq!(db.running_deployments().await.unwrap(), 1);
        let done = up(DeploymentStatus::Done, Some(NodeState::Deployed));
        let r = db.deployment_progress(d2.id, &done, "deploy.done", |o| format!("{o} -> done")).await.unwrap();
        assert!(r.finished.is_some());
        assert_eq!(db.node("n").await.unwrap().unwrap().state, NodeState::Deployed);
        let e = db.deployment_progress(d2.id, &done, "deploy.done", |_| String::new()).await.unwrap_err();
        assert_eq!(e.to_string(), format!("deployment {} is already done", d2.id));
        let (all, total) = db.deployments(Some("n"), 10, 0).await.unwrap();
        assert_eq!((all.len(), total, all[0].id), (2, 2, d2.id));
    }
}
