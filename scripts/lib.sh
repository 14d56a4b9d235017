# Shared helpers for scripts/setup.sh and scripts/teardown.sh (sourced, not executed).
# shellcheck shell=bash

# Where the scripts keep their state (dockerd log/pid, private test engines).
OPERATOR_CI_STATE="${OPERATOR_CI_STATE:-/tmp/operator-ci}"
DOCKERD_LOG="$OPERATOR_CI_STATE/dockerd.log"
DOCKERD_PID="$OPERATOR_CI_STATE/dockerd.pid"
# Who started dockerd: the OPERATOR_CI_RUN_ID of the scripts/test.sh run, or "manual".
DOCKERD_OWNER="$OPERATOR_CI_STATE/dockerd.owner"
# Private engines started by tests/common (PrivateDockerd) live here, one folder each.
PRIVATE_DOCKERD_DIR="${OPERATOR_TEST_PRIVATE_DOCKERD_DIR:-$OPERATOR_CI_STATE/private}"

TEST_LABEL="operator.test=true"
EMPTY_IMAGE="operator-local/empty:latest"
# The agent's toolbox on a host (the sidecar uses its own image); the controller's default.
TOOLBOX_IMAGE="operator-toolbox:latest"
BUSYBOX_IMAGE="operator-local/busybox:latest"

log() { printf '[%s] %s\n' "${LOG_TAG:-operator-ci}" "$*"; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-operator-ci}" "$*" >&2; exit 1; }

# True when a Docker engine answers the client (honours DOCKER_HOST). Bounded so a hung
# engine cannot hang the script.
engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

# True when PID is a live process whose command name is NAME.
pid_is() {
  local pid="$1" name="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# Wait up to SECONDS for PID to disappear. Returns 1 if it is still there.
wait_gone() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 10; i++)); do
    [[ -e "/proc/$pid" ]] || return 0
    # A zombie child of ours counts as gone.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
    sleep 0.1
  done
  [[ -e "/proc/$pid" ]] && return 1
  return 0
}
