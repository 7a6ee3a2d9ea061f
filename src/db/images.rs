//! Image versions: a name points at a manifest id, versions count from 1 per name.

use super::{Db, DbError, Result, now};
use sqlx::FromRow;

/// An image version row.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ImageRecord {
    /// Image name.
    pub name: String,
    /// Version, counting from 1 per name.
    pub version: i64,
    /// Manifest id (hex).
    pub id: String,
    /// Creation time.
    pub created: String,
    /// What was captured or imported.
    pub source: String,
    /// Entries of all types.
    pub entries: i64,
    /// Regular files.
    pub files: i64,
    /// Logical bytes of regular files.
    pub bytes: i64,
    /// Compressed bytes of the distinct chunks the image references.
    pub stored_bytes: i64,
    /// Bytes this version added to the store when it was made.
    pub added_bytes: i64,
}

/// A new image version to record.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// Image name.
    pub name: &'a str,
    /// Manifest id (hex).
    pub manifest_id: &'a str,
    /// What was captured or imported.
    pub source: &'a str,
    /// Entries of all types.
    pub entries: i64,
    /// Regular files.
    pub files: i64,
    /// Logical bytes.
    pub bytes: i64,
    /// Compressed bytes referenced.
    pub stored_bytes: i64,
    /// Bytes added to the store.
    pub added_bytes: i64,
    /// The disk layout recorded with it (layout document JSON), if any.
    pub layout: Option<&'a str>,
}

/// Columns of an [`ImageRecord`], as a literal so queries stay static strings.
macro_rules! image_select {
    ($rest:literal) => {
        concat!("SELECT name, version, manifest_id AS id, created, source, entries, files, bytes, stored_bytes, added_bytes FROM images ", $rest)
    };
}

impl Db {
    /// Record a new version of an image (with its event, in one transaction); returns the row.
    pub async fn add_image(
        &self,
        img: &NewImage<'_>,
        kind: &str,
        message: impl FnOnce(i64) -> String,
    ) -> Result<ImageRecord> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO image_names (name, next_version) VALUES (?, 1) ON CONFLICT(name) DO NOTHING")
            .bind(img.name)
            .execute(&mut *tx)
            .await?;
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE image_names SET next_version = next_version + 1 WHERE name = ? RETURNING next_version - 1",
        )
        .bind(img.name)
        .fetch_one(&mut *tx)
        .await?;
        let ts = now();
        insert_row(&mut tx, img, version, &ts).await?;
        super::events::insert(&mut tx, &ts, None, kind, &message(version)).await?;
        tx.commit().await?;
        self.image(img.name, Some(version))
            .await?
            .ok_or_else(|| DbError::NotFound(format!("image {}@{version} vanished", img.name)))
    }

    /// Record a version under the number and creation time another server gave it (a
    /// standby's replica of its primary's image): the name's next number moves past it.
    /// A version of that number already here is a conflict, whatever its manifest.
    pub async fn add_image_at(
        &self,
        img: &NewImage<'_>,
        version: i64,
        created: &str,
        kind: &str,
        message: &str,
    ) -> Result<ImageRecord> {
        if version < 1 {
            return Err(DbError::BadValue(format!("image version {version} of {} is not positive", img.name)));
        }
        let mut tx = self.write_tx().await?;
        let taken: Option<(String,)> = sqlx::query_as("SELECT manifest_id FROM images WHERE name = ? AND version = ?")
            .bind(img.name)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((other,)) = taken {
            return Err(DbError::Conflict(format!(
                "{}@{version} exists here with manifest {other}, not {}",
                img.name, img.manifest_id
            )));
        }
        sqlx::query(
            "INSERT INTO image_names (name, next_version) VALUES (?1, ?2 + 1)
             ON CONFLICT(name) DO UPDATE SET next_version = max(next_version, ?2 + 1)",
        )
        .bind(img.name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        insert_row(&mut tx, img, version, created).await?;
        super::events::insert(&mut tx, &now(), None, kind, message).await?;
        tx.commit().await?;
        self.image(img.name, Some(version))
            .await?
            .ok_or_else(|| DbError::NotFound(format!("image {}@{version} vanished", img.name)))
    }

    /// All image versions, by name then version.
    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(sqlx::query_as(image_select!("ORDER BY name, version")).fetch_all(&self.pool).await?)
    }

    /// Image versions, paged, and the total count.
    pub async fn images_page(&self, limit: i64, offset: i64) -> Result<(Vec<ImageRecord>, i64)> {
        let rows = sqlx::query_as(image_select!("ORDER BY name, version LIMIT ? OFFSET ?"))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM images").fetch_one(&self.pool).await?;
        Ok((rows, total))
    }

    /// One version (the newest when `version` is None).
    pub async fn image(&self, name: &str, version: Option<i64>) -> Result<Option<ImageRecord>> {
        let row = match version {
            Some(v) => {
                sqlx::query_as(image_select!("WHERE name = ? AND version = ?"))
                    .bind(name)
                    .bind(v)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as(image_select!("WHERE name = ? ORDER BY version DESC LIMIT 1"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        Ok(row)
    }

    /// Versions whose manifest id starts with `prefix`, newest first.
    pub async fn image_by_id_prefix(&self, prefix: &str) -> Result<Vec<ImageRecord>> {
        Ok(sqlx::query_as(image_select!("WHERE substr(manifest_id, 1, ?) = ? ORDER BY created DESC"))
            .bind(prefix.len() as i64)
            .bind(prefix)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Delete one version, or every version of a name when `version` is None; the event
    /// is recorded in the same transaction when anything was deleted.
    pub async fn delete_image(
        &self,
        name: &str,
        version: Option<i64>,
        kind: &str,
        message: impl FnOnce(u64) -> String,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let r = match version {
            Some(v) => {
                sqlx::query("DELETE FROM images WHERE name = ? AND version = ?")
                    .bind(name)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?
            }
            None => sqlx::query("DELETE FROM images WHERE name = ?").bind(name).execute(&mut *tx).await?,
        };
        let n = r.rows_affected();
        if n > 0 {
            super::events::insert(&mut tx, &now(), None, kind, &message(n)).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// The layout recorded with a version: `None` when there is no such version,
    /// `Some(None)` when it has none.
    pub async fn image_layout(&self, name: &str, version: i64) -> Result<Option<Option<String>>> {
        let r: Option<(Option<String>,)> = sqlx::query_as("SELECT layout FROM images WHERE name = ? AND version = ?")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|x| x.0))
    }

    /// Set (or clear) the layout of a version, with its event.
    pub async fn set_image_layout(
        &self,
        name: &str,
        version: i64,
        layout: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE images SET layout = ? WHERE name = ? AND version = ?")
            .bind(layout)
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("no image {name}@{version}")));
        }
        super::events::insert(&mut tx, &now(), None, kind, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Distinct manifest ids referenced by any image.
    pub async fn live_manifests(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT manifest_id FROM images").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// Insert one image row (the caller holds the write transaction).
async fn insert_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    img: &NewImage<'_>,
    version: i64,
    created: &str,
) -> Result<()> {
    sqlx::query(
            "INSERT INTO images (name, version, manifest_id, created, source, entries, files, bytes, stored_bytes, added_bytes, layout)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(img.name)
        .bind(version)
        .bind(img.manifest_id)
        .bind(created)
        .bind(img.source)
        .bind(img.entries)
        .bind(img.files)
        .bind(img.bytes)
        .bind(img.stored_bytes)
        .bind(img.added_bytes)
        .bind(img.layout)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::db::testing::db;

    fn new<'a>(name: &'a str, id: &'a str) -> super::NewImage<'a> {
        super::NewImage {
            name,
            manifest_id: id,
            source: "/src",
            entries: 3,
            files: 2,
            bytes: 100,
            stored_bytes: 50,
            added_bytes: 50,
            layout: None,
        }
    }

    #[tokio::test]
    async fn versions_count_per_name_and_delete_records_an_event() {
        let (db, _d) = db().await;
        let a1 = db.add_image(&new("a", "aa11"), "image.capture", |v| format!("a v{v}")).await.unwrap();
        let a2 = db.add_image(&new("a", "aa22"), "image.capture", |v| format!("a v{v}")).await.unwrap();
        let b1 = db.add_image(&new("b", "bb11"), "image.import", |v| format!("b v{v}")).await.unwrap();
        assert_eq!((a1.version, a2.version, b1.version), (1, 2, 1));
        assert_eq!(db.image("a", None).await.unwrap().unwrap().id, "aa22");
        assert_eq!(db.image("a", Some(1)).await.unwrap().unwrap().id, "aa11");
        assert!(db.image("a", Some(3)).await.unwrap().is_none());
        assert_eq!(db.image_by_id_prefix("bb").await.unwrap().len(), 1);
        let (page, total) = db.images_page(2, 1).await.unwrap();
        assert_eq!((page.len(), total, page[0].version), (2, 3, 2));
        assert_eq!(db.delete_image("a", Some(1), "image.delete", |n| format!("{n} gone")).await.unwrap(), 1);
        assert_eq!(db.delete_image("a", Some(1), "image.delete", |n| format!("{n} gone")).await.unwrap(), 0);
        let mut live = db.live_manifests().await.unwrap();
        live.sort();
        assert_eq!(live, vec!["aa22", "bb11"]);
        assert_eq!(db.image_layout("a", 2).await.unwrap(), Some(None));
        db.set_image_layout("a", 2, Some("{}"), "image.layout", "set").await.unwrap();
        assert_eq!(db.image_layout("a", 2).await.unwrap(), Some(Some("{}".into())));
        assert_eq!(db.image_layout("a", 9).await.unwrap(), None);
        assert!(db.set_image_layout("a", 9, None, "image.layout", "").await.is_err());
        let (ev, n) = db.events(&Default::default(), 10, 0).await.unwrap();
        assert_eq!(n, 5);
        assert_eq!((ev[0].kind.as_str(), ev[0].message.as_str()), ("image.layout", "set"));
        assert_eq!((ev[1].kind.as_str(), ev[1].message.as_str()), ("image.delete", "1 gone"));
        assert_eq!(ev[2].message, "b v1");
        // A third version after a delete still counts on: versions are never reused.
        assert_eq!(db.add_image(&new("a", "aa33"), "image.capture", |_| String::new()).await.unwrap().version, 3);
    }

    #[tokio::test]
    async fn a_replica_keeps_the_primarys_numbers_and_never_overwrites_one() {
        let (db, _d) = db().await;
        let at = "2026-12-01T10:00:00Z";
        let r = db.add_image_at(&new("a", "aa07"), 7, at, "image.replica", "replicated a@7").await.unwrap();
        assert_eq!((r.version, r.created.as_str(), r.id.as_str()), (7, at, "aa07"));
        // Older versions may come later (a standby that starts following mid-way).
        assert_eq!(db.add_image_at(&new("a", "aa05"), 5, at, "image.replica", "").await.unwrap().version, 5);
        let clash = db.add_image_at(&new("a", "ffff"), 7, at, "image.replica", "").await.unwrap_err();
        assert!(clash.to_string().contains("a@7 exists here with manifest aa07"), "{clash}");
        assert!(db.add_image_at(&new("a", "aa00"), 0, at, "image.replica", "").await.is_err());
        // A capture here afterwards numbers on past the primary's.
        assert_eq!(db.add_image(&new("a", "aa08"), "image.capture", |_| String::new()).await.unwrap().version, 8);
        assert_eq!(db.image("a", Some(7)).await.unwrap().unwrap().id, "aa07");
        let (ev, _) = db.events(&Default::default(), 10, 0).await.unwrap();
        assert!(ev.iter().any(|e| e.kind == "image.replica" && e.message == "replicated a@7"), "{ev:?}");
    }
}
