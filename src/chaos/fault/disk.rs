//! Disk fill: a file in a volume's host folder growing the filesystem's use to a share of
//! its size, measured by `statvfs`; undone by deleting the file.
//!
//! # Guarantees
//! - Bounded: never more than what is needed to reach `percent`, and never more than the
//!   space available to an unprivileged writer (`f_bavail`): what root keeps in reserve
//!   stays free.
//! - A partial fill (the filesystem filled up under us) leaves the file in place for the undo
//!   to delete; it is not an error.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;
use rustix::io::Errno;

/// A filesystem's size and use, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    /// Not free (including root's reserve).
    pub used: u64,
    /// Free to an unprivileged writer.
    pub available: u64,
}

/// `statvfs` of the filesystem holding `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let st = rustix::fs::statvfs(c.as_c_str())?;
    let frsize = st.f_frsize;
    let total = st.f_blocks * frsize;
    Ok(Usage {
        total,
        used: total.saturating_sub(st.f_bfree * frsize),
        available: st.f_bavail * frsize,
    })
}

/// How many bytes to add so that `percent` of the filesystem is used, within what is
/// available.
pub fn bytes_to_fill(u: Usage, percent: u8) -> u64 {
    let target = u.total / 100 * u64::from(percent.min(100))
        + u.total % 100 * u64::from(percent.min(100)) / 100;
    target.saturating_sub(u.used).min(u.available)
}

/// Writes `file` (new, mode 0600) until the filesystem is `percent` used. Returns the bytes
/// written. Blocking.
pub fn fill(file: &Path, percent: u8) -> io::Result<u64> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let want = bytes_to_fill(usage(dir)?, percent);
    // Created, never reused: the folder is the container's to write in, and a link it
    // planted at this (predictable) name must not make the runner, as root, write through
    // it into a host file. O_EXCL refuses any existing name, a link included.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(file)?;
    // Real blocks (zeros written), not a sparse file: a sparse one takes no space. 1 MiB at
    // a time; ENOSPC ends the fill where it is.
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < want {
        let n = (want - written).min(CHUNK as u64) as usize;
        match f.write(&zeros[..n]) {
            Ok(0) => break,
            Ok(k) => written += k as u64,
            Err(e) if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // On the disk before the fault counts as applied.
    match f.sync_all() {
        Err(e) if e.raw_os_error() != Some(Errno::NOSPC.raw_os_error()) => return Err(e),
        _ => {}
    }
    Ok(written)
}

/// Deletes the fill file; a missing one is already undone.
pub fn unfill(file: &Path) -> io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_to_the_share_and_never_past_what_is_available() {
        let u = |total, used, available| Usage {
            total,
            used,
            available,
        };
        assert_eq!(bytes_to_fill(u(1000, 300, 700), 50), 200);
        assert_eq!(bytes_to_fill(u(1000, 600, 400), 50), 0, "already past it");
        assert_eq!(bytes_to_fill(u(1000, 300, 650), 100), 650, "root's reserve");
        assert_eq!(bytes_to_fill(u(1000, 300, 700), 200), 700, "capped at 100%");
        // No overflow on large filesystems.
        let big = u64::MAX / 2;
        assert_eq!(bytes_to_fill(u(big, 0, big), 100), big);
    }

    #[test]
    fn a_real_filesystem_reports_a_usage_that_adds_up() {
        let u = usage(&std::env::temp_dir()).unwrap();
        assert!(u.total > 0 && u.used <= u.total);
        assert!(
            u.available <= u.total - u.used,
            "{u:?}: root's reserve is free, not available"
        );
    }

    #[test]
    fn unfill_of_a_missing_file_is_ok() {
        let path = std::env::temp_dir().join(format!("operator-unfill-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        unfill(&path).unwrap();
        assert!(!path.exists());
        unfill(&path).unwrap();
    }
}
