//! Volumes: `"source:target[:ro|:rw]"`, a bind mount or a named volume.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use super::VolumeMount;

/// Gives a manifest's folder, as this process sees it, as a folder on the engine's host;
/// the reason when it cannot (see [`map_folders_to_host`]).
pub type HostFolder = fn(&Path) -> Result<PathBuf, String>;

/// Set once by the binary: where relative bind sources are resolved.
static HOST_FOLDER: OnceLock<HostFolder> = OnceLock::new();

/// Makes relative bind sources resolve against `host_folder(manifest folder)` rather than
/// the folder as this process sees it: a controller in a container reads its manifests at
/// one path while the engine mounts the files from another (`crate::docker::hostpath`).
/// The resolved source is then the host path a controller on the host would have read,
/// so the spec hash is the same whichever ran. Once per process; later calls are ignored.
pub(crate) fn map_folders_to_host(host_folder: HostFolder) {
    let _ = HOST_FOLDER.set(host_folder);
}

/// The folder as it is, where nothing maps folders (on a host, in the unit tests).
fn same_folder(dir: &Path) -> Result<PathBuf, String> {
    Ok(dir.to_path_buf())
}

/// The accepted forms, appended to every volume error.
pub(super) const VOLUME_FORMAT: &str = "\"name:/target[:ro]\" or \"/host/path:/target[:ro]\" (\"./\" and \"../\" are relative to the manifest)";

/// Parses one volume entry. A source starting with `/`, `./` or `../` is a bind mount;
/// relative ones are resolved against `manifest_dir` (which must be absolute), lexically:
/// the path does not have to exist yet. Anything else must be a volume name. In a
/// container, `manifest_dir` is first mapped to its host folder ([`map_folders_to_host`]).
pub(super) fn parse_volume(s: &str, manifest_dir: &Path) -> Result<VolumeMount, String> {
    parse_volume_in(
        s,
        manifest_dir,
        *HOST_FOLDER.get().unwrap_or(&(same_folder as HostFolder)),
    )
}

/// [`parse_volume`] with the folder mapping given: absolute sources are host paths as
/// written; a relative one is joined to `host_folder(manifest_dir)`.
fn parse_volume_in(
    s: &str,
    manifest_dir: &Path,
    host_folder: HostFolder,
) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(format!("mode \"{mode}\" is not ro or rw")),
        [_] => return Err("the target path is missing".into()),
        _ => return Err("too many \":\"-separated parts".into()),
    };
    if source.is_empty() {
        return Err("the source is empty".into());
    }
    if !target.starts_with('/') {
        return Err(format!("target \"{target}\" is not an absolute path"));
    }
    if is_bind_source(source) {
        let joined = if source.starts_with('/') {
            PathBuf::from(source)
        } else {
            let folder = host_folder(manifest_dir)
                .map_err(|why| format!("bind source \"{source}\": {why}"))?;
            folder.join(source)
        };
        let resolved = normalize(&joined);
        if resolved.to_str().is_none() {
            return Err(format!(
                "bind source {} is not valid UTF-8",
                resolved.display()
            ));
        }
        return Ok(VolumeMount::Bind {
            source: resolved,
            target: target.to_string(),
            read_only,
        });
    }
    if source.starts_with('~') {
        return Err(format!(
            "source \"{source}\": \"~\" is not expanded; write an absolute path or one starting with \"./\""
        ));
    }
    if !is_volume_name(source) {
        return Err(format!(
            "\"{source}\" is neither a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) nor a bind mount (a path starting with \"/\", \"./\" or \"../\")"
        ));
    }
    Ok(VolumeMount::Named {
        name: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

fn is_bind_source(source: &str) -> bool {
    source.starts_with('/')
        || source.starts_with("./")
        || source.starts_with("../")
        || source == "."
        || source == ".."
}

/// Docker's rule for volume names.
fn is_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Removes `.` and resolves `..` without touching the file system (so symlinks are not
/// followed and the path need not exist). `..` above the root stays at the root.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> &'static Path {
        Path::new("/srv/manifests")
    }

    #[test]
    fn relative_bind_mount_is_resolved_against_the_manifest_folder() {
        assert_eq!(
            parse_volume("./data:/data", dir()),
            Ok(VolumeMount::Bind {
                source: PathBuf::from("/srv/manifests/data"),
                target: "/data".into(),
                read_only: false,
            })
        );
        assert_eq!(
            parse_volume("../conf/./x.toml:/etc/x.toml:ro", dir()),
            Ok(VolumeMount::Bind {
                source: PathBuf::from("/srv/conf/x.toml"),
                target: "/etc/x.toml".into(),
                read_only: true,
            })
        );
    }

    #[test]
    fn absolute_bind_mount_is_kept() {
        assert_eq!(
            parse_volume("/var/run/docker.sock:/var/run/docker.sock:rw", dir()),
            Ok(VolumeMount::Bind {
                source: PathBuf::from("/var/run/docker.sock"),
                target: "/var/run/docker.sock".into(),
                read_only: false,
            })
        );
    }

    #[test]
    fn other_sources_are_named_volumes() {
        assert_eq!(
            parse_volume("pd-data:/data:ro", dir()),
            Ok(VolumeMount::Named {
                name: "pd-data".into(),
                target: "/data".into(),
                read_only: true,
            })
        );
    }

    #[test]
    fn bad_volumes_say_what_is_wrong() {
        let cases = [
            ("relative/only", "target path is missing"),
            ("relative/only:/x", "neither a volume name"),
            ("data:relative", "not an absolute path"),
            ("data:/x:rx", "mode \"rx\""),
            (":/x", "source is empty"),
            ("~/x:/x", "not expanded"),
            ("a:/b:ro:extra", "too many"),
        ];
        for (input, expected) in cases {
            let err = parse_volume(input, dir()).unwrap_err();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    /// The sidecar's view: its manifests at /etc/operator/manifests are the host's
    /// /home/u/stack; nothing else is mounted from the host.
    fn sidecar_folder(dir: &Path) -> Result<PathBuf, String> {
        dir.strip_prefix("/etc/operator/manifests")
            .map(|rest| Path::new("/home/u/stack").join(rest))
            .map_err(|_| format!("{} is not mounted", dir.display()))
    }

    #[test]
    fn a_relative_source_in_a_container_is_the_same_host_path_as_on_the_host() {
        for (volume, host) in [
            ("./conf.txt:/conf.txt:ro", "/home/u/stack/conf.txt"),
            (
                "../../docker/tikv/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                "/home/docker/tikv/prometheus.yml",
            ),
        ] {
            let in_sidecar =
                parse_volume_in(volume, Path::new("/etc/operator/manifests"), sidecar_folder);
            let on_host = parse_volume(volume, Path::new("/home/u/stack"));
            // The same value, so the same spec hash (it is computed from the volumes).
            assert_eq!(in_sidecar, on_host, "{volume}");
            assert!(
                matches!(&on_host, Ok(VolumeMount::Bind { source, .. }) if source == Path::new(host)),
                "{volume}: {on_host:?}"
            );
        }
    }

    #[test]
    fn absolute_sources_and_volume_names_are_not_mapped() {
        let dir = Path::new("/etc/operator/manifests");
        for volume in [
            "/etc/operator/manifests/x:/x",
            "/var/run/docker.sock:/var/run/docker.sock",
            "data:/data",
        ] {
            assert_eq!(
                parse_volume_in(volume, dir, sidecar_folder),
                parse_volume(volume, dir),
                "{volume}"
            );
        }
    }

    #[test]
    fn a_relative_source_whose_folder_has_no_host_path_is_refused_naming_it() {
        let err = parse_volume_in(
            "./conf.txt:/conf.txt:ro",
            Path::new("/opt/m"),
            sidecar_folder,
        )
        .unwrap_err();
        assert_eq!(err, "bind source \"./conf.txt\": /opt/m is not mounted");
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(normalize(Path::new("../../x")), PathBuf::from("../../x"));
    }
}
