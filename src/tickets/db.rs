//! The ticket database file: where it lives, opening it (read-write with migrations, or
//! read-only), its permissions, and the schema migrations, which later modules extend.
//!
//! # Guarantees
//! - The folder is created 0700 and the file (and its WAL side files) 0600.
//! - A file that is not an operator ticket database, or one from a newer operator, is
//!   refused and never written.
//! - Migrations never drop data (a table rebuilt to widen a CHECK keeps every row and id)
//!   and are applied in one transaction each, in order; `PRAGMA user_version` is the number
//!   applied.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use rustix::fs::{Access, AtFlags, StatVfsMountFlags};

use super::TicketError;

/// `~/.operator/tickets.db`, relative to the home folder.
pub const DEFAULT_DB: &str = ".operator/tickets.db";

/// Marks the file as ours (`PRAGMA application_id`): "OPTK".
const APPLICATION_ID: i64 = 0x4F50_544B;
/// Writers wait this long for each other before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One schema step. Steps are never edited once released, only appended: a database is
/// always migrated by running the steps it has not seen.
pub struct Migration {
    /// What the step adds, for people reading the list.
    pub adds: &'static str,
    pub sql: &'static str,
}

/// The schema, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        adds: "tickets, their timeline, per-service budgets",
        sql: r#"
    CREATE TABLE tickets (
        id            INTEGER PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        cluster       TEXT NOT NULL,
        service       TEXT NOT NULL,
        drift         TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('open','remediating','resolved','escalated')),
        held          INTEGER NOT NULL DEFAULT 0,
        occurrences   INTEGER NOT NULL DEFAULT 1,
        flaps         INTEGER NOT NULL DEFAULT 0,
        detail        TEXT NOT NULL DEFAULT '',
        opened_at     TEXT NOT NULL,
        -- When the current episode began: opened_at, or the last reopening.
        episode_at    TEXT NOT NULL,
        last_seen_at  TEXT NOT NULL,
        resolved_at   TEXT,
        resolved_by   TEXT CHECK (resolved_by IN ('self-healed','controller','agent','human')),
        actions       INTEGER NOT NULL DEFAULT 0
    );
    -- At most one unresolved ticket per drift episode.
    CREATE UNIQUE INDEX tickets_one_unresolved ON tickets (fingerprint) WHERE status != 'resolved';
    CREATE INDEX tickets_by_service ON tickets (cluster, service, status);
    CREATE TABLE timeline (
        id        INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets (id),
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        detail    TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX timeline_by_ticket ON timeline (ticket_id, id);
    CREATE TABLE budgets (
        cluster          TEXT NOT NULL,
        service          TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TEXT,
        repairs          TEXT NOT NULL DEFAULT '[]',
        escalated        INTEGER NOT NULL DEFAULT 0,
        healthy_since    TEXT,
        spec_hash        TEXT,
        created_before   INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (cluster, service)
    );
    "#,
    },
    Migration {
        adds: "who acted, on every action entry (the resolve cause is taken from it)",
        // Before this step only the controller ever acted.
        sql: r#"
    ALTER TABLE timeline ADD COLUMN actor TEXT CHECK (actor IN ('controller','agent','human'));
    UPDATE timeline SET actor = 'controller' WHERE kind IN ('action-started','action-result');
    "#,
    },
    Migration {
        adds: "the `removed` resolve cause (tickets of services and checks no longer declared)",
        // SQLite cannot change a CHECK in place: the table is rebuilt (SQLite's documented
        // procedure, with foreign keys off around it: see `Db::migrate`), rows and ids kept.
        sql: r#"
    CREATE TABLE tickets_new (
        id            INTEGER PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        cluster       TEXT NOT NULL,
        service       TEXT NOT NULL,
        drift         TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('open','remediating','resolved','escalated')),
        held          INTEGER NOT NULL DEFAULT 0,
        occurrences   INTEGER NOT NULL DEFAULT 1,
        flaps         INTEGER NOT NULL DEFAULT 0,
        detail        TEXT NOT NULL DEFAULT '',
        opened_at     TEXT NOT NULL,
        episode_at    TEXT NOT NULL,
        last_seen_at  TEXT NOT NULL,
        resolved_at   TEXT,
        resolved_by   TEXT CHECK (resolved_by IN ('self-healed','controller','agent','human','removed')),
        actions       INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO tickets_new (id, fingerprint, cluster, service, drift, status, held, occurrences,
        flaps, detail, opened_at, episode_at, last_seen_at, resolved_at, resolved_by, actions)
    SELECT id, fingerprint, cluster, service, drift, status, held, occurrences,
        flaps, detail, opened_at, episode_at, last_seen_at, resolved_at, resolved_by, actions
    FROM tickets;
    DROP TABLE tickets;
    ALTER TABLE tickets_new RENAME TO tickets;
    CREATE UNIQUE INDEX tickets_one_unresolved ON tickets (fingerprint) WHERE status != 'resolved';
    CREATE INDEX tickets_by_service ON tickets (cluster, service, status);
    "#,
    },
    Migration {
        adds: "agent sessions with their ordered entries, ticket claims (split deployment), \
               pending approvals",
        // Enumerations are generous on purpose: widening a CHECK later means rebuilding a
        // table. `note` entries and `api-error` stops carry anything not foreseen here.
        sql: r#"
    CREATE TABLE agent_sessions (
        id                 TEXT PRIMARY KEY,
        ticket_id          INTEGER NOT NULL REFERENCES tickets (id),
        cluster            TEXT NOT NULL,
        service            TEXT NOT NULL,
        model              TEXT NOT NULL,
        mode               TEXT NOT NULL CHECK (mode IN ('observe','approve','execute')),
        holder             TEXT NOT NULL,
        started_at         TEXT NOT NULL,
        ended_at           TEXT,
        outcome            TEXT NOT NULL DEFAULT 'running'
                           CHECK (outcome IN ('running','ended','interrupted','failed')),
        stop_reason        TEXT CHECK (stop_reason IN ('end_turn','tool_use','max_tokens',
                           'stop_sequence','pause_turn','refusal','model_context_window_exceeded',
                           'budget','cancelled','interrupted','api-error','tool-error')),
        verdict            TEXT CHECK (verdict IN ('resolved','not-resolved')),
        claim              TEXT,
        input_tokens       INTEGER NOT NULL DEFAULT 0,
        output_tokens      INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        turns              INTEGER NOT NULL DEFAULT 0,
        request_ids        TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX agent_sessions_by_ticket ON agent_sessions (ticket_id, started_at);
    CREATE INDEX agent_sessions_by_start ON agent_sessions (started_at);
    CREATE TABLE agent_entries (
        session_id   TEXT NOT NULL REFERENCES agent_sessions (id),
        seq          INTEGER NOT NULL,
        at           TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('model-text','tool-call','tool-result',
                     'refusal','approval-requested','approved','rejected','allowed','denied',
                     'api-response','api-retry','api-error','budget','verdict','interrupted',
                     'note')),
        tool_use_id  TEXT,
        tool         TEXT,
        detail       TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE agent_claims (
        ticket_id   INTEGER PRIMARY KEY REFERENCES tickets (id),
        holder      TEXT NOT NULL,
        session_id  TEXT,
        claimed_at  TEXT NOT NULL,
        expires_at  TEXT NOT NULL
    );
    CREATE TABLE agent_approvals (
        id           INTEGER PRIMARY KEY,
        session_id   TEXT NOT NULL REFERENCES agent_sessions (id),
        tool_use_id  TEXT NOT NULL,
        command      TEXT NOT NULL,
        asked_at     TEXT NOT NULL,
        decided_at   TEXT,
        decision     TEXT CHECK (decision IN ('approved','rejected')),
        decided_by   TEXT,
        reason       TEXT,
        UNIQUE (session_id, tool_use_id)
    );
    "#,
    },
    Migration {
        adds: "the queue of agent session requests (`operator agent` dispatchers share it)",
        sql: super::requests::MIGRATION,
    },
    Migration {
        adds: "the fault ledger of chaos drills: runs and every fault they inject, undo recipe \
               written before the fault is applied",
        sql: super::chaos::MIGRATION,
    },
    Migration {
        adds: "the record of containers adopted by name (started by compose or by hand)",
        sql: super::adoptions::MIGRATION,
    },
    Migration {
        adds: "the quorum gate's state: members under way and each group's replacement window",
        sql: super::gate::MIGRATION,
    },
    Migration {
        adds: "when each service was last paused, with its budget: healthcheck verdicts from \
               before then are stale, also for a controller started after the unpause",
        sql: "ALTER TABLE budgets ADD COLUMN paused_at TEXT;",
    },
];

/// `$HOME/.operator/tickets.db`.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(DEFAULT_DB)
}

/// Refuses a database path that is a folder (a `--db ~/.operator` meant as the folder).
pub(crate) fn not_a_folder(path: &Path) -> Result<(), TicketError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(TicketError::IsFolder {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Checks that a database a command reads or changes (but never creates) is there: a
/// missing file is [`TicketError::Missing`]; one that cannot even be looked at (a folder
/// this user may not enter) is said so, not called missing.
pub fn require_existing(path: &Path) -> Result<(), TicketError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(TicketError::IsFolder {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TicketError::Missing {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(explain(
            path,
            false,
            TicketError::Unreadable {
                path: path.to_path_buf(),
                source,
            },
        )),
    }
}

/// Below this much free space a failed write is put down to a full disk.
const LOW_SPACE: u64 = 1 << 20;

/// A failure to open, lock or create the database, explained from the file system's side
/// when it can be: a read-only or full file system, a folder or file this user may not use.
/// The one line a person reads at start then says what is wrong and what fixes it, instead
/// of SQLite's "disk I/O error". Errors that are not about the file system (a foreign file,
/// another controller) and failures nothing visible explains are returned as they are.
/// `write`: whether the database was to be written (else only read).
pub(crate) fn explain(path: &Path, write: bool, error: TicketError) -> TicketError {
    let about_files = matches!(
        error,
        TicketError::Folder { .. }
            | TicketError::Open { .. }
            | TicketError::Lock { .. }
            | TicketError::Permissions { .. }
            | TicketError::Query { .. }
            | TicketError::Migration { .. }
            | TicketError::Unreadable { .. }
    );
    if !about_files {
        return error;
    }
    match diagnose(path, write) {
        Some((problem, fix)) => TicketError::Unusable {
            path: path.to_path_buf(),
            problem,
            cause: root_cause(&error),
            fix: format!("{fix}, or point --db / OPERATOR_DB at another file"),
        },
        None => error,
    }
}

/// What is visibly wrong with the place of `path`, with its fix; `None` if nothing is.
fn diagnose(path: &Path, write: bool) -> Option<(String, String)> {
    let folder = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A folder still to be created is judged by the nearest one that exists.
    let existing = folder
        .ancestors()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .find(|d| d.is_dir())
        .unwrap_or(folder);
    let me = crate::identity::Identity::current()
        .map(|me| me.to_string())
        .unwrap_or_else(|| "this user".into());
    let access_fix = "give this user access (chown or chmod it; in a container, run as its \
                      owner with --user, or mount a folder this user owns)";
    let space = if write { statvfs(existing) } else { None };
    if let Some((_, true)) = space {
        return Some((
            format!("the file system under {} is read-only", existing.display()),
            "mount it read-write".to_string(),
        ));
    }
    let folder_mode = if write {
        Access::WRITE_OK | Access::EXEC_OK
    } else {
        Access::EXEC_OK
    };
    if !accessible(existing, folder_mode) {
        let what = if write { "writable" } else { "searchable" };
        return Some((
            format!("the folder {} is not {what} by {me}", existing.display()),
            access_fix.to_string(),
        ));
    }
    let file_mode = if write {
        Access::READ_OK | Access::WRITE_OK
    } else {
        Access::READ_OK
    };
    if path.exists() && !accessible(path, file_mode) {
        let what = if write {
            "readable and writable"
        } else {
            "readable"
        };
        return Some((
            format!("the file is not {what} by {me}"),
            access_fix.to_string(),
        ));
    }
    if let Some((free, _)) = space
        && free < LOW_SPACE
    {
        return Some((
            format!(
                "the file system under {} is full: {} KiB free",
                existing.display(),
                free / 1024
            ),
            "free space there (SQLite also needs room for the -wal file beside the database)"
                .to_string(),
        ));
    }
    None
}

/// Free bytes for this user and whether the file system is mounted read-only.
fn statvfs(path: &Path) -> Option<(u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let st = rustix::fs::statvfs(c.as_c_str()).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    Some((free, st.f_flag.contains(StatVfsMountFlags::RDONLY)))
}

/// Whether this process (its effective ids, as the kernel will judge the open) may use
/// `path` in `mode`.
///
/// # Caveats
/// Where the kernel cannot say (older than 5.8, without `faccessat2`, in a set-id process:
/// rustix calls the kernel, it does not emulate as glibc did), the path is not blamed.
fn accessible(path: &Path, mode: Access) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    match rustix::fs::accessat(rustix::fs::CWD, c.as_c_str(), mode, AtFlags::EACCESS) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::NOSYS,
    }
}

/// The innermost cause of an error: what the system or SQLite said ("No space left on
/// device (os error 28)", "disk I/O error"), without the layers that name the path again.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Creates the folder of `path` (mode 0700) if it is missing.
pub(crate) fn private_folder_of(path: &Path) -> Result<(), TicketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TicketError::Folder {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// Connections to the ticket database, used from blocking threads: one that writes (every
/// transaction, so writers queue here as SQLite would make them anyway) and a few that only
/// read, so that many reconciles reading budgets and tickets at once do not wait behind each
/// other's writes (WAL lets readers run beside the writer).
pub(crate) struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    read_only: bool,
    /// Moves on after every commit this process makes ([`Db::write`]), and whenever another
    /// connection's commit is noticed ([`Db::notice_others`]): what was read at generation
    /// `g` is still what the database holds while the generation is `g` (see
    /// [`Db::generation_now`]).
    generation: AtomicU64,
    /// The writer's `PRAGMA data_version` when another connection's commits were last
    /// looked for.
    seen_version: Mutex<Option<i64>>,
}

/// Reading connections of a read-write database.
const READERS: usize = 4;

/// Checks, without writing anything, that an existing file is ours or empty.
fn check_existing(path: &Path) -> Result<(), TicketError> {
    let unreadable = |source| TicketError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(unreadable(e)),
    };
    if len == 0 {
        return Ok(());
    }
    // A file this user may not read is a permission problem, not a foreign file.
    std::fs::File::open(path).map_err(unreadable)?;
    let foreign = |reason: String| TicketError::Foreign {
        path: path.to_path_buf(),
        reason,
    };
    // Only SQLite's own verdict on the bytes makes a file foreign; an I/O failure (a full
    // disk where the `-shm` file cannot grow, a lock) is a failure to open, explained by
    // the caller, never a reason to call the file someone else's.
    let failed = |what: &str, e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            foreign(format!("{what}: {e}"))
        }
        _ => TicketError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    };
    let conn = open_reader(path).map_err(|e| failed("not a readable SQLite file", e))?;
    let read = |sql: &str| -> Result<i64, TicketError> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(|e| failed("not a SQLite database", e))
    };
    let app_id = read("PRAGMA application_id")?;
    let version = read("PRAGMA user_version")?;
    let objects = read("SELECT count(*) FROM sqlite_master")?;
    if app_id == APPLICATION_ID {
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(TicketError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        return Ok(());
    }
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(()); // an empty SQLite database: ours to initialise
    }
    Err(foreign(format!(
        "application_id {app_id:#x}, {objects} schema objects"
    )))
}

/// A connection that only reads `path`, and never writes anything beside it either.
///
/// SQLite's read-only mode still needs the WAL's `-shm` index: it creates the `-wal` and
/// `-shm` files when they are missing and grows the index, which fails in a read-only
/// folder, on a full disk, or in a folder this user may not write ("unable to open database
/// file", "disk I/O error"). When that happens and there is no write-ahead log with content
/// (a missing or empty `-wal`), the file itself holds every committed transaction, and it is
/// opened again `immutable`: no index, no locks. Nothing can be writing it meanwhile: a
/// writer in WAL mode keeps an index of at least one page, which this reader could have
/// used. With a `-wal` that has content, SQLite reads it through a read-only index itself.
///
/// # Caveats
/// An immutable reader does not see a transaction committed after it opened: fine for one
/// listing, and the reason it is only a fallback.
fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let probe = |conn: Connection| -> Result<Connection, rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first read maps the WAL index: where a read-only place makes opening fail.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    };
    let error =
        match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).and_then(probe) {
            Ok(conn) => return Ok(conn),
            Err(error) => error,
        };
    let place_refuses = matches!(
        error.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::PermissionDenied
        )
    );
    if !place_refuses || wal_has_content(path) {
        return Err(error);
    }
    Connection::open_with_flags(
        immutable_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .and_then(probe)
    // The first failure is the one that explains the place.
    .map_err(|_| error)
}

/// Whether the write-ahead log beside `path` holds anything (an unreadable one counts).
fn wal_has_content(path: &Path) -> bool {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    match std::fs::metadata(&wal) {
        Ok(m) => m.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// `file:PATH?immutable=1`, with the characters a URI path gives meaning to escaped.
fn immutable_uri(path: &Path) -> String {
    // An absolute path gets an empty authority, so that one starting with `//` is not
    // taken for a host name.
    let mut uri = String::from(if path.is_absolute() {
        "file://"
    } else {
        "file:"
    });
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

impl Db {
    /// Opens (creating if missing) the database at `path`, applying migrations. A failure
    /// the file system explains (full, read-only, not this user's) says so: see [`explain`].
    pub(crate) fn open(path: &Path) -> Result<Db, TicketError> {
        not_a_folder(path)?;
        Self::open_writable(path).map_err(|e| explain(path, true, e))
    }

    fn open_writable(path: &Path) -> Result<Db, TicketError> {
        private_folder_of(path)?;
        check_existing(path)?;
        if !path.exists() {
            // Created private from the start, not chmod-ed after SQLite made it.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| TicketError::Permissions {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let open_err = |source| TicketError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TicketError::Permissions {
                path: path.to_path_buf(),
                source,
            },
        )?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut db = Db {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: Default::default(),
            read_only: false,
            generation: AtomicU64::new(0),
            seen_version: Mutex::new(None),
        };
        db.migrate()?;
        // Opened after the migrations, so they see the schema as it is now.
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(open_err)?;
            reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
            // Every write goes through the writer ([`Db::write`]), which is what keeps the
            // generation honest: the readers are refused any.
            reader
                .pragma_update(None, "query_only", "ON")
                .map_err(open_err)?;
            db.readers.push(Mutex::new(reader));
        }
        // The generation's baseline: commits of other processes are noticed from now on.
        db.notice_others(&db.writer())?;
        // WAL side files inherit the process umask; keep them private too.
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                let _ = std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(db)
    }

    /// Opens an existing database for reading only: never creates, migrates or changes it.
    /// A database not yet migrated to this operator's schema is refused with the fix.
    pub(crate) fn open_read_only(path: &Path) -> Result<Db, TicketError> {
        require_existing(path)?;
        Self::open_for_reading(path).map_err(|e| explain(path, false, e))
    }

    fn open_for_reading(path: &Path) -> Result<Db, TicketError> {
        check_existing(path)?;
        let open_err = |source| TicketError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = open_reader(path).map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version < known {
            return Err(TicketError::NotMigrated {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        if version > known {
            return Err(TicketError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        Ok(Db {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: Default::default(),
            read_only: true,
            generation: AtomicU64::new(0),
            seen_version: Mutex::new(None),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Maps a SQLite error to one naming the file and what was being done.
    pub(crate) fn err(
        &self,
        doing: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> TicketError + '_ {
        move |source| TicketError::Query {
            path: self.path.clone(),
            doing,
            source,
        }
    }

    /// A connection for reads (never for writes: see [`Db::write`]): a free reader if one is,
    /// else the next one in turn.
    pub(crate) fn read(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return self.writer();
        }
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(conn) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return conn;
            }
        }
        self.readers[start % self.readers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The connection that writes. Also the one whose `PRAGMA data_version` tells another
    /// process's writes from this one's.
    pub(crate) fn writer(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in an immediate (write-locked) transaction.
    pub(crate) fn write<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, TicketError>,
    ) -> Result<T, TicketError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err(doing))?;
        let out = f(&tx)?;
        tx.commit().map_err(self.err(doing))?;
        // Still under the writer's lock: no other commit of this process comes between.
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }

    /// The generation, read before a read whose result it is to stamp: a commit after it
    /// moves it on, so a stamped read is never taken for newer than it is.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The generation now, with another process's commits accounted for, or `None` when the
    /// writer is busy (the caller then reads afresh). Cheap enough for an async thread: it
    /// never waits for the writer, and `PRAGMA data_version` reads no page.
    pub(crate) fn generation_now(&self) -> Option<u64> {
        let conn = self.conn.try_lock().ok()?;
        // The pragma opens a read transaction, which another process's checkpoint can keep
        // waiting: refused at once rather than waited for here.
        conn.busy_timeout(Duration::ZERO).ok()?;
        let noticed = self.notice_others(&conn);
        conn.busy_timeout(BUSY_TIMEOUT).ok()?;
        noticed.ok()?;
        Some(self.generation())
    }

    /// Looks for commits by other connections (another process's `tickets retry`) since the
    /// last look, and moves the generation on if there were; returns the data version.
    pub(crate) fn notice_others(&self, writer: &Connection) -> Result<i64, TicketError> {
        let version: i64 = writer
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err("read the data version"))?;
        let mut seen = self.seen_version.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != Some(version) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        *seen = Some(version);
        Ok(version)
    }

    fn migrate(&self) -> Result<(), TicketError> {
        // A step may rebuild a table (SQLite cannot alter a CHECK): with foreign keys on,
        // dropping the old `tickets` would cascade into the timeline. They are switched off
        // around the migration (it cannot be done inside a transaction) and every reference
        // is verified before the step commits.
        self.writer()
            .pragma_update(None, "foreign_keys", "OFF")
            .map_err(self.err("apply schema migrations"))?;
        let migrated = self.apply_migrations();
        self.writer()
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(self.err("apply schema migrations"))?;
        migrated
    }

    /// The file's folder locked against another process's migration, waited for at most
    /// [`BUSY_TIMEOUT`] (as a write waits for another's); unlocked when dropped.
    fn lock_for_migration(&self) -> Result<std::fs::File, TicketError> {
        let folder = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let lock_err = |source| TicketError::Lock {
            path: folder.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(folder).map_err(lock_err)?;
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(lock_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "another process has been migrating its schema for {} s",
                            BUSY_TIMEOUT.as_secs()
                        ),
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
            }
        }
    }

    /// Runs the steps the file has not seen, in one transaction, through
    /// `rusqlite_migration` (which keeps the version in `PRAGMA user_version`, as this store
    /// always has), every reference checked after each step.
    fn apply_migrations(&self) -> Result<(), TicketError> {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;

        let version = |conn: &Connection| -> Result<i64, TicketError> {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(self.err("read the schema version"))
        };
        let known = MIGRATIONS.len() as i64;
        let too_new = |found| TicketError::TooNew {
            path: self.path.clone(),
            found,
            known,
        };
        // An up-to-date file (every open but the first after an upgrade) takes no lock.
        let found = version(&self.writer())?;
        if found > known {
            return Err(too_new(found));
        }
        // `rusqlite_migration` reads the version before its transaction: two processes
        // opening an old file at once would both run its steps. An exclusive `flock` on the
        // file's folder lets one migrate at a time; the other then finds nothing left to
        // do. Not on the file itself: closing another descriptor of the database would
        // drop the `fcntl` locks SQLite holds on it for this process.
        let _migrating = (found < known)
            .then(|| self.lock_for_migration())
            .transpose()?;
        let mut conn = self.writer();
        let found = version(&conn)?;
        if found > known {
            return Err(too_new(found));
        }
        // How many steps are in: the step that failed is the next one.
        let applied = Arc::new(AtomicUsize::new(found as usize));
        let steps = rusqlite_migration::Migrations::new(
            MIGRATIONS
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let applied = applied.clone();
                    rusqlite_migration::M::up_with_hook(
                        step.sql,
                        move |_: &rusqlite::Transaction| {
                            applied.store(i + 1, Ordering::SeqCst);
                            Ok(())
                        },
                    )
                    .comment(step.adds)
                    .foreign_key_check()
                })
                .collect(),
        );
        if let Err(e) = steps.to_latest(&mut conn) {
            let reason = match e {
                rusqlite_migration::Error::ForeignKeyCheck(dangling) => {
                    format!("{} rows would reference missing rows", dangling.len())
                }
                rusqlite_migration::Error::RusqliteError { err, .. } => err.to_string(),
                other => other.to_string(),
            };
            return Err(TicketError::Migration {
                path: self.path.clone(),
                step: applied.load(Ordering::SeqCst) + 1,
                reason,
            });
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(self.err("apply schema migrations"))
    }
}
