#!/usr/bin/env bash
# Undo what scripts/setup.sh and the tests left running. Idempotent; runs as root.
#
#   1. removes containers, networks and volumes labelled operator.test=true (within a
#      scripts/test.sh run only if that run started the engine);
#   2. reaps private engines of tests (tests/common PrivateDockerd) whose test process is
#      gone (a test that aborted or was killed before its Drop ran);
#   3. stops dockerd, but only if scripts/setup.sh started it: when called from
#      scripts/test.sh (OPERATOR_CI_RUN_ID set) only if that same run started it, so a
#      test run never stops an engine that was already running for someone else.
#
# Usage: scripts/teardown.sh
set -euo pipefail

LOG_TAG=teardown
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
  "") ;;
  -h | --help)
    sed -n '2,12p' "$0"
    exit 0
    ;;
  *) die "unknown argument: $1 (usage: scripts/teardown.sh)" ;;
esac

status=0

# ---------------------------------------------------------------------------------------
# 1. Labelled leftovers on the main engine
# ---------------------------------------------------------------------------------------
remove_labelled() {
  if ! engine_answers; then
    log "no engine answers; no labelled containers to remove"
    return
  fi
  local ids
  ids=$(docker ps -aq --filter "label=$TEST_LABEL" || true)
  if [[ -n "$ids" ]]; then
    log "removing $(wc -w <<<"$ids") container(s) labelled $TEST_LABEL"
    xargs -r docker rm -f -v <<<"$ids" >/dev/null || status=1
  fi
  ids=$(docker network ls -q --filter "label=$TEST_LABEL" || true)
  if [[ -n "$ids" ]]; then
    log "removing $(wc -w <<<"$ids") network(s) labelled $TEST_LABEL"
    xargs -r docker network rm <<<"$ids" >/dev/null || status=1
  fi
  ids=$(docker volume ls -q --filter "label=$TEST_LABEL" || true)
  if [[ -n "$ids" ]]; then
    log "removing $(wc -w <<<"$ids") volume(s) labelled $TEST_LABEL"
    xargs -r docker volume rm -f <<<"$ids" >/dev/null || status=1
  fi
}

# ---------------------------------------------------------------------------------------
# 2. Private engines left behind by tests
# ---------------------------------------------------------------------------------------
# Pids of processes (but this shell) whose command line mentions $1.
pids_mentioning() {
  local needle="$1" d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    if tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -qF -- "$needle"; then
      echo "$pid"
    fi
  done
}

# Paths under /run/containerd/s/ of the unix sockets that the pids on stdin hold: shims
# killed with SIGKILL cannot delete them.
shim_sockets_of() {
  local pid inodes=""
  while read -r pid; do
    inodes+=$(find "/proc/$pid/fd" -maxdepth 1 -type l -printf '%l\n' 2>/dev/null |
      sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p')$'\n'
  done
  [[ -n "${inodes//$'\n'/}" ]] || return 0
  awk 'NR == FNR { if ($1 != "") want[$1] = 1; next }
       FNR > 1 && ($7 in want) && index($8, "/run/containerd/s/") == 1 { print $8 }' \
    <(printf '%s' "$inodes") /proc/net/unix
}

# Kill every process in the cgroup subtrees named $1 (all v1 hierarchies, and v2).
kill_cgroup() {
  local cg="$1" f pid
  [[ -n "$cg" ]] || return 0
  for f in /sys/fs/cgroup/"$cg" /sys/fs/cgroup/*/"$cg"; do
    [[ -d "$f" ]] || continue
    while read -r pid; do
      [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
}

# Remove the (empty) cgroup subtrees named $1; killed processes that are not reaped yet
# keep them busy for a moment, so retry for up to 10 s.
remove_cgroup() {
  local cg="$1" f i left
  [[ -n "$cg" ]] || return 0
  for ((i = 0; i < 50; i++)); do
    left=0
    for f in /sys/fs/cgroup/"$cg" /sys/fs/cgroup/*/"$cg"; do
      [[ -d "$f" ]] || continue
      find "$f" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "$f" ]] && left=1
    done
    ((left)) || return 0
    sleep 0.2
  done
  log "cannot remove cgroup $cg"
}

reap_private() {
  local dir="$1" cg="" pid
  [[ -f "$dir/cgroup" ]] && cg=$(cat "$dir/cgroup")
  [[ "$cg" =~ ^opd-[a-z0-9-]+$ ]] || cg="" # never touch any other cgroup
  log "reaping private engine $dir (its test process is gone)"
  if [[ -f "$dir/dockerd.pid" ]] && pid_is "$(cat "$dir/dockerd.pid")" dockerd; then
    pid=$(cat "$dir/dockerd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
  fi
  kill_cgroup "$cg"
  local pids sockets
  pids=$(pids_mentioning "$dir/")
  sockets=$(shim_sockets_of <<<"$pids")
  [[ -z "$pids" ]] || xargs -r kill -KILL <<<"$pids" 2>/dev/null || true
  sleep 0.2
  [[ -z "$sockets" ]] || xargs -r rm -f <<<"$sockets"
  # Mounts the engine left (overlay roots, netns, shm), deepest first.
  awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir" || status=1
  remove_cgroup "$cg"
}

reap_private_engines() {
  [[ -d "$PRIVATE_DOCKERD_DIR" ]] || return 0
  local dir owner start
  for dir in "$PRIVATE_DOCKERD_DIR"/*/; do
    dir=${dir%/}
    [[ -d "$dir" ]] || continue
    # owner: "<pid> <start time in clock ticks>" of the test process that made it. A folder
    # without one may be one that a test is creating right now.
    if [[ ! -f "$dir/owner" ]] && [[ -n "$(find "$dir" -maxdepth 0 -mmin -2)" ]]; then
      continue
    fi
    owner="" start=""
    read -r owner start 2>/dev/null <"$dir/owner" || true
    if [[ -n "$owner" && -r "/proc/$owner/stat" ]] &&
      [[ "$(awk '{print $22}' "/proc/$owner/stat" 2>/dev/null)" == "$start" ]]; then
      continue # its test still runs
    fi
    reap_private "$dir"
  done
}

# ---------------------------------------------------------------------------------------
# 3. The main dockerd, if we started it
# ---------------------------------------------------------------------------------------
stop_dockerd() {
  if [[ ! -f "$DOCKERD_PID" ]]; then
    log "dockerd: not started by scripts/setup.sh; leaving the engine alone"
    return
  fi
  local pid owner
  pid=$(cat "$DOCKERD_PID")
  owner=$(cat "$DOCKERD_OWNER" 2>/dev/null || echo manual)
  if [[ -n "${OPERATOR_CI_RUN_ID:-}" && "$owner" != "$OPERATOR_CI_RUN_ID" ]]; then
    log "dockerd: pid $pid was started by another run ($owner); leaving it running"
    return
  fi
  if ! pid_is "$pid" dockerd; then
    log "dockerd: pid $pid already gone"
    rm -f "$DOCKERD_PID" "$DOCKERD_OWNER"
    return
  fi
  # Its managed containerd: a child of this very dockerd (never another engine's).
  local containerd
  containerd=$(pgrep -P "$pid" -x containerd | head -n 1 || true)

  log "dockerd: stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 40; then
    log "dockerd: pid $pid still runs after 40 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || { log "dockerd: pid $pid does not die"; status=1; }
  fi
  # Its managed containerd normally exits with it; make sure. (Same pid but now the child
  # of another dockerd would be a reused pid: leave that alone.)
  local parent
  parent=$([[ -n "$containerd" ]] && awk '{print $4}' "/proc/$containerd/stat" 2>/dev/null || true)
  if [[ -n "$containerd" ]] && pid_is "$containerd" containerd && ! pid_is "$parent" dockerd; then
    kill -TERM "$containerd" 2>/dev/null || true
    wait_gone "$containerd" 10 || kill -KILL "$containerd" 2>/dev/null || true
  fi
  if [[ -f /var/run/docker.pid ]] && ! pid_is "$(cat /var/run/docker.pid)" dockerd; then
    rm -f /var/run/docker.pid
  fi
  rm -f "$DOCKERD_PID" "$DOCKERD_OWNER"
  log "dockerd: stopped"
}

# Inside a scripts/test.sh run against an engine that run did not start (a developer's
# shared engine), other test runs may be using it right now: leave their containers alone
# (every test removes its own through tests/common Cleanup).
if [[ -n "${OPERATOR_CI_RUN_ID:-}" && "$(cat "$DOCKERD_OWNER" 2>/dev/null)" != "$OPERATOR_CI_RUN_ID" ]]; then
  log "engine not started by this run; not sweeping containers labelled $TEST_LABEL"
else
  remove_labelled
fi
reap_private_engines
stop_dockerd
exit "$status"
