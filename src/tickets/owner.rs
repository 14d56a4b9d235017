//! One controller per ticket database. Two controllers acting on one database would repair
//! every drift twice while the budget counts once, so `operator run` first takes an exclusive
//! OS lock on a file beside the database (`tickets.db.lock`) and keeps it until it exits.
//!
//! # Guarantees
//! - At most one process holds the lock; a second one is refused at once, with the holder's
//!   pid, host and start time (written into the lock file by the holder).
//! - A holder that dies frees the lock (the kernel drops it with the process): no stale lock
//!   to clean up by hand.
//! - Only acting needs the lock: `status`, `tickets list|show` and a person's
//!   `tickets hold|resolve|retry` work beside a running controller.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};

use super::TicketError;
use super::db::{explain, not_a_folder, private_folder_of};

/// The lock, held while this value lives.
#[derive(Debug)]
pub struct Ownership {
    path: PathBuf,
    _file: File,
}

/// The lock file of a database.
pub fn lock_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", db.display()))
}

/// This machine's host name, for "pid N on HOST" holder strings.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".into())
}

impl Ownership {
    /// Takes the database for this process, or says who has it. A lock file that cannot
    /// be made or written (a full, read-only or foreign folder) is explained: see
    /// [`explain`].
    pub fn acquire(db: &Path) -> Result<Ownership, TicketError> {
        not_a_folder(db)?;
        Self::take(db).map_err(|e| explain(db, true, e))
    }

    fn take(db: &Path) -> Result<Ownership, TicketError> {
        private_folder_of(db)?;
        let path = lock_path(db);
        let io = |source| TicketError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(TicketError::Owned {
                    db: db.to_path_buf(),
                    holder: if holder.is_empty() {
                        "a controller that is just starting".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: say who we are, for the next one who asks.
        let me = format!(
            "pid {} on {} since {}",
            std::process::id(),
            host(),
            Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Ownership { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_holder_and_the_first_release_frees_it() {
        let dir = std::env::temp_dir().join(format!("operator-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("sub").join("tickets.db");
        let first = Ownership::acquire(&db).expect("first owner");
        // A second open of the lock file conflicts even within one process.
        match Ownership::acquire(&db) {
            Err(TicketError::Owned { holder, .. }) => {
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let message = Ownership::acquire(&db).unwrap_err().to_string();
        assert!(
            message.contains("tickets.db") && message.contains("since"),
            "{message}"
        );
        drop(first);
        Ownership::acquire(&db).expect("free again once the holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
