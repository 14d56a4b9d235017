//! The record of adopted containers: which container the controller took over for which
//! service, and when.
//!
//! A container started by compose or by hand carries none of the controller's labels, and
//! labels of an existing container cannot be changed, so ownership of an adopted container is
//! written here instead. The manifest is what grants it (`adopt` on the service, naming the
//! container by the service's name); this record is the controller's own account of having
//! taken it, for `status` and for a person asking what it owns.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, TicketError};

/// The schema step that adds the record (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE adoptions (
        cluster       TEXT NOT NULL,
        service       TEXT NOT NULL,
        container_id  TEXT NOT NULL,
        name          TEXT NOT NULL,
        adopted_at    TEXT NOT NULL,
        PRIMARY KEY (cluster, service)
    );
"#;

/// One adopted container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Adoption {
    pub cluster: String,
    pub service: String,
    pub container_id: String,
    /// The container's name (the service's).
    pub name: String,
    pub adopted_at: DateTime<Utc>,
}

impl Store {
    /// Records that `adoption.container_id` is adopted for its service. Returns false when
    /// that very container was already recorded (nothing changed); a different container
    /// for the service (compose recreated it) replaces the record.
    pub fn record_adoption(&self, adoption: &Adoption) -> Result<bool, TicketError> {
        self.write("record an adopted container", |tx| {
            let known: Option<String> = tx
                .query_row(
                    "SELECT container_id FROM adoptions WHERE cluster = ?1 AND service = ?2",
                    params![adoption.cluster, adoption.service],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err("record an adopted container"))?;
            if known.as_deref() == Some(adoption.container_id.as_str()) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO adoptions (cluster, service, container_id, name, adopted_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (cluster, service) DO UPDATE SET \
                 container_id = excluded.container_id, name = excluded.name, \
                 adopted_at = excluded.adopted_at",
                params![
                    adoption.cluster,
                    adoption.service,
                    adoption.container_id,
                    adoption.name,
                    adoption.adopted_at.to_rfc3339(),
                ],
            )
            .map_err(self.err("record an adopted container"))?;
            Ok(true)
        })
    }

    /// Every recorded adoption, by cluster and service.
    pub fn adoptions(&self) -> Result<Vec<Adoption>, TicketError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT rowid, cluster, service, container_id, name, adopted_at FROM adoptions \
                 ORDER BY cluster, service",
            )
            .map_err(self.err("read adopted containers"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(self.err("read adopted containers"))?;
        let mut found = Vec::new();
        for row in rows {
            let (row, cluster, service, container_id, name, at) =
                row.map_err(self.err("read adopted containers"))?;
            let adopted_at = DateTime::parse_from_rfc3339(&at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| TicketError::Corrupt {
                    path: self.path().to_path_buf(),
                    table: "adoptions",
                    row,
                    column: "adopted_at",
                    value: at.clone(),
                })?;
            found.push(Adoption {
                cluster,
                service,
                container_id,
                name,
                adopted_at,
            });
        }
        Ok(found)
    }
}
