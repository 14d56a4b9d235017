#!/usr/bin/env bash
# Build the sidecar image without any registry: the layout of docker/Dockerfile, from Debian's
# packages. Runs as root (debootstrap and chroot need it); about a minute here. It needs a
# Debian package mirror (the one apt uses, or --mirror URL), and crates.io or a filled cargo
# cache for `cargo build` unless --binary FILE is given; nothing else from the network.
#
#   1. a minimal Debian root file system (debootstrap --variant=minbase, this host's release) with the
#      agent's shell tools: ca-certificates, curl, jq;
#   2. only the docker client binary from Debian's docker.io package (not the engine);
#   3. the release binary (cargo build --release, unless --binary FILE) and manifests/tikv;
#   4. the user operator (10001:10001), docs and caches removed;
#   5. docker import with docker/Dockerfile's runtime instructions (ENTRYPOINT, CMD, ENV,
#      USER, WORKDIR, EXPOSE, LABEL, HEALTHCHECK), plus the commit it was built from.
#
# With --toolbox it builds the agent's toolbox instead (operator-toolbox:latest): the same root
# and tools without the controller (no binary, no manifests), run as nobody (65534), whose
# command is `sleep infinity`. The controller starts one container of it per agent session
# (docs/agent.md); the sidecar uses its own image for that and needs no toolbox image.
#
# Usage: scripts/build-image.sh [--toolbox] [--tag NAME] [--binary FILE] [--suite NAME] [--mirror URL]
#   --toolbox      build the agent's toolbox image (default tag operator-toolbox:latest)
#   --tag NAME     the image's name (default operator:latest)
#   --binary FILE  put this operator binary in the image instead of building one
#   --suite NAME   the Debian release of the image (default: this host's, from
#                  /etc/os-release, so the binary built here finds the glibc it was linked to)
#   --mirror URL   the Debian mirror (default: the one apt uses for Debian itself, else
#                  http://deb.debian.org/debian)
# Prints the image's id, size and tag on its last line.
set -euo pipefail

LOG_TAG=build-image
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAG=
TOOLBOX=0
BINARY=
SUITE=
MIRROR=
while (($#)); do
  case "$1" in
    --toolbox) TOOLBOX=1; shift ;;
    --tag) TAG="${2:?--tag needs a NAME}"; shift 2 ;;
    --binary) BINARY="${2:?--binary needs a FILE}"; shift 2 ;;
    --suite) SUITE="${2:?--suite needs a NAME}"; shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a URL}"; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (usage: scripts/build-image.sh [--toolbox] [--tag NAME] [--binary FILE] [--suite NAME] [--mirror URL])" ;;
  esac
done

if ((TOOLBOX)); then
  TAG=${TAG:-operator-toolbox:latest}
  [[ -z "$BINARY" ]] || die "--binary and --toolbox do not go together: the toolbox has no controller in it"
else
  TAG=${TAG:-operator:latest}
fi

[[ "$(id -u)" == 0 ]] || die "building the image needs root (debootstrap, chroot); run it as root"
command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap (scripts/setup.sh installs it)"
engine_answers || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); scripts/setup.sh starts one"
[[ -f docker/Dockerfile ]] || die "docker/Dockerfile is missing"

if [[ -z "$SUITE" ]]; then
  SUITE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  [[ -n "$SUITE" ]] || die "cannot tell this host's Debian release from /etc/os-release; say it with --suite (e.g. bookworm)"
fi
if [[ -z "$MIRROR" ]]; then
  # The mirror apt already uses for Debian itself (not its security archive, not a
  # third-party repository), so a machine behind its own mirror builds from it too.
  MIRROR=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

started=$(date +%s)
work=$(mktemp -d /var/tmp/operator-image.XXXXXX)
# Also on Ctrl-C and kill: a half-built root is hundreds of MB, and debootstrap interrupted
# can leave /proc and /sys mounted inside it, which must be unmounted, never walked into.
cleanup() {
  local mnt
  trap - EXIT INT TERM HUP
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(awk -v r="$work/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r)
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM HUP
root="$work/root"

# --- the binary ------------------------------------------------------------------------
if ((TOOLBOX)); then
  :
elif [[ -z "$BINARY" ]]; then
  log "cargo build --release --locked"
  cargo build --release --locked --quiet
  BINARY=target/release/operator
fi
((TOOLBOX)) || [[ -x "$BINARY" ]] || die "$BINARY is not an executable file"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# --- the root file system ----------------------------------------------------------------
log "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase --include=ca-certificates,curl,jq "$SUITE" "$root" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 20 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above); it needs the Debian package mirror $MIRROR: if that cannot be reached from here, give one that can with --mirror URL (an internal mirror or an apt cache)"
}

# --- only the docker client from docker.io ------------------------------------------------
log "the docker client from Debian's docker.io"
mkdir -p "$work/deb"
(cd "$work/deb" && apt-get download docker.io >/dev/null 2>&1) ||
  { apt-get update -qq && (cd "$work/deb" && apt-get download docker.io >/dev/null); } ||
  die "apt-get download docker.io failed: it needs apt's package lists and mirror (apt-get update, and a mirror this machine reaches)"
dpkg-deb --fsys-tarfile "$work"/deb/docker.io_*.deb | tar -x -C "$work/deb" ./usr/bin/docker
install -m 0755 "$work/deb/usr/bin/docker" "$root/usr/bin/docker"

# --- the controller, its manifests, its user ------------------------------------------------
if ((!TOOLBOX)); then
  install -m 0755 "$BINARY" "$root/usr/local/bin/operator"
  strip "$root/usr/local/bin/operator" 2>/dev/null || true
  mkdir -p "$root/etc/operator/manifests"
  cp manifests/tikv/*.yaml "$root/etc/operator/manifests/"
  echo 'operator:x:10001:10001:operator:/home/operator:/usr/sbin/nologin' >>"$root/etc/passwd"
  echo 'operator:x:10001:' >>"$root/etc/group"
  echo 'operator:*:20000:0:99999:7:::' >>"$root/etc/shadow"
  # 0755, as useradd -m makes it: compose runs the sidecar as you (OPERATOR_UID), who must
  # reach the database folder mounted below it.
  install -d -m 0755 -o 10001 -g 10001 "$root/home/operator"
fi

# --- small: what a runtime never reads ------------------------------------------------------
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,linda} "$root"/var/cache/apt/* \
  "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/usr/share/common-licenses
# debootstrap leaves the host's resolver; the engine writes the container's own.
: >"$root/etc/resolv.conf"
# A check that the binary runs in this root (glibc, its libraries), before importing it.
if ((!TOOLBOX)); then
  chroot "$root" /usr/local/bin/operator --version >/dev/null ||
    die "the operator binary does not run inside the image's root (a library missing?)"
fi
chroot "$root" /usr/bin/docker --version >/dev/null || die "the docker client does not run inside the image's root"

# --- import with the Dockerfile's runtime instructions ----------------------------------------
changes=()
if ((TOOLBOX)); then
  # The controller gives every toolbox its own user, command, environment and mounts; these
  # are what a person running the image by hand gets.
  changes+=(--change 'USER 65534:65534' --change 'WORKDIR /tmp' --change 'ENV HOME=/tmp'
    --change 'CMD ["sleep", "infinity"]' --change 'LABEL org.opencontainers.image.title=operator-toolbox')
else
  while IFS= read -r line; do
    changes+=(--change "$line")
  done < <(awk '/^FROM /{buf=""} /^(ENTRYPOINT|CMD|ENV|USER|WORKDIR|EXPOSE|LABEL|HEALTHCHECK) /{buf=buf $0 "\n"} END{printf "%s", buf}' docker/Dockerfile)
  ((${#changes[@]} > 0)) || die "no runtime instructions found in docker/Dockerfile's last stage"
fi
changes+=(--change "LABEL org.opencontainers.image.revision=$commit")
changes+=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

log "docker import as $TAG"
id=$(tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" \
  --message "operator $commit, built by scripts/build-image.sh" - "$TAG")
size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "built $TAG (${id#sha256:}) from $commit in $(($(date +%s) - started)) s: $((size / 1000000)) MB"
echo "${id#sha256:} $size $TAG"
