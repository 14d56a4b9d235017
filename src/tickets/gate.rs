//! What the quorum gate has under way, and each group's replacement window, as stored: the
//! part of the controller's per-key state that must survive a restart, or a controller
//! killed mid-rollout would come back with every member free to go and every group's
//! replacement cap spent on nothing.
//!
//! One snapshot per cluster, written whole in one transaction whenever the gate's state of
//! that cluster changes (the gate's own lock makes the snapshot consistent), in wall-clock
//! UTC like the budgets.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;

use super::store::{At, ts};
use super::{Store, TicketError};

/// The schema step that adds the gate's state (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE gate_under_way (
        cluster   TEXT NOT NULL,
        service   TEXT NOT NULL,
        rollout   INTEGER NOT NULL,
        deadline  TEXT,
        clean_at  TEXT,
        gave_up   INTEGER NOT NULL,
        PRIMARY KEY (cluster, service)
    );
    CREATE TABLE gate_replacements (
        cluster   TEXT NOT NULL,
        grp       TEXT NOT NULL,
        at        TEXT NOT NULL
    );
    CREATE INDEX gate_replacements_cluster ON gate_replacements (cluster);
"#;

/// A member the controller took down and has not yet seen live again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnderWay {
    pub service: String,
    /// Taken down to roll out a new spec (a rollout stops at a member not live in time).
    pub rollout: bool,
    /// Until when it has to be live again (set once the action finished).
    pub deadline: Option<DateTime<Utc>>,
    /// When it was first seen running, settled and healthy again after the action.
    pub clean_at: Option<DateTime<Utc>>,
    /// A rollout that stopped here (escalated once).
    pub gave_up: bool,
}

/// The gate's state of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GateState {
    pub under_way: Vec<UnderWay>,
    /// When repairs took a live member of each group down: `(group, at)`.
    pub replacements: Vec<(String, DateTime<Utc>)>,
}

impl Store {
    /// Replaces what is stored of `cluster`'s gate with `state`.
    pub fn save_gate(&self, cluster: &str, state: &GateState) -> Result<(), TicketError> {
        const DOING: &str = "save the quorum gate's state";
        self.write(DOING, |tx| {
            tx.execute(
                "DELETE FROM gate_under_way WHERE cluster = ?1",
                params![cluster],
            )
            .map_err(self.err(DOING))?;
            tx.execute(
                "DELETE FROM gate_replacements WHERE cluster = ?1",
                params![cluster],
            )
            .map_err(self.err(DOING))?;
            for u in &state.under_way {
                tx.execute(
                    "INSERT INTO gate_under_way (cluster, service, rollout, deadline, clean_at, gave_up) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        cluster,
                        u.service,
                        u.rollout,
                        u.deadline.map(ts),
                        u.clean_at.map(ts),
                        u.gave_up,
                    ],
                )
                .map_err(self.err(DOING))?;
            }
            for (group, at) in &state.replacements {
                tx.execute(
                    "INSERT INTO gate_replacements (cluster, grp, at) VALUES (?1, ?2, ?3)",
                    params![cluster, group, ts(*at)],
                )
                .map_err(self.err(DOING))?;
            }
            Ok(())
        })
    }

    /// The gate's stored state, by cluster.
    pub fn load_gates(&self) -> Result<Vec<(String, GateState)>, TicketError> {
        const DOING: &str = "read the quorum gate's state";
        let conn = self.conn();
        let mut states: std::collections::BTreeMap<String, GateState> = Default::default();
        let mut stmt = conn
            .prepare(
                "SELECT rowid, cluster, service, rollout, deadline, clean_at, gave_up \
                 FROM gate_under_way ORDER BY cluster, service",
            )
            .map_err(self.err(DOING))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .map_err(self.err(DOING))?;
        for row in rows {
            let (row, cluster, service, rollout, deadline, clean_at, gave_up) =
                row.map_err(self.err(DOING))?;
            let at = At {
                path: self.path(),
                table: "gate_under_way",
                row,
            };
            states.entry(cluster).or_default().under_way.push(UnderWay {
                service,
                rollout,
                deadline: at.opt_time("deadline", deadline.as_deref())?,
                clean_at: at.opt_time("clean_at", clean_at.as_deref())?,
                gave_up,
            });
        }
        let mut stmt = conn
            .prepare("SELECT rowid, cluster, grp, at FROM gate_replacements ORDER BY cluster, at")
            .map_err(self.err(DOING))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(self.err(DOING))?;
        for row in rows {
            let (row, cluster, group, text) = row.map_err(self.err(DOING))?;
            let at = At {
                path: self.path(),
                table: "gate_replacements",
                row,
            }
            .time("at", &text)?;
            states
                .entry(cluster)
                .or_default()
                .replacements
                .push((group, at));
        }
        Ok(states.into_iter().collect())
    }
}
