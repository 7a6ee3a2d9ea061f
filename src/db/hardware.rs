//! What a node's boot environment reported about its hardware (kept as the wire JSON).

use super::{Db, DbError, Result, now};

/// A stored hardware report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareRecord {
    /// When it was reported.
    pub reported: String,
    /// The deployment whose boot environment reported it.
    pub deployment: Option<i64>,
    /// The report (JSON).
    pub report: String,
}

impl Db {
    /// Keep a node's latest hardware report.
    pub async fn set_hardware(&self, node: &str, deployment: Option<i64>, report: &str) -> Result<HardwareRecord> {
        let ts = now();
        let r = sqlx::query(
            "INSERT INTO node_hardware (node, reported, deployment, report) SELECT name, ?, ?, ? FROM nodes WHERE name = ?
             ON CONFLICT(node) DO UPDATE SET reported = excluded.reported, deployment = excluded.deployment, report = excluded.report",
        )
        .bind(&ts)
        .bind(deployment)
        .bind(report)
        .bind(node)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("no node {node}")));
        }
        Ok(HardwareRecord { reported: ts, deployment, report: report.to_string() })
    }

    /// A node's latest hardware report, if it sent one.
    pub async fn hardware(&self, node: &str) -> Result<Option<HardwareRecord>> {
        let r: Option<(String, Option<i64>, String)> =
            sqlx::query_as("SELECT reported, deployment, report FROM node_hardware WHERE node = ?")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(|(reported, deployment, report)| HardwareRecord { reported, deployment, report }))
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{DbError, NodeRecord, testing::db};
    use crate::wire::{NodeState, Role};

    #[tokio::test]
    async fn reports_replace_each_other_and_go_with_the_node() {
        let (db, _d) = db().await;
        assert!(matches!(db.set_hardware("n", None, "{}").await, Err(DbError::NotFound(_))));
        let n = NodeRecord {
            name: "n".into(),
            role: Role::Standby,
            image: None,
            state: NodeState::Discovered,
            macs: vec![],
            ips: vec![],
            created: String::new(),
            updated: String::new(),
        };
        db.create_node(&n, "node.create", "").await.unwrap();
        assert!(db.hardware("n").await.unwrap().is_none());
        db.set_hardware("n", Some(1), "{\"a\":1}").await.unwrap();
        db.set_hardware("n", Some(2), "{\"a\":2}").await.unwrap();
        let h = db.hardware("n").await.unwrap().unwrap();
        assert_eq!((h.deployment, h.report.as_str()), (Some(2), "{\"a\":2}"));
        db.delete_node("n", "node.delete", "").await.unwrap();
        assert!(db.hardware("n").await.unwrap().is_none());
    }
}
