#!/usr/bin/env bash
# Prepare this machine for the operator's tests. Idempotent; runs as root.
#
#   1. installs the Debian packages the tests need (only what is missing);
#   2. starts dockerd in the background if no engine answers `docker info`
#      (log: $OPERATOR_CI_STATE/dockerd.log, pid: $OPERATOR_CI_STATE/dockerd.pid);
#      scripts/teardown.sh stops it again, and only it;
#   3. builds the local images without any registry:
#        operator-local/empty:latest    empty image, run host binaries with the host's
#                                       /usr /lib /lib64 /bin /etc bind-mounted read-only;
#        operator-local/busybox:latest  static busybox with its applets in /bin;
#        operator-toolbox:latest        the agent's toolbox (scripts/build-image.sh --toolbox:
#                                       Debian minbase with the docker client, curl, jq; about
#                                       a minute, from Debian's mirror, once);
#   4. checks that the images run.
#
# Usage: scripts/setup.sh [--rebuild]     (--rebuild: re-import the images even if present)
# Env:   OPERATOR_CI_STATE (default /tmp/operator-ci), OPERATOR_CI_RUN_ID (set by scripts/test.sh),
#        DOCKERD_WAIT_SECS (default 60).
set -euo pipefail

LOG_TAG=setup
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REBUILD=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) REBUILD=1 ;;
    -h | --help)
      sed -n '2,17p' "$0"
      exit 0
      ;;
    *) die "unknown argument: $arg (usage: scripts/setup.sh [--rebuild])" ;;
  esac
done

START_TIME=$(date +%s)
PACKAGES=(docker.io busybox-static etcd-server prometheus iproute2 iptables procps docker-compose debootstrap)

need_root() {
  [[ "$(id -u)" == 0 ]] || die "$1 needs root (run scripts/setup.sh as root)"
}

# ---------------------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------------------
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

install_packages() {
  local missing=() p
  # Only needed where the kernel enforces AppArmor (dockerd then loads its profile).
  if [[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" == Y ]]; then
    PACKAGES+=(apparmor)
  fi
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    log "packages: all present (${PACKAGES[*]})"
    return
  fi
  need_root "installing ${missing[*]}"
  log "packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages such as etcd-server and prometheus would start their services on their
  # default ports (2379, 9090), which tests use. Forbid service starts while installing
  # unless the machine already has a policy (Debian container images ship one).
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  local apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  local rc=0
  {
    log "packages: apt-get update"
    apt-get "${apt_opts[@]}" update -qq &&
      log "packages: apt-get install ${missing[*]}" &&
      apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null
  } || rc=$?
  if ((added_policy)); then rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get failed (exit $rc) while installing ${missing[*]}"
  for p in "${missing[@]}"; do installed "$p" || die "package $p is still not installed"; done
  log "packages: installed ${missing[*]}"
}

# ---------------------------------------------------------------------------------------
# 2. Docker engine
# ---------------------------------------------------------------------------------------
start_dockerd() {
  if engine_answers; then
    log "dockerd: an engine already answers ($(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?')); not starting one"
    return
  fi
  if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != unix:///var/run/docker.sock && "$DOCKER_HOST" != unix:///run/docker.sock ]]; then
    die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to let setup.sh start a local dockerd"
  fi
  need_root "starting dockerd"
  mkdir -p "$OPERATOR_CI_STATE"

  # A dockerd we started earlier that no longer answers: stop it before starting another.
  if [[ -f "$DOCKERD_PID" ]] && pid_is "$(cat "$DOCKERD_PID")" dockerd; then
    local old
    old=$(cat "$DOCKERD_PID")
    log "dockerd: pid $old (started earlier) does not answer; stopping it"
    kill -TERM "$old" 2>/dev/null || true
    wait_gone "$old" 30 || kill -KILL "$old" 2>/dev/null || true
    wait_gone "$old" 10 || die "dockerd pid $old does not exit"
  fi
  # dockerd refuses to start while its pid file names a live process, and another dockerd
  # that does not answer would fight over /var/lib/docker.
  # Private engines of tests (tests/common) pass --data-root; only a default one matters.
  local p other=""
  for p in $(pgrep -x dockerd || true); do
    tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q -- '--data-root' || other="$p"
  done
  if [[ -n "$other" ]]; then
    local wait_secs="${DOCKERD_WAIT_SECS:-60}" i
    log "dockerd: pid $other runs but does not answer yet; waiting up to ${wait_secs}s"
    for ((i = 0; i < wait_secs; i++)); do
      engine_answers && { log "dockerd: pid $other answers"; return; }
      kill -0 "$other" 2>/dev/null || break
      sleep 1
    done
    kill -0 "$other" 2>/dev/null &&
      die "a dockerd (pid $other) runs but does not answer 'docker info'; see its log or stop it"
  fi
  if [[ -f /var/run/docker.pid ]] && ! pid_is "$(cat /var/run/docker.pid)" dockerd; then
    log "dockerd: removing stale /var/run/docker.pid"
    rm -f /var/run/docker.pid
  fi

  log "dockerd: starting (log $DOCKERD_LOG)"
  echo "=== $(date -Is) dockerd started by scripts/setup.sh ===" >>"$DOCKERD_LOG"
  # setsid: its own session, so a Ctrl-C aimed at the test run does not hit it;
  # scripts/teardown.sh stops it. (No job control here, so setsid execs in place and
  # $! is dockerd's pid.)
  setsid dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
  local pid=$!
  echo "$pid" >"$DOCKERD_PID"
  echo "${OPERATOR_CI_RUN_ID:-manual}" >"$DOCKERD_OWNER"

  local wait_secs="${DOCKERD_WAIT_SECS:-60}" i
  for ((i = 0; i < wait_secs * 4; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$DOCKERD_LOG" >&2 || true
      rm -f "$DOCKERD_PID" "$DOCKERD_OWNER"
      die "dockerd exited during startup (log above, full log: $DOCKERD_LOG)"
    fi
    if engine_answers; then
      log "dockerd: pid $pid answers after $(((i + 1) / 4)) s ($(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null))"
      return
    fi
    sleep 0.25
  done
  tail -n 30 "$DOCKERD_LOG" >&2 || true
  die "dockerd (pid $pid) did not answer 'docker info' within ${wait_secs}s (log above, full log: $DOCKERD_LOG; scripts/teardown.sh stops it)"
}

# ---------------------------------------------------------------------------------------
# 3. Images
# ---------------------------------------------------------------------------------------
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

WORK_DIRS=()
cleanup_work_dirs() { ((${#WORK_DIRS[@]} == 0)) || rm -rf "${WORK_DIRS[@]}"; }
trap cleanup_work_dirs EXIT

build_empty() {
  if image_exists "$EMPTY_IMAGE" && ((!REBUILD)); then
    log "image $EMPTY_IMAGE: present"
    return
  fi
  local dir
  dir=$(mktemp -d)
  WORK_DIRS+=("$dir")
  log "image $EMPTY_IMAGE: importing an empty root file system"
  tar --numeric-owner -C "$dir" -c . | docker import \
    --message "operator test image: empty (run host binaries with host folders bind-mounted)" \
    - "$EMPTY_IMAGE" >/dev/null
}

build_busybox() {
  if image_exists "$BUSYBOX_IMAGE" && ((!REBUILD)); then
    log "image $BUSYBOX_IMAGE: present"
    return
  fi
  local busybox
  busybox=$(dpkg-query -L busybox-static 2>/dev/null | grep -E '/bin/busybox$' | head -n 1 || true)
  [[ -n "$busybox" && -x "$busybox" ]] || busybox=/bin/busybox
  [[ -x "$busybox" ]] || die "no $busybox; is busybox-static installed?"
  # It must be static: the image has no libc.
  if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked; install busybox-static"; fi

  local root
  root=$(mktemp -d)
  WORK_DIRS+=("$root")
  mkdir -p "$root"/{bin,etc,www,tmp,root,proc,sys,dev,var/run}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  chmod 755 "$root/bin/busybox"
  # Every applet this busybox has, plus the ones tests rely on (fail if one is missing).
  local applet
  for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  for applet in sh sleep true false kill httpd wget nc cat echo ls mkdir; do
    [[ -L "$root/bin/$applet" ]] || die "busybox at $busybox has no applet '$applet'"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

  log "image $BUSYBOX_IMAGE: importing busybox $("$busybox" | head -n 1 | awk '{print $2}') with $(find "$root/bin" -type l | wc -l) applets"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/bin' \
    --message "operator test image: static busybox" \
    - "$BUSYBOX_IMAGE" >/dev/null
}

# ---------------------------------------------------------------------------------------
build_toolbox() {
  if image_exists "$TOOLBOX_IMAGE" && ((!REBUILD)); then
    log "image $TOOLBOX_IMAGE: present"
    return
  fi
  log "image $TOOLBOX_IMAGE: scripts/build-image.sh --toolbox"
  "$(dirname "${BASH_SOURCE[0]}")/build-image.sh" --toolbox --tag "$TOOLBOX_IMAGE" >/dev/null
}

# ---------------------------------------------------------------------------------------
# 4. Checks
# ---------------------------------------------------------------------------------------
verify() {
  local out
  out=$(docker run --rm --label "$TEST_LABEL" --network none "$BUSYBOX_IMAGE" sh -c 'echo ok') ||
    die "cannot run $BUSYBOX_IMAGE"
  [[ "$out" == ok ]] || die "$BUSYBOX_IMAGE printed '$out' instead of 'ok'"
  log "check: $BUSYBOX_IMAGE runs"

  out=$(docker run --rm --label "$TEST_LABEL" --network host \
    -v /usr:/usr:ro -v /lib:/lib:ro -v /lib64:/lib64:ro -v /bin:/bin:ro -v /etc:/etc:ro \
    "$EMPTY_IMAGE" /usr/bin/etcd --version) || die "cannot run /usr/bin/etcd in $EMPTY_IMAGE"
  log "check: $EMPTY_IMAGE runs host binaries ($(head -n 1 <<<"$out"))"

  out=$(docker run --rm --label "$TEST_LABEL" --network none --read-only --cap-drop ALL \
    "$TOOLBOX_IMAGE" sh -c 'docker --version && curl --version >/dev/null && jq --version >/dev/null') ||
    die "cannot run $TOOLBOX_IMAGE (docker, curl and jq in it)"
  log "check: $TOOLBOX_IMAGE runs ($out)"
}

install_packages
start_dockerd
build_empty
build_busybox
build_toolbox
verify
log "ready in $(($(date +%s) - START_TIME)) s"
