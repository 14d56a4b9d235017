//! The fault ledger of chaos drills (schema 6): every `operator chaos run` and every fault it
//! injects, so that a fault outlives neither its run nor a crash of it.
//!
//! # Guarantees
//! - A fault's row (with everything needed to undo it: `undo`) is written *before* the fault
//!   is applied (`planned`), marked `applied` after, and `undone` only once undoing it
//!   succeeded. A fault whose undo failed is `failed` and is still left to undo: only
//!   `undone` ends a fault.
//! - A run names its holder by pid, host and the process's start time (from
//!   `/proc/PID/stat`), so that a reused pid is not taken for the runner.
//!
//! The rows are read strictly, as every other table: a time, state or JSON value that cannot
//! be read is an error naming the row.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::TicketError;
use super::audit::rows;
use super::row::raw_row;
use super::store::{At, Store, ts};

/// The schema step that adds the ledger (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE chaos_runs (
        id            TEXT PRIMARY KEY,
        drill         TEXT NOT NULL,
        drill_file    TEXT NOT NULL,
        cluster       TEXT NOT NULL,
        report_dir    TEXT NOT NULL,
        holder        TEXT NOT NULL,
        holder_pid    INTEGER NOT NULL,
        holder_start  INTEGER,
        started_at    TEXT NOT NULL,
        ended_at      TEXT,
        status        TEXT NOT NULL
    );
    CREATE INDEX chaos_runs_by_start ON chaos_runs (started_at);
    CREATE TABLE chaos_faults (
        id              INTEGER PRIMARY KEY,
        run_id          TEXT NOT NULL REFERENCES chaos_runs (id),
        trial           INTEGER NOT NULL,
        kind            TEXT NOT NULL,
        service         TEXT NOT NULL,
        container_id    TEXT NOT NULL,
        container_name  TEXT NOT NULL,
        params          TEXT NOT NULL DEFAULT '{}',
        undo            TEXT NOT NULL DEFAULT '{}',
        planned_at      TEXT NOT NULL,
        applied_at      TEXT,
        apply_error     TEXT,
        undone_at       TEXT,
        undo_error      TEXT,
        state           TEXT NOT NULL CHECK (state IN ('planned','applied','undone','failed'))
    );
    CREATE INDEX chaos_faults_left ON chaos_faults (state, run_id);
"#;

/// One `operator chaos run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChaosRun {
    /// `{UTC time}-{8 hex}`, the journal's `run_id`.
    pub id: String,
    pub drill: String,
    pub drill_file: PathBuf,
    pub cluster: String,
    pub report_dir: PathBuf,
    /// `pid N on HOST`, as agent dispatchers name themselves.
    pub holder: String,
    pub holder_pid: u32,
    /// The holder's start time in clock ticks after boot (`/proc/PID/stat`, field 22), so a
    /// pid reused by another process is not taken for the holder; `None` when unknown.
    pub holder_start: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The journal's `RunStatus` (`running`, `completed`, `failed`, `interrupted`, `aborted`).
    pub status: String,
}

/// Where a fault is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    /// Written, about to be applied: it may or may not have taken effect.
    Planned,
    Applied,
    /// Undone (or nothing was left to undo: an instant fault, one that never took effect).
    Undone,
    /// Undoing it failed (`undo_error` says why); still left to undo.
    Failed,
}

impl FaultState {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultState::Planned => "planned",
            FaultState::Applied => "applied",
            FaultState::Undone => "undone",
            FaultState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<FaultState> {
        Some(match s {
            "planned" => FaultState::Planned,
            "applied" => FaultState::Applied,
            "undone" => FaultState::Undone,
            "failed" => FaultState::Failed,
            _ => return None,
        })
    }
}

/// A fault about to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFault<'a> {
    pub run_id: &'a str,
    /// 1-based trial index within the run.
    pub trial: u32,
    /// The drill's name for it (`pause`, `disk-fill`...).
    pub kind: &'a str,
    pub service: &'a str,
    pub container_id: &'a str,
    pub container_name: &'a str,
    /// The fault's parameters as the drill gave them.
    pub params: &'a serde_json::Value,
    /// Everything needed to undo it from this row alone.
    pub undo: &'a serde_json::Value,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRow {
    pub id: i64,
    pub run_id: String,
    pub trial: u32,
    pub kind: String,
    pub service: String,
    pub container_id: String,
    pub container_name: String,
    pub params: serde_json::Value,
    pub undo: serde_json::Value,
    pub planned_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    /// Why applying it failed (it was then undone, or `undo_error` says why not).
    pub apply_error: Option<String>,
    pub undone_at: Option<DateTime<Utc>>,
    pub undo_error: Option<String>,
    pub state: FaultState,
}

raw_row! {
    /// A drill run's row as SQLite holds it.
    struct RawRun {
        row: i64 = "rowid",
        id: String,
        drill: String,
        drill_file: String,
        cluster: String,
        report_dir: String,
        holder: String,
        holder_pid: i64,
        holder_start: Option<i64>,
        started_at: String,
        ended_at: Option<String>,
        status: String,
    }
}

const RUN_COLUMNS: &str = RawRun::COLUMNS;

raw_row! {
    /// A fault's row as SQLite holds it.
    struct RawFault {
        id: i64,
        run_id: String,
        trial: i64,
        kind: String,
        service: String,
        container_id: String,
        container_name: String,
        params: String,
        undo: String,
        planned_at: String,
        applied_at: Option<String>,
        apply_error: Option<String>,
        undone_at: Option<String>,
        undo_error: Option<String>,
        state: String,
    }
}

const FAULT_COLUMNS: &str = RawFault::COLUMNS;

impl Store {
    fn run_of(&self, r: RawRun) -> Result<ChaosRun, TicketError> {
        let at = At {
            path: self.path(),
            table: "chaos_runs",
            row: r.row,
        };
        Ok(ChaosRun {
            holder_pid: u32::try_from(r.holder_pid)
                .map_err(|_| at.corrupt("holder_pid", &r.holder_pid.to_string()))?,
            holder_start: match r.holder_start {
                None => None,
                Some(v) => {
                    Some(u64::try_from(v).map_err(|_| at.corrupt("holder_start", &v.to_string()))?)
                }
            },
            started_at: at.time("started_at", &r.started_at)?,
            ended_at: at.opt_time("ended_at", r.ended_at.as_deref())?,
            id: r.id,
            drill: r.drill,
            drill_file: PathBuf::from(r.drill_file),
            cluster: r.cluster,
            report_dir: PathBuf::from(r.report_dir),
            holder: r.holder,
            status: r.status,
        })
    }

    fn fault_of(&self, r: RawFault) -> Result<FaultRow, TicketError> {
        let at = At {
            path: self.path(),
            table: "chaos_faults",
            row: r.id,
        };
        let json = |column, text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|_| at.corrupt(column, text))
        };
        Ok(FaultRow {
            trial: u32::try_from(r.trial).map_err(|_| at.corrupt("trial", &r.trial.to_string()))?,
            params: json("params", &r.params)?,
            undo: json("undo", &r.undo)?,
            planned_at: at.time("planned_at", &r.planned_at)?,
            applied_at: at.opt_time("applied_at", r.applied_at.as_deref())?,
            undone_at: at.opt_time("undone_at", r.undone_at.as_deref())?,
            state: FaultState::parse(&r.state).ok_or_else(|| at.corrupt("state", &r.state))?,
            id: r.id,
            run_id: r.run_id,
            kind: r.kind,
            service: r.service,
            container_id: r.container_id,
            container_name: r.container_name,
            apply_error: r.apply_error,
            undo_error: r.undo_error,
        })
    }

    /// Records a run as started (its `ended_at` and `status` as given, normally `None` and
    /// `running`).
    /// Records `run` unless an unended run of the same cluster is still `live` (judged by
    /// the caller: its holder runs); that run is returned instead. The check and the insert
    /// are one write transaction, so two runners starting together cannot both pass.
    pub fn chaos_run_started_alone(
        &self,
        run: &ChaosRun,
        live: impl Fn(&ChaosRun) -> bool,
    ) -> Result<Option<ChaosRun>, TicketError> {
        self.write("record a chaos run", |tx| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM chaos_runs WHERE ended_at IS NULL AND cluster = ?1 AND id != ?2"
            );
            let others = rows(self, tx, "list unended chaos runs", &sql, params![run.cluster, run.id], RawRun::read)?;
            for other in others {
                let other = self.run_of(other)?;
                if live(&other) {
                    return Ok(Some(other));
                }
            }
            Self::insert_run(self, tx, run)?;
            Ok(None)
        })
    }

    pub fn chaos_run_started(&self, run: &ChaosRun) -> Result<(), TicketError> {
        self.write("record a chaos run", |tx| Self::insert_run(self, tx, run))
    }

    fn insert_run(
        &self,
        tx: &rusqlite::Transaction<'_>,
        run: &ChaosRun,
    ) -> Result<(), TicketError> {
        {
            tx.execute(
                "INSERT INTO chaos_runs (id, drill, drill_file, cluster, report_dir, holder, holder_pid, \
                 holder_start, started_at, ended_at, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    run.id,
                    run.drill,
                    run.drill_file.display().to_string(),
                    run.cluster,
                    run.report_dir.display().to_string(),
                    run.holder,
                    i64::from(run.holder_pid),
                    run.holder_start.map(|s| s as i64),
                    ts(run.started_at),
                    run.ended_at.map(ts),
                    run.status,
                ],
            )
            .map_err(self.err("record a chaos run"))?;
            Ok(())
        }
    }

    /// Ends a run with `status` (once: `false` when it had already ended or does not exist).
    pub fn chaos_run_ended(
        &self,
        id: &str,
        status: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("end a chaos run", |tx| {
            let changed = tx
                .execute(
                    "UPDATE chaos_runs SET status = ?2, ended_at = ?3 WHERE id = ?1 AND ended_at IS NULL",
                    params![id, status, ts(now)],
                )
                .map_err(self.err("end a chaos run"))?;
            Ok(changed > 0)
        })
    }

    /// The newest `limit` runs, newest first.
    pub fn chaos_runs(&self, limit: usize) -> Result<Vec<ChaosRun>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM chaos_runs ORDER BY started_at DESC, rowid DESC LIMIT ?1"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        rows(
            self,
            &conn,
            "list chaos runs",
            &sql,
            params![limit],
            RawRun::read,
        )?
        .into_iter()
        .map(|r| self.run_of(r))
        .collect()
    }

    /// The runs that never ended (running, or left by a runner that died).
    pub fn chaos_runs_unended(&self) -> Result<Vec<ChaosRun>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM chaos_runs WHERE ended_at IS NULL ORDER BY started_at"
        );
        rows(
            self,
            &conn,
            "list unended chaos runs",
            &sql,
            [],
            RawRun::read,
        )?
        .into_iter()
        .map(|r| self.run_of(r))
        .collect()
    }

    pub fn chaos_run(&self, id: &str) -> Result<Option<ChaosRun>, TicketError> {
        let conn = self.conn();
        let sql = format!("SELECT {RUN_COLUMNS} FROM chaos_runs WHERE id = ?1");
        let found = conn
            .query_row(&sql, params![id], RawRun::read)
            .optional()
            .map_err(self.err("read a chaos run"))?;
        found.map(|r| self.run_of(r)).transpose()
    }

    /// Writes a fault as `planned`, before it is applied; returns its ledger id.
    pub fn fault_planned(&self, f: &NewFault<'_>, now: DateTime<Utc>) -> Result<i64, TicketError> {
        self.write("record a planned fault", |tx| {
            tx.query_row(
                "INSERT INTO chaos_faults (run_id, trial, kind, service, container_id, container_name, \
                 params, undo, planned_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'planned') \
                 RETURNING id",
                params![
                    f.run_id,
                    i64::from(f.trial),
                    f.kind,
                    f.service,
                    f.container_id,
                    f.container_name,
                    f.params.to_string(),
                    f.undo.to_string(),
                    ts(now),
                ],
                |r| r.get(0),
            )
            .map_err(self.err("record a planned fault"))
        })
    }

    /// Replaces a fault's undo recipe: what applying it learnt (processes started, rules
    /// added) is recorded before the fault is marked applied.
    pub fn fault_recipe(&self, id: i64, undo: &serde_json::Value) -> Result<(), TicketError> {
        self.write("record a fault's undo recipe", |tx| {
            tx.execute(
                "UPDATE chaos_faults SET undo = ?2 WHERE id = ?1",
                params![id, undo.to_string()],
            )
            .map_err(self.err("record a fault's undo recipe"))?;
            Ok(())
        })
    }

    /// Marks a planned fault applied.
    pub fn fault_applied(&self, id: i64, now: DateTime<Utc>) -> Result<(), TicketError> {
        self.write("mark a fault applied", |tx| {
            tx.execute(
                "UPDATE chaos_faults SET state = 'applied', applied_at = ?2 WHERE id = ?1 AND state = 'planned'",
                params![id, ts(now)],
            )
            .map_err(self.err("mark a fault applied"))?;
            Ok(())
        })
    }

    /// Records why applying a fault failed (its state is then set by [`Store::fault_undone`]
    /// once what may have been applied is undone).
    pub fn fault_apply_failed(&self, id: i64, error: &str) -> Result<(), TicketError> {
        self.write("record a failed fault", |tx| {
            tx.execute(
                "UPDATE chaos_faults SET apply_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .map_err(self.err("record a failed fault"))?;
            Ok(())
        })
    }

    /// Records an undo: `Ok` marks the fault `undone` (clearing an earlier undo error),
    /// `Err` marks it `failed` with the reason; it stays left to undo.
    pub fn fault_undone(
        &self,
        id: i64,
        result: Result<(), &str>,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.write("record a fault's undo", |tx| {
            match result {
                Ok(()) => tx.execute(
                    "UPDATE chaos_faults SET state = 'undone', undone_at = ?2, undo_error = NULL \
                     WHERE id = ?1 AND state != 'undone'",
                    params![id, ts(now)],
                ),
                Err(why) => tx.execute(
                    "UPDATE chaos_faults SET state = 'failed', undo_error = ?2 WHERE id = ?1 AND state != 'undone'",
                    params![id, why],
                ),
            }
            .map_err(self.err("record a fault's undo"))?;
            Ok(())
        })
    }

    pub fn fault(&self, id: i64) -> Result<Option<FaultRow>, TicketError> {
        let conn = self.conn();
        let sql = format!("SELECT {FAULT_COLUMNS} FROM chaos_faults WHERE id = ?1");
        let found = conn
            .query_row(&sql, params![id], RawFault::read)
            .optional()
            .map_err(self.err("read a fault"))?;
        found.map(|r| self.fault_of(r)).transpose()
    }

    /// The faults of a run (or of every run), in the order they were planned.
    pub fn faults(&self, run: Option<&str>) -> Result<Vec<FaultRow>, TicketError> {
        self.faults_where("list faults", "", run)
    }

    /// The faults not undone (planned, applied or failed), of one run or of all, oldest
    /// first.
    pub fn faults_left(&self, run: Option<&str>) -> Result<Vec<FaultRow>, TicketError> {
        self.faults_where("list faults left", "state != 'undone' AND", run)
    }

    /// The faults of `run` (or of every run) that `also` (a condition ending in `AND`, or
    /// nothing) selects, oldest first.
    fn faults_where(
        &self,
        doing: &'static str,
        also: &str,
        run: Option<&str>,
    ) -> Result<Vec<FaultRow>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {FAULT_COLUMNS} FROM chaos_faults WHERE {also} (?1 IS NULL OR run_id = ?1) ORDER BY id"
        );
        rows(self, &conn, doing, &sql, params![run], RawFault::read)?
            .into_iter()
            .map(|r| self.fault_of(r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    use super::*;

    struct TempDb(PathBuf);

    impl TempDb {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "operator-chaos-ledger-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDb(dir)
        }

        fn store(&self) -> Store {
            Store::open(&self.0.join("tickets.db")).unwrap()
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 3, 15, 0).unwrap()
    }

    fn run(id: &str, started: DateTime<Utc>) -> ChaosRun {
        ChaosRun {
            id: id.into(),
            drill: "kill-pd".into(),
            drill_file: "drills/kill.yaml".into(),
            cluster: "tikv".into(),
            report_dir: "reports/x".into(),
            holder: "pid 42 on box".into(),
            holder_pid: 42,
            holder_start: Some(123_456),
            started_at: started,
            ended_at: None,
            status: "running".into(),
        }
    }

    fn plan(store: &Store, run: &str, kind: &str, undo: serde_json::Value) -> i64 {
        let params = json!({"signal": "SIGKILL"});
        store
            .fault_planned(
                &NewFault {
                    run_id: run,
                    trial: 2,
                    kind,
                    service: "pd1",
                    container_id: "abc",
                    container_name: "tikv-pd1",
                    params: &params,
                    undo: &undo,
                },
                t0(),
            )
            .unwrap()
    }

    #[test]
    fn runs_are_recorded_read_back_and_ended_once() {
        let db = TempDb::new("runs");
        let store = db.store();
        store.chaos_run_started(&run("r1", t0())).unwrap();
        store
            .chaos_run_started(&run("r2", t0() + Duration::seconds(5)))
            .unwrap();
        assert_eq!(store.chaos_run("r1").unwrap().unwrap(), run("r1", t0()));
        assert_eq!(store.chaos_run("nope").unwrap(), None);
        let listed: Vec<String> = store
            .chaos_runs(10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, ["r2", "r1"], "newest first");
        assert_eq!(store.chaos_runs(1).unwrap().len(), 1);

        let end = t0() + Duration::seconds(60);
        assert!(store.chaos_run_ended("r1", "completed", end).unwrap());
        assert!(!store.chaos_run_ended("r1", "failed", end).unwrap(), "once");
        let r1 = store.chaos_run("r1").unwrap().unwrap();
        assert_eq!((r1.status.as_str(), r1.ended_at), ("completed", Some(end)));
        let unended: Vec<String> = store
            .chaos_runs_unended()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(unended, ["r2"]);
    }

    #[test]
    fn a_fault_goes_planned_applied_failed_undone_and_leaves_the_left_list() {
        let db = TempDb::new("faults");
        let store = db.store();
        store.chaos_run_started(&run("r1", t0())).unwrap();
        store.chaos_run_started(&run("r2", t0())).unwrap();
        let undo = json!({"kind": "unpause", "container_id": "abc"});
        let a = plan(&store, "r1", "pause", undo.clone());
        let b = plan(&store, "r2", "freeze", json!({}));

        let row = store.fault(a).unwrap().unwrap();
        assert_eq!(row.state, FaultState::Planned);
        assert_eq!((row.trial, row.kind.as_str()), (2, "pause"));
        assert_eq!(row.undo, undo);
        assert_eq!(row.params, json!({"signal": "SIGKILL"}));
        assert_eq!(row.applied_at, None);

        let later = t0() + Duration::seconds(1);
        store
            .fault_recipe(a, &json!({"kind": "unpause", "container_id": "abcdef"}))
            .unwrap();
        store.fault_applied(a, later).unwrap();
        let row = store.fault(a).unwrap().unwrap();
        assert_eq!(row.state, FaultState::Applied);
        assert_eq!(row.applied_at, Some(later));
        assert_eq!(row.undo["container_id"], "abcdef");

        let ids = |rows: Vec<FaultRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.faults_left(None).unwrap()), [a, b]);
        assert_eq!(ids(store.faults_left(Some("r1")).unwrap()), [a]);

        // A failed undo keeps the fault left, with the reason.
        store.fault_undone(a, Err("engine away"), later).unwrap();
        let row = store.fault(a).unwrap().unwrap();
        assert_eq!(row.state, FaultState::Failed);
        assert_eq!(row.undo_error.as_deref(), Some("engine away"));
        assert_eq!(ids(store.faults_left(Some("r1")).unwrap()), [a]);

        let done = t0() + Duration::seconds(2);
        store.fault_undone(a, Ok(()), done).unwrap();
        let row = store.fault(a).unwrap().unwrap();
        assert_eq!(row.state, FaultState::Undone);
        assert_eq!((row.undone_at, row.undo_error), (Some(done), None));
        assert!(store.faults_left(Some("r1")).unwrap().is_empty());
        assert_eq!(ids(store.faults_left(None).unwrap()), [b]);

        // Undone is final: a late failure report does not bring it back.
        store.fault_undone(a, Err("late"), done).unwrap();
        assert_eq!(store.fault(a).unwrap().unwrap().state, FaultState::Undone);
        // Applied only moves a planned fault.
        store.fault_applied(a, done).unwrap();
        assert_eq!(store.fault(a).unwrap().unwrap().state, FaultState::Undone);
        assert_eq!(ids(store.faults(Some("r1")).unwrap()), [a]);
    }

    #[test]
    fn an_apply_error_is_kept_beside_the_undo() {
        let db = TempDb::new("apply-error");
        let store = db.store();
        store.chaos_run_started(&run("r1", t0())).unwrap();
        let a = plan(&store, "r1", "disk-fill", json!({}));
        store.fault_apply_failed(a, "no space").unwrap();
        store.fault_undone(a, Ok(()), t0()).unwrap();
        let row = store.fault(a).unwrap().unwrap();
        assert_eq!(row.apply_error.as_deref(), Some("no space"));
        assert_eq!(row.state, FaultState::Undone);
    }

    #[test]
    fn a_fault_of_an_unknown_run_is_refused() {
        let db = TempDb::new("fk");
        let store = db.store();
        let params = json!({});
        let refused = store.fault_planned(
            &NewFault {
                run_id: "ghost",
                trial: 1,
                kind: "kill",
                service: "s",
                container_id: "c",
                container_name: "n",
                params: &params,
                undo: &params,
            },
            t0(),
        );
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn an_unreadable_row_is_an_error_naming_it() {
        let db = TempDb::new("corrupt");
        let store = db.store();
        store.chaos_run_started(&run("r1", t0())).unwrap();
        let a = plan(&store, "r1", "pause", json!({}));
        drop(store);
        let raw = rusqlite::Connection::open(db.0.join("tickets.db")).unwrap();
        raw.execute(
            "UPDATE chaos_faults SET undo = 'not json' WHERE id = ?1",
            [a],
        )
        .unwrap();
        drop(raw);
        let store = db.store();
        let err = store.faults_left(None).unwrap_err().to_string();
        assert!(
            err.contains("chaos_faults row") && err.contains("undo"),
            "{err}"
        );
    }
}
