//! Host paths of a controller that runs in a container (the sidecar).
//!
//! A bind mount's source is read by the engine on the host, whatever the controller sees.
//! A manifest's absolute sources are host paths as written; a relative one (`./conf.txt`)
//! is relative to the manifest's folder *on the host*, which in the sidecar is mounted at
//! another path (`/etc/operator/manifests` is the host's `/home/u/stack`). That folder is
//! found through the container's own mounts, read from the engine: the same answer as a
//! controller on the host reading the same files, so the same spec hash. A folder that is
//! not mounted from the host (the copy baked into the image) gives no host path at all:
//! a relative source there is refused when the manifest is loaded, naming the file, the
//! field and the value, rather than becoming a source the engine would create as an empty
//! folder on the host.
//!
//! # Guarantees
//! - On a host nothing changes and the engine is not asked: a path is its own host path.
//! - In a container the engine is asked once per process, and only when a manifest has a
//!   relative bind source (so `validate`, `status` and `tickets` cost nothing otherwise).
//! - Only the folder is mapped; the relative part is then joined and `..` resolved on the
//!   host's side (lexically), as on the host: `../../docker/tikv/prometheus.yml` from a
//!   mounted `manifests/tikv` names the repository's file even though that file is not
//!   mounted into the container.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;

/// How long the one look at the container's own mounts may take, the connection included.
const LOOK_TIMEOUT: Duration = Duration::from_secs(15);

/// The bind mounts (and volumes) of the container this process runs in: where each is in
/// here and what it is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMounts {
    /// The container's id (or name), for messages.
    pub container: String,
    /// `(destination in here, source on the host)`.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

impl HostMounts {
    /// The host folder that `dir` (an absolute folder in here) is: through the deepest
    /// mount that holds it.
    ///
    /// # Errors
    /// A folder no mount holds is not on the host (it is in the image or a tmpfs): the
    /// message says so and how to fix it.
    pub fn host_folder(&self, dir: &Path) -> Result<PathBuf, String> {
        self.mounts
            .iter()
            .filter(|(dest, _)| dir.starts_with(dest))
            .max_by_key(|(dest, _)| dest.components().count())
            .map(|(dest, source)| source.join(dir.strip_prefix(dest).unwrap_or(Path::new(""))))
            .ok_or_else(|| {
                format!(
                    "this controller runs in container {} and the manifest's folder {} is not \
                     mounted into it from the host, so a path relative to it names no host \
                     file; mount the folder from the host (-v /host/folder:{}:ro) or write an \
                     absolute host path",
                    short(&self.container),
                    dir.display(),
                    dir.display()
                )
            })
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The id of the container whose files the engine mounted into the reader (its hostname,
/// hosts, resolv.conf), from a mount table (`/proc/self/mountinfo`): the reader runs in it.
/// (The agent's sandbox finds its own container the same way.)
pub fn container_id_in_mounts(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let root = line.split(' ').nth(3)?;
        let (_, rest) = root.split_once("/containers/")?;
        let (id, file) = rest.split_once('/')?;
        let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        (is_id && matches!(file, "hostname" | "hosts" | "resolv.conf")).then(|| id.to_string())
    })
}

/// The mounts of container `id`, asked of the engine.
///
/// # Errors
/// The engine's answer, or that it gave none within [`LOOK_TIMEOUT`], as one line.
pub async fn mounts_of(docker: &Docker, id: &str) -> Result<HostMounts, String> {
    let inspected = tokio::time::timeout(LOOK_TIMEOUT, docker.inspect_container(id, None))
        .await
        .map_err(|_| format!("the engine did not answer within {LOOK_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let mounts = inspected
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let (dest, source) = (m.destination?, m.source?);
            (!dest.is_empty() && !source.is_empty())
                .then(|| (PathBuf::from(dest), PathBuf::from(source)))
        })
        .collect();
    Ok(HostMounts {
        container: id.to_string(),
        mounts,
    })
}

/// This process's mounts: `None` on a host; in a container, its mounts as the engine
/// reports them, or why they could not be had. Asked once, on the first call.
///
/// # Caveats
/// Blocks the caller (at most [`LOOK_TIMEOUT`] plus the connection's) the first time, in a
/// container only: it runs where manifests are loaded, which is synchronous.
fn this_process() -> &'static Result<Option<HostMounts>, String> {
    static MOUNTS: OnceLock<Result<Option<HostMounts>, String>> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return Ok(None);
        };
        let Some(id) = container_id_in_mounts(&mountinfo) else {
            return Ok(None);
        };
        // A runtime of its own on a thread of its own: the caller may be on a runtime's
        // worker already, where blocking on another future would panic.
        let asked = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime to ask the engine: {e}"))?;
            runtime.block_on(async {
                let docker = super::connect(LOOK_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                mounts_of(&docker, &id).await.map_err(|why| {
                    format!(
                        "the engine cannot tell container {} its own mounts ({why}); is \
                         DOCKER_HOST the engine this container runs on?",
                        short(&id)
                    )
                })
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the look at this container's mounts failed".into()));
        asked.map(Some)
    })
}

/// The host folder of `dir`, a manifest's folder as this process sees it: itself on a host,
/// through this container's mounts in one. See the module's guarantees.
///
/// # Errors
/// In a container: the folder is not mounted from the host, or the engine could not be
/// asked. The message is the reason, for a manifest error naming the file and field.
pub fn host_folder(dir: &Path) -> Result<PathBuf, String> {
    match this_process() {
        Ok(None) => Ok(dir.to_path_buf()),
        Ok(Some(mounts)) => mounts.host_folder(dir),
        Err(why) => Err(format!(
            "a path relative to the manifest cannot be given its host path: {why}"
        )),
    }
}

/// Makes manifests loaded by this process resolve relative bind sources against their
/// folder's host path ([`host_folder`]). Called once at start by the binary; a library
/// user (and the unit tests) that does not call it gets the folders as they are.
pub fn map_manifest_folders() {
    crate::manifest::volume::map_folders_to_host(host_folder);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> HostMounts {
        HostMounts {
            container: "f".repeat(64),
            mounts: vec![
                (
                    "/var/run/docker.sock".into(),
                    "/run/user/1000/docker.sock".into(),
                ),
                (
                    "/home/operator/.operator".into(),
                    "/home/u/.operator".into(),
                ),
                ("/etc/operator/manifests".into(), "/home/u/stack".into()),
                ("/etc/operator/manifests/extra".into(), "/srv/extra".into()),
            ],
        }
    }

    #[test]
    fn a_mounted_manifest_folder_is_its_host_folder() {
        let m = sidecar();
        assert_eq!(
            m.host_folder(Path::new("/etc/operator/manifests")),
            Ok(PathBuf::from("/home/u/stack"))
        );
        assert_eq!(
            m.host_folder(Path::new("/etc/operator/manifests/tikv")),
            Ok(PathBuf::from("/home/u/stack/tikv")),
            "a folder below a mount is below its source"
        );
        assert_eq!(
            m.host_folder(Path::new("/etc/operator/manifests/extra/x")),
            Ok(PathBuf::from("/srv/extra/x")),
            "the deepest mount wins"
        );
    }

    #[test]
    fn a_folder_not_mounted_from_the_host_is_refused_with_the_fix() {
        let m = sidecar();
        for dir in [
            "/etc/operator",
            "/etc/operator/manifestsx",
            "/opt/manifests",
        ] {
            let err = m.host_folder(Path::new(dir)).unwrap_err();
            assert!(
                err.contains(&format!("folder {dir} is not mounted"))
                    && err.contains("ffffffffffff")
                    && err.contains(&format!("-v /host/folder:{dir}:ro")),
                "{dir}: {err}"
            );
        }
    }

    #[test]
    fn its_own_container_is_found_in_its_mounts_only() {
        let id = "a".repeat(64);
        let inside = format!(
            "790 700 0:50 / / rw - overlay overlay rw\n812 790 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_in_mounts(&inside), Some(id.clone()));
        // A data root on a file system of its own shows the path from that root.
        let own_fs = format!(
            "812 790 8:17 /containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sdb1 rw\n"
        );
        assert_eq!(container_id_in_mounts(&own_fs), Some(id.clone()));
        assert_eq!(container_id_in_mounts(""), None, "on the host");
        let short = "812 790 8:1 /var/lib/docker/containers/aaaaaaaaaaaa/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            container_id_in_mounts(short),
            None,
            "a short id is not enough"
        );
        let volume =
            format!("812 790 8:1 /srv/containers/{id}/data /data rw - ext4 /dev/sda1 rw\n");
        assert_eq!(
            container_id_in_mounts(&volume),
            None,
            "only the engine's own files"
        );
    }
}
